"""The auditor's facts and anomaly rules on synthetic chains signed with a real Ed25519 key (no server).

Each chain is built entry by entry as the server builds it (hash over the canonical body, linked, signed), and
exported with its signed head and Merkle tree head, so verification, a flipped byte and the heads are the real ones.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom_client import merkle
from cleanroom_client.audit_anomalies import (
    AFTER_REFRESH_SECONDS,
    BUDGET_NEAR_CAP,
    PREVIEW_MINIMUM,
    REFUSAL_BURST,
    REFUSAL_WINDOW_SECONDS,
    REFUSALS_IN_ALL,
    REPEATED_QUERIES,
)
from cleanroom_client.audit_chain import GENESIS, AuditEntry, SignedHead
from cleanroom_client.audit_facts import dimensions_of, read_facts
from cleanroom_client.audit_report import _cell, describe_finding, render_audit_report, verdict
from cleanroom_client.audit_sources import facts_from_export
from cleanroom_client.audit_text import audit_text_for
from cleanroom_client.query_types import QUERIES
from cleanroom_client.transparency import TreeHead, leaf_data

KEY = Ed25519PrivateKey.generate()
PEM = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
START = dt.datetime(2026, 12, 1, 9, 0, 0)
POLICY = """
name: audited
members:
  brand: {abilities: [contribute, query, receive_results]}
  platform: {abilities: [contribute]}
identifiers: [email]
tables:
  brand.users: {dimensions: {tier: [gold, basic]}}
  platform.users: {dimensions: {age_band: [young, old]}}
