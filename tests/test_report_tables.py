"""Readable report tables: lint findings grouped by rule, and the strict conversion's changes."""

from __future__ import annotations

import datetime

import pytest
from pydantic import BaseModel, Field

from batchkit import authoring
from batchkit.lint import findings_by_rule, findings_table, lint_batch_file
from batchkit.schema import (
    SchemaChange,
    checking_schema,
    lint_strict_schema,
    schema_changes_table,
    to_strict_schema,
)

LONG = "x" * 300
BROKEN = {
    "type": "object",
    "properties": {
        "BuildingName": {"type": "string", "description": LONG},
        "HeightInFeet": {"type": "number", "default": 0},
    },
    "required": ["BuildingName", "HeightInFeet"],
}


def broken_file(rows: int) -> bytes:
    lines = authoring.build_requests([{"prompt": f"p{i}"} for i in range(rows)], system="s", schema=BROKEN, model="m")
    return authoring.to_jsonl_bytes(lines)


def test_findings_are_grouped_with_count_lines_and_full_text() -> None:
    findings = list(lint_batch_file(broken_file(12), target="azure"))
    assert len(findings) == 24  # two schema findings on each of 12 lines
    frame = findings_by_rule(findings, max_lines=3)
    assert list(frame.columns) == ["severity", "rule", "code", "count", "lines", "custom_ids", "path", "message", "fix"]
    assert list(frame["rule"]) == ["schema.additional_properties", "schema.default_not_permitted"]
    assert list(frame["count"]) == [12, 12]
    assert frame.loc[1, "lines"] == "1, 2, 3 (+9 more)"
    assert frame.loc[1, "custom_ids"] == "task-0, task-1, task-2 (+9 more)"
    assert frame.loc[1, "path"] == "body.response_format.json_schema.schema.properties.HeightInFeet.default"
    full = findings[1].message
    assert len(full) > 50 and frame.loc[1, "message"] == full

    table = findings_table(findings)
    text = str(table)
    assert text.startswith("24 finding(s): 24 error(s), 0 warning(s)")
    assert full in text and findings[1].fix in text and "(+7 more)" in text
    html = table._repr_html_()
    assert "In context=(&#x27;properties&#x27;, &#x27;HeightInFeet&#x27;), &#x27;default&#x27; is not permitted." in html
    assert "..." not in html and len(table) == 2


def test_distinct_problems_of_one_rule_stay_apart_and_errors_come_first() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "default": "x"}, "b": {"type": "string", "default": "y"}},
              "required": ["a", "b"], "additionalProperties": False, "examples": [{}]}
    frame = findings_by_rule(lint_strict_schema(schema, name="s", target="openai"))
    assert list(frame["rule"]) == ["schema.default_not_permitted", "schema.default_not_permitted", "schema.unknown_keyword"]
    assert list(frame["severity"]) == ["error", "error", "warning"]
    assert frame.loc[0, "path"].endswith("properties.a.default") and frame.loc[1, "path"].endswith("properties.b.default")


def test_no_findings_is_a_sentence() -> None:
    table = findings_table([])
    assert str(table) == "No findings." and table._repr_html_() == "<p>No findings.</p>"
    assert table.frame.empty and list(table.frame.columns)[:4] == ["severity", "rule", "code", "count"]
    good = dict(BROKEN, additionalProperties=False, properties={"BuildingName": {"type": "string"}},
                required=["BuildingName"])
    assert str(findings_table(lint_strict_schema(good, name="g"))) == "No findings."


class Review(BaseModel):
    score: int = Field(ge=1, le=5)
    headline: str = Field(max_length=40, pattern=r"^[A-Z]")
    reviewed_on: datetime.date
    tags: list[str] = []
    note: str | None = None


def test_strict_conversion_reports_changes_and_dropped_constraints_as_records() -> None:
    strict = to_strict_schema(Review, target="azure")
    assert all(isinstance(r, SchemaChange) for r in strict.records)
    dropped = {(r.path, r.keyword, r.value) for r in strict.dropped}
    assert dropped == {
        ("properties.score", "minimum", 1), ("properties.score", "maximum", 5),
        ("properties.headline", "maxLength", 40), ("properties.headline", "pattern", "^[A-Z]"),
        ("properties.reviewed_on", "format", "date"),
    }
    assert all(r.checked for r in strict.dropped)
    actions = {r.action for r in strict.records}
    assert {"dropped_default", "made_nullable", "set_additional_properties", "required_all", "dropped_constraint"} <= actions
    assert strict.changes[0] == str(strict.records[0]) and ": " in strict.changes[0]
    assert strict.target == "azure" and strict.original == Review.model_json_schema()
    # the openai rules keep minimum/maximum/pattern/format; lengths are dropped on both targets
    kept = {(r.path, r.keyword) for r in to_strict_schema(Review, target="openai").dropped}
    assert kept == {("properties.headline", "maxLength")}


def test_changes_table_for_the_notebook() -> None:
    table = to_strict_schema(Review, target="azure").table()
    assert list(table.frame.columns) == ["path", "change", "constraint dropped", "checked when parsing"]
    assert list(table.frame["constraint dropped"])[:5] == ["yes"] * 5  # dropped constraints first
    text = str(table)
    assert text.splitlines()[0] == "10 change(s) for target azure, 5 constraint(s) dropped:"
    assert "removed unsupported 'maximum' (5)  [constraint dropped; checked when parsing]" in text
    already = to_strict_schema(Review, target="openai").schema
    assert str(schema_changes_table(to_strict_schema(already, target="openai"))) == \
        "No changes: the schema is already strict for openai."


def test_checking_schema_keeps_the_structure_and_every_constraint() -> None:
    import jsonschema

    check = checking_schema(Review)
    assert check["additionalProperties"] is False and check["required"] == list(Review.model_fields)
    assert check["properties"]["score"]["maximum"] == 5 and check["properties"]["reviewed_on"]["format"] == "date"
    validator = jsonschema.Draft202012Validator(check, format_checker=jsonschema.FormatChecker())
    good = {"score": 4, "headline": "Great", "reviewed_on": "2024-05-01", "tags": None, "note": None}
    assert list(validator.iter_errors(good)) == []
    for field, value in (("score", 23), ("headline", "lower"), ("reviewed_on", "May 1st")):
        assert list(validator.iter_errors({**good, field: value})), field


@pytest.mark.parametrize("target", ["azure", "openai"])
def test_every_source_goes_through_the_same_conversion(target: str) -> None:
    from_model = to_strict_schema(Review, target=target)
    from_dict = to_strict_schema(Review.model_json_schema(), target=target)
    assert from_model.schema == from_dict.schema and from_model.changes == from_dict.changes
