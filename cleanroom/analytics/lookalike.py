"""Lookalike modelling: features from the platform's users, seeds from the join, DP-SGD training with opacus.

Privacy: the training set is every user of the recipient (the platform); the label says whether the user is a
matched person who passes the seed filter (e.g. the brand's gold tier). Removing one row of a member's users table
changes no training example's presence, only labels: up to `group` of them, the privacy join's stability (one row
can change up to that many matched pairs). DP-SGD (Poisson sampling with opacus' own sample rate, per-example
gradient clipping to norm `MAX_GRAD_NORM`, Gaussian noise σ·`MAX_GRAD_NORM`) is accounted for exactly that
adjacency, up to `group` replace-one changes of training examples, by `cleanroom.privacy.accounting` (PLDs from
dp_accounting), not by opacus' accountant, whose add/remove-one figure understates it. σ is the smallest that
accountant allows for the target (ε, δ), and the budget is charged the accountant's ε for that σ. Scoring every
platform user, and releasing the top of that ranking to the platform, is post-processing of the model: seeds are
deliberately not removed from the audience, since removing them would release who the seeds are. The quality
estimate on the held-out split is a separate pair of noisy counts.

Randomness: opacus' `secure_mode` needs torchcsprng, which has no build for this torch (none on the package index
for torch 2.x), so it is off. Instead each training gets its own torch generators for the gradient noise
(`noise_generator`) and for the Poisson sampling and held-out split, each seeded with 63 bits from the OS CSPRNG
(`os.urandom`): the seed is unpredictable and never reused, but torch's CPU generator (Mersenne Twister) is not a
CSPRNG, and without secure mode opacus does not harden its floating-point Gaussian samples against the attacks on
their low-order bits (see the README's known limits).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cleanroom_client.policy import Policy, TableSpec

from ..errors import FailedPreconditionError, InvalidArgumentError
from ..privacy import accounting
from ..storage.database import quote_ident
from .matched import NONE, Catalog, MatchedData, Sql
from .queries import DimensionRef, EventFilter

if TYPE_CHECKING:  # torch and opacus (seconds to import) load when a lookalike is first trained, not at startup
    import torch
    from torch import nn

MAX_GRAD_NORM = 1.0
EPOCHS = 3
#: Poisson sampling rate of DP-SGD: a constant, so the accounting never depends on how many users there are.
SAMPLE_RATE = 0.02
HELD_OUT = 0.2


@dataclass(frozen=True)
class TrainingData:
    """One row per platform user: its surrogate id, its features and its (exact, private) label."""

    row_ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    feature_names: tuple[str, ...]


@dataclass(frozen=True)
class TrainedModel:
    """Scores for every user, which users were held out, the training's accounted epsilon and its noise multiplier."""

    scores: np.ndarray
    held_out: np.ndarray
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
    wheres: list[str] = ["m.collab = ?"]
    params: list[object] = [catalog.id]
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
        f"SELECT DISTINCT m.{catalog.side(out_member)} AS row_id FROM matches m {' '.join(joins)}"
        f" WHERE {' AND '.join(wheres)}"
    )
    return Sql(text, params)


@dataclass(frozen=True)
class TrainingPlan:
    """What training will read, decided from the policy and the catalog alone."""

    sql: Sql
    spec: TableSpec
    dimensions: tuple[str, ...]
    measures: tuple[str, ...]


def training_plan(catalog: Catalog, policy: Policy, recipient: str, seed: Mapping[DimensionRef, str]) -> TrainingPlan:
    """Features: the recipient's declared users dimensions (one-hot with `none`) and measures; seed labels."""
    _filters(policy, seed, "seed")
    spec: TableSpec | None = policy.table(recipient, "users")
    if spec is None:
        raise FailedPreconditionError(f"the policy declares no users table for {recipient}")
    users = catalog.table(recipient, "users")
    present = set(catalog.columns(recipient, "users"))
    dims = tuple(c for c in spec.dimensions if c in present)
    measures = tuple(c for c in spec.measures if c in present)
    if not dims and not measures:
        raise FailedPreconditionError(f"{recipient} uploaded no declared dimension or measure to learn from")
    seed_sql = segment_sql(catalog, seed, recipient)
    cols = [f"CAST(u.{quote_ident(d)} AS VARCHAR)" for d in dims] + [
        f"CAST(u.{quote_ident(m)} AS DOUBLE)" for m in measures
    ]
    text = (
        f"SELECT u.row_id, s.row_id IS NOT NULL AS label, {', '.join(cols)} FROM {users} u"
        f" LEFT JOIN ({seed_sql.text}) s ON s.row_id = u.row_id ORDER BY u.row_id"
    )
    return TrainingPlan(Sql(text, seed_sql.params), spec, dims, measures)


