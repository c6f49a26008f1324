"""The member's side of matching, in parts that need no server: row numbers and reading identifier columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cleanroom_client.matching import load_or_create_rows, text_at

_VALUES = st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=1, max_size=40)


@given(_VALUES, st.integers(1, 6), st.data())
def test_text_at_reads_arrow_columns_chunk_by_chunk_like_pandas(values, chunks, data):
    size = -(-len(values) // chunks)
    chunked = pa.chunked_array([pa.array(values[i : i + size], pa.string()) for i in range(0, len(values), size)])
    arrow = pd.Series(pd.arrays.ArrowExtensionArray(chunked))
    plain = pd.Series(values, dtype=object)
    rows = np.array(data.draw(st.permutations(range(len(values)))), dtype=np.int64)[: data.draw(st.integers(0, 40))]
    expected = [None if v is None else v for v in (values[i] for i in rows)]
    assert text_at(arrow, rows) == expected
    assert text_at(plain, rows) == expected


def test_text_at_turns_numbers_into_text_and_nan_into_missing():
    assert text_at(pd.Series([5.0, float("nan")], dtype="float64[pyarrow]"), np.array([1, 0])) == [None, "5.0"]
    assert text_at(pd.Series([12, None], dtype="Int64"), np.array([0, 1])) == ["12", None]


def test_row_numbers_are_a_private_random_order_reused_on_resume(tmp_path):
    keys = pd.Series([f"k{i}" for i in range(1000)])
    rows = load_or_create_rows(tmp_path, keys)
    assert sorted(rows.tolist()) == list(range(1000))
    assert not np.array_equal(rows, np.arange(1000))  # not the caller's own order (chance 1/1000!)
    assert (tmp_path / "rows.parquet").stat().st_mode & 0o077 == 0
    assert np.array_equal(load_or_create_rows(tmp_path, keys), rows)
    with pytest.raises(ValueError, match="same rows in the same order"):
        load_or_create_rows(tmp_path, keys[::-1].reset_index(drop=True))
    pd.DataFrame({"key": keys, "row_id": np.arange(1000) * 7}).to_parquet(tmp_path / "rows.parquet")
    with pytest.raises(ValueError, match="older protocol"):
        load_or_create_rows(tmp_path, keys)


@pytest.mark.parametrize(
    "keys",
    [
        pd.Series([3, 1, 2, 1]),
        pd.Series([3, 1, 2, 1], dtype="int64[pyarrow]"),
        pd.Series(["a", "b", "a"]),
        pd.Series(["a", "b", "a"], dtype="string[pyarrow]"),
        pd.Series([1, None], dtype="Int64"),
    ],
)
def test_match_refuses_repeated_or_missing_keys_before_touching_the_network(keys, tmp_path):
    from cleanroom_client import CleanRoomClient

    with CleanRoomClient("localhost:1", token="t", state_dir=tmp_path, progress=False) as client:
        users = pd.DataFrame({"key": keys, "email": "x@example.com"})
        with pytest.raises(ValueError, match="unique and never empty"):
            client.match("c", users=users, key="key", identifiers={"email": "email"})
        distinct = users.drop_duplicates("key").dropna()
        assert client._plan(distinct, "key", {"email": "email"}, [], {}, []).users["key"].is_unique
        # a refusal of the caller's frame starts no process pool (seconds of worker start-up for nothing)
        assert client._executor is None


def test_the_ledger_names_the_members_key_column_through_a_refresh(tmp_path):
    """An audience file's header is the member's key column (issue 32 item 5), kept when a refresh rewrites it."""
    from cleanroom_client.matching import ROWS_FILE, key_column, load_or_create_rows
    from cleanroom_client.refresh import read_ledger, write_ledger

    load_or_create_rows(tmp_path, pd.Series(["u1", "u2", "u3"], name="user_id"))
    assert key_column(tmp_path / ROWS_FILE) == "user_id"
    ledger = read_ledger(tmp_path)
    write_ledger(tmp_path, ledger.assign(retired=pd.array([pd.NA, 1, pd.NA], dtype="Int64")))
    assert key_column(tmp_path / ROWS_FILE) == "user_id"
    pd.DataFrame({"key": ["a"], "row_id": [0]}).to_parquet(tmp_path / "old.parquet")  # an older SDK's ledger
    assert key_column(tmp_path / "old.parquet") == "key"
