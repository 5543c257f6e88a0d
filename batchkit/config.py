"""Choose a backend from `.env` / the environment and build the matching client.

`connect()` is the only entry point the notebooks need. It reads settings when called (never at
import), picks one of three backends and returns a `Connection`:

* ``azure``: `AzureOpenAI` on a Global Batch deployment (endpoint + key + api-version);
* ``openai``: `OpenAI` (key, optional base URL);
* ``local``: the local Batch service of this repository, driven through `AzureOpenAI` exactly like
  Azure. If nothing answers at its URL, `connect()` starts it in the background and says so.

Keys are never printed: `Connection.describe()` shows the backend, endpoint and deployment only.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from batchkit.errors import ConfigError

Backend = Literal["local", "azure", "openai"]
BACKENDS: tuple[str, ...] = ("local", "azure", "openai")

DEFAULT_API_VERSION = "2024-10-01-preview"
DEFAULT_LOCAL_URL = "http://127.0.0.1:8765"
DEFAULT_LOCAL_KEY = "local-dev-key"
DEFAULT_DEPLOYMENT = "gpt-4o-batch"


@dataclass(frozen=True)
class Settings:
    """The resolved settings for one backend (no client built yet).

    `api_key` is kept out of `repr()` so that printing a `Settings` never shows a key.
    """

    backend: Backend
    endpoint: str
    api_key: str = field(repr=False)
    deployment: str = DEFAULT_DEPLOYMENT
    api_version: str | None = None

    @property
    def batch_url(self) -> str:
        """The `url` every batch line carries and the `endpoint` of `batches.create`.

        Azure (and the local service, which speaks the Azure dialect) takes `/chat/completions`;
        OpenAI requires the versioned path `/v1/chat/completions`.
        """
        return "/v1/chat/completions" if self.backend == "openai" else "/chat/completions"


@dataclass(frozen=True)
class Connection:
    """A ready client plus what it points at.

    Attributes:
        client: an `openai.AzureOpenAI` (azure, local) or `openai.OpenAI` (openai) client.
        settings: the resolved `Settings` (endpoint, deployment, api-version; key hidden).
        started_service: True when `connect()` started the local service itself.
    """

    client: Any
    settings: Settings
    started_service: bool = False

    @property
    def backend(self) -> Backend:
        """`local`, `azure` or `openai`."""
        return self.settings.backend

    @property
    def deployment(self) -> str:
        """The deployment (Azure, local) or model (OpenAI) named in every batch line."""
        return self.settings.deployment

    @property
    def batch_url(self) -> str:
        """The request path for batch lines and `batches.create(endpoint=...)`."""
        return self.settings.batch_url

    def live_model(self, explicit: str = "") -> str | None:
        """The deployment or model for one live chat call, or None when there is none to use.

        `explicit` wins. Otherwise: the local service's standard deployment `gpt-4o`; on OpenAI the
        batch model itself (it answers live calls too); on Azure None, because a Global Batch
        deployment refuses live calls: name a standard deployment of yours in `explicit`.
        """
        if explicit:
            return explicit
        if self.backend == "local":  # the service's own standard deployment (answers live calls)
            from localbatch.config import DEFAULT_DEPLOYMENTS

            return next(d.name for d in DEFAULT_DEPLOYMENTS if d.kind == "standard")
        if self.backend == "openai":
            return self.deployment
        return None

    def describe(self) -> str:
        """One line naming backend, endpoint, deployment and api-version; never the key."""
        parts = [f"backend={self.backend}", f"endpoint={self.settings.endpoint}", f"deployment={self.deployment}"]
        if self.settings.api_version:
            parts.append(f"api-version={self.settings.api_version}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"Connection({self.describe()})"


def _get(env: Mapping[str, str], name: str) -> str:
    """A variable's value with surrounding blanks removed ('' when unset)."""
    return (env.get(name) or "").strip()


#: An example address per URL variable, for error messages.
_URL_EXAMPLES = {"LOCALBATCH_URL": DEFAULT_LOCAL_URL, "OPENAI_BASE_URL": "https://api.openai.com/v1"}


