"""``mixopt.client`` against a live server (uvicorn in a thread) on SQLite and on Postgres, and
its retry, error and caching rules against scripted transports."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from mixopt import schemas
from mixopt.client import (
    AuthError,
    ConflictError,
    ForbiddenError,
    MixoptAPIError,
    MixoptClient,
    NotFoundError,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
)
from mixopt.settings import Settings
from service.main import create_app
from service.store import SqlStore
from tests.conftest import Tokens
from tests.servers import ThreadedServer
from tests.service.conftest import experiment_body

FAST: dict[str, Any] = {"backoff_base": 0.001, "backoff_max": 0.005}
DOMAINS: list[dict[str, Any]] = [
    {"name": "web", "tokens": 6e9},
    {"name": "code", "tokens": 2e9},
    {"name": "papers"},
]
VALID = {"web": 0.5, "code": 0.3, "papers": 0.2}


def spec(name: str = "pile-3", **overrides: Any) -> dict[str, Any]:
    return experiment_body(name=name, domains=DOMAINS, **overrides)


@pytest.fixture
def server(store: SqlStore) -> Iterator[ThreadedServer]:
    with ThreadedServer(create_app(Settings(token_cache_seconds=0), store)) as running:
        yield running


@pytest.fixture
def connect(server: ThreadedServer) -> Iterator[Callable[..., MixoptClient]]:
    """Open clients of the live server (closed at the end of the test)."""
    opened: list[MixoptClient] = []

    def open_client(token: str | None, **kwargs: Any) -> MixoptClient:
        client = MixoptClient(server.url, token, **{**FAST, **kwargs})
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


@pytest.fixture
def admin(connect: Callable[..., MixoptClient], tokens: Tokens) -> MixoptClient:
    return connect(tokens.admin)


# --- the live server, every existing endpoint ---------------------------------------------------


def test_client_checks_health_lists_methods_and_pages_and_archives_experiments(
    admin: MixoptClient,
) -> None:
    assert admin.healthz() == {"status": "ok"}
    assert admin.readyz() == {"status": "ready"}
    methods = {m.name: m for m in admin.list_methods()}
    assert "regmix" in methods
    assert methods["regmix"].mode == "offline"
    assert isinstance(methods["regmix"].config_schema, dict)

    created = [admin.create_experiment(spec(f"exp-{i}")) for i in range(3)]
    assert all(isinstance(e, schemas.Experiment) for e in created)
    assert [d.name for d in created[0].domains] == ["web", "code", "papers"]
    assert created[0].status == "active"
    typed = admin.create_experiment(schemas.ExperimentCreate.model_validate(spec("typed")))
    assert typed.name == "typed"

    assert admin.get_experiment(created[1].id) == created[1]
    first = admin.list_experiments(limit=2)
    assert len(first.items) == 2
    assert first.next_cursor is not None
    second = admin.list_experiments(limit=2, cursor=first.next_cursor)
    paged = [e.id for e in first.items + second.items]
    assert sorted(paged) == sorted([e.id for e in [*created, typed]])
    assert [e.id for e in admin.iter_experiments(page_size=1)] == paged

    archived = admin.archive_experiment(created[0].id)
    assert archived.status == "archived"
    assert [e.id for e in admin.iter_experiments("archived")] == [created[0].id]
    assert created[0].id not in {e.id for e in admin.iter_experiments("active")}
    with pytest.raises(ConflictError):
        admin.propose(created[0].id, 1)


def test_client_drives_runs_from_proposal_through_claim_metrics_and_completion(
    admin: MixoptClient,
) -> None:
    experiment = admin.create_experiment(spec(config={"seed": 1, "max_attempts": 2}))
    eid = experiment.id

    proposed = admin.propose(eid, 4, request_id="sched-1")
    assert len(proposed) == 4
    assert all(r.status == "pending" and r.experiment_id == eid for r in proposed)
    assert [r.id for r in admin.propose(eid, 4, request_id="sched-1")] == [r.id for r in proposed]
    # Without a request_id each call gets a fresh one: two calls, two designs.
    fresh = admin.propose(eid, 1)
    assert fresh[0].id not in {r.id for r in proposed}

    run = admin.claim(eid, "node1/gpu0", lease_seconds=60)
    assert run is not None
    assert run.id == proposed[0].id
    assert run.status == "running"
    assert run.worker == "node1/gpu0"
    beat = admin.heartbeat(run.id, "node1/gpu0", lease_seconds=120)
    assert beat.lease_expires_at is not None
    assert run.lease_expires_at is not None
    assert beat.lease_expires_at > run.lease_expires_at

    # Metric points: tuples, dicts and MetricPoints; more than one batch of 10,000.
    points: list[Any] = [("val_loss/web", step, 4.0 - step * 1e-4) for step in range(10_001)]
    points.append({"name": "val_loss/code", "step": 0, "value": 5.0})
    points.append(schemas.MetricPoint(name="val_loss/code", step=1, value=4.5))
    accepted = admin.append_metrics(run.id, points)
    assert (accepted.accepted, accepted.new) == (10_003, 10_003)
    again = admin.append_metrics(run.id, points[-2:])
    assert (again.accepted, again.new) == (2, 0)
    page = admin.list_metrics(run.id, name="val_loss/code", limit=1)
    assert [(p.step, p.value) for p in page.items] == [(0, 5.0)]
    assert page.next_cursor is not None
    steps = [p.step for p in admin.iter_metrics(run.id, name="val_loss/web")]
    assert steps == list(range(10_001))
    assert len(list(admin.iter_metrics(run.id))) == 10_003
    with pytest.raises(ConflictError):
        admin.append_metrics(run.id, [("val_loss/code", 0, 6.0)])

    done = admin.complete(run.id, {"val_loss/web": 3.2}, worker="node1/gpu0")
    assert done.status == "completed"
    assert done.metrics == {"val_loss/web": 3.2}
    assert admin.complete(run.id, {"val_loss/web": 3.2}) == done  # the same call again: 200
    with pytest.raises(ConflictError):
        admin.complete(run.id, {"val_loss/web": 3.3})

    second = admin.claim(eid, "node2")
    assert second is not None
    released = admin.release(second.id, "node2")
    assert released.status == "pending"
    assert released.attempt == 1
    again_claimed = admin.claim(eid, "node2")
    assert again_claimed is not None
    assert again_claimed.id == second.id
    failed = admin.fail(second.id, "CUDA error", worker="node2")
    assert (failed.status, failed.attempt, failed.reason) == ("pending", 2, "CUDA error")

    excluded = admin.exclude(proposed[2].id, reason="bad node")
    assert excluded.excluded
    assert excluded.reason == "bad node"
    assert not admin.exclude(proposed[2].id, False).excluded
    admin.exclude(proposed[3].id)

    assert admin.get_run(run.id) == done
    assert [r.id for r in admin.list_runs(eid, status="completed").items] == [run.id]
    assert [r.id for r in admin.iter_runs(eid, excluded=True)] == [proposed[3].id]
    everything = admin.list_runs(eid, limit=2)
    assert len(everything.items) == 2
    assert everything.next_cursor is not None
    assert len(list(admin.iter_runs(eid, page_size=2))) == 5

    # Drain the queue (the excluded run is never handed out): then 204 -> None.
    while (claimed := admin.claim(eid, "node3")) is not None:
        admin.complete(claimed.id, {"val_loss/web": 3.0})
    assert admin.claim(eid, "node3") is None
    assert admin.get_experiment(eid).counts.completed == 4

    text = admin.export_runs_csv(eid)
    header = text.splitlines()[0].split(",")
    assert {"run_id", "weight/web", "metric/val_loss/web"} <= set(header)
    assert len(text.splitlines()) == 6


def test_import_run_is_idempotent_on_external_id(admin: MixoptClient) -> None:
    eid = admin.create_experiment(spec()).id
    first = admin.import_run(eid, VALID, metrics={"val_loss/web": 3.1}, external_id="csv:1")
    assert first.created
    assert first.status == "completed"
    again = admin.import_run(eid, VALID, metrics={"val_loss/web": 3.1}, external_id="csv:1")
    assert not again.created
    assert again.id == first.id
    with pytest.raises(ConflictError) as conflict:
        admin.import_run(eid, VALID, metrics={"val_loss/web": 3.2}, external_id="csv:1")
    assert conflict.value.status == 409
    typed = admin.import_run(
        eid,
        run=schemas.RunImport(weights=VALID, tags={"seed": "2"}, status="pending"),
    )
    assert typed.created
    assert (typed.status, typed.tags) == ("pending", {"seed": "2"})
    assert admin.get_experiment(eid).counts.model_dump() == {
        "pending": 1,
        "running": 0,
        "completed": 1,
        "failed": 0,
        "excluded": 0,
    }


class RecordingPosts(httpx.BaseTransport):
    """Forwards to the real server and records the body of every POST to a path ending so."""

    def __init__(self, suffix: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.suffix = suffix
        self.bodies: list[Any] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith(self.suffix):
            self.bodies.append(json.loads(request.read()))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_import_runs_sends_batches_in_order_and_counts_the_new_runs(
    server: ThreadedServer, admin: MixoptClient, tokens: Tokens
) -> None:
    eid = admin.create_experiment(spec()).id
    runs: list[Any] = [
        {"weights": VALID, "metrics": {"val_loss/web": 3 + i / 100}, "external_id": f"csv:{i}"}
        for i in range(24)
    ]
    runs.append(schemas.RunImport(weights=VALID, tags={"seed": "2"}, external_id="csv:typed"))
    transport = RecordingPosts("/runs/batch")
    with MixoptClient(server.url, tokens.write, transport=transport, **FAST) as client:
        first = client.import_runs(eid, runs, batch_size=10)
        assert [len(body["runs"]) for body in transport.bodies] == [10, 10, 5]
        assert first.new == 25
        assert [r.external_id for r in first.items] == [f"csv:{i}" for i in range(24)] + [
            "csv:typed"
        ]
        assert first.items[-1].status == "pending" and first.items[-1].tags == {"seed": "2"}
        again = client.import_runs(eid, runs)
        assert len(transport.bodies) == 4  # at most 1,000 a request
        assert again.new == 0
        assert [r.id for r in again.items] == [r.id for r in first.items]

        # Refused by the server in the third batch: its index is the caller's, and the
        # batches before it were stored.
        fresh = [{**run, "external_id": f"new:{i}"} for i, run in enumerate(runs[:24])]
        fresh[23] = {**fresh[23], "weights": {**VALID, "web": 0.4}}
        with pytest.raises(ValidationError) as invalid:
            client.import_runs(eid, fresh, batch_size=10)
        assert not invalid.value.local
        assert ["body", "runs", 23, "weights"] in [e.loc for e in invalid.value.errors]
        assert len(list(admin.iter_runs(eid))) == 45

        # Refused before sending: nothing goes out.
        sent = len(transport.bodies)
        bad = [runs[0], {"weights": {**VALID, "web": "0.5"}}]
        with pytest.raises(ValidationError) as local:
            client.import_runs(eid, bad)
        assert local.value.local
        assert local.value.errors[0].loc == ["body", "runs", 1, "weights", "web"]
        assert len(transport.bodies) == sent
        with pytest.raises(ConflictError, match="csv:3"):
            client.import_runs(eid, [{**runs[3], "metrics": {"val_loss/web": 1.0}}])
        with pytest.raises(ValueError, match="batch_size"):
            client.import_runs(eid, runs, batch_size=1001)
    assert len(list(admin.iter_runs(eid))) == 45


def test_import_runs_splits_a_batch_over_the_size_limit_and_retries_only_when_safe() -> None:
    def run(i: int) -> dict[str, Any]:
        return {
            "id": str(i), "experiment_id": "1", "status": "pending", "weights": VALID,
            "external_id": f"x:{i}",
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        }  # fmt: skip

    too_large = httpx.Response(
        413, json={"type": "about:blank", "title": "too large", "status": 413, "detail": "big"}
    )
    script = Script(
        too_large,
        httpx.Response(201, json={"items": [run(0), run(1)], "new": 2}),
        httpx.Response(201, json={"items": [run(2), run(3)], "new": 1}),
    )
    bodies = [{"weights": VALID, "external_id": f"x:{i}"} for i in range(4)]
    result = script.client().import_runs("1", bodies)
    assert [len(json.loads(r.content)["runs"]) for r in script.requests] == [4, 2, 2]
    assert ([r.id for r in result.items], result.new) == (["0", "1", "2", "3"], 3)

    timeout = httpx.ReadTimeout("no answer")
    answer = httpx.Response(201, json={"items": [run(0)], "new": 1})
    keyed = Script(timeout, answer)
    assert keyed.client().import_runs("1", bodies[:1]).new == 1  # an external_id: repeated
    assert len(keyed.requests) == 2
    unkeyed = Script(timeout, answer)
    with pytest.raises(httpx.ReadTimeout):  # a repeat would import the run twice
        unkeyed.client().import_runs("1", [bodies[0], {"weights": VALID}])
    assert len(unkeyed.requests) == 1


def test_client_creates_lists_and_revokes_tokens_that_then_stop_working(
    admin: MixoptClient, connect: Callable[..., MixoptClient]
) -> None:
    created = admin.create_token("trainer-1", "write", expires_in_days=30)
    assert created.token
    assert created.scope == "write"
    assert created.expires_at is not None
    listed = {t.id: t for t in admin.iter_tokens(page_size=1)}
    assert created.id in listed
    assert "token" not in listed[created.id].model_dump()
    assert len(admin.list_tokens(limit=2).items) == 2

    trainer = connect(created.token)
    assert trainer.list_experiments().items == []
    revoked = admin.revoke_token(created.id)
    assert revoked.revoked_at is not None
    with pytest.raises(UnauthorizedError):
        trainer.list_experiments()


def test_errors_raise_the_class_of_their_status_with_the_problem(
    admin: MixoptClient, connect: Callable[..., MixoptClient], tokens: Tokens
) -> None:
    eid = admin.create_experiment(spec()).id

    def caught(cls: type[MixoptAPIError], call: Callable[[], object]) -> MixoptAPIError:
        with pytest.raises(cls) as info:
            call()
        error = info.value
        assert isinstance(error.problem, schemas.Problem)
        assert error.problem.status == error.status
        assert error.problem.title
        assert error.problem.detail
        return error

    assert caught(NotFoundError, lambda: admin.get_experiment("999999")).status == 404
    assert caught(NotFoundError, lambda: admin.get_run("nope")).status == 404
    assert caught(NotFoundError, lambda: admin.revoke_token("123456")).status == 404
    assert caught(ConflictError, lambda: admin.create_experiment(spec())).status == 409
    run = admin.propose(eid, 1)[0]
    assert caught(ConflictError, lambda: admin.heartbeat(run.id, "stranger")).status == 409

    # 422 from the server: rules only it can check (the experiment's domains, the sum).
    bad_sum = caught(ValidationError, lambda: admin.import_run(eid, {**VALID, "web": 0.9}))
    assert bad_sum.status == 422
    assert isinstance(bad_sum, ValidationError)
    assert not bad_sum.local
    assert bad_sum.errors
    assert bad_sum.errors[0].loc[:2] == ["body", "weights"]
    unknown = caught(ValidationError, lambda: admin.import_run(eid, {"web": 0.5, "wiki": 0.5}))
    assert "wiki" in json.dumps(unknown.problem.model_dump())
    cursor = caught(ValidationError, lambda: admin.list_runs(eid, cursor="forged"))
    assert cursor.errors

    # 422 before sending: the shared schemas refuse NaN and out-of-range values.
    local = caught(ValidationError, lambda: admin.complete(run.id, {"val_loss/web": float("nan")}))
    assert isinstance(local, ValidationError)
    assert local.local
    assert local.response is None
    assert local.errors[0].loc[:2] == ["body", "metrics"]
    with pytest.raises(ValidationError):
        admin.propose(eid, 0)
    with pytest.raises(ValidationError) as point:
        admin.append_metrics(run.id, [("ok", 1, 1.0), ("bad name!", 2, 1.0)])
    assert point.value.errors[0].loc[:3] == ["body", "points", 1]
    assert admin.list_metrics(run.id).items == []  # nothing was sent

    # 401 and 403 are AuthErrors.
    anonymous = connect(None)
    assert caught(UnauthorizedError, lambda: anonymous.list_experiments()).status == 401
    wrong = connect("not-a-token")
    assert isinstance(caught(AuthError, lambda: wrong.get_experiment(eid)), UnauthorizedError)
    reader = connect(tokens.read)
    assert reader.get_experiment(eid).id == eid
    forbidden = caught(ForbiddenError, lambda: reader.create_experiment(spec("other")))
    assert isinstance(forbidden, AuthError)
    assert forbidden.status == 403
    writer = connect(tokens.write)
    assert caught(ForbiddenError, lambda: writer.archive_experiment(eid)).status == 403
    assert caught(ForbiddenError, lambda: writer.list_tokens()).status == 403
    assert writer.claim(eid, "w1") is not None


def test_client_fits_imported_runs_then_predicts_and_recommends_from_the_fit(
    admin: MixoptClient,
) -> None:
    eid = admin.create_experiment(spec()).id
    with pytest.raises(ConflictError):
        admin.recommendation(eid)  # before any fit
    with pytest.raises(ConflictError):
        admin.predict(eid, [VALID])
    rng = random.Random(5)
    for index in range(16):
        raw = [rng.random() + 0.05 for _ in DOMAINS]
        weights = {d["name"]: w / sum(raw) for d, w in zip(DOMAINS, raw, strict=True)}
        loss = 4.0 - weights["web"] + 0.5 * weights["code"] + rng.gauss(0, 0.01)
        admin.import_run(eid, weights, metrics={"val_loss/web": loss}, external_id=f"s:{index}")

    report = admin.fit(eid, "linear")
    assert isinstance(report, schemas.FitReport)
    assert (report.model, report.requested, report.n_runs) == ("linear", "linear", 16)
    assert len(report.oof) == 16
    assert report.cv.spearman is not None
    assert report.cv.spearman > 0.8
    assert [f.id for f in admin.iter_fits(eid, page_size=1)] == [report.id]
    assert admin.list_fits(eid).items[0].id == report.id
    assert admin.get_fit(report.id).n_runs == 16

    heavy_web = {"web": 0.8, "code": 0.1, "papers": 0.1}
    heavy_code = {"web": 0.1, "code": 0.8, "papers": 0.1}
    better, worse = admin.predict(eid, [heavy_web, schemas.MixtureIn(weights=heavy_code)])
    assert better.low <= better.value <= better.high
    assert better.value < worse.value
    recommended = admin.recommendation(eid)
    assert recommended.fit_id == report.id
    assert recommended.weights.keys() == {"web", "code", "papers"}
    assert sum(recommended.weights.values()) == pytest.approx(1.0)
    assert recommended.weights["web"] > recommended.weights["code"]
    with pytest.raises(ValidationError):
        admin.predict(eid, [{"web": 1.0, "wiki": 0.0}])


def test_client_starts_a_fit_without_waiting_and_follows_it_to_completion(
    admin: MixoptClient,
) -> None:
    eid = admin.create_experiment(spec()).id
    rng = random.Random(6)
    for _ in range(12):
        raw = [rng.random() + 0.05 for _ in DOMAINS]
        weights = {d["name"]: w / sum(raw) for d, w in zip(DOMAINS, raw, strict=True)}
        admin.import_run(eid, weights, metrics={"val_loss/web": 4.0 - weights["web"]})
    started = admin.fit(eid, "linear", wait=False)
    assert started.status == "running" and started.n_runs == 0
    seen: list[str] = []
    done = admin.wait_for_fit(started.id, poll=0.05, on_progress=lambda r: seen.append(r.status))
    assert (done.id, done.status, done.n_runs) == (started.id, "completed", 12)
    assert seen[-1] == "completed" and set(seen) <= {"running", "completed"}
    assert admin.recommendation(eid).fit_id == started.id


class Recording(httpx.BaseTransport):
    """The real transport, keeping each answer's status."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.statuses: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        self.statuses.append(response.status_code)
        return response

    def close(self) -> None:
        self.inner.close()


