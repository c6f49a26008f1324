"""A single-user retirement (RetireUsers, period 0) against the whole join it used to redo, at N x N matched users.

Issue 29: each single-user retirement at once recomputed the whole join under the write lock. Now a period of
retirements alone rejoins only around the retired rows (`cleanroom.matching.join.rejoin_around`). Measured in the
same run on the server's own code and DuckDB file (no PSI, no gRPC): a match of N x N users loaded with its keys
(`cleanroom.devtools.synthetic.load_keyed_match`: brand row i and platform row i share email key i + 1), then
- the whole join of all keys (`join_matches` of a refresh period, rolled back): what each retirement used to cost;
- `--retirements` single-user retirements at once (`Relay.retire`, one transaction each, as the RPC runs it), of
  rows spread over the brand's users; seconds per retirement (median and max).
The run checks that exactly the retired users' pairs ended.

Usage: python benchmarks/bench_retire.py [--n 100000 1000000] [--retirements 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cleanroom.devtools.synthetic import DEMO_POLICY, load_keyed_match
from cleanroom.matching import Relay
from cleanroom.matching.join import join_matches
from cleanroom.principals import Principal, Role
from cleanroom.room import Room
from cleanroom_client.identity import IdentifierType

POLICY = DEMO_POLICY + "refresh: {tables: [brand.users], min_days_between: 7, budget: per_period}\n"
BRAND, PLATFORM = Principal("brand", Role.MEMBER), Principal("platform", Role.MEMBER)


def run(n: int, retirements: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        room = Room.open(Path(tmp))
        try:
            c = room.collaborations.create(BRAND, "retire-bench", POLICY)
            for m in (BRAND, PLATFORM):
                room.collaborations.approve(m, c.id, c.policy_etag)
            collab = room.collaborations.get(BRAND, c.id)
            start = time.perf_counter()
            load_keyed_match(room, c.id, n)
            load_s = time.perf_counter() - start
            db = room.store.of(c.id)
            types = [IdentifierType(t) for t in collab.policy.identifiers]
            with db.write_lock:
                cur = db.cursor()
                start = time.perf_counter()
                cur.execute("BEGIN")
                join_matches(cur, c.id, ("brand", "platform"), types, 10**6)
                cur.execute("ROLLBACK")
                whole_s = time.perf_counter() - start
                cur.close()
            relay = Relay(room.store, room.audit)
            rows = np.linspace(0, n - 1, retirements, dtype=np.int64)
            times = []
            for row in rows:
                start = time.perf_counter()
                relay.retire(collab, "brand", 0, np.array([row]))
                times.append(time.perf_counter() - start)
            current = db.cursor().execute("SELECT count(*) FROM matches WHERE period_to IS NULL").fetchall()[0][0]
            ended = db.cursor().execute("SELECT count(*) FROM matches WHERE period_to IS NOT NULL").fetchall()[0][0]
            if (current, ended) != (n - retirements, 0):  # retired pairs leave the history; no other pair ended
                raise RuntimeError(f"{current} current and {ended} ended pairs after {retirements} retirements")
        finally:
            room.close()
    return {
        "n": n,
        "load_s": round(load_s, 2),
        "whole_join_s": round(whole_s, 3),
        "retirements": retirements,
        "retire_median_s": round(statistics.median(times), 4),
        "retire_max_s": round(max(times), 4),
        "whole_join_over_retire": round(whole_s / statistics.median(times), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--retirements", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = [run(n, args.retirements) for n in args.n]
    for r in results:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
