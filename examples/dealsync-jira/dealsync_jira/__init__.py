"""dealsync-jira: Jira issues as dealsync requirements (an example third-party plugin).

dealsync finds this module through the ``dealsync`` entry point in pyproject.toml and calls
the hooks below; ``type = "jira"`` in a ``[tracker.NAME]`` section then selects the connector.
"""

from __future__ import annotations

from typing import Any

from sync.hookspecs import hookimpl

from .connector import JiraConnector

__all__ = ["JiraConnector"]


@hookimpl
def register_connectors(register: Any) -> None:
    register(JiraConnector)
