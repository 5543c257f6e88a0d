"""Engines that answer Chat Completions requests for the local Batch service.

``create_engine("llama" | "synthetic" | "forward", **options)`` builds one; all share the small
:class:`~localbatch.engines.base.Engine` interface. Importing this package loads no model.
"""

from __future__ import annotations

from typing import Any

from .base import ENGINE_NAMES, Engine, EngineRequestError

__all__ = ["Engine", "EngineRequestError", "ENGINE_NAMES", "create_engine"]

# Options each engine accepts (anything else is an error naming the option).
_OPTIONS: dict[str, frozenset[str]] = {
    "llama": frozenset(
        {
            "model_path",
            "n_ctx",
            "max_tokens_cap",
            "threads",
            "chat_template",
            "seed",
            "temperature",
            "schema_in_prompt",
            "compact_json",
            "prompt_cache",
            "parallel",
            "concurrency",
        }
    ),
    "synthetic": frozenset({"concurrency", "max_tokens_cap"}),
    "forward": frozenset(
        {"forward_url", "forward_api_key", "forward_model", "concurrency", "timeout", "retries", "backoff"}
    ),
}


def create_engine(name: str, **options: Any) -> Engine:
    """Build the engine called ``name``.

    Args:
        name: ``"llama"`` (the default model, in-process), ``"synthetic"`` (no model) or
            ``"forward"`` (an OpenAI-compatible endpoint).
        **options: engine settings; options whose value is None are ignored, so a caller can pass
            its whole configuration.
            llama: ``model_path``, ``n_ctx``, ``max_tokens_cap``, ``threads``, ``chat_template``,
            ``seed``, ``temperature``, ``schema_in_prompt``, ``compact_json``, ``prompt_cache``,
            ``parallel`` (``concurrency`` is accepted and ignored: ``parallel`` sets how many
            requests run at once).
            synthetic: ``concurrency``, ``max_tokens_cap``.
            forward: ``forward_url`` (required), ``forward_api_key`` (default: the environment
            variable ``LOCALBATCH_FORWARD_API_KEY``), ``forward_model``,
            ``concurrency``, ``timeout``, ``retries``, ``backoff``.

    Raises:
        ValueError: unknown engine or option, or a missing ``forward_url``.
        FileNotFoundError: the llama engine's model file does not exist.
    """
    if name not in _OPTIONS:
        raise ValueError(f"Unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}.")
    given = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(given) - _OPTIONS[name])
    if unknown:
        raise ValueError(
            f"Engine {name!r} does not take option(s) {', '.join(unknown)}; it takes {', '.join(sorted(_OPTIONS[name]))}."
        )
    if name == "llama":
        from .llama import LlamaEngine

        given.pop("concurrency", None)  # the engine's own ``parallel`` decides (llama.cpp slots)
        return LlamaEngine(**given)
    if name == "synthetic":
        from .synthetic import SyntheticEngine

        return SyntheticEngine(**given)
    from .forward import ForwardEngine

    if "forward_url" not in given:
        raise ValueError("The forward engine needs the upstream URL: pass --forward-url http://127.0.0.1:8000/v1 "
                         "(or --engine-option forward_url=..., or set LOCALBATCH_FORWARD_URL).")
    return ForwardEngine(**given)
