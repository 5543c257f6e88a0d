"""Fault injection on the local service, over HTTP with the real SDK: per batch (metadata key
``localbatch_faults``) and service-wide (``--faults``); HTTP error lines, refusals, truncations,
content filtering, expiry with part of the work done, ``token_limit_exceeded`` on the first creates,
slow mode; the shapes the real services give, and the outcomes the results parser reads from them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from conftest import (
    API_KEY,
    azure_client,
    chat_line,
    check_batch,
    check_model,
    jsonl,
    openai_client,
    raw,
    read_lines,
    run_batch,
    upload,
    wait_batch,
)

OA_URL = "/v1/chat/completions"
SCHEMA = chat_line("x")["body"]["response_format"]["json_schema"]["schema"]


def _client(service: Any, dialect: str) -> Any:
    return azure_client(service) if dialect == "azure" else openai_client(service)


def _lines(ids: list[str], dialect: str, **body: Any) -> list[dict[str, Any]]:
    if dialect == "azure":
        return [chat_line(c, **body) for c in ids]
    return [chat_line(c, model="gpt-4o", url=OA_URL, **body) for c in ids]


def _run(service: Any, dialect: str, lines: list[dict[str, Any]], spec: dict[str, Any] | None,
         **create: Any) -> dict[str, Any]:
    metadata = create.pop("metadata", {})
    if spec is not None:
        metadata = {**metadata, "localbatch_faults": json.dumps(spec)}
    return run_batch(_client(service, dialect), lines, endpoint=OA_URL if dialect == "openai" else "/chat/completions",
                     metadata=metadata or None, timeout=120, **create)


def _results(service: Any, dialect: str, batch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    client = _client(service, dialect)
    lines = read_lines(client, batch["output_file_id"]) + read_lines(client, batch["error_file_id"])
    by_id = {line["custom_id"]: line for line in lines}
    assert len(by_id) == len(lines), "a custom_id appears twice"
    return by_id


def _outcomes(lines: dict[str, dict[str, Any]], ids: list[str], status: str) -> dict[str, str]:
    from batchkit.results import parse_results

    frame = parse_results(list(lines.values()), inputs=ids, schema=SCHEMA, batch_status=status)
    return dict(zip(frame["custom_id"], frame["outcome"]))


# ----- the spec itself ----------------------------------------------------------------------------


def test_the_fault_of_a_request_depends_only_on_the_spec_and_its_custom_id() -> None:
    from localbatch.faults import parse_spec

    spec = parse_spec({"seed": 7, "http_error": 0.1, "refusal": 0.2, "truncated": 0.05, "content_filter": 0.15})
    ids = [f"row-{i}" for i in range(20_000)]
    first = {c: spec.fault_for(c) for c in ids}
    again = {c: parse_spec(spec.text).fault_for(c) for c in reversed(ids)}
    assert first == again
    counts = Counter(first.values())
    for kind, share in (("http_error", 0.1), ("refusal", 0.2), ("truncated", 0.05), ("content_filter", 0.15)):
        assert abs(counts[kind] / len(ids) - share) < 0.015, (kind, counts[kind])
    assert abs(counts[None] / len(ids) - 0.5) < 0.015
    other_seed = parse_spec({**json.loads(spec.text), "seed": 8})
    assert sum(first[c] != other_seed.fault_for(c) for c in ids) > len(ids) // 4
    listed = parse_spec({"refusal": 1.0, "ids": {"truncated": ["row-1"], "http_error": ["row-2"]}})
    assert [listed.fault_for(c) for c in ("row-1", "row-2", "row-3")] == ["truncated", "http_error", "refusal"]


@pytest.mark.parametrize("spec,words", [
    ('{"refusal": 2}', "'refusal' must be a number from 0 to 1"),
    ('{"refusal": 0.6, "truncated": 0.6}', "add up to 1.2"),
    ('{"refusals": 0.1}', "unknown key(s) 'refusals'"),
    ('{"ids": {"timeout": ["a"]}}', "unknown fault 'timeout'"),
    ('{"ids": {"refusal": "a"}}', "'ids.refusal' must be a list"),
    ('{"expire_after": 0}', "'expire_after' must be a fraction in (0, 1]"),
    ('{"http_status": 200}', "'http_status' must be an HTTP error status"),
    ('{"token_limit_creates": -1}', "'token_limit_creates' must be a whole number"),
    ('{"slow": "1"}', "'slow' must be seconds"),
    ('[1]', "a fault spec is a JSON object"),
    ('{"seed": 1', "not valid JSON"),
])
def test_a_bad_spec_is_refused_naming_the_key(spec: str, words: str) -> None:
    from localbatch.faults import FaultSpecError, parse_spec

    with pytest.raises(FaultSpecError) as info:
        parse_spec(spec, where="--faults")
    assert words in str(info.value) and str(info.value).startswith("--faults: ")


def test_a_bad_spec_in_metadata_is_a_400_on_create(fast_service: Any) -> None:
    client = azure_client(fast_service)
    f = upload(client, jsonl([chat_line("a")]))
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=f["id"], endpoint="/chat/completions", completion_window="24h",
                              metadata={"localbatch_faults": '{"refusal": "lots"}'})
    assert "metadata 'localbatch_faults': 'refusal' must be a number from 0 to 1" in str(info.value)


def test_a_bad_service_wide_spec_stops_the_service_before_it_listens(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "localbatch", "serve", "--engine", "synthetic", "--port", "0",
                           "--data-dir", str(tmp_path), "--faults", '{"http_error": 0.1, "slowly": 1}'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--faults: unknown key(s) 'slowly'" in proc.stderr


def test_the_service_wide_spec_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from localbatch.cli import build_parser, settings_from_args

    monkeypatch.setenv("LOCALBATCH_FAULTS", '{"refusal": 0.5}')
    assert settings_from_args(build_parser().parse_args(["serve"])).faults == '{"refusal": 0.5}'
    args = build_parser().parse_args(["serve", "--faults", '{"truncated": 1}'])
    assert settings_from_args(args).faults == '{"truncated": 1}'


# ----- content faults, both dialects ---------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["azure", "openai"])
def test_content_faults_have_the_real_shapes_and_parse_to_their_outcomes(fast_service: Any, dialect: str) -> None:
    from localbatch.faults import REFUSAL_TEXT, parse_spec

    ids = [f"{dialect}-{i:03d}" for i in range(120)]
    spec = {"seed": dialect, "http_error": 0.1, "refusal": 0.1, "truncated": 0.1, "content_filter": 0.1,
            "ids": {"refusal": [ids[0]], "truncated": [ids[1]], "content_filter": [ids[2]], "http_error": [ids[3]]}}
    expected = {c: parse_spec(spec).fault_for(c) for c in ids}
    assert [expected[c] for c in ids[:4]] == ["refusal", "truncated", "content_filter", "http_error"]
    assert len(set(expected.values())) == 5  # every fault and some clean answers
    batch = _run(fast_service, dialect, _lines(ids, dialect), spec)
    assert batch["status"] == "completed"
    failed = sum(1 for c in ids if expected[c] == "http_error")
    assert batch["request_counts"] == {"total": len(ids), "completed": len(ids) - failed, "failed": failed}
    lines = _results(fast_service, dialect, batch)
    assert sorted(lines) == sorted(ids)
    error_ids = {x["custom_id"] for x in read_lines(_client(fast_service, dialect), batch["error_file_id"])}
    assert error_ids == {c for c in ids if expected[c] == "http_error"}
    for custom_id, fault in expected.items():
        line = lines[custom_id]
        assert line["error"] is None
        response = line["response"]
        if fault == "http_error":
            assert response["status_code"] == 500
            assert response["body"]["error"]["type"] == "server_error"
            assert set(response["body"]["error"]) == {"message", "type", "param", "code"}
            assert "retry your request" in response["body"]["error"]["message"]
            continue
        assert response["status_code"] == 200
        body = response["body"]
        check_model(ChatCompletion, body, extras=dialect == "azure")
        choice, message = body["choices"][0], body["choices"][0]["message"]
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        if fault == "refusal":
            assert message["content"] is None and message["refusal"] == REFUSAL_TEXT
            assert choice["finish_reason"] == "stop"
        elif fault == "truncated":
            assert choice["finish_reason"] == "length" and message["content"]
            with pytest.raises(ValueError):
                json.loads(message["content"])
        elif fault == "content_filter":
            assert choice["finish_reason"] == "content_filter" and message["content"] is None
            if dialect == "azure":
                assert choice["content_filter_results"]["violence"] == {"filtered": True, "severity": "high"}
        else:
            assert choice["finish_reason"] == "stop" and json.loads(message["content"])["text"]
        if dialect == "azure":
            assert "content_filter_results" in choice and body["prompt_filter_results"]
        else:
            assert "content_filter_results" not in choice and "prompt_filter_results" not in body
    outcome = {"http_error": "http_error", "refusal": "refusal", "truncated": "truncated",
               "content_filter": "content_filter", None: "ok"}
    assert _outcomes(lines, ids, batch["status"]) == {c: outcome[f] for c, f in expected.items()}


def test_the_same_spec_gives_the_same_faults_in_another_batch_and_order(fast_service: Any) -> None:
    ids = [f"same-{i:02d}" for i in range(40)]
    spec = {"seed": 3, "refusal": 0.3, "http_error": 0.2}
    first = _results(fast_service, "azure", _run(fast_service, "azure", _lines(ids, "azure"), spec))
    second = _results(fast_service, "azure", _run(fast_service, "azure", _lines(ids[::-1], "azure"), spec))
    kind = lambda line: (line["response"]["status_code"], line["response"]["body"].get("choices", [{}])[0]  # noqa: E731
                         .get("message", {}).get("refusal"))
    assert {c: kind(first[c]) for c in ids} == {c: kind(second[c]) for c in ids}
    assert len({kind(x) for x in first.values()}) == 3


@pytest.mark.parametrize("status,error_type,code", [(429, "requests", "rate_limit_exceeded"),
                                                     (503, "server_error", None), (400, "invalid_request_error", None)])
def test_http_error_lines_carry_the_status_asked_for(fast_service: Any, status: int, error_type: str,
                                                      code: str | None) -> None:
    ids = ["h-1", "h-2"]
    batch = _run(fast_service, "openai", _lines(ids, "openai"), {"http_error": 1.0, "http_status": status})
    assert batch["status"] == "completed" and batch["output_file_id"] is None  # all failed: no output file
    assert batch["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
    for line in _results(fast_service, "openai", batch).values():
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == status
        assert line["response"]["body"]["error"]["type"] == error_type
        assert line["response"]["body"]["error"]["code"] == code


def test_a_request_the_endpoint_rejects_keeps_its_own_400_under_a_content_fault(fast_service: Any) -> None:
    lines = [chat_line("bad", max_tokens=0), chat_line("good")]
    batch = _run(fast_service, "azure", lines, {"refusal": 1.0})
    got = _results(fast_service, "azure", batch)
    assert got["bad"]["response"]["status_code"] == 400
    assert got["good"]["response"]["body"]["choices"][0]["message"]["refusal"]


# ----- batch-level faults -------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["azure", "openai"])
def test_a_batch_expires_with_part_of_its_work_done(fast_service: Any, dialect: str) -> None:
    from localbatch.dialects import EXPIRED_MESSAGE

    ids = [f"exp-{dialect}-{i:02d}" for i in range(40)]
    batch = _run(fast_service, dialect, _lines(ids, dialect), {"expire_after": 0.25, "slow": 0.02})
    check_batch(batch)
    assert batch["status"] == "expired" and isinstance(batch["expired_at"], int)
    assert batch["completed_at"] is None
    assert batch["request_counts"] == {"total": 40, "completed": 10, "failed": 30}
    lines = _results(fast_service, dialect, batch)
    assert sorted(lines) == sorted(ids)
    expired = [c for c, x in lines.items() if x["response"] is None]
    assert len(expired) == 30
    for custom_id in expired:
        assert lines[custom_id]["error"] == {"code": "batch_expired", "message": EXPIRED_MESSAGE}
    outcomes = Counter(_outcomes(lines, ids, batch["status"]).values())
    assert outcomes == {"ok": 10, "expired": 30}


def test_azure_creates_fail_fast_with_token_limit_exceeded_the_first_n_times(fast_service: Any) -> None:
    client = azure_client(fast_service)
    f = upload(client, jsonl([chat_line("q-1"), chat_line("q-2")]))
    metadata = {"localbatch_faults": json.dumps({"seed": "quota-azure", "token_limit_creates": 2})}
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as info:
            client.batches.create(input_file_id=f["id"], endpoint="/chat/completions", completion_window="24h",
                                  metadata=metadata)
        assert info.value.status_code == 400 and info.value.code == "token_limit_exceeded"
        assert "token_limit_exceeded" in str(info.value)  # what Azure's own retry sample looks for
        assert info.value.body["message"].startswith(
            "token_limit_exceeded: The number of enqueued tokens has surpassed the configured limit")
        assert "'gpt-4o-batch'" in info.value.body["message"]
        assert info.value.response.headers.get("x-should-retry") == "false"
    before = {b.id for b in client.batches.list(limit=100)}
    batch = client.batches.create(input_file_id=f["id"], endpoint="/chat/completions", completion_window="24h",
                                  metadata=metadata)
    assert batch.id not in before
    assert wait_batch(client, batch.id)["status"] == "completed"
    # the failed creates left no batch behind
    assert len({b.id for b in client.batches.list(limit=100)} - before) == 1


def test_openai_batches_fail_validation_with_token_limit_exceeded_the_first_n_times(fast_service: Any) -> None:
    client = openai_client(fast_service)
    spec = {"seed": "quota-openai", "token_limit_creates": 1}
    first = _run(fast_service, "openai", _lines(["o-1"], "openai"), spec)
    assert first["status"] == "failed" and first["in_progress_at"] is None
    assert first["errors"]["data"] == [{
        "code": "token_limit_exceeded", "line": None, "param": None,
        "message": first["errors"]["data"][0]["message"]}]
    assert first["errors"]["data"][0]["message"].startswith("Enqueued token limit reached for gpt-4o in organization")
    second = _run(fast_service, "openai", _lines(["o-1"], "openai"), spec)
    assert second["status"] == "completed"
    assert client.batches.retrieve(first["id"]).status == "failed"


def test_slow_mode_adds_time_to_every_request(fast_service: Any) -> None:
    batch = _run(fast_service, "azure", _lines(["s-1", "s-2"], "azure"), {"slow": 1.5})
    assert batch["status"] == "completed"
    # a lower bound only: requests run in parallel, each taking at least the extra 1.5 s
    assert batch["finalizing_at"] - batch["in_progress_at"] >= 1


def test_faults_do_not_touch_live_chat(fast_service: Any) -> None:
    client = azure_client(fast_service)
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].finish_reason == "stop"


# ----- service-wide ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from localbatch.launcher import start_service

    handle = start_service(data_dir=tmp_path_factory.mktemp("faulty-service"), api_key=API_KEY, engine="synthetic",
                           wait=90, extra_args=[
                               "--file-processing-delay", "0.1", "--validating-seconds", "0.1",
                               "--finalizing-seconds", "0.1",
                               "--faults", json.dumps({"ids": {"refusal": ["r-1"], "truncated": ["t-1"]}})])
    yield handle
    handle.stop()


def test_the_service_wide_spec_applies_unless_the_batch_brings_its_own(faulty_service: Any) -> None:
    ids = ["r-1", "t-1", "n-1"]
    got = _results(faulty_service, "azure", _run(faulty_service, "azure", _lines(ids, "azure"), None))
    finish = {c: x["response"]["body"]["choices"][0]["finish_reason"] for c, x in got.items()}
    assert finish == {"r-1": "stop", "t-1": "length", "n-1": "stop"}
    assert got["r-1"]["response"]["body"]["choices"][0]["message"]["refusal"]
    own = _results(faulty_service, "azure", _run(faulty_service, "azure", _lines(ids, "azure"), {}))
    assert all(x["response"]["body"]["choices"][0]["finish_reason"] == "stop" for x in own.values())
    assert not any(x["response"]["body"]["choices"][0]["message"]["refusal"] for x in own.values())
    created, _ = raw(azure_client(faulty_service).batches.with_raw_response.list)
    assert created["data"][0]["metadata"] == {"localbatch_faults": "{}"}
