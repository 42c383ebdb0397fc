"""The metrics ingest path: its body is validated from the raw bytes (``service.api.body``) and
the store appends in one statement; ``serve --workers`` runs several processes on Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from mixopt.errors import Conflict
from service.main import API_PREFIX
from service.store import SqlStore
from service.store.sql import make_engine
from tests.servers import ServerProcess
from tests.service.conftest import TestClient
from tests.service.test_store import new_experiment, pending_runs

API = API_PREFIX


def _run(client: TestClient, experiment: dict[str, Any]) -> str:
    response = client.post(
        f"{API}/experiments/{experiment['id']}/runs",
        json={"weights": {"web": 0.5, "code": 0.3, "papers": 0.2}},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _locs(response: httpx.Response) -> list[list[str | int]]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return [error["loc"] for error in response.json()["errors"]]


def test_invalid_metric_bodies_are_422_at_the_field_and_store_nothing(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    run = _run(client, experiment)
    url = f"{API}/runs/{run}/metrics"
    json_type = {"content-type": "application/json"}
    good = {"name": "loss", "step": 1, "value": 1.0}
    cases: list[tuple[bytes, list[str | int]]] = [
        (b"", ["body"]),
        (b'{"points": [', ["body"]),
        (b"\xff\xfe", ["body"]),
        (
            b'{"points": [{"name": "loss", "step": "1", "value": 1.0}]}',
            ["body", "points", 0, "step"],
        ),
        (
            b'{"points": [{"name": "loss", "step": 1, "value": NaN}]}',
            ["body", "points", 0, "value"],
        ),
        (
            b'{"points": [{"name": "bad name!", "step": 1, "value": 1}]}',
            ["body", "points", 0, "name"],
        ),
        (b'{"points": [], "extra": 1}', ["body", "extra"]),
        (b"[]", ["body"]),
    ]
    for raw, loc in cases:
        assert loc in _locs(client.post(url, content=raw, headers=json_type)), raw
    # A body not declared JSON is not parsed anyway: 415 for another type (AuthenticatedRoute),
    # and without a Content-Type the 422 FastAPI gives its own routes.
    as_text = client.post(url, json={"points": [good]}, headers={"content-type": "text/plain"})
    assert as_text.status_code in (415, 422), as_text.text
    assert as_text.headers["content-type"].startswith("application/problem+json")
    untyped = client.post(url, content=b'{"points": [{"name": "loss", "step": 1, "value": 1}]}')
    assert _locs(untyped) == [["body"]]
    assert client.get(url).json()["items"] == []
    # A JSON media type with parameters or a +json suffix is JSON.
    for media in ("application/json; charset=utf-8", "application/vnd.mixopt+json"):
        response = client.post(
            url,
            content=b'{"points": [{"name": "loss", "step": 1, "value": 1.0}]}',
            headers={"content-type": media},
        )
        assert response.status_code == 202, (media, response.text)
    assert response.json() == {"accepted": 1, "new": 0}


def test_metrics_to_a_missing_run_are_404_and_an_anonymous_malformed_post_401(
    client: TestClient, app: Any
) -> None:
    body = {"points": [{"name": "loss", "step": 1, "value": 1.0}]}
    assert client.post(f"{API}/runs/987654/metrics", json=body).status_code == 404
    with TestClient(app) as anonymous:
        # Authentication comes before the body is read: no probing the validation rules.
        response = anonymous.post(
            f"{API}/runs/1/metrics", content=b"{", headers={"content-type": "application/json"}
        )
        assert response.status_code == 401, response.text


def test_the_metrics_body_is_documented_in_the_api_document(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"][f"{API}/runs/{{run_id}}/metrics"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert operation["requestBody"]["required"] is True
    name = schema["$ref"].rsplit("/", 1)[-1]
    points = document["components"]["schemas"][name]["properties"]["points"]
    assert points["maxItems"] == 10_000
    item = points["items"]["$ref"].rsplit("/", 1)[-1]
    assert set(document["components"]["schemas"][item]["properties"]) == {"name", "step", "value"}
    accepted = operation["responses"]["202"]["content"]["application/json"]["schema"]
    assert accepted["$ref"].endswith("/MetricsAccepted")


def test_serve_refuses_several_workers_on_sqlite(tmp_path: Path) -> None:
    database = tmp_path / "never.db"
    result = subprocess.run(
        [sys.executable, "-m", "mixopt.cli", "serve", "--workers", "2", "--port", "0"],
        env={**os.environ, "MIXOPT_DATABASE_URL": f"sqlite:///{database}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "--workers" in output and "Postgres" in output, output
    assert not database.exists()


@pytest.mark.slow
def test_several_workers_ingest_into_one_database_idempotently(
    pg_database: str, tmp_path: Path
) -> None:
    engine = make_engine(pg_database)
    store = SqlStore(engine)
    _, token = store.create_token("workers", "admin", None)
    # Each worker imports the whole service again: slow to be ready on a busy machine.
    server = ServerProcess(pg_database, tmp_path, "--workers", "2").start(timeout=240)
    try:
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as http:
            experiment = http.post(
                f"{API}/experiments",
                json={
                    "name": "workers",
                    "method": "regmix",
                    "domains": [{"name": "a"}, {"name": "b"}],
                    "objective": {"metrics": {"loss": 1}},
                },
            ).json()
            run = http.post(
                f"{API}/experiments/{experiment['id']}/proposals", json={"count": 1}
            ).json()["items"][0]["id"]
            url = f"{API}/runs/{run}/metrics"
            # New connections each time: the kernel spreads them over both processes.
            for first in range(0, 2000, 100):
                points = [
                    {"name": "loss", "step": s, "value": s / 2} for s in range(first, first + 100)
                ]
                with httpx.Client(base_url=server.url, headers=auth, timeout=30) as fresh:
                    response = fresh.post(url, json={"points": points})
                    assert response.json() == {"accepted": 100, "new": 100}, response.text
                    again = fresh.post(url, json={"points": points})
                    assert again.json() == {"accepted": 100, "new": 0}, again.text
            clash = http.post(url, json={"points": [{"name": "loss", "step": 5, "value": 9.0}]})
            assert clash.status_code == 409, clash.text
            series = http.get(f"{API}/runs/{run}/metrics", params={"limit": 1000})
            assert len(series.json()["items"]) == 1000
        stored = {
            p.step: p.value
            for p in store.list_metrics(run, name="loss", limit=1000, cursor=None).items
        }
        assert stored[5] == 2.5
    finally:
        server.stop()
        store.close()


def test_a_point_posted_concurrently_with_two_values_is_stored_once_and_one_batch_is_409(
    store: SqlStore,
) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    store.append_metrics(run_id, [("loss/web", 1, 1.0)])  # a name that prefixes another
    barrier = threading.Barrier(2)
    outcomes: dict[float, str] = {}

    def post(value: float) -> None:
        barrier.wait()
        batch = [("loss", 7, value), ("loss/web", 7, value), ("other", value, value)]
        try:
            store.append_metrics(run_id, [(n, int(s), v) for n, s, v in batch])
            outcomes[value] = "stored"
        except Conflict as error:
            outcomes[value] = str(error)

    threads = [threading.Thread(target=post, args=(value,)) for value in (2.0, 3.0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o == "stored" for o in outcomes.values()) == [False, True], outcomes
    winner = next(v for v, o in outcomes.items() if o == "stored")
    loser = next(v for v, o in outcomes.items() if o != "stored")
    # The 409 names the point and both values; nothing of the losing batch was written.
    assert f"step 7) is stored with value {winner!r}, not {loser!r}" in outcomes[loser]
    stored = store.list_metrics(run_id, name=None, limit=100, cursor=None).items
    expected = [("loss/web", 1, 1.0), ("loss", 7, winner), ("loss/web", 7, winner)]
    expected.append(("other", int(winner), winner))
    assert sorted((p.name, p.step, p.value) for p in stored) == sorted(expected)
