"""An in-process cache of each online run's current weights, kept fresh across replicas.

A weights poll is the hottest request mixopt serves (every trainer, every few steps). Answered
from the database it costs a pool checkout, a ping and a transaction, about 0.1 of what the
process can serve; answered from memory it costs nothing but the HTTP layer.

Correctness rests on three rules:

1. **Every replica hears every change.** A write that gives a run a new weights version also runs
   ``pg_notify('mixopt_weights', run_id)`` in its transaction; Postgres delivers it at commit to
   every replica's ``WeightsChangeListener``, which drops that run's entry. The writing process
   also drops it itself right after its commit, so it reads its own writes at once.
2. **No feed, no cache.** The cache answers only while its listener holds a live ``LISTEN``
   connection. When that connection fails, the cache empties and stops answering (polls go to
   the database) until the listener is back; on reconnecting it empties again, since
   notifications sent while it was away are lost.
3. **No stale fill.** A reader that missed takes a ``ticket`` before reading the database and
   may store what it read only if no invalidation of that run (or of everything) happened since.
   Otherwise a reader that read version 80 just before version 81 committed could store 80
   after 81's notification had already passed, and serve it until the next change.

What remains is the delivery delay of a notification to another replica, typically well under
a millisecond on one network: a poll there may see the previous version for that long, which a
poll answered a moment earlier would have seen anyway. A client that already knows a newer
version (``If-None-Match``) is never answered from an older entry (see the weights route).

SQLite has no notifications, and another process may write the same file, so the cache is only
used on Postgres.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from service.store.base import WeightsRecord

__all__ = ["CHANNEL", "Ticket", "WeightsCache", "WeightsChangeListener"]

CHANNEL = "mixopt_weights"
"""The Postgres notification channel; the payload is the run id."""

log = logging.getLogger("mixopt.store")

# A LISTEN connection only reads, so a server that vanished without closing the socket (a host
# lost, a network cut) would never show as an error, and the cache would stay live without its
# feed: TCP keepalives notice within about 11 s (5 s idle, then 3 probes 2 s apart).
_LIVENESS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


@dataclass(frozen=True)
class Ticket:
    """What a reader saw before it went to the database (see rule 3)."""

    run_id: int
    epoch: int
    run_generation: int


class WeightsCache:
    """Run id -> current ``WeightsRecord``; thread-safe, bounded (least recently used goes)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[int, WeightsRecord] = OrderedDict()
        self._generations: dict[int, int] = {}
        self._epoch = 0  # bumped by clear(): every outstanding ticket becomes void
        self._live = False
        self._lock = threading.Lock()

    @property
    def live(self) -> bool:
        return self._live

    def set_live(self, live: bool) -> None:
        """Start or stop answering; both directions empty the cache (rule 2)."""
        with self._lock:
            self._live = live
            self._clear_locked()

    def get(self, run_id: int) -> WeightsRecord | None:
        with self._lock:
            if not self._live:
                return None
            record = self._entries.get(run_id)
            if record is not None:
                self._entries.move_to_end(run_id)
            return record

    def ticket(self, run_id: int) -> Ticket:
        with self._lock:
            return Ticket(run_id, self._epoch, self._generations.get(run_id, 0))

    def put(self, ticket: Ticket, record: WeightsRecord) -> bool:
        """Store ``record`` unless the run changed since ``ticket``; True if stored."""
        with self._lock:
            if (
                not self._live
                or ticket.epoch != self._epoch
                or ticket.run_generation != self._generations.get(ticket.run_id, 0)
            ):
                return False
            self._entries[ticket.run_id] = record
            self._entries.move_to_end(ticket.run_id)
            while len(self._entries) > self._max_entries:
                evicted, _ = self._entries.popitem(last=False)
                self._generations.pop(evicted, None)
            return True

    def invalidate(self, run_id: int) -> None:
        with self._lock:
            self._entries.pop(run_id, None)
            # Only runs that are cached or being read need a generation; others start at 0,
            # which a ticket taken before the first fill also holds.
            self._generations[run_id] = self._generations.get(run_id, 0) + 1
            if len(self._generations) > 2 * self._max_entries:
                self._clear_locked()

    def clear(self) -> None:
        with self._lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        self._entries.clear()
        self._generations.clear()
        self._epoch += 1

    def __len__(self) -> int:
        return len(self._entries)


class WeightsChangeListener:
    """A thread that ``LISTEN``s on ``CHANNEL`` and drops the runs it hears about.

    It reconnects with exponential backoff (0.1 s doubling to 5 s) when its connection fails;
    the cache is live only while it is connected.
    """

    def __init__(self, conninfo: str, cache: WeightsCache, *, poll_seconds: float = 0.2) -> None:
        self._conninfo = conninfo
        self._cache = cache
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="mixopt-weights-listener", daemon=True
        )

    def start(self) -> WeightsChangeListener:
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._poll_seconds + 5)
        self._cache.set_live(False)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, **_LIVENESS) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    self._cache.set_live(True)  # empties it: changes while away were missed
                    self._connected.set()
                    backoff = 0.1
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=self._poll_seconds):
                            self._invalidate(note.payload)
            except psycopg.Error as exc:
                log.warning("weights change listener lost its connection: %s", exc)
            except Exception:
                # Anything else would end the thread and leave the cache off for good.
                log.exception("weights change listener failed; reconnecting")
            finally:
                self._connected.clear()
                self._cache.set_live(False)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, 5.0)

    def _invalidate(self, payload: str) -> None:
        if payload.isdigit():
            self._cache.invalidate(int(payload))
        else:  # unknown payload: be safe
            self._cache.clear()
