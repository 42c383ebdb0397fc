"""The Store's reads for the dashboard (metric curves, feedback history, last activity), part of
the conformance suite: every test runs against SQLite and against Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event

from mixopt.errors import InvalidInput, NotFound
from service.store import FeedbackRecord, SeriesPoint, SqlStore
from tests.conftest import Clock
from tests.service.test_store import (
    decided,
    feedback_body,
    new_experiment,
    online_run,
    pending_runs,
)


def a_run(store: SqlStore) -> str:
    experiment = store.create_experiment(new_experiment())
    (run_id,) = pending_runs(store, experiment.id, 1)
    return run_id


@contextmanager
def statements(store: SqlStore) -> Iterator[list[str]]:
    """The SQL statements the store sends while the block runs."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def expected_buckets(
    steps: np.ndarray[Any, Any], values: np.ndarray[Any, Any], max_points: int
) -> list[tuple[int, float, float, float]]:
    """(last step, mean, min, max) per non-empty bucket, in numpy, for steps sorted ascending."""
    bucket = (steps - steps[0]) * max_points // (steps[-1] - steps[0] + 1)
    starts = np.r_[0, np.flatnonzero(np.diff(bucket)) + 1]
    ends = np.r_[starts[1:], len(steps)]
    means = np.add.reduceat(values, starts) / (ends - starts)
    lows = np.minimum.reduceat(values, starts)
    highs = np.maximum.reduceat(values, starts)
    return [
        (int(steps[end - 1]), float(mean), float(low), float(high))
        for end, mean, low, high in zip(ends, means, lows, highs, strict=True)
    ]


# --- metric_series ---


def test_metric_series_buckets_a_long_curve_and_returns_a_short_one_exactly(
    store: SqlStore,
) -> None:
    run_id = a_run(store)
    rng = np.random.default_rng(7)
    steps = np.sort(rng.choice(50_000, size=10_000, replace=False)) + 3
    values = rng.normal(3.0, 1.0, size=10_000)
    short = [("acc", 10 * i, i / 30) for i in range(30, 0, -1)]
    store.append_metrics(
        run_id,
        [("loss", int(s), float(v)) for s, v in zip(steps, values, strict=True)] + short,
    )
    with statements(store) as sent:
        series = store.metric_series(run_id)
    assert list(series) == ["acc", "loss"]
    assert series["acc"] == [SeriesPoint(s, v, v, v) for _, s, v in reversed(short)]
    expected = expected_buckets(steps, values, 500)
    assert 400 < len(series["loss"]) <= 500
    assert [(p.step, p.low, p.high) for p in series["loss"]] == [
        (s, lo, hi) for s, _, lo, hi in expected
    ]
    assert [p.value for p in series["loss"]] == pytest.approx(
        [m for _, m, _, _ in expected], rel=1e-12
    )
    assert series["loss"][-1].step == int(steps[-1])
    # Counts, the short names' points, the buckets: the points never travel to Python.
    assert len([s for s in sent if "metric_points" in s]) == 3


def test_metric_series_bucket_is_the_step_offset_times_max_points_over_the_step_range(
    store: SqlStore,
) -> None:
    run_id = a_run(store)
    store.append_metrics(run_id, [("loss", 100 + s, float(s)) for s in range(10)])
    store.append_metrics(run_id, [("acc", s, float(s)) for s in range(4)])
    # Steps 100..109 into 4 buckets: offset * 4 // 10 -> {0, 1, 2} {3, 4} {5, 6, 7} {8, 9}.
    series = store.metric_series(run_id, max_points=4)
    assert series["loss"] == [
        SeriesPoint(102, 1.0, 0.0, 2.0),
        SeriesPoint(104, 3.5, 3.0, 4.0),
        SeriesPoint(107, 6.0, 5.0, 7.0),
        SeriesPoint(109, 8.5, 8.0, 9.0),
    ]
    assert series["acc"] == [SeriesPoint(s, float(s), float(s), float(s)) for s in range(4)]
    assert store.metric_series(run_id, max_points=1)["loss"] == [SeriesPoint(109, 4.5, 0.0, 9.0)]


