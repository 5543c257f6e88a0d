"""Pre-flight lint of batch input files, request bodies and batch metadata.

One implementation serves the client (``python -m batchkit lint``, the notebooks) and the
local service (its validation step and its per-line HTTP 400s), so what passes here is what
the service accepts.

* `lint_batch_file` streams a JSONL file line by line (memory: one line at a time plus the set of
  ``custom_id`` values with their first line numbers: 18 MiB peak for a 100,000-line file,
  measured by `benchmarks/bench_lint.py`) and yields `Finding` objects with the physical line
  number and the code
  the service reports (spec §4.2): ``invalid_json_line``, ``invalid_request``,
  ``duplicate_custom_id``, ``url_mismatch``, ``model_mismatch``, ``model_not_found``,
  ``too_many_tasks``, ``empty_file``, ``file_too_large``; plus, per line, the request-scope
  findings of `lint_request_body` (strict schema and parameters).
* `lint_request_body` checks one Chat Completions body the way the model endpoint would.
* `lint_batch_metadata` checks the ``metadata`` of a batch create call.

Paths: ``Finding.path`` is a readable JSON path. Batch-file findings are rooted at the line
(``custom_id``, ``body.model``, ``body.response_format.json_schema.schema.properties.x``);
`lint_request_body` roots them at the body (``response_format.json_schema.name``);
`lint_batch_metadata` at ``metadata``. Schema messages name the schema node the way the
service does, as ``context=(...)`` (see `batchkit.schema`).

Blank lines: a final newline is normal and ignored. A whitespace-only line elsewhere gets a
``blank_line`` warning and is skipped (not counted as a request); the local service skips it
too. Lines may end in CRLF.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import replace
from typing import Any, Iterable, Iterator, Mapping, Sequence

import msgspec
import orjson

from batchkit.schema import Finding, Target, lint_strict_schema, render_path

__all__ = [
    "Finding",
    "lint_batch_file",
    "BatchFileLinter",
    "lint_request_body",
    "lint_batch_metadata",
    "findings_to_frame",
    "findings_by_rule",
    "findings_table",
    "has_errors",
    "FILE_LIMITS",
    "CHAT_BODY_KEYS",
    "RESPONSES_BODY_KEYS",
    "main",
]

#: Per-target file limits: (max requests per file, max bytes per file).
FILE_LIMITS: dict[str, tuple[int, int]] = {
    "azure": (100_000, 200 * 1024 * 1024),
    "openai": (50_000, 200 * 1024 * 1024),
}

#: Batch endpoints a line's ``url`` may name, per target.
BATCH_URLS: dict[str, frozenset[str]] = {
    "openai": frozenset(
        {
            "/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions",
            "/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos",
        }
    ),
    "azure": frozenset({"/chat/completions", "/v1/chat/completions", "/responses", "/v1/responses"}),
}
_CHAT_URLS = frozenset({"/v1/chat/completions", "/chat/completions"})
_RESPONSES_URLS = frozenset({"/v1/responses", "/responses"})
_INPUT_ROLES = ("user", "assistant", "system", "developer")

#: Keys a Chat Completions request body may carry (anything else is ``unknown_parameter``).
CHAT_BODY_KEYS: frozenset[str] = frozenset(
    {
        "model", "messages", "response_format", "max_tokens", "max_completion_tokens",
        "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty",
        "logit_bias", "logprobs", "top_logprobs", "seed", "user", "tools", "tool_choice",
        "parallel_tool_calls", "stream", "stream_options", "service_tier", "store", "metadata",
        "reasoning_effort", "modalities", "audio", "prediction", "functions", "function_call",
        "web_search_options", "verbosity", "safety_identifier", "prompt_cache_key",
        "data_sources",
    }
)
#: Keys a Responses request body may carry (``openai.types.responses.ResponseCreateParams``, plus
#: ``stream``); anything else is ``unknown_parameter``.
RESPONSES_BODY_KEYS: frozenset[str] = frozenset(
    {
        "model", "input", "instructions", "text", "max_output_tokens", "temperature", "top_p",
        "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "max_tool_calls", "metadata",
        "store", "stream", "stream_options", "reasoning", "include", "previous_response_id",
        "conversation", "prompt", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
        "safety_identifier", "service_tier", "truncation", "user", "background", "background_options",
        "context_management", "image", "moderation", "access_programs",
    }
)
#: Chat Completions parameters that the Responses API names differently: the service answers
#: ``unsupported_parameter`` with "In the Responses API, this parameter has moved to '...'".
RESPONSES_MOVED: dict[str, str] = {
    "response_format": "text.format",
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
    "verbosity": "text.verbosity",
}
_LINE_KEYS = ("custom_id", "method", "url", "body")
_ROLES = ("system", "user", "assistant", "tool", "function", "developer")
_RF_TYPES = ("json_object", "json_schema", "text")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_BOM = b"\xef\xbb\xbf"
#: A JSON escape of a UTF-16 surrogate (\\uD800-\\uDFFF): only valid as a high+low pair.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_AZURE_MODEL_MESSAGE = (
    "Validation failed: A valid model deployment name couldn't be extracted from the input file. "
    "Please ensure that each row in the input file has a valid deployment name specified in the "
    "'model' field, and that the deployment name is consistent across all rows."
)


def _kind(value: Any) -> str:
    """The JSON type of a value, worded like the service's messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(float(value))


def _fmt_num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


# --------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------