def _check_url(value: str, variable: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        example = _URL_EXAMPLES.get(variable, "https://YOUR-RESOURCE.openai.azure.com")
        raise ConfigError(
            f"{variable}={value!r} is not a URL. Set it to the full address, e.g. "
            f"'{example}' (in .env or the environment).",
            variable=variable,
        )
    return value.rstrip("/")


def resolve_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Decide the backend and collect its settings from `env` (default: `os.environ`).

    Rules: `BATCH_BACKEND` wins when set. Unset: Azure if an Azure endpoint or key is set, OpenAI if
    `OPENAI_API_KEY` is set, both -> `ConfigError` naming `BATCH_BACKEND`, neither -> local.

    Raises:
        ConfigError: a missing or inconsistent setting; the message names the variable and the fix.
    """
    env = os.environ if env is None else env
    choice = _get(env, "BATCH_BACKEND").lower()
    azure_endpoint = _get(env, "AZURE_OPENAI_ENDPOINT")
    seed_endpoint = _get(env, "AZURE_OPENAI_API_ENDPOINT")
    azure_key = _get(env, "AZURE_OPENAI_API_KEY")
    openai_key = _get(env, "OPENAI_API_KEY")
    deployment = _get(env, "BATCH_DEPLOYMENT") or DEFAULT_DEPLOYMENT

    if choice and choice not in BACKENDS:
        raise ConfigError(
            f"BATCH_BACKEND={choice!r} is not one of local, azure, openai. Fix BATCH_BACKEND in .env "
            f"or the environment (or remove it to pick the configured backend).",
            variable="BATCH_BACKEND",
        )
    azure_configured = bool(azure_endpoint or seed_endpoint or azure_key)
    openai_configured = bool(openai_key)
    if not choice:
        if azure_configured and openai_configured:
            raise ConfigError(
                "Both Azure (AZURE_OPENAI_*) and OpenAI (OPENAI_API_KEY) settings are present. "
                "Set BATCH_BACKEND=azure or BATCH_BACKEND=openai in .env to choose one.",
                variable="BATCH_BACKEND",
            )
        choice = "azure" if azure_configured else "openai" if openai_configured else "local"

    if choice == "azure":
        if azure_endpoint and seed_endpoint and azure_endpoint.rstrip("/") != seed_endpoint.rstrip("/"):
            raise ConfigError(
                "AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_API_ENDPOINT are both set and differ. "
                "Keep only AZURE_OPENAI_ENDPOINT.",
                variable="AZURE_OPENAI_ENDPOINT",
            )
        endpoint = azure_endpoint or seed_endpoint
        if not endpoint:
            raise ConfigError(
                "AZURE_OPENAI_ENDPOINT is not set. Add AZURE_OPENAI_ENDPOINT=https://YOUR-RESOURCE.openai.azure.com "
                "to .env (AZURE_OPENAI_API_ENDPOINT is accepted too).",
                variable="AZURE_OPENAI_ENDPOINT",
            )
        if not azure_key:
            raise ConfigError(
                "AZURE_OPENAI_API_KEY is not set. Add AZURE_OPENAI_API_KEY=<key from the Azure portal, "
                "Keys and Endpoint> to .env.",
                variable="AZURE_OPENAI_API_KEY",
            )
        variable = "AZURE_OPENAI_ENDPOINT" if azure_endpoint else "AZURE_OPENAI_API_ENDPOINT"
        return Settings(
            backend="azure",
            endpoint=_check_url(endpoint, variable),
            api_key=azure_key,
            deployment=deployment,
            api_version=_get(env, "OPENAI_API_VERSION") or DEFAULT_API_VERSION,
        )
    if choice == "openai":
        if not openai_key:
            raise ConfigError(
                "OPENAI_API_KEY is not set. Add OPENAI_API_KEY=<your key> to .env, or choose another "
                "backend with BATCH_BACKEND.",
                variable="OPENAI_API_KEY",
            )
        base = _get(env, "OPENAI_BASE_URL")
        return Settings(
            backend="openai",
            endpoint=_check_url(base, "OPENAI_BASE_URL") if base else "https://api.openai.com/v1",
            api_key=openai_key,
            deployment=deployment,
        )
    return Settings(
        backend="local",
        endpoint=_check_url(_get(env, "LOCALBATCH_URL") or DEFAULT_LOCAL_URL, "LOCALBATCH_URL"),
        api_key=_get(env, "LOCALBATCH_API_KEY") or DEFAULT_LOCAL_KEY,
        deployment=deployment,
        api_version=DEFAULT_API_VERSION,
    )


def load_settings(*, dotenv: bool = True) -> Settings:
    """`resolve_settings` after reading the nearest `.env` (no client, no network, no service started).

    Variables already set in the environment win over `.env`.
    """
    if dotenv:
        _load_dotenv()
    return resolve_settings(os.environ)


def _load_dotenv() -> None:
    from dotenv import find_dotenv, load_dotenv

    path = find_dotenv(usecwd=True)
    if path:
        load_dotenv(path, override=False)


def service_answers(url: str, timeout: float = 1.0) -> bool:
    """True when something answers `GET {url}/healthz` with HTTP 200."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never via a proxy
    try:
        with direct.open(f"{url.rstrip('/')}/healthz", timeout=timeout) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding this project's pyproject.toml.

    Falls back to `start` itself when none is found (e.g. batchkit used from another project).
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and (folder / "batchkit").is_dir():
            return folder
    return here


def display_path(path: str | Path, root: Path | None = None) -> str:
    """`path` relative to the project root when it lies inside it (for printing without machine paths)."""
    target = Path(path).resolve()
    base = (root or project_root()).resolve()
    try:
        return target.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _start_local_service(settings: Settings) -> None:
    """Start the local service in the background on the port of `settings.endpoint`."""
    parts = urlsplit(settings.endpoint)
    host = parts.hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(
            f"Nothing answers at LOCALBATCH_URL={settings.endpoint} and it is not on this machine, so it "
            f"cannot be started here. Start the service there, or point LOCALBATCH_URL at http://127.0.0.1:8765.",
            variable="LOCALBATCH_URL",
        )
    from localbatch.launcher import start_service  # imported only when a service must be started

    data_dir = project_root() / ".localbatch"
    start_service(
        host="127.0.0.1",
        port=parts.port or 80,
        data_dir=data_dir,
        api_key=settings.api_key,
        detached=True,
    )
    print(
        f"Started the local Batch service at {settings.endpoint} in the background "
        f"(data in {data_dir.name}/). It keeps running after this notebook."
    )


def make_client(settings: Settings) -> Any:
    """Build the `openai` client for `settings` (no network call)."""
    import openai

    if settings.backend == "openai":
        return openai.OpenAI(api_key=settings.api_key, base_url=settings.endpoint)
    return openai.AzureOpenAI(
        azure_endpoint=settings.endpoint,
        api_key=settings.api_key,
        api_version=settings.api_version or DEFAULT_API_VERSION,
    )


def connect(
    *,
    backend: Backend | None = None,
    env: Mapping[str, str] | None = None,
    dotenv: bool = True,
    start_local: bool = True,
) -> Connection:
    """Read `.env` and the environment, and return a client for the chosen backend.

    Args:
        backend: overrides `BATCH_BACKEND` when given.
        env: settings to use instead of `os.environ` (then `.env` is not read).
        dotenv: read the nearest `.env` (searching upward from the cwd) into `os.environ` first;
            variables already set in the environment win over `.env`.
        start_local: for the local backend, start the service in the background when nothing answers
            at `LOCALBATCH_URL` (prints one line saying so). False: raise `ConfigError` instead.

    Returns:
        A `Connection` with `.client`, `.backend`, `.deployment`, `.batch_url` and `.describe()`.

    Raises:
        ConfigError: a missing or inconsistent setting (message names the variable and the fix).
    """
    if env is None:
        if dotenv:
            _load_dotenv()
        env = os.environ
    if backend is not None:
        env = {**env, "BATCH_BACKEND": backend}
    settings = resolve_settings(env)
    started = False
    if settings.backend == "local" and not service_answers(settings.endpoint):
        if not start_local:
            raise ConfigError(
                f"Nothing answers at LOCALBATCH_URL={settings.endpoint}. Start it with "
                f"`python -m localbatch serve`, or call connect(start_local=True).",
                variable="LOCALBATCH_URL",
            )
        _start_local_service(settings)
        started = True
    return Connection(client=make_client(settings), settings=settings, started_service=started)
