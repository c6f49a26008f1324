"""The collaboration policy: the analysis rules both members approve before any data flows.

A policy is YAML (see DESIGN.md). `parse_policy` validates all of it and reports every problem at once, each with
the path of the offending field, so a member can fix a policy in one go. The server runs the same validation on
every proposal; a member may run it locally first (`cleanroom_client.parse_policy`).

Guarantees of a parsed `Policy`: exactly two members; every table belongs to a declared member; every dimension
has a non-empty domain of distinct string values (released cells are the whole domain, zero-filled); every
measure has finite bounds lo < hi; 0 < per_query_max <= per_member_total; min_group_size >= 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

ABILITIES = ("contribute", "query", "receive_results", "receive_audiences")
QUERY_TYPES = (
    "overlap",
    "funnel",
    "funnel_flow",
    "segment_insight",
    "attribution",
    "lift",
    "lookalike",
    "activation",
)
RESERVED_COLUMNS = frozenset({"row_id"})
#: The cell every dimension gets for people without a value.
NONE_VALUE = "none"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TOP_KEYS = frozenset({"name", "members", "tables", "queries", "min_group_size", "epsilon", "campaign_spend"})
_TABLE_KEYS = frozenset({"time", "dimensions", "measures", "max_per_person"})


class PolicyError(ValueError):
    """A policy that cannot be accepted; `problems` lists each one with the path of its field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid policy:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class MemberSpec:
    """A member of the collaboration and the abilities the policy grants it."""

    name: str
    abilities: frozenset[str]


@dataclass(frozen=True)
class TableSpec:
    """The columns a member exposes in one table: a time column, dimensions with domains, bounded measures."""

    member: str
    table: str
    time: str | None = None
    dimensions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    measures: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: For event tables: the most rows (e.g. conversions) one person may contribute to a query; None: no cap set.
    max_per_person: int | None = None

    @property
    def qualified_name(self) -> str:
        """`member.table`."""
        return f"{self.member}.{self.table}"

    @property
    def columns(self) -> tuple[str, ...]:
        """Every declared column, time first."""
        return ((self.time,) if self.time else ()) + tuple(self.dimensions) + tuple(self.measures)


@dataclass(frozen=True)
class Policy:
    """A validated policy."""

    name: str
    members: tuple[MemberSpec, ...]
    tables: Mapping[str, TableSpec]
    queries: frozenset[str]
    min_group_size: int
    epsilon_per_member_total: float
    epsilon_per_query_max: float
    #: Public spend per campaign (currency units), for ROAS.
    campaign_spend: Mapping[str, float] = field(default_factory=dict)

    def member(self, name: str) -> MemberSpec | None:
        """The member called `name`, or None."""
        return next((m for m in self.members if m.name == name), None)

    def peer_of(self, name: str) -> str:
        """The other member's name."""
        return next(m.name for m in self.members if m.name != name)

    def table(self, member: str, table: str) -> TableSpec | None:
        """The declared table `member.table`, or None."""
        return self.tables.get(f"{member}.{table}")


