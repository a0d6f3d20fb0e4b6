"""The built-in Salesforce CRM connector, registered through the same hook as third-party
plugins, beside its local REST emulator (``python -m plugins.salesforce.emulator``)."""

from __future__ import annotations

from sync.hookspecs import hookimpl

from .connector import SalesforceConnector

__all__ = ["SalesforceConnector", "register_connectors"]


@hookimpl
def register_connectors(register):
    register(SalesforceConnector)
