# ruff: noqa: N806 - X is the conventional name of a design matrix
"""Fit + search time and peak memory per model, against a numpy workload in the same run.

    .venv/bin/python bench/fit_memory.py [--models linear,lightgbm,gp,auto] [--repeats 1]

Two swarms: RegMix's 512 training runs (17 domains, target Pile-CC loss, from
``../shared/data/regmix``) and a synthetic one of 512 runs over 64 domains (Dirichlet mixtures,
a loss that is a noisy weighted sum of ``log(w)``). For each swarm and model, a fresh child
process loads the swarm, then times what ``POST /fit`` does (``mixers.fitting.fit_model``:
cross-validation, importance, refit) and the recommendation search after it
(``mixers.recommendation.recommend`` with the service's time budget), and reports its peak RSS
(``getrusage`` max RSS) and how much of it the fit and search added over the process after its
imports and data. ``calibration`` is the fixed numpy workload of ``bench/mixers_speed.py``, in a
child of its own the same way: ``total / calibration`` compares runs on different machines.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("linear", "lightgbm", "gp", "auto")
SWARMS = ("regmix", "synthetic64")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def swarm(name: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    if name == "regmix":
        from tests.regmix_data import load_regmix

        return load_regmix("train")
    rng = np.random.default_rng(0)
    k, n = 64, 512
    X = rng.dirichlet(np.full(k, 0.5), size=n)
    effect = rng.normal(0, 0.05, size=k)
    y = 3.0 + np.log(np.clip(X, 1e-6, None)) @ effect / k + rng.normal(0, 0.01, size=n)
    return X, y, [f"d{i:02d}" for i in range(k)], [f"s-{i}" for i in range(n)]


def run_case(swarm_name: str, model: str, seed: int) -> dict[str, Any]:
    from mixers.base import DomainSpace
    from mixers.fitting import fit_model
    from mixers.recommendation import SEARCH_SECONDS, recommend

    X, y, names, ids = swarm(swarm_name)
    space = DomainSpace.from_swarm(names, X)
    before = peak_mb()
    started = time.perf_counter()
    result = fit_model(X, y, ids, model=model, names=names, seed=seed)
    fitted = time.perf_counter()
    rng = np.random.default_rng([seed, len(y)])
    rec = recommend(space, result, rng, max_seconds=SEARCH_SECONDS)
    return {
        "fit_seconds": fitted - started,
        "search_seconds": time.perf_counter() - fitted,
        "model": result.model,
        "scored": rec.search.candidates,
        "base_mb": before,
        "peak_mb": peak_mb(),
    }


def run_calibration() -> dict[str, Any]:
    from bench.mixers_speed import calibration

    before = peak_mb()
    started = time.perf_counter()
    calibration()
    return {"seconds": time.perf_counter() - started, "base_mb": before, "peak_mb": peak_mb()}


def child(*args: str) -> dict[str, Any]:
    """One case in a fresh interpreter (so its peak memory is its own); its JSON result."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--swarms", default=",".join(SWARMS))
    parser.add_argument("--repeats", type=int, default=1, help="children per case (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] == "calibration":
            print(json.dumps(run_calibration()))
        else:
            print(json.dumps(run_case(args.child[0], args.child[1], args.seed)))
        return

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    calibrations = [child("calibration") for _ in range(args.repeats)]
    print(
        f"calibration (numpy workload): {median(calibrations, 'seconds'):.2f} s, "
        f"peak {median(calibrations, 'peak_mb'):.0f} MB"
    )
    header = (
        f"{'swarm':12} {'model':9} {'chose':9} {'fit s':>7} {'search s':>9} {'total s':>8}"
        f" {'/calib':>7} {'scored':>9} {'peak MB':>8} {'added MB':>9}"
    )
    print(header)
    for swarm_name in args.swarms.split(","):
        for model in args.models.split(","):
            # Interleaved with the calibration, so a busy spell slows both alike.
            runs = []
            for _ in range(args.repeats):
                runs.append(child(swarm_name, model, "--seed", str(args.seed)))
                calibrations.append(child("calibration"))
            fit, search = median(runs, "fit_seconds"), median(runs, "search_seconds")
            peak = median(runs, "peak_mb")
            print(
                f"{swarm_name:12} {model:9} {runs[0]['model']:9} {fit:7.2f} {search:9.2f}"
                f" {fit + search:8.2f} {(fit + search) / median(calibrations, 'seconds'):7.1f}"
                f" {int(median(runs, 'scored')):>9,} {peak:8.0f}"
                f" {peak - median(runs, 'base_mb'):9.0f}"
            )
    print(f"calibration over the whole run: {median(calibrations, 'seconds'):.2f} s (median)")


if __name__ == "__main__":
    main()
