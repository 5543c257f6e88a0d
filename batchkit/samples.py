"""Sample inputs made here, never downloaded: a table of support tickets of any size.

`python -m batchkit.samples --rows 10000 --out out/big/tickets.csv` writes the table notebook 04
uses (the same rows for the same `--seed`): an id, a product, a channel and a ticket text to
classify. `TICKET_SCHEMA` is the schema the notebook asks for.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

PRODUCTS = ("router", "laptop", "phone", "printer", "smart watch", "headphones", "tablet", "camera")
CHANNELS = ("email", "chat", "phone", "web form")
OPENINGS = ("Hello,", "Hi team,", "Good morning,", "To whom it may concern,", "Hey,")
PROBLEMS = (
    "my {p} stopped charging after the last update",
    "the {p} I ordered arrived with a cracked screen",
    "I was billed twice for the {p}",
    "how do I reset the {p} to factory settings",
    "the {p} keeps dropping the connection every few minutes",
    "I want to return the {p}, it is not what I expected",
    "the {p} overheats when I use it for more than an hour",
    "can I get a discount on a second {p}",
    "the {p} manual is missing from the box",
    "my {p} makes a loud buzzing noise",
)
MOODS = ("Please help.", "This is urgent.", "Thanks in advance.", "I am very disappointed.", "No rush.")

#: The system message and the prompt template of notebook 04's requests.
TICKET_SYSTEM = "You sort customer support tickets. Answer with the category, an urgency from 1 to 5, the product and a short summary."
TICKET_TEMPLATE = "Ticket {ticket_id} about a {product}, received by {channel}: {text}"

#: What notebook 04 asks about each ticket.
TICKET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "defect", "how-to", "return", "other"]},
        "urgency": {"type": "integer", "description": "1 (low) to 5 (critical)"},
        "product": {"type": "string"},
        "summary": {"type": "string"},
    },
    "required": ["category", "urgency", "product", "summary"],
    "additionalProperties": False,
}


def tickets(rows: int, *, seed: int = 7) -> pd.DataFrame:
    """`rows` support tickets (`ticket_id`, `product`, `channel`, `text`), the same for the same seed."""
    if rows < 1:
        raise ValueError("rows must be at least 1")
    rng = random.Random(seed)
    width = len(str(rows))
    records = []
    for n in range(1, rows + 1):
        product = rng.choice(PRODUCTS)
        text = f"{rng.choice(OPENINGS)} {rng.choice(PROBLEMS).format(p=product)}. {rng.choice(MOODS)}"
        records.append({"ticket_id": f"T{n:0{width}d}", "product": product, "channel": rng.choice(CHANNELS),
                        "text": text})
    return pd.DataFrame(records, columns=["ticket_id", "product", "channel", "text"])


def write_tickets(path: str | Path, rows: int, *, seed: int = 7) -> Path:
    """Write `tickets(rows, seed=seed)` as CSV to `path` (folders created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tickets(rows, seed=seed).to_csv(target, index=False)
    return target


def read_tickets(path: str | Path) -> pd.DataFrame:
    """Read a table written by `write_tickets` (every column as text, as `inputs.read_table` does)."""
    from batchkit.inputs import read_table

    return read_table(path)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m batchkit.samples --rows N --out PATH [--seed S]`."""
    parser = argparse.ArgumentParser(prog="python -m batchkit.samples", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="how many tickets (default 10,000)")
    parser.add_argument("--out", default="out/big/tickets.csv", help="the CSV file to write")
    parser.add_argument("--seed", type=int, default=7, help="the same seed gives the same rows (default 7)")
    args = parser.parse_args(argv)
    path = write_tickets(args.out, args.rows, seed=args.seed)
    print(f"wrote {args.rows:,} tickets to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
