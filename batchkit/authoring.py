"""Turn a table of inputs into batch request lines, check them, and write the JSONL file.

One family of body builders makes every request body, for batch lines (`build_requests`) and for
a single live try (`try_live`), so both send the same thing:

* ``api="chat"`` (default): a Chat Completions body, ``messages`` + ``response_format``
  (`build_chat_body`); lines go to ``/chat/completions`` (Azure) or ``/v1/chat/completions``.
* ``api="responses"``: a Responses API body, ``input`` + ``text.format`` and
  ``max_output_tokens`` (`build_responses_body`); lines go to ``/v1/responses``.

`write_jsonl` lints each line as an object while it serialises it (once, with orjson) and
streams it to disk, so a file that would fail is never written and nothing is held twice.
"""

from __future__ import annotations

import os
import re
import string
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
import pandas as pd

from batchkit._gc import paused as gc_paused
from batchkit.errors import AuthoringError, LintError

Target = Literal["azure", "openai"]
Api = Literal["chat", "responses"]
Rows = "pd.DataFrame | Sequence[Mapping[str, Any]]"

#: The batch url of each API when none is given (Azure accepts both forms, OpenAI wants /v1).
DEFAULT_URLS: dict[str, str] = {"chat": "/chat/completions", "responses": "/v1/responses"}
_CHAT_URLS = ("/chat/completions", "/v1/chat/completions")
#: Chat Completions option names that the Responses API spells differently.
_RESPONSES_OPTION_NAMES = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens"}


def _schema_block(schema: Any, *, name: str, target: Target, convert: bool | None) -> dict[str, Any]:
    """``{"name", "schema", "strict": True}`` for a schema dict or a pydantic model."""
    is_model = isinstance(schema, type) and hasattr(schema, "model_json_schema")
    if convert is None:
        convert = is_model
    if convert or is_model:
        from batchkit.schema import response_format_for

        return dict(response_format_for(schema, name, target=target)["json_schema"])
    if not isinstance(schema, Mapping):
        raise AuthoringError(f"schema must be a JSON schema dict or a pydantic model class, not {type(schema).__name__}.")
    if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name):
        raise AuthoringError(f"Schema name {name!r} must be 1-64 letters, digits, '_' or '-'.")
    return {"name": name, "schema": dict(schema), "strict": True}


def response_format(
    schema: Any,
    *,
    name: str = "response",
    target: Target = "azure",
    convert: bool | None = None,
) -> dict[str, Any]:
    """The strict chat `response_format` block for a JSON schema dict or a pydantic model class.

    Args:
        schema: a JSON schema dict, or a pydantic model class.
        name: `json_schema.name` (`^[a-zA-Z0-9_-]{1,64}$`).
        target: `azure` or `openai` strict-mode rules for the conversion.
        convert: make the schema strict with `batchkit.schema.to_strict_schema` (the converter the
            service shares). Default: yes for a pydantic model; no for a dict, which is sent exactly
            as written so that the pre-flight lint reports its problems instead of hiding them.
    """
    return {"type": "json_schema", "json_schema": _schema_block(schema, name=name, target=target, convert=convert)}


def text_format(
    schema: Any,
    *,
    name: str = "response",
    target: Target = "azure",
    convert: bool | None = None,
) -> dict[str, Any]:
    """The strict Responses API `text.format` block: ``{"type": "json_schema", name, schema, strict}``.

    Arguments as `response_format` (the same schema handling; only the wrapping differs).
    """
    return {"type": "json_schema", **_schema_block(schema, name=name, target=target, convert=convert)}


def as_text_format(block: Mapping[str, Any]) -> dict[str, Any]:
    """A chat `response_format` block (or a `text.format` block) as a Responses `text.format` block."""
    if block.get("type") == "json_schema" and isinstance(block.get("json_schema"), Mapping):
        return {"type": "json_schema", **block["json_schema"]}
    return dict(block)


def schema_fields(schema: Any) -> list[str]:
    """The top-level property names of a schema, in schema order.

    Accepts a JSON schema dict, a chat `response_format` block, a Responses `text.format` block,
    a `json_schema` block, or a pydantic model class.
    """
    if isinstance(schema, Mapping):
        if schema.get("type") == "json_schema":  # a whole response_format, or a text.format block
            inner = schema.get("json_schema")
            schema = inner["schema"] if isinstance(inner, Mapping) else schema.get("schema") or {}
        elif "schema" in schema and "properties" not in schema:  # a json_schema block
            schema = schema["schema"]
        return list((schema.get("properties") or {}).keys())
    if isinstance(schema, type) and hasattr(schema, "model_fields"):
        return list(schema.model_json_schema().get("properties", {}).keys())
    raise AuthoringError(f"Cannot read fields from {schema!r}: pass a JSON schema dict or a pydantic model class.")


