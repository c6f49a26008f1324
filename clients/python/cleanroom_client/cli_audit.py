"""The budget and the audit log from the command line.

The budget (and `--check` against your receipts), the transparency log's heads (`audit head`, `audit compare`,
`audit acknowledge`), and the auditors' log commands.

Registered on the `cleanroom-client` app when `cleanroom_client.cli` is imported (it imports this module last).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli import CollaborationId, _client, _query, app
from .cli_output import _show, _show_rows, err, out
from .transparency import TreeHead


@app.command()
def budget(
    collaboration: CollaborationId,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Recompute your own spend from the receipts you kept, check that each is still in the audit log, "
            "and compare with what the server reports (exit 1 on a mismatch).",
        ),
    ] = False,
) -> None:
    """Epsilon total, spent and left per member.

    Example: cleanroom-client budget brand-x-2026q4 --check
    """
    if not check:
        _query(lambda c: c.budget(collaboration), "budget")
        return
    with _client() as client:
        frame = client.check_budget(collaboration)
    _show(frame, "budget against your receipts")


audit_app = typer.Typer(
    help="The transparency log: heads you remember, compared with other members' (catches a rollback or a fork).",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")


@audit_app.command("head")
def audit_head(
    collaboration: Annotated[str, typer.Argument(help="Collaboration id ('' for the server's chain, auditors).")],
    to: Annotated[
        Path | None, typer.Option(help="Also write the head as JSON here, to give the other members.")
    ] = None,
) -> None:
    """The audit log's signed tree head now, checked to extend the one you last saw.

    Example: cleanroom-client audit head brand-x-2026q4 --to brand-head.json
    """
    with _client() as client:
        head = client.audit_head(collaboration)
    if to is not None:
        to.write_text(json.dumps(head, indent=1) + "\n")
        err.print(f"head of {head['size']} entries written to {to}")
    _show_rows([head], list(head), "audit head")


@audit_app.command("compare")
def audit_compare(
    collaboration: CollaborationId,
    file: Annotated[Path, typer.Argument(help="Another member's head (cleanroom-client audit head --to FILE).")],
) -> None:
    """Check that another member was shown the same history as you (exit 1 and both heads on a fork).

    Example: cleanroom-client audit compare brand-x-2026q4 platform-head.json
    """
    other = json.loads(file.read_text())
    with _client() as client:
        result = client.compare_audit_head(collaboration, other)
    sizes = {k: v["size"] for k, v in result.items() if isinstance(v, dict)}
    out.print(
        f"consistent: your head ({sizes['mine']} entries) and theirs ({sizes['theirs']} entries) lie on one history"
    )


@audit_app.command("acknowledge")
def audit_acknowledge(collaboration: CollaborationId) -> None:
    """After looking into a history incident, let the SDK serve the collaboration again (the incident is kept).

    Example: cleanroom-client audit acknowledge brand-x-2026q4
    """
    with _client() as client:
        found = client.acknowledge_history_rewrite(collaboration)
    if found is None:
        out.print("no incident to acknowledge")
        return
    out.print(f"acknowledged: {found['reason']} (found {found['when']})")


@app.command("audit-log")
def audit_log(collaboration: Annotated[str, typer.Argument(help="Collaboration id ('' for the server).")]) -> None:
    """The audit log (auditors).

    Example: cleanroom-client audit-log brand-x-2026q4 -o csv
    """
    _query(lambda c: c.audit_log(collaboration), "audit log")


@app.command("verify-audit-log")
def verify_audit_log(collaboration: CollaborationId) -> None:
    """Ask the server to verify the whole chain.

    Example: cleanroom-client verify-audit-log brand-x-2026q4
    """
    with _client() as client:
        result = client.verify_audit_log(collaboration)
    _show_rows([result], list(result), "audit log verification")
    if not result["valid"]:
        raise typer.Exit(1)


@app.command("export-audit-log")
def export_audit_log(
    collaboration: CollaborationId,
    to: Annotated[Path, typer.Option(help="JSON Lines file.")],
    public_key: Annotated[Path | None, typer.Option(help="Also save the server's public key (PEM).")] = None,
) -> None:
    """Export the chain for offline verification (cleanroom audit verify FILE --public-key KEY).

    Example: cleanroom-client export-audit-log brand-x-2026q4 --to log.jsonl --public-key server.pem
    """
    with _client() as client:
        client.export_audit_log(to, collaboration)
        if public_key is not None:
            public_key.write_text(client.server_public_key())
    err.print(f"exported to {to}")


def _head_file(path: Path) -> TreeHead:
    """A tree head written by `cleanroom-client audit head --to FILE` (or a client's remembered head)."""
    try:
        return TreeHead.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, RecursionError) as exc:  # another member's file: JSON nested too deep, say
        err.print(f"{path}: not a tree head ({exc}); write one with cleanroom-client audit head COLLAB --to FILE")
        raise typer.Exit(2) from None


