"""Members' files through DuckDB's readers: types sniffed, identifiers kept as text, errors that say where."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleanroom_client.files import FileReadError, read_table


def test_csv_types_are_sniffed_and_identifiers_stay_text(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(
        "customer_id,phone,ts,day,value,tier\n"
        "007,0044123,2026-10-01 10:00:00,2026-10-01,3.5,gold\n"
        "012,13800138000,2026-10-02T11:00:00,2026-10-02,4,\n"
    )
    frame = read_table(path, {"customer_id", "phone"})
    assert list(frame["customer_id"]) == ["007", "012"]  # zeros kept
    assert list(frame["phone"]) == ["0044123", "13800138000"]
    assert pd.api.types.is_datetime64_any_dtype(frame["ts"])
    assert pd.api.types.is_datetime64_any_dtype(frame["day"])
    assert frame["value"].tolist() == [3.5, 4.0]
    assert frame["tier"].isna().tolist() == [False, True]


def test_a_late_value_is_typed_from_the_whole_file_never_rounded(tmp_path):
    """Sniffed from a sample, the column would be BIGINT and 12.5 would silently become 13."""
    path = tmp_path / "orders.csv"
    rows = [f"{i},{i % 7}" for i in range(40_000)] + ["40000,12.5"]
    path.write_text("customer_id,value\n" + "\n".join(rows) + "\n")
    frame = read_table(path)
    assert frame["value"].iloc[-1] == 12.5
    assert len(frame) == 40_001


def test_parquet_a_directory_of_parquet_and_json_lines(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 2], "phone": ["+8613800138000", "0044123"]})
    frame.to_parquet(tmp_path / "users.parquet")
    pd.testing.assert_frame_equal(read_table(tmp_path / "users.parquet"), frame, check_dtype=False)
    (tmp_path / "lake").mkdir()
    frame.to_parquet(tmp_path / "lake" / "part-0.parquet")
    frame.to_parquet(tmp_path / "lake" / "part-1.parquet")
    assert len(read_table(tmp_path / "lake")) == 4
    (tmp_path / "users.jsonl").write_text('{"user_id": 1, "phone": 13800138000}\n{"user_id": 2, "phone": 441}\n')
    read = read_table(tmp_path / "users.jsonl", {"phone"})
    assert list(read["phone"]) == ["13800138000", "441"]


def test_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "users.xlsx").write_bytes(b"PK")
    with pytest.raises(FileReadError, match="read CSV, Parquet or JSON"):
        read_table(tmp_path / "users.xlsx")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3,4,5\n6,7\n")  # a sniffer would read one column "a,b"
    with pytest.raises(FileReadError, match=r"ragged\.csv: line 3 has 3 fields, the header 2"):
        read_table(tmp_path / "ragged.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(FileReadError, match=r"broken\.parquet"):
        read_table(tmp_path / "broken.parquet")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet="0123456789+", min_size=1, max_size=15), min_size=1, max_size=30))
def test_identifier_text_survives_a_csv_exactly(tmp_path, phones):
    """Whatever digits, zeros and plus signs an identifier column holds, it comes back as written."""
    path = tmp_path / "u.csv"
    pd.DataFrame({"id": range(len(phones)), "phone": phones}).to_csv(path, index=False)
    assert list(read_table(path, {"phone"})["phone"]) == phones
