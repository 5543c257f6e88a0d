"""authoring.try_live: one request body sent as a live chat call to the real local service.

The service runs the synthetic engine (`fast_service`); `gpt-4o` is a standard deployment there and
`gpt-4o-batch` a Global Batch deployment, which refuses live calls as Azure does (OperationNotSupported).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from batchkit import authoring
from batchkit.config import connect
from batchkit.walkthrough import local_environment
from conftest import API_KEY, SEED_FIELDS, SEED_SCHEMA, SEED_SYSTEM, azure_client

PROMPT = "Provide information about the Empire State Building."


def _body(model: str, **options: Any) -> dict[str, Any]:
    fmt = authoring.response_format(SEED_SCHEMA, name="building_info_schema")
    return authoring.build_body(model=model, system=SEED_SYSTEM, user=PROMPT, response_format=fmt, **options)


def _check_answer(reply: Any) -> dict[str, Any]:
    """A ChatCompletion whose one choice stops normally with JSON that follows the seed schema."""
    assert isinstance(reply, ChatCompletion)
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    answer = json.loads(choice.message.content or "")
    assert list(answer) == list(SEED_FIELDS)
    assert all(isinstance(answer[name], str) for name in SEED_FIELDS)
    return answer


def test_try_live_on_a_standard_deployment_returns_the_chat_completion(fast_service: Any) -> None:
    reply = authoring.try_live(azure_client(fast_service), _body("gpt-4o"))
    _check_answer(reply)
    assert reply.model.startswith("gpt-4o")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0


def test_try_live_model_overrides_the_deployment_without_changing_the_body(fast_service: Any) -> None:
    line = authoring.build_requests([{"custom_id": "b1", "prompt": PROMPT}], system=SEED_SYSTEM, schema=SEED_SCHEMA,
                                    model="gpt-4o-batch", name="building_info_schema")[0]
    before = copy.deepcopy(line)
    reply = authoring.try_live(azure_client(fast_service), line["body"], model="gpt-4o")
    _check_answer(reply)
    assert line == before  # the batch line still names its Global Batch deployment


def test_try_live_sends_the_body_as_built(fast_service: Any) -> None:
    """Extra body fields from build_body reach the service (here: a token cap the answer cannot fit)."""
    reply = authoring.try_live(azure_client(fast_service), _body("gpt-4o", max_tokens=1))
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens <= 1


def test_try_live_on_the_global_batch_deployment_is_refused(fast_service: Any) -> None:
    """try_live does not hide the refusal: the SDK's 400 comes through, naming the cause and the fix."""
    client = azure_client(fast_service)
    with pytest.raises(openai.BadRequestError) as info:
        authoring.try_live(client, _body("gpt-4o-batch"))
    error = info.value
    assert error.status_code == 400
    assert isinstance(error.body, dict) and error.body["code"] == "OperationNotSupported"
    assert "'gpt-4o-batch' is a Global Batch deployment" in error.body["message"]
    assert "use a standard deployment for live calls" in error.body["message"]
    assert API_KEY not in str(error)
    # model=None (or empty) keeps the body's deployment, so the refusal is the same
    with pytest.raises(openai.BadRequestError):
        authoring.try_live(client, _body("gpt-4o-batch"), model="")


def test_try_live_through_connect_as_in_the_notebook(fast_service: Any) -> None:
    """The notebook's path: connect() to the running service, then one live try on a standard deployment."""
    conn = connect(env=local_environment(fast_service.base_url, API_KEY), start_local=False)
    assert conn.started_service is False and conn.backend == "local"
    line = authoring.build_requests([{"prompt": PROMPT}], system=SEED_SYSTEM, schema=SEED_SCHEMA,
                                    model=conn.deployment, url=conn.batch_url, name="building_info_schema")[0]
    assert line["body"]["model"] == "gpt-4o-batch"
    _check_answer(authoring.try_live(conn.client, line["body"], model="gpt-4o"))
    with pytest.raises(openai.BadRequestError, match="OperationNotSupported|Global Batch deployment"):
        authoring.try_live(conn.client, line["body"])
