"""The data directory's files: a catalogue and one file per collaboration, kept consistent across crashes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cleanroom.cli import app
from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.errors import NotFoundError
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom.storage import LegacyLayoutError
from cleanroom.storage.store import COLLABORATIONS_DIR, LEGACY_FILE

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)


def test_a_single_file_data_directory_is_refused_with_what_to_do(tmp_path):
    (tmp_path / LEGACY_FILE).write_bytes(b"an earlier release's database")
    with pytest.raises(LegacyLayoutError, match="single-file layout of an earlier release"):
        Room.open(tmp_path)
    assert (tmp_path / LEGACY_FILE).read_bytes() == b"an earlier release's database"  # left as it was
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path), "--port", "0", "--insecure"])
    assert result.exit_code == 2
    assert "does not convert it" in " ".join(result.output.split())


def test_a_creation_cut_short_before_the_index_is_invisible_and_replaced(tmp_path, monkeypatch):
    room = Room.open(tmp_path)
    from cleanroom.collaborations import Collaborations

    def crash(*args, **kwargs):
        raise OSError("the catalogue's disk is full")

    monkeypatch.setattr(Collaborations, "_index", crash)
    with pytest.raises(OSError, match="disk is full"):
        room.collaborations.create(BRAND, "cut-short", DEMO_POLICY)
    monkeypatch.undo()
    assert not room.store.exists("cut-short")  # the file the creation began is gone
    assert room.audit.stored_head("cut-short") is None  # and so is its chain's head
    with pytest.raises(NotFoundError):
        room.collaborations.get(BRAND, "cut-short")
    room.close()

    # A crash after the file committed but before the index: the file is there, nobody sees it, and creating the
    # id again replaces it (its chain starts afresh and verifies).
    room = Room.open(tmp_path)
    orphan = room.store.create("orphaned")
    room.audit.record("orphaned", "brand", "collaboration.create", {"revision": 1})
    assert orphan.path.exists()
    with pytest.raises(NotFoundError):
        room.collaborations.get(BRAND, "orphaned")
    assert room.collaborations.list(BRAND, 10, "") == ([], "")
    c = room.collaborations.create(BRAND, "orphaned", DEMO_POLICY)
    assert [e.action for e in room.audit.entries(c.id)] == ["collaboration.create"]
    assert room.audit.verify(c.id).valid
    room.close()


def test_probing_ids_creates_no_files(tmp_path):
    room = Room.open(tmp_path)
    for cid in ("not-there", "nor-this-one"):
        with pytest.raises(NotFoundError):
            room.collaborations.get(BRAND, cid)
    assert list((tmp_path / COLLABORATIONS_DIR).iterdir()) == []
    room.close()


def test_the_catalogue_follows_approvals_and_auditor_assignments(tmp_path):
    room = Room.open(tmp_path)
    room.principals.add("auditor", Role.AUDITOR)
    c = room.collaborations.create(BRAND, "indexed", DEMO_POLICY)
    catalog = room.store.catalog.cursor()
    awaiting = "SELECT proposer, awaiting FROM collaboration_index WHERE id = 'indexed'"
    assert catalog.execute(awaiting).fetchall() == [("brand", True)]
    room.collaborations.approve(BRAND, c.id, c.policy_etag)
    room.collaborations.approve(PLATFORM, c.id, c.policy_etag)
    assert catalog.execute(awaiting).fetchall() == [("brand", False)]
    room.principals.assign_auditor("auditor", c.id)
    assert [x.id for x in room.collaborations.list(Principal("auditor", Role.AUDITOR), 10, "")[0]] == ["indexed"]
    assert [x.id for x in room.collaborations.list(PLATFORM, 10, "")[0]] == ["indexed"]
    room.close()
