"""The activation segment rule (`cleanroom.analytics.segments`) as properties over any request and any date.

Conditions are evaluated here on a person as the SQL does (every condition met; `present` = a row in the window,
`absent` = none), so the properties say what the rule is for: a refused window decides nothing about anyone, and an
accepted segment holds a condition on another member's data that excludes someone for some data the policy admits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cleanroom.analytics.queries import DimensionRef, EventFilter
from cleanroom.analytics.segments import check_segment, row_dates, window_meets_rows
from cleanroom.errors import InvalidArgumentError

RECIPIENT = "platform"
MEMBERS = ("brand", "platform", "p2")
TABLES = {"brand": "brand.conversions", "platform": "platform.exposures", "p2": "p2.visits"}
DOMAIN = ("gold", "basic")

dates = st.dates(dt.date(1850, 1, 1), dt.date(2250, 12, 31))
todays = st.dates(dt.date(1990, 1, 1), dt.date(2150, 12, 31))


@st.composite
def event_filters(draw: st.DrawFn) -> EventFilter:
    member = draw(st.sampled_from(MEMBERS))
    start = draw(dates)
    end = draw(st.dates(start + dt.timedelta(days=1), dt.date(2251, 1, 1)))
    return EventFilter(TABLES[member], start, end, present=draw(st.booleans()))


segments = st.dictionaries(
    st.sampled_from(MEMBERS).map(lambda m: DimensionRef(m, "tier")), st.sampled_from(DOMAIN), max_size=3
)


@dataclass
class Person:
    """One matched person as the data may have it: a tier per member (None: empty) and the dates of their rows."""

    tiers: dict[str, str | None] = field(default_factory=dict)
    rows: dict[str, list[dt.date]] = field(default_factory=dict)


def passes(person: Person, condition: tuple[DimensionRef, str] | EventFilter) -> bool:
    if isinstance(condition, EventFilter):
        had = any(condition.start <= d < condition.end for d in person.rows.get(condition.table, []))
        return had == condition.present
    ref, value = condition
    return person.tiers.get(ref.member) == value


@st.composite
def people(draw: st.DrawFn, today: dt.date) -> Person:
    """Any person whose rows are dated where rows can be (`row_dates`)."""
    first, end = row_dates(today)
    in_range = st.dates(first, end - dt.timedelta(days=1))
    return Person(
        {m: draw(st.sampled_from((*DOMAIN, None))) for m in MEMBERS},
        {t: draw(st.lists(in_range, max_size=4)) for t in TABLES.values()},
    )


def _member(condition: tuple[DimensionRef, str] | EventFilter) -> str:
    return condition.member if isinstance(condition, EventFilter) else condition[0].member


@given(ev=event_filters(), today=todays, data=st.data())
def test_a_refused_window_decides_nothing_about_anyone(ev, today, data):
    """Rule 1: a window no row can be in is refused, and it is exactly one where every person is treated alike."""
    if window_meets_rows(ev, today):
        first, end = row_dates(today)
        inside = max(ev.start, first)  # a row dated here is in the window: one person with it, one without
        assert passes(Person(rows={ev.table: [inside]}), ev) != passes(Person(), ev)
        assert first <= inside < end
        return
    for _ in range(5):
        assert passes(data.draw(people(today)), ev) == (not ev.present)
    with pytest.raises(InvalidArgumentError, match="no row of"):
        check_segment(RECIPIENT, {DimensionRef("brand", "tier"): "gold"}, (ev,), today)


@given(segment=segments, events=st.lists(event_filters(), max_size=3), today=todays)
def test_an_accepted_segment_can_exclude_someone_by_another_members_data(segment, events, today):
    """Rule 2: accepted only if some condition on a member other than the recipient can exclude a person."""
    conditions = [*segment.items(), *events]
    try:
        check_segment(RECIPIENT, segment, events, today)
    except InvalidArgumentError:
        assert any(not window_meets_rows(e, today) for e in events) or all(_member(c) == RECIPIENT for c in conditions)
        return
    first, _ = row_dates(today)
    deciding = [c for c in conditions if _member(c) != RECIPIENT]
    assert deciding
    for condition in deciding:  # each one excludes a person the policy admits, whatever the recipient's data
        if isinstance(condition, EventFilter):
            witness = Person(rows={condition.table: [max(condition.start, first)]} if not condition.present else {})
        else:
            witness = Person(tiers={condition[0].member: None})
        assert not passes(witness, condition)


def test_today_bounds_the_rows_a_table_can_have():
    today = dt.date(2026, 12, 6)
    assert row_dates(today) == (dt.date(1900, 1, 1), dt.date(2026, 12, 7))
    assert row_dates(dt.date(2250, 1, 1)) == (dt.date(1900, 1, 1), dt.date(2200, 1, 1))
    tomorrow = EventFilter("brand.conversions", dt.date(2026, 12, 6), dt.date(2026, 12, 8), present=False)
    check_segment(RECIPIENT, {}, (tomorrow,), today)  # today's rows may exist
    later = EventFilter("brand.conversions", dt.date(2026, 12, 7), dt.date(2026, 12, 8), present=False)
    with pytest.raises(InvalidArgumentError, match="exclude nobody"):
        check_segment(RECIPIENT, {}, (later,), today)


def test_two_values_of_one_column_in_where_are_refused():
    """No row has both, so `absent` would keep everyone."""
    with pytest.raises(InvalidArgumentError, match="each column once"):
        EventFilter(
            "platform.exposures",
            dt.date(2026, 1, 1),
            dt.date(2026, 2, 1),
            present=False,
            where=(("campaign", "c1"), ("campaign", "c2")),
        )
