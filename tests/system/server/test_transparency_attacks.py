"""The operator answers with receipts it crafted: the SDK must refuse each one, not keep it.

The operator holds the audit key and may run any server code, so each attack below builds, with the real server's
key and log (`server.room`), the trailing metadata a modified server would send, and hands it to the brand's SDK
exactly where a call's trailer arrives (`Witness.after`). Tree heads, keys and consistency proofs come from the real
server over gRPC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cleanroom.audit.chain import AuditEntry
from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.server.app import RunningServer
from cleanroom.server.audit_servicer import entry_to_proto
from cleanroom.server.receipts import receipts_message
from cleanroom_client import merkle
from cleanroom_client.protocol import analytics_pb2 as qpb
from cleanroom_client.protocol import audit_pb2 as apb
from cleanroom_client.transparency import RECEIPTS_METADATA, HistoryRewrittenError, TreeHead, leaf_data


def _trailer(*receipts: apb.Receipt) -> tuple[tuple[str, bytes], ...]:
    return ((RECEIPTS_METADATA, apb.Receipts(receipts=list(receipts)).SerializeToString()),)


def _honest(server: RunningServer, collab: str, principal: str = "brand") -> apb.Receipt:
    """What the real server sends for an entry appended now."""
    entry = server.room.audit.record(collab, principal, "query.overlap", {"attack": True})
    return receipts_message(server.room.trees, [entry]).receipts[0]


def _signed_head(server: RunningServer, collab: str, nodes: merkle.MerkleNodes) -> TreeHead:
    unsigned = TreeHead(collab, nodes.size, nodes.root(), datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return TreeHead(collab, unsigned.size, unsigned.root, unsigned.time, server.room.audit.sign(unsigned.message()))


def _forged_next(server: RunningServer, collab: str) -> apb.Receipt:
    """A fork: an entry the log never held, signed, at the next sequence, in a signed head of the forked tree."""
    log = server.room.audit
    real = list(log.entries(collab))
    body = AuditEntry(
        collaboration=collab,
        sequence=len(real) + 1,
        time=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        principal="brand",
        action="query.overlap",
        parameters={"forged": True},
        epsilon=0.0,
        response_sha256="",
        previous_hash=real[-1].hash,
    )
    digest = body.compute_hash()
    fake = AuditEntry(**{**body.__dict__, "hash": digest, "signature": log.sign(bytes.fromhex(digest))})
    nodes = merkle.MerkleNodes()
    for e in [*real, fake]:
        nodes.append(merkle.leaf_hash(leaf_data(e.hash, e.signature)))
    head = _signed_head(server, collab, nodes)
    proof = merkle.inclusion_proof(nodes.perfect, fake.sequence - 1, nodes.size)
    return apb.Receipt(entry=entry_to_proto(fake), head=head.to_proto(), inclusion_proof=proof)


def _request(collab: str) -> qpb.OverlapRequest:
    return qpb.OverlapRequest(parent=f"collaborations/{collab}")


def test_every_head_of_a_calls_receipts_must_extend_the_remembered_one_not_only_the_last(
    make_client, server: RunningServer, active: str
) -> None:
    brand = make_client("brand")
    brand.audit_head(active)
    forked = _forged_next(server, active)  # shown first, then hidden behind an honest receipt of the same size
    honest = _honest(server, active)
    with pytest.raises(HistoryRewrittenError):
        brand._witness.after(_trailer(forked, honest), _request(active))
    with pytest.raises(HistoryRewrittenError, match="acknowledge"):
        brand._witness.head(active)


def test_a_receipt_whose_entry_belongs_to_another_chain_is_refused(
    make_client, server: RunningServer, active: str
) -> None:
    brand = make_client("brand")
    other = brand.create_collaboration(DEMO_POLICY, "other-collab").id
    theirs = _honest(server, other)
    nodes = merkle.MerkleNodes()
    for e in server.room.audit.entries(other):
        nodes.append(merkle.leaf_hash(leaf_data(e.hash, e.signature)))
    relabelled = apb.Receipt(
        entry=theirs.entry, head=_signed_head(server, active, nodes).to_proto(), inclusion_proof=theirs.inclusion_proof
    )
    fresh = make_client("auditor")  # remembers nothing of `active` yet: only the receipt itself can tell
    with pytest.raises(HistoryRewrittenError, match="another chain"):
        fresh._witness.after(_trailer(relabelled), None)
    assert fresh._witness.memory.receipts(active) == []


def test_a_receipt_of_another_collaboration_than_the_call_is_refused(
    make_client, server: RunningServer, active: str
) -> None:
    brand = make_client("brand")
    other = brand.create_collaboration(DEMO_POLICY, "other-collab").id
    brand.audit_head(active)
    with pytest.raises(HistoryRewrittenError, match="another chain"):
        brand._witness.after(_trailer(_honest(server, other)), _request(active))


def test_a_replayed_receipt_is_refused_even_under_a_fresh_head(make_client, server: RunningServer, active: str) -> None:
    brand = make_client("brand")
    brand.audit_head(active)
    first = _honest(server, active)
    brand._witness.after(_trailer(first), _request(active))
    kept = len(brand._witness.memory.receipts(active))
    # the same receipt again, for a later call the operator did not log
    with pytest.raises(HistoryRewrittenError, match="replayed"):
        brand._witness.after(_trailer(first), _request(active))
    brand._witness.memory.acknowledge(active)
    # the old entry with a fresh head and its proof in it: every proof verifies, the entry is still not new
    server.room.audit.record(active, "platform", "query.overlap", {})
    (old,) = server.room.audit.entries(active, after=first.entry.sequence - 1, limit=1)
    refreshed = receipts_message(server.room.trees, [old]).receipts[0]
    assert refreshed.head.size > first.head.size
    with pytest.raises(HistoryRewrittenError, match="replayed"):
        brand._witness.after(_trailer(refreshed), _request(active))
    assert len(brand._witness.memory.receipts(active)) == kept  # nothing counted twice in budget --check


def test_a_receipt_the_sdk_cannot_read_is_an_incident_not_a_traceback(
    make_client, server: RunningServer, active: str
) -> None:
    brand = make_client("brand")
    brand.audit_head(active)
    honest = _honest(server, active)
    honest.entry.parameters_json = "{not json"
    with pytest.raises(HistoryRewrittenError, match="does not prove its entry"):
        brand._witness.after(_trailer(honest), _request(active))
    with pytest.raises(HistoryRewrittenError, match="cannot be read"):
        brand._witness.after(((RECEIPTS_METADATA, b"\xff\xff\xff"),), _request(active))


def test_an_answer_whose_entry_records_less_than_it_spent_is_refused(
    make_client, server: RunningServer, active: str
) -> None:
    brand = make_client("brand")
    brand.audit_head(active)
    receipt = _honest(server, active)  # a perfect receipt of an entry that charges nothing
    answer = qpb.QueryResult(epsilon_spent=0.5, audit_sequence=receipt.entry.sequence)
    received = brand._witness.after(_trailer(receipt), _request(active))
    with pytest.raises(HistoryRewrittenError, match="records 0"):
        brand._witness.answered(_request(active), answer, received)


def test_an_answer_and_entry_that_both_record_less_than_was_asked_are_refused(
    make_client, server: RunningServer, active: str
) -> None:
    brand = make_client("brand")
    brand.audit_head(active)
    receipt = _honest(server, active)  # the entry and the answer agree on 0 ε; the request asked for 0.5
    answer = qpb.QueryResult(epsilon_spent=0.0, audit_sequence=receipt.entry.sequence)
    received = brand._witness.after(_trailer(receipt), _request(active))
    request = qpb.OverlapRequest(parent=f"collaborations/{active}", epsilon=0.5)
    with pytest.raises(HistoryRewrittenError, match=r"asked for 0\.5"):
        brand._witness.answered(request, answer, received)


def test_an_older_entry_of_another_member_is_no_receipt_for_a_new_call(
    make_client, server: RunningServer, active: str
) -> None:
    theirs = _honest(server, active, principal="platform")  # never given to the brand
    brand = make_client("brand")
    brand.audit_head(active)  # the brand has now seen a head that holds it
    request = _request(active)
    floor = brand._witness.before(request)
    (old,) = server.room.audit.entries(active, after=theirs.entry.sequence - 1, limit=1)
    replayed = receipts_message(server.room.trees, [old]).receipts[0]  # the current head: every proof verifies
    with pytest.raises(HistoryRewrittenError, match="replayed"):
        brand._witness.after(_trailer(replayed), request, floor)


@pytest.mark.parametrize("craft", ["proof of another entry", "fields differ from the hash"])
def test_a_receipt_that_does_not_prove_its_own_entry_is_refused(
    make_client, server: RunningServer, active: str, craft: str
) -> None:
    brand = make_client("brand")
    brand.audit_head(active)
    first, second = _honest(server, active), _honest(server, active)
    receipt = apb.Receipt()
    receipt.CopyFrom(second)
    if craft == "proof of another entry":
        (entry,) = server.room.audit.entries(active, after=first.entry.sequence - 1, limit=1)
        other = receipts_message(server.room.trees, [entry]).receipts[0]  # the same head, the other entry's path
        del receipt.inclusion_proof[:]
        receipt.inclusion_proof.extend(other.inclusion_proof)
    else:
        receipt.entry.epsilon = 0.25  # hash and signature kept
    with pytest.raises(HistoryRewrittenError, match="does not prove its entry"):
        brand._witness.after(_trailer(receipt), _request(active), brand._witness.before(_request(active)))
