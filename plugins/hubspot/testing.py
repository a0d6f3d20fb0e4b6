"""Wiring a ``HubSpotConnector`` to a running ``HubSpotEmulator`` (tests, benchmarks).

With ``virtual_time`` the connector's clock, sleeps and rate limiter run on the emulator's
virtual clock: waiting out a burst window advances that clock instead of sleeping for real.
"""

from __future__ import annotations

from typing import Any

from plugins.emulator import on_virtual_time
from sync.connectors import InstanceContext

from .connector import HubSpotConnector
from .emulator import PRIVATE_TOKEN, HubSpotEmulator


def emulator_connector(emu: HubSpotEmulator, name: str = "hubspot", *,
                       virtual_time: bool = True, **settings: Any) -> HubSpotConnector:
    """A connector with the emulator's private-app token, on ``emu``."""
    ctx = InstanceContext(name, {"base_url": emu.url, "portal_id": 1, **settings},
                          lambda _secret: PRIVATE_TOKEN)
    if not virtual_time:
        return HubSpotConnector(ctx)
    return HubSpotConnector(ctx, **on_virtual_time(emu))
