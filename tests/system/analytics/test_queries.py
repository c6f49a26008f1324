"""The DP queries over real gRPC against a noise-free pandas reference on the same synthetic data."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pandas as pd
import pytest

from cleanroom.devtools.synthetic import DEMO_POLICY, FLOW_END, FLOW_START, SyntheticConfig, SyntheticData, generate
from cleanroom_client import CleanRoomError
from cleanroom_client.errors import BudgetShortfall, ResourceExhaustedError
from cleanroom_client.protocol import analytics_pb2, analytics_pb2_grpc

GENEROUS = DEMO_POLICY.replace("min_group_size: 50", "min_group_size: 5").replace(
    "per_member_total: 10.0", "per_member_total: 1000.0"
)
TIGHT = DEMO_POLICY.replace("per_member_total: 10.0, per_query_max: 1.0", "per_member_total: 1.0, per_query_max: 0.5")
TIGHT = TIGHT.replace(
    "queries: [overlap, funnel, funnel_flow, segment_insight, value, loyalty, attribution, lift, lookalike, "
    "activation]",
    "queries: [overlap, funnel]",
)
assert "queries: [overlap, funnel]\n" in TIGHT
#: Unsuppressed cells per measure to judge coverage on: with 300, a true 95% coverage falls under 90% about once
#: in 10^5 runs, so the test is not flaky, and a bound that covers less than 90% fails it.
SAMPLES = 300


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(SyntheticConfig(brand_users=3000, platform_users=6000, shared=2400, seed=5))


@pytest.fixture(scope="module")
def generous(room, data) -> str:
    return room.matched("generous", GENEROUS, data)


def _truth(data: SyntheticData) -> pd.DataFrame:
    """The matched people with both members' attributes: the noise-free reference."""
    people = data.truth.merge(data.brand_users, on="customer_id").merge(data.platform_users, on="user_id")
    return people.fillna({"tier": "none", "age_band": "none", "stage_4a": "none"})


def _collect(ask: Callable[[], pd.DataFrame], measures: tuple[str, ...]) -> list[pd.DataFrame]:
    """Ask repeatedly until every measure has SAMPLES unsuppressed cells (fresh noise each time)."""
    frames: list[pd.DataFrame] = []
    while len(frames) < 200:
        frames.append(ask())
        seen = pd.concat(frames)
        if all(((seen["measure"] == m) & ~seen["suppressed"]).sum() >= SAMPLES for m in measures):
            break
    return frames


def _coverage(frames: list[pd.DataFrame], truth: Mapping[Any, float], dims: list[str], measure: str) -> float:
    truth = {(k if isinstance(k, tuple) else (k,)): v for k, v in truth.items()}
    hits = total = 0
    for f in frames:
        for _, row in f[(f["measure"] == measure) & ~f["suppressed"]].iterrows():
            expected = truth.get(tuple(row[d] for d in dims), 0)
            hits += abs(row["value"] - expected) <= row["error_95"] + 1e-9
            total += 1
    assert total > 0
    print(f"coverage of {measure}: {hits}/{total} = {hits / total:.3f}")
    return hits / total


def test_overlap_by_two_dimensions_is_within_its_error_bars(room, data, generous):
    brand = room.client("brand")
    dims = ["brand.tier", "platform.age_band"]
    frames = _collect(lambda: brand.overlap(generous, by=dims, epsilon=0.5), ("people",))
    people = _truth(data)
    truth = people.groupby(["tier", "age_band"]).size().to_dict()
    assert _coverage(frames, truth, dims, "people") >= 0.9
    f = frames[0]
    # every cell of both domains, zero-filled: tiers (3 + none) x age bands (4 + none)
    assert len(f) == 4 * 5
    assert {("none", "18-24"), ("gold", "none")} <= set(zip(f["brand.tier"], f["platform.age_band"], strict=True))
    assert f.attrs["epsilon_spent"] == 0.5
    assert f.attrs["own_set_size"] == 3000
    # sensitivity 1 per pair times the join's stability constant (4 for email and phone), at epsilon 0.5
    assert f.attrs["noise_scale"] == {"people": pytest.approx(8.0)}


