"""Structured status details: the server packs policy problems and budget figures as google.rpc types, the SDK
reads them back as fields; in-process for the mapping, over real gRPC for the round trip."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from cleanroom.errors import BudgetShortfall, InvalidArgumentError, NotFoundError, ResourceExhaustedError
from cleanroom.server.errors import BUDGET_REASON, MAX_PROBLEMS, details_of
from cleanroom_client.errors import BUDGET_REASON as SDK_BUDGET_REASON
from cleanroom_client.errors import CleanRoomError, Problem
from cleanroom_client.errors import InvalidArgumentError as SdkInvalidArgumentError
from cleanroom_client.protocol import collaboration_pb2, collaboration_pb2_grpc


def test_problems_become_field_violations_and_are_capped():
    problems = [f"tables.brand.t{i}: not declared" for i in range(MAX_PROBLEMS + 5)] + ["no path here"]
    [detail] = details_of(InvalidArgumentError("invalid policy", problems))
    assert isinstance(detail, error_details_pb2.BadRequest)
    assert len(detail.field_violations) == MAX_PROBLEMS
    assert (detail.field_violations[0].field, detail.field_violations[0].description) == (
        "tables.brand.t0",
        "not declared",
    )


def test_budget_figures_become_error_info_and_quota_failure():
    info, quota = details_of(ResourceExhaustedError("exhausted", BudgetShortfall("brand", "epsilon", 0.5, 0.25, 10)))
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == BUDGET_REASON == SDK_BUDGET_REASON
    assert dict(info.metadata) == {
        "member": "brand",
        "resource": "epsilon",
        "requested": "0.5",
        "left": "0.25",
        "total": "10",
    }
    assert isinstance(quota, error_details_pb2.QuotaFailure)
    assert quota.violations[0].subject == "members/brand"


def test_errors_without_figures_carry_no_details():
    assert details_of(NotFoundError("x")) == []
    assert details_of(InvalidArgumentError("x")) == []
    assert details_of(ResourceExhaustedError("too many streams")) == []


def test_a_refused_policy_reaches_a_client_with_each_problem(stub_for):
    """Sent by a client that does not check the policy first (any language): the problems arrive as details."""
    stub, md = stub_for(collaboration_pb2_grpc.CollaborationServiceStub, "brand")
    bad = "name: x\nmembers:\n  brand: {abilities: [query]}\nidentifiers: [fax]\nqueries: [overlap]\n"
    with pytest.raises(grpc.RpcError) as raw:
        stub.CreateCollaboration(
            collaboration_pb2.CreateCollaborationRequest(collaboration_id="bad-policy", policy_yaml=bad), metadata=md
        )
    error = CleanRoomError.from_rpc(raw.value)
    assert isinstance(error, SdkInvalidArgumentError)
    problems = error.problems
    assert problems, error.message
    assert all(isinstance(p, Problem) for p in problems)
    assert any("identifiers" in p.field for p in problems), problems
