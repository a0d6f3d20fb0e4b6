"""Both services at once (sync/engine/lanes.py, docs/engine.md §9): while the tracker is read or
written, the CRM is read or written too, so one service's rate limit is not idle while the
other's binds.

No timing is asserted. Each test holds one service's request inside the emulator until the
other service receives a request (or 20 s pass): on one thread the held request would wait
for a request that can only come after it, so the hold times out and the test fails; with a
lane the other request arrives while the first is held.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from plugins.hubspot.testing import emulator_connector as hubspot_connector
from plugins.pingcode.testing import emulator_connector
from sync.engine import Options, Pair, run_pair
from sync.errors import AuthError
from sync.mapping import load_mapping

MAPPING = load_mapping("hubspot-pingcode")
HOLD_S = 20.0


@pytest.fixture
def stack(emulators_store):
    return emulators_store


def sync(hubspot, pingcode, store, concurrent: bool = True,
         force: bool = False) -> tuple[dict, Counter, Counter]:
    crm, tracker = hubspot_connector(hubspot), emulator_connector(pingcode, "rd")
    summary = run_pair(Pair("lanes", crm, tracker, MAPPING), store,
                       Options(concurrent=concurrent, force=force))
    return summary, Counter(crm.api_calls()), Counter(tracker.api_calls())


class Hold:
    """Hold the first request of ``held`` matching ``held_call`` until ``other`` receives one
    matching ``other_call``; ``met`` says whether that happened before the hold ran out."""

    def __init__(self, monkeypatch, held, held_call: str, other, other_call: str,
                 seconds: float = HOLD_S):
        self.arrived, self.met, self.holding = threading.Event(), None, True
        held_dispatch, other_dispatch = held.dispatch, other.dispatch

        def hold(req):
            if self.holding and f"{req.method} {req.path}".startswith(held_call):
                self.holding = False
                self.met = self.arrived.wait(seconds)
            return held_dispatch(req)

        def watch(req):
            if f"{req.method} {req.path}".startswith(other_call):
                self.arrived.set()
            return other_dispatch(req)

        monkeypatch.setattr(held, "dispatch", hold)
        monkeypatch.setattr(other, "dispatch", watch)


def backfill(hubspot, pingcode, store, deals: int) -> list[str]:
    """``deals`` deals on SCR-1, and one more on SCR-2; the first sync links them all."""
    seeded = hubspot.seed(deals=[
        {"properties": {"dealname": f"Deal {n}", "dealstage": "qualifiedtobuy",
                        "amount": "1000", "dealsync_request": "SCR-1" if n < deals else "SCR-2"}}
        for n in range(deals + 1)])
    summary, _, _ = sync(hubspot, pingcode, store)
    assert summary["status"] == "ok" and summary["counts"]["linked"] == deals + 1
    return [str(deal_id) for deal_id in seeded["deals"]]


def test_the_crm_is_written_while_the_tracker_is(stack, monkeypatch):
    hubspot, pingcode, store = stack
    ids = backfill(hubspot, pingcode, store, 100)
    pingcode.mutate("SCR-1", priority="最高")  # 100 deals to write: one full HubSpot batch
    hubspot.mutate(ids[-1], {"amount": "5000"})  # SCR-2's deal list changes: one PATCH
    hold = Hold(monkeypatch, pingcode, "PATCH /v1/pjm/work_items/", hubspot,
                "POST /crm/v3/objects/deals/batch/update")
    # (a change to all links but one: past the share guard, which is not what this is about)
    summary, crm, tracker = sync(hubspot, pingcode, store, force=True)
    assert hold.met is True  # the batch reached HubSpot while PingCode's PATCH was held
    assert summary["status"] == "ok" and summary["counts"]["updated_crm"] == 100
    assert summary["counts"]["updated_tracker"] == 1
    # as many calls as on one thread: the batch on the lane was a full one
    assert crm["POST /crm/v3/objects/deals/batch/update"] == 1
    assert tracker["PATCH /v1/pjm/work_items/{id}"] == 1
    assert all(hubspot.deal(i)["properties"]["dealsync_priority"] == "critical"
               for i in ids[:100])
    quiet, _, _ = sync(hubspot, pingcode, store)
    assert quiet["counts"]["updated_crm"] == quiet["counts"]["updated_tracker"] == 0


def test_the_tracker_is_read_while_the_crm_is(stack, monkeypatch):
    hubspot, pingcode, store = stack
    backfill(hubspot, pingcode, store, 3)
    hold = Hold(monkeypatch, hubspot, "POST /crm/v3/objects/deals/search", pingcode,
                "POST /v1/pjm/work_items/search")
    summary, _, _ = sync(hubspot, pingcode, store)
    assert hold.met is True and summary["status"] == "ok"


def test_one_thread_when_asked_sends_in_order(stack, monkeypatch):
    """The same hold without a lane runs out: the check above can fail."""
    hubspot, pingcode, store = stack
    backfill(hubspot, pingcode, store, 3)
    hold = Hold(monkeypatch, hubspot, "POST /crm/v3/objects/deals/search", pingcode,
                "POST /v1/pjm/work_items/search", seconds=0.5)
    summary, _, _ = sync(hubspot, pingcode, store, concurrent=False)
    assert hold.met is False and summary["status"] == "ok"


def test_an_error_on_the_tracker_lane_stops_the_run_and_writes_nothing(stack):
    hubspot, pingcode, store = stack
    ids = backfill(hubspot, pingcode, store, 3)
    hubspot.mutate(ids[0], {"dealsync_priority": "low"})
    before = pingcode.item("SCR-1")["priority"]
    pingcode.fail_next(401, count=50, match=r"POST /v1/pjm/work_items/search")
    with pytest.raises(AuthError, match="^rd: "):
        sync(hubspot, pingcode, store)
    assert pingcode.item("SCR-1")["priority"] == before  # nothing was written
