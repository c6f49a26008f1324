"""Every query type, declared once: what the server, the SDK, the CLI, the report, the preview and the docs read.

A declaration names the query (`name`: the `PreviewRequest` field, the key of a kept answer, the report's section),
its wire form (RPC and request message), the policy's query type, the SDK method and CLI command, the command's
options and how each becomes the SDK's argument, the vectors it releases with noise (what a preview bars), the
cells derived from them by post-processing and how, and how the report reads it in English and Chinese.

The server keys its handlers and its SQL (`cleanroom.analytics.<family>`) by the same names; a test walks the
proto's `AnalyticsService` and `PreviewRequest` and fails if a query lacks any surface. Adding a query type means
adding its declaration here, its SQL and handler on the server, and its tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.message import Message

from .protocol import analytics_pb2 as qpb


@dataclass(frozen=True)
class Option:
    """One CLI option of a query command and the SDK argument it fills.

    `kind` is the option's type (`str`, `int`, `float`, `bool`); `many` makes it repeatable (a list); `required`
    means the command has no default; `parse` names how the text becomes the SDK's value: `period` (START:END to a
    pair), `pairs` (name=value items to a dict), `events` (`--event`/`--no-event` to event filters).
    """

    flag: str
    argument: str
    help: str
    kind: type = str
    default: Any = None
    many: bool = False
    required: bool = False
    parse: str = ""


@dataclass(frozen=True)
class Derived:
    """A cell computed from released vectors after the noise (post-processing: it costs no ε)."""

    measure: str
    how: str


@dataclass(frozen=True)
class Reading:
    """How the report reads one query in one language.

    The section's title, its summary sentence (a template whose fields the report's section for `chart` fills),
    and the short name on the budget chart.
    """

    title: str
    summary: str
    short: str


@dataclass(frozen=True)
class QueryDeclaration:
    """One query type, as every surface sees it (declared positionally in `QUERIES`, in this order)."""

    name: str
    rpc: str
    request: type[Message]
    command: str
    #: The CLI table's title (a template over the SDK arguments).
    heading: str
    #: One line: what it answers (CLI help, docs).
    what: str
    #: A runnable CLI example (docs, `--help`).
    example: str
    options: tuple[Option, ...]
    #: Vectors released with noise, each one row of a preview (`error_95`).
    vectors: tuple[str, ...]
    #: Cells derived from the vectors.
    derived: tuple[Derived, ...]
    #: The answer's dimensions, in the order of its cells' keys (illustrative names; `...` for the asked ones).
    dimensions: tuple[str, ...]
    #: How the report draws it (one builder per chart in `cleanroom_client.report`).
    chart: str
    #: How the report reads it in English and in Chinese (`reading` by language).
    en: Reading = field(repr=False)
    zh: Reading = field(repr=False)
    #: The policy's query type and the SDK method; the query's name when not given.
    policy_type: str = ""
    method: str = ""
    #: The SDK's defaults the CLI keeps (e.g. epsilon).
    epsilon: float = 0.5
    #: Releases an audience to the policy's recipient (the report lists it among the audiences).
    audience: bool = False
    #: Vectors whose values are not what their name says bare (lift's sums about the policy's centres), with what
    #: they are: a preview's typical values name them so (a typical `revenue` of -1,000 is not revenue).
    vector_notes: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy_type", self.policy_type or self.name)
        object.__setattr__(self, "method", self.method or self.name)

    @property
    def reading(self) -> Mapping[str, Reading]:
        """How the report reads it, by language (`en`, `zh`)."""
        return {"en": self.en, "zh": self.zh}

    @property
    def measures(self) -> tuple[str, ...]:
        """Every measure the answer's cells carry: the released vectors that are shown as they are, then derived."""
        return tuple(dict.fromkeys(d.measure for d in self.derived))


_BY = "member.column dimension (up to 3)."