def _check_prompt(model: str, user: str) -> None:
    if not model:
        raise AuthoringError("The request needs a model (deployment) name: set BATCH_DEPLOYMENT or pass model=.")
    if not user:
        raise AuthoringError("The user message is empty: every row needs a prompt.")


def build_chat_body(
    *,
    model: str,
    system: str,
    user: str,
    response_format: Mapping[str, Any],
    **options: Any,
) -> dict[str, Any]:
    """The Chat Completions body for one request: model, system + user messages, response_format.

    Args:
        model: the deployment (Azure, local) or model name (OpenAI).
        system: the system message.
        user: the user message.
        response_format: from `response_format(...)`: `{"type": "json_schema", "json_schema": {..., "strict": true}}`.
        **options: further body fields, e.g. `max_tokens=200`, `temperature=0` (None values are left out).
    """
    _check_prompt(model, user)
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "response_format": response_format,
    }
    for key, value in options.items():
        if value is not None:
            body[key] = value
    return body


def build_responses_body(
    *,
    model: str,
    system: str,
    user: str,
    text_format: Mapping[str, Any],
    **options: Any,
) -> dict[str, Any]:
    """The Responses API body for one request: model, system + user input messages, text.format.

    Args:
        model: the deployment (Azure, local) or model name (OpenAI).
        system: the system message (the first input message, role ``system``).
        user: the user message.
        text_format: from `text_format(...)` (or `as_text_format` of a chat response_format).
        **options: further body fields; `max_tokens` / `max_completion_tokens` are written as
            `max_output_tokens` (the Responses name); None values are left out.
    """
    _check_prompt(model, user)
    body: dict[str, Any] = {
        "model": model,
        "input": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "text": {"format": text_format},
    }
    for key, value in options.items():
        if value is not None:
            body[_RESPONSES_OPTION_NAMES.get(key, key)] = value
    return body


def build_body(
    *,
    model: str,
    system: str,
    user: str,
    response_format: Mapping[str, Any],
    api: Api = "chat",
    **options: Any,
) -> dict[str, Any]:
    """The request body for one request, for either API (`build_chat_body` or `build_responses_body`).

    Args:
        model: the deployment (Azure, local) or model name (OpenAI).
        system: the system message.
        user: the user message.
        response_format: from `response_format(...)`; for ``api="responses"`` it becomes `text.format`
            (a `text_format(...)` block is accepted too).
        api: ``"chat"`` (Chat Completions) or ``"responses"`` (Responses API).
        **options: further body fields, e.g. `max_tokens=200`, `temperature=0` (None values are left out).
    """
    if api == "responses":
        return build_responses_body(model=model, system=system, user=user,
                                    text_format=as_text_format(response_format), **options)
    if api != "chat":
        raise AuthoringError(f"api={api!r}: use 'chat' (Chat Completions) or 'responses' (Responses API).")
    return build_chat_body(model=model, system=system, user=user, response_format=response_format, **options)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or value is pd.NA or value is pd.NaT


def _template_fields(template: str) -> list[str] | None:
    """The plain column names a `str.format` template uses, or None when it needs whole rows
    (attribute or index access, positional fields)."""
    names: list[str] = []
    try:
        for _, field, _, _ in string.Formatter().parse(template):
            if field is None:
                continue
            if not field or not field.isidentifier():
                return None
            if field not in names:
                names.append(field)
    except ValueError as exc:
        raise AuthoringError(f"The template {template!r} is not a valid str.format template: {exc}.") from None
    return names


def _positional(template: str, names: list[str]) -> str:
    """`template` with each named field replaced by its position in `names` (same specs)."""
    out = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is not None:
            out.append("{" + str(names.index(field)) + (f"!{conversion}" if conversion else "")
                       + (f":{spec}" if spec else "") + "}")
    return "".join(out)


def _columns_text(columns: Iterable[Any]) -> str:
    return ", ".join(map(str, columns))


def _user_text(value: Any) -> str:
    return "" if _missing(value) else value if isinstance(value, str) else str(value)


