"""The SDK's one compiled part: the native hash to curve and batched X25519 (cleanroom_client/_curve25519.c).

The AVX-512 IFMA ladder is in cleanroom_client/_x25519_ifma.c, compiled into the same extension.
Everything else is in pyproject.toml. The extension is optional: where no C compiler exists the build skips it
and `cleanroom_client.curve` uses its pure-Python hash to curve and `cryptography`'s X25519
(`cleanroom_client.curve.NATIVE` and `X25519_NATIVE` say which is active). Plain -O3 for any CPU of the
architecture: the IFMA functions carry their own target attribute and run only where the CPU supports them. The
extension records the SHA-256 of the C sources it was built from, which curve.py checks against the sources beside
it.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCES = ["cleanroom_client/_curve25519.c", "cleanroom_client/_x25519_ifma.c"]
#: Included by _curve25519.c (_h2c_ifma.h by _x25519_ifma.c): a change to them rebuilds the extension and marks an old
#: build.
HEADERS = [
    "cleanroom_client/_sha512.h",
    "cleanroom_client/_fe25519.h",
    "cleanroom_client/_elligator2.h",
    "cleanroom_client/_sha512_mb.h",
    "cleanroom_client/_h2c_ifma.h",
]


def source_sha256() -> str:
    """SHA-256 over the C sources and headers in order (native.source_sha256 computes the same beside the module)."""
    digest = hashlib.sha256()
    for source in SOURCES + HEADERS:
        digest.update((Path(__file__).parent / source).read_bytes())
    return digest.hexdigest()


setup(
    ext_modules=[
        Extension(
            "cleanroom_client._curve25519",
            SOURCES,
            depends=HEADERS,
            extra_compile_args=["-O3"],
            # The module's SOURCE_SHA256: curve.py does not use an extension built from other sources (stale).
            define_macros=[("CLEANROOM_SOURCE_SHA256", f'"{source_sha256()}"')],
            optional=True,
        )
    ]
)
