"""Curve25519 for the matching protocol: RFC 9380 hash to curve, and checks on points received from a peer.

`hash_to_curve` implements the suite `curve25519_XMD:SHA-512_ELL2_RO_` of RFC 9380 (expand_message_xmd with
SHA-512, two field elements, Elligator 2, point addition, cofactor clearing by 8). Why not use SHA-256 output
directly as an X25519 u-coordinate: half of all 32-byte strings lie on the quadratic twist, X25519 keeps a point
on the curve or twist it started on, and so every blinded value would tell the peer one bit of the hash.
Mapping through Elligator 2 puts every identifier on the curve, in the prime-order subgroup.

Two implementations of the hash, chosen once at import: the compiled extension `_curve25519` (built by the SDK's
install where a C compiler exists; `NATIVE` is True) and the pure-Python one below with gmpy2, kept as the
reference and the fallback. Both give the same bytes (tested against each other and the RFC vectors). Neither holds
a secret: they run on public values and on the RFC 9380 messages of the member's own identifiers before the caller
blinds them, so neither makes a constant-time promise.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Final

import gmpy2
import numpy as np
from gmpy2 import mpz

from .native import stale_reason

#: The extension's C files in setup.py's order (SOURCES, then HEADERS): their SHA-256 is built into the module.
_C_SOURCES: Final = (
    "_curve25519.c",
    "_x25519_ifma.c",
    "_sha512.h",
    "_fe25519.h",
    "_elligator2.h",
    "_sha512_mb.h",
    "_h2c_ifma.h",
)


_native: ModuleType | None
try:
    from . import _curve25519 as _native
except ImportError:  # no compiler at install time: the Python path below
    _native = None
if _native is not None and (_stale := stale_reason(_native, "on_curve_batch", _C_SOURCES, __file__)) is not None:
    # An editable install updated without rebuilding: the old module is not used at all (its functions may not
    # match this module's calls, or may lack a fix), and the user is told how to rebuild it.
    warnings.warn(
        f"cleanroom_client._curve25519 {_stale} and is not used (Python paths run instead): "
        "rebuild it with `pip install -e clients/python` or `make install`",
        RuntimeWarning,
        stacklevel=1,
    )
    _native = None

#: Whether hashing to the curve runs in the compiled extension (else in Python with gmpy2).
NATIVE: Final = _native is not None

#: The X25519 paths the extension can run here, fastest first: "avx512ifma" (eight ladders at once, on CPUs with
#: AVX-512 IFMA) and "portable" (one C ladder at a time, any CPU). Empty without the extension.
X25519_PATHS: Final[tuple[str, ...]] = tuple(_native.X25519_PATHS) if _native is not None else ()
#: Which X25519 `x25519_batch` runs by default: "avx512ifma" where this CPU runs it, else None for `cryptography`
#: (OpenSSL). Not "portable": it is slower than `cryptography` (42.6 against 33.6 µs an operation in
#: benchmarks/bench_x25519.py here), so on a CPU without IFMA it stays a path to force, for tests and comparisons.
X25519_NATIVE: Final[str | None] = "avx512ifma" if "avx512ifma" in X25519_PATHS else None
#: Whether `check_points` runs its curve-or-twist test in the extension: only with AVX-512 IFMA (0.7 µs a point);
#: the portable C exponentiation (3.1 µs) is slower than gmpy2's Legendre symbol (2.2 µs), which runs elsewhere.
POINT_CHECK_NATIVE: Final = _native is not None and "avx512ifma" in X25519_PATHS

P: Final = mpz(2**255 - 19)
A: Final = mpz(486662)
_Z: Final = mpz(2)  # the Elligator 2 non-square chosen for curve25519 by RFC 9380
_SQRT_M1: Final = gmpy2.powmod(mpz(2), (P - 1) // 4, P)
_SQRT_EXP: Final = (P + 3) // 8
_L: Final = 48  # bytes per field element: ceil((ceil(log2(p)) + k) / 8) with k = 128
_A24: Final = (A + 2) // 4

SUITE: Final = "curve25519_XMD:SHA-512_ELL2_RO_"
#: Domain separation tag of matching protocol v1.
CLEANROOM_DST: Final = b"CLEANROOM-V1-CS01-with-" + SUITE.encode()

# u-coordinates (canonical, below p) of the points of order 1, 2, 4 and 8 on curve25519.
_LOW_ORDER_U: Final = frozenset(
    {
        0,
        1,
        P - 1,
        0x00B8495F16056286FDB1329CEB8D09DA6AC49FF1FAE35616AEB8413B7C7AEBE0,
        0x57119FD0DD4E22D8868E1C58C45C44045BEF839C55B1D0B1248C50A3BC959C5F,
    }
)

Point = tuple[mpz, mpz]  # affine Montgomery (u, v); None stands for the point at infinity


class InvalidPointError(ValueError):
    """A 32-byte string that is not an acceptable curve25519 u-coordinate."""


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-512."""
    if len(dst) > 255:
        raise ValueError("DST longer than 255 bytes")
    b_in_bytes, s_in_bytes = 64, 128
    ell = -(-len_in_bytes // b_in_bytes)
    if ell > 255 or len_in_bytes > 65535:
        raise ValueError("requested too many bytes")
    dst_prime = dst + bytes([len(dst)])
    msg_prime = bytes(s_in_bytes) + msg + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime
    b0 = hashlib.sha512(msg_prime).digest()
    b = [hashlib.sha512(b0 + b"\x01" + dst_prime).digest()]
    b0_int = int.from_bytes(b0, "big")
    for i in range(2, ell + 1):
        prev = (b0_int ^ int.from_bytes(b[-1], "big")).to_bytes(b_in_bytes, "big")  # strxor(b_0, b_(i-1))
        b.append(hashlib.sha512(prev + bytes([i]) + dst_prime).digest())
    return b"".join(b)[:len_in_bytes]


def hash_to_field(msg: bytes, dst: bytes, count: int = 2) -> list[mpz]:
    """RFC 9380 section 5.2 for GF(p), m = 1."""
    uniform = expand_message_xmd(msg, dst, count * _L)
    return [mpz(int.from_bytes(uniform[i * _L : (i + 1) * _L], "big")) % P for i in range(count)]


def _sqrt(a: mpz) -> mpz | None:
    """A square root of `a` mod p, or None when `a` is not a square (p = 5 mod 8)."""
    root = gmpy2.powmod(a, _SQRT_EXP, P)
    square = root * root % P
    if square == a:
        return mpz(root)
    if square == (-a) % P:
        return mpz(root * _SQRT_M1 % P)
    return None


def _curve_rhs(u: mpz) -> mpz:
    return mpz((u * u % P * u + A * u % P * u + u) % P)


def map_to_curve_elligator2(u: mpz) -> Point:
    """RFC 9380 section 6.7.1 with J = 486662, K = 1, Z = 2."""
    tv = (1 + _Z * u * u) % P
    x1 = (-A * gmpy2.invert(tv, P)) % P if tv else (-A) % P
    if x1 == 0:
        x1 = (-A) % P
    gx1 = _curve_rhs(x1)
    # Decide which candidate is on the curve with the cheap Legendre symbol, then take one square root only.
    if gmpy2.legendre(gx1, P) >= 0:
        y1 = _sqrt(gx1)
        if y1 is None:  # unreachable: gx1 is a square
            raise ArithmeticError("Elligator 2: no square root of a square")
        y = y1 if y1 % 2 == 1 else (-y1) % P  # sgn0(y) == 1
        return mpz(x1), mpz(y)
    x2 = (-x1 - A) % P
    y2 = _sqrt(_curve_rhs(x2))
    if y2 is None:  # unreachable for a valid curve: one of gx1, gx2 is always square
        raise ArithmeticError("Elligator 2 found no square")
    y = y2 if y2 % 2 == 0 else (-y2) % P  # sgn0(y) == 0
    return mpz(x2), mpz(y)


def _add(p1: Point | None, p2: Point | None) -> Point | None:
    """Affine addition on the Montgomery curve v^2 = u^3 + A u^2 + u."""
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % P == 0:
            return None
        lam = (3 * x1 * x1 + 2 * A * x1 + 1) * gmpy2.invert(2 * y1, P) % P
    else:
        lam = (y2 - y1) * gmpy2.invert((x2 - x1) % P, P) % P
    x3 = (lam * lam - A - x1 - x2) % P
    y3 = (lam * (x1 - x3) - y1) % P
    return mpz(x3), mpz(y3)


def hash_to_curve(msg: bytes, dst: bytes) -> Point:
    """The full RFC 9380 hash_to_curve, returning affine (u, v). Used for the published vectors."""
    u0, u1 = hash_to_field(msg, dst)
    point = _add(map_to_curve_elligator2(u0), map_to_curve_elligator2(u1))
    for _ in range(3):  # clear_cofactor: h_eff = 8
        point = _add(point, point)
    if point is None:
        raise ArithmeticError("hash_to_curve reached the identity")  # probability ~2^-252
    return point


class _Hasher:
    """expand_message_xmd and hash_to_field for one DST, with the DST-only work done once.

    SHA-512 absorbs the 128 zero bytes of Z_pad before the message, so their compression is done once here and
    each message starts from a copy of that state.
    """

    def __init__(self, dst: bytes) -> None:
        if len(dst) > 255:
            raise ValueError("DST longer than 255 bytes")
        dst_prime = dst + bytes([len(dst)])
        self.zpad = hashlib.sha512(bytes(128))
        self.b0_tail = (2 * _L).to_bytes(2, "big") + b"\x00" + dst_prime
        self.b1_tail = b"\x01" + dst_prime
        self.b2_tail = b"\x02" + dst_prime

    def field_elements(self, msg: bytes) -> tuple[mpz, mpz]:
        """hash_to_field(msg, 2) of RFC 9380 section 5.2."""
        h = self.zpad.copy()
        h.update(msg)
        h.update(self.b0_tail)
        b0 = h.digest()
        b1 = hashlib.sha512(b0 + self.b1_tail).digest()
        x = (int.from_bytes(b0, "little") ^ int.from_bytes(b1, "little")).to_bytes(64, "little")
        b2 = hashlib.sha512(x + self.b2_tail).digest()
        uniform = b1 + b2
        return mpz(int.from_bytes(uniform[:_L], "big")) % P, mpz(int.from_bytes(uniform[_L : 2 * _L], "big")) % P


_HASHERS: dict[bytes, _Hasher] = {}


def _elligator2(r: mpz) -> tuple[mpz, mpz]:
    """map_to_curve_elligator2 (same output as the reference above), one exponentiation."""
    tv = (1 + 2 * r * r) % P
    x = (-A * gmpy2.invert(tv, P)) % P if tv else P - A
    if x == 0:
        x = P - A
    gx = x * (x * (x + A) + 1) % P
    first = gmpy2.legendre(gx, P) >= 0
    if not first:
        x = P - x - A
        gx = x * (x * (x + A) + 1) % P
    y = gmpy2.powmod(gx, _SQRT_EXP, P)
    if y * y % P != gx:
        y = y * _SQRT_M1 % P
    if (y & 1) != first:  # sgn0(y) is 1 for the first candidate, 0 for the second
        y = P - y
    return x, y


def hash_to_u(msg: bytes, dst: bytes = CLEANROOM_DST) -> bytes:
    """The u-coordinate of `hash_to_curve(msg, dst)` as 32 bytes little-endian: the X25519 input."""
    return hash_to_u_batch([msg], dst)


def hash_to_u_batch(msgs: Sequence[bytes], dst: bytes = CLEANROOM_DST) -> bytes:
    """`hash_to_u` of each message, packed: 32 bytes per message, in order.

    Natively when the extension is built (eight messages at once with AVX-512 where the CPU has IFMA, about 0.24 of
    its native X25519 per message; one at a time elsewhere, about 0.25 of `cryptography`'s; one field inversion per
    batch), else in Python. The native path hands the few messages it does not finish (the two mapped points share u:
    probability ~2^-250) to the Python path, so the result is always complete. Messages and DST must be bytes (a
    subclass will do): anything else is a TypeError on every path.
    """
    if not isinstance(dst, bytes):  # the same TypeError with and without the extension (which takes bytes only)
        raise TypeError(f"expected bytes for the DST, {type(dst).__name__} found")
    if len(dst) > 255:
        raise ValueError("DST longer than 255 bytes")
    if _native is None:
        msgs = tuple(msgs)  # read once: a one-shot iterable would be empty the second time
        for m in msgs:
            if not isinstance(m, bytes):
                raise TypeError(f"expected bytes, {type(m).__name__} found")
        return b"".join([_hash_to_u_python(m, dst) for m in msgs])
    packed, unfinished = _native.hash_to_u_batch(msgs, dst)
    if not unfinished:
        return bytes(packed)
    out = bytearray(packed)
    for i, msg in unfinished:  # the message the batch hashed, not `msgs[i]` (a list may have changed since)
        out[32 * i : 32 * i + 32] = _hash_to_u_python(msg, dst)
    return bytes(out)


def _hash_to_u_python(msg: bytes, dst: bytes = CLEANROOM_DST) -> bytes:
    """`hash_to_u` in Python with gmpy2: the fallback, and the reference the native path is tested against.

    Same result as `hash_to_curve` (tested against it and the RFC vectors) at about two thirds of the cost: the
    sum of the two mapped points is kept as a fraction, the cofactor is cleared by doubling on the u-line in
    projective coordinates, and one inversion at the end gives u.
    """
    hasher = _HASHERS.get(dst)
    if hasher is None:
        hasher = _HASHERS[dst] = _Hasher(dst)
    return _u_of_field_elements(*hasher.field_elements(msg))


def _u_of_field_elements(r0: mpz, r1: mpz) -> bytes:
    """hash_to_curve's u from its two field elements (reduced mod p): `_hash_to_u_python` after hash_to_field.

    Apart so that tests can reach the RFC's exceptional cases (two points sharing u, a sum of low order), which no
    known message does, with field elements chosen for them. ArithmeticError where the result is the identity.
    """
    x1, y1 = _elligator2(r0)
    x2, y2 = _elligator2(r1)
    dx = (x2 - x1) % P
    if dx == 0:  # equal u: the reference's general path (doubling or the identity), probability ~2^-254
        point = _add((x1, y1), (x2, y2))
        if point is None:
            raise ArithmeticError("hash_to_curve reached the identity")
        x, z = point[0], mpz(1)
    else:
        # u3 = lam^2 - A - x1 - x2 with lam = (y2 - y1) / dx, as x / z with z = dx^2
        dy = (y2 - y1) % P
        z = dx * dx % P
        x = (dy * dy - (A + x1 + x2) * z) % P
    for _ in range(3):
        xx, zz = x * x % P, z * z % P
        x, z = (xx - zz) ** 2 % P, 4 * x * z % P * (xx + A * x * z + zz) % P
    if z == 0:
        raise ArithmeticError("hash_to_curve reached the identity")
    return int(x * gmpy2.invert(z, P) % P).to_bytes(32, "little")


def x25519_batch(key: bytes, points: bytes, path: str | None = None) -> bytes:
    """RFC 7748 X25519(key, u) for each 32-byte u of `points`, packed in order; all zero for a low-order point.

    The callers treat an all-zero result as rejected. `key` is the member's secret blinding key: the native paths
    are constant time in it and wipe their copies (see _curve25519.c and _x25519_ifma.c); the points are public.
    `path` forces "avx512ifma", "portable" or "cryptography" (for tests and benchmarks); by default "avx512ifma"
    where the CPU runs it (`X25519_NATIVE`), else `cryptography`, which is faster than the portable C ladder.
    Every path gives the same bytes (tests/unit/cleanroom_client/test_x25519.py).
    """
    if len(key) != 32:
        raise ValueError(f"an X25519 key is 32 bytes, got {len(key)}")
    if len(points) % 32:
        raise ValueError(f"{len(points)} bytes is not a whole number of 32-byte points")
    chosen = path or X25519_NATIVE
    if chosen is None or chosen == "cryptography":
        return _x25519_cryptography(key, points)
    if _native is None or chosen not in X25519_PATHS:
        raise ValueError(f"X25519 path {chosen!r} is not available here (available: {X25519_PATHS or 'none'})")
    return bytes(_native.x25519_batch(key, points, chosen))


def _x25519_cryptography(key: bytes, points: bytes) -> bytes:
    """`x25519_batch` with `cryptography`, one exchange per point: the fallback, and the reference in tests."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    exchange = X25519PrivateKey.from_private_bytes(key).exchange
    public = X25519PublicKey.from_public_bytes
    zero = bytes(32)
    out = []
    for i in range(0, len(points), 32):
        try:
            out.append(exchange(public(points[i : i + 32])))
        except ValueError:  # OpenSSL refuses an all-zero shared secret: the point has low order
            out.append(zero)
    return b"".join(out)


def validate_point(data: bytes) -> None:
    """Accept only a canonical u-coordinate of a curve25519 point (not the twist) that is not of low order.

    Raises InvalidPointError naming what is wrong.
    """
    if len(data) != 32:
        raise InvalidPointError(f"a point is 32 bytes, got {len(data)}")
    u = mpz(int.from_bytes(data, "little"))
    if u >= P:
        raise InvalidPointError("u-coordinate is not reduced modulo 2^255-19")
    if u in _LOW_ORDER_U:
        raise InvalidPointError("point of low order")
    if gmpy2.legendre(_curve_rhs(u), P) != 1:
        raise InvalidPointError("point lies on the quadratic twist, not on curve25519")


#: Why `check_points` rejects a point, by its code (0: accepted).
POINT_PROBLEMS: Final = (
    "",
    "u-coordinate is not reduced modulo 2^255-19",
    "point of low order",
    "point lies on the quadratic twist, not on curve25519",
)
_WORD = 0xFFFF_FFFF_FFFF_FFFF
_LOW_ORDER_WORDS: Final = np.array(
    [[(int(u) >> (64 * i)) & _WORD for i in range(4)] for u in sorted(_LOW_ORDER_U)], dtype=np.uint64
)


def check_points(points: bytes) -> np.ndarray:
    """`validate_point` for a packed run of 32-byte points at once: one code per point, 0 for an accepted one.

    The code indexes POINT_PROBLEMS. Range and low-order checks run on whole arrays; the curve-or-twist test runs
    in the extension for the whole batch where the CPU has AVX-512 IFMA (Euler's criterion eight at a time, about
    0.7 µs a point; `POINT_CHECK_NATIVE`), else per point with gmpy2's Legendre symbol (about 2.2 µs, faster than
    the extension's portable exponentiation). `validate_point` stays the one-point reference (gmpy2).
    """
    if len(points) % 32:
        raise InvalidPointError(f"{len(points)} bytes is not a whole number of 32-byte points")
    words = np.frombuffer(points, dtype="<u8").reshape(-1, 4)
    codes = np.zeros(len(words), dtype=np.int8)
    top = words[:, 3]
    unreduced = (top > 0x7FFF_FFFF_FFFF_FFFF) | (
        (top == 0x7FFF_FFFF_FFFF_FFFF)
        & (words[:, 2] == _WORD)
        & (words[:, 1] == _WORD)
        & (words[:, 0] >= 0xFFFF_FFFF_FFFF_FFED)
    )
    low = (words[:, None, :] == _LOW_ORDER_WORDS[None, :, :]).all(axis=2).any(axis=1)
    codes[unreduced] = 1
    codes[low & ~unreduced] = 2
    rest = np.flatnonzero(codes == 0)
    if _native is not None and POINT_CHECK_NATIVE:  # Euler's criterion in C, eight points at a time with IFMA
        on_curve = np.frombuffer(_native.on_curve_batch(words[rest].tobytes()), dtype=np.uint8)
        codes[rest[on_curve == 0]] = 3
        return codes
    for i in rest.tolist():
        u = mpz(int.from_bytes(points[32 * i : 32 * i + 32], "little"))
        if gmpy2.legendre(u * (u * (u + A) + 1) % P, P) != 1:
            codes[i] = 3
    return codes


def is_valid_point(data: bytes) -> bool:
    """Whether `validate_point` accepts `data`."""
    try:
        validate_point(data)
    except InvalidPointError:
        return False
    return True
