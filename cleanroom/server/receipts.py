"""Receipts: every response whose call appended to a collaboration's audit chain carries proof of it.

The entries a call committed are collected (`cleanroom.audit.log.collecting`), and when the call ends, whether it
answered or was refused, its trailing metadata `cleanroom-receipts-bin` holds a `Receipts` message: each entry, the
signed tree head of its chain after the call, and the entry's inclusion proof. A member who keeps them can show,
later, that the server's log once held its entries and its spending (PROTOCOL.md, "The transparency log").
Entries of the server's own chain get no receipt (they belong to no member's collaboration).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from cleanroom_client.protocol import audit_pb2 as apb
from cleanroom_client.transparency import RECEIPTS_METADATA

from ..audit.log import SERVER_CHAIN, collecting
from ..audit.transparency import AuditTrees
from .audit_servicer import entry_to_proto
from .errors import BehaviourInterceptor


def receipts_message(trees: AuditTrees, entries: list[Any]) -> apb.Receipts:
    """The wire form of the receipts of `entries` (collaboration chains only)."""
    mine = [e for e in entries if e.collaboration != SERVER_CHAIN]
    return apb.Receipts(
        receipts=[
            apb.Receipt(entry=entry_to_proto(r.entry), head=r.head.to_proto(), inclusion_proof=list(r.proof))
            for r in trees.receipts(mine)
        ]
    )


class ReceiptInterceptor(BehaviourInterceptor):
    """Attaches the receipts of the entries each call committed to its trailing metadata."""

    def __init__(self, trees: AuditTrees) -> None:
        self._trees = trees

    def _attach(self, context: grpc.ServicerContext, entries: list[Any]) -> None:
        message = receipts_message(self._trees, entries)
        if message.receipts:
            context.set_trailing_metadata(((RECEIPTS_METADATA, message.SerializeToString()),))

    def _unary(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            with collecting() as entries:
                try:
                    return fn(request, context)
                finally:
                    self._attach(context, entries)

        return handler

    def _stream(self, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with collecting() as entries:
                try:
                    yield from fn(request, context)
                finally:
                    self._attach(context, entries)

        return handler

    def wrap(self, fn: Callable[..., Any], method: str, streams_in: bool, streams_out: bool) -> Callable[..., Any]:
        """Wrap the method's behaviour so its committed entries come back as receipts."""
        return self._stream(fn) if streams_out else self._unary(fn)
