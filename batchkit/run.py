"""The run: one durable object that holds a batch job from its request lines to its final table.

A run lives in a folder, ``<out_dir>/runs/<run_id>/``, next to a human-readable ``manifest.json``
that is rewritten atomically (temporary file, then rename) after every step. The manifest holds
what the run was built from (the input table's path and hash, the id column, the schema and its
hash, the system message, the deployment and backend, body options) and, per chunk and attempt,
the JSONL file (path, hash, size, tokens), the file id, the batch id, its status, request counts,
timestamps, result file ids and the verified local copies of the results.

* The run id is a hash of the content: the same inputs give the same run (reopened, nothing sent
  twice); changed inputs give a new run, and `Run.describe` says what changed.
* Every step consults the manifest first. Before it uploads or creates it records its intent, and
  each batch's metadata carries the run id, chunk and attempt: a step cut short (a killed kernel)
  or a lost manifest is recovered from the service's own `files.list` and `batches.list`.
* A table of any size is split into chunks within the target's request, byte and token limits;
  chunks are submitted while the run's enqueued tokens stay under the quota, and a
  `token_limit_exceeded` answer is retried with backoff.
* Rows that did not come back `ok` can be sent again as follow-up attempts (optionally with other
  body options); `Run.results` gives one final row per input row, with `attempts` and `history`.

The notebooks open the run (01 prepares it and makes it the current run of ``out_dir``; 02 and 03
open the current run, or the one named by ``run_id``) and hand each other nothing else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd

from batchkit.errors import (
    JobError,
    LintError,
    PollTimeout,
    RunError,
    RunFailed,
    RunNotFinished,
)
from batchkit.downloads import count_lines, download_verified
from batchkit.jobs import TERMINAL_BATCH_STATUSES as TERMINAL

RUN_FORMAT = 1
RUNS_FOLDER = "runs"
MANIFEST_NAME = "manifest.json"
CURRENT_NAME = "CURRENT"

#: Batch metadata keys that tie a batch to its run (a lost manifest is rebuilt from them).
META_RUN = "batchkit_run"
META_CHUNK = "batchkit_chunk"
META_ATTEMPT = "batchkit_attempt"
META_SHA = "batchkit_sha256"

TIME_FIELDS = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
               "cancelling_at", "cancelled_at")
#: First wait after a `token_limit_exceeded` answer; doubled per refusal of the same attempt, capped.
QUOTA_FIRST_WAIT = 5.0
QUOTA_MAX_WAIT = 300.0
#: Events kept in the manifest's log.
MAX_EVENTS = 300


# ----- small file helpers --------------------------------------------------------------------------


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename.

    A reader sees the old file or the new one, never a part; a crash leaves at most a stray
    ``.tmp`` file. Folders are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def atomic_write_json(path: str | Path, value: Any) -> Path:
    """`value` as indented JSON (keys in insertion order), written atomically."""
    return atomic_write_bytes(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    """SHA-256 of `data` as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def _digest(value: Any) -> str:
    """A short stable hash of a JSON-able value (sorted keys, compact)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----- limits and splitting ------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """How a run is split and scheduled.

    Attributes:
        max_requests: requests per batch file (Azure 100,000; OpenAI 50,000).
        max_bytes: bytes per batch file (200 MB on both).
        token_quota: enqueued input tokens the run may hold in unfinished batches at once (the
            deployment's batch quota); also the most one file may carry. None: no quota is known,
            so nothing is held back.
    """

    max_requests: int
    max_bytes: int
    token_quota: int | None = None

    @classmethod
    def for_target(cls, target: str, *, max_requests: int = 0, max_bytes: int = 0,
                   token_quota: int | None = 0) -> Limits:
        """The target's file limits, each lowered by a positive argument; `token_quota` 0 or None: none.

        Raises:
            RunError: a limit above the target's own, or a negative one.
        """
        from batchkit.lint import FILE_LIMITS

        if target not in FILE_LIMITS:
            raise RunError(f"target={target!r}: use 'azure' or 'openai'.")
        top_requests, top_bytes = FILE_LIMITS[target]
        for name, value, top in (("max_requests", max_requests, top_requests), ("max_bytes", max_bytes, top_bytes)):
            if value < 0 or value > top:
                raise RunError(f"{name}={value:,} is outside 1..{top:,} (the {target} limit per batch file); "
                               f"use 0 for the limit itself.")
        if token_quota is not None and token_quota < 0:
            raise RunError(f"token_quota={token_quota} must be positive (or 0 for no quota).")
        return cls(max_requests or top_requests, max_bytes or top_bytes, token_quota or None)

    def as_dict(self) -> dict[str, Any]:
        """The limits as stored in the manifest."""
        return {"max_requests": self.max_requests, "max_bytes": self.max_bytes, "token_quota": self.token_quota}


@dataclass(frozen=True)
class EncodedLine:
    """One request line ready for a batch file: its id, its bytes (with the newline), its input tokens."""

    custom_id: str
    data: bytes
    tokens: int


def encode_lines(lines: Sequence[Mapping[str, Any]]) -> list[EncodedLine]:
    """Each request line as JSONL bytes with its estimated input tokens (what the quota counts)."""
    from batchkit.authoring import to_jsonl_bytes
    from batchkit.estimate import count_body_tokens

    encoded = to_jsonl_bytes(lines).splitlines(keepends=True)
    return [EncodedLine(str(line["custom_id"]), data, count_body_tokens(line.get("body") or {}))
            for line, data in zip(lines, encoded, strict=True)]


def split_lines(lines: Sequence[EncodedLine], limits: Limits) -> list[list[EncodedLine]]:
    """Consecutive groups of lines, each within `limits` (requests, bytes, tokens); never splits a line.

    Raises:
        RunError: one request alone is larger than the byte limit or the token quota.
    """
    chunks: list[list[EncodedLine]] = []
    current: list[EncodedLine] = []
    size = tokens = 0
    for line in lines:
        if len(line.data) > limits.max_bytes:
            raise RunError(f"Request {line.custom_id} alone is {len(line.data):,} bytes, over the "
                           f"{limits.max_bytes:,}-byte file limit; shorten its prompt.")
        if limits.token_quota and line.tokens > limits.token_quota:
            raise RunError(f"Request {line.custom_id} alone needs about {line.tokens:,} input tokens, over the "
                           f"token quota of {limits.token_quota:,}; shorten it or raise token_quota.")
        full = (len(current) >= limits.max_requests or size + len(line.data) > limits.max_bytes
                or (limits.token_quota is not None and tokens + line.tokens > limits.token_quota))
        if current and full:
            chunks.append(current)
            current, size, tokens = [], 0, 0
        current.append(line)
        size += len(line.data)
        tokens += line.tokens
    if current:
        chunks.append(current)
    return chunks


# ----- the run ------------------------------------------------------------------------------------


def runs_dir(out_dir: str | Path) -> Path:
    """The folder holding every run of `out_dir`."""
    return Path(out_dir) / RUNS_FOLDER


def current_run_id(out_dir: str | Path) -> str | None:
    """The id of the current run of `out_dir` (the one notebook 01 prepared last), or None."""
    pointer = runs_dir(out_dir) / CURRENT_NAME
    if not pointer.is_file():
        return None
    return pointer.read_text(encoding="utf-8").strip() or None


def list_runs(out_dir: str | Path) -> pd.DataFrame:
    """One row per run in `out_dir`: id, created, requests, chunks, state, and which one is current."""
    rows = []
    current = current_run_id(out_dir)
    folder = runs_dir(out_dir)
    for manifest in sorted(folder.glob(f"*/{MANIFEST_NAME}")) if folder.is_dir() else []:
        try:
            run = Run(manifest.parent, json.loads(manifest.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
        rows.append({"run_id": run.id, "created_at": run.manifest.get("created_at"), "requests": run.requests,
                     "chunks": len(run.chunks), "state": run.state, "current": run.id == current})
    return pd.DataFrame(rows, columns=["run_id", "created_at", "requests", "chunks", "state", "current"])


class Run:
    """A batch job held in a run folder (see the module docstring).

    Make one with `Run.prepare` (notebook 01) or `Run.from_jsonl`; reopen it with `Run.open`.
    Advance it with `advance` (upload, create, poll, download, retry: each at most once per chunk
    and attempt), read it with `results`, stop it with `cancel`.

    Attributes:
        folder: the run folder.
        manifest: the manifest as a dict (written by `save`).
        created: True when `prepare` made the run now, False when it reopened an existing one.
        previous: the run that was current before `prepare` made this one current (or None).
    """

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.created = False
        self.previous: Run | None = None
        self._quota_retry_at: dict[tuple[int, int], float] = {}

    # ----- making and opening ---------------------------------------------------------------------

    @classmethod
    def prepare(
        cls,
        requests: Sequence[Mapping[str, Any]],
        *,
        out_dir: str | Path,
        settings: Any,
        inputs_path: str | Path,
        id_column: str,
        ids_generated: bool = False,
        original_schema: Mapping[str, Any] | None = None,
        schema_source: str = "",
        system_message: str = "",
        prompt_column: str = "",
        template: str = "",
        body_options: Mapping[str, Any] | None = None,
        api: str = "chat",
        target: str = "azure",
        limits: Limits | None = None,
        stem: str = "requests",
        metadata: Mapping[str, str] | None = None,
        chunk_metadata: Mapping[int, Mapping[str, str]] | None = None,
        retry_metadata: Mapping[str, str] | None = None,
        check: bool = True,
        make_current: bool = True,
        inputs_kind: str = "table",
    ) -> Run:
        """Make the run for these request lines, or reopen it when the same inputs made one before.

        Args:
            requests: the request lines (`authoring.build_requests`), in input-row order.
            out_dir: the output folder; the run goes to ``<out_dir>/runs/<run_id>/``.
            settings: the `Settings` or `Connection` the run is for (backend, endpoint, deployment,
                api-version; part of the run id, so another service means another run).
            inputs_path: the input table the lines were built from (its hash is part of the run id).
            id_column: the table's id column (``custom_id`` for generated ids).
            ids_generated: the ids were generated by position (`inputs.with_ids` with ``""``).
            original_schema: the schema as the user wrote it, before the strict conversion
                (results are checked against it); default: the schema the lines carry.
            schema_source: where the schema came from (a path, ``module:Model``), for people.
            system_message, prompt_column, template: how the prompts were made (recorded).
            body_options: extra body fields of every line (e.g. ``{"max_tokens": 300}``).
            api: ``chat`` or ``responses``.
            target: the strict-schema and file-limit rules (``azure`` or ``openai``).
            limits: how to split and schedule; default `Limits.for_target(target)`.
            stem: the file name stem of the chunk files (``<stem>.jsonl`` or ``<stem>-001.jsonl``...).
            metadata: more batch metadata for every batch (flat strings; at most 12 pairs besides
                the run's own four).
            chunk_metadata: metadata for the first attempt of a chunk (by chunk number, from 1),
                over `metadata`.
            retry_metadata: metadata for follow-up attempts, over `metadata`.
            check: lint each chunk file and refuse the run when a line would fail (`LintError`).
            make_current: make this the current run of `out_dir` (what 02 and 03 open).
            inputs_kind: ``table`` (an input table) or ``requests`` (a ready JSONL file).

        Returns:
            The run; `created` says whether it is new, `describe()` says so in words.

        Raises:
            LintError: a chunk has error findings (nothing is written).
            RunError: no requests, a request too large for the limits, or bad metadata.
        """
        from batchkit.inputs import file_sha256

        if not requests:
            raise RunError("No request lines: a run needs at least one request.")
        limits = limits or Limits.for_target(target)
        service = _service_of(settings)
        inputs_file = Path(inputs_path)
        table_sha = file_sha256(inputs_file)
        encoded = encode_lines(requests)
        schema_sent = _schema_of_line(requests[0])
        original = dict(original_schema) if original_schema is not None else schema_sent
        extra = dict(metadata or {})
        per_chunk = {str(int(k)): dict(v) for k, v in (chunk_metadata or {}).items()}
        follow_up = dict(retry_metadata or {})
        for part in (extra, *per_chunk.values(), follow_up):
            _check_metadata({**extra, **part})
        fingerprint = {
            "input table": table_sha[:16],
            "id column": _digest([id_column, ids_generated]),
            "request lines": _lines_digest(encoded),
            "schema": _digest(original),
            "service": _digest(service),
            "limits": _digest(limits.as_dict()),
            "batch metadata": _digest([extra, per_chunk, follow_up]),
        }
        run_id = "run-" + _digest(fingerprint)[:12]
        folder = runs_dir(out_dir) / run_id
        previous_id = current_run_id(out_dir)
        previous = None
        if previous_id and previous_id != run_id and (runs_dir(out_dir) / previous_id / MANIFEST_NAME).is_file():
            previous = cls._load(runs_dir(out_dir) / previous_id)
        if (folder / MANIFEST_NAME).is_file():
            run = cls._load(folder)
            run._restore_chunk_files(encoded, limits)
            run.created = False
        else:
            chunks = split_lines(encoded, limits)
            if check:
                _lint_chunks(chunks, target=target)
            run = cls(folder, {})
            run.manifest = {
                "format": RUN_FORMAT,
                "run_id": run_id,
                "created_at": _now_iso(),
                "updated_at": _now_iso(),
                "fingerprint": fingerprint,
                "inputs": {
                    "kind": inputs_kind,
                    "path": _portable_path(inputs_file),
                    "sha256": table_sha,
                    "rows": len(requests),
                    "id_column": id_column,
                    "ids_generated": ids_generated,
                    "prompt_column": prompt_column,
                    "template": template,
                },
                "schema": {
                    "name": _schema_name_of_line(requests[0]),
                    "source": schema_source,
                    "sha256": sha256_bytes(json.dumps(original, sort_keys=True).encode("utf-8")),
                    "original": original,
                    "sent": schema_sent,
                },
                "system_message": system_message,
                "service": service,
                "api": api,
                "url": _url_of(requests[0]),
                "target": target,
                "body_options": dict(body_options or {}),
                "limits": limits.as_dict(),
                "metadata": extra,
                "chunk_metadata": per_chunk,
                "retry_metadata": follow_up,
                "needs_recovery": True,
                "hold": False,
                "chunks": [],
                "events": [],
            }
            names = _chunk_names(stem, len(chunks))
            for index, (name, chunk) in enumerate(zip(names, chunks, strict=True)):
                data = b"".join(line.data for line in chunk)
                atomic_write_bytes(folder / name, data)
                run.manifest["chunks"].append({
                    "chunk": index + 1,
                    "first_id": chunk[0].custom_id,
                    "last_id": chunk[-1].custom_id,
                    "attempts": [_new_attempt(run_id, index + 1, 1, name, data, len(chunk),
                                              sum(line.tokens for line in chunk))],
                })
            run._event(f"prepared: {len(requests):,} requests in {len(chunks)} batch file(s)")
            run.save()
            run.created = True
        if make_current:
            atomic_write_bytes(runs_dir(out_dir) / CURRENT_NAME, (run_id + "\n").encode("utf-8"))
        run.previous = previous
        return run

    @classmethod
    def from_jsonl(cls, path: str | Path, *, out_dir: str | Path, settings: Any, target: str = "azure",
                   limits: Limits | None = None, **options: Any) -> Run:
        """A run from a batch file written elsewhere: its lines, split within the limits.

        The results are joined to the request ids only (there is no input table). `options` go to
        `prepare` (e.g. `metadata`, `make_current`).
        """
        from batchkit.authoring import read_jsonl

        source = Path(path)
        if not source.is_file():
            raise RunError(f"No batch file at {source}: run notebook 01 first, or set jsonl_path to an existing file.")
        lines = read_jsonl(source)
        api = "responses" if lines and str(lines[0].get("url", "")).endswith("/responses") else "chat"
        return cls.prepare(lines, out_dir=out_dir, settings=settings, inputs_path=source, id_column="custom_id",
                           target=target, limits=limits, stem=source.stem, api=api, inputs_kind="requests", **options)

    @classmethod
    def open(cls, out_dir: str | Path, run_id: str = "") -> Run:
        """Open a run of `out_dir`: the one named `run_id`, or the current one (the last one prepared).

        Raises:
            RunError: there is no such run, or no run at all (the message says which notebook makes one).
        """
        chosen = run_id or current_run_id(out_dir)
        if not chosen:
            raise RunError(f"No run in {runs_dir(out_dir)}: run notebook 01 first (it prepares the run), "
                           "or set out_dir to the folder it wrote to.")
        folder = runs_dir(out_dir) / chosen
        if not (folder / MANIFEST_NAME).is_file():
            known = ", ".join(list_runs(out_dir)["run_id"]) or "none"
            raise RunError(f"No run {chosen!r} in {runs_dir(out_dir)} (runs there: {known}). Run notebook 01 again "
                           "with the same parameters to rebuild it: batches already sent are found on the service.",
                           run_id=chosen)
        return cls._load(folder)

    @classmethod
    def _load(cls, folder: Path) -> Run:
        path = folder / MANIFEST_NAME
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RunError(f"{path} is not valid JSON ({exc}). Restore it, or delete it and run notebook 01 again "
                           "with the same parameters: the batches are found again on the service.") from None
        if manifest.get("format") != RUN_FORMAT:
            raise RunError(f"{path} has format {manifest.get('format')!r}; this batchkit reads format {RUN_FORMAT}.")
        return cls(folder, manifest)

    def _restore_chunk_files(self, encoded: Sequence[EncodedLine], limits: Limits) -> None:
        """Rewrite a first-attempt chunk file that is missing or changed (its content is fixed by the id)."""
        chunks = split_lines(encoded, limits)
        for chunk, lines in zip(self.chunks, chunks, strict=True):
            first = chunk["attempts"][0]
            path = self.folder / first["path"]
            data = b"".join(line.data for line in lines)
            if not path.is_file() or sha256_bytes(path.read_bytes()) != first["sha256"]:
                atomic_write_bytes(path, data)

    # ----- reading the manifest -------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The run id (``run-`` and 12 hex digits of the content hash)."""
        return str(self.manifest["run_id"])

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """The chunks, each with its list of attempts (manifest records)."""
        return self.manifest["chunks"]

    @property
    def requests(self) -> int:
        """How many requests (input rows) the run has."""
        return int(self.manifest["inputs"]["rows"])

    @property
    def schema(self) -> dict[str, Any]:
        """The schema as the user wrote it (before the strict conversion)."""
        return self.manifest["schema"]["original"]

    @property
    def sent_schema(self) -> dict[str, Any]:
        """The strict schema the requests carry."""
        return self.manifest["schema"]["sent"]

    @property
    def manifest_path(self) -> Path:
        """Where the manifest is."""
        return self.folder / MANIFEST_NAME

    def attempts(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Every (chunk, attempt) pair, chunk by chunk, oldest attempt first."""
        for chunk in self.chunks:
            for attempt in chunk["attempts"]:
                yield chunk, attempt

    def latest(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Each chunk with its latest attempt."""
        for chunk in self.chunks:
            yield chunk, chunk["attempts"][-1]

    @property
    def finished(self) -> bool:
        """True when every attempt's batch is terminal and its results are downloaded."""
        return all(_attempt_done(attempt) for _, attempt in self.attempts())

    @property
    def state(self) -> str:
        """One word for the whole run: ``prepared``, ``running``, ``finished``, ``failed`` or ``held``."""
        attempts = [a for _, a in self.attempts()]
        if any(a.get("status") == "failed" and not _quota_failure(a) for a in attempts):
            return "failed"
        if all(_attempt_done(a) for a in attempts):
            return "finished"
        if self.manifest.get("hold"):
            return "held"
        if all(a["stage"] == "planned" for a in attempts):
            return "prepared"
        return "running"

    def status_frame(self) -> pd.DataFrame:
        """One row per chunk and attempt: requests, tokens, file and batch ids, status and counts."""
        rows = []
        for chunk, attempt in self.attempts():
            counts = attempt.get("request_counts") or {}
            rows.append({
                "chunk": chunk["chunk"],
                "attempt": attempt["attempt"],
                "requests": attempt["requests"],
                "tokens": attempt["tokens"],
                "file": attempt["path"],
                "file_id": attempt.get("file_id"),
                "batch_id": attempt.get("batch_id"),
                "status": attempt.get("status") or _stage_word(attempt),
                "completed": counts.get("completed"),
                "failed": counts.get("failed"),
                "downloaded": attempt["stage"] == "downloaded",
            })
        frame = pd.DataFrame(rows)
        for name in ("completed", "failed"):
            frame[name] = frame[name].astype("Int64")
        return frame

    def describe(self) -> str:
        """A few sentences for people: new or reopened, how it is split, what changed since the last run."""
        files = len(self.chunks)
        where = _portable_path(self.folder)
        split = f"{self.requests:,} request(s) in {files} batch file(s)"
        if self.created:
            text = f"New run {self.id}: {split}, in {where}/."
            if self.previous is not None:
                changed = [k for k, v in self.manifest["fingerprint"].items()
                           if self.previous.manifest.get("fingerprint", {}).get(k) != v]
                text += (f" The inputs differ from the previous run {self.previous.id} "
                         f"(changed: {', '.join(changed) or 'nothing recorded'}); that run is kept as it is.")
            return text
        return (f"Same inputs as before: reopened run {self.id} ({split}; {self.state}). "
                "Steps already done are not repeated: nothing is uploaded or submitted twice.")

    # ----- writing the manifest -------------------------------------------------------------------

    def save(self) -> None:
        """Write the manifest atomically."""
        self.manifest["updated_at"] = _now_iso()
        atomic_write_json(self.manifest_path, self.manifest)

    def _note_process(self) -> None:
        """Log which process advances the run, when it is another one than last time (a resume)."""
        text = f"advancing in process {os.getpid()}"
        if not any(e["event"] == text for e in self.manifest.get("events", [])[-50:]):
            self._event(text)
            self.save()

    def _event(self, text: str) -> None:
        events = self.manifest.setdefault("events", [])
        events.append({"at": _now_iso(), "event": text})
        del events[:-MAX_EVENTS]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the run's lock file while advancing it (another process gets a clear error)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / ".lock", "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunError(f"Run {self.id} is being advanced by another process (another kernel or notebook). "
                               "Wait for it to end, or stop it, then run this again.", run_id=self.id) from None
            # another process may have moved the run on since this object was read
            if self.manifest_path.is_file():
                self.manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    # ----- advancing ------------------------------------------------------------------------------

    def advance(
        self,
        conn: Any,
        *,
        wait: bool = True,
        interval: float = 2.0,
        max_interval: float = 60.0,
        backoff: float = 1.5,
        timeout: float | None = None,
        outage_budget: float | None = None,
        max_attempts: int = 1,
        retry_outcomes: Iterable[str] | None = None,
        retry_body: Mapping[str, Any] | None = None,
        file_timeout: float = 600.0,
        progress: Any = "auto",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        quota_first_wait: float = QUOTA_FIRST_WAIT,
        stop_when: Callable[[Run], bool] | None = None,
    ) -> Run:
        """Move the run on: recover, poll, download, retry, submit; with `wait`, until it is finished.

        Each step consults the manifest first, so calling this again (a re-run cell or notebook, or
        after a killed kernel) never uploads or creates a batch twice.

        Args:
            conn: the `Connection` from `connect()` (must point at the run's service).
            wait: poll until every batch is terminal and downloaded; False: submit what can be
                submitted now, update the statuses once, and return.
            interval, max_interval, backoff: the poll interval, its cap and growth factor.
            timeout: give up waiting after this many seconds (`PollTimeout`; the run keeps its state).
            outage_budget: seconds to keep retrying while the service does not answer (default 15 min).
            max_attempts: attempts per row in all; above 1, rows whose outcome is in
                `retry_outcomes` are sent again as follow-up batches (up to this many times).
            retry_outcomes: outcomes to retry (default: every outcome but `ok`).
            retry_body: body fields changed for follow-up attempts, e.g. ``{"max_tokens": 800}``.
            file_timeout: how long to wait for an upload to be processed.
            progress: "auto", "widget", "text", None, or a reporter (see `batchkit.progress`).
            sleep, clock: replaceable for tests.
            quota_first_wait: first wait after a `token_limit_exceeded` answer (doubles per refusal).
            stop_when: return early as soon as this is true of the run (after a save).

        Raises:
            RunFailed: a batch failed validation (the message gives its errors and what to fix).
            PollTimeout: `timeout` passed (run again to resume).
            ServiceUnreachable: the outage budget ran out (run again to resume).
        """
        from batchkit.jobs import DEFAULT_OUTAGE_BUDGET, Resilient
        from batchkit.progress import make_run_reporter

        client = self._client(conn)
        reporter = make_run_reporter(progress)
        budget = DEFAULT_OUTAGE_BUDGET if outage_budget is None else outage_budget

        def outage(what: str, seconds: float, wait_s: float, error: str) -> None:
            if reporter is not None:
                reporter.outage(f"service not answering for {seconds:.0f}s ({error}); retrying {what} in {wait_s:.0f}s "
                                f"(outage budget {budget:.0f}s)")

        caller = Resilient(budget, sleep=sleep, clock=clock, on_wait=outage,
                           endpoint=f"The service at {self.manifest['service']['endpoint']}")
        retry_set = set(retry_outcomes) if retry_outcomes is not None else None
        start = clock()
        delay = interval
        try:
            with self._locked():
                self._note_process()
                self._recover(client, caller)
                while True:
                    self._refresh(client, caller)
                    self._download_finished(client, caller)
                    if max_attempts > 1:
                        self._plan_retries(max_attempts, retry_set, retry_body)
                    self._submit_ready(client, caller, file_timeout=file_timeout, sleep=sleep, clock=clock,
                                       quota_first_wait=quota_first_wait)
                    if reporter is not None:
                        reporter.update_run(self.progress_rows(), clock() - start)
                    if self.finished or not wait or (stop_when is not None and stop_when(self)):
                        break
                    if self.manifest.get("hold") and not self._in_flight():
                        break
                    elapsed = clock() - start
                    if timeout is not None and elapsed + delay > timeout:
                        raise PollTimeout(
                            f"Run {self.id}: gave up waiting after {elapsed:.0f}s (timeout {timeout:.0f}s) with "
                            f"{self.summary()}. The batches keep running; run this notebook again with the "
                            f"same parameters (or a larger timeout) to resume.")
                    sleep(delay)
                    delay = min(delay * backoff, max_interval)
        finally:
            if reporter is not None:
                reporter.close()
        self.raise_if_failed()
        return self

    def submit(self, conn: Any, **options: Any) -> Run:
        """Upload and create the batches that can be submitted now; returns at once (`advance(wait=False)`)."""
        return self.advance(conn, wait=False, **options)

    def cancel(self, conn: Any, *, outage_budget: float | None = None) -> list[str]:
        """Cancel every batch of the run that is still running, and hold the chunks not yet submitted.

        Returns the ids of the batches asked to cancel. `advance` then only follows them to
        `cancelled` (their finished work is downloaded); call `release` to submit the held chunks.
        """
        from batchkit.jobs import DEFAULT_OUTAGE_BUDGET, Resilient

        client = self._client(conn)
        caller = Resilient(DEFAULT_OUTAGE_BUDGET if outage_budget is None else outage_budget)
        asked = []
        with self._locked():
            self.manifest["hold"] = True
            for _, attempt in self.attempts():
                if attempt.get("batch_id") and attempt.get("status") not in TERMINAL:
                    batch = caller.call(lambda a=attempt: client.batches.cancel(a["batch_id"]),
                                        what=f"cancel {attempt['batch_id']}", batch_id=attempt["batch_id"])
                    _record_batch(attempt, batch)
                    asked.append(attempt["batch_id"])
            self._event(f"cancel asked for {len(asked)} batch(es); chunks not yet submitted are held")
            self.save()
        return asked

    def release(self) -> None:
        """Undo the hold of `cancel`: the chunks not yet submitted are submitted by the next `advance`."""
        with self._locked():
            self.manifest["hold"] = False
            self._event("hold released")
            self.save()

    # ----- the steps --------------------------------------------------------------------------------

    def _client(self, conn: Any) -> Any:
        """The SDK client of `conn`, checked against the run's service, without SDK retries (ours rule)."""
        settings = getattr(conn, "settings", None)
        client = getattr(conn, "client", conn)
        if settings is not None:
            mine = self.manifest["service"]
            theirs = _service_of(settings)
            if (theirs["backend"], theirs["endpoint"]) != (mine["backend"], mine["endpoint"]):
                raise RunError(
                    f"Run {self.id} was prepared for {mine['backend']} at {mine['endpoint']}, but the connection "
                    f"points at {theirs['backend']} at {theirs['endpoint']}. Connect to the run's service, or run "
                    "notebook 01 again to prepare a run for this one.", run_id=self.id)
        with_options = getattr(client, "with_options", None)
        return with_options(max_retries=0, timeout=60.0) if with_options else client

    def _metadata(self, chunk: Mapping[str, Any], attempt: Mapping[str, Any]) -> dict[str, str]:
        """The batch metadata of an attempt: the run's, the chunk's or the follow-ups', and the run's own keys."""
        extra = dict(self.manifest.get("metadata", {}))
        if attempt["attempt"] == 1:
            extra.update(self.manifest.get("chunk_metadata", {}).get(str(chunk["chunk"]), {}))
        else:
            extra.update(self.manifest.get("retry_metadata", {}))
        return {**extra, META_RUN: self.id, META_CHUNK: str(chunk["chunk"]), META_ATTEMPT: str(attempt["attempt"]),
                META_SHA: attempt["sha256"][:16]}

    def _recover(self, client: Any, caller: Any) -> None:
        """Adopt batches and uploads of this run that the manifest does not record (lost manifest,
        or a step cut short between the call and the manifest write)."""
        unsure = [a for _, a in self.attempts() if a["stage"] in ("uploading", "creating")]
        if not self.manifest.get("needs_recovery") and not unsure:
            return
        found: dict[tuple[int, int], list[Any]] = {}
        for batch in caller.call(lambda: list(client.batches.list(limit=100)), what="list batches"):
            meta = getattr(batch, "metadata", None) or {}
            if meta.get(META_RUN) != self.id:
                continue
            try:
                key = (int(meta.get(META_CHUNK, "")), int(meta.get(META_ATTEMPT, "")))
            except ValueError:
                continue
            found.setdefault(key, []).append(batch)
        adopted = 0
        by_chunk = {c["chunk"]: c for c in self.chunks}
        for (chunk_no, attempt_no), batches in sorted(found.items()):
            chunk = by_chunk.get(chunk_no)
            if chunk is None:
                continue
            batches.sort(key=lambda b: (getattr(b, "created_at", 0) or 0))
            attempts = {a["attempt"]: a for a in chunk["attempts"]}
            attempt = attempts.get(attempt_no)
            if attempt is None:  # a follow-up attempt the lost manifest knew: rebuild it from the service
                attempt = self._rebuild_attempt(client, caller, chunk, attempt_no, batches[-1])
                if attempt is None:
                    continue
            if attempt.get("batch_id") and attempt["stage"] not in ("uploading", "creating"):
                continue
            known = set(attempt.get("rejected_batches", []))
            for batch in batches:
                if batch.id in known:
                    continue
                if str(batch.status) == "failed" and _batch_quota_failure(batch):
                    attempt.setdefault("rejected_batches", []).append(batch.id)
                    continue
                if (batch.metadata or {}).get(META_SHA) not in (None, attempt["sha256"][:16]):
                    continue
                attempt["file_id"] = batch.input_file_id
                attempt["file_status"] = "processed"
                _record_batch(attempt, batch)
                attempt["stage"] = "submitted"
                adopted += 1
        uploads = [a for _, a in self.attempts() if a["stage"] == "uploading" or
                   (self.manifest.get("needs_recovery") and a["stage"] == "planned")]
        if uploads:
            files = caller.call(lambda: list(client.files.list(purpose="batch")), what="list files")
            for attempt in uploads:
                match = [f for f in files if f.filename == attempt["upload_name"] and int(f.bytes or 0) == attempt["bytes"]
                         and str(getattr(f, "status", "processed")) not in ("error", "deleted")]
                if match:
                    match.sort(key=lambda f: f.created_at or 0)
                    attempt["file_id"] = match[-1].id
                    attempt["file_status"] = str(getattr(match[-1], "status", None) or "processed")
                    attempt["stage"] = "uploaded"
                    adopted += 1
                elif attempt["stage"] == "uploading":
                    attempt["stage"] = "planned"
        for _, attempt in self.attempts():
            if attempt["stage"] == "creating":  # no batch found: the create never reached the service
                attempt["stage"] = "uploaded"
        if adopted:
            self._event(f"recovered {adopted} upload(s)/batch(es) of this run from the service's lists")
        self.manifest["needs_recovery"] = False
        self.save()

    def _rebuild_attempt(self, client: Any, caller: Any, chunk: dict[str, Any], number: int,
                         batch: Any) -> dict[str, Any] | None:
        """Re-create the record of a follow-up attempt from its batch: its input file, read back."""
        if number != len(chunk["attempts"]) + 1 or not getattr(batch, "input_file_id", None):
            return None
        data = download_verified(client, batch.input_file_id, kind="input", batch_id=batch.id, caller=caller)
        name = _attempt_name(chunk["attempts"][0]["path"], number)
        atomic_write_bytes(self.folder / name, data)
        lines = [json.loads(raw) for raw in data.splitlines() if raw.strip()]
        from batchkit.estimate import count_body_tokens

        attempt = _new_attempt(self.id, chunk["chunk"], number, name, data, len(lines),
                               sum(count_body_tokens(line.get("body") or {}) for line in lines))
        attempt["stage"] = "creating"
        chunk["attempts"].append(attempt)
        return attempt

    def _refresh(self, client: Any, caller: Any) -> None:
        """Retrieve every submitted batch that is not terminal yet; a quota failure frees its attempt."""
        changed = False
        for chunk, attempt in self.attempts():
            if attempt["stage"] != "submitted" or attempt.get("status") in TERMINAL:
                continue
            batch_id = attempt["batch_id"]
            batch = self._retrieve(client, caller, batch_id)
            before = (attempt.get("status"), json.dumps(attempt.get("request_counts")))
            _record_batch(attempt, batch)
            if attempt["status"] == "failed" and _quota_failure(attempt):
                attempt.setdefault("rejected_batches", []).append(batch_id)
                self._event(f"chunk {chunk['chunk']} attempt {attempt['attempt']}: batch {batch_id} failed with "
                            "token_limit_exceeded; it will be created again when the quota allows")
                _clear_batch(attempt)
                attempt["stage"] = "uploaded"
                key = (chunk["chunk"], attempt["attempt"])
                self._quota_retry_at[key] = 0.0
            elif attempt["status"] in TERMINAL:
                self._event(f"chunk {chunk['chunk']} attempt {attempt['attempt']}: batch {batch_id} {attempt['status']}")
            if (attempt.get("status"), json.dumps(attempt.get("request_counts"))) != before:
                changed = True
        if changed:
            self.save()

    def _retrieve(self, client: Any, caller: Any, batch_id: str) -> Any:
        """`batches.retrieve` through the outage handling; an unknown batch is a clear `RunError`."""
        import openai

        try:
            return caller.call(lambda: client.batches.retrieve(batch_id), what=f"retrieve {batch_id}", batch_id=batch_id)
        except openai.NotFoundError:
            raise RunError(
                f"Batch {batch_id} of run {self.id} is unknown to the service at {self.manifest['service']['endpoint']} "
                "(was the service started afresh, with a new data folder?). Connect to the service that has it, or "
                f"delete {_portable_path(self.folder)} and run notebook 01 again to start the run anew.",
                run_id=self.id) from None

    def _download_finished(self, client: Any, caller: Any) -> None:
        """Download (verified) the result files of every terminal batch not downloaded yet."""
        for chunk, attempt in self.attempts():
            if attempt["stage"] != "submitted" or attempt.get("status") not in TERMINAL:
                continue
            saved: dict[str, Any] = {}
            for kind in ("output", "error"):
                file_id = attempt.get(f"{kind}_file_id")
                if not file_id:
                    continue
                data = download_verified(client, file_id, kind=kind, counts=attempt.get("request_counts") or {},
                                         status=attempt["status"], batch_id=attempt["batch_id"], caller=caller)
                name = _result_name(attempt["path"], kind)
                atomic_write_bytes(self.folder / name, data)
                saved[kind] = {"file_id": file_id, "path": name, "sha256": sha256_bytes(data), "bytes": len(data),
                               "lines": count_lines(data)}
            attempt["results"] = saved
            attempt["stage"] = "downloaded"
            self._event(f"chunk {chunk['chunk']} attempt {attempt['attempt']}: results downloaded and verified")
            self.save()

    def _in_flight(self) -> bool:
        return any(a["stage"] in ("uploading", "creating") or (a["stage"] == "submitted" and a.get("status") not in TERMINAL)
                   for _, a in self.attempts())

    def _held_tokens(self) -> int:
        return sum(a["tokens"] for _, a in self.attempts()
                   if a["stage"] in ("creating", "submitted") and a.get("status") not in TERMINAL)

    def _submit_ready(self, client: Any, caller: Any, *, file_timeout: float, sleep: Callable[[float], None],
                      clock: Callable[[], float], quota_first_wait: float) -> None:
        """Upload and create the attempts that fit under the quota, in chunk order."""
        if self.manifest.get("hold"):
            return
        quota = self.manifest["limits"].get("token_quota")
        pending = [(c, a) for c, a in self.attempts() if a["stage"] in ("planned", "uploaded")]
        for chunk, attempt in pending:
            key = (chunk["chunk"], attempt["attempt"])
            if self._quota_retry_at.get(key, 0.0) > clock():
                break  # the service refused for quota a moment ago: keep the order, try again later
            if quota and self._held_tokens() + attempt["tokens"] > quota:
                break
            if attempt["stage"] == "planned":
                self._upload(client, caller, chunk, attempt)
            if not self._wait_processed(client, caller, attempt, timeout=file_timeout, sleep=sleep, clock=clock):
                break
            if not self._create(client, caller, chunk, attempt, clock=clock, quota_first_wait=quota_first_wait):
                break

    def _upload(self, client: Any, caller: Any, chunk: dict[str, Any], attempt: dict[str, Any]) -> None:
        path = self.folder / attempt["path"]
        data = path.read_bytes() if path.is_file() else b""
        if sha256_bytes(data) != attempt["sha256"]:
            raise RunError(f"{path} is missing or changed since the run was prepared (hash differs). Run notebook 01 "
                           "again with the same parameters to restore it.", run_id=self.id)
        attempt["stage"] = "uploading"
        self.save()
        tries = [0]

        def upload() -> Any:
            if tries[0]:  # an earlier try may have reached the service before its answer was lost
                found = self._find_upload(client, attempt)
                if found is not None:
                    return found
            tries[0] += 1
            return client.files.create(file=(attempt["upload_name"], data), purpose="batch")

        uploaded = caller.call(upload, what=f"upload {attempt['upload_name']}")
        attempt["file_id"] = uploaded.id
        attempt["file_status"] = str(getattr(uploaded, "status", None) or "uploaded")
        attempt["stage"] = "uploaded"
        self._event(f"chunk {chunk['chunk']} attempt {attempt['attempt']}: uploaded as {uploaded.id}")
        self.save()

    def _wait_processed(self, client: Any, caller: Any, attempt: dict[str, Any], *, timeout: float,
                        sleep: Callable[[float], None], clock: Callable[[], float]) -> bool:
        """Wait until the attempt's upload is processed; False when it ended in error (attempt re-planned)."""
        ready = {"processed"} if _is_azure(client) else {"processed", "uploaded"}
        if attempt.get("file_status") in ready:
            return True
        deadline = clock() + timeout
        delay = 0.2
        while True:
            file = caller.call(lambda: client.files.retrieve(attempt["file_id"]), what=f"retrieve {attempt['file_id']}")
            status = str(getattr(file, "status", None) or "processed")
            attempt["file_status"] = status
            if status in ready:
                return True
            if status in ("error", "deleted"):
                details = getattr(file, "status_details", None) or "no details given"
                raise RunFailed(f"Upload {attempt['file_id']} of {attempt['path']} ended in status {status!r} "
                                f"({details}). Fix the file's problem and run notebook 01 again.", run_id=self.id)
            if clock() > deadline:
                raise PollTimeout(f"Upload {attempt['file_id']} is still {status!r} after {timeout:.0f}s; run this "
                                  "again later to continue (it is not uploaded twice).", file_id=attempt["file_id"])
            sleep(delay)
            delay = min(delay * 1.5, 5.0)

    def _create(self, client: Any, caller: Any, chunk: dict[str, Any], attempt: dict[str, Any], *,
                clock: Callable[[], float], quota_first_wait: float) -> bool:
        """Create the attempt's batch; False when the service refused it for quota (retried later)."""
        import openai

        attempt["stage"] = "creating"
        self.save()
        tries = [0]

        def create() -> Any:
            if tries[0]:  # an earlier try may have created the batch before its answer was lost
                found = self._find_batch(client, chunk, attempt)
                if found is not None:
                    return found
            tries[0] += 1
            return client.batches.create(input_file_id=attempt["file_id"], endpoint=self.manifest["url"],
                                         completion_window="24h", metadata=self._metadata(chunk, attempt))

        try:
            batch = caller.call(create, what=f"create the batch of chunk {chunk['chunk']}")
        except openai.BadRequestError as exc:
            attempt["stage"] = "uploaded"
            if "token_limit_exceeded" in f"{getattr(exc, 'code', '')} {exc}":
                refusals = attempt.get("quota_refusals", 0) + 1
                attempt["quota_refusals"] = refusals
                wait = min(quota_first_wait * 2 ** (refusals - 1), QUOTA_MAX_WAIT)
                self._quota_retry_at[(chunk["chunk"], attempt["attempt"])] = clock() + wait
                self._event(f"chunk {chunk['chunk']} attempt {attempt['attempt']}: create refused with "
                            f"token_limit_exceeded (refusal {refusals}); trying again in {wait:.0f}s")
                self.save()
                return False
            self.save()
            raise
        _record_batch(attempt, batch)
        attempt["stage"] = "submitted"
        self._event(f"chunk {chunk['chunk']} attempt {attempt['attempt']}: batch {batch.id} created")
        self.save()
        return True

    def _find_upload(self, client: Any, attempt: Mapping[str, Any]) -> Any:
        """The newest usable upload of this attempt on the service's file list (by name and size), or None."""
        files = [f for f in client.files.list(purpose="batch") if f.filename == attempt["upload_name"]
                 and int(f.bytes or 0) == attempt["bytes"] and str(getattr(f, "status", "")) not in ("error", "deleted")]
        return max(files, key=lambda f: f.created_at or 0) if files else None

    def _find_batch(self, client: Any, chunk: Mapping[str, Any], attempt: Mapping[str, Any]) -> Any:
        """A batch of this chunk and attempt on the service's list (by its metadata), not refused for quota, or None."""
        rejected = set(attempt.get("rejected_batches", []))
        for batch in client.batches.list(limit=100):
            meta = getattr(batch, "metadata", None) or {}
            if (meta.get(META_RUN) == self.id and meta.get(META_CHUNK) == str(chunk["chunk"])
                    and meta.get(META_ATTEMPT) == str(attempt["attempt"]) and batch.id not in rejected
                    and not (str(batch.status) == "failed" and _batch_quota_failure(batch))):
                return batch
        return None

    def _plan_retries(self, max_attempts: int, outcomes: set[str] | None, body: Mapping[str, Any] | None) -> None:
        """Add a follow-up attempt for each chunk whose latest attempt is done and left rows to retry."""
        for chunk, attempt in list(self.latest()):
            if not _attempt_done(attempt) or attempt["attempt"] >= max_attempts or attempt.get("retry_checked"):
                continue
            if attempt.get("status") == "failed":  # failed validation: the same lines would fail again
                continue
            frame = self._parse_attempt(attempt)
            wanted = frame["outcome"] != "ok" if outcomes is None else frame["outcome"].isin(sorted(outcomes))
            retry_ids = list(frame.loc[wanted, "custom_id"])
            attempt["retry_checked"] = True
            if not retry_ids:
                self.save()
                continue
            counts = frame.loc[wanted, "outcome"].value_counts().to_dict()
            first = chunk["attempts"][0]
            lines = _read_lines(self.folder / first["path"])
            keep = set(retry_ids)
            chosen = [line for line in lines if line["custom_id"] in keep]
            if body:
                for line in chosen:
                    line["body"] = {**line["body"], **dict(body)}
            encoded = encode_lines(chosen)
            data = b"".join(line.data for line in encoded)
            number = attempt["attempt"] + 1
            name = _attempt_name(first["path"], number)
            atomic_write_bytes(self.folder / name, data)
            follow = _new_attempt(self.id, chunk["chunk"], number, name, data, len(encoded),
                                  sum(line.tokens for line in encoded))
            follow["retry_of"] = {str(k): int(v) for k, v in counts.items()}
            follow["body_options"] = dict(body or {})
            chunk["attempts"].append(follow)
            self._event(f"chunk {chunk['chunk']}: attempt {number} planned for {len(chosen):,} row(s) "
                        f"({', '.join(f'{k} {v}' for k, v in follow['retry_of'].items())})")
            self.save()

    # ----- reading the results --------------------------------------------------------------------

    def _parse_attempt(self, attempt: Mapping[str, Any]) -> pd.DataFrame:
        """One row per request of an attempt: custom_id, answer fields, outcome, usage."""
        from batchkit.results import ResultFiles, parse_results

        ids = _custom_ids(self.folder / attempt["path"])
        files = ResultFiles(batch_id=attempt.get("batch_id"), status=attempt.get("status"),
                            output_file_id=attempt.get("output_file_id"), error_file_id=attempt.get("error_file_id"))
        saved = attempt.get("results") or {}
        for kind in ("output", "error"):
            info = saved.get(kind)
            if info:
                data = (self.folder / info["path"]).read_bytes()
                if sha256_bytes(data) != info["sha256"]:
                    raise RunError(f"{self.folder / info['path']} changed since it was downloaded; delete it and "
                                   "run notebook 02 again to download it anew.", run_id=self.id)
                setattr(files, f"{kind}_data", data)  # the verified bytes, streamed by parse_results
        status = attempt.get("status") if _attempt_done(attempt) else None
        frame = parse_results(files, inputs=ids, schema=self.sent_schema, original_schema=self._original_schema(),
                              batch_status=status)
        if not _attempt_done(attempt):
            where = attempt.get("batch_id") or "not submitted yet"
            frame["error"] = f"no result yet (chunk batch {where}, {attempt.get('status') or _stage_word(attempt)})"
        return frame

    def _original_schema(self) -> Any:
        """The schema answers are checked against: the pydantic model when the run was made from one
        that is importable here (rows can then become model objects), else the original JSON schema."""
        cached = getattr(self, "_original", None)
        if cached is None:
            cached = self.schema
            source = self.manifest["schema"].get("source") or ""
            if ":" in source and not source.lower().endswith(".json"):
                from batchkit.errors import ConfigError
                from batchkit.inputs import load_schema

                try:
                    cached = load_schema(source).schema
                except ConfigError:
                    cached = self.schema
            self._original = cached
        return cached

    def inputs_frame(self) -> pd.DataFrame:
        """The input table the run was built from (checked against its hash), with its id column.

        Raises:
            RunError: the table is gone or changed since the run was prepared.
        """
        from batchkit.inputs import file_sha256, read_table, with_ids

        info = self.manifest["inputs"]
        path = _resolve(info["path"])
        if not path.is_file() or file_sha256(path) != info["sha256"]:
            state = "is missing" if not path.is_file() else "changed"
            raise RunError(f"The input table {info['path']} {state} since run {self.id} was prepared. Restore it, or "
                           "run notebook 01 again to prepare a run for the new table.", run_id=self.id)
        if info.get("kind") == "requests":
            return pd.DataFrame({"custom_id": self._all_ids()})
        frame = read_table(path)
        frame, _ = with_ids(frame, "" if info.get("ids_generated") else info["id_column"])
        return frame

    def _all_ids(self) -> list[str]:
        return [cid for chunk in self.chunks for cid in _custom_ids(self.folder / chunk["attempts"][0]["path"])]

    def results(self, *, allow_partial: bool = False) -> pd.DataFrame:
        """The final table: one row per input row, in input order, joined to the input columns.

        Each row has the answer fields and outcome of its latest attempt, plus `attempts` (how
        many batches carried it), `history` (the outcomes of the earlier attempts, oldest first),
        `chunk` and `batch_id` (of the final attempt). Rows of batches that have not finished are
        `missing` (only with `allow_partial`).

        Raises:
            RunNotFinished: some batch is not terminal or not downloaded, and not `allow_partial`.
        """
        if not allow_partial:
            self.raise_if_failed()
        if not self.finished and not allow_partial:
            raise RunNotFinished(
                f"Run {self.id} is not finished: {self.summary()}. Run notebook 02 again with the same parameters "
                "to keep polling (nothing is submitted twice), or pass allow_partial=True to read what is there.",
                run_id=self.id)
        parts = []
        for chunk, attempt in self.attempts():
            frame = self._parse_attempt(attempt)
            frame["chunk"] = chunk["chunk"]
            frame["attempt"] = attempt["attempt"]
            frame["batch_id"] = attempt.get("batch_id")
            frame["_done"] = _attempt_done(attempt)
            parts.append(frame)
        answers = pd.concat(parts, ignore_index=True)
        done = answers[answers["_done"]]
        self._by_attempt = (done.groupby(["chunk", "attempt", "outcome"]).size().rename("rows").reset_index())
        final = merge_attempts(answers)
        inputs = self.inputs_frame()
        id_column = "custom_id" if self.manifest["inputs"].get("ids_generated") else self.manifest["inputs"]["id_column"]
        base = inputs.rename(columns={id_column: "custom_id"})
        clashes = [c for c in base.columns if c in final.columns and c != "custom_id"]
        base = base.rename(columns={c: f"{c}_input" for c in clashes})
        table = base.merge(final, left_on="custom_id", right_index=True, how="left", validate="one_to_one")
        table["attempts"] = table["attempts"].astype("Int64")
        return table.reset_index(drop=True)

    def outcomes_by_attempt(self) -> pd.DataFrame:
        """Rows per chunk, attempt and outcome, over the finished attempts (columns chunk, attempt,
        outcome, rows): how the outcomes changed from one attempt to the next."""
        if getattr(self, "_by_attempt", None) is None:
            self.results(allow_partial=True)
        return self._by_attempt.copy()

    def resumes(self) -> list[pd.Timestamp]:
        """When another process than the one before took over advancing the run (UTC), from its log."""
        stamps = [pd.Timestamp(e["at"]) for e in self.manifest.get("events", []) if e["event"].startswith("advancing in process")]
        return stamps

    def summary(self) -> str:
        """Counts of the batches by status and of the requests done, in one line."""
        statuses: dict[str, int] = {}
        done = total = 0
        for _, attempt in self.attempts():
            word = attempt.get("status") or _stage_word(attempt)
            statuses[word] = statuses.get(word, 0) + 1
        for _, attempt in self.latest():
            counts = attempt.get("request_counts") or {}
            done += int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
            total += attempt["requests"]
        words = ", ".join(f"{n} {s}" for s, n in statuses.items())
        return f"{done:,} of {total:,} requests answered or failed in the latest attempts; batches: {words}"

    def progress_rows(self) -> list[dict[str, Any]]:
        """What a progress display shows: one dict per chunk attempt (status, counts, times)."""
        rows = []
        for chunk, attempt in self.attempts():
            counts = attempt.get("request_counts") or {}
            rows.append({
                "run_id": self.id, "chunk": chunk["chunk"], "chunks": len(self.chunks), "attempt": attempt["attempt"],
                "batch_id": attempt.get("batch_id"), "status": attempt.get("status") or _stage_word(attempt),
                "completed": int(counts.get("completed") or 0), "failed": int(counts.get("failed") or 0),
                "total": int(counts.get("total") or 0) or attempt["requests"],
            })
        return rows

    def raise_if_failed(self) -> None:
        """Raise `RunFailed` when a batch of the run failed validation (its errors and the fix)."""
        failed = [(c, a) for c, a in self.attempts() if a.get("status") == "failed" and not _quota_failure(a)]
        if not failed:
            return
        details = "; ".join(f"chunk {c['chunk']} batch {a['batch_id']}: {'; '.join(a.get('errors') or ['no errors given'])}"
                            for c, a in failed[:3])
        raise RunFailed(f"Run {self.id}: {len(failed)} batch(es) failed validation, so their requests did not run "
                        f"({details}). Fix the input (notebook 01's lint shows such problems) and run 01 again: the "
                        "corrected inputs make a new run.", run_id=self.id)

    def timeline(self) -> pd.DataFrame:
        """One row per batch: chunk, attempt, requests, status and its timestamps (UTC datetimes)."""
        rows = []
        for chunk, attempt in self.attempts():
            times = attempt.get("times") or {}
            row = {"chunk": chunk["chunk"], "attempt": attempt["attempt"], "requests": attempt["requests"],
                   "status": attempt.get("status") or _stage_word(attempt)}
            for name in TIME_FIELDS:
                value = times.get(name)
                row[name] = pd.to_datetime(value, unit="s", utc=True) if value else pd.NaT
            rows.append(row)
        return pd.DataFrame(rows)

    # ----- for notebooks: reading a run ------------------------------------------------------------

    def __repr__(self) -> str:
        return f"Run({self.id}: {self.state}, {self.requests:,} request(s) in {len(self.chunks)} batch file(s))"

    def headline(self) -> str:
        """`Run run-…: 3 requests in 1 batch file, from data/buildings.csv; finished.`"""
        source = self.manifest["inputs"]["path"]
        return (f"Run {self.id}: {self.requests:,} request(s) in {len(self.chunks)} batch file(s), from {source}; "
                f"{self.state}. {self.summary()}.")

    @property
    def fields(self) -> list[str]:
        """The top-level fields of the run's schema, in schema order."""
        return list((self.schema.get("properties") or {}).keys())

    def option_changes(self, *, max_tokens: int = 0) -> dict[str, Any] | None:
        """Body changes for follow-up attempts, named for the run's API (None when nothing changes).

        `max_tokens` above 0 becomes ``max_tokens`` (Chat Completions) or ``max_output_tokens``
        (Responses API).
        """
        if max_tokens <= 0:
            return None
        return {"max_output_tokens" if self.manifest.get("api") == "responses" else "max_tokens": int(max_tokens)}

    def show_line(self, index: int = 0) -> None:
        """Print request line `index` of the first batch file, indented for reading."""
        lines = _read_lines(self.folder / self.chunks[0]["attempts"][0]["path"])
        print(json.dumps(lines[index], indent=2, ensure_ascii=False))

    def request_lines(self) -> list[dict[str, Any]]:
        """Every request line of the run (first attempts), in input order."""
        return [line for chunk in self.chunks for line in _read_lines(self.folder / chunk["attempts"][0]["path"])]

    def output_lines(self) -> list[dict[str, Any]]:
        """Every line of every downloaded output file (all attempts)."""
        out: list[dict[str, Any]] = []
        for _, attempt in self.attempts():
            info = (attempt.get("results") or {}).get("output")
            if info:
                out.extend(_read_lines(self.folder / info["path"]))
        return out

    def downloads_frame(self) -> pd.DataFrame:
        """One row per downloaded result file: chunk, attempt, kind, file id, bytes, lines, local file."""
        rows = []
        for chunk, attempt in self.attempts():
            for kind, info in (attempt.get("results") or {}).items():
                rows.append({"chunk": chunk["chunk"], "attempt": attempt["attempt"], "kind": kind,
                             "file_id": info["file_id"], "bytes": info["bytes"], "lines": info["lines"],
                             "saved as": info["path"], "verified": True})
        return pd.DataFrame(rows, columns=["chunk", "attempt", "kind", "file_id", "bytes", "lines", "saved as", "verified"])

    def next_step(self) -> str:
        """What to do now, in a sentence, from the run's state."""
        state = self.state
        if state == "finished":
            return f"All {sum(1 for _ in self.attempts())} batch(es) of {self.id} finished: run notebook 03 to read the results."
        if state == "failed":
            return "A batch failed validation: fix the input (see the errors above) and run notebook 01 again."
        if state == "held":
            return f"{self.id} is held after a cancel: call run.release() to submit its remaining chunks."
        if state == "prepared":
            return f"Nothing submitted yet for {self.id}: run this notebook to submit it."
        return (f"{self.id} is running on the service ({self.summary()}). To collect it, run this notebook again with the "
                "same parameters: it resumes polling and submits nothing twice. Then run notebook 03.")

    def batches(self, conn: Any) -> list[Any]:
        """The run's batches (every attempt that has one) as the service reports them now."""
        from batchkit.jobs import Resilient

        client = self._client(conn)
        caller = Resilient()
        return [self._retrieve(client, caller, a["batch_id"]) for _, a in self.attempts() if a.get("batch_id")]

    def refresh(self, conn: Any, *, outage_budget: float | None = None) -> Run:
        """Update the statuses of the run's batches once and download what has finished; submits nothing."""
        from batchkit.jobs import DEFAULT_OUTAGE_BUDGET, Resilient

        client = self._client(conn)
        caller = Resilient(DEFAULT_OUTAGE_BUDGET if outage_budget is None else outage_budget)
        with self._locked():
            self._recover(client, caller)
            self._refresh(client, caller)
            self._download_finished(client, caller)
        return self

    def subset(self, rows: int, *, label: str) -> Run:
        """A run of its own for the first `rows` requests (e.g. a demonstration), next to this one.

        Its id comes from the same content plus `label`, so asking again reopens it; it does not
        become the current run.
        """
        lines = self.request_lines()[:rows]
        source = self.folder / self.chunks[0]["attempts"][0]["path"]
        return Run.prepare(lines, out_dir=self.folder.parent.parent, settings=self.manifest["service"],
                           inputs_path=source, id_column="custom_id", original_schema=self.schema,
                           schema_source=self.manifest["schema"]["source"], system_message=self.manifest["system_message"],
                           api=self.manifest.get("api", "chat"), target=self.manifest.get("target", "azure"),
                           stem=f"{Path(self.chunks[0]['attempts'][0]['path']).stem}-{label}",
                           metadata={"batchkit_label": label}, make_current=False, inputs_kind="requests")

    def save_table(self, table: pd.DataFrame, folder: str | Path, stem: str = "results") -> tuple[Path, Path]:
        """Write `table` as `<stem>.csv` and `<stem>.parquet` in `folder`, each atomically; returns both paths."""
        from batchkit.results import save_results

        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".save-", dir=target) as scratch:
            written = save_results(table, scratch, stem)
            finals = []
            for path in written:
                final = target / Path(path).name
                os.replace(path, final)
                finals.append(final)
        self._event(f"results saved to {', '.join(_portable_path(p) for p in finals)}")
        return finals[0], finals[1]

    def check_outcomes(self, table: pd.DataFrame, *, max_failed: int = 0) -> str:
        """A sentence on the outcomes; `RunFailed` when more than `max_failed` rows are not `ok`.

        The message counts the rows by outcome and says what to do next (retry them, or accept
        them by raising `max_failed`).
        """
        counts = table["outcome"].value_counts()
        bad = counts.drop("ok", errors="ignore")
        unresolved = int(bad.sum())
        words = ", ".join(f"{name} {int(n):,}" for name, n in bad.items())
        if unresolved == 0:
            return f"All {len(table):,} rows came back ok."
        text = f"{unresolved:,} of {len(table):,} rows did not come back ok ({words})"
        if unresolved > max_failed:
            raise RunFailed(
                f"Run {self.id}: {text}, more than max_failed={max_failed}. Next: run notebook 02 again with "
                f"max_attempts above {self._max_attempt()} to send them again (optionally with retry_max_tokens "
                "for truncated rows), or set max_failed to accept them; failed_rows(table) lists them.",
                run_id=self.id)
        return f"{text}; within max_failed={max_failed}."

    def _max_attempt(self) -> int:
        return max(a["attempt"] for _, a in self.attempts())


def merge_attempts(answers: pd.DataFrame) -> pd.DataFrame:
    """One final row per custom_id from the rows of every attempt (indexed by custom_id).

    `answers` has a row per request and attempt, with `custom_id`, `attempt` and `_done` (the
    attempt's results are in). The final row of an id is its latest finished attempt (or, when
    none has finished, its latest attempt); `attempts` counts the attempts that carried it and
    `history` lists the outcomes of its finished attempts before the final one, oldest first.
    """
    answers = answers.sort_values(["attempt"], kind="stable")
    attempts = answers.groupby("custom_id", sort=False).size().rename("attempts")
    done = answers[answers["_done"]]
    final_done = done.drop_duplicates("custom_id", keep="last")
    rest = answers[~answers["custom_id"].isin(final_done["custom_id"])].drop_duplicates("custom_id", keep="last")
    final = pd.concat([final_done, rest]).set_index("custom_id")
    history = pd.Series([[] for _ in range(len(final))], index=final.index, dtype=object, name="history")
    repeated = done[done["custom_id"].duplicated(keep=False)]
    if not repeated.empty:
        earlier = repeated.groupby("custom_id", sort=False)["outcome"].agg(lambda s: list(s)[:-1])
        history.loc[earlier.index] = earlier
    return final.drop(columns=["attempt", "_done"]).join(attempts).join(history)


# ----- helpers -------------------------------------------------------------------------------------


def _service_of(settings: Any) -> dict[str, Any]:
    """The service part of the run id: backend, endpoint, deployment, api-version (never a key).

    `settings` is a `Settings`, a `Connection`, or such a dict (a manifest's ``service``).
    """
    if isinstance(settings, Mapping):
        return {key: settings.get(key) for key in ("backend", "endpoint", "deployment", "api_version")}
    inner = getattr(settings, "settings", settings)
    return {"backend": str(inner.backend), "endpoint": str(inner.endpoint).rstrip("/"),
            "deployment": str(inner.deployment), "api_version": inner.api_version}


def _schema_of_line(line: Mapping[str, Any]) -> dict[str, Any]:
    body = line.get("body") or {}
    block = (body.get("response_format") or {}).get("json_schema")
    if isinstance(block, Mapping) and isinstance(block.get("schema"), Mapping):
        return dict(block["schema"])
    fmt = (body.get("text") or {}).get("format")  # Responses API
    if isinstance(fmt, Mapping) and isinstance(fmt.get("schema"), Mapping):
        return dict(fmt["schema"])
    return {}


def _schema_name_of_line(line: Mapping[str, Any]) -> str | None:
    body = line.get("body") or {}
    block = (body.get("response_format") or {}).get("json_schema") or (body.get("text") or {}).get("format") or {}
    return block.get("name") if isinstance(block, Mapping) else None


def _url_of(line: Mapping[str, Any]) -> str:
    return str(line.get("url") or "/chat/completions")


def _check_metadata(extra: Mapping[str, str]) -> None:
    from batchkit.lint import has_errors, lint_batch_metadata

    if len(extra) > 12:
        raise RunError(f"metadata has {len(extra)} pairs; at most 12 fit beside the run's own 4 (16 in all).")
    reserved = {META_RUN, META_CHUNK, META_ATTEMPT, META_SHA} & set(extra)
    if reserved:
        raise RunError(f"metadata key {sorted(reserved)[0]!r} is the run's own; choose another name.")
    findings = lint_batch_metadata(dict(extra))
    if has_errors(findings):
        raise RunError(f"metadata would be refused by the service: {findings[0].message}")


def _lint_chunks(chunks: Sequence[Sequence[EncodedLine]], *, target: str) -> None:
    """Raise `LintError` (nothing prepared) when a chunk has a line the service would refuse."""
    from batchkit.lint import lint_batch_file

    errors = []
    for chunk in chunks:
        for finding in lint_batch_file([line.data for line in chunk], target=target):
            if getattr(finding, "severity", "error") == "error":
                errors.append(finding)
    if errors:
        first = errors[0]
        raise LintError(f"Not prepared: {len(errors)} error finding(s), first: {first.message} Fix the schema or rows "
                        "and build the requests again.", findings=errors)


def _lines_digest(lines: Iterable[EncodedLine]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.data)
    return digest.hexdigest()[:16]


def _chunk_names(stem: str, count: int) -> list[str]:
    if count == 1:
        return [f"{stem}.jsonl"]
    width = max(3, len(str(count)))
    return [f"{stem}-{n:0{width}d}.jsonl" for n in range(1, count + 1)]


def _attempt_name(first_path: str, number: int) -> str:
    return f"{Path(first_path).stem}.attempt{number}.jsonl"


def _result_name(path: str, kind: str) -> str:
    return f"{Path(path).stem}.{kind}.jsonl"


def _new_attempt(run_id: str, chunk: int, number: int, path: str, data: bytes, requests: int, tokens: int) -> dict[str, Any]:
    return {
        "attempt": number,
        "path": path,
        "sha256": sha256_bytes(data),
        "requests": requests,
        "bytes": len(data),
        "tokens": tokens,
        "upload_name": f"{run_id}-chunk{chunk:03d}-attempt{number}.jsonl",
        "stage": "planned",
        "file_id": None,
        "file_status": None,
        "batch_id": None,
        "status": None,
        "request_counts": None,
        "output_file_id": None,
        "error_file_id": None,
        "errors": [],
        "times": {},
    }


def _record_batch(attempt: dict[str, Any], batch: Any) -> None:
    """Copy a batch's id, status, counts, file ids, errors and times into its attempt record."""
    attempt["batch_id"] = batch.id
    attempt["status"] = str(batch.status)
    rc = getattr(batch, "request_counts", None)
    attempt["request_counts"] = ({"total": int(rc.total or 0), "completed": int(rc.completed or 0), "failed": int(rc.failed or 0)}
                                 if rc is not None else None)
    attempt["output_file_id"] = getattr(batch, "output_file_id", None) or None
    attempt["error_file_id"] = getattr(batch, "error_file_id", None) or None
    from batchkit.jobs import batch_errors

    attempt["errors"] = batch_errors(batch)
    attempt["error_codes"] = [str(getattr(e, "code", "")) for e in (getattr(getattr(batch, "errors", None), "data", None) or [])]
    attempt["times"] = {name: getattr(batch, name, None) for name in TIME_FIELDS if getattr(batch, name, None)}


def _clear_batch(attempt: dict[str, Any]) -> None:
    for key in ("batch_id", "status", "request_counts", "output_file_id", "error_file_id"):
        attempt[key] = None
    attempt["errors"], attempt["error_codes"], attempt["times"] = [], [], {}


def _quota_failure(attempt: Mapping[str, Any]) -> bool:
    return "token_limit_exceeded" in (attempt.get("error_codes") or [])


def _batch_quota_failure(batch: Any) -> bool:
    data = getattr(getattr(batch, "errors", None), "data", None) or []
    return any(str(getattr(e, "code", "")) == "token_limit_exceeded" for e in data)


def _attempt_done(attempt: Mapping[str, Any]) -> bool:
    return attempt["stage"] == "downloaded"


def _stage_word(attempt: Mapping[str, Any]) -> str:
    return {"planned": "not submitted", "uploading": "uploading", "uploaded": "uploaded", "creating": "creating",
            "submitted": "submitted", "downloaded": "downloaded"}[attempt["stage"]]


class _IdOnly(msgspec.Struct):
    custom_id: str


_ID_ONLY = msgspec.json.Decoder(_IdOnly)


def _custom_ids(path: Path) -> list[str]:
    """The custom_ids of a request file in line order, without building its lines (msgspec skips
    every other field in C); a line it cannot read that way is read whole."""
    decode = _ID_ONLY.decode
    ids = []
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                ids.append(decode(raw).custom_id)
            except (msgspec.DecodeError, msgspec.ValidationError):
                if raw.strip():
                    ids.append(json.loads(raw)["custom_id"])
    return ids


def _read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_bytes().splitlines() if raw.strip()]


