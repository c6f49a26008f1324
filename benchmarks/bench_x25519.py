"""X25519 per operation: `cryptography` (OpenSSL, one point at a time) against each native path of the SDK.

Measures, in one process and in CPU time (which a shared machine's load barely moves), the microseconds of one
X25519 as blinding runs it: `cryptography` with its key objects, one exchange per point; and
`cleanroom_client.curve.x25519_batch` on whole chunks of 16,384 points for every native path this machine runs
("avx512ifma": eight ladders at once; "portable": one C ladder at a time). The paths alternate `--rounds` times and
each reports its best round, so a burst of load hits all of them. Ratios are `cryptography`'s cost over each path's.

Usage: python benchmarks/bench_x25519.py [--points 16384] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from cleanroom_client.curve import X25519_NATIVE, X25519_PATHS, _x25519_cryptography, hash_to_u_batch, x25519_batch


def cpu_us_per_op(key: bytes, points: bytes, path: str) -> tuple[float, bytes]:
    """CPU microseconds per operation of `path` on the packed `points`, and what it computed."""
    start = time.process_time()
    out = x25519_batch(key, points, path)
    return (time.process_time() - start) / (len(points) // 32) * 1e6, out


def main() -> int:
    """Time every path on the same points, alternating; print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=16_384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
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
    for k, v in result.items():
        print(f"  {k:<44}{v!s:>14}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
