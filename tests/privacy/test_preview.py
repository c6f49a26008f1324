"""Preview: every cell a query would release, with its bar, from the request, the policy and epsilon alone.

A preview must read no data (any access fails the test), spend nothing, give the same answer on neighbouring
datasets (so it is not an oracle on anyone), state every derived cell the query declares, and state the bars the
real query then releases: previewed at typical values equal to the released noisy vectors, every cell's bar equals
the released cell's, because the preview is the family's own post-processing over typical vectors.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from privacy_data import BRAND, PRIVACY_POLICY, every_query
from test_free_oracles import C, population, spent

from cleanroom.analytics.activation import activation_reason, epsilon_to_clear
from cleanroom.analytics.engine import MAX_SOLVED_CELLS, MAX_TYPICAL, MAX_TYPICAL_VECTORS, MAX_VECTOR_NAME, QueryEngine
from cleanroom.analytics.matched import MatchedData
from cleanroom.analytics.plan import Typical, activation_threshold
from cleanroom.analytics.queries import DimensionRef, LookalikeQuery, OverlapQuery, ValueQuery
from cleanroom.errors import InvalidArgumentError
from cleanroom.privacy.noise import DiscreteLaplace
from cleanroom_client.query_types import BY_NAME

#: The declared query of each of `every_query()`, in its order.
NAMES = (
    "overlap",
    "overlap",
    "funnel",
    "funnel_flow",
    "segment_insight",
    "segment_insight",
    "value",
    "value",
    "loyalty",
    *["attribution"] * 5,
    "lift",
    "activate",
    "activate",
)
#: Each released vector's unit (its integers per released unit); 1 where not named.
UNITS = {"sum": 100, "revenue": 100, "conversions": 1000}


class Previewing:
    """The engine, with every query method asked for a preview (`preview`: True or the `Typical` values)."""

    def __init__(self, engine: QueryEngine, preview: bool | Typical = True) -> None:
        self._engine = engine
        self._preview = preview

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self._engine, name), preview=self._preview)


def lookalike(e: Any, c: str) -> object:
    return e.lookalike(BRAND, c, LookalikeQuery(((DimensionRef.parse("brand.tier"), "gold"),), 1, 1.0, 1e-9))


def previews(room: Any) -> list[list[tuple[Any, ...]]]:
    out = []
    for query in [*every_query(), lookalike]:
        answer = query(Previewing(room.queries), C)
        assert answer.epsilon_spent == 0
        assert answer.cells, "a preview states at least one cell"
        out.append([(c.keys, c.measure, c.value, c.error_95, c.suppressed, c.reason) for c in answer.cells])
        out[-1].append(tuple(sorted(answer.typical.items())))
    return out


def test_a_preview_reads_nothing_spends_nothing_and_is_the_same_for_neighbours(rooms, monkeypatch):
    full = population(20)
    neighbour = {**full, "brand": full["brand"].without_user(0)}
    on_d, on_n = rooms(PRIVACY_POLICY, full), rooms(PRIVACY_POLICY, neighbour)

    def no_data(self: MatchedData, sql: object) -> object:
        raise AssertionError("a preview read data")

    for name in ("rows", "arrays"):
        monkeypatch.setattr(MatchedData, name, no_data)
    before = spent(on_d)
    assert previews(on_d) == previews(on_n)
    assert spent(on_d) == before


def test_every_declared_cell_is_previewed(rooms):
    room = rooms(PRIVACY_POLICY, population(12))
    for name, query in zip((*NAMES, "lookalike"), (*every_query(), lookalike), strict=True):
        answer: Any = query(Previewing(room.queries), C)
        measures = {c.measure for c in answer.cells}
        assert set(BY_NAME[name].measures) <= measures, (name, set(BY_NAME[name].measures) - measures)
        assert answer.typical, name


class Kept(DiscreteLaplace):
    """OpenDP's noise, keeping each noisy vector it released (to preview at exactly those values)."""

    def __init__(self) -> None:
        self.released: list[list[int]] = []

    def release(self, counts: list[int], sensitivity: int, epsilon: float) -> tuple[list[int], float]:
        values, scale = super().release(counts, sensitivity, epsilon)
        self.released.append(values)
        return values, scale


