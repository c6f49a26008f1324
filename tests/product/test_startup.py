"""Startup stays light: the command lines and the server import neither torch, opacus, ray nor matplotlib, and a
member's command that needs no table (ping, list, show, approve, budget, the audit head...) neither pandas, pyarrow,
numpy nor jsonschema until an answer arrives to be shown as one.

Each check runs in a fresh interpreter (a subprocess), since this test process has long imported them all. The
time it takes is measured in benchmarks/bench_startup.py; here only what gets imported is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
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


#: What a member's command pays for only when it reads, blinds or shows a table, or checks a policy locally: about
#: 0.5 s of CPU at every start of `cleanroom-client` when they loaded with the SDK (benchmarks/README.md).
TABLES = ("pandas", "pyarrow", "numpy", "jsonschema", "tqdm")


def _loaded_after(body: str, modules: tuple[str, ...]) -> tuple[list[str], str]:
    """(which of `modules` a fresh interpreter holds after running `body`, what `body` printed to stderr)."""
    probe = f"""
import contextlib, io, json, sys
err = io.StringIO()
with contextlib.redirect_stderr(err):
{textwrap.indent(textwrap.dedent(body), "    ")}
print(json.dumps([sorted(m for m in {modules!r} if m in sys.modules), err.getvalue()]))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded, said = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded, said


@pytest.mark.parametrize("module", ["cleanroom_client.cli", "cleanroom_client.client"])
def test_the_sdk_and_the_command_line_import_no_table_library(module):
    assert _loaded_after(f"import {module}", TABLES)[0] == []


@pytest.mark.parametrize(
    "command",
    [
        ["ping"],
        ["list"],
        ["show", "c"],
        ["approve", "c", "--etag", "e"],
        ["budget", "c"],
        ["audit", "head", "c"],
        ["verify-audit-log", "c"],
        ["audit-log", "c"],
        ["audiences", "c"],
        ["overlap", "c"],
        ["cancel-refresh", "c"],
    ],
)
def test_a_member_command_that_needs_no_table_loads_no_table_library(command, tmp_path):
    # No server listens on port 1: every command fails at its first call, as it would after its answer arrives
    # (a table shown loads pandas then); until then it loads nothing it does not use.
    argv = ["cleanroom-client", "--target", "localhost:1", "--token", "t", "--insecure", *command]
    body = f"""
import os, sys
os.environ["CLEANROOM_STATE_DIR"] = {str(tmp_path)!r}
sys.argv = {argv!r}
from cleanroom_client.cli import run
try:
    run()
except SystemExit as exit:
    assert exit.code == 1, exit.code
"""
    loaded, said = _loaded_after(body, TABLES)
    assert "unavailable" in said.lower(), said
    assert loaded == []


def test_server_install_does_not_pull_matplotlib():
    for project in (ROOT / "pyproject.toml", ROOT / "clients/python/pyproject.toml"):
        deps = tomllib.loads(project.read_text())["project"]["dependencies"]
        assert not [d for d in deps if d.startswith("matplotlib")], project
    extras = tomllib.loads((ROOT / "clients/python/pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("matplotlib") for d in extras["report"])
