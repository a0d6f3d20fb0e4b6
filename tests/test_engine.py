"""Engine scenarios on the memory connectors (DESIGN.md, "The sync algorithm")."""

from __future__ import annotations

import pytest

from sync.context import extract
from sync.errors import SafetyStop
from sync.state import StateStore


def test_new_request_creates_one_requirement(h):
    h.deal("d1", "SSO login\nWe need SAML with Okta.", name="Acme renewal", company="Acme",
           amount="50000")
    summary = h.sync()
    assert summary["counts"]["created"] == 1
    assert len(h.world.items) == 1
    item = h.item_for("d1")
    assert item["title"] == "SSO login"
    assert "We need SAML with Okta." in item["description"]
    assert "Acme renewal" in extract(item["description"])
    assert "dealsync:p:d1" in item["description"]
    deal = h.world.deals["d1"]["fields"]
    assert deal["req_key"] == item["key"]
    assert deal["req_status"] == "open" and deal["req_priority"] == "medium"


def test_request_naming_existing_key_links_it(h):
    existing = h.world.add_item("Audit log", "<p>PM notes</p>", status="Planned")
    h.deal("d1", existing["key"])
    summary = h.sync()
    assert summary["counts"] == {**summary["counts"], "created": 0, "linked": 1}
    assert len(h.world.items) == 1
    assert h.world.deals["d1"]["fields"]["req_status"] == "planned"
    assert h.world.items[existing["id"]]["description"].startswith("<p>PM notes</p>")


def test_second_run_plans_and_writes_nothing(h):
    for n in range(3):
        h.deal(f"d{n}", f"Feature {n}")
    h.sync()
    before = h.snapshot()
    summary = h.sync()
    counts = summary["counts"]
    assert counts["created"] == counts["updated_crm"] == counts["updated_tracker"] == 0
    assert h.snapshot() == before
    assert h.sync(dry_run=True)["plan"] == []


@pytest.mark.parametrize("side", ["crm", "tracker"])
def test_change_on_either_side_crosses_over(h, side):
    h.deal("d1", "Export to Excel")
    h.sync()
    item = h.item_for("d1")
    if side == "tracker":
        h.world.edit_item(item["id"], priority="Highest")
    else:
        h.world.edit_deal("d1", req_priority="highest")
    summary = h.sync()
    assert h.world.items[item["id"]]["priority"] == "Highest"
    assert h.world.deals["d1"]["fields"]["req_priority"] == "highest"
    assert summary["counts"]["updated_" + ("crm" if side == "tracker" else "tracker")] == 1
    assert summary["counts"]["conflicts"] == 0


@pytest.mark.parametrize("policy,expected", [("crm", "low"), ("tracker", "highest"),
                                             ("newest", "low"), ("ask", None)])
def test_both_sides_changed_resolved_by_policy_and_recorded(h, policy, expected):
    h.set_policy("priority", policy)
    h.deal("d1", "Dark mode")
    h.sync()
    item = h.item_for("d1")
    h.world.edit_item(item["id"], priority="Highest")
    h.world.edit_deal("d1", req_priority="low")  # the deal changed last
    summary = h.sync()
    conflicts = h.store.conflicts("p")
    assert len(conflicts) == 1
    conflict = conflicts[0]
    assert conflict["crm_values"] == ["low"] and conflict["tracker_value"] == "Highest"
    assert conflict["policy"] == policy
    deal_value = h.world.deals["d1"]["fields"]["req_priority"]
    item_value = h.world.items[item["id"]]["priority"]
    if expected is None:  # ask: both sides left alone, the conflict waits for a person
        assert (deal_value, item_value) == ("low", "Highest")
        assert conflict["status"] == "open" and summary["counts"]["conflicts_queued"] == 1
        h.store.resolve_conflict(conflict["id"], "Low")
        h.sync()
        assert h.world.items[item["id"]]["priority"] == "Low"
        assert h.store.conflicts("p")[0]["status"] == "applied"
    else:
        assert deal_value == expected
        assert item_value == expected.capitalize()
        assert conflict["status"] == "applied"
    second = h.sync()
    assert second["counts"]["updated_crm"] == second["counts"]["updated_tracker"] == 0


