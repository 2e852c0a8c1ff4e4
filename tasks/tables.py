"""Tables shown to a person, from pandas frames: on the console (rich) or in Markdown."""

from __future__ import annotations

import pandas as pd
from rich.table import Table


def frame_table(title: str, frame: pd.DataFrame) -> Table:
    """A rich table of ``frame``'s columns and rows (values as text, no index)."""
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    return table


def _cell(value: object) -> str:
    """A table cell: floats to 3 decimals, or 2 significant digits where that shows 0.000."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.1e}" if 0 < abs(value) < 5e-4 else f"{value:.3f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame (index included) as a Markdown table."""
    frame = frame.reset_index() if frame.index.name else frame
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
