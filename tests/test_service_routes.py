"""Every route of the local service, in each dialect, through the real openai SDK over loopback.

Dialects: ``azure`` = AzureOpenAI on ``/openai/...?api-version=``, ``openai`` = OpenAI on ``/v1``,
``azure_v1`` = OpenAI on ``/openai/v1``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from openai.types import Batch, FileDeleted
from openai.types.chat import ChatCompletion

from conftest import (
    API_KEY,
    FAST_MAX_FILE_BYTES,
    azure_client,
    azure_v1_client,
    chat_line,
    check_batch,
    check_file,
    check_model,
    jsonl,
    listed_file_ids,
    openai_client,
    raw,
    upload,
)

DIALECTS = ("azure", "openai", "azure_v1")


def client_for(dialect: str, handle: Any, **kwargs: Any) -> Any:
    """The SDK client of ``dialect`` pointed at ``handle``."""
    return {"azure": azure_client, "openai": openai_client, "azure_v1": azure_v1_client}[dialect](handle, **kwargs)


def http(handle: Any, method: str, path: str, *, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """A plain HTTP call (no SDK): (status, headers, parsed JSON or None)."""
    request = urllib.request.Request(handle.base_url + path, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            status, hdrs, data = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, data = exc.code, dict(exc.headers), exc.read()
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        parsed = None
    return status, {k.lower(): v for k, v in hdrs.items()}, parsed


def prefix(dialect: str) -> str:
    return {"azure": "/openai", "openai": "/v1", "azure_v1": "/openai/v1"}[dialect]


def query(dialect: str) -> str:
    return "?api-version=2024-10-01-preview" if dialect == "azure" else ""


# ----- service basics ------------------------------------------------------------------------------


def test_healthz_and_openapi_describe_every_route(fast_service: Any) -> None:
    status, headers, health = http(fast_service, "GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["engine"] == "synthetic"
    assert headers.get("x-request-id")
    status, _, spec = http(fast_service, "GET", "/openapi.json")
    assert status == 200
    paths = spec["paths"]
    for dialect in DIALECTS:
        p = prefix(dialect)
        assert set(paths[f"{p}/files"]) == {"get", "post"}
        assert set(paths[f"{p}/files/{{file_id}}"]) == {"get", "delete"}
        assert set(paths[f"{p}/files/{{file_id}}/content"]) == {"get"}
        assert set(paths[f"{p}/batches"]) == {"get", "post"}
        assert set(paths[f"{p}/batches/{{batch_id}}"]) == {"get"}
        assert set(paths[f"{p}/batches/{{batch_id}}/cancel"]) == {"post"}
    assert "post" in paths["/openai/deployments/{deployment}/chat/completions"]
    assert "post" in paths["/v1/chat/completions"] and "post" in paths["/openai/v1/chat/completions"]
    classic_params = [q["name"] for q in paths["/openai/batches"]["get"]["parameters"]]
    assert "api-version" in classic_params


ROUTES = [
    ("POST", "/files"), ("GET", "/files"), ("GET", "/files/file-x"), ("DELETE", "/files/file-x"),
    ("GET", "/files/file-x/content"), ("POST", "/batches"), ("GET", "/batches"), ("GET", "/batches/batch_x"),
    ("POST", "/batches/batch_x/cancel"),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("key_header", [None, {"api-key": "wrong"}, {"Authorization": "Bearer wrong"}])
def test_missing_or_wrong_key_is_401_on_every_route(fast_service: Any, dialect: str,
                                                    key_header: dict[str, str] | None) -> None:
    routes = list(ROUTES)
    routes.append(("POST", "/deployments/gpt-4o/chat/completions") if dialect == "azure"
                  else ("POST", "/chat/completions"))
    for method, path in routes:
        status, headers, body = http(fast_service, method, prefix(dialect) + path + query(dialect),
                                     headers=key_header or {}, body=b"{}" if method == "POST" else None)
        assert status == 401, (method, path, status, body)
        assert headers.get("x-should-retry") == "false" and headers.get("x-request-id")
        error = body["error"]
        if dialect == "openai":
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key"
        else:
            assert set(error) == {"code", "message"} and error["code"] == "401"
        assert "LOCALBATCH_API_KEY" in error["message"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_sdk_raises_authentication_error_with_a_wrong_key(fast_service: Any, dialect: str) -> None:
    client = client_for(dialect, fast_service, api_key="not-the-key")
    with pytest.raises(openai.AuthenticationError):
        client.batches.list()
    with pytest.raises(openai.AuthenticationError):
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")


def test_both_key_headers_are_accepted(fast_service: Any) -> None:
    for headers in ({"api-key": API_KEY}, {"Authorization": f"Bearer {API_KEY}"}):
        for path in ("/openai/files?api-version=2024-10-01-preview", "/v1/files", "/openai/v1/files"):
            status, _, body = http(fast_service, "GET", path, headers=headers)
            assert status == 200 and body["object"] == "list", (path, headers)


def test_azure_classic_routes_require_api_version(fast_service: Any) -> None:
    status, headers, body = http(fast_service, "GET", "/openai/batches", headers={"api-key": API_KEY})
    assert status == 400 and headers["x-should-retry"] == "false"
    assert body["error"]["code"] == "MissingApiVersionParameter"
    assert "api-version" in body["error"]["message"]
    # The v1 surfaces need none.
    assert http(fast_service, "GET", "/openai/v1/batches", headers={"api-key": API_KEY})[0] == 200


@pytest.mark.parametrize("dialect", DIALECTS)
def test_unknown_ids_are_404(fast_service: Any, dialect: str) -> None:
    client = client_for(dialect, fast_service)
    for call in (lambda: client.files.retrieve("file-nope"), lambda: client.files.delete("file-nope"),
                 lambda: client.files.content("file-nope"), lambda: client.batches.retrieve("batch_nope"),
                 lambda: client.batches.cancel("batch_nope")):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert info.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/chat/completions" if dialect == "azure"
                              else "/v1/chat/completions", completion_window="24h")


# ----- files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_file_lifecycle(fast_service: Any, dialect: str) -> None:
    client = client_for(dialect, fast_service)
    content = jsonl([chat_line("a"), chat_line("b")])
    data, obj = raw(client.files.with_raw_response.create, file=("in.jsonl", content), purpose="batch")
    check_file(data)
    assert data["bytes"] == len(content) and data["filename"] == "in.jsonl" and data["purpose"] == "batch"
    if dialect == "openai":
        assert data["status"] == "processed" and data["id"].startswith("file-") and len(data["id"]) == 27
        assert data["expires_at"] == data["created_at"] + 30 * 24 * 3600
    else:
        assert data["status"] == "pending" and data["expires_at"] is None
        assert len(data["id"]) == len("file-") + 32
        deadline = time.monotonic() + 10
        while data["status"] == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.05)
            data, _ = raw(client.files.with_raw_response.retrieve, obj.id)
            check_file(data)
        assert data["status"] == "processed"
    got, _ = raw(client.files.with_raw_response.retrieve, obj.id)
    check_file(got)
    assert got["id"] == obj.id
    response = client.files.with_raw_response.content(obj.id)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == content
    assert client.files.content(obj.id).read() == content
    deleted, _ = raw(client.files.with_raw_response.delete, obj.id)
    check_model(FileDeleted, deleted)
    assert deleted == {"id": obj.id, "object": "file", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(obj.id)


@pytest.mark.parametrize("dialect", ["azure", "openai"])
def test_file_list_pagination(fast_service: Any, dialect: str) -> None:
    client = client_for(dialect, fast_service)
    ids = [upload(client, jsonl([chat_line(f"p{i}")]), filename=f"page{i}.jsonl", wait=False)["id"]
           for i in range(5)]
    page, _ = raw(client.files.with_raw_response.list, limit=2)
    assert page["object"] == "list" and len(page["data"]) == 2 and page["has_more"] is True
    assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][1]["id"]
    assert [f["id"] for f in page["data"]] == ids[::-1][:2]  # newest first
    for item in page["data"]:
        check_file(item)
    nxt, _ = raw(client.files.with_raw_response.list, limit=2, after=page["last_id"])
    assert [f["id"] for f in nxt["data"]] == ids[::-1][2:4]
    every = [f.id for f in client.files.list(limit=2)]  # the SDK's auto-pagination ends
    assert every[:5] == ids[::-1] and len(every) == len(set(every))
    asc, _ = raw(client.files.with_raw_response.list, order="asc", purpose="batch", limit=10000)
    listed = [f["id"] for f in asc["data"]]
    assert listed.index(ids[0]) < listed.index(ids[4])
    assert raw(client.files.with_raw_response.list, purpose="batch_output")[0]["data"] == [] or all(
        f["purpose"] == "batch_output" for f in raw(client.files.with_raw_response.list, purpose="batch_output")[0]["data"])


def test_upload_size_limit(fast_service: Any) -> None:
    big = b"x" * (FAST_MAX_FILE_BYTES + 1)
    for dialect in ("azure", "openai"):
        client = client_for(dialect, fast_service)
        with pytest.raises(openai.BadRequestError) as info:
            client.files.create(file=("big.jsonl", big), purpose="batch")
        assert "too large" in str(info.value)
        assert info.value.response.headers["x-should-retry"] == "false"


def test_upload_purposes_and_formats(fast_service: Any) -> None:
    az, oa = client_for("azure", fast_service), client_for("openai", fast_service)
    with pytest.raises(openai.BadRequestError) as info:
        az.files.create(file=("a.jsonl", b"{}\n"), purpose="vision")  # not an Azure upload purpose
    assert info.value.body["code"] == "invalidPayload" and "purpose" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        oa.files.create(file=("a.jsonl", b"{}\n"), purpose="bogus")
    assert info.value.body["type"] == "invalid_request_error" and info.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as info:
        oa.files.create(file=("a.csv", b"a,b\n"), purpose="batch")
    assert "Must be .jsonl" in info.value.body["message"]
    # Azure accepts the upload, then the file ends in status 'error' with status_details.
    data = upload(az, b"a,b\n", filename="a.csv")
    assert data["status"] == "error" and "Must be .jsonl" in data["status_details"]
    # Other purposes are stored as given.
    data = upload(oa, b"hello", filename="notes.txt", purpose="user_data")
    assert data["purpose"] == "user_data" and data["status"] == "processed" and data["expires_at"] is None
    # expires_after: OpenAI from one hour, Azure from 14 days (spec §2.2).
    data = check_file(json.loads(oa.files.with_raw_response.create(
        file=("e.jsonl", b"{}\n"), purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600}).text)).model_dump()
    assert data["expires_at"] == data["created_at"] + 3600
    with pytest.raises(openai.BadRequestError):
        az.files.create(file=("e.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at",
                                                                                   "seconds": 3600})


# ----- live chat ---------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "Name a tall building."}]
STRICT = {"type": "json_schema", "json_schema": {"name": "building", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
    "additionalProperties": False}}}


def test_live_chat_on_standard_deployments(fast_service: Any) -> None:
    for dialect in DIALECTS:
        client = client_for(dialect, fast_service)
        data, _ = raw(client.chat.completions.with_raw_response.create, model="gpt-4o", messages=MESSAGES,
                      response_format=STRICT)
        completion = check_model(ChatCompletion, data, extras=dialect != "openai")
        assert json.loads(completion.choices[0].message.content)["name"]
        assert completion.model.startswith("gpt-4o-2024-08-06")
        if dialect != "openai":
            assert data["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
            assert data["choices"][0]["content_filter_results"]["violence"]["severity"] == "safe"
        else:
            assert "prompt_filter_results" not in data


def test_live_chat_on_the_batch_deployment_is_refused_like_azure(fast_service: Any) -> None:
    for dialect in ("azure", "azure_v1"):
        client = client_for(dialect, fast_service)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="gpt-4o-batch", messages=MESSAGES)
        assert info.value.body["code"] == "OperationNotSupported"
        assert "does not work with the specified model" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client_for("azure", fast_service).chat.completions.create(model="no-such-deployment", messages=MESSAGES)
    assert info.value.body["code"] == "DeploymentNotFound"
    with pytest.raises(openai.NotFoundError) as info:
        client_for("openai", fast_service).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_live_chat_rejects_what_the_model_endpoint_rejects(fast_service: Any, dialect: str) -> None:
    client = client_for(dialect, fast_service)
    broken = json.loads(json.dumps(STRICT))
    del broken["json_schema"]["schema"]["additionalProperties"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, response_format=broken)
    assert info.value.body == {
        "message": "Invalid schema for response_format 'building': In context=(), 'additionalProperties' is "
                   "required to be supplied and to be false.",
        "type": "invalid_request_error", "param": "response_format", "code": None}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_body={"colour": "red"})
    assert info.value.body["code"] == "unknown_parameter" and info.value.body["param"] == "colour"


# ----- batches: create, retrieve, list, cancel ---------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_batch_routes(fast_service: Any, dialect: str) -> None:
    client = client_for(dialect, fast_service)
    url = "/v1/chat/completions" if dialect == "openai" else "/chat/completions"
    model = "gpt-4o" if dialect == "openai" else "gpt-4o-batch"
    f = upload(client, jsonl([chat_line(f"r{i}", model=model, url=url) for i in range(3)]))
    data, _ = raw(client.batches.with_raw_response.create, input_file_id=f["id"], endpoint=url,
                  completion_window="24h", metadata={"run": "routes"})
    batch = check_batch(data)
    assert data["status"] == "validating" and data["errors"] is None and data["metadata"] == {"run": "routes"}
    assert data["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert data["expires_at"] == data["created_at"] + 86400 and data["endpoint"] == url
    assert all(data[k] is None for k in ("in_progress_at", "completed_at", "output_file_id", "error_file_id"))
    if dialect == "openai":
        assert len(batch.id) == len("batch_") + 32 and data["model"] is None
    else:
        assert len(batch.id) == len("batch_") + 36 and "model" not in data
    got, _ = raw(client.batches.with_raw_response.retrieve, batch.id)
    check_model(Batch, got)
    assert got["id"] == batch.id
    listed, _ = raw(client.batches.with_raw_response.list, limit=1)
    assert listed["data"][0]["id"] == batch.id and listed["first_id"] == batch.id
    assert listed["last_id"] == batch.id and isinstance(listed["has_more"], bool)
    for item in listed["data"]:
        check_batch(item)
    cancelled, _ = raw(client.batches.with_raw_response.cancel, batch.id)
    check_batch(cancelled)
    assert cancelled["status"] in ("cancelling", "cancelled") or cancelled["status"] == "completed"


def test_batch_list_pagination(fast_service: Any) -> None:
    client = client_for("openai", fast_service)
    f = upload(client, jsonl([chat_line("x", model="gpt-4o", url="/v1/chat/completions")]))
    ids = [client.batches.create(input_file_id=f["id"], endpoint="/v1/chat/completions",
                                 completion_window="24h").id for _ in range(3)]
    page, _ = raw(client.batches.with_raw_response.list, limit=2)
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    nxt, _ = raw(client.batches.with_raw_response.list, limit=2, after=page["last_id"])
    assert nxt["data"][0]["id"] == ids[0]
    seen = [b.id for b in client.batches.list(limit=2)]
    assert seen[:3] == ids[::-1] and len(seen) == len(set(seen))


@pytest.mark.parametrize("dialect", ["azure", "openai"])
def test_an_unknown_list_cursor_is_a_404_not_the_first_page_again(fast_service: Any, dialect: str) -> None:
    client = client_for(dialect, fast_service)
    for listing, kind in ((client.files.list, "file"), (client.batches.list, "batch")):
        with pytest.raises(openai.NotFoundError) as info:
            listing(after="no-such-id", limit=1)
        assert f"no {kind} with id 'no-such-id'" in str(info.value)
    gone = upload(client, jsonl([chat_line("gone")]), wait=False)["id"]
    client.files.delete(gone)
    assert isinstance(client.files.list(after=gone, limit=1).data, list)  # a deleted file is still a cursor


def test_batch_create_checks(fast_service: Any) -> None:
    az, oa = client_for("azure", fast_service), client_for("openai", fast_service)
    f_az = upload(az, jsonl([chat_line("a")]))
    f_oa = upload(oa, jsonl([chat_line("a", model="gpt-4o", url="/v1/chat/completions")]))
    cases = [
        (az, dict(input_file_id=f_az["id"], endpoint="/chat/completions", completion_window="48h"), "24h"),
        (oa, dict(input_file_id=f_oa["id"], endpoint="/v1/embeddings", completion_window="24h"), "endpoint"),
        (oa, dict(input_file_id=f_oa["id"], endpoint="/v1/chat/completions", completion_window="24h",
                  metadata={"n": 1}), "Invalid type for 'metadata.n'"),
    ]
    for client, kwargs, text in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.batches.create(**kwargs)
        assert text in str(info.value.body), info.value.body
        assert info.value.response.headers["x-should-retry"] == "false"
    notes = upload(oa, b"hi", filename="n.txt", purpose="user_data")
    with pytest.raises(openai.BadRequestError) as info:
        oa.batches.create(input_file_id=notes["id"], endpoint="/v1/chat/completions", completion_window="24h")
    assert "purpose" in info.value.body["message"]
    # A body that is not JSON, and a missing field, are 400s in the dialect's envelope.
    status, _, body = http(fast_service, "POST", "/openai/batches?api-version=2024-10-01-preview",
                           headers={"api-key": API_KEY, "Content-Type": "application/json"}, body=b"{")
    assert status == 400 and set(body["error"]) == {"code", "message"}
    status, _, body = http(fast_service, "POST", "/v1/batches", body=b'{"endpoint": "/v1/chat/completions"}',
                           headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert status == 400 and body["error"]["param"] == "input_file_id"
    assert body["error"]["message"] == "Missing required parameter: 'input_file_id'."


def test_batch_from_a_pending_file_fails_as_on_azure(fast_service: Any) -> None:
    client = client_for("azure", fast_service)
    f = upload(client, jsonl([chat_line("a")]), wait=False)
    assert f["status"] == "pending"
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=f["id"], endpoint="/chat/completions", completion_window="24h")
    assert info.value.body["message"] == (
        f"The input file '{f['id']}' is in 'pending' state. Only files with status 'Processed' are accepted "
        "for batch inferencing. Please check the file status and try again")


# ----- streamed uploads ----------------------------------------------------------------------------

BOUNDARY = "localbatch-test-boundary"


def part(name: str, value: bytes | str, filename: str | None = None) -> bytes:
    """One multipart/form-data part (with its leading delimiter)."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    ctype = "Content-Type: application/octet-stream\r\n" if filename else ""
    data = value.encode() if isinstance(value, str) else value
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{ctype}\r\n".encode() + data + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    """A whole multipart/form-data body of ``parts``."""
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def upload_headers(dialect: str) -> dict[str, str]:
    key = {"api-key": API_KEY} if dialect != "openai" else {"Authorization": f"Bearer {API_KEY}"}
    return {**key, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def stored_files(handle: Any) -> set[str]:
    """Names in the service's files folder (``<data_dir>/files``; the log lives in the data dir)."""
    return {p.name for p in (handle.log_path.parent / "files").iterdir()}


