"""The base SDK stays free of Ray: it is only in the `ray` extra, and importing the SDK never imports it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[3] / "clients" / "python" / "pyproject.toml"


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_base_requirements_exclude_ray_and_the_extra_has_it():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert "ray" not in _names(project["dependencies"])
    assert "ray" in _names(project["optional-dependencies"]["ray"])


def test_importing_the_sdk_does_not_import_ray():
    modules = "cleanroom_client, cleanroom_client.cli, cleanroom_client.ray_engine"  # the engine imports Ray when made
    code = f"import sys, {modules}; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
