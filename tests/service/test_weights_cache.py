"""The weights cache: never a stale fill, read-your-writes, fresh across replicas, off without
its notification feed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import create_engine, text

from mixopt import schemas
from mixopt.settings import Settings
from service.main import create_app
from service.operations import Operations
from service.store import SqlStore
from service.store.base import WeightsRecord
from service.store.sql import make_engine
from service.store.weights_cache import WeightsCache
from tests.conftest import Tokens
from tests.servers import ThreadedServer
from tests.service.conftest import DOMAINS

API = "/api/v1"


def record(run_id: int, version: int) -> WeightsRecord:
    return WeightsRecord(
        run_id=str(run_id),
        version=version,
        step=version * 10,
        weights={"a": 1.0},
        phase="train",
        train_steps=None,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        superseded=False,
    )


def live_cache(max_entries: int = 100) -> WeightsCache:
    cache = WeightsCache(max_entries=max_entries)
    cache.set_live(True)
    return cache


# --- the cache itself ----------------------------------------------------------------------------


def test_cache_answers_nothing_until_live() -> None:
    cache = WeightsCache()
    assert not cache.put(cache.ticket(1), record(1, 1))
    assert cache.get(1) is None
    cache.set_live(True)
    assert cache.put(cache.ticket(1), record(1, 1))
    assert cache.get(1) == record(1, 1)


def test_a_read_that_raced_an_invalidation_is_not_stored() -> None:
    """A reader read version 1, version 2 committed and its invalidation passed, then the reader
    stores what it read: refused, or version 1 would be served until the next change."""
    cache = live_cache()
    ticket = cache.ticket(7)
    cache.invalidate(7)
    assert not cache.put(ticket, record(7, 1))
    assert cache.get(7) is None
    assert cache.put(cache.ticket(7), record(7, 2))  # a read after the change is stored
    assert cache.get(7) is not None


def test_invalidating_one_run_leaves_the_others() -> None:
    cache = live_cache()
    for run in (1, 2):
        cache.put(cache.ticket(run), record(run, 1))
    ticket_for_2 = cache.ticket(2)
    cache.invalidate(1)
    assert cache.get(1) is None
    assert cache.get(2) is not None
    assert cache.put(ticket_for_2, record(2, 1))  # run 2 did not change


def test_losing_the_feed_empties_the_cache_and_voids_every_ticket() -> None:
    cache = live_cache()
    cache.put(cache.ticket(1), record(1, 1))
    ticket = cache.ticket(2)
    cache.set_live(False)
    assert cache.get(1) is None
    cache.set_live(True)  # reconnected: changes made meanwhile were never heard
    assert cache.get(1) is None
    assert not cache.put(ticket, record(2, 1))


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = live_cache(max_entries=2)
    for run in (1, 2):
        cache.put(cache.ticket(run), record(run, 1))
    assert cache.get(1) is not None  # 1 is now the most recently used
    cache.put(cache.ticket(3), record(3, 1))
    assert len(cache) == 2
    assert cache.get(2) is None
    assert cache.get(1) is not None
    assert cache.get(3) is not None


# --- in the store --------------------------------------------------------------------------------


def start_run(store: SqlStore) -> str:
    ops = Operations(store)
    experiment = ops.create_experiment(
        schemas.ExperimentCreate.model_validate(
            {
                "name": f"cache-{uuid.uuid4().hex[:8]}",
                "mode": "online",
                "method": "stratified",
                "domains": DOMAINS,
            }
        )
    )
    run, _ = ops.start_online_run(experiment.id, schemas.OnlineRunCreate(name="main"))
    return run.id


def post_feedback(store: SqlStore, run_id: str, step: int) -> WeightsRecord:
    body = schemas.Feedback.model_validate(
        {"step": step, "train_losses": {"web": 3.0, "code": 2.0, "papers": 2.5}}
    )
    return Operations(store).feedback(run_id, body)


def until(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def filled(store: SqlStore, run_id: str) -> bool:
    """Read, and say whether the read stayed in the cache (a notification of an earlier write
    may still arrive and drop it: then the next read fills it again)."""
    store.get_weights(run_id)
    return store.cached_weights(run_id) is not None


def test_store_reads_its_own_writes_through_the_cache(store: SqlStore, database_url: str) -> None:
    run_id = start_run(store)
    if database_url.startswith("sqlite"):
        # No notifications on SQLite (and other processes may write the file): no cache.
        assert not store.wait_weights_cache(0.1)
        assert store.get_weights(run_id).version == 1
        assert store.cached_weights(run_id) is None
        return
    assert store.wait_weights_cache()
    assert store.get_weights(run_id).version == 1
    assert until(lambda: filled(store, run_id))
    post_feedback(store, run_id, 100)
    # No waiting for the notification: the writer dropped its entry when it committed.
    cached = store.cached_weights(run_id)
    assert cached is None or cached.version == 2
    assert store.get_weights(run_id).version == 2
    # at_step reads are never cached, nor answered from the cache.
    assert store.get_weights(run_id, at_step=50).version == 1
    assert store.get_weights(run_id).version == 2


@pytest.fixture
def replicas(pg_database: str) -> Iterator[tuple[SqlStore, SqlStore]]:
    """Two replicas' stores on Postgres (the cache is off on SQLite: see the test above)."""
    pair = (
        SqlStore(make_engine(pg_database), weights_cache=True),
        SqlStore(make_engine(pg_database), weights_cache=True),
    )
    yield pair
    for replica in pair:
        replica.close()


