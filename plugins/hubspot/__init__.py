"""The built-in HubSpot CRM connector, registered through the same hook as third-party plugins."""

from __future__ import annotations

from sync.hookspecs import hookimpl

from .connector import HubSpotConnector

__all__ = ["HubSpotConnector", "register_connectors"]


@hookimpl
def register_connectors(register):
    register(HubSpotConnector)
