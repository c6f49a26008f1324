"""Lookalike modelling: features from the platform's users, seeds from the join, DP-SGD training with opacus.

`lookalike` at the end is the query's plan for `QueryEngine.release`.

Features (`training_plan`), all decided from the policy and the catalog, never from data statistics, and each in
[0, 1] so the per-example clipping of DP-SGD is the only sensitivity argument needed:
  * every declared dimension of the recipient's users table, one-hot over its declared domain and `none`;
  * every declared measure of that table, clamped to its policy bounds and scaled to [0, 1];
  * per-person aggregates of every event table of the recipient that the policy declares with a time column
    (exposures, clicks, visits, stage history): the person's row count, and the count per declared value of each
    of the table's dimensions (e.g. `exposures:kind=click`), each clamped to the table's `max_per_person`
    (`DEFAULT_EVENT_CAP` when the policy states none) and divided by it. A person's aggregates depend on that
    person's rows alone.

Privacy: the training set is every user of the recipient (the platform); the label says whether the user is a
matched person who passes the seed filter (e.g. the brand's gold tier). Removing one brand users row flips up to
c labels (c the join's stability). Removing one platform users row removes its own example (with its event rows)
and changes up to c matched pairs of others: up to c label flips. A removed example is the same as one replaced by
an example whose gradient is zero (the update is the clipped gradient sum, scaled by a constant that does not
depend on the number of users: `lr_scale`), so both neighbours are at most c + 1 replace-one changes of training
examples. DP-SGD (Poisson sampling with opacus' own sample rate, per-example gradient clipping to norm
`MAX_GRAD_NORM`, Gaussian noise σ·`MAX_GRAD_NORM`) is accounted for exactly that adjacency, `group` = c + 1
replace-one changes, by `cleanroom.privacy.accounting` (PLDs from dp_accounting), not by opacus' accountant, whose
add/remove-one figure understates it. σ is the smallest that accountant allows for the target (ε, δ), and the
budget is charged the accountant's ε for that σ. Scoring every platform user, and releasing the top of that
ranking to the platform, is post-processing of the model: seeds are deliberately not removed from the audience,
since removing them would release who the seeds are.

Quality (`audience_counts`): three exact counts, given the released model: the seeds among all scored users, the
seeds in the released audience, and the users scored. The engine releases them with noise and reports the
audience's lift over random (its precision over the base rate). It is measured on the audience as released, seeds
included: a held-out split would leave a fraction of the seeds, too few to rise above noise of scale
(2c + 2)/ε at the sizes a clean room sees, and DP-SGD's guarantee limits how much the model can memorise any one
seed.

Randomness: opacus' `secure_mode` needs torchcsprng, which has no build for this torch (none on the package index
for torch 2.x), so it is off. Instead each training gets its own torch generators for the gradient noise
(`noise_generator`) and for the Poisson sampling, each seeded with 63 bits from the OS CSPRNG (`os.urandom`): the
seed is unpredictable and never reused, but torch's CPU generator (Mersenne Twister) is not a CSPRNG, and without
secure mode opacus does not harden its floating-point Gaussian samples against the attacks on their low-order bits
(see the README's known limits).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cleanroom_client.policy import Policy, QueryType, TableSpec

from ..collaborations import Collaboration
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..principals import Principal
from ..privacy import accounting
from ..privacy import noise as noise_math
from ..privacy.budget import Charge
from ..storage.database import quote_ident
from .audiences import audience_recipient, delta_for
from .cells import NO_DENOMINATOR, Cell, below_minimum_group, withheld
from .matched import NONE, Catalog, MatchedData, Sql
from .plan import AudienceRelease, Outcome, Plan, Previewed, QueryAnswer, Stated, Typical
from .queries import DimensionRef, EventFilter, LookalikeQuery

if TYPE_CHECKING:  # torch and opacus (seconds to import) load when a lookalike is first trained, not at startup
    import torch
    from torch import nn

    from .engine import QueryEngine

MAX_GRAD_NORM = 1.0
EPOCHS = 3
#: Poisson sampling rate of DP-SGD: a constant, so the accounting never depends on how many users there are.
SAMPLE_RATE = 0.02
#: SGD's step on the mean clipped gradient of an expected batch.
LEARNING_RATE = 0.5
#: The share of a lookalike's epsilon spent on its quality estimate (the rest is DP-SGD's target).
QUALITY_SHARE = 0.4
#: The quality estimate's three counts are each bounded at this level, so all three hold at once with 95%.
QUALITY_ALPHA = 0.05 / 3
#: The cap on an event feature's count when the policy states no `max_per_person` for its table.
DEFAULT_EVENT_CAP = 10


@dataclass(frozen=True)
class TrainingData:
    """One row per platform user: its surrogate id, its features and its (exact, private) label."""

    row_ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    feature_names: tuple[str, ...]


@dataclass(frozen=True)
class TrainedModel:
    """Scores for every user, the training's accounted epsilon and its noise multiplier."""

    scores: np.ndarray
    epsilon: float
    noise_multiplier: float


