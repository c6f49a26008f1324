"""Table uploads: compressed Arrow IPC is accepted, and its decompressed size is capped."""

from __future__ import annotations

import pandas as pd
import pytest

from cleanroom.errors import InvalidArgumentError
from cleanroom.matching import tables as tables_module
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom.synthetic import DEMO_POLICY
from cleanroom_client.tables import arrow_chunks

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)


def _collab(room: Room):
    c = room.collaborations.create(BRAND, "tables-test", DEMO_POLICY)
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    return room.collaborations.get(BRAND, c.id)


def test_compressed_chunks_are_accepted_and_a_decompression_bomb_is_refused(tmp_path, monkeypatch):
    room = Room.open(tmp_path)
    collab = _collab(room)
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
