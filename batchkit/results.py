"""Download a batch's output and error files and turn them into one table row per request.

Every input `custom_id` gets exactly one row, in input order, whatever happened to it; the
`outcome` column says what:

| outcome          | Chat Completions body | Responses body |
|------------------|-----------------------|----------------|
| `ok`             | HTTP 200, `finish_reason` `stop`, content is JSON matching the schema | HTTP 200, `status` `completed`, the `output_text` is JSON matching the schema |
| `refusal`        | `message.refusal` set | a `refusal` content part |
| `truncated`      | `finish_reason` `length` (content cut off) | `status` `incomplete`, reason `max_output_tokens` |
| `content_filter` | `finish_reason` `content_filter` | `status` `incomplete`, reason `content_filter` |
| `invalid`        | HTTP 200 but the content is not JSON, does not match the schema, or breaks a constraint of the original schema | the same, for the `output_text` |
| `http_error`     | the request was rejected: an error-file line with a non-200 `status_code`, or an error code | the same; also a body with `status` `failed` |
| `expired`        | not run before the 24 h window closed (`batch_expired`) | |
| `cancelled`      | not run because the batch was cancelled (`batch_cancelled`) | |
| `missing`        | no line in either file (the batch did not finish; the batch status decides if known) | |

`invalid` is the one name for "HTTP 200, but the answer is not a valid instance of the schema";
the `error` column says which (not JSON, not an object, which field broke which rule).
For Responses bodies the usage columns hold `input_tokens` / `output_tokens` under the same
names (`prompt_tokens`, `completion_tokens`), and `finish_reason` holds the body's `status`
(`completed`) or, when incomplete, its `incomplete_details.reason`.

Typed columns (from the schema the requests were built from, or better the ORIGINAL schema
before the strict conversion, `original_schema=`): `integer` -> nullable `Int64`, `number` ->
`float64`, `boolean` -> nullable `boolean`, `enum` -> `category`, string `format` `date` ->
`datetime64[ns]` and `date-time` -> `datetime64[ns, UTC]`, arrays -> list values (list columns
in Parquet), nested objects -> the object (a dict) plus one dotted column per nested field
(`address.city`). A column holds only values of its type: a value of another type (possible in
an `invalid` row) is left empty there, and the `error` column says what was wrong. Answers are
checked with a compiled validator (jsonschema-rs) against `batchkit.schema.checking_schema`:
the strict structure plus every constraint of the original schema, including those the target
does not enforce (`minimum`, `pattern`, lengths, formats), so no `ok` row breaks one.

Parsing streams: a path, the bytes of a file, an iterable of lines (an HTTP stream), or lines
already parsed, through orjson; nothing but the answers' values is kept. For files too large to
hold as a DataFrame, `parse_results_to_parquet` writes the same table to Parquet chunk by chunk.
"""

from __future__ import annotations

import io
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pandas as pd

from batchkit._gc import paused as _gc_paused
# (the checked downloads, also found here: the one implementation is in batchkit.downloads)
from batchkit.downloads import download_input_lines, download_results
from batchkit.errors import ResultsError

OUTCOMES: tuple[str, ...] = (
    "ok",
    "refusal",
    "truncated",
    "content_filter",
    "http_error",
    "expired",
    "cancelled",
    "invalid",
    "missing",
)
INFO_COLUMNS: tuple[str, ...] = (
    "outcome",
    "error",
    "finish_reason",
    "status_code",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
)
_ERROR_OUTCOMES = {"batch_expired": "expired", "batch_cancelled": "cancelled"}


class ResultFiles:
    """The output and error files of a batch, plus where they came from.

    Made from the files' verified bytes (`download_results`: ``output_data`` / ``error_data``) or
    from lines already parsed (``output_lines`` / ``error_lines``, lists of dicts). The lines of
    bytes are parsed when first read; until then `parse_results` streams the bytes (the fast
    path, no dict per line), and once they were read (and perhaps changed) it reads the lines.
    """

    def __init__(
        self,
        batch_id: str | None,
        status: str | None,
        output_lines: list[dict[str, Any]] | None = None,
        error_lines: list[dict[str, Any]] | None = None,
        output_file_id: str | None = None,
        error_file_id: str | None = None,
        *,
        output_data: bytes | None = None,
        error_data: bytes | None = None,
    ) -> None:
        self.batch_id = batch_id
        self.status = status
        self.output_file_id = output_file_id
        self.error_file_id = error_file_id
        self.output_data = output_data if output_lines is None else None
        self.error_data = error_data if error_lines is None else None
        self._lines: dict[str, list[dict[str, Any]] | None] = {"output": output_lines, "error": error_lines}

    def _read(self, kind: str) -> list[dict[str, Any]]:
        lines = self._lines[kind]
        if lines is None:
            data = getattr(self, f"{kind}_data")
            lines = parse_jsonl(data, source=self.source_name(kind)) if data else []
            self._lines[kind] = lines
            setattr(self, f"{kind}_data", None)
        return lines

    @property
    def output_lines(self) -> list[dict[str, Any]]:
        """The output file's lines as dicts (parsed from its bytes when first read)."""
        return self._read("output")

    @output_lines.setter
    def output_lines(self, lines: list[dict[str, Any]]) -> None:
        self._lines["output"], self.output_data = lines, None

    @property
    def error_lines(self) -> list[dict[str, Any]]:
        """The error file's lines as dicts (parsed from its bytes when first read)."""
        return self._read("error")

    @error_lines.setter
    def error_lines(self, lines: list[dict[str, Any]]) -> None:
        self._lines["error"], self.error_data = lines, None

    @property
    def lines(self) -> list[dict[str, Any]]:
        """Output lines followed by error lines."""
        return [*self.output_lines, *self.error_lines]

    def source_name(self, kind: str) -> str:
        """How errors name one of the files: ``output file file-abc`` (or ``output file``)."""
        file_id = self.output_file_id if kind == "output" else self.error_file_id
        return f"{kind} file {file_id}" if file_id else f"{kind} file"

    def sources(self) -> list[tuple[str, Any]]:
        """``(name, bytes or lines)`` of each file, for `parse_results`: the bytes while the lines
        were never read, else the lines."""
        out: list[tuple[str, Any]] = []
        for kind in ("output", "error"):
            data = getattr(self, f"{kind}_data")
            lines = self._lines[kind]
            out.append((self.source_name(kind), data if lines is None and data is not None else lines or []))
        return out

    def __repr__(self) -> str:
        def size(kind: str) -> str:
            lines = self._lines[kind]
            if lines is not None:
                return f"{len(lines)} lines"
            data = getattr(self, f"{kind}_data")
            return f"{len(data):,} bytes" if data is not None else "none"

        return (f"ResultFiles(batch_id={self.batch_id!r}, status={self.status!r}, output={size('output')}, "
                f"error={size('error')}, output_file_id={self.output_file_id!r}, error_file_id={self.error_file_id!r})")


