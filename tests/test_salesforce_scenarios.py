"""The Salesforce connector against its emulator: volume, ties, sessions, limits, partial writes.

Time is the emulator's virtual clock on both sides (``plugins.salesforce.testing``), so a day of
the rolling API allocation passes in no real time. Sections cited are those of
docs/salesforce.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from plugins.memory import MemoryTracker, World
from plugins.salesforce.connector import soql_datetime
from plugins.salesforce.emulator import SalesforceEmulator
from plugins.salesforce.testing import create_fields, emulator_connector
from sync.check import field_roles, field_specs
from sync.connectors import InstanceContext
from sync.engine import Options, Pair, run_pair
from sync.errors import AuthError, ItemError, NotFound, RateLimitExhausted
from sync.mapping import parse_mapping
from sync.state import StateStore

V = "/services/data/v60.0"
TOKEN = "POST /services/oauth2/token"
QUERY, MORE = f"GET {V}/query", f"GET {V}/query/{{locator}}"
COLLECTIONS = f"PATCH {V}/composite/sobjects"
CREATE = f"POST {V}/composite/sobjects"
START = datetime(2025, 1, 1, tzinfo=timezone.utc)




@pytest.fixture
def emu(salesforce_server):
    salesforce_server.reset()
    return salesforce_server


@pytest.fixture
def make(emu):
    made = []

    def build(**settings):
        connector = emulator_connector(emu, **settings)
        made.append(connector)
        return connector

    yield build
    for connector in made:
        connector.close()


def api_writes(emu, record_id: str) -> int:
    """Writes the API user made to one record, from the emulator's record history."""
    return sum(1 for change in emu.history(record_id) if change["actor"] == "api")


# --- volume and ties (docs/salesforce.md §3, §4) --------------------------------------------------

def test_5000_opportunities_through_next_records_url_each_once(emu, make):
    ids = emu.seed_opportunities(5000, start="2025-01-01T00:00:00Z", step_s=1)
    sf = make()
    deals = list(sf.iter_changed(None, emu.clock.now(), ["Priority__c"]))
    assert [d.id for d in deals] == ids  # ORDER BY SystemModstamp, Id: creation order here
    assert all(d.company and d.owner for d in deals)  # relationship fields, same query
    assert sf.api_calls() == {TOKEN: 1, QUERY: 1, MORE: 2}  # 2,000 per batch
    assert [call for call in emu.stats()["calls"] if call.startswith("GET")] == [
        f"GET {V}/query", f"GET {V}/query/01g5g0000000001AAA-2000",
        f"GET {V}/query/01g5g0000000001AAA-4000"]


def test_1200_opportunities_in_one_second_none_lost_where_a_gt_cursor_loses_them(emu, make):
    second = START + timedelta(hours=1)
    first = emu.seed_opportunities(600, start=second, same_ts_block=600)
    sf = make(query_batch_size=200)  # the ties span pages
    seen = list(sf.iter_changed(second, second, []))
    assert [d.id for d in seen] == first
    cursor = max(d.updated_at for d in seen)  # what a run would store: that very second
    # A bulk load lands 600 more in the same second after the read.
    later = emu.seed_opportunities(600, start=second, same_ts_block=600)
    assert {d.updated_at for d in sf.iter_changed(cursor, cursor, [])} == {cursor}

    deals = list(sf.iter_changed(cursor, emu.clock.now(), []))
    assert len(deals) == 1200 and {d.id for d in deals} == set(first + later)
    assert sf.api_calls()[MORE] >= 2 * 5  # six pages of 200 per read
    # The same read with a ">" cursor: none of the 600 late ones.
    strict = list(sf.query(f"SELECT Id FROM Opportunity WHERE SystemModstamp > "
                           f"{soql_datetime(cursor)} ORDER BY SystemModstamp, Id"))
    assert not {r["Id"] for r in strict} & set(later)


def test_query_timeout_on_a_wide_window_reads_it_in_halves(emu, make):
    ids = emu.seed_opportunities(300, start="2025-01-01T00:00:00Z", step_s=864)  # three days
    emu.configure(query_timeout_if_span_days=1)
    sf = make()
    deals = list(sf.iter_changed(None, emu.clock.now(), []))
    assert [d.id for d in deals] == ids
    calls = sf.api_calls()
    assert calls[QUERY] > 4  # the unbounded one, the oldest stamp, then halves down to a day


# --- sessions (docs/salesforce.md §1) -------------------------------------------------------------

def test_expired_session_mid_run_is_renewed_once_and_nothing_is_written_twice(emu, make):
    ids = emu.seed_opportunities(2500)
    sf = make()
    deals = sf.iter_changed(None, emu.clock.now(), ["Priority__c"])
    read = [next(deals)]
    emu.expire_tokens()  # the session ends between two pages
    read += list(deals)
    assert [d.id for d in read] == ids
    emu.expire_tokens()  # ... and again before the write
    results = sf.update([(i, {"Priority__c": "Low"}) for i in ids[:450]])
    assert all(r.ok for r in results)
    assert sf.api_calls()[TOKEN] == 3  # the first login and one per expiry
    assert sf.api_calls()[COLLECTIONS] == 4  # one 401, then three calls of 200, 200, 50
    assert [api_writes(emu, i) for i in ids[:450]] == [1] * 450
    refused = [e for e in emu.log if e["status"] == 401]
    assert [e["method"] for e in refused] == ["GET", "PATCH"]


