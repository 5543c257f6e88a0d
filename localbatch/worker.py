"""The batch scheduler: moves batches through their lifecycle and runs their requests.

One scheduler thread looks at every unfinished batch a few times a second. It hands pending
requests of all ``in_progress`` batches to a bounded thread pool, round-robin between batches,
never more than the engine's ``max_concurrency`` at once. Each finished request is recorded in its
own transaction. Validation and finalization (writing the result files) run on a separate control
thread so they never stall the requests of other batches. All state lives in the store, so after a
crash the scheduler simply picks up where the database says things are.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from .config import Settings
from .dialects import (
    CANCELLED_MESSAGE,
    EXPIRED_MESSAGE,
    Dialect,
    new_file_id,
    not_run_line,
    response_line,
)
from .responses import answer_for_client, request_for_engine
from .durable import chunked, crash_point, write_complete
from .faults import apply_fault, stored_spec, token_limit_message
from .store import PendingRequest, Store
from .validation import validate_input

log = logging.getLogger("localbatch.worker")

SERVER_ERROR_BODY = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}

#: Seconds a result file of the OpenAI dialect lives (30 days, like the real service).
RESULT_FILE_TTL = 30 * 24 * 3600


def result_file_expiry(batch: Any, now: int) -> int | None:
    """``expires_at`` of a batch's output and error files: ``output_expires_after`` (anchored at the
    files' creation) when the batch was created with it; else 30 days on OpenAI, never on Azure."""
    seconds = batch["output_expires_after"]
    if seconds:
        return now + int(seconds)
    return now + RESULT_FILE_TTL if batch["dialect"] == "openai" else None


class EngineGate:
    """Shares one engine between the batch worker and live chat calls, at most ``limit`` calls at once."""

    def __init__(self, engine: Any, limit: int, *, delay: float = 0.0) -> None:
        self.engine = engine
        self.limit = max(1, limit)
        self.delay = max(0.0, delay)
        self._slots = threading.BoundedSemaphore(self.limit)

    def complete(self, body: dict[str, Any], *, model: str, custom_id: str | None = None) -> dict[str, Any]:
        """Run one chat completion when a slot is free (EngineRequestError passes through).

        ``delay`` (the ``--engine-delay`` knob, synthetic engine only) adds that many seconds to
        every call, to make a fast engine slow enough to cancel or kill mid-batch.
        """
        with self._slots:
            if self.delay:
                time.sleep(self.delay)
            return self.engine.complete(body, model=model, custom_id=custom_id)


