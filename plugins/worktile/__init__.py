"""Worktile project tasks: the tracker connector, registered like any third-party plugin, and a
local emulator of the team Open API (``python -m plugins.worktile.emulator``)."""

from __future__ import annotations

from typing import Any

from sync.hookspecs import hookimpl

from .connector import WorktileConnector


@hookimpl
def register_connectors(register: Any) -> None:
    register(WorktileConnector)
