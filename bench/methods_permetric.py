# ruff: noqa: N806 - X is the conventional name of a design matrix
"""Per-metric vs aggregate fits on the real RegMix swarm (a section of ``bench/methods.py``).

The objective is the mean of several per-domain validation losses of RegMix's 1M-parameter
proxies (``../shared/data/regmix``: 512 train runs, 256 held-out test mixtures, 13 Pile domains'
losses each). Each regressor is scored two ways on the same 5 folds (``mixers.fitting``'s, seeded
by ``seed``): fitted to the mean (aggregate), and fitted to every loss on its own with the
predictions averaged (per metric, what ``auto``'s ``per_metric(<regressor>)`` candidate does).
Scores of the out-of-fold predictions of the objective: mean relative error ``|pred - y| / y``
and Spearman. Then ``auto`` as ``POST /fit`` runs it, with and without the per-metric
candidates, refitted on the 512 runs and scored on the 256 held-out mixtures.

``--per-metric-experiment DATABASE_URL ID`` adds the same table for a mixopt experiment's runs,
e.g. the demo's RegMix proxies trained on the real corpus (objective: the mean held-out loss over
the real-text domains): ``mixopt demo --workdir W`` leaves them in ``sqlite:///W/mixopt.db``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mixers.fitting import Fit, MetricTerms, fit_model, predict, spearman_or_none
from mixers.regressors import regressor_names
from tests.regmix_data import load_regmix_losses

__all__ = [
    "PerMetricRow",
    "Swarm",
    "experiment_swarm",
    "per_metric_vs_aggregate",
    "print_per_metric_table",
    "regmix_swarm",
]

FloatArray = np.ndarray


@dataclass(frozen=True)
class PerMetricRow:
    """One way of fitting the objective: cross-validated (``cv_*``) or held out (``test_*``)."""

    fit: str
    model: str
    cv_relative_error: float | None
    cv_spearman: float | None
    test_relative_error: float | None = None
    test_spearman: float | None = None
    seconds: float = 0.0


def _relative_error(y: FloatArray, pred: FloatArray) -> float:
    return float(np.mean(np.abs(pred - y) / np.abs(y)))


def _oof(fit: Fit) -> FloatArray:
    return np.array([o.predicted for o in fit.oof])


@dataclass(frozen=True)
class Swarm:
    """Runs whose objective is a weighted sum of metrics: mixtures ``X``, the metrics' values
    ``V`` (a column per metric, named ``metrics``) and the objective's ``weights``; with a
    held-out ``test`` set ``(X, V)`` where there is one."""

    title: str
    X: FloatArray
    V: FloatArray
    names: list[str]
    metrics: list[str]
    ids: list[str]
    weights: FloatArray
    test: tuple[FloatArray, FloatArray] | None = None


def regmix_swarm(metrics: Sequence[str] | None = None) -> Swarm:
    """RegMix's 512 train runs, objective the mean of ``metrics`` (default all 13 losses), and
    its 256 test mixtures held out."""
    X, V, names, all_metrics, ids = load_regmix_losses("train")
    chosen = list(metrics) if metrics is not None else all_metrics
    columns = [all_metrics.index(m) for m in chosen]
    X_test, V_test, _, test_metrics, _ = load_regmix_losses("test")
    assert test_metrics == all_metrics
    return Swarm(
        f"RegMix {len(X)} runs, mean of {len(chosen)} per-domain losses",
        X,
        V[:, columns],
        names,
        chosen,
        ids,
        np.full(len(chosen), 1.0 / len(chosen)),
        (X_test, V_test[:, columns]),
    )


def experiment_swarm(database_url: str, experiment_id: str) -> Swarm:
    """The completed, not excluded runs of a mixopt experiment whose objective combines several
    metrics (e.g. the demo's RegMix proxies: ``mixopt demo --workdir W`` leaves them in
    ``sqlite:///W/mixopt.db``); no held-out set."""
    from service.store import SqlStore
    from service.store.sql._base import make_engine

    engine = make_engine(database_url)
    store = SqlStore(engine)
    try:
        experiment = store.get_experiment(experiment_id, counts=False)
        objective = experiment.objective["metrics"]
        metrics = list(objective)
        names = [d["name"] for d in experiment.domains]
        runs = [
            run
            for run in store.iter_runs(experiment_id)
            if run.status == "completed"
            and not run.excluded
            and all(m in run.metrics for m in metrics)
        ]
    finally:
        store.close()
        engine.dispose()
    if len(metrics) < 2:
        raise SystemExit(f"experiment {experiment_id}'s objective has one metric: nothing to split")
    return Swarm(
        f"experiment {experiment_id} ({experiment.name}), {len(runs)} runs, "
        f"objective {' + '.join(f'{w:g} {m}' for m, w in objective.items())}",
        np.array([[run.weights[d] for d in names] for run in runs]),
        np.array([[run.metrics[m] for m in metrics] for run in runs]),
        names,
        metrics,
        [run.id for run in runs],
        np.array([objective[m] for m in metrics], dtype=float),
    )


def per_metric_vs_aggregate(
    swarm: Swarm, *, models: Sequence[str] | None = None, seed: int = 0
) -> list[PerMetricRow]:
    """The rows of the table: per regressor aggregate and per metric, then ``auto`` both ways
    (scored on the held-out set where the swarm has one).

    ``models``: the regressors scored one by one (default every registered one).
    """
    X, V, names, chosen, ids, weights = (
        swarm.X, swarm.V, swarm.names, swarm.metrics, swarm.ids, swarm.weights
    )  # fmt: skip
    y = V @ weights
    terms = MetricTerms(tuple(chosen), weights, V)
    common = {"names": names, "seed": seed, "importance": False}

    rows: list[PerMetricRow] = []
    for model in models if models is not None else regressor_names():
        started = time.perf_counter()
        aggregate = _oof(fit_model(X, y, ids, model=model, **common))  # type: ignore[arg-type]
        rows.append(
            PerMetricRow("aggregate", model, _relative_error(y, aggregate),
                         spearman_or_none(y, aggregate), seconds=time.perf_counter() - started)
        )  # fmt: skip
        started = time.perf_counter()
        # The same folds for every metric (they depend on the mixtures and the seed only).
        parts = np.column_stack(
            [_oof(fit_model(X, V[:, j], ids, model=model, **common)) for j in range(len(chosen))]  # type: ignore[arg-type]
        )
        combined = parts @ weights
        rows.append(
            PerMetricRow("per metric", model, _relative_error(y, combined),
                         spearman_or_none(y, combined), seconds=time.perf_counter() - started)
        )  # fmt: skip

    for label, with_terms in (("auto, aggregate only", None), ("auto", terms)):
        started = time.perf_counter()
        fit = fit_model(X, y, ids, model="auto", terms=with_terms, **common)  # type: ignore[arg-type]
        test_error = test_rho = None
        if swarm.test is not None:
            X_test, V_test = swarm.test
            y_test = V_test @ weights
            pred = predict(fit, X_test)[0]
            test_error, test_rho = _relative_error(y_test, pred), spearman_or_none(y_test, pred)
        rows.append(
            PerMetricRow(
                label,
                fit.model,
                _relative_error(y, _oof(fit)),
                fit.cv.spearman,
                test_error,
                test_rho,
                seconds=time.perf_counter() - started,
            )
        )
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_per_metric_table(rows: Sequence[PerMetricRow], title: str) -> None:
    print(f"\n## per-metric vs aggregate: {title}\n")
    print("| fit | model | CV rel. error | CV Spearman | held-out rel. error | held-out Spearman "
          "| s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.fit} | {r.model} | {_pct(r.cv_relative_error)} | {_num(r.cv_spearman)} | "
            f"{_pct(r.test_relative_error)} | {_num(r.test_spearman)} | {r.seconds:.1f} |"
        )


FOUR_LOSSES = tuple(
    f"metric/the_pile_{d}_val_loss" for d in ("pile_cc", "github", "arxiv", "wikipedia_en")
)
"""A smaller objective: with 4 metrics ``auto`` fits them with two regressors (and mixed)."""


def run_section(
    seed: int = 0,
    models: Sequence[str] | None = None,
    experiment: tuple[str, str] | None = None,
) -> list[PerMetricRow]:
    """The section as ``bench/methods.py`` prints it: every regressor on the mean of all 13
    per-domain losses, then ``auto`` both ways on the mean of four of them; with
    ``experiment`` (a database URL and an experiment id) the same table for its runs too."""
    swarm = regmix_swarm()
    rows = per_metric_vs_aggregate(swarm, models=models, seed=seed)
    print_per_metric_table(rows, f"{swarm.title}, seed {seed}")
    four = regmix_swarm(FOUR_LOSSES)
    four_rows = per_metric_vs_aggregate(four, models=(), seed=seed)
    print_per_metric_table(four_rows, f"{four.title} ({', '.join(FOUR_LOSSES)})")
    rows += four_rows
    if experiment is not None:
        own = experiment_swarm(*experiment)
        own_rows = per_metric_vs_aggregate(own, models=models, seed=seed)
        print_per_metric_table(own_rows, f"{own.title}, seed {seed}")
        rows += own_rows
    return rows
