"""The demo end to end, small, and its report opened in headless Chromium (Debian's package)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from cleanroom.devtools.demo import run_demo

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Debian's chromium is needed for this test: apt-get install chromium (make test does it)"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_writes_a_report_that_loads_with_all_its_charts(tmp_path):
    report = tmp_path / "report"
    run_demo(3000, 5000, 1500, None, report)
    page = report / "index.html"
    assert page.exists()
    for chart in ("funnel", "flow", "tgi", "value", "loyalty", "attribution", "lift", "budget"):
        assert (report / f"{chart}.png").stat().st_size > 5000, chart
    html = page.read_text()
    assert "http://" not in html
    assert "https://" not in html

    dom = _chromium(page, tmp_path / "profile-1", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert re.search(r'data-charts="8"', dom.stdout), "not every chart rendered in the browser"
    assert "CONSOLE" not in dom.stderr, [line for line in dom.stderr.splitlines() if "CONSOLE" in line]

    shot = tmp_path / "report.png"
    taken = _chromium(page, tmp_path / "profile-2", "--window-size=1280,2400", f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.stat().st_size > 50_000
