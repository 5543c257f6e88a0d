"""Helpers shared by the benchmark modules: median timing, peak memory in a child process, rows.

A row (one line of a table in docs/performance.md) is a dict with the keys of `ROW_KEYS`:
``group, name, ours_s, baseline, baseline_s, ratio, unit, target, met, peak_mib, notes``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = ("group", "name", "ours_s", "baseline", "baseline_s", "ratio", "unit", "target", "met", "peak_mib", "notes")


def median_seconds(run: Callable[[], Any], repeat: int = 5, *, warmup: int = 1, cpu: bool = False) -> float:
    """The median time of `repeat` calls of `run` (after `warmup` untimed calls): wall time, or
    with ``cpu`` this process's CPU time (steadier on a machine shared with other work)."""
    clock = time.process_time if cpu else time.perf_counter
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        start = clock()
        run()
        times.append(clock() - start)
    return statistics.median(times)


def compare(ours: Callable[[], Any], baseline: Callable[[], Any], repeat: int = 5, *,
            cpu: bool = True) -> tuple[float, float]:
    """Median times of `ours` and `baseline`, run alternately (ABAB...) after one warm-up each,
    so that a change of load on a shared machine hits both alike. CPU time by default."""
    clock = time.process_time if cpu else time.perf_counter
    ours()
    baseline()
    mine: list[float] = []
    base: list[float] = []
    for _ in range(repeat):
        for run, into in ((baseline, base), (ours, mine)):
            start = clock()
            run()
            into.append(clock() - start)
    return statistics.median(mine), statistics.median(base)


def row(group: str, name: str, *, ours_s: float | None, baseline: str, baseline_s: float | None,
        target: str = "", limit: float | None = None, unit: str = "time ratio (ours / baseline)",
        peak_mib: float | None = None, notes: str = "", higher_is_better: bool = False,
        ratio: float | None = None) -> dict[str, Any]:
    """One result row. `ratio` defaults to ours_s / baseline_s; with `limit`, `met` says whether the
    ratio is within it (at most `limit`, or at least it when `higher_is_better`)."""
    if ratio is None and ours_s is not None and baseline_s:
        ratio = ours_s / baseline_s
    met = None
    if limit is not None and ratio is not None:
        met = ratio >= limit if higher_is_better else ratio <= limit
    return {
        "group": group, "name": name,
        "ours_s": None if ours_s is None else round(ours_s, 4),
        "baseline": baseline,
        "baseline_s": None if baseline_s is None else round(baseline_s, 4),
        "ratio": None if ratio is None else round(ratio, 2),
        "unit": unit, "target": target, "met": met,
        "peak_mib": None if peak_mib is None else round(peak_mib, 1),
        "notes": notes,
    }


def peak_mib(target: str, *args: str, timeout: float = 1800) -> float:
    """Peak extra resident memory (MiB) of calling ``module:function(*args)`` in a fresh Python.

    The child imports the module, notes its resident set, calls the function, and reports the
    high-water mark minus that starting point (Linux ``/proc/self/status``: VmRSS, VmHWM), so
    imports and the interpreter itself are not counted.
    """
    code = (
        "import importlib, sys\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key + ':'):\n"
        "            return int(line.split()[1])\n"
        f"module, _, name = {target!r}.partition(':')\n"
        "function = getattr(importlib.import_module(module), name)\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = status('VmRSS')\n"
        f"function(*{list(args)!r})\n"
        "print((status('VmHWM') - before) / 1024)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"peak memory of {target} failed: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def print_rows(rows: list[dict[str, Any]]) -> None:
    """Rows as a Markdown table on stdout (a bench module run on its own)."""
    print(markdown_table(rows))


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of rows (without the group column)."""
    head = ["name", "ours s", "baseline", "baseline s", "ratio", "unit", "target", "met", "peak MiB", "notes"]
    keys = ["name", "ours_s", "baseline", "baseline_s", "ratio", "unit", "target", "met", "peak_mib", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def main_for(run: Callable[..., list[dict[str, Any]]], argv: list[str] | None = None) -> int:
    """What a bench module does when run on its own: ``--quick`` and ``--json FILE``; prints its rows."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick)
    print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0
