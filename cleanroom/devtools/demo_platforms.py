"""The three-member demo: a brand with a commerce platform (jd) and a social platform (tencent) in one room.

Every member runs in this process on a thread with its own client, token, key and state directory, as three
machines would. Each member's points pass through both others before the join (two hops, shuffled by the server at
each); the brand is the hub. Then the brand asks the questions only a three-way room answers: the Venn diagram of
its customers across both platforms, one platform's 4A stages crossed with the other's age bands, attribution over
both platforms' exposures at once; an activation list goes to the member the policy names; jd is refused what its
policy does not let it read; an auditor verifies the log.
"""

from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from rich.table import Table

from cleanroom_client import CleanRoomClient
from cleanroom_client.blinding import ProcessPoolChunkExecutor
from cleanroom_client.errors import PermissionDeniedError
from cleanroom_client.transparency import TreeHead

from ..principals import Role
from ..server import ServerConfig, create_server
from ..server.app import TlsConfig
from . import synthetic_platforms as sp
from .demo import StepClock, _print, console
from .devpki import make_dev_pki

MEMBERS = (sp.HUB, sp.COMMERCE, sp.SOCIAL)


def run_platforms_demo(
    brand_users: int, data_dir: Path | None = None, state_dir: Path | None = None, report_dir: Path | None = None
) -> None:
    """Generate, serve, match three members and query across them; state in `state_dir`/<member> (default: temp).

    With `report_dir`, the auditor's report of the collaboration is written there in English and Chinese.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    clock = StepClock()
    with clock.step("synthetic data"):
        data = sp.generate(brand_users=brand_users)
        truth = sp.venn_truth(data)
    console.print(
        f"synthetic data: brand {len(data.brand_users):,} customers, jd {len(data.jd_users):,} users, "
        f"tencent {len(data.tencent_users):,} users; truth: "
        + ", ".join(f"{region} {n:,}" for region, n in truth.items())
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with clock.step("embedded server"):
            pki = make_dev_pki(root / "pki", clients=MEMBERS)
            tls = TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes())
            running = create_server(ServerConfig(data_dir=data_dir or root / "server", tls=tls))
            target = f"localhost:{running.port}"
            roles = [*((m, Role.MEMBER) for m in MEMBERS), ("auditor", Role.AUDITOR)]
            tokens = {name: running.room.principals.add(name, role) for name, role in roles}
        console.print(f"embedded server on {target} (TLS; tokens issued to {', '.join(tokens)})")
        workers = ProcessPoolChunkExecutor()  # one pool for the members on this machine's cores (see demo.py)

        def connect(name: str) -> CleanRoomClient:
            state = (state_dir or root) / name
            return CleanRoomClient(
                target, token=tokens[name], root_certificates=pki.ca, state_dir=state, executor=workers
            )

        clients = {m: connect(m) for m in MEMBERS}
        try:
            with clock.step("clients and policy"):
                collaboration = clients[sp.HUB].create_collaboration(
                    sp.POLICY, collaboration_id=f"three-{int(time.time())}"
                )
                for m in MEMBERS:
                    clients[m].approve_policy(collaboration.id)
            console.print(f"collaboration {collaboration.id}: policy approved by {', '.join(MEMBERS)} (hub: brand)")
            arguments = sp.match_arguments(data)
            started = time.monotonic()
            with clock.step("match"), ThreadPoolExecutor(len(MEMBERS)) as pool:
                jobs = {
                    m: pool.submit(clients[m].match, collaboration.id, wait_timeout=300, **arguments[m])  # type: ignore[arg-type]
                    for m in MEMBERS
                }
                wait(list(jobs.values()), return_when=FIRST_EXCEPTION)  # a failing member must not leave others waiting
                for job in jobs.values():
                    if job.done() and job.exception():
                        raise job.exception()  # type: ignore[misc]
                summaries = {m: j.result() for m, j in jobs.items()}
            table = Table(title=f"what each member learns (matched in {time.monotonic() - started:.1f} s)")
            table.add_column("member")
            table.add_column("rows sent", justify="right")
            table.add_column("set sizes it is told", justify="left")
            for m, s in summaries.items():
                table.add_row(m, f"{s.rows:,}", ", ".join(f"{k} {v:,}" for k, v in sorted(s.set_sizes.items())))
            console.print(table)
            with clock.step("queries"):
                _queries(clients, collaboration.id)
            with clock.step("audit"):
                running.room.principals.assign_auditor("auditor", collaboration.id)
                # The members' heads, as each would send its own to the auditor: the export must extend them.
                heads = [(m, TreeHead.from_dict(clients[m].audit_head(collaboration.id))) for m in MEMBERS]
                with connect("auditor") as auditor:
                    verdict = auditor.verify_audit_log(collaboration.id)
                    log = auditor.audit_log(collaboration.id)
                    facts = auditor.audit_facts(collaboration.id, heads) if report_dir is not None else None
            console.print(f"auditor: {len(log)} audit entries; the log verifies: {verdict['valid']}")
            if facts is not None and report_dir is not None:
                from cleanroom_client.audit_report import render_audit_report

                with clock.step("auditor report"):
                    pages = [render_audit_report(facts, report_dir / f"audit-{lang}", lang) for lang in ("en", "zh")]
                console.print(
                    f"auditor's report (verification first) in English and Chinese: {', '.join(map(str, pages))}; "
                    f"against a running server: cleanroom-client audit-report {collaboration.id} --out audit"
                )
        finally:
            for client in clients.values():
                client.close()
            workers.close()
            running.stop()
    clock.total("the demo with two platforms (brand, jd and tencent)")


def _queries(clients: dict[str, CleanRoomClient], collaboration_id: str) -> None:
    """The questions of a three-way room, each differentially private, with its error bars."""
    brand = clients[sp.HUB]
    venn = brand.venn(collaboration_id, epsilon=1.0)
    _print(venn[venn["measure"] == "people"], "the brand's customers across both platforms (Venn)", ("people",))
    _print(
        venn[venn["measure"] == "people_exactly"],
        "…and each region of the diagram (matched with exactly these)",
        ("people_exactly",),
    )
    cross = brand.overlap(collaboration_id, by=["jd.stage_4a", "tencent.age_band"], epsilon=1.0)
    _print(cross, "brand customers on both platforms: jd's 4A stage × tencent's age band", ("people",))
    tgi = brand.segment_insight(collaboration_id, "tencent.interest", epsilon=1.0, with_members=["tencent"])
    _print(tgi, "TGI of tencent interests among the brand's customers", ("matched", "tgi", "penetration"))
    attribution = brand.attribution(collaboration_id, model="linear", lookback_days=14, by="campaign", epsilon=2.0)
    _print(
        attribution,
        "linear attribution over jd's and tencent's exposures together (one person, however many reached them)",
        ("attributed_conversions", "attributed_revenue"),
    )
    activated = brand.activate(collaboration_id, {"brand.tier": "basic"}, epsilon=2.0, delta=1e-7)
    released = clients[sp.SOCIAL].audiences(collaboration_id)
    console.print(
        f"activation: basic-tier customers on both platforms, noisy size {activated['value'].iloc[0]:,.0f}; "
        f"tencent (the policy's recipient) received {len(released)} list(s) of "
        f"{int(released['size'].sum()) if len(released) else 0:,} of its own users"
    )
    jd = clients[sp.COMMERCE]
    try:
        jd.overlap(collaboration_id, by=["jd.stage_4a"], epsilon=0.5)
    except PermissionDeniedError as err:
        console.print(f"jd asks about brand customers on tencent too: refused, nothing spent ({err.message})")
    own = jd.overlap(collaboration_id, by=["brand.tier", "jd.stage_4a"], epsilon=1.0, with_members=["jd"])
    _print(own, "jd's own question: brand customers on jd, tier × 4A stage", ("people",))
    budget = brand.budget(collaboration_id)
    console.print("budget: " + ", ".join(f"{r.member} spent {r.spent:g} of {r.total:g}" for r in budget.itertuples()))
