"""The HubSpot connector against its emulator: the scenarios of docs/hubspot.md §14.7.

Time is the emulator's virtual clock on both sides: the connector's rate limiter reads it and its
sleeps advance it, so waits cost no real time and the emulator's limits are checked exactly.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import requests

from plugins.hubspot.connector import HubSpotConnector
from plugins.hubspot.emulator import (DEAL_ID_START, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET,
                                      OAUTH_REFRESH_TOKEN, POLICY_MESSAGES, PRIVATE_TOKEN,
                                      HubSpotEmulator, from_ms, parse_time_ms)
from sync.connectors import InstanceContext
from sync.errors import AmbiguousWrite, AuthError, ItemError, NotFound, RateLimitExhausted

SEARCH = "POST /crm/v3/objects/deals/search"
BATCH_READ = "POST /crm/v3/objects/deals/batch/read"
BATCH_UPDATE = "POST /crm/v3/objects/deals/batch/update"
FAST = {"default": {"calls": 100_000, "per_seconds": 10}, "search": {"calls": 100_000,
                                                                      "per_seconds": 1}}


@pytest.fixture
def emu(hubspot_server):
    hubspot_server.reset()
    return hubspot_server


class Sleeps(list):
    """The connector's sleep: records each wait and moves the emulator's clock by it."""

    def __init__(self, emu: HubSpotEmulator):
        super().__init__()
        self.emu = emu

    def __call__(self, seconds: float) -> None:
        self.append(round(seconds, 3))
        self.emu.clock.advance(seconds * 1000)


@pytest.fixture
def sleeps(emu):
    return Sleeps(emu)


SECRETS = {"token": PRIVATE_TOKEN, "client_id": OAUTH_CLIENT_ID,
           "client_secret": OAUTH_CLIENT_SECRET, "refresh_token": OAUTH_REFRESH_TOKEN}


@pytest.fixture
def make(emu, sleeps):
    made = []

    def build(secrets=None, **settings) -> HubSpotConnector:
        values = {**SECRETS, **(secrets or {})}
        ctx = InstanceContext("hs", {"base_url": emu.url, "portal_id": 4242, **settings},
                              lambda name: values[name])
        now = lambda: emu.clock.now().timestamp()  # noqa: E731
        connector = HubSpotConnector(ctx, sleep=sleeps, monotonic=now, clock=now)
        made.append(connector)
        return connector

    yield build
    for connector in made:
        connector.close()


def now(emu):
    return emu.clock.now()


def inject(emu, faults):
    """Faults through the kit's control API (``POST /__emu/faults``)."""
    requests.post(emu.url + "/__emu/faults", json=faults).raise_for_status()


def route_calls(emu, route):
    return emu.stats()["routes"].get(route, 0)


# --- 1, 2: volume through the 10k cap ---------------------------------------------------------

@pytest.mark.parametrize("paging", ["keyset", "offset"])
def test_backfill_25000_deals_each_exactly_once(emu, make, sleeps, paging):
    emu.seed_deals(25_000, step_ms=7)
    hs = make(search_paging=paging)
    ids = [deal.id for deal in hs.iter_changed(None, now(emu), ["hs_priority"])]
    assert len(ids) == 25_000
    assert ids == [str(DEAL_ID_START + i) for i in range(25_000)]
    assert route_calls(emu, SEARCH) == 125  # 200 per page, the cap costs no extra call
    assert emu.stats()["rate_limited"] == {}  # the client kept 5 searches/s itself...
    assert sleeps  # ...by waiting (virtual time)


