"""The server's DuckDB runs within the memory cap and spill directory it is given (ServerConfig.storage)."""

from __future__ import annotations

import grpc
import pytest
from typer.testing import CliRunner

from cleanroom.audit.log import SERVER_CHAIN
from cleanroom.cli import app
from cleanroom.collaborations import MAX_POLICY_BYTES
from cleanroom.devtools.synthetic import DEMO_POLICY
from cleanroom.storage import Database, StorageLimits
from cleanroom.storage.store import COLLABORATION_THREADS, MAX_OPEN_FILES
from cleanroom_client.errors import NotFoundError
from cleanroom_client.protocol import collaboration_pb2 as co
from cleanroom_client.protocol import collaboration_pb2_grpc as co_grpc


def test_server_applies_memory_limit_and_spill_directory(start, tmp_path):
    spill = tmp_path / "spill"
    server = start(tmp_path / "data", storage=StorageLimits(memory_limit="256MiB", temp_directory=spill))
    # the catalogue and every collaboration's file: the same cap, a spill directory of their own
    for name, db in (("catalog", server.store.catalog), ("c-limits", server.store.create("c-limits"))):
        cur = db.cursor()
        limit = cur.execute("SELECT current_setting('memory_limit')").fetchone()
        directory = cur.execute("SELECT current_setting('temp_directory')").fetchone()
        assert limit is not None
        assert limit[0] == "256.0 MiB"
        assert directory is not None
        assert directory[0] == str(spill / name)
        assert (spill / name).is_dir()


def test_default_storage_keeps_duckdb_defaults(start, tmp_path):
    server = start(tmp_path / "data")
    for db, file in ((server.store.catalog, "catalog.duckdb"), (server.store.create("c-limits"), "c-limits.duckdb")):
        directory = db.cursor().execute("SELECT current_setting('temp_directory')").fetchone()
        assert directory is not None
        assert directory[0].endswith(file + ".tmp")


def _threads(db: Database) -> int:
    row = db.cursor().execute("SELECT current_setting('threads')").fetchone()
    assert row is not None
    return int(row[0])


def test_server_applies_the_cap_on_open_files_and_duckdb_threads(start, tmp_path):
    server = start(tmp_path / "data")
    assert server.store.max_open == MAX_OPEN_FILES
    assert _threads(server.store.create("c-default")) == COLLABORATION_THREADS
    server = start(tmp_path / "other", storage=StorageLimits(threads=1, max_open=2))
    assert server.store.max_open == 2
    assert _threads(server.store.create("c-one")) == 1
    for cid in ("c-two", "c-three"):
        server.store.create(cid)
    assert server.store.opened() == ["c-three", "c-two"]  # c-one, the least recently used, was closed
    assert _threads(server.store.of("c-one")) == 1  # and reopens with the same settings


def test_serve_documents_the_options():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    for option in ("--memory-limit", "--spill-dir", "--threads", "--max-open-files"):
        assert option in result.output


def test_over_grpc_a_member_cycling_its_collaborations_closes_its_own_files_not_anothers(server, make_client):
    """Thrash over real gRPC: the front door counts each call's files as its caller's, so past the cap a member
    looping over its own collaborations closes its own files, never the file of a room it is not in."""
    server.store.max_open = 2
    brand, platform = make_client("brand"), make_client("platform")
    victim = brand.create_collaboration(DEMO_POLICY, "victim").id
    own = [platform.create_collaboration(DEMO_POLICY, f"own-{i}").id for i in range(3)]
    for _ in range(2):
        assert brand.get_collaboration(victim).id == victim
        for cid in own:
            assert platform.get_collaboration(cid).id == cid
            assert victim in server.store.opened(), "a member's loop over its own rooms closed another's file"
    assert len(server.store.opened()) <= 2


def test_a_member_naming_a_room_it_is_not_in_never_opens_its_file(server, make_client):
    """A member may name any id; a room it is not in is refused from the catalogue's index, its file left closed.

    Before, the refusal loaded the room's file first: any member could reopen other rooms' closed files at will
    (taking places under the cap, each reopen tens of milliseconds of the server's time, and counting the file as
    its own), and an existing id answered measurably slower than an unknown one.
    """
    victim = make_client("brand").create_collaboration(DEMO_POLICY, "victim").id
    assert server.store.of(victim).park()
    for outsider in ("stranger", "outsider_auditor"):
        client = make_client(outsider)
        for cid in (victim, "no-such-room"):
            with pytest.raises(NotFoundError) as refused:
                client.get_collaboration(cid)
            assert cid in str(refused.value)
        assert victim not in server.store.opened(), f"{outsider} reopened the file of a room it is not in"
    assert make_client("brand").get_collaboration(victim).id == victim
    server.room.principals.assign_auditor("auditor", victim)
    assert make_client("auditor").get_collaboration(victim).id == victim


def test_a_refusal_at_the_edge_naming_a_room_the_caller_is_not_in_never_opens_its_file(server, make_client, stub_for):
    """A request refused before any servicer read it is audited without opening a room the caller is not in."""
    victim = make_client("brand").create_collaboration(DEMO_POLICY, "victim").id
    assert server.store.of(victim).park()
    stub, md = stub_for(co_grpc.CollaborationServiceStub, "stranger")
    too_long = "x" * (MAX_POLICY_BYTES + 1)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ProposePolicy(co.ProposePolicyRequest(name=f"collaborations/{victim}", policy_yaml=too_long), metadata=md)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert victim not in server.store.opened(), "a refusal at the edge reopened a room the caller is not in"
    refusals = list(server.room.audit.entries(SERVER_CHAIN))
    assert (refusals[-1].action, refusals[-1].principal) == ("refused", "stranger")
