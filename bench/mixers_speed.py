# ruff: noqa: N806 - X is the conventional name of a design matrix
"""How long the mixers' hot paths take, against a fixed numpy workload timed in the same run.

    .venv/bin/python bench/mixers_speed.py [--repeats 3]

The unit tests check what these paths compute; this checks how fast, where a noisy machine
cannot fail a test. Each case is timed ``--repeats`` times (the median is printed) beside
``calibration``, a fixed numpy workload (matrix products and a sort) timed the same way, so the
ratio ``seconds / calibration`` compares runs on different machines. ``budget`` is the time
each case is expected to stay under on a 2-core machine; a case over it is flagged.

Cases: RegMix's design of 1000 mixtures over 20 domains; the recommendation search over 100k
candidates with a linear model (synthetic 5 domains, and the real RegMix swarm); one
1000-round LightGBM fit and the mixing_law, loglinear and gp fits on 512 runs of 17 domains
(CPU seconds, one thread); and a fit stored and loaded in the data-only format.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixers.base import DomainSpace
from mixers.fitting import fit_model
from mixers.offline.regmix import dirichlet_design
from mixers.persistence import dump_fit, load_fit
from mixers.recommendation import recommend
from mixers.regressors import LightGBMMixtureRegressor, make_regressor
from tests.regmix_data import DATA, load_regmix


def calibration() -> None:
    """A fixed workload: 40 products of 300 x 300 matrices and a sort of a million floats."""
    rng = np.random.default_rng(0)
    a = rng.random((300, 300))
    for _ in range(40):
        a = a @ a
        a /= a.max()
    np.sort(rng.random(1_000_000))


def timed(work: Callable[[], object], repeats: int, cpu: bool = False) -> float:
    clock = time.process_time if cpu else time.perf_counter
    seconds = []
    for _ in range(repeats):
        started = clock()
        work()
        seconds.append(clock() - started)
    return statistics.median(seconds)


def cases() -> list[tuple[str, float, bool, Callable[[], object]]]:
    """``(name, budget seconds, CPU time?, work)``."""
    wide = DomainSpace.from_domains(
        [{"name": f"d{i}", "prior": 10.0 ** -(i / 5)} for i in range(20)]
    )
    rng = np.random.default_rng(3)
    five = DomainSpace.from_domains([{"name": n} for n in ("a", "b", "c", "d", "e")])
    X5 = rng.dirichlet(np.ones(5), size=64)
    y5 = 3.0 + X5 @ np.array([0.0, -1.0, 0.2, -0.3, 0.1]) + rng.normal(0, 0.02, 64)
    linear5 = fit_model(
        X5, y5, [str(i) for i in range(64)], model="linear", names=five.names, seed=0
    )
    X17 = rng.dirichlet(np.full(17, 0.5), size=512)
    y17 = 3.0 + np.exp(X17 @ rng.uniform(-1.0, 1.0, size=17)) + rng.normal(0.0, 0.02, size=512)
    out: list[tuple[str, float, bool, Callable[[], object]]] = [
        ("regmix design, 1000 mixtures x 20 domains", 3.0, False,
         lambda: dirichlet_design(wide, 1000, np.random.default_rng(0))),
        ("search 100k candidates, linear, 5 domains", 2.0, False,
         lambda: recommend(five, linear5, np.random.default_rng(0))),
    ]  # fmt: skip

    def fit17(name: str) -> object:
        return make_regressor(name, 0).fit(X17, y17)

    for name, budget in (("mixing_law", 0.5), ("loglinear", 0.5), ("gp", 2.0)):
        out.append((f"{name} fit, 512 runs x 17 domains (CPU)", budget, True, partial(fit17, name)))
    if DATA.is_dir():
        X, y, names, ids = load_regmix("train")
        space = DomainSpace.from_swarm(names, X)
        linear = fit_model(X, y, ids, model="linear", names=names, seed=0)
        lightgbm = fit_model(X, y, ids, model="lightgbm", names=names, seed=0, importance=False)
        stored = dump_fit(lightgbm)
        out += [
            ("search 100k candidates, linear, RegMix", 2.0, False,
             lambda: recommend(space, linear, np.random.default_rng(0))),
            ("lightgbm fit, 1000 rounds, RegMix 512 runs", 10.0, False,
             lambda: LightGBMMixtureRegressor(random_state=0).fit(X, y)),
            ("lightgbm fit stored (data-only format)", 2.0, False, lambda: dump_fit(lightgbm)),
            ("lightgbm fit loaded (data-only format)", 1.0, False, lambda: load_fit(stored)),
        ]  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    unit = timed(calibration, args.repeats)
    print(f"calibration (fixed numpy workload): {unit:.3f} s")
    print(f"{'case':<46} {'seconds':>8} {'budget':>7} {'x calib':>8}")
    over = 0
    for name, budget, cpu, work in cases():
        seconds = timed(work, args.repeats, cpu=cpu)
        flag = "" if seconds <= budget else "  OVER BUDGET"
        over += seconds > budget
        print(f"{name:<46} {seconds:8.3f} {budget:7.1f} {seconds / unit:8.2f}{flag}")
    print(f"{over} case(s) over budget")


if __name__ == "__main__":
    main()
