# ruff: noqa: N806 - X is the conventional name of a design matrix
"""An objective that averages several metrics, fitted metric by metric through the API.

The runs are stored with every metric of the objective; ``auto`` fits each metric on its own when
that cross-validates better, and ``/predict``, the recommendation and ``/backtest`` use the
per-metric model. Fits run in the server's threads with the registry cut to ``linear`` and ``gp``
(real regressors, the fast ones).
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from mixers.regressors import REGRESSORS
from mixopt.settings import Settings
from service.store import NewRun, SqlStore

API = "/api/v1"
DOMAINS = ("web", "code", "books", "math")
METRICS = tuple(f"val_loss/{d}" for d in DOMAINS)


@pytest.fixture
def settings() -> Settings:
    return Settings(token_cache_seconds=0, auth_free_failures=0, fit_workers=0)


@pytest.fixture(autouse=True)
def linear_and_gp(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(REGRESSORS):
        if name not in ("linear", "gp"):
            monkeypatch.delitem(REGRESSORS, name)


def domain_losses(n: int, seed: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Each domain's loss falls with its own weight, ``3 + 2 exp(-10 w)``, plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.dirichlet(np.full(len(DOMAINS), 0.5), size=n)
    return X, 3.0 + 2.0 * np.exp(-10.0 * X) + rng.normal(0.0, 0.01, size=X.shape)


@pytest.fixture
def mean_loss_experiment(client: TestClient, store: SqlStore) -> str:
    created = client.post(
        f"{API}/experiments",
        json={
            "name": "mean-of-domain-losses",
            "method": "regmix",
            "domains": [{"name": d} for d in DOMAINS],
            "objective": {"metrics": dict.fromkeys(METRICS, 1 / len(METRICS))},
            "config": {"seed": 3},
        },
    )
    assert created.status_code == 201, created.text
    X, V = domain_losses(48, seed=0)
    store.add_runs(
        created.json()["id"],
        [
            NewRun(
                dict(zip(DOMAINS, map(float, w), strict=True)),
                # A metric outside the objective rides along and is ignored.
                metrics={**dict(zip(METRICS, map(float, v), strict=True)), "train_loss": 1.0},
                status="completed",
            )
            for w, v in zip(X, V, strict=True)
        ],
    )
    experiment_id: str = created.json()["id"]
    return experiment_id


def test_auto_fits_the_metrics_one_by_one_and_predicts_with_them(
    client: TestClient, mean_loss_experiment: str
) -> None:
    fitted = client.post(f"{API}/experiments/{mean_loss_experiment}/fit", json={"model": "auto"})
    assert fitted.status_code == 200, fitted.text
    report = fitted.json()
    assert report["model"] == "per_metric(gp)" and report["requested"] == "auto"
    scores = {c["model"]: c["spearman"] for c in report["candidates"]}
    assert scores["per_metric(gp)"] == report["cv"]["spearman"] > scores["gp"]
    assert [m["metric"] for m in report["per_metric"]] == sorted(METRICS)
    assert {m["model"] for m in report["per_metric"]} == {"gp"}
    assert all(m["weight"] == pytest.approx(0.25) for m in report["per_metric"])
    assert client.get(f"{API}/fits/{report['id']}").json()["per_metric"] == report["per_metric"]

    X_new, V_new = domain_losses(200, seed=1)
    truth = V_new.mean(axis=1)
    predicted = client.post(
        f"{API}/experiments/{mean_loss_experiment}/predict",
        json={
            "mixtures": [{"weights": dict(zip(DOMAINS, map(float, w), strict=True))} for w in X_new]
        },
    )
    assert predicted.status_code == 200, predicted.text
    items = predicted.json()["items"]
    values = np.array([p["value"] for p in items])
    assert np.mean(np.abs(values - truth) / truth) < 0.01
    covered = np.mean([p["low"] <= t <= p["high"] for p, t in zip(items, truth, strict=True)])
    assert covered >= 0.7

    recommendation = client.get(f"{API}/experiments/{mean_loss_experiment}/recommendation").json()
    assert recommendation["model"] == "per_metric(gp)"
    # Every domain's loss falls alike with its weight: the best mean is near uniform.
    assert max(recommendation["weights"].values()) < 0.4


def test_an_explicit_model_still_fits_the_objective_as_one_number(
    client: TestClient, mean_loss_experiment: str
) -> None:
    fitted = client.post(f"{API}/experiments/{mean_loss_experiment}/fit", json={"model": "gp"})
    assert fitted.status_code == 200, fitted.text
    assert fitted.json()["model"] == "gp" and fitted.json()["per_metric"] == []


@pytest.mark.slow  # three fits and three 10k-candidate searches: 3-7 s here
def test_backtest_auto_rows_consider_per_metric_fits(
    client: TestClient, mean_loss_experiment: str
) -> None:
    replayed = client.post(
        f"{API}/experiments/{mean_loss_experiment}/backtest",
        json={"models": ["linear", "auto"], "sizes": [40], "reference_model": "linear"},
    )
    assert replayed.status_code == 200, replayed.text
    auto_rows = [r for r in replayed.json()["rows"] if r["requested"] == "auto"]
    assert [r["model"] for r in auto_rows] == ["per_metric(gp)"]
