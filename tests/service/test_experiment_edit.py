"""``PATCH /experiments/{id}``: rename an experiment or change its objective (admin)."""

from __future__ import annotations

import random
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import Tokens
from tests.service.conftest import experiment_body

API = "/api/v1"


def import_completed(client: TestClient, eid: str, n: int, metric: str) -> None:
    rng = random.Random(3)
    runs = []
    for i in range(n):
        a, b = rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.4)
        weights = {"web": a, "code": b, "papers": 1 - a - b}
        runs.append(
            {"weights": weights, "metrics": {metric: 3 - a + b / 2}, "external_id": f"r{i}"}
        )
    response = client.post(f"{API}/experiments/{eid}/runs/batch", json={"runs": runs})
    assert response.status_code == 201, response.text


def test_patch_renames_and_changes_the_objective(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    assert experiment["objective_changed_at"] is None
    objective = {"metrics": {"loss": 1.0}, "direction": "minimize"}
    response = client.patch(
        f"{API}/experiments/{eid}", json={"name": "renamed", "objective": objective}
    )
    assert response.status_code == 200, response.text
    edited = response.json()
    assert (edited["name"], edited["objective"]) == ("renamed", objective)
    assert edited["objective_changed_at"] is not None
    assert client.get(f"{API}/experiments/{eid}").json() == edited
    # A rename alone leaves the objective, and the time it changed, as they were.
    again = client.patch(f"{API}/experiments/{eid}", json={"name": "renamed-again"}).json()
    assert again["objective"] == objective
    assert again["objective_changed_at"] == edited["objective_changed_at"]


def test_patch_refuses_unknown_fields_and_invalid_objectives(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    for body, loc in [
        ({"method": "quadmix"}, ["body", "method"]),
        ({"objective": {"metrics": {}}}, ["body", "objective", "metrics"]),
        (
            {"objective": {"metrics": {"loss": 1}, "direction": "up"}},
            ["body", "objective", "direction"],
        ),
        ({"name": "has space"}, ["body", "name"]),
    ]:
        response = client.patch(f"{API}/experiments/{eid}", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert [e["loc"] for e in response.json()["errors"]] == [loc], body
    assert client.get(f"{API}/experiments/{eid}").json()["name"] == experiment["name"]
    assert client.patch(f"{API}/experiments/999999", json={"name": "x"}).status_code == 404


def test_patch_to_a_name_another_active_experiment_has_is_a_conflict(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    other = client.post(f"{API}/experiments", json=experiment_body(name="other")).json()
    response = client.patch(f"{API}/experiments/{other['id']}", json={"name": experiment["name"]})
    assert response.status_code == 409
    assert experiment["name"] in response.json()["detail"]


def test_patching_needs_the_admin_scope(
    client: TestClient, experiment: dict[str, Any], tokens: Tokens
) -> None:
    response = client.patch(
        f"{API}/experiments/{experiment['id']}", json={"name": "x"}, headers=tokens.header("write")
    )
    assert response.status_code == 403


def test_a_sequential_experiment_refuses_an_objective_turned_against_its_config(
    client: TestClient,
) -> None:
    created = client.post(f"{API}/experiments", json=experiment_body(name="seq", method="bayes"))
    assert created.status_code == 201, created.text
    eid = created.json()["id"]
    response = client.patch(
        f"{API}/experiments/{eid}",
        json={"objective": {"metrics": {"val_loss/web": 1.0}, "direction": "maximize"}},
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "objective", "direction"]


def test_fits_on_the_old_objective_stay_listed_but_no_longer_recommend(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    import_completed(client, eid, 10, "val_loss/web")
    fit = client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear"})
    assert fit.status_code == 200, fit.text
    assert client.get(f"{API}/experiments/{eid}/recommendation").status_code == 200

    objective = {"metrics": {"val_loss/web": 2.0}, "direction": "minimize"}
    assert (
        client.patch(f"{API}/experiments/{eid}", json={"objective": objective}).status_code == 200
    )
    assert [f["id"] for f in client.get(f"{API}/experiments/{eid}/fits").json()["items"]] == [
        fit.json()["id"]
    ]
    for response in (
        client.get(f"{API}/experiments/{eid}/recommendation"),
        client.post(
            f"{API}/experiments/{eid}/predict",
            json={"mixtures": [{"weights": {"web": 0.5, "code": 0.3, "papers": 0.2}}]},
        ),
    ):
        assert response.status_code == 409, response.text
        assert "POST /experiments/" in response.json()["detail"]
    refit = client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear"})
    assert refit.status_code == 200, refit.text
    assert (
        client.get(f"{API}/experiments/{eid}/recommendation").json()["fit_id"] == refit.json()["id"]
    )


def test_the_same_objective_again_keeps_the_fits_current(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    import_completed(client, eid, 10, "val_loss/web")
    assert client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear"}).status_code == 200
    same = client.patch(f"{API}/experiments/{eid}", json={"objective": experiment["objective"]})
    assert same.json()["objective_changed_at"] is None
    assert client.get(f"{API}/experiments/{eid}/recommendation").status_code == 200
