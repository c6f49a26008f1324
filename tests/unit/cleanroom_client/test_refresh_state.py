"""The refresh's local state: the content fingerprint that decides a repeat, and the state file of older SDKs."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom_client import refresh
from cleanroom_client.errors import RefreshInProgressError
from cleanroom_client.matching import MatchSummary, MemberSummary

COLUMNS = {"key": "key", "identifier:email": "email"}


def frames(rows: list[tuple[int, str | None, float]]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    users = pd.DataFrame({"key": [f"k{i}" for i, _, _ in rows], "email": [e for _, e, _ in rows]})
    ts = [dt.datetime(2026, 11, 1) + dt.timedelta(seconds=i) for i, _, _ in rows]
    events = {"conversions": pd.DataFrame({"key": users["key"], "ts": ts, "value": [v for _, _, v in rows]})}
    return users, events


def digest(rows: list[tuple[int, str | None, float]], retire: list[str] = ()) -> str:  # type: ignore[assignment]
    users, events = frames(rows)
    return refresh.content_fingerprint(users, COLUMNS, retire, events)


ROWS = st.lists(
    st.tuples(
        st.integers(0, 10**6),
        st.one_of(st.none(), st.text(max_size=8)),
        st.floats(-1e6, 1e6, allow_nan=False),
    ),
    min_size=1,
    max_size=20,
)


@given(ROWS, st.data())
@settings(max_examples=150, deadline=None)
def test_any_changed_value_changes_the_fingerprint_and_equal_input_keeps_it(rows, data) -> None:
    assert digest(rows) == digest(list(rows))
    at = data.draw(st.integers(0, len(rows) - 1))
    i, email, value = rows[at]
    field = data.draw(st.sampled_from(["key", "email", "value"]))
    changed = {
        "key": (i + 1, email, value),
        "email": (i, (email or "") + "x", value),
        "value": (i, email, value + 1.0),
    }[field]
    assert digest([*rows[:at], changed, *rows[at + 1 :]]) != digest(rows)


@given(ROWS)
@settings(max_examples=50, deadline=None)
def test_retired_keys_and_boundaries_count(rows) -> None:
    assert digest(rows, ["k1"]) != digest(rows)
    assert digest(rows, ["k1", "k2"]) == digest(rows, ["k2", "k1"])
    # Values cannot run into each other: "ab" + "c" differs from "a" + "bc".
    a = pd.DataFrame({"key": ["ab", "c"]})
    b = pd.DataFrame({"key": ["a", "bc"]})
    assert refresh.content_fingerprint(a, {"key": "key"}, [], {}) != refresh.content_fingerprint(
        b, {"key": "key"}, [], {}
    )


def test_a_value_is_hashed_by_what_it_is_not_by_its_dtype_or_layout(monkeypatch) -> None:
    narrow = pd.DataFrame({"key": pd.Series([1, 2, 3], dtype="int32"), "ts": pd.to_datetime(["2026-11-01"] * 3)})
    wide = pd.DataFrame({"key": [1, 2, 3], "ts": pd.to_datetime(["2026-11-01"] * 3).astype("datetime64[us]")})
    assert refresh.content_fingerprint(narrow, {"key": "key"}, [], {"t": narrow}) == refresh.content_fingerprint(
        wide, {"key": "key"}, [], {"t": wide}
    )
    # Streamed in chunks: the chunk size changes nothing, and a slice (an offset into Arrow buffers) hashes alike.
    big = pd.DataFrame({"key": [f"k{i}" for i in range(1000)], "v": range(1000)})
    whole = refresh.content_fingerprint(big, {"key": "key"}, [], {"t": big})
    monkeypatch.setattr(refresh, "FINGERPRINT_ROWS", 7)
    assert refresh.content_fingerprint(big, {"key": "key"}, [], {"t": big}) == whole
    tail = big.iloc[500:]
    assert refresh.content_fingerprint(tail, {"key": "key"}, [], {}) == refresh.content_fingerprint(
        tail.reset_index(drop=True).copy(), {"key": "key"}, [], {}
    )
    # A missing value is not the empty string nor zero.
    assert refresh.content_fingerprint(pd.DataFrame({"key": [None]}), {"key": "key"}, [], {}) != (
        refresh.content_fingerprint(pd.DataFrame({"key": [""]}), {"key": "key"}, [], {})
    )


def test_a_state_file_of_an_older_sdk_reads_as_the_legacy_scheme(tmp_path: Path) -> None:
    old = {"period": 3, "users": "u" * 64, "whole": "w" * 64, "complete": True}
    (tmp_path / refresh.STATE_FILE).write_text(json.dumps(old))
    saved = refresh.read_state(tmp_path)
    assert saved == refresh.RefreshState(3, "u" * 64, "w" * 64, True, refresh.LEGACY_SCHEME)
    refresh.write_state(tmp_path, refresh.RefreshState(4, "u" * 64, "x" * 64, False))
    assert refresh.read_state(tmp_path) == refresh.RefreshState(4, "u" * 64, "x" * 64, False, refresh.CONTENT_SCHEME)


def test_the_lock_refuses_a_second_holder_and_is_released(tmp_path: Path) -> None:
    with (
        refresh.locked(tmp_path, "collaborations/c"),
        pytest.raises(RefreshInProgressError, match="another refresh"),
        refresh.locked(tmp_path, "collaborations/c"),
    ):
        pass
    with refresh.locked(tmp_path, "collaborations/c"):
        pass


@given(ROWS, st.randoms(use_true_random=False))
@settings(max_examples=80, deadline=None)
def test_a_repeat_with_its_rows_in_another_order_is_the_same_input(rows, rng) -> None:
    """A re-run whose tables come back in another order (a query without ORDER BY) repeats the call: taken for new
    data, its event rows were appended a second time. Rows are a multiset: order is no content, duplicates are."""
    shuffled = list(rows)
    rng.shuffle(shuffled)
    assert digest(shuffled) == digest(rows)
    assert digest([*rows, rows[0]]) != digest(rows)


def test_integral_floats_are_the_integers_they_hold_and_other_floats_are_not_integers() -> None:
    """A column read back as float64 (a NaN elsewhere, a CSV) holds the same values as the int64 column it was."""
    ints = pd.DataFrame({"key": ["a", "b", "c"], "n": [1, 2, 3]})
    floats = pd.DataFrame({"key": ["a", "b", "c"], "n": [1.0, 2.0, 3.0]})
    assert refresh.content_fingerprint(ints, {"key": "key"}, [], {"t": ints}) == refresh.content_fingerprint(
        floats, {"key": "key"}, [], {"t": floats}
    )
    # 1.5's bits read as an integer are another value: no collision between the two kinds.
    bits = int(pd.Series([1.5]).to_numpy().view("<i8")[0])
    half = pd.DataFrame({"n": [1.5]})
    as_int = pd.DataFrame({"n": [bits]})
    assert refresh.content_fingerprint(half, {}, [], {"t": half}) != refresh.content_fingerprint(
        as_int, {}, [], {"t": as_int}
    )
    # Integers beyond 2^53 stay exact (a float would merge neighbours).
    big = pd.DataFrame({"n": [2**53]})
    next_ = pd.DataFrame({"n": [2**53 + 1]})
    assert refresh.content_fingerprint(big, {}, [], {"t": big}) != refresh.content_fingerprint(
        next_, {}, [], {"t": next_}
    )


def test_a_match_and_a_refresh_summary_carry_the_same_counts_under_the_same_names() -> None:
    """A script reading either summary finds a member's own counts and the set sizes under one set of names."""
    shared_names = [f.name for f in fields(MemberSummary)]
    assert {"collaboration", "identifiers", "tables", "dropped_events", "own_set_size", "peer_set_size"} <= set(
        shared_names
    )
    for summary in (MatchSummary, refresh.RefreshSummary):
        assert issubclass(summary, MemberSummary)
        assert [f.name for f in fields(summary)][: len(shared_names)] == shared_names
    made = refresh.RefreshSummary(
        collaboration="collaborations/c",
        identifiers={},
        tables={"t": 2},
        dropped_events={},
        own_set_size=3,
        peer_set_size=4,
        period=1,
        new_rows=2,
        retired=0,
    )
    assert list(made.to_dict()) == [*shared_names, "period", "new_rows", "retired"]
