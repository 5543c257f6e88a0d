"""Turn a table of inputs into batch request lines, check them, and write the JSONL file.

One builder, `build_body`, makes the chat request body; it is used for every batch line
(`build_requests`) and for a single live try (`try_live`), so both send the same thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from batchkit.errors import AuthoringError, LintError

Target = Literal["azure", "openai"]
Rows = "pd.DataFrame | Sequence[Mapping[str, Any]]"


def response_format(
    schema: Any,
    *,
    name: str = "response",
    target: Target = "azure",
    convert: bool | None = None,
) -> dict[str, Any]:
    """The strict `response_format` block for a JSON schema dict or a pydantic model class.

    Args:
        schema: a JSON schema dict, or a pydantic model class.
        name: `json_schema.name` (`^[a-zA-Z0-9_-]{1,64}$`).
        target: `azure` or `openai` strict-mode rules for the conversion.
        convert: make the schema strict with `batchkit.schema.to_strict_schema` (the converter the
            service shares). Default: yes for a pydantic model; no for a dict, which is sent exactly
            as written so that the pre-flight lint reports its problems instead of hiding them.
    """
    is_model = isinstance(schema, type) and hasattr(schema, "model_json_schema")
    if convert is None:
        convert = is_model
    if convert or is_model:
        from batchkit.schema import response_format_for

        return dict(response_format_for(schema, name, target=target))
    if not isinstance(schema, Mapping):
        raise AuthoringError(f"schema must be a JSON schema dict or a pydantic model class, not {type(schema).__name__}.")
    if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name):
        raise AuthoringError(f"Schema name {name!r} must be 1-64 letters, digits, '_' or '-'.")
    return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema), "strict": True}}


def schema_fields(schema: Any) -> list[str]:
    """The top-level property names of a JSON schema dict or pydantic model, in schema order."""
    if isinstance(schema, Mapping):
        if schema.get("type") == "json_schema":  # a whole response_format
            schema = schema["json_schema"]["schema"]
        elif "schema" in schema and "properties" not in schema:  # a json_schema block
            schema = schema["schema"]
        return list((schema.get("properties") or {}).keys())
    if isinstance(schema, type) and hasattr(schema, "model_fields"):
        return list(schema.model_json_schema().get("properties", {}).keys())
    raise AuthoringError(f"Cannot read fields from {schema!r}: pass a JSON schema dict or a pydantic model class.")


def build_body(
    *,
    model: str,
    system: str,
    user: str,
    response_format: Mapping[str, Any],
    **options: Any,
) -> dict[str, Any]:
    """The chat completion body for one request: model, system + user messages, response_format.

    Args:
        model: the deployment (Azure, local) or model name (OpenAI).
        system: the system message.
        user: the user message.
        response_format: from `response_format(...)`: `{"type": "json_schema", "json_schema": {..., "strict": true}}`.
        **options: further body fields, e.g. `max_tokens=200`, `temperature=0` (None values are left out).
    """
    if not model:
        raise AuthoringError("The request needs a model (deployment) name: set BATCH_DEPLOYMENT or pass model=.")
    if not user:
        raise AuthoringError("The user message is empty: every row needs a prompt.")
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "response_format": dict(response_format),
    }
    body.update({key: value for key, value in options.items() if value is not None})
    return body


def _records(rows: Any) -> list[dict[str, Any]]:
    if isinstance(rows, pd.DataFrame):
        return [dict(record) for record in rows.to_dict(orient="records")]
    if isinstance(rows, Iterable) and not isinstance(rows, (str, bytes, Mapping)):
        records = []
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise AuthoringError(f"Row {index} is a {type(row).__name__}, not a mapping of column -> value.", row=index)
            records.append(dict(row))
        return records
    raise AuthoringError("rows must be a pandas DataFrame or a list of dicts (records).")


def build_requests(
    rows: Any,
    *,
    system: str,
    schema: Any,
    model: str,
    name: str = "response",
    url: str = "/chat/completions",
    prompt_column: str = "prompt",
    template: str | None = None,
    id_column: str = "custom_id",
    id_prefix: str = "task-",
    target: Target = "azure",
    convert: bool | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Request lines `{custom_id, method, url, body}` for every row, in row order.

    Args:
        rows: a DataFrame or a list of dicts.
        system: the system message shared by every request.
        schema: a JSON schema dict or a pydantic model class (made strict by `response_format`).
        model: deployment (Azure, local) or model (OpenAI) named in every line.
        name: the schema name (`^[a-zA-Z0-9_-]{1,64}$`).
        url: `/chat/completions` (Azure, local) or `/v1/chat/completions` (OpenAI); `Connection.batch_url`.
        prompt_column: the column holding the user message (ignored when `template` is given).
        template: a `str.format` template filled from the row, e.g. `"Provide info about {building}"`.
        id_column: the column holding the custom_id; when absent, ids are `id_prefix` + row number.
        target: which service's strict-schema rules to apply (`azure` or `openai`).
        convert: see `response_format` (default: convert pydantic models, send dicts as written).
        **options: extra body fields passed to `build_body` (e.g. `max_tokens`).

    Raises:
        AuthoringError: a missing prompt column or template field, an empty prompt, or a duplicate custom_id.
    """
    records = _records(rows)
    if not records:
        raise AuthoringError("No rows: a batch needs at least one request.")
    fmt = response_format(schema, name=name, target=target, convert=convert)
    lines: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        custom_id = str(record[id_column]) if id_column in record else f"{id_prefix}{index}"
        if template is not None:
            try:
                user = template.format(**record)
            except KeyError as exc:
                raise AuthoringError(
                    f"Row {index} ({custom_id}): the template names {exc.args[0]!r}, which is not a column "
                    f"(columns: {', '.join(map(str, record))}).",
                    custom_id=custom_id,
                    row=index,
                ) from None
        else:
            if prompt_column not in record:
                raise AuthoringError(
                    f"Row {index} ({custom_id}) has no column {prompt_column!r}; pass prompt_column= or template=.",
                    custom_id=custom_id,
                    row=index,
                )
            value = record[prompt_column]
            user = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
        if not user.strip():
            raise AuthoringError(f"Row {index} ({custom_id}): the prompt is empty.", custom_id=custom_id, row=index)
        body = build_body(model=model, system=system, user=user, response_format=fmt, **options)
        lines.append({"custom_id": custom_id, "method": "POST", "url": url, "body": body})
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


