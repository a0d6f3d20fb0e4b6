"""Shared fixtures: a memory world, its two connectors, the test mapping and a state store;
the emulators; and a `dealsync` process against both emulators."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import responses

from plugins.hubspot.emulator import PRIVATE_TOKEN, HubSpotEmulator
from plugins.hubspot.testing import emulator_connector as hubspot_connector
from plugins.memory import MemoryCRM, MemoryTracker, World
from plugins.pingcode.emulator import PingCodeEmulator
from plugins.pingcode.testing import DEMO_SECRETS
from plugins.salesforce.emulator import SalesforceEmulator
from plugins.worktile.emulator import WorktileEmulator
from sync.connectors import InstanceContext
from sync.demo import CONFIG_TEMPLATE, secrets
from sync.engine import Options, Pair, run_pair
from sync.mapping import load_mapping
from sync.secrets import env_var
from sync.state import StateStore
from pgcluster import pg_url, postgres_cluster  # noqa: F401  (fixtures: a throwaway PostgreSQL)

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


#: A pair of memory connectors persisted in JSON files beside the config, for CLI tests.
MEMORY_CONFIG = """
[crm.sales]
type = "memory"
path = "crm.json"

[tracker.rd]
type = "memory"
path = "tracker.json"

[pair.sales-rd]
crm = "sales"
tracker = "rd"
mapping = "memory-mapping.toml"
"""


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
def emulators_store(hubspot_server, pingcode_server, tmp_path):
    """Both emulators reset, with the deal properties of the shipped hubspot-pingcode mapping
    made, and a fresh SQLite state store: ``(hubspot, pingcode, store)``."""
    hubspot_server.reset()
    pingcode_server.reset()
    mapping = load_mapping("hubspot-pingcode")
    hubspot_connector(hubspot_server).ensure_fields(mapping.crm_schema())
    store = StateStore(tmp_path / "state.db")
    yield hubspot_server, pingcode_server, store
    store.close()


def emulator_secrets(monkeypatch, home: Path, hubspot: str = "hs", pingcode: str = "pc") -> None:
    """The environment a CLI run against both emulators needs: its DEALSYNC_HOME and the
    emulators' credentials for instances named ``hubspot`` and ``pingcode``."""
    monkeypatch.setenv("DEALSYNC_HOME", str(home))
    monkeypatch.setenv(env_var(hubspot, "token"), PRIVATE_TOKEN)
    for name, value in DEMO_SECRETS.items():
        monkeypatch.setenv(env_var(pingcode, name), value)


@pytest.fixture(scope="module")
def salesforce_server():
    """One Salesforce emulator (virtual clock) per test module; tests reset it as they need."""
    yield from _serve(SalesforceEmulator())


@pytest.fixture(scope="module")
def worktile_server():
    """One Worktile emulator (virtual clock) per test module; tests reset it as they need."""
    yield from _serve(WorktileEmulator())


@contextmanager
def process_stack(tmp_path: Path, pair: str) -> Iterator[tuple]:
    """Both emulators on real time, a dealsync.toml naming them (the demo's template) and the
    environment a ``dealsync`` process needs: ``(hubspot, pingcode, config, env)``."""
    hubspot, pingcode = HubSpotEmulator(realtime=True), PingCodeEmulator(realtime=True)
    config = tmp_path / "dealsync.toml"
    config.write_text(CONFIG_TEMPLATE.format(hubspot=hubspot.start(), pingcode=pingcode.start(),
                                             crm="demo-hubspot", tracker="demo-pingcode",
                                             pair=pair))
    env = {**os.environ, **secrets(), "DEALSYNC_HOME": str(tmp_path / "home")}
    try:
        yield hubspot, pingcode, config, env
    finally:
        hubspot.stop()
        pingcode.stop()


def run_dealsync(config: Path, env: dict, *args: str, timeout: float = 300):
    """``dealsync -c CONFIG ARGS`` in its own process (so it can be killed like a real one)."""
    return subprocess.run([sys.executable, "-m", "sync.cli", "-c", str(config), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


class Sleeps(list):
    """A connector's ``sleep`` for tests: records each wait instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def rsps():
    """HTTP replies with `responses`. Replies left unused are allowed: tests register ones
    that must *not* be reached (a write that is never re-sent)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
