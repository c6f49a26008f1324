"""The README's first-report walkthrough, run exactly as written: a newcomer's path must not rot.

The block after `<!-- walkthrough -->` is extracted verbatim and run by bash (`set -euo pipefail`) in an empty
directory, with the project's virtualenv first on PATH (what `source .venv/bin/activate` does). It starts a real
server on port 50051, matches both members over TLS from CSV files, asks queries, releases an audience to the
platform, refreshes the room with new customers and writes both reports; then three members draft their sides of
a policy, merge them, match and ask (issue 32); an auditor writes its reports of both rooms (issue 34).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- walkthrough -->\n```sh\n(.*?)\n```", text, re.S)
    assert found, "README.md lost its walkthrough block (<!-- walkthrough --> then a ```sh block)"
    return found.group(1)


def test_readme_walkthrough_runs_verbatim(tmp_path):
    import matplotlib

    script = walkthrough()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CLEANROOM_")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "COLUMNS": "160",
        # A fresh home for the walkthrough's own state (~/.cleanroom), but the machine's matplotlib font cache: in
        # an empty home the first report rebuilt it (a scan of every installed font, 2-3 s), which is the
        # machine's set-up, not a step of the README.
        "MPLCONFIGDIR": matplotlib.get_cachedir(),
    }
    # Whatever happens, the background server does not outlive the test.
    wrapped = f"set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}\n"
    run = subprocess.run(
        ["bash", "-c", wrapped], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    shown = f"stdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
    assert run.returncode == 0, shown
    assert "Traceback" not in run.stdout + run.stderr, shown
    trial = tmp_path / "trial"
    for lang in ("en", "zh"):
        page = (trial / f"report-{lang}" / "index.html").read_text(encoding="utf-8")
        assert page.count('class="chart"') >= 6, lang
    assert "4A 人群资产" in (trial / "report-zh" / "index.html").read_text(encoding="utf-8")
    assert "active" in run.stdout  # both approved the revision they read
    assert "spent" in run.stdout  # the budget table
    assert "connected to localhost:50051 as brand (member)" in run.stdout  # ping says who you are
    audience = (trial / "audience.csv").read_text(encoding="utf-8").splitlines()
    assert audience[0] == "user_id"  # the platform's own key column...
    assert len(audience) > 100  # ...over its own ids
    assert "refresh period 1: 150 added" in run.stdout  # straight after the match
    merged = (trial / "room3" / "policy.yaml").read_text(encoding="utf-8")
    assert "hub: brand" in merged
    assert "jd:\n    abilities: [contribute, receive_audiences]" in merged
    assert "Venn" in run.stdout
    # the auditor's reports: verification first, online and offline, in both languages
    for page, verified in (
        ("audit-en", "Signed, but not checked against any earlier head"),  # the auditor's first look
        ("audit-zh", "验证通过：全部"),  # against the head it kept (--remember)
        ("audit-room3-zh", "已签名，但未与任何先前的链头比对"),
    ):
        text = (trial / f"{page}.html").read_text(encoding="utf-8")
        assert text.index(verified) < text.index("<h1>"), page
    assert "room3" in (trial / "audit-room3-zh.html").read_text(encoding="utf-8")