def _custom_id_of(index: int, raw: Any, id_column: str) -> str:
    if _missing(raw):
        raise AuthoringError(
            f"Row {index}: the {id_column!r} column is empty; every row needs its own custom_id "
            f"(or pass id_column= naming another column).", row=index)
    return raw if isinstance(raw, str) else str(raw)


def _fill(template: str, index: int, custom_id: str, record: Mapping[str, Any], columns: Iterable[Any]) -> str:
    try:
        return template.format_map(record)
    except KeyError as exc:
        raise AuthoringError(
            f"Row {index} ({custom_id}): the template names {exc.args[0]!r}, which is not a column "
            f"(columns: {_columns_text(columns)}); pass template= naming existing columns.",
            custom_id=custom_id, row=index,
        ) from None
    except (IndexError, ValueError, AttributeError, TypeError) as exc:
        raise AuthoringError(f"Row {index} ({custom_id}): the template cannot be filled: {exc}.",
                             custom_id=custom_id, row=index) from None


def _prompt_columns(
    rows: pd.DataFrame, *, id_column: str, prompt_column: str, template: str | None, id_prefix: str,
) -> tuple[list[str], list[str]]:
    """The custom_ids and user messages of a DataFrame, column-wise (checked: ids present,
    prompts non-empty), reading only the columns the prompt and the id need."""
    columns = [str(c) for c in rows.columns]
    count = len(rows)
    if id_column in rows.columns:
        raw_ids = rows[id_column].tolist()
        if _all_str(raw_ids):
            ids = raw_ids
        else:
            ids = [_custom_id_of(index, v, id_column) for index, v in enumerate(raw_ids)]
    else:
        ids = [f"{id_prefix}{index}" for index in range(count)]
    if template is None:
        if prompt_column not in rows.columns:
            raise AuthoringError(
                f"Row 0 has no column {prompt_column!r} (columns: {_columns_text(columns)}); "
                f"pass prompt_column= naming the prompt column, or template=.", row=0)
        users = rows[prompt_column].tolist()
    else:
        names = _template_fields(template)
        users = []
        if names is not None and all(n in rows.columns for n in names):
            positional = _positional(template, names).format
            values = [rows[n].tolist() for n in names]
            try:
                users = [positional(*row) for row in zip(*values)] if names else [template.format()] * count
            except (IndexError, ValueError, AttributeError, TypeError):
                users = []  # a row the template cannot take: found and named below
        if len(users) != count:
            users = [_fill(template, index, ids[index], record, columns)
                     for index, record in enumerate(rows.to_dict(orient="records"))]
    if not _all_str(users):
        users = [u if type(u) is str else _user_text(u) for u in users]
    return ids, users


def _all_str(values: list[Any]) -> bool:
    """Every value is exactly a `str` (one pass in C: the set of the values' types)."""
    return set(map(type, values)) <= _STR_ONLY


_STR_ONLY = frozenset({str})


def _prompts(
    rows: Any, *, id_column: str, prompt_column: str, template: str | None, id_prefix: str
) -> Iterator[tuple[int, str, str]]:
    """``(row number, custom_id, user message)`` per row; a problem raises `AuthoringError` naming
    the row. A DataFrame is read column-wise (only the columns the prompt and id need)."""

    if isinstance(rows, pd.DataFrame):
        ids, users = _prompt_columns(rows, id_column=id_column, prompt_column=prompt_column, template=template,
                                     id_prefix=id_prefix)
        yield from zip(range(len(ids)), ids, users)
        return
    if not isinstance(rows, Iterable) or isinstance(rows, (str, bytes, Mapping)):
        raise AuthoringError("rows must be a pandas DataFrame or a list of dicts (records).")
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise AuthoringError(f"Row {index} is a {type(row).__name__}, not a mapping of column -> value.", row=index)
        custom_id = _custom_id_of(index, row[id_column], id_column) if id_column in row else f"{id_prefix}{index}"
        if template is not None:
            user = _fill(template, index, custom_id, row, row.keys())
        elif prompt_column not in row:
            raise AuthoringError(
                f"Row {index} ({custom_id}) has no column {prompt_column!r} (columns: {_columns_text(row)}); "
                f"pass prompt_column= naming the prompt column, or template=.",
                custom_id=custom_id, row=index,
            )
        else:
            user = _user_text(row[prompt_column])
        yield index, custom_id, user


