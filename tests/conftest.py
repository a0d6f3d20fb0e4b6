"""Shared fixtures: a memory world, its two connectors, the test mapping and a state store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import responses

from plugins.hubspot.emulator import HubSpotEmulator
from plugins.memory import MemoryCRM, MemoryTracker, World
from plugins.pingcode.emulator import PingCodeEmulator
from sync.connectors import InstanceContext
from sync.engine import Options, Pair, run_pair
from sync.mapping import load_mapping
from sync.state import StateStore

DATA = Path(__file__).parent / "data"


class Harness:
    """A pair of memory connectors over one World, with helpers to run and inspect syncs."""

    def __init__(self, tmp_path: Path):
        self.world = World()
        self.crm = MemoryCRM(InstanceContext("crm", {}, lambda n: ""), world=self.world)
        self.tracker = MemoryTracker(InstanceContext("tracker", {}, lambda n: ""), world=self.world)
        self.mapping = load_mapping(str(DATA / "memory-mapping.toml"))
        self.store_path = tmp_path / "state.db"
        self.store = StateStore(self.store_path)
        self.pair_name = "p"
        self.guard_min_links = 10

    def pair(self) -> Pair:
        return Pair(self.pair_name, self.crm, self.tracker, self.mapping,
                    guard_min_links=self.guard_min_links)

    def sync(self, **options) -> dict:
        return run_pair(self.pair(), self.store, Options(**options))

    def set_policy(self, field: str, policy: str) -> None:
        fields = tuple(dataclasses.replace(f, conflict=policy) if f.name == field else f
                       for f in self.mapping.fields)
        self.mapping = dataclasses.replace(self.mapping, fields=fields)

    def deal(self, deal_id: str, request: str, **fields) -> dict:
        return self.world.add_deal(deal_id, request=request, pipeline="sales", **fields)

    def item_for(self, deal_id: str) -> dict:
        req_ids = [l.req_id for l in self.store.links(self.pair_name) if l.deal_id == deal_id]
        assert req_ids, f"deal {deal_id} is not linked"
        return self.world.items[req_ids[0]]

    def snapshot(self) -> tuple:
        """Everything observable on both sides (for 'nothing was written' assertions)."""
        import json
        return (json.dumps(self.world.deals, sort_keys=True),
                json.dumps(self.world.items, sort_keys=True))


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.store.close()


def _serve(emulator):
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def hubspot_server():
    """One HubSpot emulator (virtual clock) per test module; tests reset it as they need."""
    yield from _serve(HubSpotEmulator())


@pytest.fixture(scope="module")
def pingcode_server():
    """One PingCode emulator (virtual clock) per test module; tests reset it as they need."""
    yield from _serve(PingCodeEmulator())


@pytest.fixture
def rsps():
    """HTTP replies with `responses`. Replies left unused are allowed: tests register ones
    that must *not* be reached (a write that is never re-sent)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
