"""Preview: every query type's error bars from the request, the policy and epsilon alone.

A preview must read no data (any access fails the test), spend nothing, give the same answer on neighbouring
datasets (so it is not an oracle on anyone), and state the bars the real query then releases.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from privacy_data import BRAND, PRIVACY_POLICY, every_query
from test_free_oracles import C, population, spent

from cleanroom.analytics.engine import QueryEngine
from cleanroom.analytics.matched import MatchedData
from cleanroom.analytics.queries import DimensionRef, LookalikeQuery, OverlapQuery


class Previewing:
    """The engine, with every query method asked for a preview."""

    def __init__(self, engine: QueryEngine) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self._engine, name), preview=True)


def lookalike(e: Any, c: str) -> object:
    return e.lookalike(BRAND, c, LookalikeQuery(((DimensionRef.parse("brand.tier"), "gold"),), 1, 1.0, 1e-9))


def previews(room: Any) -> list[list[tuple[tuple[str, ...], float]]]:
    out = []
    for query in [*every_query(), lookalike]:
        answer = query(Previewing(room.queries), C)
        assert answer.epsilon_spent == 0
        assert answer.cells, "a preview states at least one vector"
        out.append([(cell.keys, cell.error_95 if cell.measure != "error_95" else cell.value) for cell in answer.cells])
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


def test_the_preview_states_the_bars_the_query_releases(rooms):
    room = rooms(PRIVACY_POLICY, population(20))
    q = OverlapQuery((DimensionRef.parse("brand.tier"),), 0.5)
    preview = room.queries.overlap(BRAND, C, q, preview=True)
    answer = room.queries.overlap(BRAND, C, q)
    (bar,) = preview.cells
    assert bar.keys == ("people",)
    assert {c.error_95 for c in answer.cells if not c.suppressed} == {bar.value}
    # two identifier types: c = 4; at epsilon 0.5 the scale is 8
    assert preview.noise_scale == {"people": pytest.approx(8.0)}