# --------------------------------------------------------------------------------------------
# Reading JSONL
# --------------------------------------------------------------------------------------------


def _raw_lines(source: Any) -> Iterator[Any]:
    """Physical lines (bytes, memoryview or str) of a path, bytes, or an iterable of lines."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            yield from handle
        return
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield from io.BytesIO(source)  # (split in C; a bytes buffer is shared, not copied)
        return
    yield from source


def _odd_line(raw: Any, number: int, name: str, exc: Exception) -> Any:
    """A line orjson refused: None when blank, the object after a leading BOM on line 1, else
    `ResultsError` naming the line."""
    text = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    if not text.strip():
        return None
    if number == 1 and text.startswith(b"\xef\xbb\xbf"):
        try:
            return orjson.loads(text[3:])
        except orjson.JSONDecodeError:
            pass
    raise ResultsError(f"{name} line {number} is not JSON ({exc}); the file may be truncated.", line=number) from None


def iter_jsonl(source: Any, *, name: str = "file") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL source, streaming.

    Args:
        source: a path, the bytes of a file, or an iterable of lines (bytes or str, e.g. an HTTP
            response's ``iter_lines()``); dicts in the iterable are passed through.
        name: how errors name the source (e.g. ``output file file-abc``).

    Raises:
        ResultsError: a line that is not JSON or not an object, naming the line.
    """
    loads = orjson.loads
    number = 0
    for raw in _raw_lines(source):
        number += 1
        if isinstance(raw, dict):
            yield number, raw
            continue
        try:
            record = loads(raw)
        except orjson.JSONDecodeError as exc:
            record = _odd_line(raw, number, name, exc)
            if record is None:
                continue
        if not isinstance(record, dict):
            raise ResultsError(f"{name} line {number} is not a JSON object.", line=number)
        yield number, record


