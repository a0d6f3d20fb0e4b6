"""The engine's two phases on the memory connectors: the request grammar, the guards over the
whole plan, dry runs that show exactly what a real run does, steps that stick, one look-up per
key, and links whose requirement changed identity (docs/engine.md)."""

from __future__ import annotations

import pytest

from sync.context import extract
from sync.errors import SafetyStop


def keys_of(h, deal_id):
    return sorted(l.req_key for l in h.store.links("p") if l.deal_id == deal_id)


# -- the request grammar -----------------------------------------------------------------------------
def test_key_plus_note_links_and_the_note_reaches_the_block(h):
    sso = h.world.add_item("SSO")
    h.deal("d1", f"{sso['key']}\nNeeds Okta and Azure AD.")
    summary = h.sync()
    assert summary["counts"]["created"] == 0 and summary["counts"]["linked"] == 1
    assert len(h.world.items) == 1
    block = extract(h.world.items[sso["id"]]["description"])
    assert "Needs Okta and Azure AD." in block and f"{sso['key']}<br>" not in block


def test_key_inside_a_sentence_links_it(h):
    sso = h.world.add_item("SSO")
    h.deal("d1", f"Same as {sso['key']}, for the mobile app")
    assert h.sync()["counts"]["linked"] == 1
    assert keys_of(h, "d1") == [sso["key"]] and len(h.world.items) == 1


def test_two_keys_link_both_and_the_first_is_mirrored(h):
    a, b = h.world.add_item("A", status="Planned"), h.world.add_item("B")
    h.deal("d1", f"{a['key']} and {b['key']}")
    h.sync()
    assert keys_of(h, "d1") == sorted([a["key"], b["key"]])
    assert h.world.deals["d1"]["fields"]["req_status"] == "planned"
    assert h.world.deals["d1"]["fields"]["req_key"] == f"{a['key']}; {b['key']}"


def test_an_unknown_key_is_reported_on_the_deal_retried_and_never_created(h):
    h.deal("d1", "Like MEM-42 please")
    summary = h.sync()
    assert summary["status"] == "partial" and len(h.world.items) == 0
    (failure,) = h.store.failures("p")
    assert failure["deal_id"] == "d1" and "MEM-42" in failure["error"]
    assert h.sync(retry_all=True)["counts"]["failures"] == 1  # still missing: still reported
    assert len(h.store.failures("p")) == 1 and len(h.world.items) == 0
    real = h.world.add_item("The real one")
    h.world.edit_deal("d1", request=f"Like {real['key']} please")
    assert h.sync(retry_all=True)["counts"]["linked"] == 1
    assert h.store.failures("p") == []


def test_a_token_that_is_not_a_project_key_is_text(h):
    h.deal("d1", "ISO-9001 certified hosting\nfor the audit")
    assert h.sync()["counts"]["created"] == 1
    (item,) = h.world.items.values()
    assert item["title"] == "ISO-9001 certified hosting"


def test_identical_new_requests_share_one_requirement_in_one_run_and_later(h):
    h.deal("d1", "SSO with Okta", amount="100")
    h.deal("d2", "sso with  OKTA\nfor 300 seats", amount="200")
    h.deal("d3", "SSO with Okta ", amount="300")
    first = h.sync()
    assert first["counts"]["created"] == 1 and first["counts"]["joined"] == 2
    h.deal("d4", "Sso With Okta", amount="400")
    second = h.sync()
    assert second["counts"]["created"] == 0 and second["counts"]["joined"] == 1
    (item,) = h.world.items.values()
    assert {l.deal_id for l in h.store.links("p") if l.req_id == item["id"]} == \
        {"d1", "d2", "d3", "d4"}
    block = extract(item["description"])
    assert all(f"dealsync:p:{d}" in block for d in ("d1", "d2", "d3", "d4"))
    assert "for 300 seats" in block
    assert {h.world.deals[d]["fields"]["req_key"] for d in ("d1", "d2", "d3", "d4")} == \
        {item["key"]}


# -- guards over the whole plan ------------------------------------------------------------------------
def test_max_creates_stops_before_anything_is_created(h):
    for n in range(4):
        h.deal(f"d{n}", f"Feature {n}")
    pair = h.pair()
    pair.max_creates = 3
    from sync.engine import Options, run_pair

    with pytest.raises(SafetyStop) as err:
        run_pair(pair, h.store, Options())
    assert "would create 4 requirements" in err.value.message
    assert "max_creates = 3" in err.value.message and "first run" in err.value.message
    assert "--force" in err.value.hint
    assert h.world.items == {} and h.store.links("p") == [] and h.store.intents("p") == []
    assert run_pair(pair, h.store, Options(force=True))["counts"]["created"] == 4