def test_funnel_counts_and_shares(room, data, generous):
    brand = room.client("brand")
    frames = _collect(lambda: brand.funnel(generous, by="brand.tier", epsilon=1.0), ("people", "share"))
    people = _truth(data)
    counts = people.groupby(["tier", "stage_4a"]).size()
    dims = ["brand.tier", "platform.stage_4a"]
    assert _coverage(frames, counts.to_dict(), dims, "people") >= 0.9
    shares = (counts / counts.groupby(level=0).transform("sum")).to_dict()
    assert _coverage(frames, shares, dims, "share") >= 0.9
    stages = set(frames[0]["platform.stage_4a"])
    assert stages == {"aware", "appeal", "act", "advocate", "none"}
    aipl = brand.funnel(generous, epsilon=0.5, labels="aipl")
    assert set(aipl["platform.stage_4a"]) == {"awareness", "interest", "purchase", "loyalty", "none"}


def test_funnel_flow_transition_matrix(room, data, generous):
    brand = room.client("brand")
    frames = _collect(lambda: brand.funnel_flow(generous, FLOW_START, FLOW_END, epsilon=1.0), ("people",))
    h = data.platform_stage_history
    start = h[h["date"].astype(str) == FLOW_START].set_index("user_id")["stage_4a"]
    end = h[h["date"].astype(str) == FLOW_END].set_index("user_id")["stage_4a"]
    people = data.truth.assign(
        s0=data.truth["user_id"].map(start).fillna("none"), s1=data.truth["user_id"].map(end).fillna("none")
    )
    truth = people.groupby(["s0", "s1"]).size().to_dict()
    dims = list(frames[0].columns[:2])
    assert len(frames[0][frames[0]["measure"] == "people"]) == 25
    assert _coverage(frames, truth, dims, "people") >= 0.9
    with pytest.raises(CleanRoomError) as info:
        brand.funnel_flow(generous, FLOW_END, FLOW_START, epsilon=0.5)
    assert info.value.code == "INVALID_ARGUMENT"


def test_segment_insight_tgi_and_penetration(room, data, generous):
    brand = room.client("brand")
    measures = ("matched", "all_users", "tgi", "penetration")
    frames = _collect(lambda: brand.segment_insight(generous, "platform.age_band", epsilon=1.0), measures)
    people = _truth(data)
    matched = people.groupby("age_band").size()
    everyone = data.platform_users.fillna({"age_band": "none"}).groupby("age_band").size()
    dims = ["platform.age_band"]
    assert _coverage(frames, matched.to_dict(), dims, "matched") >= 0.9
    assert _coverage(frames, everyone.to_dict(), dims, "all_users") >= 0.9
    tgi = (100 * (matched / matched.sum()) / (everyone / everyone.sum())).to_dict()
    assert _coverage(frames, tgi, dims, "tgi") >= 0.9
    assert _coverage(frames, (matched / everyone).to_dict(), dims, "penetration") >= 0.9
    # matched people go through the join (stability constant 4); all users do not
    assert frames[0].attrs["noise_scale"] == {"matched": pytest.approx(8.0), "all_users": pytest.approx(2.0)}


def test_budget_ledger_equals_the_audit_log(room, generous):
    budget = room.client("auditor").budget(generous)
    log = room.client("auditor").audit_log(generous)
    brand = budget.set_index("member").loc["brand"]
    assert brand["spent"] == pytest.approx(log[log["principal"] == "brand"]["epsilon"].sum())
    assert brand["spent"] > 0
    assert brand["total"] == 1000.0
    assert brand["left"] == pytest.approx(1000.0 - brand["spent"])
    assert set(log[log["epsilon"] > 0]["action"]) <= {
        "query.overlap",
        "query.funnel",
        "query.funnel_flow",
        "query.segment_insight",
    }


