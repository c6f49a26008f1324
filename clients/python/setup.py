"""The SDK's one compiled part: the native hash to curve and batched X25519 (cleanroom_client/_curve25519.c).

The AVX-512 IFMA ladder is in cleanroom_client/_x25519_ifma.c, compiled into the same extension.
Everything else is in pyproject.toml. The extension is optional: where no C compiler exists the build skips it
and `cleanroom_client.curve` uses its pure-Python hash to curve and `cryptography`'s X25519
(`cleanroom_client.curve.NATIVE` and `X25519_NATIVE` say which is active). Plain -O3 for any CPU of the
architecture: the IFMA functions carry their own target attribute and run only where the CPU supports them.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cleanroom_client._curve25519",
            ["cleanroom_client/_curve25519.c", "cleanroom_client/_x25519_ifma.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
