"""Strict-mode JSON Schema rules for Structured Outputs: a linter and a converter.

`lint_strict_schema` checks a schema against every strict-mode rule and size limit of the
target (``openai``: the current keyword set and limits; ``azure``: the older, narrower set
that Azure's documentation still lists). `to_strict_schema` turns a pydantic model or a loose
schema into a strict one and says what it changed; `response_format_for` wraps the result in
the ``response_format`` object a chat request carries.

Paths and messages
------------------
Every `Finding` carries two locations:

* ``Finding.path`` is a readable JSON path from the object that was linted, e.g.
  ``schema.properties.x.default`` (dots between keys, ``[0]`` for list positions, ``["a b"]``
  for keys that are not plain identifiers). `lint_strict_schema` roots it at ``path_prefix``
  (default ``"schema"``); `batchkit.lint` roots it at the request body or the file line.
* ``Finding.message`` is the text the service answers with, which names the place the way the
  service does, as a ``context=(...)`` tuple of the keys leading to the offending schema node:
  ``Invalid schema for response_format 'info': In context=('properties', 'x'), 'default' is not
  permitted.`` It can be put verbatim in an HTTP 400 body (see `Finding.error_body`).

This module has no dependency on the ``openai`` package.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence

Target = Literal["azure", "openai"]
Severity = Literal["error", "warning"]
Scope = Literal["batch", "request"]

__all__ = [
    "Finding",
    "RuleSet",
    "RULE_SETS",
    "StrictSchema",
    "SchemaChange",
    "CONSTRAINT_KEYWORDS",
    "lint_strict_schema",
    "to_strict_schema",
    "checking_schema",
    "schema_changes_table",
    "response_format_for",
    "render_path",
    "SCHEMA_RULES",
]


# --------------------------------------------------------------------------------------------
# Finding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One problem found before upload.

    Attributes:
        line: 1-based physical line of the batch file, or None (file-level finding, or a
            request/schema checked on its own).
        code: for batch-scope findings the validation code the service reports (spec §4.2,
            e.g. ``invalid_json_line``, ``duplicate_custom_id``); for request-scope findings the
            error code of the model endpoint's HTTP 400 (``unknown_parameter``,
            ``invalid_value``, ...), and ``invalid_schema`` for strict-schema rules (whose real
            400 carries ``code: null``; `error_body` does that).
        path: readable JSON path of the offending value (see the module docstring).
        message: the service's message text (verbatim-ready).
        severity: ``error`` (the service rejects it) or ``warning`` (accepted, but likely a
            mistake or a cost surprise).
        scope: ``batch`` (fails the whole batch during validation) or ``request`` (that line
            gets a 400 line in the error file).
        custom_id: the line's ``custom_id`` when known.
        param: the ``param`` of the 400 body (request scope) or of the batch error.
        fix: what to do about it.
        rule: the specific rule id (e.g. ``schema.default_not_permitted``); one per check, so
            tests and reports can tell rules apart where several share a code.
    """

    line: int | None
    code: str
    path: str
    message: str
    severity: Severity = "error"
    scope: Scope = "request"
    custom_id: str | None = None
    param: str | None = None
    fix: str | None = None
    rule: str = ""

    @property
    def is_error(self) -> bool:
        """True when the service would reject the input because of this finding."""
        return self.severity == "error"

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-serialisable)."""
        return asdict(self)

    def error_body(self) -> dict[str, Any]:
        """The HTTP 400 body the model endpoint answers with for a request-scope finding:
        ``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``."""
        code = None if self.code == "invalid_schema" else self.code
        return {
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "param": self.param,
                "code": code,
            }
        }


# --------------------------------------------------------------------------------------------
# Rule sets
# --------------------------------------------------------------------------------------------

_BASE_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "anyOf", "enum",
        "const", "$ref", "$defs", "definitions", "title", "description", "$schema", "$id",
    }
)
_OPENAI_EXTRA = frozenset(
    {
        "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "multipleOf", "minItems", "maxItems",
    }
)
# JSON Schema vocabulary the services reject in strict mode when not in the target's allow-list.
_KNOWN_KEYWORDS = frozenset(
    {
        "allOf", "oneOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
        "dependencies", "patternProperties", "unevaluatedProperties", "propertyNames",
        "minProperties", "maxProperties", "unevaluatedItems", "contains", "minContains",
        "maxContains", "uniqueItems", "prefixItems", "additionalItems", "minLength", "maxLength",
        "contentEncoding", "contentMediaType", "contentSchema", "$anchor", "$dynamicRef",
        "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor", "$vocabulary", "nullable",
        "discriminator",
    }
    | _OPENAI_EXTRA
)
# Annotation keywords that carry no constraint: reported as warnings, dropped by the converter.
_ANNOTATIONS = frozenset({"examples", "example", "readOnly", "writeOnly", "deprecated", "$comment"})
# Keys that say what a node is; a node with none of them gets `schema.missing_type`
# (composition keywords are reported as unsupported instead).
_TYPE_LIKE = ("type", "anyOf", "enum", "const", "allOf", "oneOf", "not", "if")
# Constraint keywords and the types they apply to.
_KEYWORD_KIND: dict[str, tuple[str, ...]] = {
    "pattern": ("string",), "format": ("string",),
    "minimum": ("number", "integer"), "maximum": ("number", "integer"),
    "exclusiveMinimum": ("number", "integer"), "exclusiveMaximum": ("number", "integer"),
    "multipleOf": ("number", "integer"),
    "minItems": ("array",), "maxItems": ("array",),
    "items": ("array",), "properties": ("object",), "additionalProperties": ("object",),
    "required": ("object",),
}
_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)


@dataclass(frozen=True)
class RuleSet:
    """Keyword allow-list and size limits of one target."""

    name: str
    max_properties: int
    max_depth: int
    max_string_length: int
    max_enum_values: int
    large_enum_threshold: int
    max_large_enum_chars: int
    keywords: frozenset[str]
    formats: frozenset[str]


RULE_SETS: dict[str, RuleSet] = {
    "openai": RuleSet(
        name="openai",
        max_properties=5000,
        max_depth=10,
        max_string_length=120_000,
        max_enum_values=1000,
        large_enum_threshold=250,
        max_large_enum_chars=15_000,
        keywords=_BASE_KEYWORDS | _OPENAI_EXTRA,
        formats=_FORMATS,
    ),
    "azure": RuleSet(
        name="azure",
        max_properties=100,
        max_depth=5,
        max_string_length=15_000,
        max_enum_values=500,
        large_enum_threshold=250,
        max_large_enum_chars=7_500,
        keywords=_BASE_KEYWORDS,
        formats=frozenset(),
    ),
}

#: Every rule `lint_strict_schema` checks, with its severity (documentation and tests).
SCHEMA_RULES: dict[str, Severity] = {
    "schema.not_an_object": "error",
    "schema.root_not_object": "error",
    "schema.root_any_of": "error",
    "schema.additional_properties": "error",
    "schema.required_missing": "error",
    "schema.required_unknown_key": "error",
    "schema.properties_not_object": "error",
    "schema.default_not_permitted": "error",
    "schema.unsupported_keyword": "error",
    "schema.unknown_keyword": "warning",
    "schema.missing_type": "error",
    "schema.invalid_type": "error",
    "schema.array_items_missing": "error",
    "schema.ref_siblings": "error",
    "schema.ref_unresolved": "error",
    "schema.any_of_invalid": "error",
    "schema.any_of_identical_first_keys": "error",
    "schema.enum_invalid": "error",
    "schema.enum_type_mismatch": "error",
    "schema.format_unsupported": "error",
    "schema.pattern_invalid": "warning",
    "schema.keyword_type_mismatch": "warning",
    "schema.nesting_depth": "error",
    "schema.too_many_properties": "error",
    "schema.string_length": "error",
    "schema.too_many_enum_values": "error",
    "schema.large_enum_length": "error",
}


def _ruleset(target: str) -> RuleSet:
    try:
        return RULE_SETS[target]
    except KeyError:
        raise ValueError(f"unknown target {target!r}: use 'azure' or 'openai'") from None


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------

# Walk at most this many keys deep; deeper schemas get the nesting-depth finding only.
_MAX_WALK = 64

_IDENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")


def render_path(prefix: str, parts: Sequence[str | int]) -> str:
    """Render a readable JSON path: ``prefix.key.key[0]["odd key"]``."""
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += "[" + json.dumps(part, ensure_ascii=False) + "]"
    return out


def _ctx(parts: Sequence[str | int]) -> str:
    return repr(tuple(str(p) for p in parts))


# --------------------------------------------------------------------------------------------
# Linter
# --------------------------------------------------------------------------------------------


def _type_list(node: Mapping[str, Any]) -> list[str] | None:
    t = node.get("type")
    if isinstance(t, str):
        return [t]
    if isinstance(t, list) and all(isinstance(x, str) for x in t):
        return list(t)
    return None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _value_matches(value: Any, types: Iterable[str]) -> bool:
    kind = _json_kind(value)
    for t in types:
        if t == kind or (t == "number" and kind == "integer"):
            return True
        if t == "integer" and kind == "number" and float(value).is_integer():
            return True
    return False


class _SchemaLinter:
    def __init__(
        self, root: Any, *, name: str, rules: RuleSet, prefix: str, param: str, subject: str
    ) -> None:
        self.subject = subject
        self.root = root
        self.name = name
        self.rules = rules
        self.prefix = prefix
        self.param = param
        self.findings: list[Finding] = []
        self.properties = 0
        self.string_length = 0
        self.enum_values = 0
        self.defs: dict[str, Any] = {}
        self._def_depth: dict[str, int] = {}

    # -- helpers ---------------------------------------------------------------------------
    def add(
        self,
        rule: str,
        parts: Sequence[str | int],
        text: str,
        fix: str,
        *,
        with_context: bool = True,
        extra_path: Sequence[str | int] = (),
    ) -> None:
        head = f"Invalid schema for {self.subject} '{self.name}': "
        body = f"In context={_ctx(parts)}, {text}" if with_context else text
        self.findings.append(
            Finding(
                line=None,
                code="invalid_schema",
                path=render_path(self.prefix, [*parts, *extra_path]),
                message=head + body,
                severity=SCHEMA_RULES[rule],
                scope="request",
                param=self.param,
                fix=fix,
                rule=rule,
            )
        )

    # -- entry -----------------------------------------------------------------------------
    def run(self) -> list[Finding]:
        root = self.root
        if not isinstance(root, dict):
            got = "None" if not isinstance(root, str) else root
            self.add(
                "schema.root_not_object", [],
                f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{got}\"'.",
                "Give the schema as a JSON object whose root is {\"type\": \"object\", ...}.",
                with_context=False,
            )
            return self.findings
        for key in ("$defs", "definitions"):
            defs = root.get(key)
            if isinstance(defs, dict):
                for dname, dnode in defs.items():
                    self.defs[f"#/{key}/{dname}"] = dnode
        if "anyOf" in root:
            self.add(
                "schema.root_any_of", [],
                "'anyOf' is not permitted at the root; the root must be an object.",
                "Put the alternatives in a property of a root object: "
                "{\"type\":\"object\",\"properties\":{\"item\":{\"anyOf\":[...]}}, ...}.",
            )
        elif root.get("type") != "object":
            t = root.get("type")
            shown = "None" if t is None else (t if isinstance(t, str) else json.dumps(t))
            self.add(
                "schema.root_not_object", [],
                f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{shown}\"'.",
                "Make the root {\"type\": \"object\", \"properties\": {...}, "
                "\"required\": [...], \"additionalProperties\": false}.",
                with_context=False,
            )
        max_level, deepest = self.walk(root, [], level=0, is_root=True)
        for key in ("$defs", "definitions"):
            defs = root.get(key)
            if isinstance(defs, dict):
                for dname, dnode in defs.items():
                    self.string_length += len(dname)
                    self.walk(dnode, [key, dname], level=0)
        self.check_totals(max_level, deepest)
        return self.findings

    def check_totals(self, max_level: int, deepest: list[str | int]) -> None:
        r = self.rules
        if max_level > r.max_depth:
            self.add(
                "schema.nesting_depth", deepest,
                f"{max_level} levels of nesting exceeds limit of {r.max_depth}.",
                f"Flatten the schema to at most {r.max_depth} levels of nested objects "
                f"(target '{r.name}').",
                with_context=False,
            )
        if self.properties > r.max_properties:
            self.add(
                "schema.too_many_properties", [],
                f"{self.properties} object properties exceeds limit of {r.max_properties}.",
                f"Use at most {r.max_properties} properties in total (all objects and "
                "definitions together); split the task into several requests.",
                with_context=False,
            )
        if self.string_length > r.max_string_length:
            self.add(
                "schema.string_length", [],
                "Total string length of property names, definition names, enum values and const "
                f"values ({self.string_length}) exceeds limit of {r.max_string_length}.",
                "Shorten property names and enum values or split the schema.",
                with_context=False,
            )
        if self.enum_values > r.max_enum_values:
            self.add(
                "schema.too_many_enum_values", [],
                f"{self.enum_values} enum values in total exceeds limit of {r.max_enum_values}.",
                f"Keep the enums of the schema to {r.max_enum_values} values in total.",
                with_context=False,
            )

    # -- depth of a definition (following refs once, cycles count 0) ----------------------
    def def_depth(self, ref: str, stack: frozenset[str] = frozenset()) -> int:
        if ref in self._def_depth:
            return self._def_depth[ref]
        if ref in stack or ref not in self.defs:
            return 0
        depth = self._depth_of(self.defs[ref], stack | {ref})
        self._def_depth[ref] = depth
        return depth

    def _depth_of(self, node: Any, stack: frozenset[str], hops: int = 0) -> int:
        if not isinstance(node, dict) or hops > _MAX_WALK:
            return 0
        if isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            return 0 if ref == "#" else self.def_depth(ref, stack)
        own = 1 if "object" in (_type_list(node) or []) else 0
        children: list[Any] = []
        props = node.get("properties")
        if isinstance(props, dict):
            children.extend(props.values())
        if isinstance(node.get("items"), dict):
            children.append(node["items"])
        if isinstance(node.get("anyOf"), list):
            children.extend(node["anyOf"])
        return own + max((self._depth_of(c, stack, hops + 1) for c in children), default=0)

    # -- node walk -------------------------------------------------------------------------
    def walk(
        self, node: Any, parts: list[str | int], *, level: int, is_root: bool = False
    ) -> tuple[int, list[str | int]]:
        """Check one node and its children. Returns (deepest object level, its parts)."""
        if len(parts) > _MAX_WALK:
            # Far beyond every limit: stop here (the depth finding reports it), keep the stack small.
            return max(level, self.rules.max_depth + 1), parts
        if not isinstance(node, dict):
            if not is_root:
                self.add(
                    "schema.not_an_object", parts,
                    f"schema must be a JSON object, got {_json_kind(node)} {json.dumps(node)[:40]}.",
                    "Replace the value by a schema object such as {\"type\": \"string\"}.",
                )
            return level, parts

        # $ref nodes: no siblings, target must resolve; children are not walked here.
        if "$ref" in node:
            ref = node["$ref"]
            siblings = sorted(k for k in node if k != "$ref")
            if siblings:
                shown = "{" + ", ".join(repr(k) for k in siblings) + "}"
                self.add(
                    "schema.ref_siblings", parts,
                    f"$ref cannot have keywords {shown}.",
                    "Remove the keywords next to $ref, or inline the referenced definition "
                    "(to_strict_schema does this).",
                )
            if not isinstance(ref, str) or (ref != "#" and ref not in self.defs):
                self.add(
                    "schema.ref_unresolved", parts,
                    f"reference {json.dumps(ref)} can't be resolved.",
                    "Point $ref at '#' or at an entry of the root's $defs, e.g. '#/$defs/Item'.",
                    extra_path=["$ref"],
                )
                return level, parts
            extra = 0 if ref == "#" else self.def_depth(ref)
            return level + extra, parts

        self.check_keywords(node, parts, is_root=is_root)
        types = _type_list(node)
        has_any_of = "anyOf" in node
        if "type" in node and types is None:
            self.add(
                "schema.invalid_type", parts,
                f"'type' must be a string or a list of strings, got {json.dumps(node['type'])[:60]}.",
                "Use one of " + ", ".join(repr(t) for t in _TYPES) + ", or a list such as "
                "[\"string\", \"null\"].",
                extra_path=["type"],
            )
            types = []
        elif types is not None:
            bad = [t for t in types if t not in _TYPES] or ([] if types else ["[]"])
            if bad:
                self.add(
                    "schema.invalid_type", parts,
                    f"type {bad[0]!r} is not supported; supported types are "
                    + ", ".join(repr(t) for t in _TYPES) + ".",
                    "Use one of the supported JSON types.",
                    extra_path=["type"],
                )
        elif not is_root and not any(k in node for k in _TYPE_LIKE):
            self.add(
                "schema.missing_type", parts,
                "schema must have a 'type' key.",
                "Add \"type\" (e.g. \"string\"), or use anyOf / $ref / enum.",
            )
        types = types or []

        deepest_level, deepest_parts = level, list(parts)

        def child(sub: Any, sub_parts: list[str | int], sub_level: int) -> None:
            nonlocal deepest_level, deepest_parts
            lv, pp = self.walk(sub, sub_parts, level=sub_level)
            if lv > deepest_level:
                deepest_level, deepest_parts = lv, pp

        if "object" in types:
            level += 1
            deepest_level, deepest_parts = level, list(parts)
            self.check_object(node, parts)
            props = node.get("properties")
            if isinstance(props, dict):
                for key, sub in props.items():
                    self.properties += 1
                    self.string_length += len(str(key))
                    child(sub, [*parts, "properties", key], level)
        if "array" in types:
            items = node.get("items")
            if items is None:
                self.add(
                    "schema.array_items_missing", parts,
                    "array schema missing items.",
                    "Add \"items\": {<schema of one element>}.",
                )
            elif isinstance(items, dict):
                child(items, [*parts, "items"], level)
            else:
                self.add(
                    "schema.not_an_object", [*parts, "items"],
                    "'items' must be a single schema object (tuple validation is not supported).",
                    "Use \"items\": {<one schema>} for every element.",
                )
        if has_any_of:
            any_of = node["anyOf"]
            if not isinstance(any_of, list) or not any_of:
                self.add(
                    "schema.any_of_invalid", parts,
                    "'anyOf' must be a non-empty array of schemas.",
                    "Give anyOf a list of at least one schema.",
                    extra_path=["anyOf"],
                )
            else:
                for i, sub in enumerate(any_of):
                    child(sub, [*parts, "anyOf", str(i)], level)
                self.check_any_of_first_keys(any_of, parts)
        self.check_enum_const(node, parts, types)
        self.check_format_pattern(node, parts)
        self.check_keyword_kinds(node, parts, types)
        return deepest_level, deepest_parts

    def check_keywords(self, node: Mapping[str, Any], parts: list[str | int], *, is_root: bool) -> None:
        for key in node:
            if key == "default":
                self.add(
                    "schema.default_not_permitted", parts,
                    "'default' is not permitted.",
                    "Remove 'default'; make the field nullable and put the default in your code "
                    "(to_strict_schema does this).",
                    extra_path=["default"],
                )
            elif key in self.rules.keywords:
                if key in ("$defs", "definitions", "$schema", "$id") and not is_root:
                    self.add(
                        "schema.unsupported_keyword", parts,
                        f"'{key}' is only permitted at the root.",
                        f"Move '{key}' to the root schema.",
                        extra_path=[key],
                    )
            elif key in _KNOWN_KEYWORDS:
                self.add(
                    "schema.unsupported_keyword", parts,
                    f"'{key}' is not permitted.",
                    self._keyword_fix(key),
                    extra_path=[key],
                )
            else:
                self.add(
                    "schema.unknown_keyword", parts,
                    f"'{key}' is not a supported keyword and will be ignored.",
                    f"Remove '{key}' (describe the intent in 'description' instead).",
                    extra_path=[key],
                )

    def _keyword_fix(self, key: str) -> str:
        if key in _OPENAI_EXTRA:
            return (
                f"'{key}' is not supported on target '{self.rules.name}': remove it and check the "
                "constraint after parsing (or state it in 'description')."
            )
        if key in ("allOf",):
            return "Merge the allOf parts into one object schema (to_strict_schema inlines a single allOf)."
        if key in ("oneOf",):
            return "Use 'anyOf' instead of 'oneOf'."
        return f"Remove '{key}'; strict mode does not support it."

    def check_object(self, node: Mapping[str, Any], parts: list[str | int]) -> None:
        if node.get("additionalProperties") is not False:
            self.add(
                "schema.additional_properties", parts,
                "'additionalProperties' is required to be supplied and to be false.",
                "Add \"additionalProperties\": false to this object.",
            )
        props = node.get("properties", {})
        if not isinstance(props, dict):
            self.add(
                "schema.properties_not_object", parts,
                "'properties' must be an object mapping names to schemas.",
                "Give properties as {\"name\": {schema}, ...}.",
                extra_path=["properties"],
            )
            return
        required = node.get("required")
        req_list = required if isinstance(required, list) else []
        missing = [k for k in props if k not in req_list]
        if missing or (props and not isinstance(required, list)):
            first = missing[0] if missing else next(iter(props))
            self.add(
                "schema.required_missing", parts,
                "'required' is required to be supplied and to be an array including every key "
                f"in properties. Missing '{first}'.",
                "List every property in 'required' ("
                + ", ".join(repr(k) for k in missing[:10])
                + "); make optional ones nullable, e.g. \"type\": [\"string\", \"null\"].",
            )
        for key in req_list:
            if not isinstance(key, str) or key not in props:
                self.add(
                    "schema.required_unknown_key", parts,
                    f"'required' includes {key!r}, which is not a key in 'properties'.",
                    f"Remove {key!r} from 'required' or add it to 'properties'.",
                    extra_path=["required"],
                )

    def check_any_of_first_keys(self, any_of: list[Any], parts: list[str | int]) -> None:
        """Object branches must be told apart by their first key: two branches whose first
        property has the same name and the same schema (e.g. no distinct ``const``) clash."""
        seen: dict[tuple[str, str], int] = {}
        for i, sub in enumerate(any_of):
            if isinstance(sub, dict) and isinstance(sub.get("$ref"), str):
                sub = self.defs.get(sub["$ref"], sub)
            if isinstance(sub, dict) and "object" in (_type_list(sub) or []):
                props = sub.get("properties")
                if isinstance(props, dict) and props:
                    first = next(iter(props))
                    key = (first, json.dumps(props[first], sort_keys=True, default=str))
                    if key in seen:
                        self.add(
                            "schema.any_of_identical_first_keys", parts,
                            "objects provided via 'anyOf' must not share identical first keys. "
                            "Consider adding a discriminator key or rearranging the properties to "
                            "ensure the first key is unique.",
                            f"Branches {seen[key]} and {i} both start with '{first}' of the same "
                            "schema: start each branch with a distinct key, or with a key such as "
                            "\"kind\" holding a different const in each branch.",
                            extra_path=["anyOf"],
                        )
                        return
                    seen[key] = i

    def check_enum_const(self, node: Mapping[str, Any], parts: list[str | int], types: list[str]) -> None:
        if "enum" in node:
            enum = node["enum"]
            if not isinstance(enum, list) or not enum:
                self.add(
                    "schema.enum_invalid", parts,
                    "'enum' must be a non-empty array.",
                    "Give enum a list of allowed values.",
                    extra_path=["enum"],
                )
            else:
                self.enum_values += len(enum)
                strings = [v for v in enum if isinstance(v, str)]
                chars = sum(len(v) for v in strings)
                self.string_length += chars
                if len(strings) > self.rules.large_enum_threshold and chars > self.rules.max_large_enum_chars:
                    self.add(
                        "schema.large_enum_length", parts,
                        f"Total string length ({chars}) of values of an enum with {len(enum)} "
                        f"values exceeds limit of {self.rules.max_large_enum_chars}.",
                        "Shorten the values or split the enum.",
                        extra_path=["enum"],
                    )
                if types:
                    for i, value in enumerate(enum):
                        if not _value_matches(value, types):
                            self.add(
                                "schema.enum_type_mismatch", parts,
                                f"enum value {json.dumps(value)} does not validate against "
                                f"{{'type': {node.get('type')!r}}}.",
                                "Make every enum value match the declared type (add \"null\" to "
                                "the type for a null value).",
                                extra_path=["enum", i],
                            )
                            break
        if "const" in node:
            value = node["const"]
            if isinstance(value, str):
                self.string_length += len(value)
            if types and not _value_matches(value, types):
                self.add(
                    "schema.enum_type_mismatch", parts,
                    f"const value {json.dumps(value)} does not validate against "
                    f"{{'type': {node.get('type')!r}}}.",
                    "Make the const value match the declared type.",
                    extra_path=["const"],
                )

    def check_keyword_kinds(self, node: Mapping[str, Any], parts: list[str | int], types: list[str]) -> None:
        """A constraint keyword on a node of another type (e.g. ``pattern`` on an integer) has
        no effect: warn, so the constraint is not silently lost."""
        for key, kind in _KEYWORD_KIND.items():
            if key in node and key in self.rules.keywords and not any(t in kind for t in types):
                where = "a schema without 'type'" if not types else f"type {node.get('type')!r}"
                self.add(
                    "schema.keyword_type_mismatch", parts,
                    f"'{key}' applies to {' or '.join(kind)} values and has no effect on {where}.",
                    f"Move '{key}' to the schema of the {' or '.join(kind)} it constrains.",
                    extra_path=[key],
                )

    def check_format_pattern(self, node: Mapping[str, Any], parts: list[str | int]) -> None:
        if "format" in node and "format" in self.rules.keywords:
            fmt = node["format"]
            if not isinstance(fmt, str) or fmt not in self.rules.formats:
                self.add(
                    "schema.format_unsupported", parts,
                    f"format {json.dumps(fmt)} is not supported. Supported formats are: "
                    + ", ".join(sorted(self.rules.formats)) + ".",
                    "Use one of the supported formats or remove 'format'.",
                    extra_path=["format"],
                )
        if "pattern" in node and "pattern" in self.rules.keywords:
            pat = node["pattern"]
            try:
                if not isinstance(pat, str):
                    raise TypeError("pattern must be a string")
                re.compile(pat)
            except (re.error, TypeError) as exc:
                self.add(
                    "schema.pattern_invalid", parts,
                    f"pattern {json.dumps(pat)[:80]} may not be a valid regular expression ({exc}).",
                    "Fix the regular expression.",
                    extra_path=["pattern"],
                )


def lint_strict_schema(
    schema: Any,
    *,
    name: str = "schema",
    target: Target = "openai",
    path_prefix: str = "schema",
    param: str = "response_format",
    subject: str = "response_format",
) -> list[Finding]:
    """Check a strict-mode JSON Schema against every rule and limit of `target`.

    Args:
        schema: the value of ``json_schema.schema`` (any JSON value is accepted; a non-object
            gets a finding, never an exception).
        name: the ``json_schema.name``, quoted in the messages like the service does.
        target: ``"openai"`` (current keyword set and limits) or ``"azure"`` (older, narrower
            set: no pattern/format/min/max keywords; 100 properties, 5 levels, 15,000 chars,
            500 enum values).
        path_prefix: the JSON path the returned ``Finding.path`` values start with.
        param: the ``param`` of the 400 answer (``response_format`` for chat).
        subject: what the message says the schema belongs to: ``response_format`` or, for a
            strict tool, ``function`` (``Invalid schema for function 'name': ...``).

    Returns:
        Findings in document order (size-limit findings last); ``[]`` for a compliant schema.
        Nesting depth counts nested object schemas, the root object being level 1 (arrays and
        anyOf add no level; ``$ref`` targets count where they are used).
    """
    rules = _ruleset(target)
    return _SchemaLinter(
        schema, name=name, rules=rules, prefix=path_prefix, param=param, subject=subject
    ).run()


# --------------------------------------------------------------------------------------------
# Converter
# --------------------------------------------------------------------------------------------


#: Keywords that restrict which values are valid (as opposed to annotations such as ``examples``).
#: When the target does not support one, `to_strict_schema` drops it and records it as *dropped*;
#: the results parser checks the answers against them again (see `checking_schema`).
CONSTRAINT_KEYWORDS: frozenset[str] = frozenset(
    {
        "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "multipleOf", "minItems", "maxItems", "minLength", "maxLength", "uniqueItems",
        "minProperties", "maxProperties", "allOf", "not", "if", "then", "else",
        "dependentRequired", "dependentSchemas", "dependencies", "patternProperties",
        "unevaluatedProperties", "propertyNames", "unevaluatedItems", "contains", "minContains",
        "maxContains", "prefixItems", "additionalItems", "contentSchema",
    }
)
#: The dropped constraints that results parsing can check again (value-level keywords that need
#: no structural conversion). Others (e.g. ``not``, ``if``) are reported but not re-checked.
CHECKABLE_KEYWORDS: frozenset[str] = frozenset(
    {
        "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "multipleOf", "minItems", "maxItems", "minLength", "maxLength", "uniqueItems",
        "minProperties", "maxProperties",
    }
)


@dataclass(frozen=True)
class SchemaChange:
    """One change `to_strict_schema` made to a schema.

    Attributes:
        path: readable path of the schema node, e.g. ``properties.score`` (``(root)`` for the root).
        action: what was done, one of ``set_additional_properties``, ``required_all``,
            ``made_nullable``, ``dropped_default``, ``dropped_constraint``, ``dropped_keyword``,
            ``inlined_ref``, ``inlined_all_of``, ``one_of_to_any_of``, ``moved_keyword``,
            ``added_type``, ``removed_root_only``.
        detail: the change in words, e.g. ``removed unsupported 'maximum' (5)``.
        keyword: the JSON Schema keyword concerned, when there is one.
        value: the value it had (for a dropped keyword or default).
        dropped: True when a constraint of the original schema is no longer enforced by the
            service for this target (answers may break it).
        checked: for a dropped constraint, True when results parsing checks it again against the
            original schema (answers that break it get the outcome ``invalid``).
    """

    path: str
    action: str
    detail: str
    keyword: str | None = None
    value: Any = None
    dropped: bool = False
    checked: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict."""
        return asdict(self)


