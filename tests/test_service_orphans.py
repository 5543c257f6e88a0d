"""No orphan bytes: a crash mid-upload or mid-finalize leaves nothing on disk after a restart that
the service does not list.

The service kills itself with SIGKILL at a named moment (``LOCALBATCH_CRASH_AT``, see
localbatch/durable.py), exactly as ``kill -9`` would; the test then checks what the crash left,
restarts the service on the same data directory and compares the files folder with the service's
own files list.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import (
    API_KEY,
    azure_client,
    chat_line,
    jsonl,
    listed_file_ids,
    read_lines,
    stored_file_names,
    upload,
    wait_batch,
)

IDS = [f"o{i:02d}" for i in range(12)]


def _start(data_dir: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str | None = None) -> Any:
    from localbatch.launcher import start_service

    if crash_at:
        monkeypatch.setenv("LOCALBATCH_CRASH_AT", crash_at)
    else:
        monkeypatch.delenv("LOCALBATCH_CRASH_AT", raising=False)
    return start_service(data_dir=data_dir, api_key=API_KEY, engine="synthetic", wait=60, extra_args=[
        "--validating-seconds", "0.1", "--file-processing-delay", "0.1", "--finalizing-seconds", "0.1"])


def _died_of_sigkill(handle: Any, timeout: float = 30) -> None:
    assert handle.process.wait(timeout) == -signal.SIGKILL, "the service must have killed itself"


def _status(data_dir: Path, batch_id: str) -> str:
    db = sqlite3.connect(f"file:{data_dir / 'localbatch.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()[0]
    finally:
        db.close()


def _big_input() -> bytes:
    """An input file of about 3 MiB, so the upload is written in more than one chunk."""
    return jsonl([chat_line(f"big-{i:05d}", prompt="x" * 1000) for i in range(3000)])


@pytest.mark.parametrize("moment", ["upload", "upload-renamed"])
def test_a_crash_mid_upload_leaves_no_orphan_after_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           moment: str) -> None:
    data_dir = tmp_path / "service"
    handle = _start(data_dir, monkeypatch)
    try:
        kept = upload(azure_client(handle), jsonl([chat_line(c) for c in IDS]))
    finally:
        handle.stop()
    big = _big_input()

    handle = _start(data_dir, monkeypatch, crash_at=moment)
    try:
        with pytest.raises(openai.APIConnectionError):
            azure_client(handle).files.create(file=("big.jsonl", big), purpose="batch")
        _died_of_sigkill(handle)
    finally:
        handle.kill()
    left = stored_file_names(data_dir) - {kept["id"]}
    assert len(left) == 1, left
    (name,) = left
    size = (data_dir / "files" / name).stat().st_size
    if moment == "upload":  # part of the bytes under the staging name
        assert name == f".{name[1:-5]}.part" and 0 < size < len(big)
    else:  # complete and renamed, but never recorded
        assert name.startswith("file-") and size == len(big)

    handle = _start(data_dir, monkeypatch)
    try:
        listed = listed_file_ids(handle)
        assert listed == {kept["id"]}
        assert stored_file_names(data_dir) == listed
        log = (data_dir / "localbatch.log").read_text()
        assert "removed 1 file(s) no row refers to" in log and name in log
        client = azure_client(handle)
        assert client.files.content(kept["id"]).read() == jsonl([chat_line(c) for c in IDS])
        again = upload(client, big)  # the same upload now succeeds
        assert stored_file_names(data_dir) == listed_file_ids(handle) == {kept["id"], again["id"]}
    finally:
        handle.stop()


@pytest.mark.parametrize("moment", ["finalize", "finalize-renamed"])
def test_a_crash_mid_finalize_leaves_no_orphan_after_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             moment: str) -> None:
    data_dir = tmp_path / "service"
    handle = _start(data_dir, monkeypatch, crash_at=moment)
    try:
        client = azure_client(handle)
        f = upload(client, jsonl([chat_line(c) for c in IDS]))
        batch = client.batches.create(input_file_id=f["id"], endpoint="/chat/completions", completion_window="24h")
        _died_of_sigkill(handle)
    finally:
        handle.kill()
    assert _status(data_dir, batch.id) == "finalizing"
    left = stored_file_names(data_dir) - {f["id"]}
    if moment == "finalize":  # the output file under its staging name, not yet renamed
        assert len(left) == 1 and all(n.startswith(".") and n.endswith(".part") for n in left), left
    else:  # the output and (empty, Azure) error files, complete, renamed and never recorded
        assert len(left) == 2 and all(n.startswith("file-") for n in left), left

    handle = _start(data_dir, monkeypatch)
    try:
        client = azure_client(handle)
        final = wait_batch(client, batch.id, timeout=60)
        assert final["status"] == "completed"
        outputs = read_lines(client, final["output_file_id"])
        assert sorted(x["custom_id"] for x in outputs) == IDS
        assert read_lines(client, final["error_file_id"]) == []
        listed = listed_file_ids(handle)
        assert listed == {f["id"], final["output_file_id"], final["error_file_id"]}
        assert stored_file_names(data_dir) == listed
        assert not left & listed
        log = (data_dir / "localbatch.log").read_text()
        assert f"removed {len(left)} file(s) no row refers to" in log and all(n in log for n in left)
    finally:
        handle.stop()


def test_an_unknown_crash_moment_stops_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from localbatch.launcher import ServiceStartError

    with pytest.raises(ServiceStartError) as info:
        _start(tmp_path, monkeypatch, crash_at="upload,nowhere")
    assert "LOCALBATCH_CRASH_AT: unknown moment nowhere" in str(info.value)
