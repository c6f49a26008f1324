"""`cleanroom-client`: every SDK action from the shell, for members (and auditors).

Connection settings come from options or CLEANROOM_TARGET, CLEANROOM_TOKEN and CLEANROOM_CA. Tables are read from
CSV, Parquet or JSON files by DuckDB's readers (types sniffed from the whole file, identifiers as text); answers
print as a table, CSV or JSON (`--output`). Errors say what went wrong and what to do, never a traceback.
"""

from __future__ import annotations

import os

# gRPC's C core logs a failed TLS handshake itself, before the one-line cause and fix this command prints; it reads
# GRPC_VERBOSITY once, when gRPC is imported below. A user who sets GRPC_VERBOSITY (to debug) keeps their choice.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import json
import sys
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .cli_output import _show, _show_rows, _table, err, out, preview_table, settings
from .cli_queries import Preview, RefreshPeriod, TypicalGroup, Within, WithMembers, fraction, query_command
from .cli_queries import pairs as _pairs
from .query_types import QUERIES

if TYPE_CHECKING:
    import pandas as pd

    from .client import CleanRoomClient
    from .matching import IdentifierCounts

# The SDK (grpc, pandas, numpy, jsonschema) is imported by the commands that use it, so `--help` and a mistyped
# option answer at once.

app = typer.Typer(
    help="Member command line of the Cleanroom data clean room. Set CLEANROOM_TARGET, CLEANROOM_TOKEN and "
    "CLEANROOM_CA (or pass --target/--token/--ca).",
    no_args_is_help=True,
)


