"""Queries as values: what a member asks, validated against nothing but its own shape.

The representation never runs anything; its family's module (`overlap`, `funnel`, `goal`, `attribution`,
`lookalike`, `activation`) checks it against the policy and compiles it into a plan for `engine.QueryEngine`.
Dimensions are named `member.column` and refer to a column of that member's `users` table.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Protocol

from cleanroom_client.protocol import DEFAULT_HALF_LIFE_DAYS

from ..errors import InvalidArgumentError

MAX_DIMENSIONS = 3
STAGE_LABELS_4A = ("aware", "appeal", "act", "advocate")
STAGE_LABELS_AIPL = ("awareness", "interest", "purchase", "loyalty")


@dataclass(frozen=True)
class DimensionRef:
    """`member.column` of the member's users table."""

    member: str
    column: str

    @classmethod
    def parse(cls, text: str) -> DimensionRef:
        """Parse `member.column`."""
        member, dot, column = text.partition(".")
        if not dot or not member or not column or "." in column:
            raise InvalidArgumentError(f"dimension {text!r}: name it as member.column, e.g. platform.age_band")
        return cls(member, column)

    def __str__(self) -> str:
        return f"{self.member}.{self.column}"


class Scoped(Protocol):
    """What every query names: its epsilon, and of the data it reads the refresh period and the population."""

    @property
    def epsilon(self) -> float:
        """The epsilon the query spends."""
        ...

    @property
    def refresh_period(self) -> int | None:
        """The refresh period to read (0: the match); None: the last completed one."""
        ...

    @property
    def with_members(self) -> tuple[str, ...]:
        """The members (besides the hub) whose matched users are the query's people; empty: every member."""
        ...


@dataclass(frozen=True)
class ReadsPeriod:
    """The fields every query shares (see `Scoped`): which refresh period it reads, and whose matched users.

    Keyword-only, so that each query's own fields keep their order and their positions.
    """

    #: The refresh period whose data to read (0: the match, p: refresh p); None: the last completed one.
    refresh_period: int | None = field(default=None, kw_only=True)
    #: The members (besides the hub) whose matched users are the query's people; empty: every member.
    with_members: tuple[str, ...] = field(default=(), kw_only=True)


def check_epsilon(epsilon: float) -> float:
    """A positive, finite epsilon."""
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise InvalidArgumentError(f"epsilon must be a positive number, got {epsilon!r}")
    return float(epsilon)


@dataclass(frozen=True)
class OverlapQuery(ReadsPeriod):
    """Matched people, grouped by up to three dimensions."""

    dimensions: tuple[DimensionRef, ...]
    epsilon: float

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)
        check_dimensions(self.dimensions, "overlap")


@dataclass(frozen=True)
class VennQuery(ReadsPeriod):
    """The hub's users by which of the other members they are matched with, optionally by one hub dimension."""

    by: DimensionRef | None
    epsilon: float

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)


@dataclass(frozen=True)
class FunnelQuery(ReadsPeriod):
    """Matched people over the 4A stage, optionally crossed with one dimension; labels '4a' or 'aipl'."""

    by: DimensionRef | None
    epsilon: float
    labels: str = "4a"

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)
        if self.labels not in ("4a", "aipl"):
            raise InvalidArgumentError("labels must be '4a' (aware, appeal, act, advocate) or 'aipl'")


@dataclass(frozen=True)
class FunnelFlowQuery(ReadsPeriod):
    """Transitions between 4A stages from the snapshot on `start` to the one on `end`."""

    start: dt.date
    end: dt.date
    epsilon: float
    labels: str = "4a"

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)
        if self.start >= self.end:
            raise InvalidArgumentError("start_date must come before end_date")

    @staticmethod
    def parse_date(text: str, field: str) -> dt.date:
        """An ISO date."""
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            raise InvalidArgumentError(f"{field}: expected a date like 2026-11-01, got {text!r}") from None


def check_dimensions(dimensions: tuple[DimensionRef, ...], what: str) -> None:
    """At most MAX_DIMENSIONS, none twice."""
    if len(dimensions) > MAX_DIMENSIONS:
        raise InvalidArgumentError(f"{what} groups by at most {MAX_DIMENSIONS} dimensions")
    if len(set(dimensions)) != len(dimensions):
        raise InvalidArgumentError("a dimension is named twice")


