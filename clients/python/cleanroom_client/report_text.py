"""The report's words in English and Simplified Chinese: titles, one-line explanations, summaries and labels.

The methods come from Chinese retail and social platforms, whose teams work in Chinese; every word the report shows
comes from here or, for each query's title and summary, from its declaration (`query_types`), so a language is one
table. Labels turn `platform.stage_4a` into "4A stage (platform)" /
"4A 阶段（平台方）"; a column or value the table does not know is shown as it is (underscores as spaces).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .query_types import QUERIES

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
    "withheld.why": "withheld: {reason}",
    "more": "Bought with ε {epsilon:g}. The noise in these bars shrinks in proportion to ε: at ε {double:g} it would "
    "be about half (lift's sampling error stays). Preview before asking, nothing spent: cleanroom-client --preview "
    "(or --within 15%) {command} ...",
    "withheld": "withheld",
    "group": "group",
    "all": "all",
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
    "lift.clear": "the interval excludes zero",
    "lift.unclear": "the interval includes zero, so no clear effect",
    "sum.audiences": "{n} of the {m} audiences asked for were released to the receiving member (a withheld one was "
    "too small to release); you see their sizes and quality, never who is in them.",
    "sum.budget": "You spent ε {spent:g} over {n} queries; ε {left:g} remains.",
    "sum.none": "Every cell was withheld.",
    "a.kind": "kind",
    "a.size": "people",
    "a.quality": "quality: lift over random (95%)",
    "a.asked": "asked",
    "a.segment": "segment",
    "a.released": "released",
    "a.yes": "yes",
    "a.every": "every matched person",
    "a.no_event": "no {table} {start} – {end}",
    "a.event": "{table} {start} – {end}",
    "na": "n/a",
    "g.period": "Data of refresh period {p}",
    "g.match": "Data of the match (period 0)",
    "g.latest": "Data of the latest completed period when asked",
    "g.with": "people: the hub's users matched with {members}",
    "g.all": "people: the hub's users matched with every other member",
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
    "withheld.why": "已隐藏：{reason}",
    "more": "本次花费 ε {epsilon:g}。这些误差条中的噪声与 ε 成反比：ε 为 {double:g} 时约减半"
    "（提升分析的抽样误差不变）。查询前可先预览，不花费预算："
    "cleanroom-client --preview（或 --within 15%）{command} ...",
    "withheld": "已隐藏",
    "group": "分组",
    "all": "全部",
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
    "lift.clear": "置信区间不含零",
    "lift.unclear": "置信区间包含零，效果不明确",
    "sum.audiences": "申请的 {m} 个人群包中有 {n} 个已发布给接收方（已隐藏的人数太少，未发布）；您只看到规模和质量，"
    "看不到其中是谁。",
    "sum.budget": "您在 {n} 次查询中共消耗 ε {spent:g}；剩余 ε {left:g}。",
    "sum.none": "所有格子均已隐藏。",
    "a.kind": "类型",
    "a.size": "人数",
    "a.quality": "质量：相对随机的提升（95%）",
    "a.asked": "查询时间",
    "a.segment": "人群条件",
    "a.released": "已发布",
    "a.yes": "是",
    "a.every": "全部匹配用户",
    "a.no_event": "{start} – {end} 无 {table}",
    "a.event": "{start} – {end} 有 {table}",
    "na": "不适用",
    "g.period": "刷新周期 {p} 的数据",
    "g.match": "首次匹配（周期 0）的数据",
    "g.latest": "提问时最新完成周期的数据",
    "g.with": "人群：主方与 {members} 匹配的用户",
    "g.all": "人群：主方与所有其他成员匹配的用户",
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

    def query(self, name: str) -> str:
        """The short name of query `name` (one a newer SDK kept and this one does not know: as written)."""
        return self.strings.get(f"q.{name}", name)

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

    def reason(self, text: str) -> str:
        """Why a cell was withheld (the server's English sentence), in this language where its form is known."""
        if self.lang != "zh":
            return text
        for pattern, zh in _REASONS_ZH:
            found = re.fullmatch(pattern, text)
            if found:
                return zh.format(*found.groups())
        return text

    def number(self, value: float) -> str:
        """A count or amount: thousands separators, no false precision."""
        return f"{value:,.3f}" if abs(value) < 10 and value != round(value) else f"{value:,.0f}"


#: The server's withheld reasons (cleanroom.analytics: cells.py, activation.py) and their Chinese.
_REASONS_ZH = (
    (r"below the minimum group of (\d+) \(its noisy count is smaller\)", "低于最小人群 {0} 人（含噪计数更小）"),
    (r"its denominator's noisy value is not positive", "分母的含噪值不为正"),
    (r"a test group is below the minimum group of (\d+) \(its noisy count is smaller\)", "有测试组低于最小人群 {0} 人"),
    (r"the seeds are below the minimum group of (\d+) \(its noisy count is smaller\)", "种子人群低于最小人群 {0} 人"),
    (r"the policy states no spend for it \(campaign_spend\)", "策略未给出该活动的花费（campaign_spend）"),
    (
        r"below the activation threshold of (\d+) people at epsilon ([^ ]+) \(noisy size (-?\d+)\); "
        r"a segment of this size would be released at epsilon >= (.+)",
        "低于 ε {1} 下的圈选门槛 {0} 人（含噪人数 {2}）；这个规模的人群在 ε ≥ {3} 时可发布",
    ),
    (
        r"below the activation threshold of (\d+) people at epsilon ([^ ]+) \(noisy size (-?\d+)\); "
        r"no epsilon releases a segment this size \(the policy's minimum is (\d+)\)",
        "低于 ε {1} 下的圈选门槛 {0} 人（含噪人数 {2}）；任何 ε 都不能发布这个规模的人群（策略最小值 {3} 人）",
    ),
    (r"the segment's size is below the policy's minimum of (\d+)", "人群规模低于策略的最小值 {0} 人"),
)


def _with_queries(lang: str, strings: dict[str, str]) -> dict[str, str]:
    """`strings` and each query's words from its declaration: `s.<query>` title, `sum.<query>`, `q.<query>`."""
    words = dict(strings)
    for q in QUERIES:
        reading = q.reading[lang]
        words |= {f"s.{q.name}": reading.title, f"sum.{q.name}": reading.summary, f"q.{q.name}": reading.short}
    return words


def text_for(lang: str) -> Text:
    """The words for `lang` (`en` or `zh`)."""
    if lang == "en":
        return Text("en", _with_queries("en", _EN), _LABELS_EN)
    if lang == "zh":
        return Text("zh", _with_queries("zh", _ZH), _LABELS_ZH)
    raise ValueError(f"language {lang!r}: choose one of {', '.join(LANGUAGES)}")
