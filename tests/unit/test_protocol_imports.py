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
    # POINT_SIZE is defined in `sizes` (which imports nothing, for the blinding workers) and re-exported by protocol.
    homes = {"POINT_SIZE": "sizes.py"}
    for name in ("POINT_SIZE", "MAX_MESSAGE_BYTES", "ID_TYPE_CODES", "ATTRIBUTION_MODELS", "DEFAULT_HALF_LIFE_DAYS"):
        definitions = [
            str(path.relative_to(ROOT))
            for folder in ("cleanroom", "clients")
            for path in (ROOT / folder).rglob("*.py")
            if ".venv" not in path.parts and re.search(rf"^{name}\b[^=]*=", path.read_text(), re.M)
        ]
        assert definitions == [f"clients/python/cleanroom_client/{homes.get(name, 'protocol.py')}"], (name, definitions)
    from cleanroom_client import protocol, sizes

    assert protocol.POINT_SIZE is sizes.POINT_SIZE


def _hand_written() -> list[Path]:
    return [
        path
        for folder in ("cleanroom", "clients")
        for path in (ROOT / folder).rglob("*.py")
        if ".venv" not in path.parts and "_proto" not in path.parts
    ]


def test_names_of_the_contract_are_not_retyped():
    """Attribution models come from the generated enum, abilities and query types from the policy's enums."""
    retyped = {
        r"ATTRIBUTION_MODEL_[A-Z_]+": "cleanroom_client.protocol.ATTRIBUTION_MODELS",
        r"\bhalf_life_days\b[^=\n]*=\s*7": "cleanroom_client.protocol.DEFAULT_HALF_LIFE_DAYS",
        r"[\"'](receive_results|receive_audiences|contribute)[\"']": "cleanroom_client.policy.Ability",
    }
    for pattern, owner in retyped.items():
        offenders = [
            str(path.relative_to(ROOT))
            for path in _hand_written()
            if path.name not in ("protocol.py", "policy.py") and re.search(pattern, path.read_text())
        ]
        assert offenders == [], (owner, offenders)
