"""Attribution's exact histograms (before noise) on a seeded random dataset, against a plain reading of its rules.

Issue 33 moved attribution's work between DuckDB and numpy more than once; this pins what it releases, cell for cell,
so that no such move changes an answer. The data is made to hit every rule at once: several touches per conversion,
ties in time (whole hours) and in value, touches exactly at the window's edges, conversions without a touch, matched
people over the conversion cap, people whose capped conversions carry more than the per-person money bound (their
cents scaled down), negative values and values clamped at both bounds, a brand dimension with missing values, and
conversions of people who are not matched.

The reference selects and orders each conversion's touches and computes its cents in plain Python; the weights and
integer shares are `credits.credit`'s, which `test_credits.py` checks against the plain computation separately.
A `QueryEngine` with a noise mechanism that adds nothing and records what it was given reads the exact vectors.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict

import hypothesis.strategies as st
import numpy as np
import pyarrow as pa
import pytest
import yaml
from hypothesis import given, settings

from cleanroom.analytics import AttributionQuery, QueryEngine, attribution, native
from cleanroom.analytics.attribution import earliest_first
from cleanroom.analytics.credits import MICROSECONDS_PER_DAY, MILLI, Touches, credit
from cleanroom.analytics.matched import Catalog, MatchedData, Sql
from cleanroom.analytics.queries import DimensionRef
from cleanroom.collaborations import Collaboration
from cleanroom.devtools.synthetic import load_direct
from cleanroom.errors import QueryFailedError
from cleanroom.principals import Principal, Role
from cleanroom.room import Room

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)
TIERS = ["gold", "silver", "basic"]
CAMPAIGNS, CHANNELS = ["c1", "c2", "c3"], ["search", "feed"]
LO, HI, CAP, PER_PERSON = -20.0, 150.0, 3, 200.0
LOOKBACK = 3
POLICY = {
    "name": "attribution-exact",
    "members": {
        "brand": {"abilities": ["contribute", "query", "receive_results"]},
        "platform": {"abilities": ["contribute"]},
    },
    "identifiers": ["email"],
    "tables": {
        "brand.users": {"dimensions": {"tier": TIERS}},
        "brand.conversions": {
            "time": "ts",
            "measures": {"value": [LO, HI]},
            "max_per_person": CAP,
            "per_person_max": {"value": PER_PERSON},
        },
        "platform.users": {},
        "platform.exposures": {
            "time": "ts",
            "dimensions": {"campaign": CAMPAIGNS, "channel": CHANNELS, "kind": ["impression", "click"]},
        },
    },
    "queries": ["attribution"],
    "min_group_size": 1,
    "epsilon": {"per_member_total": 1.0e6, "per_query_max": 10.0},
}
T0 = dt.datetime(2026, 10, 1)
PLATFORM_OFFSET = 5000  # the platform's row numbers differ from the brand's: a query must go through the pairs


class Recording:
    """The noise mechanism that adds nothing and keeps the exact vectors it was handed (tests only)."""

    def __init__(self) -> None:
        self.vectors: list[list[int]] = []

    def release(self, counts: list[int], sensitivity: int, epsilon: float) -> tuple[list[int], float]:
        self.vectors.append(list(counts))
        return list(counts), 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """200 brand users (160 matched), ~700 conversions, ~4000 exposures over 12 days at whole hours."""
    rng = np.random.default_rng(33)
    room = Room.open(tmp_path_factory.mktemp("attribution-exact"))
    c = room.collaborations.create(BRAND, "attribution-exact", yaml.safe_dump(POLICY))
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    people, matched = 200, 160
    tier = rng.choice(np.array(TIERS, dtype=object), people)
    tier[rng.random(people) < 0.1] = None
    # a few heavy converters (over the cap), most with one or two conversions, some with none
    conv_person = np.concatenate([rng.integers(0, people, 600), np.repeat(rng.integers(0, matched, 12), 8)])
    hours = rng.integers(0, 12 * 24, len(conv_person))
    values = rng.choice(np.array([-35.0, -5.5, 0.0, 12.34, 40.0, 99.99, 149.5, 150.0, 180.0]), len(conv_person))
    values = np.where(rng.random(len(conv_person)) < 0.5, rng.uniform(-25, 160, len(conv_person)).round(2), values)
    n_expo = 4000
    expo_person = rng.integers(0, people, n_expo)
    expo_hours = rng.integers(0, 12 * 24, n_expo)
    # exposures exactly at a conversion's time and exactly the lookback before it (both ends are inside)
    edge = rng.integers(0, len(conv_person), 80)
    expo_person = np.concatenate([expo_person, conv_person[edge], conv_person[edge]])
    expo_hours = np.concatenate([expo_hours, hours[edge], hours[edge] - LOOKBACK * 24])
    n = len(expo_person)
    conversions = pa.table(
        {
            "row_id": conv_person.astype(np.int64),
            "ts": pa.array([T0 + dt.timedelta(hours=int(h)) for h in hours], pa.timestamp("us")),
            "value": values,
        }
    )
    exposures = pa.table(
        {
            "row_id": (expo_person + PLATFORM_OFFSET).astype(np.int64),
            "ts": pa.array([T0 + dt.timedelta(hours=int(h)) for h in expo_hours], pa.timestamp("us")),
            "campaign": rng.choice(CAMPAIGNS, n),
            "channel": rng.choice(CHANNELS, n),
            "kind": np.where(rng.random(n) < 0.3, "click", "impression"),
        }
    )
    tables = {
        ("brand", "users"): pa.table({"row_id": np.arange(people, dtype=np.int64), "tier": pa.array(list(tier))}),
        ("brand", "conversions"): conversions,
        ("platform", "users"): pa.table({"row_id": np.arange(people, dtype=np.int64) + PLATFORM_OFFSET}),
        ("platform", "exposures"): exposures,
    }
    load_direct(room, c.id, tables, np.arange(matched), np.arange(matched) + PLATFORM_OFFSET)
    truth = {
        "tier": {i: tier[i] for i in range(people)},
        "conversions": [
            (int(p), T0 + dt.timedelta(hours=int(h)), float(v))
            for p, h, v in zip(conv_person, hours, values, strict=True)
        ],
        "exposures": [
            (int(p), T0 + dt.timedelta(hours=int(h)), ca, ch, k)
            for p, h, ca, ch, k in zip(
                expo_person,
                expo_hours,
                exposures["campaign"].to_pylist(),
                exposures["channel"].to_pylist(),
                exposures["kind"].to_pylist(),
                strict=True,
            )
        ],
        "matched": matched,
    }
    yield room, c.id, truth
    room.close()


def reference(truth, model: str, by: str, click_over_view: bool) -> tuple[list[int], list[int]]:
    """The exact conversions (thousandths) and revenue (cents) vectors, campaign or channel x tier, read plainly."""
    groups = [*(CAMPAIGNS if by == "campaign" else CHANNELS), "none"]
    brands = [*TIERS, "none"]
    per_person: dict[int, list[tuple[dt.datetime, float]]] = defaultdict(list)
    for p, t, v in truth["conversions"]:
        if p < truth["matched"]:  # brand row i is matched with platform row i + offset
            per_person[p].append((t, v))
    by_person: dict[int, list] = defaultdict(list)
    for e in truth["exposures"]:
        by_person[e[0]].append(e)
    person_cents = math.ceil(100 * PER_PERSON)
    rows: list[tuple[int, int, bool, int, int]] = []  # conversion, time (us), click, cell, cents
    milli_sums, cents_sums = [0] * (len(groups) * len(brands)), [0] * (len(groups) * len(brands))
    conversion = 0
    for p in sorted(per_person):
        brand = brands.index(truth["tier"][p] or "none")
        kept = sorted(per_person[p])[:CAP]  # the earliest, ties by value (equal ones are interchangeable)
        cents = [math.trunc(min(max(v, LO), HI) * 100) for _, v in kept]
        total = sum(abs(x) for x in cents)
        if total > person_cents:
            cents = [int(math.copysign(abs(x) * person_cents // total, x)) if x else 0 for x in cents]
        for (t, _), c in zip(kept, cents, strict=True):
            touches = [e for e in by_person[p] if t - dt.timedelta(days=LOOKBACK) <= e[1] <= t]
            if click_over_view and any(e[4] == "click" for e in touches):
                touches = [e for e in touches if e[4] == "click"]
            touches.sort(key=lambda e: (e[1], e[4] == "click", e[2], e[3]))
            touches = touches[-100:]
            if not touches:
                none = (len(groups) - 1) * len(brands) + brand
                milli_sums[none] += MILLI
                cents_sums[none] += c
                continue
            for e in touches:
                group = groups.index(e[2] if by == "campaign" else e[3])
                at = int((e[1] - dt.datetime(1970, 1, 1)).total_seconds()) * 10**6
                rows.append((conversion, at, e[4] == "click", group * len(brands) + brand, c))
            conversion += 1
    if rows:
        columns = [np.array(col) for col in zip(*rows, strict=True)]
        found = Touches(
            columns[0].astype(np.int64),
            columns[1].astype(np.int64),
            columns[2].astype(bool),
            columns[3].astype(np.int64),
            columns[4].astype(np.int64),
        )
        cell, milli, shares = credit(found, model, False, 2.0)
        for i, m, x in zip(cell.tolist(), milli.tolist(), shares.tolist(), strict=True):
            milli_sums[i] += m
            cents_sums[i] += x
    return milli_sums, cents_sums


@pytest.mark.parametrize("model", ["last_touch", "first_touch", "linear", "time_decay", "position_based"])
@pytest.mark.parametrize("by", ["campaign", "channel"])
@pytest.mark.parametrize("click_over_view", [False, True])
@pytest.mark.parametrize("path", ["compiled", "numpy"])
def test_exact_histograms_equal_the_plain_reading(world, model, by, click_over_view, path, monkeypatch):
    """Both paths: the compiled kernels (built here) and numpy, which runs where no C compiler was at install."""
    if path == "numpy":
        monkeypatch.setattr(native, "KERNELS", None)
    room, cid, truth = world
    noise = Recording()
    engine = QueryEngine(room.store, room.collaborations, room.budget, room.audit, noise)
    q = AttributionQuery(
        model=model,
        lookback_days=LOOKBACK,
        by=by,
        epsilon=1.0,
        click_over_view=click_over_view,
        half_life_days=2.0,
        brand_dimension=DimensionRef("brand", "tier"),
    )
    engine.attribution(BRAND, cid, q)
    milli, cents = reference(truth, model, by, click_over_view)
    assert noise.vectors == [milli, cents]


def test_the_data_reaches_every_rule(world):
    """The data is not vacuous: people over the cap and over the money bound, ties in time."""
    _, _, truth = world
    per_person: dict[int, list[tuple[dt.datetime, float]]] = defaultdict(list)
    for p, t, v in truth["conversions"]:
        if p < truth["matched"]:
            per_person[p].append((t, v))
    assert sum(len(v) > CAP for v in per_person.values()) >= 10
    scaled = [
        p
        for p, v in per_person.items()
        if sum(abs(math.trunc(min(max(x, LO), HI) * 100)) for _, x in sorted(v)[:CAP]) > 100 * PER_PERSON
    ]
    assert len(scaled) >= 10
    times = [t for v in per_person.values() for t, _ in v]
    assert len(times) > len(set(times))  # ties in time


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2**45), st.integers(-(2**40), 2**40)), min_size=1),
    st.booleans(),
)
def test_the_cap_ranks_by_person_time_then_value(rows, coarse):
    """Packed into one sort (no two of a person's conversions at one time) or by the three keys (a tie in time)."""
    who = np.array([r[0] for r in rows], dtype=np.int64)
    ts_us = np.array([r[1] // 2**40 if coarse else r[1] for r in rows], dtype=np.int64)  # coarse: ties likely
    cents = np.array([r[2] for r in rows], dtype=np.int64)
    order = earliest_first(np.arange(len(rows), dtype=np.int64), who, ts_us, cents)
    assert sorted(order.tolist()) == list(range(len(rows)))
    keys = list(zip(who[order].tolist(), ts_us[order].tolist(), cents[order].tolist(), strict=True))
    assert keys == sorted(keys)


@pytest.mark.parametrize("case", ["no conversions", "no exposures", "nobody matched"])
def test_empty_inputs_give_zero_or_unattributed_cells(tmp_path, case):
    """No row to cap, to build the join from or to join with: the vectors are zeros, or every conversion in `none`."""
    room = Room.open(tmp_path)
    c = room.collaborations.create(BRAND, "attribution-empty", yaml.safe_dump(POLICY))
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    n, e = (0 if case == "no conversions" else 5), (0 if case == "no exposures" else 5)
    tables = {
        ("brand", "users"): pa.table({"row_id": np.arange(10, dtype=np.int64), "tier": pa.array(["gold"] * 10)}),
        ("brand", "conversions"): pa.table(
            {
                "row_id": np.arange(n, dtype=np.int64),
                "ts": pa.array([T0] * n, pa.timestamp("us")),
                "value": np.full(n, 10.0),
            }
        ),
        ("platform", "users"): pa.table({"row_id": np.arange(10, dtype=np.int64)}),
        ("platform", "exposures"): pa.table(
            {
                "row_id": np.arange(e, dtype=np.int64),
                "ts": pa.array([T0] * e, pa.timestamp("us")),
                "campaign": ["c1"] * e,
                "channel": ["feed"] * e,
                "kind": ["click"] * e,
            }
        ),
    }
    pairs = np.arange(0 if case == "nobody matched" else 10)
    load_direct(room, c.id, tables, pairs, pairs)
    noise = Recording()
    engine = QueryEngine(room.store, room.collaborations, room.budget, room.audit, noise)
    for model in ("linear", "last_touch"):
        engine.attribution(BRAND, c.id, AttributionQuery(model=model, lookback_days=3, by="campaign", epsilon=1.0))
    unattributed = 5 if case == "no exposures" else 0
    assert noise.vectors == [[0, 0, 0, MILLI * unattributed], [0, 0, 0, 1000 * unattributed]] * 2
    room.close()


# -- the join's keys (`Bounded.build`, `touches_sql`) against the plain join -----------------------------------------
#: Exposures' rows: small ones, both sides of 2^31 (a parameter bound as INTEGER or BIGINT), and rows so far apart
#: that the key's 62 bits hold few buckets (the width grows) or one (the range is 2^62 and more).
EDGE_ROWS = [0, 1, 2, 7, 2**31 - 1, 2**31, 2**40, 2**62 - 5, 2**63 - 1]
DAY = MICROSECONDS_PER_DAY
#: Times around 1900, just before and at the epoch (negative microseconds), 2024 and 2199 (the upload's window).
EDGE_TIMES = [-70 * 365 * DAY, -1, 0, 19_700 * DAY, 83_000 * DAY]


class Edges:
    """The stored exposures' (row, time, code), their reader and the touches statement (a short repr: hypothesis
    prints a failing example's fixtures)."""

    def __init__(self, data: MatchedData, sql: Sql, stored: list[tuple[int, int, int]]) -> None:
        self.data, self.sql, self.stored = data, sql, stored


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory):
    """Exposures at `EDGE_ROWS` x times near `EDGE_TIMES` (some microseconds apart), stored; the query's reader."""
    rng = np.random.default_rng(35)
    room = Room.open(tmp_path_factory.mktemp("attribution-keys"))
    c = room.collaborations.create(BRAND, "attribution-keys", yaml.safe_dump(POLICY))
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    n = 1500
    rows = rng.choice(np.array(EDGE_ROWS, dtype=np.int64), n)
    ts = rng.choice(np.array(EDGE_TIMES), n) + rng.integers(-8, 8, n) * DAY // 2 + rng.integers(-2, 3, n)
    exposures = pa.table(
        {
            "row_id": rows,
            "ts": pa.array(ts.astype("datetime64[us]"), pa.timestamp("us")),
            "campaign": rng.choice(CAMPAIGNS, n),
            "channel": rng.choice(CHANNELS, n),
            "kind": rng.choice(["impression", "click"], n),
        }
    )
    users = pa.table({"row_id": np.arange(2, dtype=np.int64), "tier": ["gold", "basic"]})
    conversions = pa.table({"row_id": [0], "ts": pa.array([T0], pa.timestamp("us")), "value": [1.0]})
    tables = {
        ("brand", "users"): users,
        ("brand", "conversions"): conversions,
        ("platform", "users"): users.select(["row_id"]),
        ("platform", "exposures"): exposures,
    }
    load_direct(room, c.id, tables, np.arange(2), np.arange(2))
    collab = room.collaborations.get(BRAND, c.id)
    catalog = Catalog(room.store.of(c.id).cursor(), collab)
    ev = attribution.event_tables(collab.policy, catalog.members)
    code = attribution.TouchCode.of(ev)
    codes = [
        (int(k == "click") * (len(code.campaigns) + 1) + code.campaigns.index(ca) + 1) * (len(code.channels) + 1)
        + code.channels.index(ch)
        + 1
        for k, ca, ch in zip(
            exposures["kind"].to_pylist(),
            exposures["campaign"].to_pylist(),
            exposures["channel"].to_pylist(),
            strict=True,
        )
    ]
    data = MatchedData(room.store.of(c.id).cursor(), catalog)
    yield Edges(data, attribution.touches_sql(catalog, ev), list(zip(rows.tolist(), ts.tolist(), codes, strict=True)))
    room.close()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1499),  # an exposure the conversion is placed against
            st.sampled_from(["same", "same", "unmatched", "other"]),  # its person: that row, -1, or any edge row
            st.integers(0, len(EDGE_ROWS) - 1),
            st.sampled_from(["at t", "at t - L", "at t - L - 1", "after t", "within", "far"]),
            st.integers(0, 2**40),
            st.booleans(),  # counted: over the cap, a conversion finds no touch
        ),
        max_size=30,
    ),
    st.sampled_from([1, 3, 365]),
)
def test_the_joins_keys_find_each_qualifying_touch_once(edges, drawn, lookback_days):
    """Red team of the keys computed in the touches statement: every qualifying touch of a counted conversion is
    found exactly once and no other, however far apart the rows and times are (negative times, rows up to 2^63 - 1:
    the key's width grows, and a row range beyond 2^62 divided the room for buckets down to 0, a ZeroDivisionError),
    touches exactly at t - L and at t included, a conversion over the cap finds none, a person not matched with the
    member (-1) none."""
    data, sql, stored = edges.data, edges.sql, edges.stored
    lookback = lookback_days * DAY
    rows, times, counted = [], [], []
    for pick, who, other, when, jitter, kept in drawn:
        row, at, _ = stored[pick]
        rows.append({"same": row, "unmatched": -1, "other": EDGE_ROWS[other]}[who])
        offset = {"at t": 0, "at t - L": lookback, "at t - L - 1": lookback + 1, "after t": -1}
        times.append(at + offset.get(when, jitter % (lookback + 1) if when == "within" else jitter))
        counted.append(kept)
    m = len(rows)
    bounded = attribution.Bounded(
        np.array(times, dtype=np.int64),
        np.zeros(m, dtype=np.int64),
        np.zeros(m, dtype=np.int64),
        (np.array(rows, dtype=np.int64),),
        np.array(counted, dtype=bool),
    )
    relations, params = bounded.build(lookback)
    found = data.columns(Sql(sql.text, {**sql.params, **params}), relations)
    got = sorted(zip(found["conversion"].tolist(), found["ts_us"].tolist(), found["code"].tolist(), strict=True))
    want = sorted(
        (i, at, code)
        for i in range(m)
        if counted[i]
        for row, at, code in stored
        if row == rows[i] and times[i] - lookback <= at <= times[i]
    )
    assert got == want


