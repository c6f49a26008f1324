"""A policy drafted from members' own files, for `cleanroom-client policy init` and `policy merge`.

Each member drafts from its own files only (no member reads another's data): `draft_policy` declares the member's
side (its users columns with their domains and bounds, its event tables with time column, categories, numbers and
a per-person cap, the identifiers it will match on) and names the other members with their conventional
abilities. `merge_drafts` puts the members' drafts together into the whole room: every member's tables, the
identifiers all of them hold, the conventional roles, the hub of a room of three or more, and every query type the
tables support. Neither function sends anything anywhere.

Roles are conventional: the brand (CRM and orders) queries and receives results; a platform (users with a 4A
stage, stage history, ad exposures, test groups) contributes and receives audiences. A member's role is read from
what its files are, unless declared.

Every bound and domain here is read from the member's data, and a policy is shared: a bound at the 99th percentile
of order values tells the other members that percentile. `DISCLOSURE_WARNING` says so; round the numbers to values
the business would state anyway before proposing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import yaml

from .policy import QUERY_TYPES, STAGE_COLUMNS, STAGE_LABELS, TEST_GROUPS, Ability

if TYPE_CHECKING:
    import pandas as pd

# pandas loads where a member's files are read (`draft_policy`'s helpers): `policy merge` reads only YAML drafts.

#: A text column with at most this many distinct values is drafted as a category with its domain.
MAX_DOMAIN = 20
#: Numbers are bounded by these quantiles (clipping the rest), then widened to a round number.
BOUND_QUANTILES = (0.01, 0.99)
#: The per-person cap of an event table is drafted at this quantile of rows per person.
CAP_QUANTILE = 0.95
#: A measure's per_person_max is drafted at this quantile of the people's totals (their first max_per_person rows,
#: each clipped to the drafted bounds), rounded up to two significant digits: the sums of value and lift then have
#: the noise of one typical big spender's total, not of max_per_person maximal rows, and the clip's bias stays
#: small (the top 2% of people lose only what they spent above it).
PERSON_QUANTILE = 0.98
#: Conservative starting values of the room-wide settings (the stricter one wins when drafts merge).
MIN_GROUP_SIZE = 50
EPSILON = {"per_member_total": 10.0, "per_query_max": 1.0}
DELTA = {"per_member_total": 1.0e-6, "per_query_max": 1.0e-7}
#: No activation list of fewer true people is released.
ACTIVATION_MIN_SIZE = 100

DISCLOSURE_WARNING = (
    "the domains, bounds and caps (per_person_max too) in this draft were read from your data; once the policy is "
    "shared they tell the other members about it (a bound at your 99th percentile discloses that percentile). Round "
    "them to values your business would state anyway (a price list's maximum, a round number) before you propose it."
)


class Role(StrEnum):
    """A member's conventional part in a room."""

    #: Owns the CRM and orders: asks the questions and reads the answers.
    BRAND = "brand"
    #: Owns users, stages, exposures and test groups: contributes, and receives audiences of its own users.
    PLATFORM = "platform"


ROLE_ABILITIES: Mapping[Role, tuple[str, ...]] = {
    Role.BRAND: (Ability.CONTRIBUTE, Ability.QUERY, Ability.RECEIVE_RESULTS),
    Role.PLATFORM: (Ability.CONTRIBUTE, Ability.RECEIVE_AUDIENCES),
}
#: Event tables only a platform holds (by the table names the queries look for, docs/policy.md).
PLATFORM_TABLES = frozenset({"stage_history", "exposures", "test_groups"})
#: Event tables whose queries read their time column: a draft refuses them without one.
TIMED_TABLES = frozenset({"conversions", "exposures", "stage_history"})
#: The dimensions attribution reads of an exposures table.
EXPOSURE_DIMENSIONS = frozenset({"campaign", "channel", "kind"})


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


def _round_up_2(value: float) -> float:
    """`value` rounded up to two significant digits (301 -> 310, 0.0123 -> 0.013)."""
    power = 10 ** (math.floor(math.log10(value)) - 1)
    return float(math.ceil(round(value / power, 9)) * power)


def _person_totals(
    frame: pd.DataFrame, key: str, time: str, measures: Mapping[str, list[float]], cap: int
) -> dict[str, float]:
    """Per measure: PERSON_QUANTILE of people's |totals|, rounded up, when below what `cap` rows allow.

    A person's total is their earliest `cap` rows, each clipped to the drafted bounds; a bound at or above what
    `cap` rows allow would change nothing, so it is left out.
    """
    proposed: dict[str, float] = {}
    ordered = frame.sort_values(time, kind="stable")
    for column, (lo, hi) in measures.items():
        rows = ordered[[key, column]].dropna()
        clipped = rows.assign(**{column: rows[column].clip(lo, hi)}).groupby(key).head(cap)
        totals = clipped.groupby(key)[column].sum().abs()
        if totals.empty or float(totals.quantile(PERSON_QUANTILE)) <= 0:
            continue
        bound = _round_up_2(float(totals.quantile(PERSON_QUANTILE)))
        if bound < cap * max(abs(lo), abs(hi)):
            proposed[column] = bound
    return proposed


