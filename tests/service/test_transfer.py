"""Moving experiments between stores: export from one backend, import into the other, and the
experiment answers the same there; imports happen once; bad archives write nothing."""

from __future__ import annotations

import gzip
import json
import shutil
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mixers.persistence import load_fit
from mixopt.errors import InvalidInput
from mixopt.settings import Settings
from service.main import create_app
from service.store import SqlStore
from service.store.archive import ArchivedFit
from service.store.sql import make_engine
from service.transfer import archive_digest, export_archive, read_archive
from tests.conftest import _truncate
from tests.service.conftest import experiment_body
from tests.service.test_online import feedback, online_body

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

API = "/api/v1"


@dataclass
class Side:
    store: SqlStore
    client: TestClient


def _database(kind: str, name: str, tmp_path: Path, template: Path, pg: Any) -> str:
    if kind == "sqlite":
        path = tmp_path / f"{name}.db"
        shutil.copy(template, path)
        return f"sqlite:///{path}"
    url: str = pg()
    _truncate(url)
    return url


@pytest.fixture
def settings() -> Settings:
    # Fits in the server's threads: a worker process would start for the few fits made here.
    return Settings(token_cache_seconds=0, auth_free_failures=0, fit_workers=0)


@pytest.fixture(
    params=[("sqlite", "postgres"), ("postgres", "sqlite")], ids=["sqlite-to-pg", "pg-to-sqlite"]
)
def sides(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path, settings: Settings
) -> Iterator[tuple[Side, Side]]:
    """A source and a target service, each on its own database of another backend."""
    made: list[Side] = []
    for kind, name in zip(request.param, ("source", "target"), strict=True):
        url = _database(
            kind, name, tmp_path, sqlite_template, lambda: request.getfixturevalue("pg_database")
        )
        store = SqlStore(make_engine(url))
        admin = store.create_token("admin", "admin", None)[1]
        app = create_app(settings, store)
        client = TestClient(app, headers={"Authorization": f"Bearer {admin}"})
        made.append(Side(store, client.__enter__()))
    yield made[0], made[1]
    for side in made:
        side.client.__exit__(None, None, None)
        side.store.close()


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def objective(weights: dict[str, float]) -> float:
    return 3.0 - weights["web"] + 0.5 * weights["code"] ** 2


