"""The auditor's report: the audit facts (`audit_facts`) as one self-contained HTML page and its charts as PNG.

The page opens with the verification state in one sentence (valid, or the entry where the chain breaks and why),
then the heads compared, before anything else; a broken chain is stated in red at the very top and every row read
after the break says "unverified". Then the policy and its approvals, the budget per member against its caps (one
chart), every query (a timeline chart and a table), uploads and matches, refresh periods, audiences, auditors, and
the anomalies with their entries. It uses the member report's page, chart helpers and fonts (`report`), in English
or Simplified Chinese; drawing it reads no data and spends nothing.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import pandas as pd

from .audit_facts import AuditFacts, Verification
from .audit_text import audit_text_for
from .report import Section, _colour, _png, _use_fonts, render
from .report_text import Text

_OUTCOME_MARKERS = {"answered": "o", "refused": "x", "charged_failed": "s", "charged_interrupted": "s", "preview": "."}


def _short(digest: str) -> str:
    return f"{digest[:16]}…" if digest else "—"


def verdict(t: Text, v: Verification) -> tuple[str, list[str]]:
    """The one sentence on the chain's verification, then one line per head compared (and the tree head)."""
    if v.valid:
        # Signatures alone do not show that nothing was hidden: the key holder can cut or rewrite and sign again.
        key = "v.valid" if v.anchored else "v.valid_unanchored"
        sentence = t(key, n=v.checked, seq=v.head_sequence, hash=_short(v.head_hash))
    else:
        sentence = t("v.broken", seq=v.first_invalid, reason=v.reason)
    lines = [t("v.tree", size=v.tree_size, root=_short(v.tree_root)) if v.tree_size else t("v.no_tree")]
    for h in v.heads:
        source = (
            t("h.remembered")
            if h.source == "remembered"
            else t("h.server")
            if h.source == "server"
            else t("h.other", who=h.source)
        )
        lines.append(t(f"v.head.{h.consistent}", source=source, size=h.size, detail=h.detail))
    if not v.heads:
        lines.append(t("v.no_heads"))
    return sentence, lines


