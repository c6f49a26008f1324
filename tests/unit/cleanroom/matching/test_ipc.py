"""Declared sizes of Arrow IPC streams, read from their metadata alone."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cleanroom.matching.ipc import IpcLayoutError, declared_size


def _stream(table: pa.Table, compression: str | None) -> bytes:
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=3000)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("compression", [None, "zstd", "lz4"])
def test_the_declared_size_is_what_arrow_decodes(compression):
    n = 10_000
    table = pa.table(
        {
            "row_id": np.arange(n),
            "text": [f"value {i}" for i in range(n)],
            "tier": pa.array(["gold", "silver"] * (n // 2)).dictionary_encode(),
        }
    )
    data = _stream(table, compression)
    declared = declared_size(data)
    decoded = pa.ipc.open_stream(data).read_all()
    assert declared.max_rows == 3000
    # what Arrow allocates for the batches' buffers (dictionaries included), padding aside
    assert abs(declared.decoded_bytes - sum(b.nbytes for b in decoded.to_batches())) < 1024


@pytest.mark.parametrize("junk", [b"not arrow at all", b"\xff\xff\xff\xff\x10\x00\x00\x00" + b"\x00" * 16])
def test_junk_is_a_layout_error(junk):
    with pytest.raises(IpcLayoutError):
        declared_size(junk)
