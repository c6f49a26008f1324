"""Byte sizes fixed by matching protocol v1 (protos/PROTOCOL.md section 2), in a module that imports nothing.

`cleanroom_client.protocol` re-exports them with the rest of the wire contract; the blinding workers read them from
here, so that a worker process does not load gRPC and the generated stubs (a quarter of its start-up) for a number.
"""

from __future__ import annotations

from typing import Final

#: Bytes of one blinded point on the wire (an X25519 u-coordinate, PROTOCOL.md section 2).
POINT_SIZE: Final = 32