def _cell(t: Text, column: str, value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(t.label(v) for v in value) or ("—" if column != "population" else t("all_members"))
    if isinstance(value, dict):
        return ", ".join(
            f"{t.label(k)}: {v:,}" if isinstance(v, int) else f"{t.label(k)}: {v}" for k, v in value.items()
        )
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "—"
    if isinstance(value, float):
        return f"{int(value):,}" if value.is_integer() and column != "epsilon" else f"{value:.4g}"
    if column == "query":
        return t.query(str(value)) if value else "—"
    if column == "outcome":
        return t(f"o.{value}")
    if column == "event":
        return t.strings.get(f"ev.{value}", str(value))
    if column == "etag":
        return _short(str(value))
    return str(value)


def _table(t: Text, frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """The rows with readable headers and values; a row read after a broken entry says "unverified"."""
    if frame.empty:
        return f'<p class="explain">{html.escape(t("empty_table"))}</p>'
    rows = []
    for _, r in frame.iterrows():
        cells = [_cell(t, c, r[c]) for c in columns]
        if not bool(r.get("verified", True)):
            cells[0] = f"{cells[0]} ({t('unverified')})"
        rows.append(cells)
    shown = pd.DataFrame(rows, columns=[t(f"col.{c}") for c in columns])
    return str(shown.to_html(index=False, border=0, classes="cells", escape=True))


def _policy(t: Text, f: AuditFacts) -> Section:
    p = f.policy
    revisions = p[p["event"].isin(["created", "proposed"])]
    if revisions.empty:
        summary = t("empty_table")
    else:
        latest = int(revisions["revision"].max())
        etag = str(revisions[revisions["revision"] == latest]["etag"].iloc[-1])
        approved = p[(p["event"] == "approved") & (p["etag"] == etag)]["member"].nunique()
        members = len(f.members) or p["member"].nunique()
        summary = t(
            "sum.policy",
            revisions=len(revisions),
            revision=latest,
            etag=_short(etag),
            approved=approved,
            members=members,
        )
        if f.policy_etag:
            match = t("p.match") if f.policy_etag == etag else t("p.mismatch")
            summary += t("sum.policy_current", etag=_short(f.policy_etag), match=match)
    return Section(
        "policy",
        t("s.policy"),
        summary,
        None,
        _table(t, p, ("sequence", "time", "member", "event", "revision", "etag")),
    )


def _budget_chart(t: Text, f: AuditFacts) -> bytes:
    """ε (and δ when any was spent) per member over time, each against its cap; resets where a period renews it."""
    b = f.budget
    measures = ["epsilon"] + (["delta"] if float(b["delta"].sum()) > 0 else [])
    fig, axes = plt.subplots(1, len(measures), figsize=(8 if len(measures) == 1 else 11, 3.8), squeeze=False)
    members = sorted(b["member"].unique())
    for ax, measure in zip(axes[0], measures, strict=True):
        for i, member in enumerate(members):
            rows = b[b["member"] == member]
            colour = _colour(i, len(members))
            for period, part in rows.groupby("budget_period"):
                label = member if period == rows["budget_period"].min() else None
                ax.step(part["time"], part[f"{measure}_spent"], where="post", color=colour, label=label)
                ax.plot(part["time"], part[f"{measure}_spent"], "o", color=colour, markersize=3)
        cap = b[f"{measure}_cap"].dropna()
        if len(cap) and float(cap.iloc[0]) > 0:
            ax.axhline(float(cap.iloc[0]), color="#c5221f", linestyle="--", linewidth=1, label=f"cap {cap.iloc[0]:g}")
        ax.set_ylabel(f"{'ε' if measure == 'epsilon' else 'δ'} — {t('y.spent')}")
        _time_axis(t, ax)
        ax.legend(fontsize=8)
    return _png(fig)


def _budget(t: Text, f: AuditFacts) -> Section:
    b = f.budget
    if b.empty:
        return Section("budget", t("s.budget_audit"), t("sum.no_spend"))
    lines = []
    for _, now in f.spent_now().iterrows():  # the period now: 0 for a member that spent nothing since the renewal
        cap = t("sum.cap", eps=f.caps["epsilon"], dlt=f.caps["delta"]) if f.caps else t("sum.no_caps")
        eps, dlt = round(float(now["epsilon_spent"]), 6), float(now["delta_spent"])
        lines.append(t("sum.budget_member", member=now["member"], eps=eps, dlt=dlt, cap=cap))
    summary = "; ".join(lines) + (t("sum.per_period") if f.per_period else "") + "."
    columns = ("sequence", "time", "member", "epsilon", "delta")
    return Section("budget", t("s.budget_audit"), summary, _budget_chart(t, f), _table(t, b, columns))


def _time_axis(t: Text, ax: plt.Axes) -> None:
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel(t("x.time"))


def _timeline(t: Text, q: pd.DataFrame) -> bytes:
    """Every query as a point: time across, member down, its outcome as the marker and colour."""
    members = sorted(q["member"].unique())
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.6 * len(members)))
    for i, (outcome, marker) in enumerate(_OUTCOME_MARKERS.items()):
        rows = q[q["outcome"] == outcome]
        if len(rows):
            y = [members.index(m) for m in rows["member"]]
            ax.scatter(rows["time"], y, marker=marker, color=_colour(i), label=t(f"o.{outcome}"), s=40)
    ax.set_yticks(range(len(members)), members)
    ax.set_ylim(-0.7, len(members) - 0.3)
    _time_axis(t, ax)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _queries(t: Text, f: AuditFacts) -> Section:
    q = f.queries
    counts = q["outcome"].value_counts()
    summary = t(
        "sum.queries",
        n=len(q),
        answered=int(counts.get("answered", 0)),
        refused=int(counts.get("refused", 0)),
        failed=int(counts.get("charged_failed", 0) + counts.get("charged_interrupted", 0)),
        previews=int(counts.get("preview", 0)),
    )
    columns = (
        "sequence",
        "time",
        "member",
        "query",
        "dimensions",
        "population",
        "epsilon",
        "delta",
        "outcome",
        "reason",
    )
    chart = _timeline(t, q) if len(q) else None
    return Section("queries", t("s.queries"), summary, chart, _table(t, q, columns))


