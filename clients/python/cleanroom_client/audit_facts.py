"""The auditor's facts: a collaboration's audit chain read as typed tables (what `audit-report` draws).

An auditor asks "was this collaboration run as its policy said, and has anything been hidden?". The chain answers
it entry by entry; this module turns the entries into one DataFrame per kind of fact, each row carrying the
`sequence` of the entry it comes from, so every line of the report points back into the log:

- `policy`: the collaboration's creation, every proposed revision and every approval (who, which etag, when);
- `budget`: every charge of ε and δ per member, with the running total since the member's budget last renewed and
  the policy's caps (when the policy is known);
- `queries`: every query as one row: who, which declared query type, its dimensions and population, ε and δ, and
  its outcome (answered, refused with the reason, charged and failed, interrupted, preview);
- `data`: uploads and the match (sizes only: rows and points, never what is in them);
- `periods`: refresh periods opened, completed, cancelled, and users retired;
- `audiences`: audiences asked for and fetched (by whom, for whom, the size asked, the policy's gate);
- `auditors`: auditor assignments;
- `anomalies`: what an auditor should look at (`audit_anomalies`), each with its entries' sequences.

Query types are read through their declarations (`query_types`), so a new query type appears without new code
here. Nothing is asked of the server and nothing is spent: the facts are a reading of entries already signed.
Verification comes first and is kept with the facts (`Verification`); when it fails, the facts are still read
(everything the export holds), every row after the first broken entry is marked `verified = False`, and the report
says so at its top.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from .audit_anomalies import find_anomalies
from .audit_chain import AuditEntry, sha256_hex
from .policy import Policy, RefreshBudget
from .query_types import QUERIES
from .renewal import renews_budget

#: Parameters every query entry carries that are not part of what was asked (shown in their own columns).
_ACCOUNTING = frozenset({"epsilon", "delta", "refresh_period", "with_members", "reason", "query"})
#: The query type of each `query.<policy type>` action, by the declarations' policy types.
_BY_POLICY_TYPE: Mapping[str, str] = {q.policy_type: q.name for q in QUERIES}
#: Actions of the query pipeline that are outcomes, not query types (`cleanroom.analytics.engine`).
OUTCOMES: Mapping[str, str] = {
    "query.refuse": "refused",
    "query.failed": "charged_failed",
    "query.interrupted": "charged_interrupted",
    "query.preview": "preview",
}
_MEMBER_COLUMN = re.compile(r"^([A-Za-z0-9_-]+)\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?$")


@dataclass(frozen=True)
class HeadCheck:
    """One tree head compared with the export: the one this auditor remembers, or another member's.

    `consistent` is None when the head cannot be judged from this export (it is newer than the export).
    """

    source: str
    size: int
    consistent: bool | None
    detail: str


@dataclass(frozen=True)
class Verification:
    """The verification state an auditor reads first: valid, or where the chain breaks and why.

    `checked` entries passed; `first_invalid` is the sequence of the first that did not (0 when valid). `head` is
    the signed head the export ends with (sequence and hash), `tree_size` and `tree_root` its Merkle tree head.
    """

    valid: bool
    checked: int
    first_invalid: int = 0
    reason: str = ""
    head_sequence: int = 0
    head_hash: str = ""
    tree_size: int = 0
    tree_root: str = ""
    heads: tuple[HeadCheck, ...] = ()

    @property
    def trusted(self) -> bool:
        """The chain verifies and no head this auditor holds contradicts it."""
        return self.valid and all(h.consistent is not False for h in self.heads)

    @property
    def anchored(self) -> bool:
        """A head saved before (remembered, or another member's) lies on this history.

        Only then is a history rewritten and signed again ruled out up to that head. The server's head now is no
        anchor: it comes from the same server as the export.
        """
        return any(h.consistent is True and h.size > 0 and h.source != "server" for h in self.heads)


@dataclass(frozen=True)
class AuditFacts:
    """Everything an auditor's report shows, as data: one DataFrame per kind of fact (see the module's docstring)."""

    collaboration: str
    verification: Verification
    entries: int
    policy: pd.DataFrame
    budget: pd.DataFrame
    queries: pd.DataFrame
    data: pd.DataFrame
    periods: pd.DataFrame
    audiences: pd.DataFrame
    auditors: pd.DataFrame
    anomalies: pd.DataFrame
    #: The policy's caps and budget renewal as read (None when no policy was given, e.g. offline without --policy).
    caps: Mapping[str, float] | None = None
    per_period: bool = False
    #: The etag (SHA-256) of the policy text the caps were read from, to match with the approvals in the log.
    policy_etag: str = ""
    members: tuple[str, ...] = field(default=())
    #: The budget period now: how many refreshes renewed a per-period budget (0 with one budget for life).
    budget_period: int = 0

    def spent_now(self) -> pd.DataFrame:
        """Each member's ε and δ spent in the budget period now, as the server's ledger counts them.

        A member that spent nothing since the last renewal has spent 0 now, however much it spent before; the
        `budget` rows alone would show its last charge, from a period whose budget has since renewed.
        """
        b = self.budget
        rows = []
        for member in sorted(b["member"].unique()):
            mine = b[(b["member"] == member) & (b["budget_period"] == self.budget_period)]
            last = mine.iloc[-1] if len(mine) else None
            rows.append(
                {
                    "member": member,
                    "budget_period": self.budget_period,
                    "epsilon_spent": float(last["epsilon_spent"]) if last is not None else 0.0,
                    "delta_spent": float(last["delta_spent"]) if last is not None else 0.0,
                }
            )
        return pd.DataFrame(rows, columns=["member", "budget_period", "epsilon_spent", "delta_spent"])


def _frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """Rows as a DataFrame with these columns even when there are none (so a reader can always select them)."""
    return pd.DataFrame(rows, columns=list(columns))


def _base(e: AuditEntry, verified: bool) -> dict[str, Any]:
    return {"sequence": e.sequence, "time": pd.Timestamp(e.time).tz_localize(None), "verified": verified}


def dimensions_of(parameters: Mapping[str, Any], members: Iterable[str]) -> list[str]:
    """Every `member.column` (or `member.table.column`) named anywhere in a query's parameters, in order.

    Read from the values themselves, not from keys a query type happens to use, so a new query type's dimensions
    are found without new code.
    """
    known = set(members)
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            m = _MEMBER_COLUMN.match(value)
            if m and m.group(1) in known and value not in found:
                found.append(value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    for key, value in parameters.items():
        if key not in _ACCOUNTING:
            walk(value)
    return found


def query_type_of(action: str, parameters: Mapping[str, Any]) -> str:
    """The declared query type of a query entry (`query.<policy type>`, or an outcome naming it), else as written."""
    if action in OUTCOMES:
        named = str(parameters.get("query", ""))
        return _BY_POLICY_TYPE.get(named, named)
    policy_type = action.removeprefix("query.")
    return _BY_POLICY_TYPE.get(policy_type, policy_type)


def _asked(parameters: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in parameters.items() if k not in _ACCOUNTING}, sort_keys=True, default=str)


def _queries(rows: list[tuple[AuditEntry, bool]], members: Sequence[str]) -> pd.DataFrame:
    out = []
    for e, ok in rows:
        p = e.parameters
        attempted = str(p.get("attempted", "")) if e.action == "refused" else ""
        if attempted.startswith("query."):  # refused at the door (not a member with `query`, not active)
            e, p = replace(e, action="query.refuse"), {**p, "query": attempted.removeprefix("query.")}
        elif not e.action.startswith("query."):
            continue
        out.append(
            _base(e, ok)
            | {
                "member": e.principal,
                "query": query_type_of(e.action, p),
                "dimensions": dimensions_of(p, members),
                "population": list(p.get("with_members") or []),
                "refresh_period": p.get("refresh_period"),
                "epsilon_asked": float(p.get("epsilon", 0.0) or 0.0),
                "epsilon": e.epsilon,
                "delta": e.delta,
                "outcome": OUTCOMES.get(e.action, "answered"),
                "reason": str(p.get("reason", "")),
                "asked": _asked(p),
            }
        )
    columns = [
        "sequence",
        "time",
        "verified",
        "member",
        "query",
        "dimensions",
        "population",
        "refresh_period",
        "epsilon_asked",
        "epsilon",
        "delta",
        "outcome",
        "reason",
        "asked",
    ]
    return _frame(out, columns)


def renews(e: AuditEntry) -> bool:
    """Whether the entry completed a refresh that renews a per-period budget (the server's rule: `renewal`)."""
    return e.action == "refresh.complete" and renews_budget(e.parameters)


def _budget(rows: list[tuple[AuditEntry, bool]], per_period: bool, caps: Mapping[str, float] | None) -> pd.DataFrame:
    """Every charge with the member's running total since its budget last renewed (per period, or since the start)."""
    out = []
    spent: dict[str, tuple[float, float]] = {}
    period = 0
    for e, ok in rows:
        if per_period and renews(e):
            period += 1
            spent = {}
        if not (e.epsilon or e.delta):
            continue
        eps, dlt = spent.get(e.principal, (0.0, 0.0))
        spent[e.principal] = (eps + e.epsilon, dlt + e.delta)
        out.append(
            _base(e, ok)
            | {
                "member": e.principal,
                "action": e.action,
                "budget_period": period,
                "epsilon": e.epsilon,
                "delta": e.delta,
                "epsilon_spent": eps + e.epsilon,
                "delta_spent": dlt + e.delta,
                "epsilon_cap": caps["epsilon"] if caps else float("nan"),
                "delta_cap": caps["delta"] if caps else float("nan"),
            }
        )
    columns = [
        "sequence",
        "time",
        "verified",
        "member",
        "action",
        "budget_period",
        "epsilon",
        "delta",
        "epsilon_spent",
        "delta_spent",
        "epsilon_cap",
        "delta_cap",
    ]
    return _frame(out, columns)


def _policy(rows: list[tuple[AuditEntry, bool]]) -> pd.DataFrame:
    kinds = {"collaboration.create": "created", "policy.propose": "proposed", "policy.approve": "approved"}
    out = [
        _base(e, ok)
        | {
            "member": e.principal,
            "event": kinds[e.action],
            "revision": int(e.parameters.get("revision", 0)),
            "etag": str(e.parameters.get("etag", "")),
        }
        for e, ok in rows
        if e.action in kinds
    ]
    return _frame(out, ["sequence", "time", "verified", "member", "event", "revision", "etag"])


def _data(rows: list[tuple[AuditEntry, bool]]) -> pd.DataFrame:
    out = [
        _base(e, ok)
        | {
            "member": e.principal,
            "event": "match" if e.action == "match.complete" else "upload",
            "kind": str(e.parameters.get("kind", "")),
            "rows": e.parameters.get("rows"),
            "points": e.parameters.get("points"),
            "period": e.parameters.get("period"),
        }
        for e, ok in rows
        if e.action in ("upload.commit", "match.complete")
    ]
    return _frame(out, ["sequence", "time", "verified", "member", "event", "kind", "rows", "points", "period"])


def _periods(rows: list[tuple[AuditEntry, bool]]) -> pd.DataFrame:
    out = []
    for e, ok in rows:
        if not e.action.startswith("refresh."):
            continue
        p = e.parameters
        out.append(
            _base(e, ok)
            | {
                "member": e.principal,
                "event": e.action.removeprefix("refresh."),
                "period": p.get("period"),
                "rows": p.get("rows"),
                "set_sizes": dict(p.get("set_sizes") or {}),
                "renews_budget": renews(e),
            }
        )
    return _frame(
        out, ["sequence", "time", "verified", "member", "event", "period", "rows", "set_sizes", "renews_budget"]
    )


def _audiences(rows: list[tuple[AuditEntry, bool]], policy: Policy | None) -> pd.DataFrame:
    audience_types = {q.policy_type for q in QUERIES if q.audience}
    out = []
    for e, ok in rows:
        p = e.parameters
        if e.action.startswith("query.") and e.action.removeprefix("query.") in audience_types:
            recipient = policy.activation.recipient if policy and policy.activation else ""
            gate = policy.activation.min_size if policy and policy.activation else None
            event, size = "released", p.get("audience_size")
        elif e.action == "audience.fetch":
            recipient, gate, event, size = e.principal, None, "fetched", None
        else:
            continue
        out.append(
            _base(e, ok)
            | {
                "member": e.principal,
                "event": event,
                "query": query_type_of(e.action, p) if event == "released" else "",
                "recipient": recipient,
                "size_asked": size,
                "gate_min_size": gate,
                "audience": str(p.get("audience", "")),
            }
        )
    return _frame(
        out,
        [
            "sequence",
            "time",
            "verified",
            "member",
            "event",
            "query",
            "recipient",
            "size_asked",
            "gate_min_size",
            "audience",
        ],
    )


def _auditors(rows: list[tuple[AuditEntry, bool]]) -> pd.DataFrame:
    out = [
        _base(e, ok) | {"auditor": str(e.parameters.get("auditor", "")), "by": e.principal}
        for e, ok in rows
        if e.action == "auditor.assign"
    ]
    return _frame(out, ["sequence", "time", "verified", "auditor", "by"])


def read_facts(
    collaboration: str,
    entries: Sequence[AuditEntry],
    verification: Verification,
    policy: Policy | None = None,
    policy_text: str = "",
) -> AuditFacts:
    """The facts of a chain's entries (already verified as far as `verification` says); see the module's docstring.

    Entries at or after `verification.first_invalid` are read but marked `verified = False`. With the policy (its
    text, so its etag can be matched with the approvals), the budget carries the caps and renews per period when the
    policy says so.
    """
    broken = verification.first_invalid if not verification.valid else 0
    # By position, never by the sequence an entry claims: an entry placed after the break with a low sequence number
    # (a duplicate, or a forged copy of an early entry) is unverified like every entry after the break.
    rows = [(e, not broken or position < broken) for position, e in enumerate(entries, start=1)]
    members = tuple(sorted({m.name for m in policy.members})) if policy else ()
    principals = tuple(sorted({e.principal for e in entries} | set(members)))
    per_period = bool(policy and policy.refresh and policy.refresh.budget == RefreshBudget.PER_PERIOD)
    caps = {"epsilon": policy.epsilon_per_member_total, "delta": policy.delta_per_member_total} if policy else None
    queries = _queries(rows, principals)
    budget = _budget(rows, per_period, caps)
    periods = _periods(rows)
    policy_rows = _policy(rows)
    return AuditFacts(
        collaboration=collaboration,
        verification=verification,
        entries=len(entries),
        policy=policy_rows,
        budget=budget,
        queries=queries,
        data=_data(rows),
        periods=periods,
        audiences=_audiences(rows, policy),
        auditors=_auditors(rows),
        anomalies=find_anomalies(queries, budget, periods, policy_rows, members),
        caps=caps,
        per_period=per_period,
        policy_etag=sha256_hex(policy_text) if policy_text else "",
        members=members,
        budget_period=sum(1 for e, _ in rows if renews(e)) if per_period else 0,
    )
