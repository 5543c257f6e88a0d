"""Riding out a service that does not answer, and downloads that come back wrong.

The real SDK talks to the real local service through `FaultProxy`, which answers 429s and 503s
on cue, or cuts a downloaded file short, the way real services sometimes do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from batchkit import jobs
from batchkit.errors import DownloadError, ServiceUnreachable
from batchkit.jobs import Resilient, transient_error
from batchkit.downloads import download_verified
from batchkit.run import Limits, Run
from conftest import API_KEY, chat_line, jsonl, run_batch
from faultproxy import FaultProxy
from test_run import FAST, local_conn, make_table, prepare, service_lists


class FakeClock:
    """A clock that moves only when `sleep` is called (no real waiting in these tests)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def proxy(fast_service: Any) -> Any:
    with FaultProxy(fast_service.base_url) as running:
        yield running


def azure(url: str) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=url, api_key=API_KEY, api_version="2024-10-01-preview", max_retries=0)


def test_429_with_retry_after_is_honoured_and_503s_are_waited_out(proxy: FaultProxy) -> None:
    client = azure(proxy.base_url)
    proxy.add(method="GET", path_contains="/openai/batches", status=429, headers={"retry-after": "7"},
              body={"error": {"code": "429", "message": "Rate limit is exceeded."}})
    proxy.add(method="GET", path_contains="/openai/batches", status=503, times=3,
              body={"error": {"code": "serviceUnavailable", "message": "busy"}})
    clock = FakeClock()
    seen: list[tuple[str, float, float, str]] = []
    caller = Resilient(60, sleep=clock.sleep, clock=clock, on_wait=lambda *a: seen.append(a))
    page = caller.call(lambda: client.batches.list(limit=1), what="list batches")
    assert page.data is not None
    assert clock.sleeps == [7.0, 2.0, 4.0, 8.0]  # retry-after first, then the capped backoff
    assert [s[3].split(" ")[0] for s in seen] == ["RateLimitError", "InternalServerError", "InternalServerError",
                                                   "InternalServerError"]
    assert caller.retries == 4 and caller.longest_outage == pytest.approx(21.0)


def test_the_budget_runs_out_with_a_message_naming_the_batch_and_the_resume() -> None:
    client = azure("http://127.0.0.1:9")  # nothing listens: connection refused every time
    clock = FakeClock()
    caller = Resilient(30, sleep=clock.sleep, clock=clock, max_wait=8, endpoint="The service at http://127.0.0.1:9")
    with pytest.raises(ServiceUnreachable) as caught:
        caller.call(lambda: client.batches.retrieve("batch_abc"), what="retrieve batch_abc", batch_id="batch_abc")
    message = str(caught.value)
    assert caught.value.batch_id == "batch_abc"
    assert "The service at http://127.0.0.1:9 did not answer (retrieve batch_abc) for 30s" in message
    assert "outage budget 30s" in message and "APIConnectionError" in message
    assert "Batch batch_abc keeps running on the service; nothing is lost." in message
    assert "run this notebook again with the same parameters to resume" in message
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 8.0, 7.0]  # capped at max_wait, the last one cut to the budget
    assert isinstance(caught.value.__cause__, openai.APIConnectionError)


def test_a_client_error_is_not_retried(proxy: FaultProxy) -> None:
    client = azure(proxy.base_url)
    clock = FakeClock()
    with pytest.raises(openai.NotFoundError):
        Resilient(60, sleep=clock.sleep, clock=clock).call(lambda: client.batches.retrieve("batch_nope"), what="x")
    assert clock.sleeps == []
    assert transient_error(ValueError("x")) == (False, None)


