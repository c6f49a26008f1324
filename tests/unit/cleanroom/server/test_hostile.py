"""Issue 13: the server survives hostile members and outsiders, over real gRPC with TLS on loopback.

Bounds here are stated with room for a loaded 2-core machine: each one is an order of magnitude away from what
the unprotected server did (gigabytes of memory, tens of seconds of waiting).
"""

from __future__ import annotations

import gc
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest

from cleanroom_client._proto import matching_pb2 as ma
from cleanroom_client._proto import matching_pb2_grpc as ma_grpc

#: The red team's bomb: 2^30 int64 zeros (8 GiB) compress with zstd to about 262 KB.
BOMB_ROWS = 2**30
#: Most the server's process may grow (peak RSS over RSS before) while refusing the bomb.
BOMB_RSS_BOUND = 256 * 2**20


def _bomb() -> bytes:
    zeros = np.zeros(BOMB_ROWS, dtype=np.int64)  # untouched calloc pages: no memory until written
    batch = pa.record_batch({"row_id": pa.array(zeros)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def test_a_zstd_bomb_is_refused_before_anything_is_allocated(stub_for, active):
    bomb = _bomb()
    assert len(bomb) < 300_000
    stub, md = stub_for(ma_grpc.MatchingServiceStub, "brand")
    request = ma.UploadTableRequest(parent=f"collaborations/{active}", table="users", arrow_ipc=bomb, last=True)
    gc.collect()
    before = _status_kib("VmRSS") * 1024
    Path("/proc/self/clear_refs").write_text("5")  # reset this process's peak RSS (the server runs in it)
    with pytest.raises(grpc.RpcError) as info:
        stub.UploadTable(iter([request]), metadata=md, timeout=60)
    peak = _status_kib("VmHWM") * 1024
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "once decompressed; send smaller chunks" in str(info.value.details())
    assert peak - before < BOMB_RSS_BOUND, f"the server grew by {(peak - before) / 2**20:.0f} MiB"
