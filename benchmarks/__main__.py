"""``python -m benchmarks`` (``make bench``): run every benchmark and rewrite docs/performance.md.

Every ``benchmarks/bench_*.py`` module has ``run(quick: bool = False) -> list[dict]``; each dict is
one table row (keys in `benchmarks._common.ROW_KEYS`). Each module times our code and its baseline
in the same process (medians of several runs), so the ratios hold on a busy machine. The runner
prints the rows and replaces the generated part of docs/performance.md, between
``<!-- bench:begin -->`` and ``<!-- bench:end -->``, with the machine, versions, date, the command,
and one table per group; the hand-written sections around the markers are kept.

Scripts in this folder that predate the row contract (``engine_throughput.py``,
``compare_models.py``) are run as they are, with ``--json``, and their figures reported as rows
of the ``llama`` group, as long as they exist and no bench module has taken their place.

    python -m benchmarks                 # everything, full sizes
    python -m benchmarks --quick         # small sizes (a check that every benchmark runs)
    python -m benchmarks --only parse    # one group (repeatable); the other groups' tables stay
    python -m benchmarks --only llama --rounds 1   # fewer repeats where a benchmark takes them
    python -m benchmarks --no-write      # print only
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, ROW_KEYS, markdown_table, row

DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
#: Older scripts (no ``run()``) still reported, until a bench module replaces them.
LEGACY_SCRIPTS = {"engine_throughput": "llama", "compare_models": "llama"}


def bench_modules() -> list[str]:
    """The names of the ``bench_*`` modules of this folder, sorted."""
    return sorted(p.stem for p in Path(__file__).resolve().parent.glob("bench_*.py"))


def _legacy_rows(name: str, group: str, quick: bool) -> list[dict[str, Any]]:
    script = Path(__file__).resolve().parent / f"{name}.py"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        args = [sys.executable, str(script), "--json", str(out)]
        if quick and name == "engine_throughput":
            args += ["--rounds", "1", "--synthetic-rounds", "200"]
        done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, check=False, timeout=3600)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"{script.name} failed: {done.stderr.strip()[-1500:]}")
        data = json.loads(out.read_text())
    rows: list[dict[str, Any]] = []
    if name == "engine_throughput":
        items = data if isinstance(data, list) else data.get("engines", data.get("rows", []))
        base = next((r for r in items if "no grammar" in str(r.get("engine"))), None)
        for r in items:
            rate = r.get("requests_per_s")
            rows.append(row(group, f"engine: {r.get('engine')}", ours_s=r.get("median_s"),
                            baseline="llama, no grammar" if base else "", baseline_s=base and base.get("median_s"),
                            unit="time ratio (median s/request)",
                            notes=f"{rate} requests/s, {r.get('completion_tokens_per_request')} completion "
                                  "tokens/request (engine_throughput.py)"))
    else:
        items = data if isinstance(data, list) else data.get("buildings", data.get("rows", []))
        by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in items:
            if isinstance(r, dict) and "model" in r:
                by_key.setdefault((str(r["model"]), str(r.get("schema_hint"))), []).append(r)
        for (model, hint), group_rows in by_key.items():
            seconds = sorted(float(r.get("seconds", 0)) for r in group_rows)
            valid = sum(1 for r in group_rows if r.get("valid", r.get("schema_valid")))
            right = sum(int(r.get("fields_right") or 0) for r in group_rows)
            rows.append(row(group, f"model {model}, schema hint {hint}", ours_s=seconds[len(seconds) // 2],
                            baseline="", baseline_s=None, unit="median s/request",
                            notes=f"{valid}/{len(group_rows)} schema-valid answers, {right} fields right "
                                  "(compare_models.py)"))
    return rows


def run_all(*, quick: bool, only: list[str] | None, rounds: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every module's rows (and the failures, as text), in module order."""
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    groups_seen: set[str] = set()
    for name in bench_modules():
        module = importlib.import_module(f"benchmarks.{name}")
        group = getattr(module, "GROUP", None)
        if only and group is not None and group not in only:
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            takes_rounds = rounds is not None and "rounds" in inspect.signature(module.run).parameters
            found = module.run(quick=quick, rounds=rounds) if takes_rounds else module.run(quick=quick)
        except Exception:  # one broken benchmark must not hide the others
            failures.append(f"{name}: {traceback.format_exc(limit=3).strip().splitlines()[-1]}")
            continue
        for item in found:
            missing = [k for k in ROW_KEYS if k not in item]
            if missing:
                failures.append(f"{name}: a row lacks {missing}")
                continue
            if only and item["group"] not in only:
                continue
            rows.append(item)
            groups_seen.add(item["group"])
    for name, group in LEGACY_SCRIPTS.items():
        if not (Path(__file__).resolve().parent / f"{name}.py").exists() or group in groups_seen:
            continue
        if only and group not in only:
            continue
        print(f"== {name}.py", file=sys.stderr, flush=True)
        try:
            rows.extend(_legacy_rows(name, group, quick))
        except Exception as exc:
            failures.append(f"{name}.py: {exc}")
    return rows, failures