def _filters(policy: Policy, filters: Mapping[DimensionRef, str], what: str) -> None:
    if not filters:
        raise InvalidArgumentError(f"name the {what}, e.g. {{'brand.tier': 'gold'}}")
    for ref, value in filters.items():
        spec = policy.table(ref.member, "users")
        if spec is None or ref.column not in spec.dimensions:
            raise InvalidArgumentError(f"{what}: {ref} is not a declared dimension of a users table")
        if value not in spec.dimensions[ref.column]:
            raise InvalidArgumentError(f"{what}: {value!r} is not in the domain of {ref}")


def segment_sql(
    catalog: Catalog,
    filters: Mapping[DimensionRef, str],
    out_member: str,
    events: Sequence[EventFilter] = (),
    times: Mapping[str, str] | None = None,
) -> Sql:
    """SQL for the `out_member` row ids of the matched people passing every filter and event condition.

    `times` maps each event table (`member.table`) to its time column (from the policy).
    """
    joins: list[str] = []
    wheres: list[str] = ["TRUE"]
    people = catalog.pairs("?")
    params: list[object] = [catalog.id] * people.count("?")  # the collaboration, once per join the people read
    for i, (ref, value) in enumerate(filters.items()):
        alias = f"f{i}"
        table = catalog.table(ref.member, "users", [ref.column])
        joins.append(f"JOIN {table} {alias} ON {alias}.row_id = m.{catalog.side(ref.member)}")
        wheres.append(f"CAST({alias}.{quote_ident(ref.column)} AS VARCHAR) = ?")
        params.append(value)
    for j, ev in enumerate(events):
        member, _, name = ev.table.partition(".")
        time = (times or {})[ev.table]
        table = catalog.table(member, name, [time, *(k for k, _ in ev.where)])
        alias = f"e{j}"
        conds = [
            f"{alias}.row_id = m.{catalog.side(member)}",
            f"CAST({alias}.{quote_ident(time)} AS DATE) >= ?",
            f"CAST({alias}.{quote_ident(time)} AS DATE) < ?",
            *(f"CAST({alias}.{quote_ident(k)} AS VARCHAR) = ?" for k, _ in ev.where),
        ]
        wheres.append(
            f"{'' if ev.present else 'NOT '}EXISTS (SELECT 1 FROM {table} {alias} WHERE {' AND '.join(conds)})"
        )
        params += [ev.start, ev.end, *(v for _, v in ev.where)]
    text = (
        f"SELECT DISTINCT m.{catalog.side(out_member)} AS row_id FROM {people} m {' '.join(joins)}"
        f" WHERE {' AND '.join(wheres)}"
    )
    return Sql(text, params)


@dataclass(frozen=True)
class EventFeatures:
    """Per-person counts from one event table of the recipient: all rows, and rows per declared dimension value."""

    spec: TableSpec
    #: Each feature's name and its condition: None (every row) or (dimension, value).
    counts: tuple[tuple[str, tuple[str, str] | None], ...]
    #: Counts are clamped to this and divided by it: the policy's `max_per_person`, or `DEFAULT_EVENT_CAP`.
    cap: int


