"""Table uploads: after the point upload, with its row numbers only, final once committed; compressed Arrow IPC is
accepted and its decompressed size is capped."""

from __future__ import annotations

import pandas as pd
import pytest

from cleanroom.errors import FailedPreconditionError, InvalidArgumentError
from cleanroom.matching import tables as tables_module
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom.synthetic import DEMO_POLICY
from cleanroom_client.identity import IdentifierType
from cleanroom_client.tables import arrow_chunks

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)


def _collab(room: Room):
    c = room.collaborations.create(BRAND, "tables-test", DEMO_POLICY)
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    return room.collaborations.get(BRAND, c.id)


def _points(room: Room, collab, total_rows: int) -> None:
    """Commit an (empty) point upload that numbers `total_rows` rows."""
    room.relay.upload_points(collab, "brand", 0, IdentifierType.EMAIL, 0, b"", b"", last=True, total_rows=total_rows)


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
    room.db.close()


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
    room.db.close()
