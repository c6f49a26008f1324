"""Private key files: written atomically with mode 0600, refused when others can read them.

Used for the member's blinding key and the server's audit signing key. A key file that others can read is treated
as leaked rather than silently tightened: the caller has to look at it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_private_file(path: Path) -> bytes:
    """The bytes of `path`; PermissionError when its mode lets group or others read it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    return path.read_bytes()


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600, durably and atomically (a crash leaves the old file or none)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
