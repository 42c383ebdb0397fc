"""Request bodies are strict: a value of the wrong JSON type is a 422 naming the field, never
coerced (a weight sent as "0.5" used to store a run)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.service.conftest import TestClient, experiment_body

API = "/api/v1"


def assert_rejected(response: Any, *loc: str | int) -> None:
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"], problem
    assert any(tuple(e["loc"][: len(loc)]) == loc for e in problem["errors"]), problem["errors"]


def test_a_weight_sent_as_a_string_is_422_and_stores_nothing(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    response = client.post(
        f"{API}/experiments/{eid}/runs",
        json={
            "weights": {"web": "0.5", "code": 0.25, "papers": 0.25},
            "metrics": {"val_loss/web": 3},
        },
    )
    assert_rejected(response, "body", "weights", "web")
    assert client.get(f"{API}/experiments/{eid}/runs").json()["items"] == []


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/experiments/{eid}/proposals", {"count": "4"}, ("body", "count")),
        (
            "/experiments/{eid}/claim",
            {"worker": "w", "lease_seconds": "60"},
            ("body", "lease_seconds"),
        ),
        (
            "/experiments/{eid}/predict",
            {"mixtures": [{"weights": {"web": "1"}}]},
            ("body", "mixtures"),
        ),
        ("/experiments/{eid}/fit", {"model": 3}, ("body", "model")),
    ],
)
def test_numbers_and_strings_are_not_coerced_on_any_endpoint(
    client: TestClient,
    experiment: dict[str, Any],
    path: str,
    body: dict[str, Any],
    loc: tuple[str, ...],
) -> None:
    response = client.post(API + path.format(eid=experiment["id"]), json=body)
    assert_rejected(response, *loc)


def test_an_experiment_with_string_token_counts_or_bounds_is_refused(client: TestClient) -> None:
    body = experiment_body(domains=[{"name": "web", "tokens": "6e9"}, {"name": "code"}])
    assert_rejected(client.post(f"{API}/experiments", json=body), "body", "domains", 0, "tokens")
    body = experiment_body(domains=[{"name": "web", "min_weight": "0.1"}, {"name": "code"}])
    assert_rejected(client.post(f"{API}/experiments", json=body), "body", "domains", 0)


def test_integers_still_count_as_numbers_and_booleans_stay_booleans(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    eid = experiment["id"]
    imported = client.post(
        f"{API}/experiments/{eid}/runs",
        json={"weights": {"web": 1, "code": 0, "papers": 0}, "metrics": {"val_loss/web": 3}},
    )
    assert imported.status_code == 201, imported.text
    run_id = imported.json()["id"]
    assert_rejected(
        client.post(f"{API}/runs/{run_id}/exclude", json={"excluded": "yes"}), "body", "excluded"
    )
    assert client.post(f"{API}/runs/{run_id}/exclude", json={"excluded": True}).status_code == 200


def test_an_unknown_model_is_422_even_before_the_experiment_can_be_fitted(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    response = client.post(f"{API}/experiments/{experiment['id']}/fit", json={"model": "magic"})
    assert_rejected(response, "body", "model")
    assert "known: auto" in response.json()["detail"]
    # A known model on an experiment without runs is still the state's problem: 409.
    ready = client.post(f"{API}/experiments/{experiment['id']}/fit", json={"model": "linear"})
    assert ready.status_code == 409


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/experiments/{eid}/proposals", "text/plain"),
        ("/experiments/{eid}/claim", "application/x-www-form-urlencoded"),
        ("/experiments", "application/xml"),
    ],
)
def test_a_body_that_is_not_json_is_415_not_422(
    client: TestClient, experiment: dict[str, Any], path: str, content_type: str
) -> None:
    # Was a 422 "Input should be a valid dictionary" (API.md: a body that is not JSON is 415).
    response = client.post(
        API + path.format(eid=experiment["id"]),
        content=b'{"count": 1, "worker": "w"}',
        headers={"content-type": content_type},
    )
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 415
    assert content_type in response.json()["detail"]
    assert client.get(f"{API}/experiments/{experiment['id']}/runs").json()["items"] == []
    # JSON by any of its names is still JSON.
    for json_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        accepted = client.post(
            f"{API}/experiments/{experiment['id']}/proposals",
            content=b'{"count": 1}',
            headers={"content-type": json_type},
        )
        assert accepted.status_code == 201, accepted.text


def test_malformed_json_is_422_naming_line_and_column(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    # Was "body.28: JSON decode error": a character offset, not the line and column API.md says.
    response = client.post(
        f"{API}/experiments/{experiment['id']}/claim",
        content=b'{\n  "worker": "w",\n  "lease_seconds": 60,,\n}',
        headers={"content-type": "application/json"},
    )
    assert_rejected(response, "body")
    assert "line 3 column 23" in response.json()["detail"]
