"""The batch-file lint (`python -m batchkit lint`, and the service's validation: the same code)
against an orjson parse of the same file, in one process.

The baseline reads the file line by line and only parses each line with orjson: what any tool
must do at least. The lint does that plus every batch and strict-schema rule. The file is the
walkthrough's building request with distinct custom_ids (one schema on every line, as authored
files have it). Times are CPU seconds of this process, ours and the baseline run alternately.
Peak memory is measured in a child process: it is bounded by the set of custom_ids (each with a
line number), not by the file.

    python benchmarks/bench_lint.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from benchmarks._common import compare, main_for, peak_mib, row
from benchmarks.buildings import request_body

GROUP = "lint"


def write_file(path: Path, lines: int, *, responses: bool = False) -> None:
    """`lines` building requests with distinct custom_ids and prompts."""
    body = request_body("shard")
    url = "/chat/completions"
    if responses:
        fmt = body.pop("response_format")
        body = {"model": body["model"], "input": body.pop("messages"),
                "text": {"format": {"type": "json_schema", **fmt["json_schema"]}}}
        url = "/v1/responses"
    key = "input" if responses else "messages"
    with path.open("wb") as out:
        for i in range(lines):
            line = {"custom_id": f"task-{i}", "method": "POST", "url": url,
                    "body": {**body, key: [body[key][0], {"role": "user", "content": f"Provide info about tower {i}"}]}}
            out.write(orjson.dumps(line) + b"\n")


def parse_only(path: str) -> int:
    """The baseline: orjson.loads every line, nothing else."""
    count = 0
    with open(path, "rb") as fh:
        for raw in fh:
            orjson.loads(raw)
            count += 1
    return count


def lint(path: str, endpoint: str | None = None) -> int:
    """The lint; returns the number of error findings (0 expected)."""
    from batchkit.lint import lint_batch_file

    return sum(f.severity == "error" for f in lint_batch_file(path, target="azure", endpoint=endpoint))


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The lint rows (see the module docstring)."""
    n = 20_000 if quick else 100_000
    repeat = 3 if quick else 5
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for responses in (False, True):
            path = Path(tmp) / ("responses.jsonl" if responses else "chat.jsonl")
            write_file(path, n, responses=responses)
            endpoint = "/v1/responses" if responses else "/chat/completions"
            assert lint(str(path), endpoint) == 0, "the generated file must lint clean"
            ours, base = compare(lambda: lint(str(path), endpoint), lambda: parse_only(str(path)), repeat)
            peak = peak_mib("benchmarks.bench_lint:lint", str(path), endpoint)
            base_peak = peak_mib("benchmarks.bench_lint:parse_only", str(path))
            kind = "Responses" if responses else "chat"
            out.append(row(GROUP, f"lint of {n:,} {kind} lines", ours_s=ours, baseline="orjson parse of the file",
                           baseline_s=base, target="<= 2x", limit=2.0, peak_mib=peak,
                           notes=f"{path.stat().st_size / 2**20:.1f} MiB file, {n / ours:,.0f} lines/s; the parse "
                                 f"alone peaks at {base_peak:.1f} MiB; memory grows with the id set only"))
    return out


if __name__ == "__main__":
    raise SystemExit(main_for(run))
