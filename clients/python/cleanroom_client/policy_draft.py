"""A starting policy drafted from a member's own files, for `cleanroom-client policy init`.

The draft declares the member's side: its users columns (categories with their domains, numbers with bounds), its
event tables (time column, categories, numbers, a per-person cap), the identifiers it will match on, and a
conservative budget. It is a starting point to edit, never sent anywhere by this module.

Every bound and domain here is read from the member's data, and a policy is shared: a bound at the 99th percentile
of order values tells the other member that percentile. `DISCLOSURE_WARNING` says so; round the numbers to values
the business would state anyway before proposing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd
import yaml

from .policy import Ability

#: A text column with at most this many distinct values is drafted as a category with its domain.
MAX_DOMAIN = 20
#: Numbers are bounded by these quantiles (clipping the rest), then widened to a round number.
BOUND_QUANTILES = (0.01, 0.99)
#: The per-person cap of an event table is drafted at this quantile of rows per person.
CAP_QUANTILE = 0.95

DISCLOSURE_WARNING = (
    "the domains, bounds and caps in this draft were read from your data; once the policy is shared they tell the "
    "other member about it (a bound at your 99th percentile discloses that percentile). Round them to values your "
    "business would state anyway (a price list's maximum, a round number) before you propose it."
)


@dataclass(frozen=True)
class Draft:
    """The drafted policy text, and notes on what was guessed."""

    yaml: str
    notes: tuple[str, ...]


def _round_up(value: float) -> float:
    """A round number at least `value` (1, 2, 5 x a power of ten)."""
    if value <= 0:
        return 0.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _bounds(series: pd.Series) -> list[float]:
    lo, hi = (float(series.quantile(q)) for q in BOUND_QUANTILES)
    lo = 0.0 if lo >= 0 else -_round_up(-lo)
    hi = _round_up(hi) if hi > 0 else 0.0
    if hi <= lo:
        hi = lo + 1.0
    return [lo, hi]


def _is_time(series: pd.Series) -> bool:
    if pd.api.types.is_datetime64_any_dtype(series):
        return True
    if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
        return False
    sample = series.dropna().astype(str).head(200)
    if sample.empty:
        return False
    try:
        pd.to_datetime(sample, format="ISO8601")
    except (ValueError, TypeError):
        return False
    return True


def _columns(frame: pd.DataFrame, skip: set[str], notes: list[str], where: str) -> tuple[dict, dict]:
    dimensions: dict[str, list[str]] = {}
    measures: dict[str, list[float]] = {}
    for column in frame.columns:
        if column in skip:
            continue
        series = frame[column]
        if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
            values = series.dropna().astype(str)
            distinct = sorted(set(values) - {"none"})
            if 0 < len(distinct) <= MAX_DOMAIN:
                dimensions[str(column)] = distinct
            else:
                notes.append(f"{where}.{column}: {len(distinct)} distinct values, left out (not a category)")
        else:
            measures[str(column)] = _bounds(series.dropna())
    return dimensions, measures


def draft_policy(
    member: str,
    peer: str,
    users: pd.DataFrame,
    key: str,
    identifiers: Mapping[str, str],
    events: Mapping[str, pd.DataFrame] | None = None,
) -> Draft:
    """Draft a policy for `member` (who queries) and `peer` (who receives audiences) from the member's tables.

    `identifiers` maps identifier types to columns; those and `key` are never declared as columns (they never
    leave the member's machine). Each event table needs `key` and a time column (the first column that reads as
    ISO 8601 dates or times).
    """
    notes: list[str] = []
    skip = {key, *identifiers.values()}
    tables: dict[str, dict[str, object]] = {}
    dims, measures = _columns(users, skip, notes, f"{member}.users")
    tables[f"{member}.users"] = {k: v for k, v in (("dimensions", dims), ("measures", measures)) if v}
    for name, frame in (events or {}).items():
        if key not in frame.columns:
            raise ValueError(f"event table {name}: no column {key!r} naming the user (the users table's key)")
        time = next((str(c) for c in frame.columns if c != key and _is_time(frame[c])), None)
        if time is None:
            raise ValueError(
                f"event table {name}: no column reads as dates or times (ISO 8601, e.g. 2026-10-01 13:45:00)"
            )
        dims, measures = _columns(frame, {key, time}, notes, f"{member}.{name}")
        per_person = frame.groupby(key).size()
        cap = max(1, math.ceil(float(per_person.quantile(CAP_QUANTILE))))
        spec: dict[str, object] = {"time": time}
        spec.update({k: v for k, v in (("dimensions", dims), ("measures", measures)) if v})
        spec["max_per_person"] = cap
        tables[f"{member}.{name}"] = spec
    queries = ["overlap", "segment_insight"]
    if "conversions" in (events or {}):
        queries += ["value", "loyalty"]
    policy = {
        "name": f"{member}-x-{peer}",
        "members": {
            member: {"abilities": [str(Ability.CONTRIBUTE), str(Ability.QUERY), str(Ability.RECEIVE_RESULTS)]},
            peer: {"abilities": [str(Ability.CONTRIBUTE), str(Ability.RECEIVE_AUDIENCES)]},
        },
        "identifiers": sorted(identifiers),
        "tables": tables,
        "queries": queries,
        "min_group_size": 50,
        "epsilon": {"per_member_total": 10.0, "per_query_max": 1.0},
    }
    notes.append(f"add {peer}'s tables and the queries you both want (see docs/policy.md), then propose")
    text = yaml.safe_dump(policy, sort_keys=False, allow_unicode=True, default_flow_style=None, width=110)
    return Draft(text, tuple(notes))
