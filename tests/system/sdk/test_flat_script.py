"""The README's SDK example as a plain script (no `if __name__ == "__main__":`), with the default process pool.

Spawned workers used to re-run the script, which failed with `UNKNOWN: Exception iterating requests!`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

from cleanroom.devtools.synthetic import SyntheticConfig, generate

SCRIPT = textwrap.dedent(
    """
    import pandas as pd
    from cleanroom_client import CleanRoomClient

    print("script body runs")
    client = CleanRoomClient()  # CLEANROOM_TARGET, CLEANROOM_TOKEN, CLEANROOM_CA
    summary = client.match(
        "{collab}",
        users=pd.read_csv("{users}"),
        key="customer_id",
        identifiers={{"email": "email"}},
        wait_timeout=120,
    )
    print("peer set size", summary.peer_set_size)
    client.close()
    """
)


def test_match_from_a_flat_script_with_the_process_pool(server, active, tokens, pki, make_client, tmp_path):
    data = generate(SyntheticConfig(brand_users=150, platform_users=180, shared=90, seed=4))
    users = tmp_path / "crm.csv"
    data.brand_users.to_csv(users, index=False)
    script = tmp_path / "flat.py"
    script.write_text(SCRIPT.format(collab=active, users=users))
    env = {
        **os.environ,
        "CLEANROOM_TARGET": f"localhost:{server.port}",
        "CLEANROOM_TOKEN": tokens["brand"],
        "CLEANROOM_CA": str(pki.ca),
        "CLEANROOM_STATE_DIR": str(tmp_path / "brand-state"),
    }
    platform = make_client("platform")
    other: dict[str, object] = {}

    def run_platform() -> None:
        try:
            other["summary"] = platform.match(
                active, data.platform_users, key="user_id", identifiers={"email": "email"}, wait_timeout=120
            )
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            other["summary"] = exc

    thread = threading.Thread(target=run_platform)
    thread.start()
    run = [sys.executable, str(script)]
    r = subprocess.run(run, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    thread.join()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "peer set size 180" in r.stdout
    assert r.stdout.count("script body runs") == 1  # the workers did not run the script again
    assert not isinstance(other["summary"], Exception), other["summary"]
