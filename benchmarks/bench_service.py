"""One large batch through the local service on the synthetic engine, end to end through the SDK.

A real ``python -m localbatch serve --engine synthetic`` on 127.0.0.1 (a child process, fresh data
directory per run) gets a generated 100,000-line strict-schema chat file (quick: 10,000) uploaded
with the openai SDK (Azure dialect, whose limit is 100,000 lines), then ``batches.create``. While
the batch runs, a few client threads poll ``batches.retrieve`` and ``files.retrieve`` (of the input
file) and time every call. The batch runs on a fresh service each time, alternately watched by one
client polling every 2 s and by :data:`FAST_CLIENTS` clients polling every 100 ms (three times each; quick:
once); the ratio of their running times is the slowdown fast polling causes.

Phases are timed from the data directory, without a call to the service (``spool/<batch>.input``
appears when validation has stored the requests and goes when the result files are registered), so
the 2 s poller's coarseness does not blur them. Figures (from the fast-polled runs unless said
otherwise): requests/s end to end (``batches.create`` to the result files), seconds validating and
running, VmHWM (``/proc/PID/status``) of the service and of its batch processes (sampled), the
database (``localbatch.sqlite3`` with its WAL) against the input file, retrieve p50/p99 and
files.retrieve p99 while the batch runs. Baselines: for requests/s, the synthetic engine alone in
this process, ``complete()`` on the same bodies; for latencies, the same polling of the finished
batch for :data:`IDLE_SECONDS` on the idle service (what the machine and the SDK cost by themselves).

    python benchmarks/bench_service.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from benchmarks._common import main_for, row
from benchmarks.buildings import INTEGER_HEIGHT_SCHEMA, SYSTEM_PROMPT

GROUP = "service"
API_KEY = "bench-service-key"
API_VERSION = "2024-10-21"
FAST_CLIENTS = 3
FAST_INTERVAL = 0.1
SLOW_INTERVAL = 2.0
#: Seconds the finished batch is polled the same way on the idle service (the latency baseline).
IDLE_SECONDS = 8.0
SCHEMA = INTEGER_HEIGHT_SCHEMA
SYSTEM = SYSTEM_PROMPT


def request_line(i: int) -> dict[str, Any]:
    """Line ``i`` of the input file (custom_id ``task-i``)."""
    return {"custom_id": f"task-{i}", "method": "POST", "url": "/chat/completions", "body": {
        "model": "gpt-4o-batch",
        "messages": [{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": f"Provide info about the building number {i} of the survey"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "building", "schema": SCHEMA,
                                                                    "strict": True}}}}


def write_input(path: Path, n: int) -> None:
    """The input file: `n` request lines."""
    with path.open("wb") as out:
        for i in range(n):
            out.write(orjson.dumps(request_line(i)) + b"\n")


def engine_alone(n: int) -> float:
    """Requests/s of the synthetic engine's ``complete`` on the first `n` bodies, in this process."""
    from localbatch.engines.synthetic import SyntheticEngine

    engine = SyntheticEngine()
    lines = [request_line(i) for i in range(n)]
    start = time.process_time()
    for line in lines:
        engine.complete(line["body"], model="gpt-4o-2024-08-06", custom_id=line["custom_id"])
    return n / (time.process_time() - start)


