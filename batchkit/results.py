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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

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


@dataclass
class ResultFiles:
    """The parsed lines of a batch's output and error files, plus where they came from."""

    batch_id: str | None
    status: str | None
    output_lines: list[dict[str, Any]] = field(default_factory=list)
    error_lines: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def lines(self) -> list[dict[str, Any]]:
        """Output lines followed by error lines."""
        return [*self.output_lines, *self.error_lines]


def parse_jsonl(text: str | bytes, *, source: str = "file") -> list[dict[str, Any]]:
    """Parse JSONL text (blank lines skipped); a bad line raises `ResultsError` naming it."""
    if isinstance(text, bytes):
        text = text.decode("utf-8-sig")
    records = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ResultsError(f"{source} line {number} is not JSON ({exc.msg}); the file may be truncated.", line=number) from None
        if not isinstance(record, dict):
            raise ResultsError(f"{source} line {number} is not a JSON object.", line=number)
        records.append(record)
    return records


def download_results(client: Any, batch: Any) -> ResultFiles:
    """Download and parse the output and error files of a finished batch.

    Args:
        client: the SDK client.
        batch: a `Batch` or a batch id (then retrieved first).

    A missing output file (nothing succeeded, or the batch failed) gives no output lines; a missing
    or empty error file gives no error lines.
    """
    if isinstance(batch, str):
        batch = client.batches.retrieve(batch)
    output_id = getattr(batch, "output_file_id", None) or None
    error_id = getattr(batch, "error_file_id", None) or None
    result = ResultFiles(batch_id=batch.id, status=batch.status, output_file_id=output_id, error_file_id=error_id)
    if output_id:
        result.output_lines = parse_jsonl(client.files.content(output_id).content, source=f"output file {output_id}")
    if error_id:
        result.error_lines = parse_jsonl(client.files.content(error_id).content, source=f"error file {error_id}")
    return result


def download_input_lines(client: Any, batch: Any) -> list[dict[str, Any]]:
    """The request lines of a batch, read back from its input file (ids in input order, schemas)."""
    if isinstance(batch, str):
        batch = client.batches.retrieve(batch)
    if not getattr(batch, "input_file_id", None):
        raise ResultsError(f"Batch {batch.id} has no input_file_id; pass the input table instead.")
    return parse_jsonl(client.files.content(batch.input_file_id).content, source=f"input file {batch.input_file_id}")


def _error_text(error: Any) -> str | None:
    if isinstance(error, Mapping):
        code = error.get("code")
        message = error.get("message")
        if code and message:
            return f"{code}: {message}"
        return str(message or code or error)
    return None if error is None else str(error)


