"""The report from answers as the SDK keeps them (issue 32 items 1, 2 and the report's of 5): every answer a
section, grouped by refresh period and population, Venn included; audiences as asked, withheld ones not counted as
released; ROAS without a spend "n/a", not "withheld"; colours never shared; bars never reaching below zero."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cleanroom_client.answers import Answer, result_frame
from cleanroom_client.protocol import analytics_pb2 as qpb
from cleanroom_client.report import _colour, _yerr, build_sections, render


def _answer(
    query: str, cells: Sequence[tuple[tuple[str, ...], str, float, bool]], dims: tuple[str, ...], **kw: object
) -> Answer:
    result = qpb.QueryResult(
        dimensions=list(dims),
        cells=[qpb.Cell(keys=list(k), measure=m, value=v, error_95=2.0, suppressed=s) for k, m, v, s in cells],
        epsilon_spent=0.5,
        epsilon_remaining=1.0,
        audience=str(kw.pop("audience", "")),
    )
    if "period" in kw:
        result.refresh_period = int(kw.pop("period"))  # type: ignore[call-overload]
    return Answer(query, dict(kw), result_frame(result), datetime(2026, 12, 1, tzinfo=UTC))


def _venn(period: int, with_members: tuple[str, ...] = ()) -> Answer:
    cells = [
        (("brand",), "people_exactly", 500.0, False),
        (("brand∩jd",), "people_exactly", 300.0, False),
        (("brand∩tencent",), "people_exactly", 3.0, True),
        (("brand∩jd∩tencent",), "people_exactly", 200.0, False),
        (("brand",), "people", 1000.0, False),
        (("brand∩jd",), "people", 500.0, False),
        (("brand∩jd∩tencent",), "people", 200.0, False),
    ]
    kw: dict[str, object] = {"period": period}
    if with_members:
        kw["with_members"] = list(with_members)
    return _answer("venn", cells, ("region",), **kw)


def _overlap(period: int, value: float = 100.0) -> Answer:
    return _answer("overlap", [(("gold",), "people", value, False)], ("brand.tier",), period=period)


def test_a_three_member_report_draws_the_venn_diagram(tmp_path: Path):
    sections = build_sections([_venn(0)], "en")
    [venn] = [s for s in sections if s.key == "venn"]
    assert venn.chart is not None
    assert "200 ± 2 are matched with every other member" in venn.summary
    assert "withheld" in (venn.table or "")
    zh = build_sections([_venn(0)], "zh")
    assert zh[0].title == "成员交集（韦恩图）"
    assert render("r", sections, tmp_path).exists()


def test_every_answer_is_a_section_grouped_by_period_then_population(tmp_path: Path):
    """Nine answers over three periods and two populations: nine sections, each under its group's heading."""
    answers = [_overlap(p, 100.0 + p) for p in (2, 0, 1)] + [_venn(p) for p in (1, 2, 0)]
    answers += [_venn(p, ("jd",)) for p in (0, 1, 2)]
    sections = build_sections(answers, "en")
    drawn = [s for s in sections if s.key != "budget"]
    assert len(drawn) == 9
    assert len({s.key for s in sections}) == len(sections)  # one file per chart, none overwritten
    groups = list(dict.fromkeys(s.group for s in drawn))
    assert groups == [
        "Data of the match (period 0) · people: the hub's users matched with every other member",
        "Data of the match (period 0) · people: the hub's users matched with jd",
        "Data of refresh period 1 · people: the hub's users matched with every other member",
        "Data of refresh period 1 · people: the hub's users matched with jd",
        "Data of refresh period 2 · people: the hub's users matched with every other member",
        "Data of refresh period 2 · people: the hub's users matched with jd",
    ]
    page = render("r", sections, tmp_path).read_text()
    assert page.count('<h2 class="group">') == 6
    assert page.count("<section") == 10


