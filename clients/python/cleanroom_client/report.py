"""The member's report: one self-contained HTML file (charts embedded) plus each chart as a PNG, in en or zh.

It draws every answer this member received in a collaboration (`answers.jsonl` in its state directory), one
section each, grouped by the refresh period whose data it read and by its population (`with_members`): every query
type of `query_types` (overlap, Venn, funnel, flow, TGI, value and loyalty, attribution with revenue and ROAS, lift),
the audiences asked for (released or withheld) and the budget over queries. Every number is one the member already
holds — a noisy value with its 95% error bar — so drawing them is post-processing: no ε is spent and the server is
not asked. Withheld cells are labelled "withheld", never drawn as zero-height bars; a cell that does not apply (ROAS
without a public spend) says so. Each section says in one sentence what its chart shows.
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import font_manager

from .answers import Answer
from .protocol import attribution_model_name
from .query_types import BY_NAME, QUERIES
from .report_text import Text, text_for

STAGE_ORDER = ("aware", "appeal", "act", "advocate", "awareness", "interest", "purchase", "loyalty", "none")
#: Fonts with Simplified Chinese glyphs, best first; matplotlib falls back through the list glyph by glyph.
CJK_FONTS = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "Microsoft YaHei", "PingFang SC")
_COLUMNS = ("measure", "value", "error_95", "suppressed", "reason")


class ReportError(Exception):
    """The report cannot be drawn as asked (e.g. no Chinese font for `--lang zh`); the message says the fix."""


@dataclass(frozen=True)
class Section:
    """One part of the report: a title, what it shows in one sentence, a chart and/or the cells."""

    key: str
    title: str
    summary: str
    chart: bytes | None = None
    table: str | None = None
    caption: str = ""
    #: The refresh period and population of the answers it draws (a heading above the first section of each).
    group: str = ""


# -- fonts ------------------------------------------------------------------------------------------------------------
def _use_fonts(lang: str) -> None:
    """Chinese labels need a CJK font; one installed after matplotlib cached its font list is found and added."""
    families = ["DejaVu Sans"]
    if lang == "zh":
        available = {f.name for f in font_manager.fontManager.ttflist}
        if not available.intersection(CJK_FONTS):
            for path in font_manager.findSystemFonts():
                if any(token in Path(path).name for token in ("CJK", "wqy", "SourceHan", "msyh", "PingFang")):
                    font_manager.fontManager.addfont(path)
            available = {f.name for f in font_manager.fontManager.ttflist}
        found = [f for f in CJK_FONTS if f in available]
        if not found:
            raise ReportError(
                "--lang zh needs a font with Chinese characters: install Noto Sans CJK "
                "(Debian/Ubuntu: apt-get install fonts-noto-cjk; macOS and Windows have one) and run the report again"
            )
        families = [*found, *families]
    plt.rcParams["font.family"] = "sans-serif"
    plt.rcParams["font.sans-serif"] = families
    plt.rcParams["axes.unicode_minus"] = False
    # Every label is text as written, never mathtext: a domain value such as "$5-$10" (or a tampered entry's
    # "$\frac{$") would otherwise be typeset, or stop the drawing with a parse error.
    plt.rcParams["text.parse_math"] = False


# -- helpers ----------------------------------------------------------------------------------------------------------
def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout's notes on long labels; the image is still whole
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _dims(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in _COLUMNS]


def _shown(frame: pd.DataFrame, measure: str) -> pd.DataFrame:
    return frame[(frame["measure"] == measure) & ~frame["suppressed"].astype(bool)]


def _pm(t: Text, value: float, error: float, percent: bool = False) -> tuple[str, str]:
    if percent:
        return f"{value:.1%}", f"{error:.1%}"
    return t.number(value), t.number(error)


def _top(frame: pd.DataFrame, lowest: bool = False) -> pd.Series:
    """The row with the largest (or smallest) released value."""
    values = frame["value"].to_numpy(dtype=float)
    return frame.iloc[int(np.argmin(values) if lowest else np.argmax(values))]


def _say_top(
    t: Text, released: pd.DataFrame, key: str, names: Callable[[pd.Series], dict[str, str]], percent: bool = False
) -> str:
    """The summary sentence `key` about the largest released cell, or that every cell was withheld."""
    if released.empty:
        return t("sum.none")
    top = _top(released)
    v, e = _pm(t, top["value"], top["error_95"], percent)
    return t(key, v=v, e=e, **names(top))


def _colour(i: int, n: int = 10) -> str:
    """Series i of n: tab10 up to ten series, else n evenly spaced hues, so a legend never repeats a colour."""
    if n <= 10:
        return str(matplotlib.colors.to_hex(matplotlib.colormaps["tab10"](i)))
    return str(matplotlib.colors.to_hex(matplotlib.colormaps["hsv"](i / n)))


def _cell_name(t: Text, row: pd.Series, dims: Sequence[str]) -> str:
    return " · ".join(t.label(row[d]) for d in dims) or t("all")


def _bars(ax: plt.Axes, t: Text, x: np.ndarray, part: pd.DataFrame, width: float, **kw: object) -> None:
    """Bars with 95% error bars; a withheld cell (NaN after reindexing) is labelled, never drawn as zero."""
    values, errors = part["value"].to_numpy(dtype=float), part["error_95"].to_numpy(dtype=float)
    shown = ~np.isnan(values)
    ax.bar(x[shown], values[shown], width, yerr=_yerr(values[shown], errors[shown]), capsize=3, **kw)  # type: ignore[arg-type]
    for xi in x[~shown]:
        ax.text(xi, 0, t("withheld"), rotation=90, ha="center", va="bottom", fontsize=8, color="#777")


def _yerr(values: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """Error bars that stop at zero under a non-negative value (a count, sum or mean is never below it)."""
    below = np.where(values >= 0, np.minimum(errors, values), errors)
    return np.vstack([below, errors])


def _grouped(ax: plt.Axes, t: Text, frame: pd.DataFrame, measures: Sequence[str]) -> None:
    """One group of bars per cell of the dimensions, one bar per measure; withheld cells labelled."""
    dims = _dims(frame)
    frame = frame.assign(_cell=[_cell_name(t, r, dims) for _, r in frame.iterrows()])
    groups = list(dict.fromkeys(frame["_cell"]))
    width = 0.8 / len(measures)
    for i, measure in enumerate(measures):
        rows = frame[frame["measure"] == measure].drop_duplicates("_cell").set_index("_cell")
        part = rows.where(~rows["suppressed"].astype(bool)).reindex(groups)
        colour = _colour(i, len(measures))
        _bars(ax, t, np.arange(len(groups)) + i * width, part, width, label=t.label(measure), color=colour)
    ax.set_xticks(np.arange(len(groups)) + width * (len(measures) - 1) / 2, groups, rotation=20, ha="right")
    if len(measures) > 1:
        ax.legend()


def _not_applicable(frame: pd.DataFrame) -> pd.Series:
    """Cells with no value because none applies, not because too few people.

    ROAS where the revenue was released: the group has no public spend (a channel, `none`, a campaign without one).
    """
    dims = _dims(frame)
    revenue = frame[(frame["measure"] == "attributed_revenue") & ~frame["suppressed"].astype(bool)]
    shown = {tuple(r) for r in revenue[dims].itertuples(index=False)}
    return pd.Series(
        [
            m == "roas" and bool(s) and tuple(r) in shown
            for m, s, r in zip(frame["measure"], frame["suppressed"], frame[dims].itertuples(index=False), strict=True)
        ],
        index=frame.index,
        dtype=bool,
    )


def _table(t: Text, frame: pd.DataFrame) -> str:
    """The cells with readable headers and values: `value ± error` or "withheld"."""
    shown = frame.copy()
    dims = _dims(frame)
    for d in dims:
        shown[d] = [t.label(v) for v in shown[d]]
    applies = ~_not_applicable(frame).to_numpy()
    shown["measure"] = [t.label(m) for m in shown["measure"]]
    reasons = shown["reason"] if "reason" in shown.columns else [""] * len(shown)
    shown["value"] = [
        (t("withheld.why", reason=t.reason(r)) if r else t("withheld") if ok else t("na"))
        if s
        else f"{t.number(v)} ± {t.number(e)}"
        for v, e, s, ok, r in zip(shown["value"], shown["error_95"], shown["suppressed"], applies, reasons, strict=True)
    ]
    shown = shown.drop(columns=[c for c in ("error_95", "suppressed", "reason") if c in shown.columns])
    shown = shown.rename(columns={d: t.label(d) for d in dims})
    shown = shown.rename(columns={"measure": "", "value": "±95%"})
    return shown.to_html(index=False, border=0, classes="cells", escape=True)


# -- one section per kind of answer -----------------------------------------------------------------------------------
def _hbars(t: Text, frame: pd.DataFrame, measure: str) -> bytes:
    """Horizontal bars of one measure per cell (at most 40), withheld cells labelled; people on the x axis."""
    dims = _dims(frame)
    people = frame[frame["measure"] == measure].head(40)
    names = [_cell_name(t, r, dims) for _, r in people.iterrows()]
    values = people["value"].where(~people["suppressed"].astype(bool)).to_numpy(dtype=float)
    errors = people["error_95"].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.28 * len(names)))
    y = np.arange(len(names))[::-1]
    shown = ~np.isnan(values)
    ax.barh(y[shown], values[shown], xerr=_yerr(values[shown], errors[shown]), capsize=3, color=_colour(0))
    for yi in y[~shown]:
        ax.text(0, yi, " " + t("withheld"), va="center", fontsize=8, color="#777")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel(t("y.people"))
    return _png(fig)


def _overlap(t: Text, a: Answer) -> Section:
    frame, dims = a.frame, _dims(a.frame)
    released = _shown(frame, "people")
    total = t.number(released["value"].sum())
    summary = _say_top(t, released, "sum.overlap", lambda top: {"cell": _cell_name(t, top, dims), "total": total})
    return Section("overlap", t("s.overlap"), summary, _hbars(t, frame, "people"), _table(t, frame))


def _venn(t: Text, a: Answer) -> Section:
    """Every region of the diagram as a bar (`people_exactly`); the intersections (`people`) in the cells."""
    frame = a.frame
    dims = _dims(frame)
    regions = _shown(frame, "people_exactly")
    intersections = _shown(frame, "people")
    if regions.empty or intersections.empty:
        summary = t("sum.none")
    else:
        widest = intersections[dims[-1]].map(lambda r: str(r).count("∩"))
        both, largest = intersections[widest == widest.max()].iloc[0], _top(regions)
        summary = t(
            "sum.venn",
            both=t.number(both["value"]),
            e=t.number(both["error_95"]),
            cell=_cell_name(t, largest, dims),
            v=t.number(largest["value"]),
            ev=t.number(largest["error_95"]),
        )
    return Section("venn", t("s.venn"), summary, _hbars(t, frame, "people_exactly"), _table(t, frame))


def _funnel(t: Text, a: Answer) -> Section:
    frame = a.frame
    people = frame[frame["measure"] == "people"]
    dims = _dims(frame)
    stage = dims[-1]
    stages = [s for s in dict.fromkeys([*STAGE_ORDER, *people[stage]]) if s in set(people[stage])]
    groups = list(dict.fromkeys(people[dims[0]])) if len(dims) > 1 else [None]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(groups), 1)
    for i, g in enumerate(groups):
        part = people if g is None else people[people[dims[0]] == g]
        part = part.set_index(stage)
        part = part.where(~part["suppressed"].astype(bool)).reindex(stages)
        label = t("all") if g is None else t.label(g)
        _bars(ax, t, np.arange(len(stages)) + i * width, part, width, label=label, color=_colour(i, len(groups)))
    ax.set_xticks(np.arange(len(stages)) + width * (len(groups) - 1) / 2, [t.label(s) for s in stages])
    ax.set_ylabel(t("y.people"))
    if groups != [None]:
        ax.legend(title=t.label(dims[0]))
    released = _shown(frame, "people")
    summary = _say_top(t, released, "sum.funnel", lambda top: {"stage": _cell_name(t, top, [stage, *dims[:-1]])})
    return Section("funnel", t("s.funnel"), summary, _png(fig), _table(t, frame))


def _flow(t: Text, a: Answer) -> Section:
    frame = a.frame
    people = frame[frame["measure"] == "people"]
    start, end = _dims(frame)
    labels = [s for s in dict.fromkeys([*STAGE_ORDER, *people[start], *people[end]]) if s in set(people[start])]
    grid = np.full((len(labels), len(labels)), np.nan)
    for _, row in people.iterrows():
        if not row["suppressed"] and row[start] in labels and row[end] in labels:
            grid[labels.index(row[start]), labels.index(row[end])] = row["value"]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap)
    for i in range(len(labels)):
        for j in range(len(labels)):
            shown = "—" if np.isnan(grid[i, j]) else f"{grid[i, j]:,.0f}"
            ax.text(j, i, shown, ha="center", va="center", fontsize=8)
    names = [t.label(s) for s in labels]
    ax.set_xticks(range(len(labels)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), names)
    ax.set_xlabel(t("x.stage_on", date=end.partition("@")[2]))
    ax.set_ylabel(t("x.stage_on", date=start.partition("@")[2]))
    fig.colorbar(image, ax=ax, shrink=0.8)
    released = _shown(frame, "people")
    moves = released[released[start] != released[end]]
    if moves.empty:
        summary = t("sum.none")
    else:
        top = _top(moves)
        v, e = _pm(t, top["value"], top["error_95"])
        stay = t.number(released[released[start] == released[end]]["value"].sum())
        summary = t("sum.funnel_flow", a=t.label(top[start]), b=t.label(top[end]), v=v, e=e, stay=stay)
    return Section("flow", t("s.funnel_flow"), summary, _png(fig), _table(t, frame))


def _segment(t: Text, a: Answer) -> Section:
    frame = a.frame
    dim = _dims(frame)[0]
    tgi = frame[frame["measure"] == "tgi"]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    part = tgi.set_index(dim)
    part = part.where(~part["suppressed"].astype(bool))
    _bars(ax, t, np.arange(len(part)), part, 0.7, color="#4C72B0")
    ax.set_xticks(np.arange(len(part)), [t.label(v) for v in part.index])
    ax.axhline(100, color="black", linewidth=0.8)
    ax.set_ylabel(t("y.tgi"))
    ax.set_title(t.label(dim))
    released = _shown(frame, "tgi")
    if released.empty:
        summary = t("sum.none")
    else:
        high, low = _top(released), _top(released, lowest=True)
        summary = t(
            "sum.segment_insight",
            high=t.label(high[dim]),
            t=f"{high['value']:.0f}",
            e=f"{high['error_95']:.0f}",
            low=t.label(low[dim]),
            t2=f"{low['value']:.0f}",
            e2=f"{low['error_95']:.0f}",
        )
    return Section("segment", t("s.segment_insight"), summary, _png(fig), _table(t, frame))


def _value(t: Text, a: Answer) -> Section:
    frame = a.frame
    fig, ax = plt.subplots(figsize=(8, 3.8))
    _grouped(ax, t, frame, ("per_buyer", "per_order"))
    ax.set_ylabel(t("y.currency"))
    ax.set_title(t.label(a.request.get("measure", "")))
    released = _shown(frame, "per_buyer")
    summary = _say_top(t, released, "sum.value", lambda top: {"group": _cell_name(t, top, _dims(frame))})
    return Section("value", t("s.value"), summary, _png(fig), _table(t, frame))


def _loyalty(t: Text, a: Answer) -> Section:
    frame = a.frame
    fig, ax = plt.subplots(figsize=(8, 3.8))
    _grouped(ax, t, frame, ("repurchase_rate", "retention_rate"))
    ax.set_ylim(0, 1)
    ax.set_ylabel(t("y.rate"))
    released = _shown(frame, "repurchase_rate")
    dims = _dims(frame)
    summary = _say_top(t, released, "sum.loyalty", lambda top: {"group": _cell_name(t, top, dims)}, percent=True)
    return Section("loyalty", t("s.loyalty"), summary, _png(fig), _table(t, frame))


def _model(request: dict[str, object]) -> str:
    model = request.get("model", 0)
    return attribution_model_name(model if isinstance(model, (int, str)) else 0)


def _attribution(t: Text, a: Answer) -> Section:
    frame = a.frame
    dim = _dims(frame)[0]
    model = _model(a.request)
    conversions = frame[frame["measure"] == "attributed_conversions"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    part = conversions.set_index(dim)
    part = part.where(~part["suppressed"].astype(bool))
    _bars(ax, t, np.arange(len(part)), part, 0.7, color="#55A868")
    ax.set_xticks(np.arange(len(part)), [t.label(v) for v in part.index], rotation=20, ha="right")
    ax.set_ylabel(t("y.conversions"))
    released = _shown(conversions, "attributed_conversions")
    released = released[released[dim] != "none"]
    if released.empty:
        summary = t("sum.none")
    else:
        top = _top(released)
        same = frame[frame[dim] == top[dim]].set_index("measure")
        v, e = _pm(t, top["value"], top["error_95"])
        r, re_ = (
            _pm(t, same.loc["attributed_revenue", "value"], same.loc["attributed_revenue", "error_95"])
            if "attributed_revenue" in same.index and not same.loc["attributed_revenue", "suppressed"]
            else (t("withheld"), "—")
        )
        roas = (
            f"{same.loc['roas', 'value']:.2f} ± {same.loc['roas', 'error_95']:.2f}"
            if "roas" in same.index and not same.loc["roas", "suppressed"]
            else "—"
        )
        summary = t("sum.attribution", campaign=t.label(top[dim]), v=v, e=e, r=r, re=re_, roas=roas)
    key = f"attribution-{model}"
    return Section(key, t("s.attribution", model=t.label(model)), summary, _png(fig), _table(t, frame))


def _lift(t: Text, a: Answer) -> Section:
    frame = a.frame
    rates = _shown(frame, "conversion_rate")
    lift = _shown(frame, "absolute_lift")
    dims = _dims(frame)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5))
    if not rates.empty:
        names = [_cell_name(t, r, dims) for _, r in rates.iterrows()]
        left.bar(names, rates["value"], yerr=rates["error_95"], capsize=5, color=["#55A868", "#C44E52"][: len(names)])
    left.set_ylabel(t("y.rate"))
    campaign = str(a.request.get("campaign", ""))
    if lift.empty:
        summary = t("sum.none")
    else:
        value, err = float(lift["value"].iloc[0]), float(lift["error_95"].iloc[0])
        right.errorbar([0], [value], yerr=[err], fmt="o", capsize=6)
        right.axhline(0, color="black", linewidth=0.8)
        right.set_xticks([0], [t.label("absolute_lift")])
        verdict = t("lift.clear") if abs(value) > err else t("lift.unclear")
        summary = t("sum.lift", v=f"{value:+.1%}", e=f"{err:.1%}", verdict=verdict)
    return Section(f"lift-{campaign}", t("s.lift", campaign=campaign), summary, _png(fig), _table(t, frame))


def _segment_of(t: Text, request: Mapping[str, Any]) -> str:
    """Who an audience was asked for, in words: the seed or segment filters and the event conditions."""
    filters = request.get("seed") or request.get("segment") or {}
    parts = [f"{t.label(k)} = {t.label(v)}" for k, v in dict(filters).items()]
    for e in request.get("events") or ():
        event = dict(e)
        words = {
            "table": t.label(event.get("table", "")),
            "start": event.get("start_date", ""),
            "end": event.get("end_date", ""),
        }
        parts.append(t("a.no_event" if event.get("absent") else "a.event", **words))
    return "; ".join(parts) or t("a.every")


def _audiences(t: Text, answers: Sequence[Answer]) -> Section:
    """Every audience asked for: its segment, size and quality, and whether it was released.

    A withheld one (its noisy size did not clear the gate) is counted as asked, never as released.
    """
    rows = []
    released = 0
    for a in answers:
        cells = a.frame.set_index("measure")
        sizes = a.frame[(a.frame["measure"] == "audience_size") & ~a.frame["suppressed"].astype(bool)]
        out = bool(a.frame.attrs.get("audience"))
        released += out
        held = a.frame[(a.frame["measure"] == "audience_size") & a.frame["suppressed"].astype(bool)]
        why = str(held["reason"].iloc[0]) if len(held) and "reason" in held.columns else ""
        withheld = t("withheld.why", reason=t.reason(why)) if why else t("withheld")
        size = t.number(float(sizes["value"].iloc[0])) if len(sizes) else withheld
        quality = "—"
        if {"lift_over_random", "lift_lower_95", "lift_upper_95"} <= set(cells.index):
            q = cells.loc[["lift_over_random", "lift_lower_95", "lift_upper_95"], "value"].to_numpy(dtype=float)
            quality = t("withheld") if np.isnan(q).any() else f"{q[0]:.2f} ({q[1]:.2f} – {q[2]:.2f})"
        rows.append(
            {
                t("a.kind"): t.query(a.query),
                t("a.segment"): _segment_of(t, a.request),
                t("a.size"): size,
                t("a.quality"): quality,
                t("a.released"): t("a.yes") if out else t("withheld"),
                t("a.asked"): a.received.strftime("%Y-%m-%d %H:%M"),
            }
        )
    table = pd.DataFrame(rows).to_html(index=False, border=0, classes="cells", escape=True)
    return Section("audiences", t("s.audiences"), t("sum.audiences", n=released, m=len(rows)), None, table)


def _budget(t: Text, answers: Sequence[Answer]) -> Section:
    spent = np.cumsum([a.epsilon_spent for a in answers])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = np.arange(1, len(answers) + 1)
    ax.step(x, spent, where="post", color="#8172B2")
    ax.plot(x, spent, "o", color="#8172B2")
    ax.set_xticks(x, [t.query(a.query) for a in answers], rotation=40, ha="right", fontsize=8)
    ax.set_xlabel(t("x.query"))
    ax.set_ylabel(t("y.epsilon"))
    left = float(answers[-1].frame.attrs.get("epsilon_remaining", 0.0))
    summary = t("sum.budget", spent=round(float(spent[-1]), 3), n=len(answers), left=round(left, 3))
    return Section("budget", t("s.budget"), summary, _png(fig))


#: One section builder per declared chart kind (`QueryDeclaration.chart`); `audience` ones are listed together.
_BUILDERS: dict[str, Callable[[Text, Answer], Section]] = {
    "overlap": _overlap,
    "venn": _venn,
    "funnel": _funnel,
    "flow": _flow,
    "segment": _segment,
    "value": _value,
    "loyalty": _loyalty,
    "attribution": _attribution,
    "lift": _lift,
}
_ORDER = {q.name: i for i, q in enumerate(QUERIES)}


def _group_heading(t: Text, period: int | None, population: tuple[str, ...]) -> str:
    when = t("g.latest") if period is None else t("g.match") if period == 0 else t("g.period", p=period)
    who = t("g.with", members=", ".join(population)) if population else t("g.all")
    return f"{when} · {who}"


def _more(t: Text, a: Answer) -> str:
    """What more epsilon would buy for one answer's bars (noise scales as 1/epsilon), and how to preview first."""
    spent = float(a.request.get("epsilon", a.epsilon_spent) or a.epsilon_spent)
    if spent <= 0:
        return ""
    return t("more", epsilon=spent, double=2 * spent, command=BY_NAME[a.query].command)


