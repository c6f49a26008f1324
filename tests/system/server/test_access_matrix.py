"""Every RPC x every kind of caller, over real gRPC with TLS: allowed, PERMISSION_DENIED or UNAUTHENTICATED.

"Allowed" means the call got past authentication and authorization: it may still fail on its arguments or the
collaboration's state. The README's table is this one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import grpc
import pytest

from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.server.rates import REFUSAL_RATE
from cleanroom_client.protocol import (
    analytics_pb2 as an,
)
from cleanroom_client.protocol import (
    analytics_pb2_grpc as an_grpc,
)
from cleanroom_client.protocol import (
    audit_pb2 as au,
)
from cleanroom_client.protocol import (
    audit_pb2_grpc as au_grpc,
)
from cleanroom_client.protocol import (
    collaboration_pb2 as co,
)
from cleanroom_client.protocol import (
    collaboration_pb2_grpc as co_grpc,
)
from cleanroom_client.protocol import (
    matching_pb2 as ma,
)
from cleanroom_client.protocol import (
    matching_pb2_grpc as ma_grpc,
)
from cleanroom_client.tables import arrow_chunks

CALLERS = ("anonymous", "bad_token", "brand", "platform", "stranger", "auditor", "outsider_auditor")
P = "collaborations/test-collab"
OK, DENIED, UNAUTH = "allowed", "PERMISSION_DENIED", "UNAUTHENTICATED"
#: A caller outside a collaboration learns nothing, not even that it exists (issue 13 item 8).
HIDDEN = "NOT_FOUND"


def _row(brand: str, platform: str, stranger: str, auditor: str, outsider: str) -> dict[str, str]:
    return {
        "anonymous": UNAUTH,
        "bad_token": UNAUTH,
        "brand": brand,
        "platform": platform,
        "stranger": stranger,
        "auditor": auditor,
        "outsider_auditor": outsider,
    }


def _users_table(name: str) -> bytes:
    import pandas as pd

    _, chunks = arrow_chunks(pd.DataFrame({"row_id": [1, 2]}))
    return next(chunks)


# service, method, request(s), streaming kind, expected per caller
MATRIX: list[tuple[str, Callable, str, object, dict[str, str]]] = [
    (
        "CollaborationService",
        co_grpc.CollaborationServiceStub,
        "CreateCollaboration",
        lambda who: co.CreateCollaborationRequest(
            collaboration_id=f"new-{who.replace('_', '-')}", policy_yaml=DEMO_POLICY
        ),
        _row(OK, OK, DENIED, DENIED, DENIED),
    ),
    (
        "CollaborationService",
        co_grpc.CollaborationServiceStub,
        "GetCollaboration",
        lambda who: co.GetCollaborationRequest(name=P),
        _row(OK, OK, HIDDEN, OK, HIDDEN),
    ),
    (
        "CollaborationService",
        co_grpc.CollaborationServiceStub,
        "ListCollaborations",
        lambda who: co.ListCollaborationsRequest(),
        _row(OK, OK, OK, OK, OK),
    ),
    (
        "CollaborationService",
        co_grpc.CollaborationServiceStub,
        "ProposePolicy",
        lambda who: co.ProposePolicyRequest(name=P, policy_yaml=DEMO_POLICY),
        _row(OK, OK, HIDDEN, DENIED, HIDDEN),
    ),
    (
        "CollaborationService",
        co_grpc.CollaborationServiceStub,
        "ApprovePolicy",
        lambda who: co.ApprovePolicyRequest(name=P, etag="x"),
        _row(OK, OK, HIDDEN, DENIED, HIDDEN),
    ),
    (
        "MatchingService",
        ma_grpc.MatchingServiceStub,
        "UploadBlindedPoints",
        lambda who: iter([ma.UploadBlindedPointsRequest(parent=P, identifier_type=ma.IDENTIFIER_TYPE_EMAIL)]),
        _row(OK, OK, DENIED, DENIED, DENIED),
    ),
    (
        "MatchingService",
        ma_grpc.MatchingServiceStub,
        "FetchPeerPoints",
        lambda who: ma.FetchPeerPointsRequest(parent=P),
        _row(OK, OK, HIDDEN, DENIED, HIDDEN),
    ),
    (
        "MatchingService",
        ma_grpc.MatchingServiceStub,
        "SubmitDoubleBlindedPoints",
        lambda who: iter([ma.SubmitDoubleBlindedPointsRequest(parent=P)]),
        _row(OK, OK, DENIED, DENIED, DENIED),
    ),
    (
        "MatchingService",
        ma_grpc.MatchingServiceStub,
        "UploadTable",
        lambda who: iter([ma.UploadTableRequest(parent=P, table="users", arrow_ipc=_users_table("users"))]),
        _row(OK, OK, DENIED, DENIED, DENIED),
    ),
    (
        "MatchingService",
        ma_grpc.MatchingServiceStub,
        "GetMatchStatus",
        lambda who: ma.GetMatchStatusRequest(parent=P),
        _row(OK, OK, HIDDEN, DENIED, HIDDEN),
    ),
    (
        "MatchingService",
        ma_grpc.MatchingServiceStub,
        "OpenRefresh",
        lambda who: ma.OpenRefreshRequest(parent=P),
        _row(OK, OK, HIDDEN, DENIED, HIDDEN),
    ),
    (
        "MatchingService",
        ma_grpc.MatchingServiceStub,
        "RetireUsers",
        lambda who: ma.RetireUsersRequest(parent=P, period=1),
        _row(OK, OK, HIDDEN, DENIED, HIDDEN),
    ),
    (
        "MatchingService",
        ma_grpc.MatchingServiceStub,
        "CancelRefresh",
        lambda who: ma.CancelRefreshRequest(parent=P, period=1),
        _row(OK, OK, HIDDEN, DENIED, HIDDEN),
    ),
    *[
        (
            "AnalyticsService",
            an_grpc.AnalyticsServiceStub,
            method,
            (lambda cls: lambda who: cls(parent=P))(req),
            _row(OK, DENIED, HIDDEN, DENIED, HIDDEN),
        )
        for method, req in [
            ("Overlap", an.OverlapRequest),
            ("Venn", an.VennRequest),
            ("Funnel", an.FunnelRequest),
            ("FunnelFlow", an.FunnelFlowRequest),
            ("SegmentInsight", an.SegmentInsightRequest),
            ("Attribution", an.AttributionRequest),
            ("Value", an.ValueRequest),
            ("Loyalty", an.LoyaltyRequest),
            ("Lift", an.LiftRequest),
            ("Lookalike", an.LookalikeRequest),
            ("Activate", an.ActivateRequest),
        ]
    ],
    (
        "AnalyticsService",
        an_grpc.AnalyticsServiceStub,
        "LookalikeWithProgress",
        lambda who: an.LookalikeWithProgressRequest(lookalike=an.LookalikeRequest(parent=P)),
        _row(OK, DENIED, HIDDEN, DENIED, HIDDEN),
    ),
    (
        "AnalyticsService",
        an_grpc.AnalyticsServiceStub,
        "Preview",
        lambda who: an.PreviewRequest(overlap=an.OverlapRequest(parent=P)),
        _row(OK, DENIED, HIDDEN, DENIED, HIDDEN),
    ),
    (
        "AnalyticsService",
        an_grpc.AnalyticsServiceStub,
        "ListAudiences",
        lambda who: an.ListAudiencesRequest(parent=P),
        _row(DENIED, OK, HIDDEN, DENIED, HIDDEN),
    ),
    (
        "AnalyticsService",
        an_grpc.AnalyticsServiceStub,
        "FetchAudience",
        lambda who: an.FetchAudienceRequest(name=f"{P}/audiences/a-none"),
        _row(DENIED, OK, HIDDEN, DENIED, HIDDEN),
    ),
    (
        "AnalyticsService",
        an_grpc.AnalyticsServiceStub,
        "GetBudget",
        lambda who: an.GetBudgetRequest(parent=P),
        _row(OK, OK, HIDDEN, OK, HIDDEN),
    ),
    (
        "AuditService",
        au_grpc.AuditServiceStub,
        "ListAuditEntries",
        lambda who: au.ListAuditEntriesRequest(collaboration=P),
        _row(DENIED, DENIED, HIDDEN, OK, HIDDEN),
    ),
    (
        "AuditService",
        au_grpc.AuditServiceStub,
        "ListAuditEntries (server chain)",
        lambda who: au.ListAuditEntriesRequest(),
        _row(DENIED, DENIED, DENIED, OK, OK),
    ),
    (
        "AuditService",
        au_grpc.AuditServiceStub,
        "VerifyAuditLog",
        lambda who: au.VerifyAuditLogRequest(collaboration=P),
        _row(OK, OK, HIDDEN, OK, HIDDEN),
    ),
    (
        "AuditService",
        au_grpc.AuditServiceStub,
        "ExportAuditLog",
        lambda who: au.ExportAuditLogRequest(collaboration=P),
        _row(DENIED, DENIED, HIDDEN, OK, HIDDEN),
    ),
    (
        "AuditService",
        au_grpc.AuditServiceStub,
        "GetTreeHead",
        lambda who: au.GetTreeHeadRequest(collaboration=P),
        _row(OK, OK, HIDDEN, OK, HIDDEN),
    ),
    (
        "AuditService",
        au_grpc.AuditServiceStub,
        "GetTreeHead (server chain)",
        lambda who: au.GetTreeHeadRequest(),
        _row(DENIED, DENIED, DENIED, OK, OK),
    ),
    (
        "AuditService",
        au_grpc.AuditServiceStub,
        "GetConsistencyProof",
        lambda who: au.GetConsistencyProofRequest(collaboration=P, first=1, second=2),
        _row(OK, OK, HIDDEN, OK, HIDDEN),
    ),
    (
        "AuditService",
        au_grpc.AuditServiceStub,
        "GetInclusionProof (entry 1, the brand's)",
        lambda who: au.GetInclusionProofRequest(collaboration=P, sequence=1, tree_size=1),
        _row(OK, DENIED, HIDDEN, OK, HIDDEN),
    ),
    (
        "AuditService",
        au_grpc.AuditServiceStub,
        "GetServerPublicKey",
        lambda who: au.GetServerPublicKeyRequest(),
        _row(OK, OK, OK, OK, OK),
    ),
]


def test_the_matrix_covers_every_rpc_of_every_member_facing_service():
    """A new RPC cannot ship without its row: every method of the four services is in the matrix."""
    services = {
        "CollaborationService": co.DESCRIPTOR,
        "MatchingService": ma.DESCRIPTOR,
        "AnalyticsService": an.DESCRIPTOR,
        "AuditService": au.DESCRIPTOR,
    }
    declared = {(name, m.name) for name, file in services.items() for m in file.services_by_name[name].methods}
    covered = {(row[0], row[2].split(" ")[0]) for row in MATRIX}
    assert declared - covered == set()


def _outcome(call: Callable[[], object]) -> str:
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
            list(result)  # drain server streams: errors arrive while iterating
    except grpc.RpcError as err:
        code = err.code().name
        if code == HIDDEN:
            return HIDDEN if "not one of its members or auditors" in str(err.details()) else OK
        return code if code in (DENIED, UNAUTH) else OK
    return OK


@pytest.mark.parametrize(
    ("service", "stub_cls", "method", "request_for", "expected"), MATRIX, ids=[f"{m[0]}.{m[2]}" for m in MATRIX]
)
def test_access_matrix(server, pki, tokens, active, service, stub_cls, method, request_for, expected):
    tokens = {**tokens, "bad_token": "crt_not-a-token"}
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
        stub = stub_cls(channel)
        rpc = getattr(stub, method.split(" ")[0])
        got = {}
        for who in CALLERS:
            md = () if who == "anonymous" else (("authorization", f"Bearer {tokens[who]}"),)
            got[who] = _outcome(partial(rpc, request_for(who), metadata=md, timeout=10))
    assert got == expected


def test_a_member_cannot_overwrite_the_other_members_table(stub_for, active):
    stub, md = stub_for(ma_grpc.MatchingServiceStub, "platform")
    req = ma.UploadTableRequest(parent=P, table="brand.users", arrow_ipc=_users_table("users"), last=True)
    with pytest.raises(grpc.RpcError) as info:
        stub.UploadTable(iter([req]), metadata=md)
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_refusals_are_audited(server, make_client, active):
    """A member's or assigned auditor's refusal goes to the collaboration's chain."""
    with pytest.raises(Exception, match="PERMISSION_DENIED"):
        make_client("auditor").approve_policy(active)
    log = make_client("auditor").audit_log(active, action="refused")
    assert list(log["principal"]) == ["auditor"]
    assert "policy.approve" in log["parameters"].iloc[0]


