"""PingCode (Agile work items, or Ship ideas with ``item_kind = "idea"``): the tracker connector,
registered like any third-party plugin, and its local emulator
(``python -m plugins.pingcode.emulator``)."""

from __future__ import annotations

from typing import Any

from sync.hookspecs import hookimpl

from .connector import PingCodeConnector


@hookimpl
def register_connectors(register: Any) -> None:
    register(PingCodeConnector)
