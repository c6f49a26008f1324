"""The report's words in English and Simplified Chinese: titles, one-line explanations, summaries and labels.

The methods come from Chinese retail and social platforms, whose teams work in Chinese; every word the report shows
comes from here, so a language is one table. Labels turn `platform.stage_4a` into "4A stage (platform)" /
"4A 阶段（平台方）"; a column or value the table does not know is shown as it is (underscores as spaces).
"""

from __future__ import annotations

from dataclasses import dataclass, field

LANGUAGES = ("en", "zh")

_EN: dict[str, str] = {
    "title": "Cleanroom report: {collaboration}",
    "intro": "Every number below is an answer you received from the clean room: a noisy value with its 95% error "
    "bar (differential privacy). Withheld cells had too few people to show. Drawing this report spent no privacy "
    "budget and read no data.",
    "epsilon": "ε (epsilon) measures how much one answer can reveal about any single person: smaller is more "
    "private and noisier, and every query spends part of a budget the policy fixes.",
    "tgi": "TGI (target group index) is a value's share among matched people divided by its share among all users, "
    "× 100: above 100, the value is over-represented among the people you share.",
    "empty": "No answers yet: ask a query (for example `cleanroom-client funnel {collaboration}`) and run the "
    "report again.",
    "asked": "asked {when}, ε {epsilon:g}",
    "cells": "cells",
    "withheld": "withheld",
    "group": "group",
    "all": "all",
    "s.overlap": "Overlap by segment",
    "s.funnel": "4A funnel",
    "s.flow": "4A flow",
    "s.segment": "Segment insight (TGI)",
    "s.value": "GOAL value",
    "s.loyalty": "GOAL loyalty",
    "s.attribution": "Attribution: {model}",
    "s.lift": "Lift against the holdout: {campaign}",
    "s.audiences": "Audiences released",
    "s.budget": "Privacy budget over your queries",
    "y.people": "matched people (±95%)",
    "y.tgi": "TGI (±95%)",
    "y.currency": "currency (±95%)",
    "y.rate": "rate (±95%)",
    "y.conversions": "attributed conversions (±95%)",
    "y.epsilon": "ε spent (cumulative)",
    "x.query": "query (in the order asked)",
    "x.stage_on": "stage on {date}",
    "sum.overlap": "About {total} matched people over the released cells; the largest cell is {cell} ({v} ± {e}).",
    "sum.funnel": "The largest cell is {stage} with {v} ± {e} matched people.",
    "sum.flow": "The largest move between stages is {a} → {b} ({v} ± {e} people); {stay} stayed in their stage.",
    "sum.segment": "Most over-represented: {high} (TGI {t} ± {e}); least: {low} (TGI {t2} ± {e2}).",
    "sum.value": "Highest spend per buyer: {group} ({v} ± {e}).",
    "sum.loyalty": "Highest repurchase rate: {group} ({v} ± {e}).",
    "sum.attribution": "{campaign} has the most attributed conversions ({v} ± {e}), revenue {r} ± {re}, ROAS {roas}.",
    "sum.lift": "Exposed people's conversion rate differs from the holdout's by {v} ± {e} (absolute): {verdict}.",
    "lift.clear": "the interval excludes zero",
    "lift.unclear": "the interval includes zero, so no clear effect",
    "sum.audiences": "{n} audiences released to the receiving member; you see their sizes and quality, never who "
    "is in them.",
    "sum.budget": "You spent ε {spent:g} over {n} queries; ε {left:g} remains.",
    "sum.none": "Every cell was withheld.",
    "a.kind": "kind",
    "a.size": "people",
    "a.quality": "quality: lift over random (95%)",
    "a.asked": "asked",
    "a.lookalike": "lookalike",
    "a.activate": "activation",
    "q.overlap": "overlap",
    "q.funnel": "funnel",
    "q.funnel_flow": "flow",
    "q.segment_insight": "TGI",
    "q.value": "value",
    "q.loyalty": "loyalty",
    "q.attribution": "attribution",
    "q.lift": "lift",
    "q.lookalike": "lookalike",
    "q.activate": "activation",
    "member.brand": "brand",
    "member.platform": "platform",
}