def _is_azure(client: Any) -> bool:
    import openai

    return isinstance(client, openai.AzureOpenAI)


def _portable_path(path: str | Path) -> str:
    """A path relative to the project root when inside it, else absolute (for the manifest)."""
    from batchkit.config import project_root

    target = Path(path).resolve()
    try:
        return target.relative_to(project_root().resolve()).as_posix()
    except ValueError:
        return str(target)


def _resolve(path: str) -> Path:
    from batchkit.config import project_root

    candidate = Path(path)
    return candidate if candidate.is_absolute() else project_root() / candidate


# ----- command line ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m batchkit run {list,status,advance} [--out-dir DIR] [--run-id ID] ...`.

    `advance` moves a run on (as notebook 02 does): `--no-wait` submits and returns, otherwise it
    polls until the run is finished. The backend comes from `.env` and the environment, as for
    `connect()` (a local service is not started here). Exit status 0 when the run advanced, 1 when
    it failed or could not be advanced (the message says why and what to do), 2 for usage errors.
    """
    import argparse
    import sys

    from batchkit.errors import BatchkitError

    parser = argparse.ArgumentParser(prog="python -m batchkit run", description="Show or advance a run.")
    parser.add_argument("command", choices=("list", "status", "advance"))
    parser.add_argument("--out-dir", default="out", help="the folder the run was prepared in (default: out)")
    parser.add_argument("--run-id", default="", help="the run (default: the current run of --out-dir)")
    parser.add_argument("--no-wait", action="store_true", help="advance: submit and return instead of polling")
    parser.add_argument("--interval", type=float, default=5.0, help="advance: first poll interval in seconds")
    parser.add_argument("--max-interval", type=float, default=60.0, help="advance: cap on the poll interval")
    parser.add_argument("--timeout", type=float, default=None, help="advance: give up after this many seconds")
    parser.add_argument("--outage-budget", type=float, default=None, help="advance: seconds to ride out an outage")
    parser.add_argument("--max-attempts", type=int, default=1, help="advance: attempts per row (above 1 retries)")
    parser.add_argument("--retry-max-tokens", type=int, default=0, help="advance: answer-token cap for retries")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "list":
            print(list_runs(args.out_dir).to_string(index=False))
            return 0
        run = Run.open(args.out_dir, args.run_id)
        if args.command == "status":
            print(run.headline())
            print(run.status_frame().to_string(index=False))
            return 0
        from batchkit.config import connect

        conn = connect(start_local=False)
        run.advance(conn, wait=not args.no_wait, interval=args.interval, max_interval=args.max_interval,
                    timeout=args.timeout, outage_budget=args.outage_budget, max_attempts=args.max_attempts,
                    retry_body=run.option_changes(max_tokens=args.retry_max_tokens), progress="text")
        print(run.next_step())
        return 0
    except BatchkitError as exc:
        print(f"python -m batchkit run {args.command}: {exc}", file=sys.stderr)
        return 1
