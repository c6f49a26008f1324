"""The demo's heavy imports wait for the step that uses them (issue 33: the demo's time).

The three-member story never writes a report, so it must not pay for matplotlib (about half a second of a quiet
machine's start-up, more on a busy one); the two-member story imports it on its warm-up thread, beside the match.
"""

from __future__ import annotations

import subprocess
import sys


def _imported_after(statement: str) -> set[str]:
    probe = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(done.stdout.split())


def test_the_demos_do_not_import_the_report_or_torch_when_loaded():
    for module in ("cleanroom.devtools.demo", "cleanroom.devtools.demo_platforms", "cleanroom.cli"):
        loaded = _imported_after(f"import {module}")
        assert "matplotlib" not in loaded, module
        assert "cleanroom_client.report" not in loaded, module
        assert "torch" not in loaded, module
