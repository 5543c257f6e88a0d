"""The rest of the batch contract, with the real SDK against a running localbatch: Responses API
batches and live calls, output_expires_after, Batch.usage and completion details, dialect isolation,
the api-version list, Entra ID tokens. Every answer is validated strictly against the SDK's types."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from conftest import (
    API_KEY,
    azure_client,
    azure_v1_client,
    chat_line,
    check_batch,
    check_file,
    check_model,
    jsonl,
    openai_client,
    raw,
    read_lines,
    run_batch,
    upload,
)

#: The schema of the Responses lines and calls here.
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {
        "type": "string", "enum": ["a", "b", "c"]}}},
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
RESPONSES_VERSION = "2025-03-01-preview"


def responses_body(model: str, prompt: str, schema: dict[str, Any] = PERSON, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "input": [{"role": "system", "content": "Extract a person."}, {"role": "user", "content": prompt}],
        "text": {"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}},
        "max_output_tokens": 200,
    }
    body.update(extra)
    return body


def responses_line(custom_id: str, model: str = "gpt-4o-batch", url: str = "/v1/responses", **extra: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": responses_body(model, f"Person number {custom_id}", **extra)}


def check_response(body: dict[str, Any], schema: dict[str, Any] = PERSON) -> Response:
    """A Responses body: strictly an SDK Response, completed, its output_text an instance of ``schema``."""
    response = check_model(Response, body)
    assert body["object"] == "response" and body["id"].startswith("resp_")
    assert body["status"] == "completed" and body["incomplete_details"] is None and body["error"] is None
    (message,) = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant" and message["id"].startswith("msg_")
    assert [p["type"] for p in message["content"]] == ["output_text"]
    jsonschema.validate(json.loads(response.output_text), schema)
    usage = body["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert set(usage["input_tokens_details"]) == {"cached_tokens", "cache_write_tokens"}
    assert set(usage["output_tokens_details"]) == {"reasoning_tokens"}
    assert body["text"]["format"]["type"] == "json_schema" and body["text"]["format"]["schema"] == schema
    return response


# ----- 10.1 Responses batches and live calls ------------------------------------------------------------


@pytest.mark.parametrize("surface", ["openai", "azure_v1"])
def test_a_20_line_responses_batch_completes_with_response_bodies(fast_service: Any, surface: str) -> None:
    client = openai_client(fast_service) if surface == "openai" else azure_v1_client(fast_service)
    ids = [f"r-{i}" for i in range(20)]
    batch = run_batch(client, [responses_line(i) for i in ids], endpoint="/v1/responses")
    assert batch["status"] == "completed" and batch["endpoint"] == "/v1/responses"
    assert batch["request_counts"] == {"total": 20, "completed": 20, "failed": 0}
    lines = read_lines(client, batch["output_file_id"])
    assert sorted(line["custom_id"] for line in lines) == sorted(ids)
    for line in lines:
        assert line["error"] is None and line["response"]["status_code"] == 200
        check_response(line["response"]["body"])
        assert ("id" in line) == (surface == "openai")  # OpenAI lines carry batch_req ids, Azure's do not
    if surface == "openai":
        usage = batch["usage"]
        bodies = [line["response"]["body"]["usage"] for line in lines]
        assert usage["input_tokens"] == sum(u["input_tokens"] for u in bodies) > 0
        assert usage["output_tokens"] == sum(u["output_tokens"] for u in bodies) > 0
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_responses_batch_on_azure_classic_needs_a_responses_api_version(fast_service: Any) -> None:
    old = azure_client(fast_service)  # 2024-10-01-preview: before the Responses API
    f = upload(old, jsonl([responses_line("c-0", url="/responses")]))
    with pytest.raises(openai.BadRequestError) as info:
        old.batches.create(input_file_id=f["id"], endpoint="/responses", completion_window="24h")
    assert info.value.body["code"] == "BadRequest" and RESPONSES_VERSION in info.value.body["message"]
    new = azure_client(fast_service, api_version=RESPONSES_VERSION)
    batch = run_batch(new, [responses_line(f"c-{i}", url="/responses") for i in range(3)], endpoint="/responses")
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 3
    for line in read_lines(new, batch["output_file_id"]):
        check_response(line["response"]["body"])


def test_the_endpoint_names_the_api_and_every_line_must_match(fast_service: Any) -> None:
    client = openai_client(fast_service)
    batch = run_batch(client, [chat_line("mixed-0", url="/v1/chat/completions")], endpoint="/v1/responses")
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["code"] == "url_mismatch"


@pytest.mark.parametrize("surface", ["openai", "azure_v1", "azure_classic"])
def test_live_responses_create_with_text_format(fast_service: Any, surface: str) -> None:
    client = {"openai": lambda: openai_client(fast_service), "azure_v1": lambda: azure_v1_client(fast_service),
              "azure_classic": lambda: azure_client(fast_service, api_version=RESPONSES_VERSION)}[surface]()
    body = responses_body("gpt-4o", "Ada, 36, tags a and c")
    data, parsed = raw(client.responses.with_raw_response.create, **body)
    check_response(data)
    assert isinstance(parsed, Response) and json.loads(parsed.output_text)["name"]
    assert data["max_output_tokens"] == 200 and data["model"] == "gpt-4o-2024-08-06"


def test_live_responses_refusals_and_errors(fast_service: Any) -> None:
    azure = azure_client(fast_service)  # too old for the Responses API
    with pytest.raises(openai.BadRequestError, match="2025-03-01-preview"):
        azure.responses.create(**responses_body("gpt-4o", "x"))
    v1 = azure_v1_client(fast_service)
    with pytest.raises(openai.BadRequestError) as info:  # a Global Batch deployment takes no live call
        v1.responses.create(**responses_body("gpt-4o-batch", "x"))
    assert info.value.body["code"] == "OperationNotSupported"
    client = openai_client(fast_service)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**responses_body("gpt-4o", "x"), previous_response_id="resp_abc")
    assert info.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-4o", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.invalid/x.png"}]}])
    assert info.value.code == "unsupported_value"


def test_the_lint_flags_a_broken_text_format_schema_on_its_line(fast_service: Any) -> None:
    client = openai_client(fast_service)
    broken = {"type": "object", "properties": {"name": {"type": "string"}}, "required": []}  # not strict
    lines = [responses_line("ok-0"), responses_line("bad-1", schema=broken), responses_line("ok-2")]
    batch = run_batch(client, lines, endpoint="/v1/responses")
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    (line,) = read_lines(client, batch["error_file_id"])
    assert line["custom_id"] == "bad-1" and line["response"]["status_code"] == 400
    error = line["response"]["body"]["error"]
    assert error["param"] == "text.format.schema" and error["code"] == "invalid_json_schema"
    # the live call answers the same 400
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**responses_body("gpt-4o", "x", schema=broken))
    assert info.value.param == "text.format.schema" and info.value.code == "invalid_json_schema"


def test_responses_bodies_carry_refusals_and_truncations(fast_service: Any) -> None:
    client = openai_client(fast_service)
    faults = json.dumps({"ids": {"refusal": ["ref"], "truncated": ["cut"], "content_filter": ["cf"]}})
    lines = [responses_line(i) for i in ("ref", "cut", "cf", "fine")]
    batch = run_batch(client, lines, endpoint="/v1/responses", metadata={"localbatch_faults": faults})
    by_id = {line["custom_id"]: line["response"]["body"] for line in read_lines(client, batch["output_file_id"])}
    for body in by_id.values():
        check_model(Response, body)
    assert [p["type"] for p in by_id["ref"]["output"][0]["content"]] == ["refusal"]
    assert by_id["cut"]["status"] == "incomplete" and by_id["cut"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert by_id["cf"]["status"] == "incomplete" and by_id["cf"]["incomplete_details"] == {"reason": "content_filter"}
    check_response(by_id["fine"])


# ----- 10.2 output_expires_after ------------------------------------------------------------------------


@pytest.mark.parametrize("surface", ["openai", "azure"])
def test_output_expires_after_is_validated(fast_service: Any, surface: str) -> None:
    client = openai_client(fast_service) if surface == "openai" else azure_client(fast_service)
    url = "/v1/chat/completions" if surface == "openai" else "/chat/completions"
    f = upload(client, jsonl([chat_line("e-0", url=url)]))
    bad = [({"anchor": "created_at", "seconds": 10}, "output_expires_after.seconds"),
           ({"anchor": "bogus", "seconds": 7200 if surface == "openai" else 15 * 86400}, "output_expires_after.anchor"),
           ({"anchor": "created_at", "seconds": 31 * 86400}, "output_expires_after.seconds"),
           ({"anchor": "created_at", "seconds": "7200"}, "output_expires_after.seconds"),
           ({"seconds": 7200}, "output_expires_after.anchor"),
           ("7200", "output_expires_after")]
    if surface == "azure":
        bad.append(({"anchor": "created_at", "seconds": 7200}, "output_expires_after.seconds"))  # Azure: >= 14 days
    for value, param in bad:
        with pytest.raises(openai.BadRequestError) as info:
            client.batches.create(input_file_id=f["id"], endpoint=url, completion_window="24h",
                                  output_expires_after=value)
        if surface == "openai":
            assert info.value.param == param, (value, info.value.body)
        else:
            assert info.value.body["code"] == "invalidPayload" and param.split(".")[-1] in info.value.body["message"]


@pytest.mark.parametrize("surface,seconds", [("openai", 7200), ("azure", 15 * 86400)])
def test_output_expires_after_sets_the_result_files_expires_at(fast_service: Any, surface: str, seconds: int) -> None:
    client = openai_client(fast_service) if surface == "openai" else azure_client(fast_service)
    url = "/v1/chat/completions" if surface == "openai" else "/chat/completions"
    batch = run_batch(client, [chat_line("x-0", url=url), chat_line("x-1", url=url, max_tokens=0)], endpoint=url,
                      output_expires_after={"anchor": "created_at", "seconds": seconds})
    for key in ("output_file_id", "error_file_id"):
        data, _ = raw(client.files.with_raw_response.retrieve, batch[key])
        check_file(data)
        assert data["expires_at"] == data["created_at"] + seconds
    # without it: 30 days on OpenAI, never on Azure
    plain = run_batch(client, [chat_line("y-0", url=url)], endpoint=url)
    out = client.files.retrieve(plain["output_file_id"])
    assert out.expires_at == (out.created_at + 30 * 86400 if surface == "openai" else None)


def test_expired_files_are_deleted(tmp_path: Path) -> None:
    """The sweep deletes a file whose expires_at has passed (bytes and row); others stay."""
    from localbatch.app import delete_expired_files
    from localbatch.store import Store

    store = Store(tmp_path)
    try:
        now = int(time.time())
        for file_id, expires in (("file-old", now - 1), ("file-new", now + 3600), ("file-never", None)):
            store.file_path(file_id).write_bytes(b"{}\n")
            store.add_file(file_id=file_id, dialect="openai", filename=f"{file_id}.jsonl", purpose="batch_output",
                           size=3, expires_at=expires, ready_at=0.0, outcome="processed", status_details=None)
        assert delete_expired_files(store, now) == ["file-old"]
        assert store.get_file("file-old") is None and not store.file_path("file-old").exists()
        assert store.get_file("file-new") and store.get_file("file-never")
        assert delete_expired_files(store, now + 3600) == ["file-new"]
        assert sorted(p.name for p in store.files_dir.iterdir()) == ["file-never"]
    finally:
        store.close()


# ----- 10.3 usage, service_tier and detail objects, param null --------------------------------------------


def test_openai_batches_have_usage_and_completions_have_details(fast_service: Any) -> None:
    client = openai_client(fast_service)
    batch = run_batch(client, [chat_line(f"u-{i}", url="/v1/chat/completions") for i in range(4)],
                      endpoint="/v1/chat/completions")
    check_model(Batch, batch)
    lines = read_lines(client, batch["output_file_id"])
    for line in lines:
        body = line["response"]["body"]
        check_model(ChatCompletion, body)
        assert body["service_tier"] == "default"
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    usage = batch["usage"]
    assert usage["input_tokens"] == sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in lines) > 0
    assert usage["output_tokens"] == sum(x["response"]["body"]["usage"]["completion_tokens"] for x in lines) > 0
    assert usage["input_tokens_details"] == {"cached_tokens": 0} and usage["output_tokens_details"] == {"reasoning_tokens": 0}
    # a new batch starts at zero; Azure batches carry no usage (not in Azure's Batch)
    f = upload(client, jsonl([chat_line("u-z", url="/v1/chat/completions")]))
    fresh, _ = raw(client.batches.with_raw_response.create, input_file_id=f["id"], endpoint="/v1/chat/completions",
                   completion_window="24h")
    assert fresh["usage"]["total_tokens"] == 0
    az = run_batch(azure_client(fast_service), [chat_line("u-a")])
    assert "usage" not in az
    (az_line,) = read_lines(azure_client(fast_service), az["output_file_id"])
    assert set(az_line["response"]["body"]["usage"]) == {"completion_tokens", "prompt_tokens", "total_tokens"}


def test_a_non_jsonl_batch_upload_is_refused_with_param_null(fast_service: Any) -> None:
    client = openai_client(fast_service)
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("input.txt", b"{}\n"), purpose="batch")
    assert info.value.body == {"message": "Invalid file format for Batch API. Must be .jsonl",
                               "type": "invalid_request_error", "param": None, "code": None}


# ----- 10.4 dialect isolation ------------------------------------------------------------------------


def test_each_dialect_sees_only_its_own_files_and_batches(fast_service: Any) -> None:
    oa, az, az1 = openai_client(fast_service), azure_client(fast_service), azure_v1_client(fast_service)
    mine = upload(oa, jsonl([chat_line("iso-0", url="/v1/chat/completions")]))
    theirs = upload(az, jsonl([chat_line("iso-1")]))
    assert mine["id"] not in {f.id for f in az.files.list()} | {f.id for f in az1.files.list()}
    assert theirs["id"] not in {f.id for f in oa.files.list()}
    assert theirs["id"] in {f.id for f in az1.files.list()}  # the two Azure surfaces are one resource
    for client, foreign in ((az, mine["id"]), (az1, mine["id"]), (oa, theirs["id"])):
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(foreign)
        with pytest.raises(openai.NotFoundError):
            client.files.content(foreign)
        with pytest.raises(openai.NotFoundError):
            client.files.delete(foreign)
    with pytest.raises(openai.NotFoundError):  # a batch from another dialect's file
        az.batches.create(input_file_id=mine["id"], endpoint="/chat/completions", completion_window="24h")
    batch = oa.batches.create(input_file_id=mine["id"], endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.id not in {b.id for b in az.batches.list()}
    for client in (az, az1):
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            client.batches.cancel(batch.id)
        with pytest.raises(openai.NotFoundError):  # another dialect's id is no list cursor either
            client.batches.list(after=batch.id)
    assert oa.files.retrieve(mine["id"]).id == mine["id"]  # still there for its own dialect


# ----- 10.5 api-version ---------------------------------------------------------------------------------


def test_api_versions_outside_the_list_are_refused_as_azure_does(fast_service: Any) -> None:
    from localbatch.dialects import AZURE_API_VERSIONS

    with pytest.raises(openai.BadRequestError) as info:
        azure_client(fast_service, api_version="banana").files.list()
    assert info.value.body["code"] == "BadRequest" and "API version not supported" in info.value.body["message"]
    assert "2024-10-21" in info.value.body["message"]
    for version in AZURE_API_VERSIONS:
        assert azure_client(fast_service, api_version=version).batches.list(limit=1) is not None
    import httpx

    base = fast_service.base_url
    headers = {"api-key": API_KEY}
    assert httpx.get(f"{base}/openai/v1/files", headers=headers).status_code == 200
    assert httpx.get(f"{base}/openai/v1/files?api-version=preview", headers=headers).status_code == 200
    bad = httpx.get(f"{base}/openai/v1/files?api-version=2024-10-21", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "BadRequest"
    assert httpx.get(f"{base}/v1/files?api-version=banana", headers=headers).status_code == 200  # OpenAI ignores it


# ----- 10.6 Entra ID ------------------------------------------------------------------------------------


class _StaticTokenCredential:
    """An azure.core TokenCredential that hands out one fixed token (offline, no sign-in)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


