"""pandas to the wire: DataFrames as chunks of zstd-compressed Arrow IPC streams, keyed by row numbers."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pyarrow as pa

#: Target size of one chunk before compression.
CHUNK_BYTES = 2 * 1024 * 1024
_COMPRESSED = pa.ipc.IpcWriteOptions(compression="zstd")


def arrow_chunks(df: pd.DataFrame, target_bytes: int = CHUNK_BYTES) -> tuple[int, Iterator[bytes]]:
    """The number of chunks, and `df` as consecutive Arrow IPC streams of about `target_bytes` each.

    An empty frame still gives one chunk, so the upload (and its schema) commits.
    """
    table = pa.Table.from_pandas(df, preserve_index=False)
    rows = max(1, target_bytes // max(1, table.nbytes // max(1, table.num_rows)))
    starts = range(0, max(table.num_rows, 1), rows)

    def chunks() -> Iterator[bytes]:
        for start in starts:
            sink = pa.BufferOutputStream()
            part = table.slice(start, rows)
            with pa.ipc.new_stream(sink, part.schema, options=_COMPRESSED) as writer:
                writer.write_table(part)
            yield sink.getvalue().to_pybytes()

    return len(starts), chunks()