def _line_parts(
    schema: Any, *, name: str, url: str | None, target: Target, convert: bool | None, api: Api, model: str,
    options: Mapping[str, Any],
) -> tuple[str, str, str, dict[str, Any], dict[str, Any]]:
    """What every line of `iter_requests` shares: ``(url, messages key, format key, the format
    holder, the other body options)`` (checked: api, model, schema)."""
    if api not in DEFAULT_URLS:
        raise AuthoringError(f"api={api!r}: use 'chat' (Chat Completions) or 'responses' (Responses API).")
    if url is None or (api == "responses" and url in _CHAT_URLS):
        url = DEFAULT_URLS[api]
    block = _schema_block(schema, name=name, target=target, convert=convert)
    if api == "responses":
        extra = {_RESPONSES_OPTION_NAMES.get(k, k): v for k, v in options.items() if v is not None}
        holder: dict[str, Any] = {"format": {"type": "json_schema", **block}}
        shape, format_key = "input", "text"
    else:
        extra = {k: v for k, v in options.items() if v is not None}
        holder = {"type": "json_schema", "json_schema": block}
        shape, format_key = "messages", "response_format"
    if not model:
        raise AuthoringError("The request needs a model (deployment) name: set BATCH_DEPLOYMENT or pass model=.")
    return url, shape, format_key, holder, extra


def _frame_prompts(
    rows: pd.DataFrame, *, id_column: str, prompt_column: str, template: str | None, id_prefix: str,
) -> tuple[list[str], list[str]]:
    """`_prompt_columns`, and refused with the row named: an empty prompt, no rows, a repeated id."""
    ids, users = _prompt_columns(rows, id_column=id_column, prompt_column=prompt_column, template=template,
                                 id_prefix=id_prefix)
    if not all(users) or any(map(str.isspace, users)):
        empty = next(i for i, user in enumerate(users) if not user or user.isspace())
        raise AuthoringError(f"Row {empty} ({ids[empty]}): the prompt is empty.", custom_id=ids[empty], row=empty)
    if not ids:
        raise AuthoringError("No rows: a batch needs at least one request.")
    if len(set(ids)) != len(ids):
        check_unique_ids({"custom_id": custom_id} for custom_id in ids)
    return ids, users


