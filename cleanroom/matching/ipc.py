"""What an Arrow IPC stream declares it will take once decoded, read from its metadata before anything is decoded.

A compressed IPC body (zstd or lz4) prefixes every buffer with its uncompressed length, and Arrow allocates that
much before it decompresses: a few hundred KB of zstd can declare gigabytes. `declared_size` walks the stream's
messages with pyarrow's own `MessageReader` (which hands out each message's flatbuffer metadata and its body
without decoding them), reads the buffer table of every record batch and dictionary batch from the metadata
(Arrow's `Message.fbs`), and adds up the declared lengths. The caller refuses the stream when that sum, or a
declared row count, is over its limit, so nothing is ever allocated for a bomb.

Guarantee: for any bytes, `declared_size` either returns the exact number of bytes Arrow will allocate for the
buffers of the stream's batches (and the largest row count any of them declares) or raises `IpcLayoutError`; it
reads only the metadata and the first 8 bytes of each buffer, so its own memory is bounded by the input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pyarrow as pa

#: `MessageHeader` union tags (Arrow `Message.fbs`).
_DICTIONARY_BATCH = 2
_RECORD_BATCH = 3
#: A compressed buffer whose prefix is -1 holds its bytes uncompressed after the prefix.
_UNCOMPRESSED = -1
_PREFIX = 8


class IpcLayoutError(ValueError):
    """The stream's metadata is not a well-formed Arrow IPC layout."""


@dataclass(frozen=True)
class DeclaredSize:
    """Totals a stream declares: bytes of all batch buffers once decompressed, and the most rows of any node."""

    decoded_bytes: int
    max_rows: int


class _Table:
    """A flatbuffer table inside `buf` at `pos`: just enough to read scalar fields, sub-tables and struct vectors."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        vtable = pos - self._i32(pos)
        self._vtable = vtable
        self._vsize = self._u16(vtable)

    def _u16(self, at: int) -> int:
        return int(self._unpack("<H", at))

    def _i32(self, at: int) -> int:
        return int(self._unpack("<i", at))

    def _unpack(self, fmt: str, at: int) -> int:
        size = struct.calcsize(fmt)
        if at < 0 or at + size > len(self.buf):
            raise IpcLayoutError("IPC metadata points outside itself")
        return int(struct.unpack_from(fmt, self.buf, at)[0])

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot + 2 > self._vsize:
            return None
        offset = self._u16(self._vtable + slot)
        return self.pos + offset if offset else None

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        at = self._field(index)
        return default if at is None else self._unpack(fmt, at)

    def table(self, index: int) -> _Table | None:
        at = self._field(index)
        return None if at is None else _Table(self.buf, at + self._unpack("<I", at))

    def structs(self, index: int, fmt: str) -> list[tuple[int, ...]]:
        at = self._field(index)
        if at is None:
            return []
        start = at + self._unpack("<I", at)
        count = self._unpack("<I", start)
        size = struct.calcsize(fmt)
        if start + 4 + count * size > len(self.buf):
            raise IpcLayoutError("IPC metadata vector runs past its end")
        return [struct.unpack_from(fmt, self.buf, start + 4 + i * size) for i in range(count)]


def _batch_size(batch: _Table, body: pa.Buffer) -> tuple[int, int]:
    """(bytes once decoded, most rows of any node) of one RecordBatch table whose body is `body`."""
    rows = max([batch.scalar(0, "<q")] + [n[0] for n in batch.structs(1, "<qq")])
    compressed = batch.table(3) is not None
    total = 0
    for offset, length in batch.structs(2, "<qq"):
        if offset < 0 or length < 0 or offset + length > body.size:
            raise IpcLayoutError("a buffer lies outside the message body")
        if not compressed or length == 0:
            total += length
            continue
        if length < _PREFIX:
            raise IpcLayoutError("a compressed buffer is shorter than its length prefix")
        (declared,) = struct.unpack("<q", body.slice(offset, _PREFIX).to_pybytes())
        if declared == _UNCOMPRESSED:
            total += length - _PREFIX
        elif declared < 0:
            raise IpcLayoutError("a compressed buffer declares a negative length")
        else:
            total += declared
    return total, rows


def declared_size(data: bytes) -> DeclaredSize:
    """Bytes the batches of the IPC stream `data` declare once decompressed, and their largest row count."""
    total, rows = 0, 0
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(data))
        while True:
            try:
                message = reader.read_next_message()
            except StopIteration:
                break
            meta = message.metadata.to_pybytes()
            if len(meta) < 4:
                raise IpcLayoutError("empty IPC metadata")
            root = _Table(meta, struct.unpack_from("<I", meta, 0)[0])
            kind = root.scalar(1, "<B")
            header = root.table(2)
            if header is None or kind not in (_RECORD_BATCH, _DICTIONARY_BATCH):
                continue
            batch = header if kind == _RECORD_BATCH else header.table(1)
            if batch is None:
                raise IpcLayoutError("a dictionary batch without data")
            size, n = _batch_size(batch, message.body)
            total += size
            rows = max(rows, n)
    except (pa.ArrowInvalid, OSError, struct.error) as exc:
        raise IpcLayoutError(str(exc)) from None
    return DeclaredSize(total, rows)
