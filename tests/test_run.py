"""batchkit.run: the durable run, against the real local service over HTTP with the real SDK.

Every claim about "nothing twice" is checked on the service's own lists (`files.list`,
`batches.list`), never on the run's own bookkeeping alone.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from batchkit import authoring
from batchkit.config import connect
from batchkit.errors import LintError, PollTimeout, RunError, RunFailed, RunNotFinished
from batchkit.inputs import read_table, with_ids
from batchkit.run import (
    MANIFEST_NAME,
    META_ATTEMPT,
    META_CHUNK,
    META_RUN,
    EncodedLine,
    Limits,
    Run,
    atomic_write_bytes,
    current_run_id,
    encode_lines,
    list_runs,
    merge_attempts,
    split_lines,
)
from conftest import API_KEY

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "floors": {"type": "integer"}},
    "required": ["city", "floors"],
    "additionalProperties": False,
}


# ----- helpers --------------------------------------------------------------------------------------


def local_conn(url: str, key: str = API_KEY) -> Any:
    """A Connection to the local service at `url` (no .env, never starting a service)."""
    return connect(env={"BATCH_BACKEND": "local", "LOCALBATCH_URL": url, "LOCALBATCH_API_KEY": key}, start_local=False)


def make_table(folder: Path, rows: int, name: str = "towers.csv") -> Path:
    """A table of `rows` prompts, unique to the test (its folder name is in the prompts): runs of
    different tests never share a run id, so they never adopt each other's batches."""
    path = folder / name
    lines = ["custom_id,prompt"] + [f"t-{n:04d},Describe tower number {n} ({folder.name})" for n in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prepare(conn: Any, table: Path, out: Path, *, system: str = "You describe towers.", **options: Any) -> Run:
    frame, id_column = with_ids(read_table(table), "custom_id")
    body = options.pop("body", {})
    requests = authoring.build_requests(frame, system=system, schema=SCHEMA, model=options.pop("model", conn.deployment),
                                        url=conn.batch_url, name="tower", **body)
    return Run.prepare(requests, out_dir=out, settings=conn, inputs_path=table, id_column=id_column,
                       system_message=system, body_options=body, **options)


def service_lists(conn: Any, run: Run) -> tuple[list[Any], list[Any]]:
    """The run's uploads and batches as the service lists them."""
    files = [f for f in conn.client.files.list(purpose="batch") if f.filename.startswith(run.id + "-")]
    batches = [b for b in conn.client.batches.list(limit=100) if (b.metadata or {}).get(META_RUN) == run.id]
    return files, batches


FAST = {"interval": 0.1, "max_interval": 0.3, "progress": None}


# ----- splitting and limits -------------------------------------------------------------------------


def _lines(sizes: list[tuple[int, int]]) -> list[EncodedLine]:
    return [EncodedLine(f"id-{n}", b"x" * (size - 1) + b"\n", tokens) for n, (size, tokens) in enumerate(sizes)]


def test_split_keeps_every_chunk_within_each_limit_and_never_splits_a_line() -> None:
    lines = _lines([(10, 5)] * 25)
    by_requests = split_lines(lines, Limits(max_requests=10, max_bytes=10_000))
    assert [len(c) for c in by_requests] == [10, 10, 5]
    by_bytes = split_lines(lines, Limits(max_requests=100, max_bytes=35))
    assert [len(c) for c in by_bytes] == [3] * 8 + [1]
    by_tokens = split_lines(lines, Limits(max_requests=100, max_bytes=10_000, token_quota=22))
    assert [len(c) for c in by_tokens] == [4] * 6 + [1]
    for chunks in (by_requests, by_bytes, by_tokens):
        assert [line.custom_id for chunk in chunks for line in chunk] == [line.custom_id for line in lines]
    with pytest.raises(RunError, match="id-1 alone is 50 bytes"):
        split_lines(_lines([(10, 1), (50, 1)]), Limits(max_requests=10, max_bytes=40))
    with pytest.raises(RunError, match="id-0 alone needs about 90 input tokens"):
        split_lines(_lines([(10, 90)]), Limits(max_requests=10, max_bytes=40, token_quota=50))


def test_limits_per_target_and_overrides() -> None:
    assert Limits.for_target("azure") == Limits(100_000, 200 * 1024 * 1024, None)
    assert Limits.for_target("openai") == Limits(50_000, 200 * 1024 * 1024, None)
    assert Limits.for_target("openai", max_requests=10, token_quota=2_000_000) == Limits(10, 200 * 1024 * 1024, 2_000_000)
    with pytest.raises(RunError, match="max_requests=60,000 is outside 1..50,000"):
        Limits.for_target("openai", max_requests=60_000)
    with pytest.raises(RunError, match="target='bedrock'"):
        Limits.for_target("bedrock")


def test_encoded_lines_count_the_tokens_the_service_counts() -> None:
    from batchkit.estimate import count_body_tokens

    lines = authoring.build_requests([{"custom_id": "a", "prompt": "hello there"}], system="s", schema=SCHEMA, model="m")
    (encoded,) = encode_lines(lines)
    assert encoded.tokens == count_body_tokens(lines[0]["body"]) > 0
    assert encoded.data == authoring.to_jsonl_bytes(lines)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = atomic_write_bytes(tmp_path / "m.json", b"old\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new content\n")
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left behind


def test_merge_attempts_keeps_the_latest_finished_outcome_and_the_history() -> None:
    answers = pd.DataFrame([
        {"custom_id": "a", "attempt": 1, "_done": True, "outcome": "ok"},
        {"custom_id": "b", "attempt": 1, "_done": True, "outcome": "truncated"},
        {"custom_id": "c", "attempt": 1, "_done": True, "outcome": "http_error"},
        {"custom_id": "b", "attempt": 2, "_done": True, "outcome": "http_error"},
        {"custom_id": "c", "attempt": 2, "_done": False, "outcome": "missing"},
        {"custom_id": "b", "attempt": 3, "_done": True, "outcome": "ok"},
    ])
    final = merge_attempts(answers)
    assert final.loc[["a", "b", "c"], "outcome"].tolist() == ["ok", "ok", "http_error"]
    assert final.loc[["a", "b", "c"], "attempts"].tolist() == [1, 3, 2]
    assert final.loc["b", "history"] == ["truncated", "http_error"]
    assert final.loc["a", "history"] == [] and final.loc["c", "history"] == []


# ----- the run id and the manifest ------------------------------------------------------------------


def test_same_inputs_reopen_the_run_and_changed_inputs_make_a_new_one(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    table = make_table(tmp_path, 4)
    first = prepare(conn, table, tmp_path / "out")
    assert first.created and first.id.startswith("run-") and len(first.id) == 16
    assert first.describe().startswith(f"New run {first.id}: 4 request(s) in 1 batch file(s)")
    assert current_run_id(tmp_path / "out") == first.id

    again = prepare(conn, table, tmp_path / "out")
    assert (again.id, again.created) == (first.id, False)
    assert again.describe().startswith(f"Same inputs as before: reopened run {first.id}")

    changed = prepare(conn, table, tmp_path / "out", system="You describe tall towers.")
    assert changed.id != first.id and changed.created
    assert f"differ from the previous run {first.id} (changed: request lines)" in changed.describe()
    assert current_run_id(tmp_path / "out") == changed.id

    make_table(tmp_path, 5)  # the same file, now with one more row
    grown = prepare(conn, table, tmp_path / "out", system="You describe tall towers.")
    assert "changed: input table, request lines" in grown.describe()
    assert sorted(list_runs(tmp_path / "out")["run_id"]) == sorted({first.id, changed.id, grown.id})
    assert Run.open(tmp_path / "out").id == grown.id  # the current run
    assert Run.open(tmp_path / "out", first.id).id == first.id


def test_the_manifest_holds_what_the_run_was_made_from(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    table = make_table(tmp_path, 5)
    run = prepare(conn, table, tmp_path / "out", limits=Limits.for_target("azure", max_requests=2),
                  body={"max_tokens": 200, "temperature": 0})
    manifest = json.loads((run.folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["run_id"] == run.id
    from batchkit.inputs import file_sha256

    assert manifest["inputs"]["path"] == str(table.resolve()) and manifest["inputs"]["sha256"] == file_sha256(table)
    assert manifest["inputs"]["id_column"] == "custom_id" and manifest["inputs"]["rows"] == 5
    assert manifest["schema"]["original"] == SCHEMA and len(manifest["schema"]["sha256"]) == 64
    assert manifest["system_message"] == "You describe towers."
    assert manifest["service"] == {"backend": "local", "endpoint": fast_service.base_url, "deployment": "gpt-4o-batch",
                                   "api_version": "2024-10-01-preview"}
    assert manifest["body_options"] == {"max_tokens": 200, "temperature": 0}
    assert [c["first_id"] for c in manifest["chunks"]] == ["t-0000", "t-0002", "t-0004"]
    for chunk in manifest["chunks"]:
        (attempt,) = chunk["attempts"]
        data = (run.folder / attempt["path"]).read_bytes()
        import hashlib

        assert attempt["sha256"] == hashlib.sha256(data).hexdigest() and attempt["bytes"] == len(data)
        assert {"file_id", "batch_id", "status", "request_counts", "output_file_id", "error_file_id"} <= set(attempt)
    # human-readable: indented JSON
    assert (run.folder / MANIFEST_NAME).read_text(encoding="utf-8").startswith('{\n  "format": 1,')


def test_a_lint_error_prepares_nothing(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    broken = {"type": "object", "properties": {"a": {"type": "string", "default": "x"}}}
    requests = authoring.build_requests([{"custom_id": "a", "prompt": "p"}], system="s", schema=broken,
                                        model=conn.deployment, url=conn.batch_url)
    table = make_table(tmp_path, 1)
    with pytest.raises(LintError, match="Not prepared"):
        Run.prepare(requests, out_dir=tmp_path / "out", settings=conn, inputs_path=table, id_column="custom_id")
    assert not (tmp_path / "out" / "runs").exists() or not list((tmp_path / "out" / "runs").glob("*/manifest.json"))


# ----- idempotent steps -----------------------------------------------------------------------------


def test_advance_twice_uploads_and_creates_once_per_chunk(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    table = make_table(tmp_path, 7)
    run = prepare(conn, table, tmp_path / "out", limits=Limits.for_target("azure", max_requests=3))
    run.advance(conn, **FAST)
    assert run.finished and run.state == "finished"
    files, batches = service_lists(conn, run)
    assert len(files) == 3 and len(batches) == 3
    assert sorted((b.metadata[META_CHUNK], b.metadata[META_ATTEMPT]) for b in batches) == [("1", "1"), ("2", "1"), ("3", "1")]

    again = prepare(conn, table, tmp_path / "out", limits=Limits.for_target("azure", max_requests=3))
    again.advance(conn, **FAST)
    Run.open(tmp_path / "out").advance(conn, **FAST)
    assert [len(x) for x in service_lists(conn, run)] == [3, 3]

    table_out = again.results()
    assert list(table_out["custom_id"]) == [f"t-{n:04d}" for n in range(7)]
    assert set(table_out["outcome"]) == {"ok"} and table_out["attempts"].tolist() == [1] * 7
    assert table_out["prompt"].iloc[0] == f"Describe tower number 0 ({tmp_path.name})"
    assert table_out["chunk"].tolist() == [1, 1, 1, 2, 2, 2, 3]
    assert {b.id for b in batches} == set(table_out["batch_id"])


def test_a_lost_manifest_is_rebuilt_from_the_service_lists(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    table = make_table(tmp_path, 5)
    limits = Limits.for_target("azure", max_requests=2)
    run = prepare(conn, table, tmp_path / "out", limits=limits)
    run.advance(conn, **FAST)
    before = run.results()
    ids = sorted(a["batch_id"] for _, a in run.attempts())

    (run.folder / MANIFEST_NAME).unlink()
    with pytest.raises(RunError, match="Run notebook 01 again with the same parameters to rebuild it"):
        Run.open(tmp_path / "out")
    rebuilt = prepare(conn, table, tmp_path / "out", limits=limits)
    assert rebuilt.created and rebuilt.id == run.id  # same inputs -> same run id, new manifest
    rebuilt.advance(conn, **FAST)
    assert sorted(a["batch_id"] for _, a in rebuilt.attempts()) == ids
    assert [len(x) for x in service_lists(conn, run)] == [3, 3]  # nothing uploaded or created again
    pd.testing.assert_frame_equal(rebuilt.results(), before)
    assert any("recovered 3" in e["event"] for e in rebuilt.manifest["events"])


class Killed(BaseException):
    """Stands for the process dying at a chosen point (not an Exception, so nothing catches it)."""


@pytest.mark.parametrize("stage", ["uploaded", "submitted"])
def test_a_step_cut_short_after_its_call_is_recovered(fast_service: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    """The call reached the service but the manifest never heard of it: the next run adopts it."""
    conn = local_conn(fast_service.base_url)
    table = make_table(tmp_path, 3)
    run = prepare(conn, table, tmp_path / "out")
    real_save = Run.save

    def dying_save(self: Run) -> None:
        if any(a["stage"] == stage for _, a in self.attempts()):
            raise Killed(stage)
        real_save(self)

    monkeypatch.setattr(Run, "save", dying_save)
    with pytest.raises(Killed):
        run.advance(conn, **FAST)
    monkeypatch.setattr(Run, "save", real_save)
    on_disk = json.loads(run.manifest_path.read_text())["chunks"][0]["attempts"][0]
    assert on_disk["stage"] == {"uploaded": "uploading", "submitted": "creating"}[stage]

    resumed = Run.open(tmp_path / "out")
    resumed.advance(conn, **FAST)
    files, batches = service_lists(conn, run)
    assert len(files) == 1 and len(batches) == 1
    assert set(resumed.results()["outcome"]) == {"ok"}


def test_two_processes_cannot_advance_one_run_at_once(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    run = prepare(conn, make_table(tmp_path, 2), tmp_path / "out")
    other = Run.open(tmp_path / "out")
    with run._locked(), pytest.raises(RunError, match="being advanced by another process"):
        other.advance(conn, **FAST)


def test_the_run_refuses_another_service(fast_service: Any, slow_service: Any, tmp_path: Path) -> None:
    run = prepare(local_conn(fast_service.base_url), make_table(tmp_path, 2), tmp_path / "out")
    with pytest.raises(RunError, match=f"prepared for local at {fast_service.base_url}, but the connection points"):
        run.advance(local_conn(slow_service.base_url), **FAST)


# ----- submit now, collect later --------------------------------------------------------------------


def test_results_refuse_an_unfinished_run_unless_partial(slow_service: Any, tmp_path: Path) -> None:
    conn = local_conn(slow_service.base_url)
    run = prepare(conn, make_table(tmp_path, 6), tmp_path / "out")
    run.submit(conn, progress=None)
    assert not run.finished and run.state == "running"
    with pytest.raises(RunNotFinished, match=rf"Run {run.id} is not finished: .*Run notebook 02 again"):
        run.results()
    partial = run.results(allow_partial=True)
    assert len(partial) == 6 and set(partial["outcome"]) == {"missing"}
    assert partial["error"].str.contains("no result yet").all()
    run.advance(conn, **FAST)
    assert set(run.results()["outcome"]) == {"ok"}
    assert [len(x) for x in service_lists(conn, run)] == [1, 1]


def test_a_timeout_leaves_the_run_resumable(slow_service: Any, tmp_path: Path) -> None:
    conn = local_conn(slow_service.base_url)
    run = prepare(conn, make_table(tmp_path, 8), tmp_path / "out")
    with pytest.raises(PollTimeout, match="run this notebook again with the same parameters"):
        run.advance(conn, timeout=0.5, **FAST)
    Run.open(tmp_path / "out").advance(conn, **FAST)
    assert [len(x) for x in service_lists(conn, run)] == [1, 1]


# ----- split and schedule -----------------------------------------------------------------------------


def test_chunks_are_scheduled_under_the_token_quota(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    table = make_table(tmp_path, 9)
    probe = prepare(conn, table, tmp_path / "probe", make_current=False)
    per_request = probe.chunks[0]["attempts"][0]["tokens"] / 9
    quota = int(per_request * 3.5)  # room for three requests in flight at a time
    run = prepare(conn, table, tmp_path / "out", limits=Limits.for_target("azure", token_quota=quota))
    assert [c["attempts"][0]["requests"] for c in run.chunks] == [3, 3, 3]
    run.advance(conn, **FAST)
    spans = run.timeline().sort_values("chunk")
    for earlier, later in zip(spans.itertuples(), list(spans.itertuples())[1:]):
        assert later.created_at >= earlier.completed_at, "a chunk was created while another held the quota"
    assert set(run.results()["outcome"]) == {"ok"}


QUOTA = 50_000


@pytest.fixture(scope="module")
def quota_service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A service with a 50,000-token quota whose requests take a while (so batches overlap)."""
    from localbatch.launcher import start_service

    handle = start_service(data_dir=tmp_path_factory.mktemp("quota-service"), api_key=API_KEY, engine="synthetic",
                           extra_args=["--engine-delay", "0.1", "--max-concurrency", "1", "--token-quota", str(QUOTA),
                                       "--file-processing-delay", "0.1", "--validating-seconds", "0.1",
                                       "--finalizing-seconds", "0.1"])
    yield handle
    handle.stop()


def test_a_batch_failed_for_the_service_quota_is_created_again(quota_service: Any, tmp_path: Path) -> None:
    """The service holds 50,000 tokens; the run does not know it and submits two chunks of ~30,000."""
    conn = local_conn(quota_service.base_url)
    long_prompt = "word " * 3000
    table = tmp_path / "long.csv"
    table.write_text("custom_id,prompt\n" + "".join(f"l-{n},{long_prompt}{n} {tmp_path.name}\n" for n in range(18)),
                     encoding="utf-8")
    run = prepare(conn, table, tmp_path / "out", limits=Limits.for_target("azure", max_requests=9))
    tokens = [c["attempts"][0]["tokens"] for c in run.chunks]
    assert all(t < QUOTA < sum(tokens) for t in tokens)
    run.advance(conn, quota_first_wait=0.2, **FAST)
    files, batches = service_lists(conn, run)
    assert len(files) == 2  # each file uploaded once
    failed = [b for b in batches if b.status == "failed"]
    assert failed and all(b.errors.data[0].code == "token_limit_exceeded" for b in failed)
    assert sum(1 for b in batches if b.status == "completed") == 2
    assert set(run.results()["outcome"]) == {"ok"}
    assert all(b.id in run.chunks[int(b.metadata[META_CHUNK]) - 1]["attempts"][0].get("rejected_batches", [])
               for b in failed)


# ----- retry ------------------------------------------------------------------------------------------


def test_truncated_rows_are_retried_with_a_larger_max_tokens(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    run = prepare(conn, make_table(tmp_path, 6), tmp_path / "out", body={"max_tokens": 3},
                  limits=Limits.for_target("azure", max_requests=4))
    run.advance(conn, **FAST)
    assert set(run.results()["outcome"]) == {"truncated"}  # one attempt only by default

    run.advance(conn, max_attempts=2, retry_body={"max_tokens": 400}, **FAST)
    table = run.results()
    assert len(table) == 6 and table["custom_id"].is_unique
    assert set(table["outcome"]) == {"ok"}
    assert table["attempts"].tolist() == [2] * 6
    assert table["history"].tolist() == [["truncated"]] * 6
    follow = [a for _, a in run.attempts() if a["attempt"] == 2]
    assert [f["requests"] for f in follow] == [4, 2] and follow[0]["retry_of"] == {"truncated": 4}
    assert json.loads((run.folder / follow[0]["path"]).read_text().splitlines()[0])["body"]["max_tokens"] == 400
    # again with the same limit: nothing more is sent
    run.advance(conn, max_attempts=2, retry_body={"max_tokens": 400}, **FAST)
    files, batches = service_lists(conn, run)
    assert len(files) == 4 and len(batches) == 4


def test_expired_rows_are_retried_until_every_row_has_one_final_outcome(slow_service: Any, tmp_path: Path) -> None:
    """OpenAI-dialect batches on slow_service expire after 4 s with about half their requests run."""
    from conftest import SLOW_WINDOW_SECONDS

    conn = connect(env={"BATCH_BACKEND": "openai", "OPENAI_API_KEY": API_KEY,
                        "OPENAI_BASE_URL": slow_service.base_url + "/v1"})
    n = int(SLOW_WINDOW_SECONDS / 0.25 * 1.6)
    run = prepare(conn, make_table(tmp_path, n), tmp_path / "out", target="openai")
    run.advance(conn, max_attempts=5, **FAST)
    table = run.results()
    assert len(table) == n and table["custom_id"].is_unique
    assert list(table["custom_id"]) == [f"t-{i:04d}" for i in range(n)]
    assert set(table["outcome"]) == {"ok"}
    statuses = [a["status"] for _, a in run.attempts()]
    assert statuses[0] == "expired" and statuses[-1] == "completed"
    assert (table["attempts"] > 1).any() and table.loc[table["attempts"] > 1, "history"].map(lambda h: h[0]).eq("expired").all()


# ----- loud failures ----------------------------------------------------------------------------------


def test_a_batch_that_fails_validation_fails_the_run(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    run = prepare(conn, make_table(tmp_path, 2), tmp_path / "out", model="no-such-deployment", check=False)
    with pytest.raises(RunFailed, match=r"1 batch\(es\) failed validation.*model_not_found"):
        run.advance(conn, **FAST)
    assert run.state == "failed"


def test_cancel_stops_the_running_batches_and_holds_the_rest(slow_service: Any, tmp_path: Path) -> None:
    conn = local_conn(slow_service.base_url)
    run = prepare(conn, make_table(tmp_path, 12), tmp_path / "out", limits=Limits.for_target("azure", max_requests=6),
                  metadata={"purpose": "cancel test"})
    quota_one = run.chunks[0]["attempts"][0]["tokens"]
    assert quota_one
    run.submit(conn, progress=None)
    asked = run.cancel(conn)
    assert len(asked) == 2
    run.advance(conn, **FAST)
    assert {a["status"] for _, a in run.attempts()} == {"cancelled"}
    table = run.results()
    assert "cancelled" in set(table["outcome"])
    _, batches = service_lists(conn, run)
    assert all(b.metadata["purpose"] == "cancel test" for b in batches)


# ----- polling that survives ----------------------------------------------------------------------------


def test_polling_survives_a_ten_second_outage_of_the_service(tmp_path: Path) -> None:
    """Kill the real service mid-poll, leave it down 10 s, start it again on the same port and data."""
    from localbatch.launcher import free_port, start_service

    port = free_port()
    data = tmp_path / "service"
    args = ["--engine-delay", "0.1", "--max-concurrency", "1", "--file-processing-delay", "0.1",
            "--validating-seconds", "0.1", "--finalizing-seconds", "0.1"]
    handle = start_service(port=port, data_dir=data, api_key=API_KEY, engine="synthetic", extra_args=args)
    events: list[str] = []

    class Recorder:
        def update_run(self, rows: list[dict[str, Any]], elapsed: float) -> None:
            events.append("update " + ",".join(r["status"] for r in rows))

        def outage(self, text: str) -> None:
            events.append("outage " + text)

        def close(self) -> None:
            events.append("close")

    restarted: list[Any] = []
    try:
        conn = local_conn(handle.base_url)
        run = prepare(conn, make_table(tmp_path, 60), tmp_path / "out")
        run.submit(conn, progress=None)

        def outage() -> None:
            handle.kill()
            time.sleep(10)
            restarted.append(start_service(port=port, data_dir=data, api_key=API_KEY, engine="synthetic", extra_args=args))

        killer = threading.Thread(target=outage)
        killer.start()
        started = time.monotonic()
        run.advance(conn, interval=0.5, max_interval=1.0, progress=Recorder())
        killer.join()
        assert time.monotonic() - started >= 10
        assert run.chunks[0]["attempts"][0]["status"] == "completed"
        assert set(run.results()["outcome"]) == {"ok"}
        shown = [e for e in events if e.startswith("outage ")]
        assert shown and "service not answering" in shown[0] and "APIConnectionError" in shown[0]
        assert "outage budget 900s" in shown[0]
    finally:
        handle.stop()
        for h in restarted:
            h.stop()


# ----- reading a run, the command line, plots ---------------------------------------------------------


def test_check_outcomes_counts_by_outcome_and_says_what_next(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    run = prepare(conn, make_table(tmp_path, 3), tmp_path / "out")
    table = pd.DataFrame({"outcome": ["ok", "truncated", "truncated", "refusal"]})
    with pytest.raises(RunFailed, match=r"3 of 4 rows did not come back ok \(truncated 2, refusal 1\), more than "
                                        r"max_failed=2\. Next: run notebook 02 again with max_attempts above 1"):
        run.check_outcomes(table, max_failed=2)
    assert run.check_outcomes(table, max_failed=3).endswith("within max_failed=3.")
    assert run.check_outcomes(pd.DataFrame({"outcome": ["ok"] * 2})) == "All 2 rows came back ok."
    assert run.option_changes(max_tokens=0) is None
    assert run.option_changes(max_tokens=800) == {"max_tokens": 800}
    run.manifest["api"] = "responses"
    assert run.option_changes(max_tokens=800) == {"max_output_tokens": 800}


def test_a_batch_file_written_elsewhere_becomes_a_run(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    lines = authoring.build_requests([{"custom_id": f"j-{n}", "prompt": f"p {n} {tmp_path.name}"} for n in range(5)],
                                     system="s", schema=SCHEMA, model=conn.deployment, url=conn.batch_url)
    path = authoring.write_jsonl(lines, tmp_path / "mine.jsonl")
    run = Run.from_jsonl(path, out_dir=tmp_path / "out", settings=conn, limits=Limits.for_target("azure", max_requests=2))
    assert [c["attempts"][0]["path"] for c in run.chunks] == ["mine-001.jsonl", "mine-002.jsonl", "mine-003.jsonl"]
    run.advance(conn, **FAST)
    table = run.results()
    assert list(table["custom_id"]) == [f"j-{n}" for n in range(5)] and set(table["outcome"]) == {"ok"}
    with pytest.raises(RunError, match="No batch file at"):
        Run.from_jsonl(tmp_path / "none.jsonl", out_dir=tmp_path / "out", settings=conn)


def test_a_subset_is_a_run_of_its_own_sent_once(fast_service: Any, tmp_path: Path) -> None:
    conn = local_conn(fast_service.base_url)
    run = prepare(conn, make_table(tmp_path, 4), tmp_path / "out")
    demo = run.subset(1, label="demo")
    assert demo.id != run.id and demo.requests == 1 and current_run_id(tmp_path / "out") == run.id
    demo.advance(conn, **FAST)
    again = run.subset(1, label="demo")
    assert again.id == demo.id and not again.created
    again.advance(conn, **FAST)
    files, batches = service_lists(conn, demo)
    assert len(files) == 1 and len(batches) == 1 and batches[0].metadata["batchkit_label"] == "demo"


def test_the_command_line_lists_shows_and_advances_a_run(fast_service: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from batchkit.run import main

    conn = local_conn(fast_service.base_url)
    run = prepare(conn, make_table(tmp_path, 3), tmp_path / "out")
    for name, value in {"BATCH_BACKEND": "local", "LOCALBATCH_URL": fast_service.base_url,
                        "LOCALBATCH_API_KEY": API_KEY}.items():
        monkeypatch.setenv(name, value)
    out = str(tmp_path / "out")
    assert main(["list", "--out-dir", out]) == 0
    assert run.id in capsys.readouterr().out
    assert main(["advance", "--out-dir", out, "--interval", "0.1", "--max-interval", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert f"All 1 batch(es) of {run.id} finished" in printed
    assert main(["status", "--out-dir", out]) == 0
    assert "finished" in capsys.readouterr().out
    assert main(["status", "--out-dir", out, "--run-id", "run-000000000000"]) == 1
    assert "No run 'run-000000000000'" in capsys.readouterr().err
    assert [len(x) for x in service_lists(conn, run)] == [1, 1]


def test_the_timeline_plot_has_a_bar_per_batch_and_the_outcomes_per_attempt(fast_service: Any, tmp_path: Path) -> None:
    from batchkit import plots

    conn = local_conn(fast_service.base_url)
    run = prepare(conn, make_table(tmp_path, 4), tmp_path / "out", body={"max_tokens": 3},
                  limits=Limits.for_target("azure", max_requests=2))
    run.advance(conn, max_attempts=2, retry_body={"max_tokens": 400}, **FAST)
    by_attempt = run.outcomes_by_attempt()
    assert by_attempt.groupby("attempt")["rows"].sum().tolist() == [4, 4]
    assert set(by_attempt.loc[by_attempt["attempt"] == 1, "outcome"]) == {"truncated"}
    fig = plots.chunk_timeline(run, by_attempt)
    timeline, outcomes = fig.axes
    assert [t.get_text() for t in timeline.get_yticklabels()] == [
        "chunk 1 · attempt 1", "chunk 1 · attempt 2", "chunk 2 · attempt 1", "chunk 2 · attempt 2"]
    assert outcomes.get_yscale() == "log"
    assert len(run.timeline()) == 4 and run.timeline()["completed_at"].notna().all()
