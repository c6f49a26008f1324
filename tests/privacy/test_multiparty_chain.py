"""The chain of three members against a coalition of two: they cannot test identifiers against the third's set.

Chain order (by name): brand -> jd -> tencent. jd sees brand's points at hop 1 of brand's chain, and tencent's points
after brand blinded them at hop 2 of tencent's chain. tencent uploads candidate identifiers, each under a secret
scalar of its own (the server cannot tell), and gives the scalars to jd: were brand's points blinded by brand's key
alone, the two would find which candidates are brand's customers by comparing (found in red-team review). Brand's
one-time mask, on its points throughout its own chain and on nothing else, defeats the comparison; the same attack
without the mask succeeds, so the test has teeth. The relay runs in-process, every hop through its real checks.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cleanroom.devtools.synthetic_platforms import POLICY
from cleanroom.matching.relay import Relay
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom_client.blinding import blind_point, join_tag
from cleanroom_client.chain_mask import chain_scalars
from cleanroom_client.curve import hash_to_u
from cleanroom_client.identity import IdentifierType, curve_message, digest

MEMBERS = ("brand", "jd", "tencent")
BRAND_EMAILS = [f"customer{i}@brand.example" for i in range(20)]
CANDIDATES = BRAND_EMAILS[3:8] + [f"stranger{i}@example.com" for i in range(5)]


def point(email: str) -> bytes:
    return hash_to_u(curve_message(IdentifierType.EMAIL, digest(email)))


def x(scalar: bytes, p: bytes) -> bytes:
    return blind_point(X25519PrivateKey.from_private_bytes(scalar), p)


def upload(relay: Relay, collab, member: str, points: list[bytes]) -> None:
    relay.upload_points(collab, member, 0, IdentifierType.EMAIL, 0, b"", b"".join(points), True, len(points))


def hop(relay: Relay, collab, member: str, origin: str, scalar: bytes, final: bool) -> list[bytes]:
    """One honest hop through the relay; returns the points the member saw."""
    total = relay.offer_chunks(collab, member, 0, origin)
    seen: list[bytes] = []
    for i in range(total):
        chunk = relay.fetch_peer_chunk(collab, member, i, 0, origin)
        part = [chunk[j : j + 32] for j in range(0, len(chunk), 32)]
        seen += part
        out = [x(scalar, p) for p in part]
        if final:
            relay.submit_double_blinded(
                collab, member, i, b"".join(join_tag(p) for p in out), i == total - 1, 0, origin
            )
        else:
            relay.submit_double_blinded(collab, member, i, b"", i == total - 1, 0, origin, b"".join(out))
    return seen


def coalition_learns(tmp_path: Path, brand_masks: bool) -> list[str]:
    """Run the match with jd and tencent playing the attack; what they learn about brand's customers."""
    room = Room.open(tmp_path)
    principals = {m: Principal(m, Role.MEMBER) for m in MEMBERS}
    c = room.collaborations.create(principals["brand"], "chain", POLICY)
    for p in principals.values():
        room.collaborations.approve(p, c.id, c.policy_etag)
    collab = room.collaborations.get(principals["brand"], c.id)
    relay = room.relay
    keys = {m: bytes([i + 1]) * 32 for i, m in enumerate(MEMBERS)}
    upload_scalar, unmask = chain_scalars(keys["brand"]) if brand_masks else (keys["brand"], None)
    upload(relay, collab, "brand", [x(upload_scalar, point(e)) for e in BRAND_EMAILS])
    upload(relay, collab, "jd", [x(keys["jd"], point(f"jd{i}@example.com")) for i in range(5)])
    scalars = [bytes([100 + i]) * 32 for i in range(len(CANDIDATES))]  # tencent's secret per candidate
    upload(relay, collab, "tencent", [x(s, point(e)) for s, e in zip(scalars, CANDIDATES, strict=True)])

    jd_saw_brand = hop(relay, collab, "jd", "brand", keys["jd"], final=False)  # brand's chain, hop 1
    hop(relay, collab, "tencent", "brand", keys["tencent"], final=False)  # hop 2
    hop(relay, collab, "brand", "tencent", keys["brand"], final=False)  # tencent's chain: brand blinds honestly
    jd_saw_tencent = set(hop(relay, collab, "jd", "tencent", keys["jd"], final=False))
    if unmask is not None:
        hop(relay, collab, "brand", "brand", unmask, final=True)
    room.close()
    return [
        e
        for e, s in zip(CANDIDATES, scalars, strict=True)
        if any(x(s, seen) in jd_saw_tencent for seen in jd_saw_brand)
    ]


def test_without_the_mask_two_members_would_test_identifiers_against_the_third(tmp_path: Path) -> None:
    assert coalition_learns(tmp_path, brand_masks=False) == BRAND_EMAILS[3:8]


def test_with_the_mask_they_learn_nothing(tmp_path: Path) -> None:
    assert coalition_learns(tmp_path, brand_masks=True) == []


def test_the_mask_cancels_out_every_chain_ends_at_one_tag() -> None:
    keys = {m: bytes([i + 7]) * 32 for i, m in enumerate(MEMBERS)}
    tags = set()
    for i, origin in enumerate(MEMBERS):
        upload_scalar, unmask = chain_scalars(keys[origin])
        value = x(upload_scalar, point("someone@example.com"))
        for h in (1, 2):
            value = x(keys[MEMBERS[(i + h) % 3]], value)
        tags.add(join_tag(x(unmask, value)))
    assert len(tags) == 1