def test_client_starts_an_online_run_polls_weights_sends_feedback_and_resumes(
    server: ThreadedServer, admin: MixoptClient, tokens: Tokens
) -> None:
    online = spec("online-3", mode="online", method="stratified", objective=None)
    online["config"] = {"seed": 3, "segment_steps": 100}
    experiment = admin.create_experiment(online)
    assert experiment.objective.metrics == {"eval_loss/mean": 1.0}
    eid = experiment.id
    transport = Recording()
    trainer = MixoptClient(server.url, tokens.write, transport=transport, **FAST)

    run = trainer.start_run(eid, "main", total_steps=1000, request_id="start-1")
    assert run.status == "running"
    assert sum(run.weights.values()) == pytest.approx(1.0)
    assert trainer.start_run(eid, "main", total_steps=1000, request_id="start-1").id == run.id
    other = trainer.start_run(eid, "second")  # a fresh request_id: a second training run
    assert other.id != run.id

    first = trainer.get_weights(run.id)
    assert (first.version, first.step, first.train_steps) == (1, 0, 100)
    assert trainer.get_weights(run.id) is first  # 304: the cached object
    assert transport.statuses[-1] == 304
    losses = {"web": 3.0, "code": 2.0, "papers": 2.5}
    segment: dict[str, Any] = {
        "train_losses": losses,
        "eval_losses": losses,
        "tokens": {"web": 10, "code": 5},
    }
    second = trainer.feedback(run.id, 100, version=1, **segment)
    assert second.version == 2
    assert trainer.feedback(run.id, 100, version=1, **segment).version == 2  # idempotent
    with pytest.raises(ConflictError):
        trainer.feedback(run.id, 100, version=1, train_losses={"web": 9.0})
    polled = trainer.get_weights(run.id)
    assert transport.statuses[-1] == 304  # the feedback's answer was remembered with its ETag
    assert polled.version == 2
    trainer.feedback(run.id, 200, **segment)
    assert trainer.weights_at(run.id, 150).version == 2
    assert trainer.weights_at(run.id, 0).version == 1
    resumed = trainer.resume(run.id, 150)
    assert resumed.version == 4
    history = list(trainer.iter_weights_history(run.id, page_size=2))
    assert [(v.version, v.superseded) for v in history] == [
        (1, False),
        (2, False),
        (3, True),
        (4, False),
    ]
    assert trainer.get_weights(run.id).version == 4
    with pytest.raises(ValidationError) as unknown:
        trainer.feedback(run.id, 300, train_losses={"books": 1.0})
    assert unknown.value.errors[0].loc == ["body", "train_losses", "books"]

    done = trainer.complete(run.id, {"eval_loss/mean": 2.6})
    assert done.status == "completed"
    with pytest.raises(ConflictError):
        trainer.feedback(run.id, 300, **segment)
    recommended = admin.recommendation(eid)
    assert recommended.run_id == run.id
    assert sum(recommended.weights.values()) == pytest.approx(1.0)
    trainer.close()


