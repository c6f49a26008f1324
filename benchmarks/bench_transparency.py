"""What the transparency log costs on a long chain: receipts, heads and incremental verification at 100,000 entries.

Builds a chain of `--entries` signed entries in a real data directory (written in bulk, as the server would have
appended them), then measures, in one run:
- the server's first tree build for that chain (once per server run, when the chain is first asked for);
- one receipt: hashes in its inclusion proof (against log2 n) and the time to build it with a signed head;
- a member's incremental check after `--new` more entries: fetch a consistency proof and verify it against the head
  it remembered (what the SDK does at each receipt), against the limit of one second;
- an auditor's offline check of an export: full verification, and incremental with a remembered head.

Usage: python benchmarks/bench_transparency.py [--entries 100000] [--new 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from cleanroom.audit.chain import GENESIS, AuditEntry, SignedHead, canonical_json, verify_export
from cleanroom.room import Room
from cleanroom_client import merkle

COLLAB = "bench-collab"
LIMIT_S = 1.0


def build_chain(room: Room, n: int) -> None:
    """Write `n` signed entries of one chain in bulk (the same hashes and signatures `AuditLog.append` makes)."""
    key = room.audit._key
    start = datetime(2026, 12, 1, tzinfo=UTC)
    rows = []
    previous = GENESIS
    for i in range(1, n + 1):
        body = AuditEntry(
            collaboration=COLLAB,
            sequence=i,
            time=(start + timedelta(seconds=i)).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            principal="brand" if i % 2 else "platform",
            action="query.overlap",
            parameters={"dimensions": ["brand.tier"], "epsilon": 0.01},
            epsilon=0.0,
            response_sha256="",
            previous_hash=previous,
        )
        digest = body.compute_hash()
        signature = key.sign(bytes.fromhex(digest))
        rows.append(
            (
                COLLAB,
                i,
                body.time,
                body.principal,
                body.action,
                canonical_json(dict(body.parameters)),
                0.0,
                "",
                previous,
                digest,
                signature,
                0.0,
            )
        )
        previous = digest
    frame = pd.DataFrame(
        rows,
        columns=[
            "collab",
            "seq",
            "time",
            "principal",
            "action",
            "params_json",
            "epsilon",
            "response_sha256",
            "prev_hash",
            "hash",
            "signature",
            "delta",
        ],
    )
    with room.store.of(COLLAB).transaction() as cur:
        cur.register("bulk", frame)
        cur.execute("INSERT INTO audit_log SELECT * FROM bulk")
        cur.unregister("bulk")


def export_text(room: Room) -> str:
    head = room.audit.head(COLLAB)
    assert head is not None
    tree = room.trees.head(COLLAB, size=head.sequence)
    lines = [e.to_json() for e in room.audit.entries(COLLAB)]
    return "\n".join([*lines, SignedHead(head.collaboration, head.sequence, head.hash, head.signature, tree).to_json()])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out: dict[str, float | int] = {"entries": args.entries, "new": args.new}
    with tempfile.TemporaryDirectory() as tmp:
        room = Room.open(Path(tmp) / "data")
        room.store.create(COLLAB)  # the collaboration's own file, as creating one makes
        t = time.perf_counter()
        build_chain(room, args.entries)
        out["write_chain_s"] = time.perf_counter() - t

        t = time.perf_counter()
        remembered = room.trees.head(COLLAB)
        out["first_tree_build_s"] = time.perf_counter() - t

        last = next(iter(room.audit.entries(COLLAB, after=args.entries - 1)))
        t = time.perf_counter()
        receipt = room.trees.receipts([last])[0]
        out["receipt_ms"] = (time.perf_counter() - t) * 1000
        out["receipt_proof_hashes"] = len(receipt.proof)
        out["log2_n"] = math.ceil(math.log2(args.entries))

        # a member's incremental check: new entries through the real append path, then one consistency proof
        t = time.perf_counter()
        for i in range(args.new):
            room.audit.record(COLLAB, "brand", "query.overlap", {"n": i})
        out["append_new_s"] = time.perf_counter() - t
        t = time.perf_counter()
        head = room.trees.head(COLLAB)
        proof = room.trees.consistency(COLLAB, remembered.size, head.size)
        merkle.verify_consistency(remembered.size, head.size, remembered.root, head.root, proof)
        out["member_incremental_check_ms"] = (time.perf_counter() - t) * 1000
        out["member_incremental_of_limit"] = out["member_incremental_check_ms"] / 1000 / LIMIT_S
        out["consistency_proof_hashes"] = len(proof)

        text = export_text(room)
        key = room.audit.public_key
        t = time.perf_counter()
        full = verify_export(text, key)
        out["auditor_full_verify_s"] = time.perf_counter() - t
        t = time.perf_counter()
        incremental = verify_export(text, key, remembered)
        out["auditor_incremental_verify_s"] = time.perf_counter() - t
        if not (full.valid and incremental.valid):
            raise AssertionError(f"the benchmark's export does not verify: {full}, {incremental}")
        room.close()
    for k, v in out.items():
        print(f"{k:32} {v:.4g}" if isinstance(v, float) else f"{k:32} {v}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
