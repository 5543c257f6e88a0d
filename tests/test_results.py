"""Results parsing on fixture lines: every outcome, input order restored, nothing dropped."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from batchkit.errors import ResultsError
from batchkit.results import (
    ResultFiles,
    answer_table,
    classify_line,
    download_input_lines,
    download_results,
    failed_rows,
    outcome_counts,
    parse_jsonl,
    parse_results,
    save_results,
)

FIXTURES = Path(__file__).parent / "fixtures" / "results"
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
FIELDS = ["BuildingName", "HeightInFeet", "City", "Country"]


@pytest.fixture()
def files() -> ResultFiles:
    return ResultFiles(
        batch_id="batch_fixture",
        status="completed",
        output_lines=parse_jsonl((FIXTURES / "output.jsonl").read_bytes()),
        error_lines=parse_jsonl((FIXTURES / "errors.jsonl").read_bytes()),
    )


@pytest.fixture()
def inputs() -> pd.DataFrame:
    return pd.DataFrame({"custom_id": [f"task-{i}" for i in range(10)], "prompt": [f"prompt {i}" for i in range(10)]})


def test_every_input_gets_one_row_in_input_order(files: ResultFiles, inputs: pd.DataFrame) -> None:
    frame = parse_results(files, inputs=inputs, schema=SCHEMA)
    assert list(frame["custom_id"]) == [f"task-{i}" for i in range(10)]
    assert list(frame.columns[:2]) == ["custom_id", "prompt"]
    assert list(frame.columns[2:6]) == FIELDS
    assert list(frame["outcome"]) == [
        "ok", "http_error", "ok", "refusal", "truncated", "content_filter", "invalid", "expired", "cancelled", "missing",
    ]


def test_fields_usage_and_errors(files: ResultFiles, inputs: pd.DataFrame) -> None:
    frame = parse_results(files, inputs=inputs, schema=SCHEMA).set_index("custom_id")
    assert frame.loc["task-0", "City"] == "New York City"
    assert frame.loc["task-2", "HeightInFeet"] == "2,717"
    assert frame.loc["task-0", "prompt_tokens"] == 82 and frame.loc["task-0", "total_tokens"] == 109
    assert frame.loc["task-0", "finish_reason"] == "stop" and pd.isna(frame.loc["task-0", "error"])
    assert "additionalProperties" in frame.loc["task-1", "error"] and frame.loc["task-1", "status_code"] == 400
    assert frame.loc["task-3", "error"].startswith("I'm sorry")
    assert frame.loc["task-4", "finish_reason"] == "length"
    assert "HeightInFeet" in frame.loc["task-6", "error"] or "Country" in frame.loc["task-6", "error"]
    assert frame.loc["task-7", "error"].startswith("batch_expired")
    assert frame.loc["task-8", "error"].startswith("batch_cancelled")
    assert "no result line" in frame.loc["task-9", "error"]


def test_without_schema_invalid_content_is_still_ok_json(files: ResultFiles, inputs: pd.DataFrame) -> None:
    frame = parse_results(files, inputs=inputs).set_index("custom_id")
    assert frame.loc["task-6", "outcome"] == "ok"  # JSON object; no schema to check it against
    assert frame.loc["task-6", "HeightInFeet"] == 1819


def test_missing_ids_take_the_batch_status(files: ResultFiles, inputs: pd.DataFrame) -> None:
    files.status = "expired"
    frame = parse_results(files, inputs=inputs, schema=SCHEMA).set_index("custom_id")
    assert frame.loc["task-9", "outcome"] == "expired"
    files.status = "cancelled"
    assert parse_results(files, inputs=inputs).set_index("custom_id").loc["task-9", "outcome"] == "cancelled"


def test_inputs_as_request_lines_or_ids(files: ResultFiles) -> None:
    ids = [f"task-{i}" for i in range(10)]
    by_ids = parse_results(files, inputs=ids, schema=SCHEMA)
    by_lines = parse_results(files, inputs=[{"custom_id": i, "body": {}} for i in ids], schema=SCHEMA)
    pd.testing.assert_frame_equal(by_ids, by_lines)
    assert list(parse_results(files)["custom_id"]) == sorted(ids[:9])


def test_unknown_and_duplicate_ids_are_errors(files: ResultFiles) -> None:
    with pytest.raises(ResultsError, match="task-0"):
        parse_results(files, inputs=["task-1", "task-2", "task-3", "task-4", "task-5", "task-6", "task-7", "task-8"])
    doubled = ResultFiles("b", "completed", output_lines=files.output_lines + files.output_lines[:1])
    with pytest.raises(ResultsError, match="two result lines"):
        parse_results(doubled)
    with pytest.raises(ResultsError, match="no custom_id"):
        parse_results([{"response": None}])
    with pytest.raises(ResultsError, match="appears twice"):
        parse_results(files, inputs=["task-0", "task-0"])


def test_parse_jsonl_names_the_bad_line() -> None:
    assert parse_jsonl(b"") == []
    assert parse_jsonl("\n{\"a\": 1}\n\n") == [{"a": 1}]
    with pytest.raises(ResultsError, match="line 2"):
        parse_jsonl('{"a": 1}\n{"a": \n')
    with pytest.raises(ResultsError, match="not a JSON object"):
        parse_jsonl("[1]\n")


def test_classify_error_line_without_code() -> None:
    info = classify_line({"custom_id": "x", "response": None, "error": {"code": "request_timeout", "message": "timed out"}})
    assert info["outcome"] == "http_error" and info["error"] == "request_timeout: timed out"
    info = classify_line({"custom_id": "x", "response": {"status_code": 200, "body": {"choices": []}}, "error": None})
    assert info["outcome"] == "invalid"
    info = classify_line({"custom_id": "x", "response": {"status_code": 200, "body": {"choices": [{"finish_reason": "stop", "message": {"content": "not json"}}]}}})
    assert info["outcome"] == "invalid" and "not JSON" in info["error"]


def test_failed_rows_counts_answer_table_and_save(files: ResultFiles, inputs: pd.DataFrame, tmp_path: Path) -> None:
    frame = parse_results(files, inputs=inputs, schema=SCHEMA)
    assert list(failed_rows(frame)["custom_id"]) == [f"task-{i}" for i in (1, 3, 4, 5, 6, 7, 8, 9)]
    assert outcome_counts(frame)["ok"] == 2
    table = answer_table(frame, FIELDS)
    assert list(table.columns) == ["Custom ID", *FIELDS] and len(table) == 10
    with pytest.raises(ResultsError, match="Height"):
        answer_table(frame, ["Height"])
    frame["City"] = [{"nested": [1, 2]}, *frame["City"].iloc[1:]]  # nested values survive as JSON text
    csv_path, parquet_path = save_results(frame, tmp_path / "out", "buildings")
    back = pd.read_parquet(parquet_path)
    assert len(back) == 10 and json.loads(back.loc[0, "City"]) == {"nested": [1, 2]}
    assert pd.read_csv(csv_path)["outcome"].tolist() == frame["outcome"].tolist()


class _Files:
    """The two SDK calls a download makes: the file object (its `bytes`) and the content, which
    may come back short (`cut` bytes cut off the end)."""

    def __init__(self, blobs: dict[str, bytes], cut: int = 0) -> None:
        self.blobs = blobs
        self.cut = cut
        self.asked: list[str] = []

    def retrieve(self, file_id: str) -> SimpleNamespace:
        return SimpleNamespace(id=file_id, bytes=len(self.blobs[file_id]))

    def content(self, file_id: str) -> SimpleNamespace:
        self.asked.append(file_id)
        data = self.blobs[file_id]
        return SimpleNamespace(content=data[:len(data) - self.cut] if self.cut else data)


def test_download_handles_missing_output_and_empty_error_file() -> None:
    # Only the SDK calls download_results makes; the HTTP path is covered by tests/test_jobs.py.
    files = _Files({"file-err": b"", "file-out": (FIXTURES / "output.jsonl").read_bytes()})
    client = SimpleNamespace(files=files)
    failed = SimpleNamespace(id="batch_1", status="failed", output_file_id=None, error_file_id=None)
    result = download_results(client, failed)
    assert result.lines == [] and files.asked == []
    done = SimpleNamespace(id="batch_2", status="completed", output_file_id="file-out", error_file_id="file-err")
    result = download_results(client, done)
    assert files.asked == ["file-out", "file-err"]
    assert result.output_data == (FIXTURES / "output.jsonl").read_bytes()  # kept as bytes until read
    assert len(result.output_lines) == 6 and result.error_lines == [] and result.output_data is None
    empty_string_ids = SimpleNamespace(id="batch_3", status="completed", output_file_id="", error_file_id="file-err")
    assert download_results(client, empty_string_ids).output_lines == []


def test_the_results_module_download_is_the_checked_one() -> None:
    from batchkit import downloads
    from batchkit.errors import DownloadError

    assert download_results is downloads.download_results
    short = _Files({"file-out": (FIXTURES / "output.jsonl").read_bytes()}, cut=40)
    batch = SimpleNamespace(id="batch_4", status="completed", output_file_id="file-out", error_file_id=None,
                            request_counts=SimpleNamespace(total=6, completed=6, failed=0))
    with pytest.raises(DownloadError, match="file-out of batch batch_4 came back wrong 2 times"):
        download_results(SimpleNamespace(files=short), batch, caller=_NoWait())
    assert short.asked == ["file-out", "file-out"]
    requests = (FIXTURES / "output.jsonl").read_bytes()  # (any JSONL: only its length is checked here)
    with pytest.raises(DownloadError, match="input file file-in of batch batch_5"):
        download_input_lines(SimpleNamespace(files=_Files({"file-in": requests}, cut=10)),
                             SimpleNamespace(id="batch_5", input_file_id="file-in"), caller=_NoWait())
    whole = _Files({"file-in": requests})
    assert len(download_input_lines(SimpleNamespace(files=whole), SimpleNamespace(id="batch_5", input_file_id="file-in"),
                                    caller=_NoWait())) == 6


class _NoWait:
    def call(self, fn: Any, **_: Any) -> Any:
        return fn()


def test_result_files_stream_their_bytes_until_the_lines_are_read(inputs: pd.DataFrame) -> None:
    data = (FIXTURES / "output.jsonl").read_bytes()
    errors = (FIXTURES / "errors.jsonl").read_bytes()
    lines = ResultFiles("b", "completed", output_lines=parse_jsonl(data), error_lines=parse_jsonl(errors))
    streamed = ResultFiles("b", "completed", output_data=data, error_data=errors)
    expected = parse_results(lines, inputs=inputs, schema=SCHEMA)
    pd.testing.assert_frame_equal(parse_results(streamed, inputs=inputs, schema=SCHEMA), expected)
    assert streamed.output_data is data  # (not parsed into dicts for that)
    edited = ResultFiles("b", "completed", output_data=data, error_data=errors)
    edited.output_lines.pop(0)  # the lines once read are what counts, changes included
    table = parse_results(edited, inputs=inputs, schema=SCHEMA)
    assert (table["outcome"] != expected["outcome"]).sum() == 1
    bad = ResultFiles("b", "completed", output_file_id="file-9", output_data=data + b"{oops\n")
    with pytest.raises(ResultsError, match="output file file-9 line 7 is not JSON"):
        parse_results(bad, inputs=inputs, schema=SCHEMA)
    with pytest.raises(ResultsError, match="output file file-9 line 7 is not JSON"):
        bad.output_lines
