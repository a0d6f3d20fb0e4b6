"""The planners with no state store and no HTTP: a view in, the exact list of actions out."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sync.connectors import Deal, Requirement, make_marker
from sync.engine.actions import (AgreeBase, CreateRequirement, LinkRequirement, OrphanLink,
                                 RecordConflict, ReportProblem, UpdateDeal, UpdateRequirement)
from sync.engine.grammar import KeyPattern
from sync.engine.planners import (PlanContext, desired_block, plan_fields, plan_links,
                                  touched_requirements, wanted_keys)
from sync.engine.view import View
from sync.mapping import load_mapping
from sync.state import Base, Link

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
MAPPING = load_mapping(str(Path(__file__).parent / "data" / "memory-mapping.toml"))
CTX = PlanContext("p", "rd", MAPPING, KeyPattern.for_prefix("MEM"))


def deal(deal_id: str, request: str, minutes: int = 0, **fields: str) -> Deal:
    return Deal(deal_id, T0 + timedelta(minutes=minutes),
                {"request": request, "pipeline": "sales", **fields}, name=f"Deal {deal_id}")


def req(req_id: str, key: str, minutes: int = 0, created: int = 0, **fields: str) -> Requirement:
    return Requirement(req_id, key, T0 + timedelta(minutes=minutes), f"Title {key}", "",
                       {"status": "Open", "priority": "Medium", **fields},
                       url=f"memory://items/{key}", created_at=T0 + timedelta(minutes=created))


def link(deal_id: str, r: Requirement, seq: int, origin: str = "named") -> Link:
    return Link("p", deal_id, r.id, r.key, r.url, r.title, origin, T0.isoformat(), None, seq,
                r.created_at.isoformat())


# -- phase one ------------------------------------------------------------------------------------
def test_links_creates_and_problems_from_requests():
    r1 = req("r1", "MEM-1")
    view = View("p", deals={d.id: d for d in [
        deal("d1", "MEM-1\nNeeds SSO for the EU team"), deal("d2", "Dark mode\nat night"),
        deal("d3", "dark   MODE"), deal("d4", "Same as MEM-9, for mobile"),
        deal("d5", "Audit log"), deal("d6", "MEM-1", pipeline="other")]})
    assert wanted_keys(view, CTX) == ["MEM-1", "MEM-9"]
    view.keys = {"MEM-1": r1, "MEM-9": None}
    actions = plan_links(view, CTX)
    creates = [a for a in actions if isinstance(a, CreateRequirement)]
    assert [(c.deal_ids, c.title, c.shared_title) for c in creates] == [
        (("d2", "d3"), "Dark mode", "dark mode"), (("d5",), "Audit log", "audit log")]
    assert creates[0].markers == (make_marker("p", "d2"), make_marker("p", "d3"))
    assert creates[0].description.startswith("<p>at night</p>")
    assert actions[2:] == [
        LinkRequirement("d1", "Deal d1", "r1", "MEM-1", r1.url, r1.title,
                        r1.created_at.isoformat(), "named"),
        ReportProblem("missing_key", "d4", "", "deal d4 (Deal d4) names MEM-9, which does not "
                      "exist in 'rd'", "fix the key in the deal's request; it is retried on its "
                      "own, and never turned into a new requirement", True, "MEM-9")]


def test_a_marker_found_or_an_earlier_identical_request_means_no_create():
    r7, r8 = req("r7", "MEM-7"), req("r8", "MEM-8")
    view = View("p", deals={d.id: d for d in [deal("d1", "Dark mode"), deal("d2", "Audit log"),
                                              deal("d9", "anything")]},
                links=[link("d9", r7, 1, "created")], shared={"dark mode": "r7"},
                markers={make_marker("p", "d2"): r8})
    assert plan_links(view, CTX) == [
        LinkRequirement("d1", "Deal d1", "r7", "MEM-7", r7.url, r7.title,
                        r7.created_at.isoformat(), "same_request", "dark mode"),
        LinkRequirement("d2", "Deal d2", "r8", "MEM-8", r8.url, r8.title,
                        r8.created_at.isoformat(), "marker", "audit log")]


def test_many_deals_naming_few_keys_need_one_look_up_per_key():
    view = View("p", deals={f"d{n}": deal(f"d{n}", f"MEM-{n % 10 + 1}, please")
                            for n in range(12_000)})
    assert sorted(wanted_keys(view, CTX)) == sorted(f"MEM-{n}" for n in range(1, 11))


# -- phase two -------------------------------------------------------------------------------------
def linked_view(d: Deal, r: Requirement, status=("open", "Open"),
                priority=("medium", "Medium")) -> View:
    """One deal linked to one requirement, both last agreed on ``status`` and ``priority``,
    with the requirement's block and the deal's link fields up to date."""
    links = [link(d.id, r, 1)]
    view = View("p", links=links, deals={d.id: d}, reqs={r.id: r},
                bases={(d.id, r.id, "status"): Base(*status),
                       (d.id, r.id, "priority"): Base(*priority)})
    view.snapshots = {d.id: CTX.context_of(d)}
    r.description = desired_block(view, CTX, links)
    return view


def agreed_deal(deal_id: str, minutes: int = 0, **fields: str) -> Deal:
    values = {"req_status": "open", "req_priority": "medium", "req_key": "MEM-1",
              "req_url": "memory://items/MEM-1", **fields}
    return deal(deal_id, "MEM-1", minutes, **values)


def test_a_quiet_view_plans_nothing():
    view = linked_view(agreed_deal("d1"), req("r1", "MEM-1"))
    assert touched_requirements(view, CTX) == set()
    assert plan_fields(view, CTX, {"r1"}) == []


def test_a_deal_change_moves_the_requirement():
    view = linked_view(agreed_deal("d1", 5, req_priority="high"), req("r1", "MEM-1"))
    touched = touched_requirements(view, CTX)
    assert touched == {"r1"}
    assert plan_fields(view, CTX, touched) == [
        UpdateRequirement("r1", "MEM-1", (("priority", "High"),), None,
                          ("priority Medium -> High",), (("d1", "r1", "priority", "high", "High"),))]


def test_a_tracker_change_moves_the_deal_after_nothing_else():
    view = linked_view(agreed_deal("d1"), req("r1", "MEM-1", 5, status="Planned"))
    assert plan_fields(view, CTX, touched_requirements(view, CTX)) == [
        UpdateDeal("d1", (("req_status", "planned"),), ("req_status open -> planned",),
                   (("d1", "r1", "status", "planned", "Planned"),), ())]


def test_both_sides_changed_the_policy_decides_and_the_conflict_is_recorded():
    # priority's policy is "newest": the deal changed at minute 9, the requirement at 5
    view = linked_view(agreed_deal("d1", 9, req_priority="low"),
                       req("r1", "MEM-1", 5, priority="Highest"))
    assert plan_fields(view, CTX, {"r1"}) == [
        RecordConflict("r1", "MEM-1", "priority", ("d1",), ("low",), "Highest", "newest", "Low",
                       None),
        UpdateRequirement("r1", "MEM-1", (("priority", "Low"),), None,
                          ("priority Highest -> Low",), (("d1", "r1", "priority", "low", "Low"),))]


def test_both_sides_changed_to_the_same_value_is_only_recorded():
    view = linked_view(agreed_deal("d1", 9, req_priority="low"),
                       req("r1", "MEM-1", 5, priority="Low"))
    assert plan_fields(view, CTX, {"r1"}) == [AgreeBase(("d1", "r1", "priority", "low", "Low"))]


def test_a_requirement_that_is_another_record_is_orphaned_and_gives_nothing():
    view = linked_view(agreed_deal("d1"), req("r1", "MEM-1"))
    impostor = req("r1", "MEM-1", 60, created=60, status="Done", priority="Highest")
    impostor.title = "Something else entirely"
    view.reqs = {"r1": impostor}
    touched = touched_requirements(view, CTX)
    (orphan,) = plan_fields(view, CTX, touched)
    assert isinstance(orphan, OrphanLink) and (orphan.deal_id, orphan.req_id) == ("d1", "r1")
    assert orphan.reason.startswith("identity changed: MEM-1 is now another record")


@pytest.mark.parametrize("gone", [("crm", "d1"), ("tracker", "r1")])
def test_a_gone_record_orphans_its_link(gone):
    view = linked_view(agreed_deal("d1"), req("r1", "MEM-1"))
    view.gone[gone] = "gone"
    actions = plan_fields(view, CTX, touched_requirements(view, CTX))
    assert actions[0] == OrphanLink("d1", "r1", "MEM-1", "gone")
    assert not any(isinstance(a, UpdateDeal) for a in actions)
