"""An engine that sends each request to an OpenAI-compatible chat endpoint (vLLM, llama.cpp, Ollama).

The way to a GPU or a cluster: the service keeps its files, batches and dialects, and the answers
come from ``{base_url}/chat/completions``. At most ``concurrency`` requests are in flight; 429 and
5xx answers and connection failures are retried with exponential backoff; other 4xx answers become
the line's error (the upstream error body is passed through).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

from .base import EngineRequestError

__all__ = ["ForwardEngine"]

#: Where the forward engine finds the upstream key when none is passed (keeps it off command lines).
API_KEY_VARIABLE = "LOCALBATCH_FORWARD_API_KEY"
_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def _normalize(answer: dict[str, Any], model: str) -> dict[str, Any]:
    """Report ``model``, and fill the fields some servers leave out (llama.cpp: ``logprobs``, ``refusal``)."""
    answer["model"] = model
    answer.pop("timings", None)  # llama.cpp's own extra
    answer.setdefault("object", "chat.completion")
    answer.setdefault("system_fingerprint", None)
    for choice in answer.get("choices") or []:
        if isinstance(choice, dict):
            choice.setdefault("logprobs", None)
            if isinstance(choice.get("message"), dict):
                choice["message"].setdefault("refusal", None)
    return answer


class ForwardEngine:
    """Forward requests to an OpenAI-compatible ``/chat/completions`` endpoint."""

    name = "forward"

    def __init__(
        self,
        forward_url: str,
        *,
        forward_api_key: str | None = None,
        forward_model: str | None = None,
        concurrency: int = 4,
        timeout: float = 600.0,
        retries: int = 3,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Configure the engine (no connection is made until the first request).

        Args:
            forward_url: the endpoint's base URL, e.g. ``http://127.0.0.1:8000/v1``
                (``/chat/completions`` is appended).
            forward_api_key: sent as ``Authorization: Bearer …``; None reads the environment
                variable ``LOCALBATCH_FORWARD_API_KEY`` when the first request is sent (unset: no key).
            forward_model: the model name the upstream serves; None sends the body's own ``model``
                (or, without one, the reported model name).
            concurrency: requests in flight at most (also the worker's ``max_concurrency``).
            timeout: seconds to wait for one answer.
            retries: further attempts after a 408/409/429/5xx answer or a connection failure.
            backoff: first wait between attempts in seconds, doubled each time (a ``Retry-After``
                header of at most 60 s is used instead when present).
            sleep: the wait function (tests replace it).

        Raises:
            ValueError: ``forward_url`` is not an http(s) URL, or a number is out of range.
        """
        if not isinstance(forward_url, str) or not forward_url.startswith(("http://", "https://")):
            raise ValueError(
                f"forward_url must be an http:// or https:// URL of an OpenAI-compatible API, got {forward_url!r}"
            )
        if concurrency < 1 or retries < 0 or timeout <= 0:
            raise ValueError("concurrency must be >= 1, retries >= 0 and timeout > 0")
        self.url = forward_url.rstrip("/") + "/chat/completions"
        self.forward_model = forward_model
        self.max_concurrency = int(concurrency)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self._sleep = sleep
        self._timeout = float(timeout)
        self._api_key = forward_api_key
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._client: Any = None
        self._client_lock = threading.Lock()

    def _http(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import httpx2  # the openai SDK's HTTP client, imported on first use

                headers = {"Content-Type": "application/json"}
                key = self._api_key or os.environ.get(API_KEY_VARIABLE)
                if key:
                    headers["Authorization"] = f"Bearer {key}"
                self._client = httpx2.Client(
                    headers=headers,
                    timeout=httpx2.Timeout(self._timeout, connect=10.0),
                    limits=httpx2.Limits(max_connections=self.max_concurrency),
                    trust_env=False,
                )
            return self._client

    def complete(self, body: dict[str, Any], *, model: str, custom_id: str | None = None) -> dict[str, Any]:
        """POST the body upstream and return its chat.completion, ``model`` rewritten to ``model``.

        Raises:
            EngineRequestError: the upstream answered 4xx (its status and error body are kept), or
                it kept failing (429/5xx/unreachable) after the retries (status 502/503 or its own).
        """
        import httpx2

        payload = dict(body)
        payload["model"] = self.forward_model or body.get("model") or model
        payload.pop("stream", None)
        client = self._http()
        attempt = 0
        while True:
            with self._slots:
                try:
                    response = client.post(self.url, json=payload)
                    failure: str | None = None
                except httpx2.TimeoutException as exc:
                    response, failure = None, f"timed out after {self._timeout:g} s ({type(exc).__name__})"
                except httpx2.TransportError as exc:
                    response, failure = None, f"could not reach {self.url}: {exc}"
            if response is not None and response.status_code < 400:
                try:
                    answer = response.json()
                except ValueError as exc:
                    raise EngineRequestError(
                        f"The upstream endpoint {self.url} answered with something that is not JSON.",
                        type="server_error",
                        status_code=502,
                    ) from exc
                if not isinstance(answer, dict) or not answer.get("choices"):
                    raise EngineRequestError(
                        f"The upstream endpoint {self.url} answered without 'choices'.",
                        type="server_error",
                        status_code=502,
                    )
                return _normalize(answer, model)
            retryable = response is None or response.status_code in _RETRY_STATUSES
            if not retryable or attempt >= self.retries:
                raise self._give_up(response, failure, attempt)
            self._sleep(self._wait(response, attempt))
            attempt += 1

    def _wait(self, response: Any, attempt: int) -> float:
        if response is not None:
            try:
                hinted = float(response.headers.get("retry-after", ""))
            except ValueError:
                hinted = -1.0
            if 0 <= hinted <= 60:
                return hinted
        return self.backoff * (2**attempt)

    def _give_up(self, response: Any, failure: str | None, attempt: int) -> EngineRequestError:
        tries = f"after {attempt + 1} attempt{'s' if attempt else ''}"
        if response is None:
            return EngineRequestError(
                f"The upstream endpoint failed {tries}: {failure}. Check that it is running and that "
                "forward_url points at its OpenAI-compatible base URL.",
                type="server_error",
                status_code=503,
            )
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            return EngineRequestError.from_body(response.status_code, data)
        text = response.text[:500]
        kind = "invalid_request_error" if response.status_code < 500 else "server_error"
        return EngineRequestError(
            f"The upstream endpoint answered HTTP {response.status_code} {tries}: {text}",
            type=kind,
            status_code=response.status_code,
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
