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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


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
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an audit entry: {exc}") from None


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a verification: valid, or the first failing entry (by sequence, or position) and why."""

    valid: bool
    entries_checked: int
    first_invalid_sequence: int = 0
    reason: str = ""


def verify_entries(entries: Iterable[AuditEntry], public_key: Ed25519PublicKey) -> VerifyResult:
    """Check one chain in order: sequence, links, hashes and signatures."""
    previous = GENESIS
    checked = 0
    for expected, entry in enumerate(entries, start=1):
        reason = _first_problem(entry, expected, previous, public_key)
        if reason:
            return VerifyResult(False, checked, expected, f"entry {expected}: {reason}")
        previous = entry.hash
        checked += 1
    return VerifyResult(True, checked)


def _first_problem(entry: AuditEntry, expected: int, previous: str, public_key: Ed25519PublicKey) -> str:
    if entry.sequence != expected:
        return f"expected sequence {expected}, found {entry.sequence} (an entry was deleted or reordered)"
    if entry.previous_hash != previous:
        return f"previous_hash does not match entry {expected - 1}'s hash"
    if entry.compute_hash() != entry.hash:
        return "its contents do not match its hash (altered)"
    try:
        public_key.verify(entry.signature, bytes.fromhex(entry.hash))
    except (InvalidSignature, ValueError):
        return "the signature is not the server's"
    return ""
