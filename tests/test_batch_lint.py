"""Batch-file lint, request-body lint, metadata lint and the `python -m batchkit lint` command.

One breaking example per rule: it gets exactly the expected finding (code, line, path), and
the compliant file gets none."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchkit.lint import (
    Finding,
    findings_to_frame,
    has_errors,
    lint_batch_file,
    lint_batch_metadata,
    lint_request_body,
)

FIXTURES = Path(__file__).parent / "fixtures" / "lint"
SEED = FIXTURES / "buildings.jsonl"
SEED_LINES = SEED.read_bytes().splitlines(keepends=True)
SEED_ROWS = [json.loads(line) for line in SEED_LINES]
PYTHON = sys.executable


def row(i: int = 0, **changes: Any) -> dict[str, Any]:
    """A copy of the seed's line `i` with top-level keys changed (None deletes a key)."""
    out = copy.deepcopy(SEED_ROWS[i])
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def body(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(SEED_ROWS[0]["body"])
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def enc(*rows: Any) -> list[bytes]:
    return [(r if isinstance(r, (bytes, str)) else json.dumps(r)).encode() + b"\n"
            if not isinstance(r, bytes) else r for r in rows]


def lint(lines: Any, target: str = "azure", **kw: Any) -> list[Finding]:
    return list(lint_batch_file(lines, target=target, **kw))


def codes(findings: list[Finding]) -> list[tuple[int | None, str, str]]:
    return [(f.line, f.code, f.path) for f in findings]


# ---------------------------------------------------------------------------------- compliant


@pytest.mark.parametrize("target", ["azure", "openai"])
def test_seed_file_has_no_errors(target: str) -> None:
    findings = lint(SEED, target)
    assert not has_errors(findings), findings
    by_bytes = lint(SEED.read_bytes(), target)
    by_lines = lint(SEED_LINES, target)
    assert by_bytes == by_lines == findings


def test_seed_file_with_deployments_and_endpoint() -> None:
    assert lint(SEED, "azure", deployments={"gpt-4o-batch": "globalbatch"}, endpoint="/chat/completions") == []
    assert lint(SEED, "azure", endpoint="/v1/chat/completions") == []


def test_openai_prefers_the_v1_url_form_with_one_warning() -> None:
    findings = lint(SEED, "openai")
    assert [(f.line, f.code, f.severity) for f in findings] == [(1, "url_form", "warning")]
    v1 = [row(i, url="/v1/chat/completions") for i in range(3)]
    assert lint(enc(*v1), "openai", endpoint="/v1/chat/completions") == []


# ---------------------------------------------------------------------------------- batch rules


BAD_FILES: list[tuple[str, str, list[Any], dict[str, Any], tuple[int | None, str, str]]] = [
    ("invalid_json", "azure", [row(0), b'{"custom_id": "task-1", "method": \n', row(2)], {},
     (2, "invalid_json_line", "")),
    ("invalid_json_nan", "openai", [b'{"custom_id": "a", "x": NaN}\n'], {}, (1, "invalid_json_line", "")),
    ("invalid_utf8", "azure", [row(0), b'{"custom_id": "\xff\xfe"}\n'], {}, (2, "invalid_json_line", "")),
    ("unpaired_surrogate", "azure", [row(0), b'{"custom_id": "\\ud800", "method": "POST"}\n'], {},
     (2, "invalid_json_line", "")),
    ("line_not_object", "azure", [row(0), b"[1, 2]\n"], {}, (2, "invalid_request", "")),
    ("missing_key", "azure", [row(0), row(1, method=None)], {}, (2, "invalid_request", "method")),
    ("extra_key", "azure", [row(0), row(1, priority="high")], {}, (2, "invalid_request", "priority")),
    ("method_not_post", "azure", [row(0), row(1, method="GET")], {}, (2, "invalid_request", "method")),
    ("custom_id_type", "azure", [row(0), row(1, custom_id=7)], {}, (2, "invalid_request", "custom_id")),
    ("custom_id_empty", "azure", [row(0), row(1, custom_id="")], {}, (2, "invalid_request", "custom_id")),
    ("duplicate_custom_id", "azure", [row(0), row(1), row(2, custom_id="task-0")], {},
     (3, "duplicate_custom_id", "custom_id")),
    ("url_not_same", "azure", [row(0), row(1, url="/responses")], {}, (2, "url_mismatch", "url")),
    ("url_not_endpoint", "azure", [row(0)], {"endpoint": "/responses"}, (1, "url_mismatch", "url")),
    ("url_unknown", "azure", [row(0, url="/v1/embeddings")], {}, (1, "url_mismatch", "url")),
    ("url_type", "azure", [row(0, url=5)], {}, (1, "invalid_request", "url")),
    ("body_not_object", "azure", [row(0), row(1, body="hello")], {}, (2, "invalid_request", "body")),
    ("model_missing", "azure", [row(0), row(1, body=body(model=None))], {}, (2, "invalid_request", "body.model")),
    ("model_mismatch", "azure", [row(0), row(1, body=body(model="gpt-4o-mini-batch"))], {},
     (2, "model_mismatch", "body.model")),
    ("model_not_found", "azure", [row(0)], {"deployments": {"other": "globalbatch"}},
     (1, "model_not_found", "body.model")),
    ("deployment_kind", "azure", [row(0)], {"deployments": {"gpt-4o-batch": "standard"}},
     (1, "invalid_request", "body.model")),
    ("too_many_tasks", "azure", [row(0), row(1), row(2)], {"max_lines": 2}, (3, "too_many_tasks", "")),
    ("too_many_bytes", "azure", [row(0), row(1)], {"max_bytes": 1000}, (2, "file_too_large", "")),
    ("request_rule_in_file", "azure",
     [row(0), row(1, body=body(temperature=3))], {}, (2, "decimal_above_max_value", "body.temperature")),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_each_batch_rule_is_caught_with_line_and_path(case: tuple) -> None:
    _, target, rows, kw, expected = case
    findings = [f for f in lint(enc(*rows), target, **kw) if f.severity == "error"]
    assert codes(findings) == [expected], findings
    assert findings[0].message and findings[0].fix
    source = rows[expected[0] - 1]
    cid = source.get("custom_id") if isinstance(source, dict) else None
    if expected[1] in ("too_many_tasks", "file_too_large"):
        cid = None  # reported before the line is parsed
    assert findings[0].custom_id == (cid if isinstance(cid, str) and cid else None)


def test_azure_bom_gets_azures_misleading_message_and_the_real_fix() -> None:
    lines = enc(*SEED_ROWS)
    lines[0] = b"\xef\xbb\xbf" + lines[0]
    findings = lint(lines, "azure")
    assert codes(findings) == [(1, "invalid_request", "")]
    assert findings[0].message.startswith("Validation failed: A valid model deployment name couldn't be extracted")
    assert "byte order mark" in (findings[0].fix or "")
    openai = [f for f in lint(lines, "openai") if f.severity == "error"]
    assert codes(openai) == [(1, "invalid_json_line", "")]


@pytest.mark.parametrize("content", [b"", b"\n", b"\n\n  \n"])
def test_empty_file(content: bytes) -> None:
    findings = [f for f in lint(content, "azure") if f.severity == "error"]
    assert codes(findings) == [(None, "empty_file", "")]
    assert findings[0].message == "The input file is empty. Please ensure that the batch contains at least one request."


def test_blank_line_in_the_middle_is_a_warning_and_skipped() -> None:
    lines = enc(row(0)) + [b"\r\n"] + enc(row(1), row(2))
    findings = lint(lines, "azure")
    assert [(f.line, f.code, f.severity) for f in findings] == [(2, "blank_line", "warning")]


def test_crlf_lines_are_fine() -> None:
    lines = [json.dumps(r).encode() + b"\r\n" for r in SEED_ROWS]
    assert lint(lines, "azure") == []


def test_default_limits_per_target() -> None:
    line = json.dumps(row(0)).encode() + b"\n"
    many = (json.dumps(row(0, custom_id=f"t{i}")).encode() + b"\n" for i in range(50_001))
    found = [f for f in lint(many, "openai") if f.code == "too_many_tasks"]
    assert [(f.line, f.code) for f in found] == [(50_001, "too_many_tasks")]
    assert "50,000" in found[0].message
    assert line  # azure's 100,000 is covered by the max_lines override above


def test_schema_findings_carry_line_custom_id_and_full_path() -> None:
    bad = row(1)
    bad["body"]["response_format"]["json_schema"]["schema"]["properties"]["City"]["default"] = "?"
    findings = lint(enc(row(0), bad, row(2)), "azure")
    assert len(findings) == 1
    f = findings[0]
    assert (f.line, f.custom_id, f.scope, f.code) == (2, "task-1", "request", "invalid_schema")
    assert f.path == "body.response_format.json_schema.schema.properties.City.default"
    assert f.message == ("Invalid schema for response_format 'building_info_schema': "
                         "In context=('properties', 'City'), 'default' is not permitted.")


def test_findings_stream_lazily() -> None:
    def lines():
        yield json.dumps(row(0)).encode()
        yield b"not json"
        raise AssertionError("read past the finding")

    gen = lint_batch_file(lines(), target="azure")
    assert next(gen).code == "invalid_json_line"


def test_unknown_target_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown target"):
        lint(SEED, "gemini")


# ---------------------------------------------------------------------------------- request rules


REQUEST_CASES: list[tuple[str, dict[str, Any], tuple[str, str, str]]] = [
    ("unknown_parameter", body(temprature=0.2),
     ("unknown_parameter", "temprature", "Unknown parameter: 'temprature'.")),
    ("messages_missing", body(messages=None),
     ("missing_required_parameter", "messages", "Missing required parameter: 'messages'.")),
    ("messages_empty", body(messages=[]),
     ("empty_array", "messages", "Invalid 'messages': empty array. Expected an array with minimum "
      "length 1, but got an empty array instead.")),
    ("messages_type", body(messages="hi"),
     ("invalid_type", "messages", "Invalid type for 'messages': expected an array, but got a string instead.")),
    ("message_role", body(messages=[{"role": "bot", "content": "x"}]),
     ("invalid_value", "messages[0].role", "Invalid value: 'bot'. Supported values are: 'system', "
      "'user', 'assistant', 'tool', 'function', and 'developer'.")),
    ("message_role_missing", body(messages=[{"content": "x"}]),
     ("missing_required_parameter", "messages[0].role", "Missing required parameter: 'messages[0].role'.")),
    ("message_content_missing", body(messages=[{"role": "user"}]),
     ("missing_required_parameter", "messages[0].content", "Missing required parameter: 'messages[0].content'.")),
    ("message_content_type", body(messages=[{"role": "user", "content": 5}]),
     ("invalid_type", "messages[0].content", "Invalid type for 'messages[0].content': expected a string or "
      "an array of content parts, but got an integer instead.")),
    ("message_not_object", body(messages=["hi"]),
     ("invalid_type", "messages[0]", "Invalid type for 'messages[0]': expected an object, but got a string instead.")),
    ("content_part", body(messages=[{"role": "user", "content": ["hi"]}]),
     ("invalid_type", "messages[0].content[0]", "Invalid type for 'messages[0].content[0]': expected an "
      "object with a 'type', but got a string instead.")),
    ("tool_call_id", body(messages=[{"role": "tool", "content": "42"}]),
     ("missing_required_parameter", "messages[0].tool_call_id", "Missing required parameter: 'messages[0].tool_call_id'.")),
    ("response_format_type", body(response_format={"type": "object"}),
     ("invalid_value", "response_format.type", "Invalid value: 'object'. Supported values are: "
      "'json_object', 'json_schema', and 'text'.")),
    ("response_format_not_object", body(response_format="json"),
     ("invalid_type", "response_format", "Invalid type for 'response_format': expected an object, but got a string instead.")),
    ("response_format_type_missing", body(response_format={"json_schema": {}}),
     ("missing_required_parameter", "response_format.type", "Missing required parameter: 'response_format.type'.")),
    ("json_object_word", body(response_format={"type": "json_object"}),
     ("invalid_value", "messages", "'messages' must contain the word 'json' in some form, to use "
      "'response_format' of type 'json_object'.")),
    ("json_schema_missing", body(response_format={"type": "json_schema"}),
     ("missing_required_parameter", "response_format.json_schema", "Missing required parameter: 'response_format.json_schema'.")),
    ("schema_name_pattern", body(response_format={"type": "json_schema", "json_schema": {
        "name": "building info", "strict": True, "schema": {"type": "object", "properties": {}, "required": [], "additionalProperties": False}}}),
     ("invalid_value", "response_format.json_schema.name", "Invalid 'response_format.json_schema.name': "
      "string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.")),
    ("schema_name_length", body(response_format={"type": "json_schema", "json_schema": {
        "name": "n" * 65, "strict": True, "schema": {"type": "object", "properties": {}, "required": [], "additionalProperties": False}}}),
     ("string_above_max_length", "response_format.json_schema.name", "Invalid 'response_format.json_schema.name': "
      "string too long. Expected a string with maximum length 64, but got a string with length 65 instead.")),
    ("schema_name_missing", body(response_format={"type": "json_schema", "json_schema": {
        "strict": True, "schema": {"type": "object", "properties": {}, "required": [], "additionalProperties": False}}}),
     ("missing_required_parameter", "response_format.json_schema.name", "Missing required parameter: 'response_format.json_schema.name'.")),
    ("schema_missing", body(response_format={"type": "json_schema", "json_schema": {"name": "x", "strict": True}}),
     ("missing_required_parameter", "response_format.json_schema.schema", "Missing required parameter: 'response_format.json_schema.schema'.")),
    ("json_schema_extra_key", body(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "strict": True, "schema": {"type": "object", "properties": {}, "required": [], "additionalProperties": False}, "schema_version": 2}}),
     ("unknown_parameter", "response_format.json_schema.schema_version", "Unknown parameter: 'response_format.json_schema.schema_version'.")),
    ("strict_schema_rule", body(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "strict": True, "schema": {"type": "object", "properties": {}, "required": []}}}),
     ("invalid_schema", "response_format.json_schema.schema", "Invalid schema for response_format 'x': "
      "In context=(), 'additionalProperties' is required to be supplied and to be false.")),
    ("max_tokens_zero", body(max_tokens=0),
     ("integer_below_min_value", "max_tokens", "Invalid 'max_tokens': integer below minimum value. "
      "Expected a value >= 1, but got 0 instead.")),
    ("max_tokens_type", body(max_tokens="100"),
     ("invalid_type", "max_tokens", "Invalid type for 'max_tokens': expected an integer, but got a string instead.")),
    ("max_completion_tokens", body(max_completion_tokens=-5),
     ("integer_below_min_value", "max_completion_tokens", "Invalid 'max_completion_tokens': integer below "
      "minimum value. Expected a value >= 1, but got -5 instead.")),
    ("max_tokens_both", body(max_tokens=10, max_completion_tokens=10),
     ("invalid_request", "max_tokens", "max_tokens and max_completion_tokens cannot both be set.")),
    ("temperature_high", body(temperature=2.5),
     ("decimal_above_max_value", "temperature", "Invalid 'temperature': decimal above maximum value. "
      "Expected a value <= 2, but got 2.5 instead.")),
    ("temperature_type", body(temperature="hot"),
     ("invalid_type", "temperature", "Invalid type for 'temperature': expected a number, but got a string instead.")),
    ("top_p", body(top_p=-0.1),
     ("decimal_below_min_value", "top_p", "Invalid 'top_p': decimal below minimum value. Expected a "
      "value >= 0, but got -0.1 instead.")),
    ("presence_penalty", body(presence_penalty=3),
     ("decimal_above_max_value", "presence_penalty", "Invalid 'presence_penalty': decimal above maximum "
      "value. Expected a value <= 2, but got 3 instead.")),
    ("n_zero", body(n=0),
     ("integer_below_min_value", "n", "Invalid 'n': integer below minimum value. Expected a value >= 1, "
      "but got 0 instead.")),
    ("seed_type", body(seed=1.5),
     ("invalid_type", "seed", "Invalid type for 'seed': expected an integer, but got a decimal instead.")),
    ("stop", body(stop=["a", "b", "c", "d", "e"]),
     ("invalid_value", "stop", "Invalid 'stop': expected a string or an array of at most 4 strings.")),
    ("stream", body(stream=True),
     ("invalid_value", "stream", "Invalid value for 'stream': streaming is not supported in batch requests.")),
    ("tool_type", body(tools=[{"type": "retrieval"}]),
     ("invalid_value", "tools[0].type", "Invalid value: 'retrieval'. Supported values are: 'function'.")),
    ("tool_strict_schema", body(tools=[{"type": "function", "function": {
        "name": "lookup", "strict": True,
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]),
     ("invalid_schema", "tools[0].function.parameters", "Invalid schema for function 'lookup': In context=(), "
      "'additionalProperties' is required to be supplied and to be false.")),
    ("body_not_object", [1],  # type: ignore[list-item]
     ("invalid_type", "", "Invalid type for 'body': expected an object, but got an array instead.")),
]


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c[0] for c in REQUEST_CASES])
def test_each_request_rule(case: tuple) -> None:
    _, the_body, (code, path, message) = case
    for target in ("azure", "openai"):
        findings = [f for f in lint_request_body(the_body, target=target) if f.severity == "error"]
        assert [(f.code, f.path, f.message) for f in findings] == [(code, path, message)], findings
        assert findings[0].scope == "request" and findings[0].fix


