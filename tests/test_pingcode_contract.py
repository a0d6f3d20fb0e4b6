"""The connector contract (tests/contract.py) against the PingCode emulator."""

from __future__ import annotations

import pytest

from contract import TrackerContract
from plugins.pingcode.testing import emulator_connector


@pytest.fixture(params=["description", "property"])
def tracker(pingcode_server, request):
    """Both ways of carrying the marker; the documented 200/min limit stays on, on both sides,
    with the connector's waits running on the emulator's virtual clock."""
    pingcode_server.reset()
    settings = {"marker_property": "prop_crm_deal"} if request.param == "property" else {}
    connector = emulator_connector(pingcode_server, **settings)
    yield connector
    connector.close()


@pytest.fixture
def missing_req_id():
    return "0123456789abcdef01234567"  # 24-hex, the shape of a PingCode work item id


class TestPingCodeTracker(TrackerContract):
    pass