def test_refusals_spend_nothing_and_are_logged(room, data, generous):
    brand = room.client("brand")
    before = room.client("auditor").budget(generous).set_index("member").loc["brand", "spent"]
    for call, code in [
        (lambda: brand.overlap(generous, by=["platform.income"], epsilon=0.5), "INVALID_ARGUMENT"),
        (lambda: brand.overlap(generous, by=["brand.email"], epsilon=0.5), "INVALID_ARGUMENT"),
        (lambda: brand.overlap(generous, epsilon=1.5), "INVALID_ARGUMENT"),
        (lambda: brand.overlap(generous, by=["a.b", "a.c", "a.d", "a.e"], epsilon=0.5), "INVALID_ARGUMENT"),
        (lambda: room.client("platform").overlap(generous, epsilon=0.5), "PERMISSION_DENIED"),
    ]:
        with pytest.raises(CleanRoomError) as info:
            call()
        assert info.value.code == code
    after = room.client("auditor").budget(generous).set_index("member").loc["brand", "spent"]
    assert after == before
    refusals = room.client("auditor").audit_log(generous, action="query.refuse")
    assert any("outside the policy's range for one query" in p for p in refusals["parameters"])
    assert any("not a declared dimension" in p for p in refusals["parameters"])


def test_tight_budget_admits_exactly_five_of_fifty_parallel_queries_and_survives_restart(room, data):
    small = generate(SyntheticConfig(brand_users=300, platform_users=400, shared=200, seed=9))
    collab = room.matched("tight", TIGHT, small)
    brand = room.client("brand")
    with pytest.raises(CleanRoomError) as info:
        brand.segment_insight(collab, "platform.age_band", epsilon=0.1)  # not allowed by this policy
    assert info.value.code == "PERMISSION_DENIED"
    credentials = grpc.ssl_channel_credentials(root_certificates=room.pki.ca.read_bytes())
    barrier = threading.Barrier(50)

    def one(_: int) -> str:  # the outcome of one query: OK, or its status and message
        with grpc.secure_channel(f"localhost:{room.server.port}", credentials) as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            barrier.wait()
            try:
                stub.Overlap(
                    analytics_pb2.OverlapRequest(parent=f"collaborations/{collab}", epsilon=0.2),
                    metadata=(("authorization", f"Bearer {room.tokens['brand']}"),),
                )
            except grpc.RpcError as err:
                return f"{err.code().name}: {err.details()}"
            return "OK"

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(one, range(50)))
    assert outcomes.count("OK") == 5
    refused = [o for o in outcomes if o != "OK"]
    assert len(refused) == 45
    assert all(o.startswith("RESOURCE_EXHAUSTED: ") for o in refused)
    assert all("asks epsilon 0.2" in o and "left of 1" in o for o in refused)
    # 45 audited refusals at once used up brand's refused calls (rates.py) and put it on probation, one call per
    # refill until its count is full again: wait for that, as a member would (each SDK read checks the audit head
    # first, a few calls). The room's server refills them faster than the default (conftest.REFUSAL_RATE); a
    # server that ignored its configured rate would refuse the read below.
    rate = room.refusal_rate
    time.sleep((rate.burst + 1) / rate.per_second)
    budget = brand.budget(collab).set_index("member").loc["brand"]
    assert budget["spent"] == pytest.approx(1.0)
    assert budget["left"] == pytest.approx(0.0)
    # The SDK's error carries the figures as fields (sent as google.rpc ErrorInfo), not only in its message.
    with pytest.raises(ResourceExhaustedError) as refused_info:
        brand.overlap(collab, epsilon=0.2)
    assert refused_info.value.budget == BudgetShortfall("brand", "epsilon", 0.2, 0.0, 1.0)
    time.sleep(1.1 / rate.per_second)  # that refusal too: the next test on this server finds one refilled