@dataclass
class StrictSchema:
    """A converted schema and what the conversion changed.

    Attributes:
        schema: the strict schema (a new dict; the input is never modified).
        records: every change as a `SchemaChange`, in schema order.
        name: a name fit for ``json_schema.name`` (the model's class name or the schema title).
        target: the rule set the conversion applied (``azure`` or ``openai``).
        original: the schema before conversion (a JSON schema dict; a model's ``model_json_schema``).
    """

    schema: dict[str, Any]
    records: list[SchemaChange] = field(default_factory=list)
    name: str = "schema"
    target: str = "openai"
    original: dict[str, Any] | None = None

    @property
    def changes(self) -> list[str]:
        """One readable line per change, e.g. ``properties.age: dropped default 0``."""
        return [str(record) for record in self.records]

    @property
    def dropped(self) -> list[SchemaChange]:
        """The constraints of the original the target does not enforce (answers may break them)."""
        return [record for record in self.records if record.dropped]

    def table(self) -> Any:
        """The changes as a short table for a notebook (`schema_changes_table`)."""
        return schema_changes_table(self)


def _schema_of(model_or_schema: Any) -> tuple[dict[str, Any], str]:
    if isinstance(model_or_schema, type) and hasattr(model_or_schema, "model_json_schema"):
        return model_or_schema.model_json_schema(), model_or_schema.__name__
    if hasattr(model_or_schema, "json_schema") and callable(model_or_schema.json_schema):
        # pydantic TypeAdapter
        return model_or_schema.json_schema(), "schema"
    if isinstance(model_or_schema, Mapping):
        schema = copy.deepcopy(dict(model_or_schema))
        title = schema.get("title")
        return schema, title if isinstance(title, str) else "schema"
    raise TypeError(
        "to_strict_schema expects a pydantic model class, a pydantic TypeAdapter or a JSON "
        f"Schema dict, got {type(model_or_schema).__name__}"
    )


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64]
    return cleaned or "schema"