@pytest.mark.parametrize("paging", ["keyset", "offset"])
def test_12000_identical_timestamps_finish_each_once(emu, make, paging):
    emu.seed_deals(12_000, start="2025-01-01T00:00:00Z", same_ts_block=12_000)
    emu.seed_deals(50, start="2025-01-01T01:00:00Z")  # later deals, outside the window
    hs = make(search_paging=paging, rate_limits=FAST)
    stamp = from_ms(parse_time_ms("2025-01-01T00:00:00Z"))
    deals = list(hs.iter_changed(stamp, stamp, []))
    assert len(deals) == 12_000
    assert len({d.id for d in deals}) == 12_000
    assert {d.updated_at for d in deals} == {stamp}


def test_keyset_paging_does_not_skip_when_a_deal_leaves_the_window(emu, make):
    """Why keyset is the default: an edit mid-read shifts offset pages by one."""
    emu.seed_deals(600)
    seen = {}
    for paging in ("offset", "keyset"):
        hs = make(search_paging=paging, rate_limits=FAST)
        until = now(emu)
        ids = []
        for deal in hs.iter_changed(None, until, []):
            ids.append(deal.id)
            if len(ids) == 200:  # a rep edits an early deal: it now lies after `until`
                emu.mutate(ids[0], {"description": f"edited during {paging}"})
        seen[paging] = ids
    assert len(seen["keyset"]) == 600
    assert len(seen["offset"]) == 599  # one deal that never changed was skipped


# --- 3: index lag and the lookback ---------------------------------------------------------------

def test_edit_hidden_by_index_lag_is_caught_by_the_next_run(emu, make):
    emu.configure(search_lag_ms=5000)
    ids = emu.seed_deals(10, properties={"hs_priority": "low"})
    hs = make(rate_limits=FAST)
    emu.clock.advance(60_000)
    # an edit made one second before the run starts, not yet searchable when the run reads
    emu.mutate(ids[3], {"hs_priority": "high"}, at=now(emu) - timedelta(seconds=1))
    first_until = now(emu)
    first = {d.id: d for d in hs.iter_changed(None, first_until, ["hs_priority"])}
    assert first[ids[3]].fields["hs_priority"] == "low"  # the index still has the old version
    cursor = min(max(d.updated_at for d in first.values()), first_until)
    assert cursor <= first_until  # the watermark never passes the run's start
    # an edit landing while the run is going on, after its `until`
    emu.mutate(ids[5], {"hs_priority": "medium"})
    emu.clock.advance(30_000)
    lookback = timedelta(minutes=10)
    second = {d.id: d for d in hs.iter_changed(cursor - lookback, now(emu), ["hs_priority"])}
    assert second[ids[3]].fields["hs_priority"] == "high"
    assert second[ids[5]].fields["hs_priority"] == "medium"
    without_lookback = {d.id for d in hs.iter_changed(first_until, now(emu), [])}
    assert ids[3] not in without_lookback  # what the lookback is for


# --- 7: batch writes -----------------------------------------------------------------------------

def test_250_updates_take_three_batch_calls(emu, make):
    ids = emu.seed_deals(250, properties={"hs_priority": "low"})
    hs = make()
    results = hs.update([(i, {"hs_priority": "high"}) for i in ids])
    assert [r.ok for r in results] == [True] * 250
    assert [r.id for r in results] == ids
    assert route_calls(emu, BATCH_UPDATE) == 3
    sizes = [len(e["body"]["inputs"]) for e in emu.log if e["path"].endswith("/batch/update")]
    assert sizes == [100, 100, 50]
    for deal_id in ids:
        assert [v["source"] for v in emu.history(deal_id)] == ["seed", "api:batch_update"]


