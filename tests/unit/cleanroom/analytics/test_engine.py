"""The query engine in-process, without noise: exact answers against pandas, the budget and the audit entry of
each release, refusals that charge nothing, failures after the charge that stay charged.

A `ZeroNoise` mechanism is injected through the `NoiseMechanism` protocol, so every released count is the exact
count and can be compared cell for cell; the policy is built from a dict. The real mechanism (OpenDP) is tested
in `tests/unit/cleanroom/privacy` and, end to end over gRPC, in `tests/system`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from cleanroom.analytics import FunnelQuery, OverlapQuery, QueryEngine, ValueQuery
from cleanroom.analytics.matched import MatchedData, Sql
from cleanroom.analytics.queries import DimensionRef
from cleanroom.devtools.synthetic import load_direct
from cleanroom.errors import InvalidArgumentError, QueryFailedError
from cleanroom.principals import Principal, Role
from cleanroom.privacy.budget import Limits
from cleanroom.room import Room

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)
MIN_GROUP = 5
TIERS, AGES, STAGES = ["gold", "silver", "basic"], ["18-24", "25-34", "35-44", "45+"], ["aware", "appeal", "act"]
POLICY = {
    "name": "engine-in-process",
    "members": {
        "brand": {"abilities": ["contribute", "query", "receive_results"]},
        "platform": {"abilities": ["contribute"]},
    },
    "identifiers": ["email"],
    "tables": {
        "brand.users": {"dimensions": {"tier": TIERS}},
        "brand.conversions": {"time": "ts", "measures": {"value": [0, 100]}, "max_per_person": 2},
        "platform.users": {"dimensions": {"age_band": AGES, "stage_4a": STAGES}},
    },
    "queries": ["overlap", "funnel", "value"],
    "min_group_size": MIN_GROUP,
    "epsilon": {"per_member_total": 10.0, "per_query_max": 1.0},
    "delta": {"per_member_total": 1.0e-6, "per_query_max": 1.0e-7},
}
LIMITS = Limits(10.0, 1e-6)


class ZeroNoise:
    """The `NoiseMechanism` that adds nothing: answers are exact (for tests only, never wired into a server)."""

    def release(self, counts: list[int], sensitivity: int, epsilon: float) -> tuple[list[int], float]:
        return list(counts), 0.0


class BrokenNoise:
    """A mechanism that fails after the budget was reserved, as a bug or a crash would."""

    def release(self, counts: list[int], sensitivity: int, epsilon: float) -> tuple[list[int], float]:
        raise RuntimeError("the noise failed")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A room with a matched collaboration of 300 brand and 400 platform rows (200 matched), and the truth."""
    room = Room.open(tmp_path_factory.mktemp("engine"))
    c = room.collaborations.create(BRAND, "engine-exact", yaml.safe_dump(POLICY))
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    rng = np.random.default_rng(11)
    brand = pd.DataFrame({"row_id": np.arange(300, dtype=np.int64), "tier": rng.choice(TIERS, 300, p=[0.2, 0.3, 0.5])})
    brand.loc[rng.random(300) < 0.05, "tier"] = None  # missing values have their own `none` cell
    platform = pd.DataFrame(
        {
            "row_id": np.arange(400, dtype=np.int64) + 1000,
            "age_band": rng.choice(AGES, 400),
            "stage_4a": rng.choice(STAGES, 400),
        }
    )
    orders = pd.DataFrame(
        {
            "row_id": rng.integers(0, 300, 900).astype(np.int64),
            "ts": pd.Timestamp("2026-10-01") + pd.to_timedelta(rng.integers(0, 30 * 24, 900), unit="h"),
            "value": rng.uniform(-20, 140, 900).round(2),  # outside [0, 100] too: clamped by the engine
        }
    )
    pairs = pd.DataFrame({"brand": np.arange(200, dtype=np.int64), "platform": np.arange(200, dtype=np.int64) + 1000})
    tables = {
        ("brand", "users"): pa.Table.from_pandas(brand, preserve_index=False),
        ("brand", "conversions"): pa.Table.from_pandas(orders, preserve_index=False),
        ("platform", "users"): pa.Table.from_pandas(platform, preserve_index=False),
    }
    load_direct(room, c.id, tables, pairs["brand"].to_numpy(), pairs["platform"].to_numpy())
    matched = pairs.merge(brand, left_on="brand", right_on="row_id").merge(
        platform, left_on="platform", right_on="row_id", suffixes=("_b", "_p")
    )
    yield room, c.id, matched, orders
    room.close()


def _engine(room: Room, noise: object) -> QueryEngine:
    return QueryEngine(room.store, room.collaborations, room.budget, room.audit, noise)  # type: ignore[arg-type]