def parse_policy(text: str) -> Policy:
    """Parse and validate a YAML policy; raises PolicyError listing every problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}"]) from None
    if not isinstance(doc, dict):
        raise PolicyError(["the policy must be a YAML mapping with keys: " + ", ".join(sorted(_TOP_KEYS))])
    problems: list[str] = []
    for key in sorted(set(doc) - _TOP_KEYS, key=str):
        problems.append(f"{key}: unknown key (known: {', '.join(sorted(_TOP_KEYS))})")

    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append("name: required, a non-empty string")
        name = ""

    members = _members(doc.get("members"), problems)
    member_names = {m.name for m in members}
    tables = _tables(doc.get("tables", {}), member_names, problems)

    queries = doc.get("queries", [])
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        problems.append("queries: a list of query types")
        queries = []
    for q in queries:
        if q not in QUERY_TYPES:
            problems.append(f"queries: unknown query type {q!r} (known: {', '.join(QUERY_TYPES)})")

    min_group = doc.get("min_group_size")
    if not isinstance(min_group, int) or isinstance(min_group, bool) or min_group < 1:
        problems.append("min_group_size: required, an integer >= 1")
        min_group = 1

    total, per_query = _epsilon(doc.get("epsilon"), problems)
    spend = _spend(doc.get("campaign_spend") or {}, problems)
    if problems:
        raise PolicyError(problems)
    return Policy(
        name=name.strip(),
        members=members,
        tables=tables,
        queries=frozenset(queries),
        min_group_size=min_group,
        epsilon_per_member_total=total,
        epsilon_per_query_max=per_query,
        campaign_spend=spend,
    )


def _spend(raw: Any, problems: list[str]) -> dict[str, float]:
    if not isinstance(raw, dict):
        problems.append("campaign_spend: a mapping of campaign to its (public) spend")
        return {}
    out = {}
    for campaign, amount in raw.items():
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not math.isfinite(amount) or amount <= 0:
            problems.append(f"campaign_spend.{campaign}: a positive number")
            continue
        out[str(campaign)] = float(amount)
    return out


def _members(raw: Any, problems: list[str]) -> tuple[MemberSpec, ...]:
    if not isinstance(raw, dict) or len(raw) != 2:
        problems.append("members: required, a mapping of exactly two members (a brand and a platform)")
        return ()
    out = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(
                f"members.{name}: a member name is lower-case letters, digits and '_', starting with a letter"
            )
            continue
        abilities = spec.get("abilities") if isinstance(spec, dict) else None
        if not isinstance(abilities, list) or not all(isinstance(a, str) for a in abilities):
            problems.append(f"members.{name}.abilities: required, a list drawn from {', '.join(ABILITIES)}")
            continue
        for a in abilities:
            if a not in ABILITIES:
                problems.append(f"members.{name}.abilities: unknown ability {a!r} (known: {', '.join(ABILITIES)})")
        out.append(MemberSpec(name=name, abilities=frozenset(abilities)))
    return tuple(out)


def _tables(raw: Any, member_names: set[str], problems: list[str]) -> dict[str, TableSpec]:
    if not isinstance(raw, dict):
        problems.append("tables: a mapping of `member.table` to its columns")
        return {}
    tables: dict[str, TableSpec] = {}
    for qualified, spec in raw.items():
        path = f"tables.{qualified}"
        member, _, table = str(qualified).partition(".")
        if member not in member_names:
            problems.append(f"{path}: the table must be named `member.table` with a declared member")
            continue
        if not _NAME.match(table):
            problems.append(f"{path}: a table name is lower-case letters, digits and '_', starting with a letter")
            continue
        spec = spec or {}
        if not isinstance(spec, dict):
            problems.append(f"{path}: a mapping with keys time, dimensions, measures")
            continue
        for key in sorted(set(spec) - _TABLE_KEYS, key=str):
            problems.append(f"{path}.{key}: unknown key (known: {', '.join(sorted(_TABLE_KEYS))})")
        time = spec.get("time")
        if time is not None and not (isinstance(time, str) and _NAME.match(time)):
            problems.append(f"{path}.time: a column name")
            time = None
        dims = _dimensions(spec.get("dimensions") or {}, path, problems)
        measures = _measures(spec.get("measures") or {}, path, problems)
        cap = spec.get("max_per_person")
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            problems.append(f"{path}.max_per_person: an integer >= 1")
            cap = None
        columns = ([time] if time else []) + list(dims) + list(measures)
        for col in {c for c in columns if columns.count(c) > 1}:
            problems.append(f"{path}: column {col!r} is declared more than once")
        for col in RESERVED_COLUMNS.intersection(columns):
            problems.append(f"{path}: column name {col!r} is reserved for the surrogate id")
        tables[qualified] = TableSpec(member, table, time, dims, measures, cap)
    return tables


def _dimensions(raw: Any, path: str, problems: list[str]) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        problems.append(f"{path}.dimensions: a mapping of column to its domain (a list of values)")
        return {}
    out = {}
    for col, domain in raw.items():
        if not isinstance(col, str) or not _NAME.match(col):
            problems.append(f"{path}.dimensions.{col}: a column name is lower-case letters, digits and '_'")
            continue
        if not isinstance(domain, list) or not domain or any(isinstance(v, (dict, list)) or v is None for v in domain):
            problems.append(f"{path}.dimensions.{col}: the domain must be a non-empty list of values")
            continue
        values = tuple(str(v) for v in domain)
        if NONE_VALUE in values:
            problems.append(
                f"{path}.dimensions.{col}: '{NONE_VALUE}' is reserved for missing values (released as its own cell)"
            )
            continue
        if len(set(values)) != len(values):
            problems.append(f"{path}.dimensions.{col}: the domain lists a value more than once")
            continue
        out[col] = values
    return out


def _measures(raw: Any, path: str, problems: list[str]) -> dict[str, tuple[float, float]]:
    if not isinstance(raw, dict):
        problems.append(f"{path}.measures: a mapping of column to its bounds [lo, hi]")
        return {}
    out = {}
    for col, bounds in raw.items():
        if not isinstance(col, str) or not _NAME.match(col):
            problems.append(f"{path}.measures.{col}: a column name is lower-case letters, digits and '_'")
            continue
        ok = (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
            and bounds[0] < bounds[1]
        )
        if not ok:
            problems.append(f"{path}.measures.{col}: bounds must be [lo, hi] with finite numbers and lo < hi")
            continue
        out[col] = (float(bounds[0]), float(bounds[1]))
    return out


def _epsilon(raw: Any, problems: list[str]) -> tuple[float, float]:
    if not isinstance(raw, dict):
        problems.append("epsilon: required, a mapping with per_member_total and per_query_max")
        return 0.0, 0.0
    values = []
    for key in ("per_member_total", "per_query_max"):
        v = raw.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            problems.append(f"epsilon.{key}: required, a finite number > 0")
            v = 0.0
        values.append(float(v))
    for key in sorted(set(raw) - {"per_member_total", "per_query_max"}, key=str):
        problems.append(f"epsilon.{key}: unknown key (known: per_member_total, per_query_max)")
    total, per_query = values
    if total and per_query and per_query > total:
        problems.append("epsilon.per_query_max: must not exceed per_member_total")
    return total, per_query
