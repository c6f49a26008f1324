"""The attribution accuracy benchmark: its pandas truth is the engine's exact answer, and its quick run works."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cleanroom.analytics.engine import QueryEngine
from cleanroom.devtools.synthetic import DEMO_POLICY, generate
from cleanroom.room import Room

ROOT = Path(__file__).resolve().parents[2]


def _load_bench() -> Any:
    """benchmarks/accuracy_attribution.py as a module (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "accuracy_attribution", ROOT / "benchmarks" / "accuracy_attribution.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


class NoNoise:
    """Hands back the exact vectors (the engine's answer is then the exact attribution)."""

    def release(self, counts: list[int], sensitivity: int, epsilon: float) -> tuple[list[int], float]:
        return list(counts), sensitivity / epsilon


def test_the_pandas_truth_is_the_engines_exact_answer(tmp_path) -> None:
    data = generate(bench.QUICK.config)
    room = Room.open(tmp_path)
    try:
        # without the per-person bound, which the truth does not apply (the benchmark counts its clipping as error)
        policy = re.sub(r", per_person_max: \{value: [0-9.e+]+\}", "", DEMO_POLICY)
        assert policy != DEMO_POLICY
        collab = bench.load(room, data, policy)
        engine = QueryEngine(room.store, room.collaborations, room.budget, room.audit, NoNoise())
        for model in ("last_touch", "linear", "time_decay"):
            q = bench.AttributionQuery(model, 30, "channel", 1.0, half_life_days=2.0)
            truth = bench.truth(data, q, 0.0, 300.0, 3)
            cells = {(c.keys[0], c.measure): c.value for c in engine.attribution(bench.BRAND, collab, q).cells}
            assert set(truth.index) == {"search", "feed", "video", "none"}
            for g, row in truth.iterrows():
                assert cells[(g, "attributed_conversions")] == pytest.approx(row["conversions"], abs=0.01)
                # whole cents by largest remainder against float shares: a cent at most per conversion
                assert cells[(g, "attributed_revenue")] == pytest.approx(row["revenue"], rel=1e-3)
    finally:
        room.close()


def test_the_pandas_truth_applies_the_per_person_bound_as_the_query_does(tmp_path) -> None:
    """With the demo's per_person_max the truth scales each person's conversions down as `attribution.bounded` does."""
    data = generate(bench.QUICK.config)
    room = Room.open(tmp_path)
    try:
        collab = bench.load(room, data, DEMO_POLICY)
        engine = QueryEngine(room.store, room.collaborations, room.budget, room.audit, NoNoise())
        q = bench.AttributionQuery("linear", 30, "channel", 1.0)
        truth = bench.truth(data, q, 0.0, 300.0, 3, 30_000)
        raw = bench.truth(data, q, 0.0, 300.0, 3)
        assert (truth["revenue"] < raw["revenue"] - 1).any()  # the bound binds in this world
        cells = {(c.keys[0], c.measure): c.value for c in engine.attribution(bench.BRAND, collab, q).cells}
        for g, row in truth.iterrows():
            assert cells[(g, "attributed_conversions")] == pytest.approx(row["conversions"], abs=0.01)
            assert cells[(g, "attributed_revenue")] == pytest.approx(row["revenue"], rel=1e-3)
    finally:
        room.close()


def test_the_quick_run_prints_each_measure(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accuracy_attribution.py"), "--quick", "--repeats", "2"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for measure in ("attributed_conversions", "attributed_revenue", "roas"):
        assert measure in done.stdout
    assert "clip bias" in done.stdout
