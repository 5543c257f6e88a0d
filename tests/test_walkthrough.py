"""batchkit.walkthrough: the local environment, main()'s error paths and refresh_notebooks().

Everything runs in a temporary project root with tiny notebooks (a few seconds each): the real
walkthrough over notebooks 01-03 is covered by the notebook tests. main() starts a real local
service; every test makes sure it is gone at the end.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from batchkit import walkthrough
from batchkit.config import DEFAULT_LOCAL_KEY, connect, resolve_settings, service_answers
from conftest import API_KEY, end_service, services_under

#: Every variable main() changes in os.environ (restored after each test).
TOUCHED = (*walkthrough.FOREIGN_SETTINGS, "BATCH_BACKEND", "LOCALBATCH_URL", "LOCALBATCH_API_KEY")
FOREIGN_SECRET = "az-secret-walkthrough"


# ----- helpers ---------------------------------------------------------------------------------------


def _write_notebook(path: Path, *cells: Any, **metadata: Any) -> Path:
    notebook = new_notebook(cells=list(cells))
    notebook.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                              **metadata})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A temporary project root as the cwd (project_root() falls back to it); os.environ restored after.

    Yields the root; any service left under it is stopped at the end (none should be).
    """
    for name in TOUCHED:  # record each variable's state, so main()'s changes are undone
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.setenv(name, "")
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        left = services_under(tmp_path)
        for pid in left:
            end_service(pid)
    assert not left, f"services left running: {left}"


# ----- local_environment -----------------------------------------------------------------------------


def test_local_environment_points_connect_at_the_service(fast_service: Any) -> None:
    env = walkthrough.local_environment("http://127.0.0.1:9", "some-key")
    assert env == {"BATCH_BACKEND": "local", "LOCALBATCH_URL": "http://127.0.0.1:9", "LOCALBATCH_API_KEY": "some-key"}
    # it wins over a developer's Azure/OpenAI settings (BATCH_BACKEND is explicit)
    settings = resolve_settings({"AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com", "AZURE_OPENAI_API_KEY": "k",
                                 "OPENAI_API_KEY": "sk", **env})
    assert (settings.backend, settings.endpoint, settings.api_key) == ("local", "http://127.0.0.1:9", "some-key")
    # and connect() on it reaches the running service with its key
    conn = connect(env=walkthrough.local_environment(fast_service.base_url, API_KEY), start_local=False)
    assert conn.started_service is False
    assert conn.client.batches.list(limit=1) is not None
    assert API_KEY not in conn.describe() and API_KEY not in repr(conn)


# ----- main(): error paths ---------------------------------------------------------------------------


