"""Online plumbing: training runs, weights polls with ETag, feedback, resume, replicas."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from mixopt.settings import Settings
from service.main import create_app
from service.store import SqlStore
from service.store.sql import make_engine
from tests.conftest import Tokens
from tests.servers import ThreadedServer
from tests.service.conftest import DOMAINS

API = "/api/v1"


def online_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "online-3",
        "mode": "online",
        "method": "stratified",
        "domains": DOMAINS,
        "config": {"seed": 3, "segment_steps": 100},
    }
    body.update(overrides)
    return body


def feedback(step: int, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "step": step,
        "train_losses": {"web": 3.0, "code": 2.0, "papers": 2.5},
        "eval_losses": {"web": 3.1, "code": 2.1, "papers": 2.6},
        "tokens": {"web": 1000, "code": 500, "papers": 250},
    }
    body.update(overrides)
    return body


@pytest.fixture
def online_run(client: TestClient) -> dict[str, Any]:
    experiment = client.post(f"{API}/experiments", json=online_body())
    assert experiment.status_code == 201, experiment.text
    run = client.post(
        f"{API}/experiments/{experiment.json()['id']}/runs",
        json={"name": "main", "total_steps": 10_000, "request_id": "start-1"},
    )
    assert run.status_code == 201, run.text
    result: dict[str, Any] = run.json()
    return result


def test_online_experiment_gets_default_objective(client: TestClient) -> None:
    created = client.post(f"{API}/experiments", json=online_body()).json()
    assert created["objective"]["metrics"] == {"eval_loss/mean": 1.0}


def test_starting_a_run_returns_first_weights_and_is_idempotent(
    client: TestClient, online_run: dict[str, Any]
) -> None:
    assert online_run["status"] == "running"
    assert online_run["weights"] == pytest.approx({"web": 1 / 3, "code": 1 / 3, "papers": 1 / 3})
    again = client.post(
        f"{API}/experiments/{online_run['experiment_id']}/runs",
        json={"name": "main", "total_steps": 10_000, "request_id": "start-1"},
    )
    assert again.status_code == 200 and again.json()["id"] == online_run["id"]


def test_weights_poll_has_etag_and_answers_304_when_unchanged(
    client: TestClient, online_run: dict[str, Any]
) -> None:
    url = f"{API}/runs/{online_run['id']}/weights"
    first = client.get(url)
    assert first.status_code == 200 and first.headers["etag"] == '"1"'
    assert first.json()["version"] == 1 and first.json()["train_steps"] == 100
    unchanged = client.get(url, headers={"If-None-Match": '"1"'})
    assert unchanged.status_code == 304 and unchanged.headers["etag"] == '"1"'
    client.post(f"{API}/runs/{online_run['id']}/feedback", json=feedback(100))
    changed = client.get(url, headers={"If-None-Match": '"1"'})
    assert changed.status_code == 200 and changed.json()["version"] == 2


def test_feedback_is_idempotent_on_step_and_conflicts_on_another_body(
    client: TestClient, online_run: dict[str, Any]
) -> None:
    url = f"{API}/runs/{online_run['id']}/feedback"
    first = client.post(url, json=feedback(100))
    assert first.status_code == 200 and first.json()["version"] == 2
    assert first.json()["step"] == 100
    repeat = client.post(url, json=feedback(100))
    assert repeat.status_code == 200 and repeat.json()["version"] == 2
    other = client.post(url, json=feedback(100, tokens={"web": 1}))
    assert other.status_code == 409
    assert client.post(url, json=feedback(200, version=1)).json()["version"] == 3  # stale: applied


def test_feedback_naming_unknown_domains_is_422(
    client: TestClient, online_run: dict[str, Any]
) -> None:
    response = client.post(
        f"{API}/runs/{online_run['id']}/feedback",
        json=feedback(100, train_losses={"books": 1.0}),
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "train_losses", "books"]


def test_weights_at_step_and_history_follow_versions(
    client: TestClient, online_run: dict[str, Any]
) -> None:
    run_id = online_run["id"]
    for step in (100, 200, 300):
        client.post(f"{API}/runs/{run_id}/feedback", json=feedback(step))
    assert (
        client.get(f"{API}/runs/{run_id}/weights", params={"at_step": 250}).json()["version"] == 3
    )
    assert client.get(f"{API}/runs/{run_id}/weights", params={"at_step": 0}).json()["version"] == 1
    history = client.get(f"{API}/runs/{run_id}/weights/history", params={"limit": 2}).json()
    assert [v["version"] for v in history["items"]] == [1, 2] and history["next_cursor"]


def test_resume_supersedes_later_feedback_and_replays_to_the_same_state(
    client: TestClient, store: SqlStore, online_run: dict[str, Any]
) -> None:
    run_id = online_run["id"]
    for step in (100, 200, 300):
        client.post(f"{API}/runs/{run_id}/feedback", json=feedback(step))
    uninterrupted = store.online_state(run_id).state
    resumed = client.post(f"{API}/runs/{run_id}/resume", json={"step": 150})
    assert resumed.status_code == 200 and resumed.json()["version"] == 5
    history = client.get(f"{API}/runs/{run_id}/weights/history").json()["items"]
    assert [(v["version"], v["superseded"]) for v in history] == [
        (1, False),
        (2, False),
        (3, True),
        (4, True),
        (5, False),
    ]
    # Steps after the resume point are new again: replaying them is not a conflict.
    for step in (200, 300):
        assert client.post(f"{API}/runs/{run_id}/feedback", json=feedback(step)).status_code == 200
    assert store.online_state(run_id).state == uninterrupted


def test_feedback_for_an_earlier_step_after_a_later_one_is_409_naming_the_current_step(
    client: TestClient, online_run: dict[str, Any]
) -> None:
    run_id = online_run["id"]
    for step in (1000, 1500):
        assert client.post(f"{API}/runs/{run_id}/feedback", json=feedback(step)).status_code == 200
    late = client.post(f"{API}/runs/{run_id}/feedback", json=feedback(700))
    assert late.status_code == 409
    assert "step 1500" in late.json()["detail"]
    history = client.get(f"{API}/runs/{run_id}/weights/history").json()["items"]
    assert [v["step"] for v in history] == [0, 1000, 1500]
    # The same feedback again is still answered, not refused.
    assert client.post(f"{API}/runs/{run_id}/feedback", json=feedback(1000)).status_code == 200


def test_resume_to_a_step_the_run_has_not_reached_is_409_and_changes_nothing(
    client: TestClient, online_run: dict[str, Any]
) -> None:
    run_id = online_run["id"]
    client.post(f"{API}/runs/{run_id}/feedback", json=feedback(1000))
    ahead = client.post(f"{API}/runs/{run_id}/resume", json={"step": 99_999})
    assert ahead.status_code == 409
    assert "step 1000" in ahead.json()["detail"]
    assert client.get(f"{API}/runs/{run_id}/weights").json()["version"] == 2
    # Resuming to the step reached, or before it, works; then steps go forward from there.
    assert client.post(f"{API}/runs/{run_id}/resume", json={"step": 1000}).status_code == 200
    assert client.post(f"{API}/runs/{run_id}/resume", json={"step": 400}).status_code == 200
    assert client.post(f"{API}/runs/{run_id}/feedback", json=feedback(300)).status_code == 409
    assert client.post(f"{API}/runs/{run_id}/feedback", json=feedback(500)).status_code == 200


def test_completed_run_is_frozen_and_recommended(
    client: TestClient, online_run: dict[str, Any]
) -> None:
    run_id, experiment_id = online_run["id"], online_run["experiment_id"]
    assert client.get(f"{API}/experiments/{experiment_id}/recommendation").status_code == 409
    client.post(f"{API}/runs/{run_id}/feedback", json=feedback(100))
    done = client.post(f"{API}/runs/{run_id}/complete", json={"metrics": {"eval_loss/mean": 2.6}})
    assert done.status_code == 200 and done.json()["status"] == "completed"
    assert client.post(f"{API}/runs/{run_id}/feedback", json=feedback(200)).status_code == 409
    assert client.post(f"{API}/runs/{run_id}/resume", json={"step": 50}).status_code == 409
    recommended = client.get(f"{API}/experiments/{experiment_id}/recommendation").json()
    assert recommended["run_id"] == run_id
    assert sum(recommended["weights"].values()) == pytest.approx(1.0)


def test_modes_are_kept_apart(client: TestClient, online_run: dict[str, Any]) -> None:
    experiment_id = online_run["experiment_id"]
    imported = client.post(
        f"{API}/experiments/{experiment_id}/runs",
        json={"weights": {"web": 0.5, "code": 0.25, "papers": 0.25}},
    )
    assert imported.status_code == 422
    claim = client.post(f"{API}/experiments/{experiment_id}/claim", json={"worker": "w"})
    assert claim.status_code == 409
    proposals = client.post(f"{API}/experiments/{experiment_id}/proposals", json={"count": 2})
    assert proposals.status_code == 409
    offline = client.post(
        f"{API}/experiments",
        json=online_body(
            name="off",
            mode="offline",
            method="regmix",
            config={"seed": 3},
            objective={"metrics": {"loss": 1}},
        ),
    ).json()
    started = client.post(f"{API}/experiments/{offline['id']}/runs", json={"name": "main"})
    assert started.status_code == 422
    weights = client.get(f"{API}/runs/{online_run['id']}/weights")
    assert weights.status_code == 200


def test_offline_runs_have_no_weights_feed(client: TestClient, experiment: dict[str, Any]) -> None:
    run = client.post(
        f"{API}/experiments/{experiment['id']}/runs",
        json={"weights": {"web": 0.5, "code": 0.25, "papers": 0.25}},
    ).json()
    assert client.get(f"{API}/runs/{run['id']}/weights").status_code == 404
    assert client.post(f"{API}/runs/{run['id']}/feedback", json=feedback(1)).status_code == 404


@pytest.fixture
def two_replicas(database_url: str, store: SqlStore) -> Iterator[tuple[str, str]]:
    """Two app instances, each with its own engine and process state, on one database."""
    stores = [SqlStore(make_engine(database_url), weights_cache=True) for _ in range(2)]
    with (
        ThreadedServer(create_app(Settings(token_cache_seconds=5), stores[0])) as first,
        ThreadedServer(create_app(Settings(token_cache_seconds=5), stores[1])) as second,
    ):
        yield first.url, second.url
    for replica in stores:
        replica.close()


def test_two_replicas_apply_feedback_exactly_once_when_every_copy_races(
    two_replicas: tuple[str, str],
    tokens: Tokens,
    store: SqlStore,
    http: Callable[..., httpx.Client],
) -> None:
    urls = two_replicas
    admin = http(urls[0], tokens.header("admin"), 60)
    experiment = admin.post(f"{API}/experiments", json=online_body()).json()
    run_id = admin.post(f"{API}/experiments/{experiment['id']}/runs", json={"name": "main"}).json()[
        "id"
    ]
    # Steps only move forward, so the race is on each step: eight copies of every feedback
    # (a trainer's retries after timeouts, through both replicas) are posted at once.
    senders, steps = 8, 10
    errors: list[str] = []
    barrier = threading.Barrier(senders)

    def send(index: int) -> None:
        clients = [http(url, tokens.header("write"), 60) for url in urls]
        for j in range(steps):
            body = feedback((j + 1) * 10, tokens={"web": 1, "code": 2, "papers": 3})
            barrier.wait()
            response = clients[(index + j) % 2].post(f"{API}/runs/{run_id}/feedback", json=body)
            if response.status_code != 200:
                errors.append(response.text)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    total = steps
    state = store.online_state(run_id)
    assert state.version == total + 1
    assert state.state["rounds"] == total
    assert state.state["tokens"] == {"web": total, "code": 2 * total, "papers": 3 * total}
    versions = [r.version for r in store.weights_history(run_id, limit=1000, cursor=None).items]
    assert versions == list(range(1, total + 2))


@pytest.mark.parametrize(
    ("method", "config"),
    [
        ("odm", {}),
        ("aioli", {}),
        ("doremi", {"reference_losses": {"web": 3.0, "code": 2.0, "papers": 2.5}}),
    ],
)
def test_learning_mixers_serve_valid_weights_through_feedback(
    client: TestClient, method: str, config: dict[str, Any]
) -> None:
    created = client.post(
        f"{API}/experiments",
        json=online_body(name=f"m-{method}", method=method, config={"seed": 1, **config}),
    )
    assert created.status_code == 201, created.text
    run = client.post(f"{API}/experiments/{created.json()['id']}/runs", json={"name": "main"})
    weights = run.json()["weights"]
    step = 0
    for _ in range(12):
        current = client.get(f"{API}/runs/{run.json()['id']}/weights").json()
        step += current["train_steps"] or 100
        answer = client.post(f"{API}/runs/{run.json()['id']}/feedback", json=feedback(step))
        assert answer.status_code == 200, answer.text
        weights = answer.json()["weights"]
        assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(w > 0 for w in weights.values())  # the exploration floor


def test_aioli_needs_every_eval_loss(client: TestClient) -> None:
    created = client.post(
        f"{API}/experiments", json=online_body(name="aioli", method="aioli")
    ).json()
    run = client.post(f"{API}/experiments/{created['id']}/runs", json={"name": "main"}).json()
    partial = feedback(10, eval_losses={"web": 3.0, "code": 2.0})
    response = client.post(f"{API}/runs/{run['id']}/feedback", json=partial)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "eval_losses"]


def test_doremi_reference_run_becomes_its_final_eval_losses(
    client: TestClient, online_run: dict[str, Any]
) -> None:
    run_id = online_run["id"]
    client.post(f"{API}/runs/{run_id}/feedback", json=feedback(100))
    last = feedback(200, eval_losses={"web": 2.9, "code": 1.9, "papers": 2.4})
    client.post(f"{API}/runs/{run_id}/feedback", json=last)
    body = online_body(name="doremi", method="doremi", config={"reference_run": run_id})
    not_yet = client.post(f"{API}/experiments", json=body)
    assert not_yet.status_code == 422  # the reference run is still training
    assert not_yet.json()["errors"][0]["loc"] == ["body", "config", "reference_run"]
    client.post(f"{API}/runs/{run_id}/complete", json={"metrics": {}})
    created = client.post(f"{API}/experiments", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["config"]["reference_losses"] == last["eval_losses"]
    unknown = client.post(
        f"{API}/experiments",
        json=online_body(name="doremi-2", method="doremi", config={"reference_run": "999"}),
    )
    assert unknown.status_code == 422