def _versions() -> str:
    names = ["orjson", "jsonschema_rs", "pandas", "pyarrow", "openai", "xllamacpp"]
    parts = [f"Python {platform.python_version()}"]
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        version = getattr(module, "__version__", None)
        if version is None:
            from importlib.metadata import PackageNotFoundError, version as dist_version

            try:
                version = dist_version(name.replace("_", "-"))
            except PackageNotFoundError:
                version = "?"
        parts.append(f"{name} {version}")
    return ", ".join(parts)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.1f} at the start".format(os.getloadavg()[0])
    return f"{cpu}, {os.cpu_count()} cores{memory}{load}"


def _old_groups(path: Path) -> dict[str, str]:
    """The group tables of the generated section already in the file (``### group`` blocks)."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return {}
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    blocks: dict[str, str] = {}
    for part in section.split("\n### ")[1:]:
        name, _, body = part.partition("\n")
        if name.startswith("Benchmarks that failed"):
            continue
        blocks[name.strip()] = body.strip("\n")
    return blocks


def generated_section(rows: list[dict[str, Any]], failures: list[str], command: str, machine: str,
                      *, keep: dict[str, str] | None = None) -> str:
    """The text between the markers: the run's facts and one table per group. With `keep`
    (``--only``), the tables of the other groups from the previous run stay, marked as such."""
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        "## Benchmark results",
        "",
        f"Generated by `{command}` on {when}.",
        f"Machine: {machine}. Versions: {_versions()}.",
        "Each ratio compares our code with its baseline measured in the same process (medians of "
        "several runs); `met` compares the ratio with the target. Peak memory is measured in a fresh "
        "child process (resident high-water mark minus the resident size after imports).",
        "",
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in rows:
        groups.setdefault(item["group"], []).append(item)
    for group, items in groups.items():
        lines += [f"### {group}", "", markdown_table(items), ""]
    for group, body in (keep or {}).items():
        if group not in groups:
            note = "" if "(from an earlier run" in body else "(from an earlier run: not re-run by this command)\n\n"
            lines += [f"### {group}", "", note + body, ""]
    if failures:
        lines += ["### Benchmarks that failed in this run", ""] + [f"- {f}" for f in failures] + [""]
    lines.append(END)
    return "\n".join(lines)


def write_doc(section: str, path: Path = DOC, *, only: list[str] | None = None) -> None:
    """Replace the generated section of docs/performance.md (appended when the markers are absent)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    parser.add_argument("--only", action="append", metavar="GROUP", help="run only this group (repeatable)")
    parser.add_argument("--rounds", type=int, metavar="N",
                        help="repeats for the benchmarks that take them (e.g. llama), instead of their default")
    parser.add_argument("--no-write", action="store_true", help="print the tables, leave docs/performance.md alone")
    args = parser.parse_args(argv)
    machine = _machine()
    rows, failures = run_all(quick=args.quick, only=args.only, rounds=args.rounds)
    command = "python -m benchmarks" + (" --quick" if args.quick else "") + (
        f" --rounds {args.rounds}" if args.rounds else "") + "".join(
        f" --only {g}" for g in args.only or [])
    keep = _old_groups(DOC) if args.only else None
    section = generated_section(rows, failures, command, machine, keep=keep)
    print(section)
    if not args.no_write:
        write_doc(section)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
