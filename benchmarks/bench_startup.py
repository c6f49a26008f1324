"""How fast the command lines start: `cleanroom admin --help`, `cleanroom-client --help`, `import cleanroom.room`,
a whole operator command with no server running (`cleanroom admin rotate-token`: opens the data directory,
serves AdminService on a private socket, calls it), and a member's command that holds no table and fails at its
first call (`cleanroom-client budget c` with nothing listening at its --target: it exits 1 at once, having loaded
the SDK, gRPC and the stubs but not pandas, pyarrow or jsonschema).

Each command runs as a fresh process several times; the median wall time is compared with a floor (a Python
process importing grpc and pandas, which a command that reads or shows a table needs) and with a one-second limit.
Heavy libraries (torch, opacus, matplotlib, ray) load only where they are used, so none of these should pay for
them; pandas, pyarrow and jsonschema only where a table is read or held or a policy checked.

The server's own start-up (`--log-entries 1000,50000`): a data directory whose audit log holds about that many
entries (ten approved collaborations, then signed entries appended as the server appends them) is opened by a
fresh process that starts the server (`create_server`, plaintext) and stops it; the time `create_server` takes is
reported, median of `--repeat` runs. It must not grow with the log's length: start-up reads no audit entry.

Every figure is measured after one unmeasured run that warms the file cache; `--no-warm-up` leaves that run out
(the test suite's smoke run, which checks the benchmark works and times nothing).

Usage: python benchmarks/bench_startup.py [--repeat 7] [--log-entries 1000,50000] [--no-warm-up] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
LIMIT_S = 1.0
#: Nothing listens on port 1: a member's command addressed there fails at its first call, with exit status 1.
NO_SERVER = ["--target", "localhost:1", "--token", "t", "--insecure"]
COMMANDS = {
    "floor: python -c 'import grpc, pandas'": [sys.executable, "-c", "import grpc, pandas"],
    "cleanroom admin --help": [str(BIN / "cleanroom"), "admin", "--help"],
    "cleanroom-client --help": [str(BIN / "cleanroom-client"), "--help"],
    "python -c 'import cleanroom.room'": [sys.executable, "-c", "import cleanroom.room"],
    "cleanroom-client budget c (no server)": [str(BIN / "cleanroom-client"), *NO_SERVER, "budget", "c"],
}
#: The exit status each command must end with (0 unless listed): a command timed is one that did what it should.
EXIT_STATUS = {"cleanroom-client budget c (no server)": 1}


def median_seconds(command: list[str], repeat: int, warm_up: bool = True, status: int = 0) -> float:
    """The median wall time of `repeat` runs of `command`, each ending with exit `status`.

    One unmeasured run first warms the file cache.
    """

    def run() -> None:
        done = subprocess.run(command, capture_output=True, check=False)
        if done.returncode != status:
            raise RuntimeError(f"{command} exited {done.returncode}, not {status}: {done.stderr.decode()[-2000:]}")

    if warm_up:
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


SERVE = """
import sys, time
from pathlib import Path
from cleanroom.server import ServerConfig, create_server
started = time.perf_counter()
running = create_server(ServerConfig(data_dir=Path(sys.argv[1]), insecure=True))
print(time.perf_counter() - started)
running.stop(None)
"""


def build(data: Path, entries: int, chains: int = 10) -> int:
    """A data directory with `chains` approved collaborations whose audit chains hold `entries` in all; returns them.

    The entries are appended as the server appends them (signed, chained), a thousand to a transaction.
    """
    from cleanroom.devtools.synthetic import DEMO_POLICY
    from cleanroom.principals import Role
    from cleanroom.room import Room

    room = Room.open(data)
    try:
        for name in ("brand", "platform"):
            room.principals.add(name, Role.MEMBER)
        brand, platform = room.principals.by_name("brand"), room.principals.by_name("platform")
        ids = []
        for i in range(chains):
            c = room.collaborations.create(brand, f"bench-{i:05d}", DEMO_POLICY)
            room.collaborations.approve(brand, c.id, c.policy_etag)
            room.collaborations.approve(platform, c.id, c.policy_etag)
            ids.append(c.id)

        def count() -> int:
            files = [room.store.catalog, *(room.store.of(i) for i in ids)]
            return sum(int(f.cursor().execute("SELECT count(*) FROM audit_log").fetchall()[0][0]) for f in files)

        left = entries - count()
        for i, chain in enumerate(ids):  # each collaboration's chain lives in its own file: its own transactions
            share = left // chains + (1 if i < left % chains else 0)
            for start in range(0, share, 1000):
                with room.store.of(chain).transaction() as cur:
                    for _ in range(min(1000, share - start)):
                        params = {"attempted": "query.overlap", "reason": "bench"}
                        room.audit.append(cur, chain, "brand", "refused", params)
        return count()
    finally:
        room.close()


def server_start(entries: int, repeat: int, warm_up: bool = True) -> tuple[int, float]:
    """(audit entries, median seconds `create_server` takes) over a data directory whose log holds `entries`."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        entries = build(data, entries)
        times = []
        for _ in range(repeat + warm_up):  # the first run warms the file cache
            done = subprocess.run([sys.executable, "-c", SERVE, str(data)], capture_output=True, text=True, check=True)
            times.append(float(done.stdout.strip().splitlines()[-1]))
        return entries, statistics.median(times[warm_up:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log-entries", default="", help="e.g. 1000,50000: time the server's start-up over each")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false", help="no unmeasured first run")
    args = parser.parse_args()
    starts = {}
    for n in (int(x) for x in args.log_entries.split(",") if x):
        entries, seconds = server_start(n, args.repeat, args.warm_up)
        starts[entries] = seconds
        print(f"server start-up over an audit log of {entries} entries: {seconds:.3f} s")
    with tempfile.TemporaryDirectory() as data:
        subprocess.run([str(BIN / "cleanroom"), "admin", "add-principal", "brand", "--data-dir", data], check=True)
        commands = {
            **COMMANDS,
            "cleanroom admin rotate-token (no server)": [
                str(BIN / "cleanroom"), "admin", "rotate-token", "brand", "--data-dir", data
            ],
        }  # fmt: skip
        with tempfile.TemporaryDirectory() as state:  # where the client would keep its state: left empty
            os.environ["CLEANROOM_STATE_DIR"] = state
            results = {
                name: median_seconds(command, args.repeat, args.warm_up, EXIT_STATUS.get(name, 0))
                for name, command in commands.items()
            }
    floor = next(iter(results.values()))
    print(f"{'command':45} {'seconds':>8} {'x floor':>8} {'of 1 s':>7}")
    for name, seconds in results.items():
        print(f"{name:45} {seconds:8.3f} {seconds / floor:8.2f} {seconds / LIMIT_S:7.0%}")
    if args.json:
        summary = {
            "seconds": results,
            "floor": floor,
            "limit": LIMIT_S,
            "server_start": starts,
            "warm_up": args.warm_up,
        }
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
