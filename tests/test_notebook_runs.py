"""The notebooks as a user runs them headless with papermill, against real local services.

What is counted is what the service itself lists (`files.list`, `batches.list`); what is failed is
papermill's own exit (an error raised in a cell). Each scenario gets a service of its own, so the
lists hold nothing but what the notebooks sent.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pandas as pd
import pytest

from batchkit.run import META_RUN, Run
from batchkit.walkthrough import NOTEBOOKS, NotebookFailed, local_environment, run_notebooks

ROOT = Path(__file__).resolve().parents[1]
NB01, NB02, NB03 = NOTEBOOKS[:3]
KEY = "nb-runs-key"
QUICK = {"poll_interval": 0.2, "max_interval": 0.5}


def start(tmp_path: Path, name: str, *extra: str) -> Any:
    from batchkit.local_service import start_local_service

    return start_local_service(data_dir=tmp_path / name, api_key=KEY, engine="synthetic", extra_args=[
        "--file-processing-delay", "0.1", "--validating-seconds", "0.1", "--finalizing-seconds", "0.1", *extra])


@pytest.fixture()
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh synthetic service, and the environment of the notebooks' kernels pointed at it."""
    handle = start(tmp_path, "service")
    for name, value in local_environment(handle.base_url, KEY).items():
        monkeypatch.setenv(name, value)
    yield handle
    handle.stop()


def lists(handle: Any) -> tuple[list[Any], list[Any]]:
    """Every batch upload and every batch the service lists."""
    client = openai.AzureOpenAI(azure_endpoint=handle.base_url, api_key=KEY, api_version="2024-10-01-preview")
    return list(client.files.list(purpose="batch")), list(client.batches.list(limit=100))


def run(tmp_path: Path, notebook: str, **parameters: Any) -> Path:
    """Run one notebook with papermill (kernels see this process's environment); its output path."""
    run_notebooks(ROOT, tmp_path / "executed", parameters={notebook: parameters}, notebooks=[notebook])
    return tmp_path / "executed" / notebook


def fails(tmp_path: Path, notebook: str, **parameters: Any) -> str:
    """Run a notebook that must fail; the error papermill reports."""
    with pytest.raises(NotebookFailed) as failed:
        run(tmp_path, notebook, **parameters)
    return str(failed.value)


# ----- done when: 01 -> 02 -> 02 again -> 03, one upload and one batch ----------------------------


