"""The visual report: one self-contained HTML file (charts embedded) plus the charts as PNG files.

Every number drawn is one the brand received: noisy values with their 95% error bars; suppressed cells are labelled
"withheld" (never drawn as a zero-height bar). Nothing here touches exact data.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

STAGE_ORDER = ("aware", "appeal", "act", "advocate", "none")


@dataclass
class ReportData:
    """What the brand received in one session of the demo (or any session)."""

    title: str
    funnel: pd.DataFrame
    flow: pd.DataFrame
    segment: pd.DataFrame
    attribution: Mapping[str, pd.DataFrame]
    lift: pd.DataFrame
    audit_log: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    #: GOAL value and loyalty answers (optional: sessions that asked them).
    value: pd.DataFrame | None = None
    loyalty: pd.DataFrame | None = None


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _released(frame: pd.DataFrame, measure: str) -> pd.DataFrame:
    return frame[(frame["measure"] == measure) & ~frame["suppressed"]]


def _bars(ax: plt.Axes, x: np.ndarray, part: pd.DataFrame, width: float, **kw: object) -> None:
    """Bars with 95% error bars; a withheld cell (NaN after reindexing) is labelled "withheld", never drawn as 0."""
    values, errors = part["value"].to_numpy(dtype=float), part["error_95"].to_numpy(dtype=float)
    shown = ~np.isnan(values)
    ax.bar(x[shown], values[shown], width, yerr=errors[shown], capsize=3, **kw)  # type: ignore[arg-type]
    for xi in x[~shown]:
        ax.text(xi, 0, "withheld", rotation=90, ha="center", va="bottom", fontsize=8, color="#777")


def _grouped(ax: plt.Axes, frame: pd.DataFrame, measures: tuple[str, ...]) -> None:
    """One group of bars per value of the first dimension, one bar per measure."""
    dim = frame.columns[0]
    groups = list(dict.fromkeys(frame[dim]))
    width = 0.8 / len(measures)
    for i, measure in enumerate(measures):
        rows = frame[frame["measure"] == measure].set_index(dim)
        part = rows.where(~rows["suppressed"].astype(bool)).reindex(groups)
        _bars(ax, np.arange(len(groups)) + i * width, part, width, label=measure)
    ax.set_xticks(np.arange(len(groups)) + width * (len(measures) - 1) / 2, groups)
    ax.legend()


def value_chart(frame: pd.DataFrame) -> bytes:
    """GOAL value: spend per buyer and per order, per group, with 95% error bars; withheld groups are labelled."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    _grouped(ax, frame, ("per_buyer", "per_order"))
    ax.set_ylabel("currency (±95%)")
    ax.set_title(f"GOAL value by {frame.columns[0]}")
    return _png(fig)


def loyalty_chart(frame: pd.DataFrame) -> bytes:
    """GOAL loyalty: repurchase and retention rates per group, with 95% error bars."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    _grouped(ax, frame, ("repurchase_rate", "retention_rate"))
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate (±95%)")
    ax.set_title(f"GOAL loyalty by {frame.columns[0]}")
    return _png(fig)


def funnel_chart(frame: pd.DataFrame) -> bytes:
    """People per 4A stage (per group of the first dimension when there are two), with 95% error bars."""
    people = _released(frame, "people")
    dims = [c for c in frame.columns if c not in ("measure", "value", "error_95", "suppressed")]
    stage_col = dims[-1]
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = list(dict.fromkeys(people[dims[0]])) if len(dims) > 1 else [None]
    width = 0.8 / max(len(groups), 1)
    stages = [s for s in dict.fromkeys(list(STAGE_ORDER) + list(frame[stage_col])) if s in set(frame[stage_col])]
    for i, g in enumerate(groups):
        part = people if g is None else people[people[dims[0]] == g]
        part = part.set_index(stage_col).reindex(stages)
        x = np.arange(len(stages)) + i * width
        ax.bar(x, part["value"].fillna(0), width, yerr=part["error_95"].fillna(0), capsize=3, label=g or "all")
    ax.set_xticks(np.arange(len(stages)) + width * (len(groups) - 1) / 2, stages)
    ax.set_ylabel("matched people (±95%)")
    ax.set_title("4A funnel")
    if groups != [None]:
        ax.legend(title=dims[0])
    return _png(fig)


def flow_chart(frame: pd.DataFrame) -> bytes:
    """The transition matrix as a heatmap; withheld cells are grey."""
    people = frame[frame["measure"] == "people"]
    start, end = [c for c in frame.columns if c not in ("measure", "value", "error_95", "suppressed")]
    labels = [s for s in dict.fromkeys(list(STAGE_ORDER) + list(people[start])) if s in set(people[start])]
    grid = np.full((len(labels), len(labels)), np.nan)
    for _, row in people.iterrows():
        if not row["suppressed"]:
            grid[labels.index(row[start]), labels.index(row[end])] = row["value"]
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, "—" if np.isnan(grid[i, j]) else f"{grid[i, j]:,.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel(f"stage on {end.split('@')[-1]}")
    ax.set_ylabel(f"stage on {start.split('@')[-1]}")
    ax.set_title("4A flow (— withheld: below the minimum group size)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _png(fig)


def tgi_chart(frame: pd.DataFrame) -> bytes:
    """TGI per value with 95% error bars; 100 means as common among matched people as among all users."""
    tgi = _released(frame, "tgi")
    dim = frame.columns[0]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(tgi[dim], tgi["value"], yerr=tgi["error_95"], capsize=4, color="#4C72B0")
    ax.axhline(100, color="black", linewidth=0.8)
    ax.set_ylabel("TGI (±95%)")
    ax.set_title(f"segment insight: TGI by {dim}")
    return _png(fig)


def attribution_chart(frames: Mapping[str, pd.DataFrame]) -> bytes:
    """Attributed conversions per campaign for each model, with 95% error bars."""
    fig, ax = plt.subplots(figsize=(8, 4))
    models = list(frames)
    campaigns = list(
        dict.fromkeys(c for f in frames.values() for c in _released(f, "attributed_conversions")["campaign"])
    )
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        part = _released(frames[model], "attributed_conversions").set_index("campaign").reindex(campaigns)
        _bars(ax, np.arange(len(campaigns)) + i * width, part, width, label=model)
    ax.set_xticks(np.arange(len(campaigns)) + width * (len(models) - 1) / 2, campaigns)
    ax.set_ylabel("attributed conversions (±95%)")
    ax.set_title("attribution by campaign (none = unattributed)")
    ax.legend()
    return _png(fig)


def lift_chart(frame: pd.DataFrame) -> bytes:
    """Conversion rate per test group with intervals, and the absolute lift with its interval."""
    rates = _released(frame, "conversion_rate")
    lift = _released(frame, "absolute_lift")
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5))
    left.bar(rates["test_group"], rates["value"], yerr=rates["error_95"], capsize=5, color=["#55A868", "#C44E52"])
    left.set_ylabel("conversion rate (±95%)")
    left.set_title("exposed vs holdout")
    if not lift.empty:
        value, err = float(lift["value"].iloc[0]), float(lift["error_95"].iloc[0])
        right.errorbar([0], [value], yerr=[err], fmt="o", capsize=6)
        right.axhline(0, color="black", linewidth=0.8)
        right.set_xticks([0], ["absolute lift"])
        right.set_title(f"lift {value:+.3f} ± {err:.3f}")
    return _png(fig)


def budget_chart(audit_log: pd.DataFrame) -> bytes:
    """Cumulative epsilon spent per member over the audit log's time."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    spent = audit_log[audit_log["epsilon"] > 0].sort_values("sequence")
    for member, part in spent.groupby("principal"):
        ax.step(part["time"], part["epsilon"].cumsum(), where="post", label=str(member))
    ax.set_ylabel("ε spent (cumulative)")
    ax.set_title("privacy budget over time")
    if not spent.empty:
        ax.legend()
    fig.autofmt_xdate()
    return _png(fig)


