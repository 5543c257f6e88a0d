"""Speed and memory of the batch-file lint against a plain parse of the same file, in one process.

The baseline reads the file line by line and only ``json.loads`` each line: what any tool must do
at least. The lint does that plus every batch and strict-schema rule. Both run on the same
generated files of the walkthrough's building request (the same schema on every line, as authored
files have it), so the ratio holds on a busy machine; peak memory is measured with tracemalloc in a
separate run.

    python benchmarks/lint_stream.py                      # 10,000 and 100,000 lines
    python benchmarks/lint_stream.py --lines 50000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from buildings import request_body  # noqa: E402

from batchkit.lint import lint_batch_file  # noqa: E402


def write_file(path: Path, lines: int) -> None:
    """``lines`` building requests with distinct custom_ids, as the walkthrough writes them."""
    body = request_body("shard")
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            line = {"custom_id": f"task-{i}", "method": "POST", "url": "/chat/completions", "body": body}
            out.write(json.dumps(line) + "\n")


def parse_only(path: Path) -> int:
    """The baseline: json.loads every line, nothing else."""
    count = 0
    with path.open("rb") as fh:
        for raw in fh:
            json.loads(raw)
            count += 1
    return count


def lint(path: Path) -> int:
    """The lint; returns the number of error findings (0 expected)."""
    return sum(f.severity == "error" for f in lint_batch_file(path, target="azure"))


def measure(run: Callable[[Path], int], path: Path) -> dict[str, Any]:
    """Seconds of one run, then the tracemalloc peak (MiB) of a second (tracing slows the code down)."""
    start = time.perf_counter()
    result = run(path)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    run(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": round(seconds, 3), "peak_mib": round(peak / 2**20, 2), "result": result}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, action="append", help="file sizes in lines (default 10,000 and 100,000)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lines in args.lines or [10_000, 100_000]:
            path = Path(tmp) / f"{lines}.jsonl"
            write_file(path, lines)
            base = measure(parse_only, path)
            linted = measure(lint, path)
            assert linted["result"] == 0, "the generated file must lint clean"
            rows.append({
                "lines": lines, "mib": round(path.stat().st_size / 2**20, 1),
                "parse_s": base["seconds"], "lint_s": linted["seconds"],
                "lint_lines_per_s": round(lines / linted["seconds"]),
                "time_x_parse": round(linted["seconds"] / base["seconds"], 1),
                "parse_peak_mib": base["peak_mib"], "lint_peak_mib": linted["peak_mib"],
            })
    print("| lines | file MiB | parse s | lint s | lint lines/s | lint time x parse | parse peak MiB | lint peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lines']:,} | {r['mib']} | {r['parse_s']} | {r['lint_s']} | {r['lint_lines_per_s']:,} "
              f"| {r['time_x_parse']} | {r['parse_peak_mib']} | {r['lint_peak_mib']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