def _two_people(
    tmp_path, conversions: pa.Table, exposures: pa.Table
) -> tuple[Room, Collaboration, QueryEngine, Recording]:
    """A room under POLICY whose brand users 0 (gold) and 1 (silver) are matched with platform users 0 and 1, the
    given events written past the upload's checks (`load_direct`), and an engine whose noise records the vectors."""
    room = Room.open(tmp_path)
    c = room.collaborations.create(BRAND, "attribution-two-people", yaml.safe_dump(POLICY))
    for m in (BRAND, PLATFORM):
        room.collaborations.approve(m, c.id, c.policy_etag)
    tables = {
        ("brand", "users"): pa.table({"row_id": np.arange(2, dtype=np.int64), "tier": ["gold", "silver"]}),
        ("brand", "conversions"): conversions,
        ("platform", "users"): pa.table({"row_id": np.arange(2, dtype=np.int64)}),
        ("platform", "exposures"): exposures,
    }
    load_direct(room, c.id, tables, np.arange(2), np.arange(2))
    noise = Recording()
    return room, c, QueryEngine(room.store, room.collaborations, room.budget, room.audit, noise), noise


@pytest.mark.parametrize("path", ["compiled", "numpy"])
@pytest.mark.parametrize("model", ["last_touch", "linear"])
def test_a_conversion_over_the_cap_counts_nowhere_even_where_only_it_has_touches(tmp_path, path, model, monkeypatch):
    """Red team of the build side's `WHERE c`: person 0 converts five times, the cap keeps the three earliest, and
    only the two dropped ones (ten days later) have touches in their windows. The kept three are unattributed
    (`none`), the dropped two credit nothing, and person 1's one touched conversion shows the touches are read."""
    if path == "numpy":
        monkeypatch.setattr(native, "KERNELS", None)
    days = [0, 1, 2, 10, 11]
    conversions = pa.table(
        {
            "row_id": np.array([0] * 5 + [1], dtype=np.int64),
            "ts": pa.array([T0 + dt.timedelta(days=d) for d in [*days, 5]], pa.timestamp("us")),
            "value": np.array([10.0] * 5 + [20.0]),
        }
    )
    touches = [(0, 9.5, "c1"), (0, 11, "c1"), (0, 10, "c1"), (1, 4, "c2")]  # (person, day, campaign)
    exposures = pa.table(
        {
            "row_id": np.array([p for p, _, _ in touches], dtype=np.int64),
            "ts": pa.array([T0 + dt.timedelta(days=d) for _, d, _ in touches], pa.timestamp("us")),
            "campaign": [ca for _, _, ca in touches],
            "channel": ["feed"] * len(touches),
            "kind": ["click"] * len(touches),
        }
    )
    room, c, engine, noise = _two_people(tmp_path, conversions, exposures)
    q = AttributionQuery(model, LOOKBACK, "campaign", 1.0, brand_dimension=DimensionRef("brand", "tier"))
    engine.attribution(BRAND, c.id, q)
    brands = len(TIERS) + 1
    milli, cents = [0] * (len(CAMPAIGNS) + 1) * brands, [0] * (len(CAMPAIGNS) + 1) * brands
    none_gold = len(CAMPAIGNS) * brands + TIERS.index("gold")
    milli[none_gold], cents[none_gold] = 3 * MILLI, 3 * 1000
    c2_silver = CAMPAIGNS.index("c2") * brands + TIERS.index("silver")
    milli[c2_silver], cents[c2_silver] = MILLI, 2000
    assert noise.vectors == [milli, cents]
    room.close()


