"""Requests per second of the llama and synthetic engines on the walkthrough's building requests.

Every configuration runs in this one process on the same requests, so the ratios between them hold
even when the machine is busy; the absolute figures depend on the machine and its load.

    python benchmarks/engine_throughput.py                 # 3 rounds of the 3 buildings per configuration
    python benchmarks/engine_throughput.py --rounds 5 --json out.json

Configurations:
    llama: the default (grammar + schema hint in the system prompt);
    llama, no hint: grammar only, the walkthrough's prompt as is;
    llama, no grammar: neither (``response_format`` dropped): the raw speed baseline;
    synthetic: no model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from buildings import BUILDINGS, request_body  # noqa: E402

from localbatch.engines import create_engine  # noqa: E402
from localbatch.engines.llama import LlamaEngine  # noqa: E402


def measure(label: str, run: Callable[[str], dict[str, Any]], rounds: int) -> dict[str, Any]:
    """Time ``rounds`` passes over the three buildings, one request at a time."""
    seconds: list[float] = []
    tokens = 0
    start = time.perf_counter()
    for _ in range(rounds):
        for custom_id in BUILDINGS:
            t0 = time.perf_counter()
            answer = run(custom_id)
            seconds.append(time.perf_counter() - t0)
            tokens += answer["usage"]["completion_tokens"]
    wall = time.perf_counter() - start
    return {
        "engine": label,
        "requests": len(seconds),
        "requests_per_s": round(len(seconds) / wall, 3),
        "median_s": round(statistics.median(seconds), 4),
        "completion_tokens_per_request": round(tokens / len(seconds), 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the three buildings (default 3)")
    parser.add_argument("--synthetic-rounds", type=int, default=2000, help="passes for the synthetic engine")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)

    llama = create_engine("llama")
    assert isinstance(llama, LlamaEngine)
    plain = LlamaEngine(schema_in_prompt=False)  # shares the loaded model
    t0 = time.perf_counter()
    llama.load()
    load_s = time.perf_counter() - t0
    llama.complete(request_body("shard"), model="warm-up")  # pages the weights in

    def no_grammar(custom_id: str) -> dict[str, Any]:
        body = request_body(custom_id)
        del body["response_format"]
        return plain.complete(body, model="m")

    synthetic = create_engine("synthetic")
    rows = [
        measure("llama (grammar + schema hint, default)", lambda c: llama.complete(request_body(c), model="m"), args.rounds),
        measure("llama, grammar, no hint", lambda c: plain.complete(request_body(c), model="m"), args.rounds),
        measure("llama, no grammar, no hint", no_grammar, args.rounds),
        measure("synthetic", lambda c: synthetic.complete(request_body(c), model="m", custom_id=c), args.synthetic_rounds),
    ]
    baseline = rows[2]["requests_per_s"]
    for row in rows:
        row["vs_no_grammar"] = round(row["requests_per_s"] / baseline, 2)
    print(f"model load: {load_s:.2f} s")
    print("| engine | requests | requests/s | median s/request | completion tokens/request | x no-grammar llama |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['requests']} | {r['requests_per_s']} | {r['median_s']} "
              f"| {r['completion_tokens_per_request']} | {r['vs_no_grammar']} |")
    if args.json:
        args.json.write_text(json.dumps({"load_s": load_s, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