def test_small_cells_are_suppressed(room):
    small = generate(SyntheticConfig(brand_users=200, platform_users=300, shared=120, seed=3))
    collab = room.matched("suppress", DEMO_POLICY, small)  # min_group_size 50
    f = room.client("brand").overlap(collab, by=["brand.tier", "platform.age_band"], epsilon=1.0)
    # 120 people over 20 cells: no cell can honestly reach 50, and withheld cells carry no value
    assert f["suppressed"].mean() > 0.9
    assert f[f["suppressed"]]["value"].isna().all()


def test_budget_survives_a_restart(tmp_path, data):
    from cleanroom.privacy import BudgetAccountant
    from cleanroom.privacy.budget import Charge, Limits
    from cleanroom.room import Room as DataRoom

    r = DataRoom.open(tmp_path)
    r.store.create("c-x")  # the collaboration's file (the ledger lives there)
    r.audit.record("c-x", "brand", "query.overlap", {})
    with r.store.of("c-x").transaction() as cur:
        r.audit.append(cur, "c-x", "brand", "query.overlap", {}, epsilon=0.3)
    limits = Limits(1.0)
    hold = r.budget.reserve("c-x", [Charge("brand", 0.5)], limits, "overlap", {"dimensions": []})
    assert r.budget.status("c-x", "brand", limits).remaining == pytest.approx(0.2)
    assert hold.charges == (Charge("brand", 0.5),)
    r.close()
    # A reservation still open at start-up belongs to a query stopped in the middle: its data may have been read,
    # so it is charged, as an interrupted query.
    r = DataRoom.open(tmp_path)
    status = BudgetAccountant(r.store, r.audit).status("c-x", "brand", limits)
    assert (status.spent, status.reserved) == (pytest.approx(0.8), 0.0)
    last = list(r.audit.entries("c-x"))[-1]
    assert (last.action, last.epsilon, last.parameters["query"]) == ("query.interrupted", 0.5, "overlap")
    r.close()


def test_a_platform_that_stores_aipl_stages_gets_either_naming(room):
    small = generate(SyntheticConfig(brand_users=200, platform_users=300, shared=150, seed=4))
    aipl = dict(
        zip(["aware", "appeal", "act", "advocate"], ["awareness", "interest", "purchase", "loyalty"], strict=True)
    )
    platform_users = small.platform_users.rename(columns={"stage_4a": "stage_aipl"})
    platform_users["stage_aipl"] = platform_users["stage_aipl"].map(aipl)
    history = small.platform_stage_history.rename(columns={"stage_4a": "stage_aipl"})
    history["stage_aipl"] = history["stage_aipl"].map(aipl)
    policy = GENEROUS.replace(
        "stage_4a: [aware, appeal, act, advocate]", "stage_aipl: [awareness, interest, purchase, loyalty]"
    ).replace("platform.stage_4a, ", "")
    data = SyntheticData(small.brand_users, small.brand_conversions, platform_users, history, small.truth)
    brand, platform = room.client("brand"), room.client("platform")
    c = brand.create_collaboration(policy, "aipl-stages")
    brand.approve_policy(c.id)
    platform.approve_policy(c.id)
    with ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(
                brand.match,
                c.id,
                users=data.brand_users,
                key="customer_id",
                identifiers={"email": "email"},
                wait_timeout=120,
            ),
            pool.submit(
                platform.match,
                c.id,
                users=data.platform_users,
                key="user_id",
                identifiers={"email": "email"},
                attributes=["stage_aipl"],
                events={"stage_history": data.platform_stage_history},
                wait_timeout=120,
            ),
        ]
        for j in jobs:
            j.result()
    as_4a = brand.funnel(c.id, epsilon=0.5)
    assert set(as_4a["platform.stage_aipl"]) == {"aware", "appeal", "act", "advocate", "none"}
    as_aipl = brand.funnel_flow(c.id, FLOW_START, FLOW_END, epsilon=0.5, labels="aipl")
    assert set(as_aipl.iloc[:, 0]) == {"awareness", "interest", "purchase", "loyalty", "none"}