def build_sections(answers: Sequence[Answer], lang: str = "en") -> list[Section]:
    """The report's sections: every answer, grouped by refresh period and population, then the budget.

    Within a group, the queries in their declared order (several answers of one query in the order asked), then
    the audiences asked for. Groups run from the match to the latest period; an answer whose period nobody stated
    (kept from an older server) goes last. A query this SDK does not declare is only on the budget chart.
    """
    t = text_for(lang)
    _use_fonts(lang)
    groups: dict[tuple[int | None, tuple[str, ...]], list[Answer]] = {}
    for a in answers:
        if a.query in BY_NAME:
            groups.setdefault((a.refresh_period, a.population), []).append(a)
    sections: list[Section] = []
    keys: dict[str, int] = {}
    for period, population in sorted(groups, key=lambda g: (g[0] is None, g[0] or 0, g[1])):
        kept = groups[(period, population)]
        heading = _group_heading(t, period, population)
        drawn = sorted((a for a in kept if not BY_NAME[a.query].audience), key=lambda a: _ORDER[a.query])
        built = [_BUILDERS[BY_NAME[a.query].chart](t, a) for a in drawn]
        audiences = [a for a in kept if BY_NAME[a.query].audience]
        if audiences:
            built.append(_audiences(t, audiences))
        built = [replace(s, caption=_more(t, a)) for s, a in zip(built, drawn, strict=False)] + built[len(drawn) :]
        for section in built:
            keys[section.key] = keys.get(section.key, 0) + 1
            key = section.key if keys[section.key] == 1 else f"{section.key}-{keys[section.key]}"
            sections.append(replace(section, key=key, group=heading))
    if answers:
        sections.append(_budget(t, answers))
    return sections


