"""Upload a batch file, create the batch, poll it to a terminal status, cancel and list batches.

One poll loop (`poll`) serves both the file (`wait_for_file`) and the batch (`poll_batch`): an explicit
set of terminal statuses, an interval that grows by `backoff` up to `max_interval` (or follows the
server's `openai-poll-after-ms` hint), an overall `timeout`, and `sleep`/`clock` that tests replace.

Every call to the service can go through a `Resilient` caller, which rides out an outage (connection
errors, timeouts, 429 with its `retry-after`, 5xx) with capped backoff for up to an outage budget
(default 15 minutes) and then raises `ServiceUnreachable` naming the batch and how to resume.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from batchkit.errors import JobError, LintError, PollTimeout, ServiceUnreachable
from batchkit.progress import Reporter, make_reporter

T = TypeVar("T")

#: Every status after which a batch never changes again.
TERMINAL_BATCH_STATUSES: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
#: File statuses after which waiting stops (`processed` is the good one).
TERMINAL_FILE_STATUSES: frozenset[str] = frozenset({"processed", "error", "deleted"})

TIMESTAMP_FIELDS: tuple[str, ...] = (
    "created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "expires_at",
)


#: HTTP statuses that mean "the service is briefly unable", worth waiting out (as the SDK retries them).
RETRY_STATUSES: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504})
#: The default outage budget: how long a call keeps retrying a service that does not answer (seconds).
DEFAULT_OUTAGE_BUDGET = 15 * 60.0


def transient_error(exc: BaseException) -> tuple[bool, float | None]:
    """Whether `exc` is worth retrying (connection error, timeout, 408/409/429/5xx), and the server's
    `retry-after` (or `retry-after-ms`) hint in seconds when it sent one."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True, None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status in RETRY_STATUSES or status >= 500:
            return True, _retry_after(exc.response.headers if exc.response is not None else None)
    return False, None


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            import email.utils

            parsed = email.utils.parsedate_to_datetime(value) if name == "retry-after" else None
            if parsed is None:
                continue
            seconds = parsed.timestamp() - time.time()
        return max(seconds, 0.0)
    return None


