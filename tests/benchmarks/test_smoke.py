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
        timeout=400,
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
        "--pairs",
        "2",
    )
    assert set(result["models"]) == {"last_touch", "first_touch", "linear", "time_decay", "position_based"}
    assert set(result["pairs"]) == set(result["models"])
    assert all(0 < p["least"] <= p["median"] for p in result["pairs"].values())
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
    assert result["floor_seconds"] >= result["limit_seconds"] > 0  # both rounded to 10 ms: equal at n = 500
    assert result["cpu_ratio_to_limit"] > 0
    assert result["x25519_cpu_us"] > 0
    for member in ("brand", "platform"):
        # the relay saw at least the protocol's payload: 32-byte points plus 8-byte tags up, 32-byte points down
        assert result[f"bytes_per_identifier_up_{member}"] >= 40
        assert result[f"bytes_per_identifier_down_{member}"] >= 32
        assert result[f"peak_rss_mb_{member}_main"] > 0
        # the blinding workers' CPU is counted: they are the fork server's children, not the member's
        assert result[f"cpu_seconds_{member}_workers"] > 0
        # the phases of the member's match, each timed, add up to the match's wall time
        phases = ("points", "tables", "double_blind", "join_wait", "outside_run")
        assert all(result[f"stage_s_{member}_{p}"] >= 0 for p in phases)
        assert sum(result[f"stage_s_{member}_{p}"] for p in phases) <= result["seconds"] + 0.05
    from cleanroom_client.curve import NATIVE

    assert result["native_hash_to_curve"] is NATIVE  # the run says which hash to curve it measured
    from cleanroom_client.curve import X25519_NATIVE

    if X25519_NATIVE:  # the limit at the native X25519's speed too, beside cryptography's
        assert result["x25519_native_path"] == X25519_NATIVE
        assert result["x25519_native_cpu_us"] > 0
        assert result["limit_seconds_native_limit"] <= result["limit_seconds"]
        assert result["cpu_ratio_to_native_limit"] >= result["cpu_ratio_to_limit"]
    if "openmined_seconds" in result:  # its venv exists (make bench-openmined-venv): compared in CPU time too
        assert result["openmined_cpu_seconds"] > 0
        assert result["cpu_speedup_over_openmined"] > 0


def test_x25519_benchmark_runs(tmp_path):
    from cleanroom_client.curve import X25519_PATHS

    result, _ = _bench(
        "bench_x25519.py", tmp_path / "x25519.json", "--points", "64", "--rounds", "1", "--kernels-points", "64"
    )
    assert result["us_per_op_cryptography"] > 0
    for path in X25519_PATHS:  # every native path timed, and checked equal to cryptography on the way
        assert result[f"speedup_{path}_over_cryptography"] > 0
        assert result[f"us_per_hash_to_curve_{path}"] > 0  # the README's per-path hash and check figures
        assert result[f"us_per_point_check_{path}"] > 0
    if X25519_PATHS:
        assert result["us_per_point_check_gmpy2"] > 0


def test_join_benchmark_runs(tmp_path):
    result, _ = _bench("bench_join.py", tmp_path / "join.json", "--n", "70000", "--memory-limit", "1GB")
    assert result["pairs"] == result["shared"] == 35000  # the real join found every shared person, no one else
    assert result["run_peak_rss_mb"] > 0
    assert result["relay_join_seconds"] > 0


def test_ray_blinding_benchmark_runs(tmp_path):
    result, _ = _bench(
        "bench_ray_blinding.py", tmp_path / "ray.json", "--n", "600", "--chunk", "100", "--ray-workers", "2"
    )
    engines = result["engines"]
    assert set(engines) == {"one core", "process pool, 2 workers", "ray, 2 workers"}
    assert all(e["ids_per_second"] > 0 for e in engines.values())
    assert engines["ray, 2 workers"]["vs_pool"] > 0


def test_startup_benchmark_runs(tmp_path):
    result, stdout = _bench(
        "bench_startup.py", tmp_path / "startup.json", "--repeat", "1", "--log-entries", "40", "--no-warm-up"
    )
    assert [int(n) for n in result["server_start"]] == [40]
    assert set(result["seconds"]) == {
        "floor: python -c 'import grpc, pandas'",
        "cleanroom admin --help",
        "cleanroom-client --help",
        "python -c 'import cleanroom.room'",
        "cleanroom admin rotate-token (no server)",
        "cleanroom-client budget c (no server)",
    }
    assert "x floor" in stdout
    assert result["warm_up"] is False  # the figures say they include a cold first run


def test_refresh_benchmark_runs(tmp_path):
    result, _ = _bench("bench_refresh.py", tmp_path / "refresh.json", "--n", "1000")
    assert result["new_per_member"] == 10
    assert result["x25519_ops_refresh"] * 100 == result["x25519_ops_match"]
    assert result["match_seconds"] > 0
    assert result["refresh_seconds"] > 0
    # 1000 - 1 retired + 10 new, on each side
    assert result["set_sizes_after"] == [1009, 1009]


def test_chain_benchmark_runs(tmp_path):
    result, _ = _bench("bench_chain.py", tmp_path / "chain.json", "--n", "800")
    assert result["ops_three_over_two"] == 3
    assert result["pairs_two"] == {"platform": 400}
    assert result["pairs_three"] == {"jd": 400, "tencent": 600}


def test_retire_benchmark_runs(tmp_path):
    results, _ = _bench("bench_retire.py", tmp_path / "retire.json", "--n", "2000", "--retirements", "3")
    (result,) = results
    assert result["n"] == 2000
    assert result["retirements"] == 3
    assert result["whole_join_s"] > 0
    assert result["retire_median_s"] > 0


def test_accuracy_benchmark_runs(tmp_path):
    result, stdout = _bench("bench_accuracy.py", tmp_path / "accuracy.json", "--quick")
    rows = result["rows"]
    assert {r["query"] for r in rows} >= {"value", "value by brand.tier", "lift", "loyalty"}
    measures = {(r["query"], r["measure"]) for r in rows}
    assert {("value", "sum"), ("value", "per_buyer"), ("lift", "incremental_revenue")} <= measures
    assert all(0 <= r["coverage"] <= 1 and r["median"] <= r["worst"] for r in rows)
    assert "| coverage |" in stdout