@pytest.mark.parametrize("mode,calls", [("207", 1), ("400_all", 2), ("400_opaque", None)])
def test_one_bad_enum_fails_only_its_deal(emu, make, mode, calls):
    emu.configure(batch_partial_mode=mode)
    ids = emu.seed_deals(100, properties={"hs_priority": "low"})
    hs = make()
    updates = [(i, {"hs_priority": "high"}) for i in ids]
    updates[37] = (ids[37], {"hs_priority": "urgent"})
    results = hs.update(updates)
    failed = [r for r in results if not r.ok]
    assert [r.id for r in failed] == [ids[37]]
    assert isinstance(failed[0].error, ItemError) and not failed[0].error.retryable
    assert "hs_priority" in str(failed[0].error)
    for deal_id in ids:
        written = [v for v in emu.history(deal_id) if v["source"] == "api:batch_update"]
        assert len(written) == (0 if deal_id == ids[37] else 1)  # exactly once
    if calls is not None:
        assert route_calls(emu, BATCH_UPDATE) == calls
    else:  # bisected: a handful of calls, not one per deal
        assert route_calls(emu, BATCH_UPDATE) <= 16


def test_update_of_a_missing_deal_is_not_found(emu, make):
    ids = emu.seed_deals(2)
    results = make().update([(ids[0], {"hs_priority": "high"}), ("999", {"hs_priority": "low"})])
    assert results[0].ok
    assert isinstance(results[1].error, NotFound)


def test_fetch_without_context_skips_the_company_reads(emu, make):
    ids = emu.seed_deals(3)
    company = emu.create_company({"name": "Acme"}).id
    emu.associate(ids[0], company)
    hs = make()
    bare = hs.fetch(ids, ["hs_priority"], with_context=False)
    assert route_calls(emu, "POST /crm/v4/associations/deals/companies/batch/read") == 0
    assert set(bare) == set(ids) and bare[ids[0]].fields["hs_priority"] is not None
    full = hs.fetch(ids, ["hs_priority"])
    assert full[ids[0]].company == "Acme"
    assert route_calls(emu, "POST /crm/v4/associations/deals/companies/batch/read") == 1


def test_null_clears_a_property(emu, make):
    deal_id = emu.seed_deals(1, properties={"description": "x"})[0]
    assert make().update([(deal_id, {"description": None})])[0].ok
    assert "description" not in emu.deal(deal_id)["properties"]


# --- 4: 429s by policy ---------------------------------------------------------------------------

def throttle_fault(route, policy, retry_after=None):
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return [{"match": route, "nth": [1], "status": 429, "headers": headers,
             "body": {"status": "error", "message": POLICY_MESSAGES[policy],
                      "errorType": "RATE_LIMIT", "correlationId": "c", "policyName": policy}}]


@pytest.mark.parametrize("policy,retry_after,waited", [
    ("TEN_SECONDLY_ROLLING", None, 10.0), ("TEN_SECONDLY_ROLLING", 3, 3.0),
    ("SECONDLY", None, 1.0), ("SECONDLY", 2, 2.0)])
def test_429_waits_by_policy_and_retry_after(emu, make, sleeps, policy, retry_after, waited):
    emu.seed_deals(3)
    hs = make(rate_limits=FAST)
    inject(emu, throttle_fault(SEARCH, policy, retry_after))
    assert len(list(hs.iter_changed(None, now(emu), []))) == 3
    assert sleeps == [waited]
    assert route_calls(emu, SEARCH) == 2


@pytest.mark.parametrize("retry_after", ["none", "seconds"])
def test_real_burst_limit_is_waited_out(emu, make, sleeps, retry_after):
    emu.configure(burst_max=3, retry_after=retry_after)
    ids = emu.seed_deals(450)
    hs = make(rate_limits=FAST)  # the client limiter is off: the emulator's 429s teach it
    assert len(hs.fetch(ids, [])) == 450
    assert emu.stats()["rate_limited"]["TEN_SECONDLY_ROLLING"] >= 1
    assert all(0 < s <= 10 for s in sleeps)


@pytest.mark.parametrize("retry_after", ["none", "seconds"])
def test_real_search_secondly_limit_is_waited_out(emu, make, sleeps, retry_after):
    emu.configure(search_rps=1, retry_after=retry_after)
    emu.seed_deals(30)
    hs = make(rate_limits=FAST, search_page_size=10)
    assert len(list(hs.iter_changed(None, now(emu), []))) == 30
    assert emu.stats()["rate_limited"]["SECONDLY"] >= 1
    assert 1.0 in sleeps


