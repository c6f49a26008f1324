"""A member's own files (CSV, Parquet, JSON) read with DuckDB's readers, for the command line.

DuckDB sniffs a CSV's dialect and column types, dates and timestamps included, so an event table's time column
arrives as a timestamp rather than text. Identifier and key columns are read as text whatever they look like: a
phone number's leading zero or a customer number's zeros must survive. Types are sniffed from the whole file, not
its first rows: from a sample, DuckDB would type a column BIGINT and then round a 12.5 further down to 13 without a
word. A value that cannot be read gets an error naming the file, line, column and value, and how to fix it.
Time columns a frame holds as text (a CSV read by pandas) are parsed to timestamps by `parse_time_column`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

    from .policy import Policy

#: File name endings and DuckDB's reader for each.
READERS = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "tsv",
    ".txt": "txt",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
}


class FileReadError(ValueError):
    """A file could not be read as a table; the message names the file, where it failed and the fix."""


def _kind(path: Path) -> str:
    name = path.name.lower()
    for ending in sorted(READERS, key=len, reverse=True):
        if name.endswith(ending):
            return READERS[ending]
    if path.is_dir():
        return "parquet"
    raise FileReadError(f"{path}: read CSV, Parquet or JSON files ({', '.join(READERS)}); this one's type is unknown")


def _explain(path: Path, exc: duckdb.Error) -> FileReadError:
    text = str(exc)
    line = re.search(r"Line: (\d+)", text)
    column = re.search(r'converting column "([^"]+)"', text)
    value = re.search(r'Could not convert string "([^"]*)" to \'?(\w+)', text)
    if column and value:
        where = f"line {line.group(1)}, " if line else ""
        return FileReadError(
            f"{path}: {where}column {column.group(1)!r}: cannot read {value.group(1)!r} as {value.group(2)} (the "
            f"type the rest of the column has); fix that value, or leave it empty if it is unknown"
        )
    return FileReadError(f"{path}: {text.splitlines()[0]}")


def _ragged(path: Path, kind: str) -> FileReadError | None:
    """The first line whose field count differs from the header's (only looked for once reading failed)."""
    if kind not in ("csv", "tsv") or path.name.lower().endswith(".gz"):
        return None
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f, delimiter="," if kind == "csv" else "\t")
        header = next(rows, [])
        for number, row in enumerate(rows, start=2):
            if row and len(row) != len(header):
                return FileReadError(
                    f"{path}: line {number} has {len(row)} fields, the header {len(header)}; quote values that "
                    f'contain the delimiter ("a, b") and give every line the header\'s columns'
                )
    return None


def read_table(path: Path, text_columns: Collection[str] = ()) -> pd.DataFrame:
    """The file at `path` as a DataFrame; `text_columns` (identifiers, keys) are read as text in a CSV or JSON."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    import duckdb  # here, not at import: the command line starts without it

    kind = _kind(path)
    con = duckdb.connect()
    try:
        if kind == "parquet":
            target = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
            return con.read_parquet(target).df()
        if kind == "json":
            frame = con.read_json(str(path)).df()
            for column in set(text_columns) & set(frame.columns):
                frame[column] = frame[column].astype("string")
            return frame
        # The delimiter is the file type's: a sniffer free to choose would read a ragged CSV as one column.
        sep = {"csv": ",", "tsv": "\t"}.get(kind)
        header = con.read_csv(str(path), sample_size=1, sep=sep).columns
        dtype = {c: "VARCHAR" for c in header if c in set(text_columns)}
        return con.read_csv(str(path), dtype=dtype, sample_size=-1, sep=sep).df()
    except duckdb.Error as exc:
        raise (_ragged(path, kind) or _explain(path, exc)) from None
    finally:
        con.close()


def parse_time_column(frame: pd.DataFrame, table: str, policy: Policy, time_format: str | None) -> pd.DataFrame:
    """`frame` with the policy's time column of event table `table` parsed to timestamps when it holds text.

    A CSV brings dates as text, which the server refuses; the error names the column, a value that failed and the
    fix. Columns already of a date or time type are left as they are.
    """
    import pandas as pd  # here, not at import: the SDK's client imports this module, and most commands need no table

    columns = {spec.time for spec in policy.tables.values() if spec.table == table and spec.time}
    out = frame
    for column in sorted(columns & set(frame.columns)):
        if not (pd.api.types.is_object_dtype(frame[column]) or pd.api.types.is_string_dtype(frame[column])):
            continue
        text = frame[column].astype("string").str.strip()
        try:
            parsed = pd.to_datetime(text, format=time_format or "ISO8601")
        except (ValueError, TypeError) as exc:
            bad = next((v for v in text.dropna() if _unparsable(v, time_format)), None)
            hint = (
                f"--time-format / time_format={time_format!r} does not fit"
                if time_format
                else (
                    "write ISO 8601 (2026-10-01 or 2026-10-01 13:45:00), or pass its format: --time-format "
                    "'%d/%m/%Y %H:%M' (SDK: time_format=...)"
                )
            )
            raise ValueError(
                f"{table}.{column}: cannot read {bad!r} as a date or time ({exc.__class__.__name__}); {hint}"
            ) from None
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        out = out.assign(**{column: parsed.astype("datetime64[us]")})
    return out


def _unparsable(value: str, time_format: str | None) -> bool:
    import pandas as pd

    try:
        pd.to_datetime(value, format=time_format or "ISO8601")
    except (ValueError, TypeError):
        return True
    return False
