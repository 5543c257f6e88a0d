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
    display_path,
    load_settings,
    make_client,
    project_root,
    resolve_settings,
    service_answers,
)
from batchkit.errors import ConfigError
from conftest import end_service, services_under

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
        conn = connect(check=False)  # no network here: the reachability check is tested on its own
        assert conn.backend == "openai" and conn.deployment == "from-env"
    finally:
        for name in ("BATCH_BACKEND", "OPENAI_API_KEY"):
            os.environ.pop(name, None)


def test_project_root_finds_the_repository(tmp_path: Path) -> None:
    here = Path(__file__).resolve().parent
    assert (project_root(here) / "batchkit").is_dir()
    assert project_root(tmp_path) == tmp_path.resolve()


# ----- connect() starting the local service itself --------------------------------------------------

AUTOSTART_KEY = "autostart-secret-789"


def test_connect_starts_the_local_service_detached_and_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from localbatch.launcher import free_port

    # connect() puts the service's data under project_root()/.localbatch; outside the repository the
    # project root falls back to the cwd, so the data goes to a temporary folder
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / ".localbatch"
    url = f"http://127.0.0.1:{free_port()}"
    env = {"BATCH_BACKEND": "local", "LOCALBATCH_URL": url, "LOCALBATCH_API_KEY": AUTOSTART_KEY}
    assert not service_answers(url, timeout=0.2)
    try:
        conn = connect(env=env)
        printed = capsys.readouterr()
        assert conn.started_service is True
        assert (conn.backend, conn.settings.endpoint, conn.deployment) == ("local", url, "gpt-4o-batch")
        assert service_answers(url)
        # it says so, in one line, without the key or a machine path
        assert printed.out.count("\n") == 1 and printed.err == ""
        assert f"Started the local Batch service at {url} in the background" in printed.out
        assert f"stop it with `python -m localbatch stop --url {url}`" in printed.out
        assert "(data in .localbatch/)" in printed.out
        assert AUTOSTART_KEY not in printed.out and str(tmp_path) not in printed.out

        pids = services_under(data_dir)
        assert len(pids) == 1, pids
        pid = pids[0]
        # detached: a session of its own, so it outlives the notebook (and its Ctrl-C) that started it
        assert os.getsid(pid) == pid != os.getsid(0)
        # its output goes to the data folder; the key reaches it through the environment only
        assert (data_dir / "localbatch.log").is_file()
        assert AUTOSTART_KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert AUTOSTART_KEY not in (data_dir / "localbatch.log").read_text(errors="replace")

        # it was started with the configured key: the connection's client works, another key is refused
        assert conn.client.batches.list().data == []
        wrong = openai.AzureOpenAI(azure_endpoint=url, api_key="wrong-key", api_version=DEFAULT_API_VERSION, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.batches.list()

        # a second connect() finds it running: nothing printed, nothing started
        again = connect(env=env)
        assert again.started_service is False
        assert capsys.readouterr().out == ""
        assert services_under(data_dir) == [pid]
        assert again.client.batches.list().data == []
        # and with start_local=False it is no longer an error
        assert connect(env=env, start_local=False).started_service is False
    finally:
        for pid in services_under(data_dir):
            end_service(pid)
    assert services_under(data_dir) == []
    assert not service_answers(url, timeout=0.2)


# ----- load_settings() -------------------------------------------------------------------------------

#: Every variable load_settings() reads; each test starts with all of them unset (and restores them).
SETTING_NAMES = (
    "BATCH_BACKEND", "BATCH_DEPLOYMENT", "LOCALBATCH_URL", "LOCALBATCH_API_KEY",
    "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_ENDPOINT", "AZURE_OPENAI_API_KEY",
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_VERSION",
)


@pytest.fixture()
def bare_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No setting in the environment, cwd in an empty temporary folder; everything restored afterwards.

    `setenv` then `delenv` records each variable's original state, so values a `.env` loads into
    `os.environ` during the test are undone too.
    """
    for name in SETTING_NAMES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_load_settings_defaults_to_the_local_service(bare_env: Path) -> None:
    settings = load_settings()
    assert settings.backend == "local"
    assert (settings.endpoint, settings.api_key) == ("http://127.0.0.1:8765", "local-dev-key")
    assert (settings.deployment, settings.api_version, settings.batch_url) == ("gpt-4o-batch", DEFAULT_API_VERSION, "/chat/completions")


def test_load_settings_reads_the_nearest_dotenv_for_each_backend(bare_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deeper = bare_env / "notebooks" / "sub"
    deeper.mkdir(parents=True)
    monkeypatch.chdir(deeper)  # .env is found by searching upward from the cwd
    dotenv = bare_env / ".env"

    dotenv.write_text("AZURE_OPENAI_ENDPOINT=https://res.openai.azure.com/\nAZURE_OPENAI_API_KEY=az-secret-123\n"
                      "OPENAI_API_VERSION=2024-10-21\nBATCH_DEPLOYMENT=my-batch\n")
    azure = load_settings()
    assert (azure.backend, azure.endpoint, azure.api_key) == ("azure", "https://res.openai.azure.com", "az-secret-123")
    assert (azure.api_version, azure.deployment, azure.batch_url) == ("2024-10-21", "my-batch", "/chat/completions")
    assert "az-secret-123" not in repr(azure)

    for name in SETTING_NAMES:  # the previous .env filled os.environ: start over
        os.environ.pop(name, None)
    dotenv.write_text("OPENAI_API_KEY=sk-secret-456\nOPENAI_BASE_URL=http://proxy.example:9/v1/\n")
    plain = load_settings()
    assert (plain.backend, plain.endpoint, plain.api_key) == ("openai", "http://proxy.example:9/v1", "sk-secret-456")
    assert (plain.api_version, plain.deployment, plain.batch_url) == (None, "gpt-4o-batch", "/v1/chat/completions")
    assert "sk-secret-456" not in repr(plain)

    for name in SETTING_NAMES:
        os.environ.pop(name, None)
    dotenv.write_text("BATCH_BACKEND=local\nLOCALBATCH_URL=http://127.0.0.1:9999/\nLOCALBATCH_API_KEY=lb-secret\n")
    local = load_settings()
    assert (local.backend, local.endpoint, local.api_key, local.api_version) == (
        "local", "http://127.0.0.1:9999", "lb-secret", DEFAULT_API_VERSION)
    assert "lb-secret" not in repr(local)


def test_load_settings_without_dotenv_ignores_the_file(bare_env: Path) -> None:
    (bare_env / ".env").write_text("BATCH_BACKEND=openai\nOPENAI_API_KEY=sk-secret-456\n")
    assert load_settings(dotenv=False).backend == "local"
    assert "OPENAI_API_KEY" not in os.environ  # the file was not read into the environment either


def test_load_settings_environment_wins_over_dotenv(bare_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (bare_env / ".env").write_text("BATCH_DEPLOYMENT=from-dotenv\nBATCH_BACKEND=openai\nOPENAI_API_KEY=sk-secret-456\n")
    monkeypatch.setenv("BATCH_BACKEND", "local")
    monkeypatch.setenv("BATCH_DEPLOYMENT", "  from-env  ")
    settings = load_settings()
    assert (settings.backend, settings.deployment) == ("local", "from-env")  # blanks around a value are dropped
    # a variable set empty counts as set: the .env does not fill it in, and empty means the default
    monkeypatch.setenv("BATCH_DEPLOYMENT", "")
    assert load_settings().deployment == "gpt-4o-batch"


def test_load_settings_takes_the_deployment_from_dotenv(bare_env: Path) -> None:
    (bare_env / ".env").write_text("BATCH_DEPLOYMENT=gpt-4o-mini-batch\n")
    settings = load_settings()
    assert (settings.backend, settings.deployment) == ("local", "gpt-4o-mini-batch")


@pytest.mark.parametrize(
    ("dotenv", "variable", "fix"),
    [
        ("AZURE_OPENAI_API_KEY=az-secret-123\n", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_ENDPOINT=https://"),
        ("BATCH_BACKEND=azure\nAZURE_OPENAI_ENDPOINT=https://r.openai.azure.com\n", "AZURE_OPENAI_API_KEY",
         "Add AZURE_OPENAI_API_KEY="),
        ("AZURE_OPENAI_API_ENDPOINT=r.openai.azure.com\nAZURE_OPENAI_API_KEY=az-secret-123\n",
         "AZURE_OPENAI_API_ENDPOINT", "full address"),
        ("AZURE_OPENAI_API_KEY=az-secret-123\nOPENAI_API_KEY=sk-secret-456\n", "BATCH_BACKEND", "BATCH_BACKEND=azure"),
        ("BATCH_BACKEND=openai\n", "OPENAI_API_KEY", "Add OPENAI_API_KEY="),
        ("OPENAI_API_KEY=sk-secret-456\nOPENAI_BASE_URL=proxy:9/v1\n", "OPENAI_BASE_URL", "full address"),
        ("BATCH_BACKEND=vertex\nOPENAI_API_KEY=sk-secret-456\n", "BATCH_BACKEND", "local, azure, openai"),
        ("LOCALBATCH_URL=127.0.0.1:8765\nLOCALBATCH_API_KEY=lb-secret\n", "LOCALBATCH_URL", "full address"),
    ],
)
def test_load_settings_errors_name_the_variable_and_the_fix(bare_env: Path, dotenv: str, variable: str, fix: str) -> None:
    (bare_env / ".env").write_text(dotenv)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert info.value.variable == variable
    assert variable in message and fix in message
    for secret in ("az-secret-123", "sk-secret-456", "lb-secret"):
        assert secret not in message


def test_load_settings_starts_nothing_and_calls_nothing(bare_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("LOCALBATCH_URL", url)
    settings = load_settings()
    assert settings.endpoint == url
    assert not service_answers(url, timeout=0.2)
    assert not (bare_env / ".localbatch").exists()


# ----- display_path() -------------------------------------------------------------------------------


def test_display_path_is_relative_inside_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "project"
    (root / "out").mkdir(parents=True)
    assert display_path(root / "out" / "run.json", root=root) == "out/run.json"
    assert display_path(str(root / "out" / "sub" / ".." / "results.csv"), root=root) == "out/results.csv"
    monkeypatch.chdir(root / "out")  # a relative path is taken from the cwd
    assert display_path("buildings.jsonl", root=root) == "out/buildings.jsonl"
    assert display_path(Path("..") / "data" / "x.csv", root=root) == "data/x.csv"


def test_display_path_leaves_paths_outside_the_root_as_given(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    outside = tmp_path / "elsewhere" / "file.jsonl"
    assert display_path(outside, root=root) == str(outside)
    assert display_path(str(outside), root=root) == str(outside)


def test_display_path_defaults_to_the_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo / "notebooks")  # as in a notebook: cwd is notebooks/, the root is the repository
    assert display_path(repo / "out" / "results.csv") == "out/results.csv"
    assert display_path("01_author_requests.ipynb") == "notebooks/01_author_requests.ipynb"


@pytest.mark.parametrize("variable,example", [
    ("LOCALBATCH_URL", "http://127.0.0.1:8765"),
    ("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    ("AZURE_OPENAI_ENDPOINT", "https://YOUR-RESOURCE.openai.azure.com"),
])
def test_a_bad_url_gets_an_example_for_its_own_variable(variable: str, example: str) -> None:
    env = {"LOCALBATCH_URL": "127.0.0.1:8765"} if variable == "LOCALBATCH_URL" else (
        {**OPENAI, "OPENAI_BASE_URL": "api.openai.com"} if variable == "OPENAI_BASE_URL"
        else {**AZURE, "AZURE_OPENAI_ENDPOINT": "res.openai.azure.com"})
    with pytest.raises(ConfigError) as info:
        resolve_settings(env)
    assert info.value.variable == variable and f"e.g. '{example}'" in str(info.value)