def test_01_02_02_03_makes_one_upload_and_one_batch(service: Any, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    run(tmp_path, NB01, out_dir=out)
    run(tmp_path, NB02, out_dir=out, **QUICK)
    run(tmp_path, NB02, out_dir=out, **QUICK)
    run(tmp_path, NB03, out_dir=out)
    opened = Run.open(out)
    files, batches = lists(service)
    mine = [b for b in batches if b.metadata[META_RUN] == opened.id]
    assert len([f for f in files if f.filename.startswith(opened.id)]) == 1 and len(mine) == 1
    assert mine[0].status == "completed"
    # the cancel demo (on by default on the local backend) is a run of its own, also sent once
    assert len(files) == 2 and len(batches) == 2
    assert sorted(b.status for b in batches) == ["cancelled", "completed"]
    table = pd.read_csv(Path(out) / "results.csv")
    assert list(table["custom_id"]) == ["task-0", "task-1", "task-2"] and set(table["outcome"]) == {"ok"}
    assert set(table["batch_id"]) == {mine[0].id}

    # a new run whose 02 times out: 03 either refuses or reports that run's own batch with a result for
    # every row (it may have finished meanwhile), never the previous run's answers
    other = tmp_path / "other.csv"
    other.write_text("custom_id,prompt\nx-1,Provide info about the Flatiron Building\n", encoding="utf-8")
    prepared = run(tmp_path, NB01, out_dir=out, data_path=str(other)).read_text()
    new_id = Run.open(out).id
    assert new_id != opened.id and f"differ from the previous run {opened.id}" in prepared
    assert "PollTimeout" in fails(tmp_path, NB02, out_dir=out, timeout_s=0.2, show_cancel="no", **QUICK)
    try:
        run(tmp_path, NB03, out_dir=out)
    except NotebookFailed as refused:
        assert f"Run {new_id} is not finished" in str(refused)
        assert list(pd.read_csv(Path(out) / "results.csv")["custom_id"]) == ["task-0", "task-1", "task-2"]  # untouched
    else:
        reported = pd.read_csv(Path(out) / "results.csv")
        (new_batch,) = [b for b in lists(service)[1] if b.metadata[META_RUN] == new_id]
        assert list(reported["custom_id"]) == ["x-1"] and set(reported["batch_id"]) == {new_batch.id}
        assert set(reported["outcome"]) == {"ok"}


# ----- submit now, collect later; a killed kernel ---------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (children, grandchildren, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def test_an_interrupted_02_is_resumed_and_03_refuses_until_then(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """15 requests of 2 s each, one at a time: the batch runs for 30 s while the notebooks come and go."""
    handle = start(tmp_path, "slow", "--engine-delay", "2.0", "--max-concurrency", "1")
    try:
        for name, value in local_environment(handle.base_url, KEY).items():
            monkeypatch.setenv(name, value)
        out = str(tmp_path / "out")
        table = tmp_path / "fifteen.csv"
        table.write_text("custom_id,prompt\n" + "".join(f"r-{n},Provide info about tower {n}\n" for n in range(15)),
                         encoding="utf-8")
        run(tmp_path, NB01, out_dir=out, data_path=str(table))
        # submit now, collect later: 02 exits 0 saying how to collect
        submitted = run(tmp_path, NB02, out_dir=out, wait=False, show_cancel="no", **QUICK).read_text()
        assert "To collect it, run this notebook again with the same parameters" in submitted

        # 02 again, and its kernel killed mid-poll: papermill and the kernel get SIGKILL
        command = [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / NB02), str(tmp_path / "killed.ipynb"),
                   "-p", "out_dir", out, "-p", "show_cancel", "no", "-p", "poll_interval", "0.2",
                   "--cwd", str(ROOT / "notebooks")]
        process = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        manifest = Run.open(out).manifest_path
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and manifest.read_text().count("advancing in process") < 2:
            time.sleep(0.1)  # the first 02's kernel logged itself; the second one is the new kernel
        kernels = _descendants(process.pid)
        assert kernels, "papermill started no kernel"
        for pid in [process.pid, *kernels]:
            os.kill(pid, signal.SIGKILL)
        process.wait(10)
        time.sleep(0.5)
        assert all(not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
                   for pid in kernels)
        assert Run.open(out).state == "running"
        message = fails(tmp_path, NB03, out_dir=out)
        assert "RunNotFinished" in message and "is not finished" in message and "Run notebook 02 again" in message
        assert not (Path(out) / "results.csv").exists()

        run(tmp_path, NB02, out_dir=out, show_cancel="no", **QUICK)
        files, batches = lists(handle)
        assert len(files) == 1 and len(batches) == 1
        run(tmp_path, NB03, out_dir=out)
        results = pd.read_csv(Path(out) / "results.csv")
        assert list(results["custom_id"]) == [f"r-{n}" for n in range(15)]
        assert set(results["outcome"]) == {"ok"} and set(results["batch_id"]) == {batches[0].id}
    finally:
        handle.stop()


# ----- loud failures --------------------------------------------------------------------------------


