"""Tampering with the audit log: online (the stored rows) and offline (an export), each named to the entry."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from cleanroom.audit import AuditEntry, verify_entries
from cleanroom.audit.keys import KEY_FILE, load_or_create_signing_key, public_pem
from cleanroom.cli import app
from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.errors import NotFoundError
from cleanroom.principals import Principal, Role
from cleanroom.room import Room

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)
FIELDS = ("time", "principal", "action", "params_json", "epsilon", "response_sha256", "prev_hash", "hash", "signature")


@pytest.fixture
def room(tmp_path: Path):
    room = Room.open(tmp_path)
    c = room.collaborations.create(BRAND, "audited", DEMO_POLICY)
    room.collaborations.approve(BRAND, c.id, c.policy_etag)
    room.collaborations.approve(PLATFORM, c.id, c.policy_etag)
    room.principals.add("auditor", Role.AUDITOR)
    room.principals.assign_auditor("auditor", c.id)  # entry 4 of the collaboration's chain
    yield room
    room.close()


def test_a_fresh_chain_verifies_and_records_every_action(room):
    result = room.audit.verify("audited")
    assert result.valid
    assert result.entries_checked == 4
    actions = [e.action for e in room.audit.entries("audited")]
    assert actions == ["collaboration.create", "policy.approve", "policy.approve", "auditor.assign"]
    assert room.audit.verify("").valid  # the server's chain: principal.add
    assert [e.action for e in room.audit.entries("")] == ["principal.add"]


def test_key_file_is_private_reused_and_refused_when_readable(room, tmp_path):
    path = tmp_path / KEY_FILE
    assert path.stat().st_mode & 0o077 == 0
    same = load_or_create_signing_key(tmp_path)
    assert public_pem(same) == public_pem(load_or_create_signing_key(tmp_path))
    path.chmod(0o640)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_signing_key(tmp_path)
    path.chmod(0o600)


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("seq", [1, 3, 4])
def test_changing_one_byte_of_any_field_is_caught_and_named(room, field, seq):
    cur = room.store.of("audited").cursor()
    if field == "signature":
        cur.execute(
            # the first character becomes another one (a signature that already began with 'x' stayed unchanged)
            "UPDATE audit_log SET signature = CAST(CONCAT(CASE WHEN LEFT(CAST(signature AS VARCHAR), 1) = 'x'"
            " THEN 'y' ELSE 'x' END, SUBSTRING(CAST(signature AS VARCHAR), 2)) AS BLOB)"
            " WHERE collab = 'audited' AND seq = ?",
            [seq],
        )
    elif field == "epsilon":
        cur.execute("UPDATE audit_log SET epsilon = epsilon + 0.5 WHERE collab = 'audited' AND seq = ?", [seq])
    else:
        # flip the last character to a different one
        cur.execute(
            f"UPDATE audit_log SET {field} = CONCAT(LEFT({field}, LENGTH({field}) - 1),"
            f" CASE WHEN RIGHT({field}, 1) = 'a' THEN 'b' ELSE 'a' END) WHERE collab = 'audited' AND seq = ?",
            [seq],
        )
    result = room.audit.verify("audited")
    assert not result.valid
    # an altered hash or prev_hash may surface on the entry itself or as the next entry's broken link
    assert result.first_invalid_sequence in (seq, seq + 1) if field == "hash" else result.first_invalid_sequence == seq
    assert result.reason.startswith(f"entry {result.first_invalid_sequence}:")


def test_deleting_or_reordering_entries_is_caught(room):
    cur = room.store.of("audited").cursor()
    cur.execute("DELETE FROM audit_log WHERE collab = 'audited' AND seq = 2")
    result = room.audit.verify("audited")
    assert (result.valid, result.first_invalid_sequence) == (False, 2)
    assert "deleted or reordered" in result.reason


def test_swapping_two_entries_is_caught(room):
    cur = room.store.of("audited").cursor()
    cur.execute("UPDATE audit_log SET seq = -1 WHERE collab = 'audited' AND seq = 2")
    cur.execute("UPDATE audit_log SET seq = 2 WHERE collab = 'audited' AND seq = 3")
    cur.execute("UPDATE audit_log SET seq = 3 WHERE collab = 'audited' AND seq = -1")
    result = room.audit.verify("audited")
    assert not result.valid
    assert result.first_invalid_sequence == 2


def _export(room, tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "export.jsonl"
    head = room.audit.head("audited")
    path.write_text("".join(e.to_json() + "\n" for e in room.audit.entries("audited")) + head.to_json() + "\n")
    key = tmp_path / "server.pem"
    key.write_bytes(room.audit.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path, key


def _offline(path: Path, key: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", "verify", str(path), "--public-key", str(key)], terminal_width=300)
    return result.exit_code, result.output


def test_offline_verification_of_an_export(room, tmp_path):
    path, key = _export(room, tmp_path)
    code, out = _offline(path, key)
    assert code == 0
    assert "VALID: 4 entries" in out
    lines = path.read_text().splitlines()

    # one byte changed inside entry 3
    i = lines[2].index('"action":"') + len('"action":"')
    tampered = [*lines[:2], lines[2][:i] + "X" + lines[2][i + 1 :], *lines[3:]]
    path.write_text("\n".join(tampered) + "\n")
    code, out = _offline(path, key)
    assert code == 1
    assert "entry 3: its contents do not match its hash" in out

    path.write_text("\n".join([lines[0], lines[2], lines[3], lines[4]]) + "\n")  # entry 2 deleted
    code, out = _offline(path, key)
    assert (code, "entry 2: expected sequence 2, found 3" in out) == (1, True)

    path.write_text("\n".join([lines[0], lines[2], lines[1], lines[3], lines[4]]) + "\n")  # 2 and 3 swapped
    code, out = _offline(path, key)
    assert (code, "entry 2:" in out) == (1, True)


def test_a_different_key_rejects_every_signature(room, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    entries = list(room.audit.entries("audited"))
    result = verify_entries(entries, Ed25519PrivateKey.generate().public_key())
    assert (result.valid, result.first_invalid_sequence) == (False, 1)
    assert "signature" in result.reason
    assert AuditEntry.from_json(entries[0].to_json()) == entries[0]


def test_an_action_whose_entry_cannot_be_written_does_not_happen(room, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(room.audit, "append", broken)
    with pytest.raises(OSError, match="disk full"):
        room.collaborations.create(BRAND, "never-made", DEMO_POLICY)
    monkeypatch.undo()
    catalog = room.store.catalog.cursor()
    assert catalog.execute("SELECT count(*) FROM collaboration_index WHERE id = 'never-made'").fetchall() == [(0,)]
    assert not room.store.exists("never-made")  # the file the creation began is gone with it
    with pytest.raises(NotFoundError):
        room.collaborations.get(BRAND, "never-made")
