"""What every query's plan is made of, and what the pipeline (`engine.QueryEngine.release`) returns.

A query family (`overlap`, `funnel`, `goal`, `attribution`, `lookalike`, `activation`) validates a request into a
`Plan`: the vectors it will read with their sensitivities (`Measurement`, `Stated`), the charges, and how a run turns
noisy vectors (`Noisy`) into released cells. Nothing here reads data or spends budget.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from cleanroom_client.policy import Policy

from ..errors import InvalidArgumentError
from ..privacy import noise as noise_math
from ..privacy.budget import Charge
from .cells import NO_DENOMINATOR, Cell, below_minimum_group, share, withheld
from .matched import Axis, Histogram, MatchedData, Sql
from .queries import DimensionRef

T = TypeVar("T")


@dataclass(frozen=True)
class Noisy:
    """A vector after noise: its keys and noisy values, the scale, its variance. It holds no exact value."""

    keys: tuple[tuple[str, ...], ...]
    values: tuple[int, ...]
    scale: float

    @functools.cached_property
    def _positions(self) -> dict[tuple[str, ...], int]:
        return {k: i for i, k in enumerate(self.keys)}

    def index(self, keys: tuple[str, ...]) -> int:
        """Where cell `keys` is (a dict, so deriving every cell of a 10,000-cell answer stays linear)."""
        return self._positions[keys]

    @property
    def variance(self) -> float:
        """Variance of each cell's noise."""
        return noise_math.variance(self.scale)

    @property
    def error_95(self) -> int:
        """95% bound of each cell's noise."""
        return noise_math.error_95(self.scale)

    @staticmethod
    def typical(stated: Stated, keys: Sequence[tuple[str, ...]], values: Sequence[float]) -> Noisy:
        """The vector a preview assumes: `values` (one per cell, in the released unit) at the scale `stated` states.

        A family's `finish` sees the same kind of input as after a real run, so every cell a preview derives has the
        bar the released cell has when its noisy inputs are these values: the preview's bars equal the answer's by
        construction, with no formula stated twice.
        """
        if len(values) != len(keys):
            raise InvalidArgumentError(f"typical[{stated.name!r}]: {len(values)} values for {len(keys)} cells")
        ints = tuple(round(v * stated.unit) for v in values)
        return Noisy(tuple(keys), ints, stated.sensitivity / stated.epsilon)


#: The group a preview assumes when the request names none: people per cell (buyers, converters among them).
TYPICAL_GROUP = 1000.0


@dataclass(frozen=True)
class Typical:
    """What a preview assumes of the data it never reads, and what it is asked to solve for.

    `group`: people per cell; `values`: per released vector, its cells' typical value in the released unit (one
    number for every cell, or one per cell), overriding the family's defaults (which follow from `group` and the
    policy's bounds). `within` > 0 asks, for every cell, the least epsilon in the policy's per-query range at which
    its 95% bar is within that fraction of its typical value. All of it comes from the request: a preview is the
    same for any data.
    """

    group: float = TYPICAL_GROUP
    values: Mapping[str, float | tuple[float, ...]] = field(default_factory=dict)
    within: float = 0.0


@dataclass(frozen=True)
class Previewed:
    """A preview's answer: each cell the query would release, at typical values, with its bar; the vectors assumed."""

    cells: tuple[Cell, ...]
    #: Each released vector's typical value per cell (released unit; the first cell's when they differ).
    typical: Mapping[str, float]


#: The cells of a plan's vectors: one tuple of keys for all, or per vector name.
VectorKeys = Sequence[tuple[str, ...]] | Mapping[str, Sequence[tuple[str, ...]]]

#: How a plan previews: the typical values, and the query's whole epsilon (the plan's own, or another to compare).
Preview = Callable[[Typical, float], Previewed]


