"""What differs between the Azure and OpenAI dialects: ids, object shapes, error envelopes, result lines.

The dialect is decided by the route a file or batch was created through (``/openai/...`` and
``/openai/v1/...`` are Azure, ``/v1/...`` is OpenAI) and stored with it.
"""

from __future__ import annotations

import secrets
import string
import uuid
from typing import Any, Literal

Dialect = Literal["azure", "openai"]

_BASE62 = string.ascii_letters + string.digits

#: Upload purposes each dialect accepts (spec §2.1, §2.2).
UPLOAD_PURPOSES: dict[str, frozenset[str]] = {
    "openai": frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}),
    "azure": frozenset({"fine-tune", "fine-tune-results", "assistants", "assistants_output", "batch"}),
}

#: Messages of error lines for requests that never ran (spec §5.2 shape 2).
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."


class ApiError(Exception):
    """An HTTP error answer; the app renders it in the envelope of the route's dialect.

    ``code`` is the OpenAI-style code; ``azure_code`` (default: ``code``) is what the Azure
    envelope carries. ``raw_body`` (if given) is sent as-is, e.g. a model endpoint's 400.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = "invalid_request_error",
        azure_code: str | None = None,
        raw_body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        self.azure_code = azure_code
        self.raw_body = raw_body

    def body(self, dialect: Dialect) -> dict[str, Any]:
        """The JSON body of this error in ``dialect``'s envelope."""
        if self.raw_body is not None:
            return self.raw_body
        if dialect == "openai":
            return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return {"error": {"code": self.azure_code or self.code or str(self.status), "message": self.message}}


def new_file_id(dialect: Dialect, *, generated: bool = False) -> str:
    """A file id: Azure uploads ``file-<32 hex>``, Azure results ``file-<uuid>``, OpenAI ``file-<22 base62>``."""
    if dialect == "azure":
        return f"file-{uuid.uuid4()}" if generated else f"file-{uuid.uuid4().hex}"
    return "file-" + "".join(secrets.choice(_BASE62) for _ in range(22))


def new_batch_id(dialect: Dialect) -> str:
    """A batch id: Azure ``batch_<uuid>``, OpenAI ``batch_<32 hex>``."""
    return f"batch_{uuid.uuid4()}" if dialect == "azure" else f"batch_{uuid.uuid4().hex}"


def new_request_id() -> str:
    """The ``request_id`` of a result line."""
    return str(uuid.uuid4())


def _safe() -> dict[str, Any]:
    return {"filtered": False, "severity": "safe"}


def decorate_completion(dialect: Dialect, completion: dict[str, Any], model_version: str) -> dict[str, Any]:
    """Make an engine's chat.completion look like the dialect's: ids, Azure filter annotations.

    The engine reports the model it was asked to (``model_version``); a body without one gets it.

    Azure bodies carry ``prompt_filter_results`` and per-choice ``content_filter_results`` and a
    usage with only the three token counts (spec §12).
    """
    body = dict(completion)
    body.pop("timings", None)
    if not body.get("model"):
        body["model"] = model_version
    body.setdefault("object", "chat.completion")
    if not str(body.get("id", "")).startswith("chatcmpl-"):
        body["id"] = "chatcmpl-" + "".join(secrets.choice(_BASE62) for _ in range(29))
    if not body.get("system_fingerprint"):
        body["system_fingerprint"] = "fp_localbatch"
    if dialect == "azure":
        choices = []
        for choice in body.get("choices") or []:
            choice = dict(choice)
            choice["content_filter_results"] = {
                "hate": _safe(), "self_harm": _safe(), "sexual": _safe(), "violence": _safe(),
            }
            if choice.get("finish_reason") == "content_filter":  # the output filter withheld this answer
                choice["content_filter_results"]["violence"] = {"filtered": True, "severity": "high"}
            choice.setdefault("logprobs", None)
            choices.append(choice)
        body["choices"] = choices
        body["prompt_filter_results"] = [
            {
                "prompt_index": 0,
                "content_filter_results": {
                    "hate": _safe(),
                    "jailbreak": {"filtered": False, "detected": False},
                    "self_harm": _safe(),
                    "sexual": _safe(),
                    "violence": _safe(),
                },
            }
        ]
        usage = body.get("usage") or {}
        body["usage"] = {
            k: int(usage.get(k, 0)) for k in ("completion_tokens", "prompt_tokens", "total_tokens")
        }
    return body


def response_line(dialect: Dialect, custom_id: str, status_code: int, body: dict[str, Any]) -> dict[str, Any]:
    """A result line for a request that reached the model endpoint (200 output or 4xx/5xx error)."""
    response = {"body": body, "request_id": new_request_id(), "status_code": status_code}
    if dialect == "azure":
        return {"custom_id": custom_id, "response": response, "error": None}
    return {
        "id": "batch_req_" + uuid.uuid4().hex,
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": response["request_id"], "body": body},
        "error": None,
    }


def not_run_line(dialect: Dialect, custom_id: str, code: str, message: str) -> dict[str, Any]:
    """An error line for a request that never ran (``batch_cancelled``, ``batch_expired``)."""
    line: dict[str, Any] = {"custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
    if dialect == "openai":
        line = {"id": "batch_req_" + uuid.uuid4().hex, **line}
    return line


def request_error_body(message: str, *, code: str | None, param: str | None) -> dict[str, Any]:
    """The body a model endpoint answers a rejected request with (HTTP 400, spec §5.2/§7.4)."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
