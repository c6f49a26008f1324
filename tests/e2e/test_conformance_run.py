"""`cleanroom conformance run` over real gRPC with TLS: the SDK as the partner gets exactly the published overlap,
and a partner that normalizes emails with Python's strip() and lower() is caught by the exact pair counts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pandas as pd

from cleanroom.conformance import run_reference_partner, start_session
from cleanroom_client import CleanRoomClient, SerialExecutor


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
