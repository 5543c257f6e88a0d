"""Durable state of the service: SQLite (WAL) for metadata, plain files for file bytes and results.

A batch's requests are an index into its input file (``tasks``: custom_id, line, byte range, run
order, how often it was run, whether it has a result), never a copy of the bodies. Results are
appended to two spool files per batch (``spool/<batch>.output`` and ``.error``) in group commits:
the lines are written and synced, then one transaction marks their tasks done, adds to the batch's
counters and usage, and moves the batch's committed spool sizes past them. Bytes past a committed
size are cut off before the next append, so after a crash anything not committed is simply run
again and no recorded result is lost or doubled. The spools are in completion order and become the
result files as they are (a hard link) when the batch finishes. ``tasks.runs`` counts how often a
request was handed to the engine (tests use it to prove finished requests are not re-run after a
restart).

Reads (``get_batch``, ``get_file``, lists) use a read-only connection per thread, so status calls
never wait for a writer.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

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
CREATE TABLE IF NOT EXISTS tasks (
    batch INTEGER NOT NULL,
    ord INTEGER NOT NULL,
    line INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    reject TEXT,
    runs INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch, ord)
) WITHOUT ROWID;
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
    ("batches", "output_bytes", "INTEGER NOT NULL DEFAULT 0"),
    ("batches", "error_bytes", "INTEGER NOT NULL DEFAULT 0"),
)

#: ``requests`` as older versions had it (one row per request, by batch id): a view of ``tasks``.
REQUESTS_VIEW = """
CREATE VIEW requests AS SELECT b.id AS batch_id, t.custom_id, t.line, t.ord, t.runs, t.done
FROM tasks t JOIN batches b ON b.seq = t.batch
"""
#: ``tasks.done``: no result yet, an output line, an error line.
PENDING, OUTPUT, ERROR = 0, 1, 2
SPOOL_KINDS = ("output", "error")


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
class Task:
    """One request of a batch without a result: where its line is in the input file."""

    ord: int
    custom_id: str
    line: int
    offset: int
    length: int
    reject: dict[str, Any] | None


class SpoolError(RuntimeError):
    """A batch's spool file is shorter than its committed size (its bytes were removed from disk)."""


