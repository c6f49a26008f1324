"""Issue 28, item 5: NaN and infinities in any float field are refused at the edge, audited, and the log stays whole.

Over real gRPC with TLS on loopback. Before, a NaN `half_life_days` answered INTERNAL and its refusal was lost (an
audit entry with NaN in it could not be written as JSON).
"""

from __future__ import annotations

import json
import math
import time

import grpc
import pytest

from cleanroom.server.rates import REFUSAL_RATE
from cleanroom_client.protocol import analytics_pb2 as an
from cleanroom_client.protocol import analytics_pb2_grpc as an_grpc
from cleanroom_client.protocol import audit_pb2 as au
from cleanroom_client.protocol import audit_pb2_grpc as au_grpc

NON_FINITE = (math.nan, math.inf, -math.inf)


def _requests(parent: str, bad: float) -> list[tuple[str, object, str]]:
    """(RPC, request, the field path the refusal names): several RPCs, several float fields, nested ones too."""
    return [
        ("Overlap", an.OverlapRequest(parent=parent, epsilon=bad), "epsilon"),
        (
            "Attribution",
            an.AttributionRequest(
                parent=parent,
                model=an.ATTRIBUTION_MODEL_TIME_DECAY,
                lookback_days=7,
                by="campaign",
                half_life_days=bad,
                epsilon=0.5,
            ),
            "half_life_days",
        ),
        (
            "Activate",
            an.ActivateRequest(parent=parent, segment={"brand.tier": "gold"}, epsilon=0.5, delta=bad),
            "delta",
        ),
        (
            "Lookalike",
            an.LookalikeRequest(parent=parent, seed={"brand.tier": "gold"}, audience_size=10, epsilon=bad, delta=1e-9),
            "epsilon",
        ),
        (
            "Preview",
            an.PreviewRequest(attribution=an.AttributionRequest(parent=parent, half_life_days=bad, epsilon=0.5)),
            "attribution.half_life_days",
        ),
    ]


def _strict(line: bytes) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("bad", NON_FINITE, ids=("nan", "+inf", "-inf"))
def test_non_finite_floats_are_refused_at_the_edge_and_audited(server, stub_for, active, bad):
    parent = f"collaborations/{active}"
    stub, md = stub_for(an_grpc.AnalyticsServiceStub, "brand")
    cases = _requests(parent, bad)
    for method, request, field in cases:
        with pytest.raises(grpc.RpcError) as info:
            getattr(stub, method)(request, metadata=md)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (method, info.value.details())
        assert f"`{field}` must be a finite number" in str(info.value.details())
    refusals = [e.parameters for e in server.room.audit.entries(active) if e.action == "refused"]
    for method, _, field in cases:
        assert any(
            p["attempted"].endswith(f"/{method}") and f"`{field}` must be a finite number" in p["reason"]
            for p in refusals
        ), (method, refusals)
    audit, amd = stub_for(au_grpc.AuditServiceStub, "auditor")
    assert audit.VerifyAuditLog(au.VerifyAuditLogRequest(collaboration=parent), metadata=amd).valid
    exported = list(audit.ExportAuditLog(au.ExportAuditLogRequest(collaboration=parent), metadata=amd))
    lines = [_strict(line) for line in b"".join(c.jsonl for c in exported).splitlines()]
    assert sum(1 for line in lines if isinstance(line, dict) and line.get("action") == "refused") >= len(cases)
    budget = stub.GetBudget(an.GetBudgetRequest(parent=parent), metadata=md)
    assert all(m.epsilon_spent == 0 for m in budget.members)


def test_the_audit_writer_never_fails_on_a_non_finite_float(server, stub_for, active):
    """Behind the edge too: parameters and responses holding NaN or infinities are written, as text, and verify."""
    entry = server.room.audit.record(
        active, "brand", "refused", {"x": math.nan, "many": [math.inf, -math.inf, 1.5]}, response={"v": math.nan}
    )
    assert entry.parameters == {"x": "NaN", "many": ["Infinity", "-Infinity", 1.5]}
    stored = list(server.room.audit.entries(active))[-1]
    assert (stored.parameters, stored.hash) == (entry.parameters, entry.hash)
    audit, amd = stub_for(au_grpc.AuditServiceStub, "auditor")
    parent = f"collaborations/{active}"
    assert audit.VerifyAuditLog(au.VerifyAuditLogRequest(collaboration=parent), metadata=amd).valid
    exported = list(audit.ExportAuditLog(au.ExportAuditLogRequest(collaboration=parent), metadata=amd))
    assert all(_strict(line) for line in b"".join(c.jsonl for c in exported).splitlines())


def test_a_member_cannot_flood_its_collaborations_log_with_refused_requests(server, stub_for, active):
    """Every refusal writes an entry (at the edge: `refused`; in a query: `query.refuse`), so each kind counts
    against the caller's refusals: a NaN at the edge, an epsilon outside the policy's range, a query before the
    match (INVALID_ARGUMENT, FAILED_PRECONDITION). Before, only PERMISSION_DENIED and NOT_FOUND counted, and a
    member wrote an entry into the shared chain per call, as fast as it could send them."""
    parent = f"collaborations/{active}"
    stub, md = stub_for(an_grpc.AnalyticsServiceStub, "brand")
    kinds = (
        an.OverlapRequest(parent=parent, epsilon=math.nan),  # refused at the edge
        an.OverlapRequest(parent=parent, epsilon=1e9),  # refused by the query's rules
        an.OverlapRequest(parent=parent, epsilon=0.5),  # refused: no match yet
    )
    log = server.room.audit
    before = log.head(active).sequence
    started = time.monotonic()
    codes = []
    for i in range(90):
        with pytest.raises(grpc.RpcError) as info:
            stub.Overlap(kinds[i % 3], metadata=md, timeout=5.0)
        codes.append(info.value.code())
    elapsed = time.monotonic() - started
    written = log.head(active).sequence - before
    assert written <= REFUSAL_RATE.burst + REFUSAL_RATE.per_second * elapsed + 1, f"{written} in {elapsed:.1f} s"
    assert {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION} <= set(codes[:3])
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 90 - written - 1
    audit, amd = stub_for(au_grpc.AuditServiceStub, "auditor")
    assert audit.VerifyAuditLog(au.VerifyAuditLogRequest(collaboration=parent), metadata=amd).valid
