"""Offline token and cost estimates for batch files.

Token counts come from ``toktok`` (package ``toktok-rs``), whose vocabularies are compiled into
the package: nothing is downloaded at run time. ``o200k_base`` is the encoding of the gpt-4o,
gpt-4.1, o-series and gpt-5 families; ``cl100k_base`` that of gpt-4 / gpt-3.5.

Input tokens of a chat request = the message texts + a framing overhead of 3 tokens per
message (plus 1 for a ``name``) + 3 tokens that prime the reply + the tokens of the compact
JSON of ``response_format.json_schema.schema`` and of ``tools``. The framing follows the
published counting recipe for chat models; how the service frames a schema is not documented,
so the schema part is an estimate. On the one real run we have (spec §12: three building
requests billed about 82 prompt tokens each) this gives 87: a slight overestimate, the safe
side for a quota check.
"""

from __future__ import annotations

import csv
import json
import os
from collections import abc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import msgspec
import orjson

from batchkit.schema import Finding

__all__ = [
    "BodyTokenCounter",
    "count_body_tokens",
    "estimate_batch",
    "Estimate",
    "LineEstimate",
    "Price",
    "load_prices",
    "price_for",
    "quota_check",
    "actual_vs_estimate",
    "schema_output_tokens",
    "DEFAULT_OUTPUT_TOKENS",
    "count_texts",
    "encoding_for_model",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "REPLY_PRIMER_TOKENS",
    "IMAGE_PART_TOKENS",
]

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMER_TOKENS = 3
#: Rough per-image cost (a low-detail image); image parts are not tokenised from their URL.
IMAGE_PART_TOKENS = 85

_ENCODINGS = ("o200k_base", "cl100k_base")


def encoding_for_model(model: str) -> str:
    """The tokenizer encoding of a model name (``o200k_base`` for gpt-4o-class and newer,
    ``cl100k_base`` for gpt-4 / gpt-3.5-turbo). Unknown names get ``o200k_base``."""
    m = model.lower()
    if m.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")):
        return "o200k_base"
    if m.startswith(("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada")):
        return "cl100k_base"
    return "o200k_base"


def count_texts(texts: Iterable[str], encoding: str = "o200k_base") -> list[int]:
    """Token count of each text with `encoding` (offline)."""
    import toktok

    if encoding not in _ENCODINGS:
        raise ValueError(f"unsupported encoding {encoding!r}: use one of {', '.join(_ENCODINGS)}")
    items = list(texts)
    if not items:
        return []
    return list(toktok.batch_count(items, encoding, threads=1))


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


#: What counts as a mapping in a body: a dict first (a cheap check), else any Mapping.
_MAPPINGS = (dict, abc.Mapping)


def _body_texts(body: Mapping[str, Any]) -> tuple[list[str], int]:
    """The texts of a chat body to tokenise, and the fixed overhead tokens."""
    texts, structured, overhead = _body_parts(body)
    return texts + [_compact(value) for value in structured], overhead


def _body_parts(body: Mapping[str, Any]) -> tuple[list[str], list[Any], int]:
    """The texts of a body, its structured parts (schema, tools) counted as compact JSON, and the
    fixed overhead tokens."""
    texts: list[str] = []
    structured: list[Any] = []
    overhead = REPLY_PRIMER_TOKENS
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            if not isinstance(msg, _MAPPINGS):
                continue
            overhead += TOKENS_PER_MESSAGE
            for key, value in msg.items():
                if key == "name":
                    overhead += TOKENS_PER_NAME
                if isinstance(value, str):
                    texts.append(value)
                elif key == "content" and isinstance(value, list):
                    for part in value:
                        if not isinstance(part, _MAPPINGS):
                            continue
                        if isinstance(part.get("text"), str):
                            texts.append(part["text"])
                        elif part.get("type") in ("image_url", "input_image"):
                            overhead += IMAGE_PART_TOKENS
                elif key == "tool_calls" and value:
                    texts.append(_compact(value))
    if "messages" not in body and ("input" in body or "instructions" in body):  # a Responses body
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            overhead += TOKENS_PER_MESSAGE
            texts.append(instructions)
        value = body.get("input")
        if isinstance(value, str):
            overhead += TOKENS_PER_MESSAGE
            texts.append(value)
        elif isinstance(value, list):
            for item in value:
                if not isinstance(item, _MAPPINGS):
                    continue
                overhead += TOKENS_PER_MESSAGE
                content = item.get("content")
                if isinstance(item.get("role"), str):  # the role counts, as in a chat message
                    texts.append(item["role"])
                if isinstance(content, str):
                    texts.append(content)
                elif isinstance(content, list):
                    for part in content:
                        if isinstance(part, _MAPPINGS) and isinstance(part.get("text"), str):
                            texts.append(part["text"])
                        elif isinstance(part, _MAPPINGS) and part.get("type") == "input_image":
                            overhead += IMAGE_PART_TOKENS
    schema = _body_schema(body)
    if schema is not None:
        structured.append(schema)
    if body.get("tools"):
        structured.append(body["tools"])
    return texts, structured, overhead


