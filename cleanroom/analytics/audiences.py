"""Audiences released to a member: stored with the audit entry that releases them, fetched only by the recipient.

Also who may receive one (`audience_recipient`, `check_recipient_reads`), the delta an audience query may ask
(`delta_for`) and the event conditions of a retargeting segment (`event_filters`), which lookalike and
activation share.

An audience is a set of the recipient's own surrogate row ids, so only the recipient can map it back to people
(with the ids it keeps locally). The requester learns its name and size, never its members.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa

from cleanroom_client.policy import Ability, Policy
from cleanroom_client.protocol import COLLABORATIONS

from ..audit import AuditLog
from ..errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from ..storage import Store
from ..storage.database import first
from .matched import Catalog
from .queries import EventFilter

CHUNK_IDS = 262_144  # 2 MiB of row ids per message
_PREFIX = COLLABORATIONS


@dataclass(frozen=True)
class AudienceInfo:
    """One released audience."""

    collaboration: str
    id: str
    kind: str
    recipient: str
    requester: str
    size: int
    create_time: datetime

    @property
    def name(self) -> str:
        """`collaborations/{c}/audiences/{a}`."""
        return f"{_PREFIX}{self.collaboration}/audiences/{self.id}"


def parse_audience_name(name: str) -> tuple[str, str]:
    """(collaboration id, audience id) of `collaborations/{c}/audiences/{a}`."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "collaborations" or parts[2] != "audiences" or not parts[1] or not parts[3]:
        raise InvalidArgumentError(f"expected an audience name like collaborations/c/audiences/a, got {name!r}")
    return parts[1], parts[3]


def forget_members(
    cur: duckdb.DuckDBPyConnection, collaboration_id: str, recipient: str, rows: str, params: list[object]
) -> None:
    """Delete the recipient's rows in the relation `rows` (`row_id`) from the audiences released to it.

    Called when the recipient retires users: an audience already fetched cannot be recalled, but it is no longer
    served with them.
    """
    cur.execute(
        "DELETE FROM audience_members WHERE collab = ? AND row_id IN " + rows + " AND audience IN "
        "(SELECT id FROM audiences WHERE collab = ? AND recipient = ?)",
        [collaboration_id, *params, collaboration_id, recipient],
    )


def store(
    cur: duckdb.DuckDBPyConnection,
    collaboration_id: str,
    kind: str,
    recipient: str,
    requester: str,
    row_ids: np.ndarray,
) -> AudienceInfo:
    """Write an audience (inside the caller's transaction, the one that audits its release)."""
    info = AudienceInfo(
        collaboration_id,
        f"a-{secrets.token_hex(6)}",
        kind,
        recipient,
        requester,
        len(row_ids),
        datetime.now(UTC).replace(tzinfo=None),
    )
    cur.execute(
        "INSERT INTO audiences VALUES (?, ?, ?, ?, ?, ?, ?)",
        [info.collaboration, info.id, info.kind, info.recipient, info.requester, info.size, info.create_time],
    )
    cur.register("ids", pa.table({"row_id": np.asarray(row_ids, dtype=np.int64)}))
    cur.execute("INSERT INTO audience_members SELECT ?, ?, row_id FROM ids", [collaboration_id, info.id])
    cur.unregister("ids")
    return info