def test_jwt_and_refresh_token_flows_against_the_emulator(emu, make, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "server.key"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    deal_id = emu.seed_opportunities(1)[0]
    for settings in ({"auth": "jwt", "private_key_file": str(pem)}, {"auth": "refresh_token"}):
        assert deal_id in make(**settings).fetch([deal_id], [])
    emu.configure(jwt_approved_users=[])
    with pytest.raises(AuthError) as caught:
        make(auth="jwt", private_key_file=str(pem)).fetch([deal_id], [])
    assert "user hasn't approved this consumer" in str(caught.value)


def test_over_tls_verified_against_the_throwaway_ca(monkeypatch):
    emulator = SalesforceEmulator(tls=True)
    url = emulator.start()
    try:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", emulator.ca_path)  # verification stays on
        deal_id = emulator.seed_opportunities(1)[0]
        sf = emulator_connector(emulator)
        assert url.startswith("https://") and sf.fetch([deal_id], [])[deal_id].id == deal_id
        assert sf.instance_url == url
        sf.close()
    finally:
        emulator.stop()


# --- writes (docs/salesforce.md §6) ---------------------------------------------------------------

def test_collections_partial_failure_fails_only_those_records(emu, make):
    ids = emu.seed_opportunities(250, fields={"Priority__c": "Low"})
    emu.delete([ids[3]])
    updates = [(i, {"Priority__c": "High"}) for i in ids]
    updates[10] = (ids[10], {"Priority__c": "Urgent"})  # not a value of the restricted picklist
    updates[220] = (ids[220], {"PingCode_Status__c": "x" * 101})  # longer than the field
    results = make().update(updates)
    failed = {n: r.error for n, r in enumerate(results) if not r.ok}
    assert set(failed) == {3, 10, 220}
    assert isinstance(failed[3], NotFound)
    assert isinstance(failed[10], ItemError) and not failed[10].retryable
    assert "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in str(failed[10])
    assert "STRING_TOO_LONG" in str(failed[220])
    assert [emu.record(i)["Priority__c"] for n, i in enumerate(ids) if n not in failed] == \
        ["High"] * 247
    assert emu.record(ids[10])["Priority__c"] == "Low"


def test_api_calls_per_endpoint_for_a_read_and_a_write(emu, make):
    ids = emu.seed_opportunities(4500)
    reader = make()
    assert len(list(reader.iter_changed(None, emu.clock.now(), ["Priority__c"]))) == 4500
    assert reader.api_calls() == {TOKEN: 1, QUERY: 1, MORE: 2}  # ceil(4,500 / 2,000) pages
    writer = make()
    writer.update([(i, {"Priority__c": "High"}) for i in ids[:1000]])
    assert writer.api_calls() == {TOKEN: 1, COLLECTIONS: 5}  # 1,000 / 200
    fetcher = make()
    assert len(fetcher.fetch(ids[:1000], ["Priority__c"])) == 1000
    assert fetcher.api_calls() == {TOKEN: 1, QUERY: 5}  # 200 ids per Id IN (...)


# --- notes as Tasks (docs/salesforce.md §11) ------------------------------------------------------

def test_450_notes_are_three_collections_calls_and_a_gone_deal_fails_only_its_note(emu, make):
    ids = emu.seed_opportunities(150)
    emu.delete([ids[7]])
    notes = [(ids[n % 150], f"dealsync: SCR-{n} SSO: status is now 已完成 (Shipped)")
             for n in range(450)]
    writer = make()
    results = writer.add_notes(notes)
    assert writer.api_calls() == {TOKEN: 1, CREATE: 3}  # ceil(450 / 200)
    assert emu.api_usage() == 3  # the token endpoint is no API call (docs/salesforce.md §8)
    failed = [n for n, r in enumerate(results) if not r.ok]
    assert failed == [7, 157, 307]  # the notes on the opportunity in the recycle bin
    assert all(isinstance(results[n].error, NotFound) for n in failed)
    assert [r.id for r in results] == [deal for deal, _ in notes]
    tasks = emu.tasks()
    assert len(tasks) == 447 and [t["Id"] for t in tasks] == [r.record for r in results if r.ok]
    assert [t["Description"] for t in emu.tasks(ids[0])] == [notes[n][1] for n in (0, 150, 300)]
    assert {(t["Status"], t["IsClosed"], t["TaskSubtype"], t["ActivityDate"]) for t in tasks} \
        == {("Completed", True, "Task", "2025-01-01")}
    one = make()
    task_id = one.add_note(ids[0], "dealsync: one more")
    assert one.api_calls() == {TOKEN: 1, f"POST {V}/sobjects/Task": 1}
    assert emu.tasks(ids[0])[-1]["Id"] == task_id
    with pytest.raises(NotFound):
        one.add_note(ids[7], "dealsync: gone")


# --- the daily allocation (docs/salesforce.md §8) -------------------------------------------------

def test_the_403_of_a_spent_allocation_is_never_retried(emu, make):
    deal_id = emu.seed_opportunities(1)[0]
    emu.configure(daily_max=2)
    other = make()  # another integration spends the org's allocation
    other.fetch([deal_id], [])
    other.fetch([deal_id], [])
    with pytest.raises(RateLimitExhausted) as caught:
        make().fetch([deal_id], [])
    assert emu.stats()["limited"] == {"daily": 1}  # one refused call, no retry loop
    assert "rolling 24 hours" in caught.value.hint


MAPPING = """
[request]
field = "Dealsync_Request__c"
[link]
key_field = "PingCode_Key__c"
url_field = "PingCode_Url__c"
[fields.status]
crm = "PingCode_Status__c"
tracker = "status"
[fields.status.values]
"Open" = "Open"
"Planned" = "Planned"
"In progress" = "In progress"
"Done" = "Done"
"Not now" = "Not now"
"Won't do" = "Won't do"
[fields.priority]
crm = "Priority__c"
tracker = "priority"
conflict = "newest"
[fields.priority.values]
"Highest" = "High"
"High" = "High"
"Medium" = "Medium"
"Low" = "Low"
"Lowest" = "Low"
[fields.priority.to_tracker]
"High" = "High"
"Low" = "Low"
"""


class Synced:
    """The engine on a Salesforce connector and a memory tracker, ``count`` opportunities
    asking for one requirement."""

    def __init__(self, emu, make, tmp_path, count: int):
        import tomllib

        self.emu, self.make = emu, make
        self.mapping = parse_mapping(tomllib.loads(MAPPING), "salesforce-memory")
        create_fields(emu, make().field_plan(field_specs(self.mapping),
                                             field_roles(self.mapping)))
        world = World()
        self.item = world.add_item("Bulk import API", status="Planned", priority="High")
        self.ids = emu.seed_opportunities(count, fields={
            "Dealsync_Request__c": self.item["key"], "Priority__c": None})
        self.store = StateStore(tmp_path / "state.db")
        self.tracker = MemoryTracker(InstanceContext("rd", {}, lambda name: ""), world=world)

    def run(self) -> dict:
        pair = Pair("sf", self.make(), self.tracker, self.mapping, max_creates=0,
                    guard_min_links=10_000)
        return run_pair(pair, self.store, Options())


def test_quota_at_80_percent_stops_cleanly_and_the_next_run_resumes(emu, make, tmp_path):
    synced = Synced(emu, make, tmp_path, 1000)
    ids, key = synced.ids, synced.item["key"]
    emu.configure(daily_max=12)  # 80%: the run may make 9 calls, then stops before the 10th
    with pytest.raises(RateLimitExhausted) as caught:
        synced.run()
    assert caught.value.exit_code == 6 and "keeps its cursors" in str(caught.value)
    written = [i for i in ids if emu.record(i)["PingCode_Key__c"] == key]
    assert 0 < len(written) < 1000, len(written)  # whole batches stayed written...
    assert synced.store.cursor("sf", "crm") is None  # ...and the cursor did not move
    assert emu.stats()["limited"] == {}  # stopped before Salesforce had to refuse anything

    emu.clock.advance(25 * 3600 * 1000)  # the rolling 24 hours pass
    summary = synced.run()
    assert summary["status"] == "ok" and summary["counts"]["updated_crm"] == 1000 - len(written)
    assert all(emu.record(i)["PingCode_Status__c"] == "Planned" for i in ids)
    assert [api_writes(emu, i) for i in ids] == [1] * 1000  # nothing written twice
    assert synced.store.cursor("sf", "crm") is not None
    synced.store.close()


def test_automation_moving_system_modstamp_writes_nothing(emu, make, tmp_path):
    """SystemModstamp moves on system edits without LastModifiedDate (docs/salesforce.md §2): the
    opportunities are read again, and echo suppression on values finds nothing to write."""
    synced = Synced(emu, make, tmp_path, 50)
    assert synced.run()["counts"]["updated_crm"] == 50
    emu.clock.advance(60_000)
    emu.touch(synced.ids)  # a recalculation stamps them all
    assert emu.record(synced.ids[0])["SystemModstamp"] > emu.record(synced.ids[0])[
        "LastModifiedDate"]
    quiet = synced.run()
    assert quiet["counts"]["deals_read"] == 50
    assert quiet["counts"]["updated_crm"] == quiet["counts"]["updated_tracker"] == 0
    assert [api_writes(emu, i) for i in synced.ids] == [1] * 50
    synced.store.close()
