"""The server's relay + join at scale, within a memory cap: N x N synthetic tags, no PSI.

What is measured is the server's own code on its own DuckDB file: each member submits the tags of the peer's
shuffled offer chunk by chunk through `Relay.submit_double_blinded` (one transaction per chunk, exactly as the
RPC does), the last chunk un-shuffles the tags onto the owner's rows, and the second member's last chunk runs the
real `join_matches` (whatever rule is on main). Points, hashing and gRPC are not: the offers (singly blinded
points in the server's shuffled order) are written straight into the file beforehand, with random 32-byte
stand-ins for the points, since nothing on this path looks at them.

Data: row r of each member is person r for r < shared (the same tag on both sides), a tag of its own otherwise;
the offer's order is a fixed permutation of the rows. The run checks the join found exactly `shared` pairs.

The setup and the measured run are separate processes, so the run's peak RSS (VmHWM) is the server's alone.

Usage: python benchmarks/bench_join.py --n 10000000 --memory-limit 3GB [--dir /big/disk] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cleanroom.collaborations import Collaboration
from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.matching.progress import UploadProgress, save_progress
from cleanroom.matching.relay import POINTS
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom.storage import StorageLimits

MEMBERS = ("brand", "platform")
#: The offer's order: pos -> row (pos * STEP + 1) mod n, a permutation since STEP is a prime above any n used here.
STEP = 2_654_435_761
COLLAB = "bench-join"


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: distinct inputs give distinct, uniform-looking 64-bit outputs."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def tags_of(owner: int, rows: np.ndarray, shared: int) -> bytes:
    """The 8-byte tags of `rows` of member number `owner`: person r's for r < shared, the row's own otherwise."""
    person = np.where(rows < shared, rows, rows + (owner + 1) * (1 << 40))
    tags = _mix(person)
    tags[tags == 0] = 1  # 0 is the rejected-point tag
    return tags.tobytes()


def limits(args: argparse.Namespace) -> StorageLimits:
    return StorageLimits(memory_limit=args.memory_limit, temp_directory=args.data / "spill", threads=args.threads)


def setup(args: argparse.Namespace) -> dict[str, object]:
    """A collaboration whose two offers of n points each are committed, written straight into the file."""
    room = Room.open(args.data, limits(args))
    brand = Principal("brand", Role.MEMBER)
    c = room.collaborations.create(brand, COLLAB, DEMO_POLICY)
    for m in MEMBERS:
        room.collaborations.approve(Principal(m, Role.MEMBER), c.id, c.policy_etag)
    t = time.perf_counter()
    for member in MEMBERS:
        with room.store.of(c.id).transaction() as cur:
            cur.execute(
                "INSERT INTO offers SELECT $c, $m, i, 1, (i * $step + 1) % $n,"
                " unhex(md5(i::VARCHAR || $m) || md5((i + $n)::VARCHAR || $m)) FROM range($n) t(i)",
                {"c": c.id, "m": member, "n": args.n, "step": STEP},
            )
            save_progress(cur, c.id, member, UploadProgress(POINTS, 1, args.n, True), args.n)
    seconds = time.perf_counter() - t
    room.close()
    return {"collaboration": c.id, "setup_seconds": round(seconds, 1), "setup_peak_rss_mb": round(peak_rss_mb())}


def run(args: argparse.Namespace) -> dict[str, object]:
    """Both members submit every chunk; the last one un-shuffles and joins. Timed per member."""
    room = Room.open(args.data, limits(args))
    collab: Collaboration = room.collaborations.get(Principal("brand", Role.MEMBER), args.collab)
    relay = room.relay
    out: dict[str, object] = {}
    for me, member in enumerate(MEMBERS):
        owner = 1 - me  # each member double-blinds the peer's offer
        chunks = -(-args.n // relay.offer_chunk)
        t = time.perf_counter()
        last_chunk_seconds = 0.0
        for i in range(chunks):
            pos = np.arange(i * relay.offer_chunk, min(args.n, (i + 1) * relay.offer_chunk), dtype=np.int64)
            tags = tags_of(owner, (pos * STEP + 1) % args.n, args.shared)
            t_chunk = time.perf_counter()
            relay.submit_double_blinded(collab, member, i, tags, last=i == chunks - 1)
            last_chunk_seconds = time.perf_counter() - t_chunk
        out[f"{member}_seconds"] = round(time.perf_counter() - t, 1)
        # the last chunk un-shuffles the peer's offer; the second member's also runs the join
        out[f"{member}_last_chunk_seconds"] = round(last_chunk_seconds, 1)
    row = (
        room.store.of(collab.id)
        .cursor()
        .execute("SELECT count(*) FROM matches WHERE collab = ?", [collab.id])
        .fetchone()
    )
    pairs = int(row[0]) if row else 0
    room.close()
    out.update({"pairs": pairs, "run_peak_rss_mb": round(peak_rss_mb())})
    return out


def _phase(args: argparse.Namespace, phase: str, *extra: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--n",
        str(args.n),
        "--shared",
        str(args.shared),
        "--memory-limit",
        args.memory_limit,
        "--threads",
        str(args.threads),
        "--data",
        str(args.data),
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="rows per member")
    parser.add_argument("--shared", type=int, help="people in common (default n / 2)")
    parser.add_argument("--memory-limit", default="3GB", help="DuckDB memory_limit of the server")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="where the data directory goes (default: a temporary one)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--phase", choices=["setup", "run"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--collab", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.shared = args.n // 2 if args.shared is None else args.shared
    if args.phase == "setup":
        print(json.dumps(setup(args)))
        return 0
    if args.phase == "run":
        print(json.dumps(run(args)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        args.data = Path(tmp) / "server"
        prepared = _phase(args, "setup")
        result = _phase(args, "run", "--collab", prepared["collaboration"])
        disk = _disk_mb(args.data)
    total = float(result["brand_seconds"]) + float(result["platform_seconds"])
    summary = {
        "n": args.n,
        "shared": args.shared,
        "memory_limit": args.memory_limit,
        **prepared,
        **result,
        "relay_join_seconds": round(total, 1),
        "seconds_per_100m": round(total * 1e8 / args.n, 1),
        "data_dir_mb_at_end": round(disk),
    }
    if summary["pairs"] != args.shared:
        raise SystemExit(f"the join found {summary['pairs']} pairs, expected {args.shared}")
    print(f"{args.n:,} x {args.n:,} ({args.shared:,} shared), DuckDB memory_limit {args.memory_limit}")
    print(f"relay + join {total:.1f} s ({summary['seconds_per_100m']} s per 100M x 100M);")
    print(f"server peak RSS {result['run_peak_rss_mb']} MB; setup {prepared['setup_seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