def _table(frame: pd.DataFrame) -> str:
    shown = frame.copy()
    shown["value"] = [
        "withheld" if s else (f"{v:,.3f} ± {e:,.3f}" if abs(v) < 10 else f"{v:,.0f} ± {e:,.0f}")
        for v, e, s in zip(shown["value"], shown["error_95"], shown["suppressed"], strict=True)
    ]
    return shown.drop(columns=["error_95", "suppressed"]).to_html(index=False, border=0, classes="cells")


def render(data: ReportData, out_dir: Path) -> Path:
    """Write index.html (self-contained) and one PNG per chart into `out_dir`; returns the HTML's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {
        "funnel": ("4A funnel", funnel_chart(data.funnel), data.funnel),
        "flow": ("4A flow", flow_chart(data.flow), None),
        "tgi": ("Segment insight (TGI)", tgi_chart(data.segment), data.segment),
        "attribution": ("Attribution by campaign", attribution_chart(data.attribution), None),
        **({"value": ("GOAL value", value_chart(data.value), data.value)} if data.value is not None else {}),
        **(
            {"loyalty": ("GOAL loyalty", loyalty_chart(data.loyalty), data.loyalty)} if data.loyalty is not None else {}
        ),
        "lift": ("Lift against the holdout", lift_chart(data.lift), data.lift),
        "budget": ("Privacy budget spent", budget_chart(data.audit_log), None),
    }
    sections = []
    for key, (title, png, table) in charts.items():
        (out_dir / f"{key}.png").write_bytes(png)
        uri = "data:image/png;base64," + base64.b64encode(png).decode()
        body = f'<img class="chart" alt="{html.escape(title)}" src="{uri}">'
        if table is not None:
            body += f"<details><summary>cells</summary>{_table(table)}</details>"
        sections.append(f"<section><h2>{html.escape(title)}</h2>{body}</section>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.notes)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
img.chart {{ max-width: 100%; border: 1px solid #eee; }}
table.cells {{ border-collapse: collapse; font-size: 0.85em; }}
table.cells td, table.cells th {{ padding: 0.2em 0.6em; border-bottom: 1px solid #eee; text-align: right; }}
</style></head>
<body data-charts="0">
<h1>{html.escape(data.title)}</h1>
<p>Every number below is differentially private: a noisy value with its 95% error bar. Withheld cells fell below
the minimum group size. The brand never saw a row of the platform's data, nor the platform one of the brand's.</p>
<ul>{notes}</ul>
{"".join(sections)}
<script>
window.addEventListener("load", () => {{
  const shown = [...document.querySelectorAll("img.chart")].filter(i => i.complete && i.naturalWidth > 0);
  document.body.dataset.charts = String(shown.length);
}});
</script>
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page)
    return path
