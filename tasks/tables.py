"""Tables shown to a person on the console (rich), from pandas frames."""

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
