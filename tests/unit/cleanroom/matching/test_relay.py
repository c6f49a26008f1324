from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleanroom.analytics.audiences import Audiences, forget_members, store
from cleanroom.collaborations import Collaboration
from cleanroom.devtools.synthetic import DEMO_POLICY, load_keyed_match
from cleanroom.errors import FailedPreconditionError, InvalidArgumentError
from cleanroom.matching import MatchStage, Relay, match_stats, periods
from cleanroom.matching.join import key_set_sizes
from cleanroom.matching.tables import physical_name
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom.storage import Database
from cleanroom_client.blinding import blind_point, join_tag
from cleanroom_client.curve import hash_to_u
from cleanroom_client.identity import IdentifierType
from cleanroom_client.tables import arrow_chunks

KA = X25519PrivateKey.from_private_bytes(bytes(range(32)))
KB = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
EMAIL, PHONE = IdentifierType.EMAIL, IdentifierType.PHONE


BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)


def _setup(path: Path, chunk: int = 4) -> tuple[Database, Relay, Collaboration]:
    room = Room.open(path)
    collabs = room.collaborations
    c = collabs.create(BRAND, "relay-test", DEMO_POLICY)
    for m in (BRAND, PLATFORM):
        collabs.approve(m, c.id, c.policy_etag)
    return room.store.of(c.id), Relay(room.store, room.audit, offer_chunk=chunk), collabs.get(BRAND, c.id)


def _pack(rows: list[tuple[int, str]], key: X25519PrivateKey, id_type: IdentifierType) -> tuple[int, bytes, bytes]:
    """A chunk as the protocol carries it: first row, presence bitmap (bit i: row first + i), packed points."""
    rows = sorted(rows)
    first = rows[0][0] if rows else 0
    slots = np.zeros(rows[-1][0] - first + 1 if rows else 0, dtype=bool)
    slots[[r - first for r, _ in rows]] = True
    present = np.packbits(slots, bitorder="little").tobytes()
    pts = b"".join(blind_point(key, hash_to_u(f"{id_type.value}:{ident}".encode())) for _, ident in rows)
    return first, present, pts


def _tag(double_blinded: bytes) -> int:
    return int.from_bytes(join_tag(double_blinded), "little", signed=True)


def _upload(relay: Relay, collab: Collaboration, member: str, key, by_type: dict[IdentifierType, list]) -> None:
    types = list(by_type)
    rows = 1 + max((r for t in types for r, _ in by_type[t]), default=-1)
    for i, t in enumerate(types):
        relay.upload_points(collab, member, i, t, *_pack(by_type[t], key, t), last=i == len(types) - 1, total_rows=rows)


def _double_blind(relay: Relay, collab: Collaboration, member: str, key) -> None:
    total = relay.offer_chunks(collab, member)
    for i in range(total):
        chunk = relay.fetch_peer_chunk(collab, member, i)
        out = b"".join(join_tag(blind_point(key, chunk[j : j + 32])) for j in range(0, len(chunk), 32))
        relay.submit_double_blinded(collab, member, i, out, last=i == total - 1)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sets(st.integers(0, 2000), min_size=0, max_size=12), st.integers(1, 5))
def test_unshuffle_puts_each_double_blinded_tag_on_its_own_row(row_ids, chunk):
    with tempfile.TemporaryDirectory() as tmp:
        db, relay, collab = _setup(Path(tmp), chunk)
        rows = [(r, f"id{n}") for n, r in enumerate(sorted(row_ids))]
        _upload(relay, collab, "brand", KA, {EMAIL: rows})
        _upload(relay, collab, "platform", KB, {EMAIL: []})
        _double_blind(relay, collab, "platform", KB)
        got = dict(db.cursor().execute("SELECT row_id, dkey FROM match_keys WHERE member = 'brand'").fetchall())
        expected = {r: _tag(blind_point(KB, blind_point(KA, hash_to_u(f"email:{i}".encode())))) for r, i in rows}
        assert got == expected
        # singly blinded points are gone once the relay no longer needs them
        assert db.cursor().execute("SELECT count(*) FROM offers WHERE member = 'brand'").fetchall() == [(0,)]
        db.close()