def _frame_lines(
    ids: list[str], users: list[str], *, url: str, model: str, system: str, shape: str, format_key: str,
    holder: dict[str, Any], extra: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    """The request line of each (custom_id, user message); every body shares `holder` and the
    values of `extra`."""
    return (
        {"custom_id": custom_id, "method": "POST", "url": url, "body": {
            "model": model,
            shape: [{"role": "system", "content": system}, {"role": "user", "content": user}],
            format_key: holder, **extra}}
        for custom_id, user in zip(ids, users)
    )


def iter_requests(
    rows: Any,
    *,
    system: str,
    schema: Any,
    model: str,
    name: str = "response",
    url: str | None = None,
    prompt_column: str = "prompt",
    template: str | None = None,
    id_column: str = "custom_id",
    id_prefix: str = "task-",
    target: Target = "azure",
    convert: bool | None = None,
    api: Api = "chat",
    **options: Any,
) -> Iterator[dict[str, Any]]:
    """The request lines of `build_requests`, one at a time (for tables too large to hold twice).

    Arguments as `build_requests`. Repeated custom_ids of a DataFrame are refused before the
    first line; rows given as dicts are checked by `write_jsonl` while it writes (and by
    `build_requests` before it returns).
    """
    url, shape, format_key, holder, extra = _line_parts(schema, name=name, url=url, target=target,
                                                         convert=convert, api=api, model=model, options=options)
    if isinstance(rows, pd.DataFrame):
        ids, users = _frame_prompts(rows, id_column=id_column, prompt_column=prompt_column, template=template,
                                    id_prefix=id_prefix)
        yield from _frame_lines(ids, users, url=url, model=model, system=system, shape=shape,
                                format_key=format_key, holder=holder, extra=extra)
        return
    count = 0
    for index, custom_id, user in _prompts(rows, id_column=id_column, prompt_column=prompt_column,
                                           template=template, id_prefix=id_prefix):
        count += 1
        if not user or user.isspace():
            raise AuthoringError(f"Row {index} ({custom_id}): the prompt is empty.", custom_id=custom_id, row=index)
        yield {"custom_id": custom_id, "method": "POST", "url": url, "body": {
            "model": model,
            shape: [{"role": "system", "content": system}, {"role": "user", "content": user}],
            format_key: holder, **extra}}
    if count == 0:
        raise AuthoringError("No rows: a batch needs at least one request.")


def build_requests(
    rows: Any,
    *,
    system: str,
    schema: Any,
    model: str,
    name: str = "response",
    url: str | None = None,
    prompt_column: str = "prompt",
    template: str | None = None,
    id_column: str = "custom_id",
    id_prefix: str = "task-",
    target: Target = "azure",
    convert: bool | None = None,
    api: Api = "chat",
    **options: Any,
) -> list[dict[str, Any]]:
    """Request lines `{custom_id, method, url, body}` for every row, in row order.

    Args:
        rows: a DataFrame or a list of dicts.
        system: the system message shared by every request.
        schema: a JSON schema dict or a pydantic model class (made strict by `response_format`).
        model: deployment (Azure, local) or model (OpenAI) named in every line.
        name: the schema name (`^[a-zA-Z0-9_-]{1,64}$`).
        url: the line's url. Default: ``/chat/completions`` for chat (Azure, local; pass
            ``Connection.batch_url``, e.g. ``/v1/chat/completions`` for OpenAI) and
            ``/v1/responses`` for ``api="responses"`` (a chat url given with ``api="responses"``
            is taken to mean the Responses endpoint of the same service, ``/v1/responses``).
        prompt_column: the column holding the user message (ignored when `template` is given).
        template: a `str.format` template filled from the row, e.g. `"Provide info about {building}"`.
        id_column: the column holding the custom_id; when absent, ids are `id_prefix` + row number.
        target: which service's strict-schema rules to apply (`azure` or `openai`).
        convert: see `response_format` (default: convert pydantic models, send dicts as written).
        api: ``"chat"`` (Chat Completions bodies, the default) or ``"responses"`` (Responses API
            bodies: ``input``, ``text.format``, ``max_output_tokens``).
        **options: extra body fields (e.g. `max_tokens`, `temperature`; None values left out).

    Every body shares one schema object (the schema is the same on every line): copy a line's
    body before changing its schema.

    Raises:
        AuthoringError: a missing prompt column or template field, an empty prompt or id, or a
            duplicate custom_id.
    """
    if isinstance(rows, pd.DataFrame):  # (its ids are checked column-wise)
        url, shape, format_key, holder, extra = _line_parts(
            schema, name=name, url=url, target=target, convert=convert, api=api, model=model, options=options)
        ids, users = _frame_prompts(rows, id_column=id_column, prompt_column=prompt_column, template=template,
                                    id_prefix=id_prefix)
        with gc_paused():
            return list(_frame_lines(ids, users, url=url, model=model, system=system, shape=shape,
                                     format_key=format_key, holder=holder, extra=extra))
    with gc_paused():
        lines = list(iter_requests(
            rows, system=system, schema=schema, model=model, name=name, url=url, prompt_column=prompt_column,
            template=template, id_column=id_column, id_prefix=id_prefix, target=target, convert=convert, api=api,
            **options,
        ))
        check_unique_ids(lines)
    return lines


def check_unique_ids(lines: Iterable[Mapping[str, Any]]) -> None:
    """Raise `AuthoringError` naming the first repeated `custom_id` (and both row numbers)."""
    seen: dict[str, int] = {}
    for index, line in enumerate(lines):
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise AuthoringError(f"Request {index} has no custom_id (a non-empty string is required).", row=index)
        if custom_id in seen:
            raise AuthoringError(
                f"custom_id {custom_id!r} is used by rows {seen[custom_id]} and {index}; each request needs its own id.",
                custom_id=custom_id,
                row=index,
            )
        seen[custom_id] = index


def _dumps_line(line: Any) -> bytes:
    """One request line as JSON bytes (orjson: compact, UTF-8, no BOM, never a raw newline)."""
    return orjson.dumps(line)


def to_jsonl_bytes(lines: Iterable[Mapping[str, Any]]) -> bytes:
    """Encode request lines as JSONL: one compact JSON object per line, UTF-8 without BOM."""
    return b"".join(_dumps_line(line) + b"\n" for line in lines)


def _unencodable(error: Exception, index: int, line: Any) -> bool:
    """True when orjson refused the line only because of a lone surrogate in a string (a lint
    finding); any other refusal (a value JSON cannot hold) raises `AuthoringError`."""
    if "surrogates not allowed" in str(error):
        return True
    custom_id = line.get("custom_id") if isinstance(line, Mapping) else None
    raise AuthoringError(
        f"Request {index} ({custom_id}) cannot be written as JSON: {error}. Request lines hold only "
        "strings, numbers, booleans, None, lists and dicts with string keys.",
        custom_id=custom_id if isinstance(custom_id, str) else None, row=index,
    ) from None


def lint_requests(
    lines: Iterable[Mapping[str, Any]],
    *,
    target: Target = "azure",
    deployments: Mapping[str, str] | None = None,
    endpoint: str | None = None,
) -> list[Any]:
    """Every finding of the batch-file lint (`batchkit.lint.lint_batch_file`) on the request lines.

    The lines are checked as objects, with the line numbers and byte sizes they will have in
    the file `write_jsonl` writes (they are serialised to count bytes, never parsed back).
    """
    from batchkit.lint import BatchFileLinter

    linter = BatchFileLinter(target=target, deployments=deployments, endpoint=endpoint)
    findings: list[Any] = []
    for index, line in enumerate(lines):
        try:
            size = len(_dumps_line(line)) + 1
        except (TypeError, orjson.JSONEncodeError) as exc:
            if _unencodable(exc, index, line):
                findings.extend(linter.unencodable())
            continue
        findings.extend(linter.feed_object(line, size))
    findings.extend(linter.close())
    return findings


def _repeated(custom_id: str, first: int, index: int) -> AuthoringError:
    return AuthoringError(
        f"custom_id {custom_id!r} is used by rows {first} and {index}; each request needs its own id.",
        custom_id=custom_id, row=index,
    )


class _Shape:
    """What every line of a run of same-shaped request lines shares with the line it was taken
    from, once that line passed the whole lint: the url, the model, the body's keys, its other
    parameters (the very objects), the messages before the last, the last message's role.

    A later line of this shape differs from that line only in its custom_id and in the text of
    its last message, so its lint findings are that line's (none that are errors, or no shape is
    taken): `_write_same_shape` only checks that shape, the custom_id and the byte and line limits.
    """

    __slots__ = ("url", "model", "body_len", "messages_key", "others", "leading", "count", "role")

    def __init__(self, url: str, model: str, body: dict[str, Any], messages_key: str, messages: list[Any]) -> None:
        self.url = url
        self.model = model
        self.body_len = len(body)
        self.messages_key = messages_key
        self.others = tuple((k, v) for k, v in body.items() if k != "model" and k != messages_key)
        self.leading = [dict(m) for m in messages[:-1]]  # compared by value (fresh dicts per line)
        self.count = len(messages)
        self.role = messages[-1]["role"]

    @classmethod
    def of(cls, line: Any, linter: Any) -> _Shape | None:
        """The shape of a line that the linter just passed with no error finding, or None when
        the line's findings would not carry over to lines of its shape."""
        if type(line) is not dict or len(line) != 4 or line.get("method") != "POST":
            return None
        body = line.get("body")
        settled = linter.settled(line.get("url"), body.get("model") if type(body) is dict else None, body)
        if settled is None or any(f.severity == "error" for f in settled[1]):
            return None
        key = "messages" if settled[0] == "chat" else "input"
        messages = body.get(key)
        if type(messages) is not list or not messages:
            return None
        last = messages[-1]
        if type(last) is not dict or len(last) != 2 or type(last.get("content")) is not str:
            return None
        return cls(line["url"], body["model"], body, key, messages)


def _write_same_shape(
    lines: Iterator[Any], shape: _Shape, write: Any, ids: set[str], order: list[str], line_no: int, total: int,
    limit_bytes: int, limit_lines: int, count_tokens: Any,
) -> tuple[Any, int, int, int]:
    """Write the lines of `lines` while they have `shape` (see `_Shape`), each serialised once;
    ``(the first line that does not, or _END; the last line number written; total bytes; tokens)``.

    A line that differs in any way the lint could see (another key, type, url, model, parameter
    object, message, a repeated custom_id, a text orjson refuses) or that would cross a file limit
    is handed back unwritten, for the full lint. `ids` and `order` get each written custom_id."""
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    url, model, body_len, key, others = shape.url, shape.model, shape.body_len, shape.messages_key, shape.others
    leading, count, role = shape.leading, shape.count, shape.role
    first = leading[0] if count == 2 else None
    one = others[0] if len(others) == 1 else None
    add, append = ids.add, order.append
    tokens = 0
    for line in lines:
        if type(line) is not dict or len(line) != 4:
            return line, line_no, total, tokens
        try:
            cid = line["custom_id"]
            body = line["body"]
            if (type(cid) is not str or not cid or line["method"] != "POST" or line["url"] != url
                    or type(body) is not dict or len(body) != body_len or body["model"] != model):
                return line, line_no, total, tokens
            if one is not None:
                if body[one[0]] is not one[1]:
                    return line, line_no, total, tokens
            else:
                for name, value in others:
                    if body[name] is not value:
                        return line, line_no, total, tokens
            messages = body[key]
            if type(messages) is not list or len(messages) != count:
                return line, line_no, total, tokens
            last = messages[-1]
            if (type(last) is not dict or len(last) != 2 or last["role"] != role or type(last["content"]) is not str
                    or (messages[0] != first if first is not None else count > 1 and messages[:-1] != leading)):
                return line, line_no, total, tokens
            data = dumps(line, option=newline)
        except (KeyError, TypeError, orjson.JSONEncodeError):
            return line, line_no, total, tokens
        size = total + len(data)
        if size > limit_bytes or line_no >= limit_lines or cid in ids:
            return line, line_no, total, tokens
        add(cid)
        append(cid)
        if count_tokens is not None:
            tokens += count_tokens(body)
        write(data)
        line_no += 1
        total = size
    return _END, line_no, total, tokens


_END = object()


def write_jsonl(
    lines: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    check: bool = True,
    target: Target = "azure",
    deployments: Mapping[str, str] | None = None,
    quota: int | None = None,
    endpoint: str | None = None,
) -> Path:
    """Write request lines to `path` (folders created); lint them and refuse a file that would fail.

    One pass: each line is checked as an object (custom_id unique, the batch-file lint of
    `batchkit.lint`), serialised once with orjson and streamed to a temporary file beside `path`,
    which replaces `path` only when every line passed. So an iterator of 10^6 lines (e.g.
    `iter_requests`) is never held in memory, and a refused file leaves nothing behind.

    The lines of `build_requests` share one shape (url, model, parameters, system message): once
    a line passed the whole lint, the lines after it that differ from it only in their custom_id
    and their prompt's text are checked for exactly that (and the limits), not linted again.

    Args:
        lines: request lines from `build_requests` (a list) or `iter_requests` (an iterator).
        path: where to write the `.jsonl` file.
        check: lint the lines and raise `LintError` (writing nothing) on any error finding.
            Repeated or missing custom_ids raise `AuthoringError` even without `check`.
        target: `azure` or `openai` rules for the lint.
        deployments: deployment name -> kind for the model checks (None skips them).
        quota: an enqueued-token quota (e.g. `Estimate.quota`); with `check`, a file whose estimated
            input tokens exceed it is refused too (it would fail with `token_limit_exceeded`).
        endpoint: the batch endpoint every line's url must name (None: the first line's url).

    Returns:
        The path written.
    """
    from batchkit.lint import BatchFileLinter

    target_path = Path(path)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    linter = BatchFileLinter(target=target, deployments=deployments, endpoint=endpoint,
                             check_ids=False) if check else None
    errors: list[Any] = []
    ids: set[str] = set()  # every custom_id so far; `order` in line order, to name a repeat's first row
    order: list[str] = []
    tokens = 0
    first_model: str | None = None
    count_tokens = None
    if check and quota:
        from batchkit.estimate import count_body_tokens as count_tokens
    handle, temp_name = tempfile.mkstemp(prefix=f".{target_path.name}.", suffix=".part", dir=target_path.parent)
    try:
        with os.fdopen(handle, "wb", buffering=1 << 16) as out:
            write = out.write
            source = iter(lines)
            index = -1
            pending: Any = _END
            shapes = 0
            while True:
                if pending is not _END:
                    line, pending = pending, _END
                else:
                    line = next(source, _END)
                    if line is _END:
                        break
                index += 1
                custom_id = line.get("custom_id") if type(line) is dict or isinstance(line, Mapping) else None
                if type(custom_id) is not str or not custom_id:
                    raise AuthoringError(f"Request {index} has no custom_id (a non-empty string is required).", row=index)
                if custom_id in ids:
                    raise _repeated(custom_id, order.index(custom_id), index)
                ids.add(custom_id)
                order.append(custom_id)
                try:
                    data = _dumps_line(line)
                except (TypeError, orjson.JSONEncodeError) as exc:
                    if not _unencodable(exc, index, line):
                        raise
                    if linter is None:
                        raise AuthoringError(
                            f"Request {index} ({custom_id}) holds an unpaired UTF-16 surrogate (often text cut "
                            "in the middle of an emoji), which JSON in UTF-8 cannot carry; fix that text.",
                            custom_id=custom_id, row=index) from None
                    errors.extend(linter.unencodable())
                    continue
                write(data)
                write(b"\n")
                if linter is None:
                    continue
                found = linter.feed_object(line, len(data) + 1)
                bad = [f for f in found if f.severity == "error"] if found else None
                if bad:
                    errors.extend(bad)
                if count_tokens is not None:
                    body = line.get("body")
                    if isinstance(body, Mapping):
                        first_model = first_model or str(body.get("model"))
                        tokens += count_tokens(body)
                if not bad and shapes < _MAX_SHAPES:
                    shape = _Shape.of(line, linter)
                    if shape is not None:
                        shapes += 1
                        pending, line_no, linter.total_bytes, more = _write_same_shape(
                            source, shape, write, ids, order, linter.line_no, linter.total_bytes,
                            linter.limit_bytes, linter.limit_lines, count_tokens)
                        written = line_no - linter.line_no
                        linter.line_no = line_no
                        linter.requests += written
                        index += written
                        tokens += more
        if linter is not None:
            errors.extend(f for f in linter.close() if f.severity == "error")
            if count_tokens is not None:
                from batchkit.estimate import quota_check

                over = quota_check(tokens, quota, model=first_model or "the model")
                if over is not None and over.severity == "error":
                    errors.append(over)
        if errors:
            first_error = errors[0]
            where = f"line {first_error.line}" if getattr(first_error, "line", None) else "the file"
            raise LintError(
                f"Not written: {len(errors)} error finding(s), first at {where}: {first_error.message} "
                f"Fix the schema or rows and build the requests again.",
                findings=errors,
            )
        os.replace(temp_name, target_path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    return target_path


#: Shapes taken per file at most (a file alternating between shapes stops looking for runs).
_MAX_SHAPES = 64


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file into a list of dicts; a bad line raises `AuthoringError` naming it."""
    records = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                records.append(orjson.loads(raw))
            except orjson.JSONDecodeError as exc:
                raise AuthoringError(f"{Path(path).name} line {number} is not JSON: {exc}.", row=number) from None
    return records


def _user_prompt(body: Mapping[str, Any]) -> Any:
    messages = body.get("messages")
    if messages is None:
        messages = body.get("input")
        if isinstance(messages, str):
            return messages
    return next((m.get("content") for m in messages or [] if isinstance(m, Mapping) and m.get("role") == "user"), "")


def request_schema(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The output JSON schema of a request body (chat `response_format` or Responses `text.format`)."""
    from batchkit.estimate import _body_schema

    schema = _body_schema(body)
    return dict(schema) if schema is not None else None


def requests_frame(lines: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A preview table of request lines: custom_id, model, the user prompt and the required fields."""
    rows = []
    for line in lines:
        body = line.get("body", {})
        required = (request_schema(body) or {}).get("required") or []
        rows.append(
            {
                "custom_id": line.get("custom_id"),
                "model": body.get("model"),
                "prompt": _user_prompt(body),
                "required": ", ".join(required),
            }
        )
    return pd.DataFrame(rows, columns=["custom_id", "model", "prompt", "required"])


def try_live(client: Any, body: Mapping[str, Any], *, model: str | None = None) -> Any:
    """Send one request body (from `build_body` or a batch line's `body`) as a live call.

    A Chat Completions body (``messages``) goes to ``client.chat.completions.create`` and returns
    the SDK's `ChatCompletion`; a Responses body (``input``) goes to ``client.responses.create``
    and returns its `Response` (see `live_answer`). Azure Global Batch deployments refuse live
    calls: pass `model=` naming a standard deployment there.
    """
    request = dict(body)
    if model:
        request["model"] = model
    if "messages" not in request and "input" in request:
        return client.responses.create(**request)
    return client.chat.completions.create(**request)


def live_answer(reply: Any) -> tuple[str | None, str | None]:
    """``(how it ended, the answer text)`` of a live reply from `try_live`, for either API.

    Chat: ``(choices[0].finish_reason, message.content or message.refusal)``. Responses:
    ``(status, or incomplete_details.reason when incomplete, output_text or the refusal)``.
    """
    if hasattr(reply, "choices"):
        choice = reply.choices[0]
        return choice.finish_reason, choice.message.content or choice.message.refusal
    status = getattr(reply, "status", None)
    details = getattr(reply, "incomplete_details", None)
    if status == "incomplete" and details is not None and getattr(details, "reason", None):
        status = details.reason
    text = getattr(reply, "output_text", None)
    if not text:
        for item in getattr(reply, "output", None) or []:
            for part in getattr(item, "content", None) or []:
                if getattr(part, "type", None) == "refusal":
                    return status, part.refusal
    return status, text
