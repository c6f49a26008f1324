"""AuditService: list, verify and export the audit chains, and hand out the server's public key.

A collaboration's chain may be listed and exported by the auditors assigned to it, and verified by them and by
its members (who learn only valid or not, and where it breaks). The server's own chain (collaboration "") is
open to every auditor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime

import grpc
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf.timestamp_pb2 import Timestamp

from cleanroom_client.protocol import audit_pb2 as pb
from cleanroom_client.protocol import audit_pb2_grpc as pb_grpc

from ..audit import AuditEntry, AuditLog, canonical_json
from ..audit.log import SERVER_CHAIN, AuditFilter
from ..audit.transparency import AuditTrees
from ..collaborations import Collaborations, parse_name
from ..errors import InvalidArgumentError, PermissionDeniedError
from ..principals import Principal, Role
from .auth import Authenticator, StreamLimiter

EXPORT_CHUNK_BYTES = 1024 * 1024
#: Most bytes of entries in one ListAuditEntries page (a page ends early rather than outgrow a message).
MAX_PAGE_BYTES = 4 * 1024 * 1024


def _time(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime().isoformat(timespec="microseconds") + "Z"


def entry_to_proto(e: AuditEntry) -> pb.AuditEntry:
    """The wire form of an entry."""
    when = Timestamp()
    with contextlib.suppress(ValueError):  # an altered time: still listed (unset), and Verify names the entry
        when.FromDatetime(datetime.fromisoformat(e.time.replace("Z", "+00:00")))
    return pb.AuditEntry(
        sequence=e.sequence,
        time=when,
        principal=e.principal,
        action=e.action,
        collaboration=f"collaborations/{e.collaboration}" if e.collaboration else "",
        parameters_json=canonical_json(dict(e.parameters)),
        epsilon=e.epsilon,
        delta=e.delta,
        response_sha256=e.response_sha256,
        previous_hash=e.previous_hash,
        hash=e.hash,
        signature=e.signature,
    )


class AuditServicer(pb_grpc.AuditServiceServicer):
    """Thin adapter over `AuditLog`."""

    def __init__(
        self,
        log: AuditLog,
        collaborations: Collaborations,
        auth: Authenticator,
        streams: StreamLimiter,
        trees: AuditTrees,
    ) -> None:
        self._log = log
        self._trees = trees
        self._collaborations = collaborations
        self._auth = auth
        self._streams = streams

    def _chain(self, principal: Principal, name: str, action: str, members_too: bool = False) -> str:
        if not name:
            if principal.role is not Role.AUDITOR:
                raise PermissionDeniedError("the server's own audit chain is for auditors")
            return SERVER_CHAIN
        collaboration_id = parse_name(name)
        if members_too:
            self._collaborations.get(principal, collaboration_id, action)
        else:
            self._collaborations.require_auditor(principal, collaboration_id, action)
        return collaboration_id

    def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: grpc.ServicerContext
    ) -> pb.ListAuditEntriesResponse:
        """A page of one chain."""
        principal = self._auth.principal(context)
        chain = self._chain(principal, request.collaboration, "audit.list")
        if request.page_size < 0:
            raise InvalidArgumentError("page_size must not be negative")
        try:
            after = int(request.page_token or 0)
        except ValueError:
            raise InvalidArgumentError("page_token: pass the next_page_token of the previous page") from None
        flt = AuditFilter(chain, request.principal, request.action, _time(request.start_time), _time(request.end_time))
        page, last = self._log.list(flt, request.page_size, after)
        entries: list[pb.AuditEntry] = []
        size = 0
        for e in page:
            proto = entry_to_proto(e)
            size += proto.ByteSize()
            if entries and size > MAX_PAGE_BYTES:  # the rest comes on the next page
                last = entries[-1].sequence
                break
            entries.append(proto)
        return pb.ListAuditEntriesResponse(entries=entries, next_page_token=str(last) if last else "")

    def VerifyAuditLog(
        self, request: pb.VerifyAuditLogRequest, context: grpc.ServicerContext
    ) -> pb.VerifyAuditLogResponse:
        """Verify a whole chain on the server."""
        principal = self._auth.principal(context)
        chain = self._chain(principal, request.collaboration, "audit.verify", members_too=True)
        result = self._log.verify(chain)
        head = self._log.head(chain) if result.valid else None
        return pb.VerifyAuditLogResponse(
            valid=result.valid,
            entries_checked=result.entries_checked,
            first_invalid_sequence=result.first_invalid_sequence,
            reason=result.reason,
            head=pb.AuditHead(
                collaboration=head.collaboration, sequence=head.sequence, hash=head.hash, signature=head.signature
            )
            if head
            else None,
        )

    def ExportAuditLog(
        self, request: pb.ExportAuditLogRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportAuditLogResponse]:
        """A chain as JSON Lines, in chunks of whole lines."""
        principal = self._auth.principal(context)
        chain = self._chain(principal, request.collaboration, "audit.export")
        with self._streams.slot(principal, chain):
            head = self._log.head(chain)  # taken first: the export ends exactly at it, whatever is appended meanwhile
            if head is not None:
                head = replace(head, tree=self._trees.head(chain, size=head.sequence))
            buffer: list[bytes] = []
            size = 0
            for entry in self._log.entries(chain, limit=head.sequence if head else 0):
                if not context.is_active():
                    return
                line = (entry.to_json() + "\n").encode()
                buffer.append(line)
                size += len(line)
                if size >= EXPORT_CHUNK_BYTES:
                    yield pb.ExportAuditLogResponse(jsonl=b"".join(buffer))
                    buffer, size = [], 0
            if head is not None:
                buffer.append((head.to_json() + "\n").encode())
            if buffer:
                yield pb.ExportAuditLogResponse(jsonl=b"".join(buffer))

    def GetServerPublicKey(
        self, request: pb.GetServerPublicKeyRequest, context: grpc.ServicerContext
    ) -> pb.GetServerPublicKeyResponse:
        """The key that signs every entry; any authenticated caller may have it."""
        self._auth.principal(context)
        key = self._log.public_key
        return pb.GetServerPublicKeyResponse(
            ed25519_public_key=key.public_bytes(Encoding.Raw, PublicFormat.Raw),
            pem=key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode(),
        )

    def GetTreeHead(self, request: pb.GetTreeHeadRequest, context: grpc.ServicerContext) -> pb.GetTreeHeadResponse:
        """The chain's signed Merkle tree head now (members and assigned auditors; the server's chain: auditors)."""
        principal = self._auth.principal(context)
        chain = self._chain(principal, request.collaboration, "audit.tree_head", members_too=True)
        return pb.GetTreeHeadResponse(head=self._trees.head(chain).to_proto())

    def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> pb.GetConsistencyProofResponse:
        """Proof that the chain's tree of `second` entries extends its tree of `first`."""
        principal = self._auth.principal(context)
        chain = self._chain(principal, request.collaboration, "audit.consistency", members_too=True)
        return pb.GetConsistencyProofResponse(proof=self._trees.consistency(chain, request.first, request.second))

    def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> pb.GetInclusionProofResponse:
        """An entry and its inclusion proof: for members, only their own entries (a receipt they hold)."""
        principal = self._auth.principal(context)
        chain = self._chain(principal, request.collaboration, "audit.inclusion", members_too=True)
        entry, proof = self._trees.inclusion(chain, request.sequence, request.tree_size)
        if principal.role is not Role.AUDITOR and entry.principal != principal.name:
            raise PermissionDeniedError("a member may ask for the inclusion proofs of its own entries only")
        return pb.GetInclusionProofResponse(entry=entry_to_proto(entry), proof=proof)
