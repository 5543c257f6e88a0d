"""The batch scheduler: moves batches through their lifecycle and runs their requests.

One scheduler thread looks at every unfinished batch a few times a second and starts one runner per
``in_progress`` batch. A runner reads its batch's pending requests in run order (their bodies from
the input file, by byte range), hands them to the engine and records the results in group commits
(:meth:`Store.record_results`: every :data:`COMMIT_EVERY` results or :data:`COMMIT_SECONDS`). On an
engine that blocks (a model, a delay, an upstream) the requests of all batches share one thread
pool, never more than the engine's ``max_concurrency`` at once; the synthetic engine, pure CPU, runs
them in the runner's thread. Validation and finalization run on a separate control thread so they
never stall the requests of other batches. All state lives in the store, so after a crash the
scheduler simply picks up where the database says things are: what was not committed runs again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable

import orjson

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
from .durable import crash_point, staging_path
from .faults import apply_fault, stored_spec, token_limit_message
from .store import Store, Task, encode_line, line_usage
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

#: A runner commits its results every this many results, or after COMMIT_SECONDS, whichever comes first.
COMMIT_EVERY = 2000
COMMIT_SECONDS = 0.1
#: Requests a runner handles per round when it runs them in its own thread (status checked between rounds).
INLINE_ROUND = 512

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
                 clock: Callable[[], float] = time.time, *, parent: int | None = None) -> None:
        """``parent``: set in a batch process (see :func:`batch_process_main`), the pid of the service;
        such a worker runs its step in its own process and stops when the service is gone."""
        self.parent = parent
        self.store = store
        self.gate = gate
        self.settings = settings
        self.clock = clock
        self.concurrency = min(gate.limit, settings.max_concurrency or gate.limit)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="localbatch-run")
        self._control = ThreadPoolExecutor(1, thread_name_prefix="localbatch-control")
        self._runners: set[str] = set()
        self._children: set[Any] = set()
        self._validator: Any = None  # a warm batch process for validations (see prepare_validator)
        self._inline_slots = threading.BoundedSemaphore(self.concurrency)
        self._control_busy: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="localbatch-scheduler", daemon=True)

    # ----- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler thread (resumes whatever the store says is unfinished)."""
        gone = self.store.sweep_spools()
        if gone:
            log.info("removed %d spool file(s) of finished batches", len(gone))
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling and wait briefly for the scheduler thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        with self._lock:
            children = list(self._children)
        for child in children:  # what it had not committed runs again after a restart
            child.terminate()
        self._drop_validator()
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

    def _running(self, batch_id: str) -> bool:
        with self._lock:
            return batch_id in self._runners

    def _expiring(self, batch: Any, now: float) -> bool:
        return batch["expire_after"] is not None and now >= batch["expire_after"]

    def _tick(self) -> None:
        now = self.clock()
        for batch in self.store.active_batches():
            bid, status = batch["id"], batch["status"]
            if bid in self._control_busy:
                continue
            running = self._running(bid)
            if status in ("validating", "in_progress") and self._expiring(batch, now):
                if not running:
                    self._submit_control(bid, self._close, bid, status, "expired")
            elif status == "validating":
                if now >= batch["validate_after"]:
                    self._submit_control(bid, self._validate, bid)
            elif status == "in_progress" and self._expire_at(batch) is not None \
                    and batch["completed"] + batch["failed"] >= self._expire_at(batch):
                if not running:  # the injected expiry: part of the work is done
                    self._submit_control(bid, self._close, bid, status, "expired")
            elif status == "in_progress":
                if batch["completed"] + batch["failed"] >= batch["total"]:
                    if not running:
                        self.store.transition(bid, ("in_progress",), "finalizing", finalizing_at=int(now),
                                              finalize_after=now + self.settings.finalizing_seconds)
                elif not running:
                    self._start_runner(bid, in_child=self._batch_process_for(batch))
            elif status == "finalizing":
                if now >= (batch["finalize_after"] or 0):
                    self._submit_control(bid, self._close, bid, "finalizing", "completed")
            elif status == "cancelling":
                if not running:
                    self._submit_control(bid, self._close, bid, "cancelling", "cancelled")

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

    def _batch_process_for(self, batch: Any) -> bool:
        """Whether a batch runs in a process of its own: a large one on the synthetic engine (an engine
        the batch process can build for itself; a model or an upstream stays shared with live calls)."""
        minimum = self.settings.subprocess_min_lines
        return (self.parent is None and self.settings.engine == "synthetic" and minimum > 0
                and batch["total"] >= minimum)

    def prepare_validator(self) -> None:
        """Start the validation process soon if it is not running (its imports and tokenizer load
        take about a second): called when a file large enough to be validated there is uploaded."""
        if self.parent is None and self.settings.subprocess_min_bytes > 0 and self._validator is None:
            self._control.submit(self._start_validator)

    def _start_validator(self) -> None:
        # On the control thread, which lives as long as the worker: the kernel's parent-death signal
        # follows the thread that started a process, so it must not be a short-lived one.
        with self._lock:
            if self._validator is None and not self._stop.is_set():
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                self._validator = ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn"), initializer=_warm_validator,
                    initargs=(os.getpid(),))
                self._validator.submit(int)  # start the process (and its warm-up) at once

    def _drop_validator(self) -> None:
        with self._lock:
            pool, self._validator = self._validator, None
        if pool is not None:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)

    def _validate_in_child(self, batch_id: str) -> None:
        """Validate in the warm validation process (started if need be); a broken one is replaced."""
        from concurrent.futures.process import BrokenProcessPool

        self._start_validator()
        with self._lock:
            pool = self._validator
        if pool is None:
            return
        try:
            pool.submit(batch_process_main, self.settings, "validate", batch_id, os.getpid()).result()
        except BrokenProcessPool:
            log.error("the validation process of %s died; the step runs again", batch_id)
            self._drop_validator()

    def _in_child(self, action: str, batch_id: str) -> None:
        """Run ``action`` (``run`` or ``validate``) for ``batch_id`` in a batch process and wait for it."""
        import multiprocessing

        process = multiprocessing.get_context("spawn").Process(
            target=batch_process_main, args=(self.settings, action, batch_id, os.getpid()),
            name=f"localbatch-{action}-{batch_id[-8:]}", daemon=True)
        with self._lock:
            if self._stop.is_set():
                return
            process.start()
            self._children.add(process)
        try:
            process.join()
        finally:
            with self._lock:
                self._children.discard(process)
        if process.exitcode:
            log.error("the %s process of %s exited with %s; the step runs again", action, batch_id, process.exitcode)

    def _start_runner(self, batch_id: str, *, in_child: bool = False) -> None:
        with self._lock:
            self._runners.add(batch_id)

        def run() -> None:
            try:
                if in_child:
                    self._in_child("run", batch_id)
                else:
                    self._run_batch(batch_id)
            except Exception:  # the next tick starts a new runner; uncommitted results run again
                log.exception("runner of %s failed", batch_id)
            finally:
                with self._lock:
                    self._runners.discard(batch_id)
                self._wake.set()

        threading.Thread(target=run, name=f"localbatch-runner-{batch_id[-8:]}", daemon=True).start()

    def _model_version(self, batch: Any) -> str:
        dep = self.settings.deployment(batch["deployment"] or "")
        return dep.model_version if dep else (batch["model"] or "")

    def _inline(self, faults: str | None) -> bool:
        """True when requests run best in the runner's own thread: the synthetic engine without
        delays is pure Python CPU work, which threads would only slow down."""
        spec = stored_spec(faults)
        return (getattr(self.gate.engine, "name", "") == "synthetic" and not self.gate.delay
                and not (spec is not None and spec.slow))

    # ----- work items --------------------------------------------------------------------------

    def _run_batch(self, batch_id: str) -> None:
        """Run the pending requests of an ``in_progress`` batch until none is left, the batch leaves
        ``in_progress`` (cancel), expires, reaches its injected expiry, or the worker stops."""
        batch = self.store.get_batch(batch_id)
        if batch is None or batch["status"] != "in_progress":
            return
        dialect: Dialect = batch["dialect"]
        endpoint, faults = batch["endpoint"], batch["faults"]
        model_version = self._model_version(batch)
        cap = self._expire_at(batch)
        inline = self._inline(faults)
        window = INLINE_ROUND if inline else self.concurrency
        source = self.store.input_path(batch_id)
        if not source.exists():
            source = self.store.file_path(batch["input_file_id"])
        try:
            fd = os.open(source, os.O_RDONLY)
        except FileNotFoundError:
            self._input_gone(batch_id, dialect)
            return
        queue: deque[Task] = deque()
        inflight: dict[Future[Any], Task] = {}
        buffer: list[Any] = []
        after, recorded, stopping = -1, batch["completed"] + batch["failed"], False
        last_commit = last_check = 0.0
        work = (fd, dialect, endpoint, model_version, faults)
        try:
            while True:
                now = time.monotonic()
                if not stopping and (inline or now - last_check >= 0.02):
                    last_check = now
                    row = self.store.get_batch(batch_id)
                    stopping = (row is None or row["status"] != "in_progress" or self._stop.is_set()
                                or self._expiring(row, self.clock())
                                or (self.parent is not None and os.getppid() != self.parent))
                    if row is not None:
                        recorded = row["completed"] + row["failed"]
                dispatched = 0
                if not stopping:
                    room = window - len(inflight)
                    if cap is not None:
                        room = min(room, cap - recorded - len(buffer) - len(inflight))
                    if room > 0 and not queue:
                        queue.extend(self.store.pending_tasks(batch_id, after=after, limit=max(window, 64)))
                        if queue:
                            after = queue[-1].ord
                        elif after < 0 and not buffer and not inflight and recorded < batch["total"]:
                            self._unindexed(batch_id, recorded, batch["total"])
                            return
                    new = [queue.popleft() for _ in range(min(room, len(queue)))]
                    dispatched = len(new)
                    if new:
                        runs = [t.ord for t in new if t.reject is None]
                        if runs:
                            self.store.mark_runs(batch_id, runs)
                        if inline:
                            with self._inline_slots:
                                buffer.extend(self._result(t, *work) for t in new)
                        else:
                            for t in new:
                                if t.reject is not None:
                                    buffer.append(self._result(t, *work))
                                else:
                                    inflight[self._pool.submit(self._result, t, *work)] = t
                if inflight:
                    done, _ = wait(list(inflight), timeout=COMMIT_SECONDS, return_when=FIRST_COMPLETED)
                    for future in done:
                        del inflight[future]
                        if not future.cancelled():
                            buffer.append(future.result())
                elif not dispatched:
                    break
                if buffer and (len(buffer) >= COMMIT_EVERY or time.monotonic() - last_commit >= COMMIT_SECONDS):
                    self.store.record_results(batch_id, buffer)
                    recorded += len(buffer)
                    buffer, last_commit = [], time.monotonic()
            self.store.record_results(batch_id, buffer)
        finally:
            os.close(fd)

    def _input_gone(self, batch_id: str, dialect: Dialect) -> None:
        """The batch's link to its input bytes was removed from the data directory: each request left
        gets a 500 error line saying so (every custom_id still ends up in a result file once)."""
        path = self.store.input_path(batch_id)
        log.error("%s is gone: the requests of %s without a result are answered with an error", path, batch_id)
        body = {"error": {"message": f"The service lost this batch's copy of its input file ({path}), so this "
                                     "request could not be read. Submit it again in a new batch.",
                          "type": "server_error", "param": None, "code": None}}
        self.store.record_not_run(batch_id, lambda custom_id: response_line(dialect, custom_id, 500, body))

    def _unindexed(self, batch_id: str, recorded: int, total: int) -> None:
        """An in_progress batch with fewer results than requests and nothing left to run (one stored
        by an older version, whose request layout this one does not read): fail it, saying so."""
        log.error("batch %s has %d of %d results and no stored requests to run", batch_id, recorded, total)
        self.store.transition(batch_id, ("in_progress",), "failed", failed_at=int(self.clock()), errors=json.dumps({
            "object": "list", "data": [{"code": "server_error", "param": None, "line": None, "message": (
                f"This batch has {recorded:,} of {total:,} results and its remaining requests cannot be read "
                "(it was stored by an older version of the service). Create the batch again.")}]}))

    def _answer(self, body: dict[str, Any], model_version: str, custom_id: str, faults: str | None) -> dict[str, Any]:
        """The engine's chat completion for one request, with the batch's injected faults applied."""
        spec = stored_spec(faults)
        if spec is None:
            return self.gate.complete(body, model=model_version, custom_id=custom_id)
        if spec.slow:
            time.sleep(spec.slow)
        return apply_fault(spec.fault_for(custom_id), self.gate.complete, body, model=model_version,
                           custom_id=custom_id, http_status=spec.http_status)

    def _result(self, task: Task, fd: int, dialect: Dialect, endpoint: str, model_version: str,
                faults: str | None) -> tuple[int, str, bytes, tuple[int, int, int, int]]:
        """Run one request (a 400 without the engine when validation rejected it) and give its result
        as ``(ord, kind, line bytes, usage)`` for :meth:`Store.record_results`."""
        kind = "error"
        if task.reject is not None:  # answered without the engine, like the endpoint's 400
            line = response_line(dialect, task.custom_id, 400, task.reject)
        else:
            try:
                body = orjson.loads(os.pread(fd, task.length, task.offset))["body"]
                engine_body = request_for_engine(endpoint, body)
                completion = self._answer(engine_body, model_version, task.custom_id, faults)
            except Exception as exc:  # EngineRequestError -> its 4xx; anything else -> 500 line
                if getattr(exc, "status_code", None) is None:
                    log.exception("engine failed on %s", task.custom_id)
                line = engine_error_line(dialect, task.custom_id, exc)
            else:
                answer = answer_for_client(endpoint, dialect, completion, body, model_version)
                line, kind = response_line(dialect, task.custom_id, 200, answer), "output"
        return task.ord, kind, encode_line(line), line_usage(line)

    def _validate(self, batch_id: str) -> None:
        """The ``validating`` step: fail the batch or store its requests and start it."""
        batch = self.store.get_batch(batch_id)
        if batch is None or batch["status"] != "validating":
            return
        now = int(self.clock())
        path = self.store.file_path(batch["input_file_id"])
        minimum = self.settings.subprocess_min_bytes
        if self.parent is None and minimum > 0 and path.exists() and path.stat().st_size >= minimum:
            self._validate_in_child(batch_id)
            return
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
        rows = [(r.custom_id, r.line, r.offset, r.length, json.dumps(r.reject) if r.reject else None)
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
            self.store.record_not_run(batch_id, lambda custom_id: not_run_line(dialect, custom_id, code, message))
            batch = self.store.get_batch(batch_id) or batch
        now = int(self.clock())
        new_files: list[dict[str, Any]] = []
        ids: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
        for key, kind in (("output_file_id", "output"), ("error_file_id", "error")):
            size = int(batch[f"{kind}_bytes"] or 0)
            if not size and dialect == "openai":
                continue
            file_id = new_file_id(dialect, generated=True)
            path = self.store.file_path(file_id)
            staged = staging_path(path)
            staged.unlink(missing_ok=True)
            spool = self.store.spool_path(batch_id, kind)
            if size:  # the committed spool is the result file: cut any uncommitted tail, then link it
                if spool.stat().st_size > size:
                    os.truncate(spool, size)
                os.link(spool, staged)  # a crash from here leaves an unlisted name (removed at start-up)
            else:
                staged.write_bytes(b"")
            crash_point("finalize")
            os.replace(staged, path)
            new_files.append({
                "id": file_id, "dialect": dialect, "filename": f"{batch_id}_{kind}.jsonl", "bytes": size,
                "created_at": now, "expires_at": result_file_expiry(batch, now),
            })
            ids[key] = file_id
        stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[to_status]
        crash_point("finalize-renamed")
        if not self.store.finish_batch(batch_id, (from_status,), to_status, new_files, **ids, **{stamp: now}):
            for f in new_files:  # someone else moved the batch on; drop the unused files
                self.store.file_path(f["id"]).unlink(missing_ok=True)
            return
        self.store.drop_spool(batch_id)


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the service dies (Linux), and exit if it already has."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the runner checks its parent between rounds
    if os.getppid() != parent:
        os._exit(1)


def _warm_validator(parent: int) -> None:
    """The validation process's start: die with the service, import the lint and load the tokenizer."""
    _die_with_parent(parent)
    from batchkit.estimate import count_texts
    from batchkit.lint import BatchFileLinter  # noqa: F401

    count_texts(["warm"])


def batch_process_main(settings: Settings, action: str, batch_id: str, parent: int) -> None:
    """A batch process: one step (``run`` or ``validate``) of one batch, on its own store connection
    and, to run, its own synthetic engine. It dies with the service (pid ``parent``); whatever it had
    not committed then runs again, as after any crash."""
    _die_with_parent(parent)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    store = Store(settings.data_dir)
    try:
        if action == "run":
            from .engines import create_engine

            engine = create_engine(settings.engine, **settings.engine_options)
            gate = EngineGate(engine, int(getattr(engine, "max_concurrency", 1) or 1),
                              delay=settings.engine_delay if settings.engine == "synthetic" else 0.0)
            Worker(store, gate, settings, parent=parent)._run_batch(batch_id)
        else:
            Worker(store, EngineGate(None, 1), settings, parent=parent)._validate(batch_id)
    finally:
        store.close()
