"""kill -9 trials at each moment of a batch's life, on the synthetic engine, over real HTTP.

Each trial starts the service on a data directory, runs one batch (some of its requests answered
with injected HTTP errors, so both result files have lines), kills the service with SIGKILL at one
moment, reads what the kill left from the data directory (database, spools, files folder), restarts the
service on the same directory and checks, through the openai SDK:

* every custom_id of the input is in exactly one of the output and error files, exactly once;
* each result recorded before the kill is the very line in the files (nothing redone differently);
* the files folder holds exactly the files the service lists (no orphan bytes).

Moments: ``upload`` (the service kills itself mid-upload, ``LOCALBATCH_CRASH_AT=upload``, while the
batch runs), ``validating``, ``in_progress``, ``finalizing`` (the wait before the files are written),
``finalize-staged`` (a result file under its staging name, ``LOCALBATCH_CRASH_AT=finalize``),
``finalize-renamed`` (files complete, batch not finished), ``cancelling``. ``validating``, ``in_progress``, ``finalizing`` and
``cancelling`` are kills from outside (SIGKILL to the pid) at a random point of that status.

``KILL_TRIALS`` (default 1) sets the trials per moment; ``KILL_TRIALS_REPORT=path`` writes the
table of figures (Markdown) there. The long run, whose table is in docs/reliability.md::

    KILL_TRIALS=20 KILL_TRIALS_REPORT=kill-trials.md .venv/bin/python -m pytest -q tests/test_kill_trials.py
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from localbatch.store import recorded_results

from conftest import (
    API_KEY,
    azure_client,
    chat_line,
    jsonl,
    listed_file_ids,
    openai_client,
    read_lines,
    stored_file_names,
    upload,
    wait_batch,
)

TRIALS = int(os.environ.get("KILL_TRIALS", "1"))
REPORT = os.environ.get("KILL_TRIALS_REPORT")
#: Attempts per moment before the test gives up landing kills on it (a kill that misses its moment
#: is not counted as a trial).
MAX_ATTEMPTS = 3 * TRIALS + 3

#: moment -> (crash hook or None for a kill from outside, status the batch must be in at the kill,
#: status it must end in, engine delay in seconds).
MOMENTS: dict[str, tuple[str | None, str | None, str, float]] = {
    "upload": ("upload", "in_progress", "completed", 0.05),
    "validating": (None, "validating", "completed", 0.005),
    "in_progress": (None, "in_progress", "completed", 0.02),
    "finalizing": (None, "finalizing", "completed", 0.005),
    "finalize-staged": ("finalize", "finalizing", "completed", 0.005),
    "finalize-renamed": ("finalize-renamed", "finalizing", "completed", 0.005),
    "cancelling": (None, "cancelling", "cancelled", 0.3),
}


@dataclass
class Figures:
    """What the trials of one moment did and found."""

    trials: int = 0
    missed: int = 0
    requests: int = 0
    recorded_before: int = 0
    orphans_left: int = 0
    orphans_after: int = 0
    rerun: int = 0
    lost: int = 0
    duplicated: int = 0
    changed: int = 0
    at_kill: Counter[str] = field(default_factory=Counter)
    ended: Counter[str] = field(default_factory=Counter)


FIGURES: dict[str, Figures] = {}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    if REPORT and FIGURES:
        Path(REPORT).write_text(table(FIGURES), encoding="utf-8")


def table(figures: dict[str, Figures]) -> str:
    """The figures as a Markdown table, one row per moment."""
    rows = ["| moment | trials | requests | status at the kill | results recorded before the kill | orphan files "
            "left by the kill / after the restart | ended | requests run twice | lost | doubled | changed |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for moment, f in figures.items():
        at_kill = ", ".join(f"{k} {v}" for k, v in sorted(f.at_kill.items()))
        ended = ", ".join(f"{k} {v}" for k, v in sorted(f.ended.items()))
        missed = f" (+{f.missed} kills that missed the moment)" if f.missed else ""
        rows.append(f"| {moment} | {f.trials}{missed} | {f.requests} | {at_kill} | {f.recorded_before} | "
                    f"{f.orphans_left} / {f.orphans_after} | {ended} | {f.rerun} | {f.lost} | {f.duplicated} | "
                    f"{f.changed} |")
    return "\n".join(rows) + "\n"


def _start(data_dir: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str | None, delay: float) -> Any:
    from localbatch.launcher import start_service

    if crash_at:
        monkeypatch.setenv("LOCALBATCH_CRASH_AT", crash_at)
    else:
        monkeypatch.delenv("LOCALBATCH_CRASH_AT", raising=False)
    return start_service(data_dir=data_dir, api_key=API_KEY, engine="synthetic", wait=60, extra_args=[
        "--engine-delay", str(delay), "--max-concurrency", "2", "--validating-seconds", "0.5",
        "--file-processing-delay", "0.05", "--finalizing-seconds", "0.5"])


def _read_db(data_dir: Path, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{data_dir / 'localbatch.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _poll(check: Any, timeout: float = 30, step: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for the batch"
        time.sleep(step)


def _results(client: Any, batch_id: str) -> int:
    """Requests of the batch with a result so far (output or error)."""
    counts = client.batches.retrieve(batch_id).request_counts
    return counts.completed + counts.failed


def _drive(moment: str, handle: Any, client: Any, batch_id: str, total: int, rng: random.Random) -> None:
    """Bring the batch to ``moment``; a kill from outside is sent here, a crash hook fires by itself."""
    crash_at = MOMENTS[moment][0]
    if moment == "upload":
        _poll(lambda: _results(client, batch_id) >= 1)
        big = b"x" * (3 * 1024 * 1024) + b"\n"  # more than one chunk; never read whole
        with pytest.raises(openai.APIConnectionError):
            client.files.create(file=("big.jsonl", big), purpose="batch")
    elif moment == "validating":
        time.sleep(rng.uniform(0.0, 0.35))
    elif moment == "in_progress":
        target = rng.randint(1, total - 2)
        _poll(lambda: _results(client, batch_id) >= target)
    elif moment == "finalizing":
        _poll(lambda: client.batches.retrieve(batch_id).status == "finalizing")
        time.sleep(rng.uniform(0.0, 0.3))
    elif moment == "cancelling":
        target = rng.randint(1, 4)  # in_progress: a batch cancelled while validating has no requests
        _poll(lambda: _results(client, batch_id) >= target)
        assert client.batches.cancel(batch_id).status == "cancelling"
        time.sleep(rng.uniform(0.0, 0.2))
    if crash_at is None:
        handle.kill()
    else:
        assert handle.process.wait(60) == -signal.SIGKILL, "the crash hook did not fire"


def _trial(moment: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch, number: int, figures: Figures) -> bool:
    """One kill and restart; False when the kill missed its moment (the trial is not counted)."""
    crash_at, at_status, end_status, delay = MOMENTS[moment]
    rng = random.Random(f"{moment}-{number}")
    total = rng.randint(20, 60)
    ids = [f"t{number:03d}-{i:03d}" for i in range(total)]
    faults = json.dumps({"seed": number, "http_error": 0.2})
    make_client, url = (azure_client, "/chat/completions") if number % 2 == 0 else (openai_client, "/v1/chat/completions")
    handle = _start(data_dir, monkeypatch, crash_at, delay)
    try:
        client = make_client(handle)
        f = upload(client, jsonl([chat_line(c, url=url) for c in ids]))
        batch = client.batches.create(input_file_id=f["id"], endpoint=url, completion_window="24h",  # type: ignore[arg-type]
                                      metadata={"localbatch_faults": faults})
        _drive(moment, handle, client, batch.id, total, rng)
    finally:
        handle.kill()

    # What the kill left: the batch's status, its recorded results, bytes no live row refers to.
    (status,), = _read_db(data_dir, "SELECT status FROM batches WHERE id = ?", (batch.id,))
    before = recorded_results(data_dir, batch.id)
    live = {r[0] for r in _read_db(data_dir, "SELECT id FROM files WHERE deleted = 0", ())}
    left = stored_file_names(data_dir) - live
    if status != at_status:
        figures.missed += 1
    elif crash_at is not None:
        assert left, f"the crash at {crash_at} left no staging or unrecorded file"

    handle = _start(data_dir, monkeypatch, None, delay)
    try:
        client = make_client(handle)
        final = wait_batch(client, batch.id, timeout=120)
        lines = read_lines(client, final["output_file_id"]) + read_lines(client, final["error_file_id"])
        seen = Counter(line["custom_id"] for line in lines)
        by_id = {line["custom_id"]: line for line in lines}
        orphans = stored_file_names(data_dir) - listed_file_ids(handle)
        runs = dict(_read_db(data_dir, "SELECT custom_id, runs FROM requests WHERE batch_id = ?", (batch.id,)))
    finally:
        handle.stop()
    lost = [c for c in ids if seen[c] == 0]
    doubled = [c for c in ids if seen[c] > 1] + [c for c in seen if c not in set(ids)]
    changed = [c for c, line in before.items() if by_id.get(c) != line]
    # Checked on every attempt, counted or not: a kill that missed its moment still lands somewhere.
    assert not lost and not doubled and not changed, (lost, doubled, changed)
    assert not orphans, f"files no File object lists after the restart: {orphans}"
    if status != at_status:
        assert final["status"] in ("completed", "cancelled")
        return False
    assert final["status"] == end_status
    figures.trials += 1
    figures.requests += total
    figures.recorded_before += len(before)
    figures.orphans_left += len(left)
    figures.orphans_after += len(orphans)
    figures.rerun += sum(1 for n in runs.values() if n > 1)
    figures.lost += len(lost)
    figures.duplicated += len(doubled)
    figures.changed += len(changed)
    figures.at_kill[status] += 1
    figures.ended[final["status"]] += 1
    return True


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_kill_9_at_each_moment_loses_nothing_and_leaves_no_orphan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  moment: str) -> None:
    figures = FIGURES.setdefault(moment, Figures())
    data_dir = tmp_path / "service"
    attempts = 0
    while figures.trials < TRIALS:
        attempts += 1
        assert attempts <= MAX_ATTEMPTS, f"only {figures.trials} of {attempts - 1} kills landed in {moment}"
        _trial(moment, data_dir, monkeypatch, attempts, figures)
    assert figures.lost == figures.duplicated == figures.changed == figures.orphans_after == 0
