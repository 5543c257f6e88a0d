"""The llama engine's decoding settings: compact JSON grammar, shared-prefix cache, parallel slots.

Real model, real llama.cpp. Nothing here is timed: the benchmarks measure speed
(``benchmarks/bench_llama.py``); these tests check answers and reproducibility.

The generated prompts are 50 (``benchmarks/buildings.py``); these tests answer every fifth of
them (ten structures, both kinds of question), so that the suite stays within
its time budget (``LLAMA_ALL_PROMPTS=1`` answers all 50, as a full ``make bench`` does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import pytest

from benchmarks.buildings import SCHEMA, generated_prompts, prompt_body
from localbatch.engines import create_engine
from localbatch.engines.llama import PROMPT_CACHE_MODES, LlamaEngine, compact_grammar

MODEL = "gpt-4o-batch"
#: The generated prompts these tests answer.
PROMPTS = generated_prompts() if os.environ.get("LLAMA_ALL_PROMPTS") == "1" else generated_prompts()[::5]


def content(answer: dict[str, Any]) -> str:
    return answer["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    """The default settings (compact JSON, prefix cache, one request at a time)."""
    llama = LlamaEngine()
    yield llama
    llama.close()


@pytest.fixture(scope="module")
def generated_answers(engine: LlamaEngine) -> dict[str, dict[str, Any]]:
    return {cid: engine.complete(prompt_body(p), model=MODEL, custom_id=cid) for cid, p in PROMPTS}


def test_compact_grammar_asks_llguidance_for_json_without_whitespace() -> None:
    grammar = compact_grammar(SCHEMA)
    assert grammar is not None and grammar.startswith("%llguidance {}\nstart: %json {")
    compiled = json.loads(grammar.split("%json ", 1)[1])
    assert compiled["x-guidance"]["whitespace_flexible"] is False
    assert {k: v for k, v in compiled.items() if k != "x-guidance"} == SCHEMA
    assert compact_grammar(json.loads(json.dumps(SCHEMA))) is grammar  # remembered per schema content


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"], "additionalProperties": False},
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(?=x)x+$"}}, "required": ["a"],
         "additionalProperties": False},
    ],
    ids=["dangling-ref", "look-ahead-pattern"],
)
def test_compact_grammar_is_none_where_llguidance_cannot_compile(schema: dict[str, Any]) -> None:
    # llama.cpp would otherwise decode such a request with no grammar at all, silently
    assert compact_grammar(schema) is None


def test_a_schema_only_llama_cpp_can_convert_still_gets_an_answer(engine: LlamaEngine) -> None:
    body = prompt_body("Give a word starting with x")
    body["response_format"]["json_schema"]["schema"] = {
        "type": "object", "properties": {"word": {"type": "string", "pattern": "^(?=x)x+$"}},
        "required": ["word"], "additionalProperties": False,
    }
    answer = engine.complete({**body, "max_completion_tokens": 30}, model=MODEL)
    assert content(answer).startswith('{"word"')  # llama.cpp's own conversion (pattern widened to any string)


def test_compact_answers_spend_fewer_tokens_than_indented_ones(engine: LlamaEngine) -> None:
    body = prompt_body("Provide info about the Shard in London")
    indented = LlamaEngine(compact_json=False).complete(body, model=MODEL)
    compact = engine.complete(body, model=MODEL)
    for answer in (indented, compact):
        assert answer["choices"][0]["finish_reason"] == "stop"
        jsonschema.validate(json.loads(content(answer)), SCHEMA)
    assert compact["usage"]["completion_tokens"] < indented["usage"]["completion_tokens"]


def test_every_generated_prompt_gets_a_schema_valid_answer(generated_answers: dict[str, dict[str, Any]]) -> None:
    assert len(generated_answers) == len(PROMPTS) >= 10
    for cid, answer in generated_answers.items():
        assert answer["choices"][0]["finish_reason"] == "stop", cid
        value = json.loads(content(answer))
        jsonschema.validate(value, SCHEMA)
        assert content(answer) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_the_shared_prefix_is_evaluated_once_and_reused(engine: LlamaEngine) -> None:
    first = engine.complete(prompt_body("Provide info about the Eiffel Tower"), model=MODEL)
    before = engine.timings()
    second = engine.complete(prompt_body("Provide info about the CN Tower"), model=MODEL)
    after = engine.timings()
    reused = after["cache_n"] - before["cache_n"]
    evaluated = after["prompt_n"] - before["prompt_n"]
    assert reused >= 32 and evaluated >= 1
    assert reused + evaluated == second["usage"]["prompt_tokens"]  # usage still counts the whole prompt
    assert first["usage"]["prompt_tokens"] > reused


def test_an_answer_does_not_depend_on_the_requests_before_it(engine: LlamaEngine,
                                                              generated_answers: dict[str, dict[str, Any]]) -> None:
    prompts = dict(PROMPTS)
    other = prompt_body("Provide info about the Gherkin")
    other["messages"][0]["content"] = "You answer questions about famous structures, briefly."
    for cid in ("gen-00", "gen-45"):
        engine.complete(other, model=MODEL)  # another system prompt: another prefix in the slot
        again = engine.complete(prompt_body(prompts[cid]), model=MODEL)
        assert content(again) == content(generated_answers[cid]), cid
        repeat = engine.complete(prompt_body(prompts[cid]), model=MODEL)  # right after itself
        assert content(repeat) == content(generated_answers[cid]), cid


def test_prefix_states_live_in_a_folder_of_this_process_removed_when_its_engines_close() -> None:
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = Path(tempfile.gettempdir()) / f"localbatch-llama-{gone.pid}-left"  # a killed process's folder
    stale.mkdir(exist_ok=True)
    (stale / "0123.bin").write_bytes(b"state")
    body = prompt_body("Provide info about the Burj Khalifa")
    first, second = LlamaEngine(n_ctx=2048), LlamaEngine(n_ctx=2048)  # a model server of their own
    answer = content(first.complete(body, model=MODEL))
    assert first._loaded is not None
    folder = first._loaded.state_dir
    assert folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith(f"localbatch-llama-{os.getpid()}-")
    assert list(folder.glob("*.bin")), "the shared prefix's state is saved in the folder"
    assert not list(folder.parent.glob(folder.name + "?*")), "nothing is saved next to the folder"
    assert not stale.exists()
    assert content(second.complete(body, model=MODEL)) == answer
    first.close()
    assert list(folder.glob("*.bin")), "another engine still uses the server"
    second.close()
    assert not folder.exists()
    again = LlamaEngine(n_ctx=2048)
    try:
        assert content(again.complete(body, model=MODEL)) == answer  # the state is saved anew
        assert list(folder.glob("*.bin"))
    finally:
        again.close()
    assert not folder.exists()


def test_parallel_slots_answer_several_requests_at_once() -> None:
    parallel = create_engine("llama", parallel=2, concurrency=8)  # concurrency: the engine's own parallel wins
    assert isinstance(parallel, LlamaEngine) and parallel.max_concurrency == 2 and not parallel.deterministic
    items = generated_prompts()[::10]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda item: parallel.complete(prompt_body(item[1]), model=MODEL), items))
    for (cid, _), answer in zip(items, answers):  # decoded in one batch: valid, not necessarily identical
        assert answer["choices"][0]["finish_reason"] == "stop", cid
        jsonschema.validate(json.loads(content(answer)), SCHEMA)
    assert parallel.timings()["requests"] == len(items)


def test_engine_settings_are_checked() -> None:
    assert PROMPT_CACHE_MODES == ("prefix", "reuse", "off")
    assert LlamaEngine().deterministic and LlamaEngine(prompt_cache="off").deterministic
    assert not LlamaEngine(prompt_cache="reuse").deterministic
    assert LlamaEngine(compact_json="false").compact_json is False  # --engine-option compact_json=false
    assert LlamaEngine(schema_in_prompt=0).schema_in_prompt is False
    with pytest.raises(ValueError, match="prompt_cache must be one of prefix, reuse, off"):
        LlamaEngine(prompt_cache="always")
    with pytest.raises(ValueError, match="parallel must be an integer from 1 to 16"):
        LlamaEngine(parallel=0)
    with pytest.raises(ValueError, match="compact_json must be true or false"):
        LlamaEngine(compact_json="maybe")
