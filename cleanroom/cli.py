"""`cleanroom`: the operator's command line (serve, admin) and the demo."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Cleanroom server: private matching and DP analytics between a brand and a platform.")
admin = typer.Typer(help="Operator commands that run locally against a data directory.")
app.add_typer(admin, name="admin")
console = Console(stderr=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="Directory holding cleanroom.duckdb.")]


@app.command()
def serve(
    data_dir: DataDir,
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one.")] = 50051,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Serve the clean room until interrupted.

    Example: cleanroom serve --data-dir ./data --port 50051
    """
    from .server import ServerConfig, create_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console.print(
        "[bold red]WARNING[/]: authentication is not in place yet: callers name themselves with the "
        "x-cleanroom-principal header. Development use only, on a trusted network."
    )
    running = create_server(ServerConfig(data_dir=data_dir, address=f"{host}:{port}"))
    console.print(f"cleanroom serving on {host}:{running.port}, data in {data_dir}")
    print(running.port, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    running.stop()


@admin.command("match-stats")
def match_stats_command(
    collaboration: Annotated[str, typer.Argument(help="Collaboration id (or collaborations/{id}).")],
    data_dir: DataDir,
) -> None:
    """Print exact match counts per identifier type (operator only; members never receive exact counts).

    Example: cleanroom admin match-stats --data-dir ./data brand-x-2026q4
    """
    from .matching import match_stats
    from .storage import Database
    from .storage.database import first

    collab = collaboration.removeprefix("collaborations/")
    db = Database(data_dir)
    try:
        cur = db.cursor()
        if not first(cur.execute("SELECT 1 FROM collaborations WHERE id = ?", [collab])):
            console.print(f"[red]no collaboration {collab!r} in {data_dir}[/]")
            raise typer.Exit(1)
        stats, total = match_stats(cur, collab)
    finally:
        db.close()
    table = Table(title=f"collaborations/{collab}: exact match counts")
    table.add_column("identifier type")
    table.add_column("keys shared", justify="right")
    table.add_column("pairs decided (priority order)", justify="right")
    for s in stats:
        table.add_row(s.id_type.value, str(s.shared_keys), str(s.pairs))
    table.add_row("[bold]total matched people[/]", "", f"[bold]{total}[/]")
    Console().print(table)


@app.command()
def demo(
    brand_users: Annotated[int, typer.Option(help="Brand CRM size.")] = 20_000,
    platform_users: Annotated[int, typer.Option(help="Platform user count.")] = 40_000,
    shared: Annotated[int, typer.Option(help="People on both sides (the ground truth).")] = 6_000,
    data_dir: Annotated[Path | None, typer.Option(help="Keep the server's data here (default: a temp dir).")] = None,
) -> None:
    """Run the whole story on synthetic data with an embedded server.

    Example: cleanroom demo --brand-users 20000 --platform-users 40000 --shared 6000
    """
    from .demo import run_demo

    run_demo(brand_users, platform_users, shared, data_dir)


if __name__ == "__main__":
    app()
