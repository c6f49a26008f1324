"""Appending to and reading the audit chains in the server's database files, anchored by signed heads kept outside it.

Invariants:
- `append` runs inside the caller's transaction, the same one that changes the state it records, so an action and
  its entry commit together or not at all; if the entry cannot be written, the action fails and nothing is
  released. Appends are serialized by the write lock of the chain's file (the collaboration's own,
  or the catalogue's for the server's chain), so sequences never fork.
- After each commit, the chain's signed head (collaboration, sequence, hash, Ed25519 signature) is written to
  `<heads_dir>/<sha256 of the collaboration>.json`, outside the database file. Verification checks the stored chain
  against it: entries cut from the end of the chain in the database (while the server was stopped) no longer reach
  the head. A crash between the commit and the head's write leaves the head one step behind, which verifies.
- `require_intact` is the budget's gate: a chain that does not verify (altered, cut, head missing) closes the
  collaboration's budget until the operator restores the data. The check is incremental: each entry is verified
  once per server run, the whole chain before the first budget use of the run.
- Start-up reads no entry, so it takes the same time whatever the log's length. Each chain is instead anchored when
  this run first appends to it: before the append, the stored chain must still reach the signed head (the entry at
  the head's sequence, with the head's hash; the head's signature the server's). A chain that does not (a tail cut
  while the server was stopped, a head deleted or forged) is broken for the run and its head is never rewritten,
  so no later append can sign a head over the cut. That check reads one entry, whatever the chain's length.

What an attacker with the disk can do that start-up alone no longer catches: alter an entry before the head (say,
zero an ε). It is still caught before it matters: `require_intact` verifies the whole chain (every link, hash and
signature, and its end against the head) before the collaboration's budget is read or spent in this run, and
`verify` (VerifyAuditLog, auditors' exports verified offline) verifies it in full at any time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cleanroom_client.transparency import leaf_data

from ..errors import FailedPreconditionError
from ..storage import Database, Store
from ..storage.database import first, integer
from .chain import GENESIS, AuditEntry, SignedHead, VerifyResult, canonical_json, json_safe, verify_entries

SERVER_CHAIN = ""
#: Longest string kept in an entry's parameters; longer ones are cut and marked with their length.
MAX_PARAMETER_CHARS = 1000
#: Most bytes of an entry's parameters as canonical JSON; beyond, the whole is kept as one cut string. Together
#: with the fixed-size fields this keeps any entry far below one export chunk and one gRPC message.
MAX_PARAMETERS_BYTES = 32 * 1024
_COLUMNS = (
    "collab, seq, time, principal, action, params_json, epsilon, response_sha256, prev_hash, hash, signature, delta"
)


#: The entries the current call appended and committed (set by `collecting`; None outside a call).
_APPENDED: ContextVar[list[AuditEntry] | None] = ContextVar("cleanroom_audit_appended", default=None)


@contextmanager
def collecting() -> Iterator[list[AuditEntry]]:
    """Collect the entries committed while the block runs (in this thread), for the call's receipts."""
    bucket: list[AuditEntry] = []
    token = _APPENDED.set(bucket)
    try:
        yield bucket
    finally:
        _APPENDED.reset(token)


def note_committed(entry: AuditEntry) -> None:
    """Called after an entry's transaction committed: it goes into the current call's receipts, if any."""
    bucket = _APPENDED.get()
    if bucket is not None:
        bucket.append(entry)


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


