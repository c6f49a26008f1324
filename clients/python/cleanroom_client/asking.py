"""The query methods of `CleanRoomClient`, one per declared query type (`query_types`).

They keep the signatures users call (`client.overlap(...)`, `funnel`, `venn`, `attribution`, `lookalike`,
`activate`, ...).

Each builds its request from its arguments and asks through `_ask`, which previews, asks (lookalike with the
training's progress streamed) and keeps the answer for the report, the same way for every query.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

import grpc

from . import answers
from .answers import preview_frame, result_frame
from .errors import CleanRoomError, InternalError
from .protocol import ATTRIBUTION_MODELS, COLLABORATIONS, DEFAULT_HALF_LIFE_DAYS, collaboration_name
from .protocol import analytics_pb2 as qpb
from .protocol import analytics_pb2_grpc as qpb_grpc
from .query_types import declaration
from .witness import Witness

if TYPE_CHECKING:
    import pandas as pd

# pandas, numpy, tqdm and the matching's modules load in the methods that use them (a frame is built from the
# answer once it arrives): a command line that only checks a budget, or fails at its first call, starts without
# them (about 0.4 s of CPU).

T = TypeVar("T")


@dataclass(frozen=True)
class PreviewOptions:
    """What a preview assumes and solves for (pass as `preview=` to any query method; `True` takes the defaults).

    `typical_group`: people per cell (default 1,000; buyers and converters among them, measures at the middle of
    the policy's bounds); `typical`: a released vector's typical value per cell, e.g. {"sum": 48000} (released
    unit); `within`: solve per cell the least epsilon giving a bar of ±within × its typical value (0.15: ±15%).
    """

    typical_group: float = 0.0
    typical: Mapping[str, float] = field(default_factory=dict)
    within: float = 0.0


#: A query method's `preview`: False (ask), True (preview at the defaults), or what the preview assumes.
Previewing = bool | PreviewOptions


def collaboration_dir(state_dir: Path, collaboration_id: str) -> Path:
    """A member's own state for one collaboration: blinding key, surrogate ids, the answers received."""
    return state_dir / "collaborations" / collaboration_id.removeprefix(COLLABORATIONS)


class Scope(TypedDict, total=False):
    """The keywords every query method takes besides its own arguments (keyword-only; each may be left out).

    `preview=True` (or `PreviewOptions`): instead of asking, return every cell the answer would hold at typical
    values with the 95% bar it would carry there (`answers.preview_frame`), spending nothing and reading no data
    (default False).
    `refresh_period`: read the data as of that refresh period (0: the match); by default the last completed one.
    `with_members`: with three or more members a query's people are the hub's users matched with every other
    member (the default), or with those named here.
    """

    preview: Previewing
    refresh_period: int | None
    with_members: Sequence[str]


class QueryMethods:
    """Asking queries: what `CleanRoomClient` sets up (the channel's stubs, the token, the state directory)."""

    _analytics: qpb_grpc.AnalyticsServiceStub
    _metadata: tuple[tuple[str, str], ...]
    _witness: Witness
    progress: bool
    state_dir: Path

    def _call(self, fn: Callable[..., T], request: object) -> T:
        try:
            return fn(request, metadata=self._metadata)
        except grpc.RpcError as err:
            raise CleanRoomError.from_rpc(err) from None

    # -- analytics ---------------------------------------------------------------------------------------------------
    def _ask(self, name: str, collaboration_id: str, scope: Scope, **fields: Any) -> pd.DataFrame:
        """Declared query `name` (`query_types`): its request from `fields`, asked (or previewed), kept, as a frame.

        `scope` holds the keywords every query method takes besides its own (`Scope`); absent ones take its defaults.
        """
        declared = declaration(name)
        parent = collaboration_name(collaboration_id)
        refresh_period = scope.get("refresh_period")
        period = {} if refresh_period is None else {"refresh_period": refresh_period}
        build: Callable[..., Any] = declared.request
        request = build(parent=parent, with_members=list(scope.get("with_members", ())), **period, **fields)
        preview = scope.get("preview", False)
        if preview:
            options = preview if isinstance(preview, PreviewOptions) else PreviewOptions()
            previewed = qpb.PreviewRequest(
                typical_group=options.typical_group, typical=dict(options.typical), within=options.within
            )
            getattr(previewed, name).CopyFrom(request)
            return preview_frame(self._call(self._analytics.Preview, previewed), within=options.within > 0)
        if declared.name == "lookalike":
            result = self._train_with_progress(request)
        else:
            result = self._call(getattr(self._analytics, declared.rpc), request)
        answers.record(self.collaboration_dir(parent), name, request, result)
        return result_frame(result)

    def preview(
        self,
        query: str,
        collaboration_id: str,
        typical_group: float = 0.0,
        typical: Mapping[str, float] | None = None,
        within: float = 0.0,
        **arguments: Any,
    ) -> pd.DataFrame:
        """Every cell declared query `query` would release with `arguments`, at typical values, with its 95% bar.

        The same as the query's method with `preview=PreviewOptions(...)`: nothing spent, no data read. `within`
        (0.15: ±15%) adds each cell's `epsilon_needed`.
        """
        method = getattr(self, declaration(query).method)
        options = PreviewOptions(typical_group, dict(typical or {}), within)
        frame: pd.DataFrame = method(collaboration_id, **arguments, preview=options)
        return frame

    def epsilon_for(
        self,
        query: str,
        collaboration_id: str,
        within: float,
        cell: str | None = None,
        keys: Sequence[str] | None = None,
        **arguments: Any,
    ) -> float:
        """The least epsilon at which one cell's 95% bar is within ±`within` of its typical value (NaN: none).

        The cell is measure `cell` at `keys` (default: the query's key measure, `query_types.KEY_MEASURES`, at
        its widest bar); `arguments` are the query method's (e.g. measure= for value). Solved by the server from
        the same preview (nothing spent), within the policy's per-query range.
        """
        from . import planning

        frame = self.preview(query, collaboration_id, within=within, **arguments)
        return float(planning.key_cell(frame, query, cell, keys)["epsilon_needed"])

    def plan(
        self, collaboration_id: str, queries: Sequence[Mapping[str, Any]], total_epsilon: float | None = None
    ) -> pd.DataFrame:
        """Split an epsilon budget (default: all you have left) over queries before asking any, spending nothing.

        `queries`: dicts with `query` (e.g. "value"), the method's arguments, and optionally `within` (a target
        on the key cell, ±within × its typical value), `cell` (its measure) and `keys` (which cell). Returns one row per
        query: its epsilon, the key cell, its typical value, ± bar, relative bar and whether it meets its target
        (`planning.plan`).
        """
        from . import planning

        budget = self.budget(collaboration_id)
        bounds = (float(budget.attrs["epsilon_per_query_min"]), float(budget.attrs["epsilon_per_query_max"]))

        def look(name: str, arguments: Mapping[str, Any], within: float) -> pd.DataFrame:
            return self.preview(name, collaboration_id, within=within, **arguments)

        if total_epsilon is None:
            q = queries[0]
            first = look(str(q["query"]), {k: v for k, v in q.items() if k not in planning.PLAN_KEYS}, 0.0)
            total_epsilon = float(first.attrs["epsilon_remaining"])
        return planning.plan(queries, total_epsilon, bounds, look)

    def collaboration_dir(self, collaboration_id: str) -> Path:
        """This member's own state for one collaboration: blinding key, surrogate ids, the answers received."""
        return collaboration_dir(self.state_dir, collaboration_id)

    def answers(self, collaboration_id: str) -> list[answers.Answer]:
        """The answers this member received in a collaboration (kept locally; what `report` draws), oldest first."""
        return answers.load(self.collaboration_dir(collaboration_id))

    def overlap(
        self, collaboration_id: str, by: Sequence[str] = (), epsilon: float = 0.5, **scope: Unpack[Scope]
    ) -> pd.DataFrame:
        """Matched people, grouped by up to three `member.column` dimensions; one row per cell and measure."""
        return self._ask("overlap", collaboration_id, scope, dimensions=list(by), epsilon=epsilon)

    def venn(
        self, collaboration_id: str, by: str | None = None, epsilon: float = 0.5, **scope: Unpack[Scope]
    ) -> pd.DataFrame:
        """The hub's users by the other members they are matched with, optionally per value of one hub dimension.

        One row per region and measure: `people` for each intersection (`brand∩jd`: the brand's users matched with
        jd, whatever else), `people_exactly` for each region of the diagram (matched with exactly those members).
        """
        return self._ask("venn", collaboration_id, scope, by=by or "", epsilon=epsilon)

    def funnel(
        self,
        collaboration_id: str,
        by: str | None = None,
        epsilon: float = 0.5,
        labels: str = "4a",
        **scope: Unpack[Scope],
    ) -> pd.DataFrame:
        """Matched people per 4A stage (counts and shares), optionally crossed with one dimension."""
        return self._ask("funnel", collaboration_id, scope, by=by or "", epsilon=epsilon, labels=labels)

    def funnel_flow(
        self,
        collaboration_id: str,
        start: str,
        end: str,
        epsilon: float = 0.5,
        labels: str = "4a",
        **scope: Unpack[Scope],
    ) -> pd.DataFrame:
        """Transitions between 4A stages from the snapshot on `start` to the one on `end` (ISO dates)."""
        dates = {"start_date": start, "end_date": end}
        return self._ask("funnel_flow", collaboration_id, scope, **dates, epsilon=epsilon, labels=labels)

    def segment_insight(
        self, collaboration_id: str, dimension: str, epsilon: float = 0.5, **scope: Unpack[Scope]
    ) -> pd.DataFrame:
        """Per value of `dimension`: matched and all users, their shares, TGI and penetration."""
        return self._ask("segment_insight", collaboration_id, scope, dimension=dimension, epsilon=epsilon)

    def value(
        self, collaboration_id: str, measure: str, by: Sequence[str] = (), epsilon: float = 1.0, **scope: Unpack[Scope]
    ) -> pd.DataFrame:
        """GOAL value of a declared measure (`member.table.column`) per group of up to three dimensions.

        Measures per group: people, buyers, orders, sum, and the means per_person, per_buyer, per_order, each with
        its 95% bound. Values are clamped to the policy's bounds and each person contributes at most the table's
        `max_per_person` rows, their total clipped to the policy's `per_person_max`; epsilon is split in
        half between one histogram of people by number of orders (people, buyers and orders are its sums) and the sum.
        """
        return self._ask("value", collaboration_id, scope, by=list(by), measure=measure, epsilon=epsilon)

    def loyalty(
        self,
        collaboration_id: str,
        period1: tuple[str, str],
        period2: tuple[str, str],
        by: Sequence[str] = (),
        epsilon: float = 1.0,
        **scope: Unpack[Scope],
    ) -> pd.DataFrame:
        """GOAL loyalty per group: converters in period 1, repeaters, retained; repurchase and retention rates.

        Periods are (start, end) ISO dates, end exclusive; period 2 starts no earlier than period 1 ends.
        """
        periods = {"period1_start": period1[0], "period1_end": period1[1]}
        periods |= {"period2_start": period2[0], "period2_end": period2[1]}
        return self._ask("loyalty", collaboration_id, scope, by=list(by), **periods, epsilon=epsilon)

    def attribution(
        self,
        collaboration_id: str,
        model: str = "last_touch",
        lookback_days: int = 7,
        by: str = "campaign",
        epsilon: float = 1.0,
        brand_dimension: str | None = None,
        click_over_view: bool = False,
        half_life_days: float = DEFAULT_HALF_LIFE_DAYS,
        **scope: Unpack[Scope],
    ) -> pd.DataFrame:
        """Attributed conversions, revenue and ROAS per campaign or channel; group `none` is unattributed.

        Models: last_touch, first_touch, linear, time_decay (with half_life_days), position_based (40/20/40).
        """
        if model not in ATTRIBUTION_MODELS:
            raise ValueError(f"model must be one of {', '.join(ATTRIBUTION_MODELS)}")
        return self._ask(
            "attribution",
            collaboration_id,
            scope,
            model=ATTRIBUTION_MODELS[model],
            lookback_days=lookback_days,
            by=by,
            brand_dimension=brand_dimension or "",
            click_over_view=click_over_view,
            half_life_days=half_life_days,
            epsilon=epsilon,
        )

    def lift(self, collaboration_id: str, campaign: str, epsilon: float = 1.0, **scope: Unpack[Scope]) -> pd.DataFrame:
        """Conversion rate per test group, lift, incremental conversions and revenue, with intervals."""
        return self._ask("lift", collaboration_id, scope, campaign=campaign, epsilon=epsilon)

    def lookalike(
        self,
        collaboration_id: str,
        seed: Mapping[str, str],
        audience_size: int,
        epsilon: float = 1.0,
        delta: float | None = None,
        model: str = "logistic",
        **scope: Unpack[Scope],
    ) -> pd.DataFrame:
        """Train a DP-SGD lookalike on the seeds (e.g. {"brand.tier": "gold"}); the platform receives the audience.

        You receive the audience's name (`attrs["audience"]`) and size, the epsilon charged for DP-SGD and its
        noise multiplier, and the audience's quality as a DP lift over random (`lift_over_random` with its 95%
        interval `lift_lower_95` .. `lift_upper_95`; `precision`, `recall`, `base_rate`); never who is in it.
        `delta` defaults to 1e-7 (it must be below 1/n).
        """
        return self._ask(
            "lookalike",
            collaboration_id,
            scope,
            seed=dict(seed),
            audience_size=audience_size,
            epsilon=epsilon,
            delta=1e-7 if delta is None else delta,
            model=model,
        )

    def _train_with_progress(self, request: qpb.LookalikeRequest) -> qpb.QueryResult:
        """LookalikeWithProgress: a bar over the server's training steps (when `progress`), then the answer."""
        from tqdm.auto import tqdm

        bar = None
        try:
            stream = self._analytics.LookalikeWithProgress(
                qpb.LookalikeWithProgressRequest(lookalike=request), metadata=self._metadata
            )
            for update in stream:
                if update.HasField("result"):
                    return update.result
                if self.progress:
                    if bar is None:
                        desc = "training the lookalike (server)"
                        bar = tqdm(total=update.progress.steps, desc=desc, unit="step", leave=False)
                    bar.n = update.progress.step
                    bar.refresh()
        except grpc.RpcError as err:
            raise CleanRoomError.from_rpc(err) from None
        finally:
            if bar is not None:
                bar.close()
        raise InternalError("INTERNAL", "the server ended the lookalike stream without an answer")

    def activate(
        self,
        collaboration_id: str,
        segment: Mapping[str, str] | None = None,
        epsilon: float = 0.1,
        delta: float = 0.0,
        events: Sequence[Mapping[str, Any]] = (),
        **scope: Unpack[Scope],
    ) -> pd.DataFrame:
        """Release a segment's matched people (e.g. {"brand.tier": "gold"}) to the policy's activation recipient.

        A disclosure the policy names, not a DP aggregate: the list goes out only if the segment's true size is at
        least the policy's minimum and a noisy size clears it with a margin (delta 0: the policy's maximum). You
        receive the noisy size only; your ledger and the recipient's are charged.

        Retargeting: `events` are conditions on event tables the policy's `activation.events` names, each a dict
        with table, start, end (ISO dates, end exclusive), optional absent (True: no such row) and where, e.g.
        [{"table": "platform.exposures", "start": "2026-11-01", "end": "2026-11-15", "where": {"campaign": "c1"}},
        {"table": "brand.conversions", "start": "2026-11-01", "end": "2026-12-01", "absent": True}]: reached by
        the campaign, did not buy.
        """
        filters = [
            qpb.EventFilter(
                table=e["table"],
                start_date=e["start"],
                end_date=e["end"],
                absent=bool(e.get("absent", False)),
                where=dict(e.get("where", {})),
            )
            for e in events
        ]
        return self._ask(
            "activate",
            collaboration_id,
            scope,
            segment=dict(segment or {}),
            epsilon=epsilon,
            delta=delta,
            events=filters,
        )

    def audiences(self, collaboration_id: str) -> pd.DataFrame:
        """The audiences released to you (as the member with `receive_audiences`)."""
        response = self._call(
            self._analytics.ListAudiences, qpb.ListAudiencesRequest(parent=collaboration_name(collaboration_id))
        )
        import pandas as pd  # once there is an answer to hold

        return pd.DataFrame(
            [
                {
                    "name": a.name,
                    "kind": a.kind,
                    "size": a.size,
                    "requester": a.requester,
                    "create_time": a.create_time.ToDatetime(),
                }
                for a in response.audiences
            ],
            columns=["name", "kind", "size", "requester", "create_time"],
        )

    def fetch_audience(self, audience: str) -> pd.Series:
        """The members of an audience released to you, as your own user keys (mapped locally, never uploaded).

        The Series is named after your key column at the match (`user_id`, say), so a file written from it has
        your column's name as its header.
        """
        import numpy as np
        import pandas as pd

        from .matching import key_column

        parts = audience.split("/")
        if len(parts) != 4:
            raise ValueError("pass an audience name like collaborations/c/audiences/a (see audiences())")
        rows_path = self.collaboration_dir(parts[1]) / "rows.parquet"
        if not rows_path.exists():
            raise FileNotFoundError(f"{rows_path} is missing: only the machine that matched can map the audience back")
        try:
            chunks = [
                c.row_ids
                for c in self._analytics.FetchAudience(qpb.FetchAudienceRequest(name=audience), metadata=self._metadata)
            ]
        except grpc.RpcError as err:
            raise CleanRoomError.from_rpc(err) from None
        ids = np.frombuffer(b"".join(chunks), dtype="<i8")
        rows = pd.read_parquet(rows_path)
        keys = rows.set_index("row_id")["key"]
        return keys.loc[keys.index.intersection(pd.Index(ids))].reset_index(drop=True).rename(key_column(rows_path))

    def budget(self, collaboration_id: str) -> pd.DataFrame:
        """Epsilon total, spent and left per member.

        The audit log's head is checked first against the one this client remembers, so budget that reappears
        because the server's history was rolled back raises HistoryRewrittenError instead of being shown.
        """
        self._witness.head(collaboration_id)
        b = self._call(self._analytics.GetBudget, qpb.GetBudgetRequest(parent=collaboration_name(collaboration_id)))
        import pandas as pd  # once there is an answer to hold

        frame = pd.DataFrame(
            [
                {
                    "member": m.member,
                    "total": m.epsilon_total,
                    "spent": m.epsilon_spent,
                    "left": m.epsilon_remaining,
                    "delta_total": m.delta_total,
                    "delta_spent": m.delta_spent,
                    "delta_left": m.delta_remaining,
                }
                for m in b.members
            ]
        )
        frame.attrs["epsilon_per_query_max"] = b.epsilon_per_query_max
        frame.attrs["epsilon_per_query_min"] = b.epsilon_per_query_min
        frame.attrs["delta_per_query_max"] = b.delta_per_query_max
        frame.attrs["since_sequence"] = {m.member: m.since_sequence for m in b.members}
        return frame

    # -- audit -------------------------------------------------------------------------------------------------------
