"""The demo: synthetic data, an embedded server, both members matching, and what each learns.

Both members run in this process on threads, each with its own client, key and state directory, exactly as two
separate machines would; the operator's exact counts are printed beside the truth to show the match is right.
"""

from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from cleanroom_client import CleanRoomClient, MatchSummary
from rich.console import Console
from rich.table import Table

from .matching import match_stats
from .server import ServerConfig, create_server
from .synthetic import DEMO_POLICY, SyntheticConfig, generate

console = Console()


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


def run_demo(brand_users: int, platform_users: int, shared: int, data_dir: Path | None) -> None:
    """Generate, serve, match and report."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = generate(SyntheticConfig(brand_users=brand_users, platform_users=platform_users, shared=shared))
    console.print(
        f"synthetic data: brand {brand_users:,} customers, platform {platform_users:,} users, "
        f"{shared:,} people on both (ground truth)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        running = create_server(ServerConfig(data_dir=data_dir or root / "server"))
        target = f"127.0.0.1:{running.port}"
        console.print(f"embedded server on {target}")
        try:
            brand = CleanRoomClient(target, principal="brand", state_dir=root / "brand")
            platform = CleanRoomClient(target, principal="platform", state_dir=root / "platform")
            collab = brand.create_collaboration(DEMO_POLICY, collaboration_id=f"demo-{int(time.time())}")
            brand.approve_policy(collab.id)
            platform.approve_policy(collab.id)
            console.print(f"collaboration {collab.id}: policy approved by brand and platform")
            started = time.monotonic()
            with ThreadPoolExecutor(2) as pool:
                b = pool.submit(
                    brand.match,
                    collab.id,
                    users=data.brand_users,
                    key="customer_id",
                    identifiers={"email": "email", "phone": "mobile"},
                    attributes=["tier"],
                    events={"conversions": data.brand_conversions},
                    wait_timeout=300,
                )
                p = pool.submit(
                    platform.match,
                    collab.id,
                    users=data.platform_users,
                    key="user_id",
                    identifiers={"email": "email", "phone": "phone"},
                    attributes=["age_band", "stage_4a"],
                    wait_timeout=300,
                )
                wait([b, p], return_when=FIRST_EXCEPTION)  # a failing member must not leave the other waiting
                for future in (b, p):
                    if future.done() and future.exception():
                        raise future.exception()  # type: ignore[misc]
                brand_summary, platform_summary = b.result(), p.result()
            elapsed = time.monotonic() - started
            console.print(_summary_table("the brand", brand_summary))
            console.print(_summary_table("the platform", platform_summary))
            stats, total = match_stats(running.db.cursor(), collab.id)
            console.print(
                f"operator's exact count: {total:,} matched people (truth {len(data.truth):,}) "
                f"in {elapsed:.1f} s; by identifier: "
                + ", ".join(f"{s.id_type.value} {s.pairs:,}" for s in stats if s.pairs)
            )
            brand.close()
            platform.close()
        finally:
            running.stop()
