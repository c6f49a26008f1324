"""A module-scoped server with brand, platform and auditor principals, and matched collaborations on demand."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cleanroom.devtools.devpki import make_dev_pki
from cleanroom.devtools.synthetic import SyntheticData
from cleanroom.principals import Role
from cleanroom.server import ServerConfig, create_server
from cleanroom.server.app import RunningServer, TlsConfig
from cleanroom.server.rates import Rate
from cleanroom_client import CleanRoomClient, SerialExecutor

#: The room server's refused calls: the default burst, refilled twenty times faster than the default, so a test
#: that uses them up (test_queries' fifty parallel queries) waits one second for them to refill, not twenty-one.
#: The rules are the server's own (`ServerConfig.refusal_rate`); only the clock runs faster.
REFUSAL_RATE = Rate(burst=20, per_second=20.0)


class Room:
    def __init__(self, server: RunningServer, tokens: dict[str, str], pki, root: Path, refusal_rate: Rate) -> None:
        self.server, self.tokens, self.pki, self.root = server, tokens, pki, root
        #: The rate the server was started with (what a test waits on after using up its refused calls).
        self.refusal_rate = refusal_rate
        self.clients: dict[str, CleanRoomClient] = {}

    def client(self, name: str) -> CleanRoomClient:
        if name not in self.clients:
            self.clients[name] = CleanRoomClient(
                f"localhost:{self.server.port}",
                token=self.tokens[name],
                root_certificates=self.pki.ca,
                state_dir=self.root / name,
                executor=SerialExecutor(),
                progress=False,
                chunk_rows=2048,
            )
        return self.clients[name]

    def cli_env(self, name: str, state_dir: Path) -> dict[str, str]:
        """The environment `cleanroom-client` reads to act as `name` on this room's server."""
        return {
            "CLEANROOM_TARGET": f"localhost:{self.server.port}",
            "CLEANROOM_TOKEN": self.tokens[name],
            "CLEANROOM_CA": str(self.pki.ca),
            "CLEANROOM_STATE_DIR": str(state_dir),
            "COLUMNS": "200",
        }

    def match_frames(
        self,
        collab_id: str,
        policy: str,
        brand: dict[str, Any],
        platform: dict[str, Any],
    ) -> str:
        """Create, approve and match a collaboration with the given `match()` keyword arguments per member."""
        b, p = self.client("brand"), self.client("platform")
        c = b.create_collaboration(policy, collab_id)
        b.approve_policy(c.id)
        p.approve_policy(c.id)
        self.server.room.principals.assign_auditor("auditor", c.id)
        with ThreadPoolExecutor(2) as pool:
            jobs = [
                pool.submit(b.match, c.id, wait_timeout=120, **brand),
                pool.submit(p.match, c.id, wait_timeout=120, **platform),
            ]
            for j in jobs:
                j.result()
        return c.id

    def matched(self, collab_id: str, policy: str, data: SyntheticData) -> str:
        """Match the synthetic data's brand and platform users (with stage history) under `policy`."""
        return self.match_frames(
            collab_id,
            policy,
            brand={
                "users": data.brand_users,
                "key": "customer_id",
                "identifiers": {"email": "email", "phone": "mobile"},
                "attributes": ["tier"],
            },
            platform={
                "users": data.platform_users,
                "key": "user_id",
                "identifiers": {"email": "email", "phone": "phone"},
                "attributes": ["age_band", "stage_4a"],
                "events": {"stage_history": data.platform_stage_history},
            },
        )


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("analytics")
    pki = make_dev_pki(root / "pki")
    tls = TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes())
    server = create_server(ServerConfig(data_dir=root / "server", tls=tls, refusal_rate=REFUSAL_RATE))
    tokens = {
        n: server.room.principals.add(n, r)
        for n, r in (("brand", Role.MEMBER), ("platform", Role.MEMBER), ("auditor", Role.AUDITOR))
    }
    r = Room(server, tokens, pki, root, REFUSAL_RATE)
    yield r
    for c in r.clients.values():
        c.close()
    server.stop(None)
