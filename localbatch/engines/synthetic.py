"""An engine with no model: schema-valid values drawn deterministically from the request's schema.

For load tests and benchmarks. The values are seeded by ``custom_id`` (or, without one, by the
request body), so a line gets the same answer every run. ``model`` is reported as
``"<model>-synthetic"`` and ``system_fingerprint`` as ``"synthetic"``, so the answers cannot pass for
a model's. Token counts are estimates: about four characters per token, plus a few tokens of framing
per message (no tokenizer is run, to keep the engine fast).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import string
import uuid
from typing import Any

from ._common import chat_completion, check_n, requested_max_tokens, response_schema, wants_json
from .base import EngineRequestError

__all__ = ["SyntheticEngine", "synthesize", "rough_token_count"]

_WORDS = (
    "alpha", "bravo", "cedar", "delta", "ember", "fjord", "granite", "harbor", "island", "juniper",
    "kestrel", "lumen", "meadow", "nimbus", "orbit", "prairie", "quartz", "river", "summit", "tundra",
)
_MAX_DEPTH = 6  # below this depth, recursion takes its shortest way out (null, empty array ...)


def rough_token_count(text: str) -> int:
    """Estimate tokens as one per four characters (at least one for non-empty text)."""
    return (len(text) + 3) // 4 if text else 0


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return str(message)
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


class _Generator:
    """Draws one value from a strict-mode JSON schema."""

    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def resolve(self, ref: str) -> dict[str, Any]:
        if ref == "#":
            return self.root
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref are supported, got {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"$ref {ref!r} does not resolve")
            node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"$ref {ref!r} does not point to a schema")
        return node

    def value(self, schema: Any, depth: int = 0, name: str = "value") -> Any:
        if schema is True or schema == {}:
            return name
        if not isinstance(schema, dict):
            raise ValueError(f"not a schema: {schema!r}")
        if "$ref" in schema:
            return self.value(self.resolve(schema["$ref"]), depth + 1, name)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.rng.choice(list(schema["enum"]))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = list(schema[key])
                if depth >= _MAX_DEPTH:
                    branches.sort(key=self._weight)
                    return self.value(branches[0], depth + 1, name)
                return self.value(self.rng.choice(branches), depth + 1, name)
        if "allOf" in schema and len(schema["allOf"]) == 1:
            return self.value(schema["allOf"][0], depth + 1, name)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = list(kind)
            if depth >= _MAX_DEPTH and "null" in kinds:
                kind = "null"
            else:
                # a nullable field is null one time in four
                non_null = [k for k in kinds if k != "null"]
                kind = "null" if not non_null or ("null" in kinds and self.rng.random() < 0.25) else self.rng.choice(non_null)
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        method = getattr(self, "_" + str(kind), None)
        if method is None:
            raise ValueError(f"unsupported type {kind!r}")
        return method(schema, depth, name)

    def _weight(self, schema: Any) -> int:
        """How deep a branch may lead: null first, scalars next, containers and references last."""
        if not isinstance(schema, dict):
            return 3
        kind = schema.get("type")
        if kind == "null" or (isinstance(kind, list) and "null" in kind):
            return 0
        if "$ref" in schema or kind in ("object", "array"):
            return 2
        return 1

    def _null(self, schema: dict[str, Any], depth: int, name: str) -> None:
        return None

    def _boolean(self, schema: dict[str, Any], depth: int, name: str) -> bool:
        return self.rng.random() < 0.5

    def _integer(self, schema: dict[str, Any], depth: int, name: str) -> int:
        low, high = self._bounds(schema, integer=True)
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first, last = -(-low // step), high // step
            return step * self.rng.randint(first, max(first, last))
        return self.rng.randint(low, high)

    def _number(self, schema: dict[str, Any], depth: int, name: str) -> float | int:
        low, high = self._bounds(schema, integer=False)
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            first, last = math.ceil(low / step), math.floor(high / step)
            for _ in range(20):  # a multiple whose float quotient is exact, as validators check it
                k = self.rng.randint(first, max(first, last))
                value = k * step
                if value / step == k:
                    return value
            return first * step
        return min(max(round(self.rng.uniform(low, high), 2), low), high) if high > low else low

    def _bounds(self, schema: dict[str, Any], *, integer: bool) -> tuple[Any, Any]:
        tiny = 1 if integer else 0.01
        low = schema.get("minimum")
        if low is None and isinstance(schema.get("exclusiveMinimum"), (int, float)):
            low = schema["exclusiveMinimum"] + tiny
        high = schema.get("maximum")
        if high is None and isinstance(schema.get("exclusiveMaximum"), (int, float)):
            high = schema["exclusiveMaximum"] - tiny
        if low is None and high is None:
            low, high = 0, 1000
        elif low is None:
            low = high - 1000
        elif high is None:
            high = low + 1000
        if integer:
            low, high = math.ceil(low), math.floor(high)
        return low, max(low, high)

    def _string(self, schema: dict[str, Any], depth: int, name: str) -> str:
        fmt = schema.get("format")
        r = self.rng
        if fmt == "date-time":
            text = f"20{r.randint(10, 29)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00Z"
        elif fmt == "date":
            text = f"20{r.randint(10, 29)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        elif fmt == "time":
            text = f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00Z"
        elif fmt == "duration":
            text = f"P{r.randint(1, 30)}D"
        elif fmt == "email":
            text = f"{r.choice(_WORDS)}@example.com"
        elif fmt == "hostname":
            text = f"{r.choice(_WORDS)}.example.com"
        elif fmt == "ipv4":
            text = f"192.0.2.{r.randint(1, 254)}"
        elif fmt == "ipv6":
            text = f"2001:db8::{r.randint(1, 65535):x}"
        elif fmt == "uuid":
            text = str(uuid.UUID(int=r.getrandbits(128), version=4))
        else:
            text = f"{name} {r.choice(_WORDS)} {r.randint(1, 999)}"
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and not re.search(pattern, text):
            text = self._match_pattern(pattern, text)
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        if len(text) < low:
            text = text + "x" * (low - len(text))
        if isinstance(high, int) and len(text) > high:
            text = text[:high]
        return text

    def _match_pattern(self, pattern: str, fallback: str) -> str:
        """A string matching ``pattern`` from a few simple candidates (the fallback if none does)."""
        r = self.rng
        candidates = [
            "", "a", "A", "0", "abc", "ABC", "a1", "A1", "123", "abc123", "ABC-123", "a-b", "a_b",
            "".join(r.choice(string.ascii_lowercase) for _ in range(8)),
            "".join(r.choice(string.digits) for _ in range(6)),
            "".join(r.choice(string.ascii_uppercase) for _ in range(3)),
            "+1-555-0100", "2024-01-01", "ab@example.com", "http://example.com",
        ]
        for candidate in candidates:
            if re.fullmatch(pattern, candidate) or re.search(pattern, candidate):
                return candidate
        return fallback

    def _array(self, schema: dict[str, Any], depth: int, name: str) -> list[Any]:
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        top = low if depth >= _MAX_DEPTH else low + 2
        if isinstance(high, int):
            top = min(top, high)
        count = self.rng.randint(low, max(low, top))
        items = schema.get("items", {})
        return [self.value(items, depth + 1, name) for _ in range(count)]

    def _object(self, schema: dict[str, Any], depth: int, name: str) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = schema.get("required")
        keys = list(properties) if required is None else [k for k in properties if k in required]
        return {key: self.value(properties[key], depth + 1, key) for key in keys}


def synthesize(schema: dict[str, Any], seed: str) -> Any:
    """A value valid against ``schema``, the same for the same ``seed``.

    Supports the strict-mode subset: types and type lists (nullable), ``enum``, ``const``,
    ``anyOf``/``oneOf``, ``$ref`` to ``#`` and ``#/$defs/…`` (recursion ends within a few levels),
    arrays with ``minItems``/``maxItems``, nested objects, string formats, length bounds, simple
    patterns, number bounds and ``multipleOf``.

    Raises:
        ValueError: a ``$ref`` that does not resolve, or an unknown type.
    """
    rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    return _Generator(schema, rng).value(schema)


class SyntheticEngine:
    """No model: deterministic schema-valid answers, for load tests and benchmarks."""

    name = "synthetic"

    def __init__(self, *, concurrency: int = 8, max_tokens_cap: int = 4096) -> None:
        """Configure the engine.

        Args:
            concurrency: how many requests the worker may run at once.
            max_tokens_cap: completion-token estimate above which the content is cut
                (``finish_reason: "length"``), also applied to the request's own ``max_tokens``.
        """
        self.max_concurrency = max(1, int(concurrency))
        self.max_tokens_cap = int(max_tokens_cap)

    def complete(self, body: dict[str, Any], *, model: str, custom_id: str | None = None) -> dict[str, Any]:
        """Answer with values drawn from the request's schema (see :class:`localbatch.engines.base.Engine`).

        Raises:
            EngineRequestError: a schema whose ``$ref`` does not resolve or with an unknown type.
        """
        check_n(body)
        requested = requested_max_tokens(body)
        budget = min(requested or self.max_tokens_cap, self.max_tokens_cap)
        seed = custom_id if custom_id is not None else json.dumps(body, sort_keys=True, default=str)
        schema = response_schema(body)
        if schema is not None:
            try:
                value = synthesize(schema, seed)
            except (ValueError, RecursionError) as exc:
                name = body["response_format"]["json_schema"].get("name", "response")
                raise EngineRequestError(
                    f"Invalid schema for response_format '{name}': {exc}", param="response_format"
                ) from exc
            content = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        elif wants_json(body):
            content = json.dumps({"synthetic": True, "seed": seed[:64]}, separators=(",", ":"))
        else:
            content = f"Synthetic answer {hashlib.sha256(seed.encode()).hexdigest()[:12]} (no model ran)."
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        prompt_tokens = 3 + sum(4 + rough_token_count(_message_text(m)) for m in messages)
        completion_tokens = rough_token_count(content)
        finish_reason = "stop"
        if completion_tokens > budget:
            content = content[: budget * 4]
            completion_tokens = budget
            finish_reason = "length"
        return chat_completion(
            model=f"{model}-synthetic",
            content=content,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            system_fingerprint="synthetic",
        )

    def close(self) -> None:
        """Nothing to release."""
