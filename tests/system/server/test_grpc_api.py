"""The contract over a real gRPC channel on loopback: statuses, health, reflection, a full match through the SDK."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cleanroom.devtools.synthetic import DEMO_POLICY, SyntheticConfig, generate
from cleanroom.matching import match_stats
from cleanroom_client import CleanRoomError, PolicyError
from cleanroom_client.curve import hash_to_u
from cleanroom_client.protocol import (
    PUBLIC_SERVICES,
    admin_pb2,
    analytics_pb2,
    audit_pb2,
    collaboration_pb2,
    matching_pb2,
    matching_pb2_grpc,
)


def _code(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details() or ""


def test_health_and_reflection(server, pki, tokens):
    """Both answer any principal; without credentials they answer UNAUTHENTICATED, like every service (issue 29)."""
    channel = grpc.secure_channel(
        f"localhost:{server.port}", grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    )
    md = (("authorization", f"Bearer {tokens['stranger']}"),)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", *PUBLIC_SERVICES):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service), metadata=md).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service=""))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [answer] = list(refl.ServerReflectionInfo(iter([request]), metadata=md))
    names = {s.name for s in answer.list_services_response.service}
    built_in = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert names == {*PUBLIC_SERVICES, *built_in}


def test_the_public_services_are_every_service_of_the_protos_but_the_operators_own():
    """The admin service answers on the data directory's local socket only (`cleanroom.server.admin_socket`)."""
    declared = {
        service.full_name
        for module in (admin_pb2, analytics_pb2, audit_pb2, collaboration_pb2, matching_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
    }
    assert set(PUBLIC_SERVICES) == declared - {"cleanroom.v1.AdminService"}
    assert len(PUBLIC_SERVICES) == len(set(PUBLIC_SERVICES)) == 4


def test_lifecycle_and_argument_errors(stub_for, make_client):
    brand, platform = make_client("brand"), make_client("platform")
    with pytest.raises(PolicyError):
        brand.create_collaboration("name: x\n")
    collab = brand.create_collaboration(DEMO_POLICY, "errs-1")
    assert collab.state == "awaiting_approval"
    with pytest.raises(CleanRoomError) as info:
        brand.create_collaboration(DEMO_POLICY, "errs-1")
    assert info.value.code == "ALREADY_EXISTS"
    with pytest.raises(CleanRoomError) as info:
        brand.get_collaboration("nope-404")
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(CleanRoomError) as info:
        make_client("stranger").get_collaboration(collab.id)
    assert info.value.code == "NOT_FOUND"  # to an outsider, an existing collaboration looks like a missing one

    stub, md = stub_for(matching_pb2_grpc.MatchingServiceStub, "brand")
    parent = f"collaborations/{collab.id}"
    point = hash_to_u(b"p")

    def upload(*chunks):
        return stub.UploadBlindedPoints(iter(chunks), metadata=md)

    def chunk(i=0, points=point, first_row=1, last=False, **kw):
        fields = {"parent": parent, "identifier_type": matching_pb2.IDENTIFIER_TYPE_EMAIL, **kw}
        return matching_pb2.UploadBlindedPointsRequest(
            chunk_index=i, first_row=first_row, points=points, last=last, **fields
        )

    code, msg = _code(lambda: upload(chunk()))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "not yet approved by: brand, platform" in msg

    brand.approve_policy(collab.id)
    platform.approve_policy(collab.id)
    assert brand.get_collaboration(collab.id).active
    code, msg = _code(lambda: upload(chunk(points=point[:31])))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "32 bytes" in msg
    code, msg = _code(lambda: upload(chunk(points=(2).to_bytes(32, "little"))))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "twist" in msg
    code, msg = _code(lambda: upload(chunk(points=point * 140000)))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "send smaller chunks" in msg
    code, msg = _code(lambda: upload(chunk(identifier_type=0)))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    code, msg = _code(lambda: upload(chunk(i=0), chunk(i=2)))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "expects chunk 1" in msg
    code, msg = _code(lambda: upload(chunk(parent="collaborations/BAD")))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "collaboration name" in msg
    # the good chunk 0 of the failed stream above is kept: the status says resume at 1
    status = stub.GetMatchStatus(matching_pb2.GetMatchStatusRequest(parent=parent), metadata=md)
    assert [(u.kind, u.next_chunk_index, u.committed) for u in status.uploads] == [("points", 1, False)]
    # a policy cannot change once data arrived
    with pytest.raises(CleanRoomError) as info:
        brand.propose_policy(collab.id, DEMO_POLICY.replace("min_group_size: 50", "min_group_size: 5"))
    assert info.value.code == "FAILED_PRECONDITION"


def test_table_upload_checks_the_policy(stub_for, active):
    import pandas as pd

    from cleanroom_client.tables import arrow_chunks

    stub, md = stub_for(matching_pb2_grpc.MatchingServiceStub, "platform")

    def send(table, df):
        _, chunks = arrow_chunks(df)
        reqs = [
            matching_pb2.UploadTableRequest(
                parent=f"collaborations/{active}", table=table, chunk_index=0, arrow_ipc=c, last=True
            )
            for c in chunks
        ]
        return stub.UploadTable(iter(reqs), metadata=md)

    ok = pd.DataFrame({"row_id": [1, 2], "age_band": ["18-24", None]})
    code, msg = _code(lambda: send("users", ok))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "upload your blinded points first" in msg
    points = matching_pb2.UploadBlindedPointsRequest(
        parent=f"collaborations/{active}",
        identifier_type=matching_pb2.IDENTIFIER_TYPE_EMAIL,
        first_row=0,
        points=b"",
        last=True,
        total_rows=3,
    )
    assert stub.UploadBlindedPoints(iter([points]), metadata=md).committed
    code, msg = _code(lambda: send("users", pd.DataFrame({"row_id": [0, 3]})))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "row_id 3 was never offered points" in msg
    code, msg = _code(lambda: send("users", ok.assign(income=[1, 2])))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "not declared" in msg
    code, msg = _code(lambda: send("users", ok.assign(age_band=["18-24", "99+"])))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "outside its declared domain" in msg
    code, msg = _code(lambda: send("secrets", ok))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "not declared for platform" in msg
    code, msg = _code(lambda: send("users", pd.DataFrame({"row_id": [1, 1]})))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "duplicate row_id" in msg
    assert send("users", ok).committed
    code, msg = _code(lambda: send("users", ok))
    assert code is grpc.StatusCode.FAILED_PRECONDITION


def test_match_through_the_sdk_equals_truth_and_is_idempotent(server, active, make_client):
    data = generate(SyntheticConfig(brand_users=300, platform_users=400, shared=120))
    brand, platform = make_client("brand"), make_client("platform")
    results = {}

    def run(name, client, **kw):
        try:
            results[name] = client.match(active, wait_timeout=60, **kw)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            results[name] = exc

    threads = [
        threading.Thread(
            target=run,
            args=("brand", brand),
            kwargs={
                "users": data.brand_users,
                "key": "customer_id",
                "identifiers": {"email": "email", "phone": "mobile"},
                "attributes": ["tier"],
                "events": {"conversions": data.brand_conversions},
            },
        ),
        threading.Thread(
            target=run,
            args=("platform", platform),
            kwargs={
                "users": data.platform_users,
                "key": "user_id",
                "identifiers": {"email": "email", "phone": "phone"},
                "attributes": ["age_band", "stage_4a"],
            },
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b, p = results["brand"], results["platform"]
    assert not isinstance(b, Exception), b
    assert not isinstance(p, Exception), p
    assert b.peer_set_size == 400
    assert p.peer_set_size == 300
    assert b.identifiers["email"].invalid == (data.brand_users["email"] == "not-an-email").sum()
    assert p.identifiers["phone"].missing == data.platform_users["phone"].isna().sum()
    assert b.tables == {"users": 300, "conversions": len(data.brand_conversions)}
    _, total = match_stats(server.store.of(active).cursor(), active)
    assert total == len(data.truth)
    # the summary never carries the intersection; a second call returns the same summary without re-sending
    assert not hasattr(b, "matched_rows")
    again = brand.match(
        active,
        users=data.brand_users,
        key="customer_id",
        identifiers={"email": "email", "phone": "mobile"},
        attributes=["tier"],
        events={"conversions": data.brand_conversions},
    )
    assert again.identifiers == b.identifiers
    assert again.peer_set_size == 400


def test_audit_list_filters_and_pages(stub_for, active):
    from google.protobuf.timestamp_pb2 import Timestamp

    from cleanroom_client.protocol import audit_pb2, audit_pb2_grpc

    stub, md = stub_for(audit_pb2_grpc.AuditServiceStub, "auditor")
    parent = f"collaborations/{active}"
    everything = stub.ListAuditEntries(audit_pb2.ListAuditEntriesRequest(collaboration=parent), metadata=md)
    assert [e.sequence for e in everything.entries] == [1, 2, 3, 4]
    page = stub.ListAuditEntries(audit_pb2.ListAuditEntriesRequest(collaboration=parent, page_size=3), metadata=md)
    assert [e.sequence for e in page.entries] == [1, 2, 3]
    rest = stub.ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(collaboration=parent, page_size=3, page_token=page.next_page_token),
        metadata=md,
    )
    assert [e.sequence for e in rest.entries] == [4]
    assert rest.next_page_token == ""
    approvals = stub.ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(collaboration=parent, action="policy.approve"), metadata=md
    )
    assert [e.principal for e in approvals.entries] == ["brand", "platform"]
    by_platform = stub.ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(collaboration=parent, principal="platform"), metadata=md
    )
    assert [e.action for e in by_platform.entries] == ["policy.approve"]
    future = Timestamp()
    future.FromSeconds(4_000_000_000)
    later = stub.ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(collaboration=parent, start_time=future), metadata=md
    )
    assert list(later.entries) == []
    first = everything.entries[0]
    assert first.previous_hash == "0" * 64
    assert everything.entries[1].previous_hash == first.hash
    assert len(first.signature) == 64
