"""`cleanroom`: the operator's command line (serve, admin, audit) and the demo."""

from __future__ import annotations

import os

# gRPC's C core reads GRPC_VERBOSITY once, when imported below: errors only (its INFO lines, such as a closed admin
# socket's GOAWAY, are not the operator's business). Set GRPC_VERBOSITY to see more.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import json
import logging
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from cleanroom_client.protocol import admin_pb2, admin_pb2_grpc, collaboration_name

T = TypeVar("T")

app = typer.Typer(
    help="Cleanroom server: private matching and DP analytics between a brand and a platform.",
    no_args_is_help=True,
)
admin = typer.Typer(help="Operator commands, local to the data directory (through the server's socket if it runs).")
audit = typer.Typer(help="Verify audit logs.")
conformance = typer.Typer(
    help="Check a partner's own implementation of the matching protocol (PROTOCOL.md section 7).",
    no_args_is_help=True,
)
app.add_typer(admin, name="admin")
app.add_typer(audit, name="audit")
app.add_typer(conformance, name="conformance")
console = Console(stderr=True)
out = Console()

DataDir = Annotated[
    Path, typer.Option("--data-dir", help="The server's data directory (catalog.duckdb, collaborations/).")
]


@app.command()
def serve(
    data_dir: DataDir,
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one (printed on stdout).")] = 50051,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate chain of the server.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of the server.")] = None,
    client_ca: Annotated[Path | None, typer.Option(help="CA for client certificates: turns on mutual TLS.")] = None,
    insecure: Annotated[bool, typer.Option(help="Plaintext, for local development only.")] = False,
    idle_timeout: Annotated[float, typer.Option(help="Seconds a stream may wait on its client.")] = 120.0,
    memory_limit: Annotated[
        str | None, typer.Option(help="DuckDB's memory cap, e.g. 3GB (default: 80% of RAM); joins spill past it.")
    ] = None,
    spill_dir: Annotated[
        Path | None,
        typer.Option(help="Where DuckDB spills past --memory-limit, a directory per file (default: beside each)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="DuckDB's threads per collaboration file (default: 2); more speeds up big joins."),
    ] = None,
    max_open_files: Annotated[
        int | None,
        typer.Option(min=1, help="Collaboration files open at once (default: 64); idle ones beyond are closed."),
    ] = None,
) -> None:
    """Serve the clean room until SIGTERM or Ctrl-C (which stop it within 10 s, whatever runs); TLS unless --insecure.

    Example: cleanroom serve --data-dir ./data --port 50051 --tls-cert server.pem --tls-key server.key
    --memory-limit 3GB --spill-dir /fast-disk/cleanroom-spill
    """
    from .server import ServerConfig, create_server
    from .server.app import STOP_DEADLINE, TlsConfig
    from .storage import LegacyLayoutError, StorageLimits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls = None
    if insecure:
        if tls_cert or tls_key or client_ca:
            console.print("[red]--insecure cannot be combined with TLS options[/]")
            raise typer.Exit(2)
        console.print(
            "[bold red]WARNING: --insecure: no TLS. Tokens and data cross the network in plaintext. "
            "Local development only.[/]"
        )
    elif tls_cert is None or tls_key is None:
        console.print("[red]TLS is required: pass --tls-cert and --tls-key (or --insecure for local development)[/]")
        raise typer.Exit(2)
    else:
        try:
            tls = TlsConfig.from_files(tls_cert, tls_key, client_ca)
        except PermissionError as exc:
            console.print(f"[red]refusing the TLS key: {exc}[/]")
            raise typer.Exit(2) from None
    config = ServerConfig(
        data_dir=data_dir,
        address=f"{host}:{port}",
        tls=tls,
        insecure=insecure,
        stream_idle_timeout=idle_timeout,
        storage=StorageLimits(
            memory_limit=memory_limit, temp_directory=spill_dir, threads=threads, max_open=max_open_files
        ),
    )
    try:
        running = create_server(config)
    except LegacyLayoutError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    mode = "plaintext" if insecure else ("mutual TLS" if client_ca else "TLS")
    console.print(f"cleanroom serving on {host}:{running.port} ({mode}), data in {data_dir}")
    print(running.port, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    # Whatever is running, the process is gone within STOP_DEADLINE: statements are interrupted, and should a
    # handler still hold a file after that, the watchdog ends the process (committed work is in the WAL).
    watchdog = threading.Timer(STOP_DEADLINE, _exit_now)
    watchdog.daemon = True
    watchdog.start()
    if not running.stop():
        _exit_now()


def _exit_now() -> None:
    logging.getLogger(__name__).warning("stopping: a request still held the database; exiting without waiting")
    logging.shutdown()
    os._exit(1)


def _operate(data_dir: Path, call: Callable[[admin_pb2_grpc.AdminServiceStub], T]) -> T:
    """Run an operator command through AdminService: the running server's socket, or one served for this command.

    With no server running, the data directory is opened here and the same servicer is served on a private socket
    for the command's duration: one path, one set of checks and errors, whichever way the operator works.
    """
    from .server.admin_socket import ADMIN_SOCKET

    socket = data_dir / ADMIN_SOCKET
    if socket.exists():
        try:
            return _call_admin(socket, call)
        except _StaleSocketError:
            pass  # a server that died left its socket: open the data directory instead
    from .room import Room
    from .server.admin_socket import serve_admin

    try:
        room = Room.open(data_dir)
    except Exception as exc:  # noqa: BLE001 - the lock error of a running server is DuckDB's IOException
        console.print(f"[red]cannot open {data_dir}: {exc}[/]")
        raise typer.Exit(1) from None
    with tempfile.TemporaryDirectory(prefix="cleanroom-admin-") as private:
        server = serve_admin(room, Path(private) / "admin.sock")
        try:
            return _call_admin(Path(private) / "admin.sock", call)
        finally:
            server.stop(None)
            room.close()


class _StaleSocketError(Exception):
    """Nothing answers on the admin socket."""


def _call_admin(socket: Path, call: Callable[[admin_pb2_grpc.AdminServiceStub], T]) -> T:
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        try:
            return call(admin_pb2_grpc.AdminServiceStub(channel))
        except grpc.RpcError as err:
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                raise _StaleSocketError from None
            console.print(f"[red]{err.details()}[/]")
            raise typer.Exit(1) from None


@admin.command("add-principal")
def add_principal(
    name: Annotated[str, typer.Argument(help="Principal name, e.g. brand.")],
    data_dir: DataDir,
    role: Annotated[str, typer.Option(help="member or auditor.")] = "member",
) -> None:
    """Register a principal and print its bearer token (shown only this once).

    Example: cleanroom admin add-principal brand --role member --data-dir ./data
    """
    if role not in ("member", "auditor"):
        console.print("[red]--role must be member or auditor[/]")
        raise typer.Exit(2)
    wire = admin_pb2.ROLE_MEMBER if role == "member" else admin_pb2.ROLE_AUDITOR
    token = _operate(
        data_dir,
        lambda s: s.AddPrincipal(admin_pb2.AddPrincipalRequest(name=name, role=wire)).token,
    )
    console.print(f"principal {name} ({role}) added; its token follows. It is not stored and is shown only once.")
    print(token)


@admin.command("revoke-principal")
def revoke_principal(name: Annotated[str, typer.Argument()], data_dir: DataDir) -> None:
    """Revoke a principal: its token and certificate stop working at once.

    Example: cleanroom admin revoke-principal brand --data-dir ./data
    """
    _operate(
        data_dir,
        lambda s: s.RevokePrincipal(admin_pb2.RevokePrincipalRequest(name=name)),
    )
    console.print(f"principal {name} revoked")


@admin.command("rotate-token")
def rotate_token(name: Annotated[str, typer.Argument()], data_dir: DataDir) -> None:
    """Issue a new token for a principal; the old one stops working.

    Example: cleanroom admin rotate-token brand --data-dir ./data
    """
    token = _operate(
        data_dir,
        lambda s: s.RotateToken(admin_pb2.RotateTokenRequest(name=name)).token,
    )
    print(token)


@admin.command("assign-auditor")
def assign_auditor(
    auditor: Annotated[str, typer.Argument()],
    collaboration: Annotated[str, typer.Argument(help="Collaboration id.")],
    data_dir: DataDir,
) -> None:
    """Let an auditor read a collaboration's policy, budget and audit log.

    Example: cleanroom admin assign-auditor auditor brand-x-2026q4 --data-dir ./data
    """
    name = collaboration_name(collaboration)
    _operate(data_dir, lambda s: s.AssignAuditor(admin_pb2.AssignAuditorRequest(auditor=auditor, collaboration=name)))
    console.print(f"{auditor} now audits {name}")


@admin.command("match-stats")
def match_stats_command(
    collaboration: Annotated[str, typer.Argument(help="Collaboration id (or collaborations/{id}).")],
    data_dir: DataDir,
) -> None:
    """Print exact match counts per identifier type (operator only; members never receive exact counts).

    Example: cleanroom admin match-stats --data-dir ./data brand-x-2026q4
    """
    name = collaboration_name(collaboration)

    def remote(stub: admin_pb2_grpc.AdminServiceStub) -> tuple[list[tuple[str, int, int]], int]:
        r = stub.GetMatchStats(admin_pb2.GetMatchStatsRequest(collaboration=name))
        return [(s.identifier_type, s.shared_keys, s.pairs) for s in r.identifier_types], r.matched_people

    rows, total = _operate(data_dir, remote)
    table = Table(title=f"{name}: exact match counts")
    table.add_column("identifier type")
    table.add_column("keys shared", justify="right")
    table.add_column("pairs decided (priority order)", justify="right")
    for id_type, shared, pairs in rows:
        table.add_row(id_type, str(shared), str(pairs))
    table.add_row("[bold]total matched people[/]", "", f"[bold]{total}[/]")
    out.print(table)


@admin.command("make-dev-certs")
def make_dev_certs(
    directory: Annotated[Path, typer.Argument(help="Where to write ca.pem, server.pem/key and client certs.")],
    client: Annotated[list[str] | None, typer.Option(help="A client certificate for this principal name.")] = None,
    host: Annotated[list[str] | None, typer.Option(help="Another host name for the server certificate.")] = None,
) -> None:
    """Make a throwaway CA and certificates for local development (never for production).

    Example: cleanroom admin make-dev-certs ./certs --client brand --client platform
    """
    from .devtools.devpki import make_dev_pki

    pki = make_dev_pki(directory, tuple(client or ()), tuple(host or ()))
    console.print(f"wrote {pki.ca}, {pki.server_cert}, {pki.server_key} and {len(client or [])} client certificates")


@audit.command("verify")
def audit_verify(
    file: Annotated[Path, typer.Argument(help="A JSON Lines export (ExportAuditLog / export_audit_log).")],
    public_key: Annotated[Path, typer.Option(help="The server's Ed25519 public key, PEM.")],
    remember: Annotated[
        Path | None,
        typer.Option(
            help="A file where this auditor keeps the chain's last verified tree head: the export must extend it "
            "(a rollback or rewrite fails), and a valid export's head replaces it."
        ),
    ] = None,
) -> None:
    """Verify an exported audit chain offline with the server's public key alone; names the first broken entry.

    Example: cleanroom audit verify brand-x.jsonl --public-key server-audit.pem --remember brand-x.head.json
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from cleanroom_client.transparency import TreeHead

    from .audit.chain import SignedHead, verify_export

    key = load_pem_public_key(public_key.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        console.print("[red]the public key is not an Ed25519 key[/]")
        raise typer.Exit(2)
    remembered = None
    if remember is not None and remember.exists():
        try:
            remembered = TreeHead.from_dict(json.loads(remember.read_text()))
        except ValueError as exc:
            console.print(f"[red]{remember} is not a remembered tree head: {exc}[/]")
            raise typer.Exit(2) from None
    text = file.read_text()
    result = verify_export(text, key, remembered)
    if result.valid:
        saw = f"; it extends the {remembered.size} entries remembered in {remember}" if remembered else ""
        out.print(
            f"[green]VALID[/]: {result.entries_checked} entries, chain intact, every signature the server's, "
            f"ending at the server's signed head{saw}"
        )
        last = SignedHead.from_json(text.rstrip().splitlines()[-1]) if text.strip() else None
        if remember is not None and last is not None and last.tree is not None:
            remember.write_text(json.dumps(last.tree.to_dict(), indent=1) + "\n")
        return
    out.print(f"[red]INVALID[/]: {result.reason} (after {result.entries_checked} good entries)")
    raise typer.Exit(1)


@app.command()
def demo(
    brand_users: Annotated[int, typer.Option(help="Brand CRM size.")] = 20_000,
    platform_users: Annotated[int, typer.Option(help="Platform user count.")] = 40_000,
    shared: Annotated[int, typer.Option(help="People on both sides (the ground truth).")] = 6_000,
    data_dir: Annotated[Path | None, typer.Option(help="Keep the server's data here (default: a temp dir).")] = None,
    report_dir: Annotated[Path, typer.Option(help="Where to write the HTML report and its charts.")] = Path(
        "cleanroom-report"
    ),
    platforms: Annotated[
        int, typer.Option(help="1: a brand and a platform; 2: a brand with a commerce and a social platform.")
    ] = 1,
) -> None:
    """Run the whole story on synthetic data with an embedded server (TLS and tokens on), and write a report.

    With --platforms 2, three members: the brand, jd and tencent, matched through a chain of blindings, with the
    Venn diagram, queries across both platforms and an activation list to the member the policy names.

    Example: cleanroom demo --brand-users 20000 --platform-users 40000 --shared 6000
    """
    if platforms == 2:
        from .devtools.demo_platforms import run_platforms_demo

        run_platforms_demo(brand_users, data_dir, report_dir=report_dir)
        return
    if platforms != 1:
        raise typer.BadParameter("1 (brand and platform) or 2 (brand, jd and tencent)", param_hint="--platforms")
    from .devtools.demo import run_demo

    run_demo(brand_users, platform_users, shared, data_dir, report_dir)


@app.command("demo-data")
def demo_data(
    directory: Annotated[Path, typer.Argument(help="Where to write the practice files.")],
    brand_users: Annotated[int, typer.Option(help="Brand CRM size.")] = 20_000,
    platform_users: Annotated[int | None, typer.Option(help="Platform user count (default 40000).")] = None,
    shared: Annotated[int | None, typer.Option(help="People on both sides (default 6000).")] = None,
    refresh_users: Annotated[
        int, typer.Option(help="Brand customers held back into crm_new.csv (and their orders) for a refresh.")
    ] = 0,
    platforms: Annotated[
        int, typer.Option(help="2: a brand and two platforms (jd, tencent), each member's files, no policy.")
    ] = 1,
) -> None:
    """Write practice files: a brand's CRM and orders, a platform's users, 4A history, exposures, a policy.

    Example: cleanroom demo-data trial --brand-users 3000 --platform-users 5000 --shared 1500 --refresh-users 150

    With --platforms 2: crm.csv and orders.csv of the brand, and each platform's users and exposures; every member
    then drafts its side (cleanroom-client policy init) and the drafts merge (policy merge).
    """
    try:
        if platforms == 2:
            from .devtools.synthetic_platforms import write_sample_files as write_platforms

            given = [n for n, v in (("--platform-users", platform_users), ("--shared", shared)) if v is not None]
            if given or refresh_users:
                raise ValueError(
                    f"{', '.join(given) or '--refresh-users'}: for the two-member files only; with --platforms 2 "
                    "the brand's size (--brand-users) sets the others (about half its customers on each platform)"
                )
            written = write_platforms(directory, brand_users)
        elif platforms == 1:
            from .devtools.synthetic import SyntheticConfig, write_sample_files

            config = SyntheticConfig(
                brand_users=brand_users,
                platform_users=40_000 if platform_users is None else platform_users,
                shared=6_000 if shared is None else shared,
            )
            written = write_sample_files(directory, config, refresh_users)
        else:
            raise ValueError(f"--platforms {platforms}: 1 (a brand and a platform) or 2 (and a second platform)")
    except ValueError as exc:
        console.print(f"[red]{exc}[/]", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"wrote {', '.join(p.name for p in written)} in {directory}")


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 70 else text[:67] + "..."


@conformance.command("check")
def conformance_check(
    file: Annotated[Path, typer.Argument(help="Your implementation's outputs for the vector inputs (JSON).")],
) -> None:
    """Compare your outputs with the published vectors: pass or fail for every field of every case.

    Example: cleanroom conformance check my-outputs.json   (the format: PROTOCOL.md section 7)
    """
    from .conformance import ConformanceInputError, check

    try:
        partner = json.loads(file.read_text(encoding="utf-8"))
        report = check(partner)
    except OSError as exc:
        console.print(f"[red]cannot read {file}: {exc.strerror or exc}[/]")
        raise typer.Exit(2) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        console.print(f"[red]{file} is not JSON: {exc}[/]")
        raise typer.Exit(2) from None
    except ConformanceInputError as exc:
        console.print(f"[red]{file}: {exc} (see PROTOCOL.md section 7)[/]")
        raise typer.Exit(2) from None
    table = Table(title="conformance by field")
    for column in ("section", "field", "passed", "failed", ""):
        table.add_column(column)
    for (section, name), (ok, bad) in report.by_field().items():
        table.add_row(section, name, str(ok), str(bad), "[green]PASS[/]" if not bad else "[red]FAIL[/]")
    out.print(table)
    for r in report.failures():
        case = ", ".join(_short(v) for v in r.case)
        got = _short(r.got) if r.present else "(missing)"
        out.print(
            f"FAIL {r.section} [{case}] {r.field}: expected {_short(r.expected)}, got {got}",
            markup=False,
            soft_wrap=True,
        )
    if report.unknown:
        console.print(f"[yellow]ignored unknown sections: {', '.join(report.unknown)}[/]")
    failed = len(report.failures())
    out.print(f"{len(report.results) - failed} of {len(report.results)} fields pass", markup=False)
    raise typer.Exit(0 if report.passed else 1)


@conformance.command("expected")
def conformance_expected() -> None:
    """Print the reference implementation's outputs for the vector inputs: the file `check` passes."""
    from .conformance import reference_outputs

    print(json.dumps(reference_outputs(), indent=1))


@conformance.command("run")
def conformance_run(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Directory for the server, keys and your files.")],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one.")] = 0,
    rows: Annotated[int, typer.Option(help="Users on each side (10 to 10,000).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the generated users.")] = 15,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for your client to finish the match.")] = 3600.0,
    approve: Annotated[bool, typer.Option(help="Approve the policy for your member too.")] = True,
    self_test: Annotated[bool, typer.Option(help="Play your side with the Python SDK (a check of the kit).")] = False,
) -> None:
    """Serve a collaboration with a Python reference member, wait for your client's match, check the exact overlap.

    Example: cleanroom conformance run --data-dir ./conformance   (then run your client with the files it names)
    """
    from .conformance import PARTNER, run_reference_partner, start_session

    try:
        session = start_session(data_dir, host, port, rows, seed, approve)
    except (ValueError, OSError) as exc:
        console.print(f"[red]cannot start: {exc}[/]")
        raise typer.Exit(2) from None
    try:
        files = session.partner_files
        console.print(
            f"server on {session.target} (TLS, CA {files['ca.pem']}); you are member `{PARTNER}` of "
            f"{session.collaboration}\n"
            f"  token: {files['token']}\n  your users: {files['users.jsonl']} (key column `key`, phone region US)\n"
            f"  everything in one file: {files['session.json']}"
        )
        exp = session.expected
        console.print(
            f"expected: own_set_size {exp.own_set_size}, peer_set_size {exp.peer_set_size}, "
            f"pairs {exp.pairs} (total {exp.total_pairs})"
        )
        if self_test:
            run_reference_partner(session)
        else:
            console.print("waiting for your client to match (Ctrl-C to stop) ...")
        result = session.wait(timeout)
    except KeyboardInterrupt:
        session.stop()
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - any failure of the session ends it with its message
        session.stop()
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    session.stop()
    if result is None:
        console.print(f"[red]your client did not finish the match within {timeout:g} s[/]")
        raise typer.Exit(1)
    table = Table(title="conformance run")
    for column in ("item", "expected", "got", ""):
        table.add_column(column)
    rows_ = [
        ("your set size", exp.own_set_size, result.own_set_size),
        ("peer set size", exp.peer_set_size, result.peer_set_size),
        *[(f"pairs by {t}", n, result.pairs.get(t, 0)) for t, n in exp.pairs.items()],
    ]
    for item, want, got in rows_:
        table.add_row(item, str(want), str(got), "[green]PASS[/]" if want == got else "[red]FAIL[/]")
    ok = result.wrong_pair is None
    table.add_row(
        "segment of every pair",
        "your user's",
        "as expected" if ok else "wrong",
        "[green]PASS[/]" if ok else "[red]FAIL[/]",
    )
    out.print(table)
    if not ok:
        out.print(f"first wrong pair: {result.wrong_pair}", markup=False)
    raise typer.Exit(0 if result.passed else 1)


if __name__ == "__main__":
    app()
