"""Red team 12: attacks of a hostile member. Each test asserts the property that should hold, so it fails while the
hole exists."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from privacy_data import BRAND, MEMBERS, PRIVACY_POLICY, MemberData

from cleanroom.analytics.queries import AttributionQuery, LiftQuery
from cleanroom.errors import CleanroomError, InvalidArgumentError

T0 = dt.datetime(2026, 11, 1)
C = "privacy-test"


def kind(call) -> str:
    """Success or the error class (the failure message carries an audit sequence, so compare classes only)."""
    try:
        call()
    except CleanroomError as exc:
        return type(exc).__name__
    return "ok"


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _honest(n: int = 8) -> tuple[MemberData, MemberData]:
    brand = MemberData(users=[{"email": f"e{i}", "phone": f"p{i}", "tier": "gold"} for i in range(n)])
    platform = MemberData(
        users=[{"email": f"e{i}", "phone": f"p{i}", "age_band": "young", "stage_4a": "aware"} for i in range(n)]
    )
    platform.events["exposures"] = [
        {"user": i, "ts": T0, "campaign": "c1", "channel": "search", "kind": "impression"} for i in range(n)
    ]
    return brand, platform


# -- 1. a conversion dated beyond the TIMESTAMP range makes attribution fail iff its row is matched ----------------


def test_attribution_cannot_be_made_to_fail_by_the_target_presence(rooms):
    """Attack (brand): add one users row carrying the target's email (no other identifier) and upload its
    conversions with a DATE time column (allowed: "a date or timestamp") holding 823342-02-07, a date DuckDB
    stores (int32 days) but that is outside the TIMESTAMP range. Attribution compares `e.ets <= c.cts`
    (timestamp vs date), which casts the date and raises for that row only when it is joined to an exposure,
    i.e. only when the target is in the platform's users (with any exposure). So the query fails on D and
    succeeds on D minus the target: a certain answer about one person for epsilon_min (0.01)."""
    brand, platform = _honest()
    brand.users.append({"email": "target@x", "phone": None, "tier": "gold"})
    target = len(platform.users)
    platform.users.append({"email": "target@x", "phone": "p-target", "age_band": "old", "stage_4a": "act"})
    platform.events["exposures"].append(
        {"user": target, "ts": T0, "campaign": "c2", "channel": "feed", "kind": "click"}
    )
    data = {"brand": brand, "platform": platform}
    results = []
    for d in (data, {**data, "platform": platform.without_user(target)}):
        room = rooms(PRIVACY_POLICY, d)
        collab = room.collaborations.get(MEMBERS["brand"], C)
        table = pa.table(
            {
                "row_id": pa.array([len(brand.users) - 1], pa.int64()),
                "ts": pa.array([300_000_000], pa.date32()),  # 823342-02-07
                "value": pa.array([1.0], pa.float64()),
            }
        )
        # Fixed at upload: time columns are stored as timestamps within 1900..2200, anything else is refused, so
        # the crafted row never reaches a query.
        with pytest.raises(InvalidArgumentError, match=r"outside 1900-01-01 \.\. 2200-01-01"):
            room.tables.upload_chunk(collab, "brand", "conversions", 0, _ipc(table), last=True)
        q = AttributionQuery("last_touch", 30, "campaign", 0.01)
        results.append(kind(lambda r=room, q=q: r.queries.attribution(BRAND, C, q)))
    assert results[0] == results[1], f"on D: {results[0]}, on D minus the target: {results[1]}"


# -- 2. lift's revenue squared overflows BIGINT when the target adds a second big spender ------------------------------

LIFT_POLICY = """\
name: lift-overflow
members:
  brand:    {abilities: [contribute, query, receive_results]}
  platform: {abilities: [contribute, receive_audiences]}
identifiers: [email]
tables:
  brand.users:       {dimensions: {tier: [gold, basic]}}
  brand.conversions: {time: ts, measures: {value: [0, 3.0e+9]}, max_per_person: 1}
  platform.users:    {dimensions: {age_band: [young, old]}}
  platform.exposures: {time: ts, dimensions: {campaign: [c1, c2], channel: [search, feed], kind: [impression, click]}}
  platform.test_groups: {dimensions: {campaign: [c1, c2], test_group: [exposed, holdout]}}
