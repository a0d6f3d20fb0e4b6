"""Every engine scenario of test_engine.py and test_engine_phases.py again, on the PostgreSQL
state store: the same ``h`` harness with its store in a fresh database of the throwaway server
(tests/pgcluster.py). After each scenario ``state check`` must find nothing wrong, so the
rules it checks are the ones the engine keeps.

Left out: two tests about the SQLite file itself (deleting it, its permissions); the wiped
store is covered below with an empty database instead.
"""

from __future__ import annotations

import pytest

from conftest import Harness
from sync.state import open_store
from sync.state.transfer import check_store
import test_engine
import test_engine_phases

SQLITE_ONLY = {"test_wiped_state_store_relinks_without_duplicates",
               "test_the_state_store_and_its_folder_are_private"}

globals().update({name: test for module in (test_engine, test_engine_phases)
                  for name, test in vars(module).items()
                  if name.startswith("test_") and name not in SQLITE_ONLY})


@pytest.fixture
def h(tmp_path, postgres_cluster, monkeypatch):
    """The memory world of conftest's harness, its state store in PostgreSQL."""
    from pgcluster import PASSWORD

    monkeypatch.setenv("DEALSYNC_STATE_PASSWORD", PASSWORD)
    database = postgres_cluster.create_database()
    harness = Harness(tmp_path)
    harness.store.close()
    harness.store = open_store(postgres_cluster.url(database))
    harness.databases = [database]
    yield harness
    assert check_store(harness.store).problems == []
    harness.store.close()
    for name in harness.databases:
        postgres_cluster.drop_database(name)


def test_an_empty_database_relinks_without_duplicates(h, postgres_cluster):
    for n in range(4):
        h.deal(f"d{n}", f"Feature {n}")
    h.sync()
    key = h.item_for("d0")["key"]
    h.deal("d9", key)
    h.sync()
    h.store.close()
    h.databases.append(postgres_cluster.create_database())  # the store was lost
    h.store = open_store(postgres_cluster.url(h.databases[-1]))
    summary = h.sync()
    assert len(h.world.items) == 4
    assert summary["counts"]["relinked"] == 4 and summary["counts"]["created"] == 0
    assert len(h.store.links("p")) == 5
    assert h.sync()["counts"]["updated_tracker"] == 0