@pytest.mark.parametrize(
    "the_body, code",
    [
        (body(n=3), "n_above_one"),
        (body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
         "strict_not_true"),
    ],
)
def test_request_warnings(the_body: dict, code: str) -> None:
    findings = lint_request_body(the_body, target="openai")
    assert [(f.code, f.severity) for f in findings] == [(code, "warning")]


@pytest.mark.parametrize("target", ["azure", "openai"])
def test_compliant_bodies_get_nothing(target: str) -> None:
    assert lint_request_body(body(), target=target) == []
    full = body(max_tokens=200, temperature=0, top_p=1, n=1, seed=7, stop=["\n\n"], user="u1",
                messages=[{"role": "system", "content": "Answer in JSON."},
                          {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                          {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
                          {"role": "tool", "tool_call_id": "c1", "content": "42"}])
    assert lint_request_body(full, target=target) == []
    assert lint_request_body(body(response_format={"type": "json_object"},
                                  messages=[{"role": "user", "content": "Reply in JSON"}]), target=target) == []


def test_error_body_for_request_findings() -> None:
    f = lint_request_body(body(response_format={"type": "object"}))[0]
    assert f.error_body() == {"error": {
        "message": "Invalid value: 'object'. Supported values are: 'json_object', 'json_schema', and 'text'.",
        "type": "invalid_request_error", "param": "response_format.type", "code": "invalid_value"}}


# ---------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ("tag", [("invalid_type", "metadata", "Invalid type for 'metadata': expected an object, but got a string instead.")]),
        ({"x": 1}, [("invalid_type", "metadata.x", "Invalid type for 'metadata.x': expected a string, but got an integer instead.")]),
        ({"x": ["a"]}, [("invalid_type", "metadata.x", "Invalid type for 'metadata.x': expected a string, but got an array instead.")]),
        ({f"k{i}": "v" for i in range(17)}, [("object_above_max_properties", "metadata",
          "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, "
          "but got an object with 17 properties instead.")]),
        ({"k" * 65: "v"}, [("string_above_max_length", "metadata." + "k" * 65,
          "Invalid 'metadata': string too long. Expected a key with maximum length 64, but got a key with length 65 instead.")]),
        ({"x": "v" * 513}, [("string_above_max_length", "metadata.x",
          "Invalid 'metadata.x': string too long. Expected a string with maximum length 512, but got a string with length 513 instead.")]),
    ],
)
def test_metadata_rules(metadata: Any, expected: list) -> None:
    assert [(f.code, f.path, f.message) for f in lint_batch_metadata(metadata)] == expected


