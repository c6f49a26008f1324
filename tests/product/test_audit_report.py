"""The auditor's report end to end: real rooms on a real server over TLS, `cleanroom-client audit-report` online and
offline, each page opened in headless Chromium (Debian's package) in English and Chinese with a screenshot.

Two collaborations on one server: the brand with two platforms (jd, tencent: a three-member room, with a Venn
diagram, refusals, previews, repeated queries and an activation list), and a living two-member room (refresh is
two-member, README) with a refresh and a retirement. A tampered export (one byte of one entry) renders its failure
first. Screenshots are kept in build/report-screenshots/ for a person to look at.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from test_report import SHOTS, _chromium
from typer.testing import CliRunner

from cleanroom.devtools import synthetic_platforms as sp
from cleanroom.devtools.devpki import DevPki, make_dev_pki
from cleanroom.principals import Role
from cleanroom.server import ServerConfig, create_server
from cleanroom.server.app import RunningServer, TlsConfig
from cleanroom_client import CleanRoomClient, SerialExecutor
from cleanroom_client.cli import app
from cleanroom_client.errors import CleanRoomError
from cleanroom_client.query_types import BY_NAME

MEMBERS = (sp.HUB, sp.COMMERCE, sp.SOCIAL)
LIVING: dict[str, Any] = {
    "name": "living",
    "members": {
        "brand": {"abilities": ["contribute", "query", "receive_results"]},
        "platform": {"abilities": ["contribute"]},
    },
    "identifiers": ["email"],
    "tables": {
        "brand.users": {"dimensions": {"tier": ["gold", "basic"]}},
        "platform.users": {"dimensions": {"age_band": ["young", "old"]}},
    },
    "queries": ["overlap"],
    "min_group_size": 1,
    "epsilon": {"per_member_total": 3.0, "per_query_max": 1.0},
    "refresh": {"tables": ["brand.users", "platform.users"], "min_days_between": 0},
}


@dataclass
class Rooms:
    server: RunningServer
    pki: DevPki
    tokens: dict[str, str]
    clients: dict[str, CleanRoomClient]
    three: str
    living: str
    root: Path

    def env(self, name: str) -> dict[str, str]:
        return {
            "CLEANROOM_TARGET": f"localhost:{self.server.port}",
            "CLEANROOM_TOKEN": self.tokens[name],
            "CLEANROOM_CA": str(self.pki.ca),
            "CLEANROOM_STATE_DIR": str(self.root / f"state-{name}"),
        }


def _users(ids: range, side: str) -> pd.DataFrame:
    column, values = ("tier", ("gold", "basic")) if side == "brand" else ("age_band", ("young", "old"))
    return pd.DataFrame(
        {"key": [f"{side[0]}{i}" for i in ids], "email": [f"p{i}@example.com" for i in ids]}
        | {column: [values[i % 2] for i in ids]}
    )


def _three_member_room(r: Rooms) -> None:
    c = r.clients
    cid = c[sp.HUB].create_collaboration(sp.POLICY, r.three).id
    for m in MEMBERS:
        c[m].approve_policy(cid)
    arguments = sp.match_arguments(sp.generate(brand_users=400))
    with ThreadPoolExecutor(3) as pool:
        jobs = [pool.submit(c[m].match, cid, wait_timeout=120, **arguments[m]) for m in MEMBERS]  # type: ignore[arg-type]
        for job in jobs:
            job.result()
    brand = c[sp.HUB]
    brand.venn(cid, epsilon=1.0)
    for _ in range(3):  # the same question three times: averaging, for the anomaly rules
        brand.overlap(cid, by=["brand.tier"], epsilon=0.5)
    brand.overlap(cid, by=["brand.tier", "jd.stage_4a"], epsilon=0.5, preview=True)
    for dimension in ("brand.nothing", "jd.nothing", "tencent.nothing"):
        with pytest.raises(CleanRoomError):
            brand.overlap(cid, by=[dimension], epsilon=0.5)
    brand.activate(cid, segment={"brand.tier": "gold"}, epsilon=0.5, delta=1e-7)


def _living_room(r: Rooms) -> None:
    b, p = r.clients["brand"], r.clients["platform"]
    cid = b.create_collaboration(yaml.safe_dump(LIVING), r.living).id
    b.approve_policy(cid)
    p.approve_policy(cid)

    def both(*calls: Any) -> None:
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(call) for call in calls]:
                f.result()

    ids = {"email": "email"}
    both(
        lambda: b.match(cid, _users(range(0, 60), "brand"), "key", ids, ["tier"], wait_timeout=120),
        lambda: p.match(cid, _users(range(20, 80), "platform"), "key", ids, ["age_band"], wait_timeout=120),
    )
    b.overlap(cid, by=["brand.tier"], epsilon=1.0)
    both(
        lambda: b.refresh(cid, _users(range(60, 80), "brand"), identifiers=ids, attributes=["tier"]),
        lambda: p.refresh(cid, None),
    )
    b.overlap(cid, by=["brand.tier"], epsilon=1.0)  # straight after the refresh
    b.retire(cid, ["b1", "b2"])


@pytest.fixture(scope="module")
def rooms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rooms]:
    root = tmp_path_factory.mktemp("audited")
    pki = make_dev_pki(root / "pki")
    server = create_server(
        ServerConfig(data_dir=root / "server", tls=TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes()))
    )
    names = {**dict.fromkeys((*MEMBERS, "platform"), Role.MEMBER), "auditor": Role.AUDITOR}
    tokens = {n: server.room.principals.add(n, role) for n, role in names.items()}
    clients = {
        n: CleanRoomClient(
            f"localhost:{server.port}",
            token=tokens[n],
            root_certificates=pki.ca,
            state_dir=root / f"state-{n}",
            executor=SerialExecutor(),
            progress=False,
            chunk_rows=1024,
        )
        for n in names
    }
    r = Rooms(server, pki, tokens, clients, "brand-jd-tencent", "living", root)
    _three_member_room(r)
    _living_room(r)
    for cid in (r.three, r.living):
        server.room.principals.assign_auditor("auditor", cid)
    yield r
    for client in clients.values():
        client.close()
    server.stop(None)


def _report(args: list[str], env: dict[str, str], code: int = 0) -> str:
    result = CliRunner().invoke(app, ["audit-report", *args], env=env)
    assert result.exit_code == code, result.output
    return result.output


def _render(page: Path, profile: Path, shot: str) -> str:
    """The page's DOM as Chromium built it (every chart loaded, no console error), and its screenshot kept."""
    dom = _chromium(page, profile / "dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr
    charts = page.read_text(encoding="utf-8").count('class="chart"')
    assert f'data-charts="{charts}"' in dom.stdout, "not every chart rendered in the browser"
    SHOTS.mkdir(parents=True, exist_ok=True)
    taken = _chromium(page, profile / "shot", "--window-size=1280,3000", f"--screenshot={SHOTS / shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert (SHOTS / shot).stat().st_size > 50_000
    return dom.stdout


def _first_text(dom: str) -> str:
    """The first paragraph of the body: what a person reads first."""
    body = dom[dom.index("<body") :]
    start = body.index("<p")
    return body[body.index(">", start) + 1 : body.index("</p>", start)]


SECTIONS = {
    "en": ("Policy and its revisions", "Privacy budget spent per member", "Every query", "Uploads and matches",
           "Refresh periods and retirements", "Audiences released and fetched", "Auditor assignments",
           "For an auditor to look at"),
    "zh": ("策略及其修订", "各成员的隐私预算消耗", "全部查询", "上传与匹配", "刷新周期与用户退出", "人群包的发布与领取",
           "审计员指派", "需要审计员关注的事项"),
}  # fmt: skip


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_three_member_rooms_report_online_in_chromium(rooms: Rooms, tmp_path: Path, lang: str) -> None:
    out = tmp_path / f"three-{lang}"
    # The auditor's first look has no head of its own to compare with, so it is "signed", not "verified"; the head
    # its SDK remembers then anchors every later report (a cut tail or a rewrite would contradict it).
    _report([rooms.three, "--lang", lang, "--out", str(tmp_path / "first")], rooms.env("auditor"))
    printed = _report([rooms.three, "--lang", lang, "--out", str(out)], rooms.env("auditor"))
    assert "(verified)" in printed
    assert {p.name for p in tmp_path.iterdir()} >= {f"three-{lang}.html", f"three-{lang}-budget.png"}
    dom = _render(out.with_suffix(".html"), tmp_path, f"audit-three-{lang}.png")
    first = _first_text(dom)
    assert first.startswith("Verified: all" if lang == "en" else "验证通过：全部"), first
    for title in SECTIONS[lang]:
        assert title in dom, title
    facts = rooms.clients["auditor"].audit_facts(rooms.three)
    assert {sp.HUB, sp.SOCIAL} <= set(facts.budget["member"])  # the activation charges its recipient too
    queries = facts.queries
    refused = queries[queries["outcome"] == "refused"]
    assert len(refused) == 3
    assert set(refused["query"]) == {"overlap"}  # a refusal names the query type it refused
    assert all("nothing" in reason for reason in refused["reason"])
    kinds = set(facts.anomalies["kind"])
    assert {"refusal_burst", "repeated_query"} <= kinds
    assert facts.audiences["recipient"].iloc[0] == sp.SOCIAL
    for name in ("venn", "overlap", "activate"):  # query types named by their declarations, in the page's language
        assert f"<td>{BY_NAME[name].reading[lang].short}</td>" in dom, name


def test_the_living_room_offline_from_an_export_with_heads_in_both_languages(rooms: Rooms, tmp_path: Path) -> None:
    auditor, platform = rooms.clients["auditor"], rooms.clients["platform"]
    remembered = tmp_path / "remembered.json"
    remembered.write_text(json.dumps(auditor.audit_head(rooms.living)))
    theirs = tmp_path / "platform.json"
    theirs.write_text(json.dumps(platform.audit_head(rooms.living)))
    export, key = tmp_path / "log.jsonl", tmp_path / "server.pem"
    auditor.export_audit_log(export, rooms.living)
    key.write_text(auditor.server_public_key())
    policy = tmp_path / "policy.yaml"
    policy.write_text(auditor.get_collaboration(rooms.living).policy_yaml)
    offline = ["--from", str(export), "--public-key", str(key), "--remember", str(remembered), "--head", str(theirs)]
    for lang in ("en", "zh"):
        out = tmp_path / f"living-{lang}"
        _report([rooms.living, "--lang", lang, *offline, "--policy", str(policy), "--out", str(out)], {})
        dom = _render(out.with_suffix(".html"), tmp_path / lang, f"audit-living-{lang}.png")
        for title in SECTIONS[lang]:
            assert title in dom, title
        assert ("platform's exported head" if lang == "en" else "platform 导出的链头") in dom
    dom_en = (tmp_path / "living-en.html").read_text(encoding="utf-8")
    assert "queries right after refresh period 1 completed" in dom_en
    assert "of a cap of ε 3" in dom_en
    assert "retire" in dom_en


def test_a_tampered_export_renders_its_failure_first(rooms: Rooms, tmp_path: Path) -> None:
    auditor = rooms.clients["auditor"]
    export, key = tmp_path / "log.jsonl", tmp_path / "server.pem"
    auditor.export_audit_log(export, rooms.three)
    key.write_text(auditor.server_public_key())
    lines = export.read_text(encoding="utf-8").splitlines()
    victim = next(i for i, line in enumerate(lines) if '"action":"query.venn"' in line)
    lines[victim] = lines[victim].replace('"epsilon":1.0', '"epsilon":0.1', 1)  # one byte of one entry
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for lang, words in (("en", "NOT VERIFIED: the chain breaks at entry"), ("zh", "验证未通过：审计链在第")):
        out = tmp_path / f"tampered-{lang}"
        printed = _report([rooms.three, "--lang", lang, "--from", str(tampered), "--public-key", str(key),
                           "--out", str(out)], {}, code=1)  # fmt: skip
        assert f"breaks at entry {victim + 1}" in printed
        dom = _render(out.with_suffix(".html"), tmp_path / lang, f"audit-tampered-{lang}.png")
        assert _first_text(dom).startswith(words), _first_text(dom)
        assert 'class="verdict broken"' in dom
        assert ("unverified" if lang == "en" else "未验证") in dom
