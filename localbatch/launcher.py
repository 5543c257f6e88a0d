"""Start the local Batch service from Python as a child process and wait until it answers.

Used by the tests, by ``batchkit.connect()`` (detached, when nothing answers at LOCALBATCH_URL)
and by ``make run``.
"""

from __future__ import annotations

import os
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

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServiceStartError(RuntimeError):
    """The service did not answer ``/healthz`` in time or exited; the message holds its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def is_serving(url: str, timeout: float = 1.0) -> bool:
    """True when ``GET <url>/healthz`` answers 200 (``url`` is the service root, e.g. http://127.0.0.1:8765)."""
    try:
        with _NO_PROXY.open(url.rstrip("/") + "/healthz", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


@dataclass
class ServiceHandle:
    """A running service: where it listens, its key, its process id, and how to stop it."""

    base_url: str
    api_key: str | None
    pid: int
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the service (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
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
            pass

    def kill(self) -> None:
        """Kill the service at once (SIGKILL), as a crash would."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if self.process is not None:
            self.process.wait(10)


def _gone(pid: int) -> bool:
    """True when ``pid`` has exited (a child of this process is reaped here, so it is not left a zombie)."""
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
    return False


def start_service(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    data_dir: str | os.PathLike[str],
    api_key: str | None,
    engine: str = "llama",
    extra_args: Sequence[str] = (),
    wait: float = 60.0,
    detached: bool = False,
) -> ServiceHandle:
    """Start ``python -m localbatch serve`` and wait until ``/healthz`` answers.

    Args:
        host: interface to bind (a non-loopback host needs ``api_key``).
        port: port to listen on; None picks a free one.
        data_dir: the service's state directory (created if missing).
        api_key: the key clients must send; passed through the environment, never on the command line.
        engine: ``llama``, ``synthetic`` or ``forward``.
        extra_args: more ``serve`` flags, e.g. ``("--engine-delay", "0.2")``.
        wait: seconds to wait for ``/healthz``.
        detached: start in a new session with output to ``<data_dir>/localbatch.log`` so the service
            outlives the caller; otherwise it is a child whose output goes to ``<data_dir>/localbatch.log`` too
            and :meth:`ServiceHandle.stop` ends it.

    Raises:
        ServiceStartError: the process exited or did not answer within ``wait`` seconds (the
            message carries the end of its log).
    """
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    url_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{url_host}:{port}"
    env = dict(os.environ)
    env.pop("LOCALBATCH_API_KEY", None)
    if api_key:
        env["LOCALBATCH_API_KEY"] = api_key
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "localbatch", "serve", "--host", host, "--port", str(port),
           "--data-dir", str(data), "--engine", engine, *extra_args]
    log_path = data / "localbatch.log"
    log = log_path.open("ab")
    try:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=detached)
    finally:
        log.close()
    handle = ServiceHandle(base_url, api_key, process.pid, log_path, None if detached else process)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceStartError(f"localbatch exited with code {process.returncode}:\n{_tail(log_path)}")
        if is_serving(base_url, timeout=1.0):
            return handle
        time.sleep(0.1)
    handle.stop()
    raise ServiceStartError(f"localbatch did not answer {base_url}/healthz within {wait:.0f} s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