def test_priority_change_on_one_of_three_deals_reaches_all(h):
    h.deal("d1", "Offline mode")
    h.sync()
    key = h.item_for("d1")["key"]
    h.deal("d2", key)
    h.deal("d3", key)
    h.sync()
    h.world.edit_deal("d2", req_priority="high")
    h.sync()
    assert h.item_for("d1")["priority"] == "High"
    assert {h.world.deals[d]["fields"]["req_priority"] for d in ("d1", "d2", "d3")} == {"high"}
    block = extract(h.item_for("d1")["description"])
    assert all(f"Deal {d}" in block for d in ("d1", "d2", "d3"))


def test_two_deals_changing_same_field_differently_is_a_conflict(h):
    h.deal("d1", "Webhooks")
    h.sync()
    key = h.item_for("d1")["key"]
    h.deal("d2", key)
    h.sync()
    h.world.edit_deal("d1", req_priority="low")
    h.world.edit_deal("d2", req_priority="highest")
    h.sync()
    (conflict,) = h.store.conflicts("p")
    assert sorted(conflict["crm_values"]) == ["highest", "low"]
    assert h.item_for("d1")["priority"] == "Highest"  # newest: d2 changed last
    assert {h.world.deals[d]["fields"]["req_priority"] for d in ("d1", "d2")} == {"highest"}


def test_crash_after_create_before_state_write_recovers_by_marker(h, monkeypatch):
    h.deal("d1", "Audit trail")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(h.store, "add_links", crash)
    with pytest.raises(KeyboardInterrupt):
        h.sync()
    assert len(h.world.items) == 1 and h.store.links("p") == []
    monkeypatch.undo()
    summary = h.sync()
    assert len(h.world.items) == 1
    assert summary["counts"]["relinked"] == 1 and summary["counts"]["created"] == 0
    assert h.store.intents("p") == []


def test_each_create_is_sent_with_its_intents_stored_one_commit_each(h, monkeypatch):
    """A create is sent only once its deals' intents are stored; the next create's intents
    ride in the previous create's transaction (docs/engine.md §2, step 8), so creates cost one
    commit each and a run that stops leaves at most the next create's intents behind."""
    for n in range(4):
        h.deal(f"d{n}", f"Feature {n}")
    seen = []
    create, add_intents = h.tracker.create, h.store.add_intents

    def watched_create(new):
        seen.append((new.marker, sorted(i["marker"] for i in h.store.intents("p"))))
        return create(new)

    own_transaction = []

    def watched_intents(*args, **kwargs):
        own_transaction.append(not h.store._in_transaction)
        return add_intents(*args, **kwargs)

    monkeypatch.setattr(h.tracker, "create", watched_create)
    monkeypatch.setattr(h.store, "add_intents", watched_intents)
    h.sync()
    assert seen == [(f"dealsync:p:d{n}", [f"dealsync:p:d{n}"]) for n in range(4)]
    assert own_transaction == [True, False, False, False]
    assert h.store.intents("p") == []


def test_a_failed_create_stores_the_next_ones_intents_itself(h, monkeypatch):
    for n in range(3):
        h.deal(f"d{n}", f"Feature {n}")
    h.world.failing_ids.add("dealsync:p:d1")
    seen = []
    create = h.tracker.create

    def watched_create(new):
        seen.append((new.marker, sorted(i["marker"] for i in h.store.intents("p"))))
        return create(new)

    monkeypatch.setattr(h.tracker, "create", watched_create)
    h.sync()
    assert seen == [("dealsync:p:d0", ["dealsync:p:d0"]),
                    ("dealsync:p:d1", ["dealsync:p:d1"]),
                    ("dealsync:p:d2", ["dealsync:p:d1", "dealsync:p:d2"])]
    # the failed create's intent stays: the next run looks for its marker first
    assert [i["marker"] for i in h.store.intents("p")] == ["dealsync:p:d1"]


def test_deals_naming_a_key_created_in_the_same_run_are_linked_in_one_step(h, monkeypatch):
    h.deal("d0", "Audit trail")  # the tracker will call it MEM-1
    for n in range(1, 6):
        h.deal(f"d{n}", "MEM-1, please")
    batches = []
    add_links = h.store.add_links

    def counted(pair, rows):
        batches.append(sorted(row[0] for row in rows))
        return add_links(pair, rows)

    monkeypatch.setattr(h.store, "add_links", counted)
    summary = h.sync()
    assert summary["counts"]["created"] == 1 and summary["counts"]["linked"] == 5
    assert batches == [["d0"], ["d1", "d2", "d3", "d4", "d5"]]
    assert {link.deal_id for link in h.store.links("p")} == {f"d{n}" for n in range(6)}


def test_wiped_state_store_relinks_without_duplicates(h, tmp_path):
    for n in range(4):
        h.deal(f"d{n}", f"Feature {n}")
    h.sync()
    key = h.item_for("d0")["key"]
    h.deal("d9", key)
    h.sync()
    h.store.close()
    h.store_path.unlink()
    h.store = StateStore(tmp_path / "fresh.db")
    summary = h.sync()
    assert len(h.world.items) == 4
    assert summary["counts"]["relinked"] == 4 and summary["counts"]["created"] == 0
    assert len(h.store.links("p")) == 5
    assert h.sync()["counts"]["updated_tracker"] == 0


@pytest.mark.parametrize("side", ["crm", "tracker"])
def test_side_returning_nothing_stops_the_run_without_force(h, side):
    for n in range(3):
        h.deal(f"d{n}", f"Feature {n}")
    h.sync()
    h.world.empty.add(side)
    before = h.snapshot()
    with pytest.raises(SafetyStop) as err:
        h.sync()
    assert "--force" in err.value.hint
    assert h.snapshot() == before
    assert h.store.runs("p", 1)[0]["status"] == "stopped"
    h.sync(force=True)  # an admin who checked may go on


def test_mass_change_guard(h):
    h.guard_min_links = 4
    for n in range(6):
        h.deal(f"d{n}", f"Feature {n}")
    h.sync()
    for item in list(h.world.items.values()):
        h.world.edit_item(item["id"], priority="Lowest")
    with pytest.raises(SafetyStop, match="6 of 6 links"):
        h.sync()
    assert h.sync(force=True)["counts"]["updated_crm"] == 6


def test_dry_run_writes_nothing_anywhere(h):
    existing = h.world.add_item("Audit log")
    h.deal("d1", "New thing")
    h.deal("d2", existing["key"])
    before = h.snapshot()
    summary = h.sync(dry_run=True)
    assert h.snapshot() == before
    assert h.store.links("p") == [] and h.store.cursor("p", "crm") is None
    assert h.store.bases("p") == {} and h.store.failures("p") == []
    assert any("create requirement 'New thing'" in line for line in summary["plan"])
    assert any("link deal d2" in line for line in summary["plan"])


def test_failing_item_is_queued_rest_applied_and_retry_finishes(h):
    for n in range(3):
        h.deal(f"d{n}", f"Feature {n}")
    h.world.failing_ids.add("dealsync:p:d1")  # the tracker refuses to create d1's requirement
    summary = h.sync()
    assert summary["status"] == "partial"
    assert summary["counts"]["created"] == 2 and summary["counts"]["failures"] == 1
    (failure,) = h.store.failures("p")
    assert failure["kind"] == "create" and failure["deal_id"] == "d1"
    h.world.failing_ids.clear()
    summary = h.sync(retry_all=True)
    assert summary["counts"]["created"] == 1
    assert h.store.failures("p") == []
    assert len(h.world.items) == 3


def test_failed_crm_write_is_retried_after_cursor_moved_on(h):
    h.deal("d1", "Feature")
    h.sync()
    item = h.item_for("d1")
    h.world.failing_ids.add("d1")
    h.world.edit_item(item["id"], status="Planned")
    assert h.sync()["counts"]["failures"] == 1
    h.world.failing_ids.clear()
    h.sync(retry_all=True)
    assert h.world.deals["d1"]["fields"]["req_status"] == "planned"
    assert h.store.failures("p") == []


def test_status_walks_the_workflow_and_reports_missing_transition(h):
    h.deal("d1", "Feature")
    h.sync()
    h.world.edit_deal("d1", req_status="in_progress")  # Open -> Planned -> In progress
    h.sync()
    item = h.item_for("d1")
    assert item["status"] == "In progress"
    h.world.edit_deal("d1", req_status="done")
    h.sync()
    h.world.edit_deal("d1", req_status="not_now")  # nothing leaves Done
    summary = h.sync()
    assert summary["counts"]["failures"] == 1
    assert "no transition path" in h.store.failures("p")[0]["error"]
    assert h.item_for("d1")["status"] == "Done"


