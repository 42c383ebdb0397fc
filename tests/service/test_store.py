"""The Store conformance suite: every test runs against SQLite and against Postgres."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from mixopt.errors import Conflict, Gone, InvalidInput, LeaseLost, NotFound
from service.store import (
    NewExperiment,
    NewFit,
    NewOnlineRun,
    NewRun,
    NewVersion,
    SqlStore,
    StoredModel,
)
from service.store.base import StaleVersion, WeightsRecord
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


def test_an_excluded_run_is_counted_and_listed_until_included_again(store: SqlStore) -> None:
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


def test_metric_names_and_values_are_stored_exactly_as_given(store: SqlStore) -> None:
    # Postgres receives a batch as array text: names that an array literal would read as NULL
    # or split must come back unchanged, and every float bit for bit.
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    values = [0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, 1e16, 123456789.123456789]
    batch = [("NULL", 1, 1.0), ('a"b', 1, 2.0), ("a\\b,{c}", 1, 3.0), ("", 1, 4.0)]
    batch += [("loss", step, value) for step, value in enumerate(values)]
    assert store.append_metrics(run_id, batch) == (len(batch), len(batch))
    stored = store.list_metrics(run_id, name=None, limit=100, cursor=None).items
    assert sorted((p.name, p.step, p.value) for p in stored) == sorted(batch)
    assert store.append_metrics(run_id, batch) == (len(batch), 0)  # read back as equal


# --- online runs ---


def online_experiment(store: SqlStore, name: str = "online") -> str:
    return store.create_experiment(
        NewExperiment(
            name=name,
            mode="online",
            method="stratified",
            domains=DOMAINS,
            objective={"metrics": {"eval_loss/mean": 1.0}, "direction": "minimize"},
            config={"seed": 1},
        )
    ).id


def decided(rounds: int) -> NewVersion:
    """What a mixer decides after ``rounds`` feedbacks (each round its own weights)."""
    web = 0.5 + rounds / 100
    return NewVersion({"rounds": rounds}, {"web": web, "code": 1 - web}, "explore", 100)


def feedback_body(step: int) -> dict[str, Any]:
    return {"step": step, "train_losses": {"web": 3.0 - step / 1000, "code": 2.0}}


def online_run(store: SqlStore) -> str:
    run, _ = store.start_online_run(online_experiment(store), NewOnlineRun("main"), decided(0))
    return run.id


def feed(store: SqlStore, run_id: str, step: int) -> WeightsRecord:
    """Fold a feedback at ``step`` into the current state: version n becomes n + 1, whose
    decision is ``decided(n)``."""
    current = store.online_state(run_id).version
    return store.apply_feedback(
        run_id,
        expected_version=current,
        step=step,
        body=feedback_body(step),
        version=decided(current),
    )


def test_start_online_run_is_idempotent_on_request_id(store: SqlStore) -> None:
    experiment_id = online_experiment(store)
    run = NewOnlineRun("main", total_steps=1000, tags={"team": "a"}, request_id="start-1")
    first, created = store.start_online_run(experiment_id, run, decided(0))
    again, created_again = store.start_online_run(experiment_id, run, decided(5))
    assert created and not created_again and again == first
    assert (first.status, first.weights, first.tags) == (
        "running",
        decided(0).weights,
        {"team": "a"},
    )
    assert store.online_state(first.id).state == {"rounds": 0}
    weights = store.get_weights(first.id)
    assert (weights.version, weights.step, weights.weights) == (1, 0, decided(0).weights)
    assert (weights.phase, weights.train_steps) == ("explore", 100)
    other, created_other = store.start_online_run(experiment_id, NewOnlineRun("b"), decided(0))
    assert created_other and other.id != first.id


def test_concurrent_starts_of_one_request_id_create_one_run(store: SqlStore) -> None:
    experiment_id = online_experiment(store)
    run = NewOnlineRun("main", request_id="start-1")
    answers = at_once(lambda: store.start_online_run(experiment_id, run, decided(0)))
    assert sorted(created for _, created in answers) == [False] * 7 + [True]
    assert len({started.id for started, _ in answers}) == 1
    assert len(list(store.iter_runs(experiment_id))) == 1


def test_apply_feedback_on_a_stale_version_raises_and_changes_nothing(store: SqlStore) -> None:
    run_id = online_run(store)
    feed(store, run_id, 100)
    before = store.online_state(run_id)
    assert before.version == 2
    with pytest.raises(StaleVersion):
        store.apply_feedback(
            run_id, expected_version=1, step=200, body=feedback_body(200), version=decided(9)
        )
    assert store.online_state(run_id) == before
    assert store.get_weights(run_id).version == 2
    assert store.feedback_context(run_id, 200).recorded is None
    assert [v.version for v in store.weights_history(run_id, limit=10, cursor=None).items] == [1, 2]


def test_a_second_feedback_at_a_recorded_step_is_stale_and_changes_nothing(
    store: SqlStore,
) -> None:
    run_id = online_run(store)
    feed(store, run_id, 100)
    before = store.online_state(run_id)
    with pytest.raises(StaleVersion):
        store.apply_feedback(
            run_id, expected_version=2, step=100, body=feedback_body(101), version=decided(9)
        )
    assert store.online_state(run_id) == before
    assert store.feedback_context(run_id, 100).recorded == feedback_body(100)


def test_feedback_recorded_at_a_step_is_returned_by_feedback_context(store: SqlStore) -> None:
    run_id = online_run(store)
    assert store.feedback_context(run_id, 100).recorded is None
    feed(store, run_id, 100)
    context = store.feedback_context(run_id, 100)
    assert context.recorded == feedback_body(100)
    assert context.state == store.online_state(run_id)
    assert context.experiment.id == context.state.experiment_id
    assert context.experiment.method == "stratified"
    assert store.feedback_context(run_id, 200).recorded is None


def test_resume_returns_to_the_version_in_effect_and_supersedes_what_came_after(
    store: SqlStore,
) -> None:
    run_id = online_run(store)
    for step in (100, 200, 300):
        feed(store, run_id, step)  # versions 2, 3, 4
    resumed = store.resume(run_id, 150)
    assert (resumed.version, resumed.step, resumed.weights) == (5, 150, decided(1).weights)
    state = store.online_state(run_id)
    assert (state.version, state.state) == (5, decided(1).state)
    history = store.weights_history(run_id, limit=10, cursor=None).items
    assert [(v.version, v.superseded) for v in history] == [
        (1, False),
        (2, False),
        (3, True),
        (4, True),
        (5, False),
    ]
    assert store.feedback_context(run_id, 100).recorded == feedback_body(100)
    assert store.feedback_context(run_id, 200).recorded is None
    assert store.feedback_context(run_id, 300).recorded is None
    assert store.get_weights(run_id) == resumed


def test_get_weights_at_a_step_answers_the_live_version_in_effect_then(store: SqlStore) -> None:
    run_id = online_run(store)
    for step in (100, 200):
        feed(store, run_id, step)  # version 2 from step 100, 3 from step 200
    at = [store.get_weights(run_id, at_step=step).version for step in (0, 99, 100, 250)]
    assert at == [1, 1, 2, 3]
    assert store.get_weights(run_id).version == 3
    store.resume(run_id, 150)  # version 4 from step 150; version 3 superseded
    assert [store.get_weights(run_id, at_step=step).version for step in (120, 150, 250)] == [
        2,
        4,
        4,
    ]
    with pytest.raises(NotFound):
        store.get_weights(run_id, at_step=-1)


def test_a_completed_runs_mixer_state_is_frozen(store: SqlStore) -> None:
    run_id = online_run(store)
    feed(store, run_id, 100)
    store.complete(run_id, {"eval_loss/mean": 2.5}, None)
    before = store.online_state(run_id)
    assert before.frozen
    with pytest.raises(Conflict):
        store.apply_feedback(
            run_id,
            expected_version=before.version,
            step=200,
            body=feedback_body(200),
            version=decided(9),
        )
    with pytest.raises(Conflict):
        store.resume(run_id, 50)
    assert store.online_state(run_id) == before
    assert store.get_weights(run_id).version == 2
    assert store.feedback_context(run_id, 200).recorded is None


def test_last_feedback_is_the_latest_live_one(store: SqlStore) -> None:
    run_id = online_run(store)
    assert store.last_feedback(run_id) is None
    for step in (100, 200):
        feed(store, run_id, step)
    assert store.last_feedback(run_id) == feedback_body(200)
    store.resume(run_id, 150)
    assert store.last_feedback(run_id) == feedback_body(100)


def test_online_methods_refuse_offline_and_unknown_runs(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    (offline,) = pending_runs(store, experiment.id, 1)
    calls: list[Callable[[str], object]] = [
        store.online_state,
        store.get_weights,
        lambda run_id: store.weights_history(run_id, limit=10, cursor=None),
        lambda run_id: store.feedback_context(run_id, 100),
        lambda run_id: store.resume(run_id, 100),
        lambda run_id: store.apply_feedback(
            run_id, expected_version=1, step=100, body=feedback_body(100), version=decided(1)
        ),
    ]
    for run_id in (offline, "12345"):
        for call in calls:
            with pytest.raises(NotFound):
                call(run_id)


# --- fits ---


def new_fit(
    n_runs: int = 8, data: bytes | None = b"model", model_format: str | None = "x"
) -> NewFit:
    return NewFit(
        model="linear",
        requested="auto",
        n_runs=n_runs,
        report={"cv": {"spearman": 0.9}},
        recommendation={"weights": {"web": 0.6, "code": 0.4}} if data is not None else None,
        model_data=data,
        model_format=model_format,
    )


def test_fits_are_stored_and_listed_newest_first_in_pages(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    added = [store.add_fit(experiment.id, new_fit(n_runs=8 + i)) for i in range(5)]
    first = added[0]
    assert (first.experiment_id, first.model, first.requested, first.n_runs) == (
        experiment.id,
        "linear",
        "auto",
        8,
    )
    assert first.report == {"cv": {"spearman": 0.9}}
    assert first.recommendation == {"weights": {"web": 0.6, "code": 0.4}}
    assert [store.get_fit(fit.id) for fit in added] == added
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_fits(experiment.id, limit=2, cursor=cursor)
        seen += [fit.id for fit in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [fit.id for fit in reversed(added)]
    other = store.create_experiment(new_experiment("other"))
    assert store.list_fits(other.id, limit=10, cursor=None).items == []
    with pytest.raises(NotFound):
        store.get_fit("12345")
    with pytest.raises(NotFound):
        store.list_fits("12345", limit=10, cursor=None)
    with pytest.raises(NotFound):
        store.add_fit("12345", new_fit())


def test_latest_fit_returns_the_stored_model_and_its_format(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment())
    assert store.latest_fit(experiment.id) is None
    first = store.add_fit(experiment.id, new_fit(data=b"\x80\x05first", model_format="pickle"))
    assert store.latest_fit(experiment.id) == (first, StoredModel("pickle", b"\x80\x05first"))
    second = store.add_fit(experiment.id, new_fit(data=None, model_format=None))
    assert second.recommendation is None
    assert store.latest_fit(experiment.id) == (second, None)
    with pytest.raises(NotFound):
        store.latest_fit("12345")


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
