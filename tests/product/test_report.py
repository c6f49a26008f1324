"""The demo end to end, then the brand's own report through `cleanroom-client report`, in English and Chinese,
each opened in headless Chromium (Debian's package) with a screenshot."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cleanroom.devtools.demo import console as demo_console
from cleanroom.devtools.demo import run_demo
from cleanroom_client.answers import load
from cleanroom_client.cli import app
from cleanroom_client.client import collaboration_dir

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
CHARTS = (
    "overlap",
    "funnel",
    "flow",
    "segment",
    "value",
    "loyalty",
    "attribution-last_touch",
    "attribution-position_based",
    "lift-c-2026-11",
)
#: Where a screenshot is kept for a person to review (`make test` leaves them here).
SHOTS = Path(__file__).resolve().parents[2] / "build" / "report-screenshots"


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


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo run once; its members' state (the answers they received) kept under the returned directory."""
    root = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    saved, demo_console.file = demo_console.file, printed
    try:
        run_demo(3000, 5000, 1500, None, root / "report", state_dir=root / "state")
    finally:
        demo_console.file = saved
    (root / "printed.txt").write_text(printed.getvalue())
    return root


def test_demo_prints_the_elapsed_time_of_each_step_and_in_all(demo):
    printed = (demo / "printed.txt").read_text()
    steps = re.findall(r"⏱ ([a-z ,]+): (\d+\.\d) s$", printed, flags=re.MULTILINE)
    assert [name for name, _ in steps] == [
        "synthetic data",
        "embedded server",
        "clients and policy",
        "match",
        "queries",
        "lookalike and activation",
        "audit",
        "report",
        "auditor report",
    ]
    total = re.search(r"⏱ the demo \(a brand and a platform\): (\d+\.\d) s in all", printed)
    assert total is not None
    assert float(total[1]) >= sum(float(s) for _, s in steps) - 0.1 * len(steps)


def _open_in_chromium(page: Path, profile: Path, charts: int, shot: Path) -> str:
    dom = _chromium(page, profile / "dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert re.search(rf'data-charts="{charts}"', dom.stdout), "not every chart rendered in the browser"
    assert "CONSOLE" not in dom.stderr, [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    taken = _chromium(page, profile / "shot", "--window-size=1280,2400", f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.stat().st_size > 50_000
    return dom.stdout


def test_demo_writes_the_brands_report_that_loads_with_all_its_charts(demo, tmp_path):
    report = demo / "report"
    page = report / "index.html"
    for chart in (*CHARTS, "budget"):
        assert (report / f"{chart}.png").stat().st_size > 5000, chart
    html = page.read_text()
    assert "http://" not in html
    assert "https://" not in html
    assert "withheld" in html or "Every cell" not in html
    SHOTS.mkdir(parents=True, exist_ok=True)
    _open_in_chromium(page, tmp_path, len(CHARTS) + 1, SHOTS / "demo-en.png")
    # the auditor's report of the same collaboration, from the auditor's export, in both languages
    for lang, verified in (("en", "Verified: all"), ("zh", "验证通过：全部")):
        audit = (report / f"audit-{lang}.html").read_text(encoding="utf-8")
        assert audit.index(verified) < audit.index("<h1>")
        assert (report / f"audit-{lang}-budget.png").stat().st_size > 5000


@pytest.mark.parametrize(
    ("lang", "words"),
    [
        ("en", ("4A funnel", "4A stage (platform)", "tier (brand)", "TGI (target group index)", "ε (epsilon)")),
        ("zh", ("4A 人群资产", "4A 阶段（平台方）", "会员等级（品牌方）", "TGI（目标群体指数）", "多触点归因")),
    ],
)
def test_member_report_of_its_own_collaboration_in_its_language(demo, tmp_path, lang, words):
    """`cleanroom-client report` draws what the brand received: no server, no ε, readable labels, en or zh."""
    state = demo / "state" / "brand"
    [collaboration] = [p.name for p in (state / "collaborations").iterdir()]
    kept = load(collaboration_dir(state, collaboration))
    assert (collaboration_dir(state, collaboration) / "answers.jsonl").stat().st_mode & 0o077 == 0  # private
    asked = {a.query for a in kept}
    assert {"funnel", "funnel_flow", "segment_insight", "value", "loyalty", "attribution", "lift"} <= asked
    assert {"lookalike", "activate"} <= asked
    assert all(a.frame.attrs["epsilon_spent"] > 0 for a in kept)  # released answers only, never a preview

    out = tmp_path / f"report-{lang}"
    result = CliRunner().invoke(
        app, ["report", collaboration, "--lang", lang, "--to", str(out)], env={"CLEANROOM_STATE_DIR": str(state)}
    )
    assert result.exit_code == 0, result.output
    assert f"report of {len(kept)} answers" in result.output
    dom = _open_in_chromium(out / "index.html", tmp_path, len(CHARTS) + 1, SHOTS / f"member-{lang}.png")
    for word in words:
        assert word in dom, word
    assert "platform.stage_4a" not in dom  # labels, not column paths
    spent = sum(a.epsilon_spent for a in kept)
    assert f"{round(spent, 3):g}" in dom  # the budget summary counts queries' ε, not seconds
    assert len(load(collaboration_dir(state, collaboration))) == len(kept)  # drawing asked nothing new


def test_report_says_what_to_do_without_answers_or_font(tmp_path):
    empty = CliRunner().invoke(
        app, ["report", "nothing-yet", "--to", str(tmp_path / "r")], env={"CLEANROOM_STATE_DIR": str(tmp_path)}
    )
    assert empty.exit_code == 0
    assert "ask a query first" in empty.output
    assert "cleanroom-client funnel nothing-yet" in (tmp_path / "r" / "index.html").read_text()
    bad = CliRunner().invoke(
        app, ["report", "x", "--lang", "fr", "--to", str(tmp_path / "f")], env={"CLEANROOM_STATE_DIR": str(tmp_path)}
    )
    assert bad.exit_code == 2
    assert "choose one of en, zh" in bad.output
