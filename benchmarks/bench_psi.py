"""PSI speed end to end against the machine's limit: a server and two members as separate processes, TLS on.

For N x N users (one identifier type, email, with N/2 in common) it reports the wall-clock seconds of the whole match
(blind, upload, fetch, double-blind, submit, join), identifiers per second, the bytes per identifier and direction
that the protocol puts on the wire, and each process's peak RSS. Beside it, in the same run, the limit: the
`cryptography` X25519 operations per second on all cores, times the 4 operations one matched pair needs (each member
blinds its own identifier and the peer's). Comparing with openmined-psi (in a venv of its own) is still to do.

Usage: python benchmarks/bench_psi.py [--n 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from cleanroom.synthetic import DEMO_POLICY

#: What the protocol sends per identifier (see protos/PROTOCOL.md): up, a row id and a point, later the peer's point
#: blinded again; down, the peer's point to double-blind.
UP_BYTES, DOWN_BYTES = 8 + 32 + 32, 32


def _x25519_ops(count: int) -> float:
    key = X25519PrivateKey.generate()
    peer = X25519PrivateKey.generate().public_key().public_bytes_raw()
    start = time.perf_counter()
    for _ in range(count):
        key.exchange(X25519PublicKey.from_public_bytes(peer))
    return count / (time.perf_counter() - start)


def machine_limit(cores: int, per_core: int = 20_000) -> float:
    """X25519 operations per second on all cores (object creation included, as the protocol needs it)."""
    with ProcessPoolExecutor(cores) as pool:
        return sum(pool.map(_x25519_ops, [per_core] * cores))


MEMBER = r"""
import json, resource, sys
import pandas as pd
from cleanroom_client import CleanRoomClient
name, collab, users, state, out = sys.argv[1:6]
with CleanRoomClient(state_dir=state, progress=False) as c:
    frame = pd.read_parquet(users)
    s = c.match(collab, users=frame, key="key", identifiers={"email": "email"}, wait_timeout=3600)
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
json.dump({"peak_rss_mb": peak / 1024, "peer_set_size": s.peer_set_size}, open(out, "w"))
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(n: int, tmp: Path) -> dict[str, float]:
    """One N x N match end to end; returns its figures."""
    cli = [sys.executable, "-m", "cleanroom.cli"]
    data = tmp / "data"
    subprocess.run([*cli, "admin", "make-dev-certs", str(tmp / "certs")], check=True, capture_output=True)
    tokens = {
        m: subprocess.run(
            [*cli, "admin", "add-principal", m, "--data-dir", str(data)], check=True, capture_output=True, text=True
        ).stdout.strip()
        for m in ("brand", "platform")
    }
    port = _port()
    server = subprocess.Popen(
        [
            *cli,
            "serve",
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--tls-cert",
            str(tmp / "certs" / "server.pem"),
            "--tls-key",
            str(tmp / "certs" / "server.key"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdout is not None
    server.stdout.readline()
    env = {**os.environ, "CLEANROOM_TARGET": f"localhost:{port}", "CLEANROOM_CA": str(tmp / "certs" / "ca.pem")}
    from cleanroom_client import CleanRoomClient

    def client(m: str) -> CleanRoomClient:
        return CleanRoomClient(
            f"localhost:{port}",
            token=tokens[m],
            root_certificates=tmp / "certs" / "ca.pem",
            state_dir=tmp / "setup",
            progress=False,
        )

    with client("brand") as b, client("platform") as p:
        collab = b.create_collaboration(DEMO_POLICY, "bench-psi").id
        b.approve_policy(collab)
        p.approve_policy(collab)
    half = n // 2
    for i, m in enumerate(("brand", "platform")):
        ids = range(i * half, i * half + n)
        pd.DataFrame({"key": list(ids), "email": [f"user{j}@example.com" for j in ids]}).to_parquet(tmp / f"{m}.pq")
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MEMBER, m, collab, str(tmp / f"{m}.pq"), str(tmp / m), str(tmp / f"{m}.json")],
            env={**env, "CLEANROOM_TOKEN": tokens[m]},
        )
        for m in ("brand", "platform")
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit("a member failed")
    seconds = time.perf_counter() - start
    server.send_signal(signal.SIGTERM)
    server.wait()
    server_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    members = {m: json.loads((tmp / f"{m}.json").read_text()) for m in ("brand", "platform")}
    return {
        "n": n,
        "seconds": round(seconds, 2),
        "identifiers_per_second": round(2 * n / seconds),
        "bytes_per_identifier_up": UP_BYTES,
        "bytes_per_identifier_down": DOWN_BYTES,
        "peak_rss_mb_brand": round(members["brand"]["peak_rss_mb"]),
        "peak_rss_mb_platform": round(members["platform"]["peak_rss_mb"]),
        "peak_rss_mb_children_max": round(server_rss),
    }


def main() -> int:
    """Measure the limit and one end-to-end match; print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    ops = machine_limit(cores)
    limit_seconds = 4 * args.n / ops
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.n, Path(tmp))
    result.update(
        x25519_ops_per_second=round(ops),
        limit_seconds=round(limit_seconds, 2),
        ratio_to_limit=round(result["seconds"] / limit_seconds, 2),
    )
    print(f"{args.n:,} x {args.n:,} (email, half in common) on {cores} cores")
    for key, value in result.items():
        print(f"  {key:<28}{value:>14,}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