_ZH: dict[str, str] = {
    "title": "数据洁净室报告：{collaboration}",
    "intro": "以下每个数字都是您从数据洁净室收到的答案：带 95% 误差范围的加噪值（差分隐私）。“已隐藏”的格子人数太少，"
    "不予显示。生成本报告不消耗隐私预算，也不读取任何数据。",
    "epsilon": "ε（隐私预算）衡量一次回答最多能透露某一个人的多少信息：越小越隐私、噪声越大；"
    "每次查询都消耗策略规定预算的一部分。",
    "tgi": "TGI（目标群体指数）= 某个值在匹配人群中的占比 ÷ 在全部用户中的占比 × 100；"
    "高于 100 表示该值在共同人群中更集中。",
    "empty": "还没有答案：先发起一次查询（例如 `cleanroom-client funnel {collaboration}`），再生成报告。",
    "asked": "查询于 {when}，ε {epsilon:g}",
    "cells": "明细",
    "withheld": "已隐藏",
    "group": "分组",
    "all": "全部",
    "s.overlap": "交集人群分布",
    "s.funnel": "4A 人群资产",
    "s.flow": "4A 人群流转",
    "s.segment": "人群洞察（TGI）",
    "s.value": "GOAL 价值",
    "s.loyalty": "GOAL 忠诚",
    "s.attribution": "多触点归因：{model}",
    "s.lift": "增量提升（对照组）：{campaign}",
    "s.audiences": "已发布的人群包",
    "s.budget": "隐私预算消耗（按查询）",
    "y.people": "匹配人数（±95%）",
    "y.tgi": "TGI（±95%）",
    "y.currency": "金额（±95%）",
    "y.rate": "比率（±95%）",
    "y.conversions": "归因转化数（±95%）",
    "y.epsilon": "累计消耗 ε",
    "x.query": "查询（按提问顺序）",
    "x.stage_on": "{date} 的阶段",
    "sum.overlap": "已发布格子合计约 {total} 名匹配用户；最大的格子是 {cell}（{v} ± {e}）。",
    "sum.funnel": "人数最多的是 {stage}，共 {v} ± {e} 名匹配用户。",
    "sum.flow": "最大的阶段流转是 {a} → {b}（{v} ± {e} 人）；{stay} 人停留在原阶段。",
    "sum.segment": "最集中：{high}（TGI {t} ± {e}）；最不集中：{low}（TGI {t2} ± {e2}）。",
    "sum.value": "每位买家消费最高：{group}（{v} ± {e}）。",
    "sum.loyalty": "复购率最高：{group}（{v} ± {e}）。",
    "sum.attribution": "{campaign} 的归因转化最多（{v} ± {e}），收入 {r} ± {re}，ROAS {roas}。",
    "sum.lift": "曝光组与对照组的转化率之差为 {v} ± {e}（绝对值）：{verdict}。",
    "lift.clear": "置信区间不含零",
    "lift.unclear": "置信区间包含零，效果不明确",
    "sum.audiences": "已向接收方发布 {n} 个人群包；您只看到规模和质量，看不到其中是谁。",
    "sum.budget": "您在 {n} 次查询中共消耗 ε {spent:g}；剩余 ε {left:g}。",
    "sum.none": "所有格子均已隐藏。",
    "a.kind": "类型",
    "a.size": "人数",
    "a.quality": "质量：相对随机的提升（95%）",
    "a.asked": "查询时间",
    "a.lookalike": "相似人群扩展",
    "a.activate": "人群圈选",
    "q.overlap": "交集",
    "q.funnel": "4A 人群",
    "q.funnel_flow": "4A 流转",
    "q.segment_insight": "TGI",
    "q.value": "价值",
    "q.loyalty": "忠诚",
    "q.attribution": "归因",
    "q.lift": "提升",
    "q.lookalike": "相似人群",
    "q.activate": "人群圈选",
    "member.brand": "品牌方",
    "member.platform": "平台方",
}

