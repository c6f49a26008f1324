"""The collaboration policy: the analysis rules both members approve before any data flows.

A policy is YAML. Its structure is `policy.schema.json` (JSON Schema, the copy of `protos/policy.schema.json` that
`make protos` places in this package; `protos/POLICY.md` is its readable form): this module validates against it,
then checks the rules that relate fields to each other (the schema's `x-rules`). `parse_policy` reports every
problem at once, each with the path of the offending field, so a member can fix a policy in one go. The server runs
the same validation on every proposal; a member may run it locally first (`cleanroom_client.parse_policy`).

Guarantees of a parsed `Policy`: two to eight members (with three or more, a `hub` among them, and no refresh);
every member a `reads` list names is another member; every table belongs to a declared member; every dimension
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
from enum import StrEnum
from typing import Any, Final

import yaml

from .policy_schema import DEFS, SCHEMA, schema_problems

ABILITIES: Final[tuple[str, ...]] = tuple(DEFS["ability"]["enum"])
QUERY_TYPES: Final[tuple[str, ...]] = tuple(DEFS["query_type"]["enum"])


class Ability(StrEnum):
    """What a policy lets a member do (the schema's `ability`; checked equal to it at import)."""

    CONTRIBUTE = "contribute"
    QUERY = "query"
    #: Receive the answers of queries the member asks.
    RECEIVE_RESULTS = "receive_results"
    #: Receive audiences (lookalike, activation) released to it.
    RECEIVE_AUDIENCES = "receive_audiences"


class QueryType(StrEnum):
    """The queries a policy may allow (the schema's `query_type`; checked equal to it at import)."""

    OVERLAP = "overlap"
    #: The hub's users by which other members they are matched with (brand, brand with A, with B, with A and B).
    VENN = "venn"
    FUNNEL = "funnel"
    FUNNEL_FLOW = "funnel_flow"
    SEGMENT_INSIGHT = "segment_insight"
    VALUE = "value"
    LOYALTY = "loyalty"
    ATTRIBUTION = "attribution"
    LIFT = "lift"
    LOOKALIKE = "lookalike"
    ACTIVATION = "activation"


if set(Ability) != set(ABILITIES) or set(QueryType) != set(QUERY_TYPES):  # pragma: no cover - a packaging error
    raise ImportError("policy.schema.json and cleanroom_client.policy disagree on abilities or query types")

IDENTIFIER_TYPES: Final[tuple[str, ...]] = tuple(DEFS["identifier_type"]["enum"])
TEST_GROUPS = ("exposed", "holdout")
STAGE_COLUMNS = ("stage_4a", "stage_aipl")
#: Each stage column's values in the funnel's order (4A: aware, appeal, act, advocate; AIPL likewise).
STAGE_LABELS: Final[Mapping[str, tuple[str, ...]]] = {
    "stage_4a": ("aware", "appeal", "act", "advocate"),
    "stage_aipl": ("awareness", "interest", "purchase", "loyalty"),
}
#: Default smallest epsilon one query may spend, so that "does it succeed" is never bought for almost nothing.
DEFAULT_EPSILON_PER_QUERY_MIN: Final[float] = SCHEMA["properties"]["epsilon"]["properties"]["per_query_min"]["default"]
#: The largest delta a policy may allow in total: far below 1/n for the populations a clean room serves.
MAX_DELTA: Final[float] = DEFS["delta"]["maximum"]
#: The largest magnitude of a measure's bounds.
MAX_MEASURE: Final[float] = DEFS["measure_bound"]["maximum"]
#: The largest L1 sensitivity any released vector may have: exact values are clamped to this magnitude before
#: noise, and noise is drawn on 64-bit integers, so larger bounds could not be honoured.
MAX_SENSITIVITY = 2**53
RESERVED_COLUMNS = frozenset({"row_id"})
#: Money is summed in whole cents (each value rounded toward zero) before noise.
CENTS: Final = 100
#: The name the server's audit log gives the operator (adding principals, assigning auditors).
OPERATOR: Final = "operator"
#: Names no principal and no policy member may take, so that nobody can pass for the operator or the server in an
#: audit log or a policy: the one list, used by the server when it adds a principal and by `parse_policy`.
RESERVED_NAMES: Final = frozenset({OPERATOR, "server", "system", "admin", "root", "anonymous"})
#: The cell every dimension gets for people without a value.
NONE_VALUE = "none"
_NAME = re.compile(DEFS["name"]["pattern"])
_MEASURE_PROBLEM: Final[str] = DEFS["table"]["properties"]["measures"]["additionalProperties"]["x-problem"]
_TOP_KEYS = frozenset(SCHEMA["properties"])
_RESERVED_LIST: Final = ", ".join(sorted(RESERVED_NAMES))


def squared_bound(person_cents: int) -> int:
    """A bound on what one person's revenue squared (currency units squared) counts in lift: ceil(P^2 / 100^2) + 1.

    Lift sums each person's clipped total cents t, lo <= t <= hi within [-P, P], squared about m2, the whole
    currency unit nearest the range's midpoint, as ((t - m2)^2 + 100^2 / 2) // 100^2 in 128-bit integers
    (`cleanroom.analytics.lift.PersonRange`: at most (P^2 + 5,000) // 10,000, since |t - m2| <= P), so this exact
    integer bound holds; the policy's 2^53 check uses it. In floating point, ceil((P / 100) ** 2) + 1 fell 2 below
    what DuckDB's round(double(t) * t / 10,000) gave for P = 9,429,902,332 (red team, issue 31), a bound the 2^53
    check admits.
    """
    return -(-person_cents * person_cents // (CENTS * CENTS)) + 1


def stability_constant(identifier_types: int) -> int:
    """How many matched pairs one added or removed users row can change, with this many identifier types.

    1 for one type, 2T for T >= 2 (the join's rule and its proof: cleanroom.matching.join on the server). Every
    query's sensitivity is its per-pair sensitivity times this constant.
    """
    if identifier_types < 1:
        raise ValueError("the join needs at least one identifier type")
    return 1 if identifier_types == 1 else 2 * identifier_types


def population_stability(identifier_types: int, joins: int, any_of: bool = False) -> int:
    """How many people of a population can change with one users row, when it spans `joins` joins with the hub.

    A population is the hub's users matched with each of `joins` other members. A row of another member is in one
    join (at most c = `stability_constant` pairs change), a row of the hub in every join (at most c in each); each
    person that appears, disappears or changes needs at least one pair of its joins to change (two, for a change).
    Hence `joins` x c; with two members, c.

    `any_of`: the hub's users matched with at least one of them (attribution, lift). There one pair can change a
    person without removing it (it loses one member and keeps another): a change, which counts twice, for a single
    pair. Hence 2 x `joins` x c when `joins` >= 2 (with one join the two are the same).
    """
    joins = max(1, joins)
    return (2 if any_of and joins > 1 else 1) * joins * stability_constant(identifier_types)


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
    #: The other members whose data this member's queries may involve; None: every member.
    reads: frozenset[str] | None = None

    def may_read(self, member: str) -> bool:
        """Whether this member's queries may involve `member`'s data (its own always)."""
        return member == self.name or self.reads is None or member in self.reads


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
    #: For tables with `max_per_person`: per measure, the most one person's total may count (totals are clipped to
    #: [-x, x]); a measure without one is bounded by its rows alone (`person_bound`).
    per_person_max: Mapping[str, float] = field(default_factory=dict)

    @property
    def qualified_name(self) -> str:
        """`member.table`."""
        return f"{self.member}.{self.table}"

    def person_bound(self, column: str) -> float:
        """The most |total| one person's rows of measure `column` can count: the one fact every sum's sensitivity uses.

        The rows bound it (at most `max_per_person` rows, 1 for a table without a cap, each clipped to the
        measure's bounds [lo, hi]), and the policy's `per_person_max`, when declared, clips the total to [-x, x].
        """
        lo, hi = self.measures[column]
        rows = (self.max_per_person or 1) * max(abs(lo), abs(hi))
        declared = self.per_person_max.get(column)
        return rows if declared is None else min(rows, declared)

    def person_cents(self, column: str) -> int:
        """`person_bound` in cents, rounded up: what the value and lift queries clip one person's total cents to.

        A person's cents are their rows' cents, each rounded toward zero, so without `per_person_max` the clip
        never binds (|sum| <= cap x 100 x max(|lo|, |hi|) <= this), and existing policies keep their meaning.
        """
        return math.ceil(CENTS * self.person_bound(column))

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
    #: `member.table` event tables (with a time column) a segment may filter on: had / had no rows in a window,
    #: optionally on the table's declared dimensions (retargeting: "reached by campaign c1, did not buy").
    events: tuple[str, ...] = ()


class RefreshBudget(StrEnum):
    """How a living collaboration's budget renews (the schema's `refresh.budget`)."""

    #: epsilon and delta are for the collaboration's whole life.
    TOTAL = "total"
    #: Each completed refresh gives every member its per_member_total again.
    PER_PERIOD = "per_period"


@dataclass(frozen=True)
class RefreshSpec:
    """Which tables a refresh may change, how often, and how the budget renews.

    Listing `member.users` lets that member add and retire users; another listed table may get new rows.
    """

    tables: frozenset[str]
    min_days_between: float = SCHEMA["properties"]["refresh"]["properties"]["min_days_between"]["default"]
    budget: RefreshBudget = RefreshBudget.TOTAL

    def allows(self, member: str, table: str) -> bool:
        """Whether a refresh may change `member.table`."""
        return f"{member}.{table}" in self.tables


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
    #: A living collaboration's refresh rules; None: the match is final.
    refresh: RefreshSpec | None = None
    #: The member every other one is joined with, as declared (required with three or more members).
    declared_hub: str | None = None

    @property
    def hub(self) -> str:
        """The member every other member is joined with: the declared hub, else the first member by name.

        With two members either choice gives the same pairs (the join is symmetric); with more, every other
        member is joined to the hub one to one, and a query's people are hub users matched with each member named.
        """
        return self.declared_hub or min(m.name for m in self.members)

    @property
    def spokes(self) -> tuple[str, ...]:
        """The members other than the hub, by name: each is joined with the hub."""
        return tuple(sorted(m.name for m in self.members if m.name != self.hub))

    @property
    def chain(self) -> tuple[str, ...]:
        """The members by name: the order of the blinding chain (PROTOCOL.md, "Three or more members")."""
        return tuple(sorted(m.name for m in self.members))

    def member(self, name: str) -> MemberSpec | None:
        """The member called `name`, or None."""
        return next((m for m in self.members if m.name == name), None)

    def peer_of(self, name: str) -> str:
        """The other member's name (two members only: with more there is no single peer)."""
        if len(self.members) != 2:
            raise ValueError(f"{self.name} has {len(self.members)} members: name the member you mean")
        return next(m.name for m in self.members if m.name != name)

    def table(self, member: str, table: str) -> TableSpec | None:
        """The declared table `member.table`, or None."""
        return self.tables.get(f"{member}.{table}")

    @property
    def stability(self) -> int:
        """The join's stability constant under this policy (see `stability_constant`)."""
        return stability_constant(len(self.identifiers))

    def population_stability(self, joins: int, any_of: bool = False) -> int:
        """How many people of a population spanning `joins` joins one users row can change (`population_stability`)."""
        return population_stability(len(self.identifiers), joins, any_of)


class _PlainLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: the text is the tree, so parsing costs what the text weighs.

    An alias repeats a subtree without repeating its text; nested aliases grow a few hundred bytes into billions of
    values for anything that walks the tree (validation, error messages). A policy is a page written by people and
    never needs them, so the first anchor or alias is refused, before anything is built from it.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.MarkedYAMLError(
                None,
                None,
                "YAML anchors and aliases (&name, *name) are not allowed in a policy: write each value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """The YAML document in `text`, refusing anchors and aliases (`_PlainLoader`); yaml.YAMLError otherwise."""
    loader = _PlainLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_policy(text: str) -> Policy:
    """Parse and validate a YAML policy; raises PolicyError listing every problem.

    Costs time in proportion to the text: anchors and aliases are refused before anything expands.
    """
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}"]) from None
    if not isinstance(doc, dict):
        raise PolicyError(["the policy must be a YAML mapping with keys: " + ", ".join(sorted(_TOP_KEYS))])
    problems = schema_problems(doc)
    members = _members(doc.get("members"))
    for m in members:
        if m.name in RESERVED_NAMES:
            problems.append(f"members.{m.name}: the name {m.name!r} is reserved (reserved: {_RESERVED_LIST})")
    tables = _tables(doc.get("tables"), {m.name for m in members}, problems)
    _consistent_tables(tables, problems)
    identifiers = tuple(t for t in IDENTIFIER_TYPES if t in _list(doc.get("identifiers")))
    if identifiers:
        # the largest factor any query states: attribution and lift over people matched with any of the others
        largest = population_stability(len(identifiers), len(members) - 1, any_of=True)
        _sensitivities_fit(tables, largest, problems)
    queries = [q for q in _list(doc.get("queries")) if q in QUERY_TYPES]
    total, per_query, per_query_min = _epsilon(doc.get("epsilon"), problems)
    delta_total, delta_per_query = _delta(doc.get("delta"), problems)
    activation = _activation(doc.get("activation"), members, tables, problems)
    if "activation" in queries and "activation" not in doc:
        problems.append("activation: required when queries allow activation (recipient, dimensions, min_size)")
    refresh = _refresh(doc.get("refresh"), tables, problems)
    hub = _hub(doc, members, refresh, problems)
    spend = doc.get("campaign_spend") or {}
    for campaign, amount in spend.items() if isinstance(spend, dict) else ():
        if _number(amount) is None:
            problems.append(f"campaign_spend.{campaign}: a positive number")
    if problems:
        raise PolicyError(list(dict.fromkeys(problems)))
    return Policy(
        name=doc["name"].strip(),
        members=members,
        tables=tables,
        queries=frozenset(queries),
        min_group_size=doc["min_group_size"],
        epsilon_per_member_total=total,
        epsilon_per_query_max=per_query,
        identifiers=identifiers,
        epsilon_per_query_min=per_query_min,
        delta_per_member_total=delta_total,
        delta_per_query_max=delta_per_query,
        activation=activation,
        campaign_spend={str(c): float(a) for c, a in spend.items()},
        refresh=refresh,
        declared_hub=hub,
    )


def _hub(
    doc: dict[str, Any], members: tuple[MemberSpec, ...], refresh: RefreshSpec | None, problems: list[str]
) -> str | None:
    """The declared hub, checked; the rules that come with three or more members; `reads` names other members."""
    names = {m.name for m in members}
    for m in members:
        for other in sorted(m.reads or ()):
            if other not in names or other == m.name:
                problems.append(f"members.{m.name}.reads: {other!r} is not another member of the policy")
    hub = doc.get("hub")
    if hub is not None and hub not in names:
        problems.append(f"hub: {hub!r} is not one of the members ({', '.join(sorted(names))})")
        return None
    if len(members) > 2:
        if hub is None:
            problems.append(
                "hub: required with three or more members: the member every other one is matched with (the brand)"
            )
        if refresh is not None:
            problems.append("refresh: available to two-member collaborations only; leave it out with three or more")
    return hub if isinstance(hub, str) else None


def _list(raw: Any) -> list[Any]:
    return raw if isinstance(raw, list) else []


def _number(v: Any) -> float | None:
    """`v` as a float when it is a finite number (not a bool), else None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


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
    """The largest sensitivity an event table's bounds lead to must fit MAX_SENSITIVITY.

    A conversions table's in attribution and lift, any capped table's in the value query (one person's total, in
    cents, `TableSpec.person_cents`).
    """
    for qualified, spec in tables.items():
        if spec.max_per_person is None:
            continue
        cap = spec.max_per_person
        for column, (lo, hi) in spec.measures.items():
            bound = max(abs(lo), abs(hi))
            person = spec.person_cents(column)  # value's sum; lift's revenue (at most it) and squares below
            largest = c * person
            if spec.table == "conversions":
                squared = squared_bound(person)
                largest = max(largest, c * cap * math.ceil(CENTS * bound), c * max(1000 * cap, squared))
            if largest > MAX_SENSITIVITY:
                problems.append(
                    f"tables.{qualified}: max_per_person {cap} x |{column}| up to {bound:g} gives a sensitivity of "
                    f"{largest:.3g} (with the largest stability a query states, {c}), above {MAX_SENSITIVITY:.3g}: "
                    "lower the bounds "
                    "or the cap (the noise would also drown every answer)"
                )


def _budget(raw: Any, section: str, keys: tuple[str, ...], problems: list[str]) -> list[float]:
    """The numbers of an epsilon or delta section (0.0 where the schema already reported a problem)."""
    values = []
    for key in keys:
        v = raw.get(key) if isinstance(raw, dict) else None
        number = _number(v)
        if number is None and isinstance(v, float):
            problems.append(f"{section}.{key}: a finite number")
        values.append(number if number is not None and number > 0 else 0.0)
    return values


def _delta(raw: Any, problems: list[str]) -> tuple[float, float]:
    total, per_query = _budget(raw, "delta", ("per_member_total", "per_query_max"), problems)
    if total and per_query and per_query > total:
        problems.append("delta.per_query_max: must not exceed per_member_total")
    return total, per_query


def _epsilon(raw: Any, problems: list[str]) -> tuple[float, float, float]:
    given_min = isinstance(raw, dict) and "per_query_min" in raw
    keys = ("per_member_total", "per_query_max", "per_query_min")
    total, per_query, per_query_min = _budget(raw, "epsilon", keys, problems)
    if not given_min:
        per_query_min = DEFAULT_EPSILON_PER_QUERY_MIN
    if total and per_query and per_query > total:
        problems.append("epsilon.per_query_max: must not exceed per_member_total")
    if per_query and per_query_min and per_query_min > per_query:
        problems.append("epsilon.per_query_min: must not exceed per_query_max")
    return total, per_query, per_query_min or DEFAULT_EPSILON_PER_QUERY_MIN


def _activation(
    raw: Any, members: tuple[MemberSpec, ...], tables: Mapping[str, TableSpec], problems: list[str]
) -> ActivationSpec | None:
    if not isinstance(raw, dict):
        return None
    recipient = raw.get("recipient")
    member = next((m for m in members if m.name == recipient), None)
    if member is None or Ability.RECEIVE_AUDIENCES not in member.abilities:
        problems.append("activation.recipient: a member of the policy with the ability receive_audiences")
    dims = [d for d in _list(raw.get("dimensions")) if isinstance(d, str)]
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
    events = [e for e in _list(raw.get("events")) if isinstance(e, str)]
    for e in events:
        spec = tables.get(e)
        if spec is None or spec.table == "users" or spec.time is None:
            problems.append(f"activation.events: {e!r} is not a declared event table with a time column")
    return ActivationSpec(str(recipient), tuple(dims), min_size if isinstance(min_size, int) else 1, tuple(events))


def _refresh(raw: Any, tables: Mapping[str, TableSpec], problems: list[str]) -> RefreshSpec | None:
    if not isinstance(raw, dict):
        return None
    listed = [t for t in _list(raw.get("tables")) if isinstance(t, str)]
    for t in listed:
        if t not in tables:
            problems.append(f"refresh.tables: {t!r} is not a declared table")
    days = raw.get("min_days_between", RefreshSpec.min_days_between)
    budget = raw.get("budget", RefreshBudget.TOTAL.value)
    if budget == RefreshBudget.PER_PERIOD and (_number(days) or 0.0) < 1:
        problems.append(
            "refresh.min_days_between: at least 1 with budget per_period (the budget renews with every period, so "
            "the interval bounds how fast it grows)"
        )
    return RefreshSpec(
        frozenset(listed),
        max(0.0, _number(days) or 0.0),
        RefreshBudget(budget) if budget in set(RefreshBudget) else RefreshBudget.TOTAL,
    )


def _members(raw: Any) -> tuple[MemberSpec, ...]:
    """The well-formed members (the schema reports the others)."""
    if not isinstance(raw, dict):
        return ()
    return tuple(
        MemberSpec(
            name,
            frozenset(a for a in spec["abilities"] if a in ABILITIES),
            frozenset(r for r in spec["reads"] if isinstance(r, str)) if isinstance(spec.get("reads"), list) else None,
        )
        for name, spec in raw.items()
        if isinstance(name, str)
        and _NAME.fullmatch(name)
        and isinstance(spec, dict)
        and isinstance(spec.get("abilities"), list)
    )


def _tables(raw: Any, member_names: set[str], problems: list[str]) -> dict[str, TableSpec]:
    """The tables, with the rules the schema cannot state: a declared member, lo < hi, columns declared once."""
    tables: dict[str, TableSpec] = {}
    for qualified, spec in raw.items() if isinstance(raw, dict) else ():
        path = f"tables.{qualified}"
        member, _, table = str(qualified).partition(".")
        if not _NAME.fullmatch(table):
            continue  # reported by the schema
        if member not in member_names:
            problems.append(f"{path}: the table must be named `member.table` with a declared member")
            continue
        spec = spec if isinstance(spec, dict) else {}
        time = spec.get("time") if isinstance(spec.get("time"), str) else None
        dims = {
            col: tuple(str(v) for v in domain)
            for col, domain in _mapping(spec.get("dimensions")).items()
            if isinstance(domain, list) and domain and all(isinstance(v, (str, int, float)) for v in domain)
        }
        for col, values in dims.items():
            if len(set(values)) != len(values) and len(set(spec["dimensions"][col])) == len(values):
                problems.append(f"{path}.dimensions.{col}: the domain lists a value more than once (as text)")
        measures = {}
        for col, bounds in _mapping(spec.get("measures")).items():
            lo, hi = (_number(b) for b in bounds) if isinstance(bounds, list) and len(bounds) == 2 else (None, None)
            if lo is None or hi is None or lo >= hi or max(abs(lo), abs(hi)) > MAX_MEASURE:
                problems.append(f"{path}.measures.{col}: {_MEASURE_PROBLEM}")
                continue
            measures[str(col)] = (lo, hi)
        cap = spec.get("max_per_person")
        per_person = _per_person_max(spec.get("per_person_max"), measures, cap, path, problems)
        columns = ([time] if time else []) + list(dims) + list(measures)
        for col in sorted({c for c in columns if columns.count(c) > 1}):
            problems.append(f"{path}: column {col!r} is declared more than once")
        for col in sorted(RESERVED_COLUMNS.intersection(columns)):
            problems.append(f"{path}: column name {col!r} is reserved for the surrogate id")
        tables[str(qualified)] = TableSpec(
            member,
            table,
            time,
            dims,
            measures,
            cap if isinstance(cap, int) and not isinstance(cap, bool) else None,
            per_person,
        )
    return tables


def _per_person_max(
    raw: Any, measures: Mapping[str, tuple[float, float]], cap: Any, path: str, problems: list[str]
) -> dict[str, float]:
    """The table's per-person totals' bounds: declared measures only, on a table that caps its rows per person."""
    bounds: dict[str, float] = {}
    if raw is not None and cap is None:
        problems.append(f"{path}.per_person_max: only a table with max_per_person bounds a person's total")
    for col, bound in _mapping(raw).items():
        number = _number(bound)
        if col not in measures:
            problems.append(f"{path}.per_person_max.{col}: not a declared measure of this table ({sorted(measures)})")
        elif number is not None and 0 < number <= MAX_MEASURE:
            bounds[str(col)] = number
    return bounds


def _mapping(raw: Any) -> dict[Any, Any]:
    return raw if isinstance(raw, dict) else {}