@dataclass(frozen=True)
class TrainingPlan:
    """What training will read, decided from the policy and the catalog alone."""

    sql: Sql
    spec: TableSpec
    dimensions: tuple[str, ...]
    measures: tuple[str, ...]
    events: tuple[EventFeatures, ...] = ()


def event_features(catalog: Catalog, policy: Policy, recipient: str) -> tuple[EventFeatures, ...]:
    """The recipient's uploaded event tables (declared with a time column), with the declared dimensions present."""
    out = []
    for spec in policy.tables.values():
        if spec.member != recipient or spec.table == "users" or spec.time is None:
            continue
        present = set(catalog.columns(recipient, spec.table))
        if not present:
            continue  # not uploaded: a fact of the catalog, not of anyone's data
        counts: list[tuple[str, tuple[str, str] | None]] = [(f"{spec.table}:rows", None)]
        counts += [
            (f"{spec.table}:{d}={v}", (d, v)) for d, domain in spec.dimensions.items() if d in present for v in domain
        ]
        out.append(EventFeatures(spec, tuple(counts), spec.max_per_person or DEFAULT_EVENT_CAP))
    return tuple(out)


def training_plan(catalog: Catalog, policy: Policy, recipient: str, seed: Mapping[DimensionRef, str]) -> TrainingPlan:
    """Features (see the module docstring) of every recipient user, and the seed labels."""
    _filters(policy, seed, "seed")
    spec: TableSpec | None = policy.table(recipient, "users")
    if spec is None:
        raise FailedPreconditionError(f"the policy declares no users table for {recipient}")
    users = catalog.table(recipient, "users")
    present = set(catalog.columns(recipient, "users"))
    dims = tuple(c for c in spec.dimensions if c in present)
    measures = tuple(c for c in spec.measures if c in present)
    events = event_features(catalog, policy, recipient)
    if not dims and not measures and not events:
        raise FailedPreconditionError(f"{recipient} uploaded no declared dimension, measure or event to learn from")
    seed_sql = segment_sql(catalog, seed, recipient)
    params: list[object] = list(seed_sql.params)
    cols = [f"CAST(u.{quote_ident(d)} AS VARCHAR)" for d in dims] + [
        f"CAST(u.{quote_ident(m)} AS DOUBLE)" for m in measures
    ]
    joins = []
    for i, ev in enumerate(events):
        aggregates = []
        for j, (_, condition) in enumerate(ev.counts):
            if condition is None:
                aggregates.append(f"COUNT(*) AS n{j}")
            else:
                aggregates.append(f"COUNT(*) FILTER (WHERE CAST({quote_ident(condition[0])} AS VARCHAR) = ?) AS n{j}")
                params.append(condition[1])
            cols.append(f"COALESCE(e{i}.n{j}, 0)")
        table = catalog.table(recipient, ev.spec.table)
        joins.append(
            f"LEFT JOIN (SELECT row_id, {', '.join(aggregates)} FROM {table} GROUP BY row_id) e{i}"
            f" ON e{i}.row_id = u.row_id"
        )
    text = (
        f"SELECT u.row_id, s.row_id IS NOT NULL AS label, {', '.join(cols)} FROM {users} u"
        f" LEFT JOIN ({seed_sql.text}) s ON s.row_id = u.row_id {' '.join(joins)} ORDER BY u.row_id"
    )
    return TrainingPlan(Sql(text, params), spec, dims, measures, events)


def training_data(data: MatchedData, plan: TrainingPlan) -> TrainingData:
    """Read the features and the (exact, private) labels of every recipient user."""
    result = data.arrays(plan.sql)
    names: list[str] = []
    blocks: list[np.ndarray] = []
    columns = iter(list(result)[2:])
    for d in plan.dimensions:
        column = np.asarray(result[next(columns)], dtype=object)
        values = np.where(np.asarray([v is None for v in column]), NONE, column)
        for value in (*plan.spec.dimensions[d], NONE):
            names.append(f"{d}={value}")
            blocks.append((values == value).astype(np.float32))
    for m in plan.measures:
        lo, hi = plan.spec.measures[m]
        raw = np.asarray(result[next(columns)], dtype=np.float64)
        raw = np.nan_to_num(raw, nan=lo, posinf=hi, neginf=lo)
        names.append(m)
        blocks.append(((np.clip(raw, lo, hi) - lo) / (hi - lo)).astype(np.float32))
    for ev in plan.events:
        for name, _ in ev.counts:
            raw = np.asarray(result[next(columns)], dtype=np.float64)
            names.append(name)
            blocks.append((np.clip(raw, 0, ev.cap) / ev.cap).astype(np.float32))
    rows = len(result["row_id"])
    return TrainingData(
        row_ids=np.asarray(result["row_id"], dtype=np.int64),
        features=np.stack(blocks, axis=1) if rows else np.zeros((0, len(names)), dtype=np.float32),
        labels=np.asarray(result["label"], dtype=np.float32),
        feature_names=tuple(names),
    )


