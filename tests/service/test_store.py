"""The Store conformance suite: every test runs against SQLite and against Postgres."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from mixopt.errors import Conflict, Gone, InvalidInput, LeaseLost, NotFound
from service.store import NewExperiment, NewRun, SqlStore
from tests.conftest import Clock

DOMAINS = [
    {"name": "web", "prior": 0.6, "tokens": None, "min_weight": 0.0, "max_weight": 1.0},
    {"name": "code", "prior": 0.4, "tokens": None, "min_weight": 0.0, "max_weight": 1.0},
]


def new_experiment(name: str = "exp", **config: Any) -> NewExperiment:
    return NewExperiment(
        name=name,
        mode="offline",
        method="regmix",
        domains=DOMAINS,
        objective={"metrics": {"loss": 1.0}, "direction": "minimize"},
        config={"seed": 1, "max_attempts": 3, **config},
    )


T = TypeVar("T")


def at_once(call: Callable[[], T], n: int = 8) -> list[T]:
    """``call`` from ``n`` threads released together; every answer, or the first error."""
    barrier = threading.Barrier(n)
    answers: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            answers.append(call())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    assert len(answers) == n
    return answers


def pending_runs(store: SqlStore, experiment_id: str, n: int) -> list[str]:
    runs = store.add_runs(experiment_id, [NewRun({"web": 0.5, "code": 0.5}) for _ in range(n)])
    return [r.id for r in runs]


# --- experiments ---


def test_experiment_round_trips_with_counts(store: SqlStore) -> None:
    created = store.create_experiment(new_experiment())
    assert store.get_experiment(created.id) == created
    pending_runs(store, created.id, 3)
    assert store.get_experiment(created.id).counts["pending"] == 3


def test_active_experiment_names_are_unique_until_archived(store: SqlStore) -> None:
    first = store.create_experiment(new_experiment("same"))
    with pytest.raises(Conflict):
        store.create_experiment(new_experiment("same"))
    store.archive_experiment(first.id)
    second = store.create_experiment(new_experiment("same"))
    assert second.id != first.id


def test_archive_is_idempotent_and_refuses_new_runs(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    assert store.archive_experiment(experiment.id).status == "archived"
    assert store.archive_experiment(experiment.id).status == "archived"
    with pytest.raises(Gone):
        store.add_runs(experiment.id, [NewRun({"web": 1.0, "code": 0.0})])
    with pytest.raises(Gone):
        store.import_run(experiment.id, NewRun({"web": 1.0, "code": 0.0}))
    with pytest.raises(Gone):
        store.claim(experiment.id, "w", 60)


def test_list_experiments_pages_newest_first_and_filters(store: SqlStore) -> None:
    ids = [store.create_experiment(new_experiment(f"e{i}")).id for i in range(5)]
    store.archive_experiment(ids[0])
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_experiments(status=None, limit=2, cursor=cursor)
        seen += [e.id for e in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(ids))
    active = store.list_experiments(status="active", limit=100, cursor=None)
    assert [e.id for e in active.items] == list(reversed(ids[1:]))


@pytest.mark.parametrize("bad", ["abc", "0", "-1", "99999999999999999999999", ""])
def test_unknown_or_malformed_ids_are_not_found(store: SqlStore, bad: str) -> None:
    with pytest.raises(NotFound):
        store.get_experiment(bad)
    with pytest.raises(NotFound):
        store.get_run(bad)


def test_bad_cursor_is_invalid_input(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    for cursor in ["not-base64!", "e30", "WyJ4Il0"]:  # garbage, {}, ["x"]
        with pytest.raises(InvalidInput):
            store.list_runs(experiment.id, cursor=cursor)


# --- runs and the queue ---


def test_add_runs_with_request_id_is_idempotent(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    runs = [NewRun({"web": 0.3, "code": 0.7}), NewRun({"web": 0.9, "code": 0.1})]
    first = store.add_runs(experiment.id, runs, request_id="r1")
    again = store.add_runs(experiment.id, [NewRun({"web": 1.0, "code": 0.0})], request_id="r1")
    assert [r.id for r in again] == [r.id for r in first]
    assert store.runs_for_request(experiment.id, "r1") == first
    assert store.runs_for_request(experiment.id, "r2") is None


def test_concurrent_retries_of_one_request_id_create_the_runs_once(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    runs = [NewRun({"web": 0.3, "code": 0.7}), NewRun({"web": 0.9, "code": 0.1})]
    answers = at_once(lambda: store.add_runs(experiment.id, runs, request_id="r1"))
    assert all(answer == answers[0] for answer in answers)
    assert [r.id for r in store.iter_runs(experiment.id)] == [r.id for r in answers[0]]


def test_import_is_idempotent_on_external_id(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    run = NewRun(
        {"web": 0.2, "code": 0.8}, metrics={"loss": 3.1}, status="completed", external_id="swarm-7"
    )
    stored, created = store.import_run(experiment.id, run)
    again, created_again = store.import_run(experiment.id, run)
    assert created and not created_again and again.id == stored.id
    with pytest.raises(Conflict):
        store.import_run(
            experiment.id,
            NewRun(
                {"web": 0.3, "code": 0.7},
                metrics={"loss": 3.1},
                status="completed",
                external_id="swarm-7",
            ),
        )
    with pytest.raises(Conflict):
        store.import_run(
            experiment.id,
            NewRun(
                {"web": 0.2, "code": 0.8},
                metrics={"loss": 3.2},
                status="completed",
                external_id="swarm-7",
            ),
        )


def test_concurrent_imports_of_one_external_id_store_it_once(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    run = NewRun({"web": 0.2, "code": 0.8}, metrics={"loss": 3.1}, external_id="swarm-7")
    answers = at_once(lambda: store.import_run(experiment.id, run))
    assert sorted(created for _, created in answers) == [False] * 7 + [True]
    assert len({stored.id for stored, _ in answers}) == 1
    assert len(list(store.iter_runs(experiment.id))) == 1


def test_claim_hands_out_oldest_pending_run_then_none(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    ids = pending_runs(store, experiment.id, 2)
    first = store.claim(experiment.id, "w1", 60)
    second = store.claim(experiment.id, "w2", 60)
    assert first is not None and second is not None
    assert [first.id, second.id] == ids
    assert first.status == "running" and first.worker == "w1" and first.lease_expires_at
    assert store.claim(experiment.id, "w3", 60) is None


def test_claim_skips_excluded_runs(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    first, second = pending_runs(store, experiment.id, 2)
    store.exclude(first, True, "bad node")
    claimed = store.claim(experiment.id, "w", 60)
    assert claimed is not None and claimed.id == second


def test_expired_lease_returns_run_with_next_attempt(store: SqlStore, clock: Clock) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    assert store.claim(experiment.id, "crashed", 60) is not None
    clock.advance(61)
    again = store.claim(experiment.id, "rescuer", 60)
    assert again is not None and again.id == run_id
    assert again.attempt == 2 and again.worker == "rescuer"


def test_lease_sweep_returns_expired_runs_without_a_claim(store: SqlStore, clock: Clock) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    store.claim(experiment.id, "crashed", 60)
    assert store.expire_leases() == 0
    clock.advance(61)
    assert store.expire_leases() == 1
    run = store.get_run(run_id)
    assert (run.status, run.attempt, run.worker) == ("pending", 2, None)


def test_expired_leases_past_max_attempts_end_failed(store: SqlStore, clock: Clock) -> None:
    experiment = store.create_experiment(new_experiment(max_attempts=2))
    (run_id,) = pending_runs(store, experiment.id, 1)
    for _ in range(2):
        assert store.claim(experiment.id, "w", 60) is not None
        clock.advance(61)
    assert store.claim(experiment.id, "w", 60) is None
    assert store.get_run(run_id).status == "failed"


def test_heartbeat_extends_only_the_holders_lease(store: SqlStore, clock: Clock) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    claimed = store.claim(experiment.id, "holder", 60)
    assert claimed is not None and claimed.lease_expires_at is not None
    clock.advance(30)
    beat = store.heartbeat(run_id, "holder")
    assert beat.lease_expires_at is not None and beat.lease_expires_at > claimed.lease_expires_at
    with pytest.raises(LeaseLost):
        store.heartbeat(run_id, "intruder")
    clock.advance(45)  # past the first lease, within the extended one
    assert store.claim(experiment.id, "other", 60) is None


def test_heartbeat_after_the_run_was_reclaimed_is_lease_lost(store: SqlStore, clock: Clock) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    store.claim(experiment.id, "slow", 60)
    clock.advance(61)
    store.claim(experiment.id, "fast", 60)
    with pytest.raises(LeaseLost):
        store.heartbeat(run_id, "slow")
    with pytest.raises(LeaseLost):
        store.complete(run_id, {"loss": 1.0}, "slow")


def test_release_keeps_the_attempt(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    store.claim(experiment.id, "preempted", 60)
    released = store.release(run_id, "preempted")
    assert (released.status, released.attempt, released.worker) == ("pending", 1, None)
    with pytest.raises(LeaseLost):
        store.release(run_id, "someone-else")
    again = store.claim(experiment.id, "next", 60)
    assert again is not None and again.attempt == 1


def test_fail_retries_until_max_attempts_then_fails(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment(max_attempts=3))
    (run_id,) = pending_runs(store, experiment.id, 1)
    for attempt in (1, 2):
        claimed = store.claim(experiment.id, "w", 60)
        assert claimed is not None and claimed.attempt == attempt
        failed = store.fail(run_id, f"oom {attempt}", "w")
        assert (failed.status, failed.attempt) == ("pending", attempt + 1)
    store.claim(experiment.id, "w", 60)
    final = store.fail(run_id, "oom 3", "w")
    assert (final.status, final.attempt, final.reason) == ("failed", 3, "oom 3")
    assert store.claim(experiment.id, "w", 60) is None
    with pytest.raises(Conflict):
        store.complete(run_id, {"loss": 1.0}, None)


def test_fail_retried_by_the_same_worker_counts_once(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    store.claim(experiment.id, "w", 60)
    store.fail(run_id, "crash", "w")
    assert store.fail(run_id, "crash", "w").attempt == 2
    with pytest.raises(LeaseLost):
        store.fail(run_id, "crash", "stranger")


def test_complete_is_idempotent_and_conflicts_on_other_metrics(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    store.claim(experiment.id, "w", 60)
    done = store.complete(run_id, {"loss": 2.5}, "w")
    assert (done.status, done.metrics, done.worker) == ("completed", {"loss": 2.5}, None)
    assert store.complete(run_id, {"loss": 2.5}, "w") == done
    with pytest.raises(Conflict):
        store.complete(run_id, {"loss": 2.6}, "w")
    with pytest.raises(Conflict):
        store.fail(run_id, "late", None)


def test_complete_by_holder_of_expired_unclaimed_lease_is_accepted(
    store: SqlStore, clock: Clock
) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    store.claim(experiment.id, "slow", 60)
    clock.advance(61)
    store.expire_leases()
    with pytest.raises(LeaseLost):
        store.complete(run_id, {"loss": 1.0}, "stranger")
    assert store.complete(run_id, {"loss": 1.0}, "slow").status == "completed"


def test_exclude_and_include_again(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    assert store.exclude(run_id, True, "broken node").excluded
    assert store.get_experiment(experiment.id).counts["excluded"] == 1
    assert [r.id for r in store.list_runs(experiment.id, excluded=True).items] == [run_id]
    assert not store.exclude(run_id, False, None).excluded


def test_list_runs_pages_oldest_first_with_filters(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    ids = pending_runs(store, experiment.id, 7)
    store.claim(experiment.id, "w", 60)
    assert [r.id for r in store.iter_runs(experiment.id, page_size=3)] == ids
    running = store.list_runs(experiment.id, status="running")
    assert [r.id for r in running.items] == ids[:1]


# --- metric points ---


def test_metric_points_are_unique_on_name_and_step(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    batch = [("loss", 1, 3.0), ("loss", 2, 2.5), ("acc", 1, 0.1)]
    assert store.append_metrics(run_id, batch) == (3, 3)
    assert store.append_metrics(run_id, batch) == (3, 0)
    assert store.append_metrics(run_id, [*batch, ("loss", 3, 2.0)]) == (4, 1)
    page = store.list_metrics(run_id, name="loss", limit=100, cursor=None)
    assert [(p.step, p.value) for p in page.items] == [(1, 3.0), (2, 2.5), (3, 2.0)]


def test_conflicting_point_rejects_the_whole_batch(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    store.append_metrics(run_id, [("loss", 1, 3.0)])
    with pytest.raises(Conflict):
        store.append_metrics(run_id, [("loss", 2, 2.0), ("loss", 1, 3.5)])
    points = store.list_metrics(run_id, name=None, limit=100, cursor=None).items
    assert [(p.name, p.step, p.value) for p in points] == [("loss", 1, 3.0)]


def test_metric_pages_are_ordered_by_step(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    store.append_metrics(
        run_id, [(name, step, float(step)) for step in range(50, 0, -1) for name in ("b", "a")]
    )
    seen: list[tuple[int, str]] = []
    cursor = None
    while True:
        page = store.list_metrics(run_id, name=None, limit=7, cursor=cursor)
        seen += [(p.step, p.name) for p in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(seen) and len(seen) == 100


def test_large_metric_batch_is_stored_once(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    batch = [(f"loss/{i % 10}", i, i * 0.5) for i in range(10_000)]
    assert store.append_metrics(run_id, batch) == (10_000, 10_000)
    assert store.append_metrics(run_id, batch) == (10_000, 0)


# --- tokens ---


def test_tokens_are_found_by_secret_and_revoked(store: SqlStore) -> None:
    record, secret = store.create_token("ci", "write", None)
    assert len(secret) >= 43  # 256 bits, base64url
    found = store.find_token(secret)
    assert found is not None and found.id == record.id and found.scope == "write"
    assert store.find_token(secret + "x") is None
    revoked = store.revoke_token(record.id)
    assert revoked.revoked_at is not None
    assert store.revoke_token(record.id).revoked_at == revoked.revoked_at
    listed = store.list_tokens(limit=10, cursor=None).items
    assert [t.id for t in listed] == [record.id]
    with pytest.raises(NotFound):
        store.revoke_token("12345")


def test_store_reports_ready_at_head(store: SqlStore) -> None:
    store.check_ready()
