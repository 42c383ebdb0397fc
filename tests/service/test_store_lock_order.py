"""Lock order between concurrent store calls on the same rows: Postgres aborts one of two
transactions that wait for each other ("deadlock detected", which the API answers with 503).
Both cases below deadlocked before the store took its locks in one order."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import Any

from sqlalchemy import event, text

from mixopt import schemas
from service.operations import Operations
from service.store import NewRun, SqlStore
from tests.service.conftest import DOMAINS
from tests.service.test_store import at_once, new_experiment


def start_online_run(ops: Operations) -> str:
    experiment = ops.create_experiment(
        schemas.ExperimentCreate.model_validate(
            {
                "name": f"locks-{uuid.uuid4().hex[:8]}",
                "mode": "online",
                "method": "stratified",
                "domains": DOMAINS,
            }
        )
    )
    run, _ = ops.start_online_run(experiment.id, schemas.OnlineRunCreate(name="main"))
    return run.id


def lock_waiters(store: SqlStore) -> int:
    """Backends of this database waiting for a row lock (Postgres), else 0."""
    if store.engine.dialect.name != "postgresql":
        return 0
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def test_completing_a_run_while_its_feedback_is_mid_transaction_does_not_deadlock(
    store: SqlStore,
) -> None:
    ops = Operations(store)
    run_id = start_online_run(ops)
    feedback_inside = threading.Event()
    complete_waiting = threading.Event()
    feedback_thread: list[threading.Thread] = []

    # Pause the feedback's transaction after it took the mixer state's row (its first write)
    # and before it writes rows that reference the run: the window a concurrent complete hits.
    def pause(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.current_thread() in feedback_thread and statement.startswith(
            "INSERT INTO feedback"
        ):
            feedback_inside.set()
            complete_waiting.wait(timeout=30)

    event.listen(store.engine, "before_cursor_execute", pause)
    errors: list[BaseException] = []
    answers: dict[str, Any] = {}

    def call(name: str, target: Any) -> None:
        try:
            answers[name] = target()
        except BaseException as exc:  # re-raised below with the other thread's outcome
            errors.append(exc)

    body = schemas.Feedback.model_validate(
        {"step": 100, "train_losses": {"web": 3.0, "code": 2.0, "papers": 2.5}}
    )
    feeding = threading.Thread(
        target=call, args=("feedback", lambda: ops.feedback(run_id, body)), daemon=True
    )
    feedback_thread.append(feeding)
    completing = threading.Thread(
        target=call,
        args=("complete", lambda: store.complete(run_id, {"eval_loss/mean": 2.0}, None)),
        daemon=True,
    )
    try:
        feeding.start()
        assert feedback_inside.wait(timeout=30)
        completing.start()
        # Let the complete reach its lock wait (Postgres shows it; SQLite's writers queue on the
        # database lock, which a short pause covers).
        deadline = time.monotonic() + (10 if store.engine.dialect.name == "postgresql" else 0.5)
        while time.monotonic() < deadline and lock_waiters(store) == 0:
            time.sleep(0.05)
        complete_waiting.set()
        feeding.join(timeout=60)
        completing.join(timeout=60)
    finally:
        complete_waiting.set()
        event.remove(store.engine, "before_cursor_execute", pause)
    assert errors == []
    assert answers["feedback"].version == 2
    assert answers["complete"].status == "completed"
    state = store.online_state(run_id)
    assert state.version == 2 and state.frozen


def test_batches_sharing_points_in_opposite_orders_do_not_deadlock(store: SqlStore) -> None:
    experiment = store.create_experiment(new_experiment(f"points-{uuid.uuid4().hex[:8]}"))
    run = store.add_runs(experiment.id, [NewRun(weights={"web": 0.5, "code": 0.5})])[0]
    orders: queue.SimpleQueue[list[tuple[str, int, float]]] = queue.SimpleQueue()

    def append() -> tuple[int, int]:
        return store.append_metrics(run.id, orders.get_nowait())

    for trial in range(3):
        # Two reporters of one series (two ranks, say), each in its own order: each waits for
        # rows the other inserted. Before inserts were ordered, every trial deadlocked.
        points = [("eval", trial * 10_000 + s, s / 7) for s in range(3000)]
        orders.put(points)
        orders.put(points[::-1])
        answers = at_once(append, n=2)
        assert [accepted for accepted, _ in answers] == [3000, 3000]
        assert sum(new for _, new in answers) == 3000  # each point stored by one of them
    stored: set[tuple[str, int, float]] = set()
    cursor = None
    while True:
        page = store.list_metrics(run.id, name="eval", limit=1000, cursor=cursor)
        stored |= {(p.name, p.step, p.value) for p in page.items}
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(stored) == 9000
