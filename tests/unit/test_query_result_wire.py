"""A query's answer crosses the wire whole: what the server's answer says beside its cells is what the SDK's frame
carries (`attrs`), under the same names, for any values (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.analytics.cells import Cell
from cleanroom.analytics.plan import QueryAnswer
from cleanroom.server.analytics_servicer import answer_to_proto
from cleanroom_client.answers import result_frame
from cleanroom_client.protocol import RESULT_FIELDS
from cleanroom_client.protocol import analytics_pb2 as qpb

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
names = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)


def test_every_field_of_a_result_beside_its_cells_is_one_the_server_fills_and_the_sdk_reads():
    fields = {f.name for f in qpb.QueryResult.DESCRIPTOR.fields}
    assert fields == {"dimensions", "cells", "refresh_period", *RESULT_FIELDS}


@settings(max_examples=60, deadline=None)  # a frame per example: slow on a loaded machine
@given(
    spent=finite,
    left=finite,
    scales=st.dictionaries(names, finite, max_size=3),
    sequence=st.integers(0, 2**62),
    own=st.integers(0, 2**62),
    audience=st.text(max_size=20),
    period=st.none() | st.integers(0, 2**31 - 1),
    value=finite,
)
def test_the_sdk_frame_carries_what_the_server_answered(spent, left, scales, sequence, own, audience, period, value):
    cell = Cell(("a",), "people", value, 1.5, False)
    answer = QueryAnswer(("brand.age",), (cell,), spent, left, scales, sequence, own, audience, period)
    frame = result_frame(answer_to_proto(answer))
    assert {name: frame.attrs[name] for name in RESULT_FIELDS} == {
        "epsilon_spent": spent,
        "epsilon_remaining": left,
        "noise_scale": scales,
        "audit_sequence": sequence,
        "own_set_size": own,
        "audience": audience,
        "typical": {},
    }
    assert frame.attrs["refresh_period"] == period
    [row] = frame.to_dict("records")
    assert (row["brand.age"], row["measure"], row["value"], row["suppressed"]) == ("a", "people", value, False)