def _model(kind: str, d: int) -> nn.Module:
    from torch import nn

    if kind == "logistic":
        linear = nn.Linear(d, 1)
        nn.init.zeros_(linear.weight)  # no random initial ranking: the order comes from what is learned
        nn.init.zeros_(linear.bias)
        return linear
    if kind == "mlp":
        return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 1))
    raise InvalidArgumentError("model must be logistic or mlp")


def _generator() -> torch.Generator:
    """A torch generator seeded with 63 bits from the OS CSPRNG."""
    import torch

    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)


@dataclass(frozen=True)
class _Batch:
    """Features and labels of the examples one step samples, gathered at once (`_Examples.__getitems__`)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class _Examples:
    """The training examples as a map-style dataset that gives the loader a whole batch in one gather.

    torch's loader fetches a batch one `dataset[i]` at a time and stacks the results (for 200,000 users, 600,000
    Python calls in a training); with `__getitems__` the sampled indices become one index into each tensor. The
    batches are the same rows in the same order, so training is unchanged.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> _Batch:
        return _Batch(self.x[indices], self.y[indices])


def _collate(batch: _Batch) -> list[torch.Tensor]:
    """The loader's batch as [features, labels] (opacus builds an empty batch of the same structure)."""
    return [batch.x, batch.y]


@dataclass(frozen=True)
class TrainingNoise:
    """DP-SGD's noise multiplier and the epsilon the accountant charges for it: fixed before any data is read."""

    noise_multiplier: float
    epsilon: float


@functools.lru_cache(maxsize=256)
def training_noise(target_epsilon: float, delta: float, group: int) -> TrainingNoise:
    """Calibrate DP-SGD for (target_epsilon, delta) against neighbours that differ in up to `group` labels.

    The sample rate and the number of steps are constants (`SAMPLE_RATE`, `EPOCHS`), not functions of the number of
    users, so the noise and the charged epsilon depend on the request and the policy alone: the query is validated,
    and its charge fixed, before any data is read. InvalidArgumentError when the target cannot be met.
    """
    steps = EPOCHS * round(1 / SAMPLE_RATE)
    try:
        sigma = accounting.calibrate_noise(target_epsilon, delta, SAMPLE_RATE, steps, group)
    except ValueError as exc:
        raise InvalidArgumentError(f"lookalike: {exc}") from exc
    spent = accounting.dpsgd_epsilon(sigma, SAMPLE_RATE, steps, delta, group)
    if not math.isfinite(spent) or spent > target_epsilon:
        raise InvalidArgumentError(f"lookalike: epsilon {target_epsilon:g} cannot be met at delta {delta:g}")
    return TrainingNoise(sigma, spent)


#: DP-SGD's steps in all: a constant of the protocol (what progress reports count to), never a function of data.
TRAINING_STEPS = EPOCHS * round(1 / SAMPLE_RATE)


