"""The SDK's one compiled part: the native hash to curve (cleanroom_client/_curve25519.c).

Everything else is in pyproject.toml. The extension is optional: where no C compiler exists the build skips it
and `cleanroom_client.curve` uses its pure-Python path (`cleanroom_client.curve.NATIVE` says which is active).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cleanroom_client._curve25519",
            ["cleanroom_client/_curve25519.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