def _spent(room: Room, collaboration_id: str) -> float:
    return room.budget.status(collaboration_id, "brand", LIMITS).spent


def test_overlap_is_the_exact_cross_tab_with_every_declared_cell(world):
    room, cid, matched, _ = world
    before = _spent(room, cid)
    q = OverlapQuery((DimensionRef("brand", "tier"), DimensionRef("platform", "age_band")), epsilon=0.5)
    answer = _engine(room, ZeroNoise()).overlap(BRAND, cid, q)
    truth = matched.fillna({"tier": "none"}).groupby(["tier", "age_band"]).size()
    cells = {c.keys: c for c in answer.cells if c.measure == "people"}
    # every cell of the declared domains and `none`, zero-filled: that a group exists leaks nothing
    assert set(cells) == {(t, a) for t in [*TIERS, "none"] for a in [*AGES, "none"]}
    for keys, cell in cells.items():
        exact = int(truth.get(keys, 0))
        assert cell.suppressed == (exact < MIN_GROUP), keys
        if not cell.suppressed:
            assert cell.value == exact, keys
    assert _spent(room, cid) == pytest.approx(before + 0.5)
    [entry] = [e for e in room.audit.entries(cid) if e.sequence == answer.audit_sequence]
    assert (entry.action, entry.principal, entry.epsilon) == ("query.overlap", "brand", 0.5)


def test_funnel_counts_each_stage_exactly(world):
    room, cid, matched, _ = world
    answer = _engine(room, ZeroNoise()).funnel(BRAND, cid, FunnelQuery(None, epsilon=0.5))
    people = {c.keys[-1]: c.value for c in answer.cells if c.measure == "people" and not c.suppressed}
    truth = matched.groupby("stage_4a").size()
    assert people == {s: float(truth[s]) for s in STAGES}


def test_value_clamps_caps_and_sums_exactly(world):
    room, cid, matched, orders = world
    q = ValueQuery((DimensionRef("brand", "tier"),), "brand.conversions.value", epsilon=1.0)
    answer = _engine(room, ZeroNoise()).value(BRAND, cid, q)
    mine = orders[orders["row_id"].isin(matched["brand"])].assign(value=lambda f: f["value"].clip(0, 100))
    capped = mine.sort_values(["row_id", "ts"]).groupby("row_id").head(2)  # max_per_person: the first two rows
    per = capped.merge(matched[["brand", "tier"]], left_on="row_id", right_on="brand").fillna({"tier": "none"})
    sums = per.groupby("tier")["value"].sum()
    released = {c.keys[0]: c.value for c in answer.cells if c.measure == "sum" and not c.suppressed}
    assert released
    for tier, value in released.items():
        assert value == pytest.approx(sums.get(tier, 0.0), abs=0.01 * len(per)), tier


def test_values_two_vectors_come_from_one_read_of_its_statement(world, monkeypatch):
    """The people-by-orders histogram and the sum are both cut from one statement's rows: it runs once a query."""
    room, cid, _, _ = world
    statements: list[str] = []
    real = MatchedData.rows

    def counted(self: MatchedData, sql: Sql) -> list[tuple[Any, ...]]:
        statements.append(sql.text)
        return real(self, sql)

    monkeypatch.setattr(MatchedData, "rows", counted)
    q = ValueQuery((DimensionRef("brand", "tier"),), "brand.conversions.value", epsilon=1.0)
    answer = _engine(room, ZeroNoise()).value(BRAND, cid, q)
    assert {c.measure for c in answer.cells} >= {"people", "sum"}
    assert len(statements) == 1


def test_a_refusal_before_the_charge_spends_nothing(world):
    room, cid, _, _ = world
    before = _spent(room, cid)
    engine = _engine(room, ZeroNoise())
    with pytest.raises(InvalidArgumentError, match="declared"):
        engine.overlap(BRAND, cid, OverlapQuery((DimensionRef("brand", "email"),), epsilon=0.5))
    with pytest.raises(InvalidArgumentError, match="outside the policy's range"):
        engine.overlap(BRAND, cid, OverlapQuery((DimensionRef("brand", "tier"),), epsilon=5.0))
    assert _spent(room, cid) == before


def test_a_failure_after_the_charge_stays_charged_and_says_nothing(world):
    room, cid, _, _ = world
    before = _spent(room, cid)
    with pytest.raises(QueryFailedError) as failed:
        _engine(room, BrokenNoise()).overlap(BRAND, cid, OverlapQuery((DimensionRef("brand", "tier"),), epsilon=0.5))
    assert "the noise failed" not in str(failed.value)  # the same message whatever went wrong
    assert _spent(room, cid) == pytest.approx(before + 0.5)
