"""TLS, mutual TLS, tokens and their revocation, the operator's socket, and the stream limits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from cleanroom.cli import app
from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.principals import Principal, Role
from cleanroom.server import ServerConfig, create_server
from cleanroom_client import CleanRoomClient, CleanRoomError
from cleanroom_client.protocol import matching_pb2 as ma
from cleanroom_client.protocol import matching_pb2_grpc as ma_grpc


def test_server_refuses_to_start_without_tls(tmp_path):
    with pytest.raises(ValueError, match="TLS is required"):
        create_server(ServerConfig(data_dir=tmp_path))


def test_plaintext_client_cannot_talk_to_a_tls_server(server, tokens, tmp_path):
    client = CleanRoomClient(f"localhost:{server.port}", token=tokens["brand"], insecure=True, state_dir=tmp_path)
    with pytest.raises(CleanRoomError) as info:
        client.list_collaborations()
    assert info.value.code == "UNAVAILABLE"
    client.close()


def test_tokens_are_stored_only_as_hashes_and_revocation_is_immediate(server, tokens, make_client):
    rows = server.store.catalog.cursor().execute("SELECT * FROM principals").fetchall()
    assert not any(tokens["brand"] in str(col) for row in rows for col in row)
    brand = make_client("brand")
    assert brand.list_collaborations() == []
    server.room.principals.revoke("brand")
    with pytest.raises(CleanRoomError) as info:
        brand.list_collaborations()
    assert info.value.code == "UNAUTHENTICATED"
    assert "revoked" in info.value.message


def test_mutual_tls_maps_the_certificate_to_its_principal(tmp_path, pki, start):
    running = start(tmp_path / "mtls", mtls=True)
    running.room.principals.add("brand", Role.MEMBER)
    target = f"localhost:{running.port}"

    def by_cert(name: str) -> CleanRoomClient:
        return CleanRoomClient(
            target,
            root_certificates=pki.ca,
            client_certificate=pki.client_cert(name),
            client_key=pki.client_key(name),
            state_dir=tmp_path / name,
        )

    with by_cert("brand") as brand:
        assert brand.list_collaborations() == []
    with by_cert("nobody") as nobody, pytest.raises(CleanRoomError) as info:
        nobody.list_collaborations()
    assert info.value.code == "UNAUTHENTICATED"
    running.room.principals.revoke("brand")
    with by_cert("brand") as brand, pytest.raises(CleanRoomError) as info:
        brand.list_collaborations()
    assert info.value.code == "UNAUTHENTICATED"
    # without a client certificate the TLS handshake itself fails
    with CleanRoomClient(target, token="crt_x", root_certificates=pki.ca, state_dir=tmp_path / "x") as anon:
        with pytest.raises(CleanRoomError) as info:
            anon.list_collaborations()
        assert info.value.code == "UNAVAILABLE"


def test_operator_socket_is_private_and_used_by_the_cli_while_the_server_runs(server, pki, tmp_path):
    socket = Path(server.room.data_dir) / "admin.sock"
    assert socket.stat().st_mode & 0o077 == 0
    runner = CliRunner()
    result = runner.invoke(app, ["admin", "add-principal", "late", "--data-dir", str(server.room.data_dir)])
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    with CleanRoomClient(f"localhost:{server.port}", token=token, root_certificates=pki.ca, state_dir=tmp_path) as c:
        assert c.list_collaborations() == []
    result = runner.invoke(app, ["admin", "revoke-principal", "late", "--data-dir", str(server.room.data_dir)])
    assert result.exit_code == 0
    dup = runner.invoke(app, ["admin", "add-principal", "late", "--data-dir", str(server.room.data_dir)])
    assert dup.exit_code == 1
    assert "exists already" in dup.output
    # through the socket, an unknown collaboration is NotFound, as on the data directory (it used to print zeros)
    missing = runner.invoke(app, ["admin", "match-stats", "nope-nope", "--data-dir", str(server.room.data_dir)])
    assert missing.exit_code == 1
    assert "collaborations/nope-nope does not exist" in missing.output


def _hanging_upload(stub, md, parent: str, release: threading.Event, first: ma.UploadTableRequest | None = None):
    def requests():
        if first is not None:
            yield first
        release.wait(30)

    return stub.UploadTable.future(requests(), metadata=md)


def test_streams_per_principal_are_limited_and_idle_streams_are_cut(tmp_path, pki, start):
    running = start(tmp_path / "limits", streams_per_principal=2, stream_idle_timeout=1.0)
    release = threading.Event()
    try:
        token = running.room.principals.add("brand", Role.MEMBER)
        running.room.collaborations.create(Principal("brand", Role.MEMBER), "limits", DEMO_POLICY)  # a member
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", credentials) as channel:
            stub = ma_grpc.MatchingServiceStub(channel)
            md = (("authorization", f"Bearer {token}"),)
            parent = "collaborations/none-such"
            # no messages yet: the server holds the slot while it waits for the first one
            held = [_hanging_upload(stub, md, parent, release) for _ in range(2)]
            time.sleep(0.3)
            third = _hanging_upload(stub, md, parent, release)
            with pytest.raises(grpc.RpcError) as info:
                third.result(timeout=10)
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 streams open" in (info.value.details() or "")
            # the idle ones are cancelled after about a second, which frees their slots
            for f in held:
                with pytest.raises(grpc.RpcError) as info:
                    f.result(timeout=10)
                assert info.value.code() is grpc.StatusCode.CANCELLED
            assert running.room.store is not None
            again = _hanging_upload(stub, md, parent, release)
            with pytest.raises(grpc.RpcError) as info:
                again.result(timeout=10)
            assert info.value.code() is grpc.StatusCode.CANCELLED  # idle again, but it got a slot
            # a client deadline is respected
            with pytest.raises(grpc.RpcError) as info:
                stub.UploadTable(iter(()), metadata=md, timeout=0.01)
            assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INVALID_ARGUMENT)
    finally:
        release.set()


def test_operator_commands_take_one_path_with_or_without_a_running_server(server, tmp_path):
    """Each command goes through AdminService: the server's socket, or one served for the command when none runs."""
    runner = CliRunner()
    stopped = tmp_path / "offline"

    def outputs(data_dir: Path) -> list[tuple[int, str]]:
        results = []
        for args in (
            ["add-principal", "twice"],
            ["add-principal", "twice"],
            ["add-principal", "Bad Name!"],
            ["rotate-token", "nobody-here"],
            ["assign-auditor", "twice", "nope-nope"],
            ["match-stats", "nope-nope"],
        ):
            r = runner.invoke(app, ["admin", *args, "--data-dir", str(data_dir)], terminal_width=200)
            results.append((r.exit_code, r.output.splitlines()[0] if r.exit_code else "ok"))
        return results

    offline = outputs(stopped)
    assert not list(stopped.glob("admin.sock"))  # the private socket was elsewhere and is gone
    assert outputs(Path(server.room.data_dir)) == offline
    assert [code for code, _ in offline] == [0, 1, 1, 1, 1, 1]