@pytest.mark.parametrize("path", ["compiled", "numpy"])
def test_a_stored_value_that_is_not_a_number_is_charged_and_releases_nothing(tmp_path, path, monkeypatch, caplog):
    """A careless operator's store with a NaN conversion value (uploads refuse them; `load_direct` writes past the
    upload's checks). The old statement turned it into the policy's `hi` (DuckDB orders NaN above every number);
    now the bound refuses it after the budget was reserved: the query fails as any failure once data is read
    (QueryFailedError, charged, a `query.failed` entry) and no vector reaches the noise, on both paths."""
    if path == "numpy":
        monkeypatch.setattr(native, "KERNELS", None)
    conversions = pa.table(
        {
            "row_id": np.array([0, 1, 1], dtype=np.int64),
            "ts": pa.array([T0 + dt.timedelta(days=d) for d in (1, 2, 3)], pa.timestamp("us")),
            "value": np.array([10.0, math.nan, 20.0]),
        }
    )
    exposures = pa.table(
        {
            "row_id": np.array([0, 1], dtype=np.int64),
            "ts": pa.array([T0, T0 + dt.timedelta(days=1)], pa.timestamp("us")),
            "campaign": ["c1", "c2"],
            "channel": ["feed", "feed"],
            "kind": ["click", "click"],
        }
    )
    room, c, engine, noise = _two_people(tmp_path, conversions, exposures)
    with pytest.raises(QueryFailedError, match="charged"):
        engine.attribution(BRAND, c.id, AttributionQuery("linear", 3, "campaign", 1.0))
    assert noise.vectors == []
    failure = caplog.records[-1].exc_info  # the operator's log: the bound's refusal, nothing else
    assert failure is not None
    assert "not a number" in str(failure[1])
    last = list(room.audit.entries(c.id))[-1]
    assert (last.action, last.epsilon) == ("query.failed", 1.0)
    room.close()