def test_join_pairs_only_rows_whose_unique_keys_all_agree(tmp_path):
    db, relay, collab = _setup(tmp_path)
    # Keys count only when unique on both sides; a pair is a link component of exactly one row per side.
    # brand:    1 (a, p1)  2 (b, p2)  3 (a)  4 (c, p4)  5 (d, p5)  6 (e)      7 (f, p7)
    # platform: 10 (a, p2) 11 (a)  12 (x, p2)  13 (y, p4)  14 (d, p5)  15 (e, p6)  16 (z, p1)  17 (f)  18 (g, p7)
    _upload(
        relay,
        collab,
        "brand",
        KA,
        {
            EMAIL: [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "d"), (6, "e"), (7, "f")],
            PHONE: [(1, "p1"), (2, "p2"), (4, "p4"), (5, "p5"), (7, "p7")],
        },
    )
    _upload(
        relay,
        collab,
        "platform",
        KB,
        {
            EMAIL: [(10, "a"), (11, "a"), (12, "x"), (13, "y"), (14, "d"), (15, "e"), (16, "z"), (17, "f"), (18, "g")],
            PHONE: [(10, "p2"), (12, "p2"), (13, "p4"), (14, "p5"), (15, "p6"), (16, "p1"), (18, "p7")],
        },
    )
    assert relay.status(collab, "brand").stage is MatchStage.DOUBLE_BLINDING
    _double_blind(relay, collab, "brand", KA)
    _double_blind(relay, collab, "platform", KB)
    assert relay.status(collab, "brand").stage is MatchStage.MATCHED
    pairs = db.cursor().execute("SELECT row_a, row_b, id_type FROM matches ORDER BY row_a").fetchall()
    # a@ is on two rows of each side and p2 on two platform rows: neither links anyone. 1-16 link by phone alone,
    # 4-13 by phone, 5-14 by email and phone, 6-15 by email. Brand 7 links to 17 (email) and 18 (phone): two
    # different people, so none of the three is matched.
    assert [(a, b) for a, b, _ in pairs] == [(1, 16), (4, 13), (5, 14), (6, 15)]
    stats, total = match_stats(db.cursor(), collab.id)
    assert total == 4
    assert {s.id_type: s.pairs for s in stats}[EMAIL] == 2
    assert {s.id_type: s.pairs for s in stats}[PHONE] == 2
    with pytest.raises(FailedPreconditionError, match="second match"):
        relay.upload_points(collab, "brand", 0, EMAIL, 0, b"", b"", last=True)
    db.close()


def test_half_upload_is_invisible_and_resumable(tmp_path):
    db, relay, collab = _setup(tmp_path)
    one, two = _pack([(1, "a")], KA, EMAIL), _pack([(2, "b")], KA, EMAIL)
    relay.upload_points(collab, "brand", 0, EMAIL, *one, last=False)
    status = relay.status(collab, "platform")
    assert not status.peer_points_ready
    with pytest.raises(FailedPreconditionError, match="not finished"):
        relay.offer_chunks(collab, "platform")
    db.close()
    # reopen (a restart): progress survived, chunk 2 is out of order, chunk 1 resumes
    room = Room.open(tmp_path)
    db, relay = room.store.of(collab.id), Relay(room.store, room.audit, offer_chunk=4)
    [progress] = relay.status(collab, "brand").uploads
    assert (progress.next_chunk, progress.committed) == (1, False)
    with pytest.raises(FailedPreconditionError, match="expects chunk 1"):
        relay.upload_points(collab, "brand", 2, EMAIL, *two, last=True)
    relay.upload_points(collab, "brand", 1, EMAIL, *two, last=True, total_rows=3)
    assert relay.status(collab, "platform").peer_points_ready
    assert relay.status(collab, "platform").peer_set_size == 2
    with pytest.raises(FailedPreconditionError, match="already complete"):
        relay.upload_points(collab, "brand", 2, EMAIL, *two, last=True)
    db.close()


