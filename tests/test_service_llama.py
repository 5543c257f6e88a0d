"""The default engine (the real model) behind the service: the seed walkthrough's calls in its
order with its data, schema-valid answers for the three buildings, and the endpoint's own 400s."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from openai import AzureOpenAI
from openai.types.chat import ChatCompletion

from conftest import API_KEY, SEED_FIELDS, SEED_SCHEMA, azure_client, chat_line, check_batch, check_file, check_model, \
    jsonl, raw, read_lines, run_batch, seed_lines


def test_seed_walkthrough_sequence_on_the_default_engine(llama_service: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's calls, in order: client from the environment, upload, wait for processed,
    create (/chat/completions, 24h), poll, read the output file."""
    monkeypatch.setenv("AZURE_OPENAI_API_ENDPOINT", llama_service.base_url)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", API_KEY)
    batch_file = tmp_path / "batch - StructuredOutputs.jsonl"
    batch_file.write_bytes(jsonl(seed_lines()))
    started = time.monotonic()

    client = AzureOpenAI(
        azure_endpoint=os.getenv("AZURE_OPENAI_API_ENDPOINT"),
        api_key=os.getenv("AZURE_OPENAI_API_KEY"),
        api_version="2024-10-01-preview",
    )
    with batch_file.open("rb") as fh:
        uploaded, file = raw(client.files.with_raw_response.create, file=fh, purpose="batch")
    check_file(uploaded)
    assert file.status == "pending"
    file_id = file.id

    status = "pending"
    while status != "processed":
        time.sleep(0.5)
        data, file_response = raw(client.files.with_raw_response.retrieve, file_id)
        check_file(data)
        status = file_response.status
        assert status in ("pending", "processed"), file_response.status_details

    created, batch_response = raw(client.batches.with_raw_response.create, input_file_id=file_id,
                                  endpoint="/chat/completions", completion_window="24h")
    check_batch(created)
    batch_id = batch_response.id
    assert batch_response.status == "validating"

    status = "validating"
    while status not in ("completed", "failed", "canceled", "cancelled", "expired"):
        time.sleep(1)
        data, batch_response = raw(client.batches.with_raw_response.retrieve, batch_id)
        check_batch(data)
        status = batch_response.status
        assert time.monotonic() - started < 180, f"batch still {status}"
    assert status == "completed", batch_response.errors
    assert batch_response.request_counts.completed == 3

    response = client.files.content(batch_response.output_file_id)
    raw_responses = response.text.strip().split("\n")
    elapsed = time.monotonic() - started
    assert len(raw_responses) == 3
    seen = set()
    for raw_response in raw_responses:
        json_response = json.loads(raw_response)
        seen.add(json_response["custom_id"])
        body = json_response["response"]["body"]
        check_model(ChatCompletion, body, extras=True)
        assert body["model"] == "gpt-4o-2024-08-06"
        content = json.loads(body["choices"][0]["message"]["content"])
        jsonschema.validate(content, SEED_SCHEMA)
        assert list(content) == list(SEED_FIELDS)
    assert seen == {"task-0", "task-1", "task-2"}
    print(f"seed sequence on the default engine: {elapsed:.1f} s")  # speed: benchmarks/bench_llama.py

    # The seed ends by showing a cancel and the list of batches.
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status 'completed'"):
        client.batches.cancel(batch_id)  # finished: nothing left to cancel
    listed, page = raw(client.batches.with_raw_response.list)
    assert batch_id in [b.id for b in page.data] and listed["has_more"] is False
    for item in listed["data"]:
        check_batch(item)


def test_live_call_on_the_standard_deployment_and_context_limit(llama_service: Any) -> None:
    client = azure_client(llama_service)
    line = seed_lines()[2]["body"]
    completion = client.chat.completions.create(model="gpt-4o", messages=line["messages"],
                                                response_format=line["response_format"])
    check_model(ChatCompletion, completion.model_dump(exclude_unset=True), extras=True)
    jsonschema.validate(json.loads(completion.choices[0].message.content), SEED_SCHEMA)
    # A prompt longer than the model's context becomes a 400 line in the error file.
    batch = run_batch(client, [chat_line("too-long", prompt="tower " * 6000)], timeout=120)
    assert batch["status"] == "completed" and batch["request_counts"]["failed"] == 1
    (err,) = read_lines(client, batch["error_file_id"])
    assert err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert err["response"]["body"]["error"]["message"].startswith("This model's maximum context length is")