def render(
    title: str,
    sections: Iterable[Section],
    out_dir: Path,
    lang: str = "en",
    notes: Sequence[str] = (),
    *,
    intro: Sequence[str] | None = None,
    lead: str = "",
    stem: str = "index",
) -> Path:
    """Write `<stem>.html` (self-contained: no network) and one PNG per chart into `out_dir`; returns the HTML's path.

    The PNGs are `<key>.png` beside index.html, `<stem>-<key>.png` beside any other stem. `intro` replaces the
    member's explanations under the title; `lead` is HTML shown before everything else (the auditor's verdict).
    """
    t = text_for(lang)
    out_dir.mkdir(parents=True, exist_ok=True)
    explained = [t("intro"), t("epsilon"), t("tgi")] if intro is None else list(intro)
    parts = []
    group = ""
    for s in sections:
        if s.group and s.group != group:
            parts.append(f'<h2 class="group">{html.escape(s.group)}</h2>')
        group = s.group
        body = f'<p class="summary">{html.escape(s.summary)}</p>'
        if s.chart is not None:
            (out_dir / (f"{s.key}.png" if stem == "index" else f"{stem}-{s.key}.png")).write_bytes(s.chart)
            uri = "data:image/png;base64," + base64.b64encode(s.chart).decode()
            body += f'<img class="chart" alt="{html.escape(s.title)}" src="{uri}">'
        if s.table is not None:
            body += s.table if s.chart is None else f"<details><summary>{t('cells')}</summary>{s.table}</details>"
        if s.caption:
            body += f'<p class="explain">{html.escape(s.caption)}</p>'
        parts.append(f'<section id="{html.escape(s.key)}"><h3>{html.escape(s.title)}</h3>{body}</section>')
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    paragraphs = "".join(
        f'<p class="{"explain" if i else "intro"}">{html.escape(p)}</p>' for i, p in enumerate(explained)
    )
    page = f"""<!doctype html>
<html lang="{"zh-CN" if lang == "zh" else "en"}"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", sans-serif; margin: 2em auto;
  max-width: 60em; color: #222; }}
img.chart {{ max-width: 100%; border: 1px solid #eee; }}
p.summary {{ font-size: 1.05em; }}
h2.group {{ border-bottom: 2px solid #ccc; margin-top: 2em; }}
p.explain {{ color: #555; }}
table.cells {{ border-collapse: collapse; font-size: 0.85em; }}
table.cells td, table.cells th {{ padding: 0.2em 0.6em; border-bottom: 1px solid #eee; text-align: right; }}
p.verdict {{ font-size: 1.2em; padding: 0.6em 0.8em; border-radius: 4px; }}
p.verdict.valid {{ background: #e6f4ea; border: 1px solid #34a853; }}
p.verdict.unanchored {{ background: #fef7e0; border: 1px solid #f9ab00; }}
p.verdict.broken {{ background: #fce8e6; border: 2px solid #c5221f; font-weight: bold; }}
</style></head>
<body data-charts="0">
{lead}<h1>{html.escape(title)}</h1>
{paragraphs}
<ul>{items}</ul>
{"".join(parts)}
<script>
window.addEventListener("load", () => {{
  const shown = [...document.querySelectorAll("img.chart")].filter(i => i.complete && i.naturalWidth > 0);
  document.body.dataset.charts = String(shown.length);
}});
</script>
</body></html>
"""
    path = out_dir / f"{stem}.html"
    path.write_text(page, encoding="utf-8")
    return path


def report_collaboration(
    answers: Sequence[Answer], collaboration_id: str, out_dir: Path, lang: str = "en", notes: Sequence[str] = ()
) -> Path:
    """The member's report of one collaboration from the answers it received; returns index.html's path."""
    t = text_for(lang)
    sections = build_sections(answers, lang) or [Section("empty", "", t("empty", collaboration=collaboration_id))]
    return render(t("title", collaboration=collaboration_id), sections, out_dir, lang, notes)