class _Req:
    """Collects request-scope findings with body-relative paths."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def add(
        self,
        code: str,
        rule: str,
        parts: Sequence[str | int],
        message: str,
        fix: str,
        *,
        severity: str = "error",
        param: str | None = None,
    ) -> None:
        path = render_path("", parts)
        self.findings.append(
            Finding(
                line=None,
                code=code,
                path=path,
                message=message,
                severity=severity,  # type: ignore[arg-type]
                scope="request",
                param=param if param is not None else path,
                fix=fix,
                rule=rule,
            )
        )

    def type_error(self, parts: Sequence[str | int], expected: str, value: Any) -> None:
        name = render_path("", parts)
        self.add(
            "invalid_type", "request.invalid_type", parts,
            f"Invalid type for '{name}': expected {expected}, but got {_kind(value)} instead.",
            f"Give '{name}' as {expected}.",
        )

    def missing(self, parts: Sequence[str | int], fix: str) -> None:
        name = render_path("", parts)
        self.add(
            "missing_required_parameter", "request.missing_parameter", parts,
            f"Missing required parameter: '{name}'.", fix,
        )

    def range_check(
        self, parts: Sequence[str | int], value: Any, *, lo: float | None, hi: float | None,
        integer: bool,
    ) -> None:
        name = render_path("", parts)
        if integer and not _is_int(value):
            self.type_error(parts, "an integer", value)
            return
        if not integer and not _is_number(value):
            self.type_error(parts, "a number", value)
            return
        word = "integer" if integer else "decimal"
        if lo is not None and value < lo:
            self.add(
                f"{word}_below_min_value", f"request.{name}_range", parts,
                f"Invalid '{name}': {word} below minimum value. Expected a value >= {_fmt_num(lo)}, "
                f"but got {_fmt_num(value)} instead.",
                f"Use a value of at least {_fmt_num(lo)}" + (f" and at most {_fmt_num(hi)}." if hi is not None else "."),
            )
        elif hi is not None and value > hi:
            self.add(
                f"{word}_above_max_value", f"request.{name}_range", parts,
                f"Invalid '{name}': {word} above maximum value. Expected a value <= {_fmt_num(hi)}, "
                f"but got {_fmt_num(value)} instead.",
                f"Use a value of at most {_fmt_num(hi)}.",
            )


def _lint_messages(req: _Req, messages: Any) -> None:
    if not isinstance(messages, list):
        req.type_error(["messages"], "an array", messages)
        return
    if not messages:
        req.add(
            "empty_array", "request.messages_empty", ["messages"],
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
            "empty array instead.",
            "Give at least one message, e.g. [{\"role\": \"user\", \"content\": \"...\"}].",
        )
        return
    for i, msg in enumerate(messages):
        parts: list[str | int] = ["messages", i]
        if not isinstance(msg, dict):
            req.type_error(parts, "an object", msg)
            continue
        role = msg.get("role")
        if "role" not in msg:
            req.missing([*parts, "role"], "Give every message a role such as 'system' or 'user'.")
            continue
        if role not in _ROLES:
            shown = json.dumps(role) if not isinstance(role, str) else f"'{role}'"
            req.add(
                "invalid_value", "request.message_role", [*parts, "role"],
                f"Invalid value: {shown}. Supported values are: "
                + ", ".join(f"'{r}'" for r in _ROLES[:-1]) + f", and '{_ROLES[-1]}'.",
                "Use one of the supported roles.",
            )
            continue
        content = msg.get("content")
        if content is None:
            if role == "assistant" and (msg.get("tool_calls") or msg.get("function_call")):
                pass
            else:
                req.missing([*parts, "content"], "Give the message a 'content' string.")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    req.add(
                        "invalid_type", "request.content_part", [*parts, "content", j],
                        f"Invalid type for '{render_path('', [*parts, 'content', j])}': expected an "
                        f"object with a 'type', but got {_kind(part)} instead.",
                        "Give content parts as {\"type\": \"text\", \"text\": \"...\"}.",
                    )
        elif not isinstance(content, str):
            req.type_error([*parts, "content"], "a string or an array of content parts", content)
        if role == "tool" and not isinstance(msg.get("tool_call_id"), str):
            req.missing([*parts, "tool_call_id"], "Tool messages need the tool_call_id they answer.")


def _text_of_messages(messages: Any) -> str:
    out: list[str] = []
    if isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict):
                c = msg.get("content")
                if isinstance(c, str):
                    out.append(c)
                elif isinstance(c, list):
                    out.extend(p.get("text", "") for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(out)


_SCHEMA_CACHE: dict[tuple[bytes, str, str, str], tuple[Finding, ...]] = {}
_SCHEMA_CACHE_SIZE = 64


def _schema_findings(schema: Any, name: str, target: Target, api: str = "chat") -> tuple[Finding, ...]:
    """`lint_strict_schema` of a request's output schema, remembered for the last few schemas:
    a batch file usually repeats one schema on every line (findings are immutable, so shared).

    ``api="responses"`` gives the Responses API's form: path ``text.format.schema...``, param
    ``text.format.schema`` and code ``invalid_json_schema`` (the chat form has param
    ``response_format`` and a null code)."""
    try:
        key = (orjson.dumps(schema), name, target, api)
    except (TypeError, orjson.JSONEncodeError):  # not plain JSON: no cache
        key = None
    found = _SCHEMA_CACHE.get(key) if key is not None else None
    if found is None:
        if api == "responses":
            found = tuple(
                replace(f, code="invalid_json_schema")
                for f in lint_strict_schema(schema, name=name, target=target, path_prefix="text.format.schema",
                                            param="text.format.schema")
            )
        else:
            found = tuple(lint_strict_schema(schema, name=name, target=target,
                                             path_prefix="response_format.json_schema.schema"))
        if key is not None:
            if len(_SCHEMA_CACHE) >= _SCHEMA_CACHE_SIZE:
                _SCHEMA_CACHE.pop(next(iter(_SCHEMA_CACHE)))
            _SCHEMA_CACHE[key] = found
    return found


def _lint_response_format(req: _Req, rf: Any, messages: Any, target: Target) -> None:
    parts: list[str | int] = ["response_format"]
    if not isinstance(rf, dict):
        req.type_error(parts, "an object", rf)
        return
    if "type" not in rf:
        req.missing([*parts, "type"], "Set response_format.type to 'json_schema'.")
        return
    rtype = rf["type"]
    if rtype not in _RF_TYPES:
        shown = f"'{rtype}'" if isinstance(rtype, str) else json.dumps(rtype)
        req.add(
            "invalid_value", "request.response_format_type", [*parts, "type"],
            f"Invalid value: {shown}. Supported values are: 'json_object', 'json_schema', and 'text'.",
            "Use {\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\", \"strict\": true}}; "
            "the schema goes inside json_schema.schema, not in response_format.type.",
        )
        return
    if rtype == "json_object":
        if "json" not in _text_of_messages(messages).lower():
            req.add(
                "invalid_value", "request.json_object_word", ["messages"],
                "'messages' must contain the word 'json' in some form, to use 'response_format' of "
                "type 'json_object'.",
                "Mention JSON in the system or user message, or use a strict json_schema.",
                param="messages",
            )
        return
    if rtype != "json_schema":
        return
    js = rf.get("json_schema")
    jparts: list[str | int] = [*parts, "json_schema"]
    if js is None:
        req.missing(jparts, "Add json_schema: {\"name\", \"schema\", \"strict\": true}.")
        return
    if not isinstance(js, dict):
        req.type_error(jparts, "an object", js)
        return
    for key in js:
        if key not in ("name", "schema", "strict", "description"):
            req.add(
                "unknown_parameter", "request.unknown_parameter", [*jparts, key],
                f"Unknown parameter: '{render_path('', [*jparts, key])}'.",
                f"Remove '{key}'; json_schema takes name, description, schema and strict.",
            )
    name = js.get("name")
    if "name" not in js:
        req.missing([*jparts, "name"], "Name the schema, e.g. \"name\": \"building_info\".")
        name = "schema"
    elif not isinstance(name, str):
        req.type_error([*jparts, "name"], "a string", name)
        name = "schema"
    elif len(name) > 64:
        req.add(
            "string_above_max_length", "request.schema_name", [*jparts, "name"],
            f"Invalid '{render_path('', [*jparts, 'name'])}': string too long. Expected a string "
            f"with maximum length 64, but got a string with length {len(name)} instead.",
            "Use a name of at most 64 characters from a-z, A-Z, 0-9, _ and -.",
        )
    elif not name or any(ch not in _NAME_CHARS for ch in name):
        req.add(
            "invalid_value", "request.schema_name", [*jparts, "name"],
            f"Invalid '{render_path('', [*jparts, 'name'])}': string does not match pattern. "
            "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
            "Use only a-z, A-Z, 0-9, _ and - in the schema name (1-64 characters).",
        )
    if "description" in js and not isinstance(js["description"], str):
        req.type_error([*jparts, "description"], "a string", js["description"])
    strict = js.get("strict", False)
    if "strict" in js and not isinstance(strict, bool) and strict is not None:
        req.type_error([*jparts, "strict"], "a boolean", strict)
        strict = False
    if "schema" not in js:
        req.missing([*jparts, "schema"], "Put the JSON Schema in json_schema.schema.")
        return
    schema = js["schema"]
    if strict is True:
        req.findings.extend(_schema_findings(schema, str(name), target))
    else:
        if not isinstance(schema, dict):
            req.type_error([*jparts, "schema"], "an object", schema)
        req.add(
            "strict_not_true", "request.strict_not_true", [*jparts, "strict"],
            "json_schema.strict is not true: the schema is only guidance and answers may not match it.",
            "Set \"strict\": true (and make the schema strict with to_strict_schema).",
            severity="warning",
        )


def _lint_tools(req: _Req, tools: Any, target: Target) -> None:
    if not isinstance(tools, list):
        req.type_error(["tools"], "an array", tools)
        return
    for i, tool in enumerate(tools):
        parts: list[str | int] = ["tools", i]
        if not isinstance(tool, dict):
            req.type_error(parts, "an object", tool)
            continue
        if tool.get("type") != "function":
            shown = f"'{tool.get('type')}'" if isinstance(tool.get("type"), str) else json.dumps(tool.get("type"))
            req.add(
                "invalid_value", "request.tool_type", [*parts, "type"],
                f"Invalid value: {shown}. Supported values are: 'function'.",
                "Give each tool as {\"type\": \"function\", \"function\": {\"name\", \"parameters\"}}.",
            )
            continue
        fn = tool.get("function")
        if not isinstance(fn, dict):
            req.missing([*parts, "function"], "Describe the tool in 'function': {name, parameters}.")
            continue
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            req.missing([*parts, "function", "name"], "Name the function.")
            name = "function"
        if fn.get("strict") is True and "parameters" in fn:
            prefix = render_path("", [*parts, "function", "parameters"])
            req.findings.extend(
                lint_strict_schema(
                    fn["parameters"], name=name, target=target, path_prefix=prefix,
                    param=prefix, subject="function",
                )
            )


def _lint_input(req: _Req, value: Any) -> None:
    """The Responses ``input``: a string, or a list of items (messages with role and content)."""
    if isinstance(value, str):
        if not value:
            req.add(
                "empty_string", "responses.input_empty", ["input"],
                "Invalid 'input': empty string. Expected a string with minimum length 1, but got an "
                "empty string instead.",
                "Give the prompt as input (a string, or a list of role/content messages).",
            )
        return
    if not isinstance(value, list):
        req.type_error(["input"], "a string or an array of input items", value)
        return
    if not value:
        req.add(
            "empty_array", "responses.input_empty", ["input"],
            "Invalid 'input': empty array. Expected an array with minimum length 1, but got an "
            "empty array instead.",
            "Give at least one input item, e.g. [{\"role\": \"user\", \"content\": \"...\"}].",
        )
        return
    for i, item in enumerate(value):
        parts: list[str | int] = ["input", i]
        if not isinstance(item, dict):
            req.type_error(parts, "an object", item)
            continue
        kind = item.get("type", "message" if "role" in item else None)
        if kind != "message":
            if not isinstance(kind, str):
                req.missing([*parts, "type"], "Give each input item a role and content (a message) or a 'type'.")
            continue
        role = item.get("role")
        if role not in _INPUT_ROLES:
            if "role" not in item:
                req.missing([*parts, "role"], "Give every message a role such as 'system' or 'user'.")
            else:
                shown = f"'{role}'" if isinstance(role, str) else json.dumps(role)
                req.add(
                    "invalid_value", "responses.input_role", [*parts, "role"],
                    f"Invalid value: {shown}. Supported values are: 'user', 'assistant', 'system', and 'developer'.",
                    "Use one of the supported roles.",
                )
            continue
        content = item.get("content")
        if "content" not in item:
            req.missing([*parts, "content"], "Give the message a 'content' string.")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    req.add(
                        "invalid_type", "responses.content_part", [*parts, "content", j],
                        f"Invalid type for '{render_path('', [*parts, 'content', j])}': expected an "
                        f"object with a 'type', but got {_kind(part)} instead.",
                        "Give content parts as {\"type\": \"input_text\", \"text\": \"...\"}.",
                    )
        elif not isinstance(content, str):
            req.type_error([*parts, "content"], "a string or an array of content parts", content)


def _text_of_input(body: Mapping[str, Any]) -> str:
    value = body.get("input")
    out = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                c = item.get("content")
                if isinstance(c, str):
                    out.append(c)
                elif isinstance(c, list):
                    out.extend(p.get("text", "") for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(out)


def _lint_text_format(req: _Req, text: Any, body: Mapping[str, Any], target: Target) -> None:
    """``text`` of a Responses body; ``text.format`` holds the Structured Outputs schema."""
    if not isinstance(text, dict):
        req.type_error(["text"], "an object", text)
        return
    for key in text:
        if key not in ("format", "verbosity"):
            req.add(
                "unknown_parameter", "request.unknown_parameter", ["text", key],
                f"Unknown parameter: 'text.{key}'.",
                f"Remove '{key}'; text takes format and verbosity.",
            )
    if text.get("verbosity") is not None and text["verbosity"] not in ("low", "medium", "high"):
        req.add(
            "invalid_value", "responses.verbosity", ["text", "verbosity"],
            f"Invalid value: {json.dumps(text['verbosity'])}. Supported values are: 'low', 'medium', and 'high'.",
            "Use low, medium or high (or leave verbosity out).",
        )
    fmt = text.get("format")
    if fmt is None:
        return
    parts: list[str | int] = ["text", "format"]
    if not isinstance(fmt, dict):
        req.type_error(parts, "an object", fmt)
        return
    if "type" not in fmt:
        req.missing([*parts, "type"], "Set text.format.type to 'json_schema'.")
        return
    ftype = fmt["type"]
    if ftype not in _RF_TYPES:
        shown = f"'{ftype}'" if isinstance(ftype, str) else json.dumps(ftype)
        req.add(
            "invalid_value", "responses.format_type", [*parts, "type"],
            f"Invalid value: {shown}. Supported values are: 'text', 'json_schema', and 'json_object'.",
            "Use {\"type\": \"json_schema\", \"name\", \"schema\", \"strict\": true} in text.format "
            "(no json_schema wrapper in the Responses API).",
        )
        return
    if ftype == "json_object":
        if "json" not in _text_of_input(body).lower():
            req.add(
                "invalid_value", "responses.json_object_word", ["input"],
                "Response input messages must contain the word 'json' in some form to use 'text.format' "
                "of type 'json_object'.",
                "Mention JSON in the instructions or input, or use a strict json_schema.",
                param="input",
            )
        return
    if ftype != "json_schema":
        return
    for key in fmt:
        if key not in ("type", "name", "schema", "strict", "description"):
            fix = ("The Responses API takes name, schema and strict directly in text.format: move them "
                   "out of 'json_schema'." if key == "json_schema"
                   else f"Remove '{key}'; text.format takes type, name, description, schema and strict.")
            req.add(
                "unknown_parameter", "request.unknown_parameter", [*parts, key],
                f"Unknown parameter: 'text.format.{key}'.", fix,
            )
    if "json_schema" in fmt and "schema" not in fmt:
        return  # a chat-style wrapper: the finding above says what to move
    name = fmt.get("name")
    if "name" not in fmt:
        req.missing([*parts, "name"], "Name the schema, e.g. \"name\": \"building_info\".")
        name = "schema"
    elif not isinstance(name, str):
        req.type_error([*parts, "name"], "a string", name)
        name = "schema"
    elif len(name) > 64 or not name or any(ch not in _NAME_CHARS for ch in name):
        req.add(
            "invalid_value", "request.schema_name", [*parts, "name"],
            "Invalid 'text.format.name': string does not match pattern. Expected a string that matches "
            "the pattern '^[a-zA-Z0-9_-]{1,64}$'.",
            "Use only a-z, A-Z, 0-9, _ and - in the schema name (1-64 characters).",
        )
    if "description" in fmt and not isinstance(fmt["description"], str):
        req.type_error([*parts, "description"], "a string", fmt["description"])
    strict = fmt.get("strict", False)
    if "strict" in fmt and not isinstance(strict, bool) and strict is not None:
        req.type_error([*parts, "strict"], "a boolean", strict)
        strict = False
    if "schema" not in fmt:
        req.missing([*parts, "schema"], "Put the JSON Schema in text.format.schema.")
        return
    schema = fmt["schema"]
    if strict is True:
        req.findings.extend(_schema_findings(schema, str(name), target, "responses"))
    else:
        if not isinstance(schema, dict):
            req.type_error([*parts, "schema"], "an object", schema)
        req.add(
            "strict_not_true", "request.strict_not_true", [*parts, "strict"],
            "text.format.strict is not true: the schema is only guidance and answers may not match it.",
            "Set \"strict\": true (and make the schema strict with to_strict_schema).",
            severity="warning",
        )


def _lint_response_tools(req: _Req, tools: Any, target: Target) -> None:
    """Responses tools: function tools are flat ``{type, name, parameters, strict}``."""
    if not isinstance(tools, list):
        req.type_error(["tools"], "an array", tools)
        return
    for i, tool in enumerate(tools):
        parts: list[str | int] = ["tools", i]
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            req.add(
                "invalid_type", "responses.tool_type", parts,
                f"Invalid type for 'tools[{i}]': expected an object with a 'type', but got {_kind(tool)} instead.",
                "Give each tool as {\"type\": \"function\", \"name\", \"parameters\", \"strict\": true}.",
            )
            continue
        if tool["type"] != "function":
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            req.missing([*parts, "name"], "Name the function (Responses tools are flat: no 'function' wrapper).")
            name = "function"
        if tool.get("strict", True) is True and isinstance(tool.get("parameters"), dict):
            prefix = render_path("", [*parts, "parameters"])
            req.findings.extend(
                lint_strict_schema(tool["parameters"], name=name, target=target, path_prefix=prefix,
                                   param=prefix, subject="function")
            )


def _lint_responses_body(req: _Req, body: dict[str, Any], target: Target) -> None:
    for key in body:
        if key in RESPONSES_MOVED:
            new = RESPONSES_MOVED[key]
            req.add(
                "unsupported_parameter", "responses.moved_parameter", [key],
                f"Unsupported parameter: '{key}'. In the Responses API, this parameter has moved to '{new}'.",
                f"Use '{new}' instead of '{key}' (build_requests(..., api=\"responses\") writes Responses bodies).",
                param=key,
            )
        elif key not in RESPONSES_BODY_KEYS:
            req.add(
                "unknown_parameter", "request.unknown_parameter", [key],
                f"Unknown parameter: '{key}'.",
                f"Remove '{key}' (the Responses API does not take it; check the spelling).",
                param=key,
            )
    if "input" in body and body["input"] is not None:
        _lint_input(req, body["input"])
    elif "messages" not in body and not any(body.get(k) for k in ("prompt", "previous_response_id", "conversation")):
        req.missing(["input"], "Add input: the prompt as a string or [{\"role\": \"user\", \"content\": \"...\"}].")
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        req.type_error(["instructions"], "a string", body["instructions"])
    if body.get("text") is not None:
        _lint_text_format(req, body["text"], body, target)
    if body.get("tools") is not None:
        _lint_response_tools(req, body["tools"], target)
    if body.get("max_output_tokens") is not None:
        req.range_check(["max_output_tokens"], body["max_output_tokens"], lo=16, hi=None, integer=True)
    if body.get("top_logprobs") is not None:
        req.range_check(["top_logprobs"], body["top_logprobs"], lo=0, hi=20, integer=True)
    _lint_sampling(req, body)
    if body.get("stream") is True:
        req.add(
            "invalid_value", "request.stream", ["stream"],
            "Invalid value for 'stream': streaming is not supported in batch requests.",
            "Remove 'stream' from batch lines.",
        )


def _lint_sampling(req: _Req, body: Mapping[str, Any]) -> None:
    if body.get("temperature") is not None:
        req.range_check(["temperature"], body["temperature"], lo=0, hi=2, integer=False)
    if body.get("top_p") is not None:
        req.range_check(["top_p"], body["top_p"], lo=0, hi=1, integer=False)


def lint_request_body(body: Any, *, target: Target = "openai", api: str = "chat") -> list[Finding]:
    """Check one request body the way the model endpoint would (its HTTP 400s).

    ``api="responses"`` checks a Responses API body instead (see below).

    Checks: unknown top-level parameters (allow-list `CHAT_BODY_KEYS`), ``messages`` present
    and well-formed, ``response_format`` shape (type values, ``json_schema.name`` pattern
    ``^[a-zA-Z0-9_-]{1,64}$``, schema present) and, when ``strict`` is true, every strict
    schema rule of `target`; ``tools`` shape and, for ``strict`` functions, their parameter
    schemas; ``max_tokens``/``max_completion_tokens`` positive integers,
    ``temperature`` 0..2, ``top_p`` 0..1, penalties -2..2, ``n`` >= 1 (a warning above 1: every
    choice is billed and result parsers read the first), ``stream`` not true in a batch.
    ``model`` is a batch-level matter (`lint_batch_file`); the context length is left to the
    service (it knows the model).

    Responses bodies (``api="responses"``): unknown top-level parameters (allow-list
    `RESPONSES_BODY_KEYS`), Chat Completions names the Responses API moved (``response_format``,
    ``messages``, ``max_tokens``: ``unsupported_parameter`` saying where it moved), ``input`` (a
    string or a list of role/content messages or typed items), ``text.format`` (type, ``name``
    pattern, schema present; with ``strict`` true every strict-schema rule, as findings with code
    ``invalid_json_schema`` and param ``text.format.schema``), flat function tools,
    ``max_output_tokens`` >= 16, ``temperature``, ``top_p``, ``top_logprobs``, ``stream``.

    Args:
        body: the parsed request body (any JSON value; a non-object gets a finding).
        target: ``"openai"`` or ``"azure"`` (selects the strict-schema rule set).
        api: ``"chat"`` (Chat Completions, the default) or ``"responses"``.

    Returns:
        Request-scope findings with paths relative to the body; ``[]`` when it is fine.
    """
    req = _Req()
    if not isinstance(body, dict):
        req.add(
            "invalid_type", "request.body_not_object", [],
            f"Invalid type for 'body': expected an object, but got {_kind(body)} instead.",
            "Make 'body' a JSON object with model, messages, ...",
            param="body",
        )
        return req.findings
    if api == "responses":
        _lint_responses_body(req, body, target)
        return req.findings
    if api != "chat":
        raise ValueError(f"unknown api {api!r}: use 'chat' or 'responses'")
    for key in body:
        if key not in CHAT_BODY_KEYS:
            req.add(
                "unknown_parameter", "request.unknown_parameter", [key],
                f"Unknown parameter: '{key}'.",
                f"Remove '{key}' (Chat Completions does not take it; check the spelling).",
                param=key,
            )
    if "messages" not in body:
        req.missing(["messages"], "Add messages: [{\"role\": \"user\", \"content\": \"...\"}].")
    else:
        _lint_messages(req, body["messages"])
    if "response_format" in body and body["response_format"] is not None:
        _lint_response_format(req, body["response_format"], body.get("messages"), target)
    if body.get("tools") is not None:
        _lint_tools(req, body["tools"], target)
    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None:
            req.range_check([key], body[key], lo=1, hi=None, integer=True)
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        req.add(
            "invalid_request", "request.max_tokens_both", ["max_tokens"],
            "max_tokens and max_completion_tokens cannot both be set.",
            "Keep one of them (max_completion_tokens for newer models).",
        )
    _lint_sampling(req, body)
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) is not None:
            req.range_check([key], body[key], lo=-2, hi=2, integer=False)
    if body.get("seed") is not None and not _is_int(body["seed"]):
        req.type_error(["seed"], "an integer", body["seed"])
    if body.get("n") is not None:
        n = body["n"]
        req.range_check(["n"], n, lo=1, hi=128, integer=True)
        if _is_int(n) and 1 < n <= 128:
            req.add(
                "n_above_one", "request.n_above_one", ["n"],
                f"n is {n}: every choice is billed, and result parsers read only the first.",
                "Use n=1 in batch files unless you really need several answers per request.",
                severity="warning",
            )
    if "stop" in body and body["stop"] is not None:
        stop = body["stop"]
        if isinstance(stop, list):
            if len(stop) > 4 or not all(isinstance(s, str) for s in stop):
                req.add(
                    "invalid_value", "request.stop", ["stop"],
                    "Invalid 'stop': expected a string or an array of at most 4 strings.",
                    "Give at most 4 stop strings.",
                )
        elif not isinstance(stop, str):
            req.type_error(["stop"], "a string or an array of strings", stop)
    if body.get("stream") is True:
        req.add(
            "invalid_value", "request.stream", ["stream"],
            "Invalid value for 'stream': streaming is not supported in batch requests.",
            "Remove 'stream' from batch lines.",
        )
    return req.findings


# --------------------------------------------------------------------------------------------
# Batch metadata
# --------------------------------------------------------------------------------------------


def lint_batch_metadata(metadata: Any) -> list[Finding]:
    """Check the ``metadata`` of a batch create call: a flat object of at most 16 string pairs,
    keys up to 64 characters, values up to 512. ``None`` is fine.

    Messages follow the service's 400 ``invalid_type`` form, e.g.
    ``Invalid type for 'metadata.x': expected a string, but got an integer instead.``
    """
    out: list[Finding] = []

    def add(code: str, rule: str, path: str, message: str, fix: str) -> None:
        out.append(Finding(None, code, path, message, "error", "batch", None, path, fix, rule))

    if metadata is None:
        return out
    if not isinstance(metadata, dict):
        add(
            "invalid_type", "metadata.not_object", "metadata",
            f"Invalid type for 'metadata': expected an object, but got {_kind(metadata)} instead.",
            "Pass metadata as a flat dict of strings, e.g. {\"project\": \"buildings\"}.",
        )
        return out
    if len(metadata) > 16:
        add(
            "object_above_max_properties", "metadata.too_many", "metadata",
            "Invalid 'metadata': too many properties. Expected an object with at most 16 "
            f"properties, but got an object with {len(metadata)} properties instead.",
            "Keep at most 16 metadata pairs.",
        )
    for key, value in metadata.items():
        path = render_path("metadata", [str(key)])
        if len(str(key)) > 64:
            add(
                "string_above_max_length", "metadata.key_too_long", path,
                f"Invalid 'metadata': string too long. Expected a key with maximum length 64, "
                f"but got a key with length {len(str(key))} instead.",
                "Shorten the key to 64 characters.",
            )
        if not isinstance(value, str):
            add(
                "invalid_type", "metadata.value_type", path,
                f"Invalid type for 'metadata.{key}': expected a string, but got {_kind(value)} instead.",
                f"Convert the value of '{key}' to a string (e.g. json.dumps for lists).",
            )
        elif len(value) > 512:
            add(
                "string_above_max_length", "metadata.value_too_long", path,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length "
                f"512, but got a string with length {len(value)} instead.",
                "Shorten the value to 512 characters.",
            )
    return out


# --------------------------------------------------------------------------------------------
# Batch files
# --------------------------------------------------------------------------------------------


#: Longest request line read from a file, in bytes: 8 MiB. Neither service documents a per-line
#: limit (only 200 MB per file); a longer line fails the batch (``line_too_large``) and is never read
#: whole, so a huge line cannot exhaust memory.
MAX_LINE_BYTES = 8 * 1024 * 1024


class _OversizedLine(bytes):
    """Stands for a line longer than MAX_LINE_BYTES that was skipped, not read; ``size`` is its length."""

    size: int = 0


def _bounded_lines(fh: Any) -> Iterator[bytes]:
    """The lines of a binary file, none read beyond MAX_LINE_BYTES: a longer one is skipped in
    chunks and stands as an `_OversizedLine` carrying its size."""
    readline = fh.readline
    limit = MAX_LINE_BYTES + 1
    while line := readline(limit):
        if len(line) == limit and not line.endswith(b"\n"):
            size = len(line)
            while (rest := readline(1024 * 1024)) and not rest.endswith(b"\n"):
                size += len(rest)
            marker = _OversizedLine()
            marker.size = size + len(rest)
            yield marker
            continue
        yield line


def _iter_lines(source: Any) -> Iterator[bytes]:
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            yield from _bounded_lines(fh)
        return
    if isinstance(source, (bytes, bytearray)):
        yield from bytes(source).splitlines(keepends=True)
        return
    for item in source:
        yield item.encode("utf-8") if isinstance(item, str) else bytes(item)


def _is_unicode_text(obj: Any) -> bool:
    """True when every string in ``obj`` (keys included) is valid Unicode (no lone surrogate)."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _norm_url(url: str, target: str) -> str:
    """Compare urls without the ``/v1`` prefix (Azure documents both forms)."""
    return url[3:] if url.startswith("/v1/") else url


