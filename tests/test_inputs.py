"""batchkit.inputs, samples, plots and the walkthrough's helpers: tables, ids, schemas, sample data, figures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from batchkit import inputs, plots, samples, walkthrough
from batchkit.errors import AuthoringError, ConfigError


# ----- read_table / with_ids ------------------------------------------------------------------------


def test_read_table_reads_csv_parquet_and_jsonl_alike(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["007", "008"], "text": ["a, b", "c"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict(orient="records")))
    for name in ("t.csv", "t.parquet", "t.jsonl"):
        read = inputs.read_table(tmp_path / name)
        assert read.to_dict(orient="records") == frame.to_dict(orient="records"), name  # ids keep their zeros


def test_read_table_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(AuthoringError, match="No input table at .*set data_path"):
        inputs.read_table(tmp_path / "none.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(AuthoringError, match=r"t.xlsx: unknown table format '.xlsx'; use .csv, .parquet or .jsonl"):
        inputs.read_table(tmp_path / "t.xlsx")
    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(AuthoringError, match="empty.csv has no rows"):
        inputs.read_table(tmp_path / "empty.csv")


def test_with_ids_uses_a_column_or_generates_ids_kept_with_the_rows() -> None:
    frame = pd.DataFrame({"review_id": [1, 2], "text": ["x", "y"]})
    kept, column = inputs.with_ids(frame, "review_id")
    assert column == "review_id" and list(kept["review_id"]) == ["1", "2"]
    generated, column = inputs.with_ids(pd.DataFrame({"text": list("abcdefghijk")}), "")
    assert column == "custom_id" and generated["custom_id"].iloc[0] == "row-01" and generated["custom_id"].iloc[-1] == "row-11"
    with pytest.raises(AuthoringError, match=r"no column 'custom_id' \(columns: review_id, text\)\. Set id_column"):
        inputs.with_ids(frame, "custom_id")
    with pytest.raises(AuthoringError, match=r"review_id '1' is used by rows 0 and 2"):
        inputs.with_ids(pd.DataFrame({"review_id": ["1", "2", "1"]}), "review_id")
    with pytest.raises(AuthoringError, match="already has a 'custom_id' column"):
        inputs.with_ids(pd.DataFrame({"custom_id": ["a"]}), "")


# ----- load_schema / body_options -------------------------------------------------------------------


def test_load_schema_from_the_default_a_file_a_block_and_a_model(tmp_path: Path) -> None:
    assert inputs.load_schema("").schema == inputs.BUILDINGS_SCHEMA
    plain = {"type": "object", "properties": {"a": {"type": "string"}}}
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    (tmp_path / "block.json").write_text(json.dumps({"type": "json_schema", "json_schema": {"name": "x1", "schema": plain}}))
    assert inputs.load_schema("plain.json", root=tmp_path).schema == plain
    block = inputs.load_schema(str(tmp_path / "block.json"))
    assert (block.schema, block.name) == (plain, "x1")
    model = inputs.load_schema("batchkit.examples:ReviewInsight")
    assert model.is_model and model.json_schema()["properties"]["rating"]["maximum"] == 5


def test_load_schema_errors_say_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        inputs.load_schema("missing.json", root=tmp_path)
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_pkg.mod' \(No module named 'no_such_pkg'\)\. Install"):
        inputs.load_schema("no_such_pkg.mod:Model")
    with pytest.raises(ConfigError, match="batchkit.examples has no 'Nope'"):
        inputs.load_schema("batchkit.examples:Nope")
    with pytest.raises(ConfigError, match="names a function, not a pydantic model class"):
        inputs.load_schema("batchkit.inputs:read_table")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="bad.json is not JSON"):
        inputs.load_schema(str(tmp_path / "bad.json"))


def test_body_options_leave_unset_values_out() -> None:
    assert inputs.body_options() == {}
    assert inputs.body_options(max_tokens=300, temperature=0.0) == {"max_tokens": 300, "temperature": 0.0}
    assert inputs.body_options(max_tokens=0, temperature=-1) == {}


# ----- samples ---------------------------------------------------------------------------------------


def test_tickets_are_the_same_for_the_same_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = samples.tickets(50, seed=3)
    assert first.equals(samples.tickets(50, seed=3)) and not first.equals(samples.tickets(50, seed=4))
    assert list(first.columns) == ["ticket_id", "product", "channel", "text"] and first["ticket_id"].is_unique
    assert samples.main(["--rows", "25", "--out", str(tmp_path / "t.csv"), "--seed", "3"]) == 0
    assert "wrote 25 tickets" in capsys.readouterr().out
    assert samples.read_tickets(tmp_path / "t.csv").equals(samples.tickets(25, seed=3))
    with pytest.raises(ValueError):
        samples.tickets(0)


# ----- plots -----------------------------------------------------------------------------------------


def _table(rows: int) -> pd.DataFrame:
    outcomes = ["ok"] * (rows - 2) + ["truncated", "http_error"]
    return pd.DataFrame({"custom_id": [f"r{n}" for n in range(rows)], "outcome": outcomes,
                         "prompt_tokens": [70] * (rows - 1) + [None], "completion_tokens": [20] * (rows - 1) + [None]})


@pytest.mark.parametrize("rows", [5, 200])
def test_outcomes_and_tokens_draws_both_panels(rows: int, tmp_path: Path) -> None:
    fig = plots.outcomes_and_tokens(_table(rows))
    left, right = fig.axes
    assert [t.get_text() for t in left.get_yticklabels()] == ["ok", "truncated", "http_error"]
    assert left.get_title() == f"Outcomes of {rows:,} rows"
    assert right.get_title().startswith("Tokens per request")
    if rows == 5:
        assert len(right.patches) == 8  # prompt + completion bars of the 4 rows with usage
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


# ----- walkthrough helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "backend", "wanted"), [
    ("local", "local", True), ("local", "azure", False), (True, "openai", False), ("yes", "azure", True),
    ("no", "local", False), (False, "local", False), ("YES", "openai", True),
])
def test_the_cancel_demo_runs_on_the_local_backend_by_default(value: object, backend: str, wanted: bool) -> None:
    assert walkthrough.wants_cancel_demo(value, backend) is wanted


def test_a_bad_show_cancel_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="use 'local'"):
        walkthrough.wants_cancel_demo("sometimes", "local")


def test_demo_faults_put_each_fault_on_its_chunk() -> None:
    faults = walkthrough.demo_faults(seed=1, http_error=0.02, truncated=0.01, refusal=0.003, expire_chunk=2,
                                     token_limit_chunk=3)
    first = json.loads(faults["metadata"]["localbatch_faults"])
    assert first == {"seed": 1, "http_error": 0.02, "refusal": 0.003, "truncated": 0.01}
    assert json.loads(faults["chunk_metadata"][2]["localbatch_faults"])["expire_after"] == 0.6
    assert json.loads(faults["chunk_metadata"][3]["localbatch_faults"])["token_limit_creates"] == 1
    assert json.loads(faults["retry_metadata"]["localbatch_faults"]) == {"seed": 1, "refusal": 0.003}
    assert all(len(v) <= 512 for part in (faults["metadata"], faults["retry_metadata"]) for v in part.values())


def test_clear_generated_removes_runs_and_results_only(tmp_path: Path) -> None:
    for name in ("runs/run-x/manifest.json", "big/tickets.csv", "results.csv", "keep.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    walkthrough.clear_generated(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