def training_data(data: MatchedData, plan: TrainingPlan) -> TrainingData:
    """Read the features and the (exact, private) labels of every recipient user."""
    result = data.arrays(plan.sql)
    names: list[str] = []
    blocks: list[np.ndarray] = []
    keys = list(result)
    for i, d in enumerate(plan.dimensions):
        column = np.asarray(result[keys[2 + i]], dtype=object)
        values = np.where(np.asarray([v is None for v in column]), NONE, column)
        for value in (*plan.spec.dimensions[d], NONE):
            names.append(f"{d}={value}")
            blocks.append((values == value).astype(np.float32))
    for j, m in enumerate(plan.measures):
        lo, hi = plan.spec.measures[m]
        raw = np.asarray(result[keys[2 + len(plan.dimensions) + j]], dtype=np.float64)
        raw = np.nan_to_num(raw, nan=lo, posinf=hi, neginf=lo)
        names.append(m)
        blocks.append(((np.clip(raw, lo, hi) - lo) / (hi - lo)).astype(np.float32))
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


def train(data: TrainingData, noise: TrainingNoise, kind: str = "logistic") -> TrainedModel:
    """DP-SGD on the training split with the given noise; scores every user. Total: any data gives a model.

    Poisson sampling at the fixed rate `SAMPLE_RATE` (each example in each step with that probability), for
    `EPOCHS / SAMPLE_RATE` steps, per-example clipping to `MAX_GRAD_NORM`, Gaussian noise of `noise.noise_multiplier`
    times that norm: exactly what `training_noise` accounted for.
    """
    import torch
    from opacus import PrivacyEngine
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    n = len(data.labels)
    generator = _generator()
    held_out = (torch.rand(n, generator=generator) < HELD_OUT).numpy()
    train_idx = np.flatnonzero(~held_out)
    # Every feature lies in [0, 1] (one-hot dimensions, measures scaled by their policy bounds): map it to [-1, 1].
    # The scaling is fixed, not learned from the population, so one platform row more or less changes only its own
    # example (population statistics would move every example, outside what the accountant covers).
    x = torch.from_numpy((2 * data.features - 1).astype(np.float32))
    y = torch.from_numpy(data.labels)
    # A loader of exactly 1 / SAMPLE_RATE batches: opacus' Poisson loader then samples at SAMPLE_RATE for that many
    # steps an epoch (DPDataLoader.from_data_loader takes its rate from the loader's length).
    steps_per_epoch = round(1 / SAMPLE_RATE)
    loader = DataLoader(
        TensorDataset(x[train_idx], y[train_idx]),
        batch_sampler=[b.tolist() for b in np.array_split(np.arange(len(train_idx)), steps_per_epoch)],
    )
    model = _model(kind, x.shape[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
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
            noise_generator=_generator(),
        )
        if len(loader) != steps_per_epoch or getattr(loader, "sample_rate", None) != 1 / steps_per_epoch:
            raise ArithmeticError("opacus' Poisson loader does not sample as accounted")
        loss = nn.BCEWithLogitsLoss()
        model.train()
        for _ in range(EPOCHS):
            for xb, yb in loader:
                if len(xb) == 0:
                    continue
                optimizer.zero_grad()
                loss(model(xb).squeeze(-1), yb).backward()
                optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = torch.sigmoid(model(x).squeeze(-1)).numpy()
    return TrainedModel(scores, held_out, noise.epsilon, float(optimizer.noise_multiplier))


def top(scores: np.ndarray, size: int) -> np.ndarray:
    """Indices of the `size` highest scores."""
    if size >= len(scores):
        return np.arange(len(scores))
    return np.argpartition(-scores, size - 1)[:size]


def held_out_counts(model: TrainedModel, labels: np.ndarray) -> tuple[int, int]:
    """Exact (seeds in the held-out split, those of them in the split's top decile by score)."""
    idx = np.flatnonzero(model.held_out)
    positives = int(labels[idx].sum())
    if len(idx) == 0:
        return 0, 0
    decile = idx[top(model.scores[idx], max(1, len(idx) // 10))]
    return positives, int(labels[decile].sum())
