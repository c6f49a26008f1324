"""How fast the command lines start: `cleanroom admin --help`, `cleanroom-client --help`, `import cleanroom.room`,
and a whole operator command with no server running (`cleanroom admin rotate-token`: opens the data directory,
serves AdminService on a private socket, calls it).

Each command runs as a fresh process several times; the median wall time is compared with the floor every one of
them pays (a Python process importing grpc and pandas, which the SDK needs) and with a one-second limit. Heavy
libraries (torch, opacus, matplotlib, ray) load only where they are used, so none of these should pay for them.

Usage: python benchmarks/bench_startup.py [--repeat 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
LIMIT_S = 1.0
COMMANDS = {
    "floor: python -c 'import grpc, pandas'": [sys.executable, "-c", "import grpc, pandas"],
    "cleanroom admin --help": [str(BIN / "cleanroom"), "admin", "--help"],
    "cleanroom-client --help": [str(BIN / "cleanroom-client"), "--help"],
    "python -c 'import cleanroom.room'": [sys.executable, "-c", "import cleanroom.room"],
}


def median_seconds(command: list[str], repeat: int) -> float:
    """The median wall time of `repeat` runs of `command` (one unmeasured run first warms the file cache)."""
    subprocess.run(command, capture_output=True, check=True)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        subprocess.run([str(BIN / "cleanroom"), "admin", "add-principal", "brand", "--data-dir", data], check=True)
        commands = {
            **COMMANDS,
            "cleanroom admin rotate-token (no server)": [
                str(BIN / "cleanroom"), "admin", "rotate-token", "brand", "--data-dir", data
            ],
        }  # fmt: skip
        results = {name: median_seconds(command, args.repeat) for name, command in commands.items()}
    floor = next(iter(results.values()))
    print(f"{'command':45} {'seconds':>8} {'x floor':>8} {'of 1 s':>7}")
    for name, seconds in results.items():
        print(f"{name:45} {seconds:8.3f} {seconds / floor:8.2f} {seconds / LIMIT_S:7.0%}")
    if args.json:
        args.json.write_text(json.dumps({"seconds": results, "floor": floor, "limit": LIMIT_S}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