def _cut(value: Any) -> Any:
    """Long strings cut; non-finite floats named (`json_safe`): what the entry stores, as it will read back."""
    if isinstance(value, float):
        return json_safe(value)
    if isinstance(value, str) and len(value) > MAX_PARAMETER_CHARS:
        return f"{value[:MAX_PARAMETER_CHARS]}… ({len(value)} characters)"
    if isinstance(value, Mapping):
        return {_cut(str(k)): _cut(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cut(v) for v in value]
    return value


def bounded_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """`parameters` as an entry stores them, so that no entry can outgrow a message.

    Strings are cut to `MAX_PARAMETER_CHARS`; when the whole is still over `MAX_PARAMETERS_BYTES` of canonical
    JSON, it is kept as one cut string under `truncated`.
    """
    cut = _cut(dict(parameters))
    text = canonical_json(cut)
    if len(text.encode()) <= MAX_PARAMETERS_BYTES:
        return cut
    return {"truncated": text.encode()[: MAX_PARAMETERS_BYTES // 2].decode(errors="ignore")}


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
    """The chains, signed with the server's key: the server's own in the catalogue, each collaboration's in its file."""

    def __init__(self, store: Store, key: Ed25519PrivateKey, heads_dir: Path) -> None:
        self._store = store
        self._key = key
        self._heads = heads_dir
        heads_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._intact: dict[str, tuple[int, str]] = {}
        self._broken: dict[str, str] = {}
        #: Chains checked against their signed head in this run (`_anchor`).
        self._anchored: set[str] = set()
        self._anchor_lock = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}  # per chain: one chain's check never waits on another's
        self._locks_lock = threading.Lock()
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        self._digest_key = hashlib.sha256(b"cleanroom response digest v1\x00" + raw).digest()

    def _file(self, collaboration_id: str) -> Database:
        """The file holding a chain: the catalogue for the server's own, else the collaboration's."""
        return self._store.catalog if collaboration_id == SERVER_CHAIN else self._store.of(collaboration_id)

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key auditors verify with."""
        return self._key.public_key()

    def append(
        self,
        cur: duckdb.DuckDBPyConnection,
        collaboration_id: str,
        principal: str,
        action: str,
        parameters: Mapping[str, Any],
        epsilon: float = 0.0,
        response: object = None,
        delta: float = 0.0,
    ) -> AuditEntry:
        """Append one signed entry to `collaboration`'s chain, inside the caller's transaction."""
        last = first(
            cur.execute(
                "SELECT seq, hash FROM audit_log WHERE collab = ? ORDER BY seq DESC LIMIT 1", [collaboration_id]
            )
        )
        self._anchor(cur, collaboration_id, last)
        entry = AuditEntry(
            collaboration=collaboration_id,
            sequence=(last[0] + 1) if last else 1,
            time=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            principal=principal,
            action=action,
            parameters=bounded_parameters(parameters),
            epsilon=float(epsilon),
            response_sha256=response_digest(response, self._digest_key),
            previous_hash=last[1] if last else GENESIS,
            delta=float(delta),
        )
        digest = entry.compute_hash()
        signed = AuditEntry(**{**entry.__dict__, "hash": digest, "signature": self._key.sign(bytes.fromhex(digest))})
        self._file(collaboration_id).after_commit(lambda: self._committed(signed))
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

    def _committed(self, entry: AuditEntry) -> None:
        self._write_head(entry)
        note_committed(entry)

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature of `message` with the audit key (tree heads)."""
        return self._key.sign(message)

    def last_sequence(self, collaboration_id: str) -> int:
        """The chain's last sequence (0 when empty)."""
        return integer(
            self._file(collaboration_id)
            .cursor()
            .execute("SELECT coalesce(max(seq), 0) FROM audit_log WHERE collab = ?", [collaboration_id]),
            0,
        )

    def leaves(self, collaboration_id: str, after: int) -> list[bytes]:
        """The Merkle leaf data of the chain's entries with sequence > `after`, in order: hash then signature.

        The signature is part of the leaf so that a member holding an inclusion proof cannot test guesses of another
        member's entry against the sibling hashes (it would need the server's signature of each guess).
        """
        rows = (
            self._file(collaboration_id)
            .cursor()
            .execute(
                "SELECT hash, signature FROM audit_log WHERE collab = ? AND seq > ? ORDER BY seq",
                [collaboration_id, after],
            )
            .fetchall()
        )
        return [leaf_data(str(r[0]), bytes(r[1])) for r in rows]

    def record(
        self, collaboration_id: str, principal: str, action: str, parameters: Mapping[str, Any], response: object = None
    ) -> AuditEntry:
        """Append in a transaction of its own (for refusals and server actions)."""
        with self._file(collaboration_id).transaction() as cur:
            return self.append(cur, collaboration_id, principal, action, parameters, response=response)

    def entries(self, collaboration_id: str, after: int = 0, limit: int | None = None) -> Iterator[AuditEntry]:
        """One chain in order, from sequence `after + 1`, streamed in batches."""
        cur = self._file(collaboration_id).cursor()
        batch = 1000 if limit is None else min(limit, 1000)
        seen = 0
        while limit is None or seen < limit:
            rows = cur.execute(
                f"SELECT {_COLUMNS} FROM audit_log WHERE collab = ? AND seq > ? ORDER BY seq LIMIT ?",
                [collaboration_id, after, batch],
            ).fetchall()
            for row in rows:
                yield _row_to_entry(row)
                seen += 1
                after = row[1]
            if len(rows) < batch:  # the last batch: no query for an empty one after it
                return

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
            self._file(flt.collaboration)
            .cursor()
            .execute(
                f"SELECT {_COLUMNS} FROM audit_log WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?",
                [*params, size + 1],
            )
            .fetchall()
        )
        page = [_row_to_entry(r) for r in rows[:size]]
        return page, (page[-1].sequence if len(rows) > size else 0)

    def charged_units(
        self,
        cur: duckdb.DuckDBPyConnection,
        collaboration_id: str,
        principal: str,
        epsilon_unit: float,
        delta_unit: float,
        since: int = 0,
    ) -> tuple[int, int]:
        """The ε and δ the log charged to `principal` after entry `since`, each rounded to whole units, summed.

        The log is the ledger: the budget reads what was spent from here, never from a copy.
        """
        row = first(
            cur.execute(
                "SELECT coalesce(sum(CAST(round(epsilon / $eu) AS HUGEINT)), 0),"
                " coalesce(sum(CAST(round(delta / $du) AS HUGEINT)), 0)"
                " FROM audit_log WHERE collab = $c AND principal = $m AND seq > $since",
                {"eu": epsilon_unit, "du": delta_unit, "c": collaboration_id, "m": principal, "since": since},
            )
        )
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def digest(self, response: object) -> str:
        """The digest an entry would record for `response` (the server can show which answer an entry holds)."""
        return response_digest(response, self._digest_key)

    # -- the signed head ------------------------------------------------------------------------------------------
    def _head_path(self, collaboration_id: str) -> Path:
        return self._heads / f"{hashlib.sha256(collaboration_id.encode('utf-8')).hexdigest()}.json"

    def _sign_head(self, collaboration_id: str, sequence: int, hash_: str) -> SignedHead:
        unsigned = SignedHead(collaboration_id, sequence, hash_)
        return SignedHead(collaboration_id, sequence, hash_, self._key.sign(unsigned.message()))

    def _anchor(self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, last: tuple[Any, ...] | None) -> None:
        """Before this run's first append to a chain: the stored chain must still reach its signed head.

        Reads no entry but the one the head names (one lookup, as each append makes for the last entry), the head
        file and its signature. A chain that fails is broken for the run (its head file is never rewritten, so an
        append cannot sign a head over a cut tail). Entries before the head are verified by `require_intact` and
        `verify`, which read the whole chain.
        """
        if collaboration_id in self._anchored:  # every append but a chain's first of the run stops here
            return
        with self._anchor_lock:  # not `_intact_lock`: a long verification never holds up an append (and its lock)
            if collaboration_id in self._anchored:
                return
            reason = self._anchor_problem(cur, collaboration_id, last)
            if reason is not None and collaboration_id not in self._broken:
                self._broken[collaboration_id] = (
                    f"the audit log of collaborations/{collaboration_id} does not verify ({reason}); its privacy "
                    "budget is closed until the operator restores the server's data"
                )
            self._anchored.add(collaboration_id)

    def _anchor_problem(
        self, cur: duckdb.DuckDBPyConnection, collaboration_id: str, last: tuple[Any, ...] | None
    ) -> str | None:
        """Why the stored chain does not reach its signed head, or None when it does (an empty chain has none)."""
        try:
            head = SignedHead.from_json(self._head_path(collaboration_id).read_text())
        except FileNotFoundError:
            head = None
        except (OSError, ValueError):
            return "the server's signed head of this chain is unreadable"
        if head is None:
            return "the server's signed head of this chain is missing" if last is not None else None
        if head.collaboration != collaboration_id or not head.is_signed_by(self.public_key):
            return "the signed head of this chain is not the server's"
        named = first(
            cur.execute("SELECT hash FROM audit_log WHERE collab = ? AND seq = ?", [collaboration_id, head.sequence])
        )
        if named is None or named[0] != head.hash:
            return f"entry {head.sequence}, which the signed head names, was cut from its end or changed"
        return None

    def _chain_lock(self, collaboration_id: str) -> threading.RLock:
        with self._locks_lock:
            return self._locks.setdefault(collaboration_id, threading.RLock())

    def forget(self, collaboration_id: str) -> None:
        """Drop what is known of a chain whose file was discarded before it was ever indexed (its head, its checks)."""
        with self._chain_lock(collaboration_id):
            self._intact.pop(collaboration_id, None)
            self._broken.pop(collaboration_id, None)
        with self._anchor_lock:
            self._anchored.discard(collaboration_id)
        self._head_path(collaboration_id).unlink(missing_ok=True)

    def _write_head(self, entry: AuditEntry) -> None:
        """Replace the chain's head file atomically (called after the entry's transaction committed)."""
        if entry.collaboration in self._broken:
            return
        head = self._sign_head(entry.collaboration, entry.sequence, entry.hash)
        path = self._head_path(entry.collaboration)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(head.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def stored_head(self, collaboration_id: str) -> SignedHead | None:
        """The head the server last wrote for a chain (None when it never wrote one), as stored: verify it."""
        try:
            return SignedHead.from_json(self._head_path(collaboration_id).read_text())
        except (OSError, ValueError):
            return None

    def head(self, collaboration_id: str) -> SignedHead | None:
        """A signed head naming the chain's current last entry (None for an empty chain): for exports and verifiers."""
        last = first(
            self._file(collaboration_id)
            .cursor()
            .execute("SELECT seq, hash FROM audit_log WHERE collab = ? ORDER BY seq DESC LIMIT 1", [collaboration_id])
        )
        return self._sign_head(collaboration_id, int(last[0]), str(last[1])) if last else None

    def verify(self, collaboration_id: str) -> VerifyResult:
        """Verify a whole chain as stored, and its end against the head kept outside the database."""
        head = self.stored_head(collaboration_id)
        entries = self.entries(collaboration_id)
        if head is None:
            result = verify_entries(entries, self.public_key)
            if result.valid and result.entries_checked:
                return VerifyResult(
                    False, result.entries_checked, 1, "the server's signed head of this chain is missing"
                )
            return result
        return verify_entries(entries, self.public_key, head, exact=False)

    def require_intact(self, collaboration_id: str) -> None:
        """FAILED_PRECONDITION unless the chain verifies (the budget fails closed); incremental within a run."""
        with self._chain_lock(collaboration_id):
            if collaboration_id in self._broken:
                raise FailedPreconditionError(self._broken[collaboration_id])
            cached = self._intact.get(collaboration_id)
            last = first(
                self._file(collaboration_id)
                .cursor()
                .execute(
                    "SELECT seq, hash FROM audit_log WHERE collab = ? ORDER BY seq DESC LIMIT 1", [collaboration_id]
                )
            )
            now = (int(last[0]), str(last[1])) if last else (0, GENESIS)
            if cached == now:
                return
            result = self._verify_from(collaboration_id, cached)
            if not result.valid:
                self._broken[collaboration_id] = (
                    f"the audit log of collaborations/{collaboration_id} does not verify ({result.reason}); its "
                    "privacy budget is closed until the operator restores the server's data"
                )
                raise FailedPreconditionError(self._broken[collaboration_id])
            self._intact[collaboration_id] = now

    def _verify_from(self, collaboration_id: str, cached: tuple[int, str] | None) -> VerifyResult:
        if cached is None or cached[0] == 0:  # never checked, or checked while still empty
            return self.verify(collaboration_id)
        seq, hash_ = cached
        anchor = first(
            self._file(collaboration_id)
            .cursor()
            .execute("SELECT hash FROM audit_log WHERE collab = ? AND seq = ?", [collaboration_id, seq])
        )
        if anchor is None or anchor[0] != hash_:
            return VerifyResult(False, seq, seq, f"entry {seq}, verified earlier, has changed or gone")
        previous, checked = hash_, seq
        for entry in self.entries(collaboration_id, after=seq):
            expected = checked + 1
            if entry.sequence != expected or entry.previous_hash != previous or entry.compute_hash() != entry.hash:
                return VerifyResult(False, checked, expected, f"entry {expected} does not extend the chain")
            try:
                self.public_key.verify(entry.signature, bytes.fromhex(entry.hash))
            except (InvalidSignature, ValueError):
                return VerifyResult(False, checked, expected, f"entry {expected}: the signature is not the server's")
            previous, checked = entry.hash, expected
        return VerifyResult(True, checked)
