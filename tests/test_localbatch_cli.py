"""`python -m localbatch serve`: bad settings stop it before it listens, with the fix in the message;
the forward engine, set up from the command line, sends a batch on to another OpenAI-compatible
service (here a second localbatch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import API_KEY, azure_client, chat_line, read_lines, run_batch
from localbatch.cli import main
from localbatch.launcher import ServiceStartError, start_service


@pytest.mark.parametrize(
    "args,message",
    [
        (["--engine", "forward"], "pass --forward-url http://127.0.0.1:8000/v1"),
        (["--engine", "forward", "--forward-url", "localhost:9"], "must be an http:// or https:// URL"),
        (["--engine", "synthetic", "--model", "/no/such.gguf"], "--model only applies to the llama engine"),
        (["--engine", "synthetic", "--forward-url", "http://127.0.0.1:9/v1"], "--forward-url only applies to the forward engine"),
        (["--model", "/no/such.gguf"], "Model file not found: /no/such.gguf"),
        (["--engine", "synthetic", "--engine-option", "n_ctx=99"], "does not take option(s) n_ctx"),
        (["--host", "0.0.0.0", "--engine", "synthetic"], "without a key"),
    ],
)
def test_bad_settings_exit_2_before_listening(args: list[str], message: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("LOCALBATCH_API_KEY", "LOCALBATCH_MODEL", "LOCALBATCH_FORWARD_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--port", "1", "--data-dir", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_model_variable_left_set_does_not_stop_another_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from localbatch.cli import build_parser, settings_from_args

    monkeypatch.setenv("LOCALBATCH_MODEL", "/somewhere/else.gguf")
    settings = settings_from_args(build_parser().parse_args(["serve", "--engine", "synthetic", "--data-dir", str(tmp_path)]))
    assert "model_path" not in settings.engine_options


def test_forward_engine_from_the_command_line(fast_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBATCH_FORWARD_API_KEY", API_KEY)  # the upstream's key, kept off the command line
    front = start_service(data_dir=tmp_path / "front", api_key="front-key", engine="forward", wait=60,
                          extra_args=["--forward-url", f"{fast_service.base_url}/v1",
                                      "--engine-option", "forward_model=gpt-4o",
                                      "--validating-seconds", "0.1", "--finalizing-seconds", "0.1"])
    try:
        client = azure_client(front, api_key="front-key")
        batch = run_batch(client, [chat_line(f"fw-{i}") for i in range(3)], timeout=60)
        assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 3
        lines = read_lines(client, batch["output_file_id"])
        assert sorted(x["custom_id"] for x in lines) == ["fw-0", "fw-1", "fw-2"]
        for line in lines:
            body = line["response"]["body"]
            assert body["model"] == "gpt-4o-2024-08-06"  # reported as the front deployment's model
            assert body["system_fingerprint"] == "synthetic"  # answered by the upstream's engine
    finally:
        front.stop()


def test_a_wrong_upstream_key_fails_each_line_not_the_service(fast_service: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBATCH_FORWARD_API_KEY", "not-the-key")
    front = start_service(data_dir=tmp_path / "front", api_key="front-key", engine="forward", wait=60,
                          extra_args=["--forward-url", f"{fast_service.base_url}/v1", "--engine-option", "retries=0",
                                      "--validating-seconds", "0.1", "--finalizing-seconds", "0.1"])
    try:
        client = azure_client(front, api_key="front-key")
        batch = run_batch(client, [chat_line("fw-bad")], timeout=60)
        assert batch["status"] == "completed" and batch["request_counts"]["failed"] == 1
        (line,) = read_lines(client, batch["error_file_id"])
        assert line["response"]["status_code"] == 401
    finally:
        front.stop()


def test_start_service_reports_why_it_could_not_start(tmp_path: Path) -> None:
    with pytest.raises(ServiceStartError) as info:
        start_service(data_dir=tmp_path, api_key=None, engine="forward", wait=30)
    assert "exited with code 2" in str(info.value) and "--forward-url" in str(info.value)