@pytest.mark.parametrize("retry_after", ["none", "seconds"])
def test_daily_limit_stops_the_run_until_midnight(emu, make, retry_after):
    emu.configure(daily_max=5, retry_after=retry_after)
    emu.seed_deals(10)
    hs = make()
    with pytest.raises(RateLimitExhausted) as caught:
        for _ in range(10):
            hs.fetch([str(DEAL_ID_START)], [])
    assert "midnight" in caught.value.message
    assert "2025-01-02 00:00" in caught.value.message
    assert emu.stats()["rate_limited"] == {"DAILY": 1}  # no retries of a DAILY 429
    emu.clock.set(from_ms(parse_time_ms("2025-01-02T00:00:01Z")))  # the next day
    assert len(make().fetch([str(DEAL_ID_START)], [])) == 1


# --- 5: server errors and resets -----------------------------------------------------------------

@pytest.mark.parametrize("status", [502, 503, 504])
def test_5xx_on_reads_are_retried(emu, make, sleeps, status):
    ids = emu.seed_deals(5)
    inject(emu, [
        {"match": SEARCH, "nth": [1, 2], "status": status},
        {"match": BATCH_READ, "nth": [1], "status": status}])
    hs = make(rate_limits=FAST)
    assert [d.id for d in hs.iter_changed(None, now(emu), [])] == ids
    assert set(hs.fetch(ids, [])) == set(ids)
    assert route_calls(emu, SEARCH) == 3 and route_calls(emu, BATCH_READ) == 2
    assert len(sleeps) == 3  # backed off before each retry


def test_connection_resets_on_reads_are_retried(emu, make):
    ids = emu.seed_deals(5)
    inject(emu, [
        {"match": SEARCH, "nth": [1], "reset_connection": True},
        {"match": BATCH_READ, "nth": [1], "reset_connection": True}])
    hs = make(rate_limits=FAST)
    assert [d.id for d in hs.iter_changed(None, now(emu), [])] == ids
    assert set(hs.fetch(ids, [])) == set(ids)


@pytest.mark.parametrize("status", [400, 404])
def test_4xx_on_reads_are_not_retried(emu, make, status):
    emu.seed_deals(2)
    inject(emu, [{"match": SEARCH, "nth": [1], "status": status,
                                                      "body": {"status": "error", "message": "no",
                                                               "category": "VALIDATION_ERROR"
                                                               if status == 400 else
                                                               "OBJECT_NOT_FOUND"}}])
    with pytest.raises(ItemError):
        list(make(rate_limits=FAST).iter_changed(None, now(emu), []))
    assert route_calls(emu, SEARCH) == 1


def test_batch_update_is_replayed_after_a_503(emu, make):
    ids = emu.seed_deals(3)
    inject(emu, [{"match": BATCH_UPDATE, "nth": [1],
                                                      "status": 503}])
    assert all(r.ok for r in make().update([(i, {"hs_priority": "high"}) for i in ids]))
    for deal_id in ids:
        assert [v["source"] for v in emu.history(deal_id)].count("api:batch_update") == 1


@pytest.mark.parametrize("fault", [{"status": 502}, {"reset_connection": True}])
def test_a_create_is_never_sent_twice_after_an_ambiguous_failure(emu, make, fault):
    deal_id = emu.seed_deals(1)[0]
    inject(emu, [
        {"match": "POST /crm/v3/objects/notes", "nth": [1], **fault}])
    hs = make()
    with pytest.raises(AmbiguousWrite):
        hs.add_note(deal_id, "Requirement SCR-1 moved to Done")
    assert route_calls(emu, "POST /crm/v3/objects/notes") == 1
    assert hs.add_note(deal_id, "<b>Done</b>")  # the next attempt is the caller's decision
    assert [n["properties"]["hs_note_body"] for n in emu.notes_for(deal_id)] == [
        "&lt;b&gt;Done&lt;/b&gt;"]


