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
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from . import merkle
from .errors import CleanRoomError
from .protocol import analytics_pb2 as anpb
from .protocol import audit_pb2 as apb

TREE_HEAD_KIND = "cleanroom.audit.tree-head.v1"
#: The trailing metadata key of the receipts a response carries (a serialized `Receipts`).
RECEIPTS_METADATA = "cleanroom-receipts-bin"
GENESIS = "0" * 64
#: How far below the ε a query asked for its entry may record it: float noise only (the ledger rounds charges up).
EPSILON_SLACK = 1e-12


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
        try:
            key.verify(self.signature, self.message())
        except InvalidSignature:
            return False
        return True

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
        except (KeyError, TypeError, ValueError) as exc:
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


#: Fetches a consistency proof (collaboration, first, second) from the server.
ConsistencyFetch = Callable[[str, int, int], Sequence[bytes]]


class HeadMemory:
    """What this client verified of each chain of one server: the latest head and every receipt, on disk.

    One JSON file of state per collaboration (the head, an unacknowledged incident, acknowledged ones) and one JSON
    Lines file of receipts, under `<state_dir>/transparency/`, written atomically and readable by the owner only.

    Several SDK processes may share a state directory: every read-modify-write of a collaboration's state holds an
    exclusive lock on its `.lock` file (across processes) for the whole step, the consistency fetch included, so an
    incident one process records is never overwritten by another's older view, and a remembered head never moves
    back. A state file that cannot be parsed is an error, never read as "nothing remembered".
    """

    def __init__(self, directory: Path, server_key: Ed25519PublicKey) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._key = server_key
        self._lock = threading.Lock()

    def _file(self, collaboration: str, suffix: str) -> Path:
        return self._dir / f"{hashlib.sha256(collaboration.encode()).hexdigest()[:32]}{suffix}"

    @contextmanager
    def _locked(self, collaboration: str) -> Iterator[None]:
        """This process's threads and other processes wait while one of them changes the collaboration's files."""
        with self._lock:
            fd = os.open(self._file(collaboration, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                _lock_file(fd)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the lock

    def _state(self, collaboration: str) -> dict[str, Any]:
        path = self._file(collaboration, ".json")
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise CleanRoomError(
                "FAILED_PRECONDITION", f"the transparency state {path} cannot be read: {exc}"
            ) from None
        try:
            state = json.loads(text)
            if not isinstance(state, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise CleanRoomError(
                "FAILED_PRECONDITION",
                f"the transparency state {path} cannot be read ({exc}); it is left as it is: restore it from a backup "
                "or move it away to start remembering afresh",
            ) from None
        return state

    def _save(self, collaboration: str, state: dict[str, Any]) -> None:
        path = self._file(collaboration, ".json")
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def head(self, collaboration: str) -> TreeHead | None:
        """The latest head verified for this chain, if any."""
        d = self._state(collaboration).get("head")
        return TreeHead.from_dict(d) if d else None

    def incident(self, collaboration: str) -> dict[str, Any] | None:
        """An unacknowledged rewrite of this chain, if one was found."""
        value = self._state(collaboration).get("incident")
        return dict(value) if value else None

    def require_no_incident(self, collaboration: str) -> None:
        """HistoryRewrittenError while an incident on this chain is unacknowledged."""
        found = self.incident(collaboration)
        if found:
            raise HistoryRewrittenError(
                collaboration,
                f"{found['reason']} (found {found['when']}; acknowledge it to go on)",
                TreeHead.from_dict(found["remembered"]) if found.get("remembered") else None,
                TreeHead.from_dict(found["shown"]) if found.get("shown") else None,
            )

    def acknowledge(self, collaboration: str) -> dict[str, Any] | None:
        """Clear the incident; the shown head becomes the remembered one. Returns the incident acknowledged."""
        with self._locked(collaboration):
            state = self._state(collaboration)
            found = state.pop("incident", None)
            if found:
                state.setdefault("acknowledged", []).append(found)
                if found.get("shown"):
                    state["head"] = found["shown"]
                self._save(collaboration, state)
            return dict(found) if found else None

    def receipts(self, collaboration: str) -> list[dict[str, Any]]:
        """Every receipt kept for this chain, oldest first (entry fields as JSON, and the head)."""
        path = self._file(collaboration, ".receipts.jsonl")
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def accept(self, collaboration: str, shown: TreeHead, fetch: ConsistencyFetch) -> None:
        """Check that `shown` is the server's and consistent with the remembered head; remember the larger.

        A larger head must extend the remembered one; a smaller one (a concurrent call's answer, signed a moment
        earlier) must be a prefix of it, which only a server that still holds the remembered tree can prove; a head
        of the same size must be the same. Otherwise HistoryRewrittenError, and the incident is recorded.
        """
        with self._locked(collaboration):
            state = self._state(collaboration)
            remembered = TreeHead.from_dict(state["head"]) if state.get("head") else None
            reason = ""
            if shown.collaboration != collaboration:
                reason = f"a head of another chain ({shown.collaboration!r}) was shown"
            elif not shown.is_signed_by(self._key):
                reason = "the tree head is not signed by the server's audit key"
            elif remembered is not None:
                older, newer = sorted((remembered, shown), key=lambda h: h.size)
                try:
                    proof = [] if older.size == newer.size else fetch(collaboration, older.size, newer.size)
                    merkle.verify_consistency(older.size, newer.size, older.root, newer.root, proof)
                except (merkle.ProofError, CleanRoomError) as exc:
                    shrank = shown.size < remembered.size
                    reason = f"the log shrank from {remembered.size} to {shown.size} entries" if shrank else str(exc)
            if not reason:
                if remembered is None or shown.size > remembered.size:
                    state["head"] = shown.to_dict()
                    self._save(collaboration, state)
                return
            self._record(collaboration, reason, shown)

    def record_incident(self, collaboration: str, reason: str, shown: TreeHead | None) -> NoReturn:
        """Record an incident found outside `accept` and raise it."""
        with self._locked(collaboration):
            self._record(collaboration, reason, shown)

    def _record(self, collaboration: str, reason: str, shown: TreeHead | None) -> NoReturn:
        """Record an incident and raise it; the caller holds the collaboration's lock."""
        state = self._state(collaboration)
        remembered = TreeHead.from_dict(state["head"]) if state.get("head") else None
        state["incident"] = {
            "reason": reason,
            "when": datetime.now().astimezone().isoformat(timespec="seconds"),
            "remembered": remembered.to_dict() if remembered else None,
            "shown": shown.to_dict() if shown else None,
        }
        self._save(collaboration, state)
        raise HistoryRewrittenError(collaboration, reason, remembered, shown)

    @property
    def key(self) -> Ed25519PublicKey:
        """The server's audit key this memory trusts."""
        return self._key

    def keep_receipts(self, collaboration: str, receipts: Iterable[apb.Receipt]) -> None:
        """Append receipts (already verified) to this chain's file."""
        path = self._file(collaboration, ".receipts.jsonl")
        lines = []
        for r in receipts:
            body = entry_body(r.entry)
            lines.append(
                canonical_json({"entry": body, "hash": r.entry.hash, "head": TreeHead.from_proto(r.head).to_dict()})
            )
        if not lines:
            return
        with self._locked(collaboration):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write("\n".join(lines) + "\n")


def _lock_file(fd: int) -> None:
    """Wait for an exclusive lock on an open file (released when the descriptor is closed)."""
    if sys.platform == "win32":  # pragma: no cover - Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)


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


def answer_of(response: object) -> anpb.QueryResult | None:
    """The query answer a response is or carries (`LookalikeUpdate`'s last message), if any."""
    if isinstance(response, anpb.QueryResult):
        return response
    if isinstance(response, anpb.LookalikeUpdate) and response.WhichOneof("update") == "result":
        return response.result
    return None


def chain_of(request: object) -> str | None:
    """The collaboration a request is about, if any.

    Its `name`, `parent` or `collaboration` field, or that of the message it wraps (as `PreviewRequest` wraps a query).
    """
    for field in ("parent", "name", "collaboration"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value.startswith("collaborations/"):
            return value.removeprefix("collaborations/").split("/", 1)[0]
    list_fields = getattr(request, "ListFields", None)
    if callable(list_fields):
        for _, value in list_fields():
            if hasattr(value, "ListFields"):
                found = chain_of(value)
                if found is not None:
                    return found
    return None


class Witness:
    """The SDK's side of the transparency log for one server and credential: checks every receipt and head.

    `before` refuses a collaboration with an unacknowledged incident; `after` checks the receipts a call brought
    (the entry is the server's and in the head's tree, the head extends what was seen) and keeps them. The server's
    audit key is pinned the first time it is needed; a different key later is itself an incident.
    """

    def __init__(self, directory: Path, stub: Any, metadata: Sequence[tuple[str, str]]) -> None:
        self._dir = directory
        self._stub = stub
        self._metadata = metadata
        self._memory: HeadMemory | None = None
        self._lock = threading.Lock()

    def _rpc(self, fn: Callable[..., Any], request: object) -> Any:
        import grpc

        try:
            return fn(request, metadata=self._metadata)
        except grpc.RpcError as err:
            raise CleanRoomError.from_rpc(err) from None

    @property
    def memory(self) -> HeadMemory:
        """The remembered heads and receipts, with the server's pinned key."""
        with self._lock:
            if self._memory is None:
                from cryptography.hazmat.primitives.serialization import load_pem_public_key

                self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                pinned = self._dir / "server-key.pem"
                pem = self._rpc(self._stub.GetServerPublicKey, apb.GetServerPublicKeyRequest()).pem
                if pinned.exists() and pinned.read_text() != pem:
                    raise HistoryRewrittenError(
                        "",
                        f"the server's audit key changed (pinned in {pinned}); a new key is a new history",
                        None,
                        None,
                    )
                if not pinned.exists():
                    fd = os.open(pinned, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as f:
                        f.write(pem)
                key = load_pem_public_key(pem.encode())
                if not isinstance(key, Ed25519PublicKey):
                    raise CleanRoomError("INTERNAL", "the server's audit key is not an Ed25519 key")
                self._memory = HeadMemory(self._dir, key)
            return self._memory

    def _name(self, collaboration: str) -> str:
        return f"collaborations/{collaboration}" if collaboration else ""

    def consistency(self, collaboration: str, first: int, second: int) -> list[bytes]:
        """The server's consistency proof between two sizes of a chain."""
        request = apb.GetConsistencyProofRequest(collaboration=self._name(collaboration), first=first, second=second)
        return list(self._rpc(self._stub.GetConsistencyProof, request).proof)

    def before(self, request: object) -> int:
        """HistoryRewrittenError when the request's collaboration has an unacknowledged incident.

        Returns the size of the chain's head remembered now (0 if none): every entry the call appends comes after it.
        """
        chain = chain_of(request)
        if (
            chain is not None
            and self._dir.exists()
            and (self._memory is not None or (self._dir / "server-key.pem").exists())
        ):
            self.memory.require_no_incident(chain)
            remembered = self.memory.head(chain)
            return remembered.size if remembered else 0
        return 0

    def after(
        self, trailing: Sequence[tuple[str, str | bytes]] | None, request: object = None, floor: int = 0
    ) -> list[apb.Receipt]:
        """Check and keep the receipts of a call's trailing metadata.

        `request` is the call's (to know its chain) and `floor` what `before` returned for it: the call's entries
        were appended after the client had seen a head of that size, so each must have a larger sequence (an older
        entry, anyone's, replayed in a head that is a prefix of the remembered one is refused).

        Each receipt must be readable, its entry the server's, of the head's chain (and of the call's collaboration
        when the request names one), in its head's tree, and new: an entry this client already holds a receipt
        for is a replay (an old receipt answering a call the log did not record). Every head the call brought must
        extend what was seen, not only the last one. Anything else is an incident of the call's chain.
        """
        expected = chain_of(request)
        try:
            receipts = parse_receipts(trailing)
        except DecodeError as exc:
            if expected is None:
                raise CleanRoomError("DATA_LOSS", f"the server's receipts cannot be read: {exc}") from None
            self.memory.record_incident(expected, f"the receipts of a call cannot be read: {exc}", None)
        if not receipts:
            return []
        memory = self.memory
        by_chain: dict[str, list[apb.Receipt]] = {}
        for receipt in receipts:
            head = TreeHead.from_proto(receipt.head)
            if expected is not None and head.collaboration != expected:
                memory.record_incident(
                    expected, f"a receipt of another chain ({head.collaboration!r}) came with a call on this one", head
                )
            try:
                check_receipt(receipt, memory.key)
            except merkle.ProofError as exc:
                memory.record_incident(head.collaboration, f"a receipt does not prove its entry: {exc}", head)
            by_chain.setdefault(head.collaboration, []).append(receipt)
        for chain, kept in by_chain.items():
            heads = {TreeHead.from_proto(r.head) for r in kept}
            for head in sorted(heads, key=lambda h: (h.size, h.time, h.root)):
                memory.accept(chain, head, self.consistency)
            seen = {str(r["hash"]) for r in memory.receipts(chain)}
            for receipt in kept:
                if chain == expected and receipt.entry.sequence <= floor:
                    memory.record_incident(
                        chain,
                        f"the receipt of entry {receipt.entry.sequence} was replayed: this client had seen {floor} "
                        "entries before the call, so it does not record this call",
                        TreeHead.from_proto(receipt.head),
                    )
                if receipt.entry.hash in seen:
                    memory.record_incident(
                        chain,
                        f"the receipt of entry {receipt.entry.sequence} was replayed: this client was given it before, "
                        "so it does not record this call",
                        TreeHead.from_proto(receipt.head),
                    )
                seen.add(receipt.entry.hash)
            memory.keep_receipts(chain, kept)
        return receipts

    def answered(self, request: object, response: object, receipts: Sequence[apb.Receipt]) -> None:
        """A query's answer names the audit entry that records it: a receipt of that entry must have come with it.

        Its entry must be of the query's collaboration, charge exactly the ε the answer says was spent, and no less
        than the request asked for. So an answer whose receipt was withheld (the trailer stripped), or whose entry
        records less than was spent (the log under-charged, and `budget --check` would then agree with it), is an
        incident, not an answer.
        """
        response = answer_of(response)
        if response is None:
            return
        chain = chain_of(request)
        sequence = response.audit_sequence
        mine = [
            r
            for r in receipts
            if r.entry.sequence == sequence and (chain is None or TreeHead.from_proto(r.head).collaboration == chain)
        ]
        asked = getattr(request, "epsilon", None)
        if not mine:
            reason = f"the answer names audit entry {sequence} but no receipt of it came back (withheld)"
        elif mine[0].entry.epsilon != response.epsilon_spent:
            reason = (
                f"the answer spent {response.epsilon_spent:g} ε but its audit entry {sequence} records "
                f"{mine[0].entry.epsilon:g} ε"
            )
        elif isinstance(asked, float) and mine[0].entry.epsilon < asked - EPSILON_SLACK:
            reason = (
                f"the query asked for {asked:g} ε but its audit entry {sequence} records {mine[0].entry.epsilon:g} ε"
            )
        else:
            return
        if chain is None:
            raise CleanRoomError("DATA_LOSS", f"the server's audit log does not record this answer: {reason}")
        self.memory.record_incident(chain, reason, None)

    def head(self, collaboration: str) -> TreeHead:
        """The chain's head now, checked against the remembered one (and remembered)."""
        response = self._rpc(self._stub.GetTreeHead, apb.GetTreeHeadRequest(collaboration=self._name(collaboration)))
        head = TreeHead.from_proto(response.head)
        self.memory.require_no_incident(collaboration)
        self.memory.accept(collaboration, head, self.consistency)
        return head

    def compare(self, collaboration: str, other: TreeHead) -> TreeHead:
        """Check another member's exported head against this client's: both must lie on one history."""
        mine = self.head(collaboration)
        if not other.is_signed_by(self.memory.key):
            raise HistoryRewrittenError(collaboration, "the other head is not signed by this server's key", mine, other)
        if other.collaboration != collaboration:
            raise ValueError(f"that head is of {other.collaboration!r}, not {collaboration!r}")
        older, newer = sorted((mine, other), key=lambda h: h.size)
        try:
            proof = [] if older.size == newer.size else self.consistency(collaboration, older.size, newer.size)
            merkle.verify_consistency(older.size, newer.size, older.root, newer.root, proof)
        except (merkle.ProofError, CleanRoomError) as exc:
            reason = f"the two members were shown different histories (a fork): {exc}"
            self.memory.record_incident(collaboration, reason, other)
        return mine

    def check_receipts(self, collaboration: str) -> tuple[TreeHead, list[dict[str, Any]]]:
        """Every kept receipt's entry is still in the chain's current tree; returns the head and the receipts."""
        head = self.head(collaboration)
        kept = self.memory.receipts(collaboration)
        for r in kept:
            sequence = int(r["entry"]["sequence"])
            request = apb.GetInclusionProofRequest(
                collaboration=self._name(collaboration), sequence=sequence, tree_size=head.size
            )
            try:
                response = self._rpc(self._stub.GetInclusionProof, request)
                if response.entry.hash != r["hash"]:
                    raise merkle.ProofError(f"entry {sequence} is not the one the receipt holds")
                leaf = entry_leaf(response.entry, self.memory.key)
                merkle.verify_inclusion(leaf, sequence - 1, head.size, list(response.proof), head.root)
            except (merkle.ProofError, CleanRoomError) as exc:
                reason = f"entry {sequence}, of a receipt this member holds, is missing from the log: {exc}"
                self.memory.record_incident(collaboration, reason, head)
                raise HistoryRewrittenError(collaboration, reason, self.memory.head(collaboration), head) from None
        return head, kept


class _Witnessed:
    """A gRPC multicallable whose calls go through a `Witness` (receipts checked and kept, incidents refused)."""

    def __init__(self, witness: Witness, callable_: Any, streams_out: bool) -> None:
        self._witness = witness
        self._callable = callable_
        self._streams_out = streams_out

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        import grpc

        floor = self._witness.before(request)
        if self._streams_out:
            return self._stream(self._callable(request, *args, **kwargs), request, floor)
        try:
            response, call = self._callable.with_call(request, *args, **kwargs)
        except grpc.RpcError as err:
            self._witness.after(err.trailing_metadata() if isinstance(err, grpc.Call) else None, request, floor)
            raise
        self._witness.answered(request, response, self._witness.after(call.trailing_metadata(), request, floor))
        return response

    def _stream(self, responses: Any, request: object, floor: int) -> Iterator[Any]:
        """The responses as they come, but a query's answer only once the trailer's receipts show it was recorded."""
        import grpc

        answer: Any = None
        try:
            for response in responses:
                if answer_of(response) is None:
                    yield response
                else:
                    answer = response
        except grpc.RpcError as err:
            self._witness.after(err.trailing_metadata() if isinstance(err, grpc.Call) else None, request, floor)
            raise
        receipts = self._witness.after(responses.trailing_metadata(), request, floor)
        if answer is not None:
            self._witness.answered(request, answer, receipts)
            yield answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._callable, name)


S = TypeVar("S")


def witnessed(witness: Witness, stub: S) -> S:
    """`stub` with every method witnessed (its multicallables replaced in place).

    What the SDK uses for the services that change state, so that no call path can skip the checks.
    """
    import grpc

    for name, value in list(vars(stub).items()):
        if isinstance(value, grpc.UnaryUnaryMultiCallable | grpc.StreamUnaryMultiCallable):
            setattr(stub, name, _Witnessed(witness, value, streams_out=False))
        elif isinstance(value, grpc.UnaryStreamMultiCallable | grpc.StreamStreamMultiCallable):
            setattr(stub, name, _Witnessed(witness, value, streams_out=True))
    return stub
