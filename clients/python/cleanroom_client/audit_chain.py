"""Audit entries, their hashes, and verification of a chain: the part an auditor can run offline.

An entry's hash is SHA-256 over the canonical JSON (sorted keys, no spaces, UTF-8) of its body: collaboration,
sequence, time, principal, action, parameters, epsilon, delta, response_sha256 and previous_hash. epsilon and delta
are what the entry charges its principal's privacy budget (the budget is the sum over the chain). The server signs the
32 raw bytes of that hash with Ed25519. Each chain (a collaboration's, or the server's own with collaboration "")
starts at sequence 1 with previous_hash of 64 zeros. So changing any byte of an entry breaks its hash (or its
signature), deleting or reordering entries breaks the sequence and the links, and forging a new entry needs the
server's private key. Verification names the first entry that fails and why.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import merkle
from .transparency import TreeHead, leaf_data, signed_by

GENESIS = "0" * 64


#: How a non-finite float is written (JSON has no number for it): as text, the name JavaScript and Python give it.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by its name (`NON_FINITE`), so it is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return NON_FINITE[repr(float(value))]
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept as is; never fails on a non-finite float.

    A NaN or an infinity is written as its name (`json_safe`), so the result is strict JSON any verifier parses,
    and the same text as for a value that held the name already.
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(json_safe(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(text: str) -> str:
    """Lower-case hex SHA-256 of UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One entry of a chain."""

    collaboration: str
    sequence: int
    time: str
    principal: str
    action: str
    parameters: Mapping[str, Any]
    epsilon: float
    response_sha256: str
    previous_hash: str
    hash: str = ""
    signature: bytes = b""
    delta: float = 0.0

    def body(self) -> dict[str, Any]:
        """What the hash covers."""
        return {
            "collaboration": self.collaboration,
            "sequence": self.sequence,
            "time": self.time,
            "principal": self.principal,
            "action": self.action,
            "parameters": dict(self.parameters),
            "epsilon": self.epsilon,
            "delta": self.delta,
            "response_sha256": self.response_sha256,
            "previous_hash": self.previous_hash,
        }

    def compute_hash(self) -> str:
        """SHA-256 of the canonical body."""
        return sha256_hex(canonical_json(self.body()))

    def to_json(self) -> str:
        """One JSON Lines record, as exported."""
        return canonical_json(
            {**self.body(), "hash": self.hash, "signature": base64.b64encode(self.signature).decode()}
        )

    @classmethod
    def from_json(cls, line: str) -> AuditEntry:
        """Parse an exported record; ValueError when it is not one."""
        try:
            d = json.loads(line)
            return cls(
                collaboration=str(d["collaboration"]),
                sequence=int(d["sequence"]),
                time=str(d["time"]),
                principal=str(d["principal"]),
                action=str(d["action"]),
                parameters=dict(d["parameters"]),
                epsilon=float(d["epsilon"]),
                delta=float(d["delta"]),
                response_sha256=str(d["response_sha256"]),
                previous_hash=str(d["previous_hash"]),
                hash=str(d["hash"]),
                signature=base64.b64decode(d["signature"], validate=True),
            )
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:  # 1e999; nested too deep
            raise ValueError(f"not an audit entry: {str(exc)[:200] or type(exc).__name__}") from None


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a verification: valid, or the first failing entry (by sequence, or position) and why."""

    valid: bool
    entries_checked: int
    first_invalid_sequence: int = 0
    reason: str = ""


HEAD_KIND = "cleanroom.audit.head.v1"