def test_crm_text_is_escaped_in_the_context_block(h):
    h.deal("d1", "Widget\n<script>alert(1)</script>", name="<b>Evil</b> Corp")
    h.sync()
    description = h.item_for("d1")["description"]
    assert "<script>" not in description and "&lt;script&gt;" in description
    assert "<b>Evil</b>" not in description


def test_people_text_outside_block_survives_context_refresh(h):
    h.deal("d1", "Feature", amount="100")
    h.sync()
    item = h.item_for("d1")
    h.world.edit_item(item["id"], description="PM wrote this.\n" + item["description"])
    h.world.edit_deal("d1", amount="250000")
    h.sync()
    description = h.item_for("d1")["description"]
    assert description.startswith("PM wrote this.\n")
    assert "250,000" in description


def test_cursor_never_passes_run_start_and_advances(h):
    h.deal("d1", "Feature")
    summary = h.sync()
    cursor = h.store.cursor("p", "crm")
    assert cursor is not None and cursor.isoformat() <= summary["started_at"]


def test_newest_policy_picks_the_tracker_when_it_changed_last(h):
    h.deal("d1", "Dark mode")
    h.sync()
    item = h.item_for("d1")
    h.world.edit_deal("d1", req_priority="low")
    h.world.edit_item(item["id"], priority="Highest")  # the PM changed last
    h.sync()
    assert h.world.deals["d1"]["fields"]["req_priority"] == "highest"
    assert h.item_for("d1")["priority"] == "Highest"
    (conflict,) = h.store.conflicts("p")
    assert conflict["outcome"] == "Highest" and conflict["status"] == "applied"


def test_service_error_on_one_item_is_queued_but_an_outage_stops_the_run(h, monkeypatch):
    from sync.errors import RemoteError

    for n in range(5):
        h.deal(f"d{n}", f"Feature {n}")
    real_create = h.tracker.create
    broken = {"dealsync:p:d1"}

    def create(new):
        if new.marker in broken:
            raise RemoteError("HTTP 500 after 5 attempts", status=500)
        return real_create(new)

    monkeypatch.setattr(h.tracker, "create", create)
    summary = h.sync()
    assert summary["counts"]["created"] == 4 and summary["counts"]["failures"] == 1
    assert h.store.failures("p")[0]["deal_id"] == "d1"

    broken.update({f"dealsync:p:d{n}" for n in range(5, 10)})
    for n in range(5, 10):
        h.deal(f"d{n}", f"Feature {n}")
    cursor = h.store.cursor("p", "crm")
    with pytest.raises(RemoteError):
        h.sync()
    assert h.store.cursor("p", "crm") == cursor  # nothing read is skipped next time


def test_dry_run_shows_the_plan_a_guard_would_refuse(h):
    h.guard_min_links = 4
    for n in range(6):
        h.deal(f"d{n}", f"Feature {n}")
    h.sync()
    for item in list(h.world.items.values()):
        h.world.edit_item(item["id"], priority="Lowest")
    plan = h.sync(dry_run=True)["plan"]
    assert sum("req_priority medium -> lowest" in line for line in plan) == 6
    assert plan[-1].startswith("STOP: this run would change or orphan 6 of 6 links")


def test_status_change_leaves_a_note_on_every_deal_when_configured(h):
    import dataclasses

    from sync.errors import ItemError

    h.mapping = dataclasses.replace(h.mapping, note_fields=("status",))
    h.deal("d1", "Feature")
    h.sync()
    key = h.item_for("d1")["key"]
    h.deal("d2", key)
    h.sync()
    h.world.edit_item(h.item_for("d1")["id"], status="Planned")
    summary = h.sync()
    assert summary["counts"]["notes"] == 2
    for deal in ("d1", "d2"):
        assert h.world.deals[deal]["notes"][-1] == \
            f"dealsync: {key} Feature: status is now Planned (planned)"
    real_add_note = h.crm.add_note

    def add_note(deal_id, text):  # a note that fails does not fail the run
        if deal_id == "d1":
            raise ItemError("notes are down")
        return real_add_note(deal_id, text)

    h.crm.add_note = add_note
    h.world.edit_item(h.item_for("d1")["id"], status="Open")
    summary = h.sync()
    assert summary["status"] == "ok" and summary["counts"]["notes"] == 1
    assert h.world.deals["d1"]["fields"]["req_status"] == "open"
    assert h.world.deals["d2"]["notes"][-1].endswith("status is now Open (open)")


def test_a_stale_search_result_never_overwrites_a_newer_deal_edit(h, monkeypatch):
    import copy

    h.deal("d1", "Feature")
    h.sync()
    item = h.item_for("d1")
    stale = copy.deepcopy(h.world.deals["d1"])  # what a lagging search index still shows
    h.world.edit_item(item["id"], priority="Low")
    h.world.edit_deal("d1", req_priority="highest")  # the rep's edit, not yet searchable
    real_iter = h.crm.iter_changed

    def lagging_search(since, until, properties):
        for deal in real_iter(since, until, properties):
            if deal.id == "d1":
                deal.fields = {p: stale["fields"].get(p) for p in properties}
            yield deal

    monkeypatch.setattr(h.crm, "iter_changed", lagging_search)
    h.sync()
    # Planned on the stale copy, the run would have pushed "low" over the rep's "highest";
    # re-read by id, it sees both edits and the priority policy (newest: the rep) decides.
    assert h.world.deals["d1"]["fields"]["req_priority"] == "highest"
    assert h.item_for("d1")["priority"] == "Highest"
    (conflict,) = h.store.conflicts("p")
    assert conflict["crm_values"] == ["highest"] and conflict["tracker_value"] == "Low"


def test_a_pm_edit_landing_after_the_read_is_not_overwritten(h, monkeypatch):
    h.deal("d1", "Feature", amount="100")
    h.sync()
    item = h.item_for("d1")
    h.world.edit_deal("d1", amount="5000")  # the context block will need a rewrite
    real_iter = h.tracker.iter_changed

    def then_pm_edits(since, until):
        yield from real_iter(since, until)
        # after dealsync read it, the PM adds a line above the block
        h.world.edit_item(item["id"], description="PM note\n" + item["description"])

    h.world.edit_item(item["id"], priority="High")  # so the search returns the item
    monkeypatch.setattr(h.tracker, "iter_changed", then_pm_edits)
    h.sync()
    description = h.item_for("d1")["description"]
    assert description.startswith("PM note\n") and "5,000" in description


def test_rotation_finds_a_deleted_deal_and_a_renamed_company(h):
    h.deal("d1", "Feature", company="Acme")
    h.sync()
    key = h.item_for("d1")["key"]
    h.deal("d2", key, company="Globex")
    h.sync()
    item_id = h.item_for("d1")["id"]
    # Neither change touches a modified time, so only the rotating re-read can see them.
    del h.world.deals["d2"]
    h.world.deals["d1"]["company"] = "Acme Holdings"
    summary = h.sync()
    assert summary["counts"]["orphaned"] == 1
    (orphan,) = [l for l in h.store.links("p") if l.orphaned]
    assert orphan.deal_id == "d2" and "no longer exists" in orphan.orphaned
    block = extract(h.world.items[item_id]["description"])
    assert "Deal d2</a> (gone from the CRM)" in block and "Acme Holdings" in block
    assert len(h.world.items) == 1  # never deleted, never recreated
    quiet = h.sync()
    assert quiet["counts"]["updated_tracker"] == quiet["counts"]["orphaned"] == 0


def test_rotation_covers_every_link_over_successive_runs(h):
    for n in range(5):
        h.deal(f"d{n}", f"Feature {n}")
    h.sync()
    for deal in h.world.deals.values():  # long unchanged: no search returns them any more
        deal["updated_at"] = "2001-01-01T00:00:00+00:00"
    h.world.add_deal("unrelated", request="", pipeline="sales")  # the CRM is not silent
    pair = h.pair()
    pair.verify_deals = 2
    seen = []
    real_fetch = h.crm.fetch

    def spy(ids, properties, with_context=True):
        seen.extend(ids)
        return real_fetch(ids, properties, with_context)

    h.crm.fetch = spy
    from sync.engine import Options, run_pair
    for _ in range(3):
        before = len(seen)
        run_pair(pair, h.store, Options())
        assert len(seen) - before == 2
    assert set(seen) == {f"d{n}" for n in range(5)}
