"""Plots of a run's results and of its batches over time (matplotlib).

Each function returns a matplotlib `Figure` that is already closed, so a notebook shows it exactly
once (as the cell's value) and a script can `fig.savefig(...)` it. Colours are fixed per outcome
and per batch phase, so the same run always looks the same.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

#: One colour per outcome (ok is green; the retryable failures warm; missing grey).
OUTCOME_COLOURS: dict[str, str] = {
    "ok": "#2e7d32",
    "invalid": "#8e24aa",
    "refusal": "#6d4c41",
    "truncated": "#f9a825",
    "content_filter": "#5e35b1",
    "http_error": "#c62828",
    "expired": "#ef6c00",
    "cancelled": "#546e7a",
    "missing": "#9e9e9e",
}
#: Colours of the phases of a batch in the timeline.
PHASE_COLOURS: dict[str, str] = {"validating": "#90caf9", "in_progress": "#1e88e5", "finalizing": "#0d47a1"}
#: Rows up to which token use is drawn per request (above it: a histogram).
PER_REQUEST_ROWS = 30


def _pyplot() -> Any:
    import matplotlib.pyplot as plt

    return plt


def _outcome_order(outcomes: pd.Series) -> list[str]:
    known = [name for name in OUTCOME_COLOURS if name in set(outcomes)]
    return known + sorted(set(outcomes) - set(known))


def outcomes_and_tokens(table: pd.DataFrame) -> Any:
    """Two panels: how many rows had each outcome, and the tokens each request used.

    Token use is a stacked bar per request (prompt and completion tokens) for up to 30 rows, and a
    histogram of tokens per request above that. Rows without usage (no answer) are left out of it.
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1.4]})
    counts = table["outcome"].value_counts()
    order = _outcome_order(table["outcome"])
    values = [int(counts.get(name, 0)) for name in order]
    bars = left.barh(order, values, height=0.6, color=[OUTCOME_COLOURS.get(name, "#607d8b") for name in order])
    left.set_ylim(len(order) - 0.5, -0.5)
    left.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3)
    left.set_title(f"Outcomes of {len(table):,} rows")
    left.set_xlabel("rows")
    left.set_xlim(0, max(values) * 1.25 if values else 1)
    used = table.dropna(subset=["prompt_tokens", "completion_tokens"])
    if used.empty:
        right.text(0.5, 0.5, "no token usage reported", ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    elif len(table) <= PER_REQUEST_ROWS:
        ids = used["custom_id"].astype(str)
        prompt = used["prompt_tokens"].astype(int)
        completion = used["completion_tokens"].astype(int)
        right.bar(ids, prompt, width=0.6, color="#90a4ae", label="prompt")
        right.bar(ids, completion, width=0.6, bottom=prompt, color="#1e88e5", label="completion")
        right.set_title("Tokens per request")
        right.set_ylabel("tokens")
        right.set_ylim(0, float((prompt + completion).max()) * 1.3)
        right.tick_params(axis="x", labelrotation=45 if len(ids) > 6 else 0)
        right.legend(loc="upper left", ncol=2, frameon=False)
    else:
        total = used["prompt_tokens"].astype(int) + used["completion_tokens"].astype(int)
        right.hist(total, bins=min(40, max(5, total.nunique())), color="#1e88e5")
        right.set_title(f"Tokens per request ({len(used):,} requests with usage)")
        right.set_xlabel(f"prompt + completion tokens (mean {used['prompt_tokens'].mean():.0f} + "
                         f"{used['completion_tokens'].mean():.0f})")
        right.set_ylabel("requests")
    fig.tight_layout()
    plt.close(fig)
    return fig


def chunk_timeline(run: Any, by_attempt: pd.DataFrame | None = None) -> Any:
    """The run's batches over time, one bar per chunk and attempt, and the outcomes of each attempt.

    Left: each batch's validating, in-progress and finalizing phases from the service's timestamps
    (seconds since the run's first batch was created), labelled with how it ended; a dotted line
    marks each time another process took over (a resume after an interrupted one). Right (when
    `by_attempt` is given, e.g. `run.outcomes_by_attempt()`): how many rows had each outcome in
    attempt 1, 2, ... (log scale, so a handful of failures shows next to thousands of `ok`).
    """
    plt = _pyplot()
    frame = run.timeline()
    panels = 2 if by_attempt is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(12 if panels == 2 else 8, 0.45 * len(frame) + 2.2),
                             gridspec_kw={"width_ratios": [1.5, 1]} if panels == 2 else None, squeeze=False)
    ax = axes[0][0]
    start = frame["created_at"].min()
    labels = []
    for position, row in enumerate(frame.itertuples()):
        labels.append(f"chunk {row.chunk} · attempt {row.attempt}")
        phases = {"validating": (row.created_at, row.in_progress_at),
                  "in_progress": (row.in_progress_at, row.finalizing_at if pd.notna(row.finalizing_at) else _end(row)),
                  "finalizing": (row.finalizing_at, _end(row))}
        for phase, (begin, end) in phases.items():
            if pd.isna(begin) or pd.isna(end) or end < begin:
                continue
            ax.barh(position, max((end - begin).total_seconds(), 0.15), left=(begin - start).total_seconds(),
                    height=0.6, color=PHASE_COLOURS[phase])
        finish = _end(row)
        x = (finish - start).total_seconds() if pd.notna(finish) and pd.notna(start) else 0.0
        ax.text(x, position, f"  {row.status} ({row.requests:,})", va="center", fontsize=8)
    for number, moment in enumerate(run.resumes()):
        if pd.isna(start) or moment < start:
            continue
        ax.axvline((moment - start).total_seconds(), color="#616161", linestyle=":", linewidth=1)
        ax.text((moment - start).total_seconds(), -0.8, " resumed" if number else " started", fontsize=8,
                color="#616161", va="bottom")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -1.2)
    ax.set_xlabel("seconds since the first batch was created")
    ax.set_title(f"Batches of {run.id}")
    from matplotlib.patches import Patch

    ax.legend([Patch(color=c) for c in PHASE_COLOURS.values()], list(PHASE_COLOURS), loc="upper center",
              bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False, fontsize=8)
    ax.margins(x=0.2)
    if by_attempt is not None:
        right = axes[0][1]
        counts = by_attempt.groupby(["attempt", "outcome"])["rows"].sum().unstack(fill_value=0)
        order = _outcome_order(pd.Series(list(counts.columns)))
        width = 0.8 / max(len(order), 1)
        for index, name in enumerate(order):
            xs = [a - 0.4 + width * (index + 0.5) for a in counts.index]
            values = counts[name].tolist()
            bars = right.bar(xs, values, width=width, color=OUTCOME_COLOURS.get(name, "#607d8b"), label=name)
            right.bar_label(bars, labels=[f"{v:,}" if v else "" for v in values], fontsize=7, padding=1)
        right.set_yscale("log")
        right.set_xticks(list(counts.index), [f"attempt {a}" for a in counts.index])
        right.set_ylabel("rows (log scale)")
        right.set_title("Outcomes of each attempt")
        right.legend(loc="upper right", frameon=False, fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _end(row: Any) -> Any:
    for name in ("completed_at", "expired_at", "cancelled_at", "failed_at"):
        value = getattr(row, name)
        if pd.notna(value):
            return value
    return pd.NaT