def test_bad_points_are_refused_and_nothing_stored_is_lost(tmp_path):
    db, relay, collab = _setup(tmp_path)
    first, present, pts = _pack([(1, "a")], KA, EMAIL)
    relay.upload_points(collab, "brand", 0, EMAIL, first, present, pts, last=False)
    with pytest.raises(InvalidArgumentError, match="32 bytes"):
        relay.upload_points(collab, "brand", 1, EMAIL, first, present, pts[:31], last=False)
    with pytest.raises(InvalidArgumentError, match=r"point 0: .*twist"):
        relay.upload_points(collab, "brand", 1, EMAIL, first, present, (2).to_bytes(32, "little"), last=False)
    with pytest.raises(InvalidArgumentError, match=r"point 1: .*low order"):
        relay.upload_points(collab, "brand", 1, EMAIL, 5, b"", pts + bytes(32), last=False)
    with pytest.raises(InvalidArgumentError, match="not reduced"):
        relay.upload_points(collab, "brand", 1, EMAIL, 5, b"", b"\xff" * 32, last=False)
    with pytest.raises(InvalidArgumentError, match="marks 2 rows for 1 points"):
        relay.upload_points(collab, "brand", 1, EMAIL, 5, b"\x05", pts, last=False)
    with pytest.raises(InvalidArgumentError, match="first_row"):
        relay.upload_points(collab, "brand", 1, EMAIL, -1, b"", pts, last=False)
    with pytest.raises(InvalidArgumentError, match="total_rows is 1, but a point names row 1"):
        relay.upload_points(collab, "brand", 1, EMAIL, 0, b"", pts, last=True, total_rows=1)
    with pytest.raises(InvalidArgumentError, match="same identifier type twice"):
        relay.upload_points(collab, "brand", 1, EMAIL, first, present, pts, last=True, total_rows=10)
    [progress] = relay.status(collab, "brand").uploads
    assert (progress.next_chunk, progress.rows, progress.committed) == (1, 1, False)
    db.close()


def test_double_blinded_chunk_must_match_the_offer(tmp_path):
    db, relay, collab = _setup(tmp_path, chunk=2)
    _upload(relay, collab, "brand", KA, {EMAIL: [(1, "a"), (2, "b"), (3, "c")]})
    chunk = bytes(range(16))  # two tags
    with pytest.raises(InvalidArgumentError, match="offered chunk had 2"):
        relay.submit_double_blinded(collab, "platform", 0, chunk[:8], last=False)
    with pytest.raises(InvalidArgumentError, match="8 bytes each"):
        relay.submit_double_blinded(collab, "platform", 0, chunk[:12], last=False)
    with pytest.raises(InvalidArgumentError, match="`last`"):
        relay.submit_double_blinded(collab, "platform", 0, chunk, last=True)
    relay.submit_double_blinded(collab, "platform", 0, chunk, last=False)
    with pytest.raises(FailedPreconditionError, match="out of order"):
        relay.submit_double_blinded(collab, "platform", 3, chunk, last=False)
    db.close()


