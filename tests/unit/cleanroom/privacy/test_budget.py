"""The ledger's arithmetic at the cap: exact, so a member can spend its whole budget and not a unit more.

A real DuckDB file under a real audit chain; amounts as a member would type them (decimal text parsed to float).
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cleanroom.errors import ResourceExhaustedError
from cleanroom.privacy.budget import Charge, Limits, charge_units, total_units
from cleanroom.room import Room

#: Decimal amounts with at most 9 decimals for epsilon (its unit) and 18 for delta; up to 15 significant digits.
EPSILONS = st.integers(1, 10**10).map(lambda k: Decimal(k).scaleb(-9))
DELTAS = st.integers(1, 10**12).map(lambda k: Decimal(k).scaleb(-18)) | st.sampled_from(
    [Decimal("1e-6"), Decimal("1e-9"), Decimal("3e-7"), Decimal("0.1"), Decimal("1e-12")]
)
#: A fresh collaboration id for every example (each has a ledger of its own in the one room).
FRESH = itertools.count()


@pytest.fixture
def room(tmp_path: Path):
    r = Room.open(tmp_path)
    yield r
    r.close()


def test_a_delta_equal_to_the_whole_budget_is_admitted(room):
    """The attack's shape: delta 1e-6 per query and in total, nothing spent, asking 1e-6 was refused ("asks 1e-06
    but you have 1e-06 left of 1e-06") because 1e-6 / 1e-18 is 1000000000000.0001 in floating point."""
    limits = Limits(1.0, 1e-6)
    room.store.create("c-d")
    held = room.budget.reserve("c-d", [Charge("brand", 1.0, 1e-6), Charge("platform", 1.0, 1e-6)], limits)
    assert held.charges[0].units == (10**9, 10**12)
    with pytest.raises(ResourceExhaustedError, match="asks epsilon"):
        room.budget.reserve("c-d", [Charge("brand", 1e-9, 0.0)], limits)


def test_units_are_the_decimal_amount_exactly():
    assert charge_units(1e-6, 1e-18) == total_units(1e-6, 1e-18) == 10**12
    assert charge_units(0.1, 1e-9) == total_units(0.1, 1e-9) == 10**8
    assert (charge_units(1e-20, 1e-18), total_units(1e-20, 1e-18)) == (1, 0)  # a charge rounds up, a cap down
    assert (charge_units(1.0000000001, 1e-9), total_units(1.0000000001, 1e-9)) == (10**9 + 1, 10**9)


def _spend_until_full(room: Room, collab: str, amounts: list[Decimal], which: str) -> None:
    """Spend every amount (all admitted: they sum exactly to the cap), then one unit more (refused)."""
    total = sum(amounts)
    assume(Decimal(repr(float(total))) == total)  # a cap a float can state (at most 15 significant digits)
    cap = float(total)
    room.store.create(collab)  # the collaboration's own file (as creating it makes)
    room.audit.record(collab, "m", "collaboration.create", {})  # a collaboration's chain starts with its creation
    limits = Limits(cap, 1.0) if which == "epsilon" else Limits(1.0, cap)
    for amount in amounts:
        charge = Charge("m", float(amount), 0.0) if which == "epsilon" else Charge("m", 0.0, float(amount))
        held = room.budget.reserve(collab, [charge], limits, "overlap", {})
        room.budget.commit(held, "query.overlap", {}, None)
    status = room.budget.status(collab, "m", limits)
    assert (status.remaining if which == "epsilon" else status.delta_remaining) == 0.0
    unit = Charge("m", 1e-9, 0.0) if which == "epsilon" else Charge("m", 0.0, 1e-18)
    with pytest.raises(ResourceExhaustedError, match=f"asks {which}"):
        room.budget.reserve(collab, [unit], limits)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(EPSILONS, min_size=1, max_size=5))
def test_epsilon_spends_summing_to_the_cap_are_admitted_and_nothing_more(room, amounts):
    _spend_until_full(room, f"c-e{next(FRESH)}", amounts, "epsilon")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amounts=st.lists(DELTAS, min_size=1, max_size=5))
def test_delta_spends_summing_to_the_cap_are_admitted_and_nothing_more(room, amounts):
    _spend_until_full(room, f"c-d{next(FRESH)}", amounts, "delta")


@given(
    amount=st.floats(min_value=1e-12, max_value=1e4, allow_nan=False, allow_infinity=False),
    unit=st.sampled_from([1e-9, 1e-18]),
)
def test_a_charge_never_falls_short_of_its_decimal_amount_and_a_cap_never_exceeds_it(amount, unit):
    exact = Decimal(repr(amount)) / Decimal(repr(unit))
    assert charge_units(amount, unit) >= exact >= total_units(amount, unit)
    assert charge_units(amount, unit) - total_units(amount, unit) <= 1


def test_the_status_read_with_the_debit_is_the_status_after_it(room):
    """The answer's remaining budget comes from the commit's own transaction: the same as a status read after it,
    with another query's reservation still held counted as reserved."""
    limits = Limits(2.0, 1e-6)
    room.store.create("c-s")
    room.audit.record("c-s", "brand", "collaboration.create", {})
    mine = room.budget.reserve("c-s", [Charge("brand", 0.5, 0.0)], limits, "overlap", {})
    other = room.budget.reserve("c-s", [Charge("brand", 0.25, 0.0)], limits, "overlap", {})
    entry, status = room.budget.commit_with_status(mine, "query.overlap", {}, None, limits)
    assert status == room.budget.status("c-s", "brand", limits)
    assert (status.spent, status.reserved, status.remaining) == (0.5, 0.25, 1.25)
    assert entry.epsilon == 0.5
    room.budget.commit(other, "query.overlap", {}, None)
    assert room.budget.status("c-s", "brand", limits).remaining == 1.25