def _data(t: Text, f: AuditFacts) -> Section:
    d = f.data
    summary = t("sum.data", uploads=int((d["event"] == "upload").sum()), matches=int((d["event"] == "match").sum()))
    columns = ("sequence", "time", "member", "event", "kind", "rows", "points", "period")
    return Section("data", t("s.data"), summary, None, _table(t, d, columns))


def _periods(t: Text, f: AuditFacts) -> Section:
    p = f.periods
    summary = t(
        "sum.periods", complete=int((p["event"] == "complete").sum()), retire=int((p["event"] == "retire").sum())
    )
    columns = ("sequence", "time", "member", "event", "period", "rows", "set_sizes")
    return Section("periods", t("s.periods"), summary, None, _table(t, p, columns))


def _audiences(t: Text, f: AuditFacts) -> Section:
    a = f.audiences
    summary = t(
        "sum.audiences_audit",
        released=int((a["event"] == "released").sum()),
        fetched=int((a["event"] == "fetched").sum()),
    )
    columns = ("sequence", "time", "member", "event", "query", "recipient", "size_asked", "gate_min_size", "audience")
    return Section("audiences", t("s.audiences_audit"), summary, None, _table(t, a, columns))


def _auditors(t: Text, f: AuditFacts) -> Section:
    columns = ("sequence", "time", "auditor", "by")
    return Section(
        "auditors", t("s.auditors"), t("sum.auditors", n=len(f.auditors)), None, _table(t, f.auditors, columns)
    )


def describe_finding(t: Text, kind: str, detail: dict[str, Any]) -> str:
    """One finding in words (a query type by its declared name)."""
    shown = {k: t.query(v) if k == "query" else v for k, v in detail.items()}
    return t(f"k.{kind}", **shown)


def _anomalies(t: Text, f: AuditFacts) -> Section:
    a = f.anomalies
    if a.empty:
        return Section("anomalies", t("s.anomalies"), t("sum.no_anomalies"))
    shown = pd.DataFrame(
        {
            "member": a["member"],
            "finding": [describe_finding(t, k, d) for k, d in zip(a["kind"], a["detail"], strict=True)],
            "sequences": [", ".join(f"#{s}" for s in seqs) for seqs in a["sequences"]],
        }
    )
    return Section(
        "anomalies",
        t("s.anomalies"),
        t("sum.anomalies", n=len(a)),
        None,
        _table(t, shown, ("member", "finding", "sequences")),
    )


_SECTIONS: tuple[Callable[[Text, AuditFacts], Section], ...] = (
    _policy,
    _budget,
    _queries,
    _data,
    _periods,
    _audiences,
    _auditors,
    _anomalies,
)


def render_audit_report(facts: AuditFacts, out: Path, lang: str = "en") -> Path:
    """Write `<out>.html` and its charts as `<out>-<chart>.png` beside it; returns the HTML's path."""
    t = audit_text_for(lang)
    _use_fonts(lang)
    sections = [build(t, facts) for build in _SECTIONS]
    sentence, lines = verdict(t, facts.verification)
    v = facts.verification
    state = ("valid" if v.anchored else "valid unanchored") if v.trusted else "broken"
    lead = f'<p class="verdict {state}" id="verdict">{html.escape(sentence)}</p>'
    lead += '<ul class="heads">' + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"
    title = t("a.title", collaboration=facts.collaboration)
    return render(title, sections, out.parent, lang, intro=[t("a.intro"), t("a.epsilon")], lead=lead, stem=out.name)