def test_admin_match_stats_prints_exact_counts(tmp_path):
    from typer.testing import CliRunner

    from cleanroom.cli import app

    db, relay, collab = _setup(tmp_path)
    _upload(relay, collab, "brand", KA, {EMAIL: [(1, "a"), (2, "b")], PHONE: [(2, "p2")]})
    _upload(relay, collab, "platform", KB, {EMAIL: [(10, "a")], PHONE: [(11, "p2")]})
    _double_blind(relay, collab, "brand", KA)
    _double_blind(relay, collab, "platform", KB)
    db.close()
    result = CliRunner().invoke(
        app, ["admin", "match-stats", "--data-dir", str(tmp_path), collab.id], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "total matched people" in result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") >= 3}
    assert lines["email"].split("│")[2].strip() == "1"
    assert lines["phone"].split("│")[3].strip() == "1"
    missing = CliRunner().invoke(app, ["admin", "match-stats", "--data-dir", str(tmp_path), "nope-nope"])
    assert missing.exit_code == 1
    assert "collaborations/nope-nope does not exist" in missing.output


# -- refresh periods ----------------------------------------------------------------------------------------------
REFRESH_POLICY = DEMO_POLICY + "refresh: {tables: [brand.users], min_days_between: 0}\n"


def _refresh_points(relay, collab, member, key, rows, total, period=0):
    first, present, pts = _pack(rows, key, EMAIL)
    if not rows:
        first = total
    return relay.upload_points(
        collab, member, 0, EMAIL, first, present, pts, last=True, total_rows=total, period=period
    )


def _double_blind_period(relay, collab, member, key, period=0):
    total = relay.offer_chunks(collab, member, period)
    for i in range(total):
        chunk = relay.fetch_peer_chunk(collab, member, i, period)
        tags = b"".join(join_tag(blind_point(key, chunk[j : j + 32])) for j in range(0, len(chunk), 32))
        relay.submit_double_blinded(collab, member, i, tags, last=i == total - 1, period=period)


def _period_pairs(room, collab, current=True):
    where = "AND period_to IS NULL" if current else ""
    return sorted(
        room.store.of(collab.id)
        .cursor()
        .execute(f"SELECT row_a, row_b, period_from, period_to FROM matches WHERE collab = ? {where}", [collab.id])
        .fetchall()
    )


def _users(room, collab, rows, period):
    frame = pd.DataFrame({"row_id": np.array(rows, dtype=np.int64), "tier": ["gold"] * len(rows)})
    total, chunks = arrow_chunks(frame)
    for i, chunk in enumerate(chunks):
        room.tables.upload_chunk(collab, "brand", "users", i, chunk, last=i == total - 1, period=period)


def _members(audiences, info):
    return np.concatenate(
        [np.frombuffer(c, dtype="<i8") for c in audiences.fetch(info.collaboration, info.id, "platform")]
        or [np.empty(0)]
    ).tolist()


@pytest.fixture
def matched(tmp_path):
    room = Room.open(tmp_path)
    c = room.collaborations.create(BRAND, "living", REFRESH_POLICY)
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    collab = room.collaborations.get(BRAND, c.id)
    relay = Relay(room.store, room.audit, offer_chunk=2, on_retire=(forget_members,))
    _refresh_points(relay, collab, "brand", KA, [(0, "a"), (1, "b"), (2, "c"), (3, "d")], 4)
    _refresh_points(relay, collab, "platform", KB, [(0, "a"), (1, "b"), (2, "x"), (3, "y")], 4)
    _double_blind_period(relay, collab, "brand", KA)
    _double_blind_period(relay, collab, "platform", KB)
    yield room, relay, collab
    room.close()


def test_a_period_adds_new_rows_retires_and_rejoins(matched):
    room, relay, collab = matched
    assert _period_pairs(room, collab) == [(0, 0, 0, None), (1, 1, 0, None)]
    assert relay.open_refresh(collab, "brand") == 1
    assert relay.open_refresh(collab, "platform") == 1  # the open period, not a second one

    # Points of old rows, or from a member whose users the policy does not list, are refused.
    with pytest.raises(InvalidArgumentError, match="new users only"):
        _refresh_points(relay, collab, "brand", KA, [(2, "x")], 5, period=1)
    with pytest.raises(InvalidArgumentError, match=r"platform\.users"):
        _refresh_points(relay, collab, "platform", KB, [(4, "c")], 5, period=1)
    with pytest.raises(InvalidArgumentError, match="may not retire"):
        relay.retire(collab, "platform", 1, np.array([0]))
    # The match's period is closed, and period 2 is not open.
    with pytest.raises(FailedPreconditionError, match="second match"):
        _refresh_points(relay, collab, "brand", KA, [(4, "x")], 5, period=0)
    with pytest.raises(FailedPreconditionError, match="not open"):
        _refresh_points(relay, collab, "brand", KA, [(4, "x")], 5, period=2)

    _refresh_points(relay, collab, "brand", KA, [(4, "x")], 5, period=1)
    assert relay.retire(collab, "brand", 1, np.array([0, 0])) == (1, 1)
    # A refresh's users rows are one per new user: a user twice would count twice in every query.
    with pytest.raises(InvalidArgumentError, match="duplicate row_id"):
        _users(room, collab, [4, 4], period=1)
    with pytest.raises(InvalidArgumentError, match="not a new user"):
        _users(room, collab, [1], period=1)
    # An upload started and never finished is dropped when the period completes.
    _, chunks = arrow_chunks(pd.DataFrame({"row_id": np.array([4], dtype=np.int64), "tier": ["gold"]}))
    room.tables.upload_chunk(collab, "brand", "users", 0, next(iter(chunks)), last=False, period=1)
    staged = physical_name(collab.id, "brand", "users", staged=True)
    # Audiences released before: an activation audience of platform rows 0, 1 (paired with brand rows 0, 1) and a
    # lookalike audience, which no single brand user put anyone in.
    with room.store.of(collab.id).transaction() as cur:
        activation = store(cur, collab.id, "activation", "platform", "brand", np.array([0, 1, 3]))
        lookalike = store(cur, collab.id, "lookalike", "platform", "brand", np.array([0, 1, 2, 3]))
    _refresh_points(relay, collab, "platform", KB, [], 4, period=1)
    assert relay.status(collab, "brand", 1).stage is MatchStage.DOUBLE_BLINDING
    _double_blind_period(relay, collab, "brand", KA, period=1)  # seals the brand's side
    with pytest.raises(FailedPreconditionError, match="sealed"):
        relay.retire(collab, "brand", 1, np.array([1]))
    assert relay.status(collab, "brand", 1).stage is not MatchStage.MATCHED
    _double_blind_period(relay, collab, "platform", KB, period=1)

    status = relay.status(collab, "platform", 1)
    assert status.stage is MatchStage.MATCHED
    assert (status.own_set_size, status.peer_set_size) == (4, 4)  # brand: 4 + 1 new - 1 retired
    # Brand row 0 (a) is retired: its pair ended in period 1. New brand row 4 (x) pairs with platform row 2.
    assert _period_pairs(room, collab) == [(1, 1, 0, None), (4, 2, 1, None)]
    assert _period_pairs(room, collab, current=False) == [
        (1, 1, 0, None),
        (4, 2, 1, None),
    ]  # retired: gone from history
    keys = (
        room.store.of(collab.id)
        .cursor()
        .execute("SELECT count(*) FROM match_keys WHERE collab = ? AND member = 'brand' AND row_id = 0", [collab.id])
    )
    assert keys.fetchone() == (0,)
    assert room.store.of(collab.id).cursor().execute(
        f"SELECT count(*) FROM duckdb_tables() WHERE table_name = '{staged}'"
    ).fetchone() == (0,)
    # Platform row 0 was paired with retired brand row 0; it stays in the platform's audiences: removing it would
    # tell the platform, for no epsilon, that its user's counterpart left the brand.
    audiences = Audiences(room.store, room.audit)
    assert sorted(_members(audiences, activation)) == [0, 1, 3]
    assert sorted(_members(audiences, lookalike)) == [0, 1, 2, 3]
    entry = [e for e in room.audit.entries(collab.id) if e.action == "refresh.complete"][-1]
    assert entry.parameters["period"] == 1
    assert entry.parameters["members"]["brand"]["new_rows"] == 1
    assert entry.parameters["members"]["brand"]["retired"] == 1
    assert entry.parameters["set_sizes"] == {"brand": 4, "platform": 4}
    with pytest.raises(InvalidArgumentError, match="has not started"):
        relay.status(collab, "brand", 2)


def test_no_refresh_before_the_match_or_without_a_refresh_policy(tmp_path):
    room = Room.open(tmp_path)
    for cid, policy in (("early", REFRESH_POLICY), ("final", DEMO_POLICY)):
        c = room.collaborations.create(BRAND, cid, policy)
        for m in (BRAND, PLATFORM):
            room.collaborations.approve(m, c.id, c.policy_etag)
    relay = Relay(room.store, room.audit)
    with pytest.raises(FailedPreconditionError, match="not finished matching"):
        relay.open_refresh(room.collaborations.get(BRAND, "early"), "brand")
    final = room.collaborations.get(BRAND, "final")
    _refresh_points(relay, final, "brand", KA, [(0, "a")], 1)
    _refresh_points(relay, final, "platform", KB, [(0, "a")], 1)
    _double_blind_period(relay, final, "brand", KA)
    _double_blind_period(relay, final, "platform", KB)
    with pytest.raises(FailedPreconditionError, match="allows no refresh"):
        relay.open_refresh(final, "brand")
    room.close()


def test_the_interval_counts_from_completions_too(matched, monkeypatch):
    """A period held open then completed cannot be followed at once by another: renewals stay an interval apart."""
    room, relay, _ = matched
    weekly = DEMO_POLICY + "refresh: {tables: [brand.users], min_days_between: 7, budget: per_period}\n"
    c = room.collaborations.create(BRAND, "weekly", weekly)
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    collab = room.collaborations.get(BRAND, c.id)
    _refresh_points(relay, collab, "brand", KA, [(0, "a")], 1)
    _refresh_points(relay, collab, "platform", KB, [(0, "a")], 1)
    _double_blind_period(relay, collab, "brand", KA)
    _double_blind_period(relay, collab, "platform", KB)
    start = datetime.now(UTC).replace(tzinfo=None)
    monkeypatch.setattr(periods, "_now", lambda: start + timedelta(days=8))
    assert relay.open_refresh(collab, "brand") == 1
    monkeypatch.setattr(periods, "_now", lambda: start + timedelta(days=16))  # held open for a week, then completed
    for member, key, rows in (("brand", KA, 1), ("platform", KB, 1)):
        _refresh_points(relay, collab, member, key, [], rows, period=1)
    _double_blind_period(relay, collab, "brand", KA, period=1)
    _double_blind_period(relay, collab, "platform", KB, period=1)
    # Nothing changed in period 1: a per-period budget does not renew.
    assert periods.budget_start(room.store.of(collab.id).cursor(), collab.id) == 0
    with pytest.raises(FailedPreconditionError, match="every 7 days"):
        relay.open_refresh(collab, "brand")  # 8 days after period 1 opened, but the moment it completed
    monkeypatch.setattr(periods, "_now", lambda: start + timedelta(days=23, hours=1))
    assert relay.open_refresh(collab, "brand") == 2


def test_the_first_refresh_needs_no_wait_after_the_match_the_second_waits_from_the_first(matched, monkeypatch):
    """With one budget for life, the match starts no clock: a refresh may follow it at once (issue 32 item 4).

    The interval then counts from the last refresh (its opening or completion, the later); with `per_period`
    the match does start it, since the match opens the first budget period (see the next test).
    """
    room, relay, _ = matched
    weekly = DEMO_POLICY + "refresh: {tables: [brand.users], min_days_between: 7}\n"
    c = room.collaborations.create(BRAND, "weekly-total", weekly)
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    collab = room.collaborations.get(BRAND, c.id)
    _refresh_points(relay, collab, "brand", KA, [(0, "a")], 1)
    _refresh_points(relay, collab, "platform", KB, [(0, "a")], 1)
    _double_blind_period(relay, collab, "brand", KA)
    _double_blind_period(relay, collab, "platform", KB)
    assert relay.open_refresh(collab, "brand") == 1  # straight after the match
    for member, key in (("brand", KA), ("platform", KB)):
        _refresh_points(relay, collab, member, key, [], 1, period=1)
    _double_blind_period(relay, collab, "brand", KA, period=1)
    _double_blind_period(relay, collab, "platform", KB, period=1)
    with pytest.raises(FailedPreconditionError, match=r"every 7 days.*after the last refresh"):
        relay.open_refresh(collab, "brand")
    start = datetime.now(UTC).replace(tzinfo=None)
    monkeypatch.setattr(periods, "_now", lambda: start + timedelta(days=7, minutes=1))
    assert relay.open_refresh(collab, "brand") == 2


def test_retiring_at_once_needs_no_peer_and_renews_nothing(tmp_path):
    """RetireUsers with period 0: a period of its own, completed by one member; the match's uploads stay open."""
    room = Room.open(tmp_path)
    weekly = DEMO_POLICY + "refresh: {tables: [brand.users], min_days_between: 7, budget: per_period}\n"
    c = room.collaborations.create(BRAND, "erase", weekly)
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    collab = room.collaborations.get(BRAND, c.id)
    relay = Relay(room.store, room.audit, on_retire=(forget_members,))
    with pytest.raises(FailedPreconditionError, match="not finished matching"):
        relay.retire(collab, "brand", 0, np.array([0]))
    _refresh_points(relay, collab, "brand", KA, [(0, "a"), (1, "b"), (2, "c")], 3)
    _refresh_points(relay, collab, "platform", KB, [(0, "a"), (1, "b"), (2, "x")], 3)
    _double_blind_period(relay, collab, "brand", KA)
    _double_blind_period(relay, collab, "platform", KB)
    with pytest.raises(InvalidArgumentError, match="at least one row"):
        relay.retire(collab, "brand", 0, np.array([], dtype=np.int64))

    with room.store.of(collab.id).transaction() as cur:  # an audience of the brand's own users, released to it
        own = store(cur, collab.id, "lookalike", "brand", "platform", np.array([0, 1, 2]))
    assert relay.retire(collab, "brand", 0, np.array([0])) == (1, 1)
    assert _period_pairs(room, collab) == [(1, 1, 0, None)]
    audiences = Audiences(room.store, room.audit)
    assert np.frombuffer(b"".join(audiences.fetch(collab.id, own.id, "brand")), "<i8").tolist() == [1, 2]
    status = relay.status(collab, "platform", 1)
    assert status.stage is MatchStage.MATCHED
    assert status.peer_set_size == 2
    cur = room.store.of(collab.id).cursor()
    assert periods.budget_start(cur, collab.id) == 0  # no renewal
    with pytest.raises(InvalidArgumentError, match="retired before"):
        relay.retire(collab, "brand", 0, np.array([0]))
    # The match's own uploads are still open (a retirement is no refresh), but take no rows of the retired user.
    with pytest.raises(InvalidArgumentError, match="a user you retired"):
        _users(room, collab, [0, 1], period=0)
    _users(room, collab, [1, 2], period=0)
    # A retirement does not count toward the interval: the first refresh may still open a week after the match...
    with pytest.raises(FailedPreconditionError, match="every 7 days"):
        relay.open_refresh(collab, "brand")
    later = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=8)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(periods, "_now", lambda: later)
        assert relay.open_refresh(collab, "brand") == 2
        # ...and a retirement at once while a refresh is open cancels it in the same transaction (it never waits on
        # the peer): the retirement takes the cancelled period's number.
        assert relay.retire(collab, "brand", 0, np.array([1])) == (1, 2)
    actions = [(e.action, e.parameters.get("period")) for e in room.audit.entries(collab.id)][-4:]
    assert actions == [("refresh.open", 2), ("refresh.cancel", 2), ("refresh.retire", 2), ("refresh.complete", 2)]
    assert periods.open_period(room.store.of(collab.id).cursor(), collab.id) is None
    room.close()


