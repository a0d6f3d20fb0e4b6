"""Workers: ``dealsync run --every 5m [--workers N]``.

A worker loops: it reads each pair's last recorded run from the state store, orders the pairs
by when they are due (last start + interval; never run = due since always), and runs the most
overdue one whose lock it can take, skipping pairs another worker is running. Under the lock
it reads the schedule again, so a pair another worker has just finished is not run twice in a
round. With nothing due it sleeps until the next pair is.

Any number of workers share a PostgreSQL store with no coordinator: the locks spread the pairs,
and because every worker always tries the most overdue pair first, a pair waits at most for the
runs already in progress, never behind newer ones (no pair starves). A run killed mid-way
records nothing, so its pair stays the most overdue and the next free worker takes it once the
lock died with the killed worker's connection.

``--workers N`` starts N such workers as child processes of one supervisor, which restarts a
worker that dies and passes SIGTERM on. Processes, not threads: a crash, a hang or a SIGKILL
takes one worker and never the others; planning is CPU work the GIL would serialise; and each
worker has its own store connection and connectors, exactly as N pods would (docs/state.md,
"Workers").
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from .errors import LockHeld
from .state import StateStore, now_utc

log = logging.getLogger("dealsync.workers")

NEVER = datetime.min.replace(tzinfo=timezone.utc)
BUSY_POLL_S = 5.0  # how soon a worker looks again at a due pair another worker holds
RESTART_AFTER_S = 5.0  # a worker that died is replaced no sooner than this after it started


def due_order(last: dict[str, datetime], names: list[str],
              interval: timedelta) -> list[tuple[datetime, str]]:
    """``(due time, pair)``, the most overdue first; a pair never run is due since always."""
    return sorted(((last[name] + interval) if name in last else NEVER, name) for name in names)


def claim_next(store: StateStore, names: list[str], interval: timedelta,
               now: datetime) -> tuple[str | None, float]:
    """Lock the most overdue pair that is free and still due: ``(pair, 0)``, the caller runs
    it and unlocks it. Otherwise ``(None, seconds until it is worth looking again)``."""
    busy = False
    for due, name in due_order(store.last_started(), names, interval):
        if due > now:
            wait = (due - now).total_seconds()
            return None, min(wait, BUSY_POLL_S) if busy else wait
        try:
            store.lock(name)
        except LockHeld:
            busy = True  # running elsewhere; if that worker dies, the pair is due here
            continue
        # Under the lock, read the schedule again: a worker may have finished this pair
        # between our read and our lock.
        again = store.last_started().get(name)
        if again is not None and again + interval > now:
            store.unlock(name)
            continue
        return name, 0.0
    return None, BUSY_POLL_S if busy else interval.total_seconds()


#: positions (``StateStore.position``) a scheduler keeps per pair, for ``dealsync status``
SCHEDULE_EVERY = "schedule:every_s"  # its interval
SCHEDULE_SEEN = "schedule:seen"  # when it last looked (Unix seconds)
#: a scheduler not seen for its interval and this much more is taken as stopped: it looks at
#: least once an interval (when the next pair is due)
SCHEDULE_GRACE_S = 120


def note_schedule(store: StateStore, names: list[str], interval: timedelta) -> None:
    """Say in the store that these pairs are scheduled every ``interval``, as of now."""
    with store.transaction():
        for name in names:
            store.set_position(name, SCHEDULE_EVERY, int(interval.total_seconds()))
            store.set_position(name, SCHEDULE_SEEN, int(time.time()))


def next_run(store: StateStore, pair: str, last_started: datetime | None,
             now: float | None = None) -> dict[str, Any] | None:
    """``{"every_s", "at"}`` when a scheduler (``dealsync run --every``) has looked at this
    pair recently: ``at`` is when the pair is next due (ISO, UTC); None when none has."""
    every = store.position(pair, SCHEDULE_EVERY)
    seen = store.position(pair, SCHEDULE_SEEN)
    now = time.time() if now is None else now
    if not every or now - seen > every + SCHEDULE_GRACE_S:
        return None
    due = (last_started + timedelta(seconds=every)) if last_started else now_utc()
    return {"every_s": every, "at": max(due, now_utc()).isoformat()}


def work(store: Callable[[], StateStore], names: list[str], interval: timedelta,
         run: Callable[[str], None], stopping: Callable[[], bool],
         sleep: Callable[[float], None] = time.sleep, on_error: Callable[[Exception], float]
         | None = None) -> None:
    """Run due pairs until ``stopping()``. ``store()`` gives the store (reopened by the caller
    after a failure); ``on_error`` decides how long to wait after an error of the store."""
    while not stopping():
        try:
            current = store()
            note_schedule(current, names, interval)
            name, wait = claim_next(current, names, interval, now_utc())
            if name is not None:
                try:
                    run(name)
                finally:
                    current.unlock(name)
                continue
        except Exception as exc:
            if on_error is None:
                raise
            wait = on_error(exc)
        _nap(wait, stopping, sleep)


def _nap(seconds: float, stopping: Callable[[], bool], sleep: Callable[[float], None]) -> None:
    """Sleep, waking every second to see whether to stop."""
    deadline = time.monotonic() + seconds
    while not stopping() and time.monotonic() < deadline:
        sleep(max(0.0, min(1.0, deadline - time.monotonic())))


# -- the supervisor of --workers N -------------------------------------------------------------
class Supervisor:
    """N worker processes running ``command``; SIGTERM or SIGINT stops them after their current
    runs; a worker that dies is started again."""

    def __init__(self, command: list[str], count: int):
        self.command = command
        self.count = count
        self.children: list[tuple[subprocess.Popen, float] | None] = [None] * count
        self.stopping = False

    def _start(self, slot: int) -> None:
        env = {**os.environ, "DEALSYNC_WORKER": str(slot + 1)}
        child = subprocess.Popen(self.command, env=env)
        self.children[slot] = (child, time.monotonic())
        log.info("worker %d started (pid %d)", slot + 1, child.pid)

    def _stop(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        log.warning("signal %s: stopping the workers after their current runs", signum)
        for entry in self.children:
            if entry is not None and entry[0].poll() is None:
                entry[0].send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for slot in range(self.count):
            self._start(slot)
        while not self.stopping:
            for slot, entry in enumerate(self.children):
                assert entry is not None
                child, started = entry
                code = child.poll()
                if code is not None and not self.stopping and \
                        time.monotonic() - started >= RESTART_AFTER_S:
                    log.error("worker %d (pid %d) ended with exit code %s; starting another",
                              slot + 1, child.pid, code)
                    self._start(slot)
            time.sleep(0.5)
        for entry in self.children:
            if entry is not None:
                entry[0].wait()
        return 0


def worker_command(config: str, verbose: int, debug: bool, every: str,
                   pair: str | None) -> list[str]:
    """The command line of one worker process of ``--workers N``."""
    command = [sys.executable, "-m", "sync.cli", "-c", config]
    command += ["-" + "v" * verbose] if verbose else []
    command += ["--debug"] if debug else []
    command += ["run", "--every", every, "--workers", "1"]
    return command + (["--pair", pair] if pair else [])
