"""Tests of the engines behind the local service: llama (real model), synthetic, forward (real HTTP)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localbatch.engines import EngineRequestError, create_engine
from localbatch.engines.base import Engine
from localbatch.engines.forward import ForwardEngine
from localbatch.engines.llama import LlamaEngine, with_schema_hint
from localbatch.engines.synthetic import SyntheticEngine, synthesize

SYSTEM = "You are an AI assistant that provides facts about tall buildings."
BUILDING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "BuildingName": {"type": "string"},
        "HeightInFeet": {"type": "string"},
        "City": {"type": "string"},
        "Country": {"type": "string"},
    },
    "required": ["BuildingName", "HeightInFeet", "City", "Country"],
    "additionalProperties": False,
}
PROMPTS = {
    "request-1": "Provide info about the Empire State Building",
    "request-2": "Provide info about the Shard in London",
    "request-3": "Provide info about the Burj Khalifa",
}
MODEL = "gpt-4o-2024-08-06"


def building_body(prompt: str, **extra: Any) -> dict[str, Any]:
    """A walkthrough request body: the strict four-field building schema."""
    return {
        "model": "gpt-4o-batch",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "building", "schema": BUILDING_SCHEMA, "strict": True},
        },
        **extra,
    }


def assert_chat_completion(answer: dict[str, Any], model: str) -> None:
    """The answer has the chat.completion shape the hosted service returns."""
    assert answer["id"].startswith("chatcmpl-")
    assert answer["object"] == "chat.completion"
    assert isinstance(answer["created"], int)
    assert answer["model"] == model
    assert len(answer["choices"]) == 1
    choice = answer["choices"][0]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and choice["message"]["refusal"] is None
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


# --------------------------------------------------------------------------------------------- llama


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaEngine]:
    engine = create_engine("llama")
    assert isinstance(engine, LlamaEngine) and isinstance(engine, Engine)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def building_answers(llama: LlamaEngine) -> dict[str, dict[str, Any]]:
    return {cid: llama.complete(building_body(p), model=MODEL, custom_id=cid) for cid, p in PROMPTS.items()}


def test_llama_answers_the_three_buildings_with_schema_valid_compact_json(building_answers: dict[str, Any]) -> None:
    for cid, answer in building_answers.items():
        assert_chat_completion(answer, MODEL)
        assert answer["system_fingerprint"].startswith("fp_local_")
        assert answer["choices"][0]["finish_reason"] == "stop", cid
        content = answer["choices"][0]["message"]["content"]
        value = json.loads(content)
        jsonschema.validate(value, BUILDING_SCHEMA)
        assert list(value) == ["BuildingName", "HeightInFeet", "City", "Country"]  # schema order
        assert all(isinstance(v, str) for v in value.values())
        assert content == json.dumps(value, separators=(",", ":"), ensure_ascii=False)  # compact


def test_llama_usage_counts_are_the_model_tokenizer_counts(llama: LlamaEngine, building_answers: dict[str, Any]) -> None:
    body = building_body(PROMPTS["request-1"])
    plain = llama.count_prompt_tokens(body["messages"])
    counted = llama.count_prompt_tokens(with_schema_hint(body["messages"], BUILDING_SCHEMA))
    assert plain is not None and counted is not None and 20 < plain < counted
    assert building_answers["request-1"]["usage"]["prompt_tokens"] == counted  # the schema hint counts


def test_llama_same_request_same_answer_in_another_process(building_answers: dict[str, Any]) -> None:
    """A fresh process (its own model load) gives the identical content: temperature 0, seed 0, no cache."""
    script = (
        "import json,sys\n"
        "from localbatch.engines import create_engine\n"
        "body=json.loads(sys.stdin.read())\n"
        "print(json.dumps(create_engine('llama').complete(body, model='m')['choices'][0]['message']['content']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(building_body(PROMPTS["request-3"])),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == building_answers["request-3"]["choices"][0]["message"]["content"]


def test_llama_cut_by_max_tokens_reports_length(llama: LlamaEngine) -> None:
    answer = llama.complete(building_body(PROMPTS["request-2"], max_completion_tokens=12), model=MODEL)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 12
    with pytest.raises(ValueError):
        json.loads(choice["message"]["content"])  # truncated, left as it is


def test_llama_caps_completion_when_the_request_sets_no_limit() -> None:
    capped = LlamaEngine(max_tokens_cap=9)  # shares the process's loaded model
    answer = capped.complete(building_body(PROMPTS["request-1"]), model=MODEL)
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 9


def test_llama_context_length_exceeded_uses_the_openai_error(llama: LlamaEngine) -> None:
    body = building_body(PROMPTS["request-1"], max_tokens=4090)
    prompt_tokens = llama.count_prompt_tokens(with_schema_hint(body["messages"], BUILDING_SCHEMA))
    with pytest.raises(EngineRequestError) as caught:
        llama.complete(body, model=MODEL)
    err = caught.value
    assert err.status_code == 400
    assert err.body == {
        "error": {
            "message": f"This model's maximum context length is 4096 tokens. However, you requested "
            f"{prompt_tokens + 4090} tokens ({prompt_tokens} in the messages, 4090 in the completion). "
            "Please reduce the length of the messages or completion.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    with pytest.raises(EngineRequestError) as caught:
        llama.complete({"messages": [{"role": "user", "content": "tower " * 5000}]}, model=MODEL)
    assert caught.value.code == "context_length_exceeded"
    assert "However, your messages resulted in" in caught.value.message


def test_llama_rejects_a_schema_it_cannot_compile(llama: LlamaEngine) -> None:
    body = building_body(PROMPTS["request-1"])
    body["response_format"]["json_schema"]["schema"] = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/missing"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    with pytest.raises(EngineRequestError) as caught:
        llama.complete(body, model=MODEL)
    assert caught.value.status_code == 400
    assert caught.value.body["error"]["param"] == "response_format"
    assert "Invalid schema for response_format 'building'" in caught.value.message


def test_llama_chat_template_by_name_or_text(tmp_path: Path) -> None:
    from localbatch.engines.llama import CHAT_TEMPLATES

    named = LlamaEngine(chat_template="gemma")
    assert named.chat_template == CHAT_TEMPLATES["gemma"] and "<start_of_turn>" in named.chat_template
    assert LlamaEngine(chat_template="{{ messages }}").chat_template == "{{ messages }}"
    assert LlamaEngine().chat_template is None


def test_llama_missing_model_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--model PATH"):
        create_engine("llama", model_path=str(tmp_path / "absent.gguf"))


# ----------------------------------------------------------------------------------------- synthetic

SCHEMAS: list[dict[str, Any]] = [
    BUILDING_SCHEMA,
    {  # enums, const, nullable in both spellings, numbers with bounds, booleans
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": ["a", "b", "c"]},
            "version": {"const": 2},
            "note": {"type": ["string", "null"]},
            "score": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]},
            "count": {"type": "integer", "minimum": 3, "exclusiveMaximum": 7},
            "step": {"type": "number", "multipleOf": 0.25, "minimum": 1, "maximum": 3},
            "ok": {"type": "boolean"},
        },
        "required": ["kind", "version", "note", "score", "count", "step", "ok"],
        "additionalProperties": False,
    },
    {  # arrays with bounds, nested objects, formats, $defs/$ref
        "type": "object",
        "$defs": {
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 3, "maxLength": 30},
                    "born": {"type": "string", "format": "date"},
                    "id": {"type": "string", "format": "uuid"},
                    "email": {"type": "string", "format": "email"},
                },
                "required": ["name", "born", "id", "email"],
                "additionalProperties": False,
            }
        },
        "properties": {
            "people": {"type": "array", "items": {"$ref": "#/$defs/person"}, "minItems": 2, "maxItems": 4},
            "when": {"type": "string", "format": "date-time"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1}},
        },
        "required": ["people", "when", "code", "matrix"],
        "additionalProperties": False,
    },
    {  # recursion through the root and through $defs
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#"}},
            "next": {"anyOf": [{"$ref": "#/$defs/link"}, {"type": "null"}]},
        },
        "$defs": {
            "link": {
                "type": "object",
                "properties": {"to": {"type": "string"}, "then": {"anyOf": [{"$ref": "#/$defs/link"}, {"type": "null"}]}},
                "required": ["to", "then"],
                "additionalProperties": False,
            }
        },
        "required": ["label", "children", "next"],
        "additionalProperties": False,
    },
]


def synthetic_body(schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "anything"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}},
        **extra,
    }


@pytest.mark.parametrize("schema", SCHEMAS, ids=["building", "scalars", "arrays-refs", "recursive"])
def test_synthetic_answers_validate_against_varied_schemas(schema: dict[str, Any]) -> None:
    engine = create_engine("synthetic")
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for i in range(40):
        answer = engine.complete(synthetic_body(schema), model=MODEL, custom_id=f"request-{i}")
        assert_chat_completion(answer, MODEL + "-synthetic")
        assert answer["system_fingerprint"] == "synthetic"
        assert answer["choices"][0]["finish_reason"] == "stop"
        content = answer["choices"][0]["message"]["content"]
        value = json.loads(content)
        validator.validate(value)
        assert list(value) == list(schema["properties"])
        assert content == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_synthetic_is_seeded_by_custom_id() -> None:
    engine = SyntheticEngine()
    schema = SCHEMAS[2]
    first = engine.complete(synthetic_body(schema), model="m", custom_id="request-7")
    again = SyntheticEngine().complete(synthetic_body(schema), model="m", custom_id="request-7")
    other = engine.complete(synthetic_body(schema), model="m", custom_id="request-8")
    content = first["choices"][0]["message"]["content"]
    assert again["choices"][0]["message"]["content"] == content
    assert other["choices"][0]["message"]["content"] != content


def test_synthetic_truncates_at_max_tokens_and_rejects_bad_refs() -> None:
    engine = SyntheticEngine()
    answer = engine.complete(synthetic_body(SCHEMAS[2], max_tokens=5), model="m", custom_id="x")
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 5
    assert len(answer["choices"][0]["message"]["content"]) == 20
    bad = {"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}, "required": ["a"], "additionalProperties": False}
    with pytest.raises(EngineRequestError, match="does not resolve"):
        engine.complete(synthetic_body(bad), model="m", custom_id="x")


_leaf = st.sampled_from(
    [
        {"type": "string"},
        {"type": "integer"},
        {"type": "number", "minimum": -5, "maximum": 5},
        {"type": "boolean"},
        {"type": ["string", "null"]},
        {"type": "string", "enum": ["x", "y"]},
        {"type": "string", "format": "date-time"},
    ]
)
_schemas = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.builds(lambda item, low: {"type": "array", "items": item, "minItems": low}, inner, st.integers(0, 3)),
        st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), inner, min_size=1, max_size=4).map(
            lambda props: {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
        ),
        st.lists(inner, min_size=2, max_size=3).map(lambda branches: {"anyOf": branches}),
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_schemas, custom_id=st.text(max_size=20))
def test_synthetic_values_validate_for_generated_schemas(schema: dict[str, Any], custom_id: str) -> None:
    root = {"type": "object", "properties": {"value": schema}, "required": ["value"], "additionalProperties": False}
    jsonschema.Draft202012Validator(root).validate(synthesize(root, custom_id))


# -------------------------------------------------------------------------------------------- forward


def test_forward_to_llama_cpp_server_over_http(llama: LlamaEngine) -> None:
    """A real HTTP hop: the forward engine POSTs to llama.cpp's own OpenAI-compatible server, which
    xllamacpp runs on a 127.0.0.1 port for the loaded model."""
    base_url = llama._model().base_url + "/v1"
    engine = create_engine("forward", forward_url=base_url, forward_model="local-gguf", concurrency=1)
    try:
        body = building_body(PROMPTS["request-3"], cache_prompt=False, temperature=0, seed=0)
        answer = engine.complete(body, model=MODEL)
    finally:
        engine.close()
    assert_chat_completion(answer, MODEL)
    assert answer["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(answer["choices"][0]["message"]["content"]), BUILDING_SCHEMA)


class _Upstream:
    """A small OpenAI-compatible server on 127.0.0.1 (stdlib HTTP), answering with the synthetic engine.

    ``script`` lists statuses to answer before answering normally (e.g. [429, 503] then 200).
    """

    def __init__(self, script: list[int] | None = None, delay: float = 0.0) -> None:
        self.script = list(script or [])
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()
        engine = SyntheticEngine()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with upstream.lock:
                    upstream.requests.append(body)
                    upstream.headers.append(dict(self.headers))
                    status = upstream.script.pop(0) if upstream.script else 200
                    upstream.in_flight += 1
                    upstream.peak = max(upstream.peak, upstream.in_flight)
                time.sleep(upstream.delay)
                with upstream.lock:
                    upstream.in_flight -= 1
                if self.path != "/v1/chat/completions":
                    status = 404
                if status == 200:
                    payload = engine.complete(body, model=body["model"], custom_id=body["messages"][-1]["content"])
                elif status == 400:
                    payload = {"error": {"message": "Invalid 'temperature': too high.", "type": "invalid_request_error", "param": "temperature", "code": "decimal_above_max_value"}}
                else:
                    payload = {"error": {"message": f"status {status}", "type": "server_error", "param": None, "code": None}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "_Upstream":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_forward_retries_429_and_5xx_then_succeeds() -> None:
    waits: list[float] = []
    with _Upstream(script=[429, 503, 500]) as upstream:
        engine = ForwardEngine(upstream.url, forward_api_key="sk-test", retries=3, backoff=0.01, sleep=waits.append)
        answer = engine.complete(synthetic_body(BUILDING_SCHEMA), model=MODEL)
        engine.close()
    assert answer["model"] == MODEL
    jsonschema.validate(json.loads(answer["choices"][0]["message"]["content"]), BUILDING_SCHEMA)
    assert len(upstream.requests) == 4
    assert waits == [0.0, 0.02, 0.04]  # Retry-After: 0, then the doubling backoff
    assert upstream.headers[0]["Authorization"] == "Bearer sk-test"
    assert upstream.requests[0]["model"] == MODEL  # no forward_model and no model in the body


def test_forward_reads_the_upstream_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBATCH_FORWARD_API_KEY", "sk-from-env")
    with _Upstream() as upstream:
        engine = ForwardEngine(upstream.url)
        engine.complete(synthetic_body(BUILDING_SCHEMA), model=MODEL)
        engine.close()
        monkeypatch.delenv("LOCALBATCH_FORWARD_API_KEY")
        bare = ForwardEngine(upstream.url)
        bare.complete(synthetic_body(BUILDING_SCHEMA), model=MODEL)
        bare.close()
    assert upstream.headers[0]["Authorization"] == "Bearer sk-from-env"
    assert "Authorization" not in upstream.headers[1]


def test_forward_passes_an_upstream_400_through_and_gives_up_on_persistent_5xx() -> None:
    with _Upstream(script=[400, 502, 502, 502]) as upstream:
        engine = ForwardEngine(upstream.url, retries=2, backoff=0.0, sleep=lambda s: None)
        with pytest.raises(EngineRequestError) as caught:
            engine.complete(synthetic_body(BUILDING_SCHEMA), model=MODEL)
        assert caught.value.status_code == 400
        assert caught.value.body["error"]["code"] == "decimal_above_max_value"
        with pytest.raises(EngineRequestError) as caught:
            engine.complete(synthetic_body(BUILDING_SCHEMA), model=MODEL)
        assert caught.value.status_code == 502
        engine.close()
    assert len(upstream.requests) == 4  # the 400 once, the 502 three times (1 + 2 retries)


def test_forward_unreachable_endpoint_is_a_503_line_error() -> None:
    with _Upstream() as upstream:
        url = upstream.url
    engine = ForwardEngine(url, retries=1, backoff=0.0, sleep=lambda s: None)  # the port is closed now
    with pytest.raises(EngineRequestError) as caught:
        engine.complete(synthetic_body(BUILDING_SCHEMA), model=MODEL)
    assert caught.value.status_code == 503
    assert "after 2 attempts" in caught.value.message


def test_forward_keeps_at_most_concurrency_requests_in_flight() -> None:
    with _Upstream(delay=0.2) as upstream:
        engine = ForwardEngine(upstream.url, forward_model="upstream-model", concurrency=2)
        threads = [
            threading.Thread(target=engine.complete, args=(synthetic_body(BUILDING_SCHEMA),), kwargs={"model": MODEL})
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        engine.close()
    assert len(upstream.requests) == 6
    assert upstream.peak == 2
    assert {r["model"] for r in upstream.requests} == {"upstream-model"}


# ------------------------------------------------------------------------------------ create_engine


def test_create_engine_names_unknown_engines_and_options() -> None:
    with pytest.raises(ValueError, match="Unknown engine 'gpt'"):
        create_engine("gpt")
    with pytest.raises(ValueError, match="does not take option"):
        create_engine("synthetic", model_path="x.gguf")
    with pytest.raises(ValueError, match="needs the upstream URL: pass --forward-url"):
        create_engine("forward")
    with pytest.raises(ValueError, match="http"):
        create_engine("forward", forward_url="localhost:8000")
    assert create_engine("synthetic", concurrency=3, model_path=None).max_concurrency == 3