def _is_time(series: pd.Series) -> bool:
    import pandas as pd

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


def ordered_domain(column: str, values: set[str], declared: Sequence[str] | None = None) -> list[str]:
    """The domain of a category in a natural order: the declared one, else a stage's, else alphabetical.

    A declared order lists values first (those the data lacks too: a domain is every value a column may hold);
    values the data holds beyond it follow, alphabetically. A 4A (or AIPL) stage column follows its funnel.
    """
    natural = declared if declared is not None else STAGE_LABELS.get(column, ())
    head = list(dict.fromkeys(natural)) if declared is not None else [v for v in natural if v in values]
    return head + sorted(values - set(head))


def _columns(
    frame: pd.DataFrame, skip: set[str], notes: list[str], where: str, orders: Mapping[str, Sequence[str]]
) -> tuple[dict[str, list[str]], dict[str, list[float]]]:
    import pandas as pd

    dimensions: dict[str, list[str]] = {}
    measures: dict[str, list[float]] = {}
    for column in frame.columns:
        if column in skip:
            continue
        series = frame[column]
        if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
            distinct = set(series.dropna().astype(str)) - {"none"}
            if 0 < len(distinct) <= MAX_DOMAIN:
                dimensions[str(column)] = ordered_domain(str(column), distinct, orders.get(str(column)))
            else:
                notes.append(f"{where}.{column}: {len(distinct)} distinct values, left out (not a category)")
        else:
            measures[str(column)] = _bounds(series.dropna())
    return dimensions, measures


def infer_role(users: pd.DataFrame, events: Mapping[str, pd.DataFrame]) -> Role:
    """A platform if the files are a platform's (stage history, exposures, test groups, a 4A stage), else the brand."""
    if PLATFORM_TABLES & set(events) or any(c in users.columns for c in STAGE_COLUMNS):
        return Role.PLATFORM
    return Role.BRAND


def _side(
    member: str,
    users: pd.DataFrame,
    key: str,
    identifiers: Mapping[str, str],
    events: Mapping[str, pd.DataFrame],
    orders: Mapping[str, Sequence[str]],
    notes: list[str],
) -> dict[str, dict[str, Any]]:
    """The member's tables as a policy declares them."""
    skip = {key, *identifiers.values()}
    tables: dict[str, dict[str, Any]] = {}
    dims, measures = _columns(users, skip, notes, f"{member}.users", orders)
    tables[f"{member}.users"] = {k: v for k, v in (("dimensions", dims), ("measures", measures)) if v}
    for name, frame in events.items():
        if key not in frame.columns:
            raise ValueError(f"event table {name}: no column {key!r} naming the user (the users table's key)")
        time = next((str(c) for c in frame.columns if c != key and _is_time(frame[c])), None)
        if time is None and name in TIMED_TABLES:
            raise ValueError(
                f"event table {name}: no column reads as dates or times (ISO 8601, e.g. 2026-10-01 13:45:00); "
                f"the queries that read {name} need one"
            )
        dims, measures = _columns(frame, {key} | ({time} if time else set()), notes, f"{member}.{name}", orders)
        if name == "test_groups" and "test_group" in dims:
            dims["test_group"] = list(TEST_GROUPS)  # the lift query's exact domain, whichever the data holds
        spec: dict[str, Any] = {"time": time} if time else {}
        spec.update({k: v for k, v in (("dimensions", dims), ("measures", measures)) if v})
        if time:
            per_person = frame.groupby(key).size()
            spec["max_per_person"] = cap = max(1, math.ceil(float(per_person.quantile(CAP_QUANTILE))))
            totals = _person_totals(frame, key, time, measures, cap)
            if totals:
                spec["per_person_max"] = totals
                notes += [
                    f"{member}.{name}.per_person_max.{column}: {bound:g}, the {PERSON_QUANTILE * 100:.0f}th "
                    f"percentile of your people's totals: the value and lift sums' noise scales with it (the top "
                    f"{1 - PERSON_QUANTILE:.0%} count as {bound:g})"
                    for column, bound in totals.items()
                ]
        tables[f"{member}.{name}"] = spec
    return tables


