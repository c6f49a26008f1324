"""The SDK's side of the transparency log for one server and credential: every receipt and head checked, kept.

`Witness` refuses a collaboration with an unacknowledged history incident, checks the receipts each call brings back
(the entry is the server's and in the head's tree, the head extends what this client saw, nothing is replayed, an
answer comes with the receipt of the entry it names), and keeps them (`head_memory.HeadMemory`). `witnessed` wraps a
service stub so that no call path can skip it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from . import merkle
from .errors import CleanRoomError
from .head_memory import HeadMemory
from .protocol import analytics_pb2 as anpb
from .protocol import audit_pb2 as apb
from .transparency import (
    EPSILON_SLACK,
    EVIDENCE,
    HistoryRewrittenError,
    TreeHead,
    check_receipt,
    entry_leaf,
    parse_receipts,
)


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
        except EVIDENCE as exc:
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
            except EVIDENCE as exc:
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
