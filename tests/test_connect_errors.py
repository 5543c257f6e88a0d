"""connect() fails fast and clearly on an unreachable endpoint, and explains a portal URL pasted as the
endpoint."""

from __future__ import annotations

import socket
import time

import pytest

from batchkit.config import CONNECT_TIMEOUT, check_reachable, connect, make_client, resolve_settings
from batchkit.errors import ConfigError
from batchkit.local_service import free_port


def test_a_host_that_does_not_resolve_names_the_variable_and_fails_fast() -> None:
    env = {"AZURE_OPENAI_ENDPOINT": "https://no-such-resource.invalid", "AZURE_OPENAI_API_KEY": "k"}
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        connect(env=env)
    assert time.monotonic() - started < CONNECT_TIMEOUT + 3
    message = str(info.value)
    assert info.value.variable == "AZURE_OPENAI_ENDPOINT"
    assert "AZURE_OPENAI_ENDPOINT=https://no-such-resource.invalid" in message
    assert "does not resolve" in message and "BATCH_BACKEND=local" in message


def test_a_refused_connection_names_the_address() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConfigError) as info:
        connect(env={"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": url})
    message = str(info.value)
    assert info.value.variable == "OPENAI_BASE_URL" and f"OPENAI_BASE_URL={url}" in message
    assert "a connection to 127.0.0.1:" in message and "failed" in message


def test_a_silent_host_times_out_within_the_limit() -> None:
    # a listening socket whose backlog is full accepts no further connection: the connect attempt hangs
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        for _ in range(8):  # fill the accept queue (Linux keeps backlog + 1)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        settings = resolve_settings({"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"})
        time.sleep(0.2)
        started = time.monotonic()
        try:
            with pytest.raises(ConfigError, match="timed out") as info:
                check_reachable(settings, timeout=1.0)
            assert time.monotonic() - started < 4
            assert f"OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in str(info.value)
        finally:
            for s in fillers:
                s.close()


def test_the_client_gives_up_connecting_after_a_few_seconds() -> None:
    settings = resolve_settings({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AZURE_OPENAI_API_KEY": "k"})
    client = make_client(settings)
    assert client.timeout.connect == CONNECT_TIMEOUT <= 5
    assert client.timeout.read >= 60  # long reads (large downloads) keep the generous default


@pytest.mark.parametrize("pasted,hints", [
    ("https://myres.openai.azure.com/openai/deployments/gpt-4o-batch/chat/completions?api-version=2024-10-21",
     ["AZURE_OPENAI_ENDPOINT=https://myres.openai.azure.com", "BATCH_DEPLOYMENT=gpt-4o-batch",
      "OPENAI_API_VERSION=2024-10-21"]),
    ("https://myres.openai.azure.com/openai/batches?api-version=2024-10-01-preview",
     ["AZURE_OPENAI_ENDPOINT=https://myres.openai.azure.com", "OPENAI_API_VERSION=2024-10-01-preview"]),
    ("https://myres.cognitiveservices.azure.com/openai/v1/", ["AZURE_OPENAI_ENDPOINT=https://myres.cognitiveservices.azure.com"]),
])
def test_a_portal_url_pasted_as_the_endpoint_is_explained(pasted: str, hints: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_settings({"AZURE_OPENAI_ENDPOINT": pasted, "AZURE_OPENAI_API_KEY": "k"})
    message = str(info.value)
    assert info.value.variable == "AZURE_OPENAI_ENDPOINT"
    assert "full request URL" in message and "not the resource address" in message
    for hint in hints:
        assert hint in message
    # the seed's variable name is recognised the same way
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_ENDPOINT=.*full request URL"):
        resolve_settings({"AZURE_OPENAI_API_ENDPOINT": pasted, "AZURE_OPENAI_API_KEY": "k"})


def test_a_plain_resource_address_passes() -> None:
    settings = resolve_settings({"AZURE_OPENAI_ENDPOINT": "https://myres.openai.azure.com/", "AZURE_OPENAI_API_KEY": "k"})
    assert settings.endpoint == "https://myres.openai.azure.com"