def test_a_stream_opened_before_a_revocation_is_refused_at_its_next_message(server, tokens, pki, active):
    """A revoked token stops working at once, also for a call already past the door: an open upload stream."""
    from cleanroom_client.curve import hash_to_u

    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    parent = f"collaborations/{active}"
    point = hash_to_u(b"p")
    first_sent, revoked = threading.Event(), threading.Event()

    def chunks():
        for i in range(2):
            yield ma.UploadBlindedPointsRequest(
                parent=parent,
                identifier_type=ma.IDENTIFIER_TYPE_EMAIL,
                chunk_index=i,
                first_row=i,
                points=point,
                last=i == 1,
                total_rows=2 if i == 1 else 0,
            )
            first_sent.set()
            revoked.wait(10)

    with grpc.secure_channel(f"localhost:{server.port}", credentials) as channel:
        stub = ma_grpc.MatchingServiceStub(channel)
        call = stub.UploadBlindedPoints.future(chunks(), metadata=(("authorization", f"Bearer {tokens['brand']}"),))
        assert first_sent.wait(10)
        time.sleep(0.3)  # the first chunk is in the server's hands
        server.room.principals.revoke("brand")
        revoked.set()
        with pytest.raises(grpc.RpcError) as info:
            call.result(timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (info.value.details() or "")
