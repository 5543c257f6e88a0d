"""Shared fixtures: the real local Batch service, started over loopback by the tests themselves.

* ``fast_service``: synthetic engine, short timings, a small upload limit and token quota.
* ``slow_service``: synthetic engine with an artificial per-request delay and one request at a
  time, so batches can be cancelled, expired and watched mid-run.
* ``llama_service``: the default engine (the real model), default settings.

Clients are built with ``max_retries=0`` so a wrong status is seen at once, never retried away.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

API_KEY = "test-service-key"
API_VERSION = "2024-10-01-preview"

#: Settings of fast_service that tests rely on.
FAST_MAX_FILE_BYTES = 8 * 1024 * 1024
FAST_TOKEN_QUOTA = 50_000
#: Settings of slow_service that tests rely on.
SLOW_ENGINE_DELAY = 0.25
SLOW_WINDOW_SECONDS = 4.0
#: Read timeout of the test clients: a live call on the real model can take a minute on two busy cores.
CLIENT_TIMEOUT = 180


def _start(tmp_path_factory: pytest.TempPathFactory, name: str, engine: str, extra: list[str]) -> Any:
    from localbatch.launcher import start_service

    data_dir = tmp_path_factory.mktemp(name)
    return start_service(data_dir=data_dir, api_key=API_KEY, engine=engine, extra_args=extra, wait=90)


@pytest.fixture(scope="session")
def fast_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The service on the synthetic engine with short timings (most tests)."""
    handle = _start(tmp_path_factory, "fast-service", "synthetic", [
        "--file-processing-delay", "0.3", "--validating-seconds", "0.2", "--finalizing-seconds", "0.1",
        "--max-file-bytes", str(FAST_MAX_FILE_BYTES), "--token-quota", str(FAST_TOKEN_QUOTA),
    ])
    yield handle
    handle.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def slow_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The synthetic engine slowed down, one request at a time, OpenAI batches expiring quickly."""
    handle = _start(tmp_path_factory, "slow-service", "synthetic", [
        "--engine-delay", str(SLOW_ENGINE_DELAY), "--max-concurrency", "1",
        "--file-processing-delay", "0.2", "--validating-seconds", "0.2", "--finalizing-seconds", "0.1",
        "--completion-window-seconds", str(SLOW_WINDOW_SECONDS),
    ])
    yield handle
    handle.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def llama_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The service with its default engine (the real model) and default settings."""
    handle = _start(tmp_path_factory, "llama-service", "llama", [])
    yield handle
    handle.stop()  # type: ignore[attr-defined]


def azure_client(handle: Any, *, api_key: str = API_KEY, api_version: str = API_VERSION) -> Any:
    """AzureOpenAI on the Azure classic routes (``/openai/...?api-version=``)."""
    from openai import AzureOpenAI

    return AzureOpenAI(azure_endpoint=handle.base_url, api_key=api_key,  # type: ignore[attr-defined]
                       api_version=api_version, max_retries=0, timeout=CLIENT_TIMEOUT)


def openai_client(handle: Any, *, api_key: str = API_KEY) -> Any:
    """OpenAI on the OpenAI routes (``/v1/...``)."""
    from openai import OpenAI

    return OpenAI(base_url=handle.base_url + "/v1", api_key=api_key, max_retries=0, timeout=CLIENT_TIMEOUT)  # type: ignore[attr-defined]


def azure_v1_client(handle: Any, *, api_key: str = API_KEY) -> Any:
    """OpenAI pointed at the Azure v1 routes (``/openai/v1/...``)."""
    from openai import OpenAI

    return OpenAI(base_url=handle.base_url + "/openai/v1", api_key=api_key, max_retries=0, timeout=CLIENT_TIMEOUT)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback calls must never go through a proxy configured in the environment."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# ----- helpers shared by the service tests --------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("completed", "failed", "expired", "cancelled")

#: The seed walkthrough's request data: its system message and its strict schema.
SEED_SYSTEM = "You are an AI assistant that provides facts about tall buildings."
SEED_FIELDS = ("BuildingName", "HeightInFeet", "City", "Country")
SEED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {name: {"type": "string"} for name in SEED_FIELDS},
    "required": list(SEED_FIELDS),
    "additionalProperties": False,
}


def seed_lines(model: str = "gpt-4o-batch", url: str = "/chat/completions") -> list[dict[str, Any]]:
    """The seed walkthrough's three requests (prompts from data/buildings.csv)."""
    with (REPO / "data" / "buildings.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [
        {"custom_id": row["custom_id"], "method": "POST", "url": url, "body": {
            "model": model,
            "messages": [{"role": "system", "content": SEED_SYSTEM}, {"role": "user", "content": row["prompt"]}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "building_info_schema", "schema": SEED_SCHEMA, "strict": True}},
        }}
        for row in rows
    ]


