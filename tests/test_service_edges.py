"""The service's edges: bounded JSON bodies (memory measured), the multipart parser stopping at its
closing boundary, auth edges, live-call input edges, 405 with Allow, header and keep-alive timeouts."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import API_KEY, API_VERSION, openai_client
from localbatch.app import MAX_JSON_BODY, MAX_LIVE_BODY
from localbatch.launcher import start_service

MIB = 1024 * 1024


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _send_raw(base_url: str, head: bytes, body_chunks: Iterator[bytes]) -> bytes:
    """Send a request by hand while reading the answer (the server may answer and close before the
    body is sent); returns what the server answered."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)

        def send_body() -> None:
            try:
                for chunk in body_chunks:
                    sock.sendall(chunk)
            except OSError:
                pass  # refused early: the rest of the body is never read

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if _complete(answer):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already reset by the server
        sender.join(30)
    return answer


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return body.endswith(b"0\r\n\r\n")


def _chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        yield b" " * piece
        sent += piece


@pytest.fixture(scope="module")
def edge_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Its own service, so memory is measured on a process no other test loads."""
    handle = start_service(data_dir=tmp_path_factory.mktemp("edges"), api_key=API_KEY, engine="synthetic",
                           extra_args=["--header-timeout", "1.5", "--keep-alive-timeout", "1"], wait=90)
    yield handle
    handle.stop()


@pytest.mark.parametrize("path,chunked", [("/v1/batches", False), ("/v1/batches", True),
                                          ("/v1/chat/completions", False), ("/openai/v1/responses", True)])
def test_a_100_mib_json_body_is_refused_without_growing_the_service(edge_service: Any, path: str, chunked: bool) -> None:
    before, _ = rss_mib(edge_service.pid)
    total = 100 * MIB
    headers = [f"POST {path} HTTP/1.1", "Host: x", f"Authorization: Bearer {API_KEY}",
               "Content-Type: application/json"]
    if chunked:
        headers.append("Transfer-Encoding: chunked")
        chunks: Iterator[bytes] = (b"%x\r\n%s\r\n" % (len(c), c) for c in _chunks(total))
    else:
        headers.append(f"Content-Length: {total}")
        chunks = _chunks(total)
    answer = _send_raw(edge_service.base_url, ("\r\n".join(headers) + "\r\n\r\n").encode(), chunks)
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line, answer[:300]
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1].split(b"\r\n0\r\n")[0].strip().split(b"\r\n")[-1]
                      if b"chunked" in rest.split(b"\r\n\r\n", 1)[0].lower() else rest.split(b"\r\n\r\n", 1)[1])
    limit = MAX_LIVE_BODY if path.endswith(("completions", "responses")) else MAX_JSON_BODY
    assert f"{limit:,} bytes" in body["error"]["message"]
    after, _ = rss_mib(edge_service.pid)
    assert after - before < 50, f"the service grew by {after - before:.1f} MiB"


def test_the_memory_stays_bounded_over_many_refused_bodies(edge_service: Any) -> None:
    before, _ = rss_mib(edge_service.pid)
    for _ in range(5):
        with httpx.Client(timeout=30) as client:
            answer = client.post(f"{edge_service.base_url}/v1/batches", content=_chunks(20 * MIB),
                                 headers={"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"
    after, _ = rss_mib(edge_service.pid)
    assert after - before < 50


def test_a_body_within_the_limit_still_works(edge_service: Any) -> None:
    client = openai_client(edge_service)
    assert client.batches.list().data == []
    with pytest.raises(openai.NotFoundError):  # parsed and answered, not refused for its size
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"k": "v" * 500})


def test_bytes_after_the_closing_boundary_are_not_read(edge_service: Any) -> None:
    boundary = "b0undary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n{{}}\n\r\n--{boundary}--\r\n").encode()
    epilogue = 100 * MIB
    before, _ = rss_mib(edge_service.pid)
    head = ("POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY + "\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(part) + epilogue}\r\n\r\n").encode()
    started = time.monotonic()
    answer = _send_raw(edge_service.base_url, head + part, _chunks(epilogue))
    assert b" 200 " in answer.partition(b"\r\n")[0], answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["bytes"] == 3
    after, _ = rss_mib(edge_service.pid)
    assert after - before < 50 and time.monotonic() - started < 30


# ----- auth edges ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [[], ["--api-key", ""], ["--api-key", "   "]])
def test_an_empty_or_blank_key_means_no_key_everywhere(tmp_path: Path, flag: list[str]) -> None:
    handle = start_service(data_dir=tmp_path, api_key=None, engine="synthetic", extra_args=flag, wait=60)
    try:
        base = handle.base_url
        for headers in ({}, {"Authorization": b"Bearer \xa0"}, {"api-key": "x"},
                        {"Authorization": "Bearer anything"}):
            for url in (f"{base}/v1/files", f"{base}/openai/v1/files", f"{base}/openai/files?api-version={API_VERSION}"):
                assert httpx.get(url, headers=headers).status_code == 200, (headers, url)
        assert "NO API KEY" in (tmp_path / "localbatch.log").read_text()
    finally:
        handle.stop()


def test_a_blank_key_is_refused_off_loopback(tmp_path: Path) -> None:
    from localbatch.launcher import ServiceStartError

    with pytest.raises(ServiceStartError, match="without a key"):
        start_service(host="0.0.0.0", data_dir=tmp_path, api_key=None, engine="synthetic",
                      extra_args=["--api-key", " "], wait=30)


def test_a_key_file_keeps_the_key_off_the_command_line(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("file-secret-123\n")
    handle = start_service(data_dir=tmp_path / "d", api_key=None, engine="synthetic",
                           extra_args=["--api-key-file", str(key_file)], wait=60)
    try:
        assert b"file-secret-123" not in Path(f"/proc/{handle.pid}/cmdline").read_bytes()
        url = f"{handle.base_url}/v1/files"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": b"Bearer \xa0"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer file-secret-123"}).status_code == 200
        assert httpx.get(url, headers={"api-key": "file-secret-123"}).status_code == 200
    finally:
        handle.stop()


# ----- live-call input edges -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
@pytest.mark.parametrize("body,param", [
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "\\ud800"}]}', None),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1' + b"0" * 400 + b"}",
     "max_tokens"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', "temperature"),
    (b'{"model": "gpt-4o", "messages": [], "temperature": NaN}', None),
    (b'{"model": "gpt-4o", "input": "\xff\xfe"}', None),
    (b'[1, 2]', None),
])
def test_invalid_unicode_and_absurd_numbers_are_a_400(edge_service: Any, path: str, body: bytes, param: str | None) -> None:
    answer = httpx.post(edge_service.base_url + path, content=body,
                        headers={"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


# ----- methods, timeouts -----------------------------------------------------------------------------------


def test_other_methods_are_405_with_allow(edge_service: Any) -> None:
    for method in ("TRACE", "PUT", "PATCH"):
        answer = httpx.request(method, f"{edge_service.base_url}/v1/batches", headers={"Authorization": f"Bearer {API_KEY}"})
        assert answer.status_code == 405
        assert set(answer.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
        assert answer.json()["error"]["code"] == "method_not_allowed"


def test_connections_that_never_finish_their_headers_are_closed(edge_service: Any) -> None:
    host, port = edge_service.base_url.removeprefix("http://").split(":")
    socks = []
    started = time.monotonic()
    for i in range(20):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"")  # partial headers, or nothing
        socks.append(sock)
    closed = 0
    for sock in socks:
        try:
            closed += sock.recv(1) == b""  # the server closed it
        except (ConnectionResetError, TimeoutError):
            closed += 1
        sock.close()
    assert closed == 20 and time.monotonic() - started < 8


def test_a_slow_header_drip_is_cut_off_too(edge_service: Any) -> None:
    host, port = edge_service.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.settimeout(0.2)
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        while not closed and time.monotonic() - started < 8:
            try:
                sock.sendall(b"X-Drip: 1\r\n")  # a header line every 0.2 s, never the end of the headers
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed and time.monotonic() - started < 4  # --header-timeout 1.5


def test_idle_keep_alive_connections_are_closed(edge_service: Any) -> None:
    host, port = edge_service.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert b" 200 " in first.partition(b"\r\n")[0]
        started = time.monotonic()
        while sock.recv(65536):
            pass
        assert time.monotonic() - started < 4  # --keep-alive-timeout 1


# ----- batch lines over the line-size limit -----------------------------------------------------------------


def test_a_line_over_the_limit_fails_with_its_number_and_is_never_read_whole(tmp_path: Path) -> None:
    from batchkit.lint import MAX_LINE_BYTES, lint_batch_file

    from conftest import chat_line, jsonl

    path = tmp_path / "big.jsonl"
    with path.open("wb") as fh:
        fh.write(jsonl([chat_line("small-1"), chat_line("small-2")]))
        fh.write(b'{"custom_id": "huge", "method": "POST", "url": "/chat/completions", "body": {"model": "gpt-4o-batch", '
                 b'"messages": [{"role": "user", "content": "')
        for _ in range(150):
            fh.write(b"y" * MIB)  # a 150 MiB line
        fh.write(b'"}]}}\n')
        fh.write(jsonl([chat_line("small-4")]))
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    findings = [f for f in lint_batch_file(path, target="azure") if f.severity == "error"]
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    assert [(f.line, f.code) for f in findings] == [(3, "line_too_large")]
    assert f"{MAX_LINE_BYTES:,} bytes" in findings[0].message
    assert grown < 50, f"the lint's peak memory grew by {grown:.0f} MiB"


def test_the_service_fails_such_a_batch_with_bounded_memory(edge_service: Any, tmp_path: Path) -> None:
    from conftest import chat_line, jsonl, run_batch

    content = jsonl([chat_line("a")]) + b'{"custom_id": "b", "body": "' + b"z" * (150 * MIB) + b'"}\n'
    _, hwm_before = rss_mib(edge_service.pid)
    client = openai.AzureOpenAI(azure_endpoint=edge_service.base_url, api_key=API_KEY, api_version=API_VERSION,
                                max_retries=0, timeout=120)
    batch = run_batch(client, content, timeout=120)
    _, hwm_after = rss_mib(edge_service.pid)
    assert batch["status"] == "failed"
    (error,) = batch["errors"]["data"]
    assert (error["code"], error["line"]) == ("line_too_large", 2)
    assert hwm_after - hwm_before < 50, f"the service's peak memory grew by {hwm_after - hwm_before:.0f} MiB"
