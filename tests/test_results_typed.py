"""Results typed from the original schema, constraints it had to drop checked again, streaming sources."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, Field

from batchkit import authoring
from batchkit.errors import ResultsError
from batchkit.results import (
    AnswerSchema,
    ResultFiles,
    iter_jsonl,
    parse_results,
    parse_results_to_parquet,
    save_results,
    to_models,
)
from batchkit.schema import to_strict_schema


class Address(BaseModel):
    city: str
    postcode: str | None = None


class Review(BaseModel):
    score: int = Field(ge=1, le=5)
    headline: str = Field(max_length=40, pattern=r"^[A-Z]")
    recommended: bool
    sentiment: Literal["positive", "neutral", "negative"]
    price: float | None = None
    reviewed_on: datetime.date
    updated_at: datetime.datetime | None = None
    tags: list[str] = []
    address: Address


GOOD: dict[str, Any] = {
    "score": 4, "headline": "Great kettle", "recommended": True, "sentiment": "positive", "price": 19.5,
    "reviewed_on": "2024-05-01", "updated_at": "2024-05-02T10:30:00Z", "tags": ["kitchen", "gift"],
    "address": {"city": "Leeds", "postcode": None},
}


def chat_line(custom_id: str, content: Any, *, finish: str = "stop", status: int = 200) -> dict[str, Any]:
    text = content if isinstance(content, str) else json.dumps(content)
    return {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "error": None, "response": {
        "status_code": status, "request_id": "r", "body": {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}}}


def strict_azure() -> dict[str, Any]:
    return to_strict_schema(Review, target="azure").schema


def answers() -> list[dict[str, Any]]:
    return [
        chat_line("r0", GOOD),
        chat_line("r1", {**GOOD, "score": 23}),  # breaks le=5: the Azure strict schema had no maximum
        chat_line("r2", {**GOOD, "headline": "lower case start"}),  # pattern
        chat_line("r3", {**GOOD, "reviewed_on": "May 1st"}),  # format date
        chat_line("r4", {**GOOD, "headline": "A" * 41}),  # maxLength (dropped on both targets)
        chat_line("r5", {**GOOD, "price": None, "updated_at": None, "tags": None, "address": {"city": "York", "postcode": "Y1"}}),
        chat_line("r6", {**GOOD, "sentiment": "angry"}),  # not in the enum: the service would not send it
    ]


def test_constraints_dropped_for_the_target_are_checked_against_the_original() -> None:
    ids = [f"r{i}" for i in range(8)]
    frame = parse_results(answers(), inputs=ids, schema=strict_azure(), original_schema=Review)
    outcomes = dict(zip(frame["custom_id"], frame["outcome"]))
    assert outcomes == {"r0": "ok", "r1": "invalid", "r2": "invalid", "r3": "invalid", "r4": "invalid",
                        "r5": "ok", "r6": "invalid", "r7": "missing"}
    errors = dict(zip(frame["custom_id"], frame["error"]))
    assert "score" in errors["r1"] and "23" in errors["r1"] and "maximum" in errors["r1"]
    assert "does not enforce" in errors["r1"]  # said plainly: the service let it through
    assert "headline" in errors["r2"] and "reviewed_on" in errors["r3"] and "headline" in errors["r4"]
    assert "does not enforce" not in errors["r6"]  # the strict schema itself forbids this one
    # without the original, the strict schema alone passes the out-of-range score
    loose = parse_results(answers(), inputs=ids, schema=strict_azure())
    assert loose.loc[1, "outcome"] == "ok"


def test_columns_are_typed_from_the_original_schema() -> None:
    frame = parse_results(answers(), inputs=[f"r{i}" for i in range(8)], schema=strict_azure(), original_schema=Review)
    dtypes = {name: str(frame[name].dtype) for name in frame.columns}
    assert dtypes["score"] == "Int64" and dtypes["recommended"] == "boolean" and dtypes["price"] == "float64"
    assert dtypes["sentiment"] == "category" and list(frame["sentiment"].cat.categories) == ["positive", "neutral", "negative"]
    assert dtypes["reviewed_on"].startswith("datetime64") and "UTC" in dtypes["updated_at"]
    assert dtypes["prompt_tokens"] == "Int64" and dtypes["status_code"] == "Int64"
    row = frame.iloc[0]
    assert row["score"] == 4 and row["recommended"] is True or row["recommended"] == True  # noqa: E712
    assert row["reviewed_on"] == pd.Timestamp("2024-05-01") and row["updated_at"] == pd.Timestamp("2024-05-02 10:30", tz="UTC")
    assert row["tags"] == ["kitchen", "gift"]
    assert row["address"] == {"city": "Leeds", "postcode": None} and row["address.city"] == "Leeds"
    assert list(frame.columns[:11]) == ["custom_id", "score", "headline", "recommended", "sentiment", "price",
                                        "reviewed_on", "updated_at", "tags", "address", "address.city"]
    assert frame.loc[1, "score"] == 23  # the invalid answer's values are kept where they have the type
    assert pd.isna(frame.loc[6, "sentiment"])  # a value outside the enum is not a category
    assert frame.loc[5, "tags"] is None and pd.isna(frame.loc[5, "price"]) and frame.loc[5, "address.postcode"] == "Y1"
    assert frame.loc[7, "outcome"] == "missing" and pd.isna(frame.loc[7, "score"]) and frame.loc[7, "tags"] is None


def test_lists_stay_lists_in_parquet_and_json_text_in_csv(tmp_path: Path) -> None:
    frame = parse_results(answers(), inputs=[f"r{i}" for i in range(7)], schema=Review)
    csv_path, parquet_path = save_results(frame, tmp_path, "reviews")
    table = pq.read_table(parquet_path)
    import pyarrow as pa

    tags = table.schema.field("tags").type
    assert pa.types.is_list(tags) and pa.types.is_string(tags.value_type)
    assert str(table.schema.field("score").type) == "int64"
    assert table.schema.field("address").type.num_fields == 2  # a struct
    back = pd.read_parquet(parquet_path)
    assert list(back.loc[0, "tags"]) == ["kitchen", "gift"]
    assert str(back["score"].dtype) == "Int64" and str(back["sentiment"].dtype) == "category"
    text = pd.read_csv(csv_path)
    assert json.loads(text.loc[0, "tags"]) == ["kitchen", "gift"]
    assert json.loads(text.loc[0, "address"]) == {"city": "Leeds", "postcode": None}


def test_rows_as_pydantic_objects() -> None:
    frame = parse_results(answers(), inputs=[f"r{i}" for i in range(8)], schema=strict_azure(), original_schema=Review)
    models = to_models(frame, Review)
    assert len(models) == 8 and isinstance(models[0], Review)
    assert models[0].reviewed_on == datetime.date(2024, 5, 1) and models[0].address.city == "Leeds"
    assert models[1] is None and models[7] is None and isinstance(models[5], Review)
    with pytest.raises(ResultsError, match="No column"):
        to_models(frame[["custom_id", "outcome"]], Review)


def test_responses_format_block_and_sent_schema_work_as_schema() -> None:
    lines = authoring.build_requests([{"prompt": "x"}], system="s", schema=Review, model="m", api="responses")
    fmt = lines[0]["body"]["text"]["format"]
    frame = parse_results([chat_line("task-0", {**GOOD, "score": 9})], inputs=lines, schema=fmt, original_schema=Review)
    assert frame.loc[0, "outcome"] == "invalid" and "maximum" in frame.loc[0, "error"]


def write(path: Path, lines: list[dict[str, Any]], *, blank: bool = False) -> Path:
    text = b"".join(json.dumps(line).encode() + b"\n" + (b"\n" if blank else b"") for line in lines)
    path.write_bytes(text)
    return path


def test_sources_stream_from_paths_bytes_and_line_iterables(tmp_path: Path) -> None:
    ids = [f"r{i}" for i in range(7)]
    out = write(tmp_path / "out.jsonl", answers()[:5], blank=True)
    err_line = {"id": "x", "custom_id": "r5", "response": {"status_code": 400, "request_id": "q", "body": {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": "invalid_value"}}}, "error": None}
    err = write(tmp_path / "err.jsonl", [err_line])
    expected = parse_results(ResultFiles("b", None, answers()[:5], [err_line]), inputs=ids, schema=Review)
    for source in ([out, err], [str(out), str(err)], [out.read_bytes(), err.read_bytes()]):
        pd.testing.assert_frame_equal(parse_results(source, inputs=ids, schema=Review), expected)
    chained = iter(out.read_bytes().splitlines(keepends=True) + err.read_text().splitlines())
    pd.testing.assert_frame_equal(parse_results(chained, inputs=ids, schema=Review), expected)
    assert expected.loc[5, "outcome"] == "http_error" and expected.loc[6, "outcome"] == "missing"


def test_bad_lines_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(json.dumps(chat_line("a", GOOD)).encode() + b"\n" + b'{"custom_id": "b", "resp\n')
    with pytest.raises(ResultsError, match=r"out.jsonl line 2 is not JSON"):
        parse_results(path, schema=Review)
    path.write_bytes(json.dumps(chat_line("a", GOOD)).encode() + b"\n" + json.dumps(chat_line("a", GOOD)).encode() + b"\n")
    with pytest.raises(ResultsError, match=r"'a' has two result lines .*out.jsonl line 2"):
        parse_results(path, schema=Review)
    assert [n for n, _ in iter_jsonl(b"\xef\xbb\xbf{\"a\": 1}\n\n{\"b\": 2}\r\n")] == [1, 3]


def test_parquet_in_chunks_matches_the_dataframe(tmp_path: Path) -> None:
    lines = [chat_line(f"t{i}", {**GOOD, "score": 1 + i % 5}) for i in range(250)]
    lines[7] = chat_line("t7", {**GOOD, "score": 50})
    del lines[3]
    path = write(tmp_path / "out.jsonl", lines[::-1])
    ids = [f"t{i}" for i in range(250)]
    target = parse_results_to_parquet(path, tmp_path / "r.parquet", inputs=ids, schema=Review, chunk_rows=64,
                                      batch_status="expired")
    back = pd.read_parquet(target)
    frame = parse_results(path, inputs=ids, schema=Review, batch_status="expired")
    assert list(back["custom_id"]) == ids == list(frame["custom_id"])
    assert list(back["outcome"]) == list(frame["outcome"])
    assert back.loc[3, "outcome"] == "expired" and back.loc[7, "outcome"] == "invalid"
    assert list(back["score"].astype("Int64")) == list(frame["score"])
    assert list(back.loc[0, "tags"]) == ["kitchen", "gift"] and back.loc[0, "address.city"] == "Leeds"
    with pytest.raises(ResultsError, match="not in the input table"):
        parse_results_to_parquet(path, tmp_path / "x.parquet", inputs=ids[:100], schema=Review)


def test_answer_schema_compiles_once_and_explains() -> None:
    compiled = AnswerSchema(strict_azure(), original_schema=Review)
    assert compiled.fields[:3] == ["score", "headline", "recommended"]
    assert compiled.check(GOOD) is None
    assert "maximum" in (compiled.check({**GOOD, "score": 6}) or "")
    frame = parse_results(answers()[:1], inputs=["r0"], schema=compiled)
    assert frame.loc[0, "outcome"] == "ok"
