"""Compare GGUF models on the walkthrough's three building requests, through the llama engine.

For each model and each prompt variant (the walkthrough's system prompt as is, and with "Answer only
with JSON matching this schema: …" appended by the engine's ``schema_in_prompt``), it runs the three requests and records latency,
completion tokens, finish reason, schema validity and which fields are right.

    python benchmarks/compare_models.py                               # the default model only
    python benchmarks/compare_models.py --model gemma=PATH.gguf:gemma # plus another GGUF

``NAME=PATH`` adds a model; a ``:gemma`` suffix gives it the engine's Gemma chat template (for GGUF
files without one). ``--json FILE`` writes every measurement. ``--arrays`` also runs eight
extraction prompts whose schema has two string arrays, and counts the answers cut at ``max_tokens``
(small models tend to repeat array items until the cap).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from buildings import BUILDINGS, SCHEMA, field_scores, request_body  # noqa: E402

from localbatch.engines._common import schema_violation  # noqa: E402
from localbatch.engines.llama import LlamaEngine, default_model_path  # noqa: E402

def run_model(label: str, engine: LlamaEngine) -> list[dict[str, Any]]:
    """Run the six requests (three buildings x two prompt variants) and return one row each."""
    engine.load()
    rows = []
    engine.complete(request_body("shard"), model="warm-up")  # first call pages the weights in
    for hint in (False, True):
        engine.schema_in_prompt = hint
        for custom_id in BUILDINGS:
            body = request_body(custom_id)
            start = time.perf_counter()
            answer = engine.complete(body, model="gpt-4o-2024-08-06", custom_id=custom_id)
            seconds = time.perf_counter() - start
            choice = answer["choices"][0]
            content = choice["message"]["content"]
            valid = choice["finish_reason"] == "stop" and schema_violation(content, SCHEMA) is None
            scores = field_scores(custom_id, content)
            rows.append(
                {
                    "model": label,
                    "schema_hint": hint,
                    "custom_id": custom_id,
                    "seconds": round(seconds, 2),
                    "prompt_tokens": answer["usage"]["prompt_tokens"],
                    "completion_tokens": answer["usage"]["completion_tokens"],
                    "finish_reason": choice["finish_reason"],
                    "valid": valid,
                    "fields_right": sum(scores.values()),
                    "scores": scores,
                    "content": content,
                }
            )
    return rows


ARRAY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "facts": {"type": "array", "items": {"type": "string"}},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "facts", "tags"],
    "additionalProperties": False,
}
ARRAY_PROMPTS = (
    "Describe the Eiffel Tower.", "Summarize the plot of Hamlet.", "List facts about the Moon.",
    "Describe the city of Tokyo.", "Give facts about Python, the programming language.",
    "Describe a golden retriever.", "Facts about the Amazon river.", "Describe the Burj Khalifa.",
)


def run_arrays(label: str, engine: LlamaEngine) -> dict[str, Any]:
    """The eight array prompts on one model: how many answers ran to the token cap."""
    cut, tokens, seconds = 0, [], []
    for prompt in ARRAY_PROMPTS:
        body = {
            "messages": [{"role": "system", "content": "Extract structured facts."}, {"role": "user", "content": prompt}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "facts", "strict": True, "schema": ARRAY_SCHEMA}},
        }
        start = time.perf_counter()
        answer = engine.complete(body, model="m")
        seconds.append(time.perf_counter() - start)
        cut += answer["choices"][0]["finish_reason"] == "length"
        tokens.append(answer["usage"]["completion_tokens"])
    return {"model": label, "prompts": len(ARRAY_PROMPTS), "cut_at_max_tokens": cut,
            "median_completion_tokens": statistics.median(tokens), "median_s": round(statistics.median(seconds), 2),
            "max_tokens_cap": engine.max_tokens_cap}


def summary(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one line per model and prompt variant."""
    lines = [
        "| model | schema in prompt | median s/request | completion tokens | valid | fields right (of 12) |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["model"], r["schema_hint"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for model, hint in keys:
        group = [r for r in rows if r["model"] == model and r["schema_hint"] == hint]
        lines.append(
            f"| {model} | {'yes' if hint else 'no'} | {statistics.median(r['seconds'] for r in group):.2f} "
            f"| {', '.join(str(r['completion_tokens']) for r in group)} "
            f"| {sum(r['valid'] for r in group)}/{len(group)} | {sum(r['fields_right'] for r in group)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH[:gemma]")
    parser.add_argument("--json", type=Path, help="write every measurement to this file")
    parser.add_argument("--arrays", action="store_true", help="also count run-aways on an array schema")
    args = parser.parse_args(argv)
    models: list[tuple[str, Path, str | None]] = [("smollm2-135m-instruct", default_model_path(), None)]
    for spec in args.model:
        name, _, rest = spec.partition("=")
        path, _, template = rest.partition(":")
        if not name or not path:
            parser.error(f"--model wants NAME=PATH[:gemma], got {spec!r}")
        models.append((name, Path(path), template or None))
    rows: list[dict[str, Any]] = []
    arrays: list[dict[str, Any]] = []
    for label, path, template in models:
        engine = LlamaEngine(path, chat_template=template)
        rows += run_model(label, engine)
        if args.arrays:
            engine.schema_in_prompt = True
            arrays.append(run_arrays(label, engine))
    for r in rows:
        print(f"{r['model']:<24} hint={r['schema_hint']!s:<5} {r['custom_id']:<13} {r['seconds']:>5.2f}s "
              f"{r['finish_reason']:<6} valid={r['valid']!s:<5} right={r['fields_right']} {r['content']}")
    print()
    print(summary(rows))
    if arrays:
        print()
        print("| model | array prompts | cut at max_tokens | median completion tokens | median s/request |")
        print("|---|---|---|---|---|")
        for a in arrays:
            print(f"| {a['model']} | {a['prompts']} | {a['cut_at_max_tokens']} (cap {a['max_tokens_cap']}) "
                  f"| {a['median_completion_tokens']} | {a['median_s']} |")
    if args.json:
        args.json.write_text(json.dumps({"buildings": rows, "arrays": arrays}, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
