"""Wiring a ``SalesforceConnector`` to a running ``SalesforceEmulator`` (tests, demo, benchmarks).

With ``virtual_time`` the connector's clock, sleeps and rate limiter run on the emulator's
virtual clock, so a wait costs no real time and "when the allocation frees up" is emulator time.
``create_fields`` does to the emulator's org what an admin does by following the steps
``dealsync check --fix`` prints.
"""

from __future__ import annotations

import copy
from typing import Any

from plugins.emulator import on_virtual_time
from sync.connectors import InstanceContext

from .connector import FieldPlan, SalesforceConnector
from .emulator import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, USERNAME, SalesforceEmulator

#: The credentials the emulator accepts out of the box, by dealsync secret name.
EMULATOR_SECRETS = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                    "refresh_token": REFRESH_TOKEN}


def emulator_connector(emu: SalesforceEmulator, name: str = "salesforce", *,
                       virtual_time: bool = True, secrets: dict[str, str] | None = None,
                       **settings: Any) -> SalesforceConnector:
    """A connector logging in to ``emu`` (client credentials unless ``auth`` says otherwise)."""
    values = {**EMULATOR_SECRETS, **(secrets or {})}
    settings = {"login_url": emu.url, **settings}
    if settings.get("auth") == "jwt":
        settings.setdefault("username", USERNAME)
    ctx = InstanceContext(name, settings, values.__getitem__)
    if not virtual_time:
        return SalesforceConnector(ctx)
    return SalesforceConnector(ctx, **on_virtual_time(emu))


def create_fields(emu: SalesforceEmulator, plans: list[FieldPlan]) -> None:
    """Create the planned Opportunity fields, and add the missing picklist values, in the
    emulator's org (its ``custom_fields`` config, docs/salesforce.md §7)."""
    custom = copy.deepcopy(emu.config["custom_fields"])
    fields = custom.setdefault("Opportunity", {})
    for plan in plans:
        if plan.exists:
            spec = fields[plan.name]
            spec["values"] = [*(spec.get("values") or []), *plan.missing_values]
            continue
        spec = {"label": plan.label, "type": plan.type}
        if plan.length:
            spec["length"] = plan.length
        if plan.type == "picklist":
            spec.update(values=list(plan.values), restricted=True)
        fields[plan.name] = spec
    emu.configure(custom_fields=custom)