@dataclass(frozen=True)
class ValueQuery(ReadsPeriod):
    """GOAL's "A": per group, the sum of a declared measure and its means per person, per buyer and per order."""

    by: tuple[DimensionRef, ...]
    measure: str
    epsilon: float

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)
        check_dimensions(self.by, "value")
        if not self.measure:
            raise InvalidArgumentError("name the measure as member.table.column, e.g. brand.conversions.value")


@dataclass(frozen=True)
class LoyaltyQuery(ReadsPeriod):
    """GOAL's "L": per group, repurchase rate in period 1 and retention from period 1 to period 2 (ends exclusive)."""

    by: tuple[DimensionRef, ...]
    period1: tuple[dt.date, dt.date]
    period2: tuple[dt.date, dt.date]
    epsilon: float

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)
        check_dimensions(self.by, "loyalty")
        for name, (start, end) in (("period 1", self.period1), ("period 2", self.period2)):
            if start >= end:
                raise InvalidArgumentError(f"{name}: the start date must come before the end date (end is exclusive)")
        if self.period2[0] < self.period1[1]:
            raise InvalidArgumentError("period 2 must start on or after the end of period 1")


@dataclass(frozen=True)
class SegmentInsightQuery(ReadsPeriod):
    """Per value of one dimension: share among matched people vs. among all of that member's users; TGI."""

    dimension: DimensionRef
    epsilon: float

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)


@dataclass(frozen=True)
class AttributionQuery(ReadsPeriod):
    """Credit for the matched people's conversions, by campaign or channel (and optionally one more dimension)."""

    model: str
    lookback_days: int
    by: str
    epsilon: float
    brand_dimension: DimensionRef | None = None
    click_over_view: bool = False
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)
        if self.by not in ("campaign", "channel"):
            raise InvalidArgumentError("by must be campaign or channel")


@dataclass(frozen=True)
class LiftQuery(ReadsPeriod):
    """Conversion lift of one campaign: its exposed group against its holdout."""

    campaign: str
    epsilon: float

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)
        if not self.campaign:
            raise InvalidArgumentError("name the campaign")


@dataclass(frozen=True)
class LookalikeQuery(ReadsPeriod):
    """Train on seeds (matched people passing `seed`), release the top `audience_size` platform users."""

    seed: tuple[tuple[DimensionRef, str], ...]
    audience_size: int
    epsilon: float
    delta: float
    model: str = "logistic"

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)
        if not (0 < self.delta < 1):
            raise InvalidArgumentError("delta must lie between 0 and 1 (and below 1/n)")
        if self.audience_size < 1:
            raise InvalidArgumentError("audience_size must be positive")
        if self.model not in ("logistic", "mlp"):
            raise InvalidArgumentError("model must be logistic or mlp")


@dataclass(frozen=True)
class EventFilter:
    """People with (or, `present` False, without) a row of an event table dated in [start, end).

    Optionally only rows with the given values of the table's declared dimensions count (e.g. campaign c1).
    """

    table: str
    start: dt.date
    end: dt.date
    present: bool = True
    where: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        member, dot, table = self.table.partition(".")
        if not dot or not member or not table:
            raise InvalidArgumentError("event filter: name the table as member.table, e.g. platform.exposures")
        if self.start >= self.end:
            raise InvalidArgumentError(f"event filter on {self.table}: start must come before end (end exclusive)")
        columns = [column for column, _ in self.where]
        if len(set(columns)) != len(columns):  # two values of one column: no row matches, and `absent` keeps everyone
            raise InvalidArgumentError(f"event filter on {self.table}: name each column once in `where`")

    @property
    def member(self) -> str:
        """The member whose table it is."""
        return self.table.partition(".")[0]

    def __str__(self) -> str:
        where = "".join(f" {k}={v}" for k, v in self.where)
        return f"{'' if self.present else 'no '}{self.table}{where} in [{self.start}, {self.end})"


@dataclass(frozen=True)
class ActivationQuery(ReadsPeriod):
    """Release the matched people of a segment to the platform; the requester gets a noisy size."""

    segment: tuple[tuple[DimensionRef, str], ...]
    epsilon: float
    #: 0: the policy's per-query maximum.
    delta: float = 0.0
    #: Conditions on events (retargeting), all of which a person must meet too.
    events: tuple[EventFilter, ...] = ()

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon)
        if not self.segment and not self.events:
            raise InvalidArgumentError("name the segment, e.g. {'brand.tier': 'gold'}, or event filters")
        if not (0 <= self.delta < 1):
            raise InvalidArgumentError("delta must lie between 0 and 1 (and far below 1/n), or 0 for the policy's")
