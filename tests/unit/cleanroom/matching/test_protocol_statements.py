"""The rules PROTOCOL.md sections 5 and 8 state for a partner's implementation, each checked against the server.

Every statement here is one the spec makes in so many words: when offers may be taken, what a member with no
identifier sends, the refusal of a type the policy does not list, the slots of `present`, RetireUsers without a
refresh, and when a users table's duplicate `row_id` is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cleanroom.collaborations import Collaboration
from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.errors import FailedPreconditionError, InvalidArgumentError
from cleanroom.matching import MatchStage, Relay
from cleanroom.matching.progress import POINTS, read_progress
from cleanroom.matching.relay import _chunk_rows
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom_client.blinding import blind_point, join_tag
from cleanroom_client.curve import hash_to_u
from cleanroom_client.identity import IdentifierType
from cleanroom_client.tables import arrow_chunks

KA = X25519PrivateKey.from_private_bytes(bytes(range(32)))
KB = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
EMAIL = IdentifierType.EMAIL
BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)


@pytest.fixture
def room(tmp_path: Path):
    opened = Room.open(tmp_path)
    yield opened
    opened.close()


def _collab(room: Room, policy: str = DEMO_POLICY) -> Collaboration:
    c = room.collaborations.create(BRAND, "statements", policy)
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    return room.collaborations.get(BRAND, c.id)


def _points(key: X25519PrivateKey, idents: list[str]) -> bytes:
    return b"".join(blind_point(key, hash_to_u(f"email:{i}".encode())) for i in idents)


def _double_blind(relay: Relay, collab: Collaboration, member: str, key: X25519PrivateKey) -> None:
    total = relay.offer_chunks(collab, member)
    for i in range(total):
        chunk = relay.fetch_peer_chunk(collab, member, i)
        tags = b"".join(join_tag(blind_point(key, chunk[j : j + 32])) for j in range(0, len(chunk), 32))
        relay.submit_double_blinded(collab, member, i, tags, last=i == total - 1)


def test_in_the_match_a_member_may_double_blind_the_peers_points_before_uploading_its_own(room):
    collab = _collab(room)
    relay = Relay(room.store, room.audit)
    relay.upload_points(collab, "brand", 0, EMAIL, 0, b"", _points(KA, ["a", "b"]), last=True, total_rows=2)
    assert relay.status(collab, "platform").peer_points_ready
    _double_blind(relay, collab, "platform", KB)  # platform has uploaded nothing yet
    assert relay.status(collab, "platform").stage is MatchStage.UPLOADING
    relay.upload_points(collab, "platform", 0, EMAIL, 0, b"", _points(KB, ["b", "c"]), last=True, total_rows=2)
    _double_blind(relay, collab, "brand", KA)
    assert relay.status(collab, "brand").stage is MatchStage.MATCHED
    assert room.store.of(collab.id).cursor().execute("SELECT row_a, row_b FROM matches").fetchall() == [(1, 0)]


def test_a_member_without_any_valid_identifier_sends_a_chunk_without_points_and_is_matched_with_nobody(room):
    collab = _collab(room)
    relay = Relay(room.store, room.audit)
    relay.upload_points(collab, "brand", 0, EMAIL, 0, b"", _points(KA, ["a"]), last=True, total_rows=1)
    # As the SDK sends it: its chunk of each type, no points, every slot of `present` clear; total_rows all rows.
    relay.upload_points(collab, "platform", 0, EMAIL, 0, bytes(1), b"", last=False)
    relay.upload_points(collab, "platform", 1, IdentifierType.PHONE, 0, bytes(1), b"", last=True, total_rows=5)
    assert relay.status(collab, "brand").peer_set_size == 0
    _double_blind(relay, collab, "platform", KB)  # still double-blinds the brand's points
    _double_blind(relay, collab, "brand", KA)  # an offer of no points is one empty chunk
    assert relay.status(collab, "brand").stage is MatchStage.MATCHED
    assert room.store.of(collab.id).cursor().execute("SELECT count(*) FROM matches").fetchall() == [(0,)]
    # and its users table may still be uploaded: rows 0 .. 4 are numbered
    frame = pd.DataFrame({"row_id": np.arange(5, dtype=np.int64), "age_band": ["18-24"] * 5})
    _, chunks = arrow_chunks(frame)
    assert room.tables.upload_chunk(collab, "platform", "users", 0, next(iter(chunks)), last=True).committed


def test_a_chunk_of_a_type_the_policy_does_not_list_is_refused_and_the_upload_goes_on(room):
    collab = _collab(room)  # identifiers: [email, phone]
    relay = Relay(room.store, room.audit)
    relay.upload_points(collab, "brand", 0, EMAIL, 0, b"", _points(KA, ["a"]), last=False)
    with pytest.raises(InvalidArgumentError, match="lets the join use email, phone, not device_id"):
        relay.upload_points(collab, "brand", 1, IdentifierType.DEVICE_ID, 1, b"", _points(KA, ["d"]), last=True)
    progress = read_progress(room.store.of(collab.id).cursor(), collab.id, "brand", POINTS, 0)
    assert progress is not None
    assert (progress.next_chunk, progress.committed) == (1, False)
    assert [e.action for e in room.audit.entries(collab.id)][-1] == "refused"
    relay.upload_points(collab, "brand", 1, IdentifierType.PHONE, 1, b"", b"", last=True, total_rows=2)


def test_present_has_eight_slots_a_byte_up_to_65536_and_its_set_bits_count_the_points():
    assert _chunk_rows(10, b"", 3, "c").tolist() == [10, 11, 12]  # empty: every slot has a point
    assert _chunk_rows(10, bytes([0b00010010]) + bytes(8191), 2, "c").tolist() == [11, 14]  # zero bytes after: fine
    assert _chunk_rows(0, bytes(8191) + bytes([0x80]), 1, "c").tolist() == [65535]
    with pytest.raises(InvalidArgumentError, match="more than 65536 row slots"):
        _chunk_rows(0, bytes(8193), 0, "c")
    with pytest.raises(InvalidArgumentError, match="marks 2 rows for 3 points"):
        _chunk_rows(0, bytes([0b11]), 3, "c")


def test_retire_users_without_a_refresh_in_the_policy_is_invalid_argument(room):
    collab = _collab(room)  # DEMO_POLICY has no `refresh`
    relay = Relay(room.store, room.audit)
    for period in (0, 1):
        with pytest.raises(InvalidArgumentError, match=r"does not list brand\.users, so you may not retire"):
            relay.retire(collab, "brand", period, np.array([0], dtype=np.int64))


def _users_chunks(room: Room, collab: Collaboration, chunks: list[list[int]]) -> None:
    for i, rows in enumerate(chunks):
        frame = pd.DataFrame({"row_id": np.array(rows, dtype=np.int64), "tier": ["gold"] * len(rows)})
        _, data = arrow_chunks(frame)
        room.tables.upload_chunk(collab, "brand", "users", i, next(iter(data)), last=i == len(chunks) - 1)


def test_a_duplicate_row_id_of_a_users_table_is_refused_at_its_last_chunk_and_events_may_repeat(room):
    collab = _collab(room)
    relay = Relay(room.store, room.audit)
    relay.upload_points(collab, "brand", 0, EMAIL, 0, b"", _points(KA, ["a", "b", "c"]), last=True, total_rows=3)
    with pytest.raises(InvalidArgumentError, match="1 duplicate row_id values"):
        _users_chunks(room, collab, [[0, 1], [1, 2]])  # chunk 0 is staged unchecked; the last one is refused
    _users_chunks(room, collab, [[0, 1], [2]])  # chunk 0 starts it over
    events = pd.DataFrame(
        {"row_id": np.array([0, 0, 1], dtype=np.int64), "ts": pd.to_datetime(["2026-01-01"] * 3), "value": [1.0] * 3}
    )
    _, data = arrow_chunks(events)
    assert room.tables.upload_chunk(collab, "brand", "conversions", 0, next(iter(data)), last=True).committed


def test_before_the_match_completes_a_refresh_cannot_open(room):
    collab = _collab(room)
    with pytest.raises(FailedPreconditionError, match="not finished matching"):
        Relay(room.store, room.audit).open_refresh(collab, "brand")