class BatchFileLinter:
    """The batch-file lint as a state machine fed one line at a time (what `lint_batch_file` runs).

    `feed` takes a physical line as bytes (as read from the file); `feed_object` takes a line
    that is already a Python object, with the byte size its serialised form will have (what
    `batchkit.authoring.write_jsonl` does: it lints the objects it serialises, never parsing its
    own output back); `close` gives the file-level findings. Every method returns the findings of
    that step, in order. Memory: the set of custom_ids, each with its first line number.

    Bodies: most files repeat one body shape (the same schema and options, only the messages'
    text differs), so the findings of a body are remembered by everything but its model and its
    plain role/content messages (the schema object itself when it is the very object of the
    previous line, else its orjson bytes); bodies that do not fit that shape are linted in full.

    Args: as `lint_batch_file`, plus ``check_ids``: False leaves the duplicate-custom_id check to
    the caller (`batchkit.authoring.write_jsonl` raises on a repeated id itself).
    """

    def __init__(
        self,
        *,
        target: Target = "openai",
        deployments: Mapping[str, str] | None = None,
        endpoint: str | None = None,
        max_lines: int | None = None,
        max_bytes: int | None = None,
        check_ids: bool = True,
    ) -> None:
        if target not in FILE_LIMITS:
            raise ValueError(f"unknown target {target!r}: use 'azure' or 'openai'")
        limit_lines, limit_bytes = FILE_LIMITS[target]
        self.target: Target = target
        self.deployments = deployments
        self.endpoint = endpoint
        self.limit_lines = max_lines if max_lines is not None else limit_lines
        self.limit_bytes = max_bytes if max_bytes is not None else limit_bytes
        self.want_url = _norm_url(endpoint, target) if endpoint else None
        self.first_url: str | None = None
        self.first_url_line = 0
        self.first_model: str | None = None
        self.first_model_line = 0
        self.seen: dict[str, int] = {}
        self.check_ids = check_ids
        self._body_cache: dict[tuple[Any, ...], tuple[Finding, ...]] = {}
        self._last_body: tuple[Any, ...] | None = None
        self._last_raw: tuple[Any, ...] | None = None
        self.requests = 0
        self.total_bytes = 0
        self.too_big = self.too_many = False
        self.line_no = 0
        # the last url / model that passed every check: later lines naming the same string skip them
        self._url_ok: tuple[str, str] | None = None
        self._model_ok: str | None = None

    def _batch(self, code: str, rule: str, path: str, message: str, fix: str, *, cid: str | None = None,
               severity: str = "error") -> Finding:
        return Finding(self.line_no, code, path, message, severity, "batch", cid, path or None, fix, rule)  # type: ignore[arg-type]

    def _count(self, size: int) -> list[Finding]:
        out: list[Finding] = []
        self.total_bytes += size
        if self.total_bytes > self.limit_bytes and not self.too_big:
            self.too_big = True
            out.append(self._batch(
                "file_too_large", "batch.too_many_bytes", "",
                f"File is too large: the batch file exceeds {self.limit_bytes:,} bytes at this line.",
                f"Split the file into parts of at most {self.limit_bytes:,} bytes.",
            ))
        return out

    def _oversized(self, size: int) -> list[Finding]:
        """A line over MAX_LINE_BYTES (skipped unread): it fails the batch with its line number."""
        self.line_no += 1
        out = self._count(size)
        self._count_request(out)
        out.append(self._batch(
            "line_too_large", "batch.line_too_large", "",
            f"This line is {size:,} bytes long; a request line may be at most {MAX_LINE_BYTES:,} bytes.",
            "Shorten the request (split long inputs across several requests).",
        ))
        return out

    def _count_request(self, out: list[Finding]) -> None:
        self.requests += 1
        if self.requests > self.limit_lines and not self.too_many:
            self.too_many = True
            out.append(self._batch(
                "too_many_tasks", "batch.too_many_tasks", "",
                f"The input file contains more than {self.limit_lines:,} requests; this is line "
                f"{self.line_no}.",
                f"Split the file into files of at most {self.limit_lines:,} requests.",
            ))

    def feed(self, raw: bytes) -> Sequence[Finding]:
        """Lint the next physical line of the file (bytes, with or without its line ending)."""
        # The common line: a well-formed request whose every parameter but the messages' text is
        # byte for byte the previous line's. It is decoded into typed structs (msgspec) that keep
        # each parameter as its raw JSON text, so comparing parameters is comparing bytes, and
        # nothing is changed until every check passed; any doubt goes to the full path below.
        if isinstance(raw, _OversizedLine):
            return self._oversized(raw.size)
        line_no = self.line_no + 1
        size = self.total_bytes + len(raw)
        url_ok, model_ok = self._url_ok, self._model_ok
        if (line_no > 1 and size <= self.limit_bytes and self.requests < self.limit_lines
                and url_ok is not None and model_ok is not None and b"\\u" not in raw):
            decoder = _FAST_DECODERS.get(url_ok[1])
            try:
                line = decoder.decode(raw) if decoder is not None else None
            except (msgspec.DecodeError, msgspec.ValidationError):
                line = None
            if (line is not None and line.custom_id and line.method == "POST" and line.url == url_ok[0]
                    and line.body.model == model_ok):
                found = self._raw_body_findings(line.body, raw, url_ok[1])
                if found is not None and (not self.check_ids or self.seen.setdefault(line.custom_id, line_no) == line_no):
                    self.line_no = line_no
                    self.total_bytes = size
                    self.requests += 1
                    if not found:
                        return ()
                    return [replace(f, line=line_no, custom_id=line.custom_id,
                                    path="body." + f.path if f.path else "body") for f in found]
        return self._feed_full(raw)

    def _raw_body_findings(self, body: Any, raw: bytes, api: str) -> tuple[Finding, ...] | None:
        """The findings of a body decoded by `_FAST_DECODERS`, or None (then the full path runs):
        from the previous line's when every parameter's raw text is the same, else linted once
        (from the line parsed with orjson) and remembered."""
        messages = body.messages if api == "chat" else body.input
        if type(messages) is list:
            if not messages:
                return None
            for message in messages:
                if message.role not in _PLAIN_ROLES:
                    return None
        elif not messages:
            return None
        options = msgspec.structs.astuple(body)[2:]
        last = self._last_raw
        if last is not None and last[0] == api and last[1] == options:
            return last[2]
        try:
            parsed = _loads(raw)["body"]
        except (_JSONDecodeError, KeyError, TypeError):
            return None
        found = self._fast_body(parsed, api)
        if found is None:
            return None
        self._last_raw = (api, options, found)
        return found

    def _feed_full(self, raw: bytes) -> list[Finding]:
        self.line_no += 1
        out = self._count(len(raw))
        if self.line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
            if self.target == "azure":
                out.append(self._batch(
                    "invalid_request", "batch.bom", "",
                    _AZURE_MODEL_MESSAGE,
                    "The file starts with a UTF-8 byte order mark (BOM): save it as UTF-8 without "
                    "BOM (open(..., 'w', encoding='utf-8'), not 'utf-8-sig').",
                ))
            else:
                out.append(self._batch(
                    "invalid_json_line", "batch.bom", "",
                    "This line is not parseable as valid JSON.",
                    "The file starts with a UTF-8 byte order mark (BOM): save it as UTF-8 without BOM.",
                ))
        stripped = raw.strip()
        if not stripped:
            # The final newline never produces a line of its own; any other blank line does.
            out.append(self._batch(
                "blank_line", "batch.blank_line", "",
                "Blank line: skipped, not a request.",
                "Remove empty lines from the file.",
                severity="warning",
            ))
            return out
        self._count_request(out)
        try:
            obj = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            # orjson is stricter than the JSON grammar needs in two places (a lone surrogate
            # escape, a number beyond float range): the standard parser decides those lines.
            obj = _parse_slowly(stripped)
            if obj is _INVALID:
                out.append(self._batch(
                    "invalid_json_line", "batch.invalid_json", "",
                    "This line is not parseable as valid JSON.",
                    "Write each request as one JSON object on one line (json.dumps without indent), "
                    "UTF-8 encoded.",
                ))
                return out
            if obj is _SURROGATE:
                out.append(self._surrogate())
                return out
        self._check(obj, out)
        return out

    def feed_object(self, obj: Any, size: int) -> Sequence[Finding]:
        """Lint the next line given as an object whose serialised line takes ``size`` bytes."""
        # The common line, inline (as in `feed`): nothing changes until every check passed.
        url_ok, model_ok = self._url_ok, self._model_ok
        total = self.total_bytes + size
        if (url_ok is not None and model_ok is not None and total <= self.limit_bytes
                and self.requests < self.limit_lines and type(obj) is dict and len(obj) == 4):
            try:  # four keys, these four: the line has exactly the line keys
                cid, method, url, body = obj["custom_id"], obj["method"], obj["url"], obj["body"]
            except KeyError:
                cid = None
            if (type(cid) is str and cid and method == "POST" and url == url_ok[0]
                    and type(body) is dict and body.get("model") == model_ok):
                found = self._fast_body(body, url_ok[1]) if url_ok[1] is not None else ()
                line_no = self.line_no + 1
                if found is not None and (not self.check_ids or self.seen.setdefault(cid, line_no) == line_no):
                    self.line_no = line_no
                    self.total_bytes = total
                    self.requests += 1
                    if not found:
                        return ()
                    return [replace(f, line=line_no, custom_id=cid, path="body." + f.path if f.path else "body")
                            for f in found]
        self.line_no += 1
        out = self._count(size)
        self._count_request(out)
        self._check(obj, out)
        return out

    def settled(self, url: Any, model: Any, body: Any) -> tuple[str, tuple[Finding, ...]] | None:
        """For a line just fed: ``(its API, the findings of its body)`` when its url and model
        passed every check and its body has the remembered shape (plain messages, parameters
        keyed by content), so that a line differing only in its custom_id and its messages' text
        would get the same findings; else None."""
        url_ok, model_ok = self._url_ok, self._model_ok
        if url_ok is None or url_ok[1] is None or url != url_ok[0] or model_ok is None or model != model_ok:
            return None
        if type(body) is not dict:
            return None
        found = self._fast_body(body, url_ok[1])
        return None if found is None else (url_ok[1], found)

    def unencodable(self) -> list[Finding]:
        """The next line could not be serialised as UTF-8 JSON (a lone surrogate in a string)."""
        self.line_no += 1
        out: list[Finding] = []
        self._count_request(out)
        out.append(self._surrogate())
        return out

    def _surrogate(self) -> Finding:
        return self._batch(
            "invalid_json_line", "batch.unpaired_surrogate", "",
            "This line is not parseable as valid JSON: it holds an unpaired UTF-16 surrogate "
            "escape (\\ud800-\\udfff), which is not a Unicode character.",
            "Fix the text that produced the escape (often a string cut in the middle of an emoji); "
            "a surrogate escape is only valid as a high+low pair.",
        )

    def close(self) -> list[Finding]:
        """The file-level findings once every line was fed (``empty_file``)."""
        if self.requests == 0:
            return [Finding(
                None, "empty_file", "", "The input file is empty. Please ensure that the batch "
                "contains at least one request.", "error", "batch", None, None,
                "Write at least one request line.", "batch.empty_file",
            )]
        return []

    def _check(self, obj: Any, out: list[Finding]) -> None:
        batch = self._batch
        if type(obj) is not dict:
            out.append(batch(
                "invalid_request", "batch.line_not_object", "",
                f"The line must be a JSON object with custom_id, method, url and body; got {_kind(obj)}.",
                "Write one {\"custom_id\", \"method\", \"url\", \"body\"} object per line.",
            ))
            return
        cid_val = obj.get("custom_id")
        cid = cid_val if isinstance(cid_val, str) else None
        if obj.keys() != _LINE_KEY_SET:
            for key in _LINE_KEYS:
                if key not in obj:
                    out.append(batch(
                        "invalid_request", "batch.missing_key", key,
                        f"Missing required key '{key}' on this line.",
                        "Every line needs custom_id, method, url and body.",
                        cid=cid,
                    ))
            for key in obj:
                if key not in _LINE_KEY_SET:
                    out.append(batch(
                        "invalid_request", "batch.extra_key", render_path("", [key]),
                        f"Unexpected key '{key}' on this line; only custom_id, method, url and body are allowed.",
                        f"Remove '{key}' (request options go inside body).",
                        cid=cid,
                    ))
        if "custom_id" in obj:
            if not isinstance(cid_val, str) or not cid_val:
                out.append(batch(
                    "invalid_request", "batch.custom_id_type", "custom_id",
                    f"custom_id must be a non-empty string, got {_kind(cid_val) if cid_val != '' else 'an empty string'}.",
                    "Use a unique string per line, e.g. \"task-0\".",
                ))
            elif self.check_ids:
                first = self.seen.setdefault(cid_val, self.line_no)
                if first != self.line_no:
                    out.append(batch(
                        "duplicate_custom_id", "batch.duplicate_custom_id", "custom_id",
                        f"The custom_id '{cid_val}' is used more than once (first on line "
                        f"{first}); custom_id must be unique within a batch.",
                        "Give every line its own custom_id.",
                        cid=cid,
                    ))
        if "method" in obj and obj["method"] != "POST":
            out.append(batch(
                "invalid_request", "batch.method_not_post", "method",
                f"Invalid method {json.dumps(obj['method'])}: only 'POST' is supported.",
                "Set \"method\": \"POST\".",
                cid=cid,
            ))
        url = obj.get("url")
        check_body = True
        body_api = "chat"
        if "url" in obj:
            if self._url_ok is not None and url == self._url_ok[0]:
                body_api = self._url_ok[1] or "chat"
                check_body = self._url_ok[1] is not None
            elif not isinstance(url, str):
                out.append(batch(
                    "invalid_request", "batch.url_type", "url",
                    f"url must be a string, got {_kind(url)}.",
                    "Set \"url\" to the batch endpoint, e.g. \"/chat/completions\".",
                    cid=cid,
                ))
                check_body = False
            else:
                check_body, body_api = self._check_url(url, cid, out)
        if "body" not in obj:
            return
        body = obj["body"]
        if type(body) is not dict:
            out.append(batch(
                "invalid_request", "batch.body_not_object", "body",
                f"body must be a JSON object, got {_kind(body)}.",
                "Put the request (model, messages, ...) in an object under \"body\".",
                cid=cid,
            ))
            return
        model = body.get("model")
        if model is None or model != self._model_ok:
            self._check_model(model, cid, out)
        if check_body:
            found = self._fast_body(body, body_api)
            if found is None:
                found = lint_request_body(body, target=self.target, api=body_api)
            if found:
                line_no = self.line_no
                for f in found:
                    out.append(replace(
                        f,
                        line=line_no,
                        custom_id=cid,
                        path="body." + f.path if f.path else "body",
                    ))

    def _fast_body(self, body: dict[str, Any], api: str) -> tuple[Finding, ...] | None:
        """The body's findings from the cache, or None when the body must be linted in full.

        The key is everything that can produce a finding: every parameter but ``model`` and the
        messages, which qualify only as plain ``{role, content: str}`` pairs of the roles that
        carry no further rule (their text matters to nothing but ``json_object``, excluded)."""
        if api == "chat":
            skip, fmt_key = "messages", "response_format"
        else:
            skip, fmt_key = "input", "text"
        messages = body.get(skip)
        if type(messages) is list and messages:
            for message in messages:
                if (type(message) is not dict or len(message) != 2 or type(message.get("content")) is not str
                        or message.get("role") not in _PLAIN_ROLES):
                    return None
        elif not (api == "responses" and type(messages) is str and messages):
            return None
        last = self._last_body
        # (the same length and every other key found among the previous body's: the same keys)
        if last is not None and last[0] == api and len(body) == last[1]:
            known, encoded = last[2], last[3]
            for key, value in body.items():
                if key == "model" or key == skip:
                    continue
                before = known.get(key, _ABSENT)
                if before is value:
                    continue
                kind = type(value)
                if kind in _SCALARS:
                    if type(before) is kind and before == value:
                        continue
                    break
                previous = encoded.get(key)
                if previous is None:
                    break
                try:
                    same = orjson.dumps(value) == previous
                except (TypeError, orjson.JSONEncodeError):
                    return None
                if not same:
                    break
                known[key] = value  # the same content: the next line may share this very object
            else:
                return last[4]
        if not body.keys() <= (CHAT_BODY_KEYS if api == "chat" else RESPONSES_BODY_KEYS):
            return None
        values: dict[str, Any] = {}
        encoded = {}
        parts: list[Any] = [api]
        for key, value in body.items():
            if key == "model" or key == skip:
                continue
            values[key] = value
            kind = type(value)
            if kind in _SCALARS:
                parts.append((key, kind, value))
                continue
            try:
                data = orjson.dumps(value)
            except (TypeError, orjson.JSONEncodeError):
                return None
            if key == fmt_key and type(value) is dict and (value.get("type") == "json_object" or (
                    type(value.get("format")) is dict and value["format"].get("type") == "json_object")):
                return None  # its rule reads the messages' text
            encoded[key] = data
            parts.append((key, data))
        key = tuple(parts)
        try:
            found = self._body_cache.get(key)
        except TypeError:
            return None
        if found is None:
            found = tuple(lint_request_body(body, target=self.target, api=api))
            if len(self._body_cache) < 256:
                self._body_cache[key] = found
        self._last_body = (api, len(body), values, encoded, found)
        return found

    def _check_url(self, url: str, cid: str | None, out: list[Finding]) -> tuple[bool, str]:
        batch = self._batch
        target = self.target
        norm = _norm_url(url, target)
        check_body = norm in _CHAT_URLS or norm == "/responses"
        body_api = "responses" if norm == "/responses" else "chat"
        found = len(out)
        if self.want_url is not None and norm != self.want_url:
            out.append(batch(
                "url_mismatch", "batch.url_not_endpoint", "url",
                f"The url '{url}' does not match the batch endpoint '{self.endpoint}'.",
                f"Use \"url\": \"{self.endpoint}\" on every line.",
                cid=cid,
            ))
        elif self.want_url is None and norm not in {_norm_url(u, target) for u in BATCH_URLS[target]}:
            known = ", ".join(sorted(BATCH_URLS[target]))
            out.append(batch(
                "url_mismatch", "batch.url_unknown", "url",
                f"The url '{url}' is not a batch endpoint of {target}; expected one of {known}.",
                "Use the chat completions endpoint ('/chat/completions' on Azure, "
                "'/v1/chat/completions' on OpenAI) or the Responses endpoint '/v1/responses'.",
                cid=cid,
            ))
        elif self.first_url is None:
            self.first_url, self.first_url_line = norm, self.line_no
            if target == "openai" and not url.startswith("/v1/"):
                out.append(batch(
                    "url_form", "batch.url_form", "url",
                    f"The url '{url}' lacks the '/v1' prefix of OpenAI's documented form "
                    f"'/v1{url}'.",
                    f"Use \"url\": \"/v1{url}\" for OpenAI (Azure accepts both forms).",
                    cid=cid, severity="warning",
                ))
            elif len(out) == found:
                self._url_ok = (url, body_api if check_body else None)
        elif norm != self.first_url:
            out.append(batch(
                "url_mismatch", "batch.url_not_same", "url",
                f"The url '{url}' differs from the url '{self.first_url}' of line {self.first_url_line}; "
                "all lines must use the same url.",
                "Use one url on every line (split different endpoints into separate batches).",
                cid=cid,
            ))
        elif self._url_ok is None:
            self._url_ok = (url, body_api if check_body else None)
        if any(f.code == "url_mismatch" for f in out[found:]):
            check_body = False  # which API the body is for is unclear; the batch fails anyway
        return check_body, body_api

    def _check_model(self, model: Any, cid: str | None, out: list[Finding]) -> None:
        batch = self._batch
        target = self.target
        if not isinstance(model, str) or not model:
            if target == "azure":
                msg = _AZURE_MODEL_MESSAGE
            else:
                msg = "Missing or invalid 'model' in body: every line must name the same model."
            out.append(batch(
                "invalid_request", "batch.model_missing", "body.model",
                msg,
                "Set body.model to the batch deployment name (Azure) or model name (OpenAI), the "
                "same on every line.",
                cid=cid,
            ))
            return
        found = len(out)
        if self.first_model is None:
            self.first_model, self.first_model_line = model, self.line_no
        elif model != self.first_model:
            out.append(batch(
                "model_mismatch", "batch.model_mismatch", "body.model",
                f"This line targets '{model}', but line {self.first_model_line} targets "
                f"'{self.first_model}'; every line of a batch must use the same "
                + ("deployment." if target == "azure" else "model."),
                "Use one deployment per file (split the file by model).",
                cid=cid,
            ))
        if self.deployments is not None:
            kind = self.deployments.get(model)
            if kind is None:
                out.append(batch(
                    "model_not_found", "batch.model_not_found", "body.model",
                    f"The {'deployment' if target == 'azure' else 'model'} '{model}' named in "
                    "'model' was not found.",
                    "Use an existing deployment name: " + ", ".join(sorted(self.deployments))[:200] + ".",
                    cid=cid,
                ))
            elif target == "azure" and kind != "globalbatch":
                out.append(batch(
                    "invalid_request", "batch.deployment_kind", "body.model",
                    f"The deployment '{model}' is of type '{kind}'; batch requests need a "
                    "Global Batch (globalbatch) deployment.",
                    "Create a Global Batch deployment of the model and name it in body.model.",
                    cid=cid,
                ))
        if len(out) == found and model == self.first_model:
            self._model_ok = model