def chat_line(custom_id: str, *, model: str = "gpt-4o-batch", url: str = "/chat/completions",
              prompt: str = "Say hello", **body: Any) -> dict[str, Any]:
    """One batch input line with a strict schema (``body`` adds or overrides body keys)."""
    request: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "greeting", "strict": True, "schema": {
                "type": "object", "properties": {"text": {"type": "string"}},
                "required": ["text"], "additionalProperties": False}}},
    }
    request.update(body)
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": request}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    """Lines as JSONL bytes."""
    return "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8")


def raw(call: Any, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    """Call a ``with_raw_response`` method: (the raw JSON body, the parsed SDK object)."""
    response = call(*args, **kwargs)
    assert response.headers.get("x-request-id"), "every answer carries x-request-id"
    return json.loads(response.text), response.parse()


def check_model(model_cls: Any, data: dict[str, Any], *, extras: bool = False) -> Any:
    """Validate ``data`` strictly with an SDK type: required keys present, no unknown keys (unless ``extras``)."""
    missing = [name for name, f in model_cls.model_fields.items() if f.is_required() and name not in data]
    assert not missing, f"{model_cls.__name__} lacks required keys {missing}: {data}"
    if not extras:
        unknown = set(data) - set(model_cls.model_fields)
        assert not unknown, f"{model_cls.__name__} has unexpected keys {unknown}"
    return model_cls.model_validate(data, strict=True)


def check_file(data: dict[str, Any]) -> Any:
    """A File object: strict FileObject, except Azure's extra status value 'pending' (spec §2.2)."""
    from openai.types import FileObject

    if data.get("status") == "pending":
        assert data["status_details"] is None
        data = {**data, "status": "processed"}  # the SDK's Literal predates Azure's 'pending'
    return check_model(FileObject, data)


def check_batch(data: dict[str, Any]) -> Any:
    """A Batch object, strictly; counts and timestamps consistent with the status."""
    from openai.types import Batch

    batch = check_model(Batch, data)
    counts = data["request_counts"]
    assert counts["completed"] + counts["failed"] <= counts["total"] or counts["total"] == 0
    stamp = {"completed": "completed_at", "failed": "failed_at", "expired": "expired_at",
             "cancelled": "cancelled_at", "cancelling": "cancelling_at", "in_progress": "in_progress_at",
             "finalizing": "finalizing_at"}.get(data["status"])
    if stamp:
        assert isinstance(data[stamp], int), f"{stamp} not set on a {data['status']} batch"
    return batch


def wait_processed(client: Any, file_id: str, timeout: float = 20) -> Any:
    """Poll a file until it is no longer pending."""
    deadline = time.monotonic() + timeout
    while True:
        data, _ = raw(client.files.with_raw_response.retrieve, file_id)
        check_file(data)
        if data["status"] != "pending":
            return data
        assert time.monotonic() < deadline, f"file {file_id} still pending after {timeout} s"
        time.sleep(0.1)


def upload(client: Any, content: bytes, filename: str = "input.jsonl", purpose: str = "batch",
           wait: bool = True) -> dict[str, Any]:
    """Upload bytes as a file; by default wait until it is processed."""
    data, _ = raw(client.files.with_raw_response.create, file=(filename, content), purpose=purpose)
    check_file(data)
    return wait_processed(client, data["id"]) if wait else data


def wait_batch(client: Any, batch_id: str, until: tuple[str, ...] = TERMINAL, timeout: float = 60,
               seen: list[str] | None = None) -> dict[str, Any]:
    """Poll a batch (validating every answer) until its status is in ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        data, _ = raw(client.batches.with_raw_response.retrieve, batch_id)
        check_batch(data)
        if seen is not None and (not seen or seen[-1] != data["status"]):
            seen.append(data["status"])
        if data["status"] in until:
            return data
        assert time.monotonic() < deadline, f"batch {batch_id} still {data['status']} after {timeout} s"
        time.sleep(0.05)


def run_batch(client: Any, lines: list[dict[str, Any]] | bytes, *, endpoint: str = "/chat/completions",
              timeout: float = 60, **create: Any) -> dict[str, Any]:
    """Upload ``lines``, create a batch and wait for a terminal status."""
    f = upload(client, lines if isinstance(lines, bytes) else jsonl(lines))
    data, _ = raw(client.batches.with_raw_response.create, input_file_id=f["id"], endpoint=endpoint,
                  completion_window="24h", **create)
    check_batch(data)
    assert data["status"] == "validating"
    return wait_batch(client, data["id"], timeout=timeout)


def read_lines(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    """The JSONL lines of a result file ([] for None)."""
    if file_id is None:
        return []
    response = client.files.with_raw_response.content(file_id)
    assert response.headers["content-type"] == "application/octet-stream"
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def services_under(folder: Path) -> list[int]:
    """Pids of the ``python -m localbatch serve`` processes whose --data-dir is ``folder`` or lies below
    it (so a test finds only the services it started itself)."""
    prefix = str(Path(folder).resolve()) + os.sep
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = [w.decode(errors="replace") for w in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if "localbatch" in words and "serve" in words and "--data-dir" in words:
            if (words[words.index("--data-dir") + 1] + os.sep).startswith(prefix):
                pids.append(int(entry.name))
    return sorted(pids)


def end_service(pid: int) -> None:
    """Stop a service process found by `services_under` (SIGTERM, SIGKILL if it lingers), reaped if ours."""
    from localbatch.launcher import ServiceHandle

    ServiceHandle(base_url="", api_key=None, pid=pid).stop(timeout=15)


def listed_file_ids(handle: Any) -> set[str]:
    """Ids of every file the service lists, in either dialect (``files.list`` auto-paginated)."""
    ids = {f.id for f in azure_client(handle).files.list()}
    return ids | {f.id for f in openai_client(handle).files.list()}


def stored_file_names(data_dir: Path) -> set[str]:
    """Names of everything in the service's files folder (file bytes and anything a crash left)."""
    return {entry.name for entry in (Path(data_dir) / "files").iterdir()}