# -- a dry run shows exactly what a real run does ------------------------------------------------------
def test_dry_run_lists_exactly_the_actions_the_real_run_performs(h):
    h.set_policy("priority", "ask")
    for n in range(3):
        h.deal(f"d{n}", f"Feature {n}")
    h.sync()
    key0 = h.item_for("d0")["key"]
    h.world.edit_item(h.item_for("d0")["id"], status="Planned")       # tracker -> deals
    h.world.edit_deal("d1", req_priority="high")                        # deal -> tracker
    h.world.edit_item(h.item_for("d2")["id"], priority="Low")           # a conflict (ask)
    h.world.edit_deal("d2", req_priority="highest")
    h.deal("d3", f"{key0}, for the EU")                                 # a new link
    h.deal("d4", "MEM-99")                                              # a missing key
    before = h.snapshot()
    planned = h.sync(dry_run=True)
    assert h.snapshot() == before
    performed = h.sync(record_actions=True)
    assert planned["actions"] == performed["actions"]
    kinds = [a["action"] for a in performed["actions"]]
    for kind in ("link_requirement", "report_problem", "record_conflict",
                 "update_requirement", "update_deal"):
        assert kind in kinds
    # what waits for a person is shown again; nothing is written again
    again = [a["action"] for a in h.sync(dry_run=True)["actions"]]
    assert sorted(again) == ["record_conflict", "report_problem"]


def test_dry_run_says_what_waits_for_a_create(h):
    h.deal("d1", "Brand new")
    plan = h.sync(dry_run=True)["plan"]
    assert plan[0] == "create requirement 'Brand new' for deal d1 (Deal d1)"
    assert plan[1].startswith("phase two waits for 'Brand new' to be created")
    performed = h.sync(record_actions=True)["actions"]
    assert performed[0]["action"] == "create_requirement"
    assert [a["action"] for a in performed[1:]] == ["update_deal"]


