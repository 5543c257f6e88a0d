"""Strict-schema lint: one breaking example per rule (it gets exactly that finding), compliant
schemas get none, and the converter produces schemas the lint accepts."""

from __future__ import annotations

import copy
from typing import Any, Literal, Optional

import pytest
from pydantic import BaseModel, Field

from batchkit.errors import LintError
from batchkit.schema import (
    SCHEMA_RULES,
    lint_strict_schema,
    response_format_for,
    to_strict_schema,
)

BUILDING = {
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


def obj(props: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A compliant object schema with the given properties."""
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False, **extra}


def nested(levels: int) -> dict[str, Any]:
    """An object schema with `levels` levels of nested objects (the root is level 1)."""
    node: dict[str, Any] = obj({"leaf": {"type": "string"}})
    for _ in range(levels - 1):
        node = obj({"child": node})
    return node


def many_props(n: int) -> dict[str, Any]:
    return obj({f"p{i}": {"type": "string"} for i in range(n)})


COMPLIANT = [
    BUILDING,
    obj({"tags": {"type": "array", "items": {"type": "string"}}}),
    obj({"maybe": {"type": ["string", "null"]}}),
    obj({"kind": {"type": "string", "enum": ["a", "b"]}, "c": {"const": "x"}}),
    obj({"u": {"anyOf": [obj({"a": {"type": "string"}}), obj({"b": {"type": "integer"}}), {"type": "null"}]}}),
    obj({"pet": {"anyOf": [obj({"kind": {"type": "string", "const": "cat"}, "lives": {"type": "integer"}}),
                           obj({"kind": {"type": "string", "const": "dog"}, "good": {"type": "boolean"}})]}}),
    obj({"item": {"$ref": "#/$defs/Item"}}, **{"$defs": {"Item": obj({"n": {"type": "number"}})}}),
    obj({"tree": {"$ref": "#"}}),
    nested(5),
    many_props(100),
]


@pytest.mark.parametrize("target", ["azure", "openai"])
@pytest.mark.parametrize("schema", COMPLIANT, ids=lambda s: str(sorted(s.get("properties", {})))[:40])
def test_compliant_schema_has_no_findings(schema: dict, target: str) -> None:
    assert lint_strict_schema(schema, name="s", target=target) == []


# (rule, target(s), schema, expected message tail, expected path)
CASES: list[tuple[str, tuple[str, ...], Any, str, str]] = [
    ("schema.root_not_object", ("azure", "openai"), {"type": "array", "items": {"type": "string"}},
     "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"array\"'.", "schema"),
    ("schema.root_not_object", ("azure", "openai"), [1, 2],
     "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"None\"'.", "schema"),
    ("schema.root_any_of", ("azure", "openai"), {"anyOf": [obj({"a": {"type": "string"}})]},
     "In context=(), 'anyOf' is not permitted at the root; the root must be an object.", "schema"),
    ("schema.additional_properties", ("azure", "openai"),
     {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
     "In context=(), 'additionalProperties' is required to be supplied and to be false.", "schema"),
    ("schema.additional_properties", ("azure", "openai"),
     obj({"inner": {"type": "object", "properties": {}, "additionalProperties": True}}),
     "In context=('properties', 'inner'), 'additionalProperties' is required to be supplied and to be false.",
     "schema.properties.inner"),
    ("schema.required_missing", ("azure", "openai"),
     {**obj({"a": {"type": "string"}, "b": {"type": "string"}}), "required": ["a"]},
     "In context=(), 'required' is required to be supplied and to be an array including every key "
     "in properties. Missing 'b'.", "schema"),
    ("schema.required_unknown_key", ("azure", "openai"),
     {**obj({"a": {"type": "string"}}), "required": ["a", "zz"]},
     "In context=(), 'required' includes 'zz', which is not a key in 'properties'.", "schema.required"),
    ("schema.properties_not_object", ("azure", "openai"),
     {"type": "object", "properties": ["a"], "required": [], "additionalProperties": False},
     "In context=(), 'properties' must be an object mapping names to schemas.", "schema.properties"),
    ("schema.default_not_permitted", ("azure", "openai"),
     obj({"x": {"type": "string", "default": "n/a"}}),
     "In context=('properties', 'x'), 'default' is not permitted.", "schema.properties.x.default"),
    ("schema.unsupported_keyword", ("azure", "openai"),
     obj({"x": {"allOf": [{"type": "string"}]}}),
     "In context=('properties', 'x'), 'allOf' is not permitted.", "schema.properties.x.allOf"),
    ("schema.unsupported_keyword", ("azure", "openai"),
     obj({"x": {"type": "string", "minLength": 2}}),
     "In context=('properties', 'x'), 'minLength' is not permitted.", "schema.properties.x.minLength"),
    ("schema.unsupported_keyword", ("azure",),
     obj({"x": {"type": "string", "pattern": "^a+$"}}),
     "In context=('properties', 'x'), 'pattern' is not permitted.", "schema.properties.x.pattern"),
    ("schema.unsupported_keyword", ("azure",),
     obj({"x": {"type": "integer", "minimum": 0}}),
     "In context=('properties', 'x'), 'minimum' is not permitted.", "schema.properties.x.minimum"),
    ("schema.unsupported_keyword", ("azure",),
     obj({"x": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}),
     "In context=('properties', 'x'), 'maxItems' is not permitted.", "schema.properties.x.maxItems"),
    ("schema.unsupported_keyword", ("azure", "openai"),
     obj({"x": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}}),
     "In context=('properties', 'x'), 'uniqueItems' is not permitted.", "schema.properties.x.uniqueItems"),
    ("schema.unsupported_keyword", ("azure", "openai"),
     obj({"x": obj({"a": {"type": "string"}}, **{"$defs": {}})}),
     "In context=('properties', 'x'), '$defs' is only permitted at the root.", "schema.properties.x.$defs"),
    ("schema.unknown_keyword", ("azure", "openai"),
     obj({"x": {"type": "string", "examples": ["a"]}}),
     "In context=('properties', 'x'), 'examples' is not a supported keyword and will be ignored.",
     "schema.properties.x.examples"),
    ("schema.missing_type", ("azure", "openai"), obj({"x": {"description": "anything"}}),
     "In context=('properties', 'x'), schema must have a 'type' key.", "schema.properties.x"),
    ("schema.invalid_type", ("azure", "openai"), obj({"x": {"type": "date"}}),
     "In context=('properties', 'x'), type 'date' is not supported; supported types are 'string', "
     "'number', 'integer', 'boolean', 'object', 'array', 'null'.", "schema.properties.x.type"),
    ("schema.array_items_missing", ("azure", "openai"), obj({"x": {"type": "array"}}),
     "In context=('properties', 'x'), array schema missing items.", "schema.properties.x"),
    ("schema.not_an_object", ("azure", "openai"), obj({"x": True}),
     "In context=('properties', 'x'), schema must be a JSON object, got boolean true.", "schema.properties.x"),
    ("schema.ref_siblings", ("azure", "openai"),
     obj({"events": {"type": "array", "items": {"$ref": "#/$defs/E", "description": "one event"}}},
         **{"$defs": {"E": obj({"t": {"type": "string"}})}}),
     "In context=('properties', 'events', 'items'), $ref cannot have keywords {'description'}.",
     "schema.properties.events.items"),
    ("schema.ref_unresolved", ("azure", "openai"), obj({"x": {"$ref": "#/$defs/Missing"}}),
     "In context=('properties', 'x'), reference \"#/$defs/Missing\" can't be resolved.",
     "schema.properties.x.$ref"),
    ("schema.any_of_invalid", ("azure", "openai"), obj({"x": {"anyOf": []}}),
     "In context=('properties', 'x'), 'anyOf' must be a non-empty array of schemas.", "schema.properties.x.anyOf"),
    ("schema.any_of_identical_first_keys", ("azure", "openai"),
     obj({"x": {"anyOf": [obj({"id": {"type": "string"}, "a": {"type": "integer"}}),
                          obj({"id": {"type": "string"}, "b": {"type": "boolean"}})]}}),
     "In context=('properties', 'x'), objects provided via 'anyOf' must not share identical first keys. "
     "Consider adding a discriminator key or rearranging the properties to ensure the first key is unique.",
     "schema.properties.x.anyOf"),
    ("schema.enum_invalid", ("azure", "openai"), obj({"x": {"type": "string", "enum": []}}),
     "In context=('properties', 'x'), 'enum' must be a non-empty array.", "schema.properties.x.enum"),
    ("schema.enum_type_mismatch", ("azure", "openai"), obj({"x": {"type": "string", "enum": ["a", 1]}}),
     "In context=('properties', 'x'), enum value 1 does not validate against {'type': 'string'}.",
     "schema.properties.x.enum[1]"),
    ("schema.format_unsupported", ("openai",), obj({"x": {"type": "string", "format": "uri"}}),
     "In context=('properties', 'x'), format \"uri\" is not supported. Supported formats are: date, "
     "date-time, duration, email, hostname, ipv4, ipv6, time, uuid.", "schema.properties.x.format"),
    ("schema.pattern_invalid", ("openai",), obj({"x": {"type": "string", "pattern": "(unclosed"}}),
     "In context=('properties', 'x'), pattern \"(unclosed\" may not be a valid regular expression "
     "(missing ), unterminated subpattern at position 0).", "schema.properties.x.pattern"),
    ("schema.keyword_type_mismatch", ("openai",), obj({"x": {"type": "integer", "pattern": "^1"}}),
     "In context=('properties', 'x'), 'pattern' applies to string values and has no effect on type 'integer'.",
     "schema.properties.x.pattern"),
    ("schema.keyword_type_mismatch", ("azure", "openai"),
     obj({"x": {"type": "string", "properties": {}}}),
     "In context=('properties', 'x'), 'properties' applies to object values and has no effect on type 'string'.",
     "schema.properties.x.properties"),
    ("schema.nesting_depth", ("azure",), nested(6),
     "6 levels of nesting exceeds limit of 5.", "schema" + ".properties.child" * 5),
    ("schema.nesting_depth", ("openai",), nested(11),
     "11 levels of nesting exceeds limit of 10.", "schema" + ".properties.child" * 10),
    ("schema.too_many_properties", ("azure",), many_props(101),
     "101 object properties exceeds limit of 100.", "schema"),
    ("schema.string_length", ("azure",), obj({"k" * 15_001: {"type": "string"}}),
     "Total string length of property names, definition names, enum values and const values "
     "(15001) exceeds limit of 15000.", "schema"),
    ("schema.too_many_enum_values", ("azure",),
     obj({"a": {"type": "integer", "enum": list(range(300))}, "b": {"type": "integer", "enum": list(range(201))}}),
     "501 enum values in total exceeds limit of 500.", "schema"),
    ("schema.large_enum_length", ("azure",),
     obj({"x": {"type": "string", "enum": [f"value-{i:024d}" for i in range(251)]}}),
     "In context=('properties', 'x'), Total string length (7530) of values of an enum with 251 "
     "values exceeds limit of 7500.", "schema.properties.x.enum"),
]


def _case_id(case: tuple) -> str:
    return case[0].split(".", 1)[1] + "-" + "+".join(case[1])


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_each_rule_is_caught_with_its_message_and_path(case: tuple) -> None:
    rule, targets, schema, tail, path = case
    for target in targets:
        findings = lint_strict_schema(copy.deepcopy(schema), name="info", target=target)
        assert [f.rule for f in findings] == [rule], (target, findings)
        f = findings[0]
        assert f.message == f"Invalid schema for response_format 'info': {tail}"
        assert f.path == path
        assert f.severity == SCHEMA_RULES[rule]
        assert f.code == "invalid_schema" and f.param == "response_format" and f.fix


def test_every_rule_has_a_case() -> None:
    assert {c[0] for c in CASES} == set(SCHEMA_RULES)


@pytest.mark.parametrize(
    "schema",
    [
        obj({"x": {"type": "string", "pattern": "^[A-Z]+$", "format": "email"}}),
        obj({"n": {"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.5}}),
        obj({"xs": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3}}),
        nested(10),
        many_props(101),
        obj({"x": {"type": "string", "enum": [f"value-{i:024d}" for i in range(251)]}}),
    ],
)
def test_openai_accepts_what_only_azure_rejects(schema: dict) -> None:
    assert lint_strict_schema(schema, target="openai") == []
    assert lint_strict_schema(schema, target="azure") != []


def test_anyof_branches_are_checked_with_their_context() -> None:
    schema = obj({"result": {"anyOf": [{"type": "object", "properties": {"realign": {"type": "string"}}}, {"type": "null"}]}})
    rules = [(f.rule, f.message.split(": ", 1)[1]) for f in lint_strict_schema(schema, name="n")]
    assert ("schema.additional_properties",
            "In context=('properties', 'result', 'anyOf', '0'), 'additionalProperties' is required "
            "to be supplied and to be false.") in rules
    assert ("schema.required_missing",
            "In context=('properties', 'result', 'anyOf', '0'), 'required' is required to be supplied "
            "and to be an array including every key in properties. Missing 'realign'.") in rules


def test_error_body_is_the_400_the_service_sends() -> None:
    f = lint_strict_schema(obj({"x": {"type": "string", "default": "a"}}), name="building_info_schema")[0]
    assert f.error_body() == {
        "error": {
            "message": "Invalid schema for response_format 'building_info_schema': In context=('properties', 'x'), 'default' is not permitted.",
            "type": "invalid_request_error",
            "param": "response_format",
            "code": None,
        }
    }


def test_unknown_target_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown target 'bedrock'"):
        lint_strict_schema(BUILDING, target="bedrock")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- converter


class Address(BaseModel):
    city: str
    country: str


class Building(BaseModel):
    name: str = Field(description="official name", min_length=1)
    height_ft: Optional[float] = None
    kind: Literal["office", "residential"] = "office"
    address: Address = Field(description="where it stands")
    tags: list[str] = []
    previous_address: Optional[Address] = None


@pytest.mark.parametrize("target", ["azure", "openai"])
def test_pydantic_model_becomes_strict_and_changes_are_reported(target: str) -> None:
    raw = Building.model_json_schema()
    assert lint_strict_schema(raw, target=target)  # pydantic's own schema is not strict
    strict = to_strict_schema(Building, target=target)
    assert lint_strict_schema(strict.schema, target=target) == []
    assert strict.name == "Building"
    text = "\n".join(strict.changes)
    assert "(root): set additionalProperties false" in text
    assert "(root): required now lists every property (added height_ft, kind, tags, previous_address)" in text
    assert 'properties.kind: dropped default "office"' in text
    assert 'properties.kind: made nullable (type ["string", "null"])' in text
    assert "properties.address: inlined $ref #/$defs/Address (it had sibling keywords)" in text
    assert "properties.name: removed unsupported 'minLength' (1)" in text
    assert "$defs.Address: set additionalProperties false" in text
    props = strict.schema["properties"]
    assert props["kind"]["enum"] == ["office", "residential", None]
    assert props["address"]["description"] == "where it stands"
    assert "$ref" not in props["address"]
    assert raw == Building.model_json_schema()  # the input is not modified


def test_loose_schema_is_converted_and_keywords_kept_per_target() -> None:
    loose = {
        "title": "Item",
        "properties": {
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "count": {"type": "integer", "minimum": 0, "default": 0},
            "parts": {"type": "array", "items": {"properties": {"p": {"type": "string"}}}},
            "shape": {"oneOf": [{"type": "string"}, {"type": "number"}]},
            "wrapped": {"allOf": [{"$ref": "#/$defs/W"}], "description": "one W"},
        },
        "required": ["code"],
        "$defs": {"W": {"type": "object", "properties": {"w": {"type": "string"}}}},
    }
    original = copy.deepcopy(loose)
    openai = to_strict_schema(loose, target="openai")
    azure = to_strict_schema(loose, target="azure")
    assert loose == original
    assert openai.name == "Item"
    assert lint_strict_schema(openai.schema, target="openai") == []
    assert lint_strict_schema(azure.schema, target="azure") == []
    assert openai.schema["properties"]["code"]["pattern"] == "^[A-Z]{3}$"
    assert "pattern" not in azure.schema["properties"]["code"]
    assert openai.schema["properties"]["count"]["type"] == ["integer", "null"]
    assert "properties.shape: oneOf replaced by anyOf" in openai.changes
    assert "properties.wrapped: inlined single allOf" in openai.changes
    assert "(root): added type object" in openai.changes
    assert "properties.parts.items: added type object" in openai.changes


def test_response_format_for_builds_the_request_object() -> None:
    rf = response_format_for(Building)
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == "Building"
    assert rf["json_schema"]["strict"] is True
    assert lint_strict_schema(rf["json_schema"]["schema"]) == []
    assert response_format_for(BUILDING, name="building_info_schema")["json_schema"]["schema"] == BUILDING


def test_response_format_for_refuses_what_it_cannot_fix() -> None:
    with pytest.raises(LintError, match="6 levels of nesting exceeds limit of 5") as info:
        response_format_for(nested(6), name="deep", target="azure")
    assert info.value.findings and info.value.findings[0].rule == "schema.nesting_depth"
    with pytest.raises(ValueError, match="must match"):
        response_format_for(BUILDING, name="has space")


def test_converter_rejects_other_inputs() -> None:
    with pytest.raises(TypeError, match="pydantic model class"):
        to_strict_schema(42)


class TreeNode(BaseModel):
    name: str
    children: list["TreeNode"] = []


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Cat | Dog = Field(discriminator="kind")
    seen_on: Optional[str] = Field(None, json_schema_extra={"format": "date"})


@pytest.mark.parametrize("target", ["azure", "openai"])
@pytest.mark.parametrize("model", [TreeNode, Pet])
def test_recursive_and_discriminated_models_convert_cleanly(model: type[BaseModel], target: str) -> None:
    strict = to_strict_schema(model, target=target)
    assert lint_strict_schema(strict.schema, target=target) == []
    if model is Pet:
        assert "properties.pet: oneOf replaced by anyOf" in strict.changes
        branch = strict.schema["properties"]["seen_on"]["anyOf"][0]
        assert ("format" in branch) == (target == "openai")
        assert "format" not in strict.schema["properties"]["seen_on"]
    else:
        assert strict.changes[0] == "(root): inlined $ref #/$defs/TreeNode (it had sibling keywords)"