queries: [overlap]
min_group_size: 1
epsilon: {per_member_total: 2.0, per_query_max: 1.0}
refresh: {tables: [brand.users], min_days_between: 7, budget: per_period}
"""

Spec = tuple[str, str, dict[str, Any], float, float, float]  # principal, action, parameters, ε, δ, seconds


def chain(specs: list[Spec]) -> list[AuditEntry]:
    out, previous = [], GENESIS
    for i, (who, action, params, eps, dlt, seconds) in enumerate(specs, start=1):
        when = (START + dt.timedelta(seconds=seconds)).isoformat() + "Z"
        body = AuditEntry("audited", i, when, who, action, params, eps, "", previous, delta=dlt)
        digest = body.compute_hash()
        out.append(AuditEntry(**{**body.__dict__, "hash": digest, "signature": KEY.sign(bytes.fromhex(digest))}))
        previous = digest
    return out


def tree_head(entries: list[AuditEntry], size: int | None = None) -> TreeHead:
    nodes = merkle.MerkleNodes()
    for e in entries:
        nodes.append(merkle.leaf_hash(leaf_data(e.hash, e.signature)))
    n = nodes.size if size is None else size
    unsigned = TreeHead("audited", n, nodes.root(n), "2026-12-02T00:00:00Z")
    return TreeHead("audited", n, unsigned.root, unsigned.time, KEY.sign(unsigned.message()))


def export(entries: list[AuditEntry]) -> str:
    last = entries[-1]
    head = SignedHead("audited", last.sequence, last.hash)
    signed = SignedHead("audited", last.sequence, last.hash, KEY.sign(head.message()), tree_head(entries))
    return "\n".join([*(e.to_json() for e in entries), signed.to_json()]) + "\n"


def q(who: str, action: str, seconds: float, eps: float = 0.5, **params: Any) -> Spec:
    charged = eps if action.startswith("query.") and action not in ("query.refuse", "query.preview") else 0.0
    return (who, action, {"epsilon": eps, **params}, charged, 0.0, seconds)


ROOM: list[Spec] = [
    ("brand", "collaboration.create", {"revision": 1, "etag": "e1"}, 0.0, 0.0, 0),
    ("brand", "policy.approve", {"revision": 1, "etag": "e1"}, 0.0, 0.0, 1),
    ("platform", "policy.approve", {"revision": 1, "etag": "e1"}, 0.0, 0.0, 2),
    ("brand", "upload.commit", {"kind": "points", "points": 40, "rows": 20, "period": 0}, 0.0, 0.0, 3),
    ("platform", "match.complete", {}, 0.0, 0.0, 4),
    q("brand", "query.overlap", 10, dimensions=["brand.tier", "platform.age_band"]),
    q("brand", "query.refuse", 11, query="overlap", dimensions=["platform.gender"], reason="not in the policy"),
    q("brand", "query.preview", 12, query="overlap", dimensions=["brand.tier"]),
    q("brand", "query.failed", 13, query="overlap", dimensions=["brand.tier"]),
    ("brand", "refresh.retire", {"period": 1, "rows": 3}, 0.0, 0.0, 20),
    ("brand", "refresh.complete", {"period": 1, "members": {"brand": {"users": 5}}, "set_sizes": {}}, 0.0, 0.0, 21),
    q("brand", "query.overlap", 30, dimensions=["brand.tier"]),
    ("operator", "auditor.assign", {"auditor": "auditor"}, 0.0, 0.0, 40),
    ("platform", "refused", {"attempted": "query.overlap", "reason": "platform may not query"}, 0.0, 0.0, 41),
]


def test_a_valid_chain_reads_into_typed_facts_with_its_entries():
    entries = chain(ROOM)
    facts = facts_from_export(export(entries), PEM.decode(), policy_text=POLICY)
    assert facts.verification.valid
    assert facts.verification.trusted
    assert facts.verification.head_sequence == len(ROOM)
    assert list(facts.policy["event"]) == ["created", "approved", "approved"]
    queries = facts.queries.set_index("sequence")
    assert list(queries["outcome"]) == ["answered", "refused", "preview", "charged_failed", "answered", "refused"]
    assert queries.loc[14, "reason"] == "platform may not query"  # refused at the door, before the pipeline
    assert set(queries["query"]) == {"overlap"}  # an outcome entry names its query type
    assert queries.loc[7, "reason"] == "not in the policy"
    assert queries.loc[6, "dimensions"] == ["brand.tier", "platform.age_band"]
    assert list(facts.data["event"]) == ["upload", "match"]
    assert list(facts.periods["event"]) == ["retire", "complete"]
    assert list(facts.auditors["auditor"]) == ["auditor"]
    # per period: the completed refresh changed data, so the brand's running total starts again after it
    budget = facts.budget.set_index("sequence")
    assert budget.loc[9, "epsilon_spent"] == pytest.approx(1.0)
    assert budget.loc[12, "epsilon_spent"] == pytest.approx(0.5)
    assert budget.loc[12, "budget_period"] == 1
    assert set(budget["epsilon_cap"]) == {2.0}
    assert facts.per_period


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_declared_query_type_appears_in_the_facts_and_in_both_languages_through_its_declaration(lang):
    entries = chain([q("brand", f"query.{d.policy_type}", i) for i, d in enumerate(QUERIES)])
    facts = read_facts("audited", entries, facts_from_export(export(entries), PEM.decode()).verification)
    assert list(facts.queries["query"]) == [d.name for d in QUERIES]
    t = audit_text_for(lang)
    for d in QUERIES:
        assert _cell(t, "query", d.name) == d.reading[lang].short


def test_a_flipped_byte_is_named_first_and_what_follows_is_marked_unverified(tmp_path: Path):
    entries = chain(ROOM)
    lines = export(entries).splitlines()
    lines[5] = lines[5].replace('"epsilon":0.5', '"epsilon":0.4', 1)  # entry 6: one byte
    facts = facts_from_export("\n".join(lines) + "\n", PEM.decode())
    v = facts.verification
    assert (v.valid, v.first_invalid) == (False, 6)
    assert "altered" in v.reason
    assert list(facts.queries["verified"]) == [False] * 6  # every query is at or after entry 6
    assert facts.data["verified"].all()
    for lang, words in (
        ("en", "NOT VERIFIED: the chain breaks at entry 6"),
        ("zh", "验证未通过：审计链在第 6 条记录处断开"),
    ):
        page = render_audit_report(facts, tmp_path / f"tampered-{lang}", lang).read_text(encoding="utf-8")
        body = page[page.index("<body") :]
        assert body.index(words) < body.index("<h1>")  # the failure comes before everything else


def test_heads_are_compared_with_the_export():
    entries = chain(ROOM)
    text = export(entries)
    fork = chain([*ROOM[:5], q("brand", "query.overlap", 9, dimensions=["brand.tier"])])
    others = [("platform", tree_head(entries, 5)), ("forked", tree_head(fork)), ("later", tree_head(chain(ROOM * 2)))]
    facts = facts_from_export(text, PEM.decode(), tree_head(entries, 8), others)
    checks = {h.source: h.consistent for h in facts.verification.heads}
    assert checks == {"remembered": True, "platform": True, "forked": False, "later": None}
    assert not facts.verification.trusted
    _, lines = verdict(audit_text_for("en"), facts.verification)
    assert any("forked's exported head" in line and "INCONSISTENT" in line for line in lines)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 2 * REFUSAL_WINDOW_SECONDS), min_size=1, max_size=8))
def test_a_refusal_burst_is_found_exactly_when_enough_refusals_fall_in_one_window(offsets):
    times = sorted(offsets)
    specs = [q("brand", "query.refuse", s, query="overlap", reason="no") for s in times]
    facts = read_facts("audited", chain(specs), facts_from_export(export(chain(specs)), PEM.decode()).verification)
    dense = any(sum(1 for u in times if s <= u <= s + REFUSAL_WINDOW_SECONDS) >= REFUSAL_BURST for s in times)
    found = facts.anomalies[facts.anomalies["kind"] == "refusal_burst"]
    assert bool(len(found)) == dense
    for seqs in found["sequences"]:
        assert len(seqs) >= REFUSAL_BURST


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.booleans())
def test_repeated_identical_queries_are_found_from_the_threshold(n, vary_epsilon):
    specs = [
        q("brand", "query.overlap", i, 0.2 + (0.1 * i if vary_epsilon else 0), by=["brand.tier"]) for i in range(n)
    ]
    facts = read_facts("audited", chain(specs), facts_from_export(export(chain(specs)), PEM.decode()).verification)
    found = facts.anomalies[facts.anomalies["kind"] == "repeated_query"]
    assert len(found) == (1 if n >= REPEATED_QUERIES else 0)  # ε aside: the same question
    if len(found):
        assert found["sequences"].iloc[0] == list(range(1, n + 1))


def test_previews_budget_and_refresh_rules_each_name_their_entries():
    previews = [q("platform", "query.preview", i, query="overlap") for i in range(PREVIEW_MINIMUM)]
    near = [q("brand", "query.overlap", 100 + i, 0.5) for i in range(4)]  # 2.0 of a 2.0 cap
    refresh = [
        ("brand", "refresh.complete", {"period": 1, "members": {"brand": {"users": 5}}}, 0.0, 0.0, 200),
        q("brand", "query.overlap", 200 + AFTER_REFRESH_SECONDS / 2, 0.5),
        q("brand", "query.overlap", 200 + AFTER_REFRESH_SECONDS * 3, 0.5, by=["brand.tier"]),
    ]
    entries = chain([*previews, *near, *refresh])
    facts = facts_from_export(export(entries), PEM.decode(), policy_text=POLICY)
    kinds = dict(zip(facts.anomalies["kind"], facts.anomalies["sequences"], strict=True))
    assert kinds["previews"] == list(range(1, PREVIEW_MINIMUM + 1))
    first_over = next(i for i in range(1, 5) if 0.5 * i >= BUDGET_NEAR_CAP * 2.0)
    assert kinds["budget_near_cap"] == [PREVIEW_MINIMUM + first_over]
    assert kinds["after_refresh"] == [PREVIEW_MINIMUM + 6]  # the late query is not flagged
    t = audit_text_for("zh")
    for kind, detail in zip(facts.anomalies["kind"], facts.anomalies["detail"], strict=True):
        assert describe_finding(t, kind, detail)  # every finding has words in both languages
        assert describe_finding(audit_text_for("en"), kind, detail)


@given(st.lists(st.sampled_from(["brand.tier", "platform.age_band", "brand.conversions.value", "x.y", "gold"])))
def test_dimensions_are_found_wherever_a_new_query_type_puts_them(values):
    params = {"by": values, "nested": {"seed": {v: "gold" for v in values}}, "epsilon": 1.0}
    found = dimensions_of(params, ["brand", "platform"])
    assert found == [v for v in dict.fromkeys(values) if v.split(".")[0] in ("brand", "platform")]


def test_the_export_parses_as_json_lines():
    for line in export(chain(ROOM)).splitlines():
        json.loads(line)


def test_the_command_reads_an_export_offline_and_says_what_is_missing(tmp_path: Path):
    from typer.testing import CliRunner

    from cleanroom_client.cli import app

    log, key = tmp_path / "log.jsonl", tmp_path / "server.pem"
    log.write_text(export(chain(ROOM)), encoding="utf-8")
    key.write_bytes(PEM)
    run = CliRunner().invoke
    said = lambda result: " ".join(result.output.split())  # noqa: E731 (the console wraps long lines)
    missing = run(app, ["audit-report", "audited", "--from", str(log)])
    assert missing.exit_code == 2
    assert "--from needs --public-key" in said(missing)
    other = run(app, ["audit-report", "another", "--from", str(log), "--public-key", str(key)])
    assert other.exit_code == 2
    assert "is an export of 'audited'" in said(other)
    french = run(app, ["audit-report", "audited", "--lang", "fr", "--from", str(log), "--public-key", str(key)])
    assert french.exit_code == 2
    assert "choose one of en, zh" in said(french)
    out = tmp_path / "report" / "audited.html"
    done = run(app, ["audit-report", "audited", "--from", str(log), "--public-key", str(key), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "(signed, but no head saved before was compared: a cut tail would not show)" in said(done)
    assert sorted(p.name for p in out.parent.iterdir()) == ["audited-budget.png", "audited-queries.png", "audited.html"]


# -- attacks (red team of issue 34) -----------------------------------------------------------------------------------
def _tampered(entries: list[AuditEntry], at: int, **changes: Any) -> str:
    """The export with the entry at 1-based position `at` replaced by its JSON with `changes` (no re-signing)."""
    lines = export(entries).splitlines()
    record = json.loads(lines[at - 1])
    lines[at - 1] = json.dumps({**record, **changes})
    return "\n".join(lines) + "\n"


def test_an_entry_after_the_break_is_unverified_whatever_sequence_it_claims():
    entries = chain(ROOM)
    lines = export(entries).splitlines()
    forged = json.loads(lines[5])  # entry 6, a query, copied with the sequence of entry 2 after entry 8
    forged |= {"sequence": 2, "parameters": {**forged["parameters"], "dimensions": ["platform.gender"]}}
    lines.insert(8, json.dumps(forged))
    facts = facts_from_export("\n".join(lines) + "\n", PEM.decode())
    assert (facts.verification.valid, facts.verification.first_invalid) == (False, 9)
    shown = facts.queries.set_index("sequence")
    assert not shown.loc[2, "verified"]  # read ninth: after the break, whatever it claims
    assert list(facts.queries["verified"]) == [True, True, True, False, False, False, False]


@pytest.mark.parametrize(
    ("at", "changes"),
    [
        (6, {"time": "not a time"}),
        (6, {"time": 5}),
        (1, {"parameters": {"revision": "x", "etag": "e1"}}),
        (6, {"parameters": {"with_members": 5}}),
        (6, {"parameters": {"epsilon": "lots"}}),
        (11, {"parameters": {"period": 1, "members": [1, 2], "set_sizes": [1]}}),
        (6, {"principal": "$\\frac{$"}),  # matplotlib mathtext in a chart label
        (6, {"epsilon": float("nan")}),
    ],
)
def test_an_entry_that_is_no_entry_still_renders_the_failure_at_the_top(tmp_path: Path, at: int, changes: Any):
    facts = facts_from_export(_tampered(chain(ROOM), at, **changes), PEM.decode(), policy_text=POLICY)
    assert not facts.verification.valid
    assert facts.verification.first_invalid == at
    page = render_audit_report(facts, tmp_path / "tampered", "en").read_text(encoding="utf-8")
    body = page[page.index("<body") :]
    assert body.index(f"NOT VERIFIED: the chain breaks at entry {at}") < body.index("<h1>")


@pytest.mark.parametrize("depth", [5_000, 200_000])
def test_json_nested_too_deep_is_a_broken_line_not_a_crash(tmp_path: Path, depth: int):
    lines = export(chain(ROOM)).splitlines()
    lines[6] = lines[6].replace('"parameters":{', '"parameters":{"x":' + "[" * depth + "]" * depth + ",", 1)
    facts = facts_from_export("\n".join(lines) + "\n", PEM.decode())
    assert (facts.verification.valid, facts.verification.first_invalid) == (False, 7)
    assert "line 7 is not an audit entry" in facts.verification.reason
    assert len(facts.verification.reason) < 400  # the reason is a sentence, not the line
    page = render_audit_report(facts, tmp_path / "deep", "en").read_text(encoding="utf-8")
    assert page.index("NOT VERIFIED") < page.index("<h1>")


def _resigned(entries: list[AuditEntry]) -> str:
    """What an operator holding the server's key can export: any prefix, with a head signed for it."""
    return export(entries)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_without_an_earlier_head_a_cut_tail_signed_again_is_not_called_verified(tmp_path: Path, lang: str):
    entries = chain(ROOM)
    cut = _resigned(entries[:8])  # the operator drops entries 9.. and signs a head at 8 with the server's key
    alone = facts_from_export(cut, PEM.decode())
    assert alone.verification.valid
    assert not alone.verification.anchored
    page = render_audit_report(alone, tmp_path / f"cut-{lang}", lang).read_text(encoding="utf-8")
    body = page[page.index("<body") :]
    warned = {"en": "cannot show that no entry was cut from the end", "zh": "无法证明末尾没有记录被删去"}[lang]
    assert body.index(warned) < body.index("<h1>")
    assert 'class="verdict valid unanchored"' in body
    assert "Verified: all" not in body
    assert "验证通过" not in body
    caught = facts_from_export(cut, PEM.decode(), tree_head(entries))  # the auditor remembered all 14
    assert not caught.verification.valid
    assert "shrank" in caught.verification.reason
    kept = facts_from_export(export(entries), PEM.decode(), tree_head(entries, 8))
    assert kept.verification.anchored
    sentence, _ = verdict(audit_text_for("en"), kept.verification)
    assert sentence.startswith("Verified: all 14 entries")