def train(
    data: TrainingData,
    noise: TrainingNoise,
    population: int,
    kind: str = "logistic",
    on_step: Callable[[int, int], None] | None = None,
) -> TrainedModel:
    """DP-SGD on every user with the given noise; scores every user. Total: any data gives a model.

    Poisson sampling at the fixed rate `SAMPLE_RATE` (each example in each step with that probability), for
    `EPOCHS / SAMPLE_RATE` steps, per-example clipping to `MAX_GRAD_NORM`, Gaussian noise of `noise.noise_multiplier`
    times that norm: exactly what `training_noise` accounted for. Each step moves the parameters by the noisy sum of
    clipped gradients times `LEARNING_RATE / (SAMPLE_RATE * population)`, where `population` is a public size (the
    recipient's set size as disclosed at the match), not the number of examples: opacus' mean reduction would divide
    by the expected batch size of this very dataset, a factor that differs between neighbours.

    `on_step(done, TRAINING_STEPS)` is called after every step (an empty Poisson batch is a step too), so progress
    counts to a constant whatever the data.
    """
    import torch
    from opacus import PrivacyEngine
    from torch import nn
    from torch.utils.data import DataLoader

    n = len(data.labels)
    # Every feature lies in [0, 1] (one-hot dimensions, measures and event counts scaled by policy bounds): map it to
    # [-1, 1]. The scaling is fixed, not learned from the population, so one platform row more or less changes only
    # its own example (population statistics would move every example, outside what the accountant covers).
    x = torch.from_numpy((2 * data.features - 1).astype(np.float32))
    y = torch.from_numpy(data.labels)
    # A loader of exactly 1 / SAMPLE_RATE batches: opacus' Poisson loader then samples at SAMPLE_RATE for that many
    # steps an epoch (DPDataLoader.from_data_loader takes its rate from the loader's length).
    steps_per_epoch = round(1 / SAMPLE_RATE)
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] = DataLoader(
        _Examples(x, y),  # type: ignore[arg-type]  # map-style by protocol, not a torch Dataset subclass
        collate_fn=_collate,  # type: ignore[arg-type]  # `_Examples.__getitems__` gives a _Batch, not a list
        batch_sampler=[b.tolist() for b in np.array_split(np.arange(n), steps_per_epoch)],
        generator=_generator(),
    )
    model = _model(kind, x.shape[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr_scale(population))
    with warnings.catch_warnings():
        # opacus warns that secure_mode is off (torchcsprng is not available here) and about hook details
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine()
        model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise.noise_multiplier,
            max_grad_norm=MAX_GRAD_NORM,
            poisson_sampling=True,
            loss_reduction="sum",
            noise_generator=_generator(),
        )
        if len(loader) != steps_per_epoch or getattr(loader, "sample_rate", None) != 1 / steps_per_epoch:
            raise ArithmeticError("opacus' Poisson loader does not sample as accounted")
        loss = nn.BCEWithLogitsLoss(reduction="sum")
        model.train()
        done = 0
        for _ in range(EPOCHS):
            for xb, yb in loader:
                if len(xb):
                    optimizer.zero_grad()
                    loss(model(xb).squeeze(-1), yb).backward()
                    optimizer.step()
                done += 1
                if on_step is not None:
                    on_step(done, TRAINING_STEPS)
    model.eval()
    with torch.no_grad():
        scores = torch.sigmoid(model(x).squeeze(-1)).numpy()
    return TrainedModel(scores, noise.epsilon, float(optimizer.noise_multiplier))


def lr_scale(population: int) -> float:
    """The step size on the sum of clipped gradients: LEARNING_RATE over the expected batch of `population` users."""
    return LEARNING_RATE / (SAMPLE_RATE * max(population, round(1 / SAMPLE_RATE)))


def top(scores: np.ndarray, size: int) -> np.ndarray:
    """Indices of the `size` highest scores."""
    if size >= len(scores):
        return np.arange(len(scores))
    return np.argpartition(-scores, size - 1)[:size]


@dataclass(frozen=True)
class AudienceCounts:
    """Exact counts behind the quality estimate, given the released model (they end inside the engine's run)."""

    #: Seeds among all scored users.
    seeds: int
    #: Seeds in the audience (the top `size` by score).
    hits: int
    #: Users scored.
    users: int


def audience_counts(labels: np.ndarray, audience: np.ndarray) -> AudienceCounts:
    """The seeds overall and in the audience (indices into `labels`), and the number of users.

    L1 sensitivity of the three together, for a fixed model and audience size: 2c + 2. One brand row flips up to c
    labels (seeds and hits move by up to c each). One platform row removes its own example (users by 1, and the
    audience takes the next-ranked user in its place, so hits move by 1) and changes up to c pairs of others (c
    each), or if it was itself a matched seed, c - 1 others besides its own.
    """
    return AudienceCounts(int(labels.sum()), int(labels[audience].sum()), len(labels))