class LoseFirstAnswer(httpx.BaseTransport):
    """Forwards to the real server, but the first answer to a matching request is lost
    (the server did the work; the client sees a read timeout)."""

    def __init__(self, match: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.match = match
        self.bodies: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.match in request.url.path and request.method == "POST":
            self.bodies.append(request.read())
            if len(self.bodies) == 1:
                response.read()
                response.close()
                raise httpx.ReadTimeout("answer lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_lost_answer_is_retried_with_the_same_request_id(
    server: ThreadedServer, admin: MixoptClient, tokens: Tokens
) -> None:
    eid = admin.create_experiment(spec()).id
    transport = LoseFirstAnswer("/proposals")
    with MixoptClient(server.url, tokens.write, transport=transport, **FAST) as client:
        runs = client.propose(eid, 3)
    assert len(runs) == 3
    assert len(transport.bodies) == 2
    first, second = (json.loads(body) for body in transport.bodies)
    assert first == second
    assert first["request_id"]
    # The server did the first call's work; the retry got that answer, not new runs.
    assert [r.id for r in admin.iter_runs(eid)] == [r.id for r in runs]

    lost_import = LoseFirstAnswer("/runs")
    with MixoptClient(server.url, tokens.write, transport=lost_import, **FAST) as client:
        imported = client.import_run(eid, VALID, metrics={"m": 1.0}, external_id="x:1")
    assert not imported.created  # the lost first attempt created it
    assert len(list(admin.iter_runs(eid))) == 4

    lost_claim = LoseFirstAnswer("/claim")
    with (
        MixoptClient(server.url, tokens.write, transport=lost_claim, **FAST) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.claim(eid, "w1")  # not repeated: a repeat would lease a second run
    assert len(lost_claim.bodies) == 1


def test_connection_errors_to_a_live_server_are_retried(
    server: ThreadedServer, tokens: Tokens
) -> None:
    failures = 3

    class Flaky(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()
            self.attempts = 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            self.attempts += 1
            if self.attempts <= failures:
                raise httpx.ConnectError("connection refused", request=request)
            return self.inner.handle_request(request)

    flaky = Flaky()
    with MixoptClient(server.url, tokens.admin, transport=flaky, **FAST) as client:
        experiment = client.create_experiment(spec())
    assert flaky.attempts == failures + 1
    assert experiment.name == "pile-3"


# --- scripted transports: retries, env defaults, caching, endpoints not served yet -----------


class Script:
    """A MockTransport handler answering from a list; records every request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        # A fresh response each time: the client reads and closes what it gets.
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def client(self, **kwargs: Any) -> MixoptClient:
        options = {"transport": httpx.MockTransport(self), **FAST, **kwargs}
        return MixoptClient("http://mixopt.test", "secret", **options)


def unavailable(retry_after: str | None = "1") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after else {}
    return httpx.Response(
        503,
        headers=headers,
        json={"type": "about:blank", "title": "Service Unavailable", "status": 503,
              "detail": "the database is unavailable or busy; retry shortly"},
    )  # fmt: skip


def test_503_is_retried_with_backoff_then_raised() -> None:
    ok = httpx.Response(200, json={"status": "ok"})
    script = Script(unavailable(), unavailable(None), ok)
    slept: list[float] = []
    client = script.client(retries=5)
    client._sleep = slept.append
    assert client.healthz() == {"status": "ok"}
    assert len(script.requests) == 3
    assert len(slept) == 2
    assert all(0 <= s <= FAST["backoff_max"] for s in slept)  # Retry-After capped by the max

    always = Script(unavailable())
    with pytest.raises(ServiceUnavailableError) as info:
        always.client(retries=2).list_experiments()
    assert len(always.requests) == 3
    assert info.value.status == 503
    assert info.value.problem.detail.startswith("the database is unavailable")

    once = Script(unavailable())
    with pytest.raises(ServiceUnavailableError):
        once.client(retries=0).list_experiments()
    assert len(once.requests) == 1

    not_ready = Script(unavailable(), ok)
    with pytest.raises(ServiceUnavailableError):
        not_ready.client().readyz()  # not ready is an answer, not a failure to retry
    assert len(not_ready.requests) == 1


def test_backoff_grows_exponentially_with_jitter() -> None:
    client = MixoptClient("http://mixopt.test", backoff_base=1.0, backoff_max=10.0)
    samples = [[client._delay(attempt, None) for _ in range(200)] for attempt in range(6)]
    for attempt, delays in enumerate(samples):
        assert all(0 <= d <= min(10.0, 2**attempt) for d in delays)
        assert len(set(delays)) > 100  # jittered
    assert max(samples[3]) > 4  # the cap grows: 1, 2, 4, 8, 10, 10
    assert client._delay(0, 5.0) >= 5.0  # Retry-After is a floor
    assert client._delay(0, 60.0) == 10.0  # capped by backoff_max
    client.close()


def test_connection_failures_are_retried_only_when_safe() -> None:
    run = {
        "id": "7", "experiment_id": "1", "status": "running", "weights": VALID,
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
    }  # fmt: skip
    refused = httpx.ConnectError("connection refused")
    script = Script(refused, refused, httpx.Response(200, json=run))
    claimed = script.client().claim("1", "w")  # never sent: safe to repeat, even a claim
    assert claimed is not None
    assert claimed.id == "7"
    assert len(script.requests) == 3

    timeout = httpx.ReadTimeout("no answer")
    script = Script(timeout, httpx.Response(200, json=run))
    assert script.client().get_run("7").id == "7"  # a read
    assert len(script.requests) == 2

    for call in (
        lambda c: c.claim("1", "w"),
        lambda c: c.import_run("1", VALID),  # no external_id: a repeat would import twice
        lambda c: c.fail("7", "oom"),  # no worker: a repeat would count another attempt
        lambda c: c.create_token("t"),
        lambda c: c.create_experiment(spec()),
    ):
        script = Script(timeout, httpx.Response(200, json=run))
        with pytest.raises(httpx.ReadTimeout):
            call(script.client())
        assert len(script.requests) == 1

    script = Script(httpx.ReadError("reset"), httpx.Response(200, json=run))
    assert script.client().fail("7", "oom", worker="w").id == "7"
    assert len(script.requests) == 2

    down = Script(refused)
    with pytest.raises(httpx.ConnectError):
        down.client(retries=3).list_experiments()
    assert len(down.requests) == 4


def test_request_ids_are_generated_once_per_call_and_reused_by_retries() -> None:
    answer = httpx.Response(201, json={"items": []})
    script = Script(unavailable(), httpx.ConnectError("refused"), answer, answer)
    client = script.client()
    client.propose("1", 2)
    client.propose("1", 2)
    ids = [json.loads(r.read())["request_id"] for r in script.requests]
    assert len(ids) == 4
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] != ids[0]
    assert client.propose("1", 2, request_id="mine") == []
    assert json.loads(script.requests[-1].read())["request_id"] == "mine"


def test_url_and_token_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXOPT_URL", "http://env.test:9000/api/v1/")
    monkeypatch.setenv("MIXOPT_TOKEN", "from-env")
    script = Script(httpx.Response(200, json={"items": [], "next_cursor": None}))
    with MixoptClient(transport=httpx.MockTransport(script)) as client:
        assert client.base_url == "http://env.test:9000"
        client.list_experiments(status="active")
        explicit = MixoptClient("http://other.test", "given", transport=httpx.MockTransport(script))
        explicit.list_experiments()
        explicit.close()
    first, second = script.requests
    assert str(first.url) == "http://env.test:9000/api/v1/experiments?status=active&limit=100"
    assert first.headers["authorization"] == "Bearer from-env"
    assert str(second.url).startswith("http://other.test/api/v1/experiments")
    assert second.headers["authorization"] == "Bearer given"
    monkeypatch.delenv("MIXOPT_URL")
    monkeypatch.delenv("MIXOPT_TOKEN")
    with MixoptClient(transport=httpx.MockTransport(script)) as bare:
        assert bare.base_url == "http://127.0.0.1:8000"
        bare.healthz()
    assert "authorization" not in script.requests[-1].headers


def test_errors_without_a_problem_body_still_map_by_status() -> None:
    script = Script(httpx.Response(404, text="<html>no such page</html>"))
    with pytest.raises(NotFoundError) as info:
        script.client().get_run("1")
    assert info.value.problem.status == 404
    assert "no such page" in info.value.problem.detail
    gateway = Script(httpx.Response(502, text="bad gateway"))
    with pytest.raises(MixoptAPIError) as bad:
        gateway.client().get_run("1")
    assert bad.value.status == 502
    assert len(gateway.requests) == 1  # only 503 is retried


def test_ids_cannot_change_the_path() -> None:
    script = Script(httpx.Response(404, json={"title": "Not Found", "status": 404, "detail": "x"}))
    with pytest.raises(NotFoundError):
        script.client().get_run("../experiments")
    assert script.requests[0].url.raw_path == b"/api/v1/runs/..%2Fexperiments"


WEIGHTS = {"run_id": "9", "weights": VALID, "version": 3, "step": 300, "train_steps": 100,
           "phase": "exploit"}  # fmt: skip


def test_get_weights_sends_the_etag_and_returns_the_cached_object_on_304() -> None:
    script = Script(
        httpx.Response(200, json=WEIGHTS, headers={"ETag": '"3"'}),
        httpx.Response(304, headers={"ETag": '"3"'}),
        httpx.Response(200, json={**WEIGHTS, "version": 4}, headers={"ETag": '"4"'}),
    )
    client = script.client()
    first = client.get_weights("9")
    assert first.version == 3
    assert "if-none-match" not in script.requests[0].headers
    assert client.get_weights("9") is first
    assert script.requests[1].headers["if-none-match"] == '"3"'
    newer = client.get_weights("9")
    assert newer.version == 4
    assert script.requests[2].headers["if-none-match"] == '"3"'
    client.get_weights("9", use_cache=False)
    assert "if-none-match" not in script.requests[3].headers


def test_fit_and_online_calls_send_the_contract_bodies() -> None:
    """Fits, predictions, recommendations and online runs: method, path and body per API.md,
    and answers shaped like its examples parse."""
    fit = {"id": "5", "model": "lightgbm", "requested": "auto", "n_runs": 512,
           "fitted_at": "2026-01-01T00:00:00Z", "cv": {"folds": 5, "spearman": 0.97},
           "candidates": [{"model": "linear", "spearman": 0.9}], "importance": {"web": 0.5},
           "oof": [{"run_id": "1", "actual": 3.1, "predicted": 3.0}]}  # fmt: skip
    predicted = {"value": 3.1, "low": 3.0, "high": 3.2}
    recommendation = {"weights": VALID, "predicted": predicted, "fit_id": "5",
                      "baseline": {"weights": VALID, "predicted": predicted},
                      "p_better_than_baseline": 0.9, "model": "lightgbm",
                      "n_runs": 512}  # fmt: skip
    run = {"id": "9", "experiment_id": "2", "status": "running", "weights": VALID,
           "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}  # fmt: skip
    page = {"items": [{**WEIGHTS, "superseded": False}], "next_cursor": None}
    script = Script(
        httpx.Response(200, json=fit),
        httpx.Response(200, json={"items": [fit], "next_cursor": None}),
        httpx.Response(200, json=fit),
        httpx.Response(200, json={"items": [predicted, predicted]}),
        httpx.Response(200, json=recommendation),
        httpx.Response(201, json=run),
        httpx.Response(200, json=WEIGHTS),
        httpx.Response(200, json=page),
        httpx.Response(200, json=WEIGHTS),
        httpx.Response(200, json=WEIGHTS),
        httpx.Response(200, json=run),
    )
    client = script.client()
    report = client.fit("1", "lightgbm")
    assert (report.model, report.cv.spearman, report.oof[0].predicted) == ("lightgbm", 0.97, 3.0)
    assert [f.id for f in client.iter_fits("1")] == ["5"]
    assert client.get_fit("5").n_runs == 512
    predictions = client.predict("1", [VALID, schemas.MixtureIn(weights=VALID, params={"a": 1})])
    assert [p.value for p in predictions] == [3.1, 3.1]
    rec = client.recommendation("1")
    assert rec.p_better_than_baseline == 0.9
    assert rec.baseline is not None
    started = client.start_run("2", "main", total_steps=20_000)
    assert started.id == "9"
    assert client.weights_at("9", 150).step == 300
    assert [v.version for v in client.iter_weights_history("9")] == [3]
    after = client.feedback(
        "9", 3100, version=3, train_losses={"web": 2.0}, eval_losses=VALID, tokens={"web": 10}
    )
    assert after.version == 3
    assert client.resume("9", 3000).run_id == "9"
    assert client.complete("9", {"eval_loss/mean": 2.5}).id == "9"

    sent: list[tuple[str, str, Any]] = [
        (r.method, r.url.path, json.loads(r.read()) if r.content else None) for r in script.requests
    ]
    assert sent[0] == ("POST", "/api/v1/experiments/1/fit", {"model": "lightgbm"})
    assert sent[1][:2] == ("GET", "/api/v1/experiments/1/fits")
    assert sent[2][:2] == ("GET", "/api/v1/fits/5")
    assert sent[3] == (
        "POST",
        "/api/v1/experiments/1/predict",
        {"mixtures": [{"weights": VALID, "params": {}}, {"weights": VALID, "params": {"a": 1}}]},
    )
    assert sent[4] == ("GET", "/api/v1/experiments/1/recommendation", None)
    assert sent[5][:2] == ("POST", "/api/v1/experiments/2/runs")
    assert sent[5][2]["name"] == "main"
    assert sent[5][2]["total_steps"] == 20_000
    assert sent[5][2]["request_id"]
    assert sent[6][:2] == ("GET", "/api/v1/runs/9/weights")
    assert script.requests[6].url.params["at_step"] == "150"
    assert sent[7][:2] == ("GET", "/api/v1/runs/9/weights/history")
    assert sent[8] == (
        "POST",
        "/api/v1/runs/9/feedback",
        {"step": 3100, "version": 3, "train_losses": {"web": 2.0}, "eval_losses": VALID,
         "tokens": {"web": 10}},
    )  # fmt: skip
    assert sent[9] == ("POST", "/api/v1/runs/9/resume", {"step": 3000})
    assert sent[10] == ("POST", "/api/v1/runs/9/complete", {"metrics": {"eval_loss/mean": 2.5}})


def test_the_client_imports_no_server_code() -> None:
    code = (
        "import sys, json, mixopt.client\n"
        "banned = {'service', 'mixers', 'sqlalchemy', 'fastapi', 'starlette', 'uvicorn',"
        " 'alembic', 'numpy', 'tenacity'}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in banned)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == []
