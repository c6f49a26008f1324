"""The server's one compiled part: attribution's credits and contribution bound (cleanroom/analytics/_attribution*).

Everything else is in pyproject.toml. The extension is optional: where no C compiler exists the build skips it and
`cleanroom.analytics` bounds and credits in numpy with the same results (`credit_sums.NATIVE` says which runs).
-ffp-contract=off keeps every float operation the one written (no fused multiply-add), as numpy computes them.
The extension records the SHA-256 of its sources and header, which `cleanroom.analytics.native` checks against the
files beside it.
"""

from pathlib import Path

from setuptools import Extension, setup

SOURCES = ["cleanroom/analytics/_attribution.c", "cleanroom/analytics/_attribution_bound.c"]
#: Included by both: a change to it rebuilds the extension and marks an old build.
HEADERS = ["cleanroom/analytics/_attribution.h"]

if __name__ == "__main__":
    import hashlib

    # over the sources, then the headers, in order (cleanroom.analytics.native.SOURCES names the same files)
    files = b"".join((Path(__file__).parent / name).read_bytes() for name in SOURCES + HEADERS)
    digest = hashlib.sha256(files).hexdigest()
    setup(
        ext_modules=[
            Extension(
                "cleanroom.analytics._attribution",
                SOURCES,
                depends=HEADERS,
                extra_compile_args=["-O3", "-ffp-contract=off", "-pthread"],
                extra_link_args=["-pthread"],
                define_macros=[("CLEANROOM_SOURCE_SHA256", f'"{digest}"')],
                optional=True,
            )
        ]
    )
