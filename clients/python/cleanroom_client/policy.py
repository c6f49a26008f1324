"""The collaboration policy: the analysis rules both members approve before any data flows.

A policy is YAML. `parse_policy` validates all of it and reports every problem at once, each with the path of the
offending field, so a member can fix a policy in one go. The server runs the same validation on every proposal; a
member may run it locally first (`cleanroom_client.parse_policy`).

Guarantees of a parsed `Policy`: exactly two members; every table belongs to a declared member; every dimension
has a non-empty domain of distinct string values (released cells are the whole domain, zero-filled); every
measure has finite bounds lo < hi; 0 < per_query_min <= per_query_max <= per_member_total; 0 < delta
per_query_max <= per_member_total <= MAX_DELTA; min_group_size >= 1; at least one identifier type for the join.
Rules that keep every query total (nothing may fail after data is read, see the engine): a `test_groups` table
declares `campaign` and `test_group`, and the domain of `test_group` is exactly (exposed, holdout); a
`stage_history` table's stage column has exactly the domain of the same column in its member's users table.
Activation, which releases a list of people rather than a DP aggregate, is allowed only when the policy names it:
the recipient, the dimensions a segment may use, and the smallest list that may be released.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

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
IDENTIFIER_TYPES = ("email", "phone", "device_id", "custom")
TEST_GROUPS = ("exposed", "holdout")
STAGE_COLUMNS = ("stage_4a", "stage_aipl")
#: Default smallest epsilon one query may spend, so that "does it succeed" is never bought for almost nothing.
DEFAULT_EPSILON_PER_QUERY_MIN = 0.01
#: The largest delta a policy may allow in total: far below 1/n for the populations a clean room serves.
MAX_DELTA = 1e-5
#: The largest magnitude of a measure's bounds.
MAX_MEASURE = 1e12
#: The largest L1 sensitivity any released vector may have: exact values are clamped to this magnitude before
#: noise, and noise is drawn on 64-bit integers, so larger bounds could not be honoured.
MAX_SENSITIVITY = 2**53


def stability_constant(identifier_types: int) -> int:
    """How many matched pairs one added or removed users row can change, with this many identifier types.

    1 for one type, 2T for T >= 2 (the join's rule and its proof: cleanroom.matching.join on the server). Every
    query's sensitivity is its per-pair sensitivity times this constant.
    """
    if identifier_types < 1:
        raise ValueError("the join needs at least one identifier type")
    return 1 if identifier_types == 1 else 2 * identifier_types
RESERVED_COLUMNS = frozenset({"row_id"})
#: The cell every dimension gets for people without a value.
NONE_VALUE = "none"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TOP_KEYS = frozenset(
    {
        "name",
        "members",
        "identifiers",
        "tables",
        "queries",
        "min_group_size",
        "epsilon",
        "delta",
        "activation",
        "campaign_spend",
    }
)
_ACTIVATION_KEYS = frozenset({"recipient", "dimensions", "min_size"})
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
class ActivationSpec:
    """Activation, a disclosure every member approves: who receives lists, on which dimensions, from what size."""

    recipient: str
    #: `member.column` of users tables that a segment may filter on.
    dimensions: tuple[str, ...]
    #: The smallest segment (true size) whose list may be released.
    min_size: int


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
    #: The identifier types the join may use, in priority order (each one raises the join's stability constant).
    identifiers: tuple[str, ...] = ("email",)
    epsilon_per_query_min: float = DEFAULT_EPSILON_PER_QUERY_MIN
    delta_per_member_total: float = 0.0
    delta_per_query_max: float = 0.0
    activation: ActivationSpec | None = None
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

    @property
    def stability(self) -> int:
        """The join's stability constant under this policy (see `stability_constant`)."""
        return stability_constant(len(self.identifiers))


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
    identifiers = _identifiers(doc.get("identifiers"), problems)
    tables = _tables(doc.get("tables", {}), member_names, problems)
    _consistent_tables(tables, problems)
    if identifiers:
        _sensitivities_fit(tables, stability_constant(len(identifiers)), problems)

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

    total, per_query, per_query_min = _epsilon(doc.get("epsilon"), problems)
    delta_total, delta_per_query = _delta(doc.get("delta"), problems)
    activation = _activation(doc.get("activation"), members, tables, problems)
    if "activation" in queries and activation is None and "activation" not in doc:
        problems.append("activation: required when queries allow activation (recipient, dimensions, min_size)")
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
        identifiers=identifiers,
        epsilon_per_query_min=per_query_min,
        delta_per_member_total=delta_total,
        delta_per_query_max=delta_per_query,
        activation=activation,
        campaign_spend=spend,
    )


