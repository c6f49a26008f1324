"""The generated code is imported through the public `cleanroom_client.protocol`, never by its private path."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "clients" / "python" / "cleanroom_client"
PRIVATE = re.compile(r"^\s*(from|import)\s+cleanroom_client\._proto\b", re.M)


def test_no_module_outside_the_sdk_imports_the_private_stubs():
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("cleanroom", "tests", "benchmarks", "scripts", "clients")
        for path in (ROOT / folder).rglob("*.py")
        if not path.is_relative_to(SDK) and ".venv" not in path.parts and PRIVATE.search(path.read_text())
    ]
    # scripts/gen_protos.py writes the private package; it names it as a path, never imports it
    assert offenders == []


def test_the_protocol_constants_have_one_definition():
    for name in ("POINT_SIZE", "MAX_MESSAGE_BYTES", "ID_TYPE_CODES"):
        definitions = [
            str(path.relative_to(ROOT))
            for folder in ("cleanroom", "clients")
            for path in (ROOT / folder).rglob("*.py")
            if ".venv" not in path.parts and re.search(rf"^{name}\s*=", path.read_text(), re.M)
        ]
        assert definitions == ["clients/python/cleanroom_client/protocol.py"], (name, definitions)