@app.callback()
def main(
    target: Annotated[str | None, typer.Option(envvar="CLEANROOM_TARGET", help="host:port of the server.")] = None,
    token: Annotated[str | None, typer.Option(envvar="CLEANROOM_TOKEN", help="Your bearer token.")] = None,
    ca: Annotated[Path | None, typer.Option(envvar="CLEANROOM_CA", help="PEM of the server's CA.")] = None,
    insecure: Annotated[bool, typer.Option(help="Plaintext (a development server started --insecure).")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table, csv or json.")] = "table",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    preview: Preview = False,
    within: Within = None,
    typical_group: TypicalGroup = None,
    refresh_period: RefreshPeriod = None,
    with_members: WithMembers = None,
) -> None:
    """Connect with your token over TLS."""
    if output not in ("table", "csv", "json"):
        raise typer.BadParameter("--output must be table, csv or json")
    settings.target, settings.token, settings.ca = target, token, ca
    settings.insecure, settings.output, settings.progress = insecure, output, progress
    settings.within = fraction(within) if within else 0.0
    settings.preview = preview or bool(settings.within)
    settings.typical_group = typical_group or 0.0
    settings.refresh_period = refresh_period
    settings.with_members = tuple(with_members or ())


@contextmanager
def _client() -> Iterator[CleanRoomClient]:
    from .client import CleanRoomClient
    from .errors import CleanRoomError, WorkersLostError
    from .policy import PolicyError

    try:
        client = CleanRoomClient(
            settings.target,
            token=settings.token,
            root_certificates=settings.ca,
            insecure=settings.insecure,
            progress=settings.progress,
        )
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    try:
        yield client
    except CleanRoomError as exc:
        err.print(f"{exc.code}: {exc.message}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except WorkersLostError as exc:  # the workers were restarted: the next run resumes
        lost = (
            f"a blinding worker process ended abruptly ({exc.__cause__ or exc}): run the same command again to resume"
        )
        err.print(lost, style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except (PolicyError, ValueError, FileNotFoundError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    finally:
        client.close()


def _read(path: Path, text_columns: Collection[str] = ()) -> pd.DataFrame:
    from .files import read_table

    return read_table(path, text_columns)


def _query(fn: Callable[[CleanRoomClient], pd.DataFrame], title: str) -> None:
    with _client() as client:
        _show(fn(client), title)


CollaborationId = Annotated[str, typer.Argument(help="Collaboration id.")]


@app.command("list")
def list_collaborations() -> None:
    """List your collaborations.

    Example: cleanroom-client list
    """
    with _client() as client:
        rows = [
            {
                "id": c.id,
                "name": c.display_name,
                "state": c.state,
                "revision": c.policy_revision,
                "approved": ", ".join(m for m, ok in c.approvals.items() if ok),
            }
            for c in client.list_collaborations()
        ]
    _show_rows(rows, ["id", "name", "state", "revision", "approved"], "collaborations")


@app.command()
def create(
    policy: Annotated[Path, typer.Argument(help="Policy YAML file.")],
    collaboration_id: Annotated[str, typer.Option("--id", help="Id to use (default: random).")] = "",
) -> None:
    """Create a collaboration proposing a policy; every member then approves it.

    Example: cleanroom-client create policy.yaml --id brand-x-2026q4
    """
    with _client() as client:
        c = client.create_collaboration(policy, collaboration_id)
    out.print(
        f"created {c.id} (policy revision {c.policy_revision}, etag {c.policy_etag}); "
        f"now: approve {c.id} --etag {c.policy_etag}",
        markup=False,
        highlight=False,
    )


@app.command()
def propose(
    collaboration: CollaborationId,
    policy: Annotated[Path, typer.Argument(help="The new policy (YAML).")],
) -> None:
    """Propose a new policy revision: every member, you included, must review and approve it again.

    Example: cleanroom-client propose brand-x-2026q4 policy-v2.yaml
    """
    with _client() as client:
        c = client.propose_policy(collaboration, policy)
    out.print(
        f"proposed revision {c.policy_revision} of {c.id} (etag {c.policy_etag}); every member reviews it with "
        f"`cleanroom-client show {c.id}` and approves it with `cleanroom-client approve {c.id} --etag "
        f"{c.policy_etag}`",
        markup=False,
        highlight=False,
    )


@app.command()
def ping(
    wait: Annotated[float, typer.Option(help="Seconds to wait for a server that is starting.")] = 0.0,
) -> None:
    """Check the server address, its CA and your token: prints who you are connected as.

    Example: cleanroom-client ping --wait 30
    """
    with _client() as client:
        count = len(client.ping(wait))
        name, role = client.whoami()
    out.print(
        f"connected to {settings.target} as {name} ({role}): {count} collaborations visible to you",
        markup=False,
        highlight=False,
    )


@app.command()
def show(
    collaboration: CollaborationId,
    etag: Annotated[bool, typer.Option("--etag", help="Print only the etag (for scripts).")] = False,
) -> None:
    """Show a collaboration's state, its policy exactly as proposed, and the etag to approve it by.

    Example: cleanroom-client show brand-x-2026q4   (or -o json: the same as one JSON object)
    """
    with _client() as client:
        c = client.get_collaboration(collaboration)
    if etag:
        sys.stdout.write(c.policy_etag + "\n")
        return
    if settings.output == "json":
        payload = {
            "id": c.id,
            "state": c.state,
            "policy_revision": c.policy_revision,
            "policy_etag": c.policy_etag,
            "approvals": dict(c.approvals),
            "policy_yaml": c.policy_yaml,
        }
        sys.stdout.write(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
        return
    # The policy is printed as plain text: rich markup would take YAML lists such as `[a, b]` for style tags.
    sys.stdout.write(
        f"{c.id}: {c.state}, revision {c.policy_revision}, etag {c.policy_etag}\n"
        + "approvals: "
        + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in c.approvals.items())
        + "\n\n"
        + c.policy_yaml.rstrip("\n")
        + "\n\n"
        + f"to approve this revision: cleanroom-client approve {c.id} --etag {c.policy_etag}\n"
    )


@app.command()
def approve(
    collaboration: CollaborationId,
    etag: Annotated[
        str | None, typer.Option(help="The etag `cleanroom-client show` printed with the policy you reviewed.")
    ] = None,
) -> None:
    """Approve the policy revision you reviewed, named by its etag; refused if the policy changed since.

    Example: cleanroom-client show brand-x-2026q4, then cleanroom-client approve brand-x-2026q4 --etag 3f9c...
    """
    if not etag:
        err.print(
            f"approve only what you read: run `cleanroom-client show {collaboration}` and pass the etag it prints, "
            f"`cleanroom-client approve {collaboration} --etag ETAG`",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(2)
    with _client() as client:
        c = client.approve_policy(collaboration, etag)
    out.print(f"approved revision {c.policy_revision}; {c.id} is {c.state}", markup=False, highlight=False)


@app.command()
def match(
    collaboration: CollaborationId,
    users: Annotated[str, typer.Option(help="Users file (CSV or Parquet); with --ray also a directory or lake path.")],
    key: Annotated[str, typer.Option(help="Column naming each user locally; never uploaded.")],
    identifier: Annotated[list[str], typer.Option(help="type=column, e.g. email=email or phone=mobile.")],
    attribute: Annotated[
        list[str] | None, typer.Option(help="Users column to upload (declared in the policy).")
    ] = None,
    event: Annotated[list[str] | None, typer.Option(help="table=file, e.g. conversions=orders.csv.")] = None,
    prehashed: Annotated[list[str] | None, typer.Option(help="Identifier type given as SHA-256 hex.")] = None,
    time_format: Annotated[
        str | None,
        typer.Option(
            help="strptime format of the event tables' time column when it is not ISO 8601, e.g. '%d/%m/%Y %H:%M'."
        ),
    ] = None,
    region: Annotated[
        str,
        typer.Option(
            help="Region (ISO 3166, e.g. CN) of phone numbers written without a +country code: CN or phone=CN."
        ),
    ] = "US",
    ray: Annotated[
        str | None,
        typer.Option(
            help="Blind on your Ray cluster: 'auto' (the cluster this machine joined) or its address; tables "
            'are then read by Ray Data (Parquet files or directories). Needs "cleanroom-client[ray]".'
        ),
    ] = None,
) -> None:
    """Blind your identifiers locally (or on your Ray cluster), match with the peer, upload tables; resumable.

    Example: cleanroom-client match brand-x-2026q4 --users crm.csv --key customer_id --identifier email=email
    --identifier phone=mobile --attribute tier --event conversions=orders.csv

    On a Ray cluster: cleanroom-client match brand-x-2026q4 --ray auto --users s3://lake/crm/ --key customer_id
    --identifier email=email
    """
    from .identity import IdentifierQualityWarning

    engine = None
    if ray is not None:
        from .ray_engine import RayEngine

        engine = RayEngine(address=ray)
    paths = _pairs(event or [], "--event")
    identifiers = _pairs(identifier, "--identifier")
    try:
        with _client() as client, warnings.catch_warnings():
            # A column that mostly fails to normalize is said at once, before anything is sent, with its fix.
            warnings.simplefilter("always", IdentifierQualityWarning)
            warnings.showwarning = _say_warning
            client.normalizer = type(client.normalizer)(_phone_region(region))
            summary = client.match(
                collaboration,
                users=users if engine else _read(Path(users), {key, *identifiers.values()}),
                key=key,
                identifiers=identifiers,
                attributes=attribute or [],
                events={name: path if engine else _read(Path(path), {key}) for name, path in paths.items()},
                prehashed=prehashed or [],
                engine=engine,
                time_format=time_format,
            )
    finally:
        if engine is not None:
            engine.close()
    if len(summary.set_sizes) > 2:
        sizes = ", ".join(f"{m} {n:,}" for m, n in sorted(summary.set_sizes.items()))
        _show_identifiers(summary.identifiers, f"matched: set sizes {sizes}")
    else:
        _show_identifiers(summary.identifiers, f"matched: peer's set size {summary.peer_set_size:,}")


@app.command()
def refresh(
    collaboration: CollaborationId,
    users: Annotated[
        str | None, typer.Option(help="File of the new users only (CSV or Parquet), columns as at the match.")
    ] = None,
    key: Annotated[
        str, typer.Option(help="Column naming each user locally (as at the match); never uploaded.")
    ] = "key",
    identifier: Annotated[
        list[str] | None, typer.Option(help="type=column of the new users, e.g. email=email.")
    ] = None,
    attribute: Annotated[list[str] | None, typer.Option(help="Users column to upload for the new users.")] = None,
    retire: Annotated[
        str | None, typer.Option(help="File whose --key column lists the users to retire (deleted everywhere).")
    ] = None,
    event: Annotated[
        list[str] | None, typer.Option(help="table=file of new event rows, e.g. conversions=w48.csv.")
    ] = None,
    prehashed: Annotated[list[str] | None, typer.Option(help="Identifier type given as SHA-256 hex.")] = None,
    time_format: Annotated[
        str | None, typer.Option(help="strptime format of the event tables' time column when it is not ISO 8601.")
    ] = None,
    region: Annotated[
        str, typer.Option(help="Region of phone numbers without a +country code: CN or phone=CN.")
    ] = "US",
) -> None:
    """Refresh a matched collaboration: add new users, retire users, append events; resumable (run it again).

    Only the new users' blinded points travel. The policy's `refresh` section must list each table that changes.

    Example: cleanroom-client refresh brand-x-2026q4 --users new_crm.csv --key customer_id --identifier email=email
    --attribute tier --retire unsubscribed.csv --event conversions=orders_w48.csv
    """
    from .identity import IdentifierQualityWarning

    identifiers = _pairs(identifier or [], "--identifier")
    paths = _pairs(event or [], "--event")
    with _client() as client, warnings.catch_warnings():
        warnings.simplefilter("always", IdentifierQualityWarning)
        warnings.showwarning = _say_warning
        client.normalizer = type(client.normalizer)(_phone_region(region))
        retired = _read(Path(retire), {key}) if retire else None
        if retired is not None and key not in retired.columns:
            raise typer.BadParameter(f"--retire {retire}: it has no {key!r} column (columns: {list(retired.columns)})")
        summary = client.refresh(
            collaboration,
            users=_read(Path(users), {key, *identifiers.values()}) if users else None,
            key=key,
            identifiers=identifiers or None,
            attributes=attribute or [],
            retire=list(retired[key]) if retired is not None else [],
            events={name: _read(Path(path), {key}) for name, path in paths.items()},
            prehashed=prehashed or [],
            time_format=time_format,
        )
    _show_identifiers(
        summary.identifiers,
        f"refresh period {summary.period}: {summary.new_rows:,} added, {summary.retired:,} retired; your set "
        f"{summary.own_set_size:,}, the peer's {summary.peer_set_size:,}",
        {k: getattr(summary, k) for k in ("period", "new_rows", "retired", "own_set_size", "peer_set_size")},
    )


@app.command()
def retire(
    collaboration: CollaborationId,
    users: Annotated[str, typer.Option(help="File whose --key column lists the users to retire (CSV or Parquet).")],
    key: Annotated[str, typer.Option(help="Column naming each user locally (as at the match).")] = "key",
) -> None:
    """Retire users now, without waiting for a refresh: they are deleted everywhere at once.

    Example: cleanroom-client retire brand-x-2026q4 --users unsubscribed.csv --key customer_id
    """
    listed = _read(Path(users), {key})
    if key not in listed.columns:
        raise typer.BadParameter(f"--users {users}: it has no {key!r} column (columns: {list(listed.columns)})")
    with _client() as client:
        period = client.retire(collaboration, list(listed[key]))
    out.print(f"{len(listed):,} users retired in period {period} of {collaboration}")


@app.command("cancel-refresh")
def cancel_refresh(collaboration: CollaborationId) -> None:
    """Cancel the open refresh period (for one the peer opened and left): everything sent in it is discarded."""
    with _client() as client:
        period = client.cancel_refresh(collaboration)
    out.print(f"refresh period {period} of {collaboration} cancelled; the next refresh starts afresh")


def _show_identifiers(
    identifiers: Mapping[str, IdentifierCounts], title: str, attrs: Mapping[str, Any] | None = None
) -> None:
    """One row per identifier type (values blinded and sent, invalid, empty), then why values were invalid.

    As a table, each reason is a line below it (`email: 153 invalid: <reason> (e.g. 张… (11 characters))`); as JSON
    or CSV, a `rejected` column lists {reason, count, example}. Examples are redacted: first character and length.
    """
    import dataclasses

    rows = [
        {
            "identifier": t,
            "blinded": c.sent,
            "invalid": c.invalid,
            "empty": c.missing,
            "rejected": [dataclasses.asdict(r) for r in c.rejected],
        }
        for t, c in identifiers.items()
    ]
    frame = _table(rows)
    frame.attrs.update(attrs or {})
    if settings.output == "csv":  # one cell per row: the list as JSON
        frame["rejected"] = frame["rejected"].map(lambda entries: json.dumps(entries, ensure_ascii=False))
    if settings.output != "table":
        _show(frame, title)
        return
    _show(frame.drop(columns=["rejected"]), title)
    for t, c in identifiers.items():
        for r in c.rejected:
            out.print(
                f"{t}: {r.count:,} invalid: {r.reason} (e.g. {r.example})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )


def _phone_region(text: str) -> str:
    """`--region CN` or `--region phone=CN` (the phone column is the only one read in a region)."""
    column, sep, region = text.partition("=")
    if not sep:
        return text
    if column != "phone":
        raise typer.BadParameter(f"--region {text}: only phone numbers have a region; write --region phone={region}")
    return region


def _say_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    err.print(f"warning: {message}", style="yellow", markup=False, highlight=False)


def _ask(
    method: str, collaboration: str, arguments: dict[str, Any], heading: str, preview: bool, within: str | None
) -> None:
    """Ask a declared query through the SDK method `method`, with the global options that scope every query.

    `--preview` and `--within` may be written before the command (global) or after it (the command's own).
    """
    from .asking import PreviewOptions

    s = settings
    share = fraction(within) if within else s.within
    previewing = s.preview or preview or bool(share)
    options: Any = PreviewOptions(s.typical_group, {}, share) if previewing else False
    scope = {"preview": options, "refresh_period": s.refresh_period, "with_members": s.with_members}
    if not previewing:
        _query(lambda c: getattr(c, method)(collaboration, **arguments, **scope), heading)
        return
    with _client() as client:
        frame = getattr(client, method)(collaboration, **arguments, **scope)
    if settings.output != "table":
        _show(frame, f"preview of {heading}")
        return
    out.print(preview_table(frame, f"preview of {heading} at epsilon {arguments['epsilon']:g}", share))
    from .query_types import QUERIES

    notes = next((dict(q.vector_notes) for q in QUERIES if q.method == method), {})
    typical = "; ".join(
        f"{k}{f' ({notes[k]})' if k in notes else ''} {v:,.6g}" for k, v in frame.attrs.get("typical", {}).items()
    )
    out.print(f"  typical value per cell assumed: {typical} (--typical-group sets the people per cell)", markup=False)
    out.print(f"  nothing spent; epsilon left {frame.attrs.get('epsilon_remaining', 0):g}", markup=False)


# One command per declared query (`cleanroom_client.query_types`): names, options and help come from there.
for _declared in QUERIES:
    app.command(_declared.command)(query_command(_declared, _ask, CollaborationId))


@app.command()
def audiences(collaboration: CollaborationId) -> None:
    """The audiences released to you (platform).

    Example: cleanroom-client audiences brand-x-2026q4
    """
    _query(lambda c: c.audiences(collaboration), "audiences")


@app.command("fetch-audience")
def fetch_audience(
    audience: Annotated[str, typer.Argument(help="collaborations/c/audiences/a")],
    to: Annotated[Path, typer.Option(help="Write your user keys here (CSV).")],
) -> None:
    """Fetch an audience and map it to your own user keys, locally.

    Example: cleanroom-client fetch-audience collaborations/brand-x/audiences/a-12ab --to audience.csv
    """
    with _client() as client:
        keys = client.fetch_audience(audience)
    keys.to_frame().to_csv(to, index=False)
    err.print(f"{len(keys):,} users written to {to}")


@app.command()
def report(
    collaboration: CollaborationId,
    to: Annotated[Path, typer.Option(help="Directory for index.html and the charts as PNG.")] = Path(
        "cleanroom-report"
    ),
    lang: Annotated[str, typer.Option(help="en (English) or zh (简体中文).")] = "en",
) -> None:
    """Draw the answers you received in a collaboration as an HTML report: no ε is spent, the server is not asked.

    Example: cleanroom-client report brand-x-2026q4 --lang zh --to report-zh
    """
    from .answers import load as load_answers
    from .client import collaboration_dir, resolve_state_dir

    try:
        from .report import ReportError, report_collaboration
    except ImportError:
        err.print("the report draws with matplotlib: pip install 'cleanroom-client[report]'", style="red")
        raise typer.Exit(2) from None
    if not (settings.target or os.environ.get("CLEANROOM_STATE_DIR")):
        err.print(
            "which member's answers? set CLEANROOM_TARGET and CLEANROOM_TOKEN, or CLEANROOM_STATE_DIR", style="red"
        )
        raise typer.Exit(2)
    state = resolve_state_dir(None, settings.target or "", settings.token, None)
    directory = collaboration_dir(state, collaboration)
    answers = load_answers(directory)
    if not answers:
        err.print(
            f"no answers kept for {collaboration} in {directory}: ask a query first (the report draws the answers "
            "this member received, from the state directory they were kept in; see CLEANROOM_STATE_DIR)",
            style="yellow",
        )
    try:
        page = report_collaboration(answers, collaboration, to, lang)
    except (ReportError, ValueError) as exc:
        err.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from None
    err.print(f"report of {len(answers)} answers written to {page}", markup=False)


#: Options of the whole command line that a user may also write after the command (`budget c -o csv`).
_LATE_GLOBALS = ("-o", "--output")
#: Options of the whole command line that take a value.
_VALUED_GLOBALS = ("--target", "--token", "--ca", "-o", "--output")


def hoist_output(args: list[str]) -> list[str]:
    """Move `-o X` / `--output X` / `--output=X` written after the command to before it, where typer reads them."""
    command = 0
    while command < len(args) and args[command].startswith("-"):
        command += 2 if args[command] in _VALUED_GLOBALS else 1
    head, tail = args[:command], args[command:]
    moved: list[str] = []
    kept: list[str] = []
    i = 0
    while i < len(tail):
        if tail[i] in _LATE_GLOBALS and i + 1 < len(tail):
            moved += tail[i : i + 2]
            i += 2
            continue
        (moved if tail[i].startswith("--output=") else kept).append(tail[i])
        i += 1
    return head + moved + kept


def run() -> None:
    """The `cleanroom-client` entry point."""
    app(args=hoist_output(sys.argv[1:]), prog_name="cleanroom-client")


if __name__ == "__main__":
    run()


# The command groups kept in modules of their own register on `app` here, once everything above is defined.
from . import cli_audit, cli_policy  # noqa: E402

__all__ = ["app", "cli_audit", "cli_policy", "hoist_output", "run"]
