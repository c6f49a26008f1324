"""A tiny run of each benchmark, so they keep working; their speed is measured by hand, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench(script: str, out: Path, *args: str) -> tuple[dict, str]:
    """Run benchmarks/`script` with `args` and `--json out`; its JSON result and what it printed."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout


def test_attribution_benchmark_runs(tmp_path):
    result, stdout = _bench(
        "bench_attribution.py",
        tmp_path / "attribution.json",
        "--exposures",
        "20000",
        "--conversions",
        "5000",
        "--people",
        "5000",
    )
    assert set(result["models"]) == {"last_touch", "first_touch", "linear", "time_decay", "position_based"}
    assert "position_based" in stdout


def test_query_benchmark_runs(tmp_path):
    result, _ = _bench("bench_queries.py", tmp_path / "queries.json", "--people", "5000", "--repeat", "1")
    assert len(result["queries"]) == 4
    assert all(q["plain_seconds"] > 0 for q in result["queries"].values())


def test_psi_benchmark_runs(tmp_path):
    result, _ = _bench("bench_psi.py", tmp_path / "psi.json", "--n", "500")
    assert result["n"] == 500
    assert result["seconds"] > 0
    assert result["x25519_ops_per_second"] > 0
    assert result["floor_seconds"] > result["limit_seconds"] > 0
    for member in ("brand", "platform"):
        # the relay saw at least the protocol's payload: 32-byte points plus 8-byte tags up, 32-byte points down
        assert result[f"bytes_per_identifier_up_{member}"] >= 40
        assert result[f"bytes_per_identifier_down_{member}"] >= 32
        assert result[f"peak_rss_mb_{member}_main"] > 0
