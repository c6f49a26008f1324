"""`storage.database.integer`: one number read from a statement, the idiom eleven readers of counts, sequences and
periods wrote out by hand (`int(row[0]) if row and row[0] is not None else ...`)."""

from __future__ import annotations

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.storage.database import first, integer


def by_hand(result: duckdb.DuckDBPyConnection) -> int | None:
    """The idiom as it was written at each reader."""
    row = first(result)
    return int(row[0]) if row and row[0] is not None else None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-(2**62), 2**62)), max_size=5))
def test_integer_is_the_first_rows_first_column_or_none(values):
    con = duckdb.connect()
    con.execute("CREATE TABLE t (i INTEGER, v BIGINT)")
    for row in enumerate(values):
        con.execute("INSERT INTO t VALUES (?, ?)", row)
    for sql in (
        "SELECT v FROM t ORDER BY i",
        "SELECT max(v) FROM t",
        "SELECT count(v) FROM t",
        "SELECT v FROM t LIMIT 0",
    ):
        got = integer(con.execute(sql), None)
        assert got == by_hand(con.execute(sql))
        assert got is None or isinstance(got, int)
        assert integer(con.execute(sql), 0) == (0 if got is None else got)
    rows = con.execute("SELECT v FROM t ORDER BY i").fetchall()
    assert integer(con.execute("SELECT v FROM t ORDER BY i"), None) == (rows[0][0] if rows else None)
    assert integer(con.execute("SELECT count(*) FROM t"), 0) == len(values)
    con.execute("SELECT 1")  # the result was consumed: the connection takes new work