def test_a_claimed_count_is_no_change_and_renews_no_budget(matched):
    """A period whose only 'change' is a larger claimed total_rows (no point, no row stored) changed nothing.

    The per-period budget renews only when a period changed data; the claim is the member's word, not data.
    """
    room, relay, collab = matched
    assert relay.open_refresh(collab, "brand") == 1
    _refresh_points(relay, collab, "brand", KA, [], 2**62, period=1)  # claims 2^62 rows, sends none
    _refresh_points(relay, collab, "platform", KB, [], 4, period=1)
    _double_blind_period(relay, collab, "brand", KA, period=1)
    _double_blind_period(relay, collab, "platform", KB, period=1)
    cur = room.store.of(collab.id).cursor()
    assert periods.latest_complete(cur, collab.id, True) == 1
    complete = [e for e in room.audit.entries(collab.id) if e.action == "refresh.complete"][-1]
    assert complete.parameters["members"]["brand"]["new_rows"] == 0
    assert periods.budget_start(cur, collab.id) == 0  # no renewal


class _Profiled:
    """A real DuckDB cursor that profiles each statement and keeps, per statement, the rows its largest aggregation
    produced: a cost measure of the work done, independent of the machine's speed."""

    def __init__(self, cur, seen: list[tuple[int, str]]):
        self._cur, self._seen = cur, seen
        cur.execute("PRAGMA enable_profiling='no_output'")

    def execute(self, query, *args, **kwargs):
        self._cur.execute(query, *args, **kwargs)
        try:
            profile = json.loads(self._cur.get_profiling_information(format="json"))
        except duckdb.Error:
            return self
        largest, stack = 0, list(profile.get("operator", profile.get("children", [])))
        while stack:
            op = stack.pop()
            if "GROUP_BY" in op.get("type", "") or "AGGREGATE" in op.get("type", ""):
                largest = max(largest, int(op.get("intermediate_rows", 0)))
            stack.extend(op.get("children", []))
        self._seen.append((largest, " ".join(str(query).split())[:80]))
        return self

    def __getattr__(self, name):
        return getattr(self._cur, name)


