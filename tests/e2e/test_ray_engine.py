"""Blinding on a Ray cluster gives exactly the tags and the match of the local process pool, on the same data.

Real parts: the server over gRPC with TLS (tests/conftest.py), real Ray clusters (one started in this process with
`ray.init(num_cpus=2)`; one made of separate processes, `ray start --head` plus a worker node), tables read from
Parquet by Ray Data. Each run of a collaboration reuses the blinding keys of the process-pool run (copied into its
state directory), so the server must end up with the same 8-byte tag on every member row and the same pairs. The
process-pool run is the same for both tests, so it runs once per module (on a server of its own) and each test
starts from its blinding keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import pytest

from cleanroom.devtools.devpki import DevPki
from cleanroom.devtools.synthetic import DEMO_POLICY, SyntheticConfig, generate
from cleanroom.principals import Role
from cleanroom.server import ServerConfig, create_server
from cleanroom.server.app import RunningServer, TlsConfig
from cleanroom_client import CleanRoomClient, ProcessPoolChunkExecutor, SerialExecutor
from cleanroom_client.blinding import ChunkExecutor

N, SHARED, CHUNK_ROWS = 3000, 1000, 64
HERE = Path(__file__).parent
MEMBER = HERE / "ray_member.py"


@dataclass(frozen=True)
class Side:
    """How one member's synthetic users table is matched."""

    key: str
    identifiers: dict[str, str]
    attributes: list[str]


MEMBERS = {
    "brand": Side("customer_id", {"email": "email", "phone": "mobile"}, ["tier"]),
    "platform": Side("user_id", {"email": "email", "phone": "phone"}, ["age_band"]),
}

pytestmark = pytest.mark.timeout(480)


@pytest.fixture(autouse=True)
def _ray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Ray process of a test (head, worker node, drivers) shares one auth token; and Ray waits longer.

    Ray gives its GCS 30 s to start; on 2 cores shared with other test runs that is sometimes not enough.
    """
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "120")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both members' tables as Parquet: the brand's users in one file, the platform's in a directory of two."""
    data = generate(SyntheticConfig(brand_users=N, platform_users=N, shared=SHARED, seed=5))
    root = tmp_path_factory.mktemp("lake")
    for member in ("brand", "platform"):
        (root / member / "users").mkdir(parents=True)
    data.brand_users.to_parquet(root / "brand" / "users" / "part-0.parquet", index=False)
    half = N // 2
    data.platform_users.iloc[:half].to_parquet(root / "platform" / "users" / "part-0.parquet", index=False)
    data.platform_users.iloc[half:].to_parquet(root / "platform" / "users" / "part-1.parquet", index=False)
    data.brand_conversions.to_parquet(root / "brand" / "conversions.parquet", index=False)
    data.truth.to_parquet(root / "truth.parquet", index=False)
    return root


def _new_collab(make_client: Callable[[str], CleanRoomClient], collab_id: str) -> str:
    brand, platform = make_client("brand"), make_client("platform")
    collab = brand.create_collaboration(DEMO_POLICY, collab_id).id
    brand.approve_policy(collab)
    platform.approve_policy(collab)
    return collab


def _state(root: Path, member: str) -> Path:
    return root / f"state-{member}"  # the make_client fixture's state directory under its tmp_path


@dataclass(frozen=True)
class Reference:
    """The process pool's result on the lake's data, and the blinding keys that produced it."""

    tags: set[tuple]
    pairs: set[tuple]
    keys: dict[str, Path]  # member -> its blinding.key of the process-pool run


def _reuse_keys(tmp_path: Path, reference: Reference, target: str) -> None:
    """Give `target` the blinding keys of the process-pool run, so its tags must come out equal."""
    for member in MEMBERS:
        state = _state(tmp_path, member) / "collaborations" / target
        state.mkdir(parents=True, mode=0o700)
        shutil.copy2(reference.keys[member], state / "blinding.key")


def _match_both(
    make_client: Callable[[str], CleanRoomClient], collab: str, engine: ChunkExecutor, users: Mapping[str, str | Path]
) -> None:
    """Both members match concurrently from this process, on `engine`."""

    def one(member: str) -> None:
        side = MEMBERS[member]
        make_client(member).match(
            collab,
            users=users[member],
            key=side.key,
            identifiers=side.identifiers,
            attributes=side.attributes,
            wait_timeout=240,
            engine=engine,
        )

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(one, m) for m in ("brand", "platform")]:
            f.result()


