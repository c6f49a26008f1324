"""The one-time mask on a member's own points in a chain of three or more members (PROTOCOL.md section 9).

Why. With three or more members, other members blind a member's points in turn. Were those points blinded by the
origin's key k alone, two other members together could test identifiers of their choosing against the origin's
set: one uploads chosen points in its own chain, the origin blinds them there with k, and the other compares them
with what it saw of the origin's points in the origin's chain (both carry k). So the origin uploads its points
blinded by k x r, where r is a secret scalar used in no other chain, and removes r at the end of its own chain by
multiplying with r^-1, only then taking the tags. Every point another member sees in the origin's chain carries r;
nothing it sees anywhere else does.

X25519 multiplies by a clamped scalar only. On the prime-order subgroup (every hashed point, and every point after
a blinding) a scalar acts modulo the group order, so any value modulo the order that has a clamped representative
(a multiple of 8 in [2^254, 2^255)) can be applied with X25519: about half of all values do. r is derived from the
member's key and a counter, the first counter whose k x r and r^-1 both have one.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

#: The order of curve25519's prime-order subgroup.
ORDER = 2**252 + 27742317777372353535851937790883648493
_INV8 = pow(8, -1, ORDER)
_DOMAIN = b"cleanroom-v1 chain mask\x00"


def clamp(raw: bytes) -> int:
    """The scalar X25519 multiplies by for the 32-byte `raw` (RFC 7748 decodeScalar25519)."""
    value = bytearray(raw)
    value[0] &= 248
    value[31] &= 127
    value[31] |= 64
    return int.from_bytes(value, "little")


def as_scalar(value: int) -> bytes | None:
    """32 bytes that X25519 uses unchanged and that act as `value` modulo ORDER, or None if there are none."""
    m = value % ORDER * _INV8 % ORDER
    if not 2**251 <= m < 2**252:
        return None
    return (8 * m).to_bytes(32, "little")


@dataclass(frozen=True)
class Mask:
    """A member's one-time mask r and how it was found (PROTOCOL.md section 9 publishes the derivation).

    `digest` is SHA-512(domain || key || counter as 4 bytes big-endian); r is `digest` read as an unsigned integer
    little-endian, modulo ORDER. `upload` (k x r) and `unmask` (r^-1) are its X25519 scalars.
    """

    counter: int
    digest: bytes
    r: int
    upload: bytes
    unmask: bytes


def derive_mask(key: bytes) -> Mask:
    """The mask of the member whose key is `key`: the first counter whose k x r and r^-1 both have a clamped form."""
    k = clamp(key)
    for counter in itertools.count():
        digest = hashlib.sha512(_DOMAIN + key + counter.to_bytes(4, "big")).digest()
        r = int.from_bytes(digest, "little") % ORDER
        if not r:
            continue
        upload, unmask = as_scalar(k * r), as_scalar(pow(r, -1, ORDER))
        if upload is not None and unmask is not None:
            return Mask(counter, digest, r, upload, unmask)
    raise AssertionError("unreachable")


def chain_scalars(key: bytes) -> tuple[bytes, bytes]:
    """(upload, unmask) for a member's own points: k x r and r^-1 as X25519 scalars, r derived from `key`.

    Deterministic, so a member resuming a match derives the same mask; secret, as the key is.
    """
    mask = derive_mask(key)
    return mask.upload, mask.unmask
