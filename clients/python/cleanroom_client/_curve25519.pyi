# Types of the compiled extension built from _curve25519.c (see cleanroom_client.curve).
from collections.abc import Sequence

def hash_to_u_batch(msgs: Sequence[bytes], dst: bytes, path: str | None = None, /) -> tuple[bytes, list[int]]: ...

X25519_PATHS: tuple[str, ...]

def x25519_batch(key: bytes, points: bytes, path: str | None = None, /) -> bytes: ...

def on_curve_batch(points: bytes, path: str | None = None, /) -> bytes: ...