def engine_error_line(dialect: Dialect, custom_id: str, exc: Exception) -> dict[str, Any]:
    """The error-file line of a request the engine rejected (``EngineRequestError``) or failed on."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    if isinstance(status, int) and isinstance(body, dict):
        return response_line(dialect, custom_id, status, body if "error" in body else {"error": body})
    return response_line(dialect, custom_id, 500, SERVER_ERROR_BODY)


class Worker:
    """Runs every unfinished batch of ``store`` to a terminal status."""

    def __init__(self, store: Store, gate: EngineGate, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.gate = gate
        self.settings = settings
        self.clock = clock
        self.concurrency = min(gate.limit, settings.max_concurrency or gate.limit)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="localbatch-run")
        self._control = ThreadPoolExecutor(1, thread_name_prefix="localbatch-control")
        self._inflight: dict[str, set[str]] = {}
        self._control_busy: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="localbatch-scheduler", daemon=True)
        self._rr = 0

    # ----- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler thread (resumes whatever the store says is unfinished)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling and wait briefly for the scheduler thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._control.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        """Ask the scheduler to look at the batches now (after a create or cancel)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # keep serving; the next tick retries from the stored state
                log.exception("scheduler tick failed")
            self._wake.wait(self.settings.tick_seconds)
            self._wake.clear()

    # ----- one scheduling round ----------------------------------------------------------------

    def _inflight_count(self, batch_id: str | None = None) -> int:
        with self._lock:
            if batch_id is not None:
                return len(self._inflight.get(batch_id, ()))
            return sum(len(s) for s in self._inflight.values())

    def _expiring(self, batch: Any, now: float) -> bool:
        return batch["expire_after"] is not None and now >= batch["expire_after"]

    def _tick(self) -> None:
        now = self.clock()
        runnable: list[Any] = []
        for batch in self.store.active_batches():
            bid, status = batch["id"], batch["status"]
            if bid in self._control_busy:
                continue
            if status in ("validating", "in_progress") and self._expiring(batch, now):
                if self._inflight_count(bid) == 0:
                    self._submit_control(bid, self._close, bid, status, "expired")
            elif status == "validating":
                if now >= batch["validate_after"]:
                    self._submit_control(bid, self._validate, bid)
            elif status == "in_progress" and self._expire_at(batch) is not None \
                    and batch["completed"] + batch["failed"] >= self._expire_at(batch):
                if self._inflight_count(bid) == 0:  # the injected expiry: part of the work is done
                    self._submit_control(bid, self._close, bid, status, "expired")
            elif status == "in_progress":
                if batch["completed"] + batch["failed"] >= batch["total"]:
                    if self._inflight_count(bid) == 0:
                        self.store.transition(bid, ("in_progress",), "finalizing", finalizing_at=int(now),
                                              finalize_after=now + self.settings.finalizing_seconds)
                else:
                    runnable.append(batch)
            elif status == "finalizing":
                if now >= (batch["finalize_after"] or 0):
                    self._submit_control(bid, self._close, bid, "finalizing", "completed")
            elif status == "cancelling":
                if self._inflight_count(bid) == 0:
                    self._submit_control(bid, self._close, bid, "cancelling", "cancelled")
        self._dispatch(runnable)

    def _expire_at(self, batch: Any) -> int | None:
        """How many results the batch may get before an injected expiry (None: no injected expiry)."""
        spec = stored_spec(batch["faults"])
        return spec.expire_threshold(batch["total"]) if spec is not None else None

    def _submit_control(self, batch_id: str, fn: Callable[..., None], *args: Any) -> None:
        self._control_busy.add(batch_id)

        def run() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("control step for %s failed", batch_id)
            finally:
                self._control_busy.discard(batch_id)
                self._wake.set()

        self._control.submit(run)

    def _dispatch(self, batches: list[Any]) -> None:
        if not batches:
            return
        free = self.concurrency - self._inflight_count()
        idle_rounds = 0
        while free > 0 and idle_rounds < len(batches):
            batch = batches[self._rr % len(batches)]
            self._rr += 1
            with self._lock:
                busy = set(self._inflight.get(batch["id"], ()))
            cap = self._expire_at(batch)
            # in-flight ids first, then the recorded count: a request leaves the in-flight set only after
            # its result is recorded, so none is missed (one may be counted twice: dispatch waits a tick)
            if cap is not None and self.store.result_count(batch["id"]) + len(busy) >= cap:
                idle_rounds += 1  # enough results for its injected expiry: run nothing more
                continue
            req = self.store.next_pending(batch["id"], busy)
            if req is None:
                idle_rounds += 1
                continue
            idle_rounds = 0
            if req.reject is not None:  # answered without the engine, like the endpoint's 400
                line = response_line(batch["dialect"], req.custom_id, 400, req.reject)
                self.store.record_result(req.batch_id, req.custom_id, "error", line)
                continue
            with self._lock:
                self._inflight.setdefault(req.batch_id, set()).add(req.custom_id)
            free -= 1
            future = self._pool.submit(self._run, req, batch["dialect"], self._model_version(batch), batch["faults"],
                                       batch["endpoint"])
            future.add_done_callback(lambda f, r=req: self._done(f, r))

    def _model_version(self, batch: Any) -> str:
        dep = self.settings.deployment(batch["deployment"] or "")
        return dep.model_version if dep else (batch["model"] or "")

    def _done(self, future: Future[None], req: PendingRequest) -> None:
        with self._lock:
            self._inflight.get(req.batch_id, set()).discard(req.custom_id)
        if future.exception() is not None:
            log.error("request %s/%s failed to record: %s", req.batch_id, req.custom_id, future.exception())
        self._wake.set()

    # ----- work items --------------------------------------------------------------------------

    def _answer(self, body: dict[str, Any], model_version: str, custom_id: str, faults: str | None) -> dict[str, Any]:
        """The engine's chat completion for one request, with the batch's injected faults applied."""
        spec = stored_spec(faults)
        if spec is None:
            return self.gate.complete(body, model=model_version, custom_id=custom_id)
        if spec.slow:
            time.sleep(spec.slow)
        return apply_fault(spec.fault_for(custom_id), self.gate.complete, body, model=model_version,
                           custom_id=custom_id, http_status=spec.http_status)

    def _run(self, req: PendingRequest, dialect: Dialect, model_version: str, faults: str | None = None,
             endpoint: str = "") -> None:
        """Run one request on the engine and record its result line (Responses requests through their chat form)."""
        self.store.mark_run(req.batch_id, req.custom_id)
        try:
            engine_body = request_for_engine(endpoint, req.body)
            completion = self._answer(engine_body, model_version, req.custom_id, faults)
        except Exception as exc:  # EngineRequestError -> its 4xx; anything else -> 500 line
            if getattr(exc, "status_code", None) is None:
                log.exception("engine failed on %s/%s", req.batch_id, req.custom_id)
            line = engine_error_line(dialect, req.custom_id, exc)
            self.store.record_result(req.batch_id, req.custom_id, "error", line)
            return
        body = answer_for_client(endpoint, dialect, completion, req.body, model_version)
        self.store.record_result(req.batch_id, req.custom_id, "output", response_line(dialect, req.custom_id, 200, body))

    def _validate(self, batch_id: str) -> None:
        """The ``validating`` step: fail the batch or store its requests and start it."""
        batch = self.store.get_batch(batch_id)
        if batch is None or batch["status"] != "validating":
            return
        now = int(self.clock())
        path = self.store.file_path(batch["input_file_id"])
        if self.store.get_file(batch["input_file_id"]) is None or not path.exists():
            self._fail(batch_id, [{"code": "invalid_request", "param": "input_file_id", "line": None,
                                   "message": f"The input file '{batch['input_file_id']}' was deleted before "
                                              "the batch was validated. Upload it again and create a new batch."}])
            return
        result = validate_input(path, dialect=batch["dialect"], endpoint=batch["endpoint"], settings=self.settings)
        if result.errors:
            self._fail(batch_id, [e.as_dict() for e in result.errors])
            return
        deployment = result.model or ""
        quota = self.settings.token_quota
        if batch["fault_token_limit"]:  # injected: the quota is full when this batch is checked
            self._fail(batch_id, [{"code": "token_limit_exceeded", "param": None, "line": None,
                                   "message": token_limit_message(batch["dialect"], deployment, quota)}])
            return
        held = self.store.enqueued_tokens(deployment, excluding=batch_id)
        if held + result.tokens > quota:
            self._fail(batch_id, [{
                "code": "token_limit_exceeded", "param": None, "line": None,
                "message": f"Enqueued token limit reached for {deployment} in this service. Limit: {quota:,} "
                           f"enqueued tokens (this batch needs {result.tokens:,}; {held:,} are held by unfinished "
                           "batches). Please try again once some in_progress batches have been completed.",
            }])
            return
        rows = [(r.custom_id, r.line, json.dumps(r.body), json.dumps(r.reject) if r.reject else None)
                for r in result.requests]
        dep = self.settings.deployment(deployment)
        model = dep.model_version if (dep and batch["dialect"] == "openai") else deployment
        self.store.start_batch(batch_id, rows, model=model, deployment=deployment,
                               enqueued_tokens=result.tokens, now=now)

    def _fail(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        self.store.transition(batch_id, ("validating",), "failed", failed_at=int(self.clock()),
                              errors=json.dumps({"object": "list", "data": errors}))

    def _close(self, batch_id: str, from_status: str, to_status: str) -> None:
        """Finish a batch: record not-run lines (cancel/expiry), write result files, set the terminal status."""
        batch = self.store.get_batch(batch_id)
        if batch is None or batch["status"] != from_status:
            return
        dialect: Dialect = batch["dialect"]
        if to_status in ("cancelled", "expired"):
            code, message = (("batch_cancelled", CANCELLED_MESSAGE) if to_status == "cancelled"
                             else ("batch_expired", EXPIRED_MESSAGE))
            for custom_id in self.store.unfinished(batch_id):
                self.store.record_result(batch_id, custom_id, "error", not_run_line(dialect, custom_id, code, message))
        now = int(self.clock())
        outputs: list[str] = []
        errors: list[str] = []
        for row in self.store.results(batch_id):
            (outputs if row["kind"] == "output" else errors).append(row["line"])
        new_files: list[dict[str, Any]] = []
        ids: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
        for key, lines, suffix in (("output_file_id", outputs, "output"), ("error_file_id", errors, "error")):
            if not lines and dialect == "openai":
                continue
            file_id = new_file_id(dialect, generated=True)
            data = "".join(line + "\n" for line in lines).encode("utf-8")
            # complete under a staging name, then renamed: a crash leaves no partial file with a row
            size = write_complete(self.store.file_path(file_id), chunked(data), crash_moment="finalize")
            new_files.append({
                "id": file_id, "dialect": dialect, "filename": f"{batch_id}_{suffix}.jsonl", "bytes": size,
                "created_at": now, "expires_at": result_file_expiry(batch, now),
            })
            ids[key] = file_id
        stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[to_status]
        crash_point("finalize-renamed")
        if not self.store.finish_batch(batch_id, (from_status,), to_status, new_files, **ids, **{stamp: now}):
            for f in new_files:  # someone else moved the batch on; drop the unused files
                self.store.file_path(f["id"]).unlink(missing_ok=True)
