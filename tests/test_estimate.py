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


# ---------------------------------------------------------------------------------- batch estimate

from batchkit.errors import ConfigError  # noqa: E402
from batchkit.estimate import (  # noqa: E402
    DEFAULT_OUTPUT_TOKENS,
    Estimate,
    Price,
    actual_vs_estimate,
    estimate_batch,
    load_prices,
    price_for,
    quota_check,
    schema_output_tokens,
)

ROWS = [json.loads(line) for line in SEED.read_text().splitlines()]


def test_price_table_ships_and_maps_deployments() -> None:
    prices = load_prices()
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini"} <= set(prices)
    assert prices["gpt-4o"].batch_discount == 0.5
    assert price_for("gpt-4o-batch", prices).model == "gpt-4o"
    assert price_for("gpt-4o-mini-2024-07-18", prices).model == "gpt-4o-mini"
    assert price_for("gpt-4.1-mini-eu-batch", prices).model == "gpt-4.1-mini"
    assert price_for("smollm2", prices) is None


def test_price_table_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "prices.csv"
    bad.write_text("model,input_per_1m,output_per_1m\nx,cheap,1\n")
    with pytest.raises(ConfigError, match=r"prices.csv, line 2"):
        load_prices(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_prices(tmp_path / "missing.csv")


def test_estimate_of_the_seed_file() -> None:
    est = estimate_batch(SEED)
    assert est.requests == 3 and est.model == "gpt-4o-batch" and est.price.model == "gpt-4o"
    per_line = [count_body_tokens(r["body"]) for r in ROWS]
    assert est.input_tokens == sum(per_line)
    schema = ROWS[0]["body"]["response_format"]["json_schema"]["schema"]
    assert est.output_tokens == 3 * schema_output_tokens(schema)
    # batch rate = half the list price: $2.50 in / $10 out per 1M for gpt-4o
    expected = 0.5 * (est.input_tokens * 2.50 + est.output_tokens * 10.00) / 1e6
    assert est.cost_estimate == pytest.approx(expected)
    assert est.output_max is None and est.cost_max is None
    assert est.quota == 200_000_000 and est.quota_finding is None
    frame = est.to_frame()
    assert list(frame["custom_id"]) == ["task-0", "task-1", "task-2"]
    assert list(frame["input_tokens"]) == per_line
    table = est.summary()
    assert dict(zip(table["item"], table["value"]))["quota check"] == "ok"
    assert "<table" in est._repr_html_()
    assert estimate_batch(ROWS).input_tokens == est.input_tokens  # dicts work as well as a path


def test_schema_answer_size_is_close_to_the_observed_run() -> None:
    schema = ROWS[0]["body"]["response_format"]["json_schema"]["schema"]
    # spec §12: about 27 completion tokens per building answer
    assert 22 <= schema_output_tokens(schema) <= 32


def test_max_tokens_bounds_the_output() -> None:
    rows = [dict(r, body=dict(r["body"], max_tokens=10)) for r in ROWS]
    est = estimate_batch(rows)
    assert est.output_max == 30 and est.output_tokens == 30
    assert est.cost_max == pytest.approx(est.cost_estimate)
    plain = [dict(r, body={"model": "gpt-4o-batch", "messages": r["body"]["messages"]}) for r in ROWS]
    assert estimate_batch(plain).output_tokens == 3 * DEFAULT_OUTPUT_TOKENS
    assert estimate_batch(plain, output_tokens=5).output_tokens == 15


def test_unknown_model_has_no_cost_but_still_counts() -> None:
    rows = [dict(r, body=dict(r["body"], model="smollm2-local")) for r in ROWS]
    est = estimate_batch(rows)
    assert est.price is None and est.cost_estimate is None and est.input_tokens > 0
    assert any("no price row" in n for n in est.notes)
    custom = estimate_batch(rows, prices={"m": Price("m", 1.0, 2.0, 0.5, "o200k_base", 100, ("smollm2-local",))})
    assert custom.price.model == "m" and custom.cost_estimate is not None
    assert custom.quota_finding is not None and custom.quota_finding.code == "token_limit_exceeded"


def test_bad_lines_are_skipped_not_fatal() -> None:
    data = SEED.read_bytes() + b"not json\n\n"
    est = estimate_batch(data)
    assert est.requests == 3 and est.skipped == 1


def test_quota_check() -> None:
    assert quota_check(100, None) is None
    assert quota_check(100, 1000) is None
    near = quota_check(900, 1000, model="gpt-4o-batch")
    assert near.severity == "warning" and near.code == "token_limit_near"
    over = quota_check(900, 1000, model="gpt-4o-batch", in_flight=200)
    assert over.severity == "error" and over.code == "token_limit_exceeded"
    assert "token_limit_exceeded" in over.message and "1,000" in over.message
    assert estimate_batch(SEED, quota=100).quota_finding.code == "token_limit_exceeded"


def _outputs(prompt: int, completion: int) -> list[dict]:
    out = [{"custom_id": f"task-{i}", "response": {"status_code": 200, "body": {
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}},
        "error": None} for i in range(2)]
    out.append({"custom_id": "task-2", "response": {"status_code": 400, "body": {"error": {"message": "x"}}}, "error": None})
    return out


def test_actual_vs_estimate_either_order_and_frames() -> None:
    est = estimate_batch(ROWS)
    outputs = _outputs(82, 27)
    table = actual_vs_estimate(ROWS, outputs)
    assert list(table.columns) == ["item", "estimate", "actual", "difference"]
    rows = {r["item"]: r for r in table.to_dict("records")}
    assert rows["requests with usage"]["actual"] == "2"
    assert rows["input tokens"]["actual"] == "164"
    assert rows["input tokens"]["estimate"] == f"{est.lines[0].input_tokens + est.lines[1].input_tokens:,}"
    assert actual_vs_estimate(outputs, est).equals(table)
    import pandas as pd

    frame = pd.DataFrame([{"custom_id": "task-0", "prompt_tokens": 82, "completion_tokens": 27},
                          {"custom_id": "task-1", "prompt_tokens": None, "completion_tokens": None}])
    per_line = actual_vs_estimate(est, frame, per_line=True)
    assert per_line.to_dict("records") == [{"custom_id": "task-0", "input_estimate": est.lines[0].input_tokens,
                                            "input_actual": 82, "output_estimate": est.lines[0].output_tokens,
                                            "output_actual": 27}]
    assert isinstance(est, Estimate)


def test_the_bulk_counter_gives_the_sum_of_the_per_body_counts() -> None:
    from batchkit.estimate import BodyTokenCounter

    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    bodies = [
        {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": f"question {i} " * (i % 7)}],
         "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}}
        for i in range(300)
    ]
    bodies.append({"model": "m", "messages": [{"role": "user", "name": "ann", "content": [{"type": "text", "text": "hi"}]}],
                   "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]})
    bodies.append({"model": "m", "instructions": "Answer in JSON.", "input": "a Responses body",
                   "text": {"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}}})
    expected = sum(count_body_tokens(b) for b in bodies)
    counter = BodyTokenCounter(flush_every=100)
    for body in bodies:
        counter.add(body)
    assert counter.total == expected
    # From the lines' bytes: the common shape is decoded directly, the rest is declined (then added).
    lines = [json.dumps({"custom_id": str(i), "body": b}).encode() for i, b in enumerate(bodies)]
    counter = BodyTokenCounter(flush_every=100)
    declined = [i for i, raw in enumerate(lines) if not counter.add_line(raw)]
    assert declined == [300, 301]
    for i in declined:
        counter.add(bodies[i])
    assert counter.total == expected
