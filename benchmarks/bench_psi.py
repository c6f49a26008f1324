"""PSI speed end to end against the machine's limit and OpenMined's PSI: a server and two members as separate
processes, TLS on.

For N x N users (one identifier type, email, with N/2 in common) it reports the wall-clock seconds of the whole match
(blind, upload, fetch, double-blind, submit, join, users table), identifiers per second, the bytes each member put
on the wire and received (counted by a TCP relay between member and server: TLS records, HTTP/2 frames and all), and
the peak RSS of every process. Beside it, in the same run:
- the limit: `cryptography`'s X25519 operations per second on all cores, times the 4 operations one matched pair
  needs (each member blinds its own identifier and the peer's), measured before and after the match (their mean:
  on a shared machine the rate drifts);
- the same in CPU time, which a shared machine's load barely moves: the CPU seconds of every process of the match
  (server, members, their workers) over those of the 4 X25519 operations per pair (`cpu_ratio_to_limit`);
- the protocol's floor: the limit plus the RFC 9380 hash to curve each member owes for each of its identifiers,
  measured the same way (natively when `native_hash_to_curve` is True, else in Python);
- where each member's time went: seconds per phase of its match (blind and upload its points, its tables, wait for
  and double-blind the peer's points, wait for the join, and start-up before the match);
- since issue 33's native X25519: the same limit with the SDK's fastest native X25519 (`x25519_native_path`,
  measured the same way before and after the match) and the match's ratios to it, in wall time
  (`ratio_to_native_limit`) and CPU time (`cpu_ratio_to_native_limit`); the ratios above keep `cryptography`'s;
- OpenMined's PSI on the same sets (benchmarks/openmined_peer.py), when its venv exists
  (`make bench-openmined-venv`): its wall seconds and the CPU seconds of its two processes, and our speed-up over
  it in both (`speedup_over_openmined`, `cpu_speedup_over_openmined`: all our processes' CPU against all of its).

Usage: python benchmarks/bench_psi.py [--n 100000] [--json out.json] [--openmined-python PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pandas as pd
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom_client.curve import NATIVE, X25519_NATIVE, hash_to_u_batch, x25519_batch

HERE = Path(__file__).resolve().parent
OPENMINED_PYTHON = HERE / ".venv-openmined" / "bin" / "python"


def _x25519_ops(count: int) -> float:
    key = X25519PrivateKey.generate()
    peer = X25519PrivateKey.generate().public_key().public_bytes_raw()
    start = time.perf_counter()
    for _ in range(count):
        key.exchange(X25519PublicKey.from_public_bytes(peer))
    return count / (time.perf_counter() - start)


def x25519_cpu_seconds(count: int = 5_000) -> float:
    """CPU seconds of one X25519 operation (key objects included) in this process: unlike a rate, the load of a
    shared machine barely moves it."""
    key = X25519PrivateKey.generate()
    peer = X25519PrivateKey.generate().public_key().public_bytes_raw()
    start = time.process_time()
    for _ in range(count):
        key.exchange(X25519PublicKey.from_public_bytes(peer))
    return (time.process_time() - start) / count


def _native_points(count: int) -> tuple[bytes, bytes]:
    """A key and `count` curve points, packed, to time the native X25519 on."""
    return os.urandom(32), hash_to_u_batch([i.to_bytes(8, "little") for i in range(count)])


def _x25519_native_ops(count: int) -> float:
    """The SDK's fastest native X25519 (`X25519_NATIVE`) per second, in chunks of 16,384 points as blinding runs it."""
    key, points = _native_points(16_384)
    rounds = max(1, count // 16_384)
    start = time.perf_counter()
    for _ in range(rounds):
        x25519_batch(key, points)
    return rounds * 16_384 / (time.perf_counter() - start)


def x25519_native_cpu_seconds(rounds: int = 3) -> float:
    """CPU seconds of one native X25519 in this process, in a chunk of 16,384 points (the best of `rounds`)."""
    key, points = _native_points(16_384)
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        x25519_batch(key, points)
        best = min(best, (time.process_time() - start) / 16_384)
    return best


def _hash_to_curve_ops(count: int) -> float:
    """Hashes to the curve per second, in batches of the SDK's chunk size as a match runs them."""
    messages = [b"email\x00" + i.to_bytes(32, "little") for i in range(count)]
    start = time.perf_counter()
    for first in range(0, count, 16_384):
        hash_to_u_batch(messages[first : first + 16_384])
    return count / (time.perf_counter() - start)


def per_second(fn: Any, cores: int, per_core: int) -> float:
    """Operations per second of `fn` on all cores at once."""
    with ProcessPoolExecutor(cores) as pool:
        return sum(pool.map(fn, [per_core] * cores))


def machine_limit(cores: int, per_core: int = 20_000) -> float:
    """X25519 operations per second on all cores (object creation included, as the protocol needs it)."""
    return per_second(_x25519_ops, cores, per_core)


MEMBER = r"""
import json, os, resource, sys, time
import pandas as pd
from cleanroom_client import CleanRoomClient
from cleanroom_client.matching import MatchRunner

stages = {}  # seconds in each phase of MatchRunner.run, by the method's name

def timed(name):
    step = getattr(MatchRunner, name)
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - start
    setattr(MatchRunner, name, run)

for name in ("_send_points", "_send_tables", "_blind_offers", "run"):
    timed(name)

def hwm_mb(pid):  # VmHWM: the peak of this process since exec (ru_maxrss would count the parent's pages at fork)
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0

def stat(pid):  # /proc/<pid>/stat's fields after the command's name
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()

def descendants():  # every process below this one: the pool's workers are children of its fork server
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[pid] = stat(pid)[1]
        except OSError:
            pass
    found, level = [], {str(os.getpid())}
    while level:
        level = {pid for pid, parent in parents.items() if parent in level}
        found += sorted(level)
    return found

def live_cpu_s():  # CPU of the processes below this one still alive, and of the children they reaped
    total = 0
    for pid in descendants():
        try:
            total += sum(int(v) for v in stat(pid)[11:15])  # utime, stime, cutime, cstime
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")

name, collab, users, state, out = sys.argv[1:6]
with CleanRoomClient(state_dir=state, progress=False) as c:
    frame = pd.read_parquet(users, dtype_backend="pyarrow")
    s = c.match(collab, users=frame, key="key", identifiers={"email": "email"}, wait_timeout=3600)
    workers = [hwm_mb(pid) for pid in descendants()]  # the blinding pool, before the client shuts it down
own, pool = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
# the exited children's CPU, and that of the processes still alive below (the fork server and the workers it reaped)
pool_cpu_s = pool.ru_utime + pool.ru_stime + live_cpu_s()
json.dump({"stages": stages, "rss_main_mb": hwm_mb("self"), "rss_worker_mb": max(workers, default=0.0),
           "rss_workers_sum_mb": sum(workers),
           "cpu_main_s": own.ru_utime + own.ru_stime, "cpu_workers_s": pool_cpu_s,
           "peer_set_size": s.peer_set_size}, open(out, "w"))
"""


def _relay(target: int, ports: Any, totals: Any, stop: Event) -> None:
    """A TCP relay to the server that counts the bytes each way (run in a process of its own)."""
    counts = {"up": 0, "down": 0}

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str) -> None:
        try:
            while data := await reader.read(1 << 16):
                counts[way] += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pump(reader, up_writer, "up"), pump(up_reader, writer, "down"), return_exceptions=True)

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ports.put(server.sockets[0].getsockname()[1])
        while not stop.is_set():
            await asyncio.sleep(0.05)
        totals.put(counts)

    asyncio.run(main())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(n: int, tmp: Path) -> dict[str, Any]:
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
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    relays = {}
    for m in ("brand", "platform"):
        ports, totals = ctx.Queue(), ctx.Queue()
        relay = ctx.Process(target=_relay, args=(port, ports, totals, stop), daemon=True)
        relay.start()
        relays[m] = (relay, ports.get(timeout=60), totals)
    server_cpu_before = _cpu_seconds(server.pid)
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MEMBER, m, collab, str(tmp / f"{m}.pq"), str(tmp / m), str(tmp / f"{m}.json")],
            env={**env, "CLEANROOM_TOKEN": tokens[m], "CLEANROOM_TARGET": f"localhost:{relays[m][1]}"},
        )
        for m in ("brand", "platform")
    ]
    for proc in procs:
        if proc.wait() != 0:
            server.kill()
            for other in procs:
                other.kill()
            raise SystemExit("a member failed; the server and the other member were stopped")
    seconds = time.perf_counter() - start
    stop.set()
    wire = {m: relays[m][2].get(timeout=60) for m in relays}
    server_rss, server_cpu = _peak_rss_mb(server.pid), _cpu_seconds(server.pid) - server_cpu_before
    server.send_signal(signal.SIGTERM)
    server.wait()
    members = {m: json.loads((tmp / f"{m}.json").read_text()) for m in ("brand", "platform")}
    result: dict[str, Any] = {
        "n": n,
        "seconds": round(seconds, 2),
        "identifiers_per_second": round(2 * n / seconds),
        "peak_rss_mb_server": round(server_rss),
        "cpu_seconds_server": round(server_cpu, 1),
    }
    for m in ("brand", "platform"):
        result[f"bytes_per_identifier_up_{m}"] = round(wire[m]["up"] / n, 1)
        result[f"bytes_per_identifier_down_{m}"] = round(wire[m]["down"] / n, 1)
        result[f"peak_rss_mb_{m}_main"] = round(members[m]["rss_main_mb"])
        result[f"peak_rss_mb_{m}_worker"] = round(members[m]["rss_worker_mb"])
        result[f"peak_rss_mb_{m}_total"] = round(members[m]["rss_main_mb"] + members[m]["rss_workers_sum_mb"])
        result[f"cpu_seconds_{m}_main"] = round(members[m]["cpu_main_s"], 1)
        result[f"cpu_seconds_{m}_workers"] = round(members[m]["cpu_workers_s"], 1)
        stages = members[m]["stages"]
        # the member's match by phase: blind and upload its points; its tables; wait for the peer's points and
        # double-blind them; wait for the server's join (the rest of MatchRunner.run)
        result[f"stage_s_{m}_points"] = round(stages["_send_points"], 2)
        result[f"stage_s_{m}_tables"] = round(stages["_send_tables"], 2)
        result[f"stage_s_{m}_double_blind"] = round(stages["_blind_offers"], 2)
        result[f"stage_s_{m}_join_wait"] = round(
            stages["run"] - stages["_send_points"] - stages["_send_tables"] - stages["_blind_offers"], 2
        )
        result[f"stage_s_{m}_outside_run"] = round(seconds - stages["run"], 2)  # start-up, reading the users
    return result


