"""Counting the query's people: overlap by dimensions, the Venn diagram of the members, segment insight (TGI).

Each is one plan for `QueryEngine.release`: its histograms' SQL (`matched`), sensitivities and derived cells.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from cleanroom_client.policy import QueryType

from ..collaborations import Collaboration
from ..errors import InvalidArgumentError
from ..principals import Principal
from .cells import NO_DENOMINATOR, Cell, below_minimum_group, ratio, share, withheld
from .matched import MATCHED, Catalog, all_users_sql, axis, cells_of, histogram_sql, venn_axes, venn_sql
from .plan import Measurement, Noisy, Plan, QueryAnswer, count_cell, dimension_domain, reader
from .queries import OverlapQuery, SegmentInsightQuery, VennQuery

if TYPE_CHECKING:
    from .engine import QueryEngine


def overlap(
    engine: QueryEngine, principal: Principal, collaboration_id: str, q: OverlapQuery, preview: bool = False
) -> QueryAnswer:
    """Matched people per combination of up to three dimensions (all cells of the domains, zero-filled)."""

    def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
        axes = tuple(axis(str(d), d.member, d.column, dimension_domain(collaboration.policy, d)) for d in q.dimensions)
        cells_of(axes)
        people = Measurement("people", reader(axes, histogram_sql(catalog, axes)), q.epsilon, engine.stability(catalog))

        def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
            n = noisy["people"]
            return [count_cell(n, keys, "people", min_group) for keys in n.keys]

        dims = tuple(a.label for a in axes)
        return engine.histograms(principal, collaboration, q.epsilon, (people,), dims, finish, cells_of(axes))

    params = {"dimensions": [str(d) for d in q.dimensions]}
    return engine.release(principal, collaboration_id, q, QueryType.OVERLAP, params, build, preview=preview)


def venn_sensitivity(catalog: Catalog) -> int:
    """L1 sensitivity of the Venn histogram: 1 + 2 k c, over k joins of stability c.

    Its cells partition all the hub's users by the members they are matched with. A hub row added or removed
    moves its own cell by 1, and each pair that changes in any of the k joins (at most c per join) moves one hub
    user between two cells (2). A row of another member changes at most c pairs of its one join: 2c.
    """
    return 1 + 2 * len(catalog.spokes) * catalog.collaboration.policy.stability


def venn(
    engine: QueryEngine, principal: Principal, collaboration_id: str, q: VennQuery, preview: bool = False
) -> QueryAnswer:
    """The hub's users by the members they are matched with, optionally per value of one hub dimension.

    Every region of the Venn diagram (`people_exactly`), and each intersection (`people`: the hub with A, with
    B, with A and B, ...), which sums the regions it covers (their error bars in quadrature).

    The noisy vector is the regions' histogram, so its scale is stated under `people_exactly`, the measure whose
    cells each carry one draw of it. An intersection sums up to 2^k regions and so up to 2^k draws: it has no
    single scale. Stating the histogram's under `people` (as before issue 28) told every reader of the answer
    that those cells carry a k-th of the noise they do: (deviation / scale)^2 averages 2k over k regions, not 2.
    """

    def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
        policy = collaboration.policy
        by = None
        if q.by is not None:
            if q.by.member != catalog.hub:
                raise InvalidArgumentError(
                    f"venn groups by a dimension of the hub ({catalog.hub}), not {q.by.member}: every one of the "
                    "hub's users is counted, matched or not"
                )
            by = axis(str(q.by), q.by.member, q.by.column, dimension_domain(policy, q.by))
        axes = ((by,) if by else ()) + venn_axes(catalog)
        cells_of(axes)
        regions = Measurement(
            "people_exactly", reader(axes, venn_sql(catalog, by)), q.epsilon, venn_sensitivity(catalog)
        )
        spokes = catalog.spokes
        lead = 1 if by else 0

        def region(members: Sequence[str]) -> str:
            return "∩".join((catalog.hub, *members))

        def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
            n = noisy["people_exactly"]
            groups = list(dict.fromkeys(k[:lead] for k in n.keys))
            out = []
            for group in groups:
                cells = [(k[lead:], v) for k, v in zip(n.keys, n.values, strict=True) if k[:lead] == group]
                for pattern, value in cells:
                    matched = [s for s, flag in zip(spokes, pattern, strict=True) if flag == MATCHED]
                    keys = (*group, region(matched))
                    out.append(
                        withheld(keys, "people_exactly", below_minimum_group(min_group))
                        if value < min_group
                        else Cell(keys, "people_exactly", float(value), float(n.error_95), False)
                    )
                for size in range(len(spokes) + 1):
                    for members in itertools.combinations(spokes, size):
                        parts = [v for pattern, v in cells if all(pattern[spokes.index(m)] == MATCHED for m in members)]
                        total = sum(parts)
                        keys = (*group, region(members))
                        out.append(
                            withheld(keys, "people", below_minimum_group(min_group))
                            if total < min_group
                            else Cell(keys, "people", float(max(total, 0)), n.error_95 * math.sqrt(len(parts)), False)
                        )
            return out

        dims = (*((by.label,) if by else ()), "region")
        return engine.histograms(principal, collaboration, q.epsilon, (regions,), dims, finish, cells_of(axes))

    params = {"by": str(q.by) if q.by else ""}
    return engine.release(principal, collaboration_id, q, QueryType.VENN, params, build, preview=preview)


def segment_insight(
    engine: QueryEngine, principal: Principal, collaboration_id: str, q: SegmentInsightQuery, preview: bool = False
) -> QueryAnswer:
    """Per value: matched people and all users of the dimension's member, their shares, TGI and penetration.

    Epsilon is split in half: one half for the matched histogram (sensitivity c), one for the all-users
    histogram (sensitivity 1: it does not go through the join). TGI = 100 x share among matched / share among
    all users; penetration = matched / all users.
    """
    half = q.epsilon / 2

    def build(collaboration: Collaboration, catalog: Catalog) -> Plan:
        ax = axis(
            str(q.dimension),
            q.dimension.member,
            q.dimension.column,
            dimension_domain(collaboration.policy, q.dimension),
        )
        measurements = (
            Measurement("matched", reader((ax,), histogram_sql(catalog, (ax,))), half, engine.stability(catalog)),
            Measurement("all_users", reader((ax,), all_users_sql(catalog, ax)), half, 1),
        )

        def finish(noisy: Mapping[str, Noisy], min_group: int) -> list[Cell]:
            m, a = noisy["matched"], noisy["all_users"]
            total_m = sum(max(v, 0) for v in m.values)
            total_a = sum(max(v, 0) for v in a.values)
            k = len(m.keys)
            small = below_minimum_group(min_group)
            out: list[Cell] = []
            for keys, vm, va in zip(m.keys, m.values, a.values, strict=True):
                ok_m, ok_a = vm >= min_group, va >= min_group
                why = small if not (ok_m and ok_a) else NO_DENOMINATOR
                out.append(Cell(keys, "matched", vm, m.error_95, False) if ok_m else withheld(keys, "matched", small))
                out.append(
                    Cell(keys, "all_users", va, a.error_95, False) if ok_a else withheld(keys, "all_users", small)
                )
                sm = share(vm, total_m, k, m.error_95) if ok_m else None
                sa = share(va, total_a, k, a.error_95) if ok_a else None
                out.append(
                    Cell(keys, "share_matched", *sm, False)
                    if sm
                    else withheld(keys, "share_matched", small if not ok_m else NO_DENOMINATOR)
                )
                out.append(
                    Cell(keys, "share_all", *sa, False)
                    if sa
                    else withheld(keys, "share_all", small if not ok_a else NO_DENOMINATOR)
                )
                tgi = ratio(sm[0], sm[1], sa[0], sa[1]) if sm and sa else None
                out.append(Cell(keys, "tgi", 100 * tgi[0], 100 * tgi[1], False) if tgi else withheld(keys, "tgi", why))
                pen = ratio(vm, m.error_95, va, a.error_95) if ok_m and ok_a else None
                out.append(
                    Cell(keys, "penetration", min(pen[0], 1.0), pen[1], False)  # matched people are users
                    if pen
                    else withheld(keys, "penetration", why)
                )
            return out

        keys = cells_of((ax,))
        return engine.histograms(principal, collaboration, q.epsilon, measurements, (ax.label,), finish, keys)

    params = {"dimension": str(q.dimension)}
    return engine.release(principal, collaboration_id, q, QueryType.SEGMENT_INSIGHT, params, build, preview=preview)