class _PlainMessage(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    content: str


def _fast_decoder(keys: frozenset[str], messages: str, kind: Any) -> Any:
    """A msgspec decoder of one request line whose body holds `messages` of `kind`, a ``model``
    string and any other parameter of `keys` as raw JSON text. Anything else (an unknown key,
    a message that is not plain role + text content) fails to decode: the full path decides."""
    options = sorted(keys - {"model", messages})
    body = msgspec.defstruct(
        "Body", [("model", str), (messages, kind), *[(name, msgspec.Raw, msgspec.UNSET) for name in options]],
        forbid_unknown_fields=True,
    )
    line = msgspec.defstruct("Line", [("custom_id", str), ("method", str), ("url", str), ("body", body)],
                             forbid_unknown_fields=True)
    return msgspec.json.Decoder(line)


_INVALID = object()
_SURROGATE = object()
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_ABSENT = object()
_PLAIN_ROLES = frozenset({"system", "user", "assistant", "developer"})
_SCALARS = frozenset({str, int, float, bool, type(None)})
_LINE_KEY_SET = frozenset(_LINE_KEYS)


def _parse_slowly(stripped: bytes) -> Any:
    """The standard library's verdict on a line orjson refused: the object, `_INVALID`, or
    `_SURROGATE` (JSON text holding an unpaired surrogate escape)."""
    try:
        obj = json.loads(stripped.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _INVALID
    if _SURROGATE_ESCAPE.search(stripped) and not _is_unicode_text(obj):
        return _SURROGATE
    return obj


def lint_batch_file(
    source: Any,
    *,
    target: Target = "openai",
    deployments: Mapping[str, str] | None = None,
    endpoint: str | None = None,
    max_lines: int | None = None,
    max_bytes: int | None = None,
) -> Iterator[Finding]:
    """Lint a batch input file, streaming, and yield findings in line order.

    Args:
        source: a path, the file's bytes, or an iterable of lines (bytes or str).
        target: ``"azure"`` or ``"openai"`` (limits, url forms, schema rule set, BOM message).
        deployments: deployment (Azure) or model (OpenAI) name -> kind (``"globalbatch"`` or
            ``"standard"``). None skips ``model_not_found`` and, on Azure, the Global Batch
            kind check (``invalid_request``).
        endpoint: the batch's ``endpoint`` (e.g. ``/chat/completions`` or ``/v1/responses``);
            every ``url`` must name it (the ``/v1`` prefix is optional on Azure). Lines whose
            url is a Responses endpoint get the Responses body rules (`lint_request_body` with
            ``api="responses"``). None: the first line's url, which must be a batch endpoint of
            the target.
        max_lines, max_bytes: override the target's limits (100,000 / 200 MB on Azure,
            50,000 / 200 MB on OpenAI).

    Yields:
        `Finding` objects; ``line`` is the 1-based physical line (None for the file-level
        ``empty_file``). Batch-scope findings fail the batch; request-scope findings (from
        `lint_request_body`, paths prefixed ``body.``) give that line a 400 in the error file.
    """
    linter = BatchFileLinter(target=target, deployments=deployments, endpoint=endpoint,
                             max_lines=max_lines, max_bytes=max_bytes)
    feed = linter.feed
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            for raw in _bounded_lines(handle):
                found = feed(raw)
                if found:
                    yield from found
    else:
        for raw in _iter_lines(source):
            found = feed(raw)
            if found:
                yield from found
    yield from linter.close()


def has_errors(findings: Iterable[Finding]) -> bool:
    """True when any finding has severity ``error``."""
    return any(f.severity == "error" for f in findings)


def findings_to_frame(findings: Iterable[Finding]) -> Any:
    """The findings as a pandas DataFrame, one row each, columns ``line, severity, code,
    path, message, fix, custom_id, scope, rule, param`` (empty frame with those columns when
    there are none)."""
    import pandas as pd

    cols = ["line", "severity", "code", "path", "message", "fix", "custom_id", "scope", "rule", "param"]
    rows = [{c: getattr(f, c) for c in cols} for f in findings]
    frame = pd.DataFrame(rows, columns=cols)
    frame["line"] = frame["line"].astype("Int64")
    return frame


def findings_by_rule(findings: Iterable[Finding], *, max_lines: int = 5) -> Any:
    """The findings grouped into one row per distinct problem, errors first.

    Findings of the same rule with the same message and fix (e.g. one schema mistake repeated on
    every line of a file) become one row with their count and the first few line numbers.

    Args:
        findings: from `lint_batch_file`, `lint_request_body`, `lint_strict_schema`, ... (any
            iterable; consumed once).
        max_lines: how many line numbers (and custom_ids) to list before ``(+N more)``.

    Returns:
        A DataFrame with columns ``severity, rule, code, count, lines, custom_ids, path,
        message, fix``; messages and fixes are complete (never shortened). Empty (with those
        columns) when there are no findings.
    """
    import pandas as pd

    groups: dict[tuple[str, str, str, str | None], dict[str, Any]] = {}
    for f in findings:
        key = (f.severity, f.rule or f.code, f.message, f.fix)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"finding": f, "count": 0, "lines": [], "ids": [], "more_lines": 0, "more_ids": 0}
        group["count"] += 1
        if f.line is not None:
            if len(group["lines"]) < max_lines:
                group["lines"].append(f.line)
            else:
                group["more_lines"] += 1
        if f.custom_id is not None:
            if len(group["ids"]) < max_lines:
                group["ids"].append(f.custom_id)
            else:
                group["more_ids"] += 1

    def listing(items: list[Any], more: int) -> str:
        text = ", ".join(str(i) for i in items)
        return f"{text} (+{more} more)" if more else text

    rows = []
    for group in sorted(groups.values(), key=lambda g: (g["finding"].severity != "error",
                                                        g["lines"][0] if g["lines"] else 0)):
        f = group["finding"]
        rows.append({
            "severity": f.severity,
            "rule": f.rule or f.code,
            "code": f.code,
            "count": group["count"],
            "lines": listing(group["lines"], group["more_lines"]),
            "custom_ids": listing(group["ids"], group["more_ids"]),
            "path": f.path,
            "message": f.message,
            "fix": f.fix or "",
        })
    columns = ["severity", "rule", "code", "count", "lines", "custom_ids", "path", "message", "fix"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["count"] = frame["count"].astype("int64")
    return frame


def findings_table(findings: Iterable[Finding], *, max_lines: int = 5, title: str | None = None) -> Any:
    """The findings for people: grouped by rule, with count, first lines, full message and fix.

    In a notebook it renders as an HTML table with every message and fix in full (wrapped, never
    cut at 50 characters); as text (``print``, papermill logs) one block per problem::

        error  schema.default_not_permitted (invalid_schema): 3 findings, lines 2, 3, 4
            at: body.response_format.json_schema.schema.properties.HeightInFeet.default
            message: Invalid schema for response_format 'info': In context=(...), 'default' is not permitted.
            fix: Remove 'default'; ...

    With no findings it displays the sentence "No findings." (text and HTML).

    Args:
        findings: any iterable of `Finding` (from the lints of this module or `batchkit.schema`).
        max_lines: line numbers listed per problem before ``(+N more)``.
        title: an optional first line; default: ``N finding(s): E error(s), W warning(s)``.

    Returns:
        A `batchkit.tables.ReportTable`; ``.frame`` is `findings_by_rule`'s DataFrame.
    """
    from batchkit.tables import ReportTable

    frame = findings_by_rule(findings, max_lines=max_lines)
    total = int(frame["count"].sum()) if len(frame) else 0
    errors = int(frame.loc[frame["severity"] == "error", "count"].sum()) if len(frame) else 0
    if title is None:
        title = f"{total} finding(s): {errors} error(s), {total - errors} warning(s)"

    def text(frame: Any) -> str:
        blocks = []
        for rec in frame.to_dict(orient="records"):
            head = f"{rec['severity']}  {rec['rule']} ({rec['code']}): {rec['count']} finding(s)"
            if rec["lines"]:
                head += f", line(s) {rec['lines']}"
            block = [head]
            if rec["custom_ids"]:
                block.append(f"    custom_id: {rec['custom_ids']}")
            if rec["path"]:
                block.append(f"    at: {rec['path']}")
            block.append(f"    message: {rec['message']}")
            if rec["fix"]:
                block.append(f"    fix: {rec['fix']}")
            blocks.append("\n".join(block))
        return "\n".join(blocks)

    return ReportTable(frame, empty="No findings.", title=title, text=text)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_deployments(items: Sequence[str]) -> dict[str, str] | None:
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        name, _, kind = item.partition("=")
        out[name] = kind or "globalbatch"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m batchkit lint FILE [--target azure|openai] [--json]``.

    Prints one finding per line (``LINE: SEVERITY CODE PATH: MESSAGE`` or, with ``--json``,
    one JSON object per finding with keys line, code, path, message, severity, fix, ...) and
    a summary on stderr. Exit status 1 when any finding is an error, 0 otherwise, 2 for usage
    problems (e.g. the file does not exist).
    """
    parser = argparse.ArgumentParser(
        prog="python -m batchkit lint",
        description="Check a batch JSONL file before upload (what the service would reject).",
    )
    parser.add_argument("file", help="the batch input file (.jsonl)")
    parser.add_argument("--target", choices=("azure", "openai"), default="azure",
                        help="rules and limits of this service (default: azure)")
    parser.add_argument("--json", action="store_true", help="one JSON object per finding")
    parser.add_argument("--endpoint", default=None,
                        help="the batch endpoint every url must name, e.g. /chat/completions")
    parser.add_argument("--deployment", action="append", default=[], metavar="NAME[=KIND]",
                        help="a deployment that exists (kind globalbatch unless given); repeat")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if not os.path.isfile(args.file):
        print(f"error: {args.file}: no such file; give the path of a batch .jsonl file", file=sys.stderr)
        return 2
    if hasattr(sys.stdout, "reconfigure"):  # a finding quoting odd text must never crash the report
        sys.stdout.reconfigure(errors="backslashreplace")
    errors = warnings = 0
    for f in lint_batch_file(
        args.file, target=args.target, deployments=_parse_deployments(args.deployment),
        endpoint=args.endpoint,
    ):
        if f.severity == "error":
            errors += 1
        else:
            warnings += 1
        if args.json:
            print(json.dumps(f.to_dict(), ensure_ascii=False))
        else:
            where = f"{f.line}" if f.line is not None else "-"
            path = f" {f.path}" if f.path else ""
            print(f"{where}: {f.severity} {f.code}{path}: {f.message}")
    print(f"{args.file}: {errors} error(s), {warnings} warning(s) (target {args.target})", file=sys.stderr)
    return 1 if errors else 0


#: Line decoders of the lint's fast path, by API (built once, at import: pure data, no I/O).
_FAST_DECODERS: dict[str, Any] = {
    "chat": _fast_decoder(CHAT_BODY_KEYS, "messages", list[_PlainMessage]),
    "responses": _fast_decoder(RESPONSES_BODY_KEYS, "input", str | list[_PlainMessage]),
}