def test_a_change_on_one_replica_reaches_the_other_replicas_cache(
    replicas: tuple[SqlStore, SqlStore],
) -> None:
    first, second = replicas
    assert first.wait_weights_cache() and second.wait_weights_cache()
    run_id = start_run(first)
    assert second.get_weights(run_id).version == 1
    assert until(lambda: filled(second, run_id))
    for step in (100, 200, 300):
        version = post_feedback(first, run_id, step).version
        # The notification arrives within moments; until then the old version, never older.
        assert until(lambda v=version: second.get_weights(run_id).version == v)  # type: ignore[misc]
        cached = second.cached_weights(run_id)
        assert cached is None or cached.version == version


def test_the_cache_stops_answering_when_its_feed_dies_and_resumes_after(
    replicas: tuple[SqlStore, SqlStore], pg_database: str
) -> None:
    first, second = replicas
    assert second.wait_weights_cache()
    run_id = start_run(first)
    assert until(lambda: filled(second, run_id))
    admin = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            ).all()
        assert killed, "no listener connection found"
        # Meanwhile a change: the feeds that would have told of it are gone.
        written = post_feedback(first, run_id, 100)
        assert until(lambda: second.cached_weights(run_id) is None)
        # The listeners reconnect by themselves; the change is then read, not missed.
        assert until(lambda: second.wait_weights_cache(0.01), seconds=15)
        assert second.get_weights(run_id).version == written.version
        assert until(lambda: filled(second, run_id))
        assert second.cached_weights(run_id).version == written.version  # type: ignore[union-attr]
    finally:
        admin.dispose()


# --- through HTTP --------------------------------------------------------------------------------


def test_a_poll_never_returns_a_version_older_than_the_client_has_seen(
    store: SqlStore, tokens: Tokens, http: Callable[..., httpx.Client]
) -> None:
    """The replica's cache may lag a notification behind; a client that names a newer version
    in If-None-Match is answered from the database instead."""
    run_id = start_run(store)
    post_feedback(store, run_id, 100)
    stale = record(int(run_id), 1)
    original = store.cached_weights

    def lagging(requested: str) -> WeightsRecord | None:
        return stale if requested == run_id else original(requested)

    store.cached_weights = lagging  # type: ignore[method-assign,assignment]
    with ThreadedServer(create_app(Settings(), store)) as server:
        client = http(server.url, tokens.header("read"), 30)
        path = f"{API}/runs/{run_id}/weights"
        assert client.get(path).json()["version"] == 1  # what the lagging replica has
        seen = client.get(path, headers={"If-None-Match": '"2"'})
        assert seen.status_code == 304
        assert seen.headers["etag"] == '"2"'
