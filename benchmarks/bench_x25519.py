"""X25519 per operation: `cryptography` (OpenSSL, one point at a time) against each native path of the SDK.

Measures, in one process and in CPU time (which a shared machine's load barely moves), the microseconds of one
X25519 as blinding runs it: `cryptography` with its key objects, one exchange per point; and
`cleanroom_client.curve.x25519_batch` on whole chunks of 16,384 points for every native path this machine runs
("avx512ifma": eight ladders at once; "portable": one C ladder at a time). The paths alternate `--rounds` times and
each reports its best round, so a burst of load hits all of them. Ratios are `cryptography`'s cost over each path's.

In the same run and the same way, the two other batched kernels of the extension that benchmarks/README.md quotes
per path: the RFC 9380 hash to curve (`hash_to_u_batch`, microseconds per message: eight messages at once on
"avx512ifma", its SHA-512 and its field work, one at a time on "portable") and the curve-or-twist test of `check_points`
(`on_curve_batch`, microseconds per point, against gmpy2's Legendre symbol per point, the path without the
extension).

Usage: python benchmarks/bench_x25519.py [--points 16384] [--rounds 3] [--kernels-points 16384] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import gmpy2

from cleanroom_client import curve
from cleanroom_client.curve import X25519_NATIVE, X25519_PATHS, _x25519_cryptography, hash_to_u_batch, x25519_batch


def cpu_us_per_op(key: bytes, points: bytes, path: str) -> tuple[float, bytes]:
    """CPU microseconds per operation of `path` on the packed `points`, and what it computed."""
    start = time.process_time()
    out = x25519_batch(key, points, path)
    return (time.process_time() - start) / (len(points) // 32) * 1e6, out


def cpu_us_per_item(fn: Any, count: int) -> tuple[float, Any]:
    """CPU microseconds per item of `fn()` over `count` items, and what it returned."""
    start = time.process_time()
    out = fn()
    return (time.process_time() - start) / count * 1e6, out


def _legendre_on_curve(points: bytes) -> bytes:
    """The curve-or-twist test per point with gmpy2's Legendre symbol (check_points without the extension)."""
    out = bytearray()
    for i in range(0, len(points), 32):
        u = gmpy2.mpz(int.from_bytes(points[i : i + 32], "little"))
        out.append(gmpy2.legendre(u * (u * (u + curve.A) + 1) % curve.P, curve.P) == 1)
    return bytes(out)


def other_kernels(count: int, rounds: int) -> dict[str, float]:
    """Best-of-`rounds` CPU µs per item of the hash to curve and of the point check on every native path."""
    native = curve._native
    if native is None:
        return {}
    messages = [b"email\x00" + i.to_bytes(32, "little") for i in range(count)]
    points = hash_to_u_batch(messages[: count // 2]) + os.urandom(32 * (count - count // 2))  # curve and not
    points = b"".join(bytes([*points[i : i + 31], points[i + 31] & 0x7F]) for i in range(0, len(points), 32))
    runs: dict[str, Any] = {
        f"hash_{path}": lambda path=path: native.hash_to_u_batch(messages, curve.CLEANROOM_DST, path)
        for path in X25519_PATHS
    }
    runs |= {f"check_{path}": lambda path=path: native.on_curve_batch(points, path) for path in X25519_PATHS}
    runs["check_gmpy2"] = lambda: _legendre_on_curve(points)
    best = dict.fromkeys(runs, float("inf"))
    answers: dict[str, Any] = {}
    for _ in range(rounds):
        for name, fn in runs.items():
            us, answers[name] = cpu_us_per_item(fn, count)
            best[name] = min(best[name], us)
    if len({answers[f"hash_{path}"][0] for path in X25519_PATHS}) != 1:
        raise SystemExit("the hash to curve paths gave different bytes")
    if len({answers[name] for name in runs if name.startswith("check_")}) != 1:
        raise SystemExit("the point check paths gave different answers")
    result = {f"us_per_hash_to_curve_{path}": round(best[f"hash_{path}"], 2) for path in X25519_PATHS}
    result |= {f"us_per_point_check_{path}": round(best[f"check_{path}"], 2) for path in [*X25519_PATHS, "gmpy2"]}
    return result


def main() -> int:
    """Time every path on the same points, alternating; print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=16_384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--kernels-points", type=int, default=16_384, help="items for the hash and the point check")
    args = parser.parse_args()
    key = os.urandom(32)
    points = hash_to_u_batch([i.to_bytes(8, "little") for i in range(args.points)])
    expected = _x25519_cryptography(key, points)
    paths = ["cryptography", *X25519_PATHS]
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(args.rounds):
        for path in paths:
            us, out = cpu_us_per_op(key, points, path)
            if out != expected:
                raise SystemExit(f"path {path} gave other bytes than cryptography")
            best[path] = min(best[path], us)
    result: dict[str, Any] = {
        "points": len(points) // 32,
        "rounds": args.rounds,
        "default_path": X25519_NATIVE or "cryptography",
        "load_average": os.getloadavg()[0],
    }
    for path in paths:
        result[f"us_per_op_{path}"] = round(best[path], 2)
        if path != "cryptography":
            result[f"speedup_{path}_over_cryptography"] = round(best["cryptography"] / best[path], 2)
    result |= other_kernels(args.kernels_points, args.rounds)
    for k, v in result.items():
        print(f"  {k:<44}{v!s:>14}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
