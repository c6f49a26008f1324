"""Choosing epsilon before spending it: the key cell of a preview, the epsilon one cell needs, a plan for many queries.

Everything here asks the server only for previews (`AnalyticsService.Preview`): no budget is spent and no data is
read, and each answer is the same for any data. A preview states every cell a query would release at typical
values, with the 95% bar it would carry (`answers.preview_frame`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from .query_types import KEY_MEASURES, declaration

#: How a plan previews one query: (query name, its SDK arguments with `epsilon`, within) -> the preview's frame.
Previewer = Callable[[str, Mapping[str, Any], float], pd.DataFrame]


def key_cell(frame: pd.DataFrame, query: str, cell: str | None = None, keys: Sequence[str] | None = None) -> pd.Series:
    """The cell a plan aims at: measure `cell` (default: the query's key measure) at `keys`, else its widest bar.

    ValueError naming what the preview has when no released cell matches (every one withheld at the typical values
    says why in its `reason`).
    """
    measure = cell or KEY_MEASURES[query]
    rows = frame[(frame["measure"] == measure) & ~frame["withheld"].astype(bool)]
    dims = list(frame.attrs.get("dimensions", []))
    if keys is not None:
        rows = rows[[tuple(str(v) for v in r) == tuple(keys) for r in rows[dims].itertuples(index=False)]]
    if rows.empty:
        reasons = sorted(set(frame.loc[frame["measure"] == measure, "reason"]) - {""})
        why = f" (withheld: {'; '.join(reasons)})" if reasons else ""
        raise ValueError(
            f"{query}: no released {measure!r} cell{f' at {list(keys)}' if keys else ''} in the preview{why}; "
            f"its measures: {sorted(set(frame['measure']))}"
        )
    widest = rows["relative_95"].fillna(-1.0).to_numpy().argmax()
    return rows.iloc[int(widest)]


def cell_name(frame: pd.DataFrame, row: pd.Series) -> str:
    """`measure` at its keys, e.g. `per_buyer [gold]`."""
    dims = list(frame.attrs.get("dimensions", []))
    keys = ", ".join(str(row[d]) for d in dims)
    return f"{row['measure']} [{keys}]" if keys else str(row["measure"])


def plan(
    queries: Sequence[Mapping[str, Any]],
    total: float,
    bounds: tuple[float, float],
    preview: Previewer,
) -> pd.DataFrame:
    """Split `total` epsilon over `queries` so each meets its target on its key cell, or their relative bars match.

    Each query is a dict: `query` (a declared name), optionally `cell` (a measure) and `keys` (its key cell), `within`
    (a target: ±within × the cell's typical value) and the SDK method's arguments (`epsilon`, where given, is where
    the first preview looks). A query with a target gets the least epsilon meeting it (the server solves it from
    the same preview); the rest of `total` goes to the others in proportion to their relative bar at the first
    look, which makes their bars equal where bars shrink as 1/epsilon (noise alone; lift's sampling error does
    not shrink, so its share is an estimate). Every epsilon is kept within the policy's per-query `bounds`; when
    the targets alone exceed `total` they are scaled down together and `meets` says which still hold. The
    answer's bars come from a last preview at each chosen epsilon.
    """
    low, high = bounds
    first: list[tuple[pd.DataFrame, pd.Series, float]] = []
    for q in queries:
        name = str(q["query"])
        start = float(q.get("epsilon", declaration(name).epsilon))
        within = float(q.get("within", 0.0))
        frame = preview(name, _arguments(q, start), within)
        first.append((frame, key_cell(frame, name, q.get("cell"), q.get("keys")), start))
    chosen: list[float] = [0.0] * len(queries)
    targeted = [i for i, q in enumerate(queries) if q.get("within")]
    for i in targeted:
        needed = first[i][1].get("epsilon_needed", float("nan"))
        chosen[i] = high if not (isinstance(needed, float) and math.isfinite(needed)) else float(needed)
    spent = sum(chosen[i] for i in targeted)
    if spent > total:
        chosen = [e * total / spent for e in chosen]
        spent = total
    others = [i for i in range(len(queries)) if i not in targeted]
    weights = {i: max(float(first[i][1]["relative_95"]), 0.0) * first[i][2] for i in others}
    weight = sum(weights.values())
    for i in others:
        share = weights[i] / weight if weight > 0 else 1 / len(others)
        chosen[i] = (total - spent) * share
    rows = []
    for i, q in enumerate(queries):
        name = str(q["query"])
        epsilon = min(max(chosen[i], low), high)
        frame = preview(name, _arguments(q, epsilon), 0.0)
        cell = key_cell(frame, name, q.get("cell"), q.get("keys"))
        within = float(q.get("within", 0.0))
        rows.append(
            {
                "query": name,
                "epsilon": epsilon,
                "cell": cell_name(frame, cell),
                "typical": float(cell["typical"]),
                "error_95": float(cell["error_95"]),
                "relative_95": float(cell["relative_95"]),
                "within": within or float("nan"),
                "meets": bool(cell["relative_95"] <= within) if within else None,
            }
        )
    out = pd.DataFrame(
        rows, columns=["query", "epsilon", "cell", "typical", "error_95", "relative_95", "within", "meets"]
    )
    out.attrs["epsilon_total"] = total
    return out


#: The keys of a planned query that are the plan's, not the SDK method's arguments.
PLAN_KEYS = ("query", "cell", "keys", "within")


def _arguments(q: Mapping[str, Any], epsilon: float) -> dict[str, Any]:
    """The SDK method's arguments of one planned query, at `epsilon`."""
    return {k: v for k, v in q.items() if k not in (*PLAN_KEYS, "epsilon")} | {"epsilon": epsilon}
