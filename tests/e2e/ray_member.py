"""One member's match as its own driver process, on a Ray cluster or the local process pool.

Usage: ray_member.py MEMBER COLLAB STATE_DIR OUT DATA_DIR ENGINE CHUNK_ROWS SIDE_JSON
SIDE_JSON: {"key": ..., "identifiers": {...}, "attributes": [...]}, how the member's users table is matched.
ENGINE: "pool" (the local process pool), "ray-local" (a local Ray cluster started by `ray.init(num_cpus=2)`) or
"ray:ADDRESS" (RayEngine joining that cluster; it first waits until the cluster has 2 CPUs, i.e. its worker node
joined). The engine starts before any gRPC channel exists. Tables are read from DATA_DIR/<member>/ by the engine.
Connection settings come from CLEANROOM_TARGET, CLEANROOM_TOKEN and CLEANROOM_CA.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from cleanroom_client import CleanRoomClient, ProcessPoolChunkExecutor
from cleanroom_client.blinding import ChunkExecutor


def engine_for(spec: str) -> ChunkExecutor:
    if spec == "pool":
        return ProcessPoolChunkExecutor(2)
    from cleanroom_client.ray_engine import RayEngine

    if spec == "ray-local":
        return RayEngine(address=None, num_cpus=2)

    engine = RayEngine(address=spec.removeprefix("ray:"), max_in_flight=2)
    import ray

    deadline = time.monotonic() + 120
    while ray.cluster_resources().get("CPU", 0) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster never reached 2 CPUs: {ray.cluster_resources()}")
        time.sleep(0.5)
    return engine


def main() -> None:
    member, collab, state_dir, out, data_dir, spec, chunk_rows, side_json = sys.argv[1:9]
    side = json.loads(side_json)
    tables = Path(data_dir) / member
    events: dict[str, str | Path] = {"conversions": tables / "conversions.parquet"} if member == "brand" else {}
    engine = engine_for(spec)
    try:
        with CleanRoomClient(state_dir=state_dir, progress=False, chunk_rows=int(chunk_rows)) as client:
            summary = client.match(
                collab,
                users=tables / "users",
                key=side["key"],
                identifiers=side["identifiers"],
                attributes=side["attributes"],
                events=events,
                wait_timeout=300,
                engine=engine,
            )
    finally:
        engine.close()
    Path(out).write_text(json.dumps(summary.to_dict()))


if __name__ == "__main__":
    main()
