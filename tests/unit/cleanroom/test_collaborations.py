"""Collaborations under hostile proposers: authorize first, bounded policy text, parsed once, quotas."""

from __future__ import annotations

import time

import pytest

from cleanroom import collaborations as collaborations_module
from cleanroom.audit.log import SERVER_CHAIN
from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from cleanroom.principals import Principal, Role
from cleanroom.room import Room

BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)
AUDITOR = Principal("nobody-assigned", Role.AUDITOR)


@pytest.fixture
def room(tmp_path):
    opened = Room.open(tmp_path)
    yield opened
    opened.close()


def _never_parse(text):
    raise AssertionError("the policy was parsed")


def test_an_auditor_and_an_oversize_policy_are_refused_before_parsing(room, monkeypatch):
    monkeypatch.setattr(collaborations_module, "parse_policy", _never_parse)
    with pytest.raises(PermissionDeniedError, match="only members create collaborations"):
        room.collaborations.create(AUDITOR, "from-auditor", DEMO_POLICY)
    huge = DEMO_POLICY + "#" * collaborations_module.MAX_POLICY_BYTES
    with pytest.raises(InvalidArgumentError, match="the limit is"):
        room.collaborations.create(BRAND, "too-big", huge)


def test_listing_many_collaborations_parses_each_policy_text_once(room, monkeypatch):
    for i in range(60):
        c = room.collaborations.create(BRAND, f"many-{i:03d}", DEMO_POLICY)
        room.collaborations.approve(BRAND, c.id, c.policy_etag)
        room.collaborations.approve(PLATFORM, c.id, c.policy_etag)
    parsed: list[str] = []
    real = collaborations_module.parse_policy

    def counting(text: str):
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(collaborations_module, "parse_policy", counting)
    room.collaborations._policies = collaborations_module._PolicyCache()  # cold: as after a restart
    for who in (BRAND, PLATFORM, BRAND):
        page, token = room.collaborations.list(who, 1000, "")
        assert len(page) == 60
        assert token == ""
    assert len(parsed) == 1


def test_a_proposer_has_a_quota_of_proposals_awaiting_approval(room, monkeypatch):
    monkeypatch.setattr(collaborations_module, "MAX_PENDING_PROPOSALS", 3)
    for i in range(3):
        room.collaborations.create(PLATFORM, f"spam-{i}", DEMO_POLICY)
    with pytest.raises(ResourceExhaustedError, match="3 proposals awaiting approval"):
        room.collaborations.create(PLATFORM, "spam-3", DEMO_POLICY)
    room.collaborations.create(BRAND, "brand-own", DEMO_POLICY)  # another proposer is not affected
    c = room.collaborations.get(BRAND, "spam-0")
    room.collaborations.approve(BRAND, c.id, c.policy_etag)
    room.collaborations.approve(PLATFORM, c.id, c.policy_etag)
    room.collaborations.create(PLATFORM, "spam-3", DEMO_POLICY)  # one was approved: room for one more


def _billion_laughs(levels: int) -> str:
    """The demo policy named by `levels` nested YAML aliases, nine of the one before each: 9**levels strings."""
    lines = ['x0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n" + DEMO_POLICY.replace("name: brand-x-platform-demo", f"name: *a{levels - 1}")


def test_a_policy_bomb_is_refused_at_once_and_audited(room):
    bomb = _billion_laughs(8)  # ~400 bytes, 43 million strings once expanded (10 s of CPU before the rule)
    started = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match="anchors and aliases"):
        room.collaborations.create(BRAND, "bomb-create", bomb)
    assert time.perf_counter() - started < 0.1
    refusals = [e.parameters for e in room.audit.entries(SERVER_CHAIN) if e.action == "refused"]
    assert refusals[-1]["attempted"] == "collaboration.create"
    assert "anchors and aliases" in refusals[-1]["reason"]
    assert next(iter(room.audit.entries(SERVER_CHAIN))).principal == BRAND.name

    c = room.collaborations.create(BRAND, "bomb-propose", DEMO_POLICY)
    started = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match="anchors and aliases"):
        room.collaborations.propose(PLATFORM, c.id, bomb)
    assert time.perf_counter() - started < 0.1
    last = list(room.audit.entries(c.id))[-1]
    assert (last.principal, last.action, last.parameters["attempted"]) == ("platform", "refused", "policy.propose")
    assert room.collaborations.get(BRAND, c.id).policy_revision == 1


def test_who_may_propose_is_checked_before_the_text_is_parsed(room, monkeypatch):
    c = room.collaborations.create(BRAND, "members-only", DEMO_POLICY)
    monkeypatch.setattr(collaborations_module, "parse_policy", _never_parse)
    bomb = _billion_laughs(8)
    with pytest.raises(NotFoundError):
        room.collaborations.propose(Principal("stranger", Role.MEMBER), c.id, bomb)
    with pytest.raises(NotFoundError):
        room.collaborations.propose(AUDITOR, c.id, bomb)
    with pytest.raises(PermissionDeniedError, match="only members"):
        room.collaborations.create(AUDITOR, "auditor-bomb", bomb)
    monkeypatch.setattr(collaborations_module, "MAX_PENDING_PROPOSALS", 1)  # `members-only` awaits approval
    with pytest.raises(ResourceExhaustedError, match="awaiting approval"):
        room.collaborations.create(BRAND, "over-quota", bomb)