def parse_jsonl(text: str | bytes, *, source: str = "file") -> list[dict[str, Any]]:
    """Parse JSONL text (blank lines skipped); a bad line raises `ResultsError` naming it."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    with _gc_paused():
        try:  # the common file, in C: every line one JSON object (the line ends are JSON whitespace)
            records = list(map(orjson.loads, io.BytesIO(text)))
        except orjson.JSONDecodeError:
            records = None  # a blank line, a BOM or a bad line: read again line by line, which names it
        if records is not None and set(map(type, records)) <= _DICT_ONLY:
            return records
        del records
        return [record for _, record in iter_jsonl(text, name=source)]


_DICT_ONLY = frozenset({dict})


# --------------------------------------------------------------------------------------------
# Schemas: the validator and the column types, compiled once
# --------------------------------------------------------------------------------------------


def _schema_dict(schema: Any) -> dict[str, Any] | None:
    if schema is None:
        return None
    if isinstance(schema, Mapping):
        if schema.get("type") == "json_schema":  # a chat response_format, or a Responses text.format
            inner = schema.get("json_schema")
            return dict(inner["schema"] if isinstance(inner, Mapping) else schema["schema"])
        if "schema" in schema and "properties" not in schema:
            return dict(schema["schema"])
        return dict(schema)
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    raise ResultsError(f"schema={schema!r}: pass a JSON schema dict, a response_format or a pydantic model class.")


@dataclass(frozen=True)
class _Column:
    """One answer column: its name, where its value sits in the answer, and its kind."""

    name: str
    path: tuple[str, ...]
    kind: str  # int, float, bool, category, date, datetime, string, array, object, any
    categories: tuple[Any, ...] = ()


def _resolve(node: Any, defs: Mapping[str, Any], depth: int = 0) -> Any:
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str) and depth < 32:
        node = defs.get(node["$ref"].rsplit("/", 1)[-1], {})
        depth += 1
    return node


def _non_null(node: Any, defs: Mapping[str, Any]) -> Any:
    """The schema of the non-null values of a node (``anyOf: [X, null]``, ``type: [x, null]``)."""
    node = _resolve(node, defs)
    if isinstance(node, Mapping) and isinstance(node.get("anyOf"), list):
        branches = [b for b in (_resolve(b, defs) for b in node["anyOf"])
                    if not (isinstance(b, Mapping) and b.get("type") == "null")]
        if len(branches) == 1:
            merged = {k: v for k, v in node.items() if k != "anyOf"}
            return {**merged, **branches[0]} if isinstance(branches[0], Mapping) else branches[0]
        return {}
    return node


def _kind(node: Any, defs: Mapping[str, Any]) -> tuple[str, tuple[Any, ...], Any]:
    node = _non_null(node, defs)
    if not isinstance(node, Mapping):
        return "any", (), node
    enum = node.get("enum")
    if isinstance(enum, list) and enum:
        values = tuple(v for v in enum if v is not None)
        if values and (all(isinstance(v, str) for v in values) or all(type(v) is int for v in values)):
            return "category", values, node
    types = node.get("type")
    kinds = [types] if isinstance(types, str) else [t for t in types or [] if t != "null"]
    if len(kinds) != 1:
        return "any", (), node
    kind = kinds[0]
    if kind == "integer":
        return "int", (), node
    if kind == "number":
        return "float", (), node
    if kind == "boolean":
        return "bool", (), node
    if kind == "string":
        fmt = node.get("format")
        return ("date" if fmt == "date" else "datetime" if fmt == "date-time" else "string"), (), node
    if kind == "array":
        return "array", (), node
    if kind == "object":
        return "object", (), node
    return "any", (), node


def _columns(schema: Mapping[str, Any]) -> list[_Column]:
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), Mapping):
            defs.update(schema[key])
    out: list[_Column] = []

    def walk(props: Mapping[str, Any], prefix: tuple[str, ...], depth: int) -> None:
        for key, sub in props.items():
            path = (*prefix, str(key))
            kind, categories, node = _kind(sub, defs)
            out.append(_Column(".".join(path), path, kind, categories))
            if kind == "object" and depth < 8 and isinstance(node.get("properties"), Mapping):
                walk(node["properties"], path, depth + 1)

    root = _resolve(schema, defs)
    if isinstance(root, Mapping) and isinstance(root.get("properties"), Mapping):
        walk(root["properties"], (), 0)
    return out


def _first_error(validator: Any, values: Any) -> str:
    for error in validator.iter_errors(values):
        where = "/".join(map(str, error.instance_path)) or "(root)"
        return f"content does not match the schema at {where}: {error.message}"
    return "content does not match the schema"


class AnswerSchema:
    """A schema compiled once for reading answers: the validator and the typed columns.

    Args:
        schema: the schema the requests were sent with (a JSON schema dict, a chat
            `response_format`, a Responses `text.format`, or a pydantic model class).
        original_schema: the schema before the strict conversion (a pydantic model or a dict). Its
            constraints are all checked (`batchkit.schema.checking_schema`), also those the target
            does not enforce, and its types give the columns. Default: `schema`.

    `check(values)` returns None for a valid answer, else the reason (naming the field).
    """

    def __init__(self, schema: Any = None, *, original_schema: Any = None) -> None:
        import jsonschema_rs

        from batchkit.schema import checking_schema

        sent = _schema_dict(schema)
        source = original_schema if original_schema is not None else sent
        if source is None:
            raise ResultsError("AnswerSchema needs a schema or an original_schema.")
        if isinstance(source, Mapping):
            source = _schema_dict(source)
        self.check_schema = checking_schema(source)
        self.columns = _columns(self.check_schema)
        self.fields = [c.name for c in self.columns if len(c.path) == 1]
        try:
            self.validator = jsonschema_rs.validator_for(self.check_schema, validate_formats=True)
            self.sent_validator = (jsonschema_rs.validator_for(sent, validate_formats=False)
                                   if sent is not None and original_schema is not None else None)
        except (ValueError, jsonschema_rs.ValidationError) as exc:  # the schema itself is not valid
            raise ResultsError(f"The schema cannot be compiled for checking answers: {exc}. Pass the schema "
                               "the requests were built from.") from None
        self._is_valid = self.validator.is_valid

    def check(self, values: Any) -> str | None:
        """None when `values` is a valid answer, else why not (field and rule)."""
        if self._is_valid(values):
            return None
        reason = _first_error(self.validator, values)
        if self.sent_validator is not None and self.sent_validator.is_valid(values):
            reason += " (a constraint of the original schema the service does not enforce for this target)"
        return reason


def _checker(validator: Any) -> Callable[[Any], str | None] | None:
    """`AnswerSchema.check`, or the same check made from a `jsonschema`-style validator."""
    if validator is None:
        return None
    if isinstance(validator, AnswerSchema):
        return validator.check
    if hasattr(validator, "is_valid") and hasattr(validator, "iter_errors"):
        def check(values: Any) -> str | None:
            if validator.is_valid(values):
                return None
            first = next(iter(validator.iter_errors(values)), None)
            if first is None:
                return "content does not match the schema"
            path = getattr(first, "absolute_path", None)
            if path is None:
                path = getattr(first, "instance_path", ())
            where = "/".join(map(str, path)) or "(root)"
            return f"content does not match the schema at {where}: {first.message}"
        return check
    if callable(validator):
        return validator
    raise ResultsError("validator must be an AnswerSchema, a jsonschema validator or a function.")


# --------------------------------------------------------------------------------------------
# One line
# --------------------------------------------------------------------------------------------


def _error_text(error: Any) -> str | None:
    if isinstance(error, Mapping):
        code = error.get("code")
        message = error.get("message")
        if code and message:
            return f"{code}: {message}"
        return str(message or code or error)
    return None if error is None else str(error)


_Verdict = tuple  # (outcome, error, finish_reason, status_code, prompt, completion, total, values)


class _FastUsage(msgspec.Struct):
    """Chat usage (prompt/completion tokens) or Responses usage (input/output tokens)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class _FastMessage(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None


class _FastChoice(msgspec.Struct):
    message: _FastMessage
    finish_reason: str | None = None


class _FastPart(msgspec.Struct):
    type: str
    text: str | None = None
    refusal: str | None = None


class _FastItem(msgspec.Struct):
    type: str
    content: list[_FastPart] | None = None


class _FastBody(msgspec.Struct):
    """A chat completion (``choices``) or a Responses body (``status``, ``output``)."""

    choices: list[_FastChoice] | None = None
    usage: _FastUsage | None = None
    status: str | None = None
    output: list[_FastItem] | None = None


def _fast_responses_text(body: _FastBody) -> str | None:
    """The joined output_text of a completed Responses body with no refusal, else None."""
    if body.status != "completed" or not body.output:
        return None
    texts = []
    for item in body.output:
        if item.type != "message" or item.content is None:
            continue
        for part in item.content:
            if part.type == "output_text" and part.text is not None:
                texts.append(part.text)
            elif part.type == "refusal":
                return None
    return "".join(texts) if texts else None


class _FastResponse(msgspec.Struct):
    status_code: int
    body: _FastBody


class _FastLine(msgspec.Struct):
    custom_id: str
    response: _FastResponse | None = None


#: Decodes an output line's custom_id and the parts of a chat completion or a Responses body
#: an answer needs.
_FAST_LINE = msgspec.json.Decoder(_FastLine)

def _check_content(content: Any, check: Callable[[Any], str | None] | None) -> tuple[str, str | None, Any]:
    if type(content) is not str:
        return "invalid", "content is not JSON: the answer has no text", None
    try:
        values = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        return "invalid", f"content is not JSON: {exc}", None
    if type(values) is not dict:
        return "invalid", "content is JSON but not an object", None
    if check is not None:
        problem = check(values)
        if problem is not None:
            return "invalid", problem, values
    return "ok", None, values


def _responses_text(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(the joined ``output_text`` parts, the first refusal) of a Responses body's message items,
    read as the SDK's ``Response.output_text`` reads them."""
    texts: list[str] = []
    refusal: str | None = None
    for item in body.get("output") or []:
        if not isinstance(item, Mapping) or item.get("type") != "message":
            continue
        for part in item.get("content") or []:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "output_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "refusal" and refusal is None:
                refusal = str(part.get("refusal") or "refused")
    return ("".join(texts) if texts else None), refusal


def _responses_verdict(body: Mapping[str, Any], check: Any) -> _Verdict:
    usage = body.get("usage") or {}
    tokens = (usage.get("input_tokens"), usage.get("output_tokens"), usage.get("total_tokens"))
    status = body.get("status")
    details = body.get("incomplete_details") or {}
    reason = details.get("reason") if isinstance(details, Mapping) else None
    finish = reason if status == "incomplete" and reason else status
    text, refusal = _responses_text(body)
    if refusal is not None:
        return ("refusal", refusal, finish, 200, *tokens, None)
    if status == "failed" or (body.get("error") and status != "completed"):
        return ("http_error", _error_text(body.get("error")) or "the response failed", finish, 200, *tokens, None)
    if status == "incomplete":
        if reason == "content_filter":
            return ("content_filter", "the answer was withheld by the content filter", finish, 200, *tokens, None)
        why = (f"the answer is incomplete ({reason})" if reason and reason != "max_output_tokens"
               else "the answer hit max_output_tokens and was cut off")
        return ("truncated", why, finish, 200, *tokens, None)
    if text is None:
        return ("invalid", "the response has no output_text", finish, 200, *tokens, None)
    outcome, error, values = _check_content(text, check)
    return (outcome, error, finish, 200, *tokens, values)


def _verdict(line: Mapping[str, Any], check: Callable[[Any], str | None] | None) -> _Verdict:
    """What happened to one request: the outcome and the fields of the table's info columns."""
    response = line.get("response")
    if not response:
        error = line.get("error")
        code = error.get("code") if isinstance(error, Mapping) else None
        return (_ERROR_OUTCOMES.get(str(code), "http_error"),
                _error_text(error) or "no response and no error in the line", None, None, None, None, None, None)
    status = response.get("status_code")
    body = response.get("body")
    if status != 200:
        inner = body.get("error") if isinstance(body, Mapping) else None
        error = _error_text(inner) or _error_text(line.get("error")) or f"HTTP {status}"
        return ("http_error", error, None, status, None, None, None, None)
    if type(body) is not dict:
        return ("invalid", "the response body is not a JSON object", None, status, None, None, None, None)
    choices = body.get("choices")
    if choices is None and (body.get("object") == "response" or "output" in body):
        return _responses_verdict(body, check)
    usage = body.get("usage") or {}
    p, c, t = usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens")
    if not choices:
        return ("invalid", "the response has no choices", None, 200, p, c, t, None)
    choice = choices[0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    refusal = message.get("refusal")
    if refusal:
        return ("refusal", str(refusal), finish, 200, p, c, t, None)
    if finish == "length":
        return ("truncated", "the answer hit max_tokens and was cut off", finish, 200, p, c, t, None)
    if finish == "content_filter":
        return ("content_filter", "the answer was withheld by the content filter", finish, 200, p, c, t, None)
    outcome, error, values = _check_content(message.get("content"), check)
    return (outcome, error, finish, 200, p, c, t, values)


def classify_line(line: Mapping[str, Any], *, validator: Any = None) -> dict[str, Any]:
    """Read one output or error line into `custom_id`, `outcome`, `error`, usage and the parsed `values`.

    Args:
        line: one JSON object from an output or error file (Chat Completions or Responses body).
        validator: an `AnswerSchema`, a `jsonschema`-style validator (``is_valid`` and
            ``iter_errors``) or a function returning the reason an answer is wrong (None if it is
            right); content that fails it is `invalid`.
    """
    outcome, error, finish, status, p, c, t, values = _verdict(line, _checker(validator))
    return {
        "custom_id": line.get("custom_id"),
        "outcome": outcome,
        "error": error,
        "finish_reason": finish,
        "status_code": status,
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": t,
        "values": values if values is not None else {},
    }


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def _sources(results: Any) -> tuple[list[tuple[str, Any]], str | None]:
    """(name, source) pairs to read, and the batch status a `ResultFiles` carries."""
    if isinstance(results, ResultFiles):
        return results.sources(), results.status
    if isinstance(results, (str, os.PathLike, bytes, bytearray, memoryview)):
        return [(f"{results}" if isinstance(results, (str, os.PathLike)) else "results", results)], None
    if isinstance(results, (list, tuple)) and results and all(
            isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)) for item in results):
        return [(str(item) if isinstance(item, (str, os.PathLike)) else f"results part {i + 1}", item)
                for i, item in enumerate(results)], None
    return [("results", results)], None


class _Collector:
    """Accumulates one tuple per line, in file order:
    ``(custom_id, outcome, error, finish_reason, status_code, prompt, completion, total, values, line)``."""

    def __init__(self, answer_schema: AnswerSchema | None) -> None:
        self.schema = answer_schema
        self.check = answer_schema.check if answer_schema is not None else None
        self.rows: list[tuple[Any, ...]] = []
        self.names: list[tuple[int, str]] = []  # (first row, source name) per source
        self._columns: list[tuple[Any, ...]] | None = None
        self._index: Any = None

    def __len__(self) -> int:
        return len(self._columns[0]) if self._columns is not None else len(self.rows)

    def feed(self, lines: Iterable[Any], name: str, first_line: int = 1) -> int:
        """Read every line of one source (the hot loop: one orjson parse per line and, for the
        common answer, one for its content and one compiled-validator call). Returns the number
        of the last line read."""
        self.names.append((len(self.rows), name))
        rows_append = self.rows.append
        loads = orjson.loads
        JSONDecodeError = orjson.JSONDecodeError
        check = self.check
        is_valid = self.schema._is_valid if self.schema is not None else None
        verdict = _verdict
        number = first_line - 1
        fast = _FAST_LINE.decode
        FastError = (msgspec.DecodeError, msgspec.ValidationError)
        for raw in lines:
            number += 1
            if type(raw) is dict:
                line = raw
            else:
                # The common line, without building its dicts: a typed decode of just the fields
                # an ok answer needs (msgspec skips the rest); anything else takes the full path.
                try:
                    quick = fast(raw)
                except FastError:
                    quick = None
                if quick is not None:
                    response = quick.response
                    if response is not None and response.status_code == 200:
                        choices = response.body.choices
                        if choices is None and response.body.output is not None:
                            text = _fast_responses_text(response.body)
                            if text is not None:
                                try:
                                    values = loads(text)
                                except JSONDecodeError:
                                    values = None
                                if type(values) is dict and (is_valid is None or is_valid(values)):
                                    usage = response.body.usage
                                    if usage is None:
                                        rows_append((quick.custom_id, "ok", None, "completed", 200, None, None,
                                                     None, values, number))
                                    else:
                                        rows_append((quick.custom_id, "ok", None, "completed", 200,
                                                     usage.input_tokens, usage.output_tokens, usage.total_tokens,
                                                     values, number))
                                    continue
                        elif choices:
                            choice = choices[0]
                            message = choice.message
                            content = message.content
                            if choice.finish_reason == "stop" and not message.refusal and content is not None:
                                try:
                                    values = loads(content)
                                except JSONDecodeError:
                                    values = None
                                if type(values) is dict and (is_valid is None or is_valid(values)):
                                    usage = response.body.usage
                                    if usage is None:
                                        rows_append((quick.custom_id, "ok", None, "stop", 200, None, None, None,
                                                     values, number))
                                    else:
                                        rows_append((quick.custom_id, "ok", None, "stop", 200, usage.prompt_tokens,
                                                     usage.completion_tokens, usage.total_tokens, values, number))
                                    continue
                try:
                    line = loads(raw)
                except JSONDecodeError as exc:
                    line = _odd_line(raw, number, name, exc)  # blank, BOM or a clear error
                    if line is None:
                        continue
                if type(line) is not dict:
                    raise ResultsError(f"{name} line {number} is not a JSON object.", line=number)
            custom_id = line.get("custom_id")
            if type(custom_id) is not str:
                raise ResultsError(f"{name} line {number} has no custom_id; it cannot be matched to an input row.",
                                   line=number)
            # The common case, inline: HTTP 200, a chat completion that stopped, JSON content, valid.
            response = line.get("response")
            if response and response.get("status_code") == 200:
                body = response.get("body")
                choices = body.get("choices") if type(body) is dict else None
                if choices and type(choices) is list:
                    choice = choices[0]
                    message = choice.get("message") if type(choice) is dict else None
                    if type(message) is dict and choice.get("finish_reason") == "stop" and not message.get("refusal"):
                        content = message.get("content")
                        if type(content) is str:
                            try:
                                values = loads(content)
                            except JSONDecodeError:
                                values = None
                            if type(values) is dict and (is_valid is None or is_valid(values)):
                                usage = body.get("usage") or {}
                                rows_append((custom_id, "ok", None, "stop", 200, usage.get("prompt_tokens"),
                                             usage.get("completion_tokens"), usage.get("total_tokens"), values,
                                             number))
                                continue
            rows_append((custom_id, *verdict(line, check), number))
        return number

    def columns(self) -> list[tuple[Any, ...]]:
        """The rows as columns (custom_id, the seven info columns, values, line); the per-row
        tuples are dropped once transposed (so the garbage collector never walks them)."""
        if self._columns is None:
            self._columns = list(zip(*self.rows)) if self.rows else [() for _ in range(10)]
            self.rows = []
        return self._columns

    @property
    def ids(self) -> tuple[str, ...]:
        return self.columns()[0]

    def index(self) -> Any:
        """The custom_ids in file order as an Arrow array, checked unique (a repeated id names its line)."""
        if self._index is None:
            import pyarrow as pa
            import pyarrow.compute as pc

            ids = self.ids
            array = pa.array(ids, type=pa.large_string())
            if len(ids) and pc.count_distinct(array).as_py() != len(ids):
                seen: set[str] = set()
                row = next(i for i, cid in enumerate(ids) if cid in seen or seen.add(cid))  # type: ignore[func-returns-value]
                name = next(n for start, n in reversed(self.names) if start <= row)
                custom_id, line = ids[row], self.columns()[9][row]
                raise ResultsError(f"custom_id {custom_id!r} has two result lines ({name} line {line}); the files "
                                   "are inconsistent.", custom_id=custom_id, line=line)
            self._index = array
        return self._index

    def field_values(self) -> tuple[list[str], list[list[Any]]]:
        """The answer fields and, per field, its value in each row (file order)."""
        answers = self.columns()[8]
        if self.schema is not None:
            fields = list(self.schema.fields)
        else:
            fields = []
            seen: set[str] = set()
            for values in answers:
                if values:
                    for key in values:
                        if key not in seen:
                            seen.add(key)
                            fields.append(key)
        return fields, [[v.get(f) if v is not None else None for v in answers] for f in fields]


def _typed(values: list[Any], column: _Column | None) -> Any:
    """A column's values (file order) as an array of its kind; values of another type -> missing."""
    kind = column.kind if column is not None else "any"
    if kind == "int":
        clean = [v if type(v) is int else (int(v) if type(v) is float and v.is_integer() else None) for v in values]
        return _ints(clean)
    if kind == "float":
        return np.array([float(v) if type(v) in (int, float) else np.nan for v in values], dtype="float64")
    if kind == "bool":
        return pd.array([v if type(v) is bool else None for v in values], dtype="boolean")
    if kind == "category":
        allowed = set(column.categories)  # type: ignore[union-attr]
        clean = [v if (type(v) in (str, int) and v in allowed) else None for v in values]
        return pd.Categorical(clean, categories=list(column.categories))  # type: ignore[union-attr]
    if kind in ("date", "datetime"):
        text = pd.Series([v if type(v) is str else None for v in values], dtype="object")
        if kind == "date":
            return pd.to_datetime(text, format="%Y-%m-%d", errors="coerce").array
        return pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce").array
    if kind == "string":
        return _Strings([v if type(v) is str else None for v in values])
    if kind == "array":
        clean = [v if type(v) is list else None for v in values]
    elif kind == "object":
        clean = [v if type(v) is dict else None for v in values]
    else:
        clean = values
    out = np.empty(len(clean), dtype=object)
    out[:] = clean
    return out


def _ints(values: list[Any]) -> Any:
    """Python ints and None as a nullable Int64 array (through Arrow: a C loop, not pandas')."""
    import pyarrow as pa

    try:
        return pd.Int64Dtype().__from_arrow__(pa.array(values, type=pa.int64()))
    except (OverflowError, pa.ArrowInvalid):  # an integer beyond 64 bits
        return pd.array([v if v is None or -2**63 <= v < 2**63 else None for v in values], dtype="Int64")


class _Strings:
    """A string column on its way into the table: Arrow strings, put in order by an Arrow take
    (four times faster than pandas converting Python objects)."""

    def __init__(self, values: list[Any]) -> None:
        import pyarrow as pa

        self.array = pa.array(values, type=pa.large_string())

    def take(self, order: np.ndarray) -> Any:
        import pyarrow as pa
        from pandas.core.arrays.string_arrow import ArrowStringArray

        missing = order < 0
        indices = pa.array(order, mask=missing) if missing.any() else pa.array(order)
        taken = self.array.take(indices) if len(self.array) else pa.nulls(len(order), pa.large_string())
        return ArrowStringArray(pa.chunked_array([taken]), dtype=_STR)


_STR = pd.StringDtype("pyarrow", na_value=np.nan)


def _nested(values: list[Any], path: tuple[str, ...]) -> list[Any]:
    """The values at `path` inside each top-level value (None where a level is missing)."""
    out = []
    for value in values:
        for key in path:
            value = value.get(key) if type(value) is dict else None
        out.append(value)
    return out


def _input_frame(inputs: Any, id_column: str) -> pd.DataFrame:
    if inputs is None:
        return pd.DataFrame(columns=[id_column])
    if isinstance(inputs, pd.DataFrame):
        frame = inputs.copy()
    else:
        items = list(inputs)
        if all(isinstance(item, str) for item in items):
            frame = pd.DataFrame({id_column: pd.array(items, dtype="str")})
        elif all(isinstance(item, Mapping) for item in items):
            frame = pd.DataFrame({id_column: [item.get("custom_id", item.get(id_column)) for item in items]})
        else:
            raise ResultsError("inputs must be a DataFrame, a list of custom_id strings, or the request lines.")
    if id_column not in frame.columns:
        raise ResultsError(f"The input table has no {id_column!r} column (columns: "
                           f"{', '.join(map(str, frame.columns))}); pass id_column= naming the custom_id column.")
    ids = frame[id_column]
    if not (pd.api.types.is_string_dtype(ids.dtype) and not ids.isna().any()):
        frame[id_column] = ids.astype(str)
    import pyarrow.compute as pc

    if len(frame) and pc.count_distinct(_arrow_ids(frame[id_column])).as_py() != len(frame):
        values = frame[id_column].tolist()
        seen: set[str] = set()
        twice = next(v for v in values if v in seen or seen.add(v))  # type: ignore[func-returns-value]
        raise ResultsError(f"custom_id {twice!r} appears twice in the input table.", custom_id=twice)
    return frame.reset_index(drop=True)


def _answer_schema(schema: Any, original_schema: Any) -> AnswerSchema | None:
    if isinstance(schema, AnswerSchema):
        return schema
    if schema is None and original_schema is None:
        return None
    return AnswerSchema(schema, original_schema=original_schema)


def _collect(results: Any, answer_schema: AnswerSchema | None) -> tuple[_Collector, str | None]:
    collector = _Collector(answer_schema)
    sources, status = _sources(results)
    with _gc_paused():
        for name, source in sources:
            if isinstance(source, (str, os.PathLike)):
                with open(source, "rb") as handle:
                    collector.feed(handle, name)
            else:
                collector.feed(_raw_lines(source), name)
        collector.index()
    return collector, status


def _arrow_ids(column: pd.Series) -> Any:
    import pyarrow as pa

    try:
        return pa.array(column, type=pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(column.astype(str).tolist(), type=pa.large_string())


def _order(collector: _Collector, frame: pd.DataFrame, id_column: str, inputs: Any) -> np.ndarray:
    """For each input row, the position of its result line in file order (-1: none)."""
    import pyarrow.compute as pc

    found = pc.index_in(_arrow_ids(frame[id_column]), value_set=collector.index())
    if inputs is not None and len(found) - found.null_count != len(collector):
        known = set(frame[id_column].tolist())
        strangers = [cid for cid in collector.ids if cid not in known]
        raise ResultsError(
            f"custom_id {strangers[0]!r} is in the results but not in the input table ({len(strangers)} such "
            f"id(s)); pass the inputs this batch was built from.",
            custom_id=strangers[0],
        )
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.intp, copy=False)


def _take(array: Any, order: np.ndarray) -> Any:
    """`array` in input order; rows without a result get the missing value (None for objects)."""
    if isinstance(array, _Strings):
        return array.take(order)
    if isinstance(array, np.ndarray) and array.dtype == object:
        missing = order < 0
        if not len(array):
            return np.full(len(order), None, dtype=object)
        out = array.take(np.where(missing, 0, order))
        out[missing] = None
        return out
    return pd.api.extensions.take(array, order, allow_fill=True)


def _answer_columns(collector: _Collector, order: np.ndarray) -> dict[str, Any]:
    fields, values = collector.field_values()
    columns: dict[str, Any] = {}
    specs = {c.name: c for c in collector.schema.columns} if collector.schema is not None else {}
    for name, column_values in zip(fields, values):
        spec = specs.get(name)
        columns[name] = _final(_take(_typed(column_values, spec), order), spec)
        for sub in specs.values():
            if len(sub.path) > 1 and sub.path[0] == name:
                columns[sub.name] = _final(_take(_typed(_nested(column_values, sub.path[1:]), sub), order), sub)
    return columns


def _final(array: Any, column: _Column | None) -> Any:
    """The column as it goes into the table: strings as pandas' string dtype, other Python
    objects (lists, dicts, mixed values) as an object column, typed arrays as they are."""
    if isinstance(array, np.ndarray) and array.dtype == object:
        return pd.Series(array, dtype=object, copy=False)
    return array


def _info_columns(collector: _Collector, order: np.ndarray, batch_status: str | None) -> dict[str, Any]:
    missing = order < 0
    outcome_missing = {"expired": "expired", "cancelled": "cancelled"}.get(str(batch_status), "missing")
    columns: dict[str, Any] = {}
    any_missing = bool(missing.any())
    for name, values in zip(INFO_COLUMNS, collector.columns()[1:8]):
        if name in ("status_code", "prompt_tokens", "completion_tokens", "total_tokens"):
            columns[name] = _take(_ints([v if type(v) is int else None for v in values]), order)
            continue
        if any_missing and name in ("outcome", "error"):
            fill = (outcome_missing if name == "outcome" else
                    f"no result line (batch status {batch_status})" if batch_status else "no result line")
            values = [*values, fill]  # rows without a line take the extra last value
            columns[name] = _Strings(values).take(np.where(missing, len(values) - 1, order))
        else:
            columns[name] = _Strings(list(values)).take(order)
    return columns


def _assemble(frame: pd.DataFrame, id_column: str, answers: dict[str, Any], info: dict[str, Any]) -> pd.DataFrame:
    table = pd.DataFrame({name: (column.set_axis(frame.index) if isinstance(column, pd.Series) else column)
                          for name, column in {**answers, **info}.items()}, index=frame.index)
    base = frame.rename(columns={id_column: "custom_id"})
    clashes = [name for name in base.columns if name in table.columns and name != "custom_id"]
    base = base.rename(columns={name: f"{name}_input" for name in clashes})
    return pd.concat([base, table], axis=1)


def parse_results(
    results: Any,
    *,
    inputs: Any = None,
    schema: Any = None,
    id_column: str = "custom_id",
    batch_status: str | None = None,
    original_schema: Any = None,
) -> pd.DataFrame:
    """One row per input `custom_id`, in input order: input columns, typed answer fields, outcome, usage.

    Args:
        results: a `ResultFiles` from `download_results` (its verified bytes are streamed); the raw lines (output and error
            together, as dicts); or, streamed without holding the lines, a path, the bytes of a
            file, an iterable of lines (e.g. an HTTP response's ``iter_lines()``), or a list of
            paths / bytes (the output and the error file).
        inputs: the input table (DataFrame with an `id_column`), the request lines, or a list of ids.
            None: rows for the custom_ids found in the lines, sorted by id.
        schema: the schema the requests were sent with (JSON schema, response_format, Responses
            text.format, pydantic model, or a compiled `AnswerSchema`); its fields become typed
            columns and answers that do not match it are `invalid`. None: the answers' keys become
            untyped columns and any JSON object is `ok`.
        id_column: the custom_id column of `inputs` (renamed to `custom_id` in the result).
        batch_status: the batch's final status, used for ids that have no line at all (`expired`,
            `cancelled`); taken from `results` when it is a `ResultFiles`.
        original_schema: the schema before the strict conversion (the pydantic model or the JSON
            schema file); its constraints are all checked, including those the target dropped
            (an answer breaking one is `invalid`, with the reason), and its types give the columns.

    Raises:
        ResultsError: a line without custom_id, an id twice in the results, an id not in `inputs`,
            or a line that is not JSON (naming the file and line).
    """
    answer_schema = _answer_schema(schema, original_schema)
    collector, status = _collect(results, answer_schema)
    batch_status = batch_status or status
    frame = (_input_frame(inputs, id_column) if inputs is not None
             else pd.DataFrame({id_column: sorted(collector.ids)}, dtype=object))
    order = _order(collector, frame, id_column, inputs)
    return _assemble(frame, id_column, _answer_columns(collector, order), _info_columns(collector, order, batch_status))


# --------------------------------------------------------------------------------------------
# Large files: chunks to Parquet
# --------------------------------------------------------------------------------------------


def parse_results_to_parquet(
    results: Any,
    path: str | Path,
    *,
    inputs: Any = None,
    schema: Any = None,
    id_column: str = "custom_id",
    batch_status: str | None = None,
    original_schema: Any = None,
    chunk_rows: int = 100_000,
) -> Path:
    """The `parse_results` table written to a Parquet file, for batches too large for one DataFrame.

    The lines are streamed (pass paths, not parsed lines, to keep memory low) and every
    `chunk_rows` results become one typed Arrow record batch, so Python objects for at most one
    chunk exist at a time; the compact Arrow chunks are then put in input order (one vectorised
    take) beside the input columns and written. Peak memory is about the size of the answers'
    values in Arrow form plus one chunk, not the size of the files.

    Arguments as `parse_results`, plus the target `path` and `chunk_rows`. Returns the path.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    answer_schema = _answer_schema(schema, original_schema)
    sources, status = _sources(results)
    batch_status = batch_status or status
    chunks: list[pa.Table] = []
    ids: list[pa.Array] = []
    with _gc_paused():
        for name, source in sources:
            lines = _raw_lines(source)
            first = 1
            while True:
                collector = _Collector(answer_schema)
                last = collector.feed(itertools.islice(lines, chunk_rows), name, first_line=first)
                if last < first:
                    break
                first = last + 1
                if not len(collector):
                    continue
                collector.index()
                order = np.arange(len(collector), dtype=np.intp)
                part = pd.DataFrame({**_answer_columns(collector, order), **_info_columns(collector, order, None)})
                chunks.append(pa.Table.from_pandas(part, preserve_index=False))
                ids.append(pa.array(collector.ids, type=pa.string()))
                del collector, part
    if chunks:
        table = pa.concat_tables(chunks, promote_options="permissive")
        result_ids = pa.chunked_array(ids).combine_chunks()
    else:
        table = pa.table({name: pa.array([], pa.string()) for name in INFO_COLUMNS})
        result_ids = pa.array([], pa.string())
    del chunks
    if pc.count_distinct(result_ids).as_py() != len(result_ids):
        counts = pc.value_counts(result_ids)
        twice = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))[0].as_py()
        raise ResultsError(f"custom_id {twice!r} has two result lines; the files are inconsistent.", custom_id=twice)
    frame = (_input_frame(inputs, id_column) if inputs is not None
             else pd.DataFrame({id_column: sorted(result_ids.to_pylist())}, dtype=object))
    input_ids = pa.array(frame[id_column].astype(object).tolist(), type=pa.string())
    order = pc.index_in(input_ids, value_set=result_ids)
    matched = len(order) - order.null_count
    if matched != len(result_ids):
        known = set(frame[id_column])
        stranger = next(cid for cid in result_ids.to_pylist() if cid not in known)
        raise ResultsError(f"custom_id {stranger!r} is in the results but not in the input table; pass the inputs "
                           "this batch was built from.", custom_id=stranger)
    ordered = table.take(order)
    missing = pc.is_null(order)
    if matched < len(frame):
        outcome_missing = {"expired": "expired", "cancelled": "cancelled"}.get(str(batch_status), "missing")
        note = f"no result line (batch status {batch_status})" if batch_status else "no result line"
        outcome = pc.if_else(missing, outcome_missing, ordered.column("outcome").cast(pa.string()))
        error = pc.if_else(missing, note, ordered.column("error").cast(pa.string()))
        ordered = ordered.set_column(ordered.schema.get_field_index("outcome"), "outcome", outcome)
        ordered = ordered.set_column(ordered.schema.get_field_index("error"), "error", error)
    base = frame.rename(columns={id_column: "custom_id"})
    clashes = [name for name in base.columns if name in ordered.column_names and name != "custom_id"]
    base = base.rename(columns={name: f"{name}_input" for name in clashes})
    out = pa.Table.from_pandas(base, preserve_index=False)
    for name in ordered.column_names:
        out = out.append_column(name, ordered.column(name))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(out, target)
    return target


# --------------------------------------------------------------------------------------------
# Views and saving
# --------------------------------------------------------------------------------------------


def failed_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose outcome is not `ok` (same columns; empty when everything succeeded)."""
    return frame[frame["outcome"] != "ok"]


def outcome_counts(frame: pd.DataFrame) -> pd.Series:
    """How many rows had each outcome (outcomes that did not occur are left out)."""
    counts = frame["outcome"].value_counts()
    return counts[counts > 0].rename("rows")


def answer_table(frame: pd.DataFrame, fields: Sequence[str], *, id_label: str = "Custom ID") -> pd.DataFrame:
    """The answers only: the custom_id (labelled `id_label`) and the schema fields, one row per request."""
    missing = [name for name in fields if name not in frame.columns]
    if missing:
        raise ResultsError(f"No column {missing[0]!r} in the results; fields are: {', '.join(map(str, frame.columns))}.")
    return frame[["custom_id", *fields]].rename(columns={"custom_id": id_label}).reset_index(drop=True)


def _plain(value: Any) -> Any:
    """A table cell as a plain Python value (for a pydantic model)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_models(frame: pd.DataFrame, model: type) -> list[Any]:
    """The answers as instances of a pydantic model, one per row: None where the outcome is not `ok`.

    Args:
        frame: a table from `parse_results` (with the model's fields as columns).
        model: the pydantic model the schema was made from.

    Raises:
        ResultsError: a field of the model has no column in the table.
    """
    fields = list(getattr(model, "model_fields", {}))
    missing = [name for name in fields if name not in frame.columns]
    if missing:
        raise ResultsError(f"No column {missing[0]!r} in the results for {model.__name__}; parse with its schema.")
    out: list[Any] = []
    for outcome, *values in frame[["outcome", *fields]].itertuples(index=False, name=None):
        if outcome != "ok":
            out.append(None)
            continue
        data = {name: _plain(value) for name, value in zip(fields, values)}
        # strict mode made optional fields nullable: a null there means "not given", so the default applies
        data = {name: value for name, value in data.items()
                if value is not None or model.model_fields[name].is_required()}
        out.append(model.model_validate(data))
    return out


def _as_text(value: Any) -> Any:
    """JSON text for anything but a string or a missing value (so a column has one type)."""
    if value is None or isinstance(value, str) or (isinstance(value, float) and pd.isna(value)):
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps(value, ensure_ascii=False, default=str)


def _arrow_ok(series: pd.Series) -> bool:
    import pyarrow as pa

    try:
        pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError):
        return False
    return True


def save_results(frame: pd.DataFrame, folder: str | Path, stem: str = "results") -> tuple[Path, Path]:
    """Write the table as `<stem>.csv` and `<stem>.parquet` in `folder`; returns both paths.

    Parquet keeps the types: list values become list columns, nested objects struct columns,
    categories dictionary columns, nullable integers and booleans stay so. Only a column Arrow
    cannot type (values of mixed types) is stored as JSON text. CSV has no nested types: lists
    and objects are written as JSON text there.
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    for_parquet = frame.copy()
    for_csv = frame.copy()
    for name in frame.columns:
        if frame[name].dtype != object:
            continue
        column = frame[name]
        if column.map(lambda v: isinstance(v, (dict, list, np.ndarray))).any():
            for_csv[name] = column.map(_as_text)
        if not _arrow_ok(column):
            for_parquet[name] = column.map(_as_text)
    csv_path = target / f"{stem}.csv"
    parquet_path = target / f"{stem}.parquet"
    for_csv.to_csv(csv_path, index=False)
    for_parquet.to_parquet(parquet_path, index=False)
    return csv_path, parquet_path
