"""Responses API requests on every engine: the real model with the schema grammar, and the forward
engine (here in front of a second service); the synthetic engine is covered in test_service_contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conftest import API_KEY, azure_v1_client, jsonl, openai_client, raw, read_lines, run_batch
from localbatch.launcher import start_service
from test_service_contract import PERSON, check_response, responses_body, responses_line


def test_responses_on_the_llama_engine_follow_the_schema(llama_service: Any) -> None:
    client = openai_client(llama_service)
    batch = run_batch(client, [responses_line(f"ll-{i}") for i in range(2)], endpoint="/v1/responses", timeout=300)
    assert batch["status"] == "completed", batch
    lines = read_lines(client, batch["output_file_id"])
    assert len(lines) == 2
    for line in lines:
        body = line["response"]["body"]
        check_response(body)  # the grammar held the small model to the schema
        assert body["model"] == "gpt-4o-2024-08-06"
    data, parsed = raw(client.responses.with_raw_response.create, **responses_body("gpt-4o", "Grace, 85, tag b"))
    check_response(data)
    jsonschema.validate(json.loads(parsed.output_text), PERSON)


def test_responses_through_the_forward_engine(fast_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBATCH_FORWARD_API_KEY", API_KEY)
    front = start_service(data_dir=tmp_path / "front", api_key="front-key", engine="forward", wait=60,
                          extra_args=["--forward-url", f"{fast_service.base_url}/v1",
                                      "--engine-option", "forward_model=gpt-4o",
                                      "--validating-seconds", "0.1", "--finalizing-seconds", "0.1"])
    try:
        client = azure_v1_client(front, api_key="front-key")
        batch = run_batch(client, [responses_line(f"fw-{i}") for i in range(3)], endpoint="/v1/responses")
        assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 3
        for line in read_lines(client, batch["output_file_id"]):
            check_response(line["response"]["body"])
        data, _ = raw(client.responses.with_raw_response.create, **responses_body("gpt-4o", "Linus, 30, tag a"))
        check_response(data)
    finally:
        front.stop()
