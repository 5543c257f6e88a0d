"""The llama engine: decode settings, the service's overhead over the bare engine, tokens per second.

Every setting runs in this one process on the same requests, interleaved round by round, so the
ratios hold when the machine is busy; the absolute seconds move with its load (the rows note the
load average). Requests: the walkthrough's three (``data/buildings.csv``, its system message and
strict schema) and fifty generated ones for the same schema (``buildings.generated_prompts``).

    python benchmarks/bench_llama.py             # 3 rounds, all 53 requests per setting
    python benchmarks/bench_llama.py --quick     # 1 round, the 3 walkthrough requests + 10 generated
    python benchmarks/bench_llama.py --json out.json

Settings (engine options of ``LlamaEngine``; the baseline is the engine as it was before these):
    flexible JSON, no cache     compact_json=False, prompt_cache="off"       (the previous default)
    compact JSON, no cache      compact_json=True,  prompt_cache="off"
    flexible JSON, prefix cache compact_json=False, prompt_cache="prefix"
    compact JSON, prefix cache  compact_json=True,  prompt_cache="prefix"    (the default)
    compact JSON, reuse cache   compact_json=True,  prompt_cache="reuse"
    ... parallel 2 / 4          the default with parallel=2 / 4, that many requests at once

Seconds per request are the wall time of a pass over a request set divided by its size (for the
parallel settings too), median over rounds. Tokens per second: completion tokens over that wall
time, against llama.cpp's own decode speed for the same answers (the ``timings`` it returns:
generated tokens over the time spent generating them, per sequence). "valid" counts answers that
end with ``stop`` and validate against the schema, over all rounds; "same" says whether every
round gave the same answers. The service row runs the 53 requests as one batch through the real
``openai`` SDK against the service in this process (its minimum ``validating``/``finalizing`` times
set to 0) and compares with the default setting's pass in the same round.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from .buildings import SCHEMA, SYSTEM_PROMPT, generated_prompts, prompt_body
except ImportError:  # run as a script: python benchmarks/bench_llama.py
    from buildings import SCHEMA, SYSTEM_PROMPT, generated_prompts, prompt_body  # type: ignore[no-redef]

from localbatch.engines._common import schema_violation
from localbatch.engines.llama import LlamaEngine

ROOT = Path(__file__).resolve().parents[1]
GROUP = "llama"
BASELINE = "flexible JSON, no cache"
DEFAULT = "compact JSON, prefix cache"


@dataclass(frozen=True)
class Setting:
    """One engine configuration to time."""

    name: str
    options: dict[str, Any]
    grammar: bool = True  # False: the request's response_format is dropped (free text)


SETTINGS: tuple[Setting, ...] = (
    Setting(BASELINE, {"compact_json": False, "prompt_cache": "off"}),
    Setting("compact JSON, no cache", {"compact_json": True, "prompt_cache": "off"}),
    Setting("flexible JSON, prefix cache", {"compact_json": False, "prompt_cache": "prefix"}),
    Setting(DEFAULT, {}),
    Setting("compact JSON, reuse cache", {"prompt_cache": "reuse"}),
    Setting("compact JSON, prefix cache, parallel 2", {"parallel": 2}),
    Setting("compact JSON, prefix cache, parallel 4", {"parallel": 4}),
)
# Rows of the former engine_throughput script, on the walkthrough's requests only.
EXTRA: tuple[Setting, ...] = (
    Setting("compact JSON, prefix cache, no schema hint", {"schema_in_prompt": False}),
    Setting("no grammar, no schema hint, no cache", {"schema_in_prompt": False, "prompt_cache": "off"}, grammar=False),
)


def walkthrough_prompts() -> list[tuple[str, str]]:
    """``(custom_id, prompt)`` rows of ``data/buildings.csv``."""
    with open(ROOT / "data" / "buildings.csv", newline="", encoding="utf-8") as handle:
        return [(row["custom_id"], row["prompt"]) for row in csv.DictReader(handle)]


def _body(prompt: str, *, grammar: bool = True) -> dict[str, Any]:
    body = prompt_body(prompt)
    body["messages"][0]["content"] = SYSTEM_PROMPT
    if not grammar:
        del body["response_format"]
    return body


@dataclass
class Pass:
    """One pass of one setting over one request set."""

    seconds: float
    completion_tokens: int
    valid: int
    answers: list[str | None]
    llama_tokens: float
    llama_ms: float


def run_pass(engine: LlamaEngine, prompts: list[tuple[str, str]], *, grammar: bool = True) -> Pass:
    """Send ``prompts`` through ``engine`` (``engine.parallel`` at a time) and time the pass."""
    before = engine.timings()

    def one(item: tuple[str, str]) -> dict[str, Any]:
        return engine.complete(_body(item[1], grammar=grammar), model="gpt-4o-batch", custom_id=item[0])

    start = time.perf_counter()
    if engine.parallel == 1:
        answers = [one(item) for item in prompts]
    else:
        with ThreadPoolExecutor(engine.parallel) as pool:
            answers = list(pool.map(one, prompts))
    seconds = time.perf_counter() - start
    after = engine.timings()
    contents = [a["choices"][0]["message"]["content"] for a in answers]
    valid = sum(
        a["choices"][0]["finish_reason"] == "stop" and schema_violation(c, SCHEMA) is None
        for a, c in zip(answers, contents)
    )
    return Pass(
        seconds=seconds,
        completion_tokens=sum(a["usage"]["completion_tokens"] for a in answers),
        valid=valid,
        answers=contents,
        llama_tokens=after["predicted_n"] - before["predicted_n"],
        llama_ms=after["predicted_ms"] - before["predicted_ms"],
    )


def _summary(passes: list[Pass], n: int, reference: list[Pass] | None = None) -> dict[str, Any]:
    per_request = statistics.median(p.seconds / n for p in passes)
    tokens_per_s = statistics.median(p.completion_tokens / p.seconds for p in passes)
    llama_tokens = sum(p.llama_tokens for p in passes)
    llama_ms = sum(p.llama_ms for p in passes)
    return {
        "s_per_request": per_request,
        "tokens_per_s": tokens_per_s,
        "llama_cpp_tokens_per_s": llama_tokens / llama_ms * 1000 if llama_ms else None,
        "completion_tokens_per_request": statistics.median(p.completion_tokens / n for p in passes),
        "valid": sum(p.valid for p in passes),
        "answers": n * len(passes),
        "same_every_round": all(p.answers == passes[0].answers for p in passes),
        "same_as_default": None if reference is None else sum(
            a == b for p, r in zip(passes, reference) for a, b in zip(p.answers, r.answers)),
    }


# -- the service in this process ----------------------------------------------------------------------
class _InProcessService:
    """The real FastAPI app on uvicorn in a thread of this process, answering with ``engine``."""

    def __init__(self, engine: LlamaEngine) -> None:
        import uvicorn

        from localbatch.app import create_app
        from localbatch.config import Settings
        from batchkit.local_service import free_port

        self._dir = tempfile.TemporaryDirectory(prefix="bench-llama-service-")
        port = free_port()
        settings = Settings(port=port, data_dir=Path(self._dir.name), api_key="bench-key", engine="llama",
                            file_processing_delay=0.0, validating_seconds=0.0, finalizing_seconds=0.0)
        app = create_app(settings, engine_factory=lambda _settings: engine)
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the in-process service did not start")
            time.sleep(0.02)
        from openai import OpenAI

        self.client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench-key", max_retries=0, timeout=120)

    def run_batch(self, prompts: list[tuple[str, str]]) -> tuple[float, list[str | None]]:
        """Upload, create, poll every 50 ms until done; seconds from create to completed, and the answers."""
        lines = [
            json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                        "body": _body(prompt)})
            for cid, prompt in prompts
        ]
        upload = self.client.files.create(file=("bench.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
        start = time.perf_counter()
        batch = self.client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                           completion_window="24h")
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            time.sleep(0.05)
            batch = self.client.batches.retrieve(batch.id)
        seconds = time.perf_counter() - start
        if batch.status != "completed" or not batch.output_file_id:
            raise RuntimeError(f"benchmark batch ended {batch.status}: {batch.errors}")
        by_id = {}
        for raw in self.client.files.content(batch.output_file_id).text.splitlines():
            line = json.loads(raw)
            by_id[line["custom_id"]] = line["response"]["body"]["choices"][0]["message"]["content"]
        return seconds, [by_id.get(cid) for cid, _ in prompts]

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._dir.cleanup()


# -- rows ----------------------------------------------------------------------------------------------
def _row(name: str, ours_s: float, baseline: str, baseline_s: float | None, target: str, met: bool | None,
         notes: str, unit: str = "time ratio (ours / baseline)", **extra: Any) -> dict[str, Any]:
    return {"group": GROUP, "name": name, "ours_s": round(ours_s, 4), "baseline": baseline,
            "baseline_s": None if baseline_s is None else round(baseline_s, 4),
            "ratio": None if not baseline_s else round(ours_s / baseline_s, 3), "unit": unit,
            "target": target, "met": met, "peak_mib": None, "notes": notes, **extra}


def run(quick: bool = False, rounds: int | None = None) -> list[dict[str, Any]]:
    """Time every setting on both request sets; one row per setting and set, plus the service row."""
    rounds = rounds or (1 if quick else 3)
    sets = {"walkthrough": walkthrough_prompts(), "generated": generated_prompts()[: 10 if quick else None]}
    everything = sets["walkthrough"] + sets["generated"]
    engines = {s.name: LlamaEngine(**s.options) for s in SETTINGS + EXTRA}
    for setting in SETTINGS + EXTRA:  # load each model server, page the weights in, save the prefix state
        engines[setting.name].complete(_body(sets["walkthrough"][0][1], grammar=setting.grammar), model="warm-up")
    service = _InProcessService(engines[DEFAULT])
    try:
        service.run_batch(sets["walkthrough"][:1])  # warm the service's own paths
        passes: dict[tuple[str, str], list[Pass]] = {}
        service_runs: list[tuple[float, float]] = []
        same_as_engine = True
        loads = []
        for _ in range(rounds):
            loads.append(os.getloadavg()[0])
            for setting in SETTINGS:
                for set_name, prompts in sets.items():
                    passes.setdefault((setting.name, set_name), []).append(run_pass(engines[setting.name], prompts))
            for setting in EXTRA:
                passes.setdefault((setting.name, "walkthrough"), []).append(
                    run_pass(engines[setting.name], sets["walkthrough"], grammar=setting.grammar))
            bare = run_pass(engines[DEFAULT], everything)
            served, answers = service.run_batch(everything)
            same_as_engine = same_as_engine and answers == bare.answers
            service_runs.append((served, bare.seconds))
    finally:
        service.stop()
    load_note = f"load avg {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores"

    rows: list[dict[str, Any]] = []
    for (name, set_name), runs in passes.items():
        n = len(sets[set_name])
        default_runs = passes.get((DEFAULT, set_name))
        summary = _summary(runs, n, default_runs)
        base = _summary(passes[(BASELINE, set_name)], n)
        valid_all = summary["valid"] == summary["answers"]
        if name == BASELINE:
            target, met = "baseline", None
        elif name == DEFAULT:
            target, met = "faster than the baseline, every answer valid, same every round", (
                summary["s_per_request"] < base["s_per_request"] and valid_all and summary["same_every_round"])
        else:
            target, met = "every answer valid", valid_all
        llama_tps = summary["llama_cpp_tokens_per_s"]
        notes = (f"{set_name} ({n} requests, {len(runs)} rounds); {summary['tokens_per_s']:.0f} tokens/s end to end"
                 + (f", llama.cpp decode {llama_tps:.0f} tokens/s" if llama_tps else "")
                 + f"; {summary['completion_tokens_per_request']:.1f} completion tokens/request"
                 + f"; valid {summary['valid']}/{summary['answers']}"
                 + f"; same answers every round: {'yes' if summary['same_every_round'] else 'no'}"
                 + (f"; answers equal to the default's: {summary['same_as_default']}/{summary['answers']}"
                    if summary["same_as_default"] is not None else "")
                 + f"; {load_note}")
        rows.append(_row(f"{name} [{set_name}]", summary["s_per_request"], f"{BASELINE} (previous default)",
                         base["s_per_request"], target, met, notes, setting=name, requests=set_name, **{
                             k: summary[k] for k in ("tokens_per_s", "llama_cpp_tokens_per_s", "valid", "answers",
                                                     "same_every_round", "same_as_default",
                                                     "completion_tokens_per_request")}))

    served = statistics.median(s for s, _ in service_runs)
    bare_s = statistics.median(b for _, b in service_runs)
    overhead = statistics.median(s / b for s, b in service_runs)
    n = len(everything)
    rows.append(_row(
        f"service batch through the SDK over the bare engine ({n} requests)", served / n,
        f"bare engine, {DEFAULT}, same requests, same round", bare_s / n, "<= 1.05x", overhead <= 1.05,
        f"median of per-round ratios {overhead:.3f} over {len(service_runs)} rounds; batch create -> completed, "
        f"polled every 50 ms; answers identical to the bare engine's: {'yes' if same_as_engine else 'no'}; {load_note}",
        unit="time ratio (service / bare engine)"))
    default = _summary(passes[(DEFAULT, "generated")], len(sets["generated"]))
    if default["llama_cpp_tokens_per_s"]:
        rows.append(_row(
            "generated tokens/s: end to end over llama.cpp's own decode figure", default["tokens_per_s"],
            "llama.cpp timings (predicted tokens / predicted ms) of the same answers",
            default["llama_cpp_tokens_per_s"], "report", None,
            f"{DEFAULT}, generated requests; the end-to-end figure also pays for prompt evaluation, "
            f"the prefix restore and the engine's bookkeeping; {load_note}",
            unit="throughput ratio (ours / llama.cpp decode)"))
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | requests | s/request | x baseline | tokens/s | llama.cpp decode tokens/s "
             "| completion tokens/request | valid | same every round | = default's answers |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "setting" not in r:
            continue
        llama = "" if r["llama_cpp_tokens_per_s"] is None else f"{r['llama_cpp_tokens_per_s']:.0f}"
        same = "" if r["same_as_default"] is None else f"{r['same_as_default']}/{r['answers']}"
        lines.append(f"| {r['setting']} | {r['requests']} | {r['ours_s']:.3f} | {r['ratio']:.2f} | {r['tokens_per_s']:.0f} "
                     f"| {llama} | {r['completion_tokens_per_request']:.1f} | {r['valid']}/{r['answers']} "
                     f"| {'yes' if r['same_every_round'] else 'no'} | {same} |")
    for r in rows:
        if "setting" not in r:
            lines.append(f"\n{r['name']}: {r['ours_s']:.4g} vs {r['baseline_s']:.4g} ({r['baseline']}), "
                         f"ratio {r['ratio']}, target {r['target']}, met {r['met']}; {r['notes']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print the rows as a table (and optionally write them as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round, 13 requests per setting")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, or 1 with --quick)")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    args = parser.parse_args(argv)
    rows = run(quick=args.quick, rounds=args.rounds)
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