def test_notes_go_in_batches_of_100_and_an_ambiguous_batch_is_not_resent(emu, make):
    ids = emu.seed_deals(150)
    hs = make()
    results = hs.add_notes([(deal_id, f"SCR-1 is now 开发中 ({n})") for n, deal_id in enumerate(ids)])
    assert all(r.ok for r in results) and len(results) == 150
    assert route_calls(emu, "POST /crm/v3/objects/notes/batch/create") == 2
    assert [n["properties"]["hs_note_body"] for n in emu.notes_for(ids[149])] == [
        "SCR-1 is now 开发中 (149)"]
    inject(emu, [{"match": "POST /crm/v3/objects/notes/batch/create", "nth": [1],
                  "status": 502}])
    (result,) = hs.add_notes([(ids[0], "again")])
    assert isinstance(result.error, AmbiguousWrite)
    assert route_calls(emu, "POST /crm/v3/objects/notes/batch/create") == 3


# --- 6: OAuth token expiry mid-pagination --------------------------------------------------------

def test_token_expiry_mid_pagination_refreshes_once_without_duplicates(emu, make):
    emu.seed_deals(100)
    hs = make(auth="oauth", search_page_size=20, rate_limits=FAST)
    ids = []
    for deal in hs.iter_changed(None, now(emu), []):
        ids.append(deal.id)
        if len(ids) == 20:
            emu.expire_tokens()
    assert len(ids) == len(set(ids)) == 100
    assert route_calls(emu, "POST /oauth/v1/token") == 2  # the first token, then one refresh
    statuses = [e["status"] for e in emu.log if e["path"].endswith("/search")]
    assert statuses.count(401) == 1 and statuses.count(200) == 5


def test_bad_refresh_token_is_an_auth_error(emu, make):
    hs = make(auth="oauth", secrets={"refresh_token": "revoked"})
    with pytest.raises(AuthError) as caught:
        hs.fetch(["1"], [])
    assert "revoked" not in caught.value.message
    assert "refresh_token" in caught.value.hint


# --- context, scopes and properties --------------------------------------------------------------

def seed_account(emu):
    return emu.seed(
        companies=[{"name": "Acme Corp", "domain": "acme.test"}, {"name": "Globex"}],
        owners=[{"email": "ann@x.test", "firstName": "Ann", "lastName": "Lee"}],
        deals=[{"properties": {"dealname": "Acme renewal", "amount": "12500.50",
                               "dealstage": "contractsent", "closedate": "2025-03-31",
                               "deal_currency_code": "EUR", "hs_priority": "high"},
                "companies": [0, 1], "owner": 0},
               {"properties": {"dealname": "Globex pilot", "dealstage": "closedwon"},
                "companies": [1]},
               {"properties": {"dealname": "Loose"}}])


def test_deal_context(emu, make):
    made = seed_account(emu)
    hs = make(rate_limits=FAST)
    deals = {d.id: d for d in hs.iter_changed(None, now(emu), ["hs_priority"])}
    acme = deals[made["deals"][0]]
    assert acme.name == "Acme renewal" and acme.company == "Acme Corp"  # the primary company
    assert acme.stage == "Contract Sent" and acme.is_open
    assert acme.amount == 12500.5 and acme.currency == "EUR"
    assert acme.close_date == "2025-03-31" and acme.owner == "Ann Lee"
    assert acme.url == f"https://app.hubspot.com/contacts/4242/deal/{acme.id}"
    assert acme.fields == {"hs_priority": "high"}
    assert acme.updated_at.tzinfo is not None
    won = deals[made["deals"][1]]
    assert won.company == "Globex" and won.stage == "Closed Won" and not won.is_open
    loose = deals[made["deals"][2]]
    assert loose.company is None and loose.owner is None and loose.amount is None
    fetched = hs.fetch(made["deals"], ["hs_priority"])
    assert fetched[acme.id].context() == acme.context()
    emu.mutate_company(made["companies"][0], {"name": "Acme Group"})
    assert make().fetch([acme.id], [])[acme.id].company == "Acme Group"


