"""Batch lifecycles on the local service: completed, failed (each validation code), per-line 400s,
cancelled mid-run, expired, and several batches at once; result files line by line."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from conftest import (
    FAST_TOKEN_QUOTA,
    SEED_FIELDS,
    SLOW_WINDOW_SECONDS,
    azure_client,
    chat_line,
    check_batch,
    check_model,
    jsonl,
    openai_client,
    raw,
    read_lines,
    run_batch,
    seed_lines,
    upload,
    wait_batch,
)

OA_URL = "/v1/chat/completions"


def exactly_once(inputs: list[str], outputs: list[dict[str, Any]], errors: list[dict[str, Any]]) -> None:
    """Every input custom_id is in exactly one of the two files, once."""
    got = [line["custom_id"] for line in outputs + errors]
    assert sorted(got) == sorted(inputs), "each custom_id must appear exactly once across output and error files"


# ----- completed ---------------------------------------------------------------------------------


def test_azure_completed_batch_and_its_output_lines(fast_service: Any) -> None:
    client = azure_client(fast_service)
    seen: list[str] = []
    f = upload(client, jsonl(seed_lines()))
    created, _ = raw(client.batches.with_raw_response.create, input_file_id=f["id"], endpoint="/chat/completions",
                     completion_window="24h")
    batch = wait_batch(client, created["id"], seen=seen)
    assert batch["status"] == "completed" and seen[0] == "validating" and seen[-1] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert batch["in_progress_at"] and batch["finalizing_at"] and batch["completed_at"]
    assert batch["errors"] is None
    assert batch["output_file_id"].startswith("file-") and len(batch["output_file_id"]) == len("file-") + 36
    # Azure always sets error_file_id; here it points at an empty file.
    assert batch["error_file_id"] and read_lines(client, batch["error_file_id"]) == []
    assert client.files.retrieve(batch["error_file_id"]).bytes == 0
    out_file = client.files.retrieve(batch["output_file_id"])
    assert out_file.purpose == "batch_output" and out_file.status == "processed"
    lines = read_lines(client, batch["output_file_id"])
    exactly_once(["task-0", "task-1", "task-2"], lines, [])
    for line in lines:
        assert set(line) == {"custom_id", "response", "error"} and line["error"] is None  # no 'id' on Azure
        assert set(line["response"]) == {"body", "request_id", "status_code"}
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        completion = check_model(ChatCompletion, body, extras=True)
        assert completion.model.startswith("gpt-4o-2024-08-06")  # the model version, not the deployment
        assert set(body["usage"]) == {"completion_tokens", "prompt_tokens", "total_tokens"}
        assert body["prompt_filter_results"][0]["content_filter_results"]["jailbreak"] == {
            "filtered": False, "detected": False}
        choice = body["choices"][0]
        assert set(choice["content_filter_results"]) == {"hate", "self_harm", "sexual", "violence"}
        content = json.loads(choice["message"]["content"])
        assert list(content) == list(SEED_FIELDS) and all(isinstance(v, str) for v in content.values())


def test_openai_completed_batch_and_its_output_lines(fast_service: Any) -> None:
    client = openai_client(fast_service)
    lines_in = seed_lines(model="gpt-4o", url=OA_URL)
    batch = run_batch(client, lines_in, endpoint=OA_URL, metadata={"project": "tests"})
    assert batch["status"] == "completed" and batch["metadata"] == {"project": "tests"}
    assert batch["model"] == "gpt-4o-2024-08-06"
    assert batch["error_file_id"] is None  # nothing failed
    lines = read_lines(client, batch["output_file_id"])
    exactly_once([x["custom_id"] for x in lines_in], lines, [])
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error"} and line["id"].startswith("batch_req_")
        body = line["response"]["body"]
        check_model(ChatCompletion, body)
        assert "prompt_filter_results" not in body


def test_results_are_in_completion_order_not_input_order(fast_service: Any) -> None:
    client = azure_client(fast_service)
    ids = [f"req-{i:02d}" for i in range(30)]
    batch = run_batch(client, [chat_line(c) for c in ids])
    lines = read_lines(client, batch["output_file_id"])
    exactly_once(ids, lines, [])
    assert [x["custom_id"] for x in lines] != ids


# ----- per-line 400s -----------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["azure", "openai"])
def test_requests_the_endpoint_would_reject_become_400_error_lines(fast_service: Any, dialect: str) -> None:
    client = azure_client(fast_service) if dialect == "azure" else openai_client(fast_service)
    kw: dict[str, Any] = {"model": "gpt-4o", "url": OA_URL} if dialect == "openai" else {}
    broken = chat_line("bad-schema", **kw)
    del broken["body"]["response_format"]["json_schema"]["schema"]["additionalProperties"]
    lines_in = [chat_line("good-1", **kw), broken, chat_line("bad-param", colour="red", **kw),
                chat_line("good-2", **kw)]
    batch = run_batch(client, lines_in, endpoint=OA_URL if dialect == "openai" else "/chat/completions")
    assert batch["status"] == "completed"  # request-level problems never fail the batch
    assert batch["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
    outputs, errors = read_lines(client, batch["output_file_id"]), read_lines(client, batch["error_file_id"])
    exactly_once([x["custom_id"] for x in lines_in], outputs, errors)
    by_id = {e["custom_id"]: e for e in errors}
    for line in errors:
        assert line["error"] is None and line["response"]["status_code"] == 400
        assert ("id" in line) == (dialect == "openai")
    assert by_id["bad-schema"]["response"]["body"] == {"error": {
        "message": "Invalid schema for response_format 'greeting': In context=(), 'additionalProperties' is "
                   "required to be supplied and to be false.",
        "type": "invalid_request_error", "param": "response_format", "code": None}}
    assert by_id["bad-param"]["response"]["body"]["error"]["code"] == "unknown_parameter"
    assert by_id["bad-param"]["response"]["body"]["error"]["message"] == "Unknown parameter: 'colour'."
    # The pre-flight lint flags exactly these lines, with the very error bodies the service wrote.
    from batchkit.lint import lint_batch_file

    flagged = {}
    for f in lint_batch_file(jsonl(lines_in).splitlines(keepends=True), target=dialect):  # type: ignore[arg-type]
        if f.severity == "error":
            assert f.scope == "request", f
            flagged.setdefault(f.custom_id, f.error_body())
    assert flagged == {cid: by_id[cid]["response"]["body"] for cid in ("bad-schema", "bad-param")}


@pytest.mark.parametrize("dialect", ["azure", "openai"])
def test_a_batch_where_every_line_failed_is_completed(fast_service: Any, dialect: str) -> None:
    client = azure_client(fast_service) if dialect == "azure" else openai_client(fast_service)
    kw: dict[str, Any] = {"model": "gpt-4o", "url": OA_URL} if dialect == "openai" else {}
    batch = run_batch(client, [chat_line("only", temperature=5, **kw)],
                      endpoint=OA_URL if dialect == "openai" else "/chat/completions")
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    assert batch["error_file_id"]
    if dialect == "openai":
        assert batch["output_file_id"] is None  # nothing succeeded
    else:
        assert read_lines(client, batch["output_file_id"]) == []
    (line,) = read_lines(client, batch["error_file_id"])
    assert line["response"]["status_code"] == 400 and line["response"]["body"]["error"]["param"] == "temperature"


# ----- failed: each validation code --------------------------------------------------------------

GOOD = chat_line("g1")
GOOD2 = chat_line("g2")


def _lines(*items: Any) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in items)


def _with(line: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(line))
    for key, value in changes.items():
        if key.startswith("body_"):
            out["body"][key[5:]] = value
        elif value is None:
            out.pop(key)
        else:
            out[key] = value
    return out


def _many_lines(n: int) -> bytes:
    line = b'{"custom_id":"%d","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o",' \
           b'"messages":[{"role":"user","content":"x"}]}}\n'
    return b"".join(line.replace(b"%d", str(i).encode()) for i in range(n))


FAILURES = [
    ("azure", _lines(GOOD, b'{"custom_id": "g2", "method": '), "invalid_json_line", 2),
    ("azure", _lines(GOOD, _with(GOOD2, url="/v1/completions")), "url_mismatch", 2),
    ("azure", _lines(GOOD, _with(GOOD2, body_model="gpt-35-nowhere")), "model_not_found", 2),
    ("azure", _lines(GOOD, GOOD2, _with(GOOD, body_messages=[{"role": "user", "content": "again"}])),
     "duplicate_custom_id", 3),
    ("azure", b"", "empty_file", None),
    ("openai", _lines(_with(GOOD, url=OA_URL, body_model="gpt-4o"), _with(GOOD2, url=OA_URL)),
     "model_mismatch", 2),
    ("azure", _lines(_with(GOOD, body_model="gpt-4o")), "invalid_request", 1),  # a standard deployment
    ("azure", _lines(GOOD, _with(GOOD2, method=None)), "invalid_request", 2),  # no 'method'
    ("azure", b"\xef\xbb\xbf" + _lines(GOOD), "invalid_request", 1),  # a UTF-8 BOM
    ("openai", _many_lines(50_001), "too_many_tasks", 50_001),
    ("azure", _lines(chat_line("huge", prompt="many words " * 120_000)), "token_limit_exceeded", None),
]


@pytest.mark.parametrize("dialect,content,code,line", FAILURES,
                         ids=[f"{c}-{d}-{i}" for i, (d, _, c, _) in enumerate(FAILURES)])
def test_validation_failures(fast_service: Any, dialect: str, content: bytes, code: str, line: int | None) -> None:
    client = azure_client(fast_service) if dialect == "azure" else openai_client(fast_service)
    batch = run_batch(client, content, endpoint=OA_URL if dialect == "openai" else "/chat/completions",
                      timeout=120)
    assert batch["status"] == "failed" and batch["failed_at"] and batch["in_progress_at"] is None
    assert batch["output_file_id"] is None and batch["error_file_id"] is None
    assert batch["errors"]["object"] == "list"
    found = [(e["code"], e["line"]) for e in batch["errors"]["data"]]
    assert (code, line) in found, found
    for error in batch["errors"]["data"]:
        assert set(error) == {"code", "message", "param", "line"} and error["message"]
    if code == "token_limit_exceeded":
        assert f"{FAST_TOKEN_QUOTA:,}" in batch["errors"]["data"][0]["message"]
    if code == "empty_file":
        assert batch["errors"]["data"][0]["message"] == (
            "The input file is empty. Please ensure that the batch contains at least one request.")
    # The pre-flight checks on the same file give the same verdict, line for line (the quota
    # check words its estimate differently, but counts the same tokens).
    preflight = _preflight_errors(dialect, content, OA_URL if dialect == "openai" else "/chat/completions")
    assert [(c, n) for c, n, _ in preflight] == [(e["code"], e["line"]) for e in batch["errors"]["data"]]
    for (_, _, message), error in zip(preflight, batch["errors"]["data"]):
        if code == "token_limit_exceeded":
            needed = re.search(r"needs ([\d,]+)", error["message"]).group(1)  # type: ignore[union-attr]
            assert f"Estimated {needed} enqueued input tokens" in message
        else:
            assert message == error["message"]


def _preflight_errors(dialect: str, content: bytes, endpoint: str) -> list[tuple[str, int | None, str]]:
    """The batch-failing findings of the client-side lint and quota estimate for ``content``, as the
    service configured by the fast_service fixture would see them (its deployments and quota)."""
    from batchkit.estimate import estimate_batch
    from batchkit.lint import lint_batch_file
    from localbatch.config import Settings
    from localbatch.validation import lint_deployments

    deployments = lint_deployments(Settings(), dialect)  # type: ignore[arg-type]
    findings = [f for f in lint_batch_file(content.splitlines(keepends=True), target=dialect,  # type: ignore[arg-type]
                                           deployments=deployments, endpoint=endpoint)
                if f.severity == "error" and f.scope == "batch"]
    if not findings:
        quota = estimate_batch(content, quota=FAST_TOKEN_QUOTA).quota_finding
        findings = [quota] if quota is not None and quota.severity == "error" else []
    return [(f.code, f.line, f.message) for f in findings]


# ----- cancel, expiry, several batches at once ---------------------------------------------------


def _wait_counts(client: Any, batch_id: str, done: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data, _ = raw(client.batches.with_raw_response.retrieve, batch_id)
        check_batch(data)
        counts = data["request_counts"]
        if counts["completed"] + counts["failed"] >= done:
            return data
        assert data["status"] in ("validating", "in_progress"), data["status"]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_cancel_mid_run_keeps_finished_lines(slow_service: Any) -> None:
    client = azure_client(slow_service)
    ids = [f"c{i}" for i in range(16)]
    f = upload(client, jsonl([chat_line(c) for c in ids]))
    batch = client.batches.create(input_file_id=f["id"], endpoint="/chat/completions", completion_window="24h")
    running = _wait_counts(client, batch.id, 2)
    assert running["status"] == "in_progress" and running["request_counts"]["total"] == 16
    data, _ = raw(client.batches.with_raw_response.cancel, batch.id)
    check_batch(data)
    assert data["status"] == "cancelling" and data["cancelling_at"]
    final = wait_batch(client, batch.id)
    assert final["status"] == "cancelled" and final["cancelled_at"] and final["completed_at"] is None
    outputs, errors = read_lines(client, final["output_file_id"]), read_lines(client, final["error_file_id"])
    exactly_once(ids, outputs, errors)
    assert len(outputs) >= 2 and len(errors) >= 1
    assert all(e["response"] is None and e["error"]["code"] == "batch_cancelled" for e in errors)
    counts = final["request_counts"]
    assert counts == {"total": 16, "completed": len(outputs), "failed": len(errors)}
    # A finished batch cannot be cancelled: 400 (never 409, which the SDK would retry).
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.cancel(batch.id)
    assert info.value.status_code == 400 and info.value.body["code"] == "unexpectedEntityState"


def test_cancel_while_validating(slow_service: Any) -> None:
    client = openai_client(slow_service)
    f = upload(client, jsonl([chat_line("v1", model="gpt-4o", url=OA_URL)]))
    batch = client.batches.create(input_file_id=f.get("id"), endpoint=OA_URL, completion_window="24h")
    assert client.batches.cancel(batch.id).status == "cancelling"
    final = wait_batch(client, batch.id)
    assert final["status"] == "cancelled"
    counts = final["request_counts"]
    assert counts["completed"] + counts["failed"] == counts["total"]


def test_openai_batches_expire_after_the_completion_window(slow_service: Any) -> None:
    client = openai_client(slow_service)
    ids = [f"e{i}" for i in range(40)]  # 40 x 0.25 s: longer than the 4 s window
    f = upload(client, jsonl([chat_line(c, model="gpt-4o", url=OA_URL) for c in ids]))
    created = client.batches.create(input_file_id=f["id"], endpoint=OA_URL, completion_window="24h")
    assert created.expires_at == created.created_at + int(SLOW_WINDOW_SECONDS)
    final = wait_batch(client, created.id, timeout=30)
    assert final["status"] == "expired" and final["expired_at"] and final["completed_at"] is None
    outputs, errors = read_lines(client, final["output_file_id"]), read_lines(client, final["error_file_id"])
    exactly_once(ids, outputs, errors)
    assert outputs and errors
    for line in errors:
        assert line["id"].startswith("batch_req_") and line["response"] is None
        assert line["error"] == {"code": "batch_expired",
                                 "message": "This request could not be executed before the completion window expired."}


def test_several_batches_progress_at_once_and_azure_never_expires(slow_service: Any) -> None:
    client = azure_client(slow_service)
    batches = []
    for name in ("a", "b"):
        ids = [f"{name}{i}" for i in range(12)]
        f = upload(client, jsonl([chat_line(c) for c in ids]))
        batches.append((client.batches.create(input_file_id=f["id"], endpoint="/chat/completions",
                                              completion_window="24h").id, ids))
    both_running = False
    start = time.monotonic()
    while time.monotonic() - start < 30:
        states = [client.batches.retrieve(b) for b, _ in batches]
        if all(s.status == "in_progress" and 0 < s.request_counts.completed < 12 for s in states):
            both_running = True
        if all(s.status == "completed" for s in states):
            break
        time.sleep(0.1)
    assert both_running, "both batches should make progress before either finishes (round-robin)"
    assert time.monotonic() - start > SLOW_WINDOW_SECONDS  # longer than the OpenAI window, yet not expired
    for batch_id, ids in batches:
        final = wait_batch(client, batch_id)
        assert final["status"] == "completed"
        exactly_once(ids, read_lines(client, final["output_file_id"]), read_lines(client, final["error_file_id"]))
