"""A match whose blinding workers die (a worker, or the fork server they are forked from): a typed error that
says so, and calling match() again with the same client resumes and completes.

Before, the error inside the upload's request stream reached the member as `UNKNOWN: Exception iterating
requests!`, and the client kept its broken pool, so every later match() of that client failed the same way.
"""

from __future__ import annotations

import threading

import pytest

from cleanroom.devtools.synthetic import SyntheticConfig, generate
from cleanroom_client import MatchSummary, WorkersLostError


def test_a_match_whose_fork_server_died_fails_with_a_typed_error_and_resumes(active, make_client, fork_server_killer):
    data = generate(SyntheticConfig(brand_users=150, platform_users=180, shared=90, seed=4))
    clients = {"brand": make_client("brand", own_pool=True), "platform": make_client("platform")}
    brand = clients["brand"]
    brand._get_executor()  # the client's own pool, as a first match would leave it
    fork_server_killer()
    other: dict[str, object] = {}

    def run_platform() -> None:
        try:
            other["summary"] = clients["platform"].match(
                active, data.platform_users, key="user_id", identifiers={"email": "email"}, wait_timeout=120
            )
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            other["summary"] = exc

    thread = threading.Thread(target=run_platform)
    thread.start()
    try:

        def match() -> MatchSummary:
            return brand.match(
                active, data.brand_users, key="customer_id", identifiers={"email": "email"}, wait_timeout=120
            )

        with pytest.raises(WorkersLostError, match=r"call match\(\) again"):
            match()
        summary = match()
    finally:
        thread.join()
    assert summary.peer_set_size == 180
    assert not isinstance(other["summary"], Exception), other["summary"]


def _die(job: object) -> None:
    """A blinding job whose worker is killed mid-chunk (as by the OOM killer)."""
    import os

    os._exit(1)


def test_the_cli_says_in_one_line_that_a_blinding_worker_died(active, tmp_path, monkeypatch, member_env):
    from typer.testing import CliRunner

    from cleanroom_client import matching
    from cleanroom_client.cli import app

    monkeypatch.setattr(matching, "blind_identifiers", _die)
    data = generate(SyntheticConfig(brand_users=100, platform_users=100, shared=50, seed=4))
    data.brand_users.to_csv(tmp_path / "crm.csv", index=False)
    env = member_env("brand")
    arguments = ["--no-progress", "match", active, "--users", str(tmp_path / "crm.csv"), "--key", "customer_id"]
    r = CliRunner().invoke(app, [*arguments, "--identifier", "email=email"], env=env)
    assert isinstance(r.exception, SystemExit), r.exception  # not a traceback
    assert r.exit_code == 1
    assert "blinding worker" in r.output
    assert "run the same command again to resume" in " ".join(r.output.split())