def describe_error(exc: BaseException) -> str:
    """A one-line description of a failed call: the class, the HTTP status if any, the message."""
    status = getattr(exc, "status_code", None)
    text = str(getattr(exc, "message", None) or exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {text[:160]}"


class Resilient:
    """Calls the service and rides out outages: retries transient errors with capped backoff.

    An outage starts at the first failed call and ends at the next successful one. Within it, waits
    grow from `first_wait` by `factor` up to `max_wait` seconds; a 429's `retry-after` is honoured.
    When the outage has lasted `budget` seconds, `ServiceUnreachable` is raised (carrying the batch
    id given to `call`). `on_wait(what, outage_seconds, next_wait, error_text)` is told about each
    retry (progress displays show it); `sleep` and `clock` are replaceable for tests.
    """

    def __init__(
        self,
        budget: float = DEFAULT_OUTAGE_BUDGET,
        *,
        first_wait: float = 1.0,
        max_wait: float = 30.0,
        factor: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        on_wait: Callable[[str, float, float, str], None] | None = None,
        endpoint: str = "the service",
    ) -> None:
        if budget < 0 or first_wait <= 0 or max_wait <= 0 or factor < 1:
            raise ValueError("budget must be >= 0, first_wait and max_wait > 0, factor >= 1")
        self.budget = budget
        self.first_wait = first_wait
        self.max_wait = max_wait
        self.factor = factor
        self.sleep = sleep
        self.clock = clock
        self.on_wait = on_wait
        self.endpoint = endpoint
        #: Retries made so far (all outages), for reports and tests.
        self.retries = 0
        #: The longest outage ridden out so far, in seconds.
        self.longest_outage = 0.0

    def call(self, fn: Callable[[], T], *, what: str, batch_id: str | None = None, resume: str | None = None) -> T:
        """`fn()`, retried through transient errors for up to the outage budget.

        Args:
            fn: the call to make (no arguments).
            what: what the call does, for messages ("retrieve batch_...").
            batch_id: the batch concerned, named in the error when the budget runs out.
            resume: how to resume, appended to that error (default: run the notebook again).

        Raises:
            ServiceUnreachable: the budget ran out; the last error is its `__cause__`.
            Any non-transient error of `fn` at once (a 400, 401, 404, ...).
        """
        started: float | None = None
        wait = self.first_wait
        tries = 0
        while True:
            try:
                result = fn()
            except Exception as exc:
                retry, hint = transient_error(exc)
                if not retry:
                    raise
                now = self.clock()
                started = now if started is None else started
                tries += 1
                outage = now - started
                left = self.budget - outage
                if left <= 0:
                    self.longest_outage = max(self.longest_outage, outage)
                    raise ServiceUnreachable(self._message(what, outage, tries, exc, batch_id, resume),
                                             batch_id=batch_id) from exc
                delay = min(hint if hint is not None else wait, left)
                self.retries += 1
                if self.on_wait is not None:
                    self.on_wait(what, outage, delay, describe_error(exc))
                self.sleep(delay)
                wait = min(wait * self.factor, self.max_wait)
                continue
            if started is not None:
                self.longest_outage = max(self.longest_outage, self.clock() - started)
            return result

    def _message(self, what: str, outage: float, tries: int, exc: BaseException, batch_id: str | None,
                 resume: str | None) -> str:
        subject = f"Batch {batch_id} keeps running on the service; nothing is lost. " if batch_id else ""
        return (
            f"{self.endpoint} did not answer ({what}) for {outage:.0f}s, {tries} tries, outage budget "
            f"{self.budget:.0f}s; last error {describe_error(exc)}. {subject}"
            f"{resume or 'When the service is back, run this notebook again with the same parameters to resume.'}"
        )


def poll(
    fetch: Callable[[], tuple[T, float | None]],
    status_of: Callable[[T], str],
    terminal: Iterable[str],
    *,
    interval: float = 1.0,
    max_interval: float = 60.0,
    backoff: float = 1.5,
    timeout: float | None = 3600.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_update: Callable[[T, float], None] | None = None,
    what: str = "object",
    ids: Mapping[str, str | None] | None = None,
) -> T:
    """Call `fetch` until `status_of(result)` is in `terminal`; return that last result.

    Args:
        fetch: returns (object, server hint in seconds or None).
        status_of: reads the status from the object.
        terminal: statuses that end the loop.
        interval: first wait between calls (seconds); multiplied by `backoff` after each call.
        max_interval: cap on the wait.
        timeout: overall limit in seconds (None: no limit); `PollTimeout` when it passes.
        sleep, clock: replaceable for tests.
        on_update: called with (object, elapsed seconds) after every fetch.
        what, ids: used in the timeout message and carried by the `PollTimeout` (batch_id / file_id).
    """
    terminal_set = frozenset(terminal)
    if interval <= 0 or max_interval <= 0 or backoff < 1:
        raise ValueError("interval and max_interval must be > 0 and backoff >= 1")
    start = clock()
    wait = interval
    while True:
        obj, hint = fetch()
        elapsed = clock() - start
        if on_update is not None:
            on_update(obj, elapsed)
        status = status_of(obj)
        if status in terminal_set:
            return obj
        delay = min(hint if hint and hint > 0 else wait, max_interval)
        if timeout is not None and elapsed + delay > timeout:
            raise PollTimeout(
                f"Gave up waiting for {what} after {elapsed:.0f}s (timeout {timeout:.0f}s); last status "
                f"{status!r}. Poll again later with a larger timeout, or cancel it.",
                **(dict(ids) if ids else {}),
            )
        sleep(delay)
        wait = min(wait * backoff, max_interval)


def _hint_seconds(headers: Any) -> float | None:
    value = headers.get("openai-poll-after-ms") if headers is not None else None
    try:
        return float(value) / 1000.0 if value else None
    except ValueError:
        return None


def _is_azure(client: Any) -> bool:
    import openai

    return isinstance(client, openai.AzureOpenAI)


def upload_file(client: Any, path: str | Path) -> Any:
    """Upload a JSONL batch file with `purpose="batch"`; returns the SDK `FileObject`."""
    file_path = Path(path)
    if not file_path.is_file():
        raise JobError(f"No batch file at {file_path}: write it first (notebook 01 / write_jsonl).")
    with file_path.open("rb") as handle:
        return client.files.create(file=handle, purpose="batch")


def wait_for_file(
    client: Any,
    file_id: str,
    *,
    interval: float = 1.0,
    max_interval: float = 15.0,
    backoff: float = 1.5,
    timeout: float | None = 600.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_update: Callable[[Any, float], None] | None = None,
) -> Any:
    """Poll `files.retrieve` until the file is ready for a batch; returns the `FileObject`.

    Ready means `processed` (Azure shows `pending`/`running` first). On OpenAI, whose file status is
    deprecated, `uploaded` counts as ready too.

    Raises:
        JobError: the file ended in `error` or `deleted` (the message carries `status_details`).
        PollTimeout: not ready within `timeout` seconds.
    """
    ready = {"processed"} if _is_azure(client) else {"processed", "uploaded"}

    def fetch() -> tuple[Any, float | None]:
        return client.files.retrieve(file_id), None

    result = poll(
        fetch,
        lambda f: str(getattr(f, "status", None) or "processed"),
        TERMINAL_FILE_STATUSES | ready,
        interval=interval,
        max_interval=max_interval,
        backoff=backoff,
        timeout=timeout,
        sleep=sleep,
        clock=clock,
        on_update=on_update,
        what=f"file {file_id}",
        ids={"file_id": file_id},
    )
    status = str(getattr(result, "status", None) or "processed")
    if status not in ready:
        details = getattr(result, "status_details", None) or "no details given"
        raise JobError(f"File {file_id} ended in status {status!r} ({details}); fix the file and upload it again.", file_id=file_id)
    return result


def create_batch(
    client: Any,
    input_file_id: str,
    *,
    endpoint: str = "/chat/completions",
    completion_window: str = "24h",
    metadata: Mapping[str, str] | None = None,
) -> Any:
    """Create a batch from an uploaded, processed file; returns the SDK `Batch` (usually `validating`).

    `endpoint` must match the lines' `url`: `/chat/completions` on Azure and the local service,
    `/v1/chat/completions` on OpenAI (`Connection.batch_url`).

    Raises:
        LintError: `metadata` breaks a rule the service checks (at most 16 string pairs, keys up to
            64 and values up to 512 characters); nothing is sent.
    """
    kwargs: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": completion_window}
    if metadata is not None:
        from batchkit.lint import has_errors, lint_batch_metadata

        findings = lint_batch_metadata(metadata)
        if has_errors(findings):
            details = "; ".join(f"{f.path or 'metadata'}: {f.message} {f.fix or ''}".strip() for f in findings)
            raise LintError(f"The batch metadata would be rejected, so no batch was created: {details}", findings)
    if metadata:
        kwargs["metadata"] = dict(metadata)
    return client.batches.create(**kwargs)


def submit(client: Any, path: str | Path, *, endpoint: str = "/chat/completions", **wait_options: Any) -> Any:
    """Upload `path`, wait until it is processed, create the batch; returns the new `Batch`."""
    uploaded = upload_file(client, path)
    wait_for_file(client, uploaded.id, **wait_options)
    return create_batch(client, uploaded.id, endpoint=endpoint)


def poll_batch(
    client: Any,
    batch_id: str,
    *,
    interval: float = 2.0,
    max_interval: float = 60.0,
    backoff: float = 1.5,
    timeout: float | None = 24 * 3600.0,
    outage_budget: float = DEFAULT_OUTAGE_BUDGET,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    progress: str | Reporter | None = "auto",
) -> Any:
    """Poll a batch until it is `completed`, `failed`, `expired` or `cancelled`; returns the final `Batch`.

    Args:
        client: the SDK client (`Connection.client`).
        batch_id: the batch to follow.
        interval, max_interval, backoff: first wait, cap and growth factor (a server hint wins).
        timeout: overall limit in seconds; `PollTimeout` (carrying `batch_id`) when it passes.
        outage_budget: how long to keep retrying while the service does not answer (connection
            errors, timeouts, 429, 5xx), per outage; then `ServiceUnreachable` naming the batch.
        sleep, clock: replaceable for tests.
        progress: "auto" (a widget in Jupyter, one line per change otherwise), "widget", "text",
            None for silence, or an object with `update(batch, elapsed)` and `close()` (and
            optionally `outage(text)`, told about each retry).
    """
    reporter = make_reporter(progress)
    caller = Resilient(outage_budget, sleep=sleep, clock=clock, on_wait=_outage_notice(reporter),
                       endpoint=_endpoint_name(client))

    def fetch() -> tuple[Any, float | None]:
        raw = caller.call(lambda: client.batches.with_raw_response.retrieve(batch_id),
                          what=f"retrieve {batch_id}", batch_id=batch_id)
        return raw.parse(), _hint_seconds(raw.headers)

    try:
        return poll(
            fetch,
            lambda b: str(b.status),
            TERMINAL_BATCH_STATUSES,
            interval=interval,
            max_interval=max_interval,
            backoff=backoff,
            timeout=timeout,
            sleep=sleep,
            clock=clock,
            on_update=reporter.update if reporter else None,
            what=f"batch {batch_id}",
            ids={"batch_id": batch_id},
        )
    finally:
        if reporter is not None:
            reporter.close()


def _outage_notice(reporter: Any) -> Callable[[str, float, float, str], None] | None:
    """An `on_wait` callback that shows a retry on `reporter` (if it has an `outage` method)."""
    show = getattr(reporter, "outage", None)
    if show is None:
        return None

    def notice(what: str, outage: float, wait: float, error: str) -> None:
        show(f"service not answering for {outage:.0f}s ({error}); retrying {what} in {wait:.0f}s")

    return notice


def _endpoint_name(client: Any) -> str:
    """`The service at <base url>` for messages (no key, no query string)."""
    base = str(getattr(client, "base_url", "") or "").split("?")[0].rstrip("/")
    return f"The service at {base}" if base else "The service"


def cancel_batch(client: Any, batch_id: str) -> Any:
    """Ask the service to cancel a batch; returns the `Batch` (normally `cancelling`, later `cancelled`).

    Raises:
        JobError: the service refused (e.g. the batch is already finished); carries `batch_id`.
    """
    import openai

    try:
        return client.batches.cancel(batch_id)
    except openai.APIStatusError as exc:
        raise JobError(f"Cancel of {batch_id} refused (HTTP {exc.status_code}): {exc.message}", batch_id=batch_id) from exc


def list_batches(client: Any, limit: int = 10) -> list[Any]:
    """The most recent batches, newest first, at most `limit` (one page; no endless paging)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    page = client.batches.list(limit=limit)
    return list(page.data)[:limit]


def _iso(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def file_details(file: Any) -> pd.DataFrame:
    """A two-column table (field, value) of an uploaded file: id, name, size, purpose, status, times (UTC)."""
    rows: list[tuple[str, Any]] = [
        ("id", file.id),
        ("filename", file.filename),
        ("bytes", file.bytes),
        ("purpose", file.purpose),
        ("status", file.status),
        ("status_details", getattr(file, "status_details", None) or None),
        ("created_at", _iso(getattr(file, "created_at", None))),
        ("expires_at", _iso(getattr(file, "expires_at", None))),
    ]
    return _field_table(rows)


def batch_details(batch: Any) -> pd.DataFrame:
    """A two-column table (field, value) of a batch: status, ids, timestamps (UTC), counts, errors."""
    completed, failed, total = _counts(batch)
    rows: list[tuple[str, Any]] = [
        ("id", batch.id),
        ("status", batch.status),
        ("endpoint", batch.endpoint),
        ("completion_window", batch.completion_window),
        ("input_file_id", batch.input_file_id),
        ("output_file_id", batch.output_file_id or None),
        ("error_file_id", batch.error_file_id or None),
    ]
    rows += [(name, _iso(getattr(batch, name, None))) for name in TIMESTAMP_FIELDS]
    rows += [("requests total", total), ("requests completed", completed), ("requests failed", failed)]
    rows.append(("errors", "; ".join(batch_errors(batch)) or None))
    return _field_table(rows)


def _field_table(rows: list[tuple[str, Any]]) -> pd.DataFrame:
    """(field, value) pairs as a table indexed by field (how the notebooks show one object)."""
    return pd.DataFrame(rows, columns=["field", "value"]).set_index("field")


def batch_errors(batch: Any) -> list[str]:
    """Batch-level errors (a failed validation) as `code (line N): message` strings."""
    errors = getattr(batch, "errors", None)
    data = getattr(errors, "data", None) or []
    texts = []
    for error in data:
        line = f" (line {error.line})" if getattr(error, "line", None) not in (None, "") else ""
        texts.append(f"{error.code}{line}: {error.message}")
    return texts


def _counts(batch: Any) -> tuple[int, int, int]:
    from batchkit.progress import counts

    return counts(batch)


def batches_frame(batches: Iterable[Any]) -> pd.DataFrame:
    """One row per batch: id, status, created (UTC), completed/failed/total."""
    rows = []
    for batch in batches:
        completed, failed, total = _counts(batch)
        rows.append(
            {
                "id": batch.id,
                "status": batch.status,
                "created_at": _iso(batch.created_at),
                "completed": completed,
                "failed": failed,
                "total": total,
            }
        )
    return pd.DataFrame(rows, columns=["id", "status", "created_at", "completed", "failed", "total"])


def write_run_record(path: str | Path, *, batch: Any, backend: str, input_file: str | None = None) -> Path:
    """Save what notebook 03 needs to find the batch (`batch_id`, backend, input file) as JSON."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    record = {"batch_id": batch.id, "status": batch.status, "backend": backend, "input_file": input_file}
    target.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return target


def read_run_record(path: str | Path) -> dict[str, Any]:
    """Read a run record written by `write_run_record`; a missing file raises `JobError` saying what to run."""
    source = Path(path)
    if not source.is_file():
        raise JobError(f"No run record at {source.name}: run notebook 02 first, or pass batch_id= to this notebook.")
    record = json.loads(source.read_text(encoding="utf-8"))
    if not record.get("batch_id"):
        raise JobError(f"The run record {source.name} has no batch_id; run notebook 02 again.")
    return record
