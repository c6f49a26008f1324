"""`cleanroom-client policy init` and `policy merge`: each member drafts its side from its own files; the drafts merge.

Registered on the `cleanroom-client` app when `cleanroom_client.cli` is imported (it imports this module last).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli import _read, app
from .cli_output import err, out
from .cli_queries import pairs as _pairs

policy_app = typer.Typer(
    help="Draft a policy from your own files, and merge the members' drafts.", no_args_is_help=True
)
app.add_typer(policy_app, name="policy")


@policy_app.command("init")
def policy_init(
    users: Annotated[Path, typer.Option(help="Your users file (CSV or Parquet).")],
    key: Annotated[str, typer.Option(help="Column naming each user locally; never declared, never uploaded.")],
    identifier: Annotated[list[str], typer.Option(help="type=column, e.g. email=email or phone=mobile.")],
    event: Annotated[list[str] | None, typer.Option(help="table=file, e.g. conversions=orders.csv.")] = None,
    member: Annotated[str, typer.Option(help="Your principal name.")] = "brand",
    role: Annotated[
        str | None,
        typer.Option(
            help="brand (queries, receives results) or platform (receives audiences); default: from your files."
        ),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(help="Another member, as name or name=role (repeat for each); default: platform, or brand."),
    ] = None,
    order: Annotated[
        list[str] | None, typer.Option(help="A category's domain in your order: column=a,b,c (repeat per column).")
    ] = None,
    to: Annotated[Path, typer.Option(help="Where to write the draft.")] = Path("policy.yaml"),
) -> None:
    """Draft your side of the room from your files: columns, domains, bounds, event caps, roles, every query they allow.

    Each member drafts from its own files; `policy merge` then puts the drafts together (no member reads another's
    data). Your role comes from your files (stage history, exposures or test groups: a platform) unless --role.

    Example: cleanroom-client policy init --users crm.csv --key customer_id --identifier email=email
    --event conversions=orders.csv --to brand.yaml
    """
    from .policy import PolicyError, parse_policy
    from .policy_draft import DISCLOSURE_WARNING, Role, draft_policy

    try:
        identifiers = _pairs(identifier, "--identifier")
        roles = {str(r) for r in Role}

        def parse_role(text: str, what: str) -> Role:
            if text not in roles:
                raise ValueError(f"{what}: {text!r} is no role; write one of {', '.join(sorted(roles))}")
            return Role(text)

        peers: dict[str, Role | None] = {}
        for item in peer or []:
            name, _, peer_role = item.partition("=")
            peers[name] = parse_role(peer_role, f"--peer {item}") if peer_role else None
        orders = {column: values.split(",") for column, values in _pairs(order or [], "--order").items()}
        events = {name: _read(Path(path), {key}) for name, path in _pairs(event or [], "--event").items()}
        users_frame = _read(users, {key, *identifiers.values()})
        draft = draft_policy(
            member, users_frame, key, identifiers, events, role=parse_role(role, "--role") if role else None,
            peers=peers or None, orders=orders,
        )  # fmt: skip
        parse_policy(draft.yaml)
    except (ValueError, FileNotFoundError, PolicyError) as exc:
        err.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    to.write_text(draft.yaml)
    err.print(f"warning: {DISCLOSURE_WARNING}", style="yellow", markup=False, highlight=False)
    for note in draft.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    out.print(
        f"wrote {to}; merge it with the other members' drafts (cleanroom-client policy merge {to} <theirs> --to "
        "policy.yaml), then review the result and create the collaboration with it",
        markup=False,
        highlight=False,
    )


@policy_app.command("merge")
def policy_merge(
    drafts: Annotated[list[Path], typer.Argument(help="Each member's draft (from policy init), or any policy.")],
    to: Annotated[Path, typer.Option(help="Where to write the merged policy.")] = Path("policy.yaml"),
) -> None:
    """Merge the members' drafts into the whole room's policy, checked as the server will check it.

    Each member's tables come from its own draft; the identifiers are those every member holds; the queries are
    every one the merged tables support; the strictest budget and group size of the drafts win.

    Example: cleanroom-client policy merge brand.yaml platform.yaml --to policy.yaml
    """
    from .policy import PolicyError, parse_policy
    from .policy_draft import merge_drafts

    try:
        merged = merge_drafts({str(p): p.read_text(encoding="utf-8") for p in drafts})
        parse_policy(merged.yaml)
    except (ValueError, OSError, PolicyError) as exc:
        err.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    to.write_text(merged.yaml, encoding="utf-8")
    for note in merged.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    out.print(
        f"wrote {to} ({len(drafts)} drafts); review it, then: cleanroom-client create {to} --id <collaboration>",
        markup=False,
        highlight=False,
    )
