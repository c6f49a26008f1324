"""100k x 100k over real gRPC: a server process and two member processes; the server is killed mid-upload."""

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

from cleanroom.matching import match_stats
from cleanroom.storage import Database
from cleanroom.synthetic import DEMO_POLICY, SyntheticConfig, generate
from cleanroom_client import CleanRoomClient
from cleanroom_client._proto import matching_pb2, matching_pb2_grpc

N, SHARED = 100_000, 30_000
HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    with log.open("a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cleanroom.cli", "serve", "--data-dir", str(data_dir), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()
    assert line.strip() == str(port), f"server did not start: {line!r}"
    return proc


def _points_progress(target: str, collab: str) -> tuple[int, bool]:
    import grpc

    with grpc.insecure_channel(target) as channel:
        stub = matching_pb2_grpc.MatchingServiceStub(channel)
        status = stub.GetMatchStatus(
            matching_pb2.GetMatchStatusRequest(parent=f"collaborations/{collab}"),
            metadata=(("x-cleanroom-principal", "brand"),),
        )
    for u in status.uploads:
        if u.kind == "points":
            return u.next_chunk_index, u.committed
    return 0, False


@pytest.mark.slow
def test_match_100k_with_server_killed_mid_upload(tmp_path):
    port = _free_port()
    target = f"127.0.0.1:{port}"
    data_dir, log = tmp_path / "server", tmp_path / "server.log"
    server = _serve(data_dir, port, log)
    members = []
    try:
        with (
            CleanRoomClient(target, principal="brand", state_dir=tmp_path / "setup") as brand,
            CleanRoomClient(target, principal="platform", state_dir=tmp_path / "setup") as platform,
        ):
            collab = brand.create_collaboration(DEMO_POLICY, "e2e-100k").id
            brand.approve_policy(collab)
            platform.approve_policy(collab)
        for member in ("brand", "platform"):
            with (tmp_path / f"{member}.log").open("w") as err:
                members.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(HERE / "member_process.py"),
                            member,
                            target,
                            collab,
                            str(tmp_path / member),
                            str(tmp_path / f"{member}.json"),
                            str(N),
                            str(SHARED),
                        ],
                        stderr=err,
                    )
                )
        # kill -9 the server while the brand's points are half uploaded, then restart it on the same port
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            chunks, committed = _points_progress(target, collab)
            assert not committed, "the upload finished before the server could be killed; use more rows"
            if chunks >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the brand's upload made no progress")
        server.send_signal(signal.SIGKILL)
        server.wait()
        server = _serve(data_dir, port, log)
        chunks_after, committed_after = _points_progress(target, collab)
        assert chunks_after >= chunks
        assert not committed_after
        for proc in members:
            assert proc.wait(timeout=900) == 0, (tmp_path / "brand.log").read_text()[-3000:] + (
                tmp_path / "platform.log"
            ).read_text()[-3000:]
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
    db = Database(data_dir)
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
        db.close()
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