# -- steps that stick -------------------------------------------------------------------------------
def test_a_run_killed_between_crm_batches_keeps_what_it_wrote(h, monkeypatch):
    sso = h.world.add_item("SSO", status="Planned")
    for n in range(250):
        h.deal(f"d{n:03d}", sso["key"])
    real_update = h.crm.update
    batches: list[int] = []

    def dies_on_the_second_batch(updates):
        if len(batches) == 1:
            raise KeyboardInterrupt("killed")
        batches.append(len(updates))
        return real_update(updates)

    monkeypatch.setattr(h.crm, "update", dies_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        h.sync()
    assert batches == [100]
    written = [d for d in h.world.deals.values() if d["fields"].get("req_status") == "planned"]
    assert len(written) == 100
    monkeypatch.undo()
    rerun_updates: list[str] = []

    def spy(updates):
        rerun_updates.extend(deal_id for deal_id, _ in updates)
        return real_update(updates)

    monkeypatch.setattr(h.crm, "update", spy)
    summary = h.sync()
    assert summary["counts"]["updated_crm"] == 150 and len(rerun_updates) == 150
    assert not set(rerun_updates) & {d["id"] for d in written}
    assert all(d["fields"]["req_status"] == "planned" for d in h.world.deals.values())


# -- one look-up per key ----------------------------------------------------------------------------
def test_many_deals_naming_few_keys_cost_one_look_up_per_run(h):
    items = [h.world.add_item(f"Feature {n}") for n in range(10)]
    for n in range(600):
        h.deal(f"d{n:03d}", f"{items[n % 10]['key']} for this customer")
    summary = h.sync()
    assert summary["counts"]["linked"] == 600
    calls = h.tracker.api_calls()
    # one batch look-up for the 10 keys (the memory tracker answers many keys per call); the
    # 10 requirements were found by key, so they need no fetch before their block is written
    assert calls == {"find items by key": 1, "search items": 1, "update item": 10}
    assert h.crm.api_calls() == {"search deals": 12, "batch read deals": 6,
                                 "batch update deals": 6}


def test_a_tracker_without_batch_look_up_asks_each_distinct_key_once(h, monkeypatch):
    from sync.connectors import TrackerConnector

    items = [h.world.add_item(f"Feature {n}") for n in range(3)]
    for n in range(30):
        h.deal(f"d{n:02d}", items[n % 3]["key"])
    asked: list[str] = []
    real = h.tracker.find_by_keys

    def one_at_a_time(keys):
        asked.extend(keys)
        return TrackerConnector.find_by_keys(h.tracker, keys)

    monkeypatch.setattr(h.tracker, "find_by_key", lambda key: real([key]).get(key))
    monkeypatch.setattr(h.tracker, "find_by_keys", one_at_a_time)
    h.sync()
    assert sorted(asked) == sorted(i["key"] for i in items)


# -- identity -------------------------------------------------------------------------------------
def test_a_reset_tracker_reusing_ids_orphans_links_and_copies_nothing(h):
    for n in range(3):
        h.deal(f"d{n}", f"Feature {n}")
    h.sync()
    old_keys = {d: h.world.deals[d]["fields"]["req_key"] for d in ("d0", "d1", "d2")}
    # The tracker is reset: its items are gone and new, unrelated ones take the same ids/keys.
    h.world.items.clear()
    h.world.next_item = 1
    for title in ("Unrelated A", "Unrelated B", "Unrelated C"):
        item = h.world.add_item(title, status="Done", priority="Highest")
        item["created_at"] = "2099-01-01T00:00:00+00:00"  # a reset happens later than a create
    summary = h.sync()
    assert summary["counts"]["orphaned"] == 3
    links = h.store.links("p")
    assert all(l.orphaned.startswith("identity changed: ") for l in links)
    for deal_id, key in old_keys.items():
        fields = h.world.deals[deal_id]["fields"]
        assert fields["req_status"] == "open" and fields["req_priority"] == "medium"
        assert fields["req_key"] == key
    for item in h.world.items.values():
        assert item["description"] == "" and item["status"] == "Done"
    quiet = h.sync()
    assert quiet["counts"]["orphaned"] == 0 and quiet["counts"]["created"] == 0
    assert quiet["counts"]["updated_tracker"] == quiet["counts"]["updated_crm"] == 0


# -- trackers that cannot write everything ---------------------------------------------------------
def test_a_change_the_tracker_cannot_write_is_listed_until_it_shows(h):
    h.deal("d1", "Offline mode")
    h.sync()
    item = h.item_for("d1")
    h.world.unwritable |= {"priority", "description"}
    h.world.edit_deal("d1", req_priority="highest")
    for _ in range(3):  # listed every run, never sent, never lost
        summary = h.sync()
        assert summary["status"] == "ok" and summary["counts"]["manual_updates"] == 1
        assert summary["manual_updates"][0].startswith(
            f"list for a person: set {item['key']} priority from Medium to Highest")
        (listed,) = h.store.manual_updates("p")
        assert listed["deal_ids"] == ["d1"] and listed["value"] == "Highest"
        assert h.world.deals["d1"]["fields"]["req_priority"] == "highest"
        assert h.item_for("d1")["priority"] == "Medium"
    h.world.edit_item(item["id"], priority="Highest")  # a person makes the change
    summary = h.sync()
    assert summary["counts"]["manual_updates"] == 0 and h.store.manual_updates("p") == []
    quiet = h.sync()
    assert quiet["counts"]["updated_crm"] == quiet["counts"]["updated_tracker"] == 0


def test_tracker_changes_still_reach_the_deals_and_the_block_is_left_as_created(h):
    h.deal("d1", "Offline mode", amount="100")
    h.sync()
    item = h.item_for("d1")
    created_description = item["description"]
    h.world.unwritable |= {"status", "priority", "description"}
    h.world.edit_item(item["id"], status="Planned")
    h.world.edit_deal("d1", amount="999999")
    summary = h.sync()
    assert summary["counts"]["updated_crm"] == 1 and summary["counts"]["failures"] == 0
    assert h.world.deals["d1"]["fields"]["req_status"] == "planned"
    assert h.item_for("d1")["description"] == created_description


def test_a_manual_update_can_leave_a_note_on_the_deal(h):
    import dataclasses

    h.mapping = dataclasses.replace(h.mapping, note_manual_updates=True)
    h.deal("d1", "Offline mode")
    h.sync()
    h.world.unwritable.add("priority")
    h.world.edit_deal("d1", req_priority="low")
    h.sync()
    h.sync()
    notes = h.world.deals["d1"].get("notes", [])
    assert len(notes) == 1 and "priority low waits for a manual update" in notes[0]


# -- files -----------------------------------------------------------------------------------------
def test_the_state_store_and_its_folder_are_private(tmp_path):
    import os
    import stat

    from sync.state import StateStore, now_utc

    store = StateStore(tmp_path / "home" / "state.db")
    store.lock("p")
    store.set_cursor("p", "crm", now_utc())
    for path in ("home/state.db", "home/state.db-wal", "home/state.db-shm"):
        assert stat.S_IMODE((tmp_path / path).stat().st_mode) == 0o600, path
    for folder in ("home", "home/locks"):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o700, folder
    store.close()
    os.chmod(tmp_path / "home" / "state.db", 0o644)  # made by an older dealsync
    StateStore(tmp_path / "home" / "state.db").close()
    assert stat.S_IMODE((tmp_path / "home" / "state.db").stat().st_mode) == 0o600


def test_a_huge_request_makes_a_bounded_description(h):
    from sync.context import REQUEST_CELL_MAX
    from sync.engine.planners import REQUEST_BODY_MAX

    body = "\n\n".join(f"Paragraph {n}: " + "x" * 990 for n in range(100))  # ~100 KB
    h.deal("d1", "Bulk import\n" + body)
    h.sync()
    description = h.item_for("d1")["description"]
    assert len(description) < REQUEST_BODY_MAX + REQUEST_CELL_MAX + 3000
    assert description.count("(cut: the full text is on the deal)") == 2
    assert "Paragraph 0: " in description and "Paragraph 99: " not in description


def test_marker_text_people_wrote_is_never_taken_for_the_block(h):
    from sync.context import BEGIN, END

    h.deal("d1", "Feature", amount="100")
    h.sync()
    item = h.item_for("d1")
    copied = f"{BEGIN}<p>a block pasted from another item</p>{END}"
    stray = f"PM: the list below is kept by dealsync ({BEGIN}) do not edit\n"
    h.world.edit_item(item["id"], description=copied + stray + item["description"])
    h.world.edit_deal("d1", amount="5000")
    h.sync()
    description = h.item_for("d1")["description"]
    assert description.startswith(copied + stray)
    assert "5,000" in description[len(copied + stray):]
    assert h.sync()["counts"]["updated_tracker"] == 0


def test_a_failure_a_later_run_fixed_leaves_the_queue_before_its_retry_time(h):
    h.deal("d1", "Like MEM-42 please")
    h.sync()
    assert len(h.store.failures("p")) == 1  # the key names nothing; retried in 5 minutes
    real = h.world.add_item("The real one")
    h.world.edit_deal("d1", request=f"Like {real['key']} please")
    assert h.sync()["counts"]["linked"] == 1  # not a retry: the deal changed
    assert h.store.failures("p") == []


def test_a_conflict_waiting_for_a_manual_update_is_recorded_once(h):
    h.deal("d1", "Offline mode")
    h.sync()
    item = h.item_for("d1")
    h.world.unwritable.add("priority")
    h.world.edit_item(item["id"], priority="Low")
    h.world.edit_deal("d1", req_priority="highest")  # newest: the deal wins, Worktile-like
    for _ in range(3):
        h.sync()
    assert len(h.store.conflicts("p")) == 1 and len(h.store.manual_updates("p")) == 1


def test_a_requirement_update_that_fails_holds_back_only_the_values_waiting_for_it(h):
    h.deal("d1", "Offline mode")
    h.sync()
    item = h.item_for("d1")
    h.world.edit_item(item["id"], status="Done")  # nothing leaves Done in this workflow
    h.sync()
    h.world.edit_deal("d1", req_status="open")  # impossible: queued, the deal keeps it
    h.deal("d2", item["key"])  # a new deal joins meanwhile
    summary = h.sync()
    assert summary["counts"]["failures"] == 1
    d2 = h.world.deals["d2"]["fields"]
    assert d2["req_key"] == item["key"] and d2["req_status"] == "done"
    assert h.world.deals["d1"]["fields"]["req_status"] == "open"
    assert h.item_for("d1")["status"] == "Done"


def test_amounts_in_different_currencies_are_never_added_together():
    from sync.context import pipeline_text

    deals = [{"id": "1", "amount": 120000, "currency": "USD", "is_open": True},
             {"id": "2", "amount": 800000, "currency": "CNY", "is_open": True},
             {"id": "3", "amount": 5000, "currency": "USD", "is_open": True},
             {"id": "4", "amount": 999, "currency": "EUR", "is_open": False}]
    assert pipeline_text(deals) == "800,000 CNY + 125,000 USD"
    assert pipeline_text([{"id": "5", "amount": 10, "is_open": True}]) == "10"
    assert pipeline_text([]) == "0"


def test_a_requirement_moved_to_another_project_orphans_its_links(h):
    h.deal("d1", "Offline mode")
    h.sync()
    item = h.item_for("d1")
    h.world.edit_item(item["id"], key="OPS-7", priority="Highest")  # moved by a person
    moved = dict(h.world.items[item["id"]])
    summary = h.sync()
    assert summary["counts"]["orphaned"] == 1
    (link,) = h.store.links("p")
    assert "moved out of project MEM (it is now OPS-7)" in link.orphaned
    assert h.world.items[item["id"]] == moved  # no longer ours to touch
    assert h.world.deals["d1"]["fields"]["req_priority"] == "medium"  # nothing copied
    assert h.sync()["counts"]["orphaned"] == 0