def _identifiers(raw: Any, problems: list[str]) -> tuple[str, ...]:
    """The identifier types the join may use, in the protocol's priority order."""
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
        problems.append(
            f"identifiers: required, a non-empty list drawn from {', '.join(IDENTIFIER_TYPES)} "
            "(each type the join uses multiplies the noise of every query: declare only those both members have)"
        )
        return ()
    unknown = [t for t in raw if t not in IDENTIFIER_TYPES]
    for t in unknown:
        problems.append(f"identifiers: unknown identifier type {t!r} (known: {', '.join(IDENTIFIER_TYPES)})")
    if len(set(raw)) != len(raw):
        problems.append("identifiers: a type is listed more than once")
    return tuple(t for t in IDENTIFIER_TYPES if t in raw)


def _consistent_tables(tables: Mapping[str, TableSpec], problems: list[str]) -> None:
    """Domains that queries rely on to be total: test groups and stage histories."""
    for qualified, spec in tables.items():
        path = f"tables.{qualified}"
        if spec.table == "test_groups":
            if not {"campaign", "test_group"} <= set(spec.dimensions):
                problems.append(f"{path}: a test_groups table declares the dimensions campaign and test_group")
            elif tuple(sorted(spec.dimensions["test_group"])) != TEST_GROUPS:
                problems.append(
                    f"{path}.dimensions.test_group: the domain must be exactly [{', '.join(TEST_GROUPS)}] "
                    f"(got {list(spec.dimensions['test_group'])})"
                )
        if spec.table == "stage_history":
            users = tables.get(f"{spec.member}.users")
            stages = [c for c in STAGE_COLUMNS if c in spec.dimensions]
            if spec.time is None or not stages:
                problems.append(f"{path}: a stage_history table declares a time column and a stage_4a dimension")
            for column in stages:
                if users is None or users.dimensions.get(column) != spec.dimensions[column]:
                    problems.append(
                        f"{path}.dimensions.{column}: must have exactly the domain of {spec.member}.users.{column} "
                        "(the same values, in the same order)"
                    )


def _sensitivities_fit(tables: Mapping[str, TableSpec], c: int, problems: list[str]) -> None:
    """The largest sensitivity a conversions table's bounds lead to (attribution, lift) must fit MAX_SENSITIVITY."""
    for qualified, spec in tables.items():
        if spec.table != "conversions" or spec.max_per_person is None:
            continue
        cap = spec.max_per_person
        for column, (lo, hi) in spec.measures.items():
            bound = max(abs(lo), abs(hi))
            largest = c * max(1000 * cap, cap * math.ceil(100 * bound), math.ceil((cap * bound) ** 2) + 1)
            if largest > MAX_SENSITIVITY:
                problems.append(
                    f"tables.{qualified}: max_per_person {cap} x |{column}| up to {bound:g} gives a sensitivity of "
                    f"{largest:.3g} (with the join's stability {c}), above {MAX_SENSITIVITY:.3g}: lower the bounds "
                    "or the cap (the noise would also drown every answer)"
                )


