"""The demo: synthetic data, an embedded server with TLS and tokens, both members matching, an auditor verifying.

Both members run in this process on threads, each with its own client, token, key and state directory, exactly as
two separate machines would; the operator's exact counts are printed beside the truth to show the match is right.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from cleanroom_client import CleanRoomClient, MatchSummary
from cleanroom_client.blinding import ProcessPoolChunkExecutor
from cleanroom_client.transparency import TreeHead

from ..audit.chain import verify_export
from ..matching import match_stats
from ..principals import Role
from ..server import ServerConfig, create_server
from ..server.app import TlsConfig
from .devpki import make_dev_pki
from .synthetic import (
    DEMO_POLICY,
    FLOW_END,
    FLOW_START,
    LIFT_CAMPAIGN,
    SyntheticConfig,
    SyntheticData,
    generate,
    match_arguments,
)

console = Console()
#: The demo's lookalike: the brand's gold customers as seeds, an audience of a tenth of the platform's users.
LOOKALIKE_SEED = {"brand.tier": "gold"}
LOOKALIKE_AUDIENCE_SHARE = 0.1
LOOKALIKE_EPSILON, LOOKALIKE_DELTA = 1.0, 1e-7


class StepClock:
    """Times the steps of a demo and prints each one's elapsed seconds as it ends, then the total.

    So a user sees where the demo's time goes (the README states how long the demo takes; this shows it).
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the enclosed step and print `name: N.N s` when it ends."""
        start = time.monotonic()
        yield
        self.seconds[name] = time.monotonic() - start
        console.print(f"[dim]⏱ {name}: {self.seconds[name]:.1f} s[/]")

    def total(self, story: str) -> float:
        """Print and return the seconds since the clock started, with the steps that took them."""
        seconds = time.monotonic() - self.started
        steps = ", ".join(f"{name} {s:.1f}" for name, s in self.seconds.items())
        console.print(f"⏱ {story}: {seconds:.1f} s in all ({steps})")
        return seconds


def warm_up(*modules: str) -> threading.Thread:
    """Import `modules` on a background thread while the demo generates data and matches.

    torch and opacus take seconds to import and are first needed by the lookalike, well after the match (and
    matplotlib, for the report at the end); importing them meanwhile (the match's CPU work runs in the worker
    processes) takes that wait off the demo's critical path. Python's import lock makes a later `import` of the
    same module wait for this one rather than run twice.
    """

    def load() -> None:
        for name in modules:
            importlib.import_module(name)

    thread = threading.Thread(target=load, name="demo-warm-up", daemon=True)
    thread.start()
    return thread


def _summary_table(member: str, s: MatchSummary) -> Table:
    table = Table(title=f"what {member} learns")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("rows sent", str(s.rows))
    for t, c in s.identifiers.items():
        table.add_row(f"{t}: blinded / invalid / empty", f"{c.sent} / {c.invalid} / {c.missing}")
    for name, rows in s.tables.items():
        table.add_row(f"table {name} rows uploaded", str(rows))
    table.add_row("peer's set size", str(s.peer_set_size))
    return table


def _print(frame: pd.DataFrame, title: str, measures: tuple[str, ...]) -> None:
    """Cells as a table: one row per group, a column per measure, value ± its 95% error, — where suppressed."""
    dims = [c for c in frame.columns if c not in ("measure", "value", "error_95", "suppressed")]
    table = Table(title=title)
    for d in dims:
        table.add_column(d)
    for m in measures:
        table.add_column(m, justify="right")
    wide = frame[frame["measure"].isin(measures)]
    for keys, group in wide.groupby(dims, sort=False):
        cells = []
        for m in measures:
            rows = group[group["measure"] == m]
            if rows.empty:
                cells.append("")
                continue
            row = rows.iloc[0]
            if row["suppressed"]:
                cells.append("—")
            elif row["value"] >= 10:
                cells.append(f"{row['value']:,.0f} ± {row['error_95']:,.0f}")
            else:
                cells.append(f"{row['value']:.3f} ± {row['error_95']:.3f}")
        table.add_row(*(str(k) for k in (keys if isinstance(keys, tuple) else (keys,))), *cells)
    console.print(table)
    console.print(
        f"  ε spent {frame.attrs['epsilon_spent']:g}, ε left {frame.attrs['epsilon_remaining']:g}, "
        f"audit entry #{frame.attrs['audit_sequence']}"
    )


def _print_rows(frame: pd.DataFrame, title: str) -> None:
    """One line per measure: value ± its 95% error, or — where suppressed."""
    table = Table(title=title)
    for column in ("part", "measure", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for part, measure, value, error, suppressed in frame[
        ["part", "measure", "value", "error_95", "suppressed"]
    ].to_numpy():
        shown = "—" if suppressed else f"{float(value):,.3f}" + (f" ± {float(error):,.3f}" if error else "")
        table.add_row(str(part), str(measure), shown)
    console.print(table)
    console.print(f"  ε spent {frame.attrs['epsilon_spent']:.3f}, audience {frame.attrs['audience'] or '—'}")


def _queries(brand: CleanRoomClient, collaboration_id: str) -> None:
    """What the brand asks: each answer is differentially private, with its error bars."""
    _print(brand.overlap(collaboration_id, by=["brand.tier", "platform.age_band"], epsilon=0.5), "overlap", ("people",))
    funnel = brand.funnel(collaboration_id, by="brand.tier", epsilon=0.5)
    _print(funnel, "4A funnel by tier", ("people", "share"))
    flow = brand.funnel_flow(collaboration_id, FLOW_START, FLOW_END, epsilon=0.5)
    _print(flow, f"4A flow {FLOW_START} → {FLOW_END}", ("people", "row_share"))
    segment = brand.segment_insight(collaboration_id, "platform.age_band", epsilon=0.5)
    _print(segment, "segment insight: age band", ("matched", "all_users", "tgi", "penetration"))
    attribution = {}
    for model in ("last_touch", "position_based"):
        attribution[model] = brand.attribution(
            collaboration_id, model=model, lookback_days=7, by="campaign", epsilon=1.0
        )
        _print(
            attribution[model],
            f"attribution, {model}, 7-day lookback (campaign none = unattributed)",
            ("attributed_conversions", "attributed_revenue", "roas"),
        )
    bars = brand.value(collaboration_id, "brand.conversions.value", by=["brand.tier"], epsilon=1.0, preview=True)
    shown = bars[bars["measure"].isin(("sum", "per_buyer")) & (bars["brand.tier"] == bars["brand.tier"].iloc[0])]
    console.print(
        "preview (free: no ε, no data) of value by tier at ε 1, for a typical group of 1,000 buyers: "
        + ", ".join(
            f"{r.measure} ± {r.error_95:,.1f} ({r.relative_95:.0%} of {r.typical:,.0f})" for r in shown.itertuples()
        )
    )
    value = brand.value(collaboration_id, "brand.conversions.value", by=["brand.tier"], epsilon=1.0)
    _print(value, "GOAL value: spend by tier", ("buyers", "sum", "per_buyer", "per_order"))
    loyalty = brand.loyalty(
        collaboration_id, ("2026-10-01", "2026-11-01"), ("2026-11-01", "2026-12-01"), by=["brand.tier"], epsilon=1.0
    )
    _print(loyalty, "GOAL loyalty: October buyers by tier", ("converters", "repurchase_rate", "retention_rate"))
    lift = brand.lift(collaboration_id, LIFT_CAMPAIGN, epsilon=1.0)
    _print(
        lift,
        f"lift of {LIFT_CAMPAIGN} against its holdout",
        ("people", "conversion_rate", "absolute_lift", "relative_lift", "incremental_conversions"),
    )
    budget = brand.budget(collaboration_id)
    console.print("budget: " + ", ".join(f"{r.member} spent {r.spent:g} of {r.total:g}" for r in budget.itertuples()))


def _audiences(brand: CleanRoomClient, platform: CleanRoomClient, collaboration_id: str, data: SyntheticData) -> None:
    """The brand asks for a lookalike of its gold customers and activates a segment; the platform receives them."""
    look = brand.lookalike(
        collaboration_id,
        seed=LOOKALIKE_SEED,
        audience_size=round(LOOKALIKE_AUDIENCE_SHARE * len(data.platform_users)),
        epsilon=LOOKALIKE_EPSILON,
        delta=LOOKALIKE_DELTA,
    )
    _print_rows(look, "lookalike of the gold tier (what the brand learns)")
    act = brand.activate(collaboration_id, segment={"brand.tier": "gold", "platform.stage_4a": "appeal"}, epsilon=0.2)
    _print_rows(act, "activation: gold customers in the appeal stage (what the brand learns)")
    reached = {
        "table": "platform.exposures",
        "start": "2026-11-01",
        "end": "2026-11-15",
        "where": {"campaign": LIFT_CAMPAIGN},
    }
    no_purchase = {"table": "brand.conversions", "start": "2026-11-01", "end": "2026-12-01", "absent": True}
    retarget = brand.activate(collaboration_id, epsilon=0.2, events=[reached, no_purchase])
    _print_rows(
        retarget, f"retargeting: reached by {LIFT_CAMPAIGN} in early November, no purchase since (brand's view)"
    )
    audiences = platform.audiences(collaboration_id)
    console.print(
        f"the platform received {len(audiences)} audiences: "
        + ", ".join(f"{r.kind} of {r.size:,}" for r in audiences.itertuples())
    )
    keys = platform.fetch_audience(look.attrs["audience"])
    gold = set(data.truth.merge(data.brand_users, on="customer_id").query("tier == 'gold'")["user_id"])
    base = len(gold) / len(data.platform_users)
    precision = sum(k in gold for k in keys) / max(len(keys), 1)
    shown = look[~look["suppressed"]]
    quality = dict(zip(shown["measure"], shown["value"], strict=True))
    lower, upper = quality.get("lift_lower_95", math.nan), quality.get("lift_upper_95", math.nan)
    console.print(
        f"ground truth (known only to this demo): {precision:.1%} of the lookalike audience are the brand's gold "
        f"customers, against {base:.1%} of all platform users: a lift of {precision / base:.2f}; the brand was told "
        f"{quality.get('lift_over_random', math.nan):.2f} (95%: {lower:.2f} to {upper:.2f})"
        + (", which holds the truth" if lower <= precision / base <= upper else ", which misses the truth")
    )


def _auditor_reports(
    export: str, public_key_pem: str, report_dir: Path, heads: Sequence[tuple[str, TreeHead]] = ()
) -> list[Path]:
    """The auditor's report of the demo's collaboration from its export, in English and Chinese (`audit-<lang>`).

    `heads` are the members' heads (`audit head --to FILE`) sent to the auditor: without one, the report can only
    say the export is signed, not that nothing was cut from it.
    """
    from cleanroom_client.audit_report import render_audit_report
    from cleanroom_client.audit_sources import facts_from_export

    facts = facts_from_export(export, public_key_pem, others=heads, policy_text=DEMO_POLICY)
    return [render_audit_report(facts, report_dir / f"audit-{lang}", lang) for lang in ("en", "zh")]


def run_demo(
    brand_users: int,
    platform_users: int,
    shared: int,
    data_dir: Path | None,
    report_dir: Path | None = None,
    state_dir: Path | None = None,
) -> None:
    """Generate, serve, match and report; each member keeps its state in `state_dir`/<member> (default: temporary)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    clock = StepClock()
    warm_up("torch", "opacus", "cleanroom.analytics.lookalike", "cleanroom_client.report")
    with clock.step("synthetic data"):
        data = generate(SyntheticConfig(brand_users=brand_users, platform_users=platform_users, shared=shared))
    console.print(
        f"synthetic data: brand {brand_users:,} customers, platform {platform_users:,} users, "
        f"{shared:,} people on both (ground truth)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with clock.step("embedded server"):
            pki = make_dev_pki(root / "pki")
            tls = TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes())
            running = create_server(ServerConfig(data_dir=data_dir or root / "server", tls=tls))
            target = f"localhost:{running.port}"
            tokens = {
                name: running.room.principals.add(name, role)
                for name, role in (("brand", Role.MEMBER), ("platform", Role.MEMBER), ("auditor", Role.AUDITOR))
            }
        console.print(f"embedded server on {target} (TLS; tokens issued to brand, platform and auditor)")

        # Both members blind on this machine's cores: one pool of workers serves them (each job carries its
        # member's key), rather than a pool per member competing for the same cores and each paying its start-up.
        workers = ProcessPoolChunkExecutor()

        def connect(name: str) -> CleanRoomClient:
            state = (state_dir or root) / name
            return CleanRoomClient(
                target, token=tokens[name], root_certificates=pki.ca, state_dir=state, executor=workers
            )

        try:
            with clock.step("clients and policy"):
                brand, platform = connect("brand"), connect("platform")
                collaboration = brand.create_collaboration(DEMO_POLICY, collaboration_id=f"demo-{int(time.time())}")
                brand.approve_policy(collaboration.id)
                platform.approve_policy(collaboration.id)
            console.print(f"collaboration {collaboration.id}: policy approved by brand and platform")
            started = time.monotonic()
            with clock.step("match"), ThreadPoolExecutor(2) as pool:
                arguments = match_arguments(data)
                b = pool.submit(brand.match, collaboration.id, wait_timeout=300, **arguments["brand"])
                p = pool.submit(platform.match, collaboration.id, wait_timeout=300, **arguments["platform"])
                wait([b, p], return_when=FIRST_EXCEPTION)  # a failing member must not leave the other waiting
                for future in (b, p):
                    if future.done() and future.exception():
                        raise future.exception()  # type: ignore[misc]
                brand_summary, platform_summary = b.result(), p.result()
            elapsed = time.monotonic() - started
            console.print(_summary_table("the brand", brand_summary))
            console.print(_summary_table("the platform", platform_summary))
            stats, total = match_stats(running.store.of(collaboration.id).cursor(), collaboration.id)
            console.print(
                f"operator's exact count: {total:,} matched people (truth {len(data.truth):,}) "
                f"in {elapsed:.1f} s; by identifier: "
                + ", ".join(f"{s.id_type.value} {s.pairs:,}" for s in stats if s.pairs)
            )
            with clock.step("queries"):
                _queries(brand, collaboration.id)
            with clock.step("lookalike and activation"):
                _audiences(brand, platform, collaboration.id, data)
            with clock.step("audit"):
                running.room.principals.assign_auditor("auditor", collaboration.id)
                # The members' heads, as each would send its own to the auditor: the export must extend them.
                heads = [
                    (n, TreeHead.from_dict(c.audit_head(collaboration.id)))
                    for n, c in (("brand", brand), ("platform", platform))
                ]
                with connect("auditor") as auditor:
                    online = auditor.verify_audit_log(collaboration.id)
                    export = auditor.export_audit_log(root / "audit.jsonl", collaboration.id)
                    key = auditor.server_public_key()
                    log = auditor.audit_log(collaboration.id)
                from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
                from cryptography.hazmat.primitives.serialization import load_pem_public_key

                public = load_pem_public_key(key.encode())
                assert isinstance(public, Ed25519PublicKey)
                offline = verify_export(export.read_text(), public)
            console.print(
                f"auditor: {len(log)} audit entries ({', '.join(sorted(set(log['action'])))}); "
                f"server says valid={online['valid']}; offline check of the export with the public key alone: "
                f"valid={offline.valid}"
            )
            if report_dir is not None:
                with clock.step("report"):
                    from cleanroom_client.report import report_collaboration  # matplotlib: warmed up beside the match

                    page = report_collaboration(
                        brand.answers(collaboration.id),
                        collaboration.id,
                        report_dir,
                        notes=[
                            f"{brand_users:,} brand customers, {platform_users:,} platform users, {shared:,} on both",
                            f"audit log: {len(log)} entries, verified on the server and offline",
                        ],
                    )
                console.print(f"report written to {page} (and the charts as PNG beside it)")
                with clock.step("auditor report"):
                    audited = _auditor_reports(export.read_text(encoding="utf-8"), key, report_dir, heads)
                console.print(
                    f"auditor's report (verification first) in English and Chinese: {', '.join(map(str, audited))}; "
                    f"against a running server: cleanroom-client audit-report {collaboration.id} --out audit, or "
                    "offline: cleanroom-client export-audit-log ID --to log.jsonl --public-key server.pem, then "
                    "cleanroom-client audit-report ID --from log.jsonl --public-key server.pem --lang zh"
                )
            brand.close()
            platform.close()
        finally:
            workers.close()
            running.stop()
    clock.total("the demo (a brand and a platform)")