@dataclass(frozen=True)
class SignedHead:
    """The server's signature over a chain's last entry (collaboration, sequence, hash): what anchors its end.

    Entries link backwards, so deleting the newest ones leaves a shorter chain that still verifies; a head signed
    by the server names the end, so a cut tail no longer matches it. Exports end with the head; the server keeps its
    latest head outside its database and checks the chain against it; members and auditors may keep the heads they
    were shown, and a later head with a lower sequence proves a rollback.
    """

    collaboration: str
    sequence: int
    hash: str
    signature: bytes = b""
    #: The chain's signed Merkle tree head at the same entry (exports carry it; `cleanroom_client.transparency`).
    tree: TreeHead | None = None

    def message(self) -> bytes:
        """The bytes the server signs."""
        body = {"kind": HEAD_KIND, "collaboration": self.collaboration, "sequence": self.sequence, "hash": self.hash}
        return canonical_json(body).encode("utf-8")

    def is_signed_by(self, public_key: Ed25519PublicKey) -> bool:
        """Whether the signature is the server's."""
        return signed_by(public_key, self.signature, self.message())

    def to_json(self) -> str:
        """The export's last line."""
        head: dict[str, Any] = {
            "collaboration": self.collaboration,
            "sequence": self.sequence,
            "hash": self.hash,
            "signature": base64.b64encode(self.signature).decode(),
        }
        if self.tree is not None:
            head["tree"] = self.tree.to_dict()
        return canonical_json({"head": head})

    @classmethod
    def from_json(cls, line: str) -> SignedHead | None:
        """The head of an export line, or None when the line is not a head; ValueError when it is a broken one."""
        try:
            d = json.loads(line)
        except (ValueError, RecursionError):
            return None
        if not isinstance(d, dict) or set(d) != {"head"}:
            return None
        try:
            h = d["head"]
            return cls(
                str(h["collaboration"]),
                int(h["sequence"]),
                str(h["hash"]),
                base64.b64decode(h["signature"], validate=True),
                TreeHead.from_dict(h["tree"]) if h.get("tree") else None,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: a sequence of 1e999
            raise ValueError(f"not a signed head: {str(exc)[:200]}") from None


def verify_entries(
    entries: Iterable[AuditEntry],
    public_key: Ed25519PublicKey,
    head: SignedHead | None = None,
    exact: bool = True,
    signed_prefix: int = 0,
) -> VerifyResult:
    """Check one chain in order: sequence, links, hashes and signatures; then its end against a signed head.

    With a head, the chain must reach the head's sequence with the head's hash (`exact`: and end there, as an
    export does; otherwise entries after the head are allowed, as on a server that stopped between writing an entry
    and its head). An empty chain verifies only without a head. The signatures of the first `signed_prefix` entries
    are not checked again: the caller has shown that their (hash, signature) pairs are the ones it verified before
    (a remembered Merkle root); their contents are still checked against their hashes.
    """
    previous = GENESIS
    checked = 0
    at_head = head is None
    for expected, entry in enumerate(entries, start=1):
        reason = _first_problem(entry, expected, previous, None if expected <= signed_prefix else public_key)
        if reason:
            return VerifyResult(False, checked, expected, f"entry {expected}: {reason}")
        previous = entry.hash
        checked += 1
        if head is not None and entry.sequence == head.sequence:
            if entry.hash != head.hash:
                return VerifyResult(False, checked, expected, f"entry {expected} is not the one the signed head names")
            at_head = True
    if head is None:
        return VerifyResult(True, checked)
    if not head.is_signed_by(public_key):
        return VerifyResult(False, checked, checked + 1, "the signed head's signature is not the server's")
    if not at_head:
        return VerifyResult(
            False,
            checked,
            checked + 1,
            f"the chain ends at entry {checked} but the server's signed head names entry {head.sequence}: "
            "entries were cut from its end",
        )
    if exact and checked != head.sequence:
        return VerifyResult(False, checked, head.sequence + 1, "entries follow the signed head")
    return VerifyResult(True, checked)


def _first_problem(entry: AuditEntry, expected: int, previous: str, public_key: Ed25519PublicKey | None) -> str:
    if entry.sequence != expected:
        return f"expected sequence {expected}, found {entry.sequence} (an entry was deleted or reordered)"
    if entry.previous_hash != previous:
        return f"previous_hash does not match entry {expected - 1}'s hash"
    if entry.compute_hash() != entry.hash:
        return "its contents do not match its hash (altered)"
    if public_key is None:
        return ""
    try:
        public_key.verify(entry.signature, bytes.fromhex(entry.hash))
    except (InvalidSignature, ValueError):
        return "the signature is not the server's"
    return ""


def parse_export(text: str) -> tuple[list[AuditEntry], SignedHead | None, VerifyResult | None]:
    """The entries and the signed head of an export, or the result that says which line is not one."""
    entries: list[AuditEntry] = []
    head: SignedHead | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            if head is not None:
                raise ValueError("lines follow the signed head, which must be the last line")
            head = SignedHead.from_json(line)
            if head is None:
                entries.append(AuditEntry.from_json(line))
        except ValueError as exc:
            return (
                entries,
                head,
                VerifyResult(False, len(entries), len(entries) + 1, f"line {number} is not an audit entry ({exc})"),
            )
    return entries, head, None


def verify_export(text: str, public_key: Ed25519PublicKey, remembered: TreeHead | None = None) -> VerifyResult:
    """Verify an export (JSON Lines of entries, then the signed head): what an auditor runs offline.

    An export that does not end with a signed head is invalid: it is incomplete, or its end was cut with the head.
    When the head carries the chain's signed tree head, its root must be the Merkle root of the entries; with a
    `remembered` tree head (one this auditor verified before), the export must extend it: the first
    `remembered.size` entries must have exactly its root (a rollback or a rewrite fails here, even when the export
    is otherwise perfect).
    """
    entries, head, broken = parse_export(text)
    if broken is not None:
        return broken
    if head is None:
        return VerifyResult(
            False,
            len(entries),
            len(entries) + 1,
            "the export does not end with the server's signed head: it is incomplete or cut",
        )
    if remembered is not None and remembered.collaboration != head.collaboration:
        return VerifyResult(
            False,
            0,
            1,
            f"the head remembered for collaboration {remembered.collaboration!r} cannot vouch for an export of "
            f"{head.collaboration!r}: pass the head this auditor remembered for {head.collaboration!r}",
        )
    nodes = merkle.MerkleNodes()
    for entry in entries:
        nodes.append(merkle.leaf_hash(leaf_data(entry.hash, entry.signature)))
    extends = (
        remembered is not None and remembered.size <= nodes.size and nodes.root(remembered.size) == remembered.root
    )
    result = verify_entries(entries, public_key, head, signed_prefix=remembered.size if remembered and extends else 0)
    if not result.valid or (head.tree is None and remembered is None):
        return result
    return check_tree(nodes, head.tree, public_key, remembered, result)


def check_tree(
    nodes: merkle.MerkleNodes,
    tree: TreeHead | None,
    public_key: Ed25519PublicKey,
    remembered: TreeHead | None,
    result: VerifyResult,
) -> VerifyResult:
    """The export's tree head against its entries' tree, and the remembered head against both."""
    n = nodes.size
    if tree is not None:
        if not tree.is_signed_by(public_key):
            return VerifyResult(False, n, n + 1, "the export's tree head is not signed by the server's key")
        if tree.size != n or tree.root != nodes.root():
            return VerifyResult(False, n, n + 1, "the export's tree head does not match its entries")
    if remembered is not None:
        if remembered.size > n:
            return VerifyResult(
                False, n, n + 1, f"the log shrank: this auditor saw {remembered.size} entries, the export has {n}"
            )
        if nodes.root(remembered.size) != remembered.root:
            return VerifyResult(
                False,
                n,
                1,
                f"the first {remembered.size} entries are not the ones this auditor saw before (the log was "
                "rewritten or rolled back)",
            )
    return result
