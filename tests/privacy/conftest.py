"""Fixtures of the privacy suite (the builders are in privacy_data.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from privacy_data import MemberData, build

from cleanroom.privacy.noise import DiscreteLaplace
from cleanroom.room import Room


@pytest.fixture
def rooms(tmp_path: Path) -> Iterator[Callable[..., Room]]:
    """Build rooms in fresh directories; all closed at the end."""
    opened: list[Room] = []
    counter = iter(range(10**6))

    def make(policy: str, data: Mapping[str, MemberData], noise: Any = None) -> Room:
        room = build(
            tmp_path / f"room-{next(counter)}", policy, data, noise if noise is not None else DiscreteLaplace()
        )
        opened.append(room)
        return room

    yield make
    for r in opened:
        r.close()