class Audiences:
    """Reading released audiences; every fetch is audited."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit

    def list(self, collaboration_id: str, recipient: str) -> list[AudienceInfo]:
        """The audiences released to `recipient`, oldest first."""
        rows = (
            self._store.of(collaboration_id)
            .cursor()
            .execute(
                "SELECT collab, id, kind, recipient, requester, size, create_time FROM audiences"
                " WHERE collab = ? AND recipient = ? ORDER BY create_time, id",
                [collaboration_id, recipient],
            )
            .fetchall()
        )
        return [AudienceInfo(*r) for r in rows]

    def fetch(self, collaboration_id: str, audience: str, caller: str) -> Iterator[bytes]:
        """The members as 8-byte row ids, in chunks; only for the recipient."""
        cur = self._store.of(collaboration_id).cursor()
        row = first(
            cur.execute("SELECT recipient FROM audiences WHERE collab = ? AND id = ?", [collaboration_id, audience])
        )
        if row is None:
            raise NotFoundError(f"{_PREFIX}{collaboration_id}/audiences/{audience} does not exist")
        if row[0] != caller:
            raise PermissionDeniedError(f"this audience was released to {row[0]}; you ({caller}) may not read it")
        self._audit.record(collaboration_id, caller, "audience.fetch", {"audience": audience})
        table = cur.sql(
            "SELECT row_id FROM audience_members WHERE collab = ? AND audience = ? ORDER BY row_id",
            params=[collaboration_id, audience],
        ).to_arrow_table()
        ids = table.column("row_id").to_numpy().astype("<i8")
        for start in range(0, max(len(ids), 1), CHUNK_IDS):
            yield ids[start : start + CHUNK_IDS].tobytes()


# -- the queries ------------------------------------------------------------------------------------------------
def audience_recipient(policy: Policy, requester: str, catalog: Catalog) -> str:
    """The member a lookalike audience goes to, as the policy names it.

    With two members, the peer, if the policy lets it receive audiences. With more, the member the policy names
    in `activation.recipient` (never whichever comes first: an audience charges its recipient's budget), which
    must be in the query's population. Either way the recipient may read every member of the population
    (`_check_recipient_reads`): its audience is learned from them.
    """
    if len(policy.members) > 2:
        named = policy.activation.recipient if policy.activation is not None else None
        if named is None:
            raise PermissionDeniedError(
                "with three or more members, the policy names the member that receives audiences "
                "(activation.recipient); this policy names none"
            )
        if named == requester:
            raise PermissionDeniedError("the audience recipient may not request audiences itself")
        catalog.require_in_population(named)
        check_recipient_reads(policy, named, catalog)
        return named
    recipients = [m.name for m in policy.members if Ability.RECEIVE_AUDIENCES in m.abilities and m.name != requester]
    if not recipients:
        raise PermissionDeniedError("the policy gives no other member the ability receive_audiences")
    check_recipient_reads(policy, recipients[0], catalog)
    return recipients[0]


def check_recipient_reads(policy: Policy, recipient: str, catalog: Catalog) -> None:
    """The recipient may read every member of the query's population (the policy's `reads`).

    An audience tells its recipient, row by row, which of its users are among the query's people.
    """
    spec = policy.member(recipient)
    barred = [m for m in catalog.members if spec is None or not spec.may_read(m)]
    if barred:
        raise PermissionDeniedError(
            f"the audience goes to {recipient}, whom the policy does not let read {', '.join(barred)}'s data; "
            f"its list would say which of its users {', '.join(barred)} also has: name with_members without "
            + ("them" if len(barred) > 1 else "it")
        )


def delta_for(catalog: Catalog, delta: float) -> None:
    """Delta must be positive and far below 1/n for the sets both members were told the size of at the match."""
    largest = max((catalog.set_size(m.name) for m in catalog.collaboration.members), default=0)
    if not 0 < delta <= 1 / (10 * max(largest, 1)):
        raise InvalidArgumentError(
            f"delta must be positive and at most 1/(10 n) = {1 / (10 * max(largest, 1)):.2g} for the "
            f"{largest} people of the larger set; try {1 / (10 * max(largest, 1)) / 10:.1e}"
        )


def event_filters(policy: Policy, events: Sequence[EventFilter]) -> dict[str, str]:
    """Each event filter names a table the policy's activation allows, and declared values of its dimensions.

    Returns the time column of each table named.
    """
    spec = policy.activation
    allowed = spec.events if spec else ()
    times: dict[str, str] = {}
    for ev in events:
        table = policy.table(ev.member, ev.table.partition(".")[2])
        if ev.table not in allowed or table is None or table.time is None:
            raise InvalidArgumentError(
                f"event filter: {ev.table} is not among the policy's activation events {list(allowed)}"
            )
        for column, value in ev.where:
            if column not in table.dimensions or value not in table.dimensions[column]:
                raise InvalidArgumentError(
                    f"event filter on {ev.table}: {column}={value!r} is not a declared dimension value "
                    f"(declared: {dict(table.dimensions)})"
                )
        times[ev.table] = table.time
    return times
