"""Durability: kill -9 the service mid-batch, restart it on the same data directory, and check that
the batch finishes without losing or re-running finished requests."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import API_KEY, azure_client, chat_line, jsonl, raw, read_lines, upload, wait_batch

DELAY = 0.2


#: Where the batch's steps run: in the service's own threads, or in batch processes (large batches).
WHERE = {"threads": [], "processes": ["--subprocess-min-lines", "1", "--subprocess-min-bytes", "1"]}


def _start(data_dir: Path, where: str = "threads") -> Any:
    from localbatch.launcher import start_service

    return start_service(data_dir=data_dir, api_key=API_KEY, engine="synthetic", wait=60, extra_args=[
        "--engine-delay", str(DELAY), "--max-concurrency", "2", "--validating-seconds", "0.1",
        "--file-processing-delay", "0.1", "--finalizing-seconds", "0.1", *WHERE[where]])


def _snapshot(data_dir: Path, batch_id: str) -> dict[str, Any]:
    """custom_id -> recorded result line, read straight from the service's data directory."""
    from localbatch.store import recorded_results

    return recorded_results(data_dir, batch_id)


def _runs(data_dir: Path, batch_id: str) -> dict[str, int]:
    db = sqlite3.connect(f"file:{data_dir / 'localbatch.sqlite3'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT custom_id, runs FROM requests WHERE batch_id = ?", (batch_id,)).fetchall())
    finally:
        db.close()


@pytest.mark.parametrize("where", list(WHERE))
def test_kill_9_and_restart_resumes_without_losing_or_redoing_work(tmp_path: Path, where: str) -> None:
    data_dir = tmp_path / "service"
    ids = [f"k{i:02d}" for i in range(30)]
    handle = _start(data_dir, where)
    try:
        client = azure_client(handle)
        f = upload(client, jsonl([chat_line(c) for c in ids]))
        batch = client.batches.create(input_file_id=f["id"], endpoint="/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 30
        while client.batches.retrieve(batch.id).request_counts.completed < 8:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # A second batch still validating when the service dies must also resume.
        f2 = upload(client, jsonl([chat_line("late-1"), chat_line("late-2")]))
        second = client.batches.create(input_file_id=f2["id"], endpoint="/chat/completions", completion_window="24h")
        # Requests are read from the input file as they run: deleting it must not cost the batch any.
        client.files.delete(f["id"])
    finally:
        handle.kill()
    before = _snapshot(data_dir, batch.id)
    assert 8 <= len(before) < len(ids), "the kill must land mid-batch"
    time.sleep(4 * DELAY)
    assert _snapshot(data_dir, batch.id) == before, "nothing may go on recording once the service is dead"

    handle = _start(data_dir, where)
    try:
        client = azure_client(handle)
        final = wait_batch(client, batch.id, timeout=60)
        assert final["status"] == "completed"
        assert final["request_counts"] == {"total": 30, "completed": 30, "failed": 0}
        outputs = read_lines(client, final["output_file_id"])
        errors = read_lines(client, final["error_file_id"])
        assert errors == []
        assert sorted(x["custom_id"] for x in outputs) == ids  # each exactly once
        # Lines finished before the kill are the very lines recorded then, and were not run again.
        by_id = {x["custom_id"]: x for x in outputs}
        for custom_id, line in before.items():
            assert by_id[custom_id] == line
        runs = _runs(data_dir, batch.id)
        assert all(runs[c] == 1 for c in before), {c: runs[c] for c in before if runs[c] != 1}
        assert all(1 <= runs[c] <= 2 for c in ids)  # at most the in-flight ones ran twice
        late = wait_batch(client, second.id, timeout=60)
        assert late["status"] == "completed" and late["request_counts"]["completed"] == 2
        data, _ = raw(client.files.with_raw_response.retrieve, f2["id"])
        assert data["status"] == "processed"
    finally:
        handle.stop()


def test_refuses_a_non_loopback_host_without_a_key(tmp_path: Path) -> None:
    from localbatch.launcher import ServiceStartError, start_service

    with pytest.raises(ServiceStartError) as info:
        start_service(host="0.0.0.0", port=None, data_dir=tmp_path, api_key=None, engine="synthetic", wait=30)
    assert "without a key" in str(info.value)


def test_stopping_a_detached_service_started_here_reaps_it(tmp_path: Path) -> None:
    import os

    from localbatch.launcher import start_service

    handle = start_service(data_dir=tmp_path, api_key=API_KEY, engine="synthetic", detached=True, wait=60)
    handle.stop(timeout=30)
    with pytest.raises(ChildProcessError):  # already waited for: no zombie left behind
        os.waitpid(handle.pid, os.WNOHANG)


def test_a_batch_whose_input_bytes_are_gone_after_a_crash_still_answers_every_request(tmp_path: Path) -> None:
    data_dir = tmp_path / "service"
    ids = [f"g{i:02d}" for i in range(20)]
    handle = _start(data_dir)
    try:
        client = azure_client(handle)
        f = upload(client, jsonl([chat_line(c) for c in ids]))
        batch = client.batches.create(input_file_id=f["id"], endpoint="/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 30
        while client.batches.retrieve(batch.id).request_counts.completed < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        handle.kill()
    before = _snapshot(data_dir, batch.id)
    assert 3 <= len(before) < len(ids)
    (data_dir / "spool" / f"{batch.id}.input").unlink()  # the bytes are gone from the data directory
    (data_dir / "files" / f["id"]).unlink()

    handle = _start(data_dir)
    try:
        client = azure_client(handle)
        final = wait_batch(client, batch.id, timeout=60)
        assert final["status"] == "completed"
        outputs = read_lines(client, final["output_file_id"])
        errors = read_lines(client, final["error_file_id"])
        assert sorted(x["custom_id"] for x in outputs + errors) == ids  # each exactly once
        assert {x["custom_id"] for x in outputs} == set(before)
        assert errors and all(e["response"]["status_code"] == 500 and "input file" in
                              e["response"]["body"]["error"]["message"] for e in errors)
    finally:
        handle.stop()
