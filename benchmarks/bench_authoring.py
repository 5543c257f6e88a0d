"""Authoring + lint of 100,000 building requests (`build_requests` + `write_jsonl`), in one process.

Baselines, on the same table: "orjson alone" builds each line's dict and writes ``orjson.dumps``
of it, with no checks at all (the floor for any tool that writes JSONL from Python); "the seed's
idiom" does the same with ``json.dumps``. Ours builds the lines and lints every one (ids, url,
model, the strict schema once per distinct schema) while serialising it once with orjson.
Times are CPU seconds of this process, ours and the baseline run alternately.

    python benchmarks/bench_authoring.py [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import pandas as pd

from benchmarks._common import compare, main_for, median_seconds, peak_mib, row
from benchmarks.buildings import SCHEMA, SYSTEM_PROMPT

GROUP = "authoring"


def table(n: int) -> pd.DataFrame:
    """`n` rows with a custom_id and a prompt, as a user's CSV gives them."""
    return pd.DataFrame({
        "custom_id": [f"task-{i}" for i in range(n)],
        "prompt": [f"Provide info about tall building number {i} in its city" for i in range(n)],
    })


def _naive(rows: pd.DataFrame, path: Path, dumps: Any) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "building", "schema": SCHEMA, "strict": True}}
    with path.open("wb") as out:
        for custom_id, prompt in zip(rows["custom_id"].tolist(), rows["prompt"].tolist()):
            line = {"custom_id": custom_id, "method": "POST", "url": "/chat/completions", "body": {
                "model": "gpt-4o-batch",
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
                "response_format": fmt}}
            out.write(dumps(line) + b"\n")


def orjson_alone(rows: pd.DataFrame, path: Path) -> None:
    """The baseline: a dict per row and orjson.dumps, no checks."""
    _naive(rows, path, orjson.dumps)


def seed_idiom(rows: pd.DataFrame, path: Path) -> None:
    """The seed's way: a dict per row and json.dumps."""
    _naive(rows, path, lambda line: json.dumps(line).encode("utf-8"))


def ours(rows: pd.DataFrame, path: Path, api: str = "chat") -> None:
    """build_requests + write_jsonl (lint on)."""
    from batchkit import authoring

    lines = authoring.build_requests(rows, system=SYSTEM_PROMPT, schema=SCHEMA, model="gpt-4o-batch",
                                     name="building", api=api)  # type: ignore[arg-type]
    authoring.write_jsonl(lines, path, target="azure")


def streamed_one(rows: pd.DataFrame, path: Path) -> None:
    """iter_requests into write_jsonl (lint on): no list of lines is built."""
    from batchkit import authoring

    authoring.write_jsonl(authoring.iter_requests(rows, system=SYSTEM_PROMPT, schema=SCHEMA, model="gpt-4o-batch",
                                                  name="building"), path, target="azure")


def streamed(n: str, path: str) -> None:
    """iter_requests into write_jsonl, as files of at most 100,000 lines (Azure's limit): the lines
    never exist all at once (for the memory row)."""
    import itertools

    from batchkit import authoring

    rows = table(int(n))
    lines = authoring.iter_requests(rows, system=SYSTEM_PROMPT, schema=SCHEMA, model="gpt-4o-batch", name="building")
    for part in itertools.count():
        piece = itertools.islice(lines, 100_000)
        first = next(piece, None)
        if first is None:
            break
        authoring.write_jsonl(itertools.chain([first], piece), f"{path}.{part}", target="azure")


def listed(n: str, path: str) -> None:
    """build_requests then write_jsonl, for the memory row."""
    ours(table(int(n)), Path(path))


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The authoring rows (see the module docstring)."""
    n = 20_000 if quick else 100_000
    repeat = 3 if quick else 5
    rows = table(n)
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requests.jsonl"
        chat, base = compare(lambda: ours(rows, path), lambda: orjson_alone(rows, path), repeat)
        responses, base_r = compare(lambda: ours(rows, path, "responses"), lambda: orjson_alone(rows, path), repeat)
        stream, base_s = compare(lambda: streamed_one(rows, path), lambda: orjson_alone(rows, path), repeat)
        seed = median_seconds(lambda: seed_idiom(rows, path), max(1, repeat // 2), cpu=True)
        size = path.stat().st_size
        peak_list = peak_mib("benchmarks.bench_authoring:listed", str(n), str(path))
        out.append(row(GROUP, f"{n:,} chat requests authored + linted", ours_s=chat, baseline="orjson alone (no checks)",
                       baseline_s=base, target="<= 2x", limit=2.0, peak_mib=peak_list,
                       notes=f"{size / 2**20:.1f} MiB file; the seed's idiom (json.dumps) takes {seed:.2f} s "
                             f"({chat / seed:.2f}x of it)"))
        out.append(row(GROUP, f"{n:,} Responses requests authored + linted", ours_s=responses,
                       baseline="orjson alone (no checks)", baseline_s=base_r, target="<= 2x", limit=2.0))
        out.append(row(GROUP, f"{n:,} chat requests streamed (iter_requests -> write_jsonl), linted", ours_s=stream,
                       baseline="orjson alone (no checks)", baseline_s=base_s, target="<= 2x", limit=2.0,
                       notes="no list of lines is held, so no collector pass over it"))
        if not quick:
            big = 1_000_000
            big_path = str(Path(tmp) / "big.jsonl")
            peak = peak_mib("benchmarks.bench_authoring:streamed", str(big), big_path)
            written = sum(p.stat().st_size for p in Path(tmp).glob("big.jsonl.*")) / 2**20
            out.append(row(GROUP, f"{big:,} requests streamed (iter_requests -> write_jsonl, 10 files)", ours_s=None,
                           baseline="", baseline_s=None, unit="memory", target="the lines never all in memory",
                           peak_mib=peak,
                           notes=f"{written:.0f} MiB written; memory: the input table, its id and prompt lists, "
                                 "and one file's custom_ids"))
    return out


if __name__ == "__main__":
    raise SystemExit(main_for(run))
