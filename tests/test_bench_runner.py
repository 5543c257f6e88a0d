"""The benchmark runner's contract: modules found, rows checked, docs/performance.md rewritten only
between its markers. (The benchmarks themselves are scripts run by `make bench`, not tests.)"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from pathlib import Path

import pytest

from benchmarks import __main__ as runner
from benchmarks._common import ROW_KEYS, markdown_table, row


def test_every_bench_module_has_the_contract() -> None:
    names = runner.bench_modules()
    assert {"bench_authoring", "bench_lint", "bench_parse"} <= set(names)
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        signature = inspect.signature(module.run)
        assert "quick" in signature.parameters and signature.parameters["quick"].default is False, name
        source = Path(module.__file__).read_text()
        assert '__name__ == "__main__"' in source, f"{name} must also run on its own"


def test_row_ratio_and_met() -> None:
    slow = row("g", "n", ours_s=3.0, baseline="b", baseline_s=1.0, target="<= 2x", limit=2.0)
    assert set(slow) == set(ROW_KEYS) and slow["ratio"] == 3.0 and slow["met"] is False
    fast = row("g", "n", ours_s=1.0, baseline="b", baseline_s=5.0, ratio=5.0, limit=4.0, higher_is_better=True)
    assert fast["met"] is True
    assert row("g", "n", ours_s=None, baseline="", baseline_s=None)["met"] is None
    table = markdown_table([slow, fast])
    assert table.count("\n") == 3 and "| **no** |" in table and "| yes |" in table


def test_doc_keeps_hand_written_sections(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\nWritten by hand.\n\n{runner.BEGIN}\nold figures\n{runner.END}\n\n## Notes\nKept.\n")
    rows = [row("parse", "x", ours_s=1.0, baseline="b", baseline_s=2.0, target="<= 2x", limit=2.0)]
    section = runner.generated_section(rows, ["bench_broken: boom"], "python -m benchmarks --quick", "a machine")
    runner.write_doc(section, doc)
    text = doc.read_text()
    assert text.startswith("# Performance\n\nWritten by hand.\n\n") and text.endswith("\n\n## Notes\nKept.\n")
    assert "old figures" not in text and "### parse" in text and "bench_broken: boom" in text
    assert "`python -m benchmarks --quick`" in text and "a machine" in text
    bare = tmp_path / "new.md"
    runner.write_doc(section, bare)
    assert bare.read_text().count(runner.BEGIN) == 1


def test_a_failing_module_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    good = types.ModuleType("benchmarks.bench_zz_good")
    good.GROUP = "zz"  # type: ignore[attr-defined]
    good.run = lambda quick=False: [row("zz", "fine", ours_s=1.0, baseline="b", baseline_s=1.0)]  # type: ignore[attr-defined]
    bad = types.ModuleType("benchmarks.bench_zz_bad")
    bad.GROUP = "zz"  # type: ignore[attr-defined]

    def explode(quick: bool = False) -> list:
        raise RuntimeError("no model here")

    bad.run = explode  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.bench_zz_good", good)
    monkeypatch.setitem(sys.modules, "benchmarks.bench_zz_bad", bad)
    monkeypatch.setattr(runner, "bench_modules", lambda: ["bench_zz_bad", "bench_zz_good"])
    monkeypatch.setattr(runner, "LEGACY_SCRIPTS", {})
    rows, failures = runner.run_all(quick=True, only=["zz"])
    assert [r["name"] for r in rows] == ["fine"]
    assert failures and "no model here" in failures[0]


def test_only_keeps_the_other_groups_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = tmp_path / "performance.md"
    first = runner.generated_section(
        [row("lint", "l", ours_s=1.0, baseline="b", baseline_s=1.0), row("parse", "p1", ours_s=1.0, baseline="b", baseline_s=1.0)],
        [], "python -m benchmarks", "m")
    runner.write_doc(first, doc)
    keep = runner._old_groups(doc)
    assert set(keep) == {"lint", "parse"}
    second = runner.generated_section([row("parse", "p2", ours_s=2.0, baseline="b", baseline_s=1.0)], [],
                                      "python -m benchmarks --only parse", "m", keep=keep)
    runner.write_doc(second, doc)
    text = doc.read_text()
    assert "| p2 |" in text and "| p1 |" not in text and "| l |" in text and "from an earlier run" in text
