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

import json
from typing import Any, Iterable, Mapping

__all__ = [
    "count_body_tokens",
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


def _body_texts(body: Mapping[str, Any]) -> tuple[list[str], int]:
    """The texts of a chat body to tokenise, and the fixed overhead tokens."""
    texts: list[str] = []
    overhead = REPLY_PRIMER_TOKENS
    messages = body.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            if not isinstance(msg, Mapping):
                continue
            overhead += TOKENS_PER_MESSAGE
            for key, value in msg.items():
                if key == "name":
                    overhead += TOKENS_PER_NAME
                if isinstance(value, str):
                    texts.append(value)
                elif key == "content" and isinstance(value, list):
                    for part in value:
                        if not isinstance(part, Mapping):
                            continue
                        if isinstance(part.get("text"), str):
                            texts.append(part["text"])
                        elif part.get("type") in ("image_url", "input_image"):
                            overhead += IMAGE_PART_TOKENS
                elif key == "tool_calls" and value:
                    texts.append(_compact(value))
    rf = body.get("response_format")
    if isinstance(rf, Mapping) and rf.get("type") == "json_schema" and rf.get("json_schema") is not None:
        js = rf["json_schema"]
        texts.append(_compact(js.get("schema", js) if isinstance(js, Mapping) else js))
    if body.get("tools"):
        texts.append(_compact(body["tools"]))
    return texts, overhead


def count_body_tokens(body: Mapping[str, Any], encoding: str = "o200k_base") -> int:
    """Input tokens of one Chat Completions body: message texts, framing, schema and tools.

    Args:
        body: the request body (``messages``, optional ``response_format``, ``tools``).
        encoding: ``o200k_base`` (gpt-4o class, default) or ``cl100k_base``.

    Returns:
        The estimated prompt tokens the service will bill for the request (exact for the
        message texts; the framing and schema parts are estimates, see the module docstring).
    """
    if not isinstance(body, Mapping):
        raise TypeError(f"body must be a dict, got {type(body).__name__}")
    texts, overhead = _body_texts(body)
    return overhead + sum(count_texts(texts, encoding))
