"""``mixopt demo``: its pieces, and the quick demo end to end as the README runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixopt.demo import DemoPlan, _simplex, objective_of, objective_value, real_domain_floor


def test_objective_averages_the_real_text_domains_only():
    objective = objective_of(("literature", "legal"))
    assert objective == {
        "metrics": {"val_loss/literature": 0.5, "val_loss/legal": 0.5},
        "direction": "minimize",
    }
    metrics = {"val_loss/literature": 2.0, "val_loss/legal": 1.0, "val_loss/noise": 8.0}
    assert objective_value(metrics, objective) == pytest.approx(1.5)


def test_real_domains_keep_a_floor_that_leaves_half_the_mixture_free():
    assert real_domain_floor(("a", "b", "c", "d")) == dict.fromkeys("abcd", 0.10)
    eight = real_domain_floor(tuple("abcdefgh"))
    assert sum(eight.values()) == pytest.approx(0.5)


def test_rounded_mixtures_still_sum_to_one_within_the_api_tolerance():
    domains = tuple(f"d{i}" for i in range(7))
    for weights in (
        dict.fromkeys(domains, 1.0),
        {d: float(i * 123_457 + 1) for i, d in enumerate(domains)},
        {d: (1.0 if i == 0 else 1e-12) for i, d in enumerate(domains)},
    ):
        rounded = _simplex(weights, domains)
        assert set(rounded) == set(domains)
        assert abs(sum(rounded.values()) - 1.0) < 1e-9
        assert all(w >= 0 for w in rounded.values())


def test_the_full_demo_trains_more_and_bigger_than_the_quick_one():
    quick = DemoPlan.make(quick=True, seed=3, backend="local")
    full = DemoPlan.make(quick=False, seed=3, backend="local")
    assert quick.proxy_runs < full.proxy_runs
    assert len(full.final_seeds) >= 2  # the recommendation must win on at least two seeds
    assert full.final_seeds[0] == 3


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_demo_runs_the_mission_and_the_recommendation_beats_uniform(tmp_path: Path):
    out = tmp_path / "demo.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mixopt.cli",
            "demo",
            "--quick",
            "--no-serve",
            "--workdir",
            str(tmp_path / "work"),
            "--port",
            "0",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=580,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["backend"] == "local"
    plan = DemoPlan.make(quick=True, seed=0, backend="local")
    assert result["proxy_runs_completed"] == plan.proxy_runs
    assert set(result["final"]) == {"recommended", "prior", "uniform"}
    assert result["final"]["recommended"] < result["final"]["uniform"]
    metrics = result["objective"]["metrics"]
    assert metrics and not any("noise" in name for name in metrics)
    assert set(result["floors"]) == {name.removeprefix("val_loss/") for name in metrics}
    method = result["online"]["method"]
    assert result["online"][method]["versions"] > 1
    assert "stratified" in result["online"]
    assert "the service keeps running" not in done.stdout