@app.command("audit-report")
def audit_report(
    collaboration: CollaborationId,
    lang: Annotated[str, typer.Option(help="en (English) or zh (简体中文).")] = "en",
    from_: Annotated[
        Path | None,
        typer.Option("--from", help="Offline: an export (export-audit-log --to FILE) instead of asking the server."),
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="Offline: the server's public key (export-audit-log --public-key FILE).")
    ] = None,
    remember: Annotated[
        Path | None, typer.Option(help="Offline: the head you remembered before (audit head --to FILE).")
    ] = None,
    head: Annotated[
        list[Path] | None,
        typer.Option(help="Another member's exported head (audit head --to FILE), to compare; repeatable."),
    ] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Offline: the policy (YAML) whose caps the budget is drawn against.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write OUT.html and the charts as OUT-<chart>.png.")] = None,
) -> None:
    """The auditor's report: verification first, the policy, budgets, every query, data, audiences, anomalies.

    Online it exports and verifies the chain itself; offline it reads an export with the server's public key.
    Exit 1 when the chain does not verify or a head contradicts it (the report is still written, saying where).

    Example: cleanroom-client audit-report brand-x-2026q4 --lang zh --from log.jsonl --public-key server.pem
    """
    from .audit_report import render_audit_report
    from .audit_sources import facts_from_export
    from .report import ReportError
    from .report_text import LANGUAGES

    if lang not in LANGUAGES:
        err.print(f"--lang {lang}: choose one of {', '.join(LANGUAGES)}", style="red", markup=False)
        raise typer.Exit(2)
    # Another member's head is named by its file, never as the auditor's own memory or the server's ("server.json"
    # from a member is shown as that file, not as "the server's current head").
    others = [(p.name if p.stem in ("remembered", "server") else p.stem, _head_file(p)) for p in head or ()]
    if from_ is not None:
        if public_key is None:
            err.print("--from needs --public-key (cleanroom-client export-audit-log --public-key FILE saves it)")
            raise typer.Exit(2)
        try:
            facts = facts_from_export(
                from_.read_text(encoding="utf-8"),
                public_key.read_text(encoding="utf-8"),
                _head_file(remember) if remember else None,
                others,
                policy.read_text(encoding="utf-8") if policy else "",
            )
        except (OSError, ValueError) as exc:
            err.print(str(exc), style="red", markup=False)
            raise typer.Exit(2) from None
        if facts.collaboration and facts.collaboration != collaboration:
            err.print(f"{from_} is an export of {facts.collaboration!r}, not of {collaboration!r}", markup=False)
            raise typer.Exit(2)
    else:
        with _client() as client:
            facts = client.audit_facts(collaboration, others)
    target = out or Path(f"audit-report-{collaboration}")
    target = target.with_suffix("") if target.suffix == ".html" else target
    try:
        page = render_audit_report(facts, target, lang)
    except ReportError as exc:
        err.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from None
    v = facts.verification
    state = (
        ("verified" if v.anchored else "signed, but no head saved before was compared: a cut tail would not show")
        if v.valid
        else f"NOT VERIFIED (breaks at entry {v.first_invalid}: {v.reason})"
    )
    err.print(f"audit report of {facts.entries} entries ({state}) written to {page}", markup=False)
    if not v.trusted:
        raise typer.Exit(1)