def _result(server: RunningServer, root: Path, collab: str) -> tuple[set[tuple], set[tuple]]:
    """(member, id_type, user key, tag) of every member row the server holds a tag for; the pairs as user keys.

    `root` holds the members' state directories (`_state`).
    """
    cur = server.store.of(collab).cursor()
    keys = {
        m: pd.read_parquet(_state(root, m) / "collaborations" / collab / "rows.parquet").set_index("row_id")["key"]
        for m in ("brand", "platform")
    }
    tags = cur.execute("SELECT member, id_type, row_id, dkey FROM match_keys WHERE collab = ?", [collab]).fetchall()
    pairs = cur.execute("SELECT row_a, row_b FROM matches WHERE collab = ?", [collab]).fetchall()
    return (
        {(m, t, keys[m][r], d) for m, t, r, d in tags},
        {(keys["brand"][a], keys["platform"][b]) for a, b in pairs},
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, pki: DevPki, lake: Path) -> Iterator[Reference]:
    """The default engine's result on the lake's data (read locally), computed once for the module.

    Its own server and state directories: the 3,000-row match is the same for every test here, and a tag depends
    only on the identifier and the two members' blinding keys, which each test copies into its own collaboration.
    """
    root = tmp_path_factory.mktemp("pool-reference")
    tls = TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes(), None)
    server = create_server(ServerConfig(data_dir=root / "server", tls=tls))
    clients: list[CleanRoomClient] = []
    try:
        tokens = {m: server.room.principals.add(m, Role.MEMBER) for m in MEMBERS}

        def make(member: str) -> CleanRoomClient:
            client = CleanRoomClient(
                f"localhost:{server.port}",
                token=tokens[member],
                root_certificates=pki.ca,
                state_dir=_state(root, member),
                executor=SerialExecutor(),
                progress=False,
                chunk_rows=1024,  # tags do not depend on the chunking: fewer round trips than the runs compared
            )
            clients.append(client)
            return client

        collab = _new_collab(make, "pool-run")
        pool = ProcessPoolChunkExecutor(2)
        try:
            _match_both(make, collab, pool, {m: lake / m / "users" for m in MEMBERS})
        finally:
            pool.close()
        tags, pairs = _result(server, root, collab)
        truth = pd.read_parquet(lake / "truth.parquet")
        assert pairs == set(zip(truth["customer_id"], truth["user_id"], strict=True))
        assert len(tags) > 2 * N  # email and phone tags of most rows
        keys = {m: _state(root, m) / "collaborations" / collab / "blinding.key" for m in MEMBERS}
        yield Reference(tags, pairs, keys)
    finally:
        for c in clients:
            c.close()
        server.stop(None)


def test_local_ray_cluster_gives_the_process_pool_tags(make_client, server, tokens, pki, tmp_path, lake, reference):
    """The brand's driver starts a local Ray cluster (`ray.init(num_cpus=2)`); the platform runs the process pool."""
    collab = _new_collab(make_client, "ray-local-run")
    _reuse_keys(tmp_path, reference, collab)
    env = _env(server, tokens, pki)
    drivers = {
        "brand": _driver("brand", collab, tmp_path, lake, "ray-local", env["brand"]),
        "platform": _driver("platform", collab, tmp_path, lake, "pool", env["platform"]),
    }
    _wait(drivers, tmp_path, collab)
    assert _result(server, tmp_path, collab) == (reference.tags, reference.pairs)


def _env(server: RunningServer, tokens: dict[str, str], pki: DevPki) -> dict[str, dict[str, str]]:
    """Each member's connection settings, as a member's shell would set them."""
    return {
        member: {
            **os.environ,
            "CLEANROOM_TARGET": f"localhost:{server.port}",
            "CLEANROOM_TOKEN": tokens[member],
            "CLEANROOM_CA": str(pki.ca),
        }
        for member in MEMBERS
    }


def _logs(tmp_path: Path, collab: str) -> str:
    return "".join(p.read_text()[-2000:] for p in tmp_path.glob(f"*-{collab}.log"))


def _wait(drivers: dict[str, subprocess.Popen], tmp_path: Path, collab: str) -> None:
    """Every driver exits 0; whatever still runs after a failure is killed."""
    try:
        for member, proc in drivers.items():
            assert proc.wait(timeout=300) == 0, f"{member}: {_logs(tmp_path, collab)}"
    finally:
        _kill(drivers)