def test_poll_batch_rides_out_429s_and_503s(proxy: FaultProxy, tmp_path: Path) -> None:
    client = azure(proxy.base_url)
    uploaded = client.files.create(file=("a.jsonl", jsonl([chat_line("a")])), purpose="batch")
    jobs.wait_for_file(client, uploaded.id, interval=0.1)
    batch = jobs.create_batch(client, uploaded.id)
    retrieve = f"/openai/batches/{batch.id}"
    proxy.add(method="GET", path_contains=retrieve, status=503, times=2, body={"error": {"code": "x", "message": "down"}})
    proxy.add(method="GET", path_contains=retrieve, status=429, headers={"retry-after-ms": "300"},
              body={"error": {"code": "429", "message": "slow down"}})
    lines: list[str] = []

    class Recorder:
        def update(self, b: Any, elapsed: float) -> None:
            lines.append(b.status)

        def outage(self, text: str) -> None:
            lines.append(text)

        def close(self) -> None:
            pass

    final = jobs.poll_batch(client, batch.id, interval=0.1, max_interval=0.2, progress=Recorder())
    assert final.status == "completed"
    notes = [line for line in lines if line.startswith("service not answering")]
    assert len(notes) == 3 and "InternalServerError (HTTP 503)" in notes[0] and "RateLimitError (HTTP 429)" in notes[2]


# ----- verified downloads ---------------------------------------------------------------------------


@pytest.fixture()
def finished_batch(fast_service: Any) -> dict[str, Any]:
    """A completed batch of 40 requests on the real service."""
    client = azure(fast_service.base_url)
    return run_batch(client, [chat_line(f"r-{n}") for n in range(40)])


def test_a_download_cut_at_a_line_boundary_is_fetched_again(proxy: FaultProxy, finished_batch: dict[str, Any]) -> None:
    client = azure(proxy.base_url)
    file_id = finished_batch["output_file_id"]
    cut = proxy.add(method="GET", path_contains=f"/files/{file_id}/content", keep_lines=20, times=1)
    data = download_verified(client, file_id, kind="output", counts=finished_batch["request_counts"],
                             status="completed", batch_id=finished_batch["id"])
    assert cut.used == 1
    assert len(data.splitlines()) == 40


def test_a_download_that_stays_short_is_refused(proxy: FaultProxy, finished_batch: dict[str, Any]) -> None:
    client = azure(proxy.base_url)
    file_id = finished_batch["output_file_id"]
    proxy.add(method="GET", path_contains=f"/files/{file_id}/content", keep_lines=20, times=None)
    with pytest.raises(DownloadError, match=rf"output file {file_id} of batch {finished_batch['id']} came back wrong "
                                            r"2 times \([\d,]+ bytes, the file object says [\d,]+\); it was not saved"):
        download_verified(client, file_id, kind="output", counts=finished_batch["request_counts"],
                          status="completed", batch_id=finished_batch["id"])


def test_a_download_short_of_the_request_counts_is_refused(proxy: FaultProxy, finished_batch: dict[str, Any]) -> None:
    """The file object agrees with the short content: only the line count against request_counts shows it."""
    client = azure(proxy.base_url)
    file_id = finished_batch["output_file_id"]
    full = client.files.content(file_id).content
    half = b"".join(full.splitlines(keepends=True)[:20])
    proxy.add(method="GET", path_contains=f"/files/{file_id}/content", keep_lines=20, times=None)
    proxy.add(method="GET", path_contains=f"/files/{file_id}", times=None,
              edit_json=lambda obj: {**obj, "bytes": len(half)})
    with pytest.raises(DownloadError, match="20 lines, request_counts.completed is 40"):
        download_verified(client, file_id, kind="output", counts=finished_batch["request_counts"],
                          status="completed", batch_id=finished_batch["id"])


def test_a_run_never_saves_a_short_download(proxy: FaultProxy, tmp_path: Path) -> None:
    conn = local_conn(proxy.base_url)
    run = prepare(conn, make_table(tmp_path, 30), tmp_path / "out")
    run.submit(conn, progress=None)
    proxy.add(method="GET", path_contains="/content", keep_lines=10, times=None)
    with pytest.raises(DownloadError):
        run.advance(conn, **FAST)
    assert not list(run.folder.glob("*.output.jsonl"))
    assert run.chunks[0]["attempts"][0]["stage"] == "submitted"  # not marked downloaded
    proxy.rules.clear()
    run.advance(conn, **FAST)
    assert len(run.results()) == 30 and set(run.results()["outcome"]) == {"ok"}
    saved = run.chunks[0]["attempts"][0]["results"]["output"]
    assert saved["lines"] == 30 and (run.folder / saved["path"]).stat().st_size == saved["bytes"]


# ----- Azure's fail-fast quota answer at create ---------------------------------------------------------