def test_each_previewed_bar_is_the_released_bar(rooms):
    """Previewed at the released noisy vectors, every cell (shares, TGI, means, ROAS, lift, MDE) is the released one."""
    kept = Kept()
    room = rooms(PRIVACY_POLICY + "campaign_spend: {c1: 500.0}\n", population(400), noise=kept)
    compared = set()
    for name, query in zip((*NAMES, "lookalike"), (*every_query(), lookalike), strict=True):
        shape = query(Previewing(room.queries), C)
        kept.released.clear()
        answer: Any = query(room.queries, C)
        vectors = list(shape.noise_scale)
        values: dict[str, float | tuple[float, ...]]
        if name == "activate":  # two noisy sizes of one vector: the segment's is the audience's
            values = {"audience_size": float(kept.released[0][0])}
        else:
            assert len(kept.released) == len(vectors), name
            values = {
                v: tuple(x / UNITS.get(v, 1) for x in released)
                for v, released in zip(vectors, kept.released, strict=True)
            }
        previewed: Any = query(Previewing(room.queries, Typical(values=values)), C)
        cells = previewed.cells[: len(answer.cells)]
        for got, want in zip(cells, answer.cells, strict=True):
            assert (got.keys, got.measure) == (want.keys, want.measure), name
            if name == "activate" and want.suppressed:
                continue  # the run may withhold for the other noisy size, or the true size: not previewable
            assert got.suppressed == want.suppressed, (name, got, want)
            assert got.value == pytest.approx(want.value, rel=1e-12, abs=1e-12), (name, got, want)
            assert got.error_95 == pytest.approx(want.error_95, rel=1e-12, abs=1e-12), (name, got, want)
            if not want.suppressed:
                compared.add(want.measure)
    for measure in ("share", "tgi", "penetration", "per_buyer", "repurchase_rate", "attributed_revenue", "roas"):
        assert measure in compared, measure
    for measure in ("incremental_revenue", "minimum_detectable_lift", "conversion_rate", "row_share", "precision"):
        assert measure in compared, measure


def test_the_epsilon_needed_meets_the_target_and_no_less_does(rooms):
    room = rooms(PRIVACY_POLICY, population(12))
    q = ValueQuery((DimensionRef.parse("brand.tier"),), "brand.conversions.value", 1.0)
    answer = room.queries.value(BRAND, C, q, preview=Typical(within=0.15))
    assert len(answer.epsilon_needed) == len(answer.cells)
    solved = 0
    for cell, needed in zip(answer.cells, answer.epsilon_needed, strict=True):
        if needed == 0:
            continue
        solved += 1
        at = room.queries.value(BRAND, C, ValueQuery(q.by, q.measure, needed), preview=True)
        (same,) = [c for c in at.cells if (c.keys, c.measure) == (cell.keys, cell.measure)]
        assert same.error_95 <= 0.15 * abs(same.value)
        if needed > 0.01 * 1.001:  # above the policy's least epsilon: a little less misses the target
            below = room.queries.value(BRAND, C, ValueQuery(q.by, q.measure, needed * 0.995), preview=True)
            (less,) = [c for c in below.cells if (c.keys, c.measure) == (cell.keys, cell.measure)]
            assert less.error_95 > 0.15 * abs(less.value)
    assert solved >= 4


def test_the_preview_states_the_bars_the_query_releases(rooms):
    room = rooms(PRIVACY_POLICY, population(200))  # cells of ~70 people: none is withheld by noise
    q = OverlapQuery((DimensionRef.parse("brand.tier"),), 0.5)
    preview = room.queries.overlap(BRAND, C, q, preview=True)
    answer = room.queries.overlap(BRAND, C, q)
    assert [(c.keys, c.measure) for c in preview.cells] == [(c.keys, c.measure) for c in answer.cells]
    assert {c.error_95 for c in answer.cells if not c.suppressed} == {c.error_95 for c in preview.cells}
    assert {c.value for c in preview.cells} == {1000.0}  # the default typical group
    # two identifier types: c = 4; at epsilon 0.5 the scale is 8
    assert preview.noise_scale == {"people": pytest.approx(8.0)}


def test_every_withheld_cell_says_why(rooms):
    """Under a minimum group no cell reaches, every withheld cell of every query names its reason."""
    room = rooms(PRIVACY_POLICY.replace("min_group_size: 1", "min_group_size: 100000"), population(12))
    for name, query in zip(NAMES, every_query(), strict=True):
        answer: Any = query(room.queries, C)
        withheld = [c for c in answer.cells if c.suppressed]
        assert withheld, name
        for cell in withheld:
            assert cell.reason, (name, cell)
        if name != "activate":
            assert any("minimum group of 100000" in c.reason for c in withheld), name


@given(
    noisy=st.integers(-10, 10**6),
    min_size=st.integers(1, 10**4),
    delta=st.floats(1e-12, 1e-3),
    c=st.integers(1, 8),
)
def test_the_epsilon_that_releases_a_noisy_size_is_the_least_that_clears_its_threshold(noisy, min_size, delta, c):
    e = epsilon_to_clear(noisy, min_size, delta, c)
    if e is None:  # no epsilon: the margin is at least c - 1 even as epsilon grows without bound
        assert noisy < min_size + c
        return
    assert min_size + activation_threshold(e, delta, c) <= noisy
    assert min_size + activation_threshold(e * (1 - 1e-9), delta, c) > noisy
    assert "would be released at epsilon >=" in activation_reason(noisy, min_size, e / 2, delta, c)


def test_the_activation_reasons_read_in_chinese():
    from cleanroom_client.report_text import text_for

    for noisy in (40, 400):  # none clears a gate at min_size 50; one that would at a higher epsilon
        reason = activation_reason(noisy, 50, 0.1, 1e-6, 4)
        assert text_for("zh").reason(reason) != reason, reason


