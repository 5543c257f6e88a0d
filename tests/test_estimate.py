"""Offline token counts and cost estimates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchkit.estimate import count_body_tokens, count_texts, encoding_for_model

SEED = Path(__file__).parent / "fixtures" / "lint" / "buildings.jsonl"


def test_known_counts_of_the_bundled_vocabulary() -> None:
    assert count_texts(["hello world", ""], "o200k_base") == [2, 0]
    assert count_texts(["hello world"], "cl100k_base") == [2]
    with pytest.raises(ValueError, match="unsupported encoding"):
        count_texts(["x"], "p50k_base")


def test_framing_is_three_per_message_plus_three_for_the_reply() -> None:
    one = {"messages": [{"role": "user", "content": "hello world"}]}
    # 3 framing + role 'user' (1) + 'hello world' (2) + 3 reply primer
    assert count_body_tokens(one) == 3 + 1 + 2 + 3
    named = {"messages": [{"role": "user", "name": "bob", "content": "hello world"}]}
    assert count_body_tokens(named) == count_body_tokens(one) + 1 + count_texts(["bob"])[0]


def test_schema_tokens_are_counted() -> None:
    row = json.loads(SEED.read_text().splitlines()[0])
    body = row["body"]
    without = dict(body)
    without.pop("response_format")
    schema_json = json.dumps(body["response_format"]["json_schema"]["schema"], separators=(",", ":"))
    assert count_body_tokens(body) == count_body_tokens(without) + count_texts([schema_json])[0]
    # spec §12: the real run billed about 82 prompt tokens per building request
    assert 75 <= count_body_tokens(body) <= 95


def test_encoding_for_model() -> None:
    assert encoding_for_model("gpt-4o-2024-08-06") == "o200k_base"
    assert encoding_for_model("gpt-4.1-mini") == "o200k_base"
    assert encoding_for_model("gpt-4-turbo") == "cl100k_base"
    assert encoding_for_model("gpt-35-turbo") == "cl100k_base"