def _append(path: Path, committed: int, data: bytes) -> int:
    """Write ``data`` at ``committed`` in ``path`` (cutting off any uncommitted tail), synced; the new size."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size < committed:
            raise SpoolError(f"{path} holds {size:,} bytes but {committed:,} are committed; the results "
                             "spooled there were removed from disk. Cancel the batch and run it again.")
        if size > committed:
            os.ftruncate(fd, committed)
        view, at = memoryview(data), committed
        while view:
            written = os.pwrite(fd, view, at)
            view, at = view[written:], at + written
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return committed + len(data)


class Store:
    """Thread-safe access to the service's SQLite database and file bytes under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.spool_dir = self.data_dir / "spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "localbatch.sqlite3"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        kinds = dict(self._db.execute("SELECT name, type FROM sqlite_master").fetchall())
        if kinds.get("requests") == "table":  # the layout of older versions: kept aside, unused
            self._db.execute("ALTER TABLE requests RENAME TO requests_v1")
            kinds.pop("requests")
        if kinds.get("results") == "table":
            self._db.execute("ALTER TABLE results RENAME TO results_v1")
        self._db.executescript(SCHEMA)
        for table, column, declaration in ADDED_COLUMNS:
            if column not in {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        if "requests" not in kinds:
            self._db.execute(REQUESTS_VIEW)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._seqs: dict[str, int] = {}

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (WAL: it never waits for the writer)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=30)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA query_only=1")
            self._local.db = db
            with self._lock:
                self._readers.append(db)
        return db

    def close(self) -> None:
        """Close the database connections."""
        with self._lock:
            for db in self._readers:
                db.close()
            self._readers.clear()
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
        return self._reader().execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._reader().execute(sql, args).fetchall()

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

    def _seq(self, batch_id: str) -> int:
        seq = self._seqs.get(batch_id)
        if seq is None:
            row = self._one("SELECT seq FROM batches WHERE id = ?", (batch_id,))
            if row is None:
                raise LookupError(batch_id)
            seq = self._seqs[batch_id] = int(row["seq"])
        return seq

    # ----- spools ------------------------------------------------------------------------------

    def spool_path(self, batch_id: str, kind: str) -> Path:
        """The spool of ``batch_id``'s ``output`` or ``error`` lines (committed prefix: see the module)."""
        return self.spool_dir / f"{batch_id}.{kind}"

    def input_path(self, batch_id: str) -> Path:
        """The batch's own name for its input file's bytes (a hard link made at validation, so deleting
        the input file does not take the requests of a running batch with it)."""
        return self.spool_dir / f"{batch_id}.input"

    def link_input(self, batch_id: str, file_id: str) -> None:
        """Make :meth:`input_path` name the bytes of ``file_id`` (a hard link; a copy where links fail)."""
        target, source = self.input_path(batch_id), self.file_path(file_id)
        staged = target.with_name(target.name + ".part")
        staged.unlink(missing_ok=True)
        try:
            os.link(source, staged)
        except OSError:
            import shutil

            shutil.copyfile(source, staged)
        os.replace(staged, target)

    def drop_spool(self, batch_id: str) -> None:
        """Remove a finished batch's spool files and input link."""
        for path in (self.spool_path(batch_id, "output"), self.spool_path(batch_id, "error"), self.input_path(batch_id)):
            path.unlink(missing_ok=True)

    def sweep_spools(self) -> list[str]:
        """Remove the spool files of batches that are terminal (or unknown); returns their names."""
        live = {r["id"] for r in self.active_batches()}
        gone = []
        for path in self.spool_dir.iterdir():
            if path.name.split(".", 1)[0] not in live:
                path.unlink(missing_ok=True)
                gone.append(path.name)
        return gone

    def recorded_lines(self, batch_id: str, kind: str) -> Iterator[bytes]:
        """The committed result lines of ``kind`` (``output``/``error``), in completion order."""
        row = self._one("SELECT output_bytes, error_bytes FROM batches WHERE id = ?", (batch_id,))
        size = int(row[f"{kind}_bytes"]) if row else 0
        if not size:
            return
        with self.spool_path(batch_id, kind).open("rb") as fh:
            data = fh.read(size)
        if len(data) < size:
            raise SpoolError(f"the {kind} spool of {batch_id} is shorter than its committed {size:,} bytes")
        yield from data.splitlines()

    # ----- requests and results ----------------------------------------------------------------

    def start_batch(
        self,
        batch_id: str,
        requests: Iterable[tuple[str, int, int, int, str | None]],
        *,
        model: str,
        deployment: str,
        enqueued_tokens: int,
        now: int,
    ) -> bool:
        """Store the request index and move ``validating`` -> ``in_progress`` in one transaction.

        ``requests`` holds (custom_id, line, offset, length, reject JSON or None). Returns False (and
        stores nothing) when the batch is no longer ``validating`` (e.g. it was cancelled).
        """
        rows = list(requests)
        batch = self.get_batch(batch_id)
        if batch is None or batch["status"] != "validating":
            return False
        seq = int(batch["seq"])
        self.link_input(batch_id, batch["input_file_id"])
        for kind in SPOOL_KINDS:
            self.spool_path(batch_id, kind).unlink(missing_ok=True)
        started = False
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE batches SET status = 'in_progress', in_progress_at = ?, model = ?, deployment = ?,"
                " enqueued_tokens = ?, total = ?, output_bytes = 0, error_bytes = 0"
                " WHERE id = ? AND status = 'validating'",
                (now, model, deployment, enqueued_tokens, len(rows), batch_id),
            )
            if cur.rowcount != 1:
                raise _Rollback
            started = True
            order = list(range(len(rows)))
            random.shuffle(order)  # run order differs from input order, as on the real services
            db.execute("DELETE FROM tasks WHERE batch = ?", (seq,))
            db.executemany(
                "INSERT INTO tasks (batch, ord, line, offset, length, custom_id, reject) VALUES (?,?,?,?,?,?,?)",
                [(seq, pos, line, offset, length, cid, reject)
                 for (cid, line, offset, length, reject), pos in zip(rows, order)],
            )
        return started

    def pending_tasks(self, batch_id: str, *, after: int = -1, limit: int = 512) -> list[Task]:
        """Up to ``limit`` requests of ``batch_id`` without a result, in run order after ``ord`` ``after``.

        Requests run in a shuffled order fixed at validation, so result files are not in input order.
        """
        rows = self._all(
            "SELECT ord, custom_id, line, offset, length, reject FROM tasks WHERE batch = ? AND ord > ? AND done = 0"
            " ORDER BY ord LIMIT ?", (self._seq(batch_id), after, limit))
        return [Task(r["ord"], r["custom_id"], r["line"], r["offset"], r["length"],
                     json.loads(r["reject"]) if r["reject"] else None) for r in rows]

    def mark_runs(self, batch_id: str, ords: list[int]) -> None:
        """Count one more engine run of each request (committed before the engine is called)."""
        seq = self._seq(batch_id)
        with self.transaction() as db:
            db.executemany("UPDATE tasks SET runs = runs + 1 WHERE batch = ? AND ord = ?", [(seq, o) for o in ords])

    def record_results(self, batch_id: str, results: list[tuple[int, str, bytes, tuple[int, int, int, int]]]) -> int:
        """Record a group of results, each exactly once; returns how many were new.

        ``results`` holds (ord, kind ``output``/``error``, the line as JSON bytes, its usage as
        :func:`line_usage` counts). The new lines are appended to the spools and synced, then one
        transaction marks their tasks done and moves the counters and committed spool sizes on.
        """
        if not results:
            return 0
        seq = self._seq(batch_id)
        recorded = 0
        with self.transaction() as db:
            row = db.execute("SELECT output_bytes, error_bytes FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None:
                raise _Rollback
            pending: set[int] = set()
            ords = [r[0] for r in results]
            for i in range(0, len(ords), 500):
                part = ords[i:i + 500]
                pending.update(o for (o,) in db.execute(
                    f"SELECT ord FROM tasks WHERE batch = ? AND done = 0 AND ord IN ({','.join('?' * len(part))})",
                    (seq, *part)))
            fresh = []
            for item in results:
                if item[0] in pending:
                    pending.discard(item[0])
                    fresh.append(item)
            if not fresh:
                raise _Rollback
            sizes = {"output": int(row["output_bytes"]), "error": int(row["error_bytes"])}
            for kind in SPOOL_KINDS:
                data = b"".join([r[2] + b"\n" for r in fresh if r[1] == kind])
                if data:
                    sizes[kind] = _append(self.spool_path(batch_id, kind), sizes[kind], data)
            db.executemany("UPDATE tasks SET done = ? WHERE batch = ? AND ord = ?",
                           [(OUTPUT if kind == "output" else ERROR, seq, o) for o, kind, _, _ in fresh])
            completed = sum(1 for r in fresh if r[1] == "output")
            usage = [sum(r[3][i] for r in fresh) for i in range(4)]
            db.execute("UPDATE batches SET completed = completed + ?, failed = failed + ?,"
                       " usage_input_tokens = usage_input_tokens + ?, usage_cached_tokens = usage_cached_tokens + ?,"
                       " usage_output_tokens = usage_output_tokens + ?,"
                       " usage_reasoning_tokens = usage_reasoning_tokens + ?, output_bytes = ?, error_bytes = ?"
                       " WHERE id = ?",
                       (completed, len(fresh) - completed, *usage, sizes["output"], sizes["error"], batch_id))
            recorded = len(fresh)
        return recorded

    def record_result(self, batch_id: str, custom_id: str, kind: str, line: dict[str, Any]) -> bool:
        """Record one request's result exactly once; False if it already had one (or is unknown)."""
        row = self._one("SELECT ord FROM tasks WHERE batch = ? AND custom_id = ?", (self._seq(batch_id), custom_id))
        if row is None:
            return False
        return self.record_results(batch_id, [(int(row["ord"]), kind, encode_line(line), line_usage(line))]) == 1

    def record_not_run(self, batch_id: str, line_for: Callable[[str], dict[str, Any]], group: int = 5000) -> int:
        """Give every request still without a result the error line ``line_for(custom_id)``."""
        done = 0
        after = -1
        while tasks := self.pending_tasks(batch_id, after=after, limit=group):
            after = tasks[-1].ord
            done += self.record_results(batch_id, [
                (t.ord, "error", encode_line(line := line_for(t.custom_id)), line_usage(line)) for t in tasks])
        return done

    def result_count(self, batch_id: str) -> int:
        """How many requests of ``batch_id`` have a recorded result."""
        row = self._one("SELECT completed + failed AS n FROM batches WHERE id = ?", (batch_id,))
        return int(row["n"]) if row else 0

    def unfinished(self, batch_id: str) -> list[str]:
        """custom_ids of ``batch_id`` that have no result yet, in input order."""
        return [r["custom_id"] for r in self._all(
            "SELECT custom_id FROM tasks WHERE batch = ? AND done = 0 ORDER BY line", (self._seq(batch_id),))]

    def request_runs(self, batch_id: str) -> dict[str, int]:
        """custom_id -> how many times the request was handed to the engine."""
        return {r["custom_id"]: r["runs"] for r in self._all(
            "SELECT custom_id, runs FROM tasks WHERE batch = ?", (self._seq(batch_id),))}

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


def encode_line(line: dict[str, Any]) -> bytes:
    """A result line as compact JSON bytes (orjson; the standard library for what orjson refuses)."""
    try:
        return orjson.dumps(line)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def recorded_results(data_dir: Path, batch_id: str) -> dict[str, dict[str, Any]]:
    """custom_id -> the committed result line of every request of ``batch_id`` that has one, read
    from a data directory (the service may be stopped or dead)."""
    store = Store(data_dir)
    try:
        found = {}
        for kind in SPOOL_KINDS:
            for raw in store.recorded_lines(batch_id, kind):
                line = orjson.loads(raw)
                found[line["custom_id"]] = line
        return found
    finally:
        store.close()
