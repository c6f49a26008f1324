"""Principals: who may call the server, with which role, authenticated by bearer token or client certificate.

Guarantees: a token is shown once, when made, and the server keeps only its SHA-256 (tokens are 256-bit random,
so a plain hash suffices); a revoked principal authenticates no more, by token or certificate; principal names
are unique and never one of the reserved names (`RESERVED_NAMES`: the operator's and the server's). Adding,
revoking and rotating are audited in the server's own chain (in the catalogue), assigning an auditor in the
collaboration's (in its file).
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from cleanroom_client.policy import OPERATOR, RESERVED_NAMES

from .audit import AuditLog
from .audit.log import SERVER_CHAIN
from .errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, UnauthenticatedError
from .storage import Store
from .storage.database import first

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
TOKEN_PREFIX = "crt_"


class Role(enum.Enum):
    """A member contributes data and queries; an auditor reads policies, budgets and audit logs."""

    MEMBER = "member"
    AUDITOR = "auditor"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Principals:
    """The principals table."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._db = store.catalog
        self._audit = audit

    def add(self, name: str, role: Role) -> str:
        """Register `name` and return its new token (shown this once)."""
        if not _NAME.match(name):
            raise InvalidArgumentError(f"principal name {name!r}: lower-case letters, digits and '_', from a letter")
        if name in RESERVED_NAMES:
            raise InvalidArgumentError(
                f"principal name {name!r} is reserved (reserved: {', '.join(sorted(RESERVED_NAMES))}); choose another"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._db.transaction() as cur:
            if first(cur.execute("SELECT 1 FROM principals WHERE name = ?", [name])):
                raise AlreadyExistsError(f"principal {name!r} exists already (revoke it to issue a new token)")
            cur.execute(
                "INSERT INTO principals VALUES (?, ?, ?, ?, NULL)",
                [name, role.value, _hash(token), datetime.now(UTC).replace(tzinfo=None)],
            )
            self._audit.append(cur, SERVER_CHAIN, OPERATOR, "principal.add", {"name": name, "role": role.value})
        return token

    def revoke(self, name: str) -> None:
        """Revoke `name`: its token and certificate stop working at once."""
        with self._db.transaction() as cur:
            row = first(cur.execute("SELECT revoked FROM principals WHERE name = ?", [name]))
            if row is None:
                raise NotFoundError(f"no principal {name!r}")
            cur.execute(
                "UPDATE principals SET revoked = ? WHERE name = ?", [datetime.now(UTC).replace(tzinfo=None), name]
            )
            self._audit.append(cur, SERVER_CHAIN, OPERATOR, "principal.revoke", {"name": name})

    def rotate(self, name: str) -> str:
        """Issue a new token for an existing principal (the old one stops working); returns it once."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._db.transaction() as cur:
            if first(cur.execute("SELECT 1 FROM principals WHERE name = ?", [name])) is None:
                raise NotFoundError(f"no principal {name!r}")
            cur.execute("UPDATE principals SET token_hash = ?, revoked = NULL WHERE name = ?", [_hash(token), name])
            self._audit.append(cur, SERVER_CHAIN, OPERATOR, "principal.rotate", {"name": name})
        return token

    def by_token(self, token: str) -> Principal:
        """The principal holding `token`."""
        row = first(
            self._db.cursor().execute(
                "SELECT name, role FROM principals WHERE token_hash = ? AND revoked IS NULL", [_hash(token)]
            )
        )
        if row is None:
            raise UnauthenticatedError("the token is unknown or revoked; ask the operator for a new one")
        return Principal(row[0], Role(row[1]))

    def by_name(self, name: str) -> Principal:
        """The principal called `name` (for a verified client certificate's common name)."""
        row = first(
            self._db.cursor().execute("SELECT name, role FROM principals WHERE name = ? AND revoked IS NULL", [name])
        )
        if row is None:
            raise UnauthenticatedError(
                f"the certificate names {name!r}, which is not a registered, unrevoked principal"
            )
        return Principal(row[0], Role(row[1]))

    def assign_auditor(self, auditor: str, collaboration_id: str) -> None:
        """Let `auditor` read the policy, budget and audit log of a collaboration.

        The assignment and its audit entry commit together in the collaboration's file; the catalogue's index (for
        listing an auditor's collaborations) follows after the commit, and assigning again repairs it if a crash
        came between.
        """
        cur = self._db.cursor()
        row = first(cur.execute("SELECT role FROM principals WHERE name = ? AND revoked IS NULL", [auditor]))
        if row is None or row[0] != Role.AUDITOR.value:
            raise InvalidArgumentError(f"{auditor!r} is not an active auditor principal")
        from .collaborations import require_exists  # here: that module imports this one

        require_exists(cur, collaboration_id)
        room = self._store.of(collaboration_id)
        with room.transaction() as rcur:
            if not first(
                rcur.execute("SELECT 1 FROM auditors WHERE auditor = ? AND collab = ?", [auditor, collaboration_id])
            ):
                rcur.execute("INSERT INTO auditors VALUES (?, ?)", [auditor, collaboration_id])
                self._audit.append(rcur, collaboration_id, OPERATOR, "auditor.assign", {"auditor": auditor})
            room.after_commit(lambda: self._index_auditor(auditor, collaboration_id))

    def _index_auditor(self, auditor: str, collaboration_id: str) -> None:
        with self._db.transaction() as cur:
            if not first(
                cur.execute("SELECT 1 FROM auditors WHERE auditor = ? AND collab = ?", [auditor, collaboration_id])
            ):
                cur.execute("INSERT INTO auditors VALUES (?, ?)", [auditor, collaboration_id])

    def audited(self, cur: duckdb.DuckDBPyConnection, auditor: str, after: str, limit: int) -> list[str]:
        """The collaborations assigned to `auditor` after id `after`, in order, at most `limit` (`cur`: catalogue's)."""
        sql = "SELECT collab FROM auditors WHERE auditor = ? AND collab > ? ORDER BY collab LIMIT ?"
        return [str(r[0]) for r in cur.execute(sql, [auditor, after, limit]).fetchall()]

    def audits(self, auditor: str, collaboration_id: str) -> bool:
        """Whether `auditor` is assigned to the collaboration (as its own file records)."""
        row = first(
            self._store.of(collaboration_id)
            .cursor()
            .execute("SELECT 1 FROM auditors WHERE auditor = ? AND collab = ?", [auditor, collaboration_id])
        )
        return row is not None