def test_audiences_withheld_are_asked_not_released_and_segments_are_named():
    released = _answer(
        "activate",
        [(("segment",), "audience_size", 900.0, False)],
        ("segment",),
        audience="collaborations/c/audiences/a1",
        segment={"brand.tier": "gold"},
    )
    withheld = _answer(
        "activate",
        [(("segment",), "audience_size", 0.0, True)],
        ("segment",),
        segment={"platform.stage_4a": "appeal"},
        events=[{"table": "brand.conversions", "start_date": "2026-11-01", "end_date": "2026-12-01", "absent": True}],
    )
    [audiences] = [s for s in build_sections([released, withheld], "en") if s.key == "audiences"]
    assert audiences.summary.startswith("1 of the 2 audiences asked for were released")
    table = audiences.table or ""
    assert "tier (brand) = gold" in table
    assert "4A stage (platform) = appeal" in table
    assert "no conversions (brand) 2026-11-01 – 2026-12-01" in table


def test_roas_without_a_spend_is_not_applicable_while_a_small_cell_is_withheld():
    cells = [
        (("c1",), "attributed_conversions", 80.0, False),
        (("c1",), "attributed_revenue", 4000.0, False),
        (("c1",), "roas", 0.0, True),  # no public spend: ROAS does not apply
        (("c2",), "attributed_conversions", 1.0, True),
        (("c2",), "attributed_revenue", 0.0, True),
        (("c2",), "roas", 0.0, True),  # too few people
    ]
    answer = _answer("attribution", cells, ("campaign",), model="ATTRIBUTION_MODEL_LINEAR")
    [section] = [s for s in build_sections([answer], "en") if s.key.startswith("attribution")]
    table = section.table or ""
    assert table.count("n/a") == 1  # c1's ROAS
    assert table.count("withheld") == 3  # c2's conversions, revenue and ROAS


@given(st.integers(min_value=1, max_value=40))
def test_no_two_series_of_a_chart_share_a_colour(n: int):
    assert len({_colour(i, n) for i in range(n)}) == n


@given(
    st.lists(st.tuples(st.floats(0, 1e6, allow_nan=False), st.floats(0, 1e6, allow_nan=False)), min_size=1, max_size=20)
)
def test_error_bars_of_non_negative_values_stop_at_zero(pairs: list[tuple[float, float]]):
    values, errors = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    below, above = _yerr(values, errors)
    assert (values - below >= 0).all()
    assert (above == errors).all()


def test_a_withheld_audience_says_why_in_each_language():
    why = (
        "below the activation threshold of 327 people at epsilon 0.05 (noisy size 80); a segment of this size would "
        "be released at epsilon >= 0.5"
    )
    result = qpb.QueryResult(
        dimensions=["part"],
        cells=[qpb.Cell(keys=["audience"], measure="audience_size", suppressed=True, reason=why)],
        epsilon_spent=0.05,
    )
    answer = Answer("activate", {"segment": {"brand.tier": "gold"}}, result_frame(result), datetime(2026, 12, 1))
    assert answer.frame.loc[0, "reason"] == why
    for lang, said in (("en", "withheld: " + why), ("zh", "在 ε ≥ 0.5 时可发布")):
        [audiences] = [s for s in build_sections([answer], lang) if s.key == "audiences"]
        assert html.escape(said) in (audiences.table or ""), lang


def test_a_dollar_sign_in_a_domain_value_is_drawn_as_written(tmp_path: Path):
    """A policy's domain is free text: "$5-$10" is a price band, and "$\\frac{$" must not stop the drawing."""
    cells = [((v,), "people", 100.0, False) for v in ("$5-$10", "$\\frac{$", "$10+")]
    sections = build_sections([_answer("overlap", cells, ("brand.price",), period=0)], "en")
    [overlap] = [s for s in sections if s.key != "budget"]
    assert overlap.chart is not None
    assert "$5-$10" in (overlap.table or "")
    assert render("r", sections, tmp_path).exists()
