"""Progress while batches are polled: a widget in Jupyter, one short line per change elsewhere.

Two kinds of display: one batch (`TextReporter`, `WidgetReporter`, used by `jobs.poll_batch`) and a
whole run (`TextRunReporter`, `WidgetRunReporter`, used by `Run.advance`): a line per batch with its
status and counts, a total, and a note while the service does not answer.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO


class Reporter(Protocol):
    """What `poll_batch` calls: `update` after every retrieve, `close` once at the end."""

    def update(self, batch: Any, elapsed: float) -> None: ...

    def close(self) -> None: ...


def counts(batch: Any) -> tuple[int, int, int]:
    """(completed, failed, total) of a batch; missing counts read as 0."""
    rc = getattr(batch, "request_counts", None)
    return (
        int(getattr(rc, "completed", 0) or 0),
        int(getattr(rc, "failed", 0) or 0),
        int(getattr(rc, "total", 0) or 0),
    )


def status_line(batch: Any, elapsed: float) -> str:
    """`batch_… in_progress: 2/3 completed, 0 failed (12s)`: the headless progress line."""
    completed, failed, total = counts(batch)
    return f"{batch.id} {batch.status}: {completed}/{total} completed, {failed} failed ({elapsed:.0f}s)"


class TextReporter:
    """Writes one line per change of status or counts to `stream` (default: stdout)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._last: tuple[Any, ...] | None = None

    def update(self, batch: Any, elapsed: float) -> None:
        """Print a line if the status or the counts changed since the last call."""
        key = (batch.status, *counts(batch))
        if key != self._last:
            self._last = key
            print(status_line(batch, elapsed), file=self.stream or sys.stdout, flush=True)

    def outage(self, text: str) -> None:
        """Print a line about a retry while the service does not answer."""
        print(text, file=self.stream or sys.stdout, flush=True)

    def close(self) -> None:
        """Nothing to release."""


class WidgetReporter:
    """An ipywidgets display: a status label, a progress bar of completed+failed of total, elapsed time.

    The display also carries the status line as its ``text/plain`` form, refreshed on every change
    of status or counts: a headless run (papermill) stores the last line in the output notebook,
    where the widget itself cannot be shown.
    """

    def __init__(self) -> None:
        import ipywidgets as widgets
        from IPython.display import display

        self._label = widgets.HTML(value="<b>waiting for the first status…</b>")
        self._bar = widgets.IntProgress(value=0, min=0, max=1, description="requests", bar_style="info")
        self._counts = widgets.Label(value="")
        self.box = widgets.VBox([self._label, widgets.HBox([self._bar, self._counts])])
        self.line = "waiting for the first status…"
        self._last: tuple[Any, ...] | None = None
        self._handle = display(self, display_id=True)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The widget's own view, with the latest status line as the plain-text form."""
        bundle = self.box._repr_mimebundle_(include=include, exclude=exclude) or {}
        data = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        data["text/plain"] = self.line
        return data

    def update(self, batch: Any, elapsed: float) -> None:
        """Refresh the label, bar and counts from `batch`."""
        completed, failed, total = counts(batch)
        self._label.value = f"<b>{batch.id}</b>: {batch.status} after {elapsed:.0f}s"
        self._bar.max = max(total, 1)
        self._bar.value = min(completed + failed, self._bar.max)
        self._counts.value = f"{completed} completed, {failed} failed of {total}"
        if batch.status == "completed":
            self._bar.bar_style = "success" if failed == 0 else "warning"
        elif batch.status in ("failed", "expired", "cancelled"):
            self._bar.bar_style = "danger"
        key = (batch.status, completed, failed, total)
        if key != self._last:
            self._last = key
            self.line = status_line(batch, elapsed)
            if self._handle is not None:
                self._handle.update(self)

    def outage(self, text: str) -> None:
        """Show a retry while the service does not answer (cleared by the next update)."""
        self._counts.value = text
        self.line = text
        if self._handle is not None:
            self._handle.update(self)

    def close(self) -> None:
        """Leave the widget showing the final state."""


def run_line(rows: list[dict[str, Any]], elapsed: float) -> str:
    """`run-… : 2/3 batches finished, 6,900/10,000 requests done, 12 failed (40s)`: the run's status line."""
    if not rows:
        return f"no batches ({elapsed:.0f}s)"
    latest: dict[int, dict[str, Any]] = {}
    for row in rows:
        latest[row["chunk"]] = row
    finished = sum(1 for r in rows if r["status"] in _terminal())
    done = sum(r["completed"] + r["failed"] for r in rows if r["attempt"] == 1)
    failed = sum(r["failed"] for r in latest.values())
    total = sum(r["total"] for r in rows if r["attempt"] == 1)
    retries = sum(1 for r in rows if r["attempt"] > 1)
    extra = f", {retries} follow-up batch(es)" if retries else ""
    return (f"{rows[0]['run_id']}: {finished}/{len(rows)} batches finished{extra}, {done:,}/{total:,} requests done, "
            f"{failed:,} failed in the latest attempts ({elapsed:.0f}s)")


