"""20k x 20k over real gRPC with TLS and tokens: a server process and two member processes.

The operator sets up with the CLI (certificates, principals), the server is killed -9 mid-upload and restarted,
the members resume, the join equals the truth pair for pair, and an auditor verifies the exported log offline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cleanroom.devtools.synthetic import DEMO_POLICY, SyntheticConfig, generate
from cleanroom.matching import match_stats
from cleanroom.storage import Store
from cleanroom_client import CleanRoomClient
from cleanroom_client.protocol import matching_pb2, matching_pb2_grpc

N, SHARED = 20_000, 6_000
#: The members' upload chunk (the SDK's `chunk_rows`; its default is 16,384): 40 chunks per identifier type.
CHUNK_ROWS = 512
HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cleanroom.cli", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _serve(data_dir: Path, port: int, log: Path, certs: Path) -> subprocess.Popen:
    with log.open("a") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cleanroom.cli",
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                "--tls-cert",
                str(certs / "server.pem"),
                "--tls-key",
                str(certs / "server.key"),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    assert line.strip() == str(port), f"server did not start: {line!r}"
    return proc


def _points_progress(target: str, collab: str, token: str, ca: Path) -> tuple[int, bool]:
    import grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(target, credentials) as channel:
        stub = matching_pb2_grpc.MatchingServiceStub(channel)
        status = stub.GetMatchStatus(
            matching_pb2.GetMatchStatusRequest(parent=f"collaborations/{collab}"),
            metadata=(("authorization", f"Bearer {token}"),),
        )
    for u in status.uploads:
        if u.kind == "points":
            return u.next_chunk_index, u.committed
    return 0, False


@pytest.mark.slow
def test_match_with_server_killed_mid_upload(tmp_path):
    """The join of 20,000 x 20,000 survives a kill -9 of the server while the brand's points are uploading.

    What this test vouches for is the kill mid-upload and the resume, not the scale (the PSI benchmarks measure
    100k to 10M: benchmarks/README.md). 20,000 rows in chunks of 512 give the points upload 80 chunks, so the poll
    (every 0.05 s) sees three of them stored with the upload not yet committed and the kill lands mid-upload
    (an upload that finished first fails the test with "use more rows"); 6,000 shared people give the join
    enough pairs to compare with the truth pair for pair. (It ran 100,000 rows before: 26 s of the suite.)
    """
    port = _free_port()
    target = f"localhost:{port}"
    data_dir, log, certs = tmp_path / "server", tmp_path / "server.log", tmp_path / "certs"
    _cli("admin", "make-dev-certs", str(certs))
    ca = certs / "ca.pem"
    tokens = {
        name: _cli("admin", "add-principal", name, "--role", role, "--data-dir", str(data_dir))
        for name, role in (("brand", "member"), ("platform", "member"), ("auditor", "auditor"))
    }
    server = _serve(data_dir, port, log, certs)
    members = []

    def client(name: str) -> CleanRoomClient:
        return CleanRoomClient(target, token=tokens[name], root_certificates=ca, state_dir=tmp_path / "setup")

    try:
        with client("brand") as brand, client("platform") as platform:
            collab = brand.create_collaboration(DEMO_POLICY, "e2e-match").id
            brand.approve_policy(collab)
            platform.approve_policy(collab)
        for member in ("brand", "platform"):
            env = {**os.environ, "CLEANROOM_TARGET": target, "CLEANROOM_TOKEN": tokens[member], "CLEANROOM_CA": str(ca)}
            with (tmp_path / f"{member}.log").open("w") as err:
                members.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(HERE / "member_process.py"),
                            member,
                            collab,
                            str(tmp_path / member),
                            str(tmp_path / f"{member}.json"),
                            str(N),
                            str(SHARED),
                            str(CHUNK_ROWS),
                        ],
                        stderr=err,
                        env=env,
                    )
                )
        # kill -9 the server while the brand's points are half uploaded, then restart it on the same port
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            chunks, committed = _points_progress(target, collab, tokens["brand"], ca)
            assert not committed, "the upload finished before the server could be killed; use more rows"
            if chunks >= 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the brand's upload made no progress")
        server.send_signal(signal.SIGKILL)
        server.wait()
        server = _serve(data_dir, port, log, certs)
        chunks_after, committed_after = _points_progress(target, collab, tokens["brand"], ca)
        assert chunks_after >= chunks
        assert not committed_after
        for proc in members:
            assert proc.wait(timeout=900) == 0, (tmp_path / "brand.log").read_text()[-3000:] + (
                tmp_path / "platform.log"
            ).read_text()[-3000:]
        # the operator assigns an auditor through the running server's socket; the auditor exports and verifies
        _cli("admin", "assign-auditor", "auditor", collab, "--data-dir", str(data_dir))
        stats = _cli("admin", "match-stats", collab, "--data-dir", str(data_dir))
        assert f"{SHARED}" in stats
        with client("auditor") as aud:
            assert aud.verify_audit_log(collab)["valid"]
            export = aud.export_audit_log(tmp_path / "audit.jsonl", collab)
            (tmp_path / "server-audit.pem").write_text(aud.server_public_key())
            actions = set(aud.audit_log(collab)["action"])
        assert {"collaboration.create", "policy.approve", "upload.start", "upload.commit", "match.complete"} <= actions
        assert "VALID" in _cli("audit", "verify", str(export), "--public-key", str(tmp_path / "server-audit.pem"))
    finally:
        for proc in members:
            if proc.poll() is None:
                proc.kill()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    brand_summary = json.loads((tmp_path / "brand.json").read_text())
    platform_summary = json.loads((tmp_path / "platform.json").read_text())
    assert brand_summary["peer_set_size"] == N
    assert platform_summary["peer_set_size"] == N
    assert brand_summary["rows"] == N
    assert brand_summary["matched"]

    # the exact join in the server's DuckDB equals the truth, pair for pair
    store = Store(data_dir)
    db = store.of(collab)
    try:
        _stats, total = match_stats(db.cursor(), collab)
        assert total == SHARED
        pairs = (
            db.cursor()
            .execute("SELECT row_a, row_b FROM matches WHERE collab = ? AND member_a = 'brand'", [collab])
            .df()
        )
        assert db.cursor().execute("SELECT count(*) FROM offers").fetchall() == [(0,)]
    finally:
        store.close()
    data = generate(SyntheticConfig(brand_users=N, platform_users=N, shared=SHARED, seed=11))
    brand_rows = pd.read_parquet(tmp_path / "brand" / "collaborations" / collab / "rows.parquet")
    platform_rows = pd.read_parquet(tmp_path / "platform" / "collaborations" / collab / "rows.parquet")
    got = pairs.merge(brand_rows, left_on="row_a", right_on="row_id").merge(
        platform_rows, left_on="row_b", right_on="row_id", suffixes=("_brand", "_platform")
    )
    assert set(zip(got["key_brand"], got["key_platform"], strict=True)) == set(
        zip(data.truth["customer_id"], data.truth["user_id"], strict=True)
    )
    assert os.stat(tmp_path / "brand" / "collaborations" / collab / "blinding.key").st_mode & 0o077 == 0