TOKEN_LIMIT_400 = {"error": {"code": "token_limit_exceeded", "message": (
    "Enqueued token limit reached for gpt-4o-batch in this resource. Please try again once some in_progress "
    "batches have been completed.")}}


def test_token_limit_exceeded_at_create_is_retried_with_backoff(proxy: FaultProxy, tmp_path: Path) -> None:
    conn = local_conn(proxy.base_url)
    run = prepare(conn, make_table(tmp_path, 6), tmp_path / "out", limits=Limits.for_target("azure", max_requests=3))
    refused = proxy.add(method="POST", path_contains="/openai/batches", status=400, body=TOKEN_LIMIT_400, times=2)
    run.advance(conn, quota_first_wait=0.2, **FAST)
    assert refused.used == 2
    files, batches = service_lists(conn, run)
    assert len(files) == 2 and len(batches) == 2
    assert run.chunks[0]["attempts"][0]["quota_refusals"] == 2
    assert sum("token_limit_exceeded (refusal" in e["event"] for e in run.manifest["events"]) == 2
    assert set(run.results()["outcome"]) == {"ok"}


def test_token_limit_exceeded_without_waiting_leaves_the_chunk_for_later(proxy: FaultProxy, tmp_path: Path) -> None:
    conn = local_conn(proxy.base_url)
    run = prepare(conn, make_table(tmp_path, 2), tmp_path / "out")
    proxy.add(method="POST", path_contains="/openai/batches", status=400, body=TOKEN_LIMIT_400, times=1)
    run.submit(conn, progress=None)
    attempt = run.chunks[0]["attempts"][0]
    assert attempt["stage"] == "uploaded" and attempt["batch_id"] is None
    again = Run.open(tmp_path / "out")
    again.advance(conn, **FAST)
    assert [len(x) for x in service_lists(conn, run)] == [1, 1]


def test_progress_text_shows_each_batch_and_the_run(fast_service: Any, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    conn = local_conn(fast_service.base_url)
    run = prepare(conn, make_table(tmp_path, 4), tmp_path / "out", limits=Limits.for_target("azure", max_requests=2))
    run.advance(conn, interval=0.1, max_interval=0.3, progress="text")
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("chunk 1/2 attempt 1 batch_") and line.endswith("completed: 2/2 completed, 0 failed")
               for line in out)
    assert out[-1].startswith(f"{run.id}: 2/2 batches finished, 4/4 requests done, 0 failed in the latest attempts")
    assert json.loads(run.manifest_path.read_text())["chunks"][1]["attempts"][0]["status"] == "completed"


def test_download_results_checks_an_expired_batch(slow_service: Any) -> None:
    """An expired OpenAI-dialect batch: its error file holds a line for each request that did not run."""
    from batchkit.downloads import download_results

    client = openai.OpenAI(base_url=slow_service.base_url + "/v1", api_key=API_KEY, max_retries=0)
    batch = run_batch(client, [chat_line(f"e-{n}", url="/v1/chat/completions") for n in range(30)],
                      endpoint="/v1/chat/completions")
    assert batch["status"] == "expired"
    files = download_results(client, batch["id"])
    counts = batch["request_counts"]
    assert len(files.output_lines) == counts["completed"] > 0
    assert len(files.output_lines) + len(files.error_lines) == 30
    assert {line["error"]["code"] for line in files.error_lines} == {"batch_expired"}


@pytest.mark.parametrize("lost", ["/openai/files", "/openai/batches"])
def test_an_answer_lost_after_the_service_acted_is_not_sent_again(proxy: FaultProxy, tmp_path: Path, lost: str) -> None:
    """The upload (or create) reached the service, but its answer came back as a 502: the retry
    finds what the service made, on its own list, instead of making a second one."""
    conn = local_conn(proxy.base_url)
    run = prepare(conn, make_table(tmp_path, 3), tmp_path / "out")
    rule = proxy.add(method="POST", path_contains=lost, status=502, lose_answer=True,
                     body={"error": {"code": "502", "message": "Bad gateway"}})
    run.advance(conn, outage_budget=60, **FAST)
    assert rule.used == 1
    files, batches = service_lists(conn, run)
    assert len(files) == 1 and len(batches) == 1
    assert set(run.results()["outcome"]) == {"ok"}
