"""Three members in one room over TLS: a brand, a commerce platform and a social platform (the JD x Tencent model).

Each member's points pass through both others (two hops, shuffled at each) before the join; the brand is the hub,
joined one to one with each platform. Checked end to end through the Python SDK on a real server: the pairs equal
the truth, the Venn diagram and a cross-platform grouping fall within their error bars around a pandas reference,
the policy's `reads` and abilities hold per member, budgets are per member, and the raw protocol refuses a hop
out of turn, tags before the last hop and invalid points.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cleanroom.devtools import synthetic_platforms as sp
from cleanroom.devtools.devpki import make_dev_pki
from cleanroom.devtools.synthetic import STAGES
from cleanroom.principals import Role
from cleanroom.server import ServerConfig, create_server
from cleanroom.server.app import RunningServer, TlsConfig
from cleanroom_client import CleanRoomClient, SerialExecutor, cli
from cleanroom_client.errors import CleanRoomError, PermissionDeniedError
from cleanroom_client.matching import MatchSummary
from cleanroom_client.protocol import matching_pb2 as pb
from cleanroom_client.protocol import matching_pb2_grpc as pb_grpc

MEMBERS = (sp.HUB, sp.COMMERCE, sp.SOCIAL)


@dataclass
class Three:
    server: RunningServer
    clients: dict[str, CleanRoomClient]
    tokens: dict[str, str]
    ca: bytes
    cid: str
    data: sp.PlatformsData
    summaries: dict[str, MatchSummary]
    ca_path: Path

    def stub(self) -> pb_grpc.MatchingServiceStub:
        channel = grpc.secure_channel(
            f"localhost:{self.server.port}", grpc.ssl_channel_credentials(root_certificates=self.ca)
        )
        return pb_grpc.MatchingServiceStub(channel)

    def md(self, member: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[member]}"),)


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Three]:
    root = tmp_path_factory.mktemp("three")
    pki = make_dev_pki(root / "pki", clients=MEMBERS)
    server = create_server(
        ServerConfig(
            data_dir=root / "server", tls=TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes(), None)
        )
    )
    tokens = {m: server.room.principals.add(m, Role.MEMBER) for m in MEMBERS}
    tokens["auditor"] = server.room.principals.add("auditor", Role.AUDITOR)
    clients = {
        m: CleanRoomClient(
            f"localhost:{server.port}",
            token=tokens[m],
            root_certificates=pki.ca,
            state_dir=root / f"state-{m}",
            executor=SerialExecutor(),
            progress=False,
            chunk_rows=1024,
        )
        for m in MEMBERS
    }
    data = sp.generate(brand_users=3000)
    c = clients[sp.HUB].create_collaboration(sp.POLICY, "brand-jd-tencent")
    for m in MEMBERS:
        clients[m].approve_policy(c.id)
    server.room.principals.assign_auditor("auditor", c.id)
    arguments = sp.match_arguments(data)
    with ThreadPoolExecutor(3) as pool:
        jobs = {
            m: pool.submit(clients[m].match, c.id, wait_timeout=120, **arguments[m])  # type: ignore[arg-type]
            for m in MEMBERS
        }
        summaries = {m: j.result() for m, j in jobs.items()}
    yield Three(server, clients, tokens, pki.ca.read_bytes(), c.id, data, summaries, pki.ca)
    for client in clients.values():
        client.close()
    server.stop(None)


def pairs(server: RunningServer, clients: dict[str, CleanRoomClient], cid: str, spoke: str) -> set[tuple[str, str]]:
    """The server's pairs of the hub and `spoke`, as (brand key, platform key) through each member's own ledger."""
    rows = (
        server.room.store.of(cid)
        .cursor()
        .execute(
            "SELECT row_a, row_b FROM matches WHERE collab = ? AND member_a = ? AND member_b = ?", [cid, sp.HUB, spoke]
        )
        .fetchall()
    )
    ledger = {
        m: pd.read_parquet(Path(clients[m].collaboration_dir(cid)) / "rows.parquet").set_index("row_id")["key"]
        for m in (sp.HUB, spoke)
    }
    return {(str(ledger[sp.HUB][a]), str(ledger[spoke][b])) for a, b in rows}


def test_every_member_blinds_every_other_members_points_and_the_join_equals_the_truth(room: Three) -> None:
    server, clients, cid, data, summaries = room.server, room.clients, room.cid, room.data, room.summaries
    sizes = {sp.HUB: len(data.brand_users), sp.COMMERCE: len(data.jd_users), sp.SOCIAL: len(data.tencent_users)}
    for m in MEMBERS:
        assert dict(summaries[m].set_sizes) == sizes  # every member learns every set size, nothing more
        assert summaries[m].peer_rejected_points == 0
    t = data.truth
    assert pairs(server, clients, cid, sp.COMMERCE) == {
        (c, u) for c, u in zip(t["customer_id"], t["jd_user"], strict=True) if pd.notna(u)
    }
    assert pairs(server, clients, cid, sp.SOCIAL) == {
        (c, u) for c, u in zip(t["customer_id"], t["tencent_user"], strict=True) if pd.notna(u)
    }
    # two hops per chain: each member committed one submission per other member, then nothing is left in the relay
    status = room.stub().GetMatchStatus(
        pb.GetMatchStatusRequest(parent=f"collaborations/{cid}"), metadata=room.md(sp.COMMERCE)
    )
    assert status.stage == pb.MatchStatus.STAGE_MATCHED
    assert {(o.origin, o.hop, o.last_hop, o.done) for o in status.offers} == {
        (sp.HUB, 1, False, True),  # jd blinds brand's points first
        (sp.SOCIAL, 2, False, True),  # and tencent's second
        (sp.COMMERCE, 3, True, True),  # then removes its own mask from its points and answers with their tags
    }
    cur = server.room.store.of(cid).cursor()
    for table in ("offers", "chain_points", "double_points", "staged_points"):
        assert cur.execute(f"SELECT count(*) FROM {table} WHERE collab = ?", [cid]).fetchone() == (0,)


def test_the_venn_diagram_is_within_its_bounds_of_the_truth(room: Three) -> None:
    clients, cid, data = room.clients, room.cid, room.data
    answer = clients[sp.HUB].venn(cid, epsilon=5)
    people = answer[answer["measure"] == "people"].set_index("region")
    truth = sp.venn_truth(data)
    assert set(people.index) == set(truth)
    for region, value in truth.items():
        cell = people.loc[region]
        assert abs(cell["value"] - value) <= 3 * cell["error_95"], (region, cell, value)
    exactly = answer[answer["measure"] == "people_exactly"].set_index("region")
    t = data.truth
    jd, wx = t["jd_user"].notna(), t["tencent_user"].notna()
    regions = {"brand": ~jd & ~wx, "brand∩jd": jd & ~wx, "brand∩tencent": ~jd & wx, "brand∩jd∩tencent": jd & wx}
    values, bounds = exactly["value"].to_dict(), exactly["error_95"].to_dict()
    for region, mask in regions.items():
        value, bound = values[region], bounds[region]
        assert abs(value - int(mask.sum())) <= 3 * bound, (region, value, bound)


def test_one_platforms_stages_cross_the_other_platforms_dimensions(room: Three) -> None:
    clients, cid, data = room.clients, room.cid, room.data
    answer = clients[sp.HUB].overlap(cid, by=["jd.stage_4a", "tencent.age_band"], epsilon=5)
    t = data.truth.dropna()
    jd = data.jd_users.set_index("user_id")["stage_4a"]
    wx = data.tencent_users.set_index("openid")["age_band"]
    truth = pd.DataFrame({"stage": jd[t["jd_user"]].to_numpy(), "age": wx[t["tencent_user"]].to_numpy()})
    counts = truth.value_counts()
    cells = answer[answer["measure"] == "people"]
    assert len(cells) == 5 * 5
    for _, cell in cells.iterrows():
        key = (cell["jd.stage_4a"], cell["tencent.age_band"])
        expected = int(counts.get(key, 0))
        if cell["suppressed"]:
            assert expected < 10 + 3 * 20
        else:
            assert abs(cell["value"] - expected) <= 3 * cell["error_95"], (key, cell, expected)
    # the people of a query naming one platform are the brand's users matched with that platform alone
    one = clients[sp.HUB].overlap(cid, by=["jd.stage_4a"], epsilon=5, with_members=["jd"])
    total = one[(one["measure"] == "people")]["value"].sum()
    assert abs(total - data.truth["jd_user"].notna().sum()) <= 3 * one["error_95"].max() * np.sqrt(5)


def test_attribution_credits_both_platforms_and_tgi_reads_the_social_platform(room: Three) -> None:
    clients, cid = room.clients, room.cid
    answer = clients[sp.HUB].attribution(cid, model="linear", lookback_days=30, by="campaign", epsilon=5)
    credited = answer[answer["measure"] == "attributed_conversions"]
    campaigns = set(credited["campaign"])
    assert {*sp.PLATFORM_CAMPAIGNS[sp.COMMERCE], *sp.PLATFORM_CAMPAIGNS[sp.SOCIAL], "none"} == campaigns
    # numbers are checked exactly against pandas in-process (tests/reference/test_multiparty_attribution.py); here,
    # that both platforms' touches reach the answer (each campaign holds 96 to 137 conversions here; withheld below
    # 10, by noise of scale 19 at epsilon 5: about 1% for one campaign, both of a platform's about 0.01%)
    for platform in (sp.COMMERCE, sp.SOCIAL):
        mine = credited[credited["campaign"].isin(sp.PLATFORM_CAMPAIGNS[platform])]
        assert not mine["suppressed"].all(), mine
    tgi = clients[sp.HUB].segment_insight(cid, "tencent.interest", epsilon=4, with_members=["tencent"])
    assert set(tgi["tencent.interest"]) >= set(sp.INTERESTS)
    assert {"tgi", "penetration"} <= set(tgi["measure"])
    funnel = clients[sp.HUB].funnel(cid, by="tencent.age_band", epsilon=4)
    assert len(funnel[funnel["measure"] == "people"]) == 5 * 5  # jd's stages crossed with tencent's age bands


def test_an_activation_list_goes_to_the_member_the_policy_names(room: Three) -> None:
    clients, cid, data = room.clients, room.cid, room.data
    answer = clients[sp.HUB].activate(cid, {"brand.tier": "basic"}, epsilon=5, delta=1e-7)
    assert not answer["suppressed"].any()
    listed = clients[sp.SOCIAL].audiences(cid)
    assert len(listed) == 1
    got = set(clients[sp.SOCIAL].fetch_audience(listed["name"].iloc[0]))
    t = data.truth
    everywhere = t[(t["tier"] == "basic") & t["jd_user"].notna() & t["tencent_user"].notna()]
    assert got == set(everywhere["tencent_user"])  # the people of every platform, as tencent's own keys
    assert clients[sp.COMMERCE].audiences(cid).empty  # jd may receive audiences, but this one is not its


def test_the_command_line_draws_the_venn_and_names_the_population(room: Three, tmp_path: Path) -> None:
    env = {
        "CLEANROOM_TARGET": f"localhost:{room.server.port}",
        "CLEANROOM_TOKEN": room.tokens[sp.COMMERCE],
        "CLEANROOM_CA": str(room.ca_path),
        "CLEANROOM_STATE_DIR": str(tmp_path),
        "COLUMNS": "200",
    }
    runner = CliRunner()
    r = runner.invoke(cli.app, ["-o", "json", "--with", "jd", "overlap", room.cid, "--by", "jd.stage_4a"], env=env)
    assert r.exit_code == 0, r.output
    assert {row["jd.stage_4a"] for row in json.loads(r.output)["rows"]} == {*STAGES, "none"}
    r = runner.invoke(cli.app, ["venn", room.cid, "--epsilon", "1"], env=env)  # jd may not read tencent's data
    assert r.exit_code != 0
    assert "tencent" in r.output
    env["CLEANROOM_TOKEN"] = room.tokens[sp.HUB]
    r = runner.invoke(cli.app, ["-o", "json", "venn", room.cid, "--by", "brand.tier", "--epsilon", "1"], env=env)
    assert r.exit_code == 0, r.output
    regions = {row["region"] for row in json.loads(r.output)["rows"]}
    assert regions == {"brand", "brand∩jd", "brand∩tencent", "brand∩jd∩tencent"}


def test_the_policy_says_whose_data_each_member_may_involve(room: Three) -> None:
    clients, cid = room.clients, room.cid
    jd = clients[sp.COMMERCE]
    # jd reads the brand's data only: a query over tencent's matches is refused, nothing spent
    before = jd.budget(cid)
    with pytest.raises(PermissionDeniedError, match="tencent"):
        jd.overlap(cid, by=["brand.tier"], epsilon=1)
    with pytest.raises(PermissionDeniedError, match="tencent"):
        jd.venn(cid, epsilon=1)
    answer = jd.overlap(cid, by=["brand.tier", "jd.stage_4a"], epsilon=1, with_members=["jd"])
    assert len(answer[answer["measure"] == "people"]) == 4 * 5
    with pytest.raises(CleanRoomError, match="with_members"):
        jd.overlap(cid, by=["tencent.age_band"], epsilon=1, with_members=["jd"])
    with pytest.raises(PermissionDeniedError):
        clients[sp.SOCIAL].venn(cid, epsilon=1)  # tencent may not query at all
    after = jd.budget(cid).set_index("member")["spent"]
    before_spent = before.set_index("member")["spent"]
    assert after[sp.COMMERCE] == pytest.approx(before_spent[sp.COMMERCE] + 1)  # the one query answered
    assert after[sp.HUB] == pytest.approx(before_spent[sp.HUB])  # the brand's ledger is its own


def test_the_relay_refuses_hops_out_of_turn_and_malformed_blinding(tmp_path: Path) -> None:
    pki = make_dev_pki(tmp_path / "pki", clients=MEMBERS)
    server = create_server(
        ServerConfig(
            data_dir=tmp_path / "server", tls=TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes(), None)
        )
    )
    try:
        tokens = {m: server.room.principals.add(m, Role.MEMBER) for m in MEMBERS}
        brand = CleanRoomClient(
            f"localhost:{server.port}", token=tokens[sp.HUB], root_certificates=pki.ca, state_dir=tmp_path / "b"
        )
        c = brand.create_collaboration(sp.POLICY, "raw-chain")
        channel = grpc.secure_channel(
            f"localhost:{server.port}", grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        )
        stub = pb_grpc.MatchingServiceStub(channel)
        md = {m: (("authorization", f"Bearer {tokens[m]}"),) for m in MEMBERS}
        for m in MEMBERS:
            CleanRoomClient(
                f"localhost:{server.port}", token=tokens[m], root_certificates=pki.ca, state_dir=tmp_path / m
            ).approve_policy(c.id)
        parent = f"collaborations/{c.id}"
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        from cleanroom_client.blinding import ZERO_POINT, blind_point
        from cleanroom_client.curve import hash_to_u

        point = hash_to_u(b"email\x00" + bytes(32))
        for m in MEMBERS:
            stub.UploadBlindedPoints(
                iter(
                    [
                        pb.UploadBlindedPointsRequest(
                            parent=parent,
                            chunk_index=0,
                            identifier_type=pb.IDENTIFIER_TYPE_EMAIL,
                            points=point,
                            first_row=0,
                            last=True,
                            total_rows=1,
                        )
                    ]
                ),
                metadata=md[m],
            )

        def submit(member: str, origin: str, tags: bytes = b"", blinded_points: bytes = b"") -> None:
            request = pb.SubmitDoubleBlindedPointsRequest(
                parent=parent, chunk_index=0, last=True, origin=origin, tags=tags, blinded_points=blinded_points
            )
            stub.SubmitDoubleBlindedPoints(iter([request]), metadata=md[member])

        # chain order by name: brand -> jd -> tencent -> back to brand. tencent's hop in brand's chain is the second.
        with pytest.raises(grpc.RpcError) as err:
            submit(sp.SOCIAL, sp.HUB, blinded_points=point)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "before you in its chain" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            submit(sp.HUB, sp.HUB, tags=bytes(8))  # brand's own final hop comes after jd's and tencent's
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            list(stub.FetchPeerPoints(pb.FetchPeerPointsRequest(parent=parent), metadata=md[sp.COMMERCE]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # with three members, name the origin
        with pytest.raises(grpc.RpcError) as err:
            submit(sp.COMMERCE, sp.HUB, tags=bytes(8))  # jd's hop is the first of three: points, not tags
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            submit(sp.COMMERCE, sp.HUB, blinded_points=(2).to_bytes(32, "little"))  # on the twist
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            submit(sp.COMMERCE, "nobody", blinded_points=point)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:  # the point offered was valid: dropping it unseen is refused
            submit(sp.COMMERCE, sp.HUB, blinded_points=ZERO_POINT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [offered] = list(
            stub.FetchPeerPoints(pb.FetchPeerPointsRequest(parent=parent, origin=sp.HUB), metadata=md[sp.COMMERCE])
        )
        jd_key = X25519PrivateKey.from_private_bytes(bytes(range(32)))
        blinded = blind_point(jd_key, offered.points)
        submit(sp.COMMERCE, sp.HUB, blinded_points=blinded)
        fetched = list(
            stub.FetchPeerPoints(pb.FetchPeerPointsRequest(parent=parent, origin=sp.HUB), metadata=md[sp.SOCIAL])
        )
        assert [f.points for f in fetched] == [blinded]
        channel.close()
        brand.close()
    finally:
        server.stop(None)
