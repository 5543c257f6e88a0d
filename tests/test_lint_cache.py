"""The batch-file lint remembers body findings by shape: it must give exactly the findings that
linting every body in full gives, whatever the bodies (property test), for both APIs."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchkit.lint import BatchFileLinter, lint_request_body

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD_SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
schemas = st.sampled_from([
    GOOD_SCHEMA,
    {"type": "object", "properties": {"a": {"type": "string", "default": "x"}}},
    {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "required": ["n"], "additionalProperties": False},
])
scalars = st.none() | st.booleans() | st.integers(-3, 300) | st.floats(-1, 3, allow_nan=False) | st.text(max_size=4)
roles = st.sampled_from(["system", "user", "assistant", "developer", "tool", "bot"])
messages = st.lists(
    st.fixed_dictionaries({"role": roles, "content": st.text(max_size=6) | st.integers()})
    | st.fixed_dictionaries({"role": roles}),
    max_size=3,
)
strict = st.booleans() | st.just(1) | st.none()
format_types = st.sampled_from(["json_schema", "json_object", "text", "object"])


@st.composite
def chat_bodies(draw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": draw(st.sampled_from(["m", ""])), "messages": draw(messages)}
    body["response_format"] = {"type": draw(format_types), "json_schema": {
        "name": draw(st.sampled_from(["x", "bad name"])), "schema": draw(schemas), "strict": draw(strict)}}
    for key in draw(st.lists(st.sampled_from(["temperature", "max_tokens", "n", "seed", "stop", "top_p", "stream",
                                              "temprature", "max_completion_tokens"]), max_size=3, unique=True)):
        body[key] = draw(scalars | st.lists(st.text(max_size=2), max_size=5))
    return body


@st.composite
def responses_bodies(draw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m"}
    body["input"] = draw(messages | st.text(max_size=5))
    body["text"] = {"format": {"type": draw(format_types), "name": draw(st.sampled_from(["x", "bad name"])),
                               "schema": draw(schemas), "strict": draw(strict)}}
    for key in draw(st.lists(st.sampled_from(["temperature", "max_output_tokens", "instructions", "max_tokens",
                                              "response_format", "top_logprobs", "stream"]), max_size=3, unique=True)):
        body[key] = draw(scalars)
    return body


def full(bodies: list[dict[str, Any]], api: str) -> list[list[tuple]]:
    return [[(f.code, f.path, f.message, f.severity) for f in lint_request_body(b, target="azure", api=api)]
            for b in bodies]


def _unroot(path: str) -> str:
    return path[len("body."):] if path.startswith("body.") else ("" if path == "body" else path)


def cached(bodies: list[dict[str, Any]], api: str, *, shared: bool) -> list[list[tuple]]:
    """Through the file linter; with ``shared``, consecutive lines share one format object."""
    linter = BatchFileLinter(target="azure")
    url = "/v1/responses" if api == "responses" else "/chat/completions"
    out = []
    previous = None
    for i, body in enumerate(bodies):
        key = "text" if api == "responses" else "response_format"
        if shared and previous is not None and orjson.dumps(body[key]) == orjson.dumps(previous[key]):
            body = {**body, key: previous[key]}
        previous = body
        found = linter.feed_object({"custom_id": f"c{i}", "method": "POST", "url": url, "body": body}, 100)
        out.append([(f.code, _unroot(f.path), f.message, f.severity) for f in found if f.scope == "request"])
    return out


@SETTINGS
@given(st.lists(chat_bodies(), min_size=1, max_size=6), st.booleans())
def test_cached_chat_findings_equal_full_lint(bodies: list[dict[str, Any]], shared: bool) -> None:
    assert cached(bodies, "chat", shared=shared) == full(bodies, "chat")


@SETTINGS
@given(st.lists(responses_bodies(), min_size=1, max_size=6), st.booleans())
def test_cached_responses_findings_equal_full_lint(bodies: list[dict[str, Any]], shared: bool) -> None:
    assert cached(bodies, "responses", shared=shared) == full(bodies, "responses")


def test_true_and_one_are_not_the_same_body() -> None:
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": GOOD_SCHEMA, "strict": True}}}
    one = {**good, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": GOOD_SCHEMA, "strict": 1}},
           "temperature": True}
    assert cached([good, one, good], "chat", shared=False) == full([good, one, good], "chat")
    assert full([one], "chat")[0] and not full([good], "chat")[0]


# ------------------------------------------------------------------------ whole lines, fast vs full

line_texts = st.sampled_from([
    b'{"custom_id":"a","method":"POST","url":"/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s,"strict":true}}}}',
    b'{"custom_id":"a","method":"POST","url":"/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s,"strict":1}}}}',
    b'{"custom_id":"a","method":"POST","url":"/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"\\ud800"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s,"strict":true}}}}',
    b'{"custom_id":"a","method":"POST","url":"/chat/completions","body":{"model":"m","model":"n","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s,"strict":true}},"temperature":5}}',
    b'{"custom_id":"a","method":"POST","url":"/chat/completions","body":{"model":"m","messages":[{"role":"tool","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s,"strict":true}},"max_tokens":1e400}}',
    b'{"custom_id":"a","method":"POST","url":"/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s,"strict":true}},"temperature":0,"extra":1}}',
    b'{"custom_id":"a","method":"GET","url":"/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}}',
    b'{"custom_id":"","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}',
])
schema_texts = st.sampled_from([orjson.dumps(GOOD_SCHEMA), b'{"type":"object","properties":{}}', b'{"type":"object"}'])


@SETTINGS
@given(st.lists(st.tuples(line_texts, schema_texts, st.sampled_from([b"a", b"b", b"c", b"d"])), min_size=1, max_size=8))
def test_fast_path_gives_the_full_paths_findings(items: list[tuple[bytes, bytes, bytes]]) -> None:
    lines = [text.replace(b"%s", schema).replace(b"\"custom_id\":\"a\"", b"\"custom_id\":\"" + cid + b"\"", 1)
             for text, schema, cid in items]
    fast, full = BatchFileLinter(target="azure"), BatchFileLinter(target="azure")
    got = [f for line in lines for f in fast.feed(line + b"\n")]
    want = [f for line in lines for f in full._feed_full(line + b"\n")]
    assert got == want
