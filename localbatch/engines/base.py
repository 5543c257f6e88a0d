"""The interface every engine implements, and the error an engine raises for a rejected request.

The worker calls ``engine.complete(body, model=..., custom_id=...)`` for each batch line, from at most
``engine.max_concurrency`` threads at once, and writes the returned chat.completion as the line's
response body. An :class:`EngineRequestError` becomes an error-file line whose ``response`` carries
``status_code`` and ``body`` exactly as given.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Engine", "EngineRequestError", "ENGINE_NAMES"]

#: The engines :func:`localbatch.engines.create_engine` knows.
ENGINE_NAMES: tuple[str, ...] = ("llama", "synthetic", "forward")


class EngineRequestError(Exception):
    """The model endpoint rejects this request (it becomes an error-file line, not a failed batch).

    Attributes:
        status_code: the HTTP status the endpoint answers with (400 for a bad request; the
            ``forward`` engine passes an upstream 4xx through and uses 5xx when the upstream
            keeps failing after retries).
        body: the OpenAI error envelope ``{"error": {"message", "type", "param", "code"}}``.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str = "invalid_request_error",
        status_code: int = 400,
    ) -> None:
        """Build the error.

        Args:
            message: the endpoint's error text (what went wrong and, where possible, what to do).
            code: the OpenAI error code, e.g. ``"context_length_exceeded"``; None when it has none.
            param: the request parameter at fault, e.g. ``"messages"``; None when none applies.
            type: the OpenAI error type (``"invalid_request_error"``, ``"server_error"`` ...).
            status_code: the HTTP status to report.
        """
        super().__init__(message)
        self.status_code: int = status_code
        self.body: dict[str, Any] = {
            "error": {"message": message, "type": type, "param": param, "code": code}
        }

    @classmethod
    def from_body(cls, status_code: int, body: dict[str, Any]) -> "EngineRequestError":
        """Wrap an error envelope received from elsewhere (kept verbatim as :attr:`body`)."""
        error = body.get("error") if isinstance(body, dict) else None
        message = str(error.get("message", "")) if isinstance(error, dict) else str(body)
        err = cls(message or f"HTTP {status_code}", status_code=status_code)
        if isinstance(error, dict):
            err.body = body
        return err

    @property
    def message(self) -> str:
        """The error text."""
        return str(self.body["error"]["message"])

    @property
    def code(self) -> str | None:
        """The OpenAI error code, if any."""
        return self.body["error"].get("code")


@runtime_checkable
class Engine(Protocol):
    """What the worker needs from an engine."""

    #: ``"llama"``, ``"synthetic"`` or ``"forward"``.
    name: str
    #: How many :meth:`complete` calls the worker may run at once.
    max_concurrency: int

    def complete(self, body: dict[str, Any], *, model: str, custom_id: str | None = None) -> dict[str, Any]:
        """Answer one OpenAI Chat Completions request body with a chat.completion dict.

        Args:
            body: the request body of a batch line (its ``model`` key, if any, is ignored).
            model: the model name to report in the answer (e.g. ``"gpt-4o-2024-08-06"``).
            custom_id: the batch line's ``custom_id`` (the synthetic engine seeds its values with it).

        Returns:
            ``{"id": "chatcmpl-…", "object": "chat.completion", "created", "model", "choices":
            [{"index", "message": {"role", "content", "refusal"}, "logprobs", "finish_reason"}],
            "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}, "system_fingerprint"}``.

        Raises:
            EngineRequestError: the endpoint rejects the request (context too long, bad schema ...).
        """
        ...

    def close(self) -> None:
        """Release what the engine holds (connections, the model's reference)."""
        ...
