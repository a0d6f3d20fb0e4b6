"""The connector contract (tests/contract.py) against the PingCode emulator, for both item kinds:
Agile work items and Ship ideas, each with the marker in the description or in a property."""

from __future__ import annotations

import pytest

from sync.contract import TrackerContract
from plugins.pingcode.testing import emulator_connector

SETTINGS = {
    "description": {},
    "property": {"marker_property": "prop_crm_deal"},
    "idea": {"item_kind": "idea"},
    "idea-property": {"item_kind": "idea", "marker_property": "CRM 商机"},
}


@pytest.fixture(params=list(SETTINGS))
def tracker(pingcode_server, request):
    """The documented 200/min limit stays on, on both sides, with the connector's waits running
    on the emulator's virtual clock."""
    pingcode_server.reset()
    connector = emulator_connector(pingcode_server, **SETTINGS[request.param])
    yield connector
    connector.close()


@pytest.fixture
def missing_req_id():
    return "0123456789abcdef01234567"  # 24-hex, the shape of a work item or idea id


class TestPingCodeTracker(TrackerContract):
    pass