def test_metric_series_buckets_steps_up_to_the_limit_without_overflow(store: SqlStore) -> None:
    run_id = a_run(store)
    gap = 2**62 // 599
    steps = np.array([i * gap for i in range(600)], dtype=object)  # Python ints: no overflow
    store.append_metrics(run_id, [("loss", int(s), float(i)) for i, s in enumerate(steps)])
    series = store.metric_series(run_id, max_points=10)["loss"]
    expected = expected_buckets(steps, np.arange(600, dtype=float), 10)
    assert [(p.step, p.value, p.low, p.high) for p in series] == expected
    assert series[-1].step == 599 * gap and len(series) == 10


def test_metric_series_reads_only_the_names_asked_for(store: SqlStore) -> None:
    run_id = a_run(store)
    store.append_metrics(run_id, [(name, s, 1.0) for s in range(5) for name in ("a", "b", "c")])
    assert list(store.metric_series(run_id, names=["c", "a", "missing"])) == ["a", "c"]
    assert store.metric_series(run_id, names=[]) == {}
    other = store.create_experiment(new_experiment("other"))
    (empty,) = pending_runs(store, other.id, 1)
    assert store.metric_series(empty) == {}


def test_metric_series_of_an_unknown_run_is_not_found_and_max_points_must_be_positive(
    store: SqlStore,
) -> None:
    for bad in ("12345", "abc"):
        with pytest.raises(NotFound):
            store.metric_series(bad)
    with pytest.raises(InvalidInput):
        store.metric_series(a_run(store), max_points=0)


# --- feedback_history ---


def fold(store: SqlStore, run_id: str, step: int) -> None:
    """Feedback at ``step`` that names the version it was computed under."""
    current = store.online_state(run_id).version
    store.apply_feedback(
        run_id,
        expected_version=current,
        step=step,
        body={**feedback_body(step), "version": current},
        version=decided(current),
    )


def test_feedback_history_includes_what_a_resume_superseded_oldest_first(
    store: SqlStore, clock: Clock
) -> None:
    run_id = online_run(store)
    assert store.feedback_history(run_id, limit=10, cursor=None).items == []
    for step in (100, 200, 300):  # versions 2, 3, 4
        clock.advance(1)
        fold(store, run_id, step)
    store.resume(run_id, 150)  # version 5; feedback at 200 and 300 superseded
    for step in (200, 250):  # versions 6, 7
        clock.advance(1)
        fold(store, run_id, step)
    seen: list[FeedbackRecord] = []
    cursor = None
    while True:
        page = store.feedback_history(run_id, limit=2, cursor=cursor)
        seen += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [(f.step, f.version, f.superseded) for f in seen] == [
        (100, 1, False),
        (200, 2, True),
        (200, 5, False),
        (250, 6, False),
        (300, 3, True),
    ]
    assert [f.body for f in seen] == [{**feedback_body(f.step), "version": f.version} for f in seen]
    assert [f.version for f in sorted(seen, key=lambda f: f.created_at)] == [1, 2, 3, 5, 6]
    assert all(f.created_at.tzinfo is not None for f in seen)


def test_feedback_history_refuses_offline_and_unknown_runs_and_forged_cursors(
    store: SqlStore,
) -> None:
    for run_id in (a_run(store), "12345", "abc"):
        with pytest.raises(NotFound):
            store.feedback_history(run_id, limit=10, cursor=None)
    with pytest.raises(InvalidInput):
        store.feedback_history(online_run(store), limit=10, cursor="WyJ4Il0")  # ["x"]


# --- last_activity ---


def test_last_activity_is_the_latest_run_update_or_the_experiment_own(
    store: SqlStore, clock: Clock
) -> None:
    busy = store.create_experiment(new_experiment("busy"))
    idle = store.create_experiment(new_experiment("idle"))
    first, second = pending_runs(store, busy.id, 2)
    clock.advance(60)
    store.claim(busy.id, "w", 600)
    clock.advance(60)
    done = store.complete(first, {"loss": 1.0}, "w")
    clock.advance(60)
    store.archive_experiment(idle.id)
    idle_now = store.get_experiment(idle.id, counts=False)
    with statements(store) as sent:
        activity = store.last_activity([busy.id, idle.id, "12345", "abc", busy.id])
    assert activity == {busy.id: done.updated_at, idle.id: idle_now.updated_at}
    assert done.updated_at > store.get_run(second).updated_at
    assert len([s for s in sent if "experiments" in s]) == 1
    assert store.last_activity([]) == {}