class _Converter:
    def __init__(self, root: dict[str, Any], rules: RuleSet) -> None:
        self.root = root
        self.rules = rules
        self.records: list[SchemaChange] = []

    def note(
        self,
        parts: Sequence[str | int],
        action: str,
        text: str,
        *,
        keyword: str | None = None,
        value: Any = None,
        dropped: bool = False,
    ) -> None:
        self.records.append(
            SchemaChange(
                path=render_path("", parts) or "(root)",
                action=action,
                detail=text,
                keyword=keyword,
                value=value,
                dropped=dropped,
                checked=dropped and keyword in CHECKABLE_KEYWORDS,
            )
        )

    def resolve(self, ref: str) -> dict[str, Any] | None:
        for key in ("$defs", "definitions"):
            prefix = f"#/{key}/"
            if ref.startswith(prefix):
                defs = self.root.get(key)
                if isinstance(defs, dict):
                    target = defs.get(ref[len(prefix):])
                    return target if isinstance(target, dict) else None
        return None

    def make_nullable(self, node: dict[str, Any], parts: Sequence[str | int]) -> dict[str, Any]:
        if "$ref" in node:
            self.note(parts, "made_nullable", "made nullable (anyOf with null)")
            return {"anyOf": [node, {"type": "null"}]}
        if "anyOf" in node and isinstance(node["anyOf"], list):
            if not any(isinstance(b, dict) and b.get("type") == "null" for b in node["anyOf"]):
                node["anyOf"].append({"type": "null"})
                self.note(parts, "made_nullable", "made nullable (null branch added to anyOf)")
            return node
        types = _type_list(node)
        if types is not None:
            if "null" not in types:
                node["type"] = [*types, "null"]
                if isinstance(node.get("enum"), list) and None not in node["enum"]:
                    node["enum"].append(None)
                self.note(parts, "made_nullable", "made nullable (type " + json.dumps(node["type"]) + ")")
            return node
        if "enum" in node and isinstance(node["enum"], list):
            if None not in node["enum"]:
                node["enum"].append(None)
                self.note(parts, "made_nullable", "made nullable (null added to enum)")
            return node
        if "const" in node:
            self.note(parts, "made_nullable", "made nullable (anyOf const or null)")
            return {"anyOf": [node, {"type": "null"}]}
        return node

    def push_into_branches(self, node: dict[str, Any], parts: Sequence[str | int]) -> None:
        """Move constraint keywords next to ``anyOf`` (pydantic puts ``format`` of an
        ``Optional[str]`` there) into the branches of the type they constrain."""
        if "type" in node:
            return
        for key, kinds in _KEYWORD_KIND.items():
            if key not in node or key in ("properties", "required", "additionalProperties", "items"):
                continue
            targets = [b for b in node["anyOf"] if isinstance(b, dict)
                       and any(t in kinds for t in (_type_list(b) or []))]
            value = node.pop(key)
            for branch in targets:
                branch.setdefault(key, copy.deepcopy(value))
            if targets:
                self.note(parts, "moved_keyword", f"moved '{key}' into the {'/'.join(kinds)} branch of anyOf",
                          keyword=key, value=value)
            else:
                self.note(parts, "dropped_constraint" if key in CONSTRAINT_KEYWORDS else "dropped_keyword",
                          f"removed '{key}' (no {'/'.join(kinds)} branch in anyOf)", keyword=key, value=value,
                          dropped=key in CONSTRAINT_KEYWORDS)

    def convert(self, node: Any, parts: list[str | int], *, is_root: bool = False) -> Any:
        if not isinstance(node, dict):
            return node
        node = dict(node)
        # inline a $ref that has siblings
        if "$ref" in node and len(node) > 1:
            target = self.resolve(node["$ref"]) if isinstance(node["$ref"], str) else None
            if target is not None:
                ref = node["$ref"]
                siblings = {k: v for k, v in node.items() if k != "$ref"}
                node = {**copy.deepcopy(target), **siblings}
                self.note(parts, "inlined_ref", f"inlined $ref {ref} (it had sibling keywords)", keyword="$ref", value=ref)
        # a single allOf is inlined
        all_of = node.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
            inner = all_of[0]
            del node["allOf"]
            if "$ref" in inner and isinstance(inner["$ref"], str):
                resolved = self.resolve(inner["$ref"])
                if resolved is not None:
                    inner = copy.deepcopy(resolved)
            node = {**inner, **node}
            self.note(parts, "inlined_all_of", "inlined single allOf", keyword="allOf")
        if "oneOf" in node and "anyOf" not in node:
            node["anyOf"] = node.pop("oneOf")
            self.note(parts, "one_of_to_any_of", "oneOf replaced by anyOf", keyword="oneOf")
        for key in list(node):
            if key == "default":
                value = node.pop(key)
                self.note(parts, "dropped_default", f"dropped default {json.dumps(value, default=str)[:60]}", keyword="default", value=value)
            elif key in self.rules.keywords:
                if key in ("$defs", "definitions", "$schema", "$id") and not is_root:
                    node.pop(key)
                    self.note(parts, "removed_root_only", f"removed '{key}' (root only)", keyword=key)
            else:
                value = node.pop(key)
                kind = "unsupported" if key in _KNOWN_KEYWORDS else "unknown keyword"
                constraint = key in CONSTRAINT_KEYWORDS
                self.note(parts, "dropped_constraint" if constraint else "dropped_keyword",
                          f"removed {kind} '{key}' ({json.dumps(value, default=str)[:40]})",
                          keyword=key, value=value, dropped=constraint)
        fmt = node.get("format")
        if "format" in node and (not isinstance(fmt, str) or fmt not in self.rules.formats):
            value = node.pop("format")
            self.note(parts, "dropped_constraint", f"removed unsupported format {json.dumps(value, default=str)}",
                      keyword="format", value=value, dropped=True)
        if "$ref" in node:
            return node

        types = _type_list(node) or []
        if "object" in types or ("properties" in node and "type" not in node):
            if "type" not in node:
                node["type"] = "object"
                self.note(parts, "added_type", "added type object", keyword="type")
            props = node.get("properties")
            if not isinstance(props, dict):
                props = {}
                node["properties"] = props
            required = node.get("required") if isinstance(node.get("required"), list) else []
            new_props: dict[str, Any] = {}
            for key, sub in props.items():
                sub_parts = [*parts, "properties", key]
                optional = key not in required or (isinstance(sub, dict) and "default" in sub)
                converted = self.convert(sub, sub_parts)
                if optional and isinstance(converted, dict):
                    converted = self.make_nullable(converted, sub_parts)
                new_props[key] = converted
            node["properties"] = new_props
            if node.get("additionalProperties") is not False:
                self.note(parts, "set_additional_properties", "set additionalProperties false", keyword="additionalProperties")
                node["additionalProperties"] = False
            all_keys = list(new_props)
            if required != all_keys:
                missing = [k for k in all_keys if k not in required]
                if missing:
                    self.note(parts, "required_all", "required now lists every property (added " + ", ".join(missing) + ")", keyword="required")
                else:
                    self.note(parts, "required_all", "required set to the property keys", keyword="required")
                node["required"] = all_keys
        if isinstance(node.get("items"), dict):
            node["items"] = self.convert(node["items"], [*parts, "items"])
        if isinstance(node.get("anyOf"), list):
            self.push_into_branches(node, parts)
            node["anyOf"] = [
                self.convert(sub, [*parts, "anyOf", str(i)]) for i, sub in enumerate(node["anyOf"])
            ]
        if is_root:
            for key in ("$defs", "definitions"):
                defs = node.get(key)
                if isinstance(defs, dict):
                    node[key] = {d: self.convert(s, [key, d]) for d, s in defs.items()}
        return node