def histogram_preview(
    stated: Sequence[Stated],
    epsilon: float,
    keys: VectorKeys,
    finish: Callable[[Mapping[str, Noisy], int], list[Cell]],
    min_group: int,
    defaults: Callable[[float], Mapping[str, float | tuple[float, ...]]] | None = None,
) -> Preview:
    """The preview of a plan of noisy histograms: its family's `finish` over typical vectors (`Noisy.typical`).

    At another whole epsilon e, every vector's epsilon is its share of the plan's `epsilon` times e: each family
    splits its epsilon in fixed fractions, so that is exactly the plan the same request at e would build.
    `keys`: every vector's cells, or per vector name when they differ (value's people-by-orders histogram and its
    sum per group). `defaults(group)`: the family's typical value per vector (released unit); a vector without one
    is `group`.
    """

    def preview(t: Typical, at: float) -> Previewed:
        base = defaults(t.group) if defaults else {}
        noisy, used = {}, {}
        for s in stated:
            cells = keys[s.name] if isinstance(keys, Mapping) else keys
            v = t.values.get(s.name, base.get(s.name, t.group))
            values = tuple(float(x) for x in v) if isinstance(v, tuple) else (float(v),) * len(cells)
            noisy[s.name] = Noisy.typical(replace(s, epsilon=s.epsilon * at / epsilon), cells, values)
            used[s.name] = values[0] if values else 0.0
        return Previewed(tuple(finish(noisy, min_group)), used)

    return preview


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
    #: Every vector the run releases with noise (its scale, for `preview`).
    stated: tuple[Stated, ...] = ()
    #: Every cell the run would release, from typical values (`Typical`), at a given whole epsilon: no data read.
    preview: Preview | None = None
    #: The answer's dimensions (the preview's, which has no run's `Outcome`).
    dimensions: tuple[str, ...] = ()


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
    #: A preview's typical value per cell of each released vector (released unit): what its cells assumed.
    typical: Mapping[str, float] = field(default_factory=dict)
    #: A preview asked `within`: per cell, the least epsilon giving that relative bar (0: none in the range).
    epsilon_needed: tuple[float, ...] = ()


def dimension_domain(policy: Policy, ref: DimensionRef) -> tuple[str, ...]:
    """The declared domain of a users dimension; INVALID_ARGUMENT naming the declared ones otherwise."""
    spec = policy.table(ref.member, "users")
    if spec is None or ref.column not in spec.dimensions:
        declared = [f"{t.member}.{c}" for t in policy.tables.values() if t.table == "users" for c in t.dimensions]
        raise InvalidArgumentError(f"{ref} is not a declared dimension of a users table (declared: {declared})")
    return spec.dimensions[ref.column]


def count_cell(n: Noisy, keys: tuple[str, ...], measure: str, min_group: int) -> Cell:
    """The noisy count of one cell, withheld below the minimum group size."""
    value = n.values[n.index(keys)]
    if value < min_group:
        return withheld(keys, measure, below_minimum_group(min_group))
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
        why = below_minimum_group(min_group) if value < min_group else NO_DENOMINATOR
        out.append(withheld(keys, measure, why) if s is None else Cell(keys, measure, s[0], s[1], False))
    return out


def reader(axes: tuple[Axis, ...], sql: Sql) -> Callable[[MatchedData], Histogram]:
    """How a measurement reads its exact histogram over `axes` (called only after the budget is reserved)."""
    return lambda data: data.histogram(axes, sql)


def read_once(read: Callable[[MatchedData], T]) -> Callable[[MatchedData], T]:
    """`read`, run at most once however often it is called: vectors cut from one result share one read.

    Value's histogram and sum, lift's three vectors and attribution's two each come from one statement (or one
    pass over the touches). A plan builds its own, so the exact result lives only as long as the plan's run.
    """
    done: list[T] = []

    def once(data: MatchedData) -> T:
        if not done:
            done.append(read(data))
        return done[0]

    return once


def activation_threshold(epsilon: float, delta: float, sensitivity: int) -> int:
    """How far above the minimum size a noisy segment size must be for its list to be released.

    With noise of scale c/epsilon (c the sensitivity), a segment whose true size is below the minimum k in one of two
    neighbouring datasets is at most k + c - 1 in the other; it is released there only if the noise exceeds the
    threshold minus (c - 1), which the discrete Laplace tail P(X >= t) = a^t / (1 + a) < e^(-t epsilon / c) keeps
    below delta for t = c ln(1/delta) / epsilon. So the release decision is (epsilon, delta)-DP.
    """
    return math.ceil(sensitivity * math.log(1 / delta) / epsilon) + sensitivity - 1
