"""`MatchedData.columns`: a statement's result as numpy arrays through Arrow, the same values `arrays` gives."""

from __future__ import annotations

from typing import cast

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.analytics.matched import Catalog, MatchedData, Sql
from cleanroom.errors import InternalError


def _data() -> MatchedData:
    return MatchedData(duckdb.connect(), cast(Catalog, None))  # `columns` reads no catalog


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(-(2**62), 2**62), st.booleans()), max_size=50))
def test_columns_equal_fetchnumpy(rows: list[tuple[int, bool]]) -> None:
    data = _data()
    values = ", ".join(f"({v}::BIGINT, {str(b).lower()})" for v, b in rows) or "(0::BIGINT, false)"
    where = "" if rows else " WHERE false"
    sql = Sql(f"SELECT * FROM (VALUES {values}) t(v, b){where}")
    got, want = data.columns(sql), data.arrays(sql)
    assert list(got) == ["v", "b"]
    for name in ("v", "b"):
        assert got[name].dtype == np.asarray(want[name]).dtype
        assert np.array_equal(got[name], np.asarray(want[name]))


def test_columns_with_parameters_and_several_chunks() -> None:
    got = _data().columns(Sql("SELECT range * $k AS x FROM range(5000000)", {"k": 3}))
    assert len(got["x"]) == 5_000_000
    assert got["x"][-1] == 3 * 4_999_999
    assert got["x"].dtype == np.int64


def test_a_null_is_refused_not_read_as_a_number() -> None:
    with pytest.raises(InternalError):
        _data().columns(Sql("SELECT * FROM (VALUES (1::BIGINT), (NULL)) t(v)"))
