"""Settings of the local Batch service: where it listens, what it serves, and its timing knobs.

Every knob has a command-line flag (see ``python -m localbatch serve --help``) and an environment
variable (``LOCALBATCH_*``); the flag wins. Nothing here is read at import time.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DeploymentKind = Literal["globalbatch", "standard"]

#: The model version reported in result bodies for the default deployments (spec §12).
DEFAULT_MODEL_VERSION = "gpt-4o-2024-08-06"

#: Default port (matches LOCALBATCH_URL's default in .env.example).
DEFAULT_PORT = 8765

#: Default upload size limit: the Batch API's 200 MB per input file.
DEFAULT_MAX_FILE_BYTES = 200 * 1024 * 1024

#: Default enqueued-token quota per deployment (large: Azure's gpt-4o default is 200M).
DEFAULT_TOKEN_QUOTA = 200_000_000


@dataclass(frozen=True)
class Deployment:
    """A declared deployment: its name (the ``model`` of requests), kind and reported model version."""

    name: str
    kind: DeploymentKind
    model_version: str = DEFAULT_MODEL_VERSION


DEFAULT_DEPLOYMENTS: tuple[Deployment, ...] = (
    Deployment("gpt-4o-batch", "globalbatch"),
    Deployment("gpt-4o", "standard"),
)


def parse_deployment(spec: str) -> Deployment:
    """Parse ``NAME=KIND`` or ``NAME=KIND:MODEL_VERSION`` (KIND is ``globalbatch`` or ``standard``).

    Raises ValueError naming the bad part and the expected form.
    """
    name, sep, rest = spec.partition("=")
    kind, _, version = rest.partition(":")
    name, kind, version = name.strip(), kind.strip(), version.strip()
    if not sep or not name or kind not in ("globalbatch", "standard"):
        raise ValueError(
            f"bad deployment {spec!r}: write NAME=KIND or NAME=KIND:MODEL_VERSION "
            "with KIND 'globalbatch' or 'standard', e.g. gpt-4o-batch=globalbatch"
        )
    return Deployment(name, kind, version or DEFAULT_MODEL_VERSION)  # type: ignore[arg-type]


@dataclass
class Settings:
    """Everything the service needs to run; built by the CLI from flags and environment."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path(".localbatch")
    api_key: str | None = None
    engine: str = "llama"
    engine_options: dict[str, object] = field(default_factory=dict)
    #: Seconds added to every engine call; only with the synthetic engine (for cancel/kill tests).
    engine_delay: float = 0.0
    deployments: tuple[Deployment, ...] = DEFAULT_DEPLOYMENTS
    #: Azure dialect: seconds an uploaded file stays ``pending`` before ``processed``/``error``.
    file_processing_delay: float = 0.5
    #: Minimum seconds a batch stays ``validating``.
    validating_seconds: float = 0.5
    #: Minimum seconds a batch stays ``finalizing``.
    finalizing_seconds: float = 0.2
    #: OpenAI dialect: completion window in seconds (None: the real 24 h). Azure never expires.
    completion_window_seconds: float | None = None
    #: Enqueued input-token quota per deployment.
    token_quota: int = DEFAULT_TOKEN_QUOTA
    #: Largest accepted upload, in bytes.
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    #: Upper bound on requests run at once (None: the engine's own max_concurrency).
    max_concurrency: int | None = None
    #: Batches of at least this many requests run on the synthetic engine in a process of their own
    #: (off the HTTP server's interpreter lock, so status calls stay fast while they run).
    subprocess_min_lines: int = 5000
    #: Input files of at least this many bytes are validated in a process of their own.
    subprocess_min_bytes: int = 4 * 1024 * 1024
    #: Scheduler poll interval in seconds.
    tick_seconds: float = 0.05
    #: Service-wide fault spec (JSON text, see localbatch.faults); a batch's own spec replaces it.
    faults: str | None = None
    #: Seconds a connection may take to send a request's complete headers.
    header_timeout: float = 10.0
    #: Seconds an idle keep-alive connection stays open.
    keep_alive_timeout: float = 5.0

    def deployment(self, name: str) -> Deployment | None:
        """The declared deployment called ``name``, or None."""
        for dep in self.deployments:
            if dep.name == name:
                return dep
        return None

    @property
    def db_path(self) -> Path:
        """The SQLite database file."""
        return self.data_dir / "localbatch.sqlite3"

    @property
    def url(self) -> str:
        """The address the service listens on, e.g. ``http://127.0.0.1:8765``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def files_dir(self) -> Path:
        """Where file bytes are kept, one file per id."""
        return self.data_dir / "files"


def is_loopback(host: str) -> bool:
    """True for hosts that only accept connections from this machine."""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def env_float(name: str, default: float | None) -> float | None:
    """Read a float from the environment; a bad value raises ValueError naming the variable."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; unset it or give seconds, e.g. {name}=0.5") from None


#: The file in the data folder that names the running service (pid, address) for ``stop``.
SERVICE_RECORD = "service.json"


def write_service_record(data_dir: Path, url: str) -> Path:
    """Write ``data_dir/service.json`` (this process's pid and address), atomically."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SERVICE_RECORD
    tmp = path.with_name(f".{SERVICE_RECORD}.{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url, "started_at": int(time.time())}))
    tmp.replace(path)
    return path


def remove_service_record(path: Path) -> None:
    """Remove the record if it still names this process."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass
