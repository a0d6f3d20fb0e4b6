"""The HubSpot connector's requests and error mapping, with ``responses`` (docs/hubspot.md)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from urllib.parse import parse_qs

import pytest
import responses
from responses import matchers

from conftest import Sleeps
from plugins.hubspot.connector import HubSpotConnector
from sync.connectors import InstanceContext, RateLimit
from sync.errors import (AmbiguousWrite, AuthError, ItemError, NotFound, RateLimitExhausted,
                         RemoteError)

API = "https://api.hubapi.com"
SEARCH = f"{API}/crm/v3/objects/deals/search"
BATCH_READ = f"{API}/crm/v3/objects/deals/batch/read"
BATCH_UPDATE = f"{API}/crm/v3/objects/deals/batch/update"
ASSOC = f"{API}/crm/v4/associations/deals/companies/batch/read"
COMPANIES = f"{API}/crm/v3/objects/companies/batch/read"
PIPELINES = f"{API}/crm/v3/pipelines/deals"
OWNERS = f"{API}/crm/v3/owners"
PROPERTIES = f"{API}/crm/v3/properties/deals"
TOKEN = "pat-na1-secret-token"
SINCE = datetime(2025, 1, 1, tzinfo=timezone.utc)
UNTIL = datetime(2025, 1, 2, tzinfo=timezone.utc)
SINCE_MS, UNTIL_MS = "1735689600000", "1735776000000"
NOW = 1735732800.0  # 2025-01-01T12:00:00Z


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def sleeps():
    return Sleeps()


SECRETS = {"token": TOKEN, "client_id": "cid", "client_secret": "csecret",
           "refresh_token": "rtoken"}


@pytest.fixture
def make(sleeps):
    def build(**settings) -> HubSpotConnector:
        ctx = InstanceContext("acme", {"portal_id": 99, **settings}, lambda name: SECRETS[name])
        return HubSpotConnector(ctx, sleep=sleeps, clock=lambda: NOW)
    return build


def deal(deal_id, **props):
    props.setdefault("hs_lastmodifieddate", "2025-01-01T10:00:00.000Z")
    return {"id": str(deal_id), "properties": {"hs_object_id": str(deal_id), **props},
            "createdAt": "2024-12-01T00:00:00.000Z", "updatedAt": props["hs_lastmodifieddate"],
            "archived": False}


def body(call):
    return json.loads(call.request.body)


def no_context(rsps, times=1):
    """The association read every page of deals triggers (no companies here)."""
    for _ in range(times):
        rsps.post(ASSOC, json={"status": "COMPLETE", "results": []})


def pipelines(rsps):
    rsps.get(PIPELINES, json={"results": [{"id": "default", "label": "Sales", "stages": [
        {"id": "contractsent", "label": "Contract Sent",
         "metadata": {"probability": "0.9", "isClosed": "false"}},
        {"id": "closedwon", "label": "Closed Won", "metadata": {"isClosed": "true"}},
        {"id": "closedlost", "label": "Closed Lost", "metadata": {"isClosed": True}}]}]})


# --- settings and registration -----------------------------------------------------------------

def test_registered_through_the_hook():
    import plugins.hubspot as plugin
    registered = []
    plugin.register_connectors(register=registered.append)
    assert registered == [HubSpotConnector]
    assert HubSpotConnector.type_name == "hubspot" and HubSpotConnector.side == "crm"
    assert HubSpotConnector.batch_size == 100
    assert [s.name for s in HubSpotConnector.secrets] == ["token", "client_id", "client_secret",
                                                          "refresh_token"]


def test_settings_are_checked():
    assert HubSpotConnector.check_settings({"portal_id": 1, "auth": "oauth", "tier": "enterprise",
                                            "search_page_size": 100}) == []
    problems = HubSpotConnector.check_settings({
        "auth": "basic", "tier": "gold", "search_page_size": 500, "portal_id": "x",
        "search_paging": "cursor", "account_timezone": "Mars/Olympus", "colour": "red"})
    assert {p.split(":")[0] for p in problems} == {
        "auth", "tier", "search_page_size", "portal_id", "search_paging", "account_timezone",
        "colour"}


def test_rate_limits_by_tier_and_override(make):
    assert make().rate_limits() == {"default": RateLimit(100, 10), "search": RateLimit(5, 1)}
    assert make(tier="professional").rate_limits()["default"] == RateLimit(190, 10)
    assert make(tier="enterprise", rate_limits={"search": {"calls": 4, "per_seconds": 1}}
                ).rate_limits() == {"default": RateLimit(190, 10), "search": RateLimit(4, 1)}


def test_no_secret_is_read_before_the_first_call():
    def refuse(name):
        raise AssertionError(f"secret {name} read too early")
    HubSpotConnector(InstanceContext("acme", {}, refuse))


# --- search (docs/hubspot.md §6, §7, §13) --------------------------------------------------------

def test_search_body_follows_the_recipe(rsps, make):
    rsps.post(SEARCH, json={"total": 1, "results": [deal(10, hs_priority="high")]})
    no_context(rsps)
    deals = list(make().iter_changed(SINCE, UNTIL, ["hs_priority", "pingcode_req_status"]))
    sent = body(rsps.calls[0])
    assert sent["filterGroups"] == [{"filters": [
        {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": SINCE_MS},
        {"propertyName": "hs_lastmodifieddate", "operator": "LTE", "value": UNTIL_MS},
        {"propertyName": "hs_object_id", "operator": "GTE", "value": "0"}]}]
    assert sent["sorts"] == [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]
    assert sent["limit"] == 200 and sent["after"] == "0"
    assert sent["properties"][:2] == ["hs_priority", "pingcode_req_status"]
    assert {"dealname", "amount", "dealstage", "closedate", "hubspot_owner_id",
            "hs_lastmodifieddate"} <= set(sent["properties"])
    assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert deals[0].fields == {"hs_priority": "high", "pingcode_req_status": None}
    assert deals[0].updated_at == datetime(2025, 1, 1, 10, tzinfo=timezone.utc)


def test_search_without_since_reads_everything_up_to_until(rsps, make):
    rsps.post(SEARCH, json={"total": 0, "results": []})
    assert list(make().iter_changed(None, UNTIL, [])) == []
    filters = body(rsps.calls[0])["filterGroups"][0]["filters"]
    assert [f["operator"] for f in filters] == ["LTE", "GTE"]


def test_keyset_paging_restarts_every_page_from_the_last_id(rsps, make):
    rsps.post(SEARCH, json={"total": 3, "results": [deal(1), deal(2)],
                            "paging": {"next": {"after": "2"}}})
    rsps.post(SEARCH, json={"total": 1, "results": [deal(7)]})
    no_context(rsps, 2)
    hs = make(search_page_size=2)
    assert [d.id for d in hs.iter_changed(SINCE, UNTIL, [])] == ["1", "2", "7"]
    second = body(rsps.calls[2])
    assert second["after"] == "0"
    assert second["filterGroups"][0]["filters"][-1]["value"] == "3"


def test_offset_paging_follows_after_and_restarts_at_the_cap(rsps, make):
    pages = [([1, 2], "2"), ([3, 4], "4"), ([5, 6], "2"), ([8], None)]
    for ids, after in pages:
        page = {"total": 99, "results": [deal(i) for i in ids]}
        if after:
            page["paging"] = {"next": {"after": after}}
        rsps.post(SEARCH, json=page)
        no_context(rsps)
    # a tiny cap to see the restart: after 4 + limit 2 > cap 4
    hs = make(search_page_size=2, search_cap=4, search_paging="offset")
    assert [d.id for d in hs.iter_changed(SINCE, UNTIL, [])] == ["1", "2", "3", "4", "5", "6", "8"]
    sent = [body(c) for c in rsps.calls if c.request.url == SEARCH]
    assert [(s["after"], s["filterGroups"][0]["filters"][-1]["value"]) for s in sent] == [
        ("0", "0"), ("2", "0"), ("0", "5"), ("2", "5")]


def test_pages_are_streamed(rsps, make):
    rsps.post(SEARCH, json={"total": 2, "results": [deal(1)], "paging": {"next": {"after": "1"}}})
    no_context(rsps)
    stream = make(search_page_size=1).iter_changed(SINCE, UNTIL, [])
    assert next(stream).id == "1"
    assert len([c for c in rsps.calls if c.request.url == SEARCH]) == 1  # page 2 not yet asked
    stream.close()


def test_search_is_throttled_in_both_buckets(rsps, make, monkeypatch):
    hs = make()
    used = []
    original = hs.http.request

    def spy(method, path, **kw):
        used.append(kw.get("buckets"))
        return original(method, path, **kw)
    monkeypatch.setattr(hs.http, "request", spy)
    rsps.post(SEARCH, json={"total": 0, "results": []})
    list(hs.iter_changed(SINCE, UNTIL, []))
    assert used == [("search", "default")]


# --- deal context (docs/hubspot.md §4, §10) ------------------------------------------------------

def test_deal_context_from_associations_companies_pipelines_and_owners(rsps, make):
    rsps.post(SEARCH, json={"total": 3, "results": [
        deal(1, dealname="Acme", amount="1500.5", dealstage="contractsent", pipeline="default",
             closedate="2025-03-31T00:00:00.000Z", hubspot_owner_id="301",
             deal_currency_code="EUR"),
        deal(2, dealname="Won", dealstage="closedwon", hubspot_owner_id="999"),
        deal(3, dealname="Odd", dealstage="custom-stage-uuid", amount="n/a")]})
    rsps.post(ASSOC, json={"status": "COMPLETE", "results": [
        {"from": {"id": "1"}, "to": [
            {"toObjectId": 501, "associationTypes": [{"typeId": 341, "label": None}]},
            {"toObjectId": 500, "associationTypes": [{"typeId": 5, "label": "Primary"}]}]},
        {"from": {"id": "2"}, "to": [{"toObjectId": 502, "associationTypes": [
            {"typeId": 341}]}]}]})
    rsps.post(COMPANIES, json={"status": "COMPLETE", "results": [
        {"id": "500", "properties": {"name": "Acme Corp"}}]}, status=207)
    pipelines(rsps)
    rsps.get(OWNERS, json={"results": [{"id": "301", "firstName": "Ann", "lastName": "Lee",
                                        "email": "ann@x.test"}],
                           "paging": {"next": {"after": "abc"}}},
             match=[matchers.query_param_matcher({"limit": "100"})])
    rsps.get(OWNERS, json={"results": [{"id": "302", "email": "bob@x.test"}]},
             match=[matchers.query_param_matcher({"limit": "100", "after": "abc"})])
    rsps.get(f"{OWNERS}/999", status=404, json={"status": "error", "message": "nope",
                                               "category": "OBJECT_NOT_FOUND"})
    hs = make()
    acme, won, odd = hs.iter_changed(SINCE, UNTIL, [])
    assert (acme.name, acme.company, acme.stage, acme.is_open) == (
        "Acme", "Acme Corp", "Contract Sent", True)
    assert (acme.amount, acme.currency, acme.close_date, acme.owner) == (
        1500.5, "EUR", "2025-03-31", "Ann Lee")
    assert acme.url == "https://app.hubspot.com/contacts/99/deal/1"
    assert (won.company, won.stage, won.is_open, won.owner) == (None, "Closed Won", False, None)
    assert (odd.stage, odd.is_open, odd.amount) == ("custom-stage-uuid", True, None)
    assert sorted(i["id"] for i in body(rsps.calls[2])["inputs"]) == ["500", "502"]
    assert hs._owner("302") == "bob@x.test"  # cached: no further call


def test_no_portal_id_no_url(rsps):
    rsps.post(BATCH_READ, json={"status": "COMPLETE", "results": [deal(1)]})
    no_context(rsps)
    hs = HubSpotConnector(InstanceContext("acme", {}, lambda n: TOKEN))
    assert hs.fetch(["1"], [])["1"].url is None


def test_a_missing_context_scope_degrades_only_the_context(rsps, make, caplog):
    rsps.post(BATCH_READ, json={"status": "COMPLETE", "results": [
        deal(1, hubspot_owner_id="301")]})
    rsps.post(ASSOC, status=403, json={
        "status": "error", "message": "This app hasn't been granted all required scopes",
        "category": "MISSING_SCOPES",
        "errors": [{"message": "One or more of the following scopes are required.",
                    "context": {"requiredGranularScopes": ["crm.objects.companies.read"]}}]})
    rsps.get(OWNERS, json={"results": [{"id": "301", "firstName": "Ann"}]})
    found = make().fetch(["1"], [])
    assert found["1"].company is None and found["1"].owner == "Ann"
    assert "crm.objects.companies.read" in caplog.text


# --- batch read (docs/hubspot.md §8) -------------------------------------------------------------

def test_fetch_batches_of_100_and_leaves_out_only_not_found(rsps, make):
    ids = [str(i) for i in range(1, 151)]
    rsps.post(BATCH_READ, json={"status": "COMPLETE", "results": [deal(i) for i in ids[:100]]})
    rsps.post(BATCH_READ, status=207, json={
        "status": "COMPLETE", "results": [deal(i) for i in ids[100:149]], "numErrors": 1,
        "errors": [{"status": "error", "category": "OBJECT_NOT_FOUND", "message": "gone",
                    "context": {"ids": ["150"]}}]})
    no_context(rsps, 2)
    found = make().fetch(ids + ["1"], ["hs_priority"])
    assert len(found) == 149 and "150" not in found
    reads = [body(c) for c in rsps.calls if c.request.url == BATCH_READ]
    assert [len(r["inputs"]) for r in reads] == [100, 50]
    assert reads[0]["properties"][0] == "hs_priority"


def test_fetch_raises_when_hubspot_does_not_say_gone(rsps, make):
    rsps.post(BATCH_READ, status=207, json={"status": "COMPLETE", "results": [], "errors": [
        {"category": "INTERNAL_ERROR", "message": "try later", "context": {"ids": ["1"]}}]})
    with pytest.raises(RemoteError):
        make().fetch(["1"], [])


def test_fetch_raises_when_an_id_is_unanswered(rsps, make):
    rsps.post(BATCH_READ, json={"status": "COMPLETE", "results": []})
    with pytest.raises(RemoteError, match="neither"):
        make().fetch(["1"], [])


# --- batch update (docs/hubspot.md §8) -----------------------------------------------------------

def ok_update(rsps, status=200, errors=None, results=None):
    def callback(request):
        inputs = json.loads(request.body)["inputs"]
        failing = {i for e in errors or [] for i in e.get("context", {}).get("ids", [])}
        out = {"status": "COMPLETE", "results": results if results is not None else [
            deal(i["id"], **i["properties"]) for i in inputs if i["id"] not in failing]}
        if errors:
            out.update(numErrors=len(errors), errors=errors)
        return status, {}, json.dumps(out)
    rsps.add_callback(responses.POST, BATCH_UPDATE, callback=callback)


def test_update_chunks_of_100_with_strings_and_empty_for_null(rsps, make):
    for _ in range(3):
        ok_update(rsps)
    updates = [(str(i), {"hs_priority": "high", "pingcode_req_url": None}) for i in range(250)]
    results = make().update(updates)
    assert all(r.ok for r in results) and [r.id for r in results] == [u[0] for u in updates]
    sent = [body(c) for c in rsps.calls]
    assert [len(s["inputs"]) for s in sent] == [100, 100, 50]
    assert sent[0]["inputs"][0] == {"id": "0", "properties": {"hs_priority": "high",
                                                               "pingcode_req_url": ""}}


def test_duplicate_ids_go_to_separate_batches(rsps, make):
    ok_update(rsps)
    ok_update(rsps)
    results = make().update([("1", {"hs_priority": "low"}), ("2", {"hs_priority": "low"}),
                             ("1", {"hs_priority": "high"})])
    assert all(r.ok for r in results)
    assert [[i["id"] for i in body(c)["inputs"]] for c in rsps.calls] == [["1", "2"], ["1"]]


VALIDATION = {"status": "error", "category": "VALIDATION_ERROR",
              "message": "Property values were not valid",
              "errors": [{"message": "urgent was not one of the allowed options", "code":
                          "INVALID_OPTION", "in": "hs_priority",
                          "context": {"propertyName": ["hs_priority"]}}]}


def test_207_fails_only_the_named_deals(rsps, make):
    ok_update(rsps, status=207, errors=[
        {**VALIDATION, "context": {"ids": ["2"], "propertyName": ["hs_priority"]}},
        {"status": "error", "category": "OBJECT_NOT_FOUND", "message": "gone",
         "context": {"ids": ["3"]}}])
    results = make().update([("1", {"hs_priority": "high"}), ("2", {"hs_priority": "urgent"}),
                             ("3", {"hs_priority": "low"})])
    assert [r.ok for r in results] == [True, False, False]
    assert isinstance(results[1].error, ItemError) and not results[1].error.retryable
    assert "hs_priority" in str(results[1].error) and "INVALID_OPTION" in str(results[1].error)
    assert isinstance(results[2].error, NotFound)


def test_a_400_naming_ids_fails_them_and_resends_the_rest(rsps, make):
    named = {**VALIDATION, "correlationId": "x", "context": {"ids": ["2"]},
             "errors": [{**VALIDATION["errors"][0], "context": {"propertyName": ["hs_priority"],
                                                                 "ids": ["2"]}}]}
    rsps.post(BATCH_UPDATE, status=400, json=named)
    ok_update(rsps)
    results = make().update([("1", {"hs_priority": "high"}), ("2", {"hs_priority": "urgent"}),
                             ("3", {"hs_priority": "low"})])
    assert [r.ok for r in results] == [True, False, True]
    assert "hs_priority" in results[1].error.message
    assert [i["id"] for i in body(rsps.calls[1])["inputs"]] == ["1", "3"]


def test_a_400_naming_no_ids_is_bisected(rsps, make):
    def callback(request):
        inputs = json.loads(request.body)["inputs"]
        if any(i["properties"]["hs_priority"] == "urgent" for i in inputs):
            return 400, {}, json.dumps(VALIDATION)
        return 200, {}, json.dumps({"status": "COMPLETE", "results": [deal(i["id"])
                                                                       for i in inputs]})
    rsps.add_callback(responses.POST, BATCH_UPDATE, callback=callback)
    updates = [(str(i), {"hs_priority": "urgent" if i == 5 else "high"}) for i in range(8)]
    results = make().update(updates)
    assert [r.id for r in results if not r.ok] == ["5"]
    assert len(rsps.calls) == 7  # 8 -> 4+4 -> 2+2 -> 1+1: log2, not one call per deal


def test_update_raises_on_auth_failure(rsps, make):
    rsps.post(BATCH_UPDATE, status=401, json={"status": "error", "message": "expired",
                                             "category": "INVALID_AUTHENTICATION"})
    with pytest.raises(AuthError) as caught:
        make().update([("1", {"hs_priority": "high"})])
    assert TOKEN not in caught.value.message


def test_an_outage_mid_update_queues_the_rest(rsps, make):
    ok_update(rsps)
    for _ in range(5):
        rsps.post(BATCH_UPDATE, status=503, json={"status": "error", "message": "down"})
    results = make().update([(str(i), {"hs_priority": "high"}) for i in range(250)])
    assert all(r.ok for r in results[:100])
    assert all(not r.ok and r.error.retryable for r in results[100:])
    assert len(rsps.calls) == 6  # one good batch, five attempts at the second, none at the third


def test_a_5xx_on_a_batch_update_is_retried(rsps, make, sleeps):
    rsps.post(BATCH_UPDATE, status=502, body="<html>bad gateway</html>")
    ok_update(rsps)
    assert make().update([("1", {"hs_priority": "high"})])[0].ok
    assert len(sleeps) == 1


# --- notes (docs/hubspot.md §10) -----------------------------------------------------------------

def test_add_note(rsps, make):
    rsps.post(f"{API}/crm/v3/objects/notes", status=201, json={"id": "77", "properties": {}})
    assert make().add_note("10", "Moved to <Done>") == "77"
    sent = body(rsps.calls[0])
    assert sent["properties"] == {"hs_timestamp": "2025-01-01T12:00:00.000Z",
                                  "hs_note_body": "Moved to &lt;Done&gt;"}
    assert sent["associations"] == [{"to": {"id": "10"}, "types": [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214}]}]


def test_add_note_is_not_resent_after_a_5xx(rsps, make):
    rsps.post(f"{API}/crm/v3/objects/notes", status=504, json={"message": "timeout"})
    with pytest.raises(AmbiguousWrite):
        make().add_note("10", "x")
    assert len(rsps.calls) == 1


# --- properties (docs/hubspot.md §9) -------------------------------------------------------------

DEFINITIONS = {"results": [
    {"name": "hs_priority", "type": "enumeration", "hubspotDefined": True, "options": [
        {"value": "low"}, {"value": "medium"}, {"value": "high"},
        {"value": "old", "hidden": True}]},
    {"name": "dealname", "type": "string", "options": []},
    {"name": "is_vip", "type": "bool", "options": []},
    {"name": "pingcode_req_status", "type": "enumeration", "groupName": "dealsync",
     "options": [{"label": "Open", "value": "open", "displayOrder": 0, "hidden": False}]}]}


def test_field_options_and_missing_fields(rsps, make):
    rsps.get(PROPERTIES, json=DEFINITIONS)
    hs = make()
    assert hs.field_options("hs_priority") == ["low", "medium", "high"]
    assert hs.field_options("dealname") is None
    assert hs.field_options("is_vip") == ["true", "false"]
    assert hs.field_options("nope") is None
    assert hs.missing_fields(["dealname", "nope", "other"]) == ["nope", "other"]
    assert len(rsps.calls) == 1  # definitions are read once


def test_ensure_fields_creates_group_and_properties_and_extends_options(rsps, make):
    rsps.get(PROPERTIES, json=DEFINITIONS)
    rsps.post(f"{PROPERTIES}/groups", status=409, json={"status": "error", "message": "exists",
                                                         "category": "CONFLICT"})
    rsps.post(PROPERTIES, status=201, json={})
    rsps.post(f"{PROPERTIES}/groups", status=201, json={})
    rsps.post(PROPERTIES, status=201, json={})
    rsps.patch(f"{PROPERTIES}/pingcode_req_status", json={})
    changed = make().ensure_fields({"pingcode_req_priority": ["p1", "in_review"],
                                    "pingcode_req_url": None, "hs_priority": ["urgent"],
                                    "pingcode_req_status": ["open", "done"], "dealname": None})
    assert changed == ["pingcode_req_priority", "pingcode_req_url", "pingcode_req_status"]
    enum = body(rsps.calls[2])
    assert (enum["type"], enum["fieldType"], enum["groupName"]) == ("enumeration", "select",
                                                                    "dealsync")
    assert enum["options"] == [
        {"label": "P1", "value": "p1", "displayOrder": 0, "hidden": False},
        {"label": "In review", "value": "in_review", "displayOrder": 1, "hidden": False}]
    assert (body(rsps.calls[4])["type"], body(rsps.calls[4])["fieldType"]) == ("string", "text")
    assert [o["value"] for o in body(rsps.calls[5])["options"]] == ["open", "done"]


# --- OAuth (docs/hubspot.md §3) -----------------------------------------------------------------

def test_oauth_refresh_and_one_replay_after_401(rsps, make):
    tokens = iter(["access-1", "access-2"])

    def mint(request):
        form = parse_qs(request.body)
        assert form == {"grant_type": ["refresh_token"], "client_id": ["cid"],
                        "client_secret": ["csecret"], "refresh_token": ["rtoken"]}
        return 200, {}, json.dumps({"access_token": next(tokens), "refresh_token": "rtoken",
                                    "expires_in": 1800})
    rsps.add_callback(responses.POST, f"{API}/oauth/v1/token", callback=mint)
    rsps.post(BATCH_READ, status=401, json={"status": "error", "message": "expired",
                                           "category": "INVALID_AUTHENTICATION"})
    rsps.post(BATCH_READ, json={"status": "COMPLETE", "results": [deal(1)]})
    no_context(rsps)
    hs = make(auth="oauth")
    assert list(hs.fetch(["1"], [])) == ["1"]
    reads = [c for c in rsps.calls if c.request.url == BATCH_READ]
    assert [c.request.headers["Authorization"] for c in reads] == ["Bearer access-1",
                                                                   "Bearer access-2"]
    assert hs.api_calls()["POST /oauth/v1/token"] == 2


def test_oauth_refused_refresh_is_an_auth_error_without_secrets(rsps, make):
    rsps.post(f"{API}/oauth/v1/token", status=400, json={
        "status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token rtoken"})
    with pytest.raises(AuthError) as caught:
        make(auth="oauth").fetch(["1"], [])
    assert "BAD_REFRESH_TOKEN" in caught.value.message
    assert "rtoken" not in caught.value.message and "csecret" not in caught.value.message


# --- 429 policies (docs/hubspot.md §11) ----------------------------------------------------------

def limited(policy, retry_after=None, interval=None):
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if interval is not None:
        headers["X-HubSpot-RateLimit-Interval-Milliseconds"] = str(interval)
    return {"status": 429, "headers": headers, "json": {
        "status": "error", "message": f"You have reached your {policy.lower()} limit.",
        "errorType": "RATE_LIMIT", "correlationId": "c", "policyName": policy}}


@pytest.mark.parametrize("policy,retry_after,interval,waited", [
    ("TEN_SECONDLY_ROLLING", None, None, 10.0), ("TEN_SECONDLY_ROLLING", 4, None, 4.0),
    ("TEN_SECONDLY_ROLLING", None, 5000, 5.0), ("SECONDLY", None, None, 1.0),
    ("SECONDLY", 3, None, 3.0), ("SOMETHING_NEW", 2, None, 2.0)])
def test_429_waits_by_policy(rsps, make, sleeps, policy, retry_after, interval, waited):
    rsps.post(SEARCH, **limited(policy, retry_after, interval))
    rsps.post(SEARCH, json={"total": 0, "results": []})
    assert list(make().iter_changed(SINCE, UNTIL, [])) == []
    assert sleeps == [waited]


@pytest.mark.parametrize("retry_after", [None, 3600])
def test_daily_429_stops_with_the_reset_time(rsps, make, sleeps, retry_after):
    rsps.post(SEARCH, **limited("DAILY", retry_after))
    hs = make(account_timezone="America/New_York")
    with pytest.raises(RateLimitExhausted) as caught:
        list(hs.iter_changed(SINCE, UNTIL, []))
    assert "resets at midnight" in caught.value.message
    assert "2025-01-02 00:00 EST" in caught.value.message  # NOW is 07:00 in New York
    assert caught.value.exit_code == 6
    assert sleeps == [] and len(rsps.calls) == 1


# --- error mapping (docs/hubspot.md §12) ---------------------------------------------------------

def error(status, category, **extra):
    return {"status": status, "json": {"status": "error", "message": f"{category} happened",
                                       "correlationId": "c", "category": category, **extra}}


def test_401_is_an_auth_error_without_the_token(rsps, make):
    rsps.post(BATCH_READ, **error(401, "INVALID_AUTHENTICATION"))
    with pytest.raises(AuthError) as caught:
        make().fetch(["1"], [])
    assert TOKEN not in caught.value.message + (caught.value.hint or "")
    assert "dealsync auth set acme token" in caught.value.hint


@pytest.mark.parametrize("where", ["context", "errors"])
def test_403_missing_scopes_names_the_scope(rsps, make, where):
    extra = {"context": {"requiredScopes": ["crm.objects.deals.read"]}} if where == "context" \
        else {"errors": [{"message": "scopes", "context": {
            "requiredGranularScopes": ["crm.objects.deals.read"]}}]}
    rsps.post(SEARCH, **error(403, "MISSING_SCOPES", **extra))
    with pytest.raises(AuthError) as caught:
        list(make().iter_changed(SINCE, UNTIL, []))
    assert "crm.objects.deals.read" in caught.value.message
    assert caught.value.exit_code == 3


def test_404_is_not_found(rsps, make):
    rsps.get(PIPELINES, **error(404, "OBJECT_NOT_FOUND"))
    with pytest.raises(NotFound):
        make().http.json("GET", "/crm/v3/pipelines/deals")


def test_validation_error_is_a_non_retryable_item_error_naming_the_property(rsps, make):
    rsps.post(SEARCH, status=400, json={**VALIDATION, "correlationId": "c"})
    with pytest.raises(ItemError) as caught:
        list(make().iter_changed(SINCE, UNTIL, []))
    assert not caught.value.retryable
    assert "property hs_priority" in caught.value.message
    assert len(rsps.calls) == 1  # a 400 is not retried


@pytest.mark.parametrize("status,category,kind", [
    (409, "CONFLICT", ItemError), (414, None, RemoteError), (418, None, ItemError)])
def test_other_statuses(rsps, make, status, category, kind):
    rsps.get(PIPELINES, status=status, json={"status": "error", "message": "m",
                                             **({"category": category} if category else {})})
    with pytest.raises(kind):
        make().http.json("GET", "/crm/v3/pipelines/deals")


def test_5xx_on_reads_retried_then_remote_error(rsps, make, sleeps):
    for _ in range(5):
        rsps.post(SEARCH, status=503, json={"status": "error", "message": "unavailable"})
    with pytest.raises(RemoteError) as caught:
        list(make().iter_changed(SINCE, UNTIL, []))
    assert caught.value.status == 503 and len(sleeps) == 4


def test_connection_error_on_a_read_is_retried(rsps, make):
    import requests
    rsps.post(SEARCH, body=requests.ConnectionError("reset by peer"))
    rsps.post(SEARCH, json={"total": 0, "results": []})
    assert list(make().iter_changed(SINCE, UNTIL, [])) == []


def test_api_calls_are_counted(rsps, make):
    rsps.post(SEARCH, json={"total": 0, "results": []})
    hs = make()
    list(hs.iter_changed(SINCE, UNTIL, []))
    assert hs.api_calls() == {"POST /crm/v3/objects/deals/search": 1}


def test_a_rejected_token_in_a_context_call_is_not_swallowed(rsps, make):
    rsps.post(BATCH_READ, json={"status": "COMPLETE", "results": [deal(1)]})
    rsps.post(ASSOC, **error(401, "INVALID_AUTHENTICATION"))
    with pytest.raises(AuthError):
        make().fetch(["1"], [])
