"""Fault injection: make chosen requests and batches fail the way the real Batch services fail them.

A fault spec is a JSON object; every key is optional::

    {"seed": 0,
     "http_error": 0.0, "http_status": 500,      # fraction of requests answered with an HTTP error line
     "refusal": 0.0,                               # ... with a refusal (message.refusal, content null)
     "truncated": 0.0,                             # ... cut off (finish_reason "length")
     "content_filter": 0.0,                        # ... withheld by the output filter (finish_reason "content_filter")
     "ids": {"http_error": [...], "refusal": [...], "truncated": [...], "content_filter": [...]},
     "expire_after": null,                         # fraction in (0, 1]: the batch expires once that share has a result
     "token_limit_creates": 0,                     # the first N batches.create calls with this spec hit the token quota
     "slow": 0.0}                                  # extra seconds per request

Where a spec applies: service-wide with ``python -m localbatch serve --faults JSON`` (or the environment
variable ``LOCALBATCH_FAULTS``), or per batch with the batch metadata key ``localbatch_faults`` whose value
is the spec's JSON text. A batch's own spec replaces the service-wide one entirely (``{}`` turns faults
off for that batch). The spec in force is stored with the batch when it is created.

Which request gets which content fault depends only on the spec and the ``custom_id``: a request listed
under ``ids`` gets that fault; otherwise one number drawn from ``sha256(seed, custom_id)`` in [0, 1)
falls into consecutive intervals of the four fractions, in the order http_error, refusal, truncated,
content_filter (so the fractions cannot overlap and must add up to at most 1). The same spec and id give
the same fault whatever the order or the batch.

Content faults act below the point where the worker turns an engine answer into a result line: an HTTP
error is an :class:`~localbatch.engines.base.EngineRequestError` raised instead of calling the engine,
and a refusal, truncation or content filter reshapes the engine's chat completion. Whatever turns chat
completions into another API's shape therefore turns injected faults into that shape too.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .engines.base import EngineRequestError

__all__ = [
    "CONTENT_FAULTS",
    "METADATA_KEY",
    "FaultSpec",
    "FaultSpecError",
    "REFUSAL_TEXT",
    "apply_fault",
    "http_error_body",
    "parse_spec",
]

#: The per-request faults, in the order their fractions are laid out on [0, 1).
CONTENT_FAULTS: tuple[str, ...] = ("http_error", "refusal", "truncated", "content_filter")
#: The batch metadata key holding a batch's own fault spec.
METADATA_KEY = "localbatch_faults"
#: The refusal text of an injected refusal (the wording of the Structured Outputs guide's example).
REFUSAL_TEXT = "I'm sorry, I cannot assist with that request."

_KEYS = ("seed", *CONTENT_FAULTS, "http_status", "ids", "expire_after", "token_limit_creates", "slow")


class FaultSpecError(ValueError):
    """A fault spec that cannot be used; the message names the key and the accepted values."""


@dataclass(frozen=True)
class FaultSpec:
    """A parsed, checked fault spec (see the module docstring for the meaning of each field)."""

    seed: str = "0"
    http_error: float = 0.0
    refusal: float = 0.0
    truncated: float = 0.0
    content_filter: float = 0.0
    http_status: int = 500
    ids: Mapping[str, frozenset[str]] = field(default_factory=dict)
    expire_after: float | None = None
    token_limit_creates: int = 0
    slow: float = 0.0
    #: The spec as canonical JSON (sorted keys, no spaces): what is stored with a batch.
    text: str = "{}"

    @property
    def content_faults(self) -> bool:
        """True when some request can get a content fault."""
        return any(getattr(self, k) > 0 for k in CONTENT_FAULTS) or any(self.ids.values())

    def fault_for(self, custom_id: str) -> str | None:
        """The content fault of request ``custom_id`` (one of :data:`CONTENT_FAULTS`), or None."""
        for kind in CONTENT_FAULTS:
            if custom_id in self.ids.get(kind, ()):
                return kind
        edge = 0.0
        draw: float | None = None
        for kind in CONTENT_FAULTS:
            share = getattr(self, kind)
            if share <= 0:
                continue
            if draw is None:
                draw = _draw(self.seed, custom_id)
            edge += share
            if draw < edge:
                return kind
        return None

    def expire_threshold(self, total: int) -> int | None:
        """How many of ``total`` requests get a result before the batch expires (None: no expiry)."""
        if self.expire_after is None or total <= 0:
            return None
        return min(total, max(1, math.ceil(self.expire_after * total - 1e-9)))


def _draw(seed: str, custom_id: str) -> float:
    digest = hashlib.sha256(f"{seed}\x00{custom_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _fraction(spec: Mapping[str, Any], key: str, where: str) -> float:
    value = spec.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise FaultSpecError(f"{where}: '{key}' must be a number from 0 to 1 (a fraction of the requests), got {value!r}.")
    return float(value)


def _spec_object(raw: str | Mapping[str, Any], where: str) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return raw
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise FaultSpecError(f"{where}: not valid JSON ({exc}). Give a JSON object such as "
                             '\'{"seed": 1, "http_error": 0.1}\'.') from None
    if not isinstance(value, dict):
        raise FaultSpecError(f"{where}: a fault spec is a JSON object, e.g. '{{\"refusal\": 0.05}}', got {raw!r}.")
    return value


def parse_spec(raw: str | Mapping[str, Any], *, where: str = "fault spec") -> FaultSpec:
    """Check a fault spec (JSON text or a mapping) and return it parsed.

    ``where`` names the spec's origin in error messages (e.g. ``"--faults"`` or
    ``"metadata 'localbatch_faults'"``).

    Raises:
        FaultSpecError: an unknown key, a value of the wrong type or out of range, fractions adding
            up to more than 1; the message names the key and what is accepted.
    """
    spec = _spec_object(raw, where)
    unknown = sorted(set(spec) - set(_KEYS))
    if unknown:
        raise FaultSpecError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; the keys are "
                             f"{', '.join(_KEYS)}.")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, str)):
        raise FaultSpecError(f"{where}: 'seed' must be an integer or a string, got {seed!r}.")
    fractions = {k: _fraction(spec, k, where) for k in CONTENT_FAULTS}
    if sum(fractions.values()) > 1.0 + 1e-9:
        raise FaultSpecError(f"{where}: the fractions {', '.join(CONTENT_FAULTS)} add up to "
                             f"{sum(fractions.values()):g}; a request gets at most one fault, so they must add up to at most 1.")
    status = spec.get("http_status", 500)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise FaultSpecError(f"{where}: 'http_status' must be an HTTP error status from 400 to 599, got {status!r}.")
    ids_raw = spec.get("ids") or {}
    if not isinstance(ids_raw, Mapping):
        raise FaultSpecError(f"{where}: 'ids' must be an object mapping a fault ({', '.join(CONTENT_FAULTS)}) to a "
                             "list of custom_ids.")
    ids: dict[str, frozenset[str]] = {}
    for kind, listed in ids_raw.items():
        if kind not in CONTENT_FAULTS:
            raise FaultSpecError(f"{where}: 'ids' has the unknown fault {kind!r}; use {', '.join(CONTENT_FAULTS)}.")
        if not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
            raise FaultSpecError(f"{where}: 'ids.{kind}' must be a list of custom_id strings.")
        ids[kind] = frozenset(listed)
    expire = spec.get("expire_after")
    if expire is not None and (isinstance(expire, bool) or not isinstance(expire, (int, float)) or not 0 < expire <= 1):
        raise FaultSpecError(f"{where}: 'expire_after' must be a fraction in (0, 1] of the batch's requests "
                             f"(or null), got {expire!r}.")
    creates = spec.get("token_limit_creates", 0)
    if isinstance(creates, bool) or not isinstance(creates, int) or creates < 0:
        raise FaultSpecError(f"{where}: 'token_limit_creates' must be a whole number >= 0, got {creates!r}.")
    slow = spec.get("slow", 0.0)
    if isinstance(slow, bool) or not isinstance(slow, (int, float)) or not 0 <= slow <= 3600:
        raise FaultSpecError(f"{where}: 'slow' must be seconds per request from 0 to 3600, got {slow!r}.")
    return FaultSpec(
        seed=str(seed), http_status=status, ids=ids,
        expire_after=None if expire is None else float(expire), token_limit_creates=creates, slow=float(slow),
        text=json.dumps(spec, sort_keys=True, separators=(",", ":")), **fractions,
    )


@lru_cache(maxsize=256)
def stored_spec(text: str | None) -> FaultSpec | None:
    """The spec stored with a batch (canonical JSON, already checked), parsed once; None for none."""
    return parse_spec(text, where="stored fault spec") if text else None


def spec_for_batch(metadata: Any, service_wide: str | None) -> FaultSpec | None:
    """The spec a new batch runs with: its metadata's ``localbatch_faults``, else the service-wide spec.

    Raises:
        FaultSpecError: the metadata value is not a valid spec (the message names the key).
    """
    if isinstance(metadata, Mapping) and METADATA_KEY in metadata:
        return parse_spec(str(metadata[METADATA_KEY]), where=f"metadata '{METADATA_KEY}'")
    if service_wide:
        return parse_spec(service_wide, where="the service's --faults")
    return None


# ----- the answers ----------------------------------------------------------------------------------

_SERVER_ERROR = ("An error occurred while processing your request. You can retry your request, or contact us "
                 "through our help center at help.openai.com if the error persists.")


def http_error_body(status: int) -> dict[str, Any]:
    """The error envelope a model endpoint answers with for HTTP ``status`` (inside an error-file line)."""
    if status >= 500:
        error = {"message": _SERVER_ERROR, "type": "server_error", "param": None, "code": None}
    elif status == 429:
        error = {"message": "Rate limit reached for requests. Please try again in 1s.", "type": "requests",
                 "param": None, "code": "rate_limit_exceeded"}
    elif status == 408:
        error = {"message": "Request timed out.", "type": "timeout", "param": None, "code": "request_timeout"}
    else:
        error = {"message": f"The request was rejected (HTTP {status}).", "type": "invalid_request_error",
                 "param": None, "code": None}
    return {"error": error}


def _rough_tokens(text: str | None) -> int:
    return (len(text) + 3) // 4 if text else 0


def _reshape(completion: dict[str, Any], fault: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The engine's answer turned into a refusal, a truncation or a filtered answer."""
    out = dict(completion)
    choices = [dict(c) for c in out.get("choices") or [{"index": 0, "message": {"role": "assistant"}}]]
    choice = choices[0]
    message = dict(choice.get("message") or {"role": "assistant"})
    content = message.get("content")
    usage = dict(out.get("usage") or {})
    if fault == "refusal":
        message.update(content=None, refusal=REFUSAL_TEXT)
        choice["finish_reason"] = "stop"
        completion_tokens = _rough_tokens(REFUSAL_TEXT)
    elif fault == "truncated":
        text = content if isinstance(content, str) else ""
        cut = text[: max(1, len(text) // 2)] if len(text) > 1 else ""
        message.update(content=cut, refusal=None)
        choice["finish_reason"] = "length"
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        completion_tokens = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else max(1, _rough_tokens(cut))
    else:  # content_filter: the output filter withheld the answer
        message.update(content=None, refusal=None)
        choice["finish_reason"] = "content_filter"  # the Azure dialect adds the category that fired
        completion_tokens = int(usage.get("completion_tokens", 0) or 0)
    choice["message"] = message
    choices[0] = choice
    out["choices"] = choices
    prompt_tokens = int(usage.get("prompt_tokens", 0) or 0)
    usage.update(completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)
    out["usage"] = usage
    return out


def apply_fault(
    fault: str | None,
    complete: Callable[..., dict[str, Any]],
    body: dict[str, Any],
    *,
    model: str,
    custom_id: str | None,
    http_status: int = 500,
) -> dict[str, Any]:
    """Answer ``body`` with ``complete`` (an engine call), then apply ``fault`` to the answer.

    ``http_error`` raises an :class:`EngineRequestError` with ``http_status`` without calling the
    engine; the other faults call the engine (its own rejections still win: a request the endpoint
    refuses is refused before any model could answer it) and reshape the chat completion.
    """
    if fault == "http_error":
        raise EngineRequestError.from_body(http_status, http_error_body(http_status))
    completion = complete(body, model=model, custom_id=custom_id)
    if fault is None:
        return completion
    return _reshape(completion, fault, body)


# ----- batch-level faults ---------------------------------------------------------------------------


def token_limit_message(dialect: str, deployment: str, quota: int) -> str:
    """The message of a ``token_limit_exceeded`` error in ``dialect``'s wording."""
    if dialect == "azure":
        return (f"The number of enqueued tokens has surpassed the configured limit of {quota:,} for the deployment "
                f"'{deployment}'. Please either increase the limit or try again once the current jobs have finished.")
    return (f"Enqueued token limit reached for {deployment} in organization org-localbatch. Limit: {quota:,} "
            "enqueued tokens. Please try again once some in_progress batches have been completed.")


def first_model(path: Any, limit: int = 1 << 20) -> str:
    """The ``body.model`` of the first line of a batch input file ("unknown" when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            line = fh.readline(limit)
        model = json.loads(line.decode("utf-8-sig"))["body"]["model"]
        return model if isinstance(model, str) and model else "unknown"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def at_create(
    store: Any, *, dialect: str, metadata: Any, service_wide: str | None, quota: int, input_path: Any
) -> tuple[str | None, bool]:
    """Fault handling of ``batches.create``: (the spec text to store with the batch, whether it must fail).

    A create carrying a spec with ``token_limit_creates: N`` is counted; while fewer than N creates
    with that spec came before, it hits the enqueued-token quota the way the dialect's service does:
    Azure (fail-fast regions) answers the create itself with HTTP 400 ``token_limit_exceeded``; OpenAI
    accepts the batch, which then fails during validation (the second value is True).

    Raises:
        ApiError: the batch's spec is invalid (400 naming the metadata key), or Azure's fail-fast 400.
    """
    from .dialects import ApiError

    try:
        spec = spec_for_batch(metadata, service_wide)
    except FaultSpecError as exc:
        raise ApiError(400, str(exc), param=f"metadata.{METADATA_KEY}", code="invalid_value",
                       azure_code="invalidPayload") from None
    if spec is None:
        return None, False
    hit = spec.token_limit_creates > 0 and store.count_fault_create(spec.text) < spec.token_limit_creates
    if hit and dialect == "azure":
        # the code is named in the message too: this SDK's str(error) shows only the message, and
        # Azure's documented retry loop looks for 'token_limit_exceeded' in str(error)
        raise ApiError(400, "token_limit_exceeded: " + token_limit_message("azure", first_model(input_path), quota),
                       code="token_limit_exceeded", azure_code="token_limit_exceeded", type="invalid_request_error")
    return spec.text, hit