#: Columns, measures and values the report knows by name; anything else is shown as written.
_LABELS_EN: dict[str, str] = {
    "stage_4a": "4A stage",
    "stage": "4A stage",
    "aipl": "AIPL stage",
    "age_band": "age band",
    "visits_30d": "visits in 30 days",
    "test_group": "test group",
    "tgi": "TGI",
    "roas": "ROAS",
    "share_matched": "share of matched",
    "share_all": "share of all users",
    "all_users": "all users",
    "per_buyer": "per buyer",
    "per_order": "per order",
    "per_person": "per person",
    "last_touch": "last touch",
    "first_touch": "first touch",
    "time_decay": "time decay",
    "position_based": "position based (40/20/40)",
}

_LABELS_ZH: dict[str, str] = {
    "stage_4a": "4A 阶段",
    "stage": "4A 阶段",
    "aipl": "AIPL 阶段",
    "aware": "认知（Aware）",
    "appeal": "吸引（Appeal）",
    "act": "行动（Act）",
    "advocate": "拥护（Advocate）",
    "awareness": "认知（A）",
    "interest": "兴趣（I）",
    "purchase": "购买（P）",
    "loyalty": "忠诚（L）",
    "none": "无",
    "tier": "会员等级",
    "gold": "金卡",
    "silver": "银卡",
    "bronze": "铜卡",
    "basic": "普通会员",
    "age_band": "年龄段",
    "gender": "性别",
    "city_tier": "城市等级",
    "visits_30d": "30 天访问次数",
    "campaign": "活动",
    "channel": "渠道",
    "test_group": "实验组",
    "exposed": "曝光组",
    "holdout": "对照组",
    "people": "人数",
    "share": "占比",
    "row_share": "行占比",
    "matched": "匹配人数",
    "all_users": "全部用户",
    "share_matched": "匹配人群占比",
    "share_all": "全部用户占比",
    "tgi": "TGI",
    "penetration": "渗透率",
    "buyers": "购买人数",
    "orders": "订单数",
    "sum": "总额",
    "per_person": "人均",
    "per_buyer": "每位买家",
    "per_order": "客单价",
    "converters": "转化人数",
    "repeaters": "复购人数",
    "retained": "留存人数",
    "repurchase_rate": "复购率",
    "retention_rate": "留存率",
    "attributed_conversions": "归因转化",
    "attributed_revenue": "归因收入",
    "roas": "ROAS",
    "conversion_rate": "转化率",
    "absolute_lift": "绝对提升",
    "relative_lift": "相对提升",
    "incremental_conversions": "增量转化",
    "incremental_revenue": "增量收入",
    "last_touch": "末次触点",
    "first_touch": "首次触点",
    "linear": "线性",
    "time_decay": "时间衰减",
    "position_based": "位置加权（40/20/40）",
}


@dataclass(frozen=True)
class Text:
    """The words of one language."""

    lang: str
    strings: dict[str, str] = field(repr=False)
    labels: dict[str, str] = field(repr=False)

    def __call__(self, key: str, **values: object) -> str:
        """The string `key` with `values` filled in."""
        return self.strings[key].format(**values)

    def label(self, name: object) -> str:
        """A readable label for a dimension (`member.column`, or `column@date` in a flow), a measure or a value."""
        text = str(name)
        base, at, date = text.partition("@")
        member, dot, column = base.partition(".")
        if dot and f"member.{member}" in self.strings:
            shown = self._word(column)
            owner = self.strings[f"member.{member}"]
            text = f"{shown}（{owner}）" if self.lang == "zh" else f"{shown} ({owner})"
        else:
            text = self._word(base)
        return f"{text} @ {date}" if at else text

    def _word(self, word: str) -> str:
        return self.labels.get(word, word.replace("_", " "))

    def number(self, value: float) -> str:
        """A count or amount: thousands separators, no false precision."""
        return f"{value:,.3f}" if abs(value) < 10 and value != round(value) else f"{value:,.0f}"


def text_for(lang: str) -> Text:
    """The words for `lang` (`en` or `zh`)."""
    if lang == "en":
        return Text("en", _EN, _LABELS_EN)
    if lang == "zh":
        return Text("zh", _ZH, _LABELS_ZH)
    raise ValueError(f"language {lang!r}: choose one of {', '.join(LANGUAGES)}")
