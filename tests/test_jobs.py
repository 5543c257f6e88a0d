"""Jobs against the real local service over HTTP with the real openai SDK (synthetic engine, for speed)."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import openai
import pandas as pd
import pytest

from batchkit import authoring, jobs, results
from batchkit.errors import JobError, LintError, PollTimeout
from batchkit.progress import TextReporter, make_reporter, status_line

ROOT = Path(__file__).resolve().parents[1]
KEY = "jobs-test-key"
SCHEMA = {
    "type": "object",
    "properties": {"BuildingName": {"type": "string"}, "City": {"type": "string"}},
    "required": ["BuildingName", "City"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def service() -> Iterator[SimpleNamespace]:
    from localbatch.launcher import start_service

    with tempfile.TemporaryDirectory(prefix="localbatch-jobs-") as data_dir:
        handle = start_service(
            data_dir=data_dir,
            api_key=KEY,
            engine="synthetic",
            extra_args=("--engine-delay", "0.4", "--max-concurrency", "1", "--completion-window-seconds", "1.5",
                        "--validating-seconds", "0.2", "--file-processing-delay", "0.2"),
        )
        try:
            yield SimpleNamespace(
                url=handle.base_url,
                azure=openai.AzureOpenAI(azure_endpoint=handle.base_url, api_key=KEY, api_version="2024-10-01-preview"),
                openai=openai.OpenAI(base_url=handle.base_url + "/v1", api_key=KEY),
            )
        finally:
            handle.stop()


def _write(tmp_path: Path, n: int, url: str = "/chat/completions", name: str = "b.jsonl") -> Path:
    rows = [{"custom_id": f"task-{i}", "prompt": f"Provide info about building {i}"} for i in range(n)]
    lines = authoring.build_requests(rows, system="facts", schema=SCHEMA, model="gpt-4o-batch", url=url, name="info")
    return authoring.write_jsonl(lines, tmp_path / name, target="azure" if url == "/chat/completions" else "openai")


# --- the poll loop on its own (clock and sleep replaced) -------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("terminal", ["completed", "failed", "expired", "cancelled"])
def test_poll_stops_on_every_terminal_status_with_backoff(terminal: str) -> None:
    statuses = iter(["validating", "in_progress", "in_progress", "finalizing", terminal, "never"])
    clock = _Clock()
    seen: list[str] = []
    result = jobs.poll(
        lambda: (next(statuses), None), lambda s: s, jobs.TERMINAL_BATCH_STATUSES,
        interval=1, backoff=2, max_interval=5, sleep=clock.sleep, clock=clock,
        on_update=lambda s, elapsed: seen.append(s),
    )
    assert result == terminal
    assert clock.sleeps == [1, 2, 4, 5]
    assert seen == ["validating", "in_progress", "in_progress", "finalizing", terminal]


def test_poll_follows_the_server_hint_and_times_out() -> None:
    clock = _Clock()
    with pytest.raises(PollTimeout) as info:
        jobs.poll(lambda: ("in_progress", 3.0), lambda s: s, {"completed"}, interval=1, timeout=10,
                  sleep=clock.sleep, clock=clock, what="batch b1", ids={"batch_id": "b1"})
    assert clock.sleeps == [3.0, 3.0, 3.0]
    assert info.value.batch_id == "b1" and "batch b1" in str(info.value) and "'in_progress'" in str(info.value)
    with pytest.raises(ValueError):
        jobs.poll(lambda: ("x", None), lambda s: s, {"x"}, interval=0)


def test_text_reporter_prints_one_line_per_change() -> None:
    stream = io.StringIO()
    reporter = TextReporter(stream)
    counts = SimpleNamespace(completed=0, failed=0, total=3)
    batch = SimpleNamespace(id="batch_x", status="in_progress", request_counts=counts)
    reporter.update(batch, 1.0)
    reporter.update(batch, 2.0)  # no change: no line
    counts.completed = 1
    reporter.update(batch, 3.2)
    assert stream.getvalue().splitlines() == [
        "batch_x in_progress: 0/3 completed, 0 failed (1s)",
        "batch_x in_progress: 1/3 completed, 0 failed (3s)",
    ]
    assert status_line(SimpleNamespace(id="b", status="validating", request_counts=None), 0) == "b validating: 0/0 completed, 0 failed (0s)"
    assert isinstance(make_reporter("auto"), TextReporter)  # no kernel here
    assert make_reporter(None) is None and make_reporter(reporter) is reporter
    with pytest.raises(ValueError):
        make_reporter("fancy")


# --- the real service --------------------------------------------------------------------------


def test_azure_flow_upload_wait_create_poll_download(service: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = service.azure
    uploaded = jobs.upload_file(client, _write(tmp_path, 3))
    assert uploaded.purpose == "batch"
    shown = jobs.file_details(uploaded)
    assert shown.loc["id", "value"] == uploaded.id and shown.loc["status", "value"] == "pending"
    assert shown.loc["created_at", "value"].endswith("Z") and shown.loc["expires_at", "value"] is None
    ready = jobs.wait_for_file(client, uploaded.id, interval=0.1)
    assert ready.status == "processed"
    batch = jobs.create_batch(client, ready.id, metadata={"run": "test"})
    assert batch.status == "validating" and batch.endpoint == "/chat/completions"
    final = jobs.poll_batch(client, batch.id, interval=0.2, max_interval=0.5, timeout=60, progress="text")
    assert final.status == "completed"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{batch.id} validating") and lines[-1].startswith(f"{batch.id} completed: 3/3 completed")
    assert len(lines) == len(set(lines))

    details = jobs.batch_details(final)
    assert details.loc["status", "value"] == "completed" and details.loc["requests completed", "value"] == 3
    assert details.loc["completed_at", "value"].endswith("Z") and details.loc["failed_at", "value"] is None

    files = results.download_results(client, final)
    assert len(files.output_lines) == 3 and files.error_lines == []  # Azure: an empty error file
    table = results.parse_results(files, inputs=results.download_input_lines(client, final), schema=SCHEMA)
    assert list(table["custom_id"]) == ["task-0", "task-1", "task-2"]
    assert set(table["outcome"]) == {"ok"} and table["prompt_tokens"].notna().all()

    listed = jobs.batches_frame(jobs.list_batches(client, limit=50))
    assert batch.id in set(listed["id"])
    assert list(listed.columns) == ["id", "status", "created_at", "completed", "failed", "total"]


def test_bad_metadata_is_refused_before_the_batch_is_created(service: SimpleNamespace, tmp_path: Path) -> None:
    client = service.azure
    ready = jobs.wait_for_file(client, jobs.upload_file(client, _write(tmp_path, 1)).id, interval=0.1)
    before = {b.id for b in client.batches.list(limit=100)}
    with pytest.raises(LintError) as info:
        jobs.create_batch(client, ready.id, metadata={"run": 7})
    assert "metadata.run" in str(info.value) and "expected a string, but got an integer" in str(info.value)
    assert info.value.findings[0].code == "invalid_type"
    assert {b.id for b in client.batches.list(limit=100)} == before  # nothing was sent


def test_cancel_and_cancel_again(service: SimpleNamespace, tmp_path: Path) -> None:
    client = service.azure
    batch = jobs.submit(client, _write(tmp_path, 4), interval=0.1)
    asked = jobs.cancel_batch(client, batch.id)
    assert asked.status in ("cancelling", "cancelled")
    final = jobs.poll_batch(client, batch.id, interval=0.2, max_interval=0.5, timeout=60, progress=None)
    assert final.status == "cancelled"
    table = results.parse_results(results.download_results(client, final), inputs=[f"task-{i}" for i in range(4)])
    assert set(table["outcome"]) <= {"ok", "cancelled"} and "cancelled" in set(table["outcome"])
    with pytest.raises(JobError) as info:
        jobs.cancel_batch(client, batch.id)
    assert info.value.batch_id == batch.id


def test_openai_dialect_expiry_gives_expired_rows(service: SimpleNamespace, tmp_path: Path) -> None:
    client = service.openai
    path = _write(tmp_path, 6, url="/v1/chat/completions")
    batch = jobs.submit(client, path, endpoint="/v1/chat/completions", interval=0.1)
    final = jobs.poll_batch(client, batch.id, interval=0.2, max_interval=0.5, timeout=60, progress=None)
    assert final.status == "expired"
    table = results.parse_results(results.download_results(client, final), inputs=authoring.read_jsonl(path), schema=SCHEMA)
    assert len(table) == 6 and "expired" in set(table["outcome"])


def test_failed_validation_has_errors_and_no_output(service: SimpleNamespace, tmp_path: Path) -> None:
    client = service.azure
    bad = tmp_path / "dup.jsonl"
    line = authoring.read_jsonl(_write(tmp_path, 1))[0]
    bad.write_bytes(authoring.to_jsonl_bytes([line]) * 2)  # the same custom_id twice
    final = jobs.poll_batch(client, jobs.submit(client, bad, interval=0.1).id, interval=0.2, timeout=60, progress=None)
    assert final.status == "failed"
    assert any("duplicate_custom_id" in text for text in jobs.batch_errors(final))
    files = results.download_results(client, final)
    assert files.output_lines == []
    table = results.parse_results(files, inputs=[line["custom_id"]])
    assert table.loc[0, "outcome"] == "missing"


def test_wait_for_file_timeout_and_missing_file(service: SimpleNamespace, tmp_path: Path) -> None:
    client = service.azure
    uploaded = jobs.upload_file(client, _write(tmp_path, 1))
    with pytest.raises(PollTimeout) as info:
        jobs.wait_for_file(client, uploaded.id, interval=0.01, timeout=0.0)
    assert info.value.file_id == uploaded.id
    with pytest.raises(JobError, match="No batch file"):
        jobs.upload_file(client, tmp_path / "nope.jsonl")


def test_run_record_round_trip(tmp_path: Path) -> None:
    batch = SimpleNamespace(id="batch_1", status="completed")
    path = jobs.write_run_record(tmp_path / "out" / "run.json", batch=batch, backend="local", input_file="out/b.jsonl")
    assert jobs.read_run_record(path) == {"batch_id": "batch_1", "status": "completed", "backend": "local", "input_file": "out/b.jsonl"}
    with pytest.raises(JobError, match="run notebook 02"):
        jobs.read_run_record(tmp_path / "none.json")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(JobError, match="no batch_id"):
        jobs.read_run_record(tmp_path / "empty.json")
    assert jobs.batches_frame([]).empty and isinstance(jobs.batches_frame([]), pd.DataFrame)