def test_an_outsiders_flood_goes_to_the_server_chain_not_the_collaborations(server, make_client, active):
    auditor = make_client("auditor")
    length = len(auditor.audit_log(active))
    stranger = make_client("stranger")
    for _ in range(REFUSAL_RATE.burst):
        with pytest.raises(Exception, match="NOT_FOUND"):
            stranger.get_collaboration(active)
    for _ in range(30):  # past its refusals: refused at the door, written nowhere (test_front_door.py)
        with pytest.raises(Exception, match="RESOURCE_EXHAUSTED"):
            stranger.get_collaboration(active)
    assert len(auditor.audit_log(active)) == length
    assert auditor.verify_audit_log(active)["entries_checked"] == length
    own = auditor.audit_log(action="refused")
    assert REFUSAL_RATE.burst <= len(own) <= REFUSAL_RATE.burst + 1  # one more may have refilled meanwhile
    assert set(own["principal"]) == {"stranger"}
    assert active in own["parameters"].iloc[0]


def test_ids_cannot_be_probed_existing_and_missing_collaborations_answer_alike(stub_for, active):
    """One answer, code and message shape alike, whether the id exists or not."""
    stubs = [stub_for(co_grpc.CollaborationServiceStub, who) for who in ("stranger", "outsider_auditor")]
    for stub, md in stubs:
        answers = {}
        for collab_id in (active, "no-such-collab"):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetCollaboration(co.GetCollaborationRequest(name=f"collaborations/{collab_id}"), metadata=md)
            answers[collab_id] = (info.value.code(), str(info.value.details()).replace(collab_id, "<id>"))
        assert answers[active] == answers["no-such-collab"]
        assert answers[active][0] is grpc.StatusCode.NOT_FOUND