def _kill(drivers: dict[str, subprocess.Popen]) -> None:
    for proc in drivers.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[str]:
    """A Ray cluster of separate processes: `ray start --head` and a worker node, one CPU each."""
    ray = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    # short: Ray's Unix socket paths under the temp dir have a length limit
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    log = (tmp_path / "ray.log").open("w")
    nodes = [
        subprocess.Popen(
            [
                ray,
                "start",
                "--head",
                "--port",
                str(port),
                "--include-dashboard",
                "false",
                "--temp-dir",
                str(temp),
                *common,
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    ]
    try:
        deadline = time.monotonic() + 90
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, (tmp_path / "ray.log").read_text()[-3000:]
            assert nodes[0].poll() is None, (tmp_path / "ray.log").read_text()[-3000:]
            time.sleep(0.3)
        nodes.append(
            subprocess.Popen(
                [ray, "start", "--address", f"127.0.0.1:{port}", *common],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
        yield f"127.0.0.1:{port}"
    finally:
        for node in reversed(nodes):  # each node's own process group: only what this fixture started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + 1  # one grace period for the whole cluster, not one per node
        for node in reversed(nodes):
            try:
                # a test cluster needs no graceful shutdown: a node still up after a second gets SIGKILL, its whole
                # process group (a 30 s wait here used to cost every run half a minute; a 5 s grace always ran
                # out, and no Ray process outlives the SIGKILL)
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _driver(member: str, collab: str, tmp_path: Path, lake: Path, spec: str, env: dict[str, str]) -> subprocess.Popen:
    out = tmp_path / f"{member}-{collab}.json"
    side = json.dumps(asdict(MEMBERS[member]))
    args = [
        str(MEMBER),
        member,
        collab,
        str(_state(tmp_path, member)),
        str(out),
        str(lake),
        spec,
        str(CHUNK_ROWS),
        side,
    ]
    with (tmp_path / f"{member}-{collab}.log").open("a") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, *args], stdout=log, stderr=log, env=env)


def _cli_driver(
    member: str, collab: str, tmp_path: Path, lake: Path, address: str, env: dict[str, str]
) -> subprocess.Popen:
    """The member's match as `cleanroom-client match --ray ADDRESS`, its users a Parquet directory."""
    side = MEMBERS[member]
    cli = str(Path(sys.executable).parent / "cleanroom-client")
    args = ["--no-progress", "match", collab, "--ray", address, "--users", str(lake / member / "users")]
    args += ["--key", side.key, *(f"--identifier={t}={c}" for t, c in side.identifiers.items())]
    args += [f"--attribute={a}" for a in side.attributes]
    with (tmp_path / f"{member}-{collab}.log").open("a") as log:
        return subprocess.Popen(
            [cli, *args], stdout=log, stderr=log, env={**env, "CLEANROOM_STATE_DIR": str(_state(tmp_path, member))}
        )


def test_ray_cluster_of_processes_gives_the_process_pool_tags_and_resumes_a_killed_driver(
    make_client, server, tokens, pki, tmp_path, lake, reference, ray_cluster
):
    collab = _new_collab(make_client, "ray-cluster-run")
    _reuse_keys(tmp_path, reference, collab)
    env = _env(server, tokens, pki)
    spec = f"ray:{ray_cluster}"
    drivers = {
        "brand": _driver("brand", collab, tmp_path, lake, spec, env["brand"]),
        "platform": _cli_driver("platform", collab, tmp_path, lake, ray_cluster, env["platform"]),
    }
    cur = server.store.of(collab).cursor()
    try:
        # kill -9 the brand's driver once some of its chunks are on the server, before its upload commits
        deadline = time.monotonic() + 180
        while True:
            row = cur.execute(
                "SELECT next_chunk, committed FROM uploads WHERE collab = ? AND member = 'brand' AND kind = 'points'",
                [collab],
            ).fetchone()
            if row and row[0] >= 2:
                break
            assert drivers["brand"].poll() is None, _logs(tmp_path, collab)
            assert time.monotonic() < deadline, _logs(tmp_path, collab)
            time.sleep(0.02)
        drivers["brand"].send_signal(signal.SIGKILL)
        drivers["brand"].wait()
        assert not row[1], "the upload finished before the driver could be killed; use more rows"
        drivers["brand"] = _driver("brand", collab, tmp_path, lake, spec, env["brand"])
        _wait(drivers, tmp_path, collab)
    finally:
        _kill(drivers)
    # resumed where the server said it stopped: the point upload started once, not again from chunk 0
    starts = cur.execute(
        "SELECT params_json FROM audit_log WHERE collab = ? AND principal = 'brand' AND action = 'upload.start'",
        [collab],
    ).fetchall()
    assert [json.loads(p)["kind"] for (p,) in starts].count("points") == 1
    summary = json.loads((tmp_path / f"brand-{collab}.json").read_text())
    assert summary["rows"] == N
    assert summary["peer_set_size"] == N
    assert _result(server, tmp_path, collab) == (reference.tags, reference.pairs)
