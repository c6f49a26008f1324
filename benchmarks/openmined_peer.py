"""OpenMined's PSI (`openmined-psi`) on the same sets as bench_psi.py: the peer the PSI benchmark compares against.

Runs in a venv of its own (`make bench-openmined-venv`): openmined-psi pins a protobuf other than ours. Two processes,
one per party, on both cores as a deployment would have them; messages cross as serialized protobuf over pipes (no
network, no TLS: in OpenMined's favour). Exact intersection (DataStructure.RAW, reveal_intersection=True), the
closest to what Cleanroom computes. Prints one JSON object: seconds, the CPU seconds of both parties (the two
processes' user and system time, for a comparison a shared machine's load barely moves), the intersection size and
the bytes each party sent.

Usage: benchmarks/.venv-openmined/bin/python benchmarks/openmined_peer.py N
"""

import json
import multiprocessing
import resource
import sys
import threading
import time

import private_set_intersection.python as psi  # type: ignore[import-not-found]


def _sets(n: int) -> tuple[list[str], list[str]]:
    half = n // 2
    return [f"user{j}@example.com" for j in range(n)], [f"user{j}@example.com" for j in range(half, half + n)]


def _server(n: int, conn) -> None:  # type: ignore[no-untyped-def]
    """The party that answers: its set goes out blinded once, the client's request comes back blinded again."""
    _, items = _sets(n)
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, n, items, psi.DataStructure.RAW).SerializeToString()
    conn.send_bytes(setup)
    request = psi.Request()
    request.ParseFromString(conn.recv_bytes())
    conn.send_bytes(server.ProcessRequest(request).SerializeToString())


def main() -> int:
    """Run both parties and print the figures."""
    n = int(sys.argv[1])
    client_items, _ = _sets(n)
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_server, args=(n, there))
    start = time.perf_counter()
    proc.start()
    client = psi.client.CreateWithNewKey(True)
    request = client.CreateRequest(client_items).SerializeToString()
    sender = threading.Thread(target=here.send_bytes, args=(request,))  # pipes are small: send while receiving
    sender.start()
    setup_bytes = here.recv_bytes()
    sender.join()
    response_bytes = here.recv_bytes()
    setup, response = psi.ServerSetup(), psi.Response()
    setup.ParseFromString(setup_bytes)
    response.ParseFromString(response_bytes)
    intersection = client.GetIntersection(setup, response)
    seconds = time.perf_counter() - start
    proc.join()
    cpu = sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "intersection": len(intersection),
                "client_bytes_sent": len(request),
                "server_bytes_sent": len(setup_bytes) + len(response_bytes),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
