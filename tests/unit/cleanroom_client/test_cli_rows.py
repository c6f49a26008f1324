"""The command line's plain rows (`list`, `audit head`, `verify-audit-log`) print exactly as their frame would.

Those commands show a few plain values without building a DataFrame, so that they start without pandas
(tests/system/sdk/test_cli.py::test_commands_that_hold_no_table_answer_without_loading_pandas); what a person or a
script reads from them must not change: the same table, CSV and JSON as the frame the command used to build.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from cleanroom_client import cli_output as cli

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from(',"\n'), max_size=12)
#: One type per column, as a frame's columns hold: text (or missing), integers, booleans.
_COLUMN = st.sampled_from(
    [
        st.one_of(st.none(), _TEXT),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.booleans(),
    ]
)


@st.composite
def _rows(draw: st.DrawFn) -> tuple[list[dict[str, object]], list[str]]:
    names = draw(st.lists(st.text("abcdefgh_", min_size=1, max_size=6), min_size=1, max_size=4, unique=True))
    kinds = [draw(_COLUMN) for _ in names]
    count = draw(st.integers(min_value=0, max_value=4))
    return [{n: draw(k) for n, k in zip(names, kinds, strict=True)} for _ in range(count)], names


def _printed(show: object, output: str) -> str:
    """What `show()` writes with `-o output`, the table drawn on a console of fixed width."""
    buffer = io.StringIO()
    cli.settings.output, console = output, cli.out
    cli.out = Console(file=buffer, width=200, color_system=None)
    try:
        with redirect_stdout(buffer):
            show()  # type: ignore[operator]
    finally:
        cli.settings.output, cli.out = "table", console
    return buffer.getvalue()


@settings(max_examples=60, deadline=None)
@given(_rows(), st.sampled_from(["table", "csv", "json"]))
def test_plain_rows_print_as_their_frame_does(table, output):
    rows, columns = table
    as_frame = _printed(lambda: cli._show(cli._table(rows, columns), "t"), output)
    assert _printed(lambda: cli._show_rows(rows, columns, "t"), output) == as_frame


def test_a_verification_prints_as_its_frame_did():
    # verify-audit-log's answer as the SDK gives it: a nested head among booleans, integers and text.
    result = {
        "valid": True,
        "entries_checked": 12,
        "first_invalid_sequence": 0,
        "reason": "",
        "head": {"collaboration": "c", "size": 12, "root": "ab" * 32, "time": "2026-12-06T11:00:00Z"},
    }
    for output in ("table", "csv", "json"):
        as_frame = _printed(lambda: cli._show(cli._table([result]), "audit log verification"), output)
        assert _printed(lambda: cli._show_rows([result], list(result), "audit log verification"), output) == as_frame
