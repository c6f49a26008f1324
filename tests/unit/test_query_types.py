"""Every query type of the proto has every surface: declaration, servicer handler and preview, SDK method, CLI
command with its options, report section in English and Chinese, and a row in the docs' table.

It walks `AnalyticsService` (each unary RPC answering a `QueryResult`, Preview aside) and `PreviewRequest`'s oneof,
so a query added to the proto without one of its surfaces fails here, and a surface that lacks a query does too.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import typer.main

from cleanroom.server.analytics_servicer import AnalyticsServicer
from cleanroom_client.answers import Answer
from cleanroom_client.cli import app
from cleanroom_client.client import CleanRoomClient
from cleanroom_client.policy import QueryType
from cleanroom_client.protocol import analytics_pb2 as qpb
from cleanroom_client.query_types import (
    BY_NAME,
    BY_RPC,
    KEY_MEASURES,
    QUERIES,
    Derived,
    QueryDeclaration,
    Reading,
    docs_table,
)
from cleanroom_client.report import build_sections
from cleanroom_client.report_text import LANGUAGES, text_for

ROOT = Path(__file__).resolve().parents[2]
SERVICE = qpb.DESCRIPTOR.services_by_name["AnalyticsService"]
QUERY_RPCS = sorted(
    m.name
    for m in SERVICE.methods
    if m.output_type is not None
    and m.output_type.name == "QueryResult"
    and not m.server_streaming
    and m.name != "Preview"
)
PREVIEWED = {
    f.name: f.message_type.name if f.message_type is not None else ""
    for f in qpb.PreviewRequest.DESCRIPTOR.oneofs_by_name["query"].fields
}


def test_every_query_rpc_and_previewed_query_is_declared_and_nothing_else():
    assert sorted(BY_RPC) == QUERY_RPCS
    assert {q.name: q.request.DESCRIPTOR.name for q in QUERIES} == PREVIEWED
    for q in QUERIES:
        assert SERVICE.methods_by_name[q.rpc].input_type.name == q.request.DESCRIPTOR.name
        assert q.policy_type in set(QueryType)
        for option in q.options:
            assert option.flag.startswith("--")
        assert q.vectors
        assert q.measures


@pytest.mark.parametrize("rpc", QUERY_RPCS)
def test_the_servicer_answers_and_previews_it(rpc):
    q = BY_RPC[rpc]
    assert rpc in vars(AnalyticsServicer), f"{rpc}: no handler, the generated base answers UNIMPLEMENTED"
    assert q.name in AnalyticsServicer.QUERIES, f"{q.name}: Preview cannot dispatch it"


@pytest.mark.parametrize("rpc", QUERY_RPCS)
def test_the_sdk_has_its_method_taking_every_option(rpc):
    q = BY_RPC[rpc]
    method = getattr(CleanRoomClient, q.method, None)
    assert callable(method), q.method
    parameters = _typed_keywords(method)
    for name in ("collaboration_id", "epsilon", "preview", "refresh_period", "with_members"):
        assert name in parameters, (q.method, name)
    for option in q.options:
        assert option.argument in parameters, (q.method, option.argument)


def _typed_keywords(method: Callable[..., object]) -> dict[str, object]:
    """The keywords `method` takes, each with its type: named parameters and those of a `**kw: Unpack[TypedDict]`.

    An untyped `**kwargs` would make any keyword pass the test above without the SDK declaring it, so it fails here.
    """
    # The SDK names pandas (its answers' type) only for type checkers, so that a command line that never holds a
    # table starts without it: the hints resolve with it given here.
    hints = typing.get_type_hints(method, localns={"pd": pd}, include_extras=True)
    keywords: dict[str, object] = {}
    for name, parameter in inspect.signature(method).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            assert typing.get_origin(hints.get(name)) is typing.Unpack, (method, name, "**kwargs without a TypedDict")
            (declared,) = typing.get_args(hints[name])
            keywords |= typing.get_type_hints(declared)
        elif name != "self":
            keywords[name] = hints[name]
    return keywords


@pytest.mark.parametrize("rpc", QUERY_RPCS)
def test_the_cli_has_its_command_with_every_option(rpc):
    q = BY_RPC[rpc]
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert q.command in commands, q.command
    flags = {flag for p in commands[q.command].params for flag in p.opts}
    assert {o.flag for o in q.options} | {"--epsilon"} <= flags, q.command


def _synthetic(q: QueryDeclaration, period: int | None = None, members: tuple[str, ...] = ()) -> Answer:
    """An answer shaped as the declaration says (dimensions, measures), with one withheld cell."""
    dims = [d for d in q.dimensions if not d.startswith("[")]
    dims = ["brand.tier" if d == "..." else d for d in dims]
    values = {
        "region": ["brand", "brand∩jd"],
        "stage": ["aware", "appeal"],
        "stage@start": ["aware", "appeal"],
        "stage@end": ["aware", "appeal"],
        "test_group": ["exposed", "holdout"],
        "campaign|channel": ["c1", "none"],
        "quality": ["quality"],
        "segment": ["segment"],
    }
    rows = []
    keysets: list[list[str]] = [[]]
    for d in dims:
        keysets = [[*k, v] for k in keysets for v in values.get(d, ["gold", "silver"])]
    for i, keys in enumerate(keysets):
        for measure in q.measures:
            suppressed = i == 0 and measure == q.measures[0] and len(keysets) > 1
            value = 0.5 if "rate" in measure or "share" in measure or "lift" in measure else 120.0 + i
            rows.append(
                {
                    **dict(zip(dims, keys, strict=True)),
                    "measure": measure,
                    "value": float("nan") if suppressed else value,
                    "error_95": float("nan") if suppressed else 3.0,
                    "suppressed": suppressed,
                    "reason": "below the minimum group of 10 (its noisy count is smaller)" if suppressed else "",
                }
            )
    if q.name == "lift":
        rows += [
            {"test_group": "lift", "measure": m, "value": 0.01, "error_95": 0.005, "suppressed": False, "reason": ""}
            for m in ("absolute_lift", "relative_lift")
        ]
    frame = pd.DataFrame(rows, columns=[*dims, "measure", "value", "error_95", "suppressed", "reason"])
    frame.attrs.update(epsilon_spent=0.5, epsilon_remaining=2.0, audience="collaborations/c/audiences/a")
    request: dict[str, object] = {"epsilon": 0.5, "campaign": "c1", "model": "ATTRIBUTION_MODEL_LINEAR"}
    if period is not None:
        request["refresh_period"] = str(period)
    if members:
        request["with_members"] = list(members)
    return Answer(query=q.name, request=request, frame=frame, received=datetime(2026, 12, 1, tzinfo=UTC))


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_report_draws_every_query_in_every_language(lang):
    """One section per answer, every query type (Venn included), titled in the language, never a KeyError."""
    t = text_for(lang)
    answers = [_synthetic(q) for q in QUERIES]
    sections = build_sections(answers, lang)
    titles = " ".join(s.title + " " + (s.table or "") for s in sections)
    for q in QUERIES:
        reading = q.reading[lang]
        assert reading.title, (q.name, lang)
        assert reading.short, (q.name, lang)
        assert t(f"q.{q.name}") == reading.short
        if q.audience:
            assert t(f"q.{q.name}") in titles, (q.name, lang)
        else:
            assert reading.title.split("{")[0].strip() in titles, (q.name, lang)
    # every withheld cell says why, in the report's language; every drawn answer says what more epsilon would buy
    why = {"en": "withheld: below the minimum group of 10", "zh": "已隐藏：低于最小人群 10 人"}[lang]
    assert why in titles
    drawn = [s for s in sections if s.key not in ("audiences", "budget")]
    assert drawn
    assert all("--preview" in s.caption for s in drawn), [s.key for s in drawn if not s.caption]


@pytest.mark.parametrize(
    "reason",
    [
        "below the minimum group of 7 (its noisy count is smaller)",
        "its denominator's noisy value is not positive",
        "a test group is below the minimum group of 7 (its noisy count is smaller)",
        "the seeds are below the minimum group of 7 (its noisy count is smaller)",
        "the policy states no spend for it (campaign_spend)",
        "the segment's size is below the policy's minimum of 50",
    ],
)
def test_each_reason_the_server_gives_reads_in_chinese(reason):
    assert text_for("zh").reason(reason) != reason
    assert text_for("en").reason(reason) == reason


def test_the_docs_table_lists_every_query_as_declared():
    page = (ROOT / "docs" / "queries.md").read_text(encoding="utf-8")
    assert docs_table() in page, "docs/queries.md is stale: run python scripts/gen_query_docs.py"
    for q in QUERIES:
        assert f"`cleanroom-client {q.command}`" in page
        assert f"`client.{q.method}(...)`" in page
    assert BY_NAME["venn"].command in page


def test_a_declaration_names_its_policy_type_and_method_after_itself_unless_it_says_otherwise():
    en, zh = Reading("Title", "Summary {v}.", "short"), Reading("标题", "摘要 {v}。", "短")
    fields = ("x", "X", qpb.OverlapRequest, "x-cmd", "x", "What.", "cleanroom-client x-cmd c", ())
    answer = (("people",), (Derived("people", "the noisy count"),), ("...",), "overlap", en, zh)
    plain = QueryDeclaration(*fields, *answer)
    assert (plain.policy_type, plain.method, plain.epsilon, plain.audience) == ("x", "x", 0.5, False)
    assert dict(plain.reading) == {"en": en, "zh": zh}
    named = QueryDeclaration(*fields, *answer, policy_type="activation", method="activate", epsilon=0.1)
    assert (named.policy_type, named.method, named.epsilon) == ("activation", "activate", 0.1)


def test_every_query_has_a_key_measure_among_its_measures():
    """`plan` aims at each query's key cell: one per declared query, a measure its answer (and preview) carries."""
    assert set(KEY_MEASURES) == set(BY_NAME)
    for name, measure in KEY_MEASURES.items():
        assert measure in BY_NAME[name].measures, name