def draft_policy(
    member: str,
    users: pd.DataFrame,
    key: str,
    identifiers: Mapping[str, str],
    events: Mapping[str, pd.DataFrame] | None = None,
    *,
    role: Role | None = None,
    peers: Mapping[str, Role | None] | None = None,
    orders: Mapping[str, Sequence[str]] | None = None,
) -> Draft:
    """Draft `member`'s side of a room from its own tables, naming its peers; a policy that validates alone.

    `identifiers` maps identifier types to columns; those and `key` are never declared as columns (they never
    leave the member's machine). An event table needs `key`, and a time column (the first that reads as ISO 8601
    dates or times) when its queries read one (conversions, exposures, stage_history). `role` is read from the
    files when None. `peers` maps the other members to their roles (None: conventional: a brand's peers are
    platforms; a platform's first peer is the brand, the rest platforms); default one peer, `platform` or `brand`.
    `orders` declares the order of category domains by column. The other members' drafts merge with this one
    (`merge_drafts`) into the whole room.
    """
    events = dict(events or {})
    notes: list[str] = []
    own = role or infer_role(users, events)
    if peers is None:
        peers = {"platform": None} if own is Role.BRAND else {"brand": None}
    roles: dict[str, Role] = {member: own}
    for i, (name, peer_role) in enumerate(peers.items()):
        if name == member:
            raise ValueError(f"--peer {name}: that is you (--member); name the other members")
        roles[name] = peer_role or (Role.BRAND if own is Role.PLATFORM and i == 0 else Role.PLATFORM)
    tables = _side(member, users, key, identifiers, events, orders or {}, notes)
    members = {name: {"abilities": [str(a) for a in ROLE_ABILITIES[r]]} for name, r in roles.items()}
    notes.append(
        f"{member} drafted as the {own} ({', '.join(members[member]['abilities'])}); the other members draft their "
        "own sides and `cleanroom-client policy merge` puts the drafts together"
    )
    doc = _room(members, tables, sorted(identifiers), notes)
    return Draft(_dump(doc), tuple(notes))


def _dump(doc: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, default_flow_style=None, width=110)