def assert_no_leftovers(handle: Any, client: Any, before: set[str]) -> None:
    """Every file the folder gained belongs to a live File object; no partial upload is left.

    Other tests' batches may finish meanwhile: their result files are listed in their own dialect,
    so the files of both dialects are listed, after the folder is read.
    """
    new = stored_files(handle) - before
    listed = {f.id for f in client.files.list(limit=10000)} | listed_file_ids(handle)
    assert new <= listed, f"files left behind by a failed upload: {new - listed}"
    assert not any(name.endswith(".part") for name in stored_files(handle))


def check_error_envelope(dialect: str, body: dict[str, Any]) -> dict[str, Any]:
    error = body["error"]
    if dialect == "openai":
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    else:
        assert set(error) == {"code", "message"} and error["code"] == "invalidPayload"
    return error


@pytest.mark.parametrize("dialect", DIALECTS)
def test_chunked_upload_without_content_length_is_cut_off_at_the_limit(fast_service: Any, dialect: str) -> None:
    import http.client
    import select
    import socket
    from urllib.parse import urlsplit

    client = client_for(dialect, fast_service)
    before, listed_before = stored_files(fast_service), {f.id for f in client.files.list(limit=10000)}
    url = urlsplit(fast_service.base_url)
    head = "".join(f"{k}: {v}\r\n" for k, v in upload_headers(dialect).items())
    request = (f"POST {prefix(dialect)}/files{query(dialect)} HTTP/1.1\r\nHost: {url.netloc}\r\n{head}"
               "Transfer-Encoding: chunked\r\n\r\n").encode()
    first = part("purpose", "batch") + part("file", b"", filename="chunked-big.jsonl")[:-2]
    line = jsonl([chat_line("x")])
    block = line * (256 * 1024 // len(line))
    cap, sent = 4 * FAST_MAX_FILE_BYTES, 0
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request + b"%x\r\n%s\r\n" % (len(first), first))
        try:
            while sent < cap and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        # The answer comes while the body is still being sent: the limit is enforced as bytes arrive.
        assert select.select([sock], [], [], 30)[0] and FAST_MAX_FILE_BYTES < sent < cap, sent
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        status, body = response.status, json.loads(response.read())
    assert status == 400 and response.getheader("x-should-retry") == "false"
    error = check_error_envelope(dialect, body)
    assert error["message"].startswith(f"File is too large. The limit is {FAST_MAX_FILE_BYTES:,} bytes;")
    assert_no_leftovers(fast_service, client, before)
    listed = list(client.files.list(limit=10000))
    assert not [f for f in listed if f.id not in listed_before and f.filename == "chunked-big.jsonl"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_upload_with_the_file_part_before_purpose(fast_service: Any, dialect: str) -> None:
    client = client_for(dialect, fast_service)
    path = prefix(dialect) + "/files" + query(dialect)
    content = jsonl([chat_line("a"), chat_line("b")])
    before = stored_files(fast_service)
    fields = [part("file", content, filename="first.jsonl"), part("purpose", "batch")]
    if dialect == "openai":  # expires_after after the file too, in both spellings the SDKs use
        fields += [part("expires_after[anchor]", "created_at"), part("expires_after[seconds]", "7200")]
    status, _, data = http(fast_service, "POST", path, headers=upload_headers(dialect), body=multipart(*fields))
    assert status == 200, data
    check_file(data)
    assert data["bytes"] == len(content) and data["filename"] == "first.jsonl" and data["purpose"] == "batch"
    if dialect == "openai":
        assert data["expires_at"] == data["created_at"] + 7200
    assert client.files.content(data["id"]).read() == content
    assert stored_files(fast_service) - before == {data["id"]}
    # The same order with a bad purpose, or a bad expires_after, leaves nothing behind.
    bad = [part("file", content, filename="first.jsonl"), part("purpose", "bogus")]
    status, _, body = http(fast_service, "POST", path, headers=upload_headers(dialect), body=multipart(*bad))
    assert status == 400 and "Invalid value for purpose: 'bogus'" in check_error_envelope(dialect, body)["message"]
    bad = [part("file", content, filename="first.jsonl"), part("purpose", "batch"),
           part("expires_after.anchor", "created_at"), part("expires_after.seconds", "5")]
    status, _, body = http(fast_service, "POST", path, headers=upload_headers(dialect), body=multipart(*bad))
    assert status == 400 and "expires_after.seconds" in check_error_envelope(dialect, body)["message"]
    missing = [part("file", content, filename="first.jsonl")]
    status, _, body = http(fast_service, "POST", path, headers=upload_headers(dialect), body=multipart(*missing))
    assert status == 400 and check_error_envelope(dialect, body)["message"] == "Missing required parameter: 'purpose'."
    client.files.delete(data["id"])
    assert_no_leftovers(fast_service, client, before)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_malformed_multipart_uploads_are_a_clear_400(fast_service: Any, dialect: str) -> None:
    client = client_for(dialect, fast_service)
    path = prefix(dialect) + "/files" + query(dialect)
    before = stored_files(fast_service)
    good = [part("purpose", "batch"), part("file", jsonl([chat_line("a")]), filename="m.jsonl")]
    whole = multipart(*good)
    bodies = {
        "truncated before the closing boundary": whole[: len(whole) - 40],
        "a part header without a colon": f"--{BOUNDARY}\r\nnot a header\r\n\r\nx\r\n".encode() + whole,
        "a part without a name": multipart(part("purpose", "batch").replace(b'; name="purpose"', b""), *good[1:]),
        "two file parts": multipart(*good, part("file", b"{}\n", filename="again.jsonl")),
        "too many parts": multipart(*[part(f"f{i}", "x") for i in range(30)], *good),
        "an oversized field": multipart(part("purpose", "batch" * 2000), good[1]),
        "no multipart at all": b"this is not multipart",
    }
    for reason, body in bodies.items():
        status, headers, answer = http(fast_service, "POST", path, headers=upload_headers(dialect), body=body)
        assert status == 400, (reason, status, answer)
        message = check_error_envelope(dialect, answer)["message"]
        assert message.startswith("Could not parse the multipart upload: "), (reason, message)
        assert message.endswith("Send 'file' and 'purpose' as multipart/form-data."), (reason, message)
        assert headers.get("x-should-retry") == "false"
    no_boundary = {**upload_headers(dialect), "Content-Type": "multipart/form-data"}
    status, _, answer = http(fast_service, "POST", path, headers=no_boundary, body=whole)
    assert status == 400 and "boundary" in check_error_envelope(dialect, answer)["message"]
    assert_no_leftovers(fast_service, client, before)
