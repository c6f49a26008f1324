"""The audit chain's end is anchored by a head the server signs: a cut tail is caught offline and on the server,
and the budget fails closed when the chain does not verify."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import duckdb
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from cleanroom.audit import AuditLog
from cleanroom.cli import app
from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.errors import FailedPreconditionError
from cleanroom.principals import Principal, Role
from cleanroom.privacy.budget import Charge, Limits
from cleanroom.room import Room
from cleanroom.storage.store import COLLABORATIONS_DIR

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)
C = "anchored"
LIMITS = Limits(10.0, 1e-6)


def _room(path: Path, entries: int = 60) -> Room:
    """A collaboration whose chain holds `entries` + 3 entries, 0.1 epsilon of them spent by the brand."""
    room = Room.open(path)
    c = room.collaborations.create(BRAND, C, DEMO_POLICY)
    room.collaborations.approve(BRAND, c.id, c.policy_etag)
    room.collaborations.approve(PLATFORM, c.id, c.policy_etag)
    for _ in range(entries):
        hold = room.budget.reserve(C, [Charge("brand", 0.1)], LIMITS, "overlap", {})
        room.budget.commit(hold, "query.overlap", {}, {"cells": []})
    return room


def _export(room: Room, path: Path) -> tuple[Path, Path]:
    out = path / "export.jsonl"
    head = room.audit.head(C)
    assert head is not None
    out.write_text("".join(e.to_json() + "\n" for e in room.audit.entries(C)) + head.to_json() + "\n")
    key = path / "server.pem"
    key.write_bytes(room.audit.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return out, key


def _verify(path: Path, key: Path) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["audit", "verify", str(path), "--public-key", str(key)], terminal_width=300)
    return r.exit_code, r.output


def test_an_export_cut_at_its_end_is_invalid_offline(tmp_path):
    room = _room(tmp_path / "data")
    export, key = _export(room, tmp_path)
    room.close()
    assert _verify(export, key)[0] == 0
    lines = export.read_text().splitlines()
    entries, head = lines[:-1], lines[-1]
    for cut in (1, 50):  # the last entries deleted, the signed head kept
        export.write_text("\n".join([*entries[:-cut], head]) + "\n")
        code, out = _verify(export, key)
        assert code == 1
        assert "entries were cut from its end" in out
    for cut in (1, 51):  # the head deleted too: the export is incomplete
        export.write_text("\n".join(lines[:-cut]) + "\n")
        code, out = _verify(export, key)
        assert (code, "does not end with the server's signed head" in out) == (1, True)
    export.write_text("")
    assert _verify(export, key)[0] == 1
    import json

    real = json.loads(head)["head"]
    entry_13 = json.loads(entries[12])["hash"]  # a head naming entry 13, with the signature of the real one
    forged = head.replace('"sequence":63', '"sequence":13').replace(real["hash"], entry_13)
    export.write_text("\n".join([*entries[:13], forged]) + "\n")
    code, out = _verify(export, key)
    assert (code, "signed head's signature is not the server's" in out) == (1, True)


def _edit_while_stopped(path: Path, sql: str) -> None:
    con = duckdb.connect(str(path / COLLABORATIONS_DIR / f"{C}.duckdb"))
    con.execute(sql)
    con.close()


def test_a_tail_cut_in_the_database_is_caught_and_closes_the_budget(tmp_path):
    data = tmp_path / "data"
    room = _room(data)
    assert room.budget.status(C, "brand", LIMITS).spent == pytest.approx(6.0)
    room.close()
    _edit_while_stopped(data, f"DELETE FROM audit_log WHERE collab = '{C}' AND seq > 13")  # 50 debits gone
    room = Room.open(data)
    try:
        result = room.audit.verify(C)
        assert not result.valid
        assert "cut from its end" in result.reason
        with pytest.raises(FailedPreconditionError, match="budget is closed"):
            room.budget.reserve(C, [Charge("brand", 0.1)], LIMITS)
        with pytest.raises(FailedPreconditionError, match="does not verify"):
            room.budget.status(C, "brand", LIMITS)
    finally:
        room.close()


def test_zeroing_epsilon_in_stored_entries_refunds_nothing(tmp_path):
    data = tmp_path / "data"
    room = _room(data, entries=10)
    room.close()
    _edit_while_stopped(data, f"UPDATE audit_log SET epsilon = 0 WHERE collab = '{C}'")
    room = Room.open(data)
    try:
        with pytest.raises(FailedPreconditionError, match="budget is closed"):
            room.budget.reserve(C, [Charge("brand", 9.9)], LIMITS)
    finally:
        room.close()


def test_a_missing_head_file_closes_the_budget_and_a_crash_before_the_head_is_written_does_not(tmp_path):
    data = tmp_path / "data"
    room = _room(data, entries=3)
    head_file = room.audit._head_path(C)
    stale = head_file.read_text()
    hold = room.budget.reserve(C, [Charge("brand", 0.1)], LIMITS, "overlap", {})
    room.budget.commit(hold, "query.overlap", {}, {"cells": []})
    room.close()
    head_file.write_text(stale)  # as if the server died between the commit and the head's write
    room = Room.open(data)
    assert room.audit.verify(C).valid
    room.budget.reserve(C, [Charge("brand", 0.1)], LIMITS)
    room.close()
    head_file.unlink()
    room = Room.open(data)
    try:
        assert "signed head of this chain is missing" in room.audit.verify(C).reason
        with pytest.raises(FailedPreconditionError):
            room.budget.reserve(C, [Charge("brand", 0.1)], LIMITS)
    finally:
        room.close()


def test_start_up_reads_no_entry_whatever_the_log_length(tmp_path, monkeypatch):
    """Start-up checks nothing per entry: a chain is checked against its signed head when first touched."""
    data = tmp_path / "data"
    room = _room(data, entries=30)
    for i in range(5):
        room.collaborations.create(BRAND, f"other-{i}", DEMO_POLICY)
    room.close()
    read: list[str] = []
    real = AuditLog.entries

    def counting(self, collaboration_id, after=0, limit=None):
        for entry in real(self, collaboration_id, after, limit):
            read.append(collaboration_id)
            yield entry

    monkeypatch.setattr(AuditLog, "entries", counting)
    room = Room.open(data)
    try:
        assert read == []
        assert room.budget.status(C, "brand", LIMITS).spent == pytest.approx(3.0)  # the budget verifies its chain
        assert len(read) == 33
    finally:
        room.close()


def test_an_append_after_a_cut_never_re_signs_the_head(tmp_path):
    """Entries cut while stopped, then a refusal appended before anything verifies: the cut stays caught."""
    data = tmp_path / "data"
    room = _room(data, entries=20)
    room.close()
    _edit_while_stopped(data, f"DELETE FROM audit_log WHERE collab = '{C}' AND seq > 13")
    room = Room.open(data)
    room.audit.record(C, "platform", "refused", {"attempted": "query.overlap"})  # the first touch is an append
    room.close()
    room = Room.open(data)
    try:
        assert not room.audit.verify(C).valid
        with pytest.raises(FailedPreconditionError, match="budget is closed"):
            room.budget.reserve(C, [Charge("brand", 0.1)], LIMITS)
    finally:
        room.close()


def test_a_forged_head_is_caught_at_the_first_append(tmp_path):
    data = tmp_path / "data"
    room = _room(data, entries=2)
    head_file = room.audit._head_path(C)
    room.close()
    forged = json.loads(head_file.read_text())
    forged["head"]["signature"] = base64.b64encode(bytes(64)).decode()
    head_file.write_text(json.dumps(forged))
    room = Room.open(data)
    try:
        room.audit.record(C, "platform", "refused", {"attempted": "query.overlap"})
        assert head_file.read_text() == json.dumps(forged)  # never re-signed over
        with pytest.raises(FailedPreconditionError, match="budget is closed"):
            room.budget.reserve(C, [Charge("brand", 0.1)], LIMITS)
    finally:
        room.close()
