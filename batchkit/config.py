"""Choose a backend from `.env` / the environment and build the matching client.

`connect()` is the only entry point the notebooks need. It reads settings when called (never at
import), picks one of three backends and returns a `Connection`:

* ``azure``: `AzureOpenAI` on a Global Batch deployment (endpoint + api-version, and a key or,
  with `AZURE_OPENAI_AUTH=entra`, Microsoft Entra ID through azure-identity's
  `DefaultAzureCredential`);
* ``openai``: `OpenAI` (key, optional base URL);
* ``local``: the local Batch service of this repository, driven through `AzureOpenAI` exactly like
  Azure. If nothing answers at its URL, `connect()` starts it in the background (as a process, see
  `batchkit.local_service`) and says so, and how to stop it.

Before it returns, `connect()` checks that the remote endpoint's host resolves and accepts a
connection (a few seconds at most), so a typo in the address fails here, naming the variable.
Keys are never printed: `Connection.describe()` shows the backend, endpoint and deployment only.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from batchkit.errors import ConfigError

Backend = Literal["local", "azure", "openai"]
BACKENDS: tuple[str, ...] = ("local", "azure", "openai")

DEFAULT_API_VERSION = "2024-10-01-preview"
DEFAULT_LOCAL_URL = "http://127.0.0.1:8765"
DEFAULT_LOCAL_KEY = "local-dev-key"
DEFAULT_DEPLOYMENT = "gpt-4o-batch"
#: The standard deployment the local service declares by default (its /healthz is asked first).
DEFAULT_LOCAL_STANDARD = "gpt-4o"
#: How the Azure backend signs in: `key` (AZURE_OPENAI_API_KEY) or `entra` (DefaultAzureCredential).
AZURE_AUTH_MODES: tuple[str, ...] = ("key", "entra")
#: The token scope of Azure OpenAI for Entra ID (azure_ad_token_provider).
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
#: Seconds to wait for a TCP connection, in the reachability check and in the client.
CONNECT_TIMEOUT = 5.0


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
    #: Azure only: `key` or `entra` (then `api_key` is empty and a token provider signs requests).
    auth: str = "key"
    #: The variable `endpoint` came from (named in connection errors).
    endpoint_variable: str = ""

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

        `explicit` wins. Otherwise: the local service's first standard deployment (as its `/healthz`
        lists them; `gpt-4o` unless it was started with other deployments); on OpenAI the
        batch model itself (it answers live calls too); on Azure None, because a Global Batch
        deployment refuses live calls: name a standard deployment of yours in `explicit`.
        """
        if explicit:
            return explicit
        if self.backend == "local":  # the service's own standard deployment (answers live calls)
            return local_standard_deployment(self.settings.endpoint)
        if self.backend == "openai":
            return self.deployment
        return None

    def describe(self) -> str:
        """One line naming backend, endpoint, deployment and api-version; never the key."""
        parts = [f"backend={self.backend}", f"endpoint={self.settings.endpoint}", f"deployment={self.deployment}"]
        if self.settings.api_version:
            parts.append(f"api-version={self.settings.api_version}")
        if self.settings.auth != "key":
            parts.append(f"auth={self.settings.auth}")
        return " ".join(parts)

    def stop_service(self) -> str:
        """Stop the local service at this connection's address (e.g. the one `connect()` started).

        Returns what was stopped; raises `BatchkitError` when nothing runs there. Same as
        `python -m localbatch stop --url <LOCALBATCH_URL>` on the command line.
        """
        from batchkit.local_service import stop_local_service

        if self.backend != "local":
            raise ConfigError(f"This connection is to {self.backend}, not the local service: nothing to stop.",
                              variable="BATCH_BACKEND")
        return stop_local_service(url=self.settings.endpoint)

    def __repr__(self) -> str:
        return f"Connection({self.describe()})"


def _get(env: Mapping[str, str], name: str) -> str:
    """A variable's value with surrounding blanks removed ('' when unset)."""
    return (env.get(name) or "").strip()


#: An example address per URL variable, for error messages.
_URL_EXAMPLES = {"LOCALBATCH_URL": DEFAULT_LOCAL_URL, "OPENAI_BASE_URL": "https://api.openai.com/v1"}


def _check_url(value: str, variable: str) -> str:
    parts = urlsplit(value)
    if variable.startswith("AZURE_") and parts.scheme in ("http", "https") and parts.netloc:
        _refuse_request_url(value, variable)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        example = _URL_EXAMPLES.get(variable, "https://YOUR-RESOURCE.openai.azure.com")
        raise ConfigError(
            f"{variable}={value!r} is not a URL. Set it to the full address, e.g. "
            f"'{example}' (in .env or the environment).",
            variable=variable,
        )
    return value.rstrip("/")


