"""Two members on one machine, one home directory, default state: each keeps its own (they used to collide)."""

from __future__ import annotations

import threading
from typing import Any

from cleanroom.devtools.synthetic import SyntheticConfig, generate
from cleanroom_client import CleanRoomClient, SerialExecutor
from cleanroom_client.client import default_state_dir


def test_default_state_is_keyed_by_server_and_credential(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    a = default_state_dir("localhost:50051", "crt_a", None)
    assert a == default_state_dir("localhost:50051", "crt_a", None)
    assert a != default_state_dir("localhost:50051", "crt_b", None)
    assert a != default_state_dir("otherhost:50051", "crt_a", None)
    assert a.is_relative_to(tmp_path / ".cleanroom")
    assert "crt_a" not in str(a)  # a digest of the credential, never the credential


def test_two_members_sharing_a_home_directory_both_match(server, active, tokens, pki, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLEANROOM_STATE_DIR", raising=False)
    data = generate(SyntheticConfig(brand_users=200, platform_users=250, shared=100, seed=3))
    clients = {
        name: CleanRoomClient(
            f"localhost:{server.port}",
            token=tokens[name],
            root_certificates=pki.ca,
            executor=SerialExecutor(),
            progress=False,
            chunk_rows=64,
        )
        for name in ("brand", "platform")
    }
    jobs: dict[str, dict[str, Any]] = {
        "brand": {"users": data.brand_users, "key": "customer_id", "identifiers": {"email": "email"}},
        "platform": {"users": data.platform_users, "key": "user_id", "identifiers": {"email": "email"}},
    }
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = clients[name].match(active, wait_timeout=60, **jobs[name])
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        for name in clients:
            assert not isinstance(results[name], Exception), results[name]
        dirs = {name: c.state_dir for name, c in clients.items()}
        assert dirs["brand"] != dirs["platform"]
        for d in dirs.values():
            assert d.is_relative_to(tmp_path / "home" / ".cleanroom")
            assert (d / "collaborations" / active / "blinding.key").exists()
    finally:
        for c in clients.values():
            c.close()
