"""Property tests: the linters never raise on arbitrary bytes or JSON, and their findings are
well-formed."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchkit.estimate import count_body_tokens
from batchkit.lint import lint_batch_file, lint_batch_metadata, lint_request_body
from batchkit.schema import lint_strict_schema, to_strict_schema

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Text including lone surrogates (json.dumps writes them as \\udXXX escapes, which json.loads accepts).
texts = st.text(max_size=20) | st.text(st.characters(exclude_categories=()), max_size=5)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(texts, children, max_size=4),
    max_leaves=25,
)
schema_keys = st.sampled_from([
    "type", "properties", "required", "additionalProperties", "items", "anyOf", "enum", "const",
    "$ref", "$defs", "default", "pattern", "format", "minimum", "allOf", "oneOf", "description",
])
type_names = st.sampled_from(["object", "string", "array", "integer", "number", "boolean", "null", "date"])
schema_like = st.recursive(
    st.fixed_dictionaries({"type": type_names}) | json_values,
    lambda children: st.dictionaries(schema_keys, children | type_names | st.lists(type_names, max_size=3), max_size=5)
    | st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(st.text(max_size=5), children, max_size=3)}),
    max_leaves=30,
)


def _well_formed(findings: list) -> None:
    for f in findings:
        assert f.severity in ("error", "warning")
        assert f.scope in ("batch", "request")
        assert isinstance(f.code, str) and f.code
        assert isinstance(f.message, str) and f.message
        json.dumps(f.to_dict())


@SETTINGS
@given(st.lists(st.binary(max_size=200), max_size=8), st.sampled_from(["azure", "openai"]))
def test_batch_lint_never_raises_on_arbitrary_bytes(lines: list[bytes], target: str) -> None:
    findings = list(lint_batch_file(lines, target=target))  # type: ignore[arg-type]
    _well_formed(findings)
    for f in findings:
        assert f.line is None or 1 <= f.line <= len(lines)


@SETTINGS
@given(st.lists(json_values, max_size=6), st.sampled_from(["azure", "openai"]))
def test_batch_lint_never_raises_on_arbitrary_json_lines(values: list[Any], target: str) -> None:
    lines = [json.dumps(v).encode() + b"\n" for v in values]
    _well_formed(list(lint_batch_file(lines, target=target, deployments={"m": "globalbatch"})))  # type: ignore[arg-type]


line_like = st.fixed_dictionaries(
    {"custom_id": json_values | st.text(max_size=5), "method": st.sampled_from(["POST", "GET"]),
     "url": st.sampled_from(["/chat/completions", "/v1/chat/completions", "/x"]),
     "body": st.fixed_dictionaries({"model": st.sampled_from(["m", "n"]), "messages": json_values,
                                    "response_format": st.fixed_dictionaries({
                                        "type": st.sampled_from(["json_schema", "text", "json_object"]),
                                        "json_schema": st.fixed_dictionaries({"name": st.text(max_size=8),
                                                                              "strict": st.booleans(),
                                                                              "schema": schema_like})})},
                                   optional={"temperature": json_values, "max_tokens": json_values})}
)


@SETTINGS
@given(st.lists(line_like, max_size=5), st.sampled_from(["azure", "openai"]))
def test_batch_lint_never_raises_on_line_shaped_json(rows: list[Any], target: str) -> None:
    lines = [json.dumps(r).encode() + b"\n" for r in rows]
    findings = list(lint_batch_file(lines, target=target))  # type: ignore[arg-type]
    _well_formed(findings)
    # What the service does next with a line the lint lets through (count its tokens) must not fail.
    rejected = {f.line for f in findings if f.severity == "error" and f.scope == "batch"}
    for number, row in enumerate(rows, start=1):
        if number not in rejected:
            count_body_tokens(row["body"])


@SETTINGS
@given(json_values, st.sampled_from(["azure", "openai"]))
def test_request_and_metadata_lint_never_raise(value: Any, target: str) -> None:
    _well_formed(lint_request_body(value, target=target))  # type: ignore[arg-type]
    _well_formed(lint_batch_metadata(value))


@SETTINGS
@given(schema_like, st.sampled_from(["azure", "openai"]))
def test_schema_lint_never_raises(schema: Any, target: str) -> None:
    _well_formed(lint_strict_schema(schema, target=target))  # type: ignore[arg-type]


@SETTINGS
@given(st.dictionaries(schema_keys, schema_like, max_size=5), st.sampled_from(["azure", "openai"]))
def test_converter_never_raises_and_is_idempotent_on_its_output(schema: dict, target: str) -> None:
    strict = to_strict_schema(schema, target=target)  # type: ignore[arg-type]
    again = to_strict_schema(strict.schema, target=target)  # type: ignore[arg-type]
    assert again.schema == strict.schema


def test_deeply_nested_json_line_is_a_finding_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000 + b"\n"
    findings = list(lint_batch_file([deep], target="azure"))
    assert [(f.line, f.code) for f in findings] == [(1, "invalid_json_line")]


def test_deeply_nested_schema_is_a_finding_not_a_crash() -> None:
    node: dict = {"type": "string"}
    for _ in range(600):
        node = {"type": "object", "properties": {"c": node}, "required": ["c"], "additionalProperties": False}
    findings = lint_strict_schema(node, target="openai")
    assert [f.rule for f in findings] == ["schema.nesting_depth"]
