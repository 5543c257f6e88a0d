"""Responses API batches on the client side: authoring, lint and the parser's outcomes.

Shapes are checked against the SDK's own types (`openai.types.responses`): request bodies
against `ResponseCreateParamsNonStreaming`, answer bodies are built as `Response` objects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from openai.types.responses import Response
from openai.types.responses import response_create_params
from pydantic import BaseModel, TypeAdapter

from batchkit import authoring
from batchkit.errors import LintError
from batchkit.lint import RESPONSES_BODY_KEYS, lint_batch_file, lint_request_body
from batchkit.results import classify_line, parse_results

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are an AI assistant that provides facts about tall buildings."
SCHEMA = {
    "type": "object",
    "properties": {"BuildingName": {"type": "string"}, "HeightInFeet": {"type": "integer"}},
    "required": ["BuildingName", "HeightInFeet"],
    "additionalProperties": False,
}
BROKEN = {"type": "object", "properties": {"BuildingName": {"type": "string", "default": "x"}}}
REQUEST = TypeAdapter(response_create_params.ResponseCreateParamsNonStreaming)


def rows() -> pd.DataFrame:
    return pd.read_csv(ROOT / "data" / "buildings.csv")


def responses_lines(schema: dict[str, Any] = SCHEMA, **options: Any) -> list[dict[str, Any]]:
    return authoring.build_requests(rows(), system=SYSTEM, schema=schema, model="gpt-4o-batch",
                                    name="building", api="responses", **options)


# ------------------------------------------------------------------------------------ authoring


def test_responses_lines_have_the_documented_shape() -> None:
    lines = responses_lines(max_tokens=300, temperature=0)
    first = lines[0]
    assert (first["custom_id"], first["method"], first["url"]) == ("task-0", "POST", "/v1/responses")
    body = first["body"]
    assert body["input"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Provide info about the Empire State Building"},
    ]
    assert body["text"] == {"format": {"type": "json_schema", "name": "building", "schema": SCHEMA, "strict": True}}
    assert body["max_output_tokens"] == 300 and "max_tokens" not in body and body["temperature"] == 0
    assert "messages" not in body and "response_format" not in body
    for line in lines:  # the SDK's own request type accepts every body
        REQUEST.validate_python(line["body"])


def test_a_chat_url_means_the_responses_endpoint_of_the_same_service() -> None:
    for url in ("/chat/completions", "/v1/chat/completions", None):
        assert {line["url"] for line in responses_lines(url=url)} == {"/v1/responses"}
    assert responses_lines(url="/responses")[0]["url"] == "/responses"


def test_one_builder_family_for_both_apis() -> None:
    fmt = authoring.response_format(SCHEMA, name="building")
    chat = authoring.build_body(model="m", system="s", user="u", response_format=fmt, max_tokens=20)
    resp = authoring.build_body(model="m", system="s", user="u", response_format=fmt, api="responses", max_tokens=20)
    assert chat["messages"] == resp["input"]
    assert resp["text"]["format"] == authoring.text_format(SCHEMA, name="building")
    assert resp["text"]["format"] == authoring.as_text_format(fmt)
    assert chat["max_tokens"] == resp["max_output_tokens"] == 20
    REQUEST.validate_python(resp)


def test_a_pydantic_model_is_made_strict_for_responses_too() -> None:
    class Building(BaseModel):
        name: str
        floors: int | None = None

    body = responses_lines(schema=Building)[0]["body"]  # type: ignore[arg-type]
    fmt = body["text"]["format"]
    assert fmt["strict"] is True and fmt["schema"]["additionalProperties"] is False
    assert fmt["schema"]["required"] == ["name", "floors"]
    assert authoring.schema_fields(fmt) == ["name", "floors"]
    assert authoring.request_schema(body) == fmt["schema"]


def test_write_and_read_back_a_responses_file(tmp_path: Path) -> None:
    lines = responses_lines()
    path = authoring.write_jsonl(iter(lines), tmp_path / "r.jsonl", target="openai", endpoint="/v1/responses")
    assert authoring.read_jsonl(path) == lines
    assert [f for f in lint_batch_file(path, target="openai", endpoint="/v1/responses") if f.severity == "error"] == []
    preview = authoring.requests_frame(lines)
    assert preview.loc[0, "prompt"] == "Provide info about the Empire State Building"
    assert preview.loc[0, "required"] == "BuildingName, HeightInFeet"


def test_write_refuses_a_broken_responses_schema(tmp_path: Path) -> None:
    lines = responses_lines(schema=BROKEN)
    with pytest.raises(LintError) as info:
        authoring.write_jsonl(lines, tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists() and not list(tmp_path.iterdir())
    first = info.value.findings[0]
    assert (first.line, first.code, first.param) == (1, "invalid_json_schema", "text.format.schema")


# ------------------------------------------------------------------------------------ lint


@pytest.mark.parametrize("target", ["azure", "openai"])
def test_broken_text_format_schema_is_flagged_on_its_line(target: str) -> None:
    lines = responses_lines()
    lines[1] = responses_lines(schema=BROKEN)[1]
    data = authoring.to_jsonl_bytes(lines)
    findings = [f for f in lint_batch_file(data, target=target, endpoint="/v1/responses") if f.severity == "error"]
    assert {f.line for f in findings} == {2}
    assert {(f.code, f.param, f.scope) for f in findings} == {("invalid_json_schema", "text.format.schema", "request")}
    paths = {f.path for f in findings}
    assert "body.text.format.schema.properties.BuildingName.default" in paths
    assert "body.text.format.schema" in paths  # additionalProperties / required at the root
    body = findings[0].error_body()["error"]
    assert body["code"] == "invalid_json_schema" and body["param"] == "text.format.schema"
    assert body["message"].startswith("Invalid schema for response_format 'building': In context=(")


def test_a_chat_line_in_a_responses_batch_is_a_url_mismatch() -> None:
    chat = authoring.build_requests(rows(), system=SYSTEM, schema=SCHEMA, model="gpt-4o-batch")
    findings = list(lint_batch_file(authoring.to_jsonl_bytes(chat), target="azure", endpoint="/v1/responses"))
    assert {(f.line, f.code) for f in findings} == {(1, "url_mismatch"), (2, "url_mismatch"), (3, "url_mismatch")}


def rbody(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "input": "Say hi", "text": {"format": {
        "type": "json_schema", "name": "x", "strict": True, "schema": SCHEMA}}}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


RESPONSES_CASES: list[tuple[str, dict[str, Any], tuple[str, str, str]]] = [
    ("moved_response_format", rbody(response_format={"type": "json_schema"}),
     ("unsupported_parameter", "response_format", "Unsupported parameter: 'response_format'. In the Responses "
      "API, this parameter has moved to 'text.format'.")),
    ("moved_messages", rbody(input=None, messages=[{"role": "user", "content": "hi"}]),
     ("unsupported_parameter", "messages", "Unsupported parameter: 'messages'. In the Responses API, this "
      "parameter has moved to 'input'.")),
    ("unknown", rbody(temprature=1),
     ("unknown_parameter", "temprature", "Unknown parameter: 'temprature'.")),
    ("input_missing", rbody(input=None),
     ("missing_required_parameter", "input", "Missing required parameter: 'input'.")),
    ("input_empty", rbody(input=[]),
     ("empty_array", "input", "Invalid 'input': empty array. Expected an array with minimum length 1, but "
      "got an empty array instead.")),
    ("input_type", rbody(input=5),
     ("invalid_type", "input", "Invalid type for 'input': expected a string or an array of input items, but "
      "got an integer instead.")),
    ("input_role", rbody(input=[{"role": "bot", "content": "x"}]),
     ("invalid_value", "input[0].role", "Invalid value: 'bot'. Supported values are: 'user', 'assistant', "
      "'system', and 'developer'.")),
    ("input_content_part", rbody(input=[{"role": "user", "content": ["hi"]}]),
     ("invalid_type", "input[0].content[0]", "Invalid type for 'input[0].content[0]': expected an object with "
      "a 'type', but got a string instead.")),
    ("format_type", rbody(text={"format": {"type": "object"}}),
     ("invalid_value", "text.format.type", "Invalid value: 'object'. Supported values are: 'text', "
      "'json_schema', and 'json_object'.")),
    ("format_wrapper", rbody(text={"format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
     ("unknown_parameter", "text.format.json_schema", "Unknown parameter: 'text.format.json_schema'.")),
    ("format_schema_missing", rbody(text={"format": {"type": "json_schema", "name": "x", "strict": True}}),
     ("missing_required_parameter", "text.format.schema", "Missing required parameter: 'text.format.schema'.")),
    ("format_name", rbody(text={"format": {"type": "json_schema", "name": "a b", "strict": True, "schema": SCHEMA}}),
     ("invalid_value", "text.format.name", "Invalid 'text.format.name': string does not match pattern. "
      "Expected a string that matches the pattern '^[a-zA-Z0-9_-]{1,64}$'.")),
    ("json_object_word", rbody(text={"format": {"type": "json_object"}}),
     ("invalid_value", "input", "Response input messages must contain the word 'json' in some form to use "
      "'text.format' of type 'json_object'.")),
    ("verbosity", rbody(text={"format": {"type": "text"}, "verbosity": "loud"}),
     ("invalid_value", "text.verbosity", "Invalid value: \"loud\". Supported values are: 'low', 'medium', "
      "and 'high'.")),
    ("max_output_tokens", rbody(max_output_tokens=10),
     ("integer_below_min_value", "max_output_tokens", "Invalid 'max_output_tokens': integer below minimum "
      "value. Expected a value >= 16, but got 10 instead.")),
    ("temperature", rbody(temperature=3),
     ("decimal_above_max_value", "temperature", "Invalid 'temperature': decimal above maximum value. Expected "
      "a value <= 2, but got 3 instead.")),
    ("tool_type", rbody(tools=["web"]),
     ("invalid_type", "tools[0]", "Invalid type for 'tools[0]': expected an object with a 'type', but got a "
      "string instead.")),
    ("tool_strict_schema", rbody(tools=[{"type": "function", "name": "f", "strict": True,
                                         "parameters": {"type": "object", "properties": {}}}]),
     ("invalid_schema", "tools[0].parameters", "Invalid schema for function 'f': In context=(), "
      "'additionalProperties' is required to be supplied and to be false.")),
    ("stream", rbody(stream=True),
     ("invalid_value", "stream", "Invalid value for 'stream': streaming is not supported in batch requests.")),
]


@pytest.mark.parametrize("case", RESPONSES_CASES, ids=[c[0] for c in RESPONSES_CASES])
def test_each_responses_rule(case: tuple) -> None:
    _, the_body, (code, path, message) = case
    for target in ("azure", "openai"):
        findings = [f for f in lint_request_body(the_body, target=target, api="responses") if f.severity == "error"]
        assert [(f.code, f.path, f.message) for f in findings] == [(code, path, message)], findings
        assert findings[0].fix


def test_good_responses_body_passes_and_non_strict_warns() -> None:
    assert lint_request_body(rbody(max_output_tokens=500, instructions="Be brief."), api="responses") == []
    loose = rbody(text={"format": {"type": "json_schema", "name": "x", "schema": BROKEN}})
    assert [(f.code, f.severity) for f in lint_request_body(loose, api="responses")] == [("strict_not_true", "warning")]


def test_every_responses_rule_has_a_breaking_example() -> None:
    import batchkit.lint as module

    declared = set(re.findall(r'"(responses\.[a-z_]+)"', Path(module.__file__).read_text()))
    produced = {f.rule for _, b, _ in RESPONSES_CASES for f in lint_request_body(b, api="responses")}
    produced |= {f.rule for f in lint_request_body(rbody(input=""), api="responses")}
    assert declared and declared <= produced, sorted(declared - produced)


def test_responses_keys_follow_the_sdk() -> None:
    sdk = set(response_create_params.ResponseCreateParamsBase.__annotations__) | {"stream"}
    assert sdk == set(RESPONSES_BODY_KEYS)


# ------------------------------------------------------------------------------------ parser


def response(status: str = "completed", parts: list[dict[str, Any]] | None = None, *,
             reason: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Responses body, validated as the SDK's `Response` and dumped as the service sends it."""
    if parts is None:
        parts = [{"type": "output_text", "text": '{"BuildingName": "Taipei 101", "HeightInFeet": 1667}', "annotations": []}]
    data = {
        "id": "resp_1", "object": "response", "created_at": 1_700_000_000, "model": "gpt-4o-2024-08-06",
        "status": status, "error": error,
        "incomplete_details": {"reason": reason} if reason else None,
        "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": parts}],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 40, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 52},
    }
    return Response.model_validate(data).model_dump(mode="json")