def test_a_head_of_another_collaboration_is_not_called_a_fork():
    entries = chain(ROOM)
    nodes = merkle.MerkleNodes()
    for e in entries:
        nodes.append(merkle.leaf_hash(leaf_data(e.hash, e.signature)))
    unsigned = TreeHead("another", 5, nodes.root(5), "2026-12-02T00:00:00Z")
    other = TreeHead("another", 5, unsigned.root, unsigned.time, KEY.sign(unsigned.message()))
    facts = facts_from_export(export(entries), PEM.decode(), others=[("platform", other)])
    (check,) = facts.verification.heads
    assert check.consistent is None
    assert "'another'" in check.detail
    assert not facts.verification.anchored  # and it vouches for nothing


@pytest.mark.parametrize(
    "variants",
    [
        [{"by": "", "labels": "4a"}, {"by": "", "labels": "aipl"}],  # the funnel's stage names: words, not values
        [{"dimensions": ["brand.tier", "platform.age_band"]}, {"dimensions": ["platform.age_band", "brand.tier"]}],
        [
            {"dimensions": ["brand.tier"], "with_members": ["brand", "platform"]},
            {"dimensions": ["brand.tier"], "with_members": ["platform", "brand"]},
        ],
    ],
)
def test_a_repeated_query_is_found_through_a_change_that_asks_nothing_new(variants: list[dict[str, Any]]):
    action = "query.funnel" if "labels" in variants[0] else "query.overlap"
    specs = [q("brand", action, i, 0.2, **variants[i % 2]) for i in range(4)]  # alternating: 2 + 2
    facts = facts_from_export(export(chain(specs)), PEM.decode())
    found = facts.anomalies[facts.anomalies["kind"] == "repeated_query"]
    assert list(found["sequences"]) == [[1, 2, 3, 4]]


