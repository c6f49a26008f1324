"""A refresh of 1% new users against the full match it follows: does it cost ~1% of the match?

A server (TLS on loopback) and two members (each with its process pool of blinding workers) in one process; N x N
users with one identifier (email), half in common. Measured in the same run, wall-clock:
- the full match (blind, upload, fetch, double-blind, submit, join, users table);
- a refresh in which each member adds N/100 new users (half of them in common) and retires N/1000;
- an empty refresh (nothing added, nothing retired): the fixed cost of a period (open, status polls, an empty
  upload each way, the rejoin of all keys), which does not shrink with the increment.
Reported: the PSI seconds of each (the members' blinding, uploading and double-blinding, summed over both) and
their ratio, the wall-clock ratios refresh / match and (refresh - empty) / match, the X25519 operations each needs,
and the server's rejoin over all keys.

Usage: python benchmarks/bench_refresh.py [--n 200000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from psi_clock import PsiClock  # benchmarks/psi_clock.py, beside this script

from cleanroom.devtools.devpki import make_dev_pki
from cleanroom.principals import Role
from cleanroom.server import ServerConfig, create_server
from cleanroom.server.app import TlsConfig
from cleanroom_client import CleanRoomClient

POLICY = {
    "name": "refresh-bench",
    "members": {
        "brand": {"abilities": ["contribute", "query", "receive_results"]},
        "platform": {"abilities": ["contribute"]},
    },
    "identifiers": ["email"],
    "tables": {"brand.users": {}, "platform.users": {}},
    "queries": ["overlap"],
    "min_group_size": 1,
    "epsilon": {"per_member_total": 1.0, "per_query_max": 1.0},
    "refresh": {"tables": ["brand.users", "platform.users"], "min_days_between": 0},
}


def people(ids: range, side: str) -> pd.DataFrame:
    """Users `ids` as one member holds them (its own key; the email shared by both sides)."""
    return pd.DataFrame({"key": [f"{side}{i}" for i in ids], "email": [f"user{i}@example.com" for i in ids]})


def both(*calls: Any) -> tuple[float, list[Any]]:
    """Run the two members' calls at once; wall seconds and results."""
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        results = [f.result() for f in [pool.submit(c) for c in calls]]
    return time.perf_counter() - start, results


def run(n: int) -> dict[str, Any]:
    psi = PsiClock()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = make_dev_pki(root / "pki")
        server = create_server(
            ServerConfig(
                data_dir=root / "server", tls=TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes())
            )
        )
        try:
            tokens = {m: server.room.principals.add(m, Role.MEMBER) for m in ("brand", "platform")}
            clients = {
                m: CleanRoomClient(
                    f"localhost:{server.port}", token=t, root_certificates=pki.ca, state_dir=root / m, progress=False
                )
                for m, t in tokens.items()
            }
            b, p = clients["brand"], clients["platform"]
            c = b.create_collaboration(yaml.safe_dump(POLICY), "bench")
            b.approve_policy(c.id)
            p.approve_policy(c.id)
            ids = {"email": "email"}
            half = n // 2
            psi.lap()
            match_s, _ = both(
                lambda: b.match(c.id, people(range(0, n), "b"), "key", ids),
                lambda: p.match(c.id, people(range(half, half + n), "p"), "key", ids),
            )
            match_psi = psi.lap()
            new, gone = max(1, n // 100), max(1, n // 1000)
            # New users: half of each side's increment is in common (ids past both sets).
            top = half + n
            b_new = range(top, top + new)
            p_new = range(top + new // 2, top + new // 2 + new)
            refresh_s, summaries = both(
                lambda: b.refresh(
                    c.id, people(b_new, "b"), identifiers=ids, retire=[f"b{i}" for i in range(gone)], wait_timeout=3600
                ),
                lambda: p.refresh(
                    c.id,
                    people(p_new, "p"),
                    identifiers=ids,
                    retire=[f"p{i}" for i in range(half, half + gone)],
                    wait_timeout=3600,
                ),
            )
            refresh_psi = psi.lap()
            empty_s, _ = both(lambda: b.refresh(c.id, None), lambda: p.refresh(c.id, None))
            cur = server.room.store.of(c.id).cursor()
            rejoin = time.perf_counter()
            from cleanroom.matching.join import join_matches
            from cleanroom_client.identity import IdentifierType

            cur.execute("BEGIN")
            join_matches(cur, c.id, ("brand", "platform"), [IdentifierType.EMAIL], 99)
            cur.execute("ROLLBACK")
            rejoin_s = time.perf_counter() - rejoin
            for client in clients.values():
                client.close()
        finally:
            server.stop(None)
    return {
        "n": n,
        "new_per_member": new,
        "retired_per_member": gone,
        "match_seconds": match_s,
        "refresh_seconds": refresh_s,
        "empty_refresh_seconds": empty_s,
        "refresh_over_match": refresh_s / match_s,
        "psi_seconds_match": match_psi,
        "psi_seconds_refresh": refresh_psi,
        "psi_refresh_over_match": refresh_psi / match_psi,
        "refresh_minus_empty_over_match": max(refresh_s - empty_s, 0.0) / match_s,
        # Each identifier is blinded by its owner and re-blinded by the peer: 2 X25519 operations per point.
        "x25519_ops_match": 2 * 2 * n,
        "x25519_ops_refresh": 2 * 2 * new,
        "server_rejoin_seconds": rejoin_s,
        "set_sizes_after": [summaries[0].own_set_size, summaries[1].own_set_size],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.n)
    for k, v in result.items():
        print(f"{k:32} {v:.4g}" if isinstance(v, float) else f"{k:32} {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
