"""Durable state of the service: SQLite (WAL) for metadata and results, plain files for file bytes.

Each request's result is one row of ``results`` with ``UNIQUE(batch_id, custom_id)``, inserted in
its own transaction together with the batch's live counters, so a result is recorded exactly once
even across a crash and restart. ``requests.runs`` counts how often a request was handed to the
engine (tests use it to prove finished requests are not re-run after a restart).
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dialects import Dialect

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    dialect TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    ready_at REAL NOT NULL,
    outcome TEXT NOT NULL,
    status_details TEXT,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    dialect TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    validate_after REAL NOT NULL,
    expires_at INTEGER,
    expire_after REAL,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    finalize_after REAL,
    output_file_id TEXT,
    error_file_id TEXT,
    errors TEXT,
    metadata TEXT,
    model TEXT,
    deployment TEXT,
    enqueued_tokens INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    faults TEXT,
    fault_token_limit INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS requests (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    ord INTEGER NOT NULL,
    body TEXT NOT NULL,
    reject TEXT,
    runs INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, custom_id)
);
CREATE INDEX IF NOT EXISTS requests_pending ON requests (batch_id, done, ord);
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('output', 'error')),
    line TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    UNIQUE (batch_id, custom_id)
);
CREATE TABLE IF NOT EXISTS fault_creates (
    spec TEXT PRIMARY KEY,
    creates INTEGER NOT NULL
);
"""