def quality_cells(noisy: Sequence[int], scale: float, size: int, min_group: int) -> list[Cell]:
    """The audience's quality from the noisy (seeds, hits, users) (post-processing): lift over random and its parts.

    lift = (hits / audience) / (seeds / users), 1 for a random audience. Each noisy count is within
    `error_bound(scale, QUALITY_ALPHA)` of its true value with probability at least 1 - QUALITY_ALPHA, so all three
    are at once with probability at least 95% (union bound); intersected with what the truth must satisfy
    (0 <= hits <= min(audience, seeds), seeds <= users), that box holds the true counts, and each released interval
    is the range of its ratio over the box: honest, not a normal approximation. A cell's value is clamped into its
    interval (post-processing; precision, base rate and recall also to [0, 1]) and its `error_95` is the larger
    distance to an end, so value ± error_95 covers the interval. Lift is withheld when the noisy seeds are below the
    policy's minimum group size or the box admits no seeds at all (the lift is then unbounded).
    """
    seeds, hits, users = (float(v) for v in noisy)
    t = float(noise_math.error_bound(scale, QUALITY_ALPHA))
    # The box of true counts consistent with the noisy ones (each within t) and with each other.
    u_lo = max(users - t, 1.0)
    u_hi = max(users + t, u_lo)
    a_lo, a_hi = min(float(size), u_lo), min(float(size), u_hi)  # the audience's true size: all users if fewer
    s_hi = max(min(seeds + t, u_hi), 0.0)
    h_hi = max(min(hits + t, a_hi, s_hi), 0.0)
    h_lo = min(max(hits - t, 0.0), h_hi)
    s_lo = min(max(seeds - t, h_lo), s_hi)
    h, s_, u = min(max(hits, h_lo), h_hi), min(max(seeds, s_lo), s_hi), min(max(users, u_lo), u_hi)

    def cell(measure: str, value: float, lo: float, hi: float) -> Cell:
        value = min(max(value, lo), hi)
        return Cell(("quality",), measure, value, max(value - lo, hi - value), False)

    out = [
        cell("precision", h / min(float(size), u), h_lo / a_hi, min(h_hi / a_lo, 1.0)),
        cell(
            "recall",
            h / s_ if s_ > 0 else 0.0,
            h_lo / s_hi if s_hi > 0 else 0.0,
            min(h_hi / s_lo, 1.0) if s_lo > 0 else 1.0,
        ),
        cell("base_rate", s_ / u, s_lo / u_hi, min(s_hi / u_lo, 1.0)),
    ]
    if seeds < min_group or s_lo <= 0:
        # The same cells in the same order as a released lift: the answer's shape never depends on the noise.
        why = f"the seeds are {below_minimum_group(min_group)}" if seeds < min_group else NO_DENOMINATOR
        names = ("lift_over_random", "lift_lower_95", "lift_upper_95")
        return [withheld(("quality",), m, why) for m in names] + out
    # lift = h u / (min(size, u) s): increasing in h and in u, decreasing in s, so its range is at the box's corners
    lo = h_lo * u_lo / (a_lo * s_hi)
    hi = h_hi * u_hi / (a_hi * s_lo)
    point = cell("lift_over_random", h * u / (min(float(size), u) * s_), lo, hi)
    return [
        point,
        Cell(("quality",), "lift_lower_95", lo, 0.0, False),
        Cell(("quality",), "lift_upper_95", hi, 0.0, False),
        *out,
    ]


