"""The notebooks: README table, hygiene of the committed outputs, and a papermill run of 01 -> 03.

nbval (configured in pyproject.toml) compares the committed outputs cell by cell; these tests check
what nbval does not: that the outputs are clean, and that the sequence runs with other parameters.
"""

from __future__ import annotations

import ast
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from batchkit.walkthrough import NOTEBOOKS, run_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
PATHS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MACHINE_PATH = re.compile(r"(/work/|/home/|/tmp/|/Users/|/root/|/private/var/|[A-Z]:\\\\|site-packages|\.venv)")
SECRET = re.compile(r"(sk-[A-Za-z0-9]{8,}|api[_-]?key['\"]?\s*[:=]\s*['\"][^'\"]+|local-dev-key)", re.IGNORECASE)


def test_notebook_folder_matches_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| \[(\d\d_[a-z0-9_]+)\]\(notebooks/(\1)\.ipynb\) \|", readme, flags=re.MULTILINE)
    assert [name for name, _ in listed] == [p.stem for p in PATHS]
    assert tuple(p.name for p in PATHS) == NOTEBOOKS
    for path in PATHS:
        assert re.fullmatch(r"\d\d_[a-z]+(_[a-z0-9]+)+\.ipynb", path.name)


def _outputs_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        for key, value in output.get("data", {}).items():
            if key.startswith("text/") or key.endswith("json"):
                parts.append(value if isinstance(value, str) else json.dumps(value))
    return "".join(parts)


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_committed_outputs_are_clean(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "execution counts must be 1..n"
    for index, cell in enumerate(notebook.cells):
        assert cell.source.strip(), f"cell {index} is empty"
        assert "papermill" not in cell.metadata, f"cell {index} carries papermill metadata"
        assert "execution" not in cell.metadata, f"cell {index} carries execution timestamps"
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():  # nbval only honours a marker alone on its comment line
            if "NBVAL_" in line:
                assert re.fullmatch(r"#\s*NBVAL_[A-Z_]+", line.strip()), f"cell {index}: {line!r} is not a marker nbval reads"
        for output in cell.outputs:
            assert output.output_type != "error", f"cell {index} has an error output"
            assert output.get("name") != "stderr", f"cell {index} wrote to stderr: {output.get('text', '')[:200]}"
        text = _outputs_text(cell)
        assert not MACHINE_PATH.search(text), f"cell {index} shows a machine path: {MACHINE_PATH.search(text).group(0)}"
        assert not SECRET.search(text), f"cell {index} shows a key"
    assert "papermill" not in notebook.metadata


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_one_parameters_cell_of_annotated_literals(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    tree = ast.parse(tagged[0].source)
    assert tree.body
    for statement in tree.body:
        assert isinstance(statement, ast.AnnAssign), f"{ast.unparse(statement)}: annotate every parameter"
        value = statement.value.operand if isinstance(statement.value, ast.UnaryOp) else statement.value  # -1.0
        assert isinstance(value, ast.Constant), f"{ast.unparse(statement)}: literals only"
    markdown = " ".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert "small" in markdown and "Azure" in markdown  # says plainly that the local model is small
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert "def " not in cell.source and "class " not in cell.source, "logic belongs in batchkit"
            assert "sys.path" not in cell.source


@pytest.fixture()
def papermill_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A service of its own (synthetic engine: fast), so the nbval service's state is untouched."""
    from localbatch.launcher import start_service

    with tempfile.TemporaryDirectory(prefix="localbatch-papermill-") as data_dir:
        handle = start_service(data_dir=data_dir, api_key="pm-key", engine="synthetic")
        try:
            monkeypatch.setenv("BATCH_BACKEND", "local")
            monkeypatch.setenv("LOCALBATCH_URL", handle.base_url)
            monkeypatch.setenv("LOCALBATCH_API_KEY", "pm-key")
            yield handle.base_url
        finally:
            handle.stop()


def test_papermill_sequence_with_other_parameters(papermill_service: str, tmp_path: Path) -> None:
    table = tmp_path / "towers.csv"
    table.write_text("custom_id,prompt\ntower-a,Provide info about Taipei 101\ntower-b,Provide info about the CN Tower\n", encoding="utf-8")
    out = tmp_path / "out"
    common = {"out_dir": str(out)}
    first = {**common, "data_path": str(table), "jsonl_name": "towers.jsonl", "target": "openai", "live_deployment": "gpt-4o"}
    second = {**common, "poll_interval": 0.2, "max_interval": 0.5, "show_cancel": "no"}
    run_notebooks(ROOT, tmp_path / "runs", parameters={NOTEBOOKS[0]: first, NOTEBOOKS[1]: second, NOTEBOOKS[2]: common})

    from batchkit.run import Run

    run = Run.open(out)
    assert run.state == "finished" and run.manifest["inputs"]["path"] == str(table.resolve())
    assert (run.folder / "towers.jsonl").is_file()
    results = pd.read_csv(out / "results.csv")
    assert list(results["custom_id"]) == ["tower-a", "tower-b"]
    assert list(results["prompt"]) == ["Provide info about Taipei 101", "Provide info about the CN Tower"]
    assert set(results["outcome"]) == {"ok"}
    assert results[["BuildingName", "HeightInFeet", "City", "Country"]].notna().all().all()
    # The progress display's plain-text form, kept in the headless run, is the run's final line.
    polled = next(c for c in nbformat.read(tmp_path / "runs" / NOTEBOOKS[1], as_version=4).cells
                  if "run.advance(" in c.source)
    (shown,) = [o for o in polled.outputs if o.output_type == "display_data"]
    assert "application/vnd.jupyter.widget-view+json" in shown.data
    assert re.fullmatch(rf"{run.id}: 1/1 batches finished, 2/2 requests done, 0 failed in the latest attempts \(\d+s\)",
                        shown.data["text/plain"])
    ran = nbformat.read(tmp_path / "runs" / NOTEBOOKS[0], as_version=4)
    injected = [c for c in ran.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and str(table) in injected[0].source
    assert not list(out.glob("runs/*/*cancel-demo*"))  # show_cancel="no": no demo run


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_papermill_reads_every_parameter_without_a_warning(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each line of the parameters cell is one parameter papermill parses (no 'Unable to parse line'),
    and `papermill --help-notebook` lists every one with its type."""
    import subprocess
    import sys

    from papermill.translators import PythonTranslator

    notebook = nbformat.read(path, as_version=4)
    (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    names = [statement.target.id for statement in ast.parse(cell.source).body]
    with caplog.at_level("WARNING", logger="papermill"):
        parsed = PythonTranslator.inspect(cell)
    assert not [r.message for r in caplog.records], "papermill could not parse a parameter line"
    assert [p.name for p in parsed] == names
    assert all(p.inferred_type_name in ("str", "int", "float", "bool") for p in parsed)
    shown = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(path)],
                           capture_output=True, text=True, check=True).stdout
    for parameter in parsed:
        assert re.search(rf"^  {parameter.name}: {parameter.inferred_type_name} \(default ", shown, re.MULTILINE), parameter.name