#: Every query type, in the order the report and the docs show them.
QUERIES: Final[tuple[QueryDeclaration, ...]] = (
    QueryDeclaration(
        "overlap",
        "Overlap",
        qpb.OverlapRequest,
        "overlap",
        "overlap",
        "Matched people by up to three dimensions.",
        "cleanroom-client overlap brand-x-2026q4 --by platform.age_band --epsilon 0.5",
        (Option("--by", "by", _BY, many=True),),
        ("people",),
        (Derived("people", "the noisy count per cell of the dimensions' domains"),),
        ("...",),
        "overlap",
        Reading(
            "Overlap by segment",
            "About {total} matched people over the released cells; the largest cell is {cell} ({v} ± {e}).",
            "overlap",
        ),
        Reading("交集人群分布", "已发布格子合计约 {total} 名匹配用户；最大的格子是 {cell}（{v} ± {e}）。", "交集"),
    ),
    QueryDeclaration(
        "venn",
        "Venn",
        qpb.VennRequest,
        "venn",
        "Venn",
        "The hub's users by the other members they are matched with: every intersection and region of the diagram.",
        "cleanroom-client venn brand-jd-tencent --by brand.tier --epsilon 1",
        (Option("--by", "by", "A dimension of the hub's users table (member.column)."),),
        ("people_exactly",),
        (
            Derived("people_exactly", "the noisy count of each region (matched with exactly those members)"),
            Derived("people", "each intersection: the sum of the regions it covers, error bars in quadrature"),
        ),
        ("[by]", "region"),
        "venn",
        Reading(
            "Venn diagram of the members",
            "Of the hub's users, {both} ± {e} are matched with every other member; the largest region is {cell} "
            "({v} ± {ev}).",
            "Venn",
        ),
        Reading(
            "成员交集（韦恩图）",
            "主方用户中有 {both} ± {e} 人与所有其他成员都匹配；最大的区域是 {cell}（{v} ± {ev}）。",
            "韦恩图",
        ),
    ),
    QueryDeclaration(
        "funnel",
        "Funnel",
        qpb.FunnelRequest,
        "funnel",
        "4A funnel",
        "The 4A funnel (counts and shares).",
        "cleanroom-client funnel brand-x-2026q4 --by brand.tier",
        (
            Option("--by", "by", "member.column to cross with the stage."),
            Option("--labels", "labels", "4a or aipl.", default="4a"),
        ),
        ("people",),
        (
            Derived("people", "the noisy count per stage (and group)"),
            Derived("share", "people / the noisy total of its group"),
        ),
        ("[by]", "stage"),
        "funnel",
        Reading("4A funnel", "The largest cell is {stage} with {v} ± {e} matched people.", "funnel"),
        Reading("4A 人群资产", "人数最多的是 {stage}，共 {v} ± {e} 名匹配用户。", "4A 人群"),
    ),
    QueryDeclaration(
        "funnel_flow",
        "FunnelFlow",
        qpb.FunnelFlowRequest,
        "flow",
        "4A flow",
        "Movement between 4A stages from one date to another.",
        "cleanroom-client flow brand-x-2026q4 --start 2026-10-01 --end 2026-11-01",
        (
            Option("--start", "start", "Start date, YYYY-MM-DD.", required=True),
            Option("--end", "end", "End date, YYYY-MM-DD.", required=True),
        ),
        ("people",),
        (
            Derived("people", "the noisy count per (stage on start, stage on end)"),
            Derived("row_share", "people / the noisy total of its start stage"),
        ),
        ("stage@start", "stage@end"),
        "flow",
        Reading(
            "4A flow",
            "The largest move between stages is {a} → {b} ({v} ± {e} people); {stay} stayed in their stage.",
            "flow",
        ),
        Reading("4A 人群流转", "最大的阶段流转是 {a} → {b}（{v} ± {e} 人）；{stay} 人停留在原阶段。", "4A 流转"),
    ),
    QueryDeclaration(
        "segment_insight",
        "SegmentInsight",
        qpb.SegmentInsightRequest,
        "segment",
        "segment insight",
        "Shares, TGI and penetration per value of a dimension.",
        "cleanroom-client segment brand-x-2026q4 --dimension platform.age_band",
        (Option("--dimension", "dimension", "member.column, e.g. platform.age_band.", required=True),),
        ("matched", "all_users"),
        (
            Derived("matched", "noisy matched people per value"),
            Derived("all_users", "noisy users of the dimension's member per value"),
            Derived("share_matched", "matched / their noisy total"),
            Derived("share_all", "all_users / their noisy total"),
            Derived("tgi", "100 × share_matched / share_all"),
            Derived("penetration", "matched / all_users"),
        ),
        ("dimension",),
        "segment",
        Reading(
            "Segment insight (TGI)",
            "Most over-represented: {high} (TGI {t} ± {e}); least: {low} (TGI {t2} ± {e2}).",
            "TGI",
        ),
        Reading("人群洞察（TGI）", "最集中：{high}（TGI {t} ± {e}）；最不集中：{low}（TGI {t2} ± {e2}）。", "TGI"),
    ),
    QueryDeclaration(
        "value",
        "Value",
        qpb.ValueRequest,
        "value",
        "value",
        "GOAL value: sum of a measure and its means per person, buyer and order, per group.",
        "cleanroom-client value brand-x-2026q4 --measure brand.conversions.value --by brand.tier",
        (
            Option("--measure", "measure", "member.table.column, e.g. brand.conversions.value.", required=True),
            Option("--by", "by", _BY, many=True),
        ),
        ("people_by_orders", "sum"),
        (
            Derived("people", "people_by_orders summed over the number of orders (0 … cap)"),
            Derived("buyers", "people_by_orders summed over 1 … cap orders"),
            Derived("orders", "Σ k × people_by_orders with k orders"),
            Derived("sum", "noisy sum of the clamped measure"),
            Derived("per_person", "sum / people"),
            Derived("per_buyer", "sum / buyers"),
            Derived("per_order", "sum / orders"),
        ),
        ("...",),
        "value",
        Reading("GOAL value", "Highest spend per buyer: {group} ({v} ± {e}).", "value"),
        Reading("GOAL 价值", "每位买家消费最高：{group}（{v} ± {e}）。", "价值"),
        epsilon=1.0,
    ),
    QueryDeclaration(
        "loyalty",
        "Loyalty",
        qpb.LoyaltyRequest,
        "loyalty",
        "loyalty",
        "GOAL loyalty: repurchase rate in period 1 and retention into period 2, per group.",
        "cleanroom-client loyalty brand-x-2026q4 --period1 2026-10-01:2026-10-16 --period2 2026-10-16:2026-11-01",
        (
            Option(
                "--period1",
                "period1",
                "START:END of the repurchase window, YYYY-MM-DD, end exclusive.",
                required=True,
                parse="period",
            ),
            Option(
                "--period2",
                "period2",
                "START:END of the retention period, YYYY-MM-DD, end exclusive.",
                required=True,
                parse="period",
            ),
            Option("--by", "by", _BY, many=True),
        ),
        ("people",),
        (
            Derived("converters", "noisy people who converted in period 1"),
            Derived("repeaters", "noisy converters with two or more conversions in period 1"),
            Derived("retained", "noisy converters who converted again in period 2"),
            Derived("repurchase_rate", "repeaters / converters"),
            Derived("retention_rate", "retained / converters"),
        ),
        ("...",),
        "loyalty",
        Reading("GOAL loyalty", "Highest repurchase rate: {group} ({v} ± {e}).", "loyalty"),
        Reading("GOAL 忠诚", "复购率最高：{group}（{v} ± {e}）。", "忠诚"),
        epsilon=1.0,
    ),
    QueryDeclaration(
        "attribution",
        "Attribution",
        qpb.AttributionRequest,
        "attribution",
        "attribution ({model})",
        "Attributed conversions, revenue and ROAS.",
        "cleanroom-client attribution brand-x-2026q4 --model time_decay --lookback-days 7",
        (
            Option(
                "--model",
                "model",
                "last_touch, first_touch, linear, time_decay, position_based.",
                default="last_touch",
            ),
            Option("--lookback-days", "lookback_days", "Lookback window in days.", kind=int, default=7),
            Option("--by", "by", "campaign or channel.", default="campaign"),
            Option("--click-over-view", "click_over_view", "Clicks in the window beat impressions.", kind=bool),
        ),
        ("conversions", "revenue"),
        (
            Derived("attributed_conversions", "noisy conversions credited per campaign or channel"),
            Derived("attributed_revenue", "noisy revenue credited"),
            Derived("roas", "attributed_revenue / the policy's public spend (campaigns with a spend only)"),
        ),
        ("campaign|channel", "[brand dimension]"),
        "attribution",
        Reading(
            "Attribution: {model}",
            "{campaign} has the most attributed conversions ({v} ± {e}), revenue {r} ± {re}, ROAS {roas}.",
            "attribution",
        ),
        Reading(
            "多触点归因：{model}", "{campaign} 的归因转化最多（{v} ± {e}），收入 {r} ± {re}，ROAS {roas}。", "归因"
        ),
        epsilon=1.0,
    ),
    QueryDeclaration(
        "lift",
        "Lift",
        qpb.LiftRequest,
        "lift",
        "lift of {campaign}",
        "Lift of a campaign against its holdout.",
        "cleanroom-client lift brand-x-2026q4 --campaign c-2026-11",
        (Option("--campaign", "campaign", "The campaign whose test groups to compare.", required=True),),
        ("people_by_conversion", "revenue", "revenue_sq"),
        (
            Derived("people", "people_by_conversion, converted or not, per test group"),
            Derived("converters", "people_by_conversion's converted cell per test group"),
            Derived("conversion_rate", "converters / people"),
            Derived("revenue_per_person", "revenue / people + the centre revenue is summed about"),
            Derived("absolute_lift", "exposed rate − holdout rate"),
            Derived("relative_lift", "exposed rate / holdout rate − 1"),
            Derived("incremental_conversions", "absolute_lift × exposed people"),
            Derived(
                "incremental_revenue",
                "(exposed − holdout revenue per person) × exposed people: what the campaign added among the exposed "
                "people; its bar adds the holdout's variance × exposed² × (1/exposed + 1/holdout) to the noise's",
            ),
            Derived("minimum_detectable_lift", "the smallest absolute lift whose 95% interval would exclude zero"),
            Derived(
                "minimum_detectable_revenue",
                "the smallest incremental revenue that would be detected likewise (its bar around zero)",
            ),
        ),
        ("test_group",),
        "lift",
        Reading(
            "Lift against the holdout: {campaign}",
            "Exposed people's conversion rate differs from the holdout's by {v} ± {e} (absolute): {verdict}.",
            "lift",
        ),
        Reading(
            "增量提升（对照组）：{campaign}", "曝光组与对照组的转化率之差为 {v} ± {e}（绝对值）：{verdict}。", "提升"
        ),
        epsilon=1.0,
        vector_notes=(
            ("revenue", "the group's revenue less the policy's centre per person"),
            ("revenue_sq", "squared distances from the policy's square centre, summed"),
        ),
    ),
    QueryDeclaration(
        "lookalike",
        "Lookalike",
        qpb.LookalikeRequest,
        "lookalike",
        "lookalike",
        "Train a DP-SGD lookalike; the platform receives the audience, you its size and quality.",
        "cleanroom-client lookalike brand-x-2026q4 --seed brand.tier=gold --size 2000",
        (
            Option(
                "--seed", "seed", "member.column=value, e.g. brand.tier=gold.", many=True, required=True, parse="pairs"
            ),
            Option("--size", "audience_size", "Audience size for the platform.", kind=int, required=True),
            Option("--delta", "delta", "Below 1/n.", kind=float, default=1e-7),
        ),
        ("quality",),
        (
            Derived("audience_size", "the size asked for (public)"),
            Derived("lift_over_random", "noisy hits in the audience over a random audience's"),
            Derived("lift_lower_95", "its 95% interval's lower end"),
            Derived("lift_upper_95", "its upper end"),
            Derived("precision", "noisy hits / audience size"),
            Derived("recall", "noisy hits / noisy seeds among the platform's users"),
            Derived("base_rate", "noisy seeds / users"),
        ),
        ("quality",),
        "audience",
        Reading("Lookalike audience", "", "lookalike"),
        Reading("相似人群扩展", "", "相似人群"),
        epsilon=1.0,
        audience=True,
    ),
    QueryDeclaration(
        "activate",
        "Activate",
        qpb.ActivateRequest,
        "activate",
        "activation",
        "Release a segment's matched people to the platform; you receive a noisy size. Retargeting, reached by a "
        "campaign and did not buy: --event platform.exposures:2026-11-01:2026-11-15:campaign=c-2026-11 "
        "--no-event brand.conversions:2026-11-01:2026-12-01",
        "cleanroom-client activate brand-x-2026q4 --segment brand.tier=gold --segment platform.stage_4a=appeal",
        (
            Option("--segment", "segment", "member.column=value.", many=True, parse="pairs"),
            Option(
                "--event",
                "events",
                "Had a row: member.table:START:END[:column=value,...] (dates YYYY-MM-DD, end exclusive).",
                many=True,
                parse="events",
            ),
            Option("--no-event", "events", "Had no row: same form as --event.", many=True, parse="no_events"),
        ),
        ("audience_size",),
        (Derived("audience_size", "the segment's noisy size, which gates the release"),),
        ("segment",),
        "audience",
        Reading("Activation", "", "activation"),
        Reading("人群圈选", "", "人群圈选"),
        policy_type="activation",
        epsilon=0.1,
        audience=True,
    ),
)