def test_context_lookups_are_cached(emu, make):
    seed_account(emu)
    hs = make(rate_limits=FAST)
    list(hs.iter_changed(None, now(emu), []))
    list(hs.iter_changed(None, now(emu), []))
    assert route_calls(emu, "GET /crm/v3/pipelines/deals") == 1
    assert route_calls(emu, "GET /crm/v3/owners") == 1
    assert route_calls(emu, "POST /crm/v3/objects/companies/batch/read") == 1


def test_without_the_companies_scope_only_the_company_is_lost(emu, make, caplog):
    made = seed_account(emu)
    emu.configure(private_tokens={"narrow": ["crm.objects.deals.read",
                                             "crm.objects.owners.read"]})
    hs = make(secrets={"token": "narrow"}, rate_limits=FAST)
    with caplog.at_level(logging.WARNING, logger="dealsync.hubspot"):
        deals = {d.id: d for d in hs.iter_changed(None, now(emu), [])}
    assert deals[made["deals"][0]].company is None
    assert deals[made["deals"][0]].owner == "Ann Lee"
    assert "crm.objects.companies.read" in caplog.text


def test_missing_deal_scope_is_an_auth_error_naming_it(emu, make):
    emu.configure(private_tokens={"writer": ["crm.objects.deals.write"]})
    with pytest.raises(AuthError) as caught:
        make(secrets={"token": "writer"}).fetch(["1"], [])
    assert "crm.objects.deals.read" in caught.value.message


def test_fetch_leaves_out_only_what_hubspot_says_is_gone(emu, make):
    ids = emu.seed_deals(3)
    emu.archive([ids[1]])
    found = make().fetch([ids[0], ids[1], ids[2], "424242", ids[0]], [])
    assert sorted(found) == [ids[0], ids[2]]


def test_fields_check_and_fix(emu, make):
    hs = make()
    assert hs.missing_fields(["hs_priority", "pingcode_req_status", "pingcode_req_url"]) == [
        "pingcode_req_status", "pingcode_req_url"]
    assert hs.field_options("hs_priority") == ["low", "medium", "high"]
    assert hs.field_options("dealname") is None
    assert hs.field_options("dealstage")[-1] == "closedlost"
    created = hs.ensure_fields({"pingcode_req_status": ["open", "in_progress"],
                                "pingcode_req_url": None, "hs_priority": ["low"]})
    assert created == ["pingcode_req_status", "pingcode_req_url"]
    status = emu.properties["pingcode_req_status"]
    assert (status["type"], status["fieldType"], status["groupName"]) == (
        "enumeration", "select", "dealsync")
    assert [o["label"] for o in status["options"]] == ["Open", "In progress"]
    assert emu.properties["pingcode_req_url"]["type"] == "string"
    assert hs.missing_fields(["pingcode_req_status"]) == []
    assert hs.ensure_fields({"pingcode_req_status": ["open", "in_progress"]}) == []
    assert hs.ensure_fields({"pingcode_req_status": ["open", "done"]}) == ["pingcode_req_status"]
    assert hs.field_options("pingcode_req_status") == ["open", "in_progress", "done"]
    assert make().ensure_fields({"other_field": None}) == ["other_field"]  # the group exists


def test_calls_are_counted_per_endpoint(emu, make):
    ids = emu.seed_deals(3)
    hs = make(rate_limits=FAST)
    hs.fetch(ids, [])
    calls = hs.api_calls()
    assert calls["POST /crm/v3/objects/deals/batch/read"] == 1
    assert calls["POST /crm/v4/associations/deals/companies/batch/read"] == 1
