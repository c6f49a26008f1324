from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from cleanroom.devtools.devpki import DevPki, make_dev_pki
from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.principals import Role
from cleanroom.server import ServerConfig, create_server
from cleanroom.server.app import RunningServer, TlsConfig
from cleanroom_client import CleanRoomClient, SerialExecutor

# The CLI (rich) fits its tables and messages to the terminal, and a test process may have none (pytest-xdist's
# workers never do): 80 columns would wrap what the CLI tests read. One width for every run, set before any test
# module builds the CLI's consoles.
os.environ["COLUMNS"] = "160"

PRINCIPALS = {
    "brand": Role.MEMBER,
    "platform": Role.MEMBER,
    "stranger": Role.MEMBER,  # a member of no collaboration in the tests
    "auditor": Role.AUDITOR,
    "outsider_auditor": Role.AUDITOR,  # an auditor assigned to nothing
}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_dev_pki(tmp_path_factory.mktemp("pki"), clients=("brand", "platform", "nobody"))


def start_server(data_dir: Path, pki: DevPki, mtls: bool = False, **kw: object) -> RunningServer:
    tls = TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes(), pki.ca.read_bytes() if mtls else None)
    return create_server(ServerConfig(data_dir=data_dir, tls=tls, **kw))  # type: ignore[arg-type]


@pytest.fixture
def server(tmp_path: Path, pki: DevPki) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "server", pki)
    yield running
    running.stop(None)


@pytest.fixture
def tokens(server: RunningServer) -> dict[str, str]:
    return {name: server.room.principals.add(name, role) for name, role in PRINCIPALS.items()}


@pytest.fixture
def member_env(
    server: RunningServer, tokens: dict[str, str], pki: DevPki, tmp_path: Path
) -> Callable[[str], dict[str, str]]:
    """The environment `cleanroom-client` reads for one principal of the test server (its own state directory)."""

    def env(name: str) -> dict[str, str]:
        return {
            "CLEANROOM_TARGET": f"localhost:{server.port}",
            "CLEANROOM_TOKEN": tokens[name],
            "CLEANROOM_CA": str(pki.ca),
            "CLEANROOM_STATE_DIR": str(tmp_path / f"state-{name}"),
            "COLUMNS": "200",
        }

    return env


@pytest.fixture
def make_client(server: RunningServer, tokens: dict[str, str], pki: DevPki, tmp_path: Path):
    clients: list[CleanRoomClient] = []

    def make(name: str, own_pool: bool = False) -> CleanRoomClient:
        """A client of member `name`, blinding in this process (or, with `own_pool`, in the client's own pool)."""
        client = CleanRoomClient(
            f"localhost:{server.port}",
            token=tokens[name],
            root_certificates=pki.ca,
            state_dir=tmp_path / f"state-{name}",
            executor=None if own_pool else SerialExecutor(),
            progress=False,
            chunk_rows=64,
        )
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def stub_for(server: RunningServer, tokens: dict[str, str], pki: DevPki):
    """A raw stub of a service over TLS, with the metadata of principal `name` (None: no credentials)."""
    channels: list[grpc.Channel] = []

    def make(cls: Callable[[grpc.Channel], object], name: str | None):
        channel = grpc.secure_channel(
            f"localhost:{server.port}", grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        )
        channels.append(channel)
        md = (("authorization", f"Bearer {tokens[name]}"),) if name else ()
        return cls(channel), md

    yield make
    for c in channels:
        c.close()


@pytest.fixture
def active(make_client, server: RunningServer) -> str:
    """An approved collaboration between `brand` and `platform`, audited by `auditor`; returns its id."""
    brand, platform = make_client("brand"), make_client("platform")
    collab = brand.create_collaboration(DEMO_POLICY, "test-collab")
    brand.approve_policy(collab.id)
    platform.approve_policy(collab.id)
    server.room.principals.assign_auditor("auditor", collab.id)
    return collab.id


@pytest.fixture
def start(pki: DevPki):
    """Start extra servers with options (`start(data_dir, mtls=True, streams_per_principal=2, ...)`)."""
    running: list[RunningServer] = []

    def make(data_dir: Path, mtls: bool = False, **kw: object) -> RunningServer:
        server = start_server(data_dir, pki, mtls, **kw)
        running.append(server)
        return server

    yield make
    for s in running:
        s.stop(None)


def kill_the_fork_server() -> None:
    """SIGKILL multiprocessing's fork server of this process; returns once it is dead."""
    import os
    import signal
    import time
    from multiprocessing import forkserver

    pid: int = getattr(forkserver._forkserver, "_forkserver_pid")  # noqa: B009 - private, and untyped in typeshed
    os.kill(pid, signal.SIGKILL)
    while True:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError):  # already reaped
            return
        time.sleep(0.01)


@pytest.fixture
def fork_server_killer() -> Callable[[], None]:
    """`kill_the_fork_server`: what kills the blinding pool's fork server (process-wide) in failure tests."""
    return kill_the_fork_server