def test_refusals_spaced_just_beyond_the_burst_window_are_still_found():
    gap = REFUSAL_WINDOW_SECONDS / 2 + 1  # never three in one window
    specs = [q("brand", "query.refuse", i * gap, query="overlap", reason="no") for i in range(REFUSALS_IN_ALL)]
    facts = facts_from_export(export(chain(specs)), PEM.decode())
    kinds = list(facts.anomalies["kind"])
    assert "refusal_burst" not in kinds
    assert kinds == ["refusals"]
    assert describe_finding(audit_text_for("zh"), "refusals", facts.anomalies["detail"].iloc[0])


def test_online_the_head_the_server_shows_is_compared_with_the_export_it_sends(tmp_path: Path):
    from types import SimpleNamespace

    from cleanroom_client.auditing import AuditMethods

    entries = chain(ROOM)
    fork = chain([*ROOM[:5], q("brand", "query.overlap", 9, dimensions=["brand.tier"]), *ROOM[6:]])
    shown = tree_head(fork)  # the head the server shows (and this client remembers): one history...

    def export_audit_log(path: Path, collaboration_id: str) -> Path:
        Path(path).write_text(export(entries), encoding="utf-8")  # ...the export it sends: another
        return Path(path)

    client = SimpleNamespace(
        _witness=SimpleNamespace(
            memory=SimpleNamespace(key=KEY.public_key(), head=lambda c: None), head=lambda c: shown
        ),
        get_collaboration=lambda c: SimpleNamespace(policy_yaml=POLICY),
        export_audit_log=export_audit_log,
    )
    facts = AuditMethods.audit_facts(client, "audited")  # type: ignore[arg-type]
    (server,) = facts.verification.heads
    assert server.source == "server"
    assert server.consistent is False
    assert not facts.verification.trusted


