"""A second lane: the pair's tracker (or CRM) is called from a thread of its own while the main
thread works with the other service, so that one service's rate limit is not idle while the
other's binds (docs/engine.md §9).

Only service calls run on the lane. Everything that touches the state store or the view's
bookkeeping stays on the main thread, which takes each result from its future in order: a step
still sticks once its answer is stored, as in a run on one thread. A lane is used only when
both connectors declare ``concurrent``; otherwise ``submit`` runs the call when its result is
asked for, on the main thread, and a run does exactly what it did on one thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class _Later(Future):
    """A call run on the main thread when its result is first asked for."""

    def __init__(self, call: Callable[[], Any]):
        super().__init__()
        self._call = call

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            try:
                self.set_result(self._call())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, as a pool would
                self.set_exception(exc)
        return super().result(timeout)


class Lane:
    """At most one call at a time on one other thread; use as a context manager."""

    def __init__(self, name: str, enabled: bool):
        self.enabled = enabled
        self.stopping = threading.Event()  # set when the main thread gives up: lane work ends
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name) if enabled else None

    def submit(self, call: Callable[..., T], *args: Any) -> "Future[T]":
        if self._pool is None:
            return _Later(lambda: call(*args))
        return self._pool.submit(call, *args)

    def __enter__(self) -> "Lane":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        """On an error, calls not started are dropped and a running one is asked to stop;
        either way the lane's thread has ended when this returns."""
        if exc_type is not None:
            self.stopping.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)