def _refuse_request_url(value: str, variable: str) -> None:
    """Explain a full request URL (as the Azure portal shows one) pasted where the resource address goes."""
    parts = urlsplit(value)
    path = parts.path.rstrip("/")
    query = parse_qs(parts.query)
    if not path.startswith("/openai") and "api-version" not in query:
        return
    base = f"{parts.scheme}://{parts.netloc}"
    hints = [f"{variable}={base}"]
    segments = path.split("/")
    if "deployments" in segments and segments.index("deployments") + 1 < len(segments):
        hints.append(f"BATCH_DEPLOYMENT={segments[segments.index('deployments') + 1]} (if that is your Global "
                     "Batch deployment)")
    if query.get("api-version"):
        hints.append(f"OPENAI_API_VERSION={query['api-version'][0]}")
    raise ConfigError(
        f"{variable}={value!r} is a full request URL (as the Azure portal shows it), not the resource "
        f"address. The client adds /openai/..., the deployment and the api-version itself. Set "
        f"{'; '.join(hints)} in .env.",
        variable=variable,
    )


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
    azure_auth = _get(env, "AZURE_OPENAI_AUTH").lower()
    deployment = _get(env, "BATCH_DEPLOYMENT") or DEFAULT_DEPLOYMENT

    if choice and choice not in BACKENDS:
        raise ConfigError(
            f"BATCH_BACKEND={choice!r} is not one of local, azure, openai. Fix BATCH_BACKEND in .env "
            f"or the environment (or remove it to pick the configured backend).",
            variable="BATCH_BACKEND",
        )
    if azure_auth and azure_auth not in AZURE_AUTH_MODES:
        raise ConfigError(
            f"AZURE_OPENAI_AUTH={azure_auth!r} is not one of key, entra. Use AZURE_OPENAI_AUTH=entra to sign in "
            "with Microsoft Entra ID, or remove it to use AZURE_OPENAI_API_KEY.",
            variable="AZURE_OPENAI_AUTH",
        )
    azure_configured = bool(azure_endpoint or seed_endpoint or azure_key or azure_auth == "entra")
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
        auth = azure_auth or "key"
        if auth == "key" and not azure_key:
            raise ConfigError(
                "AZURE_OPENAI_API_KEY is not set. Add AZURE_OPENAI_API_KEY=<key from the Azure portal, "
                "Keys and Endpoint> to .env, or set AZURE_OPENAI_AUTH=entra to sign in with Microsoft Entra ID "
                "(azure-identity's DefaultAzureCredential: az login, a managed identity, ...).",
                variable="AZURE_OPENAI_API_KEY",
            )
        if auth == "entra" and azure_key:
            raise ConfigError(
                "AZURE_OPENAI_AUTH=entra and AZURE_OPENAI_API_KEY are both set. Remove the key to sign in with "
                "Entra ID, or remove AZURE_OPENAI_AUTH to use the key.",
                variable="AZURE_OPENAI_AUTH",
            )
        variable = "AZURE_OPENAI_ENDPOINT" if azure_endpoint else "AZURE_OPENAI_API_ENDPOINT"
        return Settings(
            backend="azure",
            endpoint=_check_url(endpoint, variable),
            api_key=azure_key if auth == "key" else "",
            deployment=deployment,
            api_version=_get(env, "OPENAI_API_VERSION") or DEFAULT_API_VERSION,
            auth=auth,
            endpoint_variable=variable,
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
            endpoint_variable="OPENAI_BASE_URL",
        )
    return Settings(
        backend="local",
        endpoint=_check_url(_get(env, "LOCALBATCH_URL") or DEFAULT_LOCAL_URL, "LOCALBATCH_URL"),
        api_key=_get(env, "LOCALBATCH_API_KEY") or DEFAULT_LOCAL_KEY,
        deployment=deployment,
        api_version=DEFAULT_API_VERSION,
        endpoint_variable="LOCALBATCH_URL",
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
    from batchkit.local_service import is_running

    return is_running(url, timeout=timeout)


def local_standard_deployment(url: str, timeout: float = 2.0) -> str:
    """The first standard deployment the local service at `url` declares (its `/healthz`).

    Falls back to `DEFAULT_LOCAL_STANDARD` when the service does not answer or lists none.
    """
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never via a proxy
    try:
        with direct.open(f"{url.rstrip('/')}/healthz", timeout=timeout) as response:
            deployments = json.loads(response.read()).get("deployments") or {}
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return DEFAULT_LOCAL_STANDARD
    standard = [name for name, kind in deployments.items() if kind == "standard"] if isinstance(deployments, dict) else []
    return standard[0] if standard else DEFAULT_LOCAL_STANDARD


def check_reachable(settings: Settings, timeout: float = CONNECT_TIMEOUT) -> None:
    """Resolve the endpoint's host and open one TCP connection to it (or to the proxy that applies).

    Raises:
        ConfigError: naming the variable, the address and what failed, with a hint; within about
            `timeout` seconds.
    """
    parts = urlsplit(settings.endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    variable = settings.endpoint_variable or "the endpoint"
    via = ""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or host, proxy_parts.port or 80
        via = f" through the proxy {proxy_parts.hostname}:{port}"
    example = "https://YOUR-RESOURCE.openai.azure.com" if settings.backend == "azure" else "https://api.openai.com/v1"
    hint = (f"Check the host name in it (e.g. {example}), your network or proxy, or set BATCH_BACKEND=local "
            "to run on the local service instead.")
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"Cannot reach {variable}={settings.endpoint}{via}: the host name {host!r} does not "
                          f"resolve ({exc}). {hint}", variable=settings.endpoint_variable or None) from None
    last: OSError | None = None
    for family, kind, proto, _name, address in addresses[:3]:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
                return
        except OSError as exc:
            last = exc
    reason = "timed out" if isinstance(last, TimeoutError) else str(last)
    raise ConfigError(f"Cannot reach {variable}={settings.endpoint}{via}: a connection to {host}:{port} failed "
                      f"({reason}). {hint}", variable=settings.endpoint_variable or None)


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
    from batchkit.local_service import start_local_service

    data_dir = project_root() / ".localbatch"
    start_local_service(
        host="127.0.0.1",
        port=parts.port or 80,
        data_dir=data_dir,
        api_key=settings.api_key,
        detached=True,
    )
    print(
        f"Started the local Batch service at {settings.endpoint} in the background "
        f"(data in {data_dir.name}/). It keeps running after this notebook; stop it with "
        f"`python -m localbatch stop --url {settings.endpoint}` (or conn.stop_service())."
    )


def entra_token_provider(credential: Any = None) -> Any:
    """A bearer-token provider for Azure OpenAI from an azure-identity credential.

    `credential` is any `azure.core.credentials.TokenCredential`; None builds azure-identity's
    `DefaultAzureCredential` (az login, environment, managed identity, ...). Tokens are requested
    for `ENTRA_SCOPE` when a request needs one, and refreshed before they expire.
    """
    try:
        from azure.identity import DefaultAzureCredential, get_bearer_token_provider
    except ImportError:
        raise ConfigError("AZURE_OPENAI_AUTH=entra needs the azure-identity package: pip install azure-identity "
                          "(it is in requirements.txt).", variable="AZURE_OPENAI_AUTH") from None
    return get_bearer_token_provider(credential or DefaultAzureCredential(), ENTRA_SCOPE)


def make_client(settings: Settings, *, credential: Any = None) -> Any:
    """Build the `openai` client for `settings` (no network call).

    Connections time out after `CONNECT_TIMEOUT` seconds (reads keep the SDK's long default), so an
    unreachable host fails in seconds rather than minutes. `credential` (Azure with
    `auth="entra"`): the azure-identity credential to use instead of `DefaultAzureCredential`.
    """
    import openai

    timeout = openai.Timeout(600.0, connect=CONNECT_TIMEOUT)
    if settings.backend == "openai":
        return openai.OpenAI(api_key=settings.api_key, base_url=settings.endpoint, timeout=timeout)
    if settings.auth == "entra":
        return openai.AzureOpenAI(
            azure_endpoint=settings.endpoint,
            azure_ad_token_provider=entra_token_provider(credential),
            api_version=settings.api_version or DEFAULT_API_VERSION,
            timeout=timeout,
        )
    return openai.AzureOpenAI(
        azure_endpoint=settings.endpoint,
        api_key=settings.api_key,
        api_version=settings.api_version or DEFAULT_API_VERSION,
        timeout=timeout,
    )


def connect(
    *,
    backend: Backend | None = None,
    env: Mapping[str, str] | None = None,
    dotenv: bool = True,
    start_local: bool = True,
    check: bool = True,
    credential: Any = None,
) -> Connection:
    """Read `.env` and the environment, and return a client for the chosen backend.

    Args:
        backend: overrides `BATCH_BACKEND` when given.
        env: settings to use instead of `os.environ` (then `.env` is not read).
        dotenv: read the nearest `.env` (searching upward from the cwd) into `os.environ` first;
            variables already set in the environment win over `.env`.
        start_local: for the local backend, start the service in the background when nothing answers
            at `LOCALBATCH_URL` (prints one line saying so, and how to stop it). False: raise
            `ConfigError` instead.
        check: for Azure and OpenAI, check that the endpoint's host resolves and accepts a
            connection (`check_reachable`, a few seconds at most) before returning.
        credential: Azure with `AZURE_OPENAI_AUTH=entra`: an azure-identity / azure.core token
            credential to use instead of `DefaultAzureCredential()`.

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
    elif settings.backend != "local" and check:
        check_reachable(settings)
    return Connection(client=make_client(settings, credential=credential), settings=settings, started_service=started)
