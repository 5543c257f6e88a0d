"""Start, find and stop the local Batch service (`localbatch`) as a separate process.

batchkit never imports localbatch: the service runs as `python -m localbatch serve` in its own
process, and everything here talks to it through that command line, its `/healthz` answer and the
`service.json` it keeps in its data folder. The functions:

    start_local_service(*, port=None, host="127.0.0.1", data_dir, api_key=None, engine="llama",
                        extra_args=(), wait=90.0, detached=False, python=None) -> LocalService
        Start the service and wait until `GET /healthz` answers. `port=None` picks a free port.
        `api_key=None` makes up a random key (`handle.api_key`); `api_key=""` starts it without a
        key (loopback only). The key reaches the process through the environment, never its command
        line. `extra_args` are more `serve` flags, e.g. `["--faults", json.dumps({...})]`.
        `detached=True` puts it in a session of its own, so it outlives the caller.
        Raises `ServiceStartError` (with the end of its log) when it exits or does not answer.

    LocalService: `base_url` (http://127.0.0.1:PORT), `api_key`, `pid`, `data_dir`, `log_path`;
        `stop(timeout=10.0)` (SIGTERM, then SIGKILL), `kill()` (SIGKILL, as a crash would),
        `is_running()`, `openai_client(**kw)` / `azure_client(api_version=..., **kw)`.

    is_running(url, timeout=1.0) -> bool          something answers `GET {url}/healthz` with 200
    free_port(host="127.0.0.1") -> int            a TCP port free right now
    stop_local_service(*, data_dir=None, url=None, python=None) -> str
        Stop a service started elsewhere (e.g. by `connect()`) by running
        `python -m localbatch stop`; returns what that command printed.

Example (a synthetic-engine service for a test or a demo, stopped at the end):

    handle = start_local_service(data_dir="out/svc", engine="synthetic")
    try:
        client = handle.openai_client()
        ...
    finally:
        handle.stop()
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchkit.errors import BatchkitError

__all__ = [
    "LocalService",
    "ServiceStartError",
    "free_port",
    "is_running",
    "start_local_service",
    "stop_local_service",
]

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never via a proxy


class ServiceStartError(BatchkitError, RuntimeError):
    """The service exited or did not answer `/healthz` in time; the message holds the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_running(url: str, timeout: float = 1.0) -> bool:
    """True when `GET {url}/healthz` answers 200 (`url` is the service root, e.g. http://127.0.0.1:8765)."""
    try:
        with _DIRECT.open(url.rstrip("/") + "/healthz", timeout=timeout) as response:
            return int(response.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _gone(pid: int) -> bool:
    """True when `pid` has exited (a child of this process is reaped, so it is not left a zombie)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    except ChildProcessError:  # not our child: ask whether it still exists
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class LocalService:
    """A running local service: where it listens, its key and process, and how to stop it."""

    base_url: str
    api_key: str | None
    pid: int
    data_dir: Path | None = None
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def is_running(self) -> bool:
        """True while the process lives and answers `/healthz`."""
        return not _gone(self.pid) and is_running(self.base_url)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the service: SIGTERM, then SIGKILL after `timeout` seconds (no zombie left behind)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout)
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _gone(self.pid):
                return
            time.sleep(0.1)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not _gone(self.pid):
            time.sleep(0.05)

    def kill(self) -> None:
        """Kill the service at once (SIGKILL), as a crash would."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if self.process is not None:
            self.process.wait(10)
        else:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not _gone(self.pid):
                time.sleep(0.05)

    def openai_client(self, **kwargs: Any) -> Any:
        """An `openai.OpenAI` client on the OpenAI dialect (`/v1/...`)."""
        import openai

        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.api_key or "unused", **kwargs)

    def azure_client(self, api_version: str = "2024-10-21", **kwargs: Any) -> Any:
        """An `openai.AzureOpenAI` client on the Azure classic dialect (`/openai/...?api-version=`)."""
        import openai

        return openai.AzureOpenAI(azure_endpoint=self.base_url, api_key=self.api_key or "unused",
                                  api_version=api_version, **kwargs)


def start_local_service(
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    data_dir: str | os.PathLike[str],
    api_key: str | None = None,
    engine: str = "llama",
    extra_args: Sequence[str] = (),
    wait: float = 90.0,
    detached: bool = False,
    python: str | None = None,
) -> LocalService:
    """Start `python -m localbatch serve` and wait until `/healthz` answers (see the module docstring).

    Args:
        port: port to listen on; None picks a free one.
        host: interface to bind (a non-loopback host needs a key).
        data_dir: the service's state folder (created if missing); its log is `data_dir/localbatch.log`.
        api_key: the key clients must send; None makes up a random one; "" means no key is checked.
        engine: `llama`, `synthetic` or `forward`.
        extra_args: more `serve` flags, e.g. `("--engine-delay", "0.2")`.
        wait: seconds to wait for `/healthz`.
        detached: start in a new session so the service outlives the caller.
        python: the interpreter to run (default: this one).

    Raises:
        ServiceStartError: the process exited, or did not answer within `wait` seconds.
    """
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    key = secrets.token_urlsafe(24) if api_key is None else api_key
    url_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{url_host}:{port}"
    env = dict(os.environ)
    env["LOCALBATCH_API_KEY"] = key  # "" = no key; the command line never carries it (ps shows that)
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [python or sys.executable, "-m", "localbatch", "serve", "--host", host, "--port", str(port),
           "--data-dir", str(data), "--engine", engine, *extra_args]
    log_path = data / "localbatch.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=detached)
    handle = LocalService(base_url, key or None, process.pid, data, log_path, None if detached else process)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise ServiceStartError(f"localbatch exited with code {code}:\n{_tail(log_path)}")
        if is_running(base_url, timeout=1.0):
            return handle
        time.sleep(0.1)
    handle.stop()
    raise ServiceStartError(f"localbatch did not answer {base_url}/healthz within {wait:.0f} s:\n{_tail(log_path)}")


def stop_local_service(
    *, data_dir: str | os.PathLike[str] | None = None, url: str | None = None, python: str | None = None
) -> str:
    """Stop a local service started elsewhere, by running `python -m localbatch stop`.

    `data_dir` names the service by its state folder, `url` by its address (a loopback one); with
    neither, the command's defaults apply (`.localbatch`, then `LOCALBATCH_URL`). Returns what the
    command printed. Raises `BatchkitError` with its message when it found nothing to stop.
    """
    cmd = [python or sys.executable, "-m", "localbatch", "stop"]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    if url is not None:
        cmd += ["--url", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise BatchkitError((done.stderr or done.stdout).strip() or f"{' '.join(cmd[1:])} failed")
    return done.stdout.strip()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
