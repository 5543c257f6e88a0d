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

#: The ``api-version`` values the Azure classic routes (``/openai/...``) accept: the data-plane
#: versions that carry the files and batches routes. Batch arrived in 2024-07-01-preview and went GA
#: in 2024-10-21 (spec/batch-api.md §1.4, from the Azure OpenAI API version lifecycle page); the later
#: previews are the ones that page lists after it. Any other value is refused as Azure refuses it.
AZURE_API_VERSIONS: tuple[str, ...] = (
    "2024-07-01-preview",
    "2024-08-01-preview",
    "2024-09-01-preview",
    "2024-10-01-preview",
    "2024-10-21",
    "2024-12-01-preview",
    "2025-01-01-preview",
    "2025-02-01-preview",
    "2025-03-01-preview",
    "2025-04-01-preview",
)
#: The first classic version with the Responses API (spec/batch-api.md §1.3: the v1 surface has it
#: without any version); Responses calls and batches on ``/openai/...`` need this one or a later one.
AZURE_RESPONSES_SINCE = "2025-03-01-preview"
#: ``api-version`` values the Azure v1 routes (``/openai/v1/...``) accept besides none at all
#: (spec/batch-api.md §1.3: GA paths need none; preview features take ``preview``).
AZURE_V1_API_VERSIONS: tuple[str, ...] = ("preview", "latest")


def api_version_error(value: str, *, v1: bool) -> "ApiError":
    """The 400 Azure answers for an ``api-version`` it does not serve (observed text, then the fix)."""
    if v1:
        fix = "The /openai/v1 routes need no api-version: leave it out (or pass 'preview')."
    else:
        fix = (f"Use one of: {', '.join(AZURE_API_VERSIONS)} (GA: 2024-10-21), e.g. "
               "AzureOpenAI(api_version=\"2024-10-21\").")
    return ApiError(400, f"API version not supported: {value!r}. {fix}", azure_code="BadRequest",
                    param="api-version", code="unsupported_api_version")


def check_api_version(value: str | None, *, v1: bool) -> None:
    """Refuse an ``api-version`` the route does not serve (classic routes need one of the list)."""
    if v1:
        if value is not None and value not in AZURE_V1_API_VERSIONS:
            raise api_version_error(value, v1=True)
        return
    if not value:
        raise ApiError(400, "The api-version query parameter (?api-version=) is required for all requests, "
                       "e.g. ?api-version=2024-10-21.", azure_code="MissingApiVersionParameter", param="api-version")
    if value not in AZURE_API_VERSIONS:
        raise api_version_error(value, v1=False)


def responses_allowed(api_version: str | None) -> bool:
    """True when a classic ``api-version`` carries the Responses API (None: a v1 route, always)."""
    if api_version is None:
        return True
    return AZURE_API_VERSIONS.index(api_version) >= AZURE_API_VERSIONS.index(AZURE_RESPONSES_SINCE) \
        if api_version in AZURE_API_VERSIONS else False


def responses_version_error(api_version: str) -> "ApiError":
    """The 400 for a Responses call or batch on a classic version that predates the Responses API."""
    return ApiError(400, f"Azure OpenAI Responses API is enabled only for api-version {AZURE_RESPONSES_SINCE} and "
                    f"later (this request has {api_version}). Pass api_version=\"{AZURE_RESPONSES_SINCE}\" or "
                    "use the /openai/v1 routes.", azure_code="BadRequest", param="api-version")


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
    if dialect == "openai":  # OpenAI sends the tier and the token-detail objects (SDK CompletionUsage)
        body.setdefault("service_tier", "default")
        usage = dict(body.get("usage") or {})
        usage.setdefault("prompt_tokens_details", {"cached_tokens": 0, "audio_tokens": 0})
        usage.setdefault("completion_tokens_details", {"reasoning_tokens": 0, "audio_tokens": 0,
                                                       "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0})
        body["usage"] = usage
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
