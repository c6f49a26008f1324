"""Event tables read from CSV bring their time column as text: parsed by the policy's declaration, or refused with
the column, the value and the fix."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom_client.client import parse_time_column
from cleanroom_client.policy import parse_policy

POLICY = parse_policy(DEMO_POLICY)  # brand.conversions: {time: ts, ...}


def test_iso_dates_and_times_become_timestamps():
    frame = pd.DataFrame({"customer_id": [1, 2, 3], "ts": ["2026-10-01", "2026-10-02 13:45:00", " 2026-10-03T08:00 "]})
    out = parse_time_column(frame, "conversions", POLICY, None)
    assert str(out["ts"].dtype) == "datetime64[us]"
    assert out["ts"].tolist() == [
        pd.Timestamp("2026-10-01"),
        pd.Timestamp("2026-10-02 13:45"),
        pd.Timestamp("2026-10-03 08:00"),
    ]
    assert frame["ts"].iloc[1] == "2026-10-02 13:45:00"  # the caller's frame is untouched


def test_a_format_for_other_layouts():
    frame = pd.DataFrame({"customer_id": [1], "ts": ["01/10/2026 13:45"]})
    out = parse_time_column(frame, "conversions", POLICY, "%d/%m/%Y %H:%M")
    assert out["ts"].iloc[0] == pd.Timestamp("2026-10-01 13:45")


def test_an_unreadable_value_names_the_column_the_value_and_the_fix():
    frame = pd.DataFrame({"customer_id": [1, 2], "ts": ["2026-10-01", "yesterday"]})
    with pytest.raises(ValueError, match=re.escape("conversions.ts: cannot read 'yesterday'")) as info:
        parse_time_column(frame, "conversions", POLICY, None)
    assert "--time-format" in str(info.value)


def test_columns_already_timestamps_and_undeclared_columns_are_left_alone():
    frame = pd.DataFrame({"ts": pd.to_datetime(["2026-10-01"]), "note": ["2026-10-01"]})
    out = parse_time_column(frame, "conversions", POLICY, None)
    assert not pd.api.types.is_datetime64_any_dtype(out["note"])
    assert out["ts"].iloc[0] == pd.Timestamp("2026-10-01")
