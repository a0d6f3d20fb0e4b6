"""Wiring a ``PingCodeConnector`` to a running ``PingCodeEmulator`` (tests, demo, benchmarks).

With ``virtual_time`` the connector's clock, sleeps and rate limiter run on the emulator's
virtual clock: a token's absolute expiry is compared with emulator time, and waiting out a
429 or the 200/min window advances that clock instead of sleeping for real.
"""

from __future__ import annotations

from typing import Any

from plugins.emulator import on_virtual_time
from sync.connectors import InstanceContext

from .connector import PingCodeConnector
from .emulator import PingCodeEmulator

DEMO_SECRETS = {"client_id": "dealsync-demo", "client_secret": "demo-secret"}


def emulator_connector(emu: PingCodeEmulator, name: str = "pingcode", *,
                       virtual_time: bool = True, secrets: dict[str, str] | None = None,
                       **settings: Any) -> PingCodeConnector:
    """A connector for project SCR, or with ``item_kind="idea"`` for Ship product SLC (unless
    ``settings`` say otherwise), on ``emu``."""
    scope = {"product": "SLC"} if settings.get("item_kind") == "idea" else {"project": "SCR"}
    settings = {"base_url": emu.url, **scope, **settings}
    secrets = {**DEMO_SECRETS, **(secrets or {})}
    ctx = InstanceContext(name, settings, secrets.__getitem__)
    if not virtual_time:
        return PingCodeConnector(ctx)
    return PingCodeConnector(ctx, **on_virtual_time(emu))
