"""Parsing an output file into the typed results DataFrame, in one process.

The file: 100,000 chat-completion output lines with strict-schema answers (four fields, one an
integer), shaped as the service writes them. Baselines on the same file: the seed's idiom
(``split`` + ``json.loads`` + ``pandas.json_normalize``, then the answers normalised again) and a
plain loop of ``orjson.loads`` over the lines (the floor). Ours: ``parse_results(path,
inputs=, schema=)``, streaming, with every answer checked by the compiled validator and typed
columns; the notebooks' path, `ResultFiles` of a file's verified bytes (what `download_results`
and `Run.results` hand to ``parse_results``), streamed too; and ``parse_jsonl`` (all lines as
dicts) + ``parse_results`` on the lines, as notebook 03 used to call them.
Times are CPU seconds of this process, ours and the baseline run alternately. Peak memory in a
child process, against the file size. 10^6 lines go to Parquet in chunks
(``parse_results_to_parquet``).

    python benchmarks/bench_parse.py [--quick]
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import pandas as pd

from benchmarks._common import compare, main_for, median_seconds, peak_mib, row
from benchmarks.buildings import INTEGER_HEIGHT_SCHEMA

GROUP = "parse"
SCHEMA = INTEGER_HEIGHT_SCHEMA


def write_output(path: Path, n: int) -> None:
    """`n` output lines (ids task-0 .. task-n-1, in a shuffled order as real output files are)."""
    rng = random.Random(0)
    order = list(range(n))
    rng.shuffle(order)
    cities = ["New York City", "Dubai", "London", "Taipei", "Shanghai"]
    with path.open("wb") as out:
        for i in order:
            answer = {"BuildingName": f"Tower number {i}", "HeightInFeet": rng.randint(300, 3000),
                      "City": rng.choice(cities), "Country": "Somewhere"}
            line = {"id": f"batch_req_{i:032x}", "custom_id": f"task-{i}", "response": {
                "status_code": 200, "request_id": f"{i:032x}", "body": {
                    "id": f"chatcmpl-{i:029d}", "object": "chat.completion", "created": 1733000000,
                    "model": "gpt-4o-2024-08-06",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps(answer),
                                                         "refusal": None, "annotations": []},
                                 "logprobs": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 82, "completion_tokens": 27, "total_tokens": 109,
                              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                            "accepted_prediction_tokens": 0,
                                                            "rejected_prediction_tokens": 0}},
                    "service_tier": "default", "system_fingerprint": "fp_b705f0c291"}}, "error": None}
            out.write(orjson.dumps(line) + b"\n")


_INPUTS: dict[int, pd.DataFrame] = {}


def inputs(n: int | str) -> pd.DataFrame:
    """The input table of `n` rows (ids task-0 .. task-n-1), made once per size (not timed)."""
    n = int(n)
    if n not in _INPUTS:
        _INPUTS[n] = _make_inputs(n)
    return _INPUTS[n]


def _make_inputs(n: int) -> pd.DataFrame:
    return pd.DataFrame({"custom_id": [f"task-{i}" for i in range(n)], "prompt": ["Provide info"] * n})


def seed_idiom(path: str, n: int) -> pd.DataFrame:
    """split + json.loads + json_normalize (the lines, then the answers), joined to the inputs."""
    text = Path(path).read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.split("\n") if line]
    flat = pd.json_normalize(lines)
    answers = pd.json_normalize([json.loads(c[0]["message"]["content"]) for c in flat["response.body.choices"]])
    answers["custom_id"] = flat["custom_id"]
    return inputs(n).merge(answers, on="custom_id", how="left")


def orjson_loop(path: str) -> None:
    """The floor: orjson.loads each line of the file."""
    loads = orjson.loads
    with open(path, "rb") as fh:
        for raw in fh:
            loads(raw)


def ours(path: str, n: str | int) -> pd.DataFrame:
    """parse_results streaming from the path."""
    from batchkit.results import parse_results

    return parse_results(path, inputs=inputs(int(n)), schema=SCHEMA)


def notebook_path(path: str, n: str | int) -> pd.DataFrame:
    """The verified bytes of the file as `download_results` and `Run.results` hold them
    (`ResultFiles`), into parse_results."""
    from batchkit.results import ResultFiles, parse_results

    files = ResultFiles("batch", "completed", output_file_id="file-out", output_data=Path(path).read_bytes())
    return parse_results(files, inputs=inputs(int(n)), schema=SCHEMA)


def dict_lines_path(path: str, n: str | int) -> pd.DataFrame:
    """parse_jsonl of the bytes (every line a dict) + parse_results on the lines."""
    from batchkit.results import ResultFiles, parse_jsonl, parse_results

    files = ResultFiles("batch", "completed", output_lines=parse_jsonl(Path(path).read_bytes()))
    return parse_results(files, inputs=inputs(int(n)), schema=SCHEMA)


def to_parquet(path: str, n: str, target: str) -> None:
    """parse_results_to_parquet in chunks (the 10^6 row)."""
    from batchkit.results import parse_results_to_parquet

    parse_results_to_parquet(path, target, inputs=inputs(int(n)), schema=SCHEMA)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """The parse rows (see the module docstring)."""
    n = 20_000 if quick else 100_000
    repeat = 3 if quick else 5
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "output.jsonl"
        write_output(path, n)
        size_mib = path.stat().st_size / 2**20
        inputs(n)
        frame = ours(str(path), n)
        assert (frame["outcome"] == "ok").all() and str(frame["HeightInFeet"].dtype) == "Int64"
        mine, floor = compare(lambda: ours(str(path), n), lambda: orjson_loop(str(path)), repeat)
        nb, floor_nb = compare(lambda: notebook_path(str(path), n), lambda: orjson_loop(str(path)), repeat)
        dl, floor_dl = compare(lambda: dict_lines_path(str(path), n), lambda: orjson_loop(str(path)), repeat)
        seed = median_seconds(lambda: seed_idiom(str(path), n), 1 if quick else 3, cpu=True)
        peak = peak_mib("benchmarks.bench_parse:ours", str(path), str(n))
        nb_peak = peak_mib("benchmarks.bench_parse:notebook_path", str(path), str(n))
        dl_peak = peak_mib("benchmarks.bench_parse:dict_lines_path", str(path), str(n))
        seed_peak = peak_mib("benchmarks.bench_parse:seed_idiom", str(path), str(n))
        out.append(row(GROUP, f"{n:,} lines to the typed DataFrame vs the seed's idiom", ours_s=mine,
                       baseline="split + json.loads + json_normalize", baseline_s=seed, ratio=seed / mine,
                       unit="speed-up (baseline / ours)", target=">= 4x", limit=4.0, higher_is_better=True,
                       peak_mib=peak, notes=f"the seed's idiom peaks at {seed_peak:.0f} MiB"))
        out.append(row(GROUP, f"{n:,} lines to the typed DataFrame vs an orjson loop", ours_s=mine,
                       baseline="orjson.loads per line", baseline_s=floor, target="<= 2.5x", limit=2.5,
                       peak_mib=peak))
        out.append(row(GROUP, f"{n:,} lines: peak memory", ours_s=None, baseline="the file size",
                       baseline_s=None, ratio=peak / size_mib, unit="memory ratio (peak / file size)",
                       target="<= 3x", limit=3.0, peak_mib=peak, notes=f"file {size_mib:.1f} MiB"))
        out.append(row(GROUP, f"{n:,} lines, notebook path (download_results / Run.results: verified bytes "
                              "-> parse_results)", ours_s=nb, baseline="orjson.loads per line", baseline_s=floor_nb,
                       target="<= 2.5x", limit=2.5, peak_mib=nb_peak,
                       notes=f"peak {nb_peak / size_mib:.1f}x the file (the bytes are held, then streamed)"))
        out.append(row(GROUP, f"{n:,} lines as dicts (parse_jsonl + parse_results)", ours_s=dl,
                       baseline="orjson.loads per line", baseline_s=floor_dl, target="<= 2.5x", limit=2.5,
                       peak_mib=dl_peak, notes=f"peak {dl_peak / size_mib:.1f}x the file: every line is held "
                                               "as a dict (the parse alone is 1.5x the loop); pass the "
                                               "ResultFiles, the file or its bytes to stream"))
        if not quick:
            big = 1_000_000
            big_path = Path(tmp) / "big.jsonl"
            write_output(big_path, big)
            big_mib = big_path.stat().st_size / 2**20
            target = str(Path(tmp) / "big.parquet")
            import time

            start = time.perf_counter()
            to_parquet(str(big_path), str(big), target)
            seconds = time.perf_counter() - start
            big_peak = peak_mib("benchmarks.bench_parse:to_parquet", str(big_path), str(big), target)
            out.append(row(GROUP, f"{big:,} lines to Parquet in chunks", ours_s=seconds, baseline="the file size",
                           baseline_s=None, ratio=big_peak / big_mib, unit="memory ratio (peak / file size)",
                           target="within memory", limit=3.0, peak_mib=big_peak,
                           notes=f"file {big_mib:.0f} MiB; parse_results_to_parquet, 100,000-line chunks"))
    return out


if __name__ == "__main__":
    raise SystemExit(main_for(run))