#: Columns added after the first release: (table, column, declaration), added to older databases.
ADDED_COLUMNS = (
    ("batches", "faults", "TEXT"),
    ("batches", "fault_token_limit", "INTEGER NOT NULL DEFAULT 0"),
    ("batches", "output_expires_after", "INTEGER"),
    ("batches", "usage_input_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("batches", "usage_cached_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("batches", "usage_output_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("batches", "usage_reasoning_tokens", "INTEGER NOT NULL DEFAULT 0"),
)


def line_usage(line: dict[str, Any]) -> tuple[int, int, int, int]:
    """(input, cached, output, reasoning) tokens of one result line's body ``usage``.

    Chat bodies count ``prompt_tokens``/``completion_tokens`` (details under
    ``prompt_tokens_details.cached_tokens`` and ``completion_tokens_details.reasoning_tokens``);
    Responses bodies count ``input_tokens``/``output_tokens`` (``input_tokens_details``,
    ``output_tokens_details``). A line without a response body counts nothing.
    """
    response = line.get("response") if isinstance(line, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0, 0, 0

    def number(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    if "input_tokens" in usage:
        details_in, details_out = usage.get("input_tokens_details"), usage.get("output_tokens_details")
        tokens_in, tokens_out = usage.get("input_tokens"), usage.get("output_tokens")
    else:
        details_in, details_out = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
        tokens_in, tokens_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    cached = number(details_in.get("cached_tokens")) if isinstance(details_in, dict) else 0
    reasoning = number(details_out.get("reasoning_tokens")) if isinstance(details_out, dict) else 0
    return number(tokens_in), cached, number(tokens_out), reasoning

class _Rollback(Exception):
    """Raised inside ``Store.transaction`` to undo it quietly."""


ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class PendingRequest:
    """One input line waiting for its result."""

    batch_id: str
    custom_id: str
    line: int
    body: dict[str, Any]
    reject: dict[str, Any] | None


class Store:
    """Thread-safe access to the service's SQLite database and file bytes under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.data_dir / "localbatch.sqlite3", check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        for table, column, declaration in ADDED_COLUMNS:
            if column not in {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction, committed on success and rolled back on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except _Rollback:
                self._db.execute("ROLLBACK")
                return
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ----- files -------------------------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        """Where the bytes of ``file_id`` live."""
        return self.files_dir / file_id

    def add_file(
        self,
        *,
        file_id: str,
        dialect: Dialect,
        filename: str,
        purpose: str,
        size: int,
        expires_at: int | None,
        ready_at: float,
        outcome: str,
        status_details: str | None,
        created_at: int | None = None,
    ) -> sqlite3.Row:
        """Record a file whose bytes are already at ``file_path(file_id)``."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO files (id, dialect, filename, purpose, bytes, created_at, expires_at, ready_at,"
                " outcome, status_details) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (file_id, dialect, filename, purpose, size, created_at or int(time.time()), expires_at,
                 ready_at, outcome, status_details),
            )
        row = self.get_file(file_id)
        assert row is not None
        return row

    def get_file(self, file_id: str) -> sqlite3.Row | None:
        """The live (not deleted) file ``file_id``, or None."""
        return self._one("SELECT * FROM files WHERE id = ? AND deleted = 0", (file_id,))

    def list_files(
        self, *, purpose: str | None, after: str | None, limit: int, order: str, dialect: str | None = None
    ) -> tuple[list[sqlite3.Row], bool]:
        """A page of live files in creation order (``asc``/``desc``) after the file ``after``.

        ``dialect``: only the files created in that dialect (None: all).

        Raises LookupError when no file (live or deleted) has the id ``after``.
        """
        where, args = "deleted = 0", ()
        if purpose:
            where, args = where + " AND purpose = ?", (*args, purpose)
        if dialect:
            where, args = where + " AND dialect = ?", (*args, dialect)
        return self._page("files", where, args, after, limit, order)

    def expired_files(self, now: float) -> list[str]:
        """Ids of live files whose ``expires_at`` has passed."""
        return [r["id"] for r in self._all(
            "SELECT id FROM files WHERE deleted = 0 AND expires_at IS NOT NULL AND expires_at <= ?", (int(now),))]

    def delete_file(self, file_id: str) -> bool:
        """Mark ``file_id`` deleted and remove its bytes; False if it did not exist."""
        with self.transaction() as db:
            cur = db.execute("UPDATE files SET deleted = 1 WHERE id = ? AND deleted = 0", (file_id,))
        if cur.rowcount:
            self.file_path(file_id).unlink(missing_ok=True)
        return bool(cur.rowcount)

    def remove_orphan_files(self) -> list[str]:
        """Remove every entry of the files folder that is not the bytes of a live file row.

        Call it before anything writes files (at start-up): what it finds was left by a crash, an
        unfinished upload or result file (a staging name), a complete one whose row was never
        committed, or the bytes of a file deleted just before the crash. Returns the removed names.
        """
        live = {r["id"] for r in self._all("SELECT id FROM files WHERE deleted = 0")}
        removed = []
        for entry in sorted(self.files_dir.iterdir()):
            if entry.name in live and entry.is_file():
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
        return removed

    def _page(
        self, table: str, where: str, args: tuple[Any, ...], after: str | None, limit: int, order: str
    ) -> tuple[list[sqlite3.Row], bool]:
        desc = order == "desc"
        if after:
            anchor = self._one(f"SELECT seq FROM {table} WHERE id = ?", (after,))
            if anchor is None:  # restarting from the first page would make a pager repeat items
                raise LookupError(after)
            where += f" AND seq {'<' if desc else '>'} ?"
            args = (*args, anchor["seq"])
        rows = self._all(
            f"SELECT * FROM {table} WHERE {where} ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT ?",
            (*args, limit + 1),
        )
        return rows[:limit], len(rows) > limit

    # ----- batches -----------------------------------------------------------------------------

    def add_batch(self, **fields: Any) -> sqlite3.Row:
        """Insert a new batch row (``fields`` are column values)."""
        cols = ", ".join(fields)
        with self.transaction() as db:
            db.execute(f"INSERT INTO batches ({cols}) VALUES ({', '.join('?' * len(fields))})",
                       tuple(fields.values()))
        row = self.get_batch(fields["id"])
        assert row is not None
        return row

    def get_batch(self, batch_id: str) -> sqlite3.Row | None:
        """The batch ``batch_id`` or None."""
        return self._one("SELECT * FROM batches WHERE id = ?", (batch_id,))

    def list_batches(self, *, after: str | None, limit: int, dialect: str | None = None) -> tuple[list[sqlite3.Row], bool]:
        """A page of batches, newest first, after the batch ``after`` (LookupError: no such batch).

        ``dialect``: only the batches created in that dialect (None: all).
        """
        if dialect:
            return self._page("batches", "dialect = ?", (dialect,), after, limit, "desc")
        return self._page("batches", "1 = 1", (), after, limit, "desc")

    def active_batches(self) -> list[sqlite3.Row]:
        """Batches that are not terminal, oldest first."""
        marks = ",".join("?" * len(ACTIVE_STATUSES))
        return self._all(f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY seq", ACTIVE_STATUSES)

    def transition(self, batch_id: str, from_statuses: tuple[str, ...], to_status: str, **fields: Any) -> bool:
        """Move a batch to ``to_status`` (setting ``fields``) only if it is in one of ``from_statuses``."""
        sets = ", ".join(["status = ?"] + [f"{k} = ?" for k in fields])
        marks = ",".join("?" * len(from_statuses))
        with self.transaction() as db:
            cur = db.execute(
                f"UPDATE batches SET {sets} WHERE id = ? AND status IN ({marks})",
                (to_status, *fields.values(), batch_id, *from_statuses),
            )
        return cur.rowcount == 1

    def count_fault_create(self, spec: str) -> int:
        """Count one more batches.create carrying the fault spec ``spec``; returns how many came before."""
        with self.transaction() as db:
            row = db.execute("SELECT creates FROM fault_creates WHERE spec = ?", (spec,)).fetchone()
            before = int(row["creates"]) if row else 0
            db.execute("INSERT INTO fault_creates (spec, creates) VALUES (?, 1)"
                       " ON CONFLICT (spec) DO UPDATE SET creates = creates + 1", (spec,))
        return before

    def enqueued_tokens(self, deployment: str, *, excluding: str) -> int:
        """Input tokens held by the other unfinished batches of ``deployment``."""
        row = self._one(
            "SELECT COALESCE(SUM(enqueued_tokens), 0) AS n FROM batches WHERE deployment = ? AND id != ?"
            " AND status IN ('in_progress', 'finalizing', 'cancelling')",
            (deployment, excluding),
        )
        return int(row["n"]) if row else 0

    def start_batch(
        self,
        batch_id: str,
        requests: list[tuple[str, int, str, str | None]],
        *,
        model: str,
        deployment: str,
        enqueued_tokens: int,
        now: int,
    ) -> bool:
        """Store the parsed requests and move ``validating`` -> ``in_progress`` in one transaction.

        ``requests`` holds (custom_id, line, body JSON, reject JSON or None). Returns False (and
        stores nothing) when the batch is no longer ``validating`` (e.g. it was cancelled).
        """
        started = False
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE batches SET status = 'in_progress', in_progress_at = ?, model = ?, deployment = ?,"
                " enqueued_tokens = ?, total = ? WHERE id = ? AND status = 'validating'",
                (now, model, deployment, enqueued_tokens, len(requests), batch_id),
            )
            if cur.rowcount != 1:
                raise _Rollback
            started = True
            order = list(range(len(requests)))
            random.shuffle(order)  # run order differs from input order, as on the real services
            db.executemany(
                "INSERT INTO requests (batch_id, custom_id, line, ord, body, reject) VALUES (?,?,?,?,?,?)",
                [(batch_id, cid, line, pos, body, reject)
                 for (cid, line, body, reject), pos in zip(requests, order)],
            )
        return started

    # ----- requests and results ----------------------------------------------------------------

    def next_pending(self, batch_id: str, exclude: set[str]) -> PendingRequest | None:
        """The next request of ``batch_id`` without a result and not in ``exclude`` (in flight).

        Requests run in a shuffled order fixed at validation, so result files are not in input order.
        """
        rows = self._all(
            "SELECT custom_id, line, body, reject FROM requests WHERE batch_id = ? AND done = 0"
            " ORDER BY ord LIMIT ?",
            (batch_id, len(exclude) + 1),
        )
        for row in rows:
            if row["custom_id"] not in exclude:
                return PendingRequest(batch_id, row["custom_id"], row["line"], json.loads(row["body"]),
                                      json.loads(row["reject"]) if row["reject"] else None)
        return None

    def mark_run(self, batch_id: str, custom_id: str) -> None:
        """Count one more engine run of a request (committed before the engine is called)."""
        with self.transaction() as db:
            db.execute("UPDATE requests SET runs = runs + 1 WHERE batch_id = ? AND custom_id = ?",
                       (batch_id, custom_id))

    def record_result(self, batch_id: str, custom_id: str, kind: str, line: dict[str, Any]) -> bool:
        """Record a request's result exactly once; False if it already had one."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO results (batch_id, custom_id, kind, line, recorded_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT (batch_id, custom_id) DO NOTHING",
                (batch_id, custom_id, kind, json.dumps(line, separators=(",", ":")), time.time()),
            )
            if cur.rowcount != 1:
                return False
            db.execute("UPDATE requests SET done = 1 WHERE batch_id = ? AND custom_id = ?", (batch_id, custom_id))
            column = "completed" if kind == "output" else "failed"
            db.execute(f"UPDATE batches SET {column} = {column} + 1, usage_input_tokens = usage_input_tokens + ?,"
                       " usage_cached_tokens = usage_cached_tokens + ?, usage_output_tokens = usage_output_tokens + ?,"
                       " usage_reasoning_tokens = usage_reasoning_tokens + ? WHERE id = ?",
                       (*line_usage(line), batch_id))
        return True

    def result_count(self, batch_id: str) -> int:
        """How many requests of ``batch_id`` have a recorded result."""
        row = self._one("SELECT completed + failed AS n FROM batches WHERE id = ?", (batch_id,))
        return int(row["n"]) if row else 0

    def unfinished(self, batch_id: str) -> list[str]:
        """custom_ids of ``batch_id`` that have no result yet, in input order."""
        return [r["custom_id"] for r in self._all(
            "SELECT custom_id FROM requests WHERE batch_id = ? AND done = 0 ORDER BY line", (batch_id,))]

    def results(self, batch_id: str) -> list[sqlite3.Row]:
        """All results of ``batch_id`` in completion order."""
        return self._all("SELECT kind, line, custom_id FROM results WHERE batch_id = ? ORDER BY seq", (batch_id,))

    def request_runs(self, batch_id: str) -> dict[str, int]:
        """custom_id -> how many times the request was handed to the engine."""
        return {r["custom_id"]: r["runs"] for r in self._all(
            "SELECT custom_id, runs FROM requests WHERE batch_id = ?", (batch_id,))}

    def finish_batch(
        self,
        batch_id: str,
        from_statuses: tuple[str, ...],
        to_status: str,
        new_files: list[dict[str, Any]],
        **fields: Any,
    ) -> bool:
        """Register result files and move the batch to its terminal status in one transaction."""
        finished = False
        with self.transaction() as db:
            marks = ",".join("?" * len(from_statuses))
            sets = ", ".join(["status = ?"] + [f"{k} = ?" for k in fields])
            cur = db.execute(
                f"UPDATE batches SET {sets} WHERE id = ? AND status IN ({marks})",
                (to_status, *fields.values(), batch_id, *from_statuses),
            )
            if cur.rowcount != 1:
                raise _Rollback
            finished = True
            for f in new_files:
                db.execute(
                    "INSERT INTO files (id, dialect, filename, purpose, bytes, created_at, expires_at, ready_at,"
                    " outcome, status_details) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (f["id"], f["dialect"], f["filename"], "batch_output", f["bytes"], f["created_at"],
                     f.get("expires_at"), 0.0, "processed", None),
                )
        return finished
