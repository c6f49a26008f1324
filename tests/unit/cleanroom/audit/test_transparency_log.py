"""The operator holds the audit key: a history it rewrites and re-signs is perfect as a chain, yet caught by the
tree head an auditor remembers (offline) and by the receipts of the entries it dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanroom.audit.chain import GENESIS, AuditEntry, SignedHead, verify_export
from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom_client import merkle
from cleanroom_client.transparency import TreeHead, leaf_data

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)


@pytest.fixture
def room(tmp_path: Path):
    room = Room.open(tmp_path)
    c = room.collaborations.create(BRAND, "audited", DEMO_POLICY)
    room.collaborations.approve(BRAND, c.id, c.policy_etag)
    room.collaborations.approve(PLATFORM, c.id, c.policy_etag)
    for i in range(5):
        room.audit.record("audited", "brand", "query.overlap", {"i": i})
    yield room
    room.close()


def _export(room: Room, entries: list[AuditEntry]) -> str:
    last = entries[-1]
    nodes = merkle.MerkleNodes()
    for e in entries:
        nodes.append(merkle.leaf_hash(leaf_data(e.hash, e.signature)))
    unsigned = TreeHead("audited", nodes.size, nodes.root(), "2026-12-06T00:00:00Z")
    tree = TreeHead("audited", nodes.size, unsigned.root, unsigned.time, room.audit.sign(unsigned.message()))
    signed_head = SignedHead(
        "audited",
        last.sequence,
        last.hash,
        room.audit.sign(SignedHead("audited", last.sequence, last.hash).message()),
        tree,
    )
    return "\n".join([*(e.to_json() for e in entries), signed_head.to_json()])


def _resign(room: Room, entries: list[AuditEntry]) -> list[AuditEntry]:
    """What an operator with the key can do: rebuild the chain from the first entry with every hash and signature."""
    out, previous = [], GENESIS
    for e in entries:
        body = AuditEntry(**{**e.__dict__, "previous_hash": previous, "hash": "", "signature": b""})
        digest = body.compute_hash()
        out.append(AuditEntry(**{**body.__dict__, "hash": digest, "signature": room.audit.sign(bytes.fromhex(digest))}))
        previous = digest
    return out


def test_a_re_signed_rewrite_verifies_as_a_chain_but_not_against_the_remembered_tree_head(room: Room) -> None:
    entries = list(room.audit.entries("audited"))
    key = room.audit.public_key
    honest = _export(room, entries)
    assert verify_export(honest, key).valid
    remembered = room.trees.head("audited")
    assert verify_export(honest, key, remembered).valid

    # entry 4 (a charge) dropped, the rest renumbered and re-signed: a perfect chain of one entry fewer
    rewritten = _resign(
        room, [AuditEntry(**{**e.__dict__, "sequence": i}) for i, e in enumerate([*entries[:3], *entries[4:]], start=1)]
    )
    forged = _export(room, rewritten)
    assert verify_export(forged, key).valid  # what an auditor without memory sees
    result = verify_export(forged, key, remembered)
    assert not result.valid
    assert "shrank" in result.reason

    # the same rewrite grown back to the remembered size: sizes agree, the root does not
    padded = _resign(room, [*rewritten, AuditEntry(**{**entries[-1].__dict__, "sequence": len(entries)})])
    result = verify_export(_export(room, padded), key, remembered)
    assert not result.valid
    assert "not the ones this auditor saw" in result.reason


def test_an_incremental_check_skips_the_remembered_signatures_but_not_the_contents(room: Room) -> None:
    entries = list(room.audit.entries("audited"))
    remembered = room.trees.head("audited", size=len(entries) - 2)
    text = _export(room, entries)
    assert verify_export(text, room.audit.public_key, remembered).valid
    # a field edited inside the remembered prefix is still caught (its hash no longer matches its contents)
    lines = text.splitlines()
    lines[1] = lines[1].replace('"action":"', '"action":"X', 1)
    result = verify_export("\n".join(lines), room.audit.public_key, remembered)
    assert not result.valid
    assert "entry 2" in result.reason


def test_a_remembered_head_of_another_collaboration_is_refused_not_taken_as_a_start(room: Room) -> None:
    other = room.collaborations.create(BRAND, "other", DEMO_POLICY)
    text = _export(room, list(room.audit.entries("audited")))
    key = room.audit.public_key
    for remembered in (room.trees.head(other.id), room.trees.head(other.id, size=0)):
        result = verify_export(text, key, remembered)
        assert not result.valid
        assert "remembered for collaboration 'other'" in result.reason
