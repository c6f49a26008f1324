"""Collaborations and the lifecycle of their policy.

Invariant: data may flow (`require_active`) only when every member named in the current policy revision has
approved exactly that revision (by its etag, the SHA-256 of its text). A new proposal clears every approval, and
is refused once any data has been uploaded, so the rules under which data arrived can never change under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from cleanroom_client.policy import Policy, PolicyError, parse_policy
from cleanroom_client.protocol import COLLABORATIONS

from .audit import AuditLog
from .audit.log import SERVER_CHAIN
from .errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from .principals import Principal, Principals, Role
from .storage import Store
from .storage.database import first

_ID = re.compile(r"^[a-z][a-z0-9-]{3,62}$")
#: Largest policy text, in bytes of UTF-8; checked before parsing (a policy is a page of YAML, not a data set).
MAX_POLICY_BYTES = 64 * 1024
#: Most collaborations one principal may have proposed that still await someone's approval.
MAX_PENDING_PROPOSALS = 20
#: Closed collaboration files one listing call may reopen (tens of milliseconds each); the page ends there. Without
#: it a member in a thousand collaborations held a worker for over a minute per call (76 ms each, cap exceeded).
MAX_REOPENS_PER_PAGE = 16
#: Parsed policies kept in memory, by etag (the SHA-256 of the text): each text is parsed once, not per read.
POLICY_CACHE_SIZE = 256
_NAME_PREFIX = COLLABORATIONS


@dataclass(frozen=True)
class MemberState:
    """A member, its abilities, and whether it approved the current policy revision."""

    name: str
    abilities: frozenset[str]
    approved: bool


@dataclass(frozen=True)
class Collaboration:
    """A collaboration and its current policy revision."""

    id: str
    display_name: str
    create_time: datetime
    policy_yaml: str
    policy_revision: int
    policy_etag: str
    proposer: str
    policy: Policy
    members: tuple[MemberState, ...]

    @property
    def name(self) -> str:
        """Resource name, `collaborations/{id}`."""
        return _NAME_PREFIX + self.id

    @property
    def active(self) -> bool:
        """Every member approved the current revision."""
        return all(m.approved for m in self.members)

    @property
    def awaiting(self) -> list[str]:
        """Members that have not approved the current revision."""
        return [m.name for m in self.members if not m.approved]


def parse_name(name: str) -> str:
    """The id in `collaborations/{id}`; InvalidArgumentError otherwise."""
    if not name.startswith(_NAME_PREFIX) or not _ID.match(name[len(_NAME_PREFIX) :]):
        raise InvalidArgumentError(
            f"expected a collaboration name like 'collaborations/brand-x-2026q4', got {name[:80]!r}"
        )
    return name[len(_NAME_PREFIX) :]


def not_found(collaboration_id: str) -> str:
    """The one answer for a collaboration that does not exist and for one the caller is not part of."""
    return f"collaborations/{collaboration_id} does not exist, or you are not one of its members or auditors"


def require_exists(cur: duckdb.DuckDBPyConnection, collaboration_id: str) -> None:
    """NotFoundError unless the catalogue (`cur`) lists the collaboration (for the operator, who sees them all)."""
    if not first(cur.execute("SELECT 1 FROM collaboration_index WHERE id = ?", [collaboration_id])):
        raise NotFoundError(f"collaborations/{collaboration_id} does not exist")


def _etag(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _PolicyCache:
    """Stored policies parsed once each, by etag, the least recently used dropped beyond `POLICY_CACHE_SIZE`."""

    def __init__(self) -> None:
        self._parsed: OrderedDict[str, Policy] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, etag: str, text: str) -> Policy:
        with self._lock:
            policy = self._parsed.get(etag)
            if policy is not None:
                self._parsed.move_to_end(etag)
                return policy
        policy = parse_policy(text)
        with self._lock:
            self._parsed[etag] = policy
            while len(self._parsed) > POLICY_CACHE_SIZE:
                self._parsed.popitem(last=False)
        return policy


def check_approved_revision(cur: duckdb.DuckDBPyConnection, collaboration: Collaboration) -> None:
    """Inside a write transaction: the revision `collaboration` was read under is still current and approved by all.

    Every write of members' data calls this in its own transaction, after the write lock is held, so a proposal
    that lands between the caller's authorization and its write can never let data be stored under a revision
    nobody approved (proposals take the same lock and refuse once any upload exists).
    """
    row = first(cur.execute("SELECT policy_etag FROM collaborations WHERE id = ?", [collaboration.id]))
    approved = {
        m
        for (m,) in cur.execute(
            "SELECT member FROM members WHERE collab = ? AND approved_etag = ?",
            [collaboration.id, collaboration.policy_etag],
        ).fetchall()
    }
    if row is None or row[0] != collaboration.policy_etag or approved != {m.name for m in collaboration.members}:
        raise FailedPreconditionError(
            f"the policy of {collaboration.name} changed while your request was in flight; nothing was stored. "
            "Review and approve the current revision, then send again"
        )


class Collaborations:
    """Create, read and approve collaborations; decide who may see or act in each (audited refusals).

    A collaboration's policy, approvals and their audit entries live in its own file; the catalogue indexes its id,
    members, proposer and whether it awaits approvals, for what crosses collaborations (listing a principal's, the
    limit on pending proposals). The index follows each commit in the collaboration's file (under its write lock,
    so in commit order); a collaboration appears to anyone only once indexed.
    """

    def __init__(self, store: Store, audit: AuditLog, principals: Principals) -> None:
        self._store = store
        self._catalog = store.catalog
        self._audit = audit
        self._principals = principals
        self._policies = _PolicyCache()

    def _parse(self, principal: Principal, chain: str, action: str, text: str) -> Policy:
        """A proposed policy text, parsed, or refused with INVALID_ARGUMENT and the refusal audited in `chain`.

        Called only once the caller may propose. Over `MAX_POLICY_BYTES` is refused before parsing; parsing costs
        time in proportion to the text (`parse_policy` refuses YAML anchors and aliases before they expand).
        """
        size = len(text.encode("utf-8"))
        if size > MAX_POLICY_BYTES:
            error = InvalidArgumentError(f"the policy is {size} bytes; the limit is {MAX_POLICY_BYTES}")
        else:
            try:
                return parse_policy(text)
            except PolicyError as exc:
                error = InvalidArgumentError(str(exc), exc.problems)
        self._audit.record(chain, principal.name, "refused", {"attempted": action, "reason": str(error)})
        raise error

    # -- access -------------------------------------------------------------------------------------------------
    def _refuse(self, collaboration_id: str, principal: Principal, action: str, reason: str) -> PermissionDeniedError:
        """Record the refusal in the collaboration's chain and return the error to raise."""
        self._audit.record(collaboration_id, principal.name, "refused", {"attempted": action, "reason": reason})
        return PermissionDeniedError(reason)

    def record_refusal(self, principal: Principal, collaboration_name: str | None, action: str, reason: str) -> None:
        """Audit a request refused before any servicer read it (at the edge: a value no field may hold).

        Into the named collaboration's chain when the caller is one of its members or its assigned auditor, as every
        refusal there is; otherwise into the server's own chain, naming what was asked for (an outsider never writes
        into a collaboration's log, and the entry is the same whether that collaboration exists or not).
        """
        try:
            collaboration_id = parse_name(collaboration_name) if collaboration_name is not None else None
            collaboration = (  # a room the caller is not in is not opened for it (see `get`)
                self._load(collaboration_id)
                if collaboration_id is not None and self._indexed_in(principal, collaboration_id)
                else None
            )
        except (InvalidArgumentError, NotFoundError):
            collaboration_id, collaboration = None, None
        if collaboration is not None and (
            (principal.role is Role.MEMBER and collaboration.policy.member(principal.name) is not None)
            or (principal.role is Role.AUDITOR and self._principals.audits(principal.name, collaboration.id))
        ):
            self._audit.record(collaboration.id, principal.name, "refused", {"attempted": action, "reason": reason})
            return
        named = {"collaboration": collaboration_name} if collaboration_name is not None else {}
        self._audit.record(SERVER_CHAIN, principal.name, "refused", {"attempted": action, **named, "reason": reason})

    def get(self, principal: Principal, collaboration_id: str, action: str = "collaboration.get") -> Collaboration:
        """The collaboration, if the caller is one of its members or an auditor assigned to it.

        Anyone else gets the same NOT_FOUND, with the same message, whether the id exists or not, so ids cannot be
        probed; the refusal goes to the server's own chain, never into the collaboration's (an outsider cannot
        write into the log of a collaboration it is not part of). The caller is refused from the catalogue's indexes
        (memberships, fixed at creation; auditor assignments, as listing reads them) before the collaboration's file
        is touched: a room it is not in is never opened for it (its file would take a place under the cap and cost
        a reopen, and answer slower for an existing id than for an unknown one).
        """
        collaboration = None
        if self._indexed_in(principal, collaboration_id):
            with contextlib.suppress(NotFoundError):
                collaboration = self._load(collaboration_id)
        if collaboration is not None:
            if principal.role is Role.MEMBER and collaboration.policy.member(principal.name) is not None:
                return collaboration
            if principal.role is Role.AUDITOR and self._principals.audits(principal.name, collaboration_id):
                return collaboration
        self._audit.record(
            SERVER_CHAIN,
            principal.name,
            "refused",
            {"attempted": action, "collaboration": collaboration_id, "reason": "not a member or assigned auditor"},
        )
        raise NotFoundError(not_found(collaboration_id))

    def _indexed_in(self, principal: Principal, collaboration_id: str) -> bool:
        """Whether the catalogue lists the caller in the collaboration, as member or assigned auditor.

        No collaboration's file is read; the collaboration's own file, read next, still has the last word.
        """
        table, column = ("memberships", "member") if principal.role is Role.MEMBER else ("auditors", "auditor")
        sql = f"SELECT 1 FROM {table} WHERE collab = ? AND {column} = ? LIMIT 1"
        return first(self._catalog.cursor().execute(sql, [collaboration_id, principal.name])) is not None

    def require_member_somewhere(self, principal: Principal, action: str) -> None:
        """Refuse, before any collaboration is named, a caller who is a member of none (streams are for members).

        Cheap (one indexed lookup) and says nothing about any collaboration: it lets a server refuse outsiders
        before it gives them a stream slot and waits for their first message.
        """
        if principal.role is Role.MEMBER and first(
            self._catalog.cursor().execute("SELECT 1 FROM memberships WHERE member = ? LIMIT 1", [principal.name])
        ):
            return
        raise PermissionDeniedError(f"{action} is for members of a collaboration; you ({principal.name}) are in none")

    def require_member(self, principal: Principal, collaboration_id: str, action: str) -> Collaboration:
        """The collaboration, if the caller is one of its members."""
        collaboration = self.get(principal, collaboration_id, action)
        if principal.role is not Role.MEMBER:
            raise self._refuse(collaboration_id, principal, action, f"{action} is for members; auditors only read")
        return collaboration

    def require_auditor(self, principal: Principal, collaboration_id: str, action: str) -> Collaboration:
        """The collaboration, if the caller is an auditor assigned to it."""
        collaboration = self.get(principal, collaboration_id, action)
        if principal.role is not Role.AUDITOR:
            raise self._refuse(collaboration_id, principal, action, f"{action} is for the collaboration's auditors")
        return collaboration

    def require_active(self, principal: Principal, collaboration_id: str, ability: str, action: str) -> Collaboration:
        """The collaboration, if its policy is approved by all and grants the calling member `ability`."""
        collaboration = self.require_member(principal, collaboration_id, action)
        if not collaboration.active:
            raise FailedPreconditionError(
                f"the policy of {collaboration.name} is not yet approved by: {', '.join(collaboration.awaiting)}"
            )
        member = collaboration.policy.member(principal.name)
        if member is None or ability not in member.abilities:
            raise self._refuse(
                collaboration_id,
                principal,
                action,
                f"the policy does not give you ({principal.name}) the ability '{ability}'",
            )
        return collaboration

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def create(self, principal: Principal, collaboration_id: str, policy_yaml: str) -> Collaboration:
        """Create a collaboration proposing `policy_yaml`; the caller must be a member named in it.

        Auditors, and a principal with `MAX_PENDING_PROPOSALS` proposals still awaiting approval, are refused
        before the text is looked at (the quota is checked again under the write lock); the text is size-checked
        before it is parsed, and a refused text is audited in the server's chain.
        """
        if principal.role is not Role.MEMBER:
            raise PermissionDeniedError(f"you ({principal.name}) are an auditor; only members create collaborations")
        self._check_quota(principal)
        policy = self._parse(principal, SERVER_CHAIN, "collaboration.create", policy_yaml)
        if policy.member(principal.name) is None:
            raise PermissionDeniedError(
                f"you ({principal.name}) are not among the policy's members "
                f"({', '.join(m.name for m in policy.members)})"
            )
        collaboration_id = collaboration_id or "c-" + secrets.token_hex(6)
        if not _ID.match(collaboration_id):
            raise InvalidArgumentError(
                f"collaboration id {collaboration_id!r}: use 4 to 63 lower-case letters, digits or '-', "
                "starting with a letter"
            )
        etag = _etag(policy_yaml)
        created = datetime.now(UTC).replace(tzinfo=None)
        with self._catalog.write_lock:  # one creation at a time: the id and the pending count stay true until indexed
            cur = self._catalog.cursor()
            if first(cur.execute("SELECT 1 FROM collaboration_index WHERE id = ?", [collaboration_id])):
                raise AlreadyExistsError(f"collaboration {collaboration_id!r} exists already")
            self._check_quota(principal)
            # A file without an index entry is a creation a crash cut short: never visible, so it is replaced.
            self._audit.forget(collaboration_id)
            room = self._store.create(collaboration_id)
            try:
                with room.transaction() as rcur:
                    rcur.execute(
                        "INSERT INTO collaborations VALUES (?, ?, ?, ?, 1, ?, ?)",
                        [collaboration_id, policy.name, created, policy_yaml, etag, principal.name],
                    )
                    for m in policy.members:
                        rcur.execute("INSERT INTO members VALUES (?, ?, NULL)", [collaboration_id, m.name])
                    self._audit.append(
                        rcur,
                        collaboration_id,
                        principal.name,
                        "collaboration.create",
                        {"revision": 1, "etag": etag},
                        response=etag,
                    )
                    room.after_commit(lambda: self._index(collaboration_id, created, principal.name, policy))
            except BaseException:
                self._store.discard(collaboration_id)
                self._audit.forget(collaboration_id)
                raise
        return self._load(collaboration_id)

    def _check_quota(self, principal: Principal) -> None:
        """RESOURCE_EXHAUSTED when `principal` has `MAX_PENDING_PROPOSALS` proposals awaiting someone's approval."""
        pending = first(
            self._catalog.cursor().execute(
                "SELECT count(*) FROM collaboration_index WHERE proposer = ? AND awaiting", [principal.name]
            )
        )
        if pending and pending[0] >= MAX_PENDING_PROPOSALS:
            raise ResourceExhaustedError(
                f"you ({principal.name}) have {pending[0]} proposals awaiting approval, the most allowed; "
                "wait for them to be approved before proposing more"
            )

    def _index(self, collaboration_id: str, created: datetime, proposer: str, policy: Policy) -> None:
        """List a new collaboration in the catalogue: from here on it exists for everyone."""
        with self._catalog.transaction() as cur:
            cur.execute("INSERT INTO collaboration_index VALUES (?, ?, ?, true)", [collaboration_id, created, proposer])
            for m in policy.members:
                cur.execute("INSERT INTO memberships VALUES (?, ?)", [collaboration_id, m.name])

    def _reindex(self, collaboration_id: str) -> None:
        """Bring the catalogue's proposer and awaiting flag in line with the collaboration's committed state."""
        current = self._load(collaboration_id)
        with self._catalog.transaction() as cur:
            cur.execute(
                "UPDATE collaboration_index SET proposer = ?, awaiting = ? WHERE id = ?",
                [current.proposer, not current.active, collaboration_id],
            )

    def list(self, principal: Principal, page_size: int, page_token: str) -> tuple[list[Collaboration], str]:
        """The caller's collaborations (as member, or as assigned auditor) ordered by id, a page at a time.

        Each listed collaboration is read from its file; a page ends early (with a token for the rest) once it
        has reopened `MAX_REOPENS_PER_PAGE` closed files, so one call's cost stays bounded whatever the page size.
        """
        if page_size < 0:
            raise InvalidArgumentError("page_size must not be negative")
        size = min(page_size or 50, 1000)
        cur = self._catalog.cursor()
        if principal.role is Role.MEMBER:
            sql = "SELECT collab FROM memberships WHERE member = ? AND collab > ? ORDER BY collab LIMIT ?"
            ids = [r[0] for r in cur.execute(sql, [principal.name, page_token, size + 1]).fetchall()]
        else:
            ids = self._principals.audited(cur, principal.name, page_token, size + 1)
        page: list[Collaboration] = []
        reopened = 0
        for i in ids[:size]:
            if not self._store.is_open(i):
                if reopened == MAX_REOPENS_PER_PAGE:  # the rest of the page is for the next call
                    return page, page[-1].id
                reopened += 1
            page.append(self._load(i))
        return page, (ids[size - 1] if len(ids) > size else "")

    def propose(self, principal: Principal, collaboration_id: str, policy_yaml: str) -> Collaboration:
        """Propose a new revision; clears every approval. Members stay the same; refused once data was uploaded."""
        current = self.require_member(principal, collaboration_id, "policy.propose")
        policy = self._parse(principal, collaboration_id, "policy.propose", policy_yaml)
        if {m.name for m in policy.members} != {m.name for m in current.members}:
            raise InvalidArgumentError(
                "a new policy revision must name the same members "
                f"({', '.join(sorted(m.name for m in current.members))}); start a new collaboration to change them"
            )
        etag = _etag(policy_yaml)
        room = self._store.of(collaboration_id)
        with room.transaction() as cur:
            from .matching.progress import any_upload  # here: the matching package imports this module

            if any_upload(cur, collaboration_id):
                raise FailedPreconditionError(
                    "data has been uploaded under the current policy; it can no longer change. "
                    "Start a new collaboration for new rules."
                )
            cur.execute(
                "UPDATE collaborations SET display_name = ?, policy_yaml = ?, policy_revision = policy_revision + 1,"
                " policy_etag = ?, proposer = ? WHERE id = ?",
                [policy.name, policy_yaml, etag, principal.name, collaboration_id],
            )
            cur.execute("UPDATE members SET approved_etag = NULL WHERE collab = ?", [collaboration_id])
            self._audit.append(
                cur,
                collaboration_id,
                principal.name,
                "policy.propose",
                {"revision": current.policy_revision + 1, "etag": etag},
                response=etag,
            )
            room.after_commit(lambda: self._reindex(collaboration_id))
        return self._load(collaboration_id)

    def approve(self, principal: Principal, collaboration_id: str, etag: str) -> Collaboration:
        """Approve the current revision, named by its etag so nobody approves a text they have not read."""
        current = self.require_member(principal, collaboration_id, "policy.approve")
        if not etag:
            raise InvalidArgumentError(
                "etag is required: pass the policy etag you reviewed (Collaboration.policy.etag)"
            )
        if etag != current.policy_etag:
            raise FailedPreconditionError(
                f"the policy changed since you read it: current revision {current.policy_revision} has etag "
                f"{current.policy_etag}; review it and approve that etag"
            )
        room = self._store.of(collaboration_id)
        with room.transaction() as cur:
            cur.execute(
                "UPDATE members SET approved_etag = ? WHERE collab = ? AND member = ?",
                [etag, collaboration_id, principal.name],
            )
            self._audit.append(
                cur,
                collaboration_id,
                principal.name,
                "policy.approve",
                {"revision": current.policy_revision, "etag": etag},
            )
            room.after_commit(lambda: self._reindex(collaboration_id))
        return self._load(collaboration_id)

    def _load(self, collaboration_id: str) -> Collaboration:
        """The collaboration as its file holds it; NotFoundError unless the catalogue lists it."""
        indexed = self._catalog.cursor().execute("SELECT 1 FROM collaboration_index WHERE id = ?", [collaboration_id])
        if first(indexed) is None:
            raise NotFoundError(not_found(collaboration_id))
        cur = self._store.of(collaboration_id).cursor()
        row = first(
            cur.execute(
                "SELECT id, display_name, create_time, policy_yaml, policy_revision, policy_etag, proposer"
                " FROM collaborations WHERE id = ?",
                [collaboration_id],
            )
        )
        if row is None:
            raise NotFoundError(not_found(collaboration_id))
        approvals = dict(
            cur.execute("SELECT member, approved_etag FROM members WHERE collab = ?", [collaboration_id]).fetchall()
        )
        policy = self._policies.get(row[5], row[3])
        members = tuple(MemberState(m.name, m.abilities, approvals.get(m.name) == row[5]) for m in policy.members)
        return Collaboration(
            id=row[0],
            display_name=row[1],
            create_time=row[2].replace(tzinfo=UTC),
            policy_yaml=row[3],
            policy_revision=row[4],
            policy_etag=row[5],
            proposer=row[6],
            policy=policy,
            members=members,
        )
