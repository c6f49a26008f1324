"""How `cleanroom-client` prints: the options every command shares, and answers as a table, CSV or JSON.

An answer prints the same whichever way it arrives (a DataFrame, or the few plain rows of `list`, `audit head` and
`verify-audit-log`, which print without loading pandas); a preview prints as a person reads it, with its bars.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd

err = Console(stderr=True)
out = Console()


class Settings:
    """Connection options shared by every command."""

    target: str | None = None
    token: str | None = None
    ca: Path | None = None
    insecure: bool = False
    output: str = "table"
    progress: bool = True
    preview: bool = False
    within: float = 0.0
    typical_group: float = 0.0
    refresh_period: int | None = None
    with_members: tuple[str, ...] = ()


settings = Settings()


def _show(frame: pd.DataFrame, title: str = "") -> None:
    import pandas as pd

    if settings.output == "csv":
        sys.stdout.write(frame.to_csv(index=False))
        return
    if settings.output == "json":
        payload: dict[str, Any] = {"rows": json.loads(frame.to_json(orient="records", date_format="iso"))}
        payload.update({str(k): v for k, v in frame.attrs.items() if isinstance(v, (int, float, str, dict))})
        sys.stdout.write(json.dumps(payload, indent=1) + "\n")
        return
    if "reason" in frame.columns and "suppressed" in frame.columns:  # an answer: say why a cell was withheld
        frame = frame.drop(columns=["suppressed"] + ([] if frame["reason"].astype(bool).any() else ["reason"]))
    numeric = [pd.api.types.is_numeric_dtype(frame[column]) for column in frame.columns]
    cells = (("" if pd.isna(v) else _cell(v) for v in row) for row in frame.itertuples(index=False))
    _draw(title, [str(c) for c in frame.columns], numeric, cells)
    extras = {k: v for k, v in frame.attrs.items() if k in ("epsilon_spent", "epsilon_remaining", "audience") and v}
    if extras:
        out.print("  " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in extras.items()))


def _show_rows(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    """Rows of text, integers and booleans (None for a missing value) shown exactly as `_show` shows their frame.

    For the commands whose answer is a few plain values (`list`, `audit head`, `verify-audit-log`): building a frame
    would load pandas, 0.3 s of a command's start-up. Each column holds one type (or None), as a frame's would.
    """
    if settings.output == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([row.get(c) for c in columns] for row in rows)
        return
    if settings.output == "json":
        payload = {"rows": [{c: row.get(c) for c in columns} for row in rows]}
        sys.stdout.write(json.dumps(payload, indent=1) + "\n")
        return
    # A frame's column is numeric (right-aligned) when it holds numbers or booleans and no text or missing value.
    numeric = [bool(rows) and all(isinstance(row.get(c), (int, float)) for row in rows) for c in columns]
    _draw(title, columns, numeric, (("" if row.get(c) is None else _cell(row.get(c)) for c in columns) for row in rows))


def _cell(value: object) -> str:
    """A value present in a table's cell: a float to four significant digits, anything else as its text."""
    return f"{value:,.4g}" if isinstance(value, float) else str(value)


def _draw(title: str, columns: list[str], numeric: list[bool], rows: Iterable[Iterable[str]]) -> None:
    """A table on the console: numeric columns right-aligned, the others left."""
    table = Table(title=title or None)
    for column, right in zip(columns, numeric, strict=True):
        table.add_column(column, justify="right" if right else "left")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def preview_table(frame: pd.DataFrame, title: str, within: float = 0.0) -> Table:
    """A preview as a person reads it: measure, cell, ± bar, % of the typical value, the typical value.

    With `within`, the epsilon needed for that relative bar; a withheld cell's reason in place of its bar.
    """
    import pandas as pd

    dims = [d for d in frame.attrs.get("dimensions", []) if d in frame.columns]
    table = Table(title=title)
    for name in ("measure", "cell", "± bar (95%)", "% of typical", "typical value"):
        table.add_column(name, justify="left" if name in ("measure", "cell") else "right")
    if within:
        table.add_column(f"epsilon for ±{within:.0%}", justify="right")
    for _, row in frame.iterrows():
        cell = " × ".join(str(row[d]) for d in dims)
        if row["withheld"]:
            cells = [str(row["measure"]), cell, f"withheld: {row['reason']}", "", ""]
        else:
            relative = "" if pd.isna(row["relative_95"]) else f"±{row['relative_95']:.1%}"
            cells = [str(row["measure"]), cell, f"±{row['error_95']:,.4g}", relative, f"{row['typical']:,.4g}"]
        if within:
            needed = row.get("epsilon_needed")
            cells.append("" if row["withheld"] else "not in range" if pd.isna(needed) else f"{needed:.3g}")
        table.add_row(*cells)
    return table


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)
