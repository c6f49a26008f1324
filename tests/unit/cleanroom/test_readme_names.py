"""Every principal the README tells an operator to add is one the server accepts (a hyphenated name was refused)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cleanroom.principals import Role
from cleanroom.room import Room

README = Path(__file__).resolve().parents[3] / "README.md"
ADDS = sorted(set(re.findall(r"cleanroom admin add-principal (\S+) --role (\w+)", README.read_text())))


def test_the_readme_adds_principals():
    assert len(ADDS) >= 3


@pytest.mark.parametrize(("name", "role"), ADDS)
def test_each_readme_principal_is_accepted(tmp_path, name, role):
    room = Room.open(tmp_path)
    try:
        assert room.principals.add(name, Role(role))
    finally:
        room.close()
