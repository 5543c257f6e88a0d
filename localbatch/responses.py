"""The Responses API on top of chat-only engines.

The engines answer Chat Completions bodies only. For a ``/v1/responses`` request (a live
``responses.create`` or a line of a Responses batch) :func:`to_chat_body` turns the Responses body
into the chat body an engine takes (``input``/``instructions`` -> ``messages``, ``text.format`` ->
``response_format``, ``max_output_tokens`` -> ``max_completion_tokens``), and :func:`to_response`
turns the engine's chat completion into a Response object (``object: "response"``, an output
message whose content is ``output_text`` or ``refusal``, ``status`` ``completed`` or ``incomplete``
with ``incomplete_details.reason``, usage in input/output tokens with their details). Shapes follow
``openai.types.responses.Response``.

The request itself is checked beforehand by ``batchkit.lint.lint_request_body(..., api="responses")``
(one implementation of each rule); what is refused here is only what a chat-only engine cannot do
(images, files, tool calls, stored conversations), as a 400 naming the parameter.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from .dialects import Dialect, decorate_completion
from .engines.base import EngineRequestError

__all__ = ["RESPONSES_ENDPOINTS", "is_responses", "request_for_engine", "answer_for_client", "to_chat_body",
           "to_response"]

#: Batch endpoints (and line urls) of the Responses API, with and without the ``/v1`` prefix.
RESPONSES_ENDPOINTS: frozenset[str] = frozenset({"/v1/responses", "/responses"})

#: Responses roles -> chat roles (``developer`` is the newer name of ``system``).
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
#: Content part types whose text the engines read.
_TEXT_PARTS = ("input_text", "output_text", "text")
#: Parameters whose features need something a chat-only engine lacks.
_UNSUPPORTED = {
    "previous_response_id": "responses are not stored here; send the whole conversation in 'input'",
    "conversation": "conversations are not stored here; send the whole conversation in 'input'",
    "prompt": "stored prompt templates do not exist here; send the text in 'input' and 'instructions'",
    "background": "background responses are not supported; send the request without 'background'",
}


def is_responses(endpoint: str | None) -> bool:
    """True for a Responses API endpoint or url (``/v1/responses`` or ``/responses``)."""
    return (endpoint or "") in RESPONSES_ENDPOINTS


def _token() -> str:
    return secrets.token_hex(24)


def _unsupported(param: str, why: str) -> EngineRequestError:
    return EngineRequestError(f"Unsupported parameter: '{param}': {why}.", code="unsupported_parameter", param=param)


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise EngineRequestError(f"Invalid type for '{where}': expected a string or an array of content parts.",
                                 code="invalid_type", param=where)
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise EngineRequestError(
                f"Unsupported content part at '{where}[{i}]' (type {kind!r}): the models here read text only; "
                "send input_text parts.", code="unsupported_value", param=f"{where}[{i}].type")
    return "\n".join(texts)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
        return messages
    if not isinstance(value, list):
        raise EngineRequestError("Missing required parameter: 'input'.", code="missing_required_parameter",
                                 param="input")
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise EngineRequestError(f"Invalid type for '{where}': expected an object.", code="invalid_type",
                                     param=where)
        kind = item.get("type", "message")
        if kind != "message":
            raise EngineRequestError(
                f"Unsupported input item at '{where}' (type {kind!r}): only messages (role and content) are "
                "supported here.", code="unsupported_value", param=f"{where}.type")
        role = _ROLES.get(str(item.get("role")))
        if role is None:
            raise EngineRequestError(f"Invalid value for '{where}.role': {item.get('role')!r}. Supported values are: "
                                     "'user', 'assistant', 'system', and 'developer'.", code="invalid_value",
                                     param=f"{where}.role")
        messages.append({"role": role, "content": _content_text(item.get("content"), f"{where}.content")})
    return messages


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = {"name": fmt.get("name"), "schema": fmt.get("schema"), "strict": fmt.get("strict")}
        if "description" in fmt:
            spec["description"] = fmt["description"]
        return {"type": "json_schema", "json_schema": {k: v for k, v in spec.items() if v is not None}}
    if kind == "json_object":
        return {"type": "json_object"}
    return None


def to_chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The Chat Completions body an engine answers for the Responses request ``body``.

    Raises:
        EngineRequestError: (400) the request needs what a chat-only engine cannot do.
    """
    for param, why in _UNSUPPORTED.items():
        if body.get(param):
            raise _unsupported(param, why)
    tools = body.get("tools")
    if tools:
        raise _unsupported("tools", "the models here answer with text only; send the request without tools")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body)}
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = body[key]
    return chat


def _text_config(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    fmt = text.get("format") if isinstance(text.get("format"), dict) else {"type": "text"}
    if fmt.get("type") == "json_schema":
        fmt = {k: fmt[k] for k in ("type", "name", "schema", "description", "strict") if k in fmt}
    return {"format": fmt, "verbosity": text.get("verbosity") or "medium"}


def _usage(usage: Any) -> dict[str, Any]:
    usage = usage if isinstance(usage, dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(prompt_details.get("cached_tokens") or 0),
                                 "cache_write_tokens": int(prompt_details.get("cache_write_tokens") or 0)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def to_response(completion: dict[str, Any], request: dict[str, Any], model: str) -> dict[str, Any]:
    """The Response object for the engine's chat ``completion`` of the Responses ``request``.

    ``finish_reason`` ``length`` -> ``status: incomplete`` with reason ``max_output_tokens``;
    ``content_filter`` -> ``incomplete`` with reason ``content_filter``; a refusal becomes a
    ``refusal`` content part; otherwise one ``output_text`` part holds the content.
    """
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(str(finish))
    if message.get("refusal"):
        parts: list[dict[str, Any]] = [{"type": "refusal", "refusal": str(message["refusal"])}]
    elif message.get("content") is not None:
        parts = [{"type": "output_text", "text": str(message["content"]), "annotations": [], "logprobs": []}]
    else:
        parts = []
    output = []
    if parts:
        output.append({"id": f"msg_{_token()}", "type": "message", "status": "incomplete" if reason else "completed",
                       "role": "assistant", "content": parts})
    created = int(completion.get("created") or time.time())
    metadata = request.get("metadata") if isinstance(request.get("metadata"), dict) else {}
    return {
        "id": f"resp_{_token()}",
        "object": "response",
        "created_at": created,
        "status": "incomplete" if reason else "completed",
        "background": False,
        "completed_at": None if reason else int(time.time()),
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": request.get("instructions") if isinstance(request.get("instructions"), str) else None,
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "metadata": metadata,
        "model": model,
        "output": output,
        "parallel_tool_calls": bool(request.get("parallel_tool_calls", True)),
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "temperature": float(request["temperature"]) if request.get("temperature") is not None else 1.0,
        "text": _text_config(request),
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": float(request["top_p"]) if request.get("top_p") is not None else 1.0,
        "truncation": request.get("truncation") or "disabled",
        "usage": _usage(completion.get("usage")),
        "user": None,
    }


def request_for_engine(endpoint: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """What the engine is given for a request to ``endpoint``: the body itself, or its chat form."""
    return to_chat_body(body) if is_responses(endpoint) else body


def answer_for_client(endpoint: str | None, dialect: Dialect, completion: dict[str, Any], request: dict[str, Any],
                      model: str) -> dict[str, Any]:
    """The answer body for a request to ``endpoint``: the dialect's chat completion, or a Response."""
    if is_responses(endpoint):
        return to_response(completion, request, model)
    return decorate_completion(dialect, completion, model)
