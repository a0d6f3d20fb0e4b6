"""The connector contract: what the engine relies on, checked against any connector.

Like vdirsyncer's StorageTests, these are mix-in classes for pytest (a test-time dependency:
nothing in dealsync imports this module at run time). A connector's test module, built-in or in
a third-party plugin, subclasses one and provides fixtures (on an emulator, or with
``responses``)::

    from sync.contract import TrackerContract

    class TestMyTracker(TrackerContract):
        pass  # with fixtures ``tracker`` and ``missing_req_id`` in scope

``CRMContract`` needs
    ``crm``        a CRMConnector, ready to use;
    ``seed_deal``  a function ``seed_deal(name, **properties) -> deal_id`` that creates a deal
                   the way a person would (through the emulator's back door);
    ``crm_field``  a tuple ``(property, good_value, other_good_value, bad_value)`` naming a
                   writable enumerated deal property dealsync writes;
    ``missing_deal_id`` an id the CRM has never had.

``TrackerContract`` needs
    ``tracker``    a TrackerConnector, ready to use;
    ``missing_req_id`` an id, in the tracker's format, that does not exist.

Tests only use what every connector must support; they assert on behaviour, not on shapes of
any one API.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sync.connectors import NewRequirement, RequirementChange, has_marker, make_marker
from sync.errors import ItemError

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=timezone.utc)


def _aware(value: datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() == timedelta(0)


class CRMContract:
    def test_iter_changed_streams_seeded_deals_with_context(self, crm, seed_deal, crm_field):
        deal_id = seed_deal("Contract Co renewal", amount="1234.5")
        deals = [d for d in crm.iter_changed(None, FAR_FUTURE, [crm_field[0]]) if d.id == deal_id]
        assert deals, "a new deal must be listed when reading from the beginning"
        deal = deals[-1]
        assert _aware(deal.updated_at)
        assert deal.name == "Contract Co renewal"
        assert deal.amount == pytest.approx(1234.5)
        assert crm_field[0] in deal.fields

    def test_iter_changed_respects_since(self, crm, seed_deal, crm_field):
        first = seed_deal("Old deal")
        deal = crm.fetch([first], [crm_field[0]])[first]
        later = deal.updated_at + timedelta(days=3650)
        assert not [d for d in crm.iter_changed(later, FAR_FUTURE, []) if d.id == first]

    def test_fetch_returns_found_and_leaves_out_missing(self, crm, seed_deal, missing_deal_id,
                                                        crm_field):
        deal_id = seed_deal("Fetched deal")
        found = crm.fetch([deal_id, missing_deal_id], [crm_field[0]])
        assert set(found) == {deal_id}
        assert found[deal_id].id == deal_id

    def test_update_writes_and_bumps_updated_at(self, crm, seed_deal, crm_field):
        name, good, _other, _bad = crm_field
        deal_id = seed_deal("Updated deal")
        before = crm.fetch([deal_id], [name])[deal_id]
        (result,) = crm.update([(deal_id, {name: good})])
        assert result.ok and result.id == deal_id
        after = crm.fetch([deal_id], [name])[deal_id]
        assert after.fields[name] == good
        assert after.updated_at >= before.updated_at

    def test_one_bad_value_fails_only_its_deal(self, crm, seed_deal, crm_field):
        name, good, other, bad = crm_field
        ok_id, bad_id = seed_deal("Good deal"), seed_deal("Bad deal")
        results = crm.update([(ok_id, {name: other}), (bad_id, {name: bad})])
        assert [r.id for r in results] == [ok_id, bad_id]
        assert results[0].ok
        assert not results[1].ok and isinstance(results[1].error, ItemError)
        assert crm.fetch([ok_id], [name])[ok_id].fields[name] == other

    def test_field_options_lists_enumeration(self, crm, crm_field):
        options = crm.field_options(crm_field[0])
        assert options is not None and crm_field[1] in options and crm_field[3] not in options

    def test_api_calls_are_counted(self, crm, seed_deal):
        deal_id = seed_deal("Counted")
        before = sum(crm.api_calls().values())
        crm.fetch([deal_id], [])
        assert sum(crm.api_calls().values()) > before


class TrackerContract:
    def _new(self, tracker, deal_id: str, title: str = "Contract requirement",
             text: str = "<p>需求描述 & details</p>") -> NewRequirement:
        marker = make_marker("contract", deal_id)
        return NewRequirement(title=title, marker=marker, fields={},
                              description=f'{text}<p data-dealsync-marker="{marker}">{marker}</p>')

    def test_create_then_find_by_marker_key_and_id(self, tracker):
        new = self._new(tracker, "d1")
        created = tracker.create(new)
        assert created.id and created.key and _aware(created.updated_at)
        assert created.title == "Contract requirement"
        assert tracker.find_by_marker(new.marker).id == created.id
        assert tracker.find_by_key(created.key).id == created.id
        assert tracker.fetch([created.id])[created.id].key == created.key

    def test_marker_is_matched_exactly(self, tracker):
        first = tracker.create(self._new(tracker, "d1"))
        tenth = tracker.create(self._new(tracker, "d10"))
        assert tracker.find_by_marker(make_marker("contract", "d1")).id == first.id
        assert tracker.find_by_marker(make_marker("contract", "d10")).id == tenth.id
        assert tracker.find_by_marker(make_marker("contract", "d2")) is None

    def test_missing_things_are_absent_not_errors(self, tracker, missing_req_id):
        assert tracker.fetch([missing_req_id]) == {}
        assert tracker.find_by_key("NOPE-99999") is None

    def test_description_round_trips_exactly(self, tracker):
        text = "<p>支持单点登录（SSO）— “企业版” &amp; 多租户 ✓</p>"
        created = tracker.create(self._new(tracker, "d7", title="单点登录 SSO", text=text))
        again = tracker.fetch([created.id])[created.id]
        assert again.title == "单点登录 SSO"
        assert again.description.startswith(text)
        assert has_marker(again.description, make_marker("contract", "d7"))

    def test_update_priority_and_description(self, tracker):
        created = tracker.create(self._new(tracker, "d2"))
        priorities = tracker.field_values("priority")
        assert priorities, "priorities must be listed for `dealsync check`"
        target = next(p for p in priorities if p != created.fields.get("priority"))
        updated = tracker.update(created.id, RequirementChange(
            fields={"priority": target}, description=created.description + "<p>more</p>"))
        assert updated.fields["priority"] == target
        fetched = tracker.fetch([created.id])[created.id]
        assert fetched.fields["priority"] == target
        assert fetched.description.endswith("<p>more</p>")
        assert fetched.updated_at >= created.updated_at

    def test_status_change_reaches_a_listed_state_or_reports_transition(self, tracker):
        created = tracker.create(self._new(tracker, "d3"))
        states = tracker.field_values("status")
        assert states and created.fields["status"] in states
        reached = 0
        for target in states:
            if target == created.fields["status"]:
                continue
            current = tracker.fetch([created.id])[created.id].fields["status"]
            try:
                moved = tracker.update(created.id, RequirementChange(fields={"status": target}))
            except ItemError:
                # refused: the item must be left exactly where it was
                assert tracker.fetch([created.id])[created.id].fields["status"] == current
                continue
            assert moved.fields["status"] == target
            reached += 1
        assert reached, "at least one other state must be reachable"

    def test_iter_changed_lists_created_items(self, tracker):
        created = tracker.create(self._new(tracker, "d4"))
        ids = {r.id for r in tracker.iter_changed(None, FAR_FUTURE)}
        assert created.id in ids
        since = created.updated_at - timedelta(seconds=1)
        assert created.id in {r.id for r in tracker.iter_changed(since, FAR_FUTURE)}
