"""Three members against two, in the same run: does the chain cost what its X25519 operations say?

A server (TLS on loopback) and its members (each with its process pool of blinding workers) in one process; every
member holds N users with one identifier (email). Matched once with two members (brand, platform: half in common)
and once with three (brand, jd, tencent: jd shares half with the brand, tencent three quarters), wall-clock, and
the members' PSI seconds (blind and send their points, blind the offers: summed over members).

X25519 operations: with two members each point is blinded by its owner and by the peer (2 per point, 4N in all);
with three, by its owner with its key and mask, by both others, and by its owner again to remove the mask (4 per
point, 12N in all): 3x the work for 1.5x the users. Reported: both times, their ratio, the operations' ratio, and the
seconds per operation of each run, whose ratio says what the chain costs beyond its operations (hops waiting on each
other, the server's re-shuffles).

Usage: python benchmarks/bench_chain.py [--n 100000] [--json out.json]
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


def policy(members: tuple[str, ...]) -> str:
    doc: dict[str, Any] = {
        "name": "chain-bench",
        "members": {m: {"abilities": ["contribute", "query", "receive_results"]} for m in members},
        "identifiers": ["email"],
        "tables": {f"{m}.users": {} for m in members},
        "queries": ["overlap"],
        "min_group_size": 1,
        "epsilon": {"per_member_total": 1.0, "per_query_max": 1.0},
    }
    if len(members) > 2:
        doc["hub"] = members[0]
    return yaml.safe_dump(doc)


def people(ids: range, side: str) -> pd.DataFrame:
    """Users `ids` as one member holds them (its own key; the email shared across members)."""
    return pd.DataFrame({"key": [f"{side}{i}" for i in ids], "email": [f"user{i}@example.com" for i in ids]})


def match(root: Path, members: tuple[str, ...], n: int, psi: PsiClock) -> tuple[float, float, dict[str, int]]:
    """Wall seconds, PSI seconds and the hub's pair counts of one match of `members`, N users each."""
    pki = make_dev_pki(root / "pki", clients=members)
    server = create_server(
        ServerConfig(data_dir=root / "server", tls=TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes()))
    )
    try:
        tokens = {m: server.room.principals.add(m, Role.MEMBER) for m in members}
        clients = {
            m: CleanRoomClient(
                f"localhost:{server.port}", token=t, root_certificates=pki.ca, state_dir=root / m, progress=False
            )
            for m, t in tokens.items()
        }
        c = clients[members[0]].create_collaboration(policy(members), "bench")
        for client in clients.values():
            client.approve_policy(c.id)
        offsets = (0, n // 2, n // 4)  # the second member shares half with the first, the third three quarters
        psi.lap()
        start = time.perf_counter()
        with ThreadPoolExecutor(len(members)) as pool:
            jobs = [
                pool.submit(clients[m].match, c.id, people(range(o, o + n), m), "key", {"email": "email"})
                for o, m in zip(offsets, members, strict=False)
            ]
            for job in jobs:
                job.result()
        wall = time.perf_counter() - start
        pairs = dict(
            server.room.store.of(c.id)
            .cursor()
            .execute("SELECT member_b, count(*) FROM matches WHERE collab = ? GROUP BY 1", [c.id])
            .fetchall()
        )
        for client in clients.values():
            client.close()
    finally:
        server.stop(None)
    return wall, psi.lap(), {str(k): int(v) for k, v in pairs.items()}


def run(n: int) -> dict[str, Any]:
    psi = PsiClock()
    with tempfile.TemporaryDirectory() as tmp:
        two_s, two_psi, two_pairs = match(Path(tmp) / "two", ("brand", "platform"), n, psi)
        three_s, three_psi, three_pairs = match(Path(tmp) / "three", ("brand", "jd", "tencent"), n, psi)
    ops_two, ops_three = 2 * 2 * n, 4 * 3 * n
    return {
        "n_per_member": n,
        "two_members_seconds": two_s,
        "three_members_seconds": three_s,
        "three_over_two": three_s / two_s,
        "psi_seconds_two": two_psi,
        "psi_seconds_three": three_psi,
        "x25519_ops_two": ops_two,
        "x25519_ops_three": ops_three,
        "ops_three_over_two": ops_three / ops_two,
        "seconds_per_op_three_over_two": (three_s / ops_three) / (two_s / ops_two),
        "pairs_two": two_pairs,
        "pairs_three": three_pairs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.n)
    for k, v in result.items():
        print(f"{k:32} {v:.4g}" if isinstance(v, float) else f"{k:32} {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
