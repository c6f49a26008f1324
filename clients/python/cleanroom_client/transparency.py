"""The transparency log as a member or an auditor checks it: signed tree heads, receipts and what the SDK remembers.

Why: the server's disk holds the audit log, so whoever holds the disk could go back in time (restore an older
database, cut the newest entries and the head that names them) and refund privacy budget unseen. Following
Certificate Transparency (RFC 9162), the server signs the Merkle tree head of each chain; every response that
appended an entry carries a *receipt* (the entry, the head after it, the entry's inclusion proof); and the SDK
remembers, per server and collaboration, the latest head it verified and every receipt. A new head must extend
the remembered one (a consistency proof), so a rollback, a rewritten entry or a fork shown to this client raises
`HistoryRewrittenError` with both heads, and the collaboration stays refused until the user acknowledges it.

What is detected, and by whom: a member or auditor catches any history that does not extend a head *it saw*;
members comparing their heads (`compare`) catch a fork between them. Not detected: a rollback before anyone saw
the later head (nothing remembered it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import merkle
from .errors import CleanRoomError, InvalidArgumentError
from .protocol import audit_pb2 as apb

TREE_HEAD_KIND = "cleanroom.audit.tree-head.v1"
#: The trailing metadata key of the receipts a response carries (a serialized `Receipts`).
RECEIPTS_METADATA = "cleanroom-receipts-bin"
GENESIS = "0" * 64
#: How far below the ε a query asked for its entry may record it: float noise only (the ledger rounds charges up).
EPSILON_SLACK = 1e-12


#: The answers to a proof request that are evidence against the server's history: a proof that does not verify, or
#: the server's word that a size or sequence lies beyond its log (it no longer holds what this client saw). Any other
#: failure (over a rate limit, unavailable, a deadline) says nothing about the history and is raised as it is.
EVIDENCE = (merkle.ProofError, InvalidArgumentError)


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept as is (the audit log's one encoding)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class HistoryRewrittenError(CleanRoomError):
    """The server showed a history that does not extend one this client verified before: a rollback or a fork.

    `remembered` and `shown` are the two tree heads (as dicts). Nothing more is sent for this collaboration until the
    user acknowledges the incident (`CleanRoomClient.acknowledge_history_rewrite`).
    """

    def __init__(self, collaboration: str, message: str, remembered: TreeHead | None, shown: TreeHead | None) -> None:
        self.collaboration = collaboration
        self.remembered = remembered
        self.shown = shown
        both = f" (remembered: {remembered.describe() if remembered else 'none'}; shown: "
        both += f"{shown.describe() if shown else 'none'})"
        super().__init__(
            "DATA_LOSS", f"the audit log of {collaboration or 'the server'} was rewritten: {message}{both}"
        )


def signed_by(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is `key`'s Ed25519 signature of `message`: False for any other, never an exception.

    The one check behind every signed head's `is_signed_by` (the tree heads here, the chain heads of the server's
    exports).
    """
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class TreeHead:
    """A chain's Merkle tree head, signed by the server: collaboration ("" for the server's chain), size, root, time."""

    collaboration: str
    size: int
    root: bytes
    time: str
    signature: bytes = b""

    def message(self) -> bytes:
        """The bytes the server signs."""
        body = {
            "collaboration": self.collaboration,
            "kind": TREE_HEAD_KIND,
            "root": self.root.hex(),
            "size": self.size,
            "time": self.time,
        }
        return canonical_json(body).encode("utf-8")

    def is_signed_by(self, key: Ed25519PublicKey) -> bool:
        """Whether the server's key signed this head."""
        return signed_by(key, self.signature, self.message())

    def describe(self) -> str:
        """One line for a person: size, the root's first hex digits, time."""
        return f"{self.size} entries, root {self.root.hex()[:16]}…, signed {self.time}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (`cleanroom-client audit head` writes it)."""
        return {
            "collaboration": self.collaboration,
            "size": self.size,
            "root": self.root.hex(),
            "time": self.time,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TreeHead:
        """Parse `to_dict`'s form; ValueError when it is not one."""
        try:
            return cls(
                str(d["collaboration"]),
                int(d["size"]),
                bytes.fromhex(d["root"]),
                str(d["time"]),
                bytes.fromhex(d["signature"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: a size of 1e999
            raise ValueError(f"not a tree head: {exc}") from None

    def to_proto(self) -> apb.TreeHead:
        """Wire form."""
        return apb.TreeHead(
            collaboration=self.collaboration, size=self.size, root=self.root, time=self.time, signature=self.signature
        )

    @classmethod
    def from_proto(cls, p: apb.TreeHead) -> TreeHead:
        """From the wire (`collaboration` is a bare id)."""
        return cls(p.collaboration, int(p.size), bytes(p.root), p.time, bytes(p.signature))


def entry_body(entry: apb.AuditEntry) -> dict[str, Any]:
    """The body an entry's hash covers, rebuilt from its wire form (PROTOCOL.md, "The audit log")."""
    collaboration = entry.collaboration.removeprefix("collaborations/")
    when = ""
    if entry.HasField("time"):
        when = entry.time.ToDatetime().isoformat(timespec="microseconds") + "Z"
    return {
        "collaboration": collaboration,
        "sequence": entry.sequence,
        "time": when,
        "principal": entry.principal,
        "action": entry.action,
        "parameters": json.loads(entry.parameters_json or "{}"),
        "epsilon": entry.epsilon,
        "delta": entry.delta,
        "response_sha256": entry.response_sha256,
        "previous_hash": entry.previous_hash,
    }


def leaf_data(hash_hex: str, signature: bytes) -> bytes:
    """An entry's leaf data in its chain's Merkle tree: the 32 bytes of its hash, then its 64-byte signature.

    The signature is part of the leaf so that a member holding an inclusion proof cannot test guesses of another
    member's entry against the sibling hashes: it would need the server's signature of each guess.
    """
    return bytes.fromhex(hash_hex) + signature


def entry_leaf(entry: apb.AuditEntry, key: Ed25519PublicKey) -> bytes:
    """The entry's Merkle leaf hash, from its fields (never from the hash it claims).

    ProofError when the fields cannot be read, do not match the hash, or the server did not sign them.
    """
    try:
        digest = hashlib.sha256(canonical_json(entry_body(entry)).encode("utf-8")).hexdigest()
    except (ValueError, OverflowError) as exc:
        raise merkle.ProofError(f"entry {entry.sequence}'s fields cannot be read: {exc}") from None
    if digest != entry.hash:
        raise merkle.ProofError(f"entry {entry.sequence}'s fields do not match its hash")
    try:
        key.verify(entry.signature, bytes.fromhex(digest))
    except InvalidSignature:
        raise merkle.ProofError(f"entry {entry.sequence} is not signed by the server's audit key") from None
    return merkle.leaf_hash(leaf_data(digest, bytes(entry.signature)))


def check_receipt(receipt: apb.Receipt, key: Ed25519PublicKey) -> TreeHead:
    """The head of a receipt whose entry is signed and in its head's tree; ProofError otherwise.

    The head's own signature and its consistency with what this client saw are `HeadMemory.accept`'s to check.
    """
    head = TreeHead.from_proto(receipt.head)
    chain = receipt.entry.collaboration.removeprefix("collaborations/")
    if chain != head.collaboration or receipt.entry.collaboration != (f"collaborations/{chain}" if chain else ""):
        raise merkle.ProofError(
            f"entry {receipt.entry.sequence} belongs to another chain ({chain!r}) than its head "
            f"({head.collaboration!r})"
        )
    leaf = entry_leaf(receipt.entry, key)
    merkle.verify_inclusion(leaf, receipt.entry.sequence - 1, head.size, list(receipt.inclusion_proof), head.root)
    return head


def parse_receipts(trailing: Sequence[tuple[str, str | bytes]] | None) -> list[apb.Receipt]:
    """The receipts in a call's trailing metadata (none when the call appended nothing)."""
    out: list[apb.Receipt] = []
    for key, value in trailing or ():
        if key == RECEIPTS_METADATA and isinstance(value, bytes):
            message = apb.Receipts()
            message.ParseFromString(value)
            out.extend(message.receipts)
    return out
