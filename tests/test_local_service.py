"""batchkit starts, finds and stops the local service as a process (it never imports localbatch);
`python -m localbatch stop` ends a service by its data folder or its address."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from batchkit.config import Connection, connect, resolve_settings
from batchkit.errors import BatchkitError
from batchkit.local_service import (
    LocalService,
    ServiceStartError,
    free_port,
    is_running,
    start_local_service,
    stop_local_service,
)
from conftest import REPO, end_service, services_under


def _localbatch_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "localbatch"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "localbatch":
            found.append(node.module)
    return found


def test_batchkit_never_imports_localbatch() -> None:
    offenders = {p.name: names for p in sorted((REPO / "batchkit").glob("*.py")) if (names := _localbatch_imports(p))}
    assert offenders == {}
    # and importing every batchkit module loads nothing of localbatch
    modules = sorted(p.stem for p in (REPO / "batchkit").glob("*.py") if p.stem != "__main__")
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module('batchkit' if m == '__init__' else 'batchkit.' + m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'localbatch'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_start_with_a_made_up_key_then_stop(tmp_path: Path) -> None:
    handle = start_local_service(data_dir=tmp_path, engine="synthetic", wait=60)
    try:
        assert isinstance(handle, LocalService) and handle.api_key and len(handle.api_key) >= 20
        assert handle.base_url.startswith("http://127.0.0.1:") and handle.is_running()
        # the key is known to the handle, never on the command line
        assert handle.api_key.encode() not in Path(f"/proc/{handle.pid}/cmdline").read_bytes()
        assert handle.openai_client(max_retries=0).batches.list().data == []
        assert handle.azure_client(max_retries=0).files.list().data == []
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=handle.base_url + "/v1", api_key="wrong", max_retries=0).batches.list()
        record = json.loads((tmp_path / "service.json").read_text())
        assert record["pid"] == handle.pid and record["url"] == handle.base_url
    finally:
        handle.stop()
    assert not handle.is_running() and not is_running(handle.base_url, timeout=0.3)
    assert not (tmp_path / "service.json").exists()  # a clean stop removes its record


def test_start_reports_a_service_that_exits(tmp_path: Path) -> None:
    with pytest.raises(ServiceStartError, match="exited with code 2"):
        start_local_service(data_dir=tmp_path, engine="forward", wait=30)


def _run_stop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localbatch", "stop", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_localbatch_stop_by_data_dir_and_by_url(tmp_path: Path) -> None:
    first = start_local_service(data_dir=tmp_path / "a", engine="synthetic", detached=True, wait=60)
    second = start_local_service(data_dir=tmp_path / "b", engine="synthetic", detached=True, wait=60)
    try:
        done = _run_stop("--data-dir", str(tmp_path / "a"))
        assert done.returncode == 0, done.stderr
        assert f"Stopped the local Batch service at {first.base_url} (pid {first.pid}" in done.stdout
        assert not is_running(first.base_url, timeout=0.3) and second.is_running()
        # the same from Python, by address
        said = stop_local_service(url=second.base_url)
        assert f"at {second.base_url} (pid {second.pid})" in said
        assert not is_running(second.base_url, timeout=0.3)
    finally:
        for pid in services_under(tmp_path):
            end_service(pid)
    # nothing left to stop: exit 1 with what was looked at
    done = _run_stop("--data-dir", str(tmp_path / "a"))
    assert done.returncode == 1 and "No running local service found" in done.stderr
    url = f"http://127.0.0.1:{free_port()}"
    done = _run_stop("--url", url)
    assert done.returncode == 1 and f"nothing answers {url}/healthz" in done.stderr
    with pytest.raises(BatchkitError, match="No running local service"):
        stop_local_service(url=url)


def test_a_stale_service_record_is_not_a_kill(tmp_path: Path) -> None:
    # a record left by a killed service names a pid that is gone (or reused by another program)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "service.json").write_text(json.dumps({"pid": sleeper.pid, "url": "http://127.0.0.1:9"}))
        done = _run_stop("--data-dir", str(tmp_path))
        assert done.returncode == 1 and "no longer running" in done.stderr
        assert sleeper.poll() is None  # not a localbatch process: left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_connect_says_how_to_stop_and_stops_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    env = {"BATCH_BACKEND": "local", "LOCALBATCH_URL": url, "LOCALBATCH_API_KEY": "stop-me-key"}
    try:
        conn = connect(env=env)
        assert conn.started_service
        assert f"python -m localbatch stop --url {url}" in capsys.readouterr().out
        assert f"at {url}" in conn.stop_service()
        assert not is_running(url, timeout=0.3)
        assert services_under(tmp_path / ".localbatch") == []
    finally:
        for pid in services_under(tmp_path):
            end_service(pid)


def test_live_model_comes_from_the_running_service(tmp_path: Path) -> None:
    handle = start_local_service(data_dir=tmp_path, engine="synthetic", wait=60, extra_args=[
        "--deployment", "batchy=globalbatch", "--deployment", "mini-live=standard"])
    try:
        settings = resolve_settings({"LOCALBATCH_URL": handle.base_url, "BATCH_DEPLOYMENT": "batchy"})
        assert Connection(client=None, settings=settings).live_model() == "mini-live"
    finally:
        handle.stop()
    # nothing answers: the service's default standard deployment
    settings = resolve_settings({"LOCALBATCH_URL": f"http://127.0.0.1:{free_port()}"})
    assert Connection(client=None, settings=settings).live_model() == "gpt-4o"


def test_the_default_standard_deployment_matches_the_service() -> None:
    from batchkit.config import DEFAULT_LOCAL_STANDARD
    from localbatch.config import DEFAULT_DEPLOYMENTS

    assert DEFAULT_LOCAL_STANDARD == next(d.name for d in DEFAULT_DEPLOYMENTS if d.kind == "standard")


def test_walkthrough_configured_uses_the_configured_backend_and_says_what_is_wrong(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchkit import walkthrough

    monkeypatch.setenv("BATCH_BACKEND", "azure")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "")
    assert walkthrough.main(["--configured"]) == 1
    err = capsys.readouterr().err
    assert "cannot start" in err and "AZURE_OPENAI_ENDPOINT is not set" in err
    # the local run's closing note says it was local and how to run against Azure
    assert "local Batch service" in walkthrough.LOCAL_RUN_NOTE and "--configured" in walkthrough.LOCAL_RUN_NOTE