def build_offline(client: TestClient, *, fits: int = 2) -> str:
    """An offline experiment with runs in every status, metric points and ``fits`` fits (up to
    two)."""
    eid = ok(
        client.post(
            f"{API}/experiments",
            json=experiment_body(name="offline-x", config={"seed": 1, "max_attempts": 1}),
        ),
        201,
    )["id"]
    runs = ok(client.post(f"{API}/experiments/{eid}/proposals", json={"count": 14}), 201)["items"]
    for run in runs[:10]:
        ok(
            client.post(
                f"{API}/runs/{run['id']}/complete",
                json={"metrics": {"val_loss/web": objective(run["weights"])}},
            )
        )
        points = [{"name": "val_loss/web", "step": s, "value": 4.0 - s / 1000} for s in (10, 20)]
        ok(client.post(f"{API}/runs/{run['id']}/metrics", json={"points": points}), 202)
    ok(
        client.post(
            f"{API}/runs/{runs[0]['id']}/exclude", json={"excluded": True, "reason": "bad node"}
        )
    )
    ok(client.post(f"{API}/runs/{runs[10]['id']}/fail", json={"reason": "oom"}))
    claimed = ok(client.post(f"{API}/experiments/{eid}/claim", json={"worker": "w1"}))
    assert claimed["id"] == runs[11]["id"]
    ok(
        client.post(
            f"{API}/experiments/{eid}/runs",
            json={
                "weights": {"web": 0.5, "code": 0.3, "papers": 0.2},
                "metrics": {"val_loss/web": objective({"web": 0.5, "code": 0.3})},
                "tags": {"seed": "7"},
                "external_id": "elsewhere-1",
            },
        ),
        201,
    )
    if fits > 0:
        ok(client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear"}))
    ok(
        client.post(
            f"{API}/runs/{runs[12]['id']}/complete",
            json={"metrics": {"val_loss/web": objective(runs[12]["weights"])}},
        )
    )
    if fits > 1:
        ok(client.post(f"{API}/experiments/{eid}/fit", json={"model": "linear"}))
    return str(eid)


def build_online(client: TestClient) -> str:
    """An online experiment: a run with several versions, feedback and a resume, and a
    completed run."""
    eid = ok(client.post(f"{API}/experiments", json=online_body(name="online-x")), 201)["id"]
    main = ok(
        client.post(f"{API}/experiments/{eid}/runs", json={"name": "main", "request_id": "r1"}),
        201,
    )["id"]
    for step in (100, 200, 300):
        ok(client.post(f"{API}/runs/{main}/feedback", json=feedback(step)))
    ok(client.post(f"{API}/runs/{main}/resume", json={"step": 150}))
    ok(client.post(f"{API}/runs/{main}/feedback", json=feedback(250, tokens={"web": 9})))
    done = ok(client.post(f"{API}/experiments/{eid}/runs", json={"name": "done"}), 201)["id"]
    ok(client.post(f"{API}/runs/{done}/feedback", json=feedback(100)))
    ok(client.post(f"{API}/runs/{done}/complete", json={"metrics": {"eval_loss/mean": 2.6}}))
    return str(eid)


def transfer(source: Side, target: Side, eid: str, status: int = 201) -> dict[str, Any]:
    response = source.client.get(f"{API}/experiments/{eid}/export")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    result: dict[str, Any] = ok(
        target.client.post(f"{API}/experiments/import", content=response.content), status
    )
    return result


def without(item: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in keys}


def runs_of(side: Side, eid: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = ok(side.client.get(f"{API}/experiments/{eid}/runs"))["items"]
    return runs


def test_an_offline_experiment_answers_the_same_in_the_other_store(
    sides: tuple[Side, Side],
) -> None:
    source, target = sides
    eid = build_offline(source.client)
    imported = transfer(source, target, eid)
    new = imported["id"]
    assert without(imported, "id") == without(
        ok(source.client.get(f"{API}/experiments/{eid}")), "id"
    )
    assert imported["counts"] == {
        "pending": 1,
        "running": 1,
        "completed": 12,
        "failed": 1,
        "excluded": 1,
    }

    before, after = runs_of(source, eid), runs_of(target, new)
    assert [without(r, "id", "experiment_id") for r in after] == [
        without(r, "id", "experiment_id") for r in before
    ]
    run_ids = {old["id"]: moved["id"] for old, moved in zip(before, after, strict=True)}
    for old, moved in run_ids.items():
        assert ok(target.client.get(f"{API}/runs/{moved}/metrics")) == ok(
            source.client.get(f"{API}/runs/{old}/metrics")
        )

    fits_before = ok(source.client.get(f"{API}/experiments/{eid}/fits"))["items"]
    fits_after = ok(target.client.get(f"{API}/experiments/{new}/fits"))["items"]
    assert len(fits_after) == 2
    for old_fit, new_fit in zip(fits_before, fits_after, strict=True):
        # The out-of-fold predictions name the runs by their ids in the target.
        relinked = [{**o, "run_id": run_ids[o["run_id"]]} for o in old_fit["oof"]]
        assert new_fit["oof"] == relinked
        assert without(new_fit, "id", "experiment_id", "oof") == without(
            old_fit, "id", "experiment_id", "oof"
        )

    # The stored model's own copy of the out-of-fold runs is relinked too.
    latest = target.store.latest_fit(new)
    assert latest is not None and latest[1] is not None
    loaded = load_fit(latest[1].data, latest[1].format)
    assert {o.run_id for o in loaded.oof} <= set(run_ids.values())

    recommendation = ok(target.client.get(f"{API}/experiments/{new}/recommendation"))
    assert recommendation["fit_id"] == fits_after[0]["id"]
    assert without(recommendation, "fit_id") == without(
        ok(source.client.get(f"{API}/experiments/{eid}/recommendation")), "fit_id"
    )
    mixtures = {
        "mixtures": [
            {"weights": {"web": 0.6, "code": 0.3, "papers": 0.1}},
            {"weights": {"web": 0.2, "code": 0.2, "papers": 0.6}},
        ]
    }
    assert ok(target.client.post(f"{API}/experiments/{new}/predict", json=mixtures)) == ok(
        source.client.post(f"{API}/experiments/{eid}/predict", json=mixtures)
    )
    # The queue goes on where it was: the pending run is claimed next, the lease still held.
    pending = next(r for r in after if r["status"] == "pending")
    assert (
        ok(target.client.post(f"{API}/experiments/{new}/claim", json={"worker": "w2"}))["id"]
        == pending["id"]
    )


def test_an_online_experiment_keeps_its_state_and_history(sides: tuple[Side, Side]) -> None:
    source, target = sides
    eid = build_online(source.client)
    new = transfer(source, target, eid)["id"]
    before, after = runs_of(source, eid), runs_of(target, new)
    assert [without(r, "id", "experiment_id") for r in after] == [
        without(r, "id", "experiment_id") for r in before
    ]
    for old, moved in zip(before, after, strict=True):
        weights = ok(target.client.get(f"{API}/runs/{moved['id']}/weights"))
        assert without(weights, "run_id") == without(
            ok(source.client.get(f"{API}/runs/{old['id']}/weights")), "run_id"
        )
        history = ok(target.client.get(f"{API}/runs/{moved['id']}/weights/history"))["items"]
        assert [without(v, "run_id") for v in history] == [
            without(v, "run_id")
            for v in ok(source.client.get(f"{API}/runs/{old['id']}/weights/history"))["items"]
        ]
        assert target.store.feedback_history(moved["id"], limit=100, cursor=None).items == (
            source.store.feedback_history(old["id"], limit=100, cursor=None).items
        )
    assert without(ok(target.client.get(f"{API}/experiments/{new}/recommendation")), "run_id") == (
        without(ok(source.client.get(f"{API}/experiments/{eid}/recommendation")), "run_id")
    )
    # The mixer state moved too: both stores answer the next feedback, and a resume, alike.
    main_old, main_new = before[0]["id"], after[0]["id"]
    for path, body in (
        ("feedback", feedback(250, tokens={"web": 9})),
        ("feedback", feedback(400)),
        ("resume", {"step": 100}),
        ("feedback", feedback(500)),
    ):
        there = ok(target.client.post(f"{API}/runs/{main_new}/{path}", json=body))
        here = ok(source.client.post(f"{API}/runs/{main_old}/{path}", json=body))
        assert without(there, "run_id") == without(here, "run_id")
    # The completed run's state stayed frozen.
    frozen = target.client.post(f"{API}/runs/{after[1]['id']}/feedback", json=feedback(200))
    assert frozen.status_code == 409, frozen.text


def test_importing_the_same_archive_again_returns_the_experiment_and_writes_nothing(
    sides: tuple[Side, Side],
) -> None:
    source, target = sides
    eid = build_online(source.client)
    archive = source.client.get(f"{API}/experiments/{eid}/export").content
    first = ok(target.client.post(f"{API}/experiments/import", content=archive), 201)
    # Re-indented and gzip'd, it is still the same archive.
    again = gzip.compress(json.dumps(json.loads(archive), indent=2).encode())
    second = ok(target.client.post(f"{API}/experiments/import", content=again), 200)
    assert second == first
    assert len(ok(target.client.get(f"{API}/experiments"))["items"]) == 1
    assert len(runs_of(target, first["id"])) == 2
    history = target.store.weights_history(
        runs_of(target, first["id"])[0]["id"], limit=100, cursor=None
    )
    assert len(history.items) == 6

    changed = json.loads(archive)
    changed["runs"][0]["tags"] = {"edited": "yes"}
    conflict = target.client.post(f"{API}/experiments/import", content=json.dumps(changed))
    assert conflict.status_code == 409, conflict.text
    assert f"imported as experiment {first['id']}" in conflict.json()["detail"]

    # A fresh export is a new archive: it is refused while the active name is taken, and
    # imported under another name.
    fresh = source.client.get(f"{API}/experiments/{eid}/export").content
    taken = target.client.post(f"{API}/experiments/import", content=fresh)
    assert taken.status_code == 409 and "online-x" in taken.json()["detail"]
    renamed = target.client.post(
        f"{API}/experiments/import", params={"name": "online-y"}, content=fresh
    )
    assert ok(renamed, 201)["name"] == "online-y"


@pytest.mark.parametrize(
    ("edit", "loc", "detail"),
    [
        (lambda a: a.update(version=2), ["body", "version"], "archive version 2"),
        (lambda a: a.update(format="zip"), ["body", "format"], "not a mixopt experiment"),
        (
            lambda a: a["runs"][1].update(weights={"web": 0.5, "code": 0.6, "papers": 0.1}),
            ["body", "runs", 1, "weights"],
            "inconsistent",
        ),
        (
            lambda a: a["runs"][0].update(points=[["x", 1, 1.0], ["x", 1, 2.0]]),
            ["body", "runs", 0, "points", 1],
            "inconsistent",
        ),
        (lambda a: a["experiment"].update(method="nope"), ["body", "experiment", "method"], "nope"),
        (lambda a: a["runs"][2].update(status="lost"), ["body", "runs", 2, "status"], "invalid"),
        (lambda a: a.update(extra=1), ["body", "extra"], "invalid"),
        (lambda a: a["runs"][0].update(worker="w" * 129), ["body", "runs", 0, "worker"], "invalid"),
        (lambda a: a["runs"][0].update(attempt=2**31), ["body", "runs", 0, "attempt"], "invalid"),
    ],
    ids=[
        "version",
        "format",
        "weights",
        "points",
        "method",
        "status",
        "unknown-field",
        "too-long",
        "too-big",
    ],
)
def test_a_bad_archive_is_refused_naming_the_field_and_nothing_is_written(
    store: SqlStore, client: TestClient, edit: Any, loc: list[Any], detail: str
) -> None:
    eid = build_offline(client, fits=0)
    archive = json.loads(client.get(f"{API}/experiments/{eid}/export").content)
    client.post(f"{API}/experiments/{eid}/archive")  # the name is free: only the archive fails
    edit(archive)
    response = client.post(f"{API}/experiments/import", content=json.dumps(archive))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in problem["detail"]
    assert loc in [e["loc"] for e in problem["errors"]]
    assert len(ok(client.get(f"{API}/experiments"))["items"]) == 1


@pytest.mark.parametrize("body", [b"", b"{not json", b"\x1f\x8b\x08\x00broken", b"[1, 2]"], ids=str)
def test_what_is_not_an_archive_at_all_is_a_422(client: TestClient, body: bytes) -> None:
    response = client.post(f"{API}/experiments/import", content=body)
    assert response.status_code == 422, response.text
    assert ok(client.get(f"{API}/experiments"))["items"] == []


def test_an_import_failing_halfway_writes_nothing(store: SqlStore, client: TestClient) -> None:
    eid = build_offline(client, fits=1)
    archive = export_archive(store, eid)
    store.archive_experiment(eid)

    def broken(fit: ArchivedFit, run_ids: Any) -> ArchivedFit:
        raise InvalidInput.at(("fits",), "broken on purpose, after the runs were written")

    with pytest.raises(InvalidInput):
        store.import_experiment(archive, digest=archive_digest(archive), relink=broken)
    assert len(store.list_experiments(status=None, limit=10, cursor=None).items) == 1
    assert store.imported_experiment(archive.origin) is None


def test_archives_over_the_body_limit_are_taken_up_to_the_import_limit(
    store: SqlStore, client: TestClient, tokens: Any
) -> None:
    eid = build_offline(client, fits=0)
    archive = client.get(f"{API}/experiments/{eid}/export").content
    client.post(f"{API}/experiments/{eid}/archive")
    assert len(archive) > 2048
    for limit, status in ((1024, 413), (len(archive), 201)):
        limits = Settings(max_body_bytes=1024, max_import_bytes=limit, token_cache_seconds=0)
        with TestClient(create_app(limits, store), headers=tokens.header("admin")) as small:
            assert small.post(f"{API}/experiments/import", content=archive).status_code == status
            # Every other route keeps the usual limit.
            big = small.post(f"{API}/experiments", content=b" " * 2048)
            assert big.status_code == 413


def test_an_archive_reads_back_to_the_same_content(store: SqlStore, client: TestClient) -> None:
    eid = build_online(client)
    archive = export_archive(store, eid)
    data = archive.model_dump_json().encode()
    assert read_archive(gzip.compress(data)) == archive
    assert archive_digest(read_archive(data)) == archive_digest(archive)
    with pytest.raises(InvalidInput, match="decompressed"):
        read_archive(gzip.compress(data), max_bytes=1000)


def test_concurrent_imports_of_one_archive_make_one_experiment(
    store: SqlStore, client: TestClient
) -> None:
    eid = build_online(client)
    archive = export_archive(store, eid)
    store.archive_experiment(eid)
    answers: list[tuple[str, bool]] = []
    barrier = threading.Barrier(4)

    def importer() -> None:
        barrier.wait()
        record, created = store.import_experiment(archive, digest=archive_digest(archive))
        answers.append((record.id, created))

    threads = [threading.Thread(target=importer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 4
    assert len({experiment_id for experiment_id, _ in answers}) == 1
    assert sorted(created for _, created in answers) == [False, False, False, True]
    assert len(store.list_experiments(status=None, limit=10, cursor=None).items) == 2
