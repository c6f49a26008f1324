"""The transparency log's published vectors verify as a partner in another language would verify them."""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cleanroom_client import merkle
from cleanroom_client.transparency import TreeHead


def _vectors() -> dict:
    return json.loads((resources.files("cleanroom_client") / "vectors" / "transparency-v1.json").read_text())


def _entry_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def test_entries_leaves_heads_and_proofs_verify_from_the_spec_alone() -> None:
    v = _vectors()
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(v["public_key"]))
    leaves = []
    for entry, leaf in zip(v["entries"], v["leaves"], strict=True):
        assert _entry_hash(entry) == entry["hash"]
        signature = base64.b64decode(entry["signature"])
        key.verify(signature, bytes.fromhex(entry["hash"]))
        computed = hashlib.sha256(b"\x00" + bytes.fromhex(entry["hash"]) + signature).digest()
        assert computed.hex() == leaf
        leaves.append(computed)
    for size, head in enumerate(v["heads"]):
        parsed = TreeHead.from_dict(head)
        assert parsed.size == size
        assert parsed.root == merkle.root_of(leaves[:size])
        assert parsed.message().decode() == head["signed_message"]
        assert parsed.is_signed_by(key)
    roots = [bytes.fromhex(h["root"]) for h in v["heads"]]
    for case in v["inclusion"]:
        m, size = case["sequence"] - 1, case["tree_size"]
        proof = [bytes.fromhex(h) for h in case["proof"]]
        merkle.verify_inclusion(leaves[m], m, size, proof, roots[size])
    for case in v["consistency"]:
        first, second = case["first"], case["second"]
        proof = [bytes.fromhex(h) for h in case["proof"]]
        merkle.verify_consistency(first, second, roots[first], roots[second], proof)


def test_an_entry_whose_charge_was_edited_no_longer_matches_its_leaf() -> None:
    entry = dict(_vectors()["entries"][3])
    assert entry["epsilon"] == 0.5
    entry["epsilon"] = 0.0
    assert _entry_hash(entry) != entry["hash"]


def test_a_proof_of_another_size_does_not_verify() -> None:
    v = _vectors()
    case = next(c for c in v["consistency"] if (c["first"], c["second"]) == (3, 5))
    roots = [bytes.fromhex(h["root"]) for h in v["heads"]]
    with pytest.raises(merkle.ProofError):
        merkle.verify_consistency(3, 6, roots[3], roots[6], [bytes.fromhex(h) for h in case["proof"]])