def to_jsonl_bytes(lines: Iterable[Mapping[str, Any]]) -> bytes:
    """Encode request lines as JSONL: one JSON object per line (no newlines inside), UTF-8 without BOM."""
    return b"".join(
        json.dumps(line, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8") + b"\n" for line in lines
    )


def lint_requests(
    lines: Sequence[Mapping[str, Any]],
    *,
    target: Target = "azure",
    deployments: Mapping[str, str] | None = None,
    endpoint: str | None = None,
) -> list[Any]:
    """Every finding of the batch-file lint (`batchkit.lint.lint_batch_file`) on the encoded lines."""
    from batchkit.lint import lint_batch_file

    data = to_jsonl_bytes(lines)
    return list(lint_batch_file(data.splitlines(keepends=True), target=target, deployments=deployments, endpoint=endpoint))


def write_jsonl(
    lines: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    check: bool = True,
    target: Target = "azure",
    deployments: Mapping[str, str] | None = None,
    quota: int | None = None,
) -> Path:
    """Write request lines to `path` (folders created); lint first and refuse a file that would fail.

    Args:
        lines: request lines from `build_requests`.
        path: where to write the `.jsonl` file.
        check: run `lint_requests` and raise `LintError` (writing nothing) on any error finding.
        target: `azure` or `openai` rules for the lint.
        deployments: deployment name -> kind for the model checks (None skips them).
        quota: an enqueued-token quota (e.g. `Estimate.quota`); with `check`, a file whose estimated
            input tokens exceed it is refused too (it would fail with `token_limit_exceeded`).

    Returns:
        The path written.
    """
    lines = list(lines)
    check_unique_ids(lines)
    if check:
        findings = lint_requests(lines, target=target, deployments=deployments)
        if quota:
            from batchkit.estimate import estimate_batch

            over = estimate_batch(lines, quota=quota).quota_finding
            if over is not None:
                findings.append(over)
        errors = [f for f in findings if getattr(f, "severity", "error") == "error"]
        if errors:
            first = errors[0]
            where = f"line {first.line}" if getattr(first, "line", None) else "the file"
            raise LintError(
                f"Not written: {len(errors)} error finding(s), first at {where}: {first.message} "
                f"Fix the schema or rows and build the requests again.",
                findings=errors,
            )
    target_path = Path(path)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    target_path.write_bytes(to_jsonl_bytes(lines))
    return target_path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file into a list of dicts; a bad line raises `AuthoringError` naming it."""
    records = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                records.append(json.loads(text))
            except json.JSONDecodeError as exc:
                raise AuthoringError(f"{Path(path).name} line {number} is not JSON: {exc.msg}.", row=number) from None
    return records


def requests_frame(lines: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A preview table of request lines: custom_id, model, the user prompt and the required fields."""
    rows = []
    for line in lines:
        body = line.get("body", {})
        messages = body.get("messages", [])
        user = next((m.get("content") for m in messages if m.get("role") == "user"), "")
        block = (body.get("response_format") or {}).get("json_schema") or {}
        required = (block.get("schema") or {}).get("required") or []
        rows.append(
            {
                "custom_id": line.get("custom_id"),
                "model": body.get("model"),
                "prompt": user,
                "required": ", ".join(required),
            }
        )
    return pd.DataFrame(rows, columns=["custom_id", "model", "prompt", "required"])


def try_live(client: Any, body: Mapping[str, Any], *, model: str | None = None) -> Any:
    """Send one request body (from `build_body` or a batch line's `body`) as a live chat call.

    Azure Global Batch deployments refuse live calls: pass `model=` naming a standard deployment
    there. Returns the SDK's `ChatCompletion`.
    """
    request = dict(body)
    if model:
        request["model"] = model
    return client.chat.completions.create(**request)
