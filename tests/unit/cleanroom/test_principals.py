"""Principals in-process: names, tokens kept only as hashes, revocation and rotation at once, auditors assigned
only to collaborations that exist, every change in the server's audit chain."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.audit.log import SERVER_CHAIN
from cleanroom.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, UnauthenticatedError
from cleanroom.principals import _NAME, Principal, Role
from cleanroom.room import Room
from cleanroom_client.policy import RESERVED_NAMES

POLICY = {
    "name": "principals",
    "members": {"brand": {"abilities": ["contribute", "query", "receive_results"]}, "platform": {"abilities": []}},
    "identifiers": ["email"],
    "tables": {"brand.users": {"dimensions": {"tier": ["gold"]}}},
    "queries": ["overlap"],
    "min_group_size": 5,
    "epsilon": {"per_member_total": 1.0, "per_query_max": 1.0},
}


@pytest.fixture
def room(tmp_path):
    opened = Room.open(tmp_path)
    yield opened
    opened.close()


def test_a_token_is_shown_once_stored_as_its_hash_and_stops_at_revocation(room):
    token = room.principals.add("brand", Role.MEMBER)
    assert room.principals.by_token(token) == Principal("brand", Role.MEMBER)
    stored = [r[0] for r in room.store.catalog.cursor().execute("SELECT token_hash FROM principals").fetchall()]
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]
    room.principals.revoke("brand")
    with pytest.raises(UnauthenticatedError):
        room.principals.by_token(token)
    with pytest.raises(UnauthenticatedError):
        room.principals.by_name("brand")
    fresh = room.principals.rotate("brand")  # a new token; the old one stays dead
    assert room.principals.by_token(fresh).name == "brand"
    with pytest.raises(UnauthenticatedError):
        room.principals.by_token(token)
    actions = [e.action for e in room.audit.entries(SERVER_CHAIN)]
    assert actions == ["principal.add", "principal.revoke", "principal.rotate"]


def test_duplicates_and_unknown_names_are_refused(room):
    room.principals.add("brand", Role.MEMBER)
    with pytest.raises(AlreadyExistsError):
        room.principals.add("brand", Role.AUDITOR)
    with pytest.raises(NotFoundError):
        room.principals.revoke("nobody")
    with pytest.raises(NotFoundError):
        room.principals.rotate("nobody")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=70))
def test_the_name_rule_holds_for_any_text(name):
    ok = (
        0 < len(name) <= 63
        and name[0].isascii()
        and name[0].islower()
        and all(ch.isascii() and (ch.islower() or ch.isdigit() or ch == "_") for ch in name)
    )
    assert bool(_NAME.match(name)) == ok


def test_auditors_are_assigned_only_to_existing_collaborations_and_listed_in_order(room):
    room.principals.add("brand", Role.MEMBER)
    room.principals.add("platform", Role.MEMBER)
    room.principals.add("acme_audit", Role.AUDITOR)
    with pytest.raises(InvalidArgumentError, match="not an active auditor"):
        room.principals.assign_auditor("brand", "whatever")
    with pytest.raises(NotFoundError, match="does not exist"):
        room.principals.assign_auditor("acme_audit", "no-such-collab")
    brand = Principal("brand", Role.MEMBER)
    for cid in ("collab-b", "collab-a", "collab-c"):
        room.collaborations.create(brand, cid, yaml.safe_dump(POLICY))
        room.principals.assign_auditor("acme_audit", cid)
    room.principals.assign_auditor("acme_audit", "collab-a")  # twice: no error, no second entry
    cur = room.store.catalog.cursor()
    assert room.principals.audited(cur, "acme_audit", "", 10) == ["collab-a", "collab-b", "collab-c"]
    assert room.principals.audited(cur, "acme_audit", "collab-a", 1) == ["collab-b"]
    assert room.principals.audits("acme_audit", "collab-c")
    assert [e.action for e in room.audit.entries("collab-a")].count("auditor.assign") == 1


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_a_reserved_name_is_refused_as_a_principal(room, name):
    with pytest.raises(InvalidArgumentError, match="reserved"):
        room.principals.add(name, Role.MEMBER)
    assert [e.action for e in room.audit.entries(SERVER_CHAIN)] == []


def test_tokens_are_resolved_from_memory_and_a_made_up_token_never_touches_the_catalogue(room):
    """The front door resolves every call's token: from the in-memory table, so a flood of made-up tokens costs a
    hash and a dict look-up, not a DuckDB query (here the catalogue is closed, so any query would fail)."""
    brand = room.principals.add("brand", Role.MEMBER)
    room.principals.add("platform", Role.AUDITOR)
    room.store.catalog.close()
    assert room.principals.by_token(brand) == Principal("brand", Role.MEMBER)
    assert room.principals.by_name("platform") == Principal("platform", Role.AUDITOR)
    with pytest.raises(UnauthenticatedError, match="unknown or revoked"):
        room.principals.by_token("crt_made-up")
    with pytest.raises(UnauthenticatedError, match="not a registered"):
        room.principals.by_name("nobody")


def test_the_token_table_follows_every_add_revoke_and_rotate_and_a_reopen(tmp_path):
    opened = Room.open(tmp_path)
    try:
        first = opened.principals.add("brand", Role.MEMBER)
        assert opened.principals.by_token(first).name == "brand"
        second = opened.principals.rotate("brand")
        with pytest.raises(UnauthenticatedError):
            opened.principals.by_token(first)
        assert opened.principals.by_token(second).name == "brand"
        kept = opened.principals.add("platform", Role.MEMBER)
    finally:
        opened.close()
    reopened = Room.open(tmp_path)  # loaded from the catalogue at start
    try:
        assert reopened.principals.by_token(second).name == "brand"
        reopened.principals.revoke("brand")
        with pytest.raises(UnauthenticatedError):
            reopened.principals.by_token(second)
        with pytest.raises(UnauthenticatedError):
            reopened.principals.by_name("brand")
        assert reopened.principals.by_token(kept).name == "platform"
    finally:
        reopened.close()