def classify_line(line: Mapping[str, Any], *, validator: Any = None) -> dict[str, Any]:
    """Read one output or error line into `custom_id`, `outcome`, `error`, usage and the parsed `values`.

    Args:
        line: one JSON object from an output or error file.
        validator: an optional `jsonschema` validator; content that fails it is `invalid`.
    """
    custom_id = line.get("custom_id")
    info: dict[str, Any] = {
        "custom_id": custom_id,
        "outcome": "http_error",
        "error": None,
        "finish_reason": None,
        "status_code": None,
        "prompt_tokens": None,
        "completion_tokens": None,
        "total_tokens": None,
        "values": {},
    }
    response = line.get("response")
    error = line.get("error")
    if not response:
        code = error.get("code") if isinstance(error, Mapping) else None
        info["outcome"] = {"batch_expired": "expired", "batch_cancelled": "cancelled"}.get(str(code), "http_error")
        info["error"] = _error_text(error) or "no response and no error in the line"
        return info
    status = response.get("status_code")
    info["status_code"] = status
    body = response.get("body") or {}
    if status != 200:
        info["error"] = _error_text(body.get("error") if isinstance(body, Mapping) else None) or _error_text(error) or f"HTTP {status}"
        return info
    if not isinstance(body, Mapping):
        info["outcome"], info["error"] = "invalid", "the response body is not a JSON object"
        return info
    if body.get("object") == "response" or ("output" in body and "choices" not in body):
        return _classify_responses_body(body, info, validator)
    usage = body.get("usage") or {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        info[key] = usage.get(key)
    choices = body.get("choices") or []
    if not choices:
        info["outcome"], info["error"] = "invalid", "the response has no choices"
        return info
    choice = choices[0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    info["finish_reason"] = finish
    content = message.get("content")
    if message.get("refusal"):
        info["outcome"], info["error"] = "refusal", str(message["refusal"])
        return info
    if finish == "length":
        info["outcome"], info["error"] = "truncated", "the answer hit max_tokens and was cut off"
        return info
    if finish == "content_filter":
        info["outcome"], info["error"] = "content_filter", "the answer was withheld by the content filter"
        return info
    return _check_content(content, info, validator)


def _check_content(content: Any, info: dict[str, Any], validator: Any) -> dict[str, Any]:
    """Parse the answer text and check it against the schema: outcome `ok` or `invalid`."""
    try:
        values = json.loads(content or "")
    except (json.JSONDecodeError, TypeError) as exc:
        info["outcome"], info["error"] = "invalid", f"content is not JSON: {getattr(exc, 'msg', exc)}"
        return info
    if not isinstance(values, dict):
        info["outcome"], info["error"] = "invalid", "content is JSON but not an object"
        return info
    if validator is not None:
        problem = next(iter(validator.iter_errors(values)), None)
        if problem is not None:
            where = "/".join(map(str, problem.absolute_path)) or "(root)"
            info["outcome"], info["error"] = "invalid", f"content does not match the schema at {where}: {problem.message}"
            info["values"] = values
            return info
    info["outcome"] = "ok"
    info["values"] = values
    return info


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


def _classify_responses_body(body: Mapping[str, Any], info: dict[str, Any], validator: Any) -> dict[str, Any]:
    usage = body.get("usage") or {}
    info["prompt_tokens"] = usage.get("input_tokens")
    info["completion_tokens"] = usage.get("output_tokens")
    info["total_tokens"] = usage.get("total_tokens")
    status = body.get("status")
    details = body.get("incomplete_details") or {}
    reason = details.get("reason") if isinstance(details, Mapping) else None
    info["finish_reason"] = reason if status == "incomplete" and reason else status
    text, refusal = _responses_text(body)
    if refusal is not None:
        info["outcome"], info["error"] = "refusal", refusal
        return info
    if status == "failed" or (body.get("error") and status != "completed"):
        info["outcome"] = "http_error"
        info["error"] = _error_text(body.get("error")) or "the response failed"
        return info
    if status == "incomplete":
        if reason == "content_filter":
            info["outcome"], info["error"] = "content_filter", "the answer was withheld by the content filter"
        else:
            info["outcome"] = "truncated"
            info["error"] = (f"the answer is incomplete ({reason})" if reason and reason != "max_output_tokens"
                             else "the answer hit max_output_tokens and was cut off")
        return info
    if text is None:
        info["outcome"], info["error"] = "invalid", "the response has no output_text"
        return info
    return _check_content(text, info, validator)


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


def _input_frame(inputs: Any, id_column: str) -> pd.DataFrame:
    if inputs is None:
        return pd.DataFrame(columns=[id_column])
    if isinstance(inputs, pd.DataFrame):
        frame = inputs.copy()
    else:
        items = list(inputs)
        if all(isinstance(item, str) for item in items):
            frame = pd.DataFrame({id_column: items})
        elif all(isinstance(item, Mapping) for item in items):
            frame = pd.DataFrame([{id_column: item.get("custom_id", item.get(id_column))} for item in items])
        else:
            raise ResultsError("inputs must be a DataFrame, a list of custom_id strings, or the request lines.")
    if id_column not in frame.columns:
        raise ResultsError(f"The input table has no {id_column!r} column; pass id_column= naming the custom_id column.")
    frame[id_column] = frame[id_column].astype(str)
    duplicated = frame[id_column][frame[id_column].duplicated()]
    if not duplicated.empty:
        raise ResultsError(f"custom_id {duplicated.iloc[0]!r} appears twice in the input table.", custom_id=duplicated.iloc[0])
    return frame.reset_index(drop=True)


def parse_results(
    results: ResultFiles | Iterable[Mapping[str, Any]],
    *,
    inputs: Any = None,
    schema: Any = None,
    id_column: str = "custom_id",
    batch_status: str | None = None,
) -> pd.DataFrame:
    """One row per input `custom_id`, in input order: input columns, schema fields, outcome and usage.

    Args:
        results: a `ResultFiles` from `download_results`, or the raw lines (output and error together).
        inputs: the input table (DataFrame with an `id_column`), the request lines, or a list of ids.
            None: rows for the custom_ids found in the lines, sorted by id.
        schema: the JSON schema / response_format / pydantic model; its fields become columns and
            answers that do not match it are `invalid`.
        id_column: the custom_id column of `inputs` (renamed to `custom_id` in the result).
        batch_status: the batch's final status, used for ids that have no line at all (`expired`,
            `cancelled`); taken from `results` when it is a `ResultFiles`.

    Raises:
        ResultsError: a line without custom_id, an id twice in the results, or an id not in `inputs`.
    """
    if isinstance(results, ResultFiles):
        lines = results.lines
        batch_status = batch_status or results.status
    else:
        lines = list(results)
    schema_dict = _schema_dict(schema)
    validator = None
    fields: list[str] = []
    if schema_dict is not None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(schema_dict)
        fields = list((schema_dict.get("properties") or {}).keys())

    parsed: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str):
            raise ResultsError(f"Result line {number} has no custom_id; it cannot be matched to an input row.", line=number)
        if custom_id in parsed:
            raise ResultsError(f"custom_id {custom_id!r} has two result lines (line {number}); the files are inconsistent.", custom_id=custom_id, line=number)
        parsed[custom_id] = classify_line(line, validator=validator)

    frame = _input_frame(inputs, id_column)
    if inputs is None:
        frame = pd.DataFrame({id_column: sorted(parsed)})
    known = set(frame[id_column])
    strangers = [cid for cid in parsed if cid not in known]
    if strangers:
        raise ResultsError(
            f"custom_id {strangers[0]!r} is in the results but not in the input table ({len(strangers)} such id(s)); "
            f"pass the inputs this batch was built from.",
            custom_id=strangers[0],
        )
    if not fields:
        for info in parsed.values():
            for key in info["values"]:
                if key not in fields:
                    fields.append(key)

    missing_outcome = {"expired": "expired", "cancelled": "cancelled"}.get(str(batch_status), "missing")
    records = []
    for custom_id in frame[id_column]:
        info = parsed.get(custom_id)
        if info is None:
            info = {
                "outcome": missing_outcome,
                "error": f"no result line (batch status {batch_status})" if batch_status else "no result line",
                "values": {},
            }
        record: dict[str, Any] = {name: info["values"].get(name) for name in fields}
        record.update({name: info.get(name) for name in INFO_COLUMNS})
        records.append(record)

    answers = pd.DataFrame(records, columns=[*fields, *INFO_COLUMNS])
    for name in ("status_code", "prompt_tokens", "completion_tokens", "total_tokens"):
        answers[name] = answers[name].astype("Int64")
    base = frame.rename(columns={id_column: "custom_id"})
    clashes = [name for name in base.columns if name in answers.columns and name != "custom_id"]
    base = base.rename(columns={name: f"{name}_input" for name in clashes})
    return pd.concat([base, answers], axis=1)


def failed_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows whose outcome is not `ok` (same columns; empty when everything succeeded)."""
    return frame[frame["outcome"] != "ok"]


def outcome_counts(frame: pd.DataFrame) -> pd.Series:
    """How many rows had each outcome (outcomes that did not occur are left out)."""
    return frame["outcome"].value_counts().rename("rows")


def answer_table(frame: pd.DataFrame, fields: Sequence[str], *, id_label: str = "Custom ID") -> pd.DataFrame:
    """The answers only: the custom_id (labelled `id_label`) and the schema fields, one row per request."""
    missing = [name for name in fields if name not in frame.columns]
    if missing:
        raise ResultsError(f"No column {missing[0]!r} in the results; fields are: {', '.join(map(str, frame.columns))}.")
    return frame[["custom_id", *fields]].rename(columns={"custom_id": id_label}).reset_index(drop=True)


def _as_text(value: Any) -> Any:
    """JSON text for anything but a string or a missing value (so a column has one type)."""
    if value is None or isinstance(value, str) or (isinstance(value, float) and pd.isna(value)):
        return value
    return json.dumps(value, ensure_ascii=False)


def save_results(frame: pd.DataFrame, folder: str | Path, stem: str = "results") -> tuple[Path, Path]:
    """Write the table as `<stem>.csv` and `<stem>.parquet` in `folder`; returns both paths.

    Nested values (lists, objects), and values in a column that mixes types (e.g. a number where the
    schema wanted a string, in an `invalid` row), are stored as JSON text so both formats keep them.
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    flat = frame.copy()
    for name in flat.columns:
        if flat[name].dtype != object:
            continue
        kinds = {type(v) for v in flat[name] if v is not None and not (isinstance(v, float) and pd.isna(v))}
        if len(kinds) > 1 or kinds & {dict, list}:
            flat[name] = flat[name].map(_as_text)
    csv_path = target / f"{stem}.csv"
    parquet_path = target / f"{stem}.parquet"
    flat.to_csv(csv_path, index=False)
    flat.to_parquet(parquet_path, index=False)
    return csv_path, parquet_path