def line(custom_id: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return {"id": f"batch_req_{custom_id}", "custom_id": custom_id,
            "response": {"status_code": status, "request_id": "req_1", "body": body}, "error": None}


def test_responses_outcomes_map_like_chat() -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    cases = {
        "ok": response(),
        "refusal": response(parts=[{"type": "refusal", "refusal": "I can't help with that."}]),
        "truncated": response("incomplete", [{"type": "output_text", "text": '{"Buil', "annotations": []}],
                              reason="max_output_tokens"),
        "content_filter": response("incomplete", [], reason="content_filter"),
        "invalid": response(parts=[{"type": "output_text", "text": '{"BuildingName": 5, "HeightInFeet": 1}',
                                    "annotations": []}]),
        "http_error": response("failed", [], error={"code": "server_error", "message": "The model failed."}),
    }
    for expected, body in cases.items():
        info = classify_line(line("x", body), validator=validator)
        assert info["outcome"] == expected, (expected, info)
    ok = classify_line(line("x", cases["ok"]), validator=validator)
    assert ok["values"] == {"BuildingName": "Taipei 101", "HeightInFeet": 1667}
    assert (ok["prompt_tokens"], ok["completion_tokens"], ok["total_tokens"]) == (40, 12, 52)
    assert ok["finish_reason"] == "completed"
    assert classify_line(line("x", cases["truncated"]))["finish_reason"] == "max_output_tokens"
    not_json = response(parts=[{"type": "output_text", "text": "Taipei 101", "annotations": []}])
    assert classify_line(line("x", not_json))["outcome"] == "invalid"
    rejected = line("x", {"error": {"message": "Invalid schema", "type": "invalid_request_error",
                                    "param": "text.format.schema", "code": "invalid_json_schema"}}, status=400)
    info = classify_line(rejected)
    assert info["outcome"] == "http_error" and info["error"] == "invalid_json_schema: Invalid schema"


def test_parse_results_reads_a_responses_batch_against_its_text_format() -> None:
    lines = responses_lines()
    results = [line("task-0", response()), line("task-2", response(parts=[
        {"type": "output_text", "text": '{"BuildingName": "Shard"}', "annotations": []}]))]
    frame = parse_results(results, inputs=lines, schema=lines[0]["body"]["text"]["format"])
    assert list(frame["outcome"]) == ["ok", "missing", "invalid"]
    assert frame.loc[0, "BuildingName"] == "Taipei 101" and frame.loc[0, "prompt_tokens"] == 40
    assert "HeightInFeet" in frame.loc[2, "error"]


# ------------------------------------------------------------------------------------ live try


def test_try_live_sends_a_responses_body_with_the_sdk(fast_service: Any) -> None:
    """`try_live` sends a Responses body through `client.responses.create` on the real service."""
    import openai

    from tests.conftest import openai_client

    client = openai_client(fast_service)
    body = responses_lines(max_tokens=200)[0]["body"]
    try:
        reply = authoring.try_live(client, body, model="gpt-4o")
    except openai.NotFoundError:
        pytest.skip("this service has no live /v1/responses route")
    assert isinstance(reply, Response)
    status, text = authoring.live_answer(reply)
    assert status == "completed" and text == reply.output_text
    import json

    answer = json.loads(text)
    assert set(answer) == {"BuildingName", "HeightInFeet"} and isinstance(answer["HeightInFeet"], int)


def test_estimates_count_a_responses_body_like_its_chat_twin() -> None:
    from batchkit.estimate import count_body_tokens, estimate_batch

    chat = authoring.build_requests(rows(), system=SYSTEM, schema=SCHEMA, model="gpt-4o-batch", max_tokens=300)
    resp = responses_lines(max_tokens=300)
    for a, b in zip(chat, resp):
        assert count_body_tokens(a["body"]) == count_body_tokens(b["body"]) > 40
    est_chat, est_resp = estimate_batch(chat), estimate_batch(resp)
    assert est_resp.input_tokens == est_chat.input_tokens and est_resp.output_max == est_chat.output_max == 900


def test_streamed_responses_lines_give_the_same_table_as_parsed_ones() -> None:
    import orjson

    lines = responses_lines()
    bodies = [response(), response(parts=[{"type": "refusal", "refusal": "No."}]),
              response(parts=[{"type": "output_text", "text": '{"BuildingName": "A", "HeightInFeet": "tall"}',
                               "annotations": []}])]
    results = [line(f"task-{i}", body) for i, body in enumerate(bodies)]
    fmt = lines[0]["body"]["text"]["format"]
    from_dicts = parse_results(results, inputs=lines, schema=fmt)
    from_bytes = parse_results(b"".join(orjson.dumps(r) + b"\n" for r in results), inputs=lines, schema=fmt)
    pd.testing.assert_frame_equal(from_dicts, from_bytes)
    assert list(from_bytes["outcome"]) == ["ok", "refusal", "invalid"]
    assert list(from_bytes["prompt_tokens"]) == [40, 40, 40] and from_bytes.loc[0, "finish_reason"] == "completed"
