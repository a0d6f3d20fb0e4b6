"""The connector contract against the in-memory connectors."""

from __future__ import annotations

import pytest

from sync.contract import CRMContract, TrackerContract
from plugins.memory import MemoryCRM, MemoryTracker, World
from sync.connectors import InstanceContext


@pytest.fixture
def world():
    w = World()
    w.crm_options["req_status"] = ["open", "planned", "done"]
    return w


@pytest.fixture
def crm(world):
    return MemoryCRM(InstanceContext("crm", {}, lambda n: ""), world=world)


@pytest.fixture
def seed_deal(world):
    counter = iter(range(1, 10_000))

    def seed(name, **properties):
        deal_id = f"deal{next(counter)}"
        amount = properties.pop("amount", None)
        world.add_deal(deal_id, name=name, amount=amount, **properties)
        return deal_id

    return seed


@pytest.fixture
def crm_field():
    return ("req_status", "open", "planned", "not-an-option")


@pytest.fixture
def missing_deal_id():
    return "deal-missing"


@pytest.fixture
def tracker(world):
    return MemoryTracker(InstanceContext("tracker", {}, lambda n: ""), world=world)


@pytest.fixture
def missing_req_id():
    return "item-missing"


class TestMemoryCRM(CRMContract):
    pass


class TestMemoryTracker(TrackerContract):
    pass


def test_persisted_world_survives_reopen(tmp_path):
    ctx = InstanceContext("rd", {"path": str(tmp_path / "rd.json")}, lambda n: "")
    tracker = MemoryTracker(ctx)
    created = tracker.create(TrackerContract()._new(tracker, "d1"))
    again = MemoryTracker(ctx)
    assert again.fetch([created.id])[created.id].title == created.title
