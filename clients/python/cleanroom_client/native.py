"""Whether a compiled extension may be used: built from the C sources beside the module that loads it.

The SDK's `_curve25519` and the server's `_attribution` each record the SHA-256 of the sources they were built
from (their setup.py passes it in as `CLEANROOM_SOURCE_SHA256`). An editable install updated without rebuilding
leaves an old extension beside new sources: its functions may not match the caller's, or may lack a fix, so the
caller uses its pure-Python or numpy path instead and says how to rebuild.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType


def source_sha256(directory: Path, sources: Sequence[str]) -> str | None:
    """SHA-256 over the files in order (as setup.py computes it), None when one is missing (an installed wheel)."""
    digest = hashlib.sha256()
    for name in sources:
        try:
            digest.update((directory / name).read_bytes())
        except OSError:
            return None
    return digest.hexdigest()


def stale_reason(module: ModuleType, required: str, sources: Sequence[str], beside: str) -> str | None:
    """Why `module` must not be used, or None.

    `required`: a function the caller needs (an older build lacks it); `sources`: the C files in setup.py's order,
    in the directory of the file `beside` (the caller's `__file__`).
    """
    if not hasattr(module, required):
        return "was built from an older source"
    expected = source_sha256(Path(beside).parent, sources)
    if expected is not None and getattr(module, "SOURCE_SHA256", None) != expected:
        return "was built from other sources than the C files beside it"
    return None
