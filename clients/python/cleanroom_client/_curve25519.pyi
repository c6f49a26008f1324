# Types of the compiled extension built from _curve25519.c (see cleanroom_client.curve).
from collections.abc import Sequence

def hash_to_u_batch(
    msgs: Sequence[bytes], dst: bytes, path: str | None = None, /
) -> tuple[bytes, list[tuple[int, bytes]]]: ...

X25519_PATHS: tuple[str, ...]
#: SHA-256 of the C sources the module was built from (curve.py refuses a build from other sources).
SOURCE_SHA256: str

def x25519_batch(key: bytes, points: bytes, path: str | None = None, /) -> bytes: ...
def on_curve_batch(points: bytes, path: str | None = None, /) -> bytes: ...
def sha512_batch(msgs: Sequence[bytes], path: str | None = None, /) -> bytes: ...