#: The measure a plan aims at by default per query (`planning.plan`): the number a person acts on, e.g. per buyer
#: value, ROAS's revenue, lift's incremental revenue (a test checks each is among the query's measures).
KEY_MEASURES: Final[Mapping[str, str]] = {
    "overlap": "people",
    "venn": "people",
    "funnel": "share",
    "funnel_flow": "row_share",
    "segment_insight": "tgi",
    "value": "per_buyer",
    "loyalty": "repurchase_rate",
    "attribution": "attributed_revenue",
    "lift": "minimum_detectable_revenue",
    "lookalike": "lift_over_random",
    "activate": "audience_size",
}

#: Declarations by name (the `PreviewRequest` field and the kept answer's `query`).
BY_NAME: Final[Mapping[str, QueryDeclaration]] = {q.name: q for q in QUERIES}
#: Declarations by RPC name.
BY_RPC: Final[Mapping[str, QueryDeclaration]] = {q.rpc: q for q in QUERIES}


def declaration(name: str) -> QueryDeclaration:
    """The declaration of query `name`; ValueError naming the known ones otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown query {name!r}: one of {', '.join(BY_NAME)}") from None


def docs_table() -> str:
    """The docs' table of query types (docs/queries.md holds it verbatim; a test compares)."""
    rows = [
        "| query | SDK | CLI | released with noise | derived after the noise | report |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for q in QUERIES:
        derived = "; ".join(f"`{d.measure}`: {d.how}" for d in q.derived)
        vectors = ", ".join(f"`{v}`" for v in q.vectors)
        report = f"{q.reading['en'].title} / {q.reading['zh'].title}"
        rows.append(
            f"| {q.rpc} | `client.{q.method}(...)` | `cleanroom-client {q.command}` | {vectors} | {derived} "
            f"| {report} |"
        )
    return "\n".join(rows) + "\n"
