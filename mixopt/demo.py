"""``mixopt demo``: the whole mission on real text, on this machine, from one command.

1. build the corpus (real-text domains from installed packages plus three synthetic ones);
2. start the service on an embedded SQLite store (a ``mixopt serve`` subprocess);
3. a RegMix experiment: proxy runs designed by the service, trained by workers through the
   launcher (local processes or Ray), then a cross-validated fit and the recommendation;
4. a larger model trained on the recommended, the prior (token-share) and the uniform mixture
   (a ``fixed`` experiment, so the same workers train it), compared on the objective;
5. one online run (Aioli) against stratified sampling, the weights following the service;
6. the service keeps running with the URL on screen (``--no-serve`` stops it).

The objective is the mean held-out loss over the *real-text* domains: the synthetic ones are
there to be mixed, not judged, so dropping the noise domain alone does not win.

Every real-text domain keeps a floor in the RegMix experiment (``min_weight``, 10 % each with
four of them, together at most half the mixture). The proxies are too small to learn literature
or licence text beyond their byte statistics: across the whole design their loss on those
domains moves by less than 0.1, so the regressor is right that those domains do not matter *at
proxy scale*, and without a floor the recommendation starved them (measured on the full demo's
32 proxies: 0.1 % literature and 1.6 % legal text; on the larger model, literature rose from 2.62
to 3.16 and the recommendation lost to both baselines on both seeds, 2.301/2.309 against prior
2.260/2.237 and uniform 2.269/2.207). With the floor, refitted on the same proxies, it won on
both seeds: 2.094/2.089. A team does the same when it keeps every domain it is judged on in the
mix; normalising each domain's loss by a baseline did not help (the same starved mixture).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from mixopt import schemas
from mixopt.client import MixoptClient

__all__ = [
    "DemoPlan",
    "DemoResult",
    "Service",
    "objective_of",
    "real_domain_floor",
    "run_demo",
    "start_service",
]

Backend = Literal["local", "ray"]
Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoPlan:
    """How big each stage is. ``quick`` finishes in a few minutes on 2 cores."""

    quick: bool
    seed: int
    backend: Backend
    workers: int
    proxy_runs: int
    proxy_preset: str
    final_preset: str
    final_seeds: tuple[int, ...]
    final_steps: int | None
    """Steps of the larger model (None: its preset's)."""
    online_preset: str
    online_method: str
    fit_model: str
    """The regressor whose recommendation the larger model trains on (``auto`` is fitted and
    shown too). ``gp``: with a few dozen proxies its optimum stays near the runs it has seen,
    while the exponential and tree models put the optimum at an edge of the simplex that no
    proxy explored (measured in the quick demo: 2.47 with gp against 2.57 lightgbm, 2.69
    mixing_law, uniform 2.56)."""
    max_tokens_per_domain: int

    @classmethod
    def make(
        cls, *, quick: bool, seed: int, backend: Backend, workers: int | None = None
    ) -> DemoPlan:
        cores = os.cpu_count() or 2
        return cls(
            quick=quick,
            seed=seed,
            backend=backend,
            workers=workers or max(1, min(cores, 4)),
            proxy_runs=24 if quick else 32,
            proxy_preset="tiny" if quick else "small",
            final_preset="small" if quick else "large",
            final_seeds=(seed,) if quick else (seed, seed + 1),
            final_steps=150 if quick else None,
            online_preset="tiny" if quick else "small",
            online_method="aioli",
            fit_model="gp",
            max_tokens_per_domain=1_000_000 if quick else 2_000_000,
        )


@dataclass
class DemoResult:
    backend: str
    objective: dict[str, Any]
    """What the larger model's mixtures are compared on: the mean over the real domains."""
    proxy_runs_completed: int
    final: dict[str, float]
    online: dict[str, Any]
    final_by_seed: dict[str, dict[str, float]] = field(default_factory=dict)
    floors: dict[str, float] = field(default_factory=dict)
    """The RegMix experiment's ``min_weight`` of each real-text domain (see the module doc)."""
    fit: dict[str, Any] = field(default_factory=dict)
    recommendation: dict[str, Any] = field(default_factory=dict)
    experiments: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    corpus: dict[str, Any] = field(default_factory=dict)
    url: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


DESIGN = {"min_strength": 5.0, "max_strength": 30.0}
"""RegMix's Dirichlet ladder for the demo, denser than the paper's (0.1-5): with seven domains
and a few dozen runs the paper's sparse mixtures leave most proxies without one real-text domain
or another (objectives from 2.3 to 8, measured: no regressor fitted them, MAE 0.6); mixtures
inside the simplex fit to MAE 0.06."""


def objective_of(real_domains: tuple[str, ...]) -> dict[str, Any]:
    """The mean held-out loss over the real-text domains."""
    share = 1.0 / len(real_domains)
    return {"metrics": {f"val_loss/{d}": share for d in real_domains}, "direction": "minimize"}


REAL_DOMAIN_FLOOR = 0.10


def real_domain_floor(real_domains: tuple[str, ...]) -> dict[str, float]:
    """The least share of each real-text domain: 10 %, and together at most half."""
    floor = min(REAL_DOMAIN_FLOOR, 0.5 / len(real_domains))
    return dict.fromkeys(real_domains, floor)


def objective_value(metrics: Mapping[str, float], objective: Mapping[str, Any]) -> float:
    return float(sum(w * metrics[name] for name, w in objective["metrics"].items()))


# --- the service ----------------------------------------------------------------------------


@dataclass
class Service:
    """A ``mixopt serve`` subprocess on an SQLite file, with an admin token."""

    url: str
    token: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wait(self) -> int:
        return self.process.wait()


def _free_port(host: str, preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port")  # pragma: no cover - bind to port 0 does not fail


def start_service(workdir: Path, *, host: str = "127.0.0.1", port: int = 8000) -> Service:
    """Upgrade the demo database, create an admin token and serve it in a subprocess."""
    from service.store import SqlStore, schema
    from service.store.sql import make_engine

    database_url = f"sqlite:///{(workdir / 'mixopt.db').resolve()}"
    engine = make_engine(database_url)
    schema.upgrade(engine)
    store = SqlStore(engine)
    _, token = store.create_token("demo-admin", "admin", None)
    store.close()
    port = _free_port(host, port)
    log_path = workdir / "server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mixopt.cli",
                "serve",
                "--database-url",
                database_url,
                "--host",
                host,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = Service(f"http://{host}:{port}", token, process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}); see {log_path}")
        try:
            if httpx.get(f"{service.url}/readyz", timeout=2).status_code == 200:
                return service
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    service.stop()
    raise RuntimeError(f"the server did not become ready in 60 s; see {log_path}")


# --- the stages -----------------------------------------------------------------------------


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        timings[name] = round(time.monotonic() - start, 1)


def _unique_name(client: MixoptClient, base: str) -> str:
    taken = {e.name for e in client.iter_experiments()}
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def _simplex(weights: Mapping[str, float], domains: tuple[str, ...]) -> dict[str, float]:
    """Weights rounded for display and storage that still sum to 1 within the API's 1e-6."""
    total = sum(max(0.0, weights[d]) for d in domains)
    rounded = {d: round(max(0.0, weights[d]) / total, 9) for d in domains}
    largest = max(rounded, key=lambda d: rounded[d])
    rounded[largest] = round(rounded[largest] + 1.0 - sum(rounded.values()), 9)
    return rounded


def run_demo(
    plan: DemoPlan,
    workdir: Path,
    *,
    service: Service,
    say: Say,
    progress_factory: Callable[[str, int], Any] | None = None,
) -> DemoResult:
    """Run every stage against ``service``; ``say`` prints a line, ``progress_factory(label,
    total)`` gives a progress handle with ``update(done)`` and ``close()`` (None: no bars)."""
    from mixopt.launch import WorkerOptions, launch
    from proxy_trainer.config import preset
    from proxy_trainer.corpus import Corpus
    from proxy_trainer.corpus.build import build_corpus

    timings: dict[str, float] = {}
    corpus_dir = workdir / "corpus"
    with _timed(timings, "corpus"):
        report = build_corpus(
            corpus_dir, seed=plan.seed, max_tokens_per_domain=plan.max_tokens_per_domain
        )
    corpus = Corpus.open(corpus_dir)
    for line in report.summary_lines():
        say(line)
    real = corpus.real_domains
    if len(real) < 2:
        raise RuntimeError(
            "fewer than two real-text domains could be built; see `mixopt corpus build`"
        )
    objective = objective_of(real)
    tokens = corpus.token_counts()
    domains = tuple(tokens)
    say(f"objective: mean held-out loss over {', '.join(real)}")

    client = MixoptClient(service.url, service.token, retries=5)
    result = DemoResult(
        backend=plan.backend,
        objective=objective,
        proxy_runs_completed=0,
        final={},
        online={},
        url=service.url,
        corpus={d: {"kind": corpus.info(d).kind, "tokens": n} for d, n in tokens.items()},
    )

    def drain(experiment_id: str, preset_name: str, label: str, total: int) -> None:
        bar = progress_factory(label, total) if progress_factory else None
        try:
            launched = launch(
                service.url,
                service.token,
                experiment_id,
                workers=plan.workers,
                backend=plan.backend,
                # Workers that find nothing to claim while the last runs train look again soon:
                # the stage ends when they all have exited.
                options=WorkerOptions(corpus=str(corpus_dir), preset=preset_name, poll_seconds=2.0),
                progress=(lambda done, _total: bar.update(done)) if bar else None,
            )
        finally:
            if bar:
                bar.close()
        say(
            f"{label}: {launched.completed} completed, {launched.failed} failed "
            f"in {launched.seconds:.0f} s"
        )

    def train_mixtures(
        stage: str,
        preset_name: str,
        chosen: Mapping[str, Mapping[str, float]],
        seeds: tuple[int, ...],
        steps: int | None,
    ) -> dict[str, dict[str, dict[str, float]]]:
        """Train ``preset_name`` on each of ``chosen`` per seed, as the pending runs of a
        ``fixed`` experiment drained by the workers; the metrics by seed, then label."""
        first = next(iter(chosen.values()))
        experiment = client.create_experiment(
            schemas.ExperimentCreate.model_validate(
                {
                    "name": _unique_name(client, f"demo-{stage}-s{plan.seed}"),
                    "method": "fixed",
                    "domains": [{"name": d, "tokens": tokens[d]} for d in domains],
                    "objective": objective,
                    "config": {"weights": dict(first)},
                }
            )
        )
        result.experiments[stage] = experiment.id
        train = {"steps": steps} if steps else {}
        for seed in seeds:
            for label, weights in chosen.items():
                client.import_run(
                    experiment.id,
                    weights,
                    # The worker seeds a run from params.proxy.train.seed when it is given: the
                    # mixtures of one seed share their initialisation and batch stream.
                    params={"proxy": {"train": train | {"seed": seed}}},
                    tags={"mixture": label, "seed": str(seed), "preset": preset_name},
                    external_id=f"{label}-seed{seed}",
                )
        say(
            f"experiment {experiment.id}: the {preset_name} model "
            f"({_parameters(preset(preset_name))} parameters) on the {', '.join(chosen)} "
            f"mixtures, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        )
        drain(experiment.id, preset_name, f"{stage} runs", len(chosen) * len(seeds))
        by_seed: dict[str, dict[str, dict[str, float]]] = {}
        for run in client.iter_runs(experiment.id, status="completed"):
            by_seed.setdefault(run.tags["seed"], {})[run.tags["mixture"]] = dict(run.metrics)
        return by_seed

    mixtures = {
        "prior": _simplex({d: float(tokens[d]) for d in domains}, domains),
        "uniform": _simplex(dict.fromkeys(domains, 1.0), domains),
    }
    result.floors = real_domain_floor(real)
    say(
        "every real-text domain keeps at least "
        + ", ".join(f"{d} {share:.0%}" for d, share in result.floors.items())
        + " of the mixture"
    )

    # RegMix: proxies designed by the service, trained by the workers.
    with _timed(timings, "proxies"):
        experiment = client.create_experiment(
            schemas.ExperimentCreate.model_validate(
                {
                    "name": _unique_name(client, f"demo-regmix-s{plan.seed}"),
                    "method": "regmix",
                    "domains": [
                        {"name": d, "tokens": tokens[d]}
                        | ({"min_weight": result.floors[d]} if d in result.floors else {})
                        for d in domains
                    ],
                    "objective": objective,
                    "config": {"seed": plan.seed, **DESIGN},
                }
            )
        )
        result.experiments["regmix"] = experiment.id
        client.propose(experiment.id, plan.proxy_runs, request_id=f"demo-{experiment.id}")
        say(
            f"experiment {experiment.id}: {plan.proxy_runs} RegMix proxy runs "
            f"({plan.proxy_preset} model, {plan.workers} {plan.backend} workers)"
        )
        drain(experiment.id, plan.proxy_preset, "proxy runs", plan.proxy_runs)
        result.proxy_runs_completed = client.get_experiment(experiment.id).counts.completed

    with _timed(timings, "fit"):
        auto = client.fit(experiment.id, "auto")
        fit = auto if plan.fit_model == "auto" else client.fit(experiment.id, plan.fit_model)
        recommendation = client.recommendation(experiment.id)
    say(
        f"fit {auto.id} (auto): {auto.model} chosen; cross-validated Spearman of each model: "
        + ", ".join(f"{c.model} {_fmt(c.spearman, 3)}" for c in auto.candidates)
    )
    result.fit = {
        "id": fit.id,
        "model": fit.model,
        "n_runs": fit.n_runs,
        "cv": fit.cv.model_dump(),
        "candidates": {c.model: c.spearman for c in fit.candidates},
    }
    predicted = recommendation.predicted
    result.recommendation = {
        "weights": recommendation.weights,
        "predicted": predicted.model_dump() if predicted else None,
        "p_better_than_baseline": recommendation.p_better_than_baseline,
    }
    say(
        f"fit {fit.id}: {fit.model} on {fit.n_runs} runs, cross-validated Spearman "
        f"{_fmt(fit.cv.spearman)}, MAE {_fmt(fit.cv.mae)}"
    )
    if predicted:
        say(
            f"recommended mixture: predicted {predicted.value:.4f} "
            f"(80 % interval {_fmt(predicted.low)}-{_fmt(predicted.high)}), "
            f"P(better than prior) {_fmt(recommendation.p_better_than_baseline, 2)}"
        )
    for d in domains:
        say(f"  {d:<18} {recommendation.weights[d]:6.3f}   prior {mixtures['prior'][d]:6.3f}")

    # The larger model on three mixtures, trained by the same workers.
    mixtures["recommended"] = _simplex(recommendation.weights, domains)
    with _timed(timings, "final"):
        final_metrics = train_mixtures(
            "final",
            plan.final_preset,
            {label: mixtures[label] for label in ("recommended", "prior", "uniform")},
            plan.final_seeds,
            plan.final_steps,
        )
    result.final_by_seed = {
        seed: {label: objective_value(m, objective) for label, m in runs.items()}
        for seed, runs in final_metrics.items()
    }
    result.final = {
        label: sum(s[label] for s in result.final_by_seed.values() if label in s)
        / max(1, sum(label in s for s in result.final_by_seed.values()))
        for label in ("recommended", "prior", "uniform")
    }

    # Online: Aioli against stratified within one run each.
    from mixopt.client import OnlineMixture
    from proxy_trainer.online import train_online

    online_proxy = preset(plan.online_preset).with_train(seed=plan.seed, threads=os.cpu_count())
    online: dict[str, Any] = {"preset": plan.online_preset}
    with _timed(timings, "online"):
        for method in (plan.online_method, "stratified"):
            exp = client.create_experiment(
                schemas.ExperimentCreate.model_validate(
                    {
                        "name": _unique_name(client, f"demo-online-{method}-s{plan.seed}"),
                        "mode": "online",
                        "method": method,
                        "domains": [{"name": d, "tokens": tokens[d]} for d in domains],
                        "objective": objective,
                    }
                )
            )
            result.experiments[f"online-{method}"] = exp.id
            mixture = OnlineMixture.start(
                client, exp.id, "main", total_steps=online_proxy.train.steps
            )
            say(f"online run {mixture.run_id} ({method}): {online_proxy.train.steps} steps")
            trained = train_online(corpus, mixture, online_proxy)
            online[method] = {
                "objective": objective_value(
                    {f"val_loss/{d}": v for d, v in trained.val_losses.items()}, objective
                ),
                # What the online mixers themselves minimise: the mean over every domain.
                "mean_all_domains": sum(trained.val_losses.values()) / len(trained.val_losses),
                "versions": len(trained.weights_history),
                "final_weights": trained.weights_history[-1][1]
                if trained.weights_history
                else mixture.weights,
            }
    online["method"] = plan.online_method
    result.online = online
    result.timings = timings
    client.close()
    return result


def _parameters(proxy: Any) -> str:
    from proxy_trainer.model import GPT

    return f"{GPT(proxy.model).num_parameters() / 1e6:.2f}M"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_json(result: DemoResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=2, sort_keys=True))
    os.replace(tmp, path)