def _typical_for(answer: Any, value: float, **kw: Any) -> Typical:
    """`value` for every vector the previewed query releases (named in its `noise_scale`)."""
    return Typical(values={v: value for v in answer.noise_scale}, **kw)


def test_a_preview_of_huge_typical_values_is_refused_not_a_crash(rooms):
    """Red team, issue 31: the server checked typical values for finiteness only, so a typical sum of 1e308 became
    round(inf) in `Noisy.typical` (OverflowError), a typical group of 1e308 an int too large for a float in segment
    insight's TGI: INTERNAL from 10 of the 18 previewed calls (segment insight, value, attribution, lift), after
    the preview's audit entry was written. Values up to 2^53 (the most a released exact value can be) preview;
    beyond, INVALID_ARGUMENT (a refusal, audited as any)."""
    room = rooms(PRIVACY_POLICY, population(12))
    for query in (*every_query(), lookalike):
        shape: Any = query(Previewing(room.queries), C)
        for edge in (MAX_TYPICAL, -MAX_TYPICAL):
            query(Previewing(room.queries, _typical_for(shape, edge, within=0.3)), C)  # no error
        query(Previewing(room.queries, Typical(group=MAX_TYPICAL, within=0.3)), C)
        for huge in (_typical_for(shape, 1e308), _typical_for(shape, -1e300), Typical(group=1e308)):
            with pytest.raises(InvalidArgumentError):
                query(Previewing(room.queries, huge), C)
    with pytest.raises(InvalidArgumentError):  # per-cell values (the engine takes tuples) of the wrong length
        every_query()[0](Previewing(room.queries, Typical(values={"people": (1.0, 2.0)})), C)


def test_the_typical_maps_bound_fits_every_query_and_refuses_beyond_it(rooms):
    """The bound on a preview's typical map is what a preview needs: every query releases at most
    `MAX_TYPICAL_VECTORS` vectors, each named in at most `MAX_VECTOR_NAME` characters, and previews with a typical
    value for each; one entry more, or a longer name, is refused by the rule, the names not echoed."""
    room = rooms(PRIVACY_POLICY, population(12))
    for query in (*every_query(), lookalike):
        shape: Any = query(Previewing(room.queries), C)
        assert 1 <= len(shape.noise_scale) <= MAX_TYPICAL_VECTORS
        assert max(len(name) for name in shape.noise_scale) <= MAX_VECTOR_NAME
        query(Previewing(room.queries, _typical_for(shape, 500.0)), C)  # no error
        extra = {f"extra_{i}": 1.0 for i in range(MAX_TYPICAL_VECTORS + 1 - len(shape.noise_scale))}
        over = (
            Typical(values={**_typical_for(shape, 500.0).values, **extra}),
            Typical(values={"y" * (MAX_VECTOR_NAME + 1): 1.0}),
        )
        for typical, rule in zip(
            over, (f"at most {MAX_TYPICAL_VECTORS}", f"{MAX_VECTOR_NAME} characters"), strict=True
        ):
            with pytest.raises(InvalidArgumentError, match=rule) as info:
                query(Previewing(room.queries, typical), C)
            assert "extra_" not in str(info.value)
            assert "yyyy" not in str(info.value)


def test_the_epsilon_needed_over_thousands_of_cells_is_refused_not_a_held_worker(rooms):
    """Red team, issue 31: `within` on a value preview by three dimensions of 40 x 40 x 5 values (8,000 groups, 56,000
    cells) ran `epsilon_needed` for 35-43 s on one worker, per request (previews are rated at a burst of 20). Above
    MAX_SOLVED_CELLS cells it is refused from the request alone; the preview without `within` still answers."""
    tiers = ", ".join(["gold", "basic"] + [f"t{i}" for i in range(37)])
    ages = ", ".join(["young", "old"] + [f"a{i}" for i in range(37)])
    wide = PRIVACY_POLICY.replace("tier: [gold, basic]", f"tier: [{tiers}]").replace(
        "age_band: [young, old]", f"age_band: [{ages}]"
    )
    room = rooms(wide, population(12))
    d = DimensionRef.parse
    # tier x age: 1,600 groups (4,800 cells of people by orders, within the grouping limit), 11,200 released cells
    q = ValueQuery((d("brand.tier"), d("platform.age_band")), "brand.conversions.value", 1.0)
    started = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match="within"):
        room.queries.value(BRAND, C, q, preview=Typical(within=0.15))
    assert len(room.queries.value(BRAND, C, q, preview=True).cells) > MAX_SOLVED_CELLS
    assert time.perf_counter() - started < 15  # refused from the request: no solver ran (it took 35-43 s)
    # a preview under the limit is still solved
    q2 = ValueQuery((d("brand.tier"), d("platform.stage_4a")), "brand.conversions.value", 1.0)  # 40 x 5 groups
    started = time.perf_counter()
    answer = room.queries.value(BRAND, C, q2, preview=Typical(within=0.15))
    assert 1_000 < len(answer.cells) <= MAX_SOLVED_CELLS
    assert len(answer.epsilon_needed) == len(answer.cells)
    assert time.perf_counter() - started < 15