def to_strict_schema(model_or_schema: Any, *, target: Target = "openai") -> StrictSchema:
    """Convert a pydantic model (or a loose JSON Schema) into a strict-mode schema.

    The conversion sets ``additionalProperties: false`` on every object, lists every property in
    ``required``, makes optional properties (not required, or with a default) nullable, drops
    ``default``, inlines a ``$ref`` that has sibling keywords and a single-element ``allOf``,
    replaces ``oneOf`` by ``anyOf``, and removes keywords `target` does not support (reported).

    Args:
        model_or_schema: a pydantic ``BaseModel`` subclass, a ``TypeAdapter``, or a schema dict
            (not modified).
        target: ``"openai"`` or ``"azure"`` (which keywords survive).

    Returns:
        `StrictSchema` with the new schema, the list of changes, and a name for the request.
    """
    rules = _ruleset(target)
    schema, name = _schema_of(model_or_schema)
    conv = _Converter(schema, rules)
    strict = conv.convert(schema, [], is_root=True)
    return StrictSchema(schema=strict, records=conv.records, name=_safe_name(name), target=rules.name,
                        original=schema)


#: The rule set of `checking_schema`: the strict structure, with every value constraint kept.
_CHECK_RULES = RuleSet(
    name="check",
    max_properties=10**9,
    max_depth=10**9,
    max_string_length=10**12,
    max_enum_values=10**9,
    large_enum_threshold=10**9,
    max_large_enum_chars=10**12,
    keywords=_BASE_KEYWORDS | CHECKABLE_KEYWORDS,
    formats=_FORMATS | frozenset({"uri", "uri-reference", "iri", "iri-reference", "idn-email",
                                  "idn-hostname", "regex", "json-pointer", "relative-json-pointer",
                                  "uri-template"}),
)


