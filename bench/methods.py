"""Every method against the baselines, one section per question of issue 15.

    .venv/bin/python bench/methods.py [--sections per-metric ...] [--seed 0]

Sections (each in a module of its own, composed here):

* ``per-metric``: per-metric vs aggregate fits on the real RegMix swarm, objective the mean of the
  13 per-domain validation losses (``bench/methods_permetric.py``).
* ``offline``: gap closed at 64 and 128 runs per offline method and model, with the model's
  global Spearman, on hidden laws (several laws, K, noise levels, seeds), and the RegMix swarm
  by backtest (``bench/methods_offline.py``; ``--offline-*`` pick the grid).
* ``online``: head-room captured per online method (odm, aioli, doremi, curves) and seed on the
  online simulator; ``--online-real`` adds curves against stratified on real text
  (``bench/methods_online.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.methods_offline import run_section as offline_section
from bench.methods_online import run_section as online_section
from bench.methods_permetric import run_section as per_metric_section

SECTIONS: dict[str, Callable[[argparse.Namespace], object]] = {
    "per-metric": lambda args: per_metric_section(
        seed=args.seed,
        experiment=None
        if args.per_metric_experiment is None
        else tuple(args.per_metric_experiment),
    ),
    "offline": lambda args: offline_section(
        models=args.offline_models,
        laws=args.offline_laws,
        ks=args.offline_ks,
        noises=args.offline_noises,
        seeds=args.offline_seeds,
        regmix=not args.offline_no_regmix,
    ),
    "online": lambda args: online_section(real=args.online_real),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=sorted(SECTIONS),
        default=list(SECTIONS),
        help="sections to run (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and the fits")
    per_metric = parser.add_argument_group("per-metric section")
    per_metric.add_argument(
        "--per-metric-experiment",
        nargs=2,
        metavar=("DATABASE_URL", "ID"),
        default=None,
        help="also a mixopt experiment's runs (e.g. the demo's: sqlite:///W/mixopt.db 1)",
    )
    offline = parser.add_argument_group("offline section")
    offline.add_argument("--offline-models", nargs="+", default=["auto"], help="models fitted")
    offline.add_argument(
        "--offline-laws", nargs="+", default=["exponential", "power", "saturating"]
    )
    offline.add_argument("--offline-ks", nargs="+", type=int, default=[5, 12, 20])
    offline.add_argument("--offline-noises", nargs="+", type=float, default=[0.003, 0.01])
    offline.add_argument("--offline-seeds", nargs="+", type=int, default=[0, 1, 2])
    offline.add_argument(
        "--offline-no-regmix", action="store_true", help="skip the RegMix swarm's backtest"
    )
    online = parser.add_argument_group("online section")
    online.add_argument(
        "--online-real",
        action="store_true",
        help="also run curves against stratified on real text (bench/online_real.py, minutes)",
    )
    args = parser.parse_args(argv)
    for name in args.sections:
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
