"""The connector contract (sync.contract) against the Worktile emulator, in both worlds: task
writes on (the undocumented endpoints the emulator can serve, docs/worktile.md §10) and off
(the documented API: a task can be created but not changed), with the marker in the description
or also in a custom text property."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from plugins.worktile.testing import emulator_connector
from sync.connectors import RequirementChange
from sync.contract import TrackerContract
from sync.errors import ItemError


@dataclass(frozen=True)
class World:
    emulator: dict  # the emulator's config
    settings: dict  # the connector instance's settings
    writes: bool  # whether writes after creation work in this world


WORLDS = {
    "writes-on": World({"task_writes": "on"}, {"task_writes": True}, True),
    "writes-on-property": World({"task_writes": "on"},
                                {"task_writes": True, "marker_property": "crm_deal"}, True),
    "writes-off": World({}, {}, False),
    # configured on, but the API answers 404 (the default) or 405: proven off, reported once
    "writes-refused-404": World({}, {"task_writes": True}, False),
    "writes-refused-405": World({"writes_off_status": 405},
                                {"task_writes": True, "marker_property": "crm_deal"}, False),
}


@pytest.fixture(params=list(WORLDS))
def world(request):
    return WORLDS[request.param]


@pytest.fixture
def tracker(worktile_server, world):
    worktile_server.reset()
    worktile_server.config.update(world.emulator)
    connector = emulator_connector(worktile_server, **world.settings)
    yield connector
    connector.close()


@pytest.fixture
def missing_req_id():
    return "0123456789abcdef01234567"  # 24-hex, the shape of a task id


NO_WRITES = ("Worktile's documented API has no endpoint to change a task after creation "
             "(docs/worktile.md §10), so in this world the change is a manual update; "
             "test_changes_after_creation_are_refused_cleanly covers what happens instead")


class TestWorktileTracker(TrackerContract):
    def test_update_priority_and_description(self, tracker, world):
        if not world.writes:
            pytest.skip(NO_WRITES)
        super().test_update_priority_and_description(tracker)

    def test_status_change_reaches_a_listed_state_or_reports_transition(self, tracker, world):
        if not world.writes:
            pytest.skip(NO_WRITES)
        super().test_status_change_reaches_a_listed_state_or_reports_transition(tracker)

    def test_changes_after_creation_are_refused_cleanly(self, tracker, world, worktile_server):
        """What the engine relies on instead: ``can_write`` says no, so it lists a manual
        update; an update that is tried anyway changes nothing and is not retried."""
        if world.writes:
            pytest.skip("writes work in this world: the contract's update tests cover them")
        created = tracker.create(self._new(tracker, "d5"))
        assert not any(tracker.can_write(what) for what in ("status", "priority",
                                                            "description"))
        before = worktile_server.task(created.id)
        with pytest.raises(ItemError) as refused:
            tracker.update(created.id, RequirementChange(fields={"priority": "最高"}))
        assert not refused.value.retryable and "manual = true" in refused.value.hint
        assert worktile_server.task(created.id) == before
        if world.settings.get("task_writes"):  # proven off by the API, and said so once each
            assert len(tracker.write_notes) == 2
