"""Small report tables that read well both as text and in a notebook.

`ReportTable` wraps a pandas DataFrame for display: in Jupyter it renders as an HTML table whose
cells are never cut short (long messages wrap instead), as text (a terminal, papermill logs, a
notebook's ``text/plain`` output) it prints one block per row, and an empty table shows a sentence
such as "No findings." instead of a header with no rows. The DataFrame itself is `ReportTable.frame`.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

__all__ = ["ReportTable"]

_STYLE = (
    "<style>.batchkit-report td, .batchkit-report th {text-align: left; vertical-align: top; "
    "white-space: pre-wrap; word-break: break-word; max-width: 48em;}</style>"
)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return ""
    return str(value)


class ReportTable:
    """A DataFrame shown in full: HTML without truncation, text as one block per row.

    Args:
        frame: the rows to show.
        empty: the sentence shown when `frame` has no rows (e.g. ``"No findings."``).
        title: an optional first line (text) or caption (HTML).
        heading: columns joined on the first text line of each row block; the other non-empty
            columns follow as indented ``column: value`` lines. Default: the first column.
        text: a function rendering the whole text form instead (given the frame).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        *,
        empty: str,
        title: str | None = None,
        heading: Sequence[str] | None = None,
        text: Callable[[pd.DataFrame], str] | None = None,
    ) -> None:
        self.frame = frame.reset_index(drop=True)
        self.empty = empty
        self.title = title
        self.heading = list(heading) if heading is not None else list(frame.columns[:1])
        self._text = text

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def empty_table(self) -> bool:
        """True when there is nothing to show (the display is the `empty` sentence)."""
        return self.frame.empty

    def to_text(self) -> str:
        """The text form: the title, then one block per row (or the `empty` sentence)."""
        if self.frame.empty:
            return self.empty
        if self._text is not None:
            body = self._text(self.frame)
        else:
            blocks = []
            for record in self.frame.to_dict(orient="records"):
                head = "  ".join(_cell(record[c]) for c in self.heading if _cell(record[c]))
                rest = [f"    {c}: {_cell(v)}" for c, v in record.items() if c not in self.heading and _cell(v)]
                blocks.append("\n".join([head, *rest]))
            body = "\n".join(blocks)
        return f"{self.title}\n{body}" if self.title else body

    def to_html(self) -> str:
        """The HTML form: every cell in full (wrapped), or the `empty` sentence as a paragraph."""
        if self.frame.empty:
            return f"<p>{html.escape(self.empty)}</p>"
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.frame.columns)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in record) + "</tr>"
            for record in self.frame.itertuples(index=False, name=None)
        )
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f'{_STYLE}<table class="batchkit-report">{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return self.to_text()

    __str__ = __repr__
