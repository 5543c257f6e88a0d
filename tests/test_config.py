"""connect() and resolve_settings(): backend choice, error messages, keys never shown."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import openai
import pytest

from batchkit.config import (
    DEFAULT_API_VERSION,
    Connection,
    connect,
    make_client,
    project_root,
    resolve_settings,
    service_answers,
)
from batchkit.errors import ConfigError

AZURE = {"AZURE_OPENAI_ENDPOINT": "https://res.openai.azure.com/", "AZURE_OPENAI_API_KEY": "az-secret-123"}
OPENAI = {"OPENAI_API_KEY": "sk-secret-456"}


def test_nothing_configured_means_local() -> None:
    settings = resolve_settings({})
    assert settings.backend == "local"
    assert settings.endpoint == "http://127.0.0.1:8765"
    assert settings.api_key == "local-dev-key"
    assert settings.api_version == DEFAULT_API_VERSION
    assert settings.batch_url == "/chat/completions"
    assert settings.deployment == "gpt-4o-batch"


def test_azure_from_sdk_or_seed_variable_names() -> None:
    settings = resolve_settings(AZURE)
    assert (settings.backend, settings.endpoint, settings.api_version) == ("azure", "https://res.openai.azure.com", DEFAULT_API_VERSION)
    seed = resolve_settings({"AZURE_OPENAI_API_ENDPOINT": "https://seed.openai.azure.com", "AZURE_OPENAI_API_KEY": "k", "OPENAI_API_VERSION": "2024-10-21", "BATCH_DEPLOYMENT": "dep"})
    assert (seed.endpoint, seed.api_version, seed.deployment) == ("https://seed.openai.azure.com", "2024-10-21", "dep")


def test_openai_with_optional_base_url() -> None:
    settings = resolve_settings(OPENAI)
    assert (settings.backend, settings.endpoint, settings.batch_url) == ("openai", "https://api.openai.com/v1", "/v1/chat/completions")
    assert resolve_settings({**OPENAI, "OPENAI_BASE_URL": "http://proxy:9/v1"}).endpoint == "http://proxy:9/v1"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({**AZURE, **OPENAI}, "BATCH_BACKEND"),
        ({"BATCH_BACKEND": "bedrock"}, "BATCH_BACKEND"),
        ({"AZURE_OPENAI_API_KEY": "k"}, "AZURE_OPENAI_ENDPOINT"),
        ({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"}, "AZURE_OPENAI_API_KEY"),
        ({**AZURE, "AZURE_OPENAI_API_ENDPOINT": "https://other.openai.azure.com"}, "AZURE_OPENAI_ENDPOINT"),
        ({"AZURE_OPENAI_ENDPOINT": "res.openai.azure.com", "AZURE_OPENAI_API_KEY": "k"}, "AZURE_OPENAI_ENDPOINT"),
        ({"BATCH_BACKEND": "openai"}, "OPENAI_API_KEY"),
        ({"LOCALBATCH_URL": "localhost:8765"}, "LOCALBATCH_URL"),
    ],
)
def test_errors_name_the_variable_and_never_the_key(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_settings(env)
    assert info.value.variable == variable
    assert variable in str(info.value)
    for secret in ("az-secret-123", "sk-secret-456"):
        assert secret not in str(info.value)


def test_explicit_backend_chooses_when_both_are_configured() -> None:
    assert resolve_settings({**AZURE, **OPENAI, "BATCH_BACKEND": "openai"}).backend == "openai"
    assert resolve_settings({**AZURE, **OPENAI, "BATCH_BACKEND": "AZURE"}).backend == "azure"
    assert resolve_settings({**AZURE, "BATCH_BACKEND": "local"}).backend == "local"


def test_keys_stay_out_of_repr_and_describe() -> None:
    for env in (AZURE, OPENAI):
        settings = resolve_settings(env)
        conn = Connection(client=make_client(settings), settings=settings)
        for text in (repr(settings), repr(conn), conn.describe()):
            assert "secret" not in text
        assert settings.backend in conn.describe()


def test_clients_match_the_backend() -> None:
    azure = make_client(resolve_settings(AZURE))
    assert isinstance(azure, openai.AzureOpenAI) and azure._api_version == DEFAULT_API_VERSION
    plain = make_client(resolve_settings(OPENAI))
    assert type(plain) is openai.OpenAI and str(plain.base_url).startswith("https://api.openai.com/v1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_local_without_a_service_and_without_start_is_an_error() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    assert not service_answers(url, timeout=0.2)
    with pytest.raises(ConfigError, match="LOCALBATCH_URL"):
        connect(env={"LOCALBATCH_URL": url}, start_local=False)
    with pytest.raises(ConfigError, match="not on this machine"):
        connect(env={"LOCALBATCH_URL": "http://192.0.2.1:9"}, start_local=True)


def test_dotenv_does_not_override_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("BATCH_BACKEND=openai\nOPENAI_API_KEY=sk-from-dotenv\nBATCH_DEPLOYMENT=from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATCH_DEPLOYMENT", "from-env")
    monkeypatch.delenv("BATCH_BACKEND", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    try:
        conn = connect()
        assert conn.backend == "openai" and conn.deployment == "from-env"
    finally:
        for name in ("BATCH_BACKEND", "OPENAI_API_KEY"):
            os.environ.pop(name, None)


def test_project_root_finds_the_repository(tmp_path: Path) -> None:
    here = Path(__file__).resolve().parent
    assert (project_root(here) / "batchkit").is_dir()
    assert project_root(tmp_path) == tmp_path.resolve()
