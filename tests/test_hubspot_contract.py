"""The connector contract (tests/contract.py) against the HubSpot emulator."""

from __future__ import annotations

import pytest

from sync.contract import CRMContract
from plugins.hubspot.connector import HubSpotConnector
from plugins.hubspot.emulator import PRIVATE_TOKEN
from sync.connectors import InstanceContext


@pytest.fixture
def emu(hubspot_server):
    hubspot_server.reset()
    return hubspot_server


@pytest.fixture
def crm(emu):
    # The connector's limiter and sleeps run on the emulator's virtual clock: no real waiting.
    now = lambda: emu.clock.now().timestamp()  # noqa: E731
    connector = HubSpotConnector(
        InstanceContext("hubspot", {"base_url": emu.url, "portal_id": 4242},
                        lambda name: PRIVATE_TOKEN),
        sleep=lambda s: emu.clock.advance(s * 1000), monotonic=now, clock=now)
    yield connector
    connector.close()


@pytest.fixture
def seed_deal(emu):
    def seed(name, **properties):
        return emu.seed(deals=[{"properties": {"dealname": name, **properties}}])["deals"][0]
    return seed


@pytest.fixture
def crm_field():
    return ("hs_priority", "high", "medium", "urgent")


@pytest.fixture
def missing_deal_id():
    return "99999999999"


class TestHubSpotCRM(CRMContract):
    pass