queries: [overlap, lift, attribution]
min_group_size: 1
epsilon: {per_member_total: 1.0e+6, per_query_max: 1.0e+4, per_query_min: 0.01}
"""


def test_lift_cannot_be_made_to_fail_by_the_target_presence(rooms):
    """Attack (brand), under a policy with one identifier type and a value bound of 3e9: two of its users rows, one
    matched to a known platform user, one carrying the target's email, each with one conversion of 3e9. Lift summed
    round(revenue^2) as a DOUBLE and cast it to BIGINT: 9e18 fits, 1.8e19 does not. So lift failed iff the target
    was matched (and in a test group).

    Fixed at two depths: a policy whose bounds give a sensitivity over 2^53 is refused (that one's revenue squared
    is 9e18), and every sum over people is a 128-bit integer. At the largest bound the policy accepts, enough
    maxed-out known people to pass 2^63 do not make lift fail with the target or without."""
    from cleanroom_client.policy import PolicyError, parse_policy

    with pytest.raises(PolicyError, match="sensitivity"):
        parse_policy(LIFT_POLICY)
    largest = LIFT_POLICY.replace("value: [0, 3.0e+9]", "value: [0, 9.0e+7]")
    parse_policy(largest)
    known = 1_200  # 1200 x (9e7)^2 = 9.7e18 > 2^63
    brand = MemberData(users=[{"email": f"known{i}", "tier": "gold"} for i in range(known)])
    brand.users.append({"email": "target@x", "tier": "gold"})
    brand.events["conversions"] = [{"user": i, "ts": T0, "value": 9.0e7} for i in range(known + 1)]
    platform = MemberData(users=[{"email": f"known{i}", "age_band": "young"} for i in range(known)])
    platform.users.append({"email": "target@x", "age_band": "old"})
    platform.events["test_groups"] = [{"user": i, "campaign": "c1", "test_group": "exposed"} for i in range(known + 1)]
    data = {"brand": brand, "platform": platform}
    results = []
    for d in (data, {**data, "platform": platform.without_user(known)}):
        room = rooms(largest, d)
        results.append(kind(lambda r=room: r.queries.lift(BRAND, C, LiftQuery("c1", 1.0e4))))
    assert results == ["ok", "ok"]


# -- 3. the same cast, from the platform's side, under a policy where the platform queries too ------------------------

SYMMETRIC_POLICY = PRIVACY_POLICY.replace(
    "platform: {abilities: [contribute, receive_audiences]}",
    "platform: {abilities: [contribute, query, receive_results, receive_audiences]}",
)


def test_platform_cannot_make_attribution_fail_on_a_brand_person(rooms):
    """Attack (platform as contributor and querier): one platform users row carrying the target brand person's
    email, and the platform's exposures uploaded with a DATE time column holding 823342-02-07 for that row.
    `e.ets <= c.cts` casts it to TIMESTAMP and raises only when the row is joined to a conversion, i.e. only when
    the target is in the brand's users (and has a conversion). The platform's attribution fails on D and succeeds
    on D minus the target."""
    from privacy_data import PLATFORM

    brand, platform = _honest()
    target = len(brand.users)
    brand.users.append({"email": "target@x", "phone": None, "tier": "gold"})
    brand.events["conversions"] = [{"user": target, "ts": T0, "value": 5.0}]
    platform.users.append({"email": "target@x", "phone": "p-target", "age_band": "old", "stage_4a": "act"})
    data = {"brand": brand, "platform": platform}
    results = []
    for d in (data, {**data, "brand": brand.without_user(target)}):
        room = rooms(SYMMETRIC_POLICY, d)
        collab = room.collaborations.get(MEMBERS["platform"], C)
        n = len(platform.users)
        table = pa.table(
            {
                "row_id": pa.array(range(n), pa.int64()),
                "ts": pa.array([20_000] * (n - 1) + [300_000_000], pa.date32()),
                "campaign": pa.array(["c1"] * n),
                "channel": pa.array(["search"] * n),
                "kind": pa.array(["impression"] * n),
            }
        )
        # Fixed at upload: time columns are stored as timestamps within 1900..2200, anything else is refused, so
        # the crafted row never reaches a query.
        with pytest.raises(InvalidArgumentError, match=r"outside 1900-01-01 \.\. 2200-01-01"):
            room.tables.upload_chunk(collab, "platform", "exposures", 0, _ipc(table), last=True)
        q = AttributionQuery("last_touch", 30, "campaign", 0.01)
        results.append(kind(lambda r=room, q=q: r.queries.attribution(PLATFORM, C, q)))
    assert results[0] == results[1], f"on D: {results[0]}, on D minus the target: {results[1]}"


# -- 4. boundary values of every accepted column type, on the target's rows -------------------------------------------

EDGES = (dt.datetime(1900, 1, 1), dt.datetime(2199, 12, 31, 23, 59, 59))
#: One of each kind the upload accepts: days, milliseconds, the coarsest and finest timestamp units, a time zone.
TIME_TYPES = (pa.date32(), pa.date64(), pa.timestamp("s"), pa.timestamp("ns", tz="Asia/Shanghai"))


@pytest.mark.parametrize("time_type", TIME_TYPES, ids=str)
def test_accepted_boundary_values_on_the_target_never_change_the_outcome(rooms, time_type):
    """The red team's regression: the extreme values each accepted Arrow type can carry inside the window, on the
    target's conversions and exposures, leave every query's outcome class the same on D and on D minus the target."""
    from privacy_data import every_query

    brand, platform = _honest(4)
    del platform.events["exposures"]  # uploaded below, with the boundary values
    brand.users.append({"email": "target@x", "phone": None, "tier": "gold"})
    platform.users.append({"email": "target@x", "phone": "p-target", "age_band": "old", "stage_4a": "act"})
    data = {"brand": brand, "platform": platform}
    outcomes = []
    for d in (data, {**data, "platform": platform.without_user(len(platform.users) - 1)}):
        room = rooms(PRIVACY_POLICY, d)
        for member, name, columns in (
            ("brand", "conversions", {"value": [-50.0, 100.0]}),
            (
                "platform",
                "exposures",
                {"campaign": ["c1", "c2"], "channel": ["search", "feed"], "kind": ["impression", "click"]},
            ),
        ):
            n = len(d[member].users)  # two rows per user, at both edges of the window
            times = pa.array([EDGES[0], EDGES[1]] * n, pa.timestamp("us")).cast(time_type, safe=False)
            rows = pa.array([i for i in range(n) for _ in range(2)], pa.int64())
            table = pa.table({"row_id": rows, "ts": times, **{k: pa.array(v * n) for k, v in columns.items()}})
            collab = room.collaborations.get(MEMBERS[member], C)
            room.tables.upload_chunk(collab, member, name, 0, _ipc(table), last=True)
        outcomes.append([kind(lambda q=q, r=room: q(r.queries, C)) for q in every_query()])
    assert outcomes[0] == outcomes[1]
    # funnel flow and lift are refused for a missing table (metadata, the same on both); every other query answers
    assert outcomes[0].count("FailedPreconditionError") == 2
    assert outcomes[0].count("ok") == len(outcomes[0]) - 2
