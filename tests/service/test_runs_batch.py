"""``POST /experiments/{id}/runs/batch`` and ``Store.import_runs``: bulk imports, all or nothing,
each run idempotent on its external_id. Every test runs on SQLite and on Postgres."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from mixopt.errors import Conflict, Gone
from service.store import NewRun, SqlStore
from service.store.sql.queue import QueueStore
from tests.conftest import Tokens
from tests.service.conftest import experiment_body
from tests.service.test_api_contract import expect, problem
from tests.service.test_store import at_once, new_experiment

API = "/api/v1"
VALID = {"web": 0.5, "code": 0.3, "papers": 0.2}


def row(i: int, **overrides: Any) -> dict[str, Any]:
    """A completed run keyed ``swarm:<i>`` whose loss depends on ``i``."""
    body: dict[str, Any] = {
        "weights": VALID,
        "metrics": {"val_loss/web": 3.0 + i / 1000},
        "external_id": f"swarm:{i}",
    }
    body.update(overrides)
    return body


def batch_url(experiment: dict[str, Any]) -> str:
    return f"{API}/experiments/{experiment['id']}/runs/batch"


def stored_runs(client: TestClient, experiment: dict[str, Any]) -> list[dict[str, Any]]:
    page = expect(client.get(f"{API}/experiments/{experiment['id']}/runs?limit=1000"), 200)
    items: list[dict[str, Any]] = page["items"]
    return items


# --- the endpoint ------------------------------------------------------------------------------


def test_a_batch_stores_every_run_and_answers_them_in_request_order(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    runs = [
        row(2, tags={"seed": "1"}),
        {"weights": {"web": 0.1, "code": 0.1, "papers": 0.8}},  # no external_id: pending
        row(1, status="failed", params={"lr": 0.01}),
    ]
    answer = expect(client.post(batch_url(experiment), json={"runs": runs}), 201)
    assert answer["new"] == 3
    items = answer["items"]
    assert [r["external_id"] for r in items] == ["swarm:2", None, "swarm:1"]
    assert [r["status"] for r in items] == ["completed", "pending", "failed"]
    assert items[0]["tags"] == {"seed": "1"}
    assert items[2]["params"] == {"lr": 0.01}
    assert items[1]["weights"] == {"web": 0.1, "code": 0.1, "papers": 0.8}
    assert all(r["experiment_id"] == experiment["id"] for r in items)
    assert {r["id"] for r in stored_runs(client, experiment)} == {r["id"] for r in items}
    counts = expect(client.get(f"{API}/experiments/{experiment['id']}"), 200)["counts"]
    assert (counts["completed"], counts["pending"], counts["failed"]) == (1, 1, 1)


def test_reposting_a_batch_answers_the_stored_runs_and_none_is_new(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    runs = [row(i) for i in range(5)]
    first = expect(client.post(batch_url(experiment), json={"runs": runs}), 201)
    again = expect(client.post(batch_url(experiment), json={"runs": runs}), 201)
    assert (first["new"], again["new"]) == (5, 0)
    assert again["items"] == first["items"]
    # A batch overlapping what is stored stores only the rest; a single import agrees.
    grown = expect(client.post(batch_url(experiment), json={"runs": [row(9), *runs[:2]]}), 201)
    assert grown["new"] == 1
    assert [r["id"] for r in grown["items"][1:]] == [r["id"] for r in first["items"][:2]]
    single = client.post(f"{API}/experiments/{experiment['id']}/runs", json=row(9))
    assert expect(single, 200)["id"] == grown["items"][0]["id"]
    assert len(stored_runs(client, experiment)) == 6


def test_one_invalid_row_stores_nothing_and_is_named_by_index_and_field(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    expect(client.post(batch_url(experiment), json={"runs": [row(0)]}), 201)
    runs = [row(i) for i in range(1, 21)]
    runs[17] = row(18, weights={"web": 0.5, "code": 0.3, "papers": 0.1})  # sums to 0.9
    runs[3] = row(4, weights={"web": 0.5, "code": 0.3, "wiki": 0.2})
    body = problem(
        client.post(batch_url(experiment), json={"runs": runs}),
        422,
        loc=["body", "runs", 17, "weights"],
        detail="2 of 20 runs are invalid",
    )
    messages = {tuple(e["loc"]): e["msg"] for e in body["errors"]}
    assert "sum to 0.9" in messages["body", "runs", 17, "weights"]
    assert "unknown domain" in messages["body", "runs", 3, "weights", "wiki"]
    # Checked by the request's schema, strictly: a number as a string, an unknown field.
    runs[17] = row(18, weights={"web": "0.5", "code": 0.3, "papers": 0.2})
    problem(
        client.post(batch_url(experiment), json={"runs": runs}),
        422,
        loc=["body", "runs", 17, "weights", "web"],
    )
    runs[17] = row(18, colour="red")
    problem(
        client.post(batch_url(experiment), json={"runs": runs}),
        422,
        loc=["body", "runs", 17, "colour"],
    )
    assert len(stored_runs(client, experiment)) == 1


def test_a_conflicting_external_id_is_409_naming_it_and_stores_nothing(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    first = expect(client.post(batch_url(experiment), json={"runs": [row(7)]}), 201)
    changed = row(7, metrics={"val_loss/web": 2.5})
    response = client.post(batch_url(experiment), json={"runs": [row(1), changed, row(2)]})
    problem(response, 409, detail="swarm:7")
    assert stored_runs(client, experiment) == first["items"]


def test_an_external_id_twice_in_a_batch_is_one_run_unless_they_differ(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    differ = [row(1), row(2), row(1, weights={"web": 1.0, "code": 0.0, "papers": 0.0})]
    problem(
        client.post(batch_url(experiment), json={"runs": differ}),
        422,
        loc=["body", "runs", 2, "external_id"],
        detail="run 0's",
    )
    assert stored_runs(client, experiment) == []
    same = expect(client.post(batch_url(experiment), json={"runs": [row(1), row(1)]}), 201)
    assert same["new"] == 1
    assert same["items"][0]["id"] == same["items"][1]["id"]
    assert len(stored_runs(client, experiment)) == 1


def test_a_batch_holds_one_to_a_thousand_runs(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    problem(client.post(batch_url(experiment), json={"runs": []}), 422, loc=["body", "runs"])
    problem(client.post(batch_url(experiment), json={}), 422, loc=["body", "runs"])
    problem(client.post(batch_url(experiment), json={"runs": {}}), 422, loc=["body", "runs"])
    too_many = [row(i) for i in range(1001)]
    problem(client.post(batch_url(experiment), json={"runs": too_many}), 422, loc=["body", "runs"])
    assert stored_runs(client, experiment) == []
    full = expect(client.post(batch_url(experiment), json={"runs": too_many[:1000]}), 201)
    assert full["new"] == 1000
    assert [r["external_id"] for r in full["items"]] == [f"swarm:{i}" for i in range(1000)]
    assert len({r["id"] for r in full["items"]}) == 1000


def test_online_archived_and_unknown_experiments_refuse_a_batch(
    client: TestClient, experiment: dict[str, Any]
) -> None:
    online = expect(
        client.post(
            f"{API}/experiments",
            json=experiment_body(
                name="online-3", mode="online", method="stratified", objective=None
            ),
        ),
        201,
    )
    problem(client.post(batch_url(online), json={"runs": [row(1)]}), 409, detail="online")
    expect(client.post(f"{API}/experiments/{experiment['id']}/archive"), 200)
    problem(client.post(batch_url(experiment), json={"runs": [row(1)]}), 409, detail="archived")
    assert stored_runs(client, experiment) == []
    unknown = client.post(f"{API}/experiments/999999/runs/batch", json={"runs": [row(1)]})
    problem(unknown, 404)


def test_a_batch_needs_the_write_scope(
    client: TestClient, experiment: dict[str, Any], tokens: Tokens
) -> None:
    body = {"runs": [row(1)]}
    problem(client.post(batch_url(experiment), json=body, headers=tokens.header("read")), 403)
    written = client.post(batch_url(experiment), json=body, headers=tokens.header("write"))
    assert expect(written, 201)["new"] == 1


def test_openapi_documents_the_batch_body_and_answer(client: TestClient) -> None:
    document = expect(client.get("/openapi.json"), 200)
    operation = document["paths"][f"{API}/experiments/{{experiment_id}}/runs/batch"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RunBatch"}
    answer = operation["responses"]["201"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/RunBatchResult"}
    runs = document["components"]["schemas"]["RunBatch"]["properties"]["runs"]
    assert (runs["minItems"], runs["maxItems"]) == (1, 1000)
    assert runs["items"] == {"$ref": "#/components/schemas/RunImport"}
    assert {"409", "422"} <= set(operation["responses"])


# --- the store ---------------------------------------------------------------------------------


def new_run(i: int, loss: float | None = None, **fields: Any) -> NewRun:
    return NewRun(
        {"web": 0.5, "code": 0.5},
        metrics={"loss": 3.0 + i if loss is None else loss},
        status="completed",
        external_id=f"swarm:{i}",
        **fields,
    )


def test_store_import_runs_is_all_or_nothing_and_idempotent(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    first = store.import_runs(experiment.id, [new_run(1), NewRun({"web": 1.0, "code": 0.0})])
    assert [created for _, created in first] == [True, True]
    assert first[1][0].external_id is None and first[1][0].status == "pending"
    again = store.import_runs(experiment.id, [new_run(2), new_run(1), new_run(2)])
    assert [created for _, created in again] == [True, False, False]
    assert again[1][0] == first[0][0]
    assert again[0][0] == again[2][0]
    with pytest.raises(Conflict, match="swarm:1"):
        store.import_runs(experiment.id, [new_run(3), new_run(1, loss=9.0)])
    with pytest.raises(Conflict, match="swarm:4"):
        store.import_runs(experiment.id, [new_run(4), new_run(5), new_run(4, loss=9.0)])
    assert sorted(r.external_id or "" for r in store.iter_runs(experiment.id)) == [
        "",
        "swarm:1",
        "swarm:2",
    ]
    store.archive_experiment(experiment.id)
    with pytest.raises(Gone):
        store.import_runs(experiment.id, [new_run(6)])


def test_store_import_runs_reads_back_what_a_concurrent_import_stored_first(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: another import commits an external_id after this one looked for it. The
    insert then breaks the unique constraint; the batch is read again and answers that run."""
    experiment = store.create_experiment(new_experiment())
    winner, _ = store.import_run(experiment.id, new_run(1))
    looked = QueueStore._stored_imports
    calls: list[int] = []

    def stale_first_read(self: SqlStore, *args: Any) -> Any:
        calls.append(1)
        return {} if len(calls) == 1 else looked(self, *args)

    monkeypatch.setattr(QueueStore, "_stored_imports", stale_first_read)
    answers = store.import_runs(experiment.id, [new_run(0), new_run(1)])
    assert len(calls) == 2
    assert [created for _, created in answers] == [True, False]
    assert answers[1][0] == winner
    assert len(list(store.iter_runs(experiment.id))) == 2
    # A changed run found on the second read is a conflict, and nothing is stored.
    calls.clear()
    with pytest.raises(Conflict):
        store.import_runs(experiment.id, [new_run(5), new_run(1, loss=9.0)])
    assert len(list(store.iter_runs(experiment.id))) == 2


def test_concurrent_batches_of_the_same_runs_store_each_once(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    runs = [new_run(i) for i in range(50)]
    answers = at_once(lambda: store.import_runs(experiment.id, runs), n=4)
    assert sum(created for answer in answers for _, created in answer) == 50
    ids = [[record.id for record, _ in answer] for answer in answers]
    assert all(answer == ids[0] for answer in ids)
    assert len(list(store.iter_runs(experiment.id))) == 50
