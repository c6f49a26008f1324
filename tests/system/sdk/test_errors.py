"""SDK errors are typed by status over real gRPC, and connection failures say their cause and fix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cleanroom.devtools.devpki import make_dev_pki
from cleanroom_client import CleanRoomClient
from cleanroom_client.errors import (
    CleanRoomError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)


def test_each_status_is_its_own_class(make_client, active):
    brand, stranger = make_client("brand"), make_client("stranger")
    with pytest.raises(NotFoundError) as info:
        brand.get_collaboration("no-such-collab")
    assert info.value.code == "NOT_FOUND"
    assert isinstance(info.value, CleanRoomError)  # old `except CleanRoomError` code keeps working
    with pytest.raises((PermissionDeniedError, NotFoundError)):
        stranger.get_collaboration(active)
    with pytest.raises(FailedPreconditionError, match="changed since you read it"):
        brand.approve_policy(active, "0" * 64)
    with pytest.raises(InvalidArgumentError):
        brand.overlap(active, by=["brand.tier"], epsilon=1e-9)


def test_a_wrong_token_is_unauthenticated(server, pki, tmp_path):
    client = CleanRoomClient(
        f"localhost:{server.port}", token="crt_wrong", root_certificates=pki.ca, progress=False, state_dir=tmp_path
    )
    with pytest.raises(UnauthenticatedError):
        client.list_collaborations()
    client.close()


def test_a_wrong_ca_names_the_ca(server, tokens, tmp_path):
    other = make_dev_pki(tmp_path / "other", clients=())
    client = CleanRoomClient(
        f"localhost:{server.port}",
        token=tokens["brand"],
        root_certificates=other.ca,
        progress=False,
        state_dir=tmp_path,
    )
    with pytest.raises(UnavailableError, match="not signed by the CA you gave"):
        client.list_collaborations()
    client.close()


def test_the_cli_with_a_wrong_ca_prints_one_line_not_grpcs_own_log(server, tokens, tmp_path):
    """gRPC's C core logs the failed handshake itself unless quieted before gRPC loads; the CLI does that."""
    other = make_dev_pki(tmp_path / "other", clients=())
    env = {
        **{k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"},
        "CLEANROOM_TARGET": f"localhost:{server.port}",
        "CLEANROOM_TOKEN": tokens["brand"],
        "CLEANROOM_CA": str(other.ca),
        "CLEANROOM_STATE_DIR": str(tmp_path / "state"),
    }
    run = subprocess.run(
        [sys.executable, "-m", "cleanroom_client.cli", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert "not signed by the CA you gave" in " ".join(run.stderr.split())
    assert "ssl_transport_security" not in run.stderr, run.stderr
    assert "Handshake failed" not in run.stderr, run.stderr
    # A user debugging with GRPC_VERBOSITY set keeps gRPC's own lines.
    loud = subprocess.run(
        [sys.executable, "-m", "cleanroom_client.cli", "list"],
        env={**env, "GRPC_VERBOSITY": "INFO"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Handshake failed" in loud.stderr


def test_a_wrong_port_says_nothing_answers(pki, tmp_path):
    client = CleanRoomClient("localhost:1", token="crt_x", root_certificates=pki.ca, progress=False, state_dir=tmp_path)
    with pytest.raises(UnavailableError, match="nothing answers at that address"):
        client.list_collaborations()
    client.close()


def test_a_match_that_runs_out_of_retries_names_its_phase(pki, tmp_path):
    import grpc

    from cleanroom_client.blinding import SerialExecutor
    from cleanroom_client.matching import MatchRunner
    from cleanroom_client.protocol import matching_pb2_grpc

    channel = grpc.secure_channel("localhost:1", grpc.ssl_channel_credentials(pki.ca.read_bytes()))
    runner = MatchRunner(
        matching_pb2_grpc.MatchingServiceStub(channel),
        (),
        "collaborations/c",
        tmp_path,
        SerialExecutor(),
        progress=False,
        max_retries=1,
    )
    with pytest.raises(UnavailableError, match=r"stopped in status; call match\(\) again to resume"):
        runner.status()
    channel.close()