def test_a_batch_failing_validation_fails_02_and_03(service: Any, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    run(tmp_path, NB01, out_dir=out, deployment="no-such-deployment")
    message = fails(tmp_path, NB02, out_dir=out, show_cancel="no", **QUICK)
    assert "RunFailed" in message and "failed validation" in message and "model_not_found" in message


def test_unresolved_rows_beyond_max_failed_fail_03_until_retried_or_allowed(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    faults = {"ids": {"http_error": ["task-1"]}, "http_status": 503}
    handle = start(tmp_path, "faulty", "--faults", json.dumps(faults))
    try:
        for name, value in local_environment(handle.base_url, KEY).items():
            monkeypatch.setenv(name, value)
        out = str(tmp_path / "out")
        run(tmp_path, NB01, out_dir=out)
        run(tmp_path, NB02, out_dir=out, show_cancel="no", **QUICK)
        message = fails(tmp_path, NB03, out_dir=out)
        assert "1 of 3 rows did not come back ok (http_error 1), more than max_failed=0" in message
        assert "run notebook 02 again with max_attempts above 1" in message
        saved = pd.read_csv(Path(out) / "results.csv")  # the table is saved before the check fails
        assert saved.set_index("custom_id").loc["task-1", "outcome"] == "http_error"

        run(tmp_path, NB02, out_dir=out, show_cancel="no", max_attempts=2, **QUICK)
        _, batches = lists(handle)
        assert len(batches) == 2  # the follow-up carries only the failed row (which fails again)
        done = run(tmp_path, NB03, out_dir=out, max_failed=1).read_text()
        assert "within max_failed=1" in done
        table = pd.read_csv(Path(out) / "results.csv").set_index("custom_id")
        assert table.loc["task-1", "attempts"] == 2 and table.loc["task-0", "attempts"] == 1
        assert table.loc["task-1", "history"] == '["http_error"]'
    finally:
        handle.stop()


# ----- your own data: the README's commands ---------------------------------------------------------


def readme_commands() -> list[str]:
    """The papermill commands of the README section "Your own data", in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines() if line.strip()]
    assert lines[0] == "mkdir -p runs", "the executed notebooks' folder is made first"
    return [line for line in lines[1:] if line.startswith(".venv/bin/papermill")]


@pytest.mark.parametrize(("schema_path", "backend"), [("batchkit.examples:ReviewInsight", "local"),
                                                   ("data/review_schema.json", "openai")])
def test_your_own_data_by_parameters_alone(service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           schema_path: str, backend: str) -> None:
    """The README's commands, with the model (Azure rules: the rating's bounds are dropped, so the
    synthetic answers break them and come back invalid) and with the JSON schema file on the OpenAI
    dialect (OpenAI rules keep the bounds, so the answers keep them and come back ok)."""
    import shlex

    if backend == "openai":
        monkeypatch.setenv("BATCH_BACKEND", "openai")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", service.base_url + "/v1")
    commands = readme_commands()
    assert [shlex.split(c)[1] for c in commands] == [f"notebooks/{n}" for n in (NB01, NB02, NB03)]
    out = tmp_path / "out"
    (tmp_path / "runs").mkdir()
    for command in commands:
        words = shlex.split(command)[1:]
        words = [schema_path if w == "batchkit.examples:ReviewInsight" else w for w in words]
        words = [str(tmp_path / w) if w.startswith("runs/") else w for w in words]
        words = [str(out) if (w == "out" and words[i - 1] == "out_dir") else w for i, w in enumerate(words)]
        # papermill's own command line, in this process (the same parsing of -p values as the shell command)
        from click.testing import CliRunner
        from papermill.cli import papermill as papermill_cli

        monkeypatch.chdir(ROOT)
        done = CliRunner().invoke(papermill_cli, [*words, "--cwd", str(ROOT / "notebooks")])
        assert done.exit_code == 0, (done.output[-3000:], done.exception)
    inputs = pd.read_csv(ROOT / "data" / "reviews.csv")
    table = pd.read_parquet(out / "reviews.parquet")
    assert list(table["custom_id"]) == list(inputs["review_id"])  # one row per input row, in input order
    assert list(table["review"]) == list(inputs["review"]) and list(table["product"]) == list(inputs["product"])
    opened = Run.open(out)
    assert opened.manifest["inputs"]["id_column"] == "review_id"
    assert opened.manifest["inputs"]["template"] == "Product: {product}. Review: {review}"
    assert opened.manifest["schema"]["source"] == schema_path
    original = opened.schema
    assert original["properties"]["rating"]["maximum"] == 5  # kept in the run, whatever the target drops
    shown = (tmp_path / "runs" / "01_reviews.ipynb").read_text()
    assert "removed unsupported" in shown and "constraint(s) dropped" in shown
    # typed from the original schema, kept so by Parquet
    assert str(table["rating"].dtype) == "Int64" and str(table["would_recommend"].dtype) == "boolean"
    assert isinstance(table["sentiment"].dtype, pd.CategoricalDtype)
    ok = table[table["outcome"] == "ok"]
    for record in ok[list(original["properties"])].to_dict(orient="records"):
        record = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in record.items()}
        jsonschema.validate(record, original)  # no ok row breaks a constraint of the original
    if backend == "local":
        invalid = table[table["outcome"] == "invalid"]
        assert len(invalid) >= 6, table["outcome"].value_counts()
        assert invalid["error"].str.contains("rating", regex=False).any()
    else:
        assert len(ok) == len(table)
