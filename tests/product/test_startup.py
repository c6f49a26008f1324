"""Startup stays light: the command lines and the server import neither torch, opacus, ray nor matplotlib.

Each check runs in a fresh interpreter (a subprocess), since this test process has long imported them all. The
time it takes is measured in benchmarks/bench_startup.py; here only what gets imported is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cleanroom.storage.store import CATALOG_FILE

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "opacus", "ray", "matplotlib", "dp_accounting")

PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _heavy_after(body: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(body=body, heavy=HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "module", ["cleanroom.cli", "cleanroom_client.cli", "cleanroom_client", "cleanroom.server", "cleanroom.room"]
)
def test_entry_points_import_nothing_heavy(module):
    assert _heavy_after(f"import {module}") == []


def test_admin_command_runs_without_heavy_imports(tmp_path):
    body = f"""
from cleanroom.cli import app
try:
    app(["admin", "add-principal", "brand", "--data-dir", {str(tmp_path)!r}])
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
"""
    assert _heavy_after(body) == []
    assert (tmp_path / CATALOG_FILE).exists()  # the catalogue, where the principal was added


def test_server_install_does_not_pull_matplotlib():
    for project in (ROOT / "pyproject.toml", ROOT / "clients/python/pyproject.toml"):
        deps = tomllib.loads(project.read_text())["project"]["dependencies"]
        assert not [d for d in deps if d.startswith("matplotlib")], project
    extras = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("matplotlib") for d in extras["report"])
