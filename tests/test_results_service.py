"""Typed results end to end: requests from a pydantic model with constraints Azure's strict mode
drops, run as a batch on the real local service (synthetic engine) through the real SDK, parsed
against the original model: no `ok` row breaks a constraint, and the columns carry the model's types."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field

from batchkit import authoring, jobs
from batchkit.results import download_results, parse_results, to_models
from tests.conftest import azure_client


class Rating(BaseModel):
    score: int = Field(ge=1, le=5)
    verdict: Literal["buy", "skip"]
    recommended: bool
    summary: str = Field(max_length=500)


def test_a_batch_parsed_against_the_original_model(fast_service: Any, tmp_path: Path) -> None:
    client = azure_client(fast_service)
    rows = pd.DataFrame({"review_id": [f"r{i}" for i in range(24)], "review": [f"Review number {i}" for i in range(24)]})
    lines = authoring.build_requests(rows, system="Rate the review.", schema=Rating, model="gpt-4o-batch",
                                     id_column="review_id", prompt_column="review", target="azure", max_tokens=300)
    strict = lines[0]["body"]["response_format"]
    assert "maximum" not in str(strict)  # Azure's strict mode has no minimum/maximum: dropped
    path = authoring.write_jsonl(lines, tmp_path / "ratings.jsonl", target="azure")
    batch = jobs.submit(client, path, interval=0.2)
    final = jobs.poll_batch(client, batch.id, interval=0.2, timeout=120, progress=None)
    assert final.status == "completed"
    files = download_results(client, final)

    table = parse_results(files, inputs=rows, id_column="review_id", schema=strict, original_schema=Rating)
    assert list(table["custom_id"]) == list(rows["review_id"]) and list(table["review"]) == list(rows["review"])
    assert str(table["score"].dtype) == "Int64" and str(table["recommended"].dtype) == "boolean"
    assert str(table["verdict"].dtype) == "category"
    ok = table[table["outcome"] == "ok"]
    assert ok["score"].between(1, 5).all()  # no ok row breaks the dropped constraint
    broken = table[(table["outcome"] == "invalid") & table["score"].notna() & ~table["score"].between(1, 5)]
    assert len(broken) > 0 and broken["error"].str.contains("score").all()
    assert set(table["outcome"]) <= {"ok", "invalid"}
    models = to_models(table, Rating)
    assert sum(m is not None for m in models) == len(ok)

    streamed = parse_results([client.files.content(final.output_file_id).content], inputs=rows,
                             id_column="review_id", schema=strict, original_schema=Rating)
    pd.testing.assert_frame_equal(streamed, table)
    with client.files.with_streaming_response.content(final.output_file_id) as response:
        over_http = parse_results(response.iter_lines(), inputs=rows, id_column="review_id", schema=strict,
                                  original_schema=Rating)
    pd.testing.assert_frame_equal(over_http, table)