class _PlainMessage(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    content: str


class _CommonBody(msgspec.Struct):
    messages: list[_PlainMessage] = []
    response_format: msgspec.Raw = msgspec.UNSET
    tools: msgspec.Raw = msgspec.UNSET
    text: msgspec.Raw = msgspec.UNSET


class _CommonLine(msgspec.Struct):
    body: _CommonBody


_LINE_DECODER = msgspec.json.Decoder(_CommonLine)


class BodyTokenCounter:
    """`count_body_tokens` summed over many bodies, at tokenizer speed (e.g. a 100,000-line file).

    Texts are counted in large batches (one tokenizer call per `flush_every` texts instead of one per
    body), and a body's schema or tools, which usually repeat on every line, are counted once per
    distinct content. ``add(body)`` for each body, then read `total` (it flushes what is pending).
    """

    def __init__(self, encoding: str = "o200k_base", flush_every: int = 50_000) -> None:
        if encoding not in _ENCODINGS:
            raise ValueError(f"unsupported encoding {encoding!r}: use one of {', '.join(_ENCODINGS)}")
        self.encoding = encoding
        self._flush_every = flush_every
        self._pending: list[str] = []
        self._structured: dict[bytes, int] = {}
        self._waiting: dict[bytes, list[Any]] = {}  # structured parts not counted yet: [text, times]
        self._raw: dict[bytes, int] = {}  # add_line: a raw response_format or tools -> its tokens
        self._sum = 0

    def add(self, body: Mapping[str, Any]) -> None:
        """Count one body (the same number `count_body_tokens(body)` gives; the tokenizer runs later,
        in batches)."""
        if not isinstance(body, _MAPPINGS):
            raise TypeError(f"body must be a dict, got {type(body).__name__}")
        texts, structured, overhead = _body_parts(body)
        self._sum += overhead
        self._pending.extend(texts)
        for value in structured:
            try:
                key = orjson.dumps(value)
            except (TypeError, orjson.JSONEncodeError):
                self._pending.append(_compact(value))
                continue
            known = self._structured.get(key)
            if known is not None:
                self._sum += known
            elif key in self._waiting:
                self._waiting[key][1] += 1
            elif len(self._structured) + len(self._waiting) < 1024:
                self._waiting[key] = [_compact(value), 1]
            else:
                self._pending.append(_compact(value))
        if len(self._pending) >= self._flush_every:
            self._flush()

    def add_line(self, raw: bytes) -> bool:
        """Count the body of one batch input line given as JSON bytes, when it has the common shape
        (a chat body whose messages are plain role + text content); False, counting nothing, when it
        does not: parse the line and `add` its body instead. The same number either way."""
        try:
            body = _LINE_DECODER.decode(raw).body
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        if body.text is not msgspec.UNSET or not body.messages:
            return False
        self._sum += REPLY_PRIMER_TOKENS + TOKENS_PER_MESSAGE * len(body.messages)
        pending = self._pending
        for message in body.messages:
            pending.append(message.role)
            pending.append(message.content)
        for raw_part, schema in ((body.response_format, True), (body.tools, False)):
            if raw_part is msgspec.UNSET:
                continue
            key = bytes(raw_part)
            known = self._raw.get(key)
            if known is None:
                value = orjson.loads(key)
                part = _body_schema({"response_format": value}) if schema else (value or None)
                known = self._raw[key] = 0 if part is None else count_texts([_compact(part)], self.encoding)[0]
                if len(self._raw) > 1024:
                    self._raw.clear()
            self._sum += known
        if len(pending) >= self._flush_every:
            self._flush()
        return True

    def _flush(self) -> None:
        if self._waiting:
            keys = list(self._waiting)
            counts = count_texts([self._waiting[k][0] for k in keys], self.encoding)
            for key, count in zip(keys, counts):
                self._structured[key] = count
                self._sum += count * self._waiting[key][1]
            self._waiting = {}
        if self._pending:
            self._sum += sum(count_texts(self._pending, self.encoding))
            self._pending = []

    @property
    def total(self) -> int:
        """Tokens of every body added so far."""
        self._flush()
        return self._sum


def count_body_tokens(body: Mapping[str, Any], encoding: str = "o200k_base") -> int:
    """Input tokens of one request body: message texts, framing, schema and tools.

    Args:
        body: a Chat Completions body (``messages``, optional ``response_format``, ``tools``)
            or a Responses body (``input``, ``instructions``, ``text.format``, ``tools``).
        encoding: ``o200k_base`` (gpt-4o class, default) or ``cl100k_base``.

    Returns:
        The estimated prompt tokens the service will bill for the request (exact for the
        message texts; the framing and schema parts are estimates, see the module docstring).
    """
    if not isinstance(body, _MAPPINGS):
        raise TypeError(f"body must be a dict, got {type(body).__name__}")
    texts, overhead = _body_texts(body)
    return overhead + sum(count_texts(texts, encoding))


# --------------------------------------------------------------------------------------------
# Output tokens
# --------------------------------------------------------------------------------------------

#: Output tokens assumed for a request with neither a schema nor a max_tokens bound.
DEFAULT_OUTPUT_TOKENS = 256
#: Placeholder used for each string value when sizing a schema's answer (about 2 tokens; on the
#: observed real run the sized answer came to 28 tokens against 27 billed).
_STRING_PLACEHOLDER = "lorem ipsum"


def _sample_value(node: Any, defs: Mapping[str, Any], depth: int = 0) -> Any:
    """A typical instance of a schema node, to size the model's answer."""
    if not isinstance(node, Mapping) or depth > 12:
        return None
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref == "#" or depth > 6:
            return {}
        target = defs.get(ref.rsplit("/", 1)[-1])
        return _sample_value(target, defs, depth + 1)
    if isinstance(node.get("anyOf"), list):
        for branch in node["anyOf"]:
            if isinstance(branch, Mapping) and branch.get("type") != "null":
                return _sample_value(branch, defs, depth + 1)
        return None
    if "const" in node:
        return node["const"]
    if isinstance(node.get("enum"), list) and node["enum"]:
        values = [v for v in node["enum"] if v is not None] or [None]
        return max(values, key=lambda v: len(json.dumps(v)))
    types = node.get("type")
    kinds = [types] if isinstance(types, str) else [t for t in types or [] if isinstance(t, str)]
    kinds = [k for k in kinds if k != "null"] or ["null"]
    kind = kinds[0]
    if kind == "object":
        props = node.get("properties")
        if not isinstance(props, Mapping):
            return {}
        return {str(k): _sample_value(v, defs, depth + 1) for k, v in props.items()}
    if kind == "array":
        item = _sample_value(node.get("items"), defs, depth + 1)
        count = node.get("minItems") if isinstance(node.get("minItems"), int) else 3
        return [item] * max(1, min(count, 10))
    return {"string": _STRING_PLACEHOLDER, "integer": 1234, "number": 1234.5, "boolean": True}.get(kind)


def schema_output_tokens(schema: Mapping[str, Any], encoding: str = "o200k_base") -> int:
    """Estimated output tokens of a strict-schema answer: the compact JSON of a typical
    instance (strings as two words, arrays of three items, the longest enum value)."""
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), Mapping):
            defs.update(schema[key])
    sample = _sample_value(schema, defs)
    return count_texts([_compact(sample)], encoding)[0]


