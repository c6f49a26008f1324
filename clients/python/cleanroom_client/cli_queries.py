"""The command line's query commands, one per declared query type (`query_types`).

A declaration's options become the command's typer options (flag, type, default, help) and its help and example
the command's; the values typed become the SDK method's arguments (`START:END` periods, `name=value` pairs, event
conditions parsed here, with errors that name the option and the form it takes).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from .query_types import QueryDeclaration

#: The options of the whole command line that scope any query command (written before it).
Preview = Annotated[
    bool,
    typer.Option(
        help="Show every cell a query would release at typical values, with the ± bar each "
        "would carry at that epsilon and that bar as a % of the typical value, spending nothing and reading no "
        "data (e.g. cleanroom-client --preview attribution c --epsilon 0.5)."
    ),
]
Within = Annotated[
    str | None,
    typer.Option(
        help="Preview a query and print, per cell, the epsilon needed for a bar within this share of its typical "
        "value (e.g. cleanroom-client --within 15% value c --measure brand.conversions.value)."
    ),
]
TypicalGroup = Annotated[
    float | None,
    typer.Option(
        help="Before a query command, with --preview or --within: the typical people per cell the preview assumes "
        "(default 1,000)."
    ),
]


def fraction(text: str) -> float:
    """`15%` or `0.15` as 0.15; BadParameter naming --within otherwise."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise typer.BadParameter(f"--within: give a share like 15% or 0.15, got {text!r}") from None
    if not 0 < value < 10:
        raise typer.BadParameter(f"--within: a positive share like 15% or 0.15, got {text!r}")
    return value


RefreshPeriod = Annotated[
    int | None,
    typer.Option(
        help="Before a query command: read the data as of this refresh period (0: the match; default: the "
        "latest completed), e.g. cleanroom-client --refresh-period 0 overlap c."
    ),
]
WithMembers = Annotated[
    list[str] | None,
    typer.Option(
        "--with",
        help="Before a query command, with three or more members: the members (besides the hub) whose matched "
        "users are the query's people; repeat it (default: every member), e.g. cleanroom-client --with jd "
        "overlap c --by jd.stage_4a.",
    ),
]

Epsilon = Annotated[float, typer.Option(help="Privacy budget this query spends.")]

#: How a command asks: (SDK method, collaboration, its arguments, the table's title, its own --preview and --within).
Ask = Callable[[str, str, dict[str, Any], str, bool, str | None], None]


def pairs(values: list[str], what: str) -> dict[str, str]:
    """`name=value` items as a dict; BadParameter naming the option otherwise."""
    found = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{what}: write name=value, got {item!r}")
        found[key] = value
    return found


def period(text: str, what: str) -> tuple[str, str]:
    """`START:END` as a pair of dates."""
    start, colon, end = text.partition(":")
    if not colon or not start or not end:
        raise typer.BadParameter(f"{what}: give START:END, e.g. 2026-10-01:2026-10-16")
    return start, end


def event(text: str, absent: bool) -> dict[str, object]:
    """`member.table:START:END[:column=value,...]` as the SDK's event condition."""
    parts = text.split(":")
    flag = "--no-event" if absent else "--event"
    if len(parts) not in (3, 4) or not all(parts[:3]):
        raise typer.BadParameter(f"{flag}: give member.table:START:END[:column=value,...], got {text!r}")
    where = pairs(parts[3].split(","), flag) if len(parts) == 4 and parts[3] else {}
    return {"table": parts[0], "start": parts[1], "end": parts[2], "absent": absent, "where": where}


def _argument(option: Any, value: Any, so_far: dict[str, Any]) -> Any:
    if option.parse == "period":
        return period(value, option.flag)
    if option.parse == "pairs":
        return pairs(value or [], option.flag)
    if option.parse in ("events", "no_events"):
        return so_far.get(option.argument, []) + [event(e, option.parse == "no_events") for e in value or []]
    return list(value or []) if option.many else value


def query_command(q: QueryDeclaration, ask: Ask, collaboration: Any) -> Callable[..., None]:
    """The command of declared query `q`; `collaboration` is the CLI's annotated type of a collaboration id."""
    names = {o.flag: o.flag.lstrip("-").replace("-", "_") for o in q.options}

    def command(collaboration: str, epsilon: float, preview: bool, within: str | None, **given: Any) -> None:
        arguments: dict[str, Any] = {}
        for o in q.options:
            arguments[o.argument] = _argument(o, given[names[o.flag]], arguments)
        ask(q.method, collaboration, {**arguments, "epsilon": epsilon}, q.heading.format(**arguments), preview, within)

    parameters = [inspect.Parameter("collaboration", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=collaboration)]
    for o in q.options:
        kind: Any = list[o.kind] if o.many else o.kind  # type: ignore[name-defined]
        default: Any = inspect.Parameter.empty
        if not o.required:
            default = bool(o.default) if o.kind is bool else o.default
            kind = kind | None if default is None else kind
        annotation = Annotated[kind, typer.Option(o.flag, help=o.help)]
        parameters.append(
            inspect.Parameter(names[o.flag], inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        )
    parameters.append(
        inspect.Parameter("epsilon", inspect.Parameter.KEYWORD_ONLY, annotation=Epsilon, default=q.epsilon)
    )
    parameters.append(inspect.Parameter("preview", inspect.Parameter.KEYWORD_ONLY, annotation=Preview, default=False))
    parameters.append(inspect.Parameter("within", inspect.Parameter.KEYWORD_ONLY, annotation=Within, default=None))
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {}
    command.__name__ = q.command
    command.__doc__ = f"{q.what}\n\nExample: {q.example}"
    return command