def _delta(raw: Any, problems: list[str]) -> tuple[float, float]:
    if raw is None:
        return 0.0, 0.0
    if not isinstance(raw, dict):
        problems.append("delta: a mapping with per_member_total and per_query_max")
        return 0.0, 0.0
    values = []
    for key in ("per_member_total", "per_query_max"):
        v = raw.get(key)
        if not _number(v) or not 0 < v <= MAX_DELTA:
            problems.append(f"delta.{key}: required, a number > 0 and at most {MAX_DELTA:g}")
            v = 0.0
        values.append(float(v))
    for key in sorted(set(raw) - {"per_member_total", "per_query_max"}, key=str):
        problems.append(f"delta.{key}: unknown key (known: per_member_total, per_query_max)")
    total, per_query = values
    if total and per_query and per_query > total:
        problems.append("delta.per_query_max: must not exceed per_member_total")
    return total, per_query


def _activation(
    raw: Any, members: tuple[MemberSpec, ...], tables: Mapping[str, TableSpec], problems: list[str]
) -> ActivationSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append("activation: a mapping with recipient, dimensions and min_size")
        return None
    for key in sorted(set(raw) - _ACTIVATION_KEYS, key=str):
        problems.append(f"activation.{key}: unknown key (known: {', '.join(sorted(_ACTIVATION_KEYS))})")
    recipient = raw.get("recipient")
    member = next((m for m in members if m.name == recipient), None)
    if member is None or "receive_audiences" not in member.abilities:
        problems.append("activation.recipient: a member of the policy with the ability receive_audiences")
    dims = raw.get("dimensions")
    if not isinstance(dims, list) or not dims or not all(isinstance(d, str) for d in dims):
        problems.append("activation.dimensions: a non-empty list of users dimensions, e.g. [brand.tier]")
        dims = []
    for d in dims:
        owner, _, column = d.partition(".")
        spec = tables.get(f"{owner}.users")
        if spec is None or column not in spec.dimensions:
            problems.append(f"activation.dimensions: {d!r} is not a declared dimension of a users table")
    if dims and all(d.partition(".")[0] == recipient for d in dims):
        problems.append(
            "activation.dimensions: name at least one dimension of a member other than the recipient "
            "(a segment on the recipient's own columns alone would hand it the raw intersection)"
        )
    min_size = raw.get("min_size")
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
        problems.append("activation.min_size: required, an integer >= 1 (the smallest list that may be released)")
        min_size = 1
    return ActivationSpec(str(recipient), tuple(dims), min_size)


def _number(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
            and max(abs(bounds[0]), abs(bounds[1])) <= MAX_MEASURE
        )
        if not ok:
            problems.append(
                f"{path}.measures.{col}: bounds must be [lo, hi] with finite numbers, lo < hi, "
                f"|lo|, |hi| <= {MAX_MEASURE:g}"
            )
            continue
        out[col] = (float(bounds[0]), float(bounds[1]))
    return out


def _epsilon(raw: Any, problems: list[str]) -> tuple[float, float, float]:
    if not isinstance(raw, dict):
        problems.append("epsilon: required, a mapping with per_member_total and per_query_max")
        return 0.0, 0.0, 0.0
    values = []
    for key in ("per_member_total", "per_query_max"):
        v = raw.get(key)
        if not _number(v) or v <= 0:
            problems.append(f"epsilon.{key}: required, a finite number > 0")
            v = 0.0
        values.append(float(v))
    per_query_min = raw.get("per_query_min", DEFAULT_EPSILON_PER_QUERY_MIN)
    if not _number(per_query_min) or per_query_min <= 0:
        problems.append("epsilon.per_query_min: a finite number > 0 (the least one query may spend)")
        per_query_min = DEFAULT_EPSILON_PER_QUERY_MIN
    known = {"per_member_total", "per_query_max", "per_query_min"}
    for key in sorted(set(raw) - known, key=str):
        problems.append(f"epsilon.{key}: unknown key (known: {', '.join(sorted(known))})")
    total, per_query = values
    if total and per_query and per_query > total:
        problems.append("epsilon.per_query_max: must not exceed per_member_total")
    if per_query and per_query_min > per_query:
        problems.append("epsilon.per_query_min: must not exceed per_query_max")
    return total, per_query, float(per_query_min)
