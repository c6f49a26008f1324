"""Principals: who may call the server, with which role, authenticated by bearer token or client certificate.

Guarantees: a token is shown once, when made, and the server keeps only its SHA-256 (tokens are 256-bit random,
so a plain hash suffices); a revoked principal authenticates no more, by token or certificate; principal names
are unique and never one of the reserved names (`RESERVED_NAMES`: the operator's and the server's). Adding,
revoking and rotating are audited in the server's own chain (in the catalogue), assigning an auditor in the
collaboration's (in its file).

Every call's credentials are resolved from an in-memory copy of the table (`_Active`: SHA-256 of each active token
and each active name -> principal), loaded from the catalogue at start and reloaded after every add, revoke and
rotate has committed (the operator's commands run in the server's process, through the admin socket), before the
command returns: a revoked token is refused once its revocation is acknowledged, and a made-up token costs a hash
and a dict look-up, never a query, so a flood of them cannot queue behind the catalogue. Looking up a token's hash
compares SHA-256 digests, not tokens: the time it takes says nothing an attacker can use about a stored token.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
import threading
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


@dataclass(frozen=True)
class _Active:
    """The unrevoked principals, by token hash and by name: one snapshot of the table, replaced whole."""

    by_hash: dict[str, Principal]
    by_name: dict[str, Principal]

    @classmethod
    def load(cls, cur: duckdb.DuckDBPyConnection) -> _Active:
        rows = cur.execute("SELECT name, role, token_hash FROM principals WHERE revoked IS NULL").fetchall()
        principals = [(Principal(str(name), Role(role)), str(token_hash)) for name, role, token_hash in rows]
        return cls({h: p for p, h in principals}, {p.name: p for p, _ in principals})


class Principals:
    """The principals table."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._db = store.catalog
        self._audit = audit
        self._reload_lock = threading.Lock()
        self._active = _Active.load(self._db.cursor())

    def _reload(self, dropped: str | None = None) -> None:
        """Replace the in-memory table with the catalogue's, after a change committed.

        `dropped` (revoked, or its token rotated) leaves memory first, without the catalogue: should the reload
        fail (the server stopping), its old token still works no more.
        """
        with self._reload_lock:
            if dropped is not None:
                old = self._active
                self._active = _Active(
                    {h: p for h, p in old.by_hash.items() if p.name != dropped},
                    {n: p for n, p in old.by_name.items() if n != dropped},
                )
            self._active = _Active.load(self._db.cursor())

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
        self._reload()
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
        self._reload(dropped=name)

    def rotate(self, name: str) -> str:
        """Issue a new token for an existing principal (the old one stops working); returns it once."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._db.transaction() as cur:
            if first(cur.execute("SELECT 1 FROM principals WHERE name = ?", [name])) is None:
                raise NotFoundError(f"no principal {name!r}")
            cur.execute("UPDATE principals SET token_hash = ?, revoked = NULL WHERE name = ?", [_hash(token), name])
            self._audit.append(cur, SERVER_CHAIN, OPERATOR, "principal.rotate", {"name": name})
        self._reload(dropped=name)
        return token

    def by_token(self, token: str) -> Principal:
        """The principal holding `token` (from memory: no query)."""
        principal = self._active.by_hash.get(_hash(token))
        if principal is None:
            raise UnauthenticatedError("the token is unknown or revoked; ask the operator for a new one")
        return principal

    def by_name(self, name: str) -> Principal:
        """The principal called `name` (for a verified client certificate's common name; from memory: no query)."""
        principal = self._active.by_name.get(name)
        if principal is None:
            raise UnauthenticatedError(
                f"the certificate names {name!r}, which is not a registered, unrevoked principal"
            )
        return principal

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