def test_entra_id_token_through_connect_reaches_the_azure_dialect(fast_service: Any) -> None:
    from azure.core.credentials import TokenCredential

    from batchkit.config import ENTRA_SCOPE, connect

    credential = _StaticTokenCredential(API_KEY)  # the local service takes its key as the bearer token
    assert isinstance(credential, TokenCredential)  # azure.core's protocol
    env = {"BATCH_BACKEND": "azure", "AZURE_OPENAI_ENDPOINT": fast_service.base_url, "AZURE_OPENAI_AUTH": "entra"}
    conn = connect(env=env, credential=credential)
    assert conn.settings.auth == "entra" and conn.settings.api_key == "" and "auth=entra" in conn.describe()
    response = conn.client.files.with_raw_response.list()
    assert response.http_request.headers["authorization"] == f"Bearer {API_KEY}"
    assert "api-key" not in response.http_request.headers
    assert credential.scopes and credential.scopes[0] == (ENTRA_SCOPE,)
    f = upload(conn.client, jsonl([chat_line("entra-0")]))
    assert f["status"] == "processed"
    wrong = connect(env=env, credential=_StaticTokenCredential("not-the-token"))
    with pytest.raises(openai.AuthenticationError):
        wrong.client.files.list()


def test_entra_settings_are_checked() -> None:
    from batchkit.config import resolve_settings
    from batchkit.errors import ConfigError

    with pytest.raises(ConfigError, match="AZURE_OPENAI_AUTH=entra"):
        resolve_settings({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"})
    with pytest.raises(ConfigError, match="not one of key, entra"):
        resolve_settings({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AZURE_OPENAI_AUTH": "maybe"})
    with pytest.raises(ConfigError, match="both set"):
        resolve_settings({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AZURE_OPENAI_AUTH": "entra",
                          "AZURE_OPENAI_API_KEY": "k"})
    settings = resolve_settings({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AZURE_OPENAI_AUTH": "entra"})
    assert settings.backend == "azure" and settings.auth == "entra"
