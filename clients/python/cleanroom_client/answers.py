"""The answers a member received, kept on its own machine: what `cleanroom-client report` draws.

Every released answer (never a preview) is appended as one JSON line to `answers.jsonl` in the member's state
directory for the collaboration: the query, its request, the `QueryResult` and when it arrived. These are
differentially private outputs the member already holds, so drawing them again is post-processing: it spends no ε
and asks the server nothing. The file never holds a row of anyone's data.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from google.protobuf.message import Message

from .protocol import analytics_pb2 as qpb
from .protocol import result_fields

if TYPE_CHECKING:
    import pandas as pd

#: The file, inside a collaboration's state directory.
ANSWERS_FILE = "answers.jsonl"


@dataclass(frozen=True)
class Answer:
    """One answer as received: which query, asked how, the cells, and the budget after it."""

    query: str
    request: dict[str, Any]
    frame: pd.DataFrame
    received: datetime

    @property
    def epsilon_spent(self) -> float:
        """The ε this answer charged to the member's ledger."""
        return float(self.frame.attrs.get("epsilon_spent", 0.0))

    @property
    def refresh_period(self) -> int | None:
        """The refresh period whose data the answer read (0: the match).

        The server's word, else the period the request named; None when neither says (an answer kept from a
        server that did not state it, asked for the latest completed period).
        """
        stated = self.frame.attrs.get("refresh_period")
        if stated is not None:
            return int(stated)
        asked = self.request.get("refresh_period")
        return int(asked) if asked is not None else None

    @property
    def population(self) -> tuple[str, ...]:
        """The members (besides the hub) whose matched users were the query's people; empty: every member."""
        return tuple(sorted(str(m) for m in self.request.get("with_members", ())))


def result_frame(result: qpb.QueryResult) -> pd.DataFrame:
    """One row per cell and measure: the dimension values, measure, value, error_95, suppressed and reason.

    A suppressed cell's value is NaN: the server withheld it, and `reason` says why (empty for a released cell).
    `attrs` carries epsilon spent and left, the noise
    scale per histogram, the audit entry's sequence number, the caller's own set size and, for lookalike and
    activation, the name of the audience released to the platform, and the refresh period whose data was read
    (None from a server that does not say, and in a preview).
    """
    import pandas as pd

    rows = []
    for c in result.cells:
        row: dict[str, object] = dict(zip(result.dimensions, c.keys, strict=True))
        row.update(
            measure=c.measure,
            value=float("nan") if c.suppressed else c.value,
            error_95=float("nan") if c.suppressed else c.error_95,
            suppressed=c.suppressed,
            reason=c.reason,
        )
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*result.dimensions, "measure", "value", "error_95", "suppressed", "reason"])
    frame.attrs.update(
        result_fields(result), refresh_period=result.refresh_period if result.HasField("refresh_period") else None
    )
    return frame


def preview_frame(result: qpb.QueryResult, within: bool = False) -> pd.DataFrame:
    """A preview: one row per cell the query would release, at its typical value, with the bar it would carry.

    Columns: the dimension values, `measure`, `typical` (the cell's value at the typical vectors), `error_95` (its
    95% bar), `relative_95` (the bar over |typical|: ±15% is 0.15; NaN when typical is 0), `withheld` and `reason`
    (a cell the typical values would not release, and why), and with `within`, `epsilon_needed` (the least epsilon
    in the policy's range giving that relative bar; NaN when none does). `attrs["typical"]` holds each released
    vector's typical value per cell, `attrs["epsilon_remaining"]` the caller's budget left; nothing was spent.
    """
    import pandas as pd

    rows = []
    for c in result.cells:
        row: dict[str, object] = dict(zip(result.dimensions, c.keys, strict=True))
        relative = abs(c.error_95 / c.value) if c.value and not c.suppressed else float("nan")
        row.update(
            measure=c.measure,
            typical=float("nan") if c.suppressed else c.value,
            error_95=float("nan") if c.suppressed else c.error_95,
            relative_95=relative,
            withheld=c.suppressed,
            reason=c.reason,
            epsilon_needed=c.epsilon_needed or float("nan"),
        )
        rows.append(row)
    columns = [*result.dimensions, "measure", "typical", "error_95", "relative_95", "withheld", "reason"]
    frame = pd.DataFrame(rows, columns=[*columns, "epsilon_needed"])
    if not within:
        frame = frame.drop(columns=["epsilon_needed"])
    frame.attrs.update(
        epsilon_spent=result.epsilon_spent,
        epsilon_remaining=result.epsilon_remaining,
        noise_scale=dict(result.noise_scale),
        audit_sequence=result.audit_sequence,
        typical=dict(result.typical),
        dimensions=list(result.dimensions),
    )
    return frame


def record(directory: Path, query: str, request: Message, result: qpb.QueryResult) -> None:
    """Append one answer. A failure to write warns and loses only this copy: the caller still gets its answer."""
    line = {
        "query": query,
        "received": datetime.now(UTC).isoformat(),
        "request": json_format.MessageToDict(request, preserving_proto_field_name=True),
        "result": json_format.MessageToDict(result, preserving_proto_field_name=True),
    }
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Private like the blinding key beside it: what this member asked and was told is its own business.
        fd = os.open(directory / ANSWERS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    except OSError as exc:
        warnings.warn(f"could not keep this answer for the report ({exc})", RuntimeWarning, stacklevel=3)


def load(directory: Path) -> list[Answer]:
    """Every answer kept for one collaboration, oldest first (an unreadable line, e.g. cut by a crash, is skipped)."""
    return list(_read(directory / ANSWERS_FILE))


def _read(path: Path) -> Iterator[Answer]:
    if not path.exists():
        return
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(text)
            result = json_format.ParseDict(line["result"], qpb.QueryResult())
            yield Answer(
                query=str(line["query"]),
                request=dict(line["request"]),
                frame=result_frame(result),
                received=datetime.fromisoformat(line["received"]),
            )
        except (ValueError, KeyError, TypeError, json_format.ParseError):
            continue
