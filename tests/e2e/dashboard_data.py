"""Realistic data for the dashboard, loaded through the API of a running service.

The browser tests (``tests/e2e/test_dashboard_browser.py``) and the page benchmark
(``bench/dashboard.py``) share it, so both look at the same pages:

* ``regmix-1m``: the 512 training runs of the real RegMix swarm (``../shared/data/regmix``,
  17 Pile domains, 13 losses each) imported as ``mixopt runs import`` reads the two CSV files,
  objective Pile-CC validation loss, and one fit on them;
* ``regmix-1m-curves``: one offline run that logged 100,000 metric points (5 curves of 20,000
  steps, posted in batches of 10,000) before completing;
* ``pile-online``: an online ``aioli`` experiment over the same 17 domains with one training run
  that reported 50 feedback rounds (train and eval loss of every domain).

``sqlite_service`` starts ``mixopt serve`` (a real process, auth on) on a SQLite file;
``load`` fills any running service given an admin token.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixopt.client import MixoptClient
from mixopt.runs_csv import plan_import
from service.store import SqlStore, schema
from service.store.sql import make_engine
from tests.regmix_data import DATA, TARGET, WEIGHT_PREFIX
from tests.servers import ServerProcess

__all__ = [
    "CURVES",
    "DashboardData",
    "feedback_round",
    "load",
    "regmix_domains",
    "sqlite_service",
]

WEIGHTS_FILE = DATA / "train_mixture_1m.csv"
LOSSES_FILE = DATA / "train_pile_loss_1m.csv"
FEEDBACK_ROUNDS = 50
CURVE_STEPS = 20_000
CURVES = ("train/loss", "eval/pile_cc_loss", "eval/github_loss", "lr", "grad_norm")
# Upper bounds a user might set on the rare domains; every run of the swarm is within them.
MAX_WEIGHTS = {"nih_exporter": 0.1, "philpapers": 0.1, "enron_emails": 0.05}


@dataclass
class DashboardData:
    """Where the loaded data lives on the service, and how long loading took."""

    url: str
    tokens: dict[str, str]
    """Secret per scope: ``read``, ``write``, ``admin``."""
    domains: list[str]
    regmix_id: str
    regmix_run_id: str
    """The best run of the swarm (a run page with 13 final metrics)."""
    curves_id: str
    long_run_id: str
    """The run with 100,000 metric points."""
    online_id: str
    online_run_id: str
    fit_id: str
    fit_model: str
    feedback_rounds: int = FEEDBACK_ROUNDS
    seconds: dict[str, float] = field(default_factory=dict)
    """Loading time of each part, in the order loaded."""

    def pages(self) -> dict[str, str]:
        """Every page of the dashboard worth looking at, by a short name."""
        return {
            "experiments": "/",
            "offline-experiment": f"/experiments/{self.regmix_id}",
            "regmix-run": f"/runs/{self.regmix_run_id}",
            "long-run": f"/runs/{self.long_run_id}",
            "online-experiment": f"/experiments/{self.online_id}",
            "online-run": f"/runs/{self.online_run_id}",
        }


def regmix_domains() -> list[str]:
    with WEIGHTS_FILE.open() as handle:
        header = next(csv.reader(handle))
    return [c.removeprefix(WEIGHT_PREFIX) for c in header if c.startswith(WEIGHT_PREFIX)]


def _swarm_prior(domains: list[str]) -> dict[str, float]:
    """The swarm's mean mixture: RegMix drew it around the Pile's token shares."""
    with WEIGHTS_FILE.open() as handle:
        rows = list(csv.DictReader(handle))
    return {d: sum(float(r[WEIGHT_PREFIX + d]) for r in rows) / len(rows) for d in domains}


def _domain_specs(domains: list[str]) -> list[dict[str, object]]:
    prior = _swarm_prior(domains)
    specs: list[dict[str, object]] = []
    for d in domains:
        bound = {"max_weight": MAX_WEIGHTS[d]} if d in MAX_WEIGHTS else {}
        specs.append({"name": d, "prior": prior[d], **bound})
    return specs


@contextmanager
def sqlite_service(workdir: Path) -> Iterator[tuple[str, str]]:
    """``mixopt serve`` on a fresh SQLite file with auth on: ``(url, admin token)``."""
    workdir.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{workdir / 'dashboard.db'}"
    engine = make_engine(database_url)
    try:
        schema.upgrade(engine)
        _, admin = SqlStore(engine).create_token("dashboard-admin", "admin", None)
    finally:
        engine.dispose()
    server = ServerProcess(database_url, workdir).start()
    try:
        yield server.url, admin
    finally:
        server.stop()


def _import_swarm(client: MixoptClient, experiment_id: str, domains: list[str]) -> None:
    """What ``mixopt runs import EID train_mixture_1m.csv --metrics-file train_pile_loss_1m.csv``
    sends, one row after the other (so the runs keep the file's order)."""
    plan = plan_import(domains, WEIGHTS_FILE, metrics_path=LOSSES_FILE)
    assert not plan.invalid and len(plan.rows) == 512, plan.invalid[:3]
    for row in plan.rows:
        client.import_run(
            experiment_id,
            row.weights,
            metrics=row.metrics,
            tags=row.tags,
            status=row.status,
            external_id=row.external_id,
        )


def _curve_points(run_seed: int = 0) -> Iterator[tuple[str, int, float]]:
    """5 curves of 20,000 steps: three losses, the learning rate and the gradient norm."""
    rng = np.random.default_rng(run_seed)
    noise = rng.normal(0.0, 1.0, size=(CURVE_STEPS, len(CURVES)))
    for step in range(CURVE_STEPS):
        decay = (step / 50 + 1) ** -0.45
        warm = min(1.0, (step + 1) / 500)
        lr = 3e-4 * warm * 0.5 * (1 + math.cos(math.pi * step / CURVE_STEPS))
        values = (
            2.6 + 5.0 * decay + 0.05 * noise[step, 0],
            2.9 + 4.6 * decay + 0.01 * noise[step, 1],
            1.4 + 5.5 * decay + 0.01 * noise[step, 2],
            lr,
            0.4 + 2.0 * decay + 0.1 * abs(noise[step, 4]),
        )
        for name, value in zip(CURVES, values, strict=True):
            yield name, step, float(value)


def _domain_loss(index: int, step: int, weight: float, rng: np.random.Generator) -> float:
    """A domain's loss at ``step``: a power law to its own floor, a little lower the more of
    the domain the last segment trained on."""
    floor = 1.6 + 0.17 * index
    return floor + 4.0 * (step / 100 + 1) ** -0.4 - 0.2 * weight + float(rng.normal(0, 0.005))


def feedback_round(client: MixoptClient, run_id: str, domains: list[str], seed: int) -> int:
    """One feedback round as a trainer sends it: train for the segment the current weights ask
    for, then report every domain's train and eval loss. Returns the step reported."""
    current = client.get_weights(run_id)
    step = current.step + (current.train_steps or 100)
    rng = np.random.default_rng(seed)
    train = {
        d: _domain_loss(i, step, current.weights[d], rng) + 0.03 for i, d in enumerate(domains)
    }
    evals = {d: _domain_loss(i, step, current.weights[d], rng) for i, d in enumerate(domains)}
    client.feedback(run_id, step, version=current.version, train_losses=train, eval_losses=evals)
    return step


def load(url: str, admin_token: str, *, fit_model: str = "lightgbm") -> DashboardData:
    """Fill the service at ``url`` (a fresh database) with the three experiments."""
    seconds: dict[str, float] = {}
    domains = regmix_domains()
    with MixoptClient(url, admin_token, timeout=300) as admin:
        started = time.perf_counter()
        tokens = {
            scope: admin.create_token(f"dashboard-{scope}", scope).token
            for scope in ("read", "write")
        }
        tokens["admin"] = admin_token
        regmix = admin.create_experiment(
            {
                "name": "regmix-1m",
                "method": "regmix",
                "domains": _domain_specs(domains),
                "objective": {"metrics": {TARGET: 1.0}},
                "config": {"seed": 1},
            }
        )
        _import_swarm(admin, regmix.id, domains)
        seconds["import 512 RegMix runs"] = time.perf_counter() - started

        started = time.perf_counter()
        fit = admin.fit(regmix.id, fit_model)
        seconds[f"fit ({fit_model})"] = time.perf_counter() - started
        best = min(
            (r for r in admin.iter_runs(regmix.id) if TARGET in r.metrics),
            key=lambda r: r.metrics[TARGET],
        )

        started = time.perf_counter()
        curves = admin.create_experiment(
            {
                "name": "regmix-1m-curves",
                "method": "regmix",
                "domains": _domain_specs(domains),
                "objective": {"metrics": {"eval/pile_cc_loss": 1.0}},
                "config": {"seed": 2},
            }
        )
        admin.propose(curves.id, 1)
        long_run = admin.claim(curves.id, "gpu-node-07")
        assert long_run is not None
        accepted = admin.append_metrics(long_run.id, _curve_points())
        assert accepted.new == CURVE_STEPS * len(CURVES)
        admin.complete(
            long_run.id,
            {"eval/pile_cc_loss": 2.95, "eval/github_loss": 1.46, "train/loss": 2.71},
            worker="gpu-node-07",
        )
        seconds["100,000 metric points"] = time.perf_counter() - started

        started = time.perf_counter()
        online = admin.create_experiment(
            {
                "name": "pile-online",
                "mode": "online",
                "method": "aioli",
                "domains": _domain_specs(domains),
                # One perturbation sweep (17 segments) and a 300-step exploit per round: the
                # 50 rounds cover three rounds, so the weights move.
                "config": {"seed": 3, "lp_rounds": 1, "lp_steps": 20, "segment_steps": 300},
            }
        )
        run = admin.start_run(online.id, "pile-160m", total_steps=50_000)
        for index in range(FEEDBACK_ROUNDS):
            feedback_round(admin, run.id, domains, seed=index)
        seconds["50 feedback rounds"] = time.perf_counter() - started

    return DashboardData(
        url=url,
        tokens=tokens,
        domains=domains,
        regmix_id=regmix.id,
        regmix_run_id=best.id,
        curves_id=curves.id,
        long_run_id=long_run.id,
        online_id=online.id,
        online_run_id=run.id,
        fit_id=fit.id,
        fit_model=fit.model,
        seconds=seconds,
    )
