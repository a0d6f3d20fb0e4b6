"""The plugin API: pluggy markers and hook specifications.

A plugin is a module or object with functions decorated ``@hookimpl``, registered under the
setuptools entry-point group ``dealsync``. The built-in connectors register through these same
hooks. Hooks are always called with keyword arguments.

Example, a plugin adding a connector and a notifier::

    from sync.hookspecs import hookimpl

    @hookimpl
    def register_connectors(register):
        register(MyTrackerConnector)

    @hookimpl
    def run_finished(pair, summary):
        post_to_chat(f"{pair}: {summary['counts']}")
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "dealsync"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_connectors(register: Callable[[type], None]) -> None:
    """Register connector classes by calling ``register(cls)`` once per class.

    ``cls`` subclasses ``sync.connectors.CRMConnector`` or ``sync.connectors.TrackerConnector``
    and sets ``type_name``, the ``type`` users write in ``dealsync.toml``.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``dealsync`` click group, e.g. ``@cli.command() def hello(): ...``."""


@hookspec
def run_finished(pair: str, summary: dict[str, Any]) -> None:
    """Called after every run of a pair (dry runs included), with the JSON summary of the run:
    counts, conflicts, failures, API calls per instance and duration."""


@hookspec
def link_created(pair: str, deal_id: str, requirement_key: str, requirement_url: str | None,
                 created: bool) -> None:
    """Called after a deal is linked to a requirement; ``created`` is True if dealsync created
    the requirement in this run, False if it linked one the request named."""


@hookspec
def conflict_found(pair: str, conflict: dict[str, Any]) -> None:
    """Called for every conflict, resolved by policy or queued for ``dealsync conflicts``. The
    dict carries the deal and requirement ids, the field, both values, the policy and outcome."""
