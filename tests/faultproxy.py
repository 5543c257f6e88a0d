"""A small HTTP proxy for tests, placed between the real SDK and the real local service.

It forwards every request to the service unchanged, except where a rule says otherwise: answer a
status of its own (a 429 with `retry-after`, a 503), cut a downloaded file short at a line
boundary, or change a JSON answer. This is the one named stand-in of the suite: the real services
do all of these things sometimes, and nothing else here can make them do so on cue.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Rule:
    """What to do with matching requests, `times` times (None: always).

    Attributes:
        method: HTTP method to match ("GET", "POST", ...; "" for any).
        path_contains: a part of the path (without the query) to match.
        status: answer this status with `body` and `headers` instead of forwarding.
        keep_lines: forward, then keep only the first N lines of the answer's body.
        edit_json: forward, then pass the answer's JSON through this function.
        lose_answer: with `status`: forward the request (the service acts on it), then answer
            `status` instead of the service's answer, as when a reply is lost on the way back.
        times: how many matching requests the rule applies to.
    """

    method: str = ""
    path_contains: str = ""
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    keep_lines: int | None = None
    edit_json: Callable[[Any], Any] | None = None
    lose_answer: bool = False
    times: int | None = 1
    used: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        return (not self.method or self.method == method) and self.path_contains in path


class FaultProxy:
    """Forwards to `upstream` (a base URL) on a free loopback port; `rules` apply in order."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                data = self.rfile.read(length) if length else b""
                path = urlsplit(self.path).path
                with proxy._lock:
                    rule = next((r for r in proxy.rules if r.matches(self.command, path)), None)
                    if rule is not None:
                        rule.used += 1
                if rule is not None and rule.status is not None:
                    if rule.lose_answer:
                        proxy._forward(self.command, self.path, dict(self.headers), data)
                    payload = rule.body if isinstance(rule.body, bytes) else json.dumps(rule.body or {}).encode()
                    self._answer(rule.status, {"content-type": "application/json", **rule.headers}, payload, path)
                    return
                status, headers, payload = proxy._forward(self.command, self.path, dict(self.headers), data)
                if rule is not None and rule.keep_lines is not None:
                    payload = b"".join(payload.splitlines(keepends=True)[: rule.keep_lines])
                if rule is not None and rule.edit_json is not None:
                    payload = json.dumps(rule.edit_json(json.loads(payload))).encode()
                self._answer(status, headers, payload, path)

            def _answer(self, status: int, headers: dict[str, str], payload: bytes, path: str) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                proxy.log.append((self.command, path, status))

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _forward(self, method: str, target: str, headers: dict[str, str], data: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection", "accept-encoding")}
            conn.request(method, target, body=data or None, headers=headers)
            response = conn.getresponse()
            return response.status, {k: v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def add(self, **rule: Any) -> Rule:
        """Add a rule (see `Rule`) and return it (its `used` counts the requests it changed)."""
        made = Rule(**rule)
        with self._lock:
            self.rules.append(made)
        return made

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)
