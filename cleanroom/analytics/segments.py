"""The one rule for what an activation segment may be: decided by another member's data, able to exclude people.

An activation hands its recipient, row by row, which of its users are matched and in the segment. The segment's
conditions are all met at once (there is no OR): a value of a users dimension (`member.column = value`) and event
filters (had / had no row of `member.table` dated in [start, end), optionally with declared dimension values).

The rule, judged from the request, the policy and today's date alone (never from the data, so a refusal discloses
nothing and is made before any budget is reserved):

1. Every event window must meet the range of dates a row of its table can have (`row_dates`): the stored domain
   of time columns, 1900-01-01 up to 2200-01-01, cut at the day after today, since a table records events that
   happened. A window outside it is decided by no row: `present` would select nobody and `absent` everybody, so an
   `absent` there would hand the recipient every matched person while looking like a condition on the peer. (The
   policy language declares no narrower time range per table; with none declared, this range is the only one
   the server can know without reading data.)
2. At least one condition must be on the data of a member other than the recipient. Given (1), each such condition
   can exclude a matched person for some data the policy admits: a dimension value excludes a person whose value
   is another one or empty (users dimensions may be empty), `present` one without rows in the window, `absent`
   one with a row in it.

What the rule cannot see: a window that meets the range but where the peer happens to have no rows (an `absent`
there keeps everyone, as in fact it does when nobody did the thing). Only the data says so, and the policy's
`activation.events` is the members' approval of exactly that disclosure: which matched people did, or did not,
have such rows in the window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from ..errors import InvalidArgumentError
from ..matching.tables import TIME_WINDOW
from .queries import DimensionRef, EventFilter


def row_dates(today: dt.date) -> tuple[dt.date, dt.date]:
    """[first, end): the dates a row of an event table can have, as of `today` (UTC)."""
    first, stored_end = TIME_WINDOW[0].date(), TIME_WINDOW[1].date()
    return first, min(stored_end, today + dt.timedelta(days=1))


def window_meets_rows(event: EventFilter, today: dt.date) -> bool:
    """Whether some row of the event's table can be dated in its window (rule 1)."""
    first, end = row_dates(today)
    return max(event.start, first) < min(event.end, end)


def check_segment(
    recipient: str, segment: Mapping[DimensionRef, str], events: Sequence[EventFilter], today: dt.date
) -> None:
    """Refuse a segment its recipient's own data would decide, or whose conditions cannot exclude anyone.

    Raises InvalidArgumentError naming the condition and what to change. Call before any budget is reserved.
    """
    first, end = row_dates(today)
    for event in events:
        if not window_meets_rows(event, today):
            raise InvalidArgumentError(
                f"event filter {event}: no row of {event.table} can be dated in that window (rows are dated from "
                f"{first} up to {end}, the day after today), so it would "
                + ("select nobody" if event.present else "exclude nobody")
                + ": choose a window with dates the table can hold"
            )
    if all(d.member == recipient for d in segment) and all(e.member == recipient for e in events):
        raise InvalidArgumentError(
            "segment: use at least one dimension or event table of a member other than the recipient "
            f"({recipient}); its own data alone would hand it the raw intersection"
        )
