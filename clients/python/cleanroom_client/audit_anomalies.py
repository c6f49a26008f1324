"""What an auditor should look at: rules over the audit facts, each finding with the entries it rests on.

A finding is not a verdict: each names a pattern that an honest member rarely produces and that an attack on the
privacy guarantees often does, with the `sequences` of the entries so the auditor reads them. The thresholds are
constants, each with the reason for its value; they err towards showing (an auditor dismisses a finding in a
glance, but never sees one that was not shown).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

#: Refusals by one member within `REFUSAL_WINDOW_SECONDS` that make a burst. A person who mistypes a query is
#: refused once or twice and fixes it; probing the policy's edges (which dimensions, which sizes, which ε) takes many.
REFUSAL_BURST = 3
#: The window of a refusal burst: one sitting at the command line.
REFUSAL_WINDOW_SECONDS = 600.0
#: Answered queries of one member with the same type and the same request (ε aside). Each repeat is answered with
#: fresh noise, so averaging k answers divides the noise by √k: twice can be a re-run, three times is averaging.
REPEATED_QUERIES = 3
#: Request parameters that change how an answer is worded, never its values: the funnel's stage names ('4a' or
#: 'aipl'). A request that differs from another only here asks the same question again, with fresh noise.
PRESENTATION_ONLY = frozenset({"labels"})
#: Refusals of one member in the whole chain, however far apart: one refusal every `REFUSAL_WINDOW_SECONDS` / 2 and
#: a bit never makes a burst, yet probes as much over an afternoon.
REFUSALS_IN_ALL = 10
#: A member whose previews outnumber its answered queries this many times over (and at least `PREVIEW_MINIMUM`).
#: A preview is free and reads no data, but many of them map the policy's limits before an expensive question.
PREVIEW_RATIO = 5.0
#: Previews too few to count as mapping anything, whatever the ratio.
PREVIEW_MINIMUM = 10
#: Share of a budget cap spent after which the auditor is told: the member can ask little more, and a member near
#: its cap is the one with the most reason to want its budget renewed (a refresh) or its entries forgotten.
BUDGET_NEAR_CAP = 0.9
#: A query answered within this many seconds after a refresh completed. Asking the same question of the period
#: before and the period after isolates the people the refresh added or retired (differencing); a scheduled report
#: the next morning is far outside this window.
AFTER_REFRESH_SECONDS = 300.0

ANOMALY_COLUMNS = ("kind", "member", "sequences", "first_time", "detail")


def _finding(kind: str, member: str, rows: pd.DataFrame, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "member": member,
        "sequences": [int(s) for s in rows["sequence"]],
        "first_time": rows["time"].min(),
        "detail": detail,
    }


def refusal_bursts(queries: pd.DataFrame) -> list[dict[str, Any]]:
    """`REFUSAL_BURST` or more refusals of one member within `REFUSAL_WINDOW_SECONDS` (one finding per burst)."""
    found = []
    refused = queries[queries["outcome"] == "refused"].sort_values("sequence")
    for member, rows in refused.groupby("member", sort=True):
        times = list(rows["time"])
        start = 0
        while start < len(times):
            end = start
            while end + 1 < len(times) and (times[end + 1] - times[start]).total_seconds() <= REFUSAL_WINDOW_SECONDS:
                end += 1
            if end - start + 1 >= REFUSAL_BURST:
                burst = rows.iloc[start : end + 1]
                found.append(_finding("refusal_burst", str(member), burst, {"count": len(burst)}))
                start = end + 1
            else:
                start += 1
    return found


def refusals_in_all(queries: pd.DataFrame) -> list[dict[str, Any]]:
    """`REFUSALS_IN_ALL` or more refusals of one member in the whole chain, whatever their spacing."""
    refused = queries[queries["outcome"] == "refused"].sort_values("sequence")
    return [
        _finding("refusals", str(member), rows, {"count": len(rows)})
        for member, rows in refused.groupby("member", sort=True)
        if len(rows) >= REFUSALS_IN_ALL
    ]


def _sorted_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((_sorted_lists(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True, default=str))
    return value


def same_question(asked: str) -> str:
    """A request as the question it asks: `PRESENTATION_ONLY` parameters dropped and every list sorted.

    The order of dimensions (or of any list) changes the order of an answer's rows, not their values; erring towards
    showing, two requests whose lists differ only in order count as one question.
    """
    try:
        request = json.loads(asked)
    except ValueError:
        return asked
    if not isinstance(request, dict):
        return asked
    kept = {k: v for k, v in request.items() if k not in PRESENTATION_ONLY}
    return json.dumps(_sorted_lists(kept), sort_keys=True, default=str)


def repeated_queries(queries: pd.DataFrame) -> list[dict[str, Any]]:
    """`REPEATED_QUERIES` or more answered queries of one member asking the same question (`same_question`)."""
    answered = queries[queries["outcome"] == "answered"]
    key = answered.assign(
        _population=[",".join(sorted(p)) for p in answered["population"]],
        _question=[same_question(a) for a in answered["asked"]],
    )
    found = []
    for (member, query, _, _), rows in key.groupby(["member", "query", "_question", "_population"], sort=True):
        if len(rows) >= REPEATED_QUERIES:
            epsilon = float(rows["epsilon"].sum())
            found.append(
                _finding("repeated_query", str(member), rows, {"query": query, "count": len(rows), "epsilon": epsilon})
            )
    return found


def previews_far_above_queries(queries: pd.DataFrame) -> list[dict[str, Any]]:
    """Members whose previews number at least `PREVIEW_MINIMUM` and `PREVIEW_RATIO` times their answered queries."""
    found = []
    for member, rows in queries.groupby("member", sort=True):
        previews = rows[rows["outcome"] == "preview"]
        answered = int((rows["outcome"] == "answered").sum())
        if len(previews) >= PREVIEW_MINIMUM and len(previews) >= PREVIEW_RATIO * max(answered, 1):
            found.append(_finding("previews", str(member), previews, {"previews": len(previews), "answered": answered}))
    return found


def budget_near_cap(budget: pd.DataFrame) -> list[dict[str, Any]]:
    """Per member and budget period: the charge that first took ε or δ past `BUDGET_NEAR_CAP` of its cap."""
    found = []
    for (member, period), rows in budget.groupby(["member", "budget_period"], sort=True):
        for measure in ("epsilon", "delta"):
            cap = rows[f"{measure}_cap"]
            over = rows[(cap > 0) & (rows[f"{measure}_spent"] >= BUDGET_NEAR_CAP * cap)]
            if len(over):
                first = over.iloc[[0]]
                spent, limit = float(first[f"{measure}_spent"].iloc[0]), float(first[f"{measure}_cap"].iloc[0])
                detail = {"measure": measure, "spent": spent, "cap": limit, "budget_period": int(str(period))}
                found.append(_finding("budget_near_cap", str(member), first, detail))
    return found


def queries_after_refresh(queries: pd.DataFrame, periods: pd.DataFrame) -> list[dict[str, Any]]:
    """Answered queries asked within `AFTER_REFRESH_SECONDS` after a refresh completed (one finding per member)."""
    found = []
    completed = periods[periods["event"] == "complete"]
    answered = queries[queries["outcome"] == "answered"]
    for _, done in completed.iterrows():
        after = answered[
            (answered["sequence"] > done["sequence"])
            & ((answered["time"] - done["time"]).dt.total_seconds() <= AFTER_REFRESH_SECONDS)
        ]
        for member, rows in after.groupby("member", sort=True):
            detail = {"period": done["period"], "refresh_sequence": int(done["sequence"]), "count": len(rows)}
            found.append(_finding("after_refresh", str(member), rows, detail))
    return found


def unapproved_answers(queries: pd.DataFrame, policy: pd.DataFrame, members: Sequence[str]) -> list[dict[str, Any]]:
    """Queries answered (or charged) while the policy's current revision lacked a member's approval.

    The server lets data flow only when every member approved the current revision (by its etag); a proposal clears
    every approval. An answer outside that is the collaboration not run as its policy said (a server, or its
    operator, bypassing the check), so the rule has no threshold: one is a finding. `members` are the policy's; when
    it is not known, everyone who approved or proposed a revision in the log.
    """
    if policy.empty:
        return []
    everyone = set(members) or set(policy["member"])
    changes = policy.sort_values("sequence")
    charged = queries[queries["outcome"].isin(["answered", "charged_failed", "charged_interrupted"])]
    flagged: dict[str, list[tuple[int, int, set[str]]]] = {}  # member: (sequence, revision, who had not approved)
    for sequence, member in zip(charged["sequence"], charged["member"], strict=True):
        before = changes[changes["sequence"] < sequence]
        revisions = before[before["event"].isin(["created", "proposed"])]
        if revisions.empty:
            continue
        latest = revisions.iloc[-1]
        since = before[(before["sequence"] > latest["sequence"]) & (before["etag"] == latest["etag"])]
        missing = everyone - set(since[since["event"] == "approved"]["member"])
        if missing:
            flagged.setdefault(str(member), []).append((int(sequence), int(latest["revision"]), missing))
    found = []
    for member, hits in sorted(flagged.items()):
        rows = queries[queries["sequence"].isin([h[0] for h in hits])]
        absent = sorted(set().union(*(h[2] for h in hits)))
        detail = {"count": len(hits), "revision": hits[0][1], "missing": ", ".join(absent)}
        found.append(_finding("unapproved", member, rows, detail))
    return found


def find_anomalies(
    queries: pd.DataFrame,
    budget: pd.DataFrame,
    periods: pd.DataFrame,
    policy: pd.DataFrame | None = None,
    members: Sequence[str] = (),
) -> pd.DataFrame:
    """Every finding of every rule, in the order of their first entry."""
    rows = [
        *(unapproved_answers(queries, policy, members) if policy is not None else []),
        *refusal_bursts(queries),
        *refusals_in_all(queries),
        *repeated_queries(queries),
        *previews_far_above_queries(queries),
        *budget_near_cap(budget),
        *queries_after_refresh(queries, periods),
    ]
    frame = pd.DataFrame(rows, columns=list(ANOMALY_COLUMNS))
    if frame.empty:
        return frame
    order = frame["sequences"].map(lambda s: s[0] if s else 0)
    return frame.assign(_order=order).sort_values(["_order", "kind"]).drop(columns="_order").reset_index(drop=True)