def _status_kib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise KeyError(key)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class _Poller(threading.Thread):
    """Polls batches.retrieve and files.retrieve every `interval`, timing each call."""

    def __init__(self, handle: Any, batch_id: str, file_id: str, interval: float, seen: dict[str, float],
                 lock: threading.Lock, *, idle: bool = False) -> None:
        super().__init__(daemon=True)
        from openai import AzureOpenAI

        self.client = AzureOpenAI(azure_endpoint=handle.base_url, api_key=API_KEY, api_version=API_VERSION,
                                  max_retries=0, timeout=60)
        self.batch_id, self.file_id, self.interval = batch_id, file_id, interval
        self.seen, self.lock, self.idle = seen, lock, idle
        self.batch_ms: list[float] = []
        self.file_ms: list[float] = []
        self.trace: list[tuple[float, str, float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            start = time.perf_counter()
            batch = self.client.batches.retrieve(self.batch_id)
            middle = time.perf_counter()
            self.client.files.retrieve(self.file_id)
            end = time.perf_counter()
            with self.lock:
                self.seen.setdefault(batch.status, middle)
            if batch.status in ("completed", "failed", "expired", "cancelled") and not self.idle:
                return
            self.batch_ms.append((middle - start) * 1000)
            self.file_ms.append((end - middle) * 1000)
            self.trace.append((start, batch.status, (middle - start) * 1000, (end - middle) * 1000))
            time.sleep(max(0.0, self.interval - (end - start)))


class _Watcher(threading.Thread):
    """Times the batch's phases from the data directory, without a call to the service: its input link
    ``spool/<batch>.input`` appears when validation stored the requests and goes once the result files
    are registered. Also samples the VmHWM of the service's child processes (the batch processes)."""

    def __init__(self, data_dir: Path, batch_id: str, pid: int) -> None:
        super().__init__(daemon=True)
        self.link = data_dir / "spool" / f"{batch_id}.input"
        self.pid = pid
        self.started: float | None = None
        self.finished: float | None = None
        self.child_hwm_mib = 0.0
        self.done = threading.Event()

    def _children(self) -> list[int]:
        found = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                found += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
        return found

    def run(self) -> None:
        last_sample = 0.0
        while not self.done.is_set():
            now = time.perf_counter()
            exists = self.link.exists()
            if exists and self.started is None:
                self.started = now
            elif not exists and self.started is not None:
                self.finished = now
                self.done.set()
                return
            if now - last_sample >= 0.05:
                last_sample = now
                for child in self._children():
                    try:
                        self.child_hwm_mib = max(self.child_hwm_mib, _status_kib(child, "VmHWM") / 1024)
                    except (OSError, KeyError):
                        pass
            time.sleep(0.002)


def one_run(tmp: Path, input_path: Path, n: int, clients: int, interval: float) -> dict[str, Any]:
    """Start a fresh service, upload, create, poll until completed; the run's figures."""
    from openai import AzureOpenAI

    from localbatch.launcher import start_service

    data_dir = Path(tempfile.mkdtemp(prefix=f"service-{clients}x{interval}-", dir=tmp))
    handle = start_service(data_dir=data_dir, api_key=API_KEY, engine="synthetic", wait=90, extra_args=[
        "--file-processing-delay", "0", "--validating-seconds", "0", "--finalizing-seconds", "0"])
    try:
        client = AzureOpenAI(azure_endpoint=handle.base_url, api_key=API_KEY, api_version=API_VERSION,
                             max_retries=0, timeout=600)
        with input_path.open("rb") as fh:
            uploaded = client.files.create(file=(input_path.name, fh), purpose="batch")
        while client.files.retrieve(uploaded.id).status != "processed":
            time.sleep(0.05)
        seen: dict[str, float] = {}
        lock = threading.Lock()
        created = time.perf_counter()
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/chat/completions",
                                      completion_window="24h")
        watcher = _Watcher(data_dir, batch.id, handle.pid)
        watcher.start()
        pollers = [_Poller(handle, batch.id, uploaded.id, interval, seen, lock) for _ in range(clients)]
        for i, poller in enumerate(pollers):
            poller.start()
            time.sleep(interval / clients if i + 1 < clients else 0)
        watcher.join(timeout=3600)
        for poller in pollers:
            poller.done.set()
            poller.join(timeout=60)
        final = client.batches.retrieve(batch.id)
        assert final.status == "completed", final
        idle: list[_Poller] = []
        if clients > 1:  # the same polling of the finished batch, the service idle: the machine's own latency
            idle = [_Poller(handle, batch.id, uploaded.id, interval, {}, lock, idle=True) for _ in range(clients)]
            for poller in idle:
                poller.start()
                time.sleep(interval / clients)
            time.sleep(IDLE_SECONDS)
            for poller in idle:
                poller.done.set()
                poller.join(timeout=60)
        assert final.request_counts.completed == n and final.request_counts.failed == 0, final.request_counts
        hwm = _status_kib(handle.pid, "VmHWM") / 1024
        db = sum(p.stat().st_size for p in data_dir.glob("localbatch.sqlite3*"))
        output = client.files.content(final.output_file_id).read()
        ids = [orjson.loads(line)["custom_id"] for line in output.splitlines()]
        assert len(ids) == n and len(set(ids)) == n, "every custom_id exactly once"
    finally:
        handle.stop()
    if os.environ.get("BENCH_SERVICE_TRACE"):
        with open(os.environ["BENCH_SERVICE_TRACE"] + f".{clients}", "w") as out:
            for t, status, b, f in sorted(x for p in pollers for x in p.trace):
                out.write(f"{t - created:8.3f} {status:12s} {b:8.1f} {f:8.1f}\n")
    assert watcher.started is not None and watcher.finished is not None
    return {
        "end_to_end_s": watcher.finished - created,
        "validating_s": watcher.started - created,
        "running_s": watcher.finished - watcher.started,
        "hwm_mib": hwm,
        "child_hwm_mib": watcher.child_hwm_mib,
        "db_bytes": db,
        "batch_ms": [ms for p in pollers for ms in p.batch_ms],
        "idle_batch_ms": [ms for p in idle for ms in p.batch_ms],
        "idle_file_ms": [ms for p in idle for ms in p.file_ms],
        "file_ms": [ms for p in pollers for ms in p.file_ms],
    }


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs as one: median times, the highest memory and database, every latency sample."""
    out: dict[str, Any] = {key: statistics.median(r[key] for r in runs)
                           for key in ("end_to_end_s", "validating_s", "running_s")}
    for key in ("hwm_mib", "child_hwm_mib", "db_bytes"):
        out[key] = max(r[key] for r in runs)
    for key in ("batch_ms", "file_ms", "idle_batch_ms", "idle_file_ms"):
        out[key] = [ms for r in runs for ms in r[key]]
    out["runs"] = len(runs)
    return out


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The service rows (see the module docstring)."""
    n = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        input_path = tmp / "input.jsonl"
        write_input(input_path, n)
        size = input_path.stat().st_size
        alone = statistics.median(engine_alone(min(n, 20_000)) for _ in range(3))
        slows: list[dict[str, Any]] = []
        fasts: list[dict[str, Any]] = []
        for _ in range(1 if quick else 3):  # alternately, so a change of load hits both alike
            slows.append(one_run(tmp, input_path, n, 1, SLOW_INTERVAL))
            fasts.append(one_run(tmp, input_path, n, FAST_CLIENTS, FAST_INTERVAL))
    slow, fast = _merge(slows), _merge(fasts)
    rate = n / fast["end_to_end_s"]
    calls = len(fast["batch_ms"])
    where = f"{n:,} lines, {size / 2**20:.1f} MiB"
    polled = (f"{FAST_CLIENTS} clients every {FAST_INTERVAL * 1000:.0f} ms, {calls:,} calls"
              + (f" in {fast['runs']} runs (times: medians)" if fast["runs"] > 1 else ""))
    return [
        row(GROUP, f"{n:,}-line batch through the SDK, end to end (requests/s)", ours_s=fast["end_to_end_s"],
            baseline="the synthetic engine alone (requests/s)", baseline_s=n / alone, ratio=rate,
            unit="requests/s", target=">= 3,000", limit=3000, higher_is_better=True, peak_mib=fast["hwm_mib"],
            notes=f"{where}; the engine alone: {alone:,.0f} requests/s ({rate / alone:.2f} of it); "
                  f"create to completed, polled by {polled}"),
        row(GROUP, f"{n:,} lines: validating (s)", ours_s=fast["validating_s"], baseline="", baseline_s=None,
            ratio=fast["validating_s"], unit="seconds", target="<= 3 s", limit=3.0,
            notes="batches.create to the requests stored (lint, byte-range index, token count; in a batch "
                  "process, its start included)"),
        row(GROUP, f"{n:,} lines: running (s)", ours_s=fast["running_s"], baseline="", baseline_s=None,
            ratio=fast["running_s"], unit="seconds",
            notes=f"requests stored to result files registered; {n / fast['running_s']:,.0f} requests/s"),
        row(GROUP, f"{n:,} lines: VmHWM, service + batch process", ours_s=None, baseline="", baseline_s=None,
            ratio=fast["hwm_mib"] + fast["child_hwm_mib"], unit="MiB", target="<= 300 MiB", limit=300,
            peak_mib=fast["hwm_mib"] + fast["child_hwm_mib"],
            notes=f"/proc/PID/status: the service {fast['hwm_mib']:.0f} MiB, its batch processes (sampled every "
                  f"50 ms) {fast['child_hwm_mib']:.0f} MiB; in the run polled every 2 s "
                  f"{slow['hwm_mib']:.0f} + {slow['child_hwm_mib']:.0f} MiB"),
        row(GROUP, f"{n:,} lines: database / input file", ours_s=None, baseline="the input file", baseline_s=None,
            ratio=fast["db_bytes"] / size, unit="size ratio", target="<= 0.5x", limit=0.5,
            notes=f"localbatch.sqlite3 + WAL {fast['db_bytes'] / 2**20:.1f} MiB for {size / 2**20:.1f} MiB"),
        row(GROUP, "batches.retrieve p50 while it runs (ms)", ours_s=statistics.median(fast["batch_ms"]) / 1000,
            baseline="the same polling, service idle", baseline_s=statistics.median(fast["idle_batch_ms"]) / 1000,
            ratio=statistics.median(fast["batch_ms"]), unit="ms", notes=polled),
        row(GROUP, "batches.retrieve p99 while it runs (ms)", ours_s=_percentile(fast["batch_ms"], 0.99) / 1000,
            baseline="the same polling, service idle", baseline_s=_percentile(fast["idle_batch_ms"], 0.99) / 1000,
            ratio=_percentile(fast["batch_ms"], 0.99), unit="ms", target="<= 50 ms", limit=50,
            notes=f"{polled}; max {max(fast['batch_ms']):.0f} ms; idle: p99 "
                  f"{_percentile(fast['idle_batch_ms'], 0.99):.1f} ms, max {max(fast['idle_batch_ms']):.0f} ms "
                  f"({len(fast['idle_batch_ms'])} calls)"),
        row(GROUP, "files.retrieve p99 while it runs (ms)", ours_s=_percentile(fast["file_ms"], 0.99) / 1000,
            baseline="the same polling, service idle", baseline_s=_percentile(fast["idle_file_ms"], 0.99) / 1000,
            ratio=_percentile(fast["file_ms"], 0.99), unit="ms", target="<= 50 ms", limit=50,
            notes=f"the input file; p50 {statistics.median(fast['file_ms']):.1f} ms; idle: p99 "
                  f"{_percentile(fast['idle_file_ms'], 0.99):.1f} ms"),
        row(GROUP, "running time polled every 100 ms vs every 2 s", ours_s=fast["running_s"],
            baseline=f"1 client every {SLOW_INTERVAL:.0f} s", baseline_s=slow["running_s"], target="<= 1.1x",
            limit=1.1, notes=f"{polled}; end to end {fast['end_to_end_s']:.1f} s vs {slow['end_to_end_s']:.1f} s"),
    ]


if __name__ == "__main__":
    raise SystemExit(main_for(run))