def batch_row_line(row: dict[str, Any]) -> str:
    """One batch of a run: `chunk 2/3 attempt 1 batch_… in_progress: 1,200/3,500 completed, 3 failed`."""
    who = row["batch_id"] or "(no batch yet)"
    return (f"chunk {row['chunk']}/{row['chunks']} attempt {row['attempt']} {who} {row['status']}: "
            f"{row['completed']:,}/{row['total']:,} completed, {row['failed']:,} failed")


def _terminal() -> frozenset[str]:
    from batchkit.jobs import TERMINAL_BATCH_STATUSES

    return TERMINAL_BATCH_STATUSES


class TextRunReporter:
    """Prints a line for each batch of a run whose status changes, and the run's line when anything does."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._seen: dict[tuple[int, int], tuple[Any, ...]] = {}
        self._last_terminal: int | None = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def update_run(self, rows: list[dict[str, Any]], elapsed: float) -> None:
        """Print the batches whose status changed (not every count), then the run's line if any did."""
        changed = False
        for row in rows:
            key = (row["chunk"], row["attempt"])
            state = (row["status"], row["batch_id"])
            if self._seen.get(key) != state:
                self._seen[key] = state
                self._print(batch_row_line(row))
                changed = True
        if changed:
            self._print(run_line(rows, elapsed))

    def outage(self, text: str) -> None:
        """Print a line about a retry while the service does not answer."""
        self._print(text)

    def close(self) -> None:
        """Nothing to release."""


class WidgetRunReporter:
    """An ipywidgets display of a run: its line, a bar of requests done, a table of its batches.

    Its plain-text form is the run's latest line, so a headless run (papermill) keeps the final state.
    """

    def __init__(self) -> None:
        import ipywidgets as widgets
        from IPython.display import display

        self._label = widgets.HTML(value="<b>starting…</b>")
        self._bar = widgets.IntProgress(value=0, min=0, max=1, description="requests", bar_style="info")
        self._note = widgets.Label(value="")
        self._table = widgets.HTML(value="")
        self.box = widgets.VBox([self._label, widgets.HBox([self._bar, self._note]), self._table])
        self.line = "starting…"
        self._last: str | None = None
        self._handle = display(self, display_id=True)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The widget's own view, with the latest run line as the plain-text form."""
        bundle = self.box._repr_mimebundle_(include=include, exclude=exclude) or {}
        data = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        data["text/plain"] = self.line
        return data

    def update_run(self, rows: list[dict[str, Any]], elapsed: float) -> None:
        """Refresh the line, the bar and the table of batches."""
        import html

        line = run_line(rows, elapsed)
        first = [r for r in rows if r["attempt"] == 1]
        total = sum(r["total"] for r in first)
        done = sum(r["completed"] + r["failed"] for r in first)
        self._label.value = f"<b>{html.escape(line)}</b>"
        self._bar.max = max(total, 1)
        self._bar.value = min(done, self._bar.max)
        self._note.value = ""
        if rows and all(r["status"] in _terminal() for r in rows):
            self._bar.bar_style = "success" if all(r["status"] == "completed" for r in rows) else "warning"
        cells = "".join(f"<tr><td>{html.escape(batch_row_line(r))}</td></tr>" for r in rows[-20:])
        self._table.value = f"<table>{cells}</table>"
        key = "|".join(f"{r['chunk']}.{r['attempt']}:{r['status']}:{r['completed']}:{r['failed']}" for r in rows)
        if key != self._last:
            self._last = key
            self.line = line
            if self._handle is not None:
                self._handle.update(self)

    def outage(self, text: str) -> None:
        """Show a retry while the service does not answer (cleared by the next update)."""
        self._note.value = text
        self.line = text
        if self._handle is not None:
            self._handle.update(self)

    def close(self) -> None:
        """Leave the widget showing the final state."""


def in_notebook() -> bool:
    """True inside a Jupyter kernel (also under papermill and nbval), False in a plain interpreter."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _make(kind: Any, widget: type, text: type, wants: str) -> Any:
    """The display for `kind`: "auto" (widget in Jupyter, text otherwise), "widget", "text", None, or an object."""
    if kind is None or kind == "none":
        return None
    if not isinstance(kind, str):
        return kind
    if kind == "auto":
        kind = "widget" if in_notebook() else "text"
    if kind == "widget":
        return widget()
    if kind == "text":
        return text()
    raise ValueError(f"progress={kind!r}: use 'auto', 'widget', 'text', None or an object with {wants}.")


def make_reporter(kind: str | Reporter | None = "auto") -> Reporter | None:
    """A reporter for `kind`: "auto" (widget in Jupyter, text otherwise), "widget", "text", None, or your own."""
    return _make(kind, WidgetReporter, TextReporter, "update()/close()")


def make_run_reporter(kind: Any = "auto") -> Any:
    """A run display for `kind`: "auto" (widget in Jupyter, text otherwise), "widget", "text", None,
    or your own object with `update_run(rows, elapsed)`, `outage(text)` and `close()`."""
    return _make(kind, WidgetRunReporter, TextRunReporter, "update_run()/outage()/close()")