def test_main_reports_a_failing_notebook_and_stops_the_service(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", FOREIGN_SECRET)  # a developer's own key must not reach the kernels
    _write_notebook(
        project / "notebooks" / walkthrough.NOTEBOOKS[0],
        new_code_cell("import json, os\n"
                      "names = ['BATCH_BACKEND', 'LOCALBATCH_URL', 'LOCALBATCH_API_KEY', 'AZURE_OPENAI_API_KEY']\n"
                      "json.dump({n: os.environ.get(n) for n in names}, open('seen.json', 'w'))"),
        new_code_cell("raise RuntimeError('boom in the first notebook')"),
    )
    assert walkthrough.main(["--runs", "myruns"]) == 1
    printed = capsys.readouterr()

    assert re.search(r"Starting the local Batch service \(data in out/localbatch-\w+/\) \.\.\.", printed.out)
    found = re.search(r"Service at (http://127\.0\.0\.1:\d+); running notebooks 01 -> 03 into myruns/", printed.out)
    assert found, printed.out
    url = found.group(1)
    # the failure is reported on stderr with the error of the cell; no table, nothing reported as run
    assert (f"The walkthrough failed: notebooks/{walkthrough.NOTEBOOKS[0]} failed; its executed copy, with the "
            f"error in place, is myruns/{walkthrough.NOTEBOOKS[0]}.\nPapermillExecutionError") in printed.err
    assert "RuntimeError" in printed.err and "boom in the first notebook" in printed.err
    assert (project / "myruns" / walkthrough.NOTEBOOKS[0]).exists()
    assert walkthrough.NOTEBOOKS[1] not in printed.out and "Outcomes" not in printed.out
    assert FOREIGN_SECRET not in printed.out + printed.err

    # the kernel saw the local service and not the developer's key
    seen = json.loads((project / "notebooks" / "seen.json").read_text())
    assert seen == {"BATCH_BACKEND": "local", "LOCALBATCH_URL": url, "LOCALBATCH_API_KEY": DEFAULT_LOCAL_KEY,
                    "AZURE_OPENAI_API_KEY": ""}
    # the service was stopped and its data folder removed
    assert not service_answers(url, timeout=0.2)
    assert list((project / "out").glob("localbatch-*")) == []
    assert services_under(project) == []


def test_main_keep_service_leaves_it_running_and_says_where(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No notebooks folder at all: main() fails at once (no kernel); --keep-service keeps the service."""
    try:
        assert walkthrough.main(["--keep-service"]) == 1
        printed = capsys.readouterr()
        assert "The walkthrough failed: " in printed.err
        assert "01_author_requests.ipynb" in printed.err  # the missing notebook is named
        found = re.search(r"The service keeps running at (http://127\.0\.0\.1:\d+) \(pid (\d+)\)\.", printed.out)
        assert found, printed.out
        url, pid = found.group(1), int(found.group(2))
        assert service_answers(url)
        assert services_under(project / "out") == [pid]
        assert len(list((project / "out").glob("localbatch-*"))) == 1  # its data is kept too
    finally:
        for pid in services_under(project):
            end_service(pid)
    assert not service_answers(url, timeout=0.2)


# ----- refresh_notebooks -----------------------------------------------------------------------------


def test_refresh_notebooks_executes_in_place_in_order(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = project / "notebooks"
    stale = {"execution": {"iopub.execute_input": "2024-01-01T00:00:00.000Z", "shell.execute_reply": "2024-01-01T00:00:01.000Z"}}
    first = _write_notebook(
        folder / "a.ipynb",
        new_markdown_cell("# First"),
        new_code_cell("import os\nprint(os.getcwd())", execution_count=17, metadata={**stale, "tags": ["keep-me"]},
                      outputs=[nbformat.v4.new_output("stream", name="stdout", text="stale output\n")]),
        new_code_cell("open('order.txt', 'a').write('a')", execution_count=3, metadata=dict(stale)),
        new_code_cell("6 * 7"),
        widgets={"application/vnd.jupyter.widget-state+json": {"state": {"m": {}}, "version_major": 2, "version_minor": 0}},
    )
    second = _write_notebook(
        folder / "b.ipynb",
        new_code_cell("open('order.txt', 'a').write('b')"),
        new_code_cell("print(open('order.txt').read())"),
    )

    walkthrough.refresh_notebooks(project, ["a.ipynb", "b.ipynb"], timeout=120)

    assert capsys.readouterr().out == "  refreshed notebooks/a.ipynb\n  refreshed notebooks/b.ipynb\n"
    assert sorted(p.name for p in folder.iterdir()) == ["a.ipynb", "b.ipynb", "order.txt"]  # in place, no copies
    assert (folder / "order.txt").read_text() == "ab"  # a ran before b, both in the notebooks folder

    a = nbformat.read(first, as_version=4)
    nbformat.validate(a)
    code = [cell for cell in a.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == [1, 2, 3]
    assert [o["text"] for o in code[0].outputs] == [str(folder.resolve()) + "\n"]  # kernel started in notebooks/
    assert code[2].outputs[0]["data"]["text/plain"] == "42"
    assert all("execution" not in cell.metadata for cell in a.cells)
    assert code[0].metadata["tags"] == ["keep-me"]  # other cell metadata is kept
    assert "widgets" not in a.metadata and "papermill" not in a.metadata
    assert a.cells[0].source == "# First"

    b = nbformat.read(second, as_version=4)
    assert [cell.execution_count for cell in b.cells] == [1, 2]
    assert b.cells[1].outputs[0]["text"] == "ab\n"
    assert all("execution" not in cell.metadata for cell in b.cells)


def test_refresh_notebooks_stops_at_a_failing_notebook_and_leaves_it_unchanged(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nbclient.exceptions import CellExecutionError

    folder = project / "notebooks"
    bad = _write_notebook(folder / "bad.ipynb", new_code_cell("x = 1"), new_code_cell("raise ValueError('cell fails')"))
    later = _write_notebook(folder / "later.ipynb", new_code_cell("open('ran.txt', 'w').write('yes')"))
    before = {bad: bad.read_bytes(), later: later.read_bytes()}

    with pytest.raises(CellExecutionError, match="cell fails"):
        walkthrough.refresh_notebooks(project, ["bad.ipynb", "later.ipynb"], timeout=120)

    assert "refreshed" not in capsys.readouterr().out
    assert {path: path.read_bytes() for path in before} == before  # nothing half-executed is written
    assert not (folder / "ran.txt").exists()  # the later notebook did not run
