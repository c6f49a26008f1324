"""Appending to and reading the audit log in the server's database.

Invariant: `append` runs inside the caller's transaction, the same one that changes the state it records, so an
action and its entry commit together or not at all; if the entry cannot be written, the action fails and nothing
is released. Appends are serialized by the database's write lock, so sequences never fork.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..storage import Database
from ..storage.database import first
from .chain import GENESIS, AuditEntry, VerifyResult, canonical_json, verify_entries

SERVER_CHAIN = ""
_COLUMNS = (
    "collab, seq, time, principal, action, params_json, epsilon, response_sha256, prev_hash, hash, signature, delta"
)


@dataclass(frozen=True)
class AuditFilter:
    """Which entries to list: one chain, optionally by principal, action and time range (ISO 8601, UTC)."""

    collaboration: str
    principal: str = ""
    action: str = ""
    start_time: str = ""
    end_time: str = ""


def _parameters(text: str) -> dict[str, Any]:
    """Stored parameters; text that is no longer JSON (tampering) is kept whole so its hash fails to verify."""
    try:
        value = json.loads(text)
    except ValueError:
        return {"__unreadable__": text}
    return value if isinstance(value, dict) else {"__unreadable__": text}


def _row_to_entry(row: tuple[Any, ...]) -> AuditEntry:
    return AuditEntry(
        collaboration=row[0],
        sequence=row[1],
        time=row[2],
        principal=row[3],
        action=row[4],
        parameters=_parameters(row[5]),
        epsilon=row[6],
        response_sha256=row[7],
        previous_hash=row[8],
        hash=row[9],
        signature=bytes(row[10]),
        delta=row[11],
    )


def response_digest(response: object, key: bytes) -> str:
    """HMAC-SHA256, under the server's digest key, of the canonical JSON of what the call returned ("" for nothing).

    Keyed, because a plain hash of an answer with few possible values (a one-cell count) is found by trying them
    all: whoever reads the log (an auditor) must not learn released values that were sent to a member alone. The
    server, holding the key, can still show which answer an entry records.
    """
    if response is None:
        return ""
    return hmac.new(key, canonical_json(response).encode("utf-8"), hashlib.sha256).hexdigest()


class AuditLog:
    """The chains in the database, signed with the server's key."""

    def __init__(self, db: Database, key: Ed25519PrivateKey) -> None:
        self._db = db
        self._key = key
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        self._digest_key = hashlib.sha256(b"cleanroom response digest v1\x00" + raw).digest()

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key auditors verify with."""
        return self._key.public_key()

    def append(
        self,
        cur: duckdb.DuckDBPyConnection,
        collaboration: str,
        principal: str,
        action: str,
        parameters: Mapping[str, Any],
        epsilon: float = 0.0,
        response: object = None,
        delta: float = 0.0,
    ) -> AuditEntry:
        """Append one signed entry to `collaboration`'s chain, inside the caller's transaction."""
        last = first(
            cur.execute("SELECT seq, hash FROM audit_log WHERE collab = ? ORDER BY seq DESC LIMIT 1", [collaboration])
        )
        entry = AuditEntry(
            collaboration=collaboration,
            sequence=(last[0] + 1) if last else 1,
            time=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            principal=principal,
            action=action,
            parameters=dict(parameters),
            epsilon=float(epsilon),
            response_sha256=response_digest(response, self._digest_key),
            previous_hash=last[1] if last else GENESIS,
            delta=float(delta),
        )
        digest = entry.compute_hash()
        signed = AuditEntry(**{**entry.__dict__, "hash": digest, "signature": self._key.sign(bytes.fromhex(digest))})
        cur.execute(
            f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                signed.collaboration,
                signed.sequence,
                signed.time,
                signed.principal,
                signed.action,
                canonical_json(signed.body()["parameters"]),
                signed.epsilon,
                signed.response_sha256,
                signed.previous_hash,
                signed.hash,
                signed.signature,
                signed.delta,
            ],
        )
        return signed

    def record(
        self, collaboration: str, principal: str, action: str, parameters: Mapping[str, Any], response: object = None
    ) -> AuditEntry:
        """Append in a transaction of its own (for refusals and server actions)."""
        with self._db.transaction() as cur:
            return self.append(cur, collaboration, principal, action, parameters, response=response)

    def entries(self, collaboration: str, after: int = 0, limit: int | None = None) -> Iterator[AuditEntry]:
        """One chain in order, from sequence `after + 1`, streamed in batches."""
        cur = self._db.cursor()
        batch = 1000 if limit is None else min(limit, 1000)
        seen = 0
        while limit is None or seen < limit:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM audit_log WHERE collab = ? AND seq > ? ORDER BY seq LIMIT ?",
                [collaboration, after, batch],
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _row_to_entry(row)
                seen += 1
                after = row[1]

    def list(self, flt: AuditFilter, page_size: int, after: int) -> tuple[list[AuditEntry], int]:
        """A page of matching entries with sequence > `after`; returns it and the last sequence (0 when done)."""
        size = min(page_size or 100, 1000)
        clauses, params = ["collab = ?", "seq > ?"], [flt.collaboration, after]
        for column, value in (("principal", flt.principal), ("action", flt.action)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if flt.start_time:
            clauses.append("time >= ?")
            params.append(flt.start_time)
        if flt.end_time:
            clauses.append("time < ?")
            params.append(flt.end_time)
        rows = (
            self._db.cursor()
            .execute(
                f"SELECT {_COLUMNS} FROM audit_log WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?",
                [*params, size + 1],
            )
            .fetchall()
        )
        page = [_row_to_entry(r) for r in rows[:size]]
        return page, (page[-1].sequence if len(rows) > size else 0)

    def digest(self, response: object) -> str:
        """The digest an entry would record for `response` (the server can show which answer an entry holds)."""
        return response_digest(response, self._digest_key)

    def verify(self, collaboration: str) -> VerifyResult:
        """Verify a whole chain as stored."""
        return verify_entries(self.entries(collaboration), self.public_key)