# -- the queries ------------------------------------------------------------------------------------------------
def lookalike(
    engine: QueryEngine,
    principal: Principal,
    collaboration_id: str,
    q: LookalikeQuery,
    preview: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> QueryAnswer:
    """Train a DP-SGD model on the seeds and release the top `audience_size` recipient users to the recipient.

    The requester receives the audience's name and requested size, the epsilon the accountant charged (for up to
    c + 1 replace-one changes of training examples: see `lookalike`), and the audience's quality as a DP lift
    over random: the share of the audience that are seeds over the share of all scored users that are seeds,
    from three noisy counts (seeds, seeds in the audience, users scored; L1 sensitivity 2c + 2) at a share
    of epsilon (`lookalike.QUALITY_SHARE`, 40%); the rest is DP-SGD's target. Its 95% bound is honest: each count is
    within its 1 - 0.05/3 noise bound with probability at least 1 - 0.05/3 (exact for discrete Laplace), so
    all three are at once with probability at least 95% (union bound), and the lift's interval is the range
    of the ratio over that box. The audience goes to the recipient, whose ledger is charged too.

    `progress(step, TRAINING_STEPS)` is called during training, which runs only after the budget is reserved;
    its total is a constant, so progress tells the caller nothing but that training is under way.
    """
    eval_eps = q.epsilon * QUALITY_SHARE

    def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
        policy = collaboration.policy
        recipient = audience_recipient(policy, principal.name, catalog)
        delta_for(catalog, q.delta)
        if q.audience_size < policy.min_group_size:
            raise InvalidArgumentError(
                f"audience_size {q.audience_size} is below the policy's minimum group size {policy.min_group_size}"
            )
        plan = training_plan(catalog, policy, recipient, dict(q.seed))
        c = engine.stability(catalog)
        noise = training_noise(q.epsilon - eval_eps, q.delta, c + 1)
        population = catalog.set_size(recipient)  # disclosed at the match: a public step-size constant
        sensitivity = 2 * c + 2

        def run(data: MatchedData) -> Outcome:
            training = training_data(data, plan)
            model = train(training, noise, population, q.model, on_step=progress)
            chosen = top(model.scores, q.audience_size)
            exact = audience_counts(training.labels, chosen)
            noisy, scale = engine.noise.release([exact.seeds, exact.hits, exact.users], sensitivity, eval_eps)
            audience = training.row_ids[chosen]
            spent_training, noise_multiplier = model.epsilon, model.noise_multiplier
            del training, model, exact  # exact labels and counts end here
            cells = (
                Cell(("audience",), "audience_size", float(q.audience_size), 0.0, False),
                *quality_cells(noisy, scale, q.audience_size, policy.min_group_size),
                Cell(("training",), "epsilon_accounted", spent_training, 0.0, False),
                Cell(("training",), "noise_multiplier", noise_multiplier, 0.0, False),
            )
            return Outcome(
                ("part",), cells, {"quality": scale}, audience=AudienceRelease("lookalike", recipient, audience)
            )

        def preview(t: Typical, at: float) -> Previewed:
            # (seeds, hits, users): `group` seeds among the recipient's users (public), an audience twice as rich in
            # seeds as a random one
            v = t.values.get("quality")
            if isinstance(v, tuple) and len(v) == 3:
                seeds, hits, users = v
            else:
                users = float(max(population, 1))
                seeds = min(t.group, users)
                hits = min(2 * seeds * q.audience_size / users, float(q.audience_size), seeds)
            cells = (
                Cell(("audience",), "audience_size", float(q.audience_size), 0.0, False),
                *quality_cells(
                    [round(seeds), round(hits), round(users)],
                    sensitivity / (at * QUALITY_SHARE),
                    q.audience_size,
                    policy.min_group_size,
                ),
                Cell(("training",), "epsilon_accounted", noise.epsilon, 0.0, False),
                Cell(("training",), "noise_multiplier", noise.noise_multiplier, 0.0, False),
            )
            return Previewed(cells, {"quality": seeds})

        # The charge is fixed here, before any data is read: success and failure debit the same amount.
        charge = noise.epsilon + eval_eps
        charges = (Charge(principal.name, charge, q.delta), Charge(recipient, charge, q.delta))
        return Plan(charges, run, (Stated("quality", eval_eps, sensitivity),), preview, ("part",))

    params = {
        "seed": {str(k): v for k, v in q.seed},
        "audience_size": q.audience_size,
        "model": q.model,
    }
    return engine.release(
        principal, collaboration_id, q, QueryType.LOOKALIKE, params, build, delta=q.delta, preview=preview
    )