@pytest.mark.parametrize(("line", "number"), [(4, '"sequence":4'), (15, '"sequence":14')])
def test_a_number_too_large_for_an_integer_is_a_broken_line_not_a_crash(line: int, number: str):
    lines = export(chain(ROOM)).splitlines()
    lines[line - 1] = lines[line - 1].replace(number, '"sequence":1e999', 1)
    facts = facts_from_export("\n".join(lines) + "\n", PEM.decode())
    assert not facts.verification.valid
    assert f"line {line} is not" in facts.verification.reason


def test_a_head_file_nested_too_deep_is_refused_not_a_crash(tmp_path: Path):
    from typer.testing import CliRunner

    from cleanroom_client.cli import app

    log, key, head = tmp_path / "log.jsonl", tmp_path / "server.pem", tmp_path / "theirs.json"
    log.write_text(export(chain(ROOM)), encoding="utf-8")
    key.write_bytes(PEM)
    head.write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")  # what a hostile member sends as its head
    args = ["audit-report", "audited", "--from", str(log), "--public-key", str(key), "--head", str(head)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "not a tree head" in " ".join(result.output.split())


EVIL = '"><script>alert(1)</script><img src=x onerror=alert(2)></p><p class="verdict valid">Verified: all'


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_string_a_member_or_the_operator_writes_is_text_on_the_page(tmp_path: Path, lang: str):
    specs: list[Spec] = [
        ("brand", "collaboration.create", {"revision": 1, "etag": EVIL}, 0.0, 0.0, 0),
        ("brand", "upload.commit", {"kind": EVIL, "rows": 1, "points": 2, "period": EVIL}, 0.0, 0.0, 1),
        q("brand", "query.overlap", 10, dimensions=[f"brand.{EVIL}"], with_members=[EVIL]),
        q("brand", "query.refuse", 11, query=EVIL, reason=EVIL),
        ("brand", "refresh.complete", {"period": EVIL, "members": {}, "set_sizes": {EVIL: 1}}, 0.0, 0.0, 20),
        ("operator", "auditor.assign", {"auditor": EVIL}, 0.0, 0.0, 40),
        ("platform", "audience.fetch", {"audience": EVIL}, 0.0, 0.0, 41),
    ]
    entries = chain(specs)
    lines = export(entries).splitlines()
    lines[-1] = lines[-1].replace('"collaboration":"audited"', f'"collaboration":{json.dumps(EVIL)}', 1)
    facts = facts_from_export("\n".join(lines) + "\n", PEM.decode(), policy_text=POLICY)
    assert not facts.verification.valid  # the head names another collaboration: not the server's signature
    page = render_audit_report(facts, tmp_path / lang, lang).read_text(encoding="utf-8")
    assert page.count("<script") == 1  # the page's own, which counts the charts
    assert "onerror=" not in page.replace("onerror=alert(2)&gt;", "")
    assert page.count('<p class="verdict') == 1
    assert page.count("<p") == page.count("</p>")
    body = page[page.index("<body") :]
    assert body.index('class="verdict broken"') < body.index("<h1>")


def _head_at(entries: list[AuditEntry], time: str) -> TreeHead:
    nodes = merkle.MerkleNodes()
    for e in entries:
        nodes.append(merkle.leaf_hash(leaf_data(e.hash, e.signature)))
    unsigned = TreeHead("audited", nodes.size, nodes.root(), time)
    return TreeHead("audited", nodes.size, unsigned.root, time, KEY.sign(unsigned.message()))


def test_a_member_head_signed_before_a_shorter_export_proves_the_tail_was_cut():
    entries = chain(ROOM)
    seen = _head_at(entries, "2026-12-01T12:00:00+00:00")  # the platform kept this head of all 14 entries at noon
    cut = entries[:8]  # the operator cuts entries 9.. and exports at 18:00, signing a head at 8 with the server key
    last = cut[-1]
    chain_head = SignedHead("audited", last.sequence, last.hash)
    signed = SignedHead(
        "audited", 8, last.hash, KEY.sign(chain_head.message()), _head_at(cut, "2026-12-01T18:00:00+00:00")
    )
    text = "\n".join([*(e.to_json() for e in cut), signed.to_json()]) + "\n"
    facts = facts_from_export(text, PEM.decode(), others=[("platform", seen)])
    (check,) = facts.verification.heads
    assert check.consistent is False
    assert "the log shrank" in check.detail
    assert not facts.verification.trusted
    later = _head_at(entries, "2026-12-01T20:00:00+00:00")  # a head signed after the export: just newer
    again = facts_from_export(text, PEM.decode(), others=[("platform", later)])
    assert again.verification.heads[0].consistent is None
    assert again.verification.trusted


def test_the_budget_now_is_the_ledgers_after_a_renewal_with_no_charge_since(tmp_path: Path):
    """Per period, a refresh that changed data renews every budget (the server counts after its entry): a member
    that spent 1.8 of 2.0 before it, and nothing since, has spent 0 now, not 1.8."""
    specs = [
        q("brand", "query.overlap", 10, 0.9, dimensions=["brand.tier"]),
        q("brand", "query.overlap", 20, 0.9, dimensions=["platform.age_band"]),
        ("brand", "refresh.complete", {"period": 1, "members": {"brand": {"new_rows": 5}}}, 0.0, 0.0, 30),
    ]
    facts = facts_from_export(export(chain(specs)), PEM.decode(), policy_text=POLICY)
    assert facts.budget_period == 1
    now = facts.spent_now().set_index("member")
    assert now.loc["brand", "epsilon_spent"] == 0.0
    page = render_audit_report(facts, tmp_path / "renewed", "en").read_text(encoding="utf-8")
    assert "brand spent ε 0 and δ 0 of a cap of ε 2" in page
    assert "brand spent ε 1.8" not in page


def test_a_query_answered_under_a_revision_not_every_member_approved_is_a_finding():
    """A proposal clears every approval; the server answers nothing until every member approved the new etag. An
    operator who bypasses that leaves entries in this order, and the auditor is told, with no threshold."""
    specs: list[Spec] = [
        ("brand", "collaboration.create", {"revision": 1, "etag": "e1"}, 0.0, 0.0, 0),
        ("brand", "policy.approve", {"revision": 1, "etag": "e1"}, 0.0, 0.0, 1),
        ("platform", "policy.approve", {"revision": 1, "etag": "e1"}, 0.0, 0.0, 2),
        q("brand", "query.overlap", 10, 0.1, dimensions=["brand.tier"]),  # fine: both approved e1
        ("brand", "policy.propose", {"revision": 2, "etag": "e2"}, 0.0, 0.0, 20),
        ("brand", "policy.approve", {"revision": 2, "etag": "e2"}, 0.0, 0.0, 21),
        q("brand", "query.overlap", 30, 0.1, dimensions=["platform.age_band"]),  # platform has not approved e2
        ("platform", "policy.approve", {"revision": 2, "etag": "e2"}, 0.0, 0.0, 40),
        q("brand", "query.overlap", 50, 0.1, dimensions=["brand.tier", "platform.age_band"]),  # fine again
    ]
    for policy in (POLICY, ""):  # the members from the policy, or from the log's approvals
        facts = facts_from_export(export(chain(specs)), PEM.decode(), policy_text=policy)
        found = facts.anomalies[facts.anomalies["kind"] == "unapproved"]
        assert list(found["sequences"]) == [[7]]
        assert found["detail"].iloc[0] == {"count": 1, "revision": 2, "missing": "platform"}
        for lang in ("en", "zh"):
            assert describe_finding(audit_text_for(lang), "unapproved", found["detail"].iloc[0])
    assert (
        facts_from_export(export(chain(ROOM)), PEM.decode(), policy_text=POLICY)
        .anomalies["kind"]
        .ne("unapproved")
        .all()
    )


def test_a_member_head_file_named_server_or_remembered_is_not_shown_as_the_auditors_own(tmp_path: Path):
    from typer.testing import CliRunner

    from cleanroom_client.cli import app

    entries = chain(ROOM)
    log, key = tmp_path / "log.jsonl", tmp_path / "server.pem"
    log.write_text(export(entries), encoding="utf-8")
    key.write_bytes(PEM)
    args = ["audit-report", "audited", "--from", str(log), "--public-key", str(key)]
    for name in ("server", "remembered"):
        sent = tmp_path / f"{name}.json"  # what a member called the head it sent
        sent.write_text(json.dumps(tree_head(entries, 5).to_dict()), encoding="utf-8")
        out = tmp_path / f"r-{name}"
        result = CliRunner().invoke(app, [*args, "--head", str(sent), "--out", str(out)])
        assert result.exit_code == 0, result.output
        page = out.with_suffix(".html").read_text(encoding="utf-8")
        assert f"{name}.json&#x27;s exported head (5 entries): consistent" in page
        assert "Your remembered head" not in page
        assert "The server&#x27;s current head" not in page
