"""The operator goes back in time: members and auditors who remember the tree heads they saw catch it.

Each test is an attack from issue 30 run with the server stopped (as whoever holds the disk would): delete a
collaboration's entries and its head file; restore an older head and cut the tail to match; roll back the whole
data directory; show two members two different histories (a fork). The brand's SDK and the auditor's verify must
raise HistoryRewrittenError naming both heads, and refuse to go on until acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import duckdb
import pytest

from cleanroom.devtools.devpki import DevPki
from cleanroom.devtools.synthetic import DEMO_POLICY, SyntheticConfig, generate
from cleanroom.principals import Role
from cleanroom.server import ServerConfig, create_server
from cleanroom.server.app import RunningServer, TlsConfig
from cleanroom.server.receipts import ReceiptInterceptor
from cleanroom.storage.store import COLLABORATIONS_DIR
from cleanroom_client import CleanRoomClient, SerialExecutor
from cleanroom_client.errors import PermissionDeniedError
from cleanroom_client.transparency import HistoryRewrittenError

COLLAB = "translog"


def start_server(data_dir: Path, pki: DevPki) -> RunningServer:
    """A TLS server on `data_dir` (the conftest's `start_server`, which a test module cannot import by name)."""
    tls = TlsConfig(pki.server_cert.read_bytes(), pki.server_key.read_bytes())
    return create_server(ServerConfig(data_dir=data_dir, tls=tls))


class Operator:
    """A server on a data directory that the test stops, edits and restarts, and the clients that remember."""

    def __init__(self, root: Path, pki: DevPki) -> None:
        self.root, self.pki = root, pki
        self.data = root / "server"
        self.server: RunningServer | None = start_server(self.data, pki)
        self.tokens = {
            n: self.server.room.principals.add(n, r)
            for n, r in (("brand", Role.MEMBER), ("platform", Role.MEMBER), ("auditor", Role.AUDITOR))
        }
        self.clients: dict[str, CleanRoomClient] = {}

    def client(self, name: str, state: str = "") -> CleanRoomClient:
        key = name + state
        if key not in self.clients:
            assert self.server is not None
            self.clients[key] = CleanRoomClient(
                f"localhost:{self.server.port}",
                token=self.tokens[name],
                root_certificates=self.pki.ca,
                state_dir=self.root / f"state-{key}",
                executor=SerialExecutor(),
                progress=False,
            )
        return self.clients[key]

    def stop(self) -> None:
        for c in self.clients.values():
            c.close()
        self.clients.clear()
        assert self.server is not None
        self.server.stop(None)
        self.server = None

    def start(self) -> None:
        self.server = start_server(self.data, self.pki)

    def sql(self, statement: str, *args: object) -> None:
        con = duckdb.connect(str(self.data / COLLABORATIONS_DIR / f"{COLLAB}.duckdb"))
        con.execute(statement, list(args))
        con.close()


@pytest.fixture
def operator(tmp_path: Path, pki: DevPki):
    op = Operator(tmp_path, pki)
    brand, platform = op.client("brand"), op.client("platform")
    c = brand.create_collaboration(DEMO_POLICY, COLLAB)
    brand.approve_policy(c.id)
    platform.approve_policy(c.id)
    assert op.server is not None
    op.server.room.principals.assign_auditor("auditor", COLLAB)
    data = generate(SyntheticConfig(brand_users=300, platform_users=400, shared=200))
    import threading

    t = threading.Thread(
        target=platform.match,
        args=(COLLAB,),
        kwargs={
            "users": data.platform_users,
            "key": "user_id",
            "identifiers": {"email": "email", "phone": "phone"},
            "attributes": ["age_band", "stage_4a"],
            "wait_timeout": 120,
        },
    )
    t.start()
    brand.match(
        COLLAB,
        users=data.brand_users,
        key="customer_id",
        identifiers={"email": "email", "phone": "mobile"},
        attributes=["tier"],
        wait_timeout=120,
    )
    t.join()
    yield op
    if op.server is not None:
        op.stop()


def _spend(op: Operator, times: int = 1) -> None:
    for _ in range(times):
        op.client("brand").overlap(COLLAB, epsilon=0.5)


def _head_files(op: Operator) -> Path:
    return op.data / "audit-heads"


def test_receipts_come_back_with_every_charge_and_budget_check_agrees(operator: Operator) -> None:
    _spend(operator, 2)
    check = operator.client("brand").check_budget(COLLAB)
    row = check.iloc[0]
    assert row["member"] == "brand"
    assert row["receipts_spent"] == pytest.approx(1.0)
    assert row["server_spent"] == pytest.approx(1.0)
    assert bool(row["consistent"])
    # a refusal is logged, and its receipt comes back with the error
    platform = operator.client("platform")
    before = len(platform._witness.memory.receipts(COLLAB))
    with pytest.raises(PermissionDeniedError):
        platform.overlap(COLLAB, epsilon=0.1)
    kept = platform._witness.memory.receipts(COLLAB)
    assert len(kept) == before + 1
    assert kept[-1]["entry"]["action"] == "refused"


def test_a_charge_whose_receipt_is_withheld_is_refused_when_it_is_answered(
    operator: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    _spend(operator)
    # the operator's server strips the trailer: the charge and the answer stay, the receipt does not come, and
    # budget --check alone could not tell (the server's figure is still at least what the receipts charge)
    monkeypatch.setattr(ReceiptInterceptor, "_attach", lambda self, context, entries: None)
    with pytest.raises(HistoryRewrittenError, match="withheld"):
        _spend(operator)
    monkeypatch.undo()
    with pytest.raises(HistoryRewrittenError, match="acknowledge"):
        _spend(operator)


def test_deleting_a_collaborations_entries_and_head_is_caught_by_member_and_auditor(operator: Operator) -> None:
    _spend(operator, 3)
    operator.client("auditor").verify_audit_log(COLLAB)  # the auditor remembers the head it verified
    operator.stop()
    operator.sql("DELETE FROM audit_log WHERE collab = ?", COLLAB)
    shutil.rmtree(_head_files(operator))
    operator.start()
    with pytest.raises(HistoryRewrittenError, match="shrank") as caught:
        operator.client("brand").check_budget(COLLAB)
    remembered, shown = caught.value.remembered, caught.value.shown
    assert remembered is not None
    assert remembered.size > 0
    assert shown is not None
    assert shown.size == 0
    with pytest.raises(HistoryRewrittenError):
        operator.client("auditor").verify_audit_log(COLLAB)
    # the brand's SDK refuses the collaboration until the user acknowledges the incident
    with pytest.raises(HistoryRewrittenError, match="acknowledge"):
        operator.client("brand").budget(COLLAB)
    assert operator.client("brand").acknowledge_history_rewrite(COLLAB) is not None
    operator.client("brand").budget(COLLAB)


def test_an_older_head_and_a_cut_tail_are_caught(operator: Operator) -> None:
    _spend(operator)
    saved = operator.root / "old-heads"
    shutil.copytree(_head_files(operator), saved)
    assert operator.server is not None
    keep = operator.server.room.audit.last_sequence(COLLAB)
    _spend(operator, 3)
    operator.stop()
    operator.sql("DELETE FROM audit_log WHERE collab = ? AND seq > ?", COLLAB, keep)
    shutil.rmtree(_head_files(operator))
    shutil.copytree(saved, _head_files(operator))
    operator.start()
    assert operator.server is not None
    assert operator.server.room.audit.verify(COLLAB).valid  # the server's own check is fooled
    # the refunded budget is not shown to the member who saw the charges: reading it checks the head first
    with pytest.raises(HistoryRewrittenError, match="shrank"):
        operator.client("brand").budget(COLLAB)
    # ... while a client that remembers nothing (a new state directory) cannot tell: the documented limit
    operator.client("brand", state="-fresh").budget(COLLAB)


def test_the_next_charge_after_a_cut_tail_is_refused_by_its_receipt(operator: Operator) -> None:
    assert operator.server is not None
    keep = operator.server.room.audit.last_sequence(COLLAB)
    saved = operator.root / "old-heads"
    shutil.copytree(_head_files(operator), saved)
    _spend(operator, 2)
    operator.stop()
    operator.sql("DELETE FROM audit_log WHERE collab = ? AND seq > ?", COLLAB, keep)
    shutil.rmtree(_head_files(operator))
    shutil.copytree(saved, _head_files(operator))
    operator.start()
    with pytest.raises(HistoryRewrittenError, match="shrank"):
        _spend(operator)  # the charge's receipt shows a smaller tree than the brand saw
    with pytest.raises(HistoryRewrittenError, match="acknowledge"):
        _spend(operator)  # and the collaboration stays refused until the incident is acknowledged


def test_rolling_back_the_whole_data_directory_is_caught_even_after_the_log_grows_again(operator: Operator) -> None:
    operator.stop()
    snapshot = operator.root / "snapshot"
    shutil.copytree(operator.data, snapshot)
    operator.start()
    _spend(operator, 2)
    operator.client("auditor").verify_audit_log(COLLAB)
    operator.stop()
    shutil.rmtree(operator.data)
    shutil.copytree(snapshot, operator.data)
    operator.start()
    # another member's actions (refusals are logged too) grow the rolled-back log past what the brand saw: sizes
    # alone would not tell
    for _ in range(6):
        with contextlib.suppress(PermissionDeniedError):
            operator.client("platform").overlap(COLLAB, epsilon=0.1)
    with pytest.raises(HistoryRewrittenError, match="does not extend"):
        _spend(operator)
    with pytest.raises(HistoryRewrittenError):
        operator.client("auditor").verify_audit_log(COLLAB)


def test_two_members_shown_two_histories_find_the_fork_by_comparing_heads(operator: Operator, pki: DevPki) -> None:
    operator.stop()
    fork = operator.root / "fork"
    shutil.copytree(operator.data, fork)
    operator.start()
    other = start_server(fork, pki)
    try:
        _spend(operator)  # the brand's history
        platform = CleanRoomClient(
            f"localhost:{other.port}",
            token=operator.tokens["platform"],
            root_certificates=pki.ca,
            state_dir=operator.root / "state-platform-forked",
            executor=SerialExecutor(),
            progress=False,
        )
        try:
            with contextlib.suppress(PermissionDeniedError):  # the platform's refusal, on the forked copy
                platform.overlap(COLLAB, epsilon=0.2)
            brand_head = operator.client("brand").audit_head(COLLAB)
            assert brand_head["size"] == platform.audit_head(COLLAB)["size"]  # same length, different entries
            with pytest.raises(HistoryRewrittenError, match="fork"):
                platform.compare_audit_head(COLLAB, brand_head)
        finally:
            platform.close()
        # on one history, heads of different sizes compare fine
        older = operator.client("brand").audit_head(COLLAB)
        _spend(operator)
        assert operator.client("platform").compare_audit_head(COLLAB, older)["consistent"]
    finally:
        other.stop(None)


def _cli_env(op: Operator, name: str) -> dict[str, str]:
    assert op.server is not None
    return {
        "CLEANROOM_TARGET": f"localhost:{op.server.port}",
        "CLEANROOM_TOKEN": op.tokens[name],
        "CLEANROOM_CA": str(op.pki.ca),
        "CLEANROOM_STATE_DIR": str(op.root / f"cli-state-{name}"),
    }


def test_the_cli_exports_compares_and_checks_heads_and_an_auditor_offline_catches_a_rollback(
    operator: Operator,
) -> None:
    from typer.testing import CliRunner

    from cleanroom.cli import app as operator_app
    from cleanroom_client.cli import app

    runner = CliRunner()
    brand, platform = _cli_env(operator, "brand"), _cli_env(operator, "platform")
    assert runner.invoke(app, ["overlap", COLLAB, "--epsilon", "0.5"], env=brand).exit_code == 0
    checked = runner.invoke(app, ["-o", "json", "budget", COLLAB, "--check"], env=brand)
    assert checked.exit_code == 0, checked.output
    row = json.loads(checked.output)["rows"][0]
    assert (row["receipts_spent"], row["consistent"]) == (0.5, True)
    head_file = operator.root / "brand-head.json"
    r = runner.invoke(app, ["audit", "head", COLLAB, "--to", str(head_file)], env=brand)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["audit", "compare", COLLAB, str(head_file)], env=platform)
    assert r.exit_code == 0, r.output
    assert "consistent" in r.output

    # the auditor verifies exports offline and remembers the tree head; a rolled-back export then fails
    auditor = operator.client("auditor")
    key, remember = operator.root / "server.pem", operator.root / "auditor-head.json"
    key.write_text(auditor.server_public_key())
    early = auditor.export_audit_log(operator.root / "early.jsonl", COLLAB)
    _spend(operator, 2)
    late = auditor.export_audit_log(operator.root / "late.jsonl", COLLAB)
    verify = ["audit", "verify", "--public-key", str(key), "--remember", str(remember)]
    r = runner.invoke(operator_app, [*verify, str(late)])
    assert r.exit_code == 0, r.output
    assert json.loads(remember.read_text())["size"] == len(late.read_text().splitlines()) - 1
    r = runner.invoke(operator_app, [*verify, str(early)])
    assert r.exit_code == 1
    assert "shrank" in r.output
    assert "VALID" in runner.invoke(operator_app, ["audit", "verify", "--public-key", str(key), str(early)]).output
