"""`cleanroom conformance run` over real gRPC with TLS: the SDK as the partner gets exactly the published overlap,
a partner that normalizes emails with Python's strip() and lower() is caught by the exact pair counts, and a
partner whose users table is not in its row-number order is caught by the attributes of the matched pairs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd

from cleanroom.conformance import run_reference_partner, start_session
from cleanroom_client import CleanRoomClient, SerialExecutor
from cleanroom_client.matching import MatchPlan, MatchRunner


class _NoTables(MatchRunner):
    """A member that matches and never uploads its users table."""

    def _send_tables(self, plan: MatchPlan) -> tuple[dict[str, int], dict[str, int]]:
        return {}, {}


class _UsersInFileOrder(MatchRunner):
    """A misbehaving member: its points carry random row numbers, but its users table numbers rows by file order.

    Every set size and pair count is right; only the attributes land on the wrong people.
    """

    def _tables(self, plan: MatchPlan) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
        tables, dropped = super()._tables(plan)
        users = plan.users[list(plan.attributes)].reset_index(drop=True)
        users.insert(0, "row_id", np.arange(len(users), dtype=np.int64))
        return {**tables, "users": users}, dropped


def test_the_sdk_as_partner_passes_the_run(tmp_path):
    args = ["conformance", "run", "--data-dir", str(tmp_path), "--self-test", "--rows", "60", "--timeout", "300"]
    done = subprocess.run(
        [sys.executable, "-m", "cleanroom.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
    assert "FAIL" not in done.stdout
    session = json.loads((tmp_path / "partner" / "session.json").read_text())
    assert session["expected"]["pairs"] == {"email": 12, "phone": 6, "device_id": 6}


def test_a_partner_with_pythons_strip_and_lower_gets_the_wrong_overlap(tmp_path):
    session = start_session(tmp_path, rows=60, seed=3)
    try:
        users = pd.read_json(session.partner_files["users.jsonl"], lines=True, dtype=False)
        wrong = [
            hashlib.sha256(v.strip().lower().encode()).hexdigest() if isinstance(v, str) and v.strip() else None
            for v in users["email"]
        ]
        users["email"] = wrong
        info = json.loads(session.partner_files["session.json"].read_text())
        with CleanRoomClient(
            info["target"],
            token=session.partner_files["token"].read_text().strip(),
            root_certificates=session.partner_files["ca.pem"],
            state_dir=tmp_path / "wrong-partner",
            executor=SerialExecutor(),
            progress=False,
        ) as client:
            client.match(info["collaboration"], users, key="key", identifiers=info["identifiers"], prehashed=["email"])
        result = session.wait(300)
        assert result is not None
        assert not result.passed
        assert result.pairs["email"] > session.expected.pairs["email"]  # the traps matched
    finally:
        session.stop()


def test_run_reference_partner_is_what_self_test_plays(tmp_path):
    session = start_session(tmp_path, rows=20, seed=4)
    try:
        run_reference_partner(session)
        result = session.wait(300)
        assert result is not None
        assert result.passed
    finally:
        session.stop()


def _play(session, tmp_path, runner_class) -> None:
    """The partner's side with the SDK's plan and `runner_class` in place of its runner."""
    info = json.loads(session.partner_files["session.json"].read_text())
    users = pd.read_json(session.partner_files["users.jsonl"], lines=True, dtype=False)
    with CleanRoomClient(
        info["target"],
        token=session.partner_files["token"].read_text().strip(),
        root_certificates=session.partner_files["ca.pem"],
        state_dir=tmp_path / "misbehaving-partner",
        executor=SerialExecutor(),
        progress=False,
    ) as client:
        plan = client._plan(users, info["key_column"], info["identifiers"], info["attributes"], {}, ())
        state = client.collaboration_dir(info["collaboration"].removeprefix("collaborations/"))
        runner = runner_class(
            client._matching, client._metadata, info["collaboration"], state, SerialExecutor(), progress=False
        )
        runner.run(plan, state / "blinding.key")


def test_a_partner_whose_users_table_is_not_in_row_number_order_fails_naming_the_first_wrong_pair(tmp_path):
    session = start_session(tmp_path, rows=60, seed=5)
    try:
        _play(session, tmp_path, _UsersInFileOrder)
        result = session.wait(300)
        assert result is not None
        # what the kit checked before: all of it right
        assert result.pairs == session.expected.pairs
        assert (result.own_set_size, result.peer_set_size) == (
            session.expected.own_set_size,
            session.expected.peer_set_size,
        )
        assert not result.passed
        assert result.wrong_pair is not None
        first = result.wrong_pair
        assert first.startswith("reference user r")
        assert "segment" in first
        ref_key = first.split()[2]  # the pair named: the reference user and the partner's user it should be
        assert f"your user {session.expected.partner_of[ref_key]}, segment" in first
    finally:
        session.stop()


def test_a_partner_that_never_uploads_its_users_table_fails_after_the_grace(tmp_path):
    session = start_session(tmp_path, rows=20, seed=6, users_table_grace=0.5)
    try:
        _play(session, tmp_path, _NoTables)
        result = session.wait(300)
        assert result is not None
        assert result.pairs == session.expected.pairs
        assert not result.passed
        assert result.wrong_pair is not None
        assert "users table (with `segment`) was not uploaded within 0.5 s" in result.wrong_pair
    finally:
        session.stop()
