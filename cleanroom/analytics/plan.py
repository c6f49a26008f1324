"""What every query's plan is made of, and what the pipeline (`engine.QueryEngine.release`) returns.

A query family (`overlap`, `funnel`, `goal`, `attribution`, `lookalike`, `activation`) validates a request into a
`Plan`: the vectors it will read with their sensitivities (`Measurement`, `Stated`), the charges, and how a run turns
noisy vectors (`Noisy`) into released cells. Nothing here reads data or spends budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from cleanroom_client.policy import Policy

from ..errors import InvalidArgumentError
from ..privacy import noise as noise_math
from ..privacy.budget import Charge
from .cells import Cell, share, withheld
from .matched import Axis, Histogram, MatchedData, Sql
from .queries import DimensionRef


@dataclass(frozen=True)
class Noisy:
    """A vector after noise: its keys and noisy values, the scale, its variance. It holds no exact value."""

    keys: tuple[tuple[str, ...], ...]
    values: tuple[int, ...]
    scale: float

    @property
    def variance(self) -> float:
        """Variance of each cell's noise."""
        return noise_math.variance(self.scale)

    @property
    def error_95(self) -> int:
        """95% bound of each cell's noise."""
        return noise_math.error_95(self.scale)


@dataclass(frozen=True)
class Stated:
    """What a plan states about one released vector before any data is read.

    Its epsilon, its L1 sensitivity, and the unit its integers count (100: cents, 1000: thousandths), so its 95%
    error bar is known in advance.
    """

    name: str
    epsilon: float
    sensitivity: int
    unit: int = 1

    @property
    def error_95(self) -> float:
        """The 95% bound of each cell's noise, in the released unit (currency, conversions, people)."""
        return noise_math.error_95(self.sensitivity / self.epsilon) / self.unit


@dataclass(frozen=True)
class Measurement:
    """One released vector: how to read its exact values, the epsilon it gets, its L1 sensitivity, its unit."""

    name: str
    read: Callable[[MatchedData], Histogram]
    epsilon: float
    sensitivity: int
    unit: int = 1

    @property
    def stated(self) -> Stated:
        """The vector's statement without its reader."""
        return Stated(self.name, self.epsilon, self.sensitivity, self.unit)


@dataclass(frozen=True)
class AudienceRelease:
    """An audience a query releases: stored with the query's audit entry, for the recipient alone."""

    kind: str
    recipient: str
    row_ids: np.ndarray


@dataclass(frozen=True)
class Outcome:
    """What a plan's run releases (built from noisy values and DP outputs only)."""

    dimensions: tuple[str, ...]
    cells: tuple[Cell, ...]
    noise_scale: Mapping[str, float]
    audience: AudienceRelease | None = None


@dataclass(frozen=True)
class Plan:
    """A validated query: everything it will read, release and charge, decided without reading any data."""

    charges: tuple[Charge, ...]
    run: Callable[[MatchedData], Outcome]
    #: Every vector the run releases with noise (for `preview`).
    stated: tuple[Stated, ...] = ()


@dataclass(frozen=True)
class QueryAnswer:
    """What the querying member receives."""

    dimensions: tuple[str, ...]
    cells: tuple[Cell, ...]
    epsilon_spent: float
    epsilon_remaining: float
    noise_scale: Mapping[str, float]
    audit_sequence: int
    own_set_size: int = field(default=0)
    #: The audience released to the recipient (lookalike, activation).
    audience: str = ""
    #: The refresh period whose data was read (0: the match); None for a preview, which reads none.
    refresh_period: int | None = None


def dimension_domain(policy: Policy, ref: DimensionRef) -> tuple[str, ...]:
    """The declared domain of a users dimension; INVALID_ARGUMENT naming the declared ones otherwise."""
    spec = policy.table(ref.member, "users")
    if spec is None or ref.column not in spec.dimensions:
        declared = [f"{t.member}.{c}" for t in policy.tables.values() if t.table == "users" for c in t.dimensions]
        raise InvalidArgumentError(f"{ref} is not a declared dimension of a users table (declared: {declared})")
    return spec.dimensions[ref.column]


def count_cell(n: Noisy, keys: tuple[str, ...], measure: str, min_group: int) -> Cell:
    """The noisy count of one cell, withheld below the minimum group size."""
    value = n.values[n.keys.index(keys)]
    if value < min_group:
        return withheld(keys, measure)
    return Cell(keys, measure, float(value), float(n.error_95), False)


def shares_of(n: Noisy, group_of: Callable[[tuple[str, ...]], object], measure: str, min_group: int) -> list[Cell]:
    """Each cell's share of the noisy total of its group (post-processing)."""
    totals: dict[object, float] = {}
    sizes: dict[object, int] = {}
    for keys, value in zip(n.keys, n.values, strict=True):
        g = group_of(keys)
        totals[g] = totals.get(g, 0.0) + max(value, 0)
        sizes[g] = sizes.get(g, 0) + 1
    out = []
    for keys, value in zip(n.keys, n.values, strict=True):
        g = group_of(keys)
        s = share(max(value, 0), totals[g], sizes[g], n.error_95) if value >= min_group else None
        out.append(withheld(keys, measure) if s is None else Cell(keys, measure, s[0], s[1], False))
    return out


def reader(axes: tuple[Axis, ...], sql: Sql) -> Callable[[MatchedData], Histogram]:
    """How a measurement reads its exact histogram over `axes` (called only after the budget is reserved)."""
    return lambda data: data.histogram(axes, sql)


def activation_threshold(epsilon: float, delta: float, sensitivity: int) -> int:
    """How far above the minimum size a noisy segment size must be for its list to be released.

    With noise of scale c/epsilon (c the sensitivity), a segment whose true size is below the minimum k in one of two
    neighbouring datasets is at most k + c - 1 in the other; it is released there only if the noise exceeds the
    threshold minus (c - 1), which the discrete Laplace tail P(X >= t) = a^t / (1 + a) < e^(-t epsilon / c) keeps
    below delta for t = c ln(1/delta) / epsilon. So the release decision is (epsilon, delta)-DP.
    """
    return math.ceil(sensitivity * math.log(1 / delta) / epsilon) + sensitivity - 1
