"""Command line: `python -m batchkit lint FILE ...`, `python -m batchkit run ...` and `python -m batchkit walkthrough`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"lint": "batchkit.lint", "run": "batchkit.run", "walkthrough": "batchkit.walkthrough"}
    if not args or args[0] not in commands:
        print("usage: python -m batchkit {lint,run,walkthrough} ...", file=sys.stderr)
        print("  lint FILE [--target azure|openai] [--json]   check a batch JSONL file before upload", file=sys.stderr)
        print("  run {list,status,advance} [--out-dir DIR]    show a run, or submit and poll it (notebook 02)", file=sys.stderr)
        print("  walkthrough [--keep-service]                 run notebooks 01-03 headless on the local service", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(commands[args[0]])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
