"""Wiring a ``WorktileConnector`` to a running ``WorktileEmulator`` (tests, benchmarks).

With ``virtual_time`` the connector's token clock, sleeps and rate limiter run on the
emulator's virtual clock: waiting out a 429 or the client's own window advances that clock
instead of sleeping. The connector reads pages on up to three threads, so a sleep moves the
clock to the sleeper's deadline (the time it last read plus the wait) rather than by the wait:
three threads waiting out the same window move it once, as real time would.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import requests

from sync.connectors import InstanceContext

from .connector import WorktileConnector
from .emulator import WorktileEmulator

DEMO_SECRETS = {"client_id": "dealsync-demo", "client_secret": "demo-secret"}


def emulator_connector(emu: WorktileEmulator, name: str = "worktile", *,
                       virtual_time: bool = True, secrets: dict[str, str] | None = None,
                       session: requests.Session | None = None,
                       **settings: Any) -> WorktileConnector:
    """A connector for project DS on ``emu`` (unless ``settings`` say otherwise); ``session``
    lets a benchmark watch the replies."""
    settings = {"base_url": emu.url, "project": "DS", **settings}
    secrets = {**DEMO_SECRETS, **(secrets or {})}
    ctx = InstanceContext(name, settings, secrets.__getitem__)
    if not virtual_time:
        return WorktileConnector(ctx, session=session)
    lock, seen = threading.Lock(), threading.local()

    def now() -> float:
        seen.at = emu.clock.now()  # what this thread based its next wait on
        return seen.at.timestamp()

    def sleep(seconds: float) -> None:
        deadline = getattr(seen, "at", emu.clock.now()) + timedelta(seconds=seconds)
        with lock:
            if emu.clock.now() < deadline:
                emu.clock.set(deadline)
        seen.at = emu.clock.now()

    return WorktileConnector(ctx, session=session, clock=now, monotonic=now, sleep=sleep)
