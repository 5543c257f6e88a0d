"""Progress of a batch while it is polled: a widget in Jupyter, one short line per change elsewhere."""

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


def make_reporter(kind: str | Reporter | None = "auto") -> Reporter | None:
    """A reporter for `kind`: "auto" (widget in Jupyter, text otherwise), "widget", "text", None, or your own."""
    if kind is None or kind == "none":
        return None
    if not isinstance(kind, str):
        return kind
    if kind == "auto":
        kind = "widget" if in_notebook() else "text"
    if kind == "widget":
        return WidgetReporter()
    if kind == "text":
        return TextReporter()
    raise ValueError(f"progress={kind!r}: use 'auto', 'widget', 'text', None or an object with update()/close().")
