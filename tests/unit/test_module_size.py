"""No hand-written module over 700 lines (issue 32): a module that grows past it is split by idea.

Generated code (the protobuf stubs under `cleanroom_client/_proto`) is left out; build output is not source.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 700
SOURCES = ("cleanroom", "clients/python/cleanroom_client")


def test_no_hand_written_module_is_over_700_lines():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for folder in SOURCES
        for pattern in ("*.py", "*.c", "*.h")
        for path in (ROOT / folder).rglob(pattern)
        if "_proto" not in path.parts and "build" not in path.parts
    }
    assert sizes, "no modules found: the paths above are wrong"
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