def test_retiring_one_user_costs_the_rows_around_it_not_the_whole_join(tmp_path, monkeypatch):
    """Issue 29: at 200k x 200k matched keys each single-user retirement at once aggregated the whole join (a group
    of 400k keys into 200k links), holding the write lock for seconds. Now no aggregation in the retirement groups
    more than a handful of rows, and the matching is what a whole join would record."""
    n = 200_000
    room = Room.open(tmp_path)
    weekly = DEMO_POLICY + "refresh: {tables: [brand.users], min_days_between: 7, budget: per_period}\n"
    c = room.collaborations.create(BRAND, "erase", weekly)
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    collab = room.collaborations.get(BRAND, c.id)
    load_keyed_match(room, c.id, n)
    relay = Relay(room.store, room.audit)
    db = room.store.of(c.id)
    plain = db.cursor
    for row in (7, 8, 123_456):
        seen: list[tuple[int, str]] = []
        monkeypatch.setattr(db, "cursor", lambda seen=seen: _Profiled(plain(), seen))
        relay.retire(collab, "brand", 0, np.array([row]))
        monkeypatch.setattr(db, "cursor", plain)
        assert seen, "the retirement ran no statement"
        # The first period after the match counts each member's key set size over all keys (a hashed count, not
        # the join); later ones take the retired rows off the last recorded sizes. Nothing else aggregates more
        # than a few rows.
        large = [(rows, sql) for rows, sql in seen if rows > 10]
        if row == 7:
            large = [(rows, sql) for rows, sql in large if "count(DISTINCT row_id) FROM match_keys" not in sql]
        assert not large, f"a retirement aggregated the whole join: {large}"
    with db.transaction() as cur:
        assert periods.period_set_sizes(cur, c.id, 3) == key_set_sizes(cur, c.id) == {"brand": n - 3, "platform": n}
    cur = room.store.of(c.id).cursor()
    current = cur.execute("SELECT row_a, row_b FROM matches WHERE period_to IS NULL").fetchall()
    assert len(current) == n - 3
    assert all(a == b for a, b in current)
    assert not {(7, 7), (8, 8), (123_456, 123_456)} & set(current)
    room.close()