def _output_bound(body: Mapping[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _body_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The output schema of a chat (``response_format``) or Responses (``text.format``) body."""
    rf = body.get("response_format")
    if isinstance(rf, _MAPPINGS) and rf.get("type") == "json_schema":
        js = rf.get("json_schema")
        if isinstance(js, _MAPPINGS) and isinstance(js.get("schema"), _MAPPINGS):
            return js["schema"]
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, _MAPPINGS) else None
    if isinstance(fmt, _MAPPINGS) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), _MAPPINGS):
        return fmt["schema"]
    return None


# --------------------------------------------------------------------------------------------
# Prices
# --------------------------------------------------------------------------------------------

PRICES_CSV = Path(__file__).resolve().parent.parent / "data" / "prices.csv"


@dataclass(frozen=True)
class Price:
    """One row of the price table (USD per 1M tokens at the standard, non-batch rate)."""

    model: str
    input_per_1m: float
    output_per_1m: float
    batch_discount: float = 0.5
    encoding: str = "o200k_base"
    default_quota: int | None = None
    aliases: tuple[str, ...] = ()


def load_prices(path: str | os.PathLike[str] | None = None) -> dict[str, Price]:
    """Read the price table (default ``data/prices.csv``; columns ``model, aliases,
    input_per_1m, output_per_1m, batch_discount, encoding, default_quota, source``).

    The table ships with public list prices; edit it to your contract. Raises
    `batchkit.errors.ConfigError` naming the file and the row when it cannot be read.
    """
    from batchkit.errors import ConfigError

    source = Path(path) if path is not None else PRICES_CSV
    if not source.is_file():
        raise ConfigError(f"price table {source} not found; pass prices=<path to a CSV> or restore data/prices.csv")
    out: dict[str, Price] = {}
    with source.open(newline="", encoding="utf-8") as fh:
        for number, rec in enumerate(csv.DictReader(fh), start=2):
            try:
                quota = (rec.get("default_quota") or "").strip()
                price = Price(
                    model=rec["model"].strip(),
                    input_per_1m=float(rec["input_per_1m"]),
                    output_per_1m=float(rec["output_per_1m"]),
                    batch_discount=float(rec.get("batch_discount") or 0.5),
                    encoding=(rec.get("encoding") or "o200k_base").strip(),
                    default_quota=int(quota) if quota else None,
                    aliases=tuple((rec.get("aliases") or "").split()),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{source}, line {number}: cannot read the price row ({exc}); "
                                  "expected numbers in input_per_1m, output_per_1m, batch_discount") from None
            out[price.model] = price
    return out


def price_for(model: str, prices: Mapping[str, Price]) -> Price | None:
    """The price row of a model or deployment name: exact name, an alias, the name without a
    ``-batch`` suffix, else the longest model name it starts with. None when nothing fits."""
    if model in prices:
        return prices[model]
    for price in prices.values():
        if model in price.aliases:
            return price
    base = model[: -len("-batch")] if model.endswith("-batch") else model
    if base in prices:
        return prices[base]
    starts = [name for name in prices if base.startswith(name + "-") or base == name]
    return prices[max(starts, key=len)] if starts else None


# --------------------------------------------------------------------------------------------
# Quota
# --------------------------------------------------------------------------------------------

QUOTA_WARN_SHARE = 0.8


def quota_check(input_tokens: int, quota: int | None, *, model: str = "the model", in_flight: int = 0) -> Finding | None:
    """Compare estimated enqueued input tokens with an enqueued-token quota.

    Returns an error `Finding` (code ``token_limit_exceeded``) when ``input_tokens + in_flight``
    exceeds `quota` (the service would fail the batch), a warning (``token_limit_near``) above
    80% of it, and None otherwise or when no quota is known.
    """
    if quota is None or quota <= 0:
        return None
    total = input_tokens + in_flight
    held = f" (plus {in_flight:,} held by batches in progress)" if in_flight else ""
    if total > quota:
        return Finding(
            None, "token_limit_exceeded", "", f"Estimated {input_tokens:,} enqueued input tokens for "
            f"{model}{held} exceed the enqueued-token quota of {quota:,}: the batch would fail with "
            "token_limit_exceeded.", "error", "batch", None, None,
            f"Split the requests into batches of at most {quota:,} input tokens, or wait for "
            "batches in progress to finish.", "estimate.quota_exceeded",
        )
    if total > QUOTA_WARN_SHARE * quota:
        return Finding(
            None, "token_limit_near", "", f"Estimated {input_tokens:,} enqueued input tokens for "
            f"{model}{held} use {total / quota:.0%} of the enqueued-token quota of {quota:,}.",
            "warning", "batch", None, None,
            "Other batches of the same deployment may push it over the quota; consider splitting.",
            "estimate.quota_near",
        )
    return None


# --------------------------------------------------------------------------------------------
# Batch estimate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineEstimate:
    """The estimate of one request line."""

    line: int
    custom_id: str | None
    input_tokens: int
    output_tokens: int
    output_max: int | None


@dataclass
class Estimate:
    """Offline estimate of a batch: tokens, cost at the batch rate, and the quota check.

    Display it in a notebook (its summary table), or call `summary()` / `to_frame()`.
    """

    model: str | None
    price: Price | None
    encoding: str
    lines: list[LineEstimate]
    quota: int | None
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """Number of request lines estimated."""
        return len(self.lines)

    @property
    def input_tokens(self) -> int:
        """Total estimated input tokens (what counts against the enqueued-token quota)."""
        return sum(x.input_tokens for x in self.lines)

    @property
    def output_tokens(self) -> int:
        """Total estimated output tokens."""
        return sum(x.output_tokens for x in self.lines)

    @property
    def output_max(self) -> int | None:
        """Upper bound of output tokens, or None when a line has no max_tokens."""
        if not self.lines or any(x.output_max is None for x in self.lines):
            return None
        return sum(x.output_max or 0 for x in self.lines)

    def cost(self, input_tokens: float, output_tokens: float, *, batch: bool = True) -> float | None:
        """USD for the given tokens with this estimate's price row (None without one)."""
        if self.price is None:
            return None
        rate = (1 - self.price.batch_discount) if batch else 1.0
        return rate * (input_tokens * self.price.input_per_1m + output_tokens * self.price.output_per_1m) / 1e6

    @property
    def cost_estimate(self) -> float | None:
        """Estimated USD at the batch rate."""
        return self.cost(self.input_tokens, self.output_tokens)

    @property
    def cost_max(self) -> float | None:
        """USD at the batch rate if every answer used its max_tokens (None if unbounded)."""
        bound = self.output_max
        return None if bound is None else self.cost(self.input_tokens, bound)

    @property
    def quota_finding(self) -> Finding | None:
        """The quota comparison (see `quota_check`)."""
        return quota_check(self.input_tokens, self.quota, model=self.model or "the model")

    def to_frame(self) -> Any:
        """One row per request: ``line, custom_id, input_tokens, output_tokens, output_max``."""
        import pandas as pd

        frame = pd.DataFrame([asdict(x) for x in self.lines],
                             columns=["line", "custom_id", "input_tokens", "output_tokens", "output_max"])
        frame["output_max"] = frame["output_max"].astype("Int64")
        return frame

    def summary(self) -> Any:
        """A two-column table (``item``, ``value``) of the totals, cost and quota check."""
        import pandas as pd

        def usd(value: float | None) -> str:
            return "n/a (model not in price table)" if value is None else f"${value:,.6f}"

        quota = self.quota_finding
        rows = [
            ("model", self.model or "n/a"),
            ("price row", self.price.model if self.price else "none (edit data/prices.csv)"),
            ("encoding", self.encoding),
            ("requests", f"{self.requests:,}"),
            ("input tokens", f"{self.input_tokens:,}"),
            ("output tokens (estimate)", f"{self.output_tokens:,}"),
            ("output tokens (max_tokens bound)", "unbounded" if self.output_max is None else f"{self.output_max:,}"),
            ("cost at batch rate (estimate)", usd(self.cost_estimate)),
            ("cost at batch rate (upper bound)", usd(self.cost_max) if self.output_max is not None else "unbounded"),
            ("cost at standard rate (estimate)", usd(self.cost(self.input_tokens, self.output_tokens, batch=False))),
            ("enqueued-token quota", "not set" if self.quota is None else f"{self.quota:,}"),
            ("quota check", quota.message if quota else "ok" if self.quota else "not checked"),
        ]
        if self.skipped:
            rows.append(("lines skipped", f"{self.skipped:,} (not valid request lines; see the lint)"))
        rows.extend(("note", note) for note in self.notes)
        return pd.DataFrame(rows, columns=["item", "value"])

    def __str__(self) -> str:
        return "\n".join(f"{item}: {value}" for item, value in self.summary().itertuples(index=False))

    def _repr_html_(self) -> str:
        return self.summary().to_html(index=False)


def _iter_request_lines(source: Any) -> Iterator[tuple[int, Any]]:
    """(line number, parsed line or None) from a path, bytes, or an iterable of lines/dicts."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                yield number, raw
        return
    if isinstance(source, (bytes, bytearray)):
        source = bytes(source).splitlines()
    for number, item in enumerate(source, start=1):
        yield number, item


def _parse_line(item: Any) -> Any:
    if isinstance(item, Mapping):
        return item
    if isinstance(item, (bytes, bytearray, str)):
        text = item.decode("utf-8-sig", errors="replace") if isinstance(item, (bytes, bytearray)) else item
        if not text.strip():
            return ...
        try:
            return json.loads(text)
        except ValueError:
            return None
    return None


def estimate_batch(
    source: Any,
    *,
    model: str | None = None,
    prices: str | os.PathLike[str] | Mapping[str, Price] | None = None,
    encoding: str | None = None,
    quota: int | None = None,
    output_tokens: int | None = None,
) -> Estimate:
    """Estimate tokens and cost of a batch, offline, streaming over its lines.

    Args:
        source: a JSONL path, its bytes, or an iterable of request lines (dicts, bytes or str),
            e.g. what `batchkit.authoring.build_requests` returns.
        model: the price-table model to charge (default: looked up from the first line's
            ``body.model``, which may be a deployment name such as ``gpt-4o-batch``).
        prices: a price CSV path or a loaded table (default ``data/prices.csv``).
        encoding: tokenizer encoding (default: the price row's, else by model name).
        quota: enqueued-token quota to compare the input tokens with (default: the price row's
            ``default_quota``; 0 disables the check).
        output_tokens: expected output tokens per request (default: the size of a typical
            answer to the line's schema, capped by max_tokens; 256 without a schema).

    Returns:
        An `Estimate` (shows as its summary table in a notebook).
    """
    table = dict(prices) if isinstance(prices, Mapping) else load_prices(prices)
    lines: list[LineEstimate] = []
    notes: list[str] = []
    skipped = 0
    first_model: str | None = None
    price: Price | None = None
    enc: str | None = encoding
    schema_cache: dict[str, int] = {}
    for number, item in _iter_request_lines(source):
        parsed = _parse_line(item)
        if parsed is ...:
            continue
        body = parsed.get("body") if isinstance(parsed, Mapping) else None
        if not isinstance(body, Mapping):
            skipped += 1
            continue
        if first_model is None:
            first_model = str(body.get("model") or "") or None
            price = price_for(model or first_model or "", table)
            if price is None:
                notes.append(f"no price row for {model or first_model!r}: add it to the price table "
                             "(or its deployment name to a row's aliases)")
            if enc is None:
                enc = price.encoding if price else encoding_for_model(model or first_model or "")
        assert enc is not None
        bound = _output_bound(body)
        if output_tokens is not None:
            out = output_tokens
        else:
            schema = _body_schema(body)
            if schema is not None:
                key = _compact(schema)
                if key not in schema_cache:
                    schema_cache[key] = schema_output_tokens(schema, enc)
                out = schema_cache[key]
            else:
                out = bound if bound is not None else DEFAULT_OUTPUT_TOKENS
        if bound is not None:
            out = min(out, bound)
        cid = parsed.get("custom_id")
        lines.append(LineEstimate(number, cid if isinstance(cid, str) else None,
                                  count_body_tokens(body, enc), out, bound))
    if not lines:
        notes.append("no request lines to estimate")
    if output_tokens is None and any(x.output_max is None for x in lines):
        notes.append("output tokens are estimated from each schema (or 256 without one); "
                     "set max_tokens to bound them")
    chosen_quota = quota if quota is not None else (price.default_quota if price else None)
    return Estimate(
        model=first_model, price=price, encoding=enc or (encoding or "o200k_base"), lines=lines,
        quota=chosen_quota or None, skipped=skipped, notes=notes,
    )


# --------------------------------------------------------------------------------------------
# Actual usage against the estimate
# --------------------------------------------------------------------------------------------


def _usage_rows(outputs: Any) -> list[dict[str, Any]]:
    """custom_id / prompt_tokens / completion_tokens from output lines or a results frame."""
    if hasattr(outputs, "to_dict") and hasattr(outputs, "columns"):
        cols = [c for c in ("custom_id", "prompt_tokens", "completion_tokens") if c in outputs.columns]
        if "custom_id" not in cols:
            raise ValueError("the results frame needs custom_id, prompt_tokens and completion_tokens columns")
        return [dict(r) for r in outputs[cols].to_dict(orient="records")]
    rows: list[dict[str, Any]] = []
    for _, item in _iter_request_lines(outputs):
        parsed = _parse_line(item)
        if not isinstance(parsed, Mapping):
            continue
        response = parsed.get("response")
        usage: Mapping[str, Any] = {}
        if isinstance(response, Mapping) and isinstance(response.get("body"), Mapping):
            usage = response["body"].get("usage") or {}
        rows.append({"custom_id": parsed.get("custom_id"),  # chat names, else the Responses names
                     "prompt_tokens": usage.get("prompt_tokens", usage.get("input_tokens")),
                     "completion_tokens": usage.get("completion_tokens", usage.get("output_tokens"))})
    return rows


def _num(value: Any) -> int | None:
    """An int from a usage value; None for missing, NaN or non-numbers."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else int(number)


def _looks_like_requests(value: Any) -> bool:
    if isinstance(value, Estimate):
        return False
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Mapping):
        return "body" in value[0] and "response" not in value[0]
    return False


def actual_vs_estimate(first: Any, second: Any, *, per_line: bool = False, **estimate_kw: Any) -> Any:
    """Actual usage and cost of a finished batch next to the offline estimate.

    Accepts, in either order, (a) an `Estimate` or the request lines it is made from and (b)
    the output lines (dicts, bytes, a path) or a results frame with ``custom_id,
    prompt_tokens, completion_tokens`` columns. Lines that failed (no usage) are left out of
    both sides so the comparison is like for like.

    Returns:
        A table with rows ``requests, input tokens, output tokens, cost at batch rate`` and
        columns ``estimate, actual, difference`` (relative, actual vs estimate); with
        ``per_line=True`` one row per ``custom_id`` instead.
    """
    import pandas as pd

    if isinstance(first, Estimate) or _looks_like_requests(first):
        est_src, outputs = first, second
    else:
        est_src, outputs = second, first
    estimate = est_src if isinstance(est_src, Estimate) else estimate_batch(est_src, **estimate_kw)
    actual = {
        r["custom_id"]: {"prompt_tokens": _num(r.get("prompt_tokens")),
                         "completion_tokens": _num(r.get("completion_tokens")) or 0}
        for r in _usage_rows(outputs)
        if r.get("custom_id") is not None and _num(r.get("prompt_tokens")) is not None
    }
    matched = [x for x in estimate.lines if x.custom_id in actual]
    if per_line:
        return pd.DataFrame(
            [{"custom_id": x.custom_id, "input_estimate": x.input_tokens,
              "input_actual": actual[x.custom_id]["prompt_tokens"],
              "output_estimate": x.output_tokens,
              "output_actual": actual[x.custom_id]["completion_tokens"]} for x in matched],
            columns=["custom_id", "input_estimate", "input_actual", "output_estimate", "output_actual"],
        )
    est_in = sum(x.input_tokens for x in matched)
    est_out = sum(x.output_tokens for x in matched)
    act_in = sum(actual[x.custom_id]["prompt_tokens"] for x in matched)
    act_out = sum(actual[x.custom_id]["completion_tokens"] for x in matched)

    def diff(est: float | None, act: float | None) -> str:
        if est is None or act is None or est == 0:
            return "n/a"
        return f"{(act - est) / est:+.0%}"

    cost_est = estimate.cost(est_in, est_out)
    cost_act = estimate.cost(act_in, act_out)
    money = (lambda v: "n/a" if v is None else f"${v:,.6f}")
    rows = [
        ("requests with usage", f"{len(matched):,}", f"{len(matched):,}", ""),
        ("input tokens", f"{est_in:,}", f"{act_in:,}", diff(est_in, act_in)),
        ("output tokens", f"{est_out:,}", f"{act_out:,}", diff(est_out, act_out)),
        ("cost at batch rate", money(cost_est), money(cost_act), diff(cost_est, cost_act)),
    ]
    return pd.DataFrame(rows, columns=["item", "estimate", "actual", "difference"])