def checking_schema(model_or_schema: Any) -> dict[str, Any]:
    """The schema answers are checked against when results are parsed.

    It has the structure `to_strict_schema` gives every target (optional fields nullable, every
    property required, no additional properties) and keeps every value constraint of the
    original that a validator can check (``minimum``/``maximum``, ``pattern``, string and array
    lengths, ``format``, ...), including those the target's strict mode does not support. So an
    answer the service accepted but that breaks, e.g., ``Field(ge=1, le=5)`` fails this schema.

    Args:
        model_or_schema: the ORIGINAL schema: a pydantic model class, a TypeAdapter, or a JSON
            schema dict (before any strict conversion).
    """
    schema, _ = _schema_of(model_or_schema)
    return _Converter(schema, _CHECK_RULES).convert(schema, [], is_root=True)


def schema_changes_table(strict: StrictSchema) -> Any:
    """A short table of what `to_strict_schema` changed, for a notebook.

    One row per change: ``path``, ``change`` (the words), ``constraint dropped`` (``yes`` when the
    target's strict mode no longer enforces a constraint of the original) and ``checked when
    parsing`` (``yes`` when `batchkit.results.parse_results` checks the answers against it again,
    given ``original_schema=``). Dropped constraints come first. Displays as the sentence "No
    changes: the schema is already strict for <target>." when nothing changed.

    Returns:
        A `batchkit.tables.ReportTable` (its DataFrame is ``.frame``).
    """
    import pandas as pd

    from batchkit.tables import ReportTable

    ordered = sorted(strict.records, key=lambda r: not r.dropped)
    rows = [
        {
            "path": r.path,
            "change": r.detail,
            "constraint dropped": "yes" if r.dropped else "",
            "checked when parsing": ("yes" if r.checked else "no") if r.dropped else "",
        }
        for r in ordered
    ]
    frame = pd.DataFrame(rows, columns=["path", "change", "constraint dropped", "checked when parsing"])
    dropped = sum(1 for r in strict.records if r.dropped)

    def text(frame: pd.DataFrame) -> str:
        width = max(len(p) for p in frame["path"])
        lines = []
        for rec in frame.to_dict(orient="records"):
            mark = ""
            if rec["constraint dropped"]:
                mark = "  [constraint dropped; " + (
                    "checked when parsing]" if rec["checked when parsing"] == "yes" else "not checked]")
            lines.append(f"{rec['path']:<{width}}  {rec['change']}{mark}")
        return "\n".join(lines)

    title = (f"{len(rows)} change(s) for target {strict.target}"
             + (f", {dropped} constraint(s) dropped" if dropped else "") + ":")
    return ReportTable(frame, empty=f"No changes: the schema is already strict for {strict.target}.",
                       title=title, text=text)


def response_format_for(
    model_or_schema: Any, name: str | None = None, *, target: Target = "openai"
) -> dict[str, Any]:
    """The chat ``response_format`` for a pydantic model or schema, made strict.

    Returns ``{"type": "json_schema", "json_schema": {"name", "schema", "strict": True}}``.
    Raises `batchkit.errors.LintError` (with the findings) when the converted schema still
    breaks a strict-mode rule of `target` (e.g. too deep, or an unresolvable ``$ref``).
    """
    from batchkit.errors import LintError

    strict = to_strict_schema(model_or_schema, target=target)
    chosen = _safe_name(name) if name else strict.name
    if name is not None and not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name):
        raise ValueError(f"schema name {name!r} must match ^[a-zA-Z0-9_-]{{1,64}}$")
    errors = [f for f in lint_strict_schema(strict.schema, name=chosen, target=target) if f.is_error]
    if errors:
        raise LintError(
            f"the schema '{chosen}' still breaks {len(errors)} strict-mode rule(s) for target "
            f"'{target}': {errors[0].message} Fix: {errors[0].fix}",
            errors,
        )
    return {"type": "json_schema", "json_schema": {"name": chosen, "schema": strict.schema, "strict": True}}