def test_metadata_ok() -> None:
    assert lint_batch_metadata(None) == []
    assert lint_batch_metadata({f"k{i}": "v" * 512 for i in range(16)}) == []


# ---------------------------------------------------------------------------------- frame


def test_findings_to_frame() -> None:
    frame = findings_to_frame(lint(enc(row(0), row(0)), "azure"))
    assert list(frame.columns[:5]) == ["line", "severity", "code", "path", "message"]
    assert frame.to_dict("records")[0]["code"] == "duplicate_custom_id"
    assert int(frame.loc[0, "line"]) == 2
    assert len(findings_to_frame([])) == 0


# ---------------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "batchkit", "lint", *args], capture_output=True, text=True, timeout=120)


def test_cli_clean_file_exits_0() -> None:
    done = run_cli(str(SEED), "--target", "azure")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "0 error(s)" in done.stderr


def test_cli_errors_exit_1_with_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(enc(row(0), row(0), b"{oops\n")))
    done = run_cli(str(path))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("2: error duplicate_custom_id custom_id: The custom_id 'task-0'")
    assert lines[1] == "3: error invalid_json_line: This line is not parseable as valid JSON."
    assert len(lines) == 2


def test_cli_json_output_and_warnings_exit_0(tmp_path: Path) -> None:
    done = run_cli(str(SEED), "--target", "openai", "--json")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 1
    assert {"line", "code", "path", "message", "severity"} <= set(records[0])
    assert (records[0]["line"], records[0]["code"], records[0]["severity"]) == (1, "url_form", "warning")

    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(enc(row(0, body=body(model="other")))))
    done = run_cli(str(path), "--json", "--deployment", "gpt-4o-batch")
    assert done.returncode == 1
    [record] = [json.loads(line) for line in done.stdout.splitlines()]
    assert (record["line"], record["code"], record["path"]) == (1, "model_not_found", "body.model")