def supported_queries(members: Mapping[str, Mapping[str, Any]], tables: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every query type the declared tables support, in the schema's order (docs/policy.md, "which table")."""
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for qualified, spec in tables.items():
        by_name.setdefault(qualified.partition(".")[2], []).append(spec)
    users = by_name.get("users", [])
    conversions = [s for s in by_name.get("conversions", []) if s.get("time") and s.get("measures")]
    exposures = [
        s for s in by_name.get("exposures", []) if s.get("time") and set(s.get("dimensions", {})) >= EXPOSURE_DIMENSIONS
    ]
    tests = [s for s in by_name.get("test_groups", []) if {"campaign", "test_group"} <= set(s.get("dimensions", {}))]
    stages = [s for s in by_name.get("stage_history", []) if s.get("time")]
    recipient = _recipient(members, tables)
    supported = {
        "overlap": True,
        "segment_insight": any(s.get("dimensions") for s in users),
        "venn": len(members) > 2,
        "funnel": any(c in s.get("dimensions", {}) for s in users for c in STAGE_COLUMNS),
        "funnel_flow": bool(stages),
        "value": bool(conversions),
        "loyalty": bool(conversions),
        "attribution": bool(conversions and exposures),
        "lift": bool(conversions and tests),
        "lookalike": recipient is not None and bool(tables.get(f"{recipient}.users")),
        "activation": recipient is not None and bool(_activation_dimensions(tables, recipient)),
    }
    return [q for q in QUERY_TYPES if supported.get(q)]


def _recipient(members: Mapping[str, Mapping[str, Any]], tables: Mapping[str, Any]) -> str | None:
    """The member that receives audiences: the first with the ability whose users table is declared."""
    return next(
        (
            name
            for name, spec in members.items()
            if Ability.RECEIVE_AUDIENCES in spec.get("abilities", ()) and f"{name}.users" in tables
        ),
        None,
    )


def _activation_dimensions(tables: Mapping[str, Mapping[str, Any]], recipient: str) -> list[str]:
    """Every users dimension, if at least one is another member's than the recipient's (a policy rule)."""
    dims = [
        f"{qualified.partition('.')[0]}.{column}"
        for qualified, spec in tables.items()
        if qualified.endswith(".users")
        for column in spec.get("dimensions", {})
    ]
    return dims if any(not d.startswith(f"{recipient}.") for d in dims) else []


def _hub(members: Mapping[str, Mapping[str, Any]]) -> str:
    """The member that queries (the brand), else the first."""
    return next((n for n, s in members.items() if Ability.QUERY in s.get("abilities", ())), next(iter(members)))


def _room(
    members: Mapping[str, Mapping[str, Any]],
    tables: Mapping[str, Mapping[str, Any]],
    identifiers: list[str],
    notes: list[str],
    settings: Mapping[str, Any] | None = None,
    queries: Sequence[str] = (),
) -> dict[str, Any]:
    """A policy document: members, hub, tables, every supported (or asked) query, activation, budget."""
    settings = settings or {}
    # The member that queries first (the brand): the order a reader expects, and the hub's place.
    members = dict(sorted(members.items(), key=lambda item: Ability.QUERY not in item[1].get("abilities", ())))
    wanted = set(queries) | set(supported_queries(members, tables))
    doc: dict[str, Any] = {"name": "-x-".join(members), "members": {n: dict(s) for n, s in members.items()}}
    if len(members) > 2:
        doc["hub"] = settings.get("hub") or _hub(members)
    doc["identifiers"] = identifiers
    rank = {name: i for i, name in enumerate(members)}  # each member's tables together, in the members' order
    doc["tables"] = {
        n: dict(s) for n, s in sorted(tables.items(), key=lambda item: rank.get(item[0].partition(".")[0], len(rank)))
    }
    doc["queries"] = [q for q in QUERY_TYPES if q in wanted]
    tables = doc["tables"]
    recipient = _recipient(members, tables)
    if recipient is not None and {"lookalike", "activation"} & wanted:
        dims = _activation_dimensions(tables, recipient)
        if dims:
            doc["activation"] = settings.get("activation") or {
                "recipient": recipient,
                "dimensions": dims,
                "min_size": ACTIVATION_MIN_SIZE,
            }
    for key in ("campaign_spend", "refresh"):
        if settings.get(key):
            if key == "refresh" and len(members) > 2:
                notes.append("refresh: left out (available to two-member collaborations only)")
                continue
            doc[key] = settings[key]
    doc["min_group_size"] = settings.get("min_group_size", MIN_GROUP_SIZE)
    doc["epsilon"] = settings.get("epsilon") or dict(EPSILON)
    if {"lookalike", "activation"} & wanted or settings.get("delta"):
        doc["delta"] = settings.get("delta") or dict(DELTA)
    return doc


def merge_drafts(drafts: Mapping[str, str]) -> Draft:
    """The whole room from the members' drafts (name of the draft, e.g. its file, to its YAML).

    Each member's tables and abilities come from the draft that declares its tables (its own); a member no draft
    declares tables of keeps the abilities a draft named it with. The identifiers are those every declaring
    member will match on. The queries are every one a draft lists and every one the merged tables support; the
    room-wide settings are the strictest of the drafts' (largest `min_group_size`, smallest budgets). ValueError
    when two drafts declare the same member's tables (a member drafts its side once) or a draft is no mapping.
    """
    notes: list[str] = []
    members: dict[str, dict[str, Any]] = {}
    owner: dict[str, str] = {}
    tables: dict[str, dict[str, Any]] = {}
    identifiers: list[set[str]] = []
    queries: list[str] = []
    settings: dict[str, Any] = {}
    docs = {}
    for source, text in drafts.items():
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("members"), dict):
            raise ValueError(f"{source}: not a policy draft (a YAML mapping with `members`)")
        docs[source] = doc
    for source, doc in docs.items():
        declared = {str(t).partition(".")[0] for t in doc.get("tables") or {}}
        for name in declared:
            if name in owner:
                raise ValueError(
                    f"{source} and {owner[name]} both declare {name}'s tables: each member drafts its own side once"
                )
            owner[name] = source
        tables.update(doc.get("tables") or {})
        if declared:
            identifiers.append(set(doc.get("identifiers") or ()))
        queries += list(doc.get("queries") or ())
    for source, doc in docs.items():
        for name, spec in doc["members"].items():
            if owner.get(name, source) == source or name not in members:
                members[name] = dict(spec or {})
        for key in ("campaign_spend", "refresh", "activation", "hub"):
            if doc.get(key) and key not in settings:
                settings[key] = doc[key]
        if "min_group_size" in doc:
            settings["min_group_size"] = max(int(doc["min_group_size"]), settings.get("min_group_size", 0))
        for key in ("epsilon", "delta"):
            if isinstance(doc.get(key), dict):
                mine = settings.setdefault(key, dict(doc[key]))
                for k, v in doc[key].items():
                    mine[k] = min(v, mine.get(k, v))
    # A draft's guessed activation section names only the tables that draft knew: drafted again from all of them.
    settings.pop("activation", None)
    common = set.intersection(*identifiers) if identifiers else set()
    for name, source in owner.items():
        dropped = set(docs[source].get("identifiers") or ()) - common
        if dropped:
            notes.append(f"{name} matches on {', '.join(sorted(dropped))} too, but not every member does: left out")
    if not common:
        raise ValueError("the drafts share no identifier type: the members cannot be matched")
    missing = [n for n in members if n not in owner]
    if missing:
        notes.append(f"no draft declares the tables of {', '.join(missing)}: add their draft to the merge")
    doc = _room(members, tables, sorted(common), notes, settings, queries)
    return Draft(_dump(doc), tuple(notes))
