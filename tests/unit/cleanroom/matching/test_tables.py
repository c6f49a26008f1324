"""Table uploads: after the point upload, with its row numbers only, final once committed; compressed Arrow IPC is
accepted and its decompressed size is capped."""

from __future__ import annotations

import pandas as pd
import pytest

from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.errors import FailedPreconditionError, InvalidArgumentError
from cleanroom.matching import tables as tables_module
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom_client.identity import IdentifierType
from cleanroom_client.tables import arrow_chunks

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)


def _collab(room: Room):
    c = room.collaborations.create(BRAND, "tables-test", DEMO_POLICY)
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    return room.collaborations.get(BRAND, c.id)


def _points(room: Room, collab, total_rows: int, member: str = "brand") -> None:
    """Commit an (empty) point upload that numbers `total_rows` rows."""
    room.relay.upload_points(collab, member, 0, IdentifierType.EMAIL, 0, b"", b"", last=True, total_rows=total_rows)


def test_tables_follow_the_point_upload_use_its_row_numbers_and_are_final(tmp_path):
    room = Room.open(tmp_path)
    collab = _collab(room)
    [chunk] = list(arrow_chunks(pd.DataFrame({"row_id": range(10)}))[1])
    with pytest.raises(FailedPreconditionError, match="upload your blinded points first"):
        room.tables.upload_chunk(collab, "brand", "users", 0, chunk, last=True)
    _points(room, collab, 9)
    with pytest.raises(InvalidArgumentError, match=r"row_id 9 was never offered points: .* rows 0 \.\. 8"):
        room.tables.upload_chunk(collab, "brand", "users", 0, chunk, last=True)
    [negative] = list(arrow_chunks(pd.DataFrame({"row_id": [-1]}))[1])
    with pytest.raises(InvalidArgumentError, match="row_id -1 was never offered points"):
        room.tables.upload_chunk(collab, "brand", "users", 0, negative, last=True)
    [fits] = list(arrow_chunks(pd.DataFrame({"row_id": range(9)}))[1])
    assert room.tables.upload_chunk(collab, "brand", "users", 0, fits, last=True).committed
    with pytest.raises(FailedPreconditionError, match="already complete"):
        room.tables.upload_chunk(collab, "brand", "users", 0, fits, last=True)
    room.close()


def test_compressed_chunks_are_accepted_and_a_decompression_bomb_is_refused(tmp_path, monkeypatch):
    room = Room.open(tmp_path)
    collab = _collab(room)
    _points(room, collab, 50_000)
    users = pd.DataFrame({"row_id": range(50_000)})
    total, chunks = arrow_chunks(users)
    [chunk] = list(chunks)
    assert total == 1
    assert len(chunk) < 50_000 * 8 / 4  # zstd: the row numbers 0, 1, 2, ... shrink well below 8 bytes each
    monkeypatch.setattr(tables_module, "MAX_CHUNK_DECODED", 100_000)
    with pytest.raises(InvalidArgumentError, match="once decompressed; send smaller chunks"):
        room.tables.upload_chunk(collab, "brand", "users", 0, chunk, last=True)
    monkeypatch.setattr(tables_module, "MAX_CHUNK_DECODED", 64 * 2**20)
    progress = room.tables.upload_chunk(collab, "brand", "users", 0, chunk, last=True)
    assert progress.committed
    room.close()


def _active(room: Room, collab_id: str, policy: str):
    c = room.collaborations.create(PLATFORM, collab_id, policy)
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    return room.collaborations.get(PLATFORM, c.id)


def _upload(room: Room, collab, member: str, table: str, frame: pd.DataFrame) -> None:
    _, chunks = arrow_chunks(frame)
    room.tables.upload_chunk(collab, member, table, 0, next(chunks), last=True)


def test_physical_names_are_one_to_one_so_no_collaboration_overwrites_another(tmp_path):
    """The red team's collision: `acme` / platform / `brand__users` vs `acme--platform` / brand / `users`."""
    assert tables_module.physical_name("acme", "platform", "brand__users") != tables_module.physical_name(
        "acme--platform", "brand", "users"
    )
    room = Room.open(tmp_path)
    victim = _active(room, "acme--platform", DEMO_POLICY)
    _points(room, victim, 4)
    _upload(room, victim, "brand", "users", pd.DataFrame({"row_id": [1, 2, 3], "tier": ["gold", "gold", "silver"]}))
    attack_policy = DEMO_POLICY.replace("tables:\n", "tables:\n  platform.brand__users: {dimensions: {tier: [junk]}}\n")
    attacker = _active(room, "acme", attack_policy)
    _points(room, attacker, 4, "platform")
    _upload(room, attacker, "platform", "brand__users", pd.DataFrame({"row_id": [1, 2, 3], "tier": ["junk"] * 3}))

    physicals = set()
    for collab in (victim, attacker):  # each collaboration's tables are in its own file; the names differ anyway
        cur = room.store.of(collab.id).cursor()
        rows = cur.execute("SELECT collab, member, name, physical FROM data_tables").fetchall()
        assert len(rows) == 1
        physicals.add(rows[0][3])
    assert len(physicals) == 2
    cur = room.store.of(victim.id).cursor()
    [(physical,)] = cur.execute("SELECT physical FROM data_tables").fetchall()
    assert sorted(cur.execute(f'SELECT tier FROM "{physical}"').fetchall()) == [("gold",), ("gold",), ("silver",)]
    room.close()


def test_a_proposal_landing_while_the_first_chunk_is_processed_stores_nothing(tmp_path, monkeypatch):
    """The race, made deterministic: the proposal lands after the upload was authorized, before it writes."""
    room = Room.open(tmp_path)
    collab = _collab(room)
    revised = DEMO_POLICY.replace("min_group_size: 50", "min_group_size: 60")
    check = tables_module._check

    def propose_meanwhile(*args, **kwargs):
        room.collaborations.propose(PLATFORM, collab.id, revised)
        return check(*args, **kwargs)

    monkeypatch.setattr(tables_module, "_check", propose_meanwhile)
    _, chunks = arrow_chunks(pd.DataFrame({"row_id": [1, 2, 3]}))
    with pytest.raises(FailedPreconditionError, match="changed while your request was in flight"):
        room.tables.upload_chunk(collab, "brand", "users", 0, next(chunks), last=True)
    now = room.collaborations.get(BRAND, collab.id)
    assert now.policy_revision == 2
    assert not now.active
    cur = room.store.of(collab.id).cursor()
    assert cur.execute("SELECT count(*) FROM uploads").fetchall() == [(0,)]
    assert cur.execute("SELECT count(*) FROM data_tables").fetchall() == [(0,)]
    room.close()


def test_points_are_not_stored_under_a_revision_proposed_after_authorization(tmp_path, monkeypatch):
    from cleanroom_client.curve import hash_to_u
    from cleanroom_client.identity import IdentifierType

    room = Room.open(tmp_path)
    collab = _collab(room)
    room.collaborations.propose(PLATFORM, collab.id, DEMO_POLICY.replace("min_group_size: 50", "min_group_size: 60"))
    with pytest.raises(FailedPreconditionError, match="changed while your request was in flight"):
        room.relay.upload_points(collab, "brand", 0, IdentifierType.EMAIL, 0, b"", hash_to_u(b"p"), True)
    assert room.store.of(collab.id).cursor().execute("SELECT count(*) FROM uploads").fetchall() == [(0,)]
    room.close()
