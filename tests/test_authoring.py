"""Authoring: rows + system message + schema -> request lines -> JSONL, with the pre-flight lint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydantic import BaseModel

from batchkit import authoring
from batchkit.errors import AuthoringError, LintError

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are an AI assistant that provides facts about tall buildings."
SCHEMA = {
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


class BuildingInfo(BaseModel):
    BuildingName: str
    HeightInFeet: int | None = None


def seed_rows() -> pd.DataFrame:
    return pd.read_csv(ROOT / "data" / "buildings.csv")


def test_seed_table_gives_the_seed_lines() -> None:
    lines = authoring.build_requests(seed_rows(), system=SYSTEM, schema=SCHEMA, model="gpt-4o-batch", name="building_info_schema")
    assert [line["custom_id"] for line in lines] == ["task-0", "task-1", "task-2"]
    first = lines[0]
    assert set(first) == {"custom_id", "method", "url", "body"}
    assert (first["method"], first["url"]) == ("POST", "/chat/completions")
    assert first["body"] == {
        "model": "gpt-4o-batch",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Provide info about the Empire State Building"},
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "building_info_schema", "schema": SCHEMA, "strict": True}},
    }


def test_records_template_generated_ids_and_options() -> None:
    rows = [{"building": "Taipei 101"}, {"building": "Shanghai Tower"}]
    lines = authoring.build_requests(
        rows, system=SYSTEM, schema=SCHEMA, model="m", template="Provide info about {building}",
        url="/v1/chat/completions", id_prefix="req-", max_tokens=200, temperature=None,
    )
    assert [line["custom_id"] for line in lines] == ["req-0", "req-1"]
    assert lines[1]["body"]["messages"][1]["content"] == "Provide info about Shanghai Tower"
    assert lines[0]["url"] == "/v1/chat/completions"
    assert lines[0]["body"]["max_tokens"] == 200 and "temperature" not in lines[0]["body"]


def test_pydantic_model_is_made_strict() -> None:
    fmt = authoring.response_format(BuildingInfo, name="info")
    schema = fmt["json_schema"]["schema"]
    assert fmt["json_schema"]["strict"] is True and fmt["json_schema"]["name"] == "info"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["BuildingName", "HeightInFeet"]
    assert authoring.schema_fields(BuildingInfo) == ["BuildingName", "HeightInFeet"]
    assert authoring.schema_fields(fmt) == ["BuildingName", "HeightInFeet"]
    assert authoring.schema_fields(SCHEMA) == ["BuildingName", "HeightInFeet", "City", "Country"]


def test_one_body_builder_for_batch_lines_and_live_calls() -> None:
    fmt = authoring.response_format(SCHEMA, name="building_info_schema")
    body = authoring.build_body(model="gpt-4o-batch", system=SYSTEM, user="Provide info about the Burj Khalifa", response_format=fmt)
    lines = authoring.build_requests(seed_rows(), system=SYSTEM, schema=SCHEMA, model="gpt-4o-batch", name="building_info_schema")
    assert lines[2]["body"] == body


@pytest.mark.parametrize(
    ("rows", "kwargs", "match"),
    [
        ([{"custom_id": "a", "prompt": "x"}, {"custom_id": "a", "prompt": "y"}], {}, "'a' is used by rows 0 and 1"),
        ([{"custom_id": "a", "text": "x"}], {}, "no column 'prompt'"),
        ([{"custom_id": "a", "prompt": "  "}], {}, "prompt is empty"),
        ([{"custom_id": "a", "prompt": None}], {}, "prompt is empty"),
        ([{"building": "x"}], {"template": "About {name}"}, "'name', which is not a column"),
        ([], {}, "No rows"),
        ([["not", "a", "dict"]], {}, "not a mapping"),
        ("a string", {}, "DataFrame or a list"),
        ([{"prompt": "x"}], {"name": "bad name!"}, "1-64 letters"),
        ([{"prompt": "x"}], {"model": ""}, "model"),
    ],
)
def test_bad_input_names_the_row(rows: object, kwargs: dict, match: str) -> None:
    options = {"system": SYSTEM, "schema": SCHEMA, "model": "m", **kwargs}
    with pytest.raises(AuthoringError, match=match):
        authoring.build_requests(rows, **options)


def test_jsonl_bytes_one_line_per_request_utf8_no_bom(tmp_path: Path) -> None:
    rows = [{"custom_id": "é-1", "prompt": "Tour Eiffel — Paris"}, {"custom_id": "b", "prompt": "two\nlines"}]
    lines = authoring.build_requests(rows, system=SYSTEM, schema=SCHEMA, model="m")
    path = authoring.write_jsonl(lines, tmp_path / "sub" / "b.jsonl", check=False)
    data = path.read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf")
    assert data.count(b"\n") == 2 and data.endswith(b"\n")
    assert "Tour Eiffel — Paris".encode() in data
    assert authoring.read_jsonl(path) == lines
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(AuthoringError, match="bad.jsonl line 2"):
        authoring.read_jsonl(tmp_path / "bad.jsonl")


def test_write_jsonl_lints_and_refuses_a_failing_file(tmp_path: Path) -> None:
    good = authoring.build_requests(seed_rows(), system=SYSTEM, schema=SCHEMA, model="gpt-4o-batch", name="building_info_schema")
    assert [f for f in authoring.lint_requests(good) if f.severity == "error"] == []
    written = authoring.write_jsonl(good, tmp_path / "good.jsonl")
    assert len(written.read_bytes().splitlines()) == 3

    broken = dict(SCHEMA, required=["BuildingName"])
    del broken["additionalProperties"]
    bad = authoring.build_requests(seed_rows(), system=SYSTEM, schema=broken, model="gpt-4o-batch", name="building_info_schema")
    with pytest.raises(LintError) as info:
        authoring.write_jsonl(bad, tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()
    assert info.value.findings and "additionalProperties" in str(info.value)
    # converting makes the same schema strict, and then it passes
    fixed = authoring.build_requests(seed_rows(), system=SYSTEM, schema=broken, model="gpt-4o-batch", convert=True)
    authoring.write_jsonl(fixed, tmp_path / "fixed.jsonl")


def test_write_jsonl_refuses_a_file_over_the_token_quota(tmp_path: Path) -> None:
    lines = authoring.build_requests(seed_rows(), system=SYSTEM, schema=SCHEMA, model="gpt-4o-batch")
    with pytest.raises(LintError) as info:
        authoring.write_jsonl(lines, tmp_path / "big.jsonl", quota=100)
    assert not (tmp_path / "big.jsonl").exists()
    assert [f.code for f in info.value.findings] == ["token_limit_exceeded"]
    assert "quota of 100" in str(info.value)
    authoring.write_jsonl(lines, tmp_path / "fits.jsonl", quota=10_000)
    assert (tmp_path / "fits.jsonl").exists()


def test_duplicate_ids_checked_again_at_write(tmp_path: Path) -> None:
    lines = [{"custom_id": "x", "body": {}}, {"custom_id": "x", "body": {}}]
    with pytest.raises(AuthoringError, match="'x'"):
        authoring.write_jsonl(lines, tmp_path / "d.jsonl", check=False)
    with pytest.raises(AuthoringError, match="no custom_id"):
        authoring.check_unique_ids([{"custom_id": ""}])


def test_requests_frame_previews_the_lines() -> None:
    lines = authoring.build_requests(seed_rows(), system=SYSTEM, schema=SCHEMA, model="gpt-4o-batch")
    frame = authoring.requests_frame(lines)
    assert list(frame.columns) == ["custom_id", "model", "prompt", "required"]
    assert frame.loc[1, "prompt"] == "Provide info about the Shard in London"
    assert frame.loc[0, "required"] == "BuildingName, HeightInFeet, City, Country"


def test_live_model_per_backend() -> None:
    from batchkit.config import Connection, resolve_settings

    local = Connection(client=None, settings=resolve_settings({}))
    openai_ = Connection(client=None, settings=resolve_settings({"OPENAI_API_KEY": "sk-x", "BATCH_DEPLOYMENT": "gpt-4o-mini"}))
    azure = Connection(client=None, settings=resolve_settings({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com",
                                                               "AZURE_OPENAI_API_KEY": "k"}))
    assert local.live_model() == "gpt-4o"  # the local standard deployment, not the batch one
    assert openai_.live_model() == "gpt-4o-mini"  # OpenAI models answer live calls too
    assert azure.live_model() is None  # a Global Batch deployment refuses live calls
    assert azure.live_model("my-standard") == "my-standard" and local.live_model("x") == "x"


def test_write_jsonl_streams_an_iterator_and_refuses_repeated_ids_with_the_lint_on(tmp_path: Path) -> None:
    rows = pd.DataFrame({"custom_id": [f"r{i}" for i in range(50)], "prompt": [f"about {i}" for i in range(50)]})
    lines = authoring.iter_requests(rows, system=SYSTEM, schema=SCHEMA, model="m")
    assert not isinstance(lines, list)
    path = authoring.write_jsonl(lines, tmp_path / "it.jsonl")
    assert [line["custom_id"] for line in authoring.read_jsonl(path)] == list(rows["custom_id"])
    twice = authoring.build_requests(rows.iloc[:3], system=SYSTEM, schema=SCHEMA, model="m")
    twice.append(dict(twice[1]))
    with pytest.raises(AuthoringError, match="'r1' is used by rows 1 and 3"):
        authoring.write_jsonl(twice, tmp_path / "twice.jsonl")
    assert not (tmp_path / "twice.jsonl").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["it.jsonl"]
    with pytest.raises(AuthoringError, match="'r0' is used by rows 0 and 2"):
        authoring.build_requests(pd.DataFrame({"custom_id": ["r0", "r1", "r0"], "prompt": ["a", "b", "c"]}),
                                 system=SYSTEM, schema=SCHEMA, model="m")


def test_templates_read_only_their_columns_and_name_bad_rows() -> None:
    rows = pd.DataFrame({"review_id": [7, 8], "product": ["kettle", "toaster"], "review": ["Great", None]})
    lines = authoring.build_requests(rows.iloc[:1], system=SYSTEM, schema=SCHEMA, model="m", id_column="review_id",
                                     template="Review of {product!r}: {review:>6}")
    assert lines[0]["custom_id"] == "7"
    assert lines[0]["body"]["messages"][1]["content"] == "Review of 'kettle':  Great"
    with pytest.raises(AuthoringError, match=r"Row 1 \(8\): the prompt is empty"):
        authoring.build_requests(rows, system=SYSTEM, schema=SCHEMA, model="m", id_column="review_id",
                                 prompt_column="review")
    with pytest.raises(AuthoringError, match=r"no column 'prompt' \(columns: review_id, product, review\)"):
        authoring.build_requests(rows, system=SYSTEM, schema=SCHEMA, model="m", id_column="review_id")
    with pytest.raises(AuthoringError, match=r"names 'title', which is not a column \(columns: review_id, product, review\)"):
        authoring.build_requests(rows, system=SYSTEM, schema=SCHEMA, model="m", template="{title}")
    with pytest.raises(AuthoringError, match=r"Row 1: the 'review_id' column is empty"):
        authoring.build_requests(pd.DataFrame({"review_id": ["a", None], "prompt": ["x", "y"]}), system=SYSTEM,
                                 schema=SCHEMA, model="m", id_column="review_id")


def test_a_lone_surrogate_is_a_finding_on_its_line_not_a_crash(tmp_path: Path) -> None:
    rows = [{"custom_id": "a", "prompt": "fine"}, {"custom_id": "b", "prompt": "cut \ud83d"}]
    lines = authoring.build_requests(rows, system=SYSTEM, schema=SCHEMA, model="m")
    with pytest.raises(LintError) as info:
        authoring.write_jsonl(lines, tmp_path / "s.jsonl")
    assert [(f.line, f.rule) for f in info.value.findings] == [(2, "batch.unpaired_surrogate")]
    assert [(f.line, f.rule) for f in authoring.lint_requests(lines)] == [(2, "batch.unpaired_surrogate")]
    with pytest.raises(AuthoringError, match=r"Request 1 \(b\) holds an unpaired UTF-16 surrogate"):
        authoring.write_jsonl(lines, tmp_path / "s.jsonl", check=False)
    with pytest.raises(AuthoringError, match="cannot be written as JSON"):
        authoring.write_jsonl([{"custom_id": "x", "body": {"when": object()}}], tmp_path / "o.jsonl", check=False)
    assert not list(tmp_path.iterdir())


def _format_key(line: dict) -> str:
    return "response_format" if "response_format" in line["body"] else "text"


def _loose_format(line: dict) -> dict:
    block = {"name": "x", "schema": {"type": "object"}, "strict": True}
    if _format_key(line) == "text":
        return {"format": {"type": "json_schema", **block}}
    return {"type": "json_schema", "json_schema": block}


_CHANGES = [
    ("custom_id", lambda line, lines: line.__setitem__("custom_id", lines[0]["custom_id"])),
    ("empty id", lambda line, lines: line.__setitem__("custom_id", "")),
    ("numeric id", lambda line, lines: line.__setitem__("custom_id", 7)),
    ("model", lambda line, lines: line["body"].__setitem__("model", "other")),
    ("url", lambda line, lines: line.__setitem__("url", "/v1/embeddings")),
    ("method", lambda line, lines: line.__setitem__("method", "GET")),
    ("line key", lambda line, lines: line.__setitem__("extra", 1)),
    ("body key", lambda line, lines: line["body"].__setitem__("max_tokens", 10)),
    ("bad option", lambda line, lines: line["body"].__setitem__("max_tokens", -1)),
    ("equal format", lambda line, lines: line["body"].__setitem__(_format_key(line), json.loads(json.dumps(
        line["body"][_format_key(line)])))),
    ("loose format", lambda line, lines: line["body"].__setitem__(_format_key(line), _loose_format(line))),
    ("empty prompt", lambda line, lines: line["body"]["messages"][1].__setitem__("content", "")),
    ("number prompt", lambda line, lines: line["body"]["messages"][1].__setitem__("content", 5)),
    ("surrogate", lambda line, lines: line["body"]["messages"][1].__setitem__("content", "cut \ud83d")),
    ("system text", lambda line, lines: line["body"]["messages"][0].__setitem__("content", "Be brief.")),
    ("tool role", lambda line, lines: line["body"]["messages"][0].__setitem__("role", "tool")),
    ("last role", lambda line, lines: line["body"]["messages"][-1].__setitem__("role", "tool")),
    ("assistant last", lambda line, lines: line["body"]["messages"][-1].__setitem__("role", "assistant")),
    ("message key", lambda line, lines: line["body"]["messages"][1].__setitem__("name", "u")),
    ("tuple messages", lambda line, lines: line["body"].__setitem__("messages", tuple(line["body"]["messages"]))),
    ("one message", lambda line, lines: line["body"]["messages"].pop(0)),
    ("three messages", lambda line, lines: line["body"]["messages"].insert(1, {"role": "assistant", "content": "ok"})),
    ("reordered line", lambda line, lines: [line.__setitem__(k, line.pop(k)) for k in ("method", "custom_id")]),
]


def _apply(change: Any, line: dict, lines: list) -> None:
    """A change, unless an earlier change of the same line made it meaningless (no such key...)."""
    try:
        change(line, lines)
    except (AttributeError, KeyError, IndexError, TypeError):
        pass


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_write_jsonl_equals_the_full_lint_of_every_line_whatever_changes(tmp_path: Path, api: str) -> None:
    """The writer checks lines that share the previous clean line's shape for that shape only:
    with lines changed anywhere, in any way, it refuses, accepts and writes exactly as the full
    lint of every line (`lint_requests`) and orjson of every line say."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    rows = pd.DataFrame({"custom_id": [f"r{i}" for i in range(40)], "prompt": [f"about {i}" for i in range(40)]})
    key = "messages" if api == "chat" else "input"

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.tuples(st.integers(1, 39), st.sampled_from(range(len(_CHANGES)))), max_size=3),
           st.booleans())
    def check(changes: list[tuple[int, int]], streamed: bool) -> None:
        lines = authoring.build_requests(rows, system=SYSTEM, schema=SCHEMA, model="m", api=api)  # type: ignore[arg-type]
        for at, which in changes:
            name, change = _CHANGES[which]
            if key == "input" and name in ("tuple messages", "one message", "three messages", "system text",
                                           "tool role", "last role", "assistant last", "message key", "empty prompt", "number prompt", "surrogate"):
                body = lines[at]["body"]
                body["messages"] = body.pop("input")  # (the chat changes, then back under the Responses key)
                _apply(change, lines[at], lines)
                body["input"] = body.pop("messages")
            else:
                _apply(change, lines[at], lines)
        ids = [line.get("custom_id") for line in lines]
        bad_id = next((i for i, c in enumerate(ids) if not isinstance(c, str) or not c or c in ids[:i]), None)
        reference = [f for f in authoring.lint_requests(lines) if f.severity == "error"
                     and f.code != "duplicate_custom_id"]
        path = tmp_path / "out.jsonl"
        path.unlink(missing_ok=True)
        source = iter(lines) if streamed else lines
        if bad_id is not None:
            with pytest.raises(AuthoringError, match=f"Request {bad_id} |rows .* and {bad_id};"):
                authoring.write_jsonl(source, path)
        elif reference:
            with pytest.raises(LintError) as info:
                authoring.write_jsonl(source, path)
            assert [(f.line, f.code, f.path) for f in info.value.findings] == [
                (f.line, f.code, f.path) for f in reference]
        else:
            authoring.write_jsonl(source, path)
            assert path.read_bytes() == authoring.to_jsonl_bytes(lines)
        assert path.exists() == (bad_id is None and not reference)

    check()
