"""Each instance's rate limit, shared by every worker through the state store.

Workers in several processes or pods may run pairs on the same CRM or tracker instance at the
same moment; an in-memory limiter per process would let them together exceed the instance's
limit. With a PostgreSQL store, every client's sliding windows live in the ``rate_slots``
table instead: a call takes a slot in each of its buckets in one short transaction (serialised
per instance and bucket by a transaction-level advisory lock), and stamps it when the answer
is back, exactly as the in-memory limiter does (sync/http.py, ``_Window``). Time is the
database server's clock, one clock for every worker.

The cost is two short transactions per API call on a connection of its own (not the run's, so
a call made while the run holds a transaction cannot interleave with it); docs/state.md,
"Rate limits", says why this and not one worker per instance.
"""

from __future__ import annotations

import logging
import threading
from contextlib import suppress
from typing import Any, Callable, Iterable

from .. import http
from ..connectors import RateLimit
from .base import StateStore

log = logging.getLogger("dealsync.state")


class SharedConnection:
    """The one store connection a process's limiters share, opened on first use and again
    after a failure. Connectors may call from several threads: one call at a time."""

    def __init__(self, opener: Callable[[], StateStore]):
        self._opener = opener
        self._store: StateStore | None = None
        self._lock = threading.Lock()

    def call(self, action: Callable[[StateStore], Any]) -> Any:
        with self._lock:
            if self._store is None:
                self._store = self._opener()
            try:
                return action(self._store)
            except Exception:
                self._drop()  # a broken connection is not used again
                raise

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._store is not None:
            with suppress(Exception):
                self._store.close()
            self._store = None


class SharedRateLimiter:
    """``sync.http.RateLimiter``'s interface over the store's ``rate_slots``."""

    def __init__(self, instance: str, limits: dict[str, RateLimit], connection: SharedConnection,
                 sleep: Callable[[float], None]):
        self.instance = instance
        self.limits = limits
        self.connection = connection
        self.sleep = sleep

    def acquire(self, buckets: Iterable[str]) -> list[int]:
        wanted = {b: (self.limits[b].calls, self.limits[b].per_seconds)
                  for b in buckets if b in self.limits}
        if not wanted:
            return []
        while True:
            ids, wait = self.connection.call(
                lambda store: store.take_rate_slots(self.instance, wanted))
            if ids:
                return ids
            log.debug("%s: rate limit reached across workers; waiting %.2f s", self.instance, wait)
            self.sleep(wait)

    def done(self, slots: list[int]) -> None:
        if slots:
            self.connection.call(lambda store: store.answer_rate_slots(slots))


def share_limits(opener: Callable[[], StateStore]) -> Callable[[], None]:
    """From now on, clients with rate limits share them through the store ``opener`` opens.
    Returns what undoes it (and closes the connection)."""
    connection = SharedConnection(opener)
    previous = http.limiter_factory

    def factory(instance: str, limits: dict[str, RateLimit], sleep: Callable[[float], None],
                monotonic: Callable[[], float]) -> Any:
        if not limits:
            return http.local_limiter(instance, limits, sleep, monotonic)
        return SharedRateLimiter(instance, limits, connection, sleep)

    http.limiter_factory = factory

    def undo() -> None:
        http.limiter_factory = previous
        connection.close()

    return undo