def openmined(python: Path, n: int) -> dict[str, float]:
    """OpenMined's PSI on the same sets, in its own venv; {} when that venv is missing."""
    if not python.exists():
        print(f"openmined-psi: no venv at {python} (make bench-openmined-venv); not compared", file=sys.stderr)
        return {}
    done = subprocess.run(
        [str(python), str(HERE / "openmined_peer.py"), str(n)], capture_output=True, text=True, check=True
    )
    figures = json.loads(done.stdout)
    if figures["intersection"] != n - n // 2:
        raise SystemExit(f"openmined-psi found {figures['intersection']} common users, expected {n - n // 2}")
    return {
        "openmined_seconds": figures["seconds"],
        "openmined_cpu_seconds": figures["cpu_seconds"],
        "openmined_bytes_per_identifier_client_up": round(figures["client_bytes_sent"] / n, 1),
        "openmined_bytes_per_identifier_server_up": round(figures["server_bytes_sent"] / n, 1),
    }


def main() -> int:
    """Measure the limit, the floor, one end-to-end match and OpenMined's PSI; print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--openmined-python", type=Path, default=OPENMINED_PYTHON)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    # The limits are timed on samples sized for the match: a smoke run (small --n) needs no second of them.
    per_core, native_per_core = (20_000, 8 * 16_384) if args.n >= 20_000 else (2_000, 16_384)
    ops_before = machine_limit(cores, per_core)
    native_before = per_second(_x25519_native_ops, cores, native_per_core) if X25519_NATIVE else 0.0
    h2c = per_second(_hash_to_curve_ops, cores, 16_384 if NATIVE else 5_000)
    h2c_ops = machine_limit(cores, 5_000)  # X25519 measured again beside the hashes, for their ratio
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.n, Path(tmp))
    # On a shared machine the rate drifts while the match runs: the limit is taken before and after it.
    ops_after = machine_limit(cores, per_core)
    ops = (ops_before + ops_after) / 2
    x25519_cpu = x25519_cpu_seconds()
    native_after = per_second(_x25519_native_ops, cores, native_per_core) if X25519_NATIVE else 0.0
    cpu = result["cpu_seconds_server"] + sum(
        result[f"cpu_seconds_{m}_{part}"] for m in ("brand", "platform") for part in ("main", "workers")
    )
    limit_seconds = 4 * args.n / ops
    floor_seconds = limit_seconds + 2 * args.n / h2c * h2c_ops / ops
    result.update(openmined(args.openmined_python, args.n))
    result.update(
        native_hash_to_curve=NATIVE,
        x25519_ops_per_second=round(ops),
        x25519_ops_per_second_before=round(ops_before),
        x25519_ops_per_second_after=round(ops_after),
        hash_to_curve_per_second=round(h2c),
        limit_seconds=round(limit_seconds, 2),
        ratio_to_limit=round(result["seconds"] / limit_seconds, 2),
        x25519_cpu_us=round(x25519_cpu * 1e6, 1),
        cpu_seconds_all=round(cpu, 1),
        cpu_ratio_to_limit=round(cpu / (4 * args.n * x25519_cpu), 2),
        hash_to_curve_per_x25519=round(h2c_ops / h2c, 3),
        floor_seconds=round(floor_seconds, 2),
        ratio_to_floor=round(result["seconds"] / floor_seconds, 2),
    )
    if X25519_NATIVE:
        # The same ratios against the fastest native X25519 measured in this run (the SDK's own, which the match
        # used): what the protocol's 4n operations cost at the speed this machine can actually run them.
        native_ops = (native_before + native_after) / 2
        native_cpu = x25519_native_cpu_seconds()
        native_limit_seconds = 4 * args.n / native_ops
        result.update(
            x25519_native_path=X25519_NATIVE,
            x25519_native_ops_per_second=round(native_ops),
            x25519_native_ops_per_second_before=round(native_before),
            x25519_native_ops_per_second_after=round(native_after),
            x25519_native_cpu_us=round(native_cpu * 1e6, 2),
            limit_seconds_native_limit=round(native_limit_seconds, 2),
            ratio_to_native_limit=round(result["seconds"] / native_limit_seconds, 2),
            cpu_ratio_to_native_limit=round(cpu / (4 * args.n * native_cpu), 2),
        )
    if "openmined_seconds" in result:
        result["speedup_over_openmined"] = round(result["openmined_seconds"] / result["seconds"], 2)
        result["cpu_speedup_over_openmined"] = round(result["openmined_cpu_seconds"] / cpu, 2)
    print(f"{args.n:,} x {args.n:,} (email, half in common) on {cores} cores")
    for key, value in result.items():
        print(f"  {key:<44}{value!s:>14}" if isinstance(value, bool | str) else f"  {key:<44}{value:>14,}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
