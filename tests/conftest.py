from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cleanroom_client import CleanRoomClient, SerialExecutor

from cleanroom.server import ServerConfig, create_server
from cleanroom.server.app import RunningServer
from cleanroom.synthetic import DEMO_POLICY


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = create_server(ServerConfig(data_dir=tmp_path / "server"))
    yield running
    running.stop(None)


@pytest.fixture
def make_client(server: RunningServer, tmp_path: Path):
    clients: list[CleanRoomClient] = []

    def make(principal: str) -> CleanRoomClient:
        client = CleanRoomClient(
            f"127.0.0.1:{server.port}",
            principal=principal,
            state_dir=tmp_path / f"state-{principal}",
            executor=SerialExecutor(),
            progress=False,
            chunk_rows=64,
        )
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def active(make_client) -> str:
    """An approved collaboration between `brand` and `platform`; returns its id."""
    brand, platform = make_client("brand"), make_client("platform")
    collab = brand.create_collaboration(DEMO_POLICY, "test-collab")
    brand.approve_policy(collab.id)
    platform.approve_policy(collab.id)
    return collab.id
