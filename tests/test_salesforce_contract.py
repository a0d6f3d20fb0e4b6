"""The connector contract (sync/contract.py) against the Salesforce emulator."""

from __future__ import annotations

import pytest

from plugins.salesforce.schema import make_id
from plugins.salesforce.testing import emulator_connector
from sync.contract import CRMContract




@pytest.fixture
def emu(salesforce_server):
    salesforce_server.reset()
    return salesforce_server


@pytest.fixture
def crm(emu):
    # The connector's clock and sleeps run on the emulator's virtual clock: no real waiting.
    connector = emulator_connector(emu)
    yield connector
    connector.close()


@pytest.fixture
def seed_deal(emu):
    """An opportunity made in Salesforce by a sales rep (the contract speaks HubSpot's words
    for the amount)."""
    def seed(name, **properties):
        fields = {"Name": name}
        if "amount" in properties:
            fields["Amount"] = float(properties.pop("amount"))
        fields.update(properties)
        return emu.seed(opportunities=[{"fields": fields}])["opportunities"][0]
    return seed


@pytest.fixture
def crm_field():
    # A restricted picklist (docs/salesforce.md §7): "Urgent" is refused per record.
    return ("Priority__c", "High", "Medium", "Urgent")


@pytest.fixture
def missing_deal_id():
    return make_id("006", 999_999)


class TestSalesforceCRM(CRMContract):
    pass
