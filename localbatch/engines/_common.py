"""Helpers shared by the engines: reading a request body, shaping the answer, checking the content."""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

from .base import EngineRequestError

log = logging.getLogger("localbatch.engines")


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    """The completion budget the request asks for (``max_completion_tokens`` wins over ``max_tokens``).

    Raises:
        EngineRequestError: the value is not a positive integer.
    """
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EngineRequestError(
                f"Invalid '{key}': expected a positive integer, got {value!r}.",
                code="invalid_value",
                param=key,
            )
        return value
    return None


def check_n(body: dict[str, Any]) -> None:
    """Reject ``n`` > 1: every engine here returns exactly one choice."""
    n = body.get("n")
    if n is not None and n != 1:
        raise EngineRequestError(
            f"Invalid 'n': the local engines return exactly one choice, got {n!r}. Remove 'n' or set it to 1.",
            code="unsupported_value",
            param="n",
        )


def response_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a ``response_format: {"type": "json_schema"}`` request, else None."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            return spec["schema"]
    return None


def wants_json(body: dict[str, Any]) -> bool:
    """True when the request asks for JSON content (``json_schema`` or ``json_object``)."""
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object")


def compact_json(content: str) -> str | None:
    """Re-serialize JSON text compactly, keys in their order, or None when it does not parse.

    The hosted service returns structured content without spaces or newlines; small local models
    pretty-print it.
    """
    try:
        value = json.loads(content)
    except (ValueError, TypeError):
        return None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def schema_violation(content: str | None, schema: dict[str, Any]) -> str | None:
    """Why ``content`` does not satisfy ``schema`` (None when it parses and validates).

    The message names the JSON path of the first error, e.g. ``"$.HeightInFeet: 'x' is not of type
    'integer'"``.
    """
    import jsonschema  # imported here: only JSON-schema requests need it

    if content is None:
        return "no content"
    try:
        value = json.loads(content)
    except ValueError as exc:
        return f"content is not JSON: {exc}"
    try:
        validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(value))
    except jsonschema.exceptions.SchemaError as exc:  # pragma: no cover - the linter rejects these first
        return f"the schema itself is invalid: {exc.message}"
    if error is None:
        return None
    return f"{error.json_path}: {error.message}"


def report_violation(engine: str, custom_id: str | None, problem: str) -> None:
    """Log a schema violation of an answer (the content is kept; the results parser flags it)."""
    log.warning("%s engine: answer for %s does not match its schema: %s", engine, custom_id or "a request", problem)


def chat_completion(
    *,
    model: str,
    content: str | None,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    system_fingerprint: str | None,
    completion_id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """Assemble an OpenAI chat.completion dict with one choice."""
    return {
        "id": completion_id or "chatcmpl-" + secrets.token_hex(15),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": system_fingerprint,
    }


def context_length_error(n_ctx: int, prompt_tokens: int, completion_tokens: int) -> EngineRequestError:
    """The OpenAI 400 for a request that does not fit the model's context window."""
    total = prompt_tokens + completion_tokens
    return EngineRequestError(
        f"This model's maximum context length is {n_ctx} tokens. However, you requested {total} tokens "
        f"({prompt_tokens} in the messages, {completion_tokens} in the completion). "
        "Please reduce the length of the messages or completion.",
        code="context_length_exceeded",
        param="messages",
    )