def test_cli_missing_file_exits_2(tmp_path: Path) -> None:
    done = run_cli(str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2
    assert "no such file" in done.stderr


# ---------------------------------------------------------------------------------- rule coverage


def test_every_rule_of_the_linter_has_a_breaking_example() -> None:
    """Each rule id in batchkit/lint.py is produced by at least one example in this file."""
    import re

    import batchkit.lint as module

    source = Path(module.__file__).read_text()
    declared = set(re.findall(r'"((?:batch|request|metadata)\.[a-z_]+)"', source))
    produced: set[str] = set()
    for _, target, rows, kw, _ in BAD_FILES:
        produced |= {f.rule for f in lint(enc(*rows), target, **kw)}
    bom = enc(*SEED_ROWS)
    bom[0] = b"\xef\xbb\xbf" + bom[0]
    produced |= {f.rule for f in lint(bom, "azure")}
    produced |= {f.rule for f in lint(b"", "azure")}
    produced |= {f.rule for f in lint(enc(row(0)) + [b"\n"] + enc(row(1)), "azure")}
    produced |= {f.rule for f in lint(SEED, "openai")}
    for _, the_body, _ in REQUEST_CASES:
        produced |= {f.rule for f in lint_request_body(the_body, target="openai")}
    produced |= {f.rule for f in lint_request_body(body(n=3))}
    produced |= {f.rule for f in lint_request_body(body(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}))}
    for metadata in ("tag", {"x": 1}, {f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"x": "v" * 513}):
        produced |= {f.rule for f in lint_batch_metadata(metadata)}
    import tempfile

    with tempfile.TemporaryDirectory() as folder:  # a line over the line-size limit, read from a file
        big = Path(folder) / "big.jsonl"
        big.write_bytes(b'{"custom_id": "' + b"x" * module.MAX_LINE_BYTES + b'"}\n')
        produced |= {f.rule for f in module.lint_batch_file(big, target="azure")}
    assert declared <= produced, sorted(declared - produced)
