"""The member's blinding on Ray with 1 and 2 worker processes, against one core and the local process pool.

Each engine runs the member's two crypto steps over the same chunks: normalize + digest + hash to curve + blind
(`blind_identifiers`, per identifier of its own) and validate + double-blind (`reblind_points`, per point of the
peer's; here the step's own output stands in for the peer's points). Measured in the same run:

- **one core**: the steps called in this process (`SerialExecutor`), the per-core rate everything is compared to;
- **process pool**: `ProcessPoolChunkExecutor` with 2 workers, the default engine;
- **Ray, k workers**: a local Ray cluster started with `num_cpus=k` (`RayEngine(address=None, num_cpus=k)`), one
  task per chunk, the same chunks in flight as the pool.

Efficiency = rate / (workers x one-core rate); "vs pool" = Ray's rate / the pool's at the same number of workers.
Engines are warmed up (workers started, modules imported) before timing. The projection for 1B identifiers uses
the 2-worker Ray efficiency; see benchmarks/README.md.

Usage: python benchmarks/bench_ray_blinding.py [--n 200000] [--chunk 16384] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from cleanroom_client.blinding import (
    BlindJob,
    BlindResult,
    ChunkExecutor,
    ProcessPoolChunkExecutor,
    ReblindJob,
    SerialExecutor,
    blind_identifiers,
    reblind_points,
)
from cleanroom_client.identity import IdentifierType


def jobs(n: int, chunk: int, key: bytes) -> list[BlindJob]:
    emails = [f"person.{i}@example.com" for i in range(n)]
    return [
        BlindJob(key=key, id_type=IdentifierType.EMAIL, values=pa.array(emails[s : s + chunk], type=pa.string()))
        for s in range(0, n, chunk)
    ]


def measure(engine: ChunkExecutor, work: list[BlindJob], key: bytes) -> dict[str, float]:
    """Seconds and identifiers per second of each step on `engine` (after a warm-up chunk per worker)."""
    warm = [BlindJob(key=key, id_type=IdentifierType.EMAIL, values=pa.array(["w@example.com"] * 64))] * 4
    list(engine.map(blind_identifiers, warm))
    n = sum(len(j.values) for j in work)
    t = time.perf_counter()
    blinded: list[BlindResult] = list(engine.map(blind_identifiers, work))
    blind_s = time.perf_counter() - t
    t = time.perf_counter()
    list(engine.map(reblind_points, [ReblindJob(key=key, points=r.points) for r in blinded]))
    reblind_s = time.perf_counter() - t
    return {
        "blind_seconds": round(blind_s, 2),
        "reblind_seconds": round(reblind_s, 2),
        "ids_per_second": round(n / (blind_s + reblind_s), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="identifiers blinded per engine")
    parser.add_argument("--chunk", type=int, default=16384, help="identifiers per chunk (the SDK's default)")
    parser.add_argument("--ray-workers", default="1,2", help="Ray cluster sizes to run, comma-separated")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from cleanroom_client.ray_engine import RayEngine

    key = os.urandom(32)
    work = jobs(args.n, args.chunk, key)
    results: dict[str, dict[str, float | None]] = {}
    engines: list[tuple[str, int, Callable[[], ChunkExecutor]]] = [
        ("one core", 1, SerialExecutor),
        ("process pool, 2 workers", 2, lambda: ProcessPoolChunkExecutor(2)),
    ]
    for k in (int(w) for w in args.ray_workers.split(",")):
        engines.append((f"ray, {k} worker{'s' if k > 1 else ''}", k, lambda k=k: RayEngine(None, num_cpus=k)))  # type: ignore[misc]
    for name, workers, make in engines:
        engine = make()
        try:
            results[name] = {"workers": workers, **measure(engine, work, key)}
        finally:
            engine.close()
    base = float(results["one core"]["ids_per_second"] or 0)
    pool = float(results["process pool, 2 workers"]["ids_per_second"] or 0)
    for r in results.values():
        rate, size = float(r["ids_per_second"] or 0), float(r["workers"] or 1)
        r["efficiency"] = round(rate / (size * base), 3)
        r["vs_pool"] = round(rate / pool, 3) if size == 2 else None
    print(f"{args.n:,} identifiers, chunks of {args.chunk:,}: blind + double-blind")
    print(f"{'engine':<26}{'ids/s':>10}{'efficiency':>12}{'vs pool':>9}")
    for name, r in results.items():
        vs = "" if r["vs_pool"] is None else f"{r['vs_pool']:.2f}"
        print(f"{name:<26}{r['ids_per_second']:>10,.0f}{r['efficiency']:>12.2f}{vs:>9}")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "chunk": args.chunk, "engines": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
