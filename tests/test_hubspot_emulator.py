"""The HubSpot emulator against the documented behaviour (docs/hubspot.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from plugins.hubspot.emulator import (DEAL_ID_START, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET,
                                      OAUTH_REFRESH_TOKEN, PRIVATE_TOKEN, HubSpotEmulator)

DEALS = "/crm/v3/objects/deals"


@pytest.fixture
def emu(hubspot_server):
    hubspot_server.reset()
    return hubspot_server


class Api:
    """A bare client returning (status, body, headers)."""

    def __init__(self, emu: HubSpotEmulator, token: str | None = PRIVATE_TOKEN):
        self.emu = emu
        self.token = token
        self.session = requests.Session()

    def call(self, method: str, path: str, **kw):
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        response = self.session.request(method, self.emu.url + path, headers=headers, **kw)
        return response.status_code, response.json() if response.content else None, \
            response.headers

    def ok(self, method: str, path: str, **kw):
        status, body, _ = self.call(method, path, **kw)
        assert status in (200, 201, 207), (status, body)
        return body

    def search(self, **body):
        return self.call("POST", DEALS + "/search", json=body)


@pytest.fixture
def api(emu):
    return Api(emu)


def window(since_ms=0, until_ms=None, floor="0"):
    filters = [{"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": str(since_ms)}]
    if until_ms is not None:
        filters.append({"propertyName": "hs_lastmodifieddate", "operator": "LTE",
                        "value": str(until_ms)})
    filters.append({"propertyName": "hs_object_id", "operator": "GTE", "value": floor})
    return [{"filters": filters}]


ID_ASC = [{"propertyName": "hs_object_id", "direction": "ASCENDING"}]


def assert_error_shape(body, category):
    assert body["status"] == "error"
    assert body["category"] == category
    assert body["message"]
    assert len(body["correlationId"]) == 36


# --- auth (docs/hubspot.md §3, §14.2) -----------------------------------------------------------

def test_missing_and_unknown_tokens_are_401(emu):
    for token in (None, "nope"):
        status, body, _ = Api(emu, token).call("GET", DEALS)
        assert status == 401
        assert_error_shape(body, "INVALID_AUTHENTICATION")
        assert body["message"].startswith("Authentication credentials not found")


def test_missing_scope_is_403_naming_it(emu):
    emu.configure(private_tokens={"readonly": ["crm.objects.deals.read"]})
    api = Api(emu, "readonly")
    assert api.call("GET", DEALS)[0] == 200
    status, body, _ = api.call("PATCH", f"{DEALS}/1", json={"properties": {}})
    assert status == 403
    assert_error_shape(body, "MISSING_SCOPES")
    assert body["context"]["requiredScopes"] == ["crm.objects.deals.write"]


def oauth(emu, **form):
    data = {"grant_type": "refresh_token", "client_id": OAUTH_CLIENT_ID,
            "client_secret": OAUTH_CLIENT_SECRET, "refresh_token": OAUTH_REFRESH_TOKEN, **form}
    response = requests.post(emu.url + "/oauth/v1/token", data=data)
    return response.status_code, response.json()


def test_oauth_refresh_mints_expiring_tokens(emu):
    status, body = oauth(emu)
    assert status == 200
    assert body["expires_in"] == 1800 and body["token_type"] == "bearer"
    api = Api(emu, body["access_token"])
    assert api.call("GET", DEALS)[0] == 200
    emu.clock.advance(1800 * 1000)
    status, body, _ = api.call("GET", DEALS)
    assert status == 401 and "expired" in body["message"]


def test_expire_tokens_control_route(emu):
    token = oauth(emu)[1]["access_token"]
    api = Api(emu, token)
    assert api.call("GET", DEALS)[0] == 200
    assert requests.post(emu.url + "/__emu/expire_tokens", json={}).json() == {"expired": 1}
    assert api.call("GET", DEALS)[0] == 401
    assert Api(emu).call("GET", DEALS)[0] == 200  # private tokens never expire


def test_oauth_bad_credentials(emu):
    status, body = oauth(emu, refresh_token="stale")
    assert status == 400 and body["status"] == "BAD_REFRESH_TOKEN"
    status, body = oauth(emu, client_secret="wrong")
    assert status == 400 and body["status"] == "BAD_CLIENT_ID"


def test_rotating_refresh_tokens(emu):
    emu.configure(rotate_refresh=True)
    first = oauth(emu)[1]
    assert first["refresh_token"] != OAUTH_REFRESH_TOKEN
    assert oauth(emu)[0] == 400  # the old refresh token is spent
    assert oauth(emu, refresh_token=first["refresh_token"])[0] == 200


# --- list and get (docs/hubspot.md §5, §14.2) ---------------------------------------------------

def test_list_pages_by_opaque_cursor_until_no_paging(emu, api):
    emu.seed_deals(25)
    body = api.ok("GET", DEALS)
    assert len(body["results"]) == 10  # default limit
    seen = []
    params = {"limit": 10}
    while True:
        body = api.ok("GET", DEALS, params=params)
        seen += [r["id"] for r in body["results"]]
        if "paging" not in body:
            break
        params["after"] = body["paging"]["next"]["after"]
        assert not params["after"].isdigit()  # opaque, not an offset
    assert seen == [str(DEAL_ID_START + i) for i in range(25)]


def test_list_limit_clamps_or_refuses(emu, api):
    emu.seed_deals(150)
    assert len(api.ok("GET", DEALS, params={"limit": 500})["results"]) == 100
    emu.configure(list_over_limit="400")
    assert api.call("GET", DEALS, params={"limit": 101})[0] == 400


def test_list_properties_and_associations(emu, api):
    made = emu.seed(companies=[{"name": "Acme", "domain": "acme.test"}],
                    deals=[{"properties": {"dealname": "Big", "hs_priority": "high"},
                            "companies": [0]}])
    body = api.ok("GET", DEALS, params={"properties": "dealname,hs_priority,nonsense",
                                        "associations": "companies"})
    record = body["results"][0]
    assert record["properties"]["hs_priority"] == "high"
    assert "nonsense" not in record["properties"]  # unknown names are ignored
    assert record["associations"]["companies"]["results"][0]["id"] == made["companies"][0]


def test_get_one_and_404_shape(emu, api):
    deal_id = emu.seed_deals(1)[0]
    body = api.ok("GET", f"{DEALS}/{deal_id}", params={"properties": "amount"})
    assert body["id"] == deal_id and isinstance(body["properties"]["amount"], str)
    assert set(body) >= {"id", "properties", "createdAt", "updatedAt", "archived"}
    status, body, _ = api.call("GET", f"{DEALS}/999")
    assert status == 404
    assert_error_shape(body, "OBJECT_NOT_FOUND")


def test_archived_deals_leave_reads(emu, api):
    ids = emu.seed_deals(3)
    emu.archive([ids[1]])
    assert [r["id"] for r in api.ok("GET", DEALS)["results"]] == [ids[0], ids[2]]
    assert api.call("GET", f"{DEALS}/{ids[1]}")[0] == 404
    assert api.ok("GET", f"{DEALS}/{ids[1]}", params={"archived": "true"})["archived"] is True
    assert api.ok("POST", DEALS + "/search", json={})["total"] == 2


# --- create / patch validation (docs/hubspot.md §14.3) ----------------------------------------

def codes(body):
    return {(e["code"], e["in"]) for e in body["errors"]}


def test_create_returns_strings_and_ids_in_order(emu, api):
    status, body, _ = api.call("POST", DEALS, json={"properties": {
        "dealname": "New", "amount": 12.5, "dealstage": "qualifiedtobuy",
        "closedate": "2025-03-01"}})
    assert status == 201
    assert body["id"] == str(DEAL_ID_START)
    assert body["properties"]["amount"] == "12.5"
    assert body["properties"]["closedate"] == "2025-03-01T00:00:00.000Z"
    assert body["properties"]["pipeline"] == "default"
    assert api.ok("POST", DEALS, json={"properties": {"dealname": "x"}})["id"] == \
        str(DEAL_ID_START + 1)


def test_validation_codes(emu, api):
    deal_id = emu.seed_deals(1)[0]
    status, body, _ = api.call("PATCH", f"{DEALS}/{deal_id}", json={"properties": {
        "nope": "1", "hs_priority": "urgent", "amount": "ten", "hs_lastmodifieddate": "1",
        "dealstage": "not-a-stage"}})
    assert status == 400
    assert_error_shape(body, "VALIDATION_ERROR")
    assert codes(body) == {("PROPERTY_DOESNT_EXIST", "nope"), ("INVALID_OPTION", "hs_priority"),
                           ("INVALID_DECIMAL", "amount"),
                           ("READ_ONLY_VALUE", "hs_lastmodifieddate"),
                           ("INVALID_OPTION", "dealstage")}
    assert body["errors"][0]["context"]["propertyName"] == ["nope"]
    assert emu.history(deal_id)[-1]["source"] == "seed"  # nothing was written


def test_patch_sets_modified_time_and_null_clears(emu, api):
    deal_id = emu.seed_deals(1, properties={"description": "old"})[0]
    before = api.ok("GET", f"{DEALS}/{deal_id}")["updatedAt"]
    emu.clock.advance(5000)
    body = api.ok("PATCH", f"{DEALS}/{deal_id}", json={"properties": {"description": None}})
    assert body["properties"].get("description") is None
    assert body["updatedAt"] > before
    assert body["properties"]["hs_lastmodifieddate"] == body["updatedAt"]


def test_touch_on_noop(emu, api):
    deal_id = emu.seed_deals(1, properties={"hs_priority": "low"})[0]
    stamp = api.ok("GET", f"{DEALS}/{deal_id}")["updatedAt"]
    body = api.ok("PATCH", f"{DEALS}/{deal_id}", json={"properties": {"hs_priority": "low"}})
    assert body["updatedAt"] > stamp  # HubSpot bumps the time even when nothing changed
    emu.configure(touch_on_noop=False)
    again = api.ok("PATCH", f"{DEALS}/{deal_id}", json={"properties": {"hs_priority": "low"}})
    assert again["updatedAt"] == body["updatedAt"]


# --- batch (docs/hubspot.md §8) ------------------------------------------------------------------

def test_batch_read_reports_missing_with_207(emu, api):
    ids = emu.seed_deals(2)
    status, body, _ = api.call("POST", DEALS + "/batch/read", json={
        "properties": ["dealname"], "inputs": [{"id": ids[0]}, {"id": "42"}, {"id": ids[1]}]})
    assert status == 207
    assert [r["id"] for r in body["results"]] == [ids[0], ids[1]]
    assert body["numErrors"] == 1
    assert body["errors"][0]["category"] == "OBJECT_NOT_FOUND"
    assert body["errors"][0]["context"]["ids"] == ["42"]
    status, body, _ = api.call("POST", DEALS + "/batch/read", json={
        "inputs": [{"id": ids[0]}]})
    assert status == 200 and "errors" not in body


def test_batch_limits(emu, api):
    ids = emu.seed_deals(101)
    for route in ("read", "update"):
        status, body, _ = api.call("POST", f"{DEALS}/batch/{route}",
                                   json={"inputs": [{"id": i, "properties": {}} for i in ids]})
        assert status == 400 and body["category"] == "VALIDATION_ERROR"
    status, body, _ = api.call("POST", DEALS + "/batch/update", json={"inputs": [
        {"id": ids[0], "properties": {}}, {"id": ids[0], "properties": {}}]})
    assert status == 400 and body["context"]["ids"] == [ids[0]]
    assert "Duplicate" in body["message"]


def test_batch_update_partial_failure_is_207_naming_the_ids(emu, api):
    ids = emu.seed_deals(3, properties={"hs_priority": "low"})
    status, body, _ = api.call("POST", DEALS + "/batch/update", json={"inputs": [
        {"id": ids[0], "properties": {"hs_priority": "high"}},
        {"id": ids[1], "properties": {"hs_priority": "HIGHEST"}},
        {"id": ids[2], "properties": {"hs_priority": "medium"}},
        {"id": "77", "properties": {"hs_priority": "medium"}}]})
    assert status == 207
    assert body["status"] == "COMPLETE"
    assert sorted(r["id"] for r in body["results"]) == [ids[0], ids[2]]
    assert body["numErrors"] == 2
    by_category = {e["category"]: e for e in body["errors"]}
    assert by_category["VALIDATION_ERROR"]["context"]["ids"] == [ids[1]]
    assert by_category["VALIDATION_ERROR"]["errors"][0]["code"] == "INVALID_OPTION"
    assert by_category["OBJECT_NOT_FOUND"]["context"]["ids"] == ["77"]
    assert emu.deal(ids[1])["properties"]["hs_priority"] == "low"
    assert emu.deal(ids[2])["properties"]["hs_priority"] == "medium"


@pytest.mark.parametrize("mode", ["400_all", "400_opaque"])
def test_batch_update_whole_batch_modes(emu, api, mode):
    emu.configure(batch_partial_mode=mode)
    ids = emu.seed_deals(2, properties={"hs_priority": "low"})
    status, body, _ = api.call("POST", DEALS + "/batch/update", json={"inputs": [
        {"id": ids[0], "properties": {"hs_priority": "high"}},
        {"id": ids[1], "properties": {"hs_priority": "bad"}}]})
    assert status == 400
    assert_error_shape(body, "VALIDATION_ERROR")
    assert ("ids" in body["context"]) == (mode == "400_all")
    if mode == "400_all":
        assert body["context"]["ids"] == [ids[1]]
    assert emu.deal(ids[0])["properties"]["hs_priority"] == "low"  # nothing applied


def test_batch_update_success(emu, api):
    ids = emu.seed_deals(2)
    status, body, _ = api.call("POST", DEALS + "/batch/update", json={"inputs": [
        {"id": i, "properties": {"description": "x"}} for i in ids]})
    assert status == 200
    assert set(body) >= {"status", "results", "startedAt", "completedAt"}
    assert [v["source"] for v in emu.history(ids[0])] == ["seed", "api:batch_update"]


# --- search (docs/hubspot.md §6, §7, §14.4) ------------------------------------------------------

def test_search_ten_thousand_cap(emu, api):
    emu.seed_deals(10_250)
    emu.configure(search_rps=10_000, burst_max=10_000)
    status, body, _ = api.search(filterGroups=window(), sorts=ID_ASC, limit=200, after="9800")
    assert status == 200
    assert body["total"] == 10_250  # the true count, even past the cap
    assert body["paging"]["next"]["after"] == "10000"
    assert body["results"][-1]["id"] == str(DEAL_ID_START + 9999)
    status, body, _ = api.search(filterGroups=window(), sorts=ID_ASC, limit=200, after="10000")
    assert status == 400
    assert_error_shape(body, "VALIDATION_ERROR")
    assert "10000" in body["message"]
    assert api.search(limit=200, after="9801")[0] == 400  # offset + limit > cap


def test_search_default_limit_paging_and_sort(emu, api):
    emu.seed_deals(25)
    body = api.ok("POST", DEALS + "/search", json={})
    assert len(body["results"]) == 10 and body["total"] == 25
    assert body["paging"]["next"]["after"] == "10"
    last = api.ok("POST", DEALS + "/search", json={"after": "20"})
    assert "paging" not in last and len(last["results"]) == 5
    assert [r["id"] for r in body["results"]] == [str(DEAL_ID_START + i) for i in range(10)]
    down = api.ok("POST", DEALS + "/search", json={
        "sorts": [{"propertyName": "hs_object_id", "direction": "DESCENDING"}], "limit": 3})
    assert [r["id"] for r in down["results"]] == [str(DEAL_ID_START + 24 - i) for i in range(3)]


def test_search_limit_over_200(emu, api):
    emu.seed_deals(250)
    assert len(api.ok("POST", DEALS + "/search", json={"limit": 500})["results"]) == 200
    emu.configure(search_over_limit="400")
    assert api.search(limit=201)[0] == 400


def test_search_filter_and_sort_limits(emu, api):
    emu.configure(search_rps=100)
    f = {"propertyName": "amount", "operator": "GT", "value": "0"}
    assert api.search(filterGroups=[{"filters": [f]}] * 5)[0] == 200
    assert api.search(filterGroups=[{"filters": [f]}] * 6)[0] == 400
    assert api.search(filterGroups=[{"filters": [f] * 7}])[0] == 400
    assert api.search(filterGroups=[{"filters": [f] * 6}] * 3 + [{"filters": [f]}])[0] == 400
    assert api.search(sorts=ID_ASC * 2)[0] == 400
    assert api.search(filterGroups=[{"filters": [{**f, "operator": "LIKE"}]}])[0] == 400


def test_search_default_properties_and_replacement(emu, api):
    emu.seed_deals(1, properties={"hs_priority": "high"})
    record = api.ok("POST", DEALS + "/search", json={})["results"][0]
    assert set(record["properties"]) == {"dealname", "amount", "closedate", "pipeline",
                                         "dealstage", "createdate", "hs_lastmodifieddate",
                                         "hs_object_id"}
    record = api.ok("POST", DEALS + "/search", json={"properties": ["hs_priority"]})["results"][0]
    assert set(record["properties"]) == {"hs_priority", "createdate", "hs_lastmodifieddate",
                                         "hs_object_id"}


def ids_of(api, *filters, groups=None, **body):
    groups = groups or [{"filters": list(filters)}]
    result = api.ok("POST", DEALS + "/search", json={"filterGroups": groups, "limit": 200, **body})
    return [int(r["id"]) - DEAL_ID_START for r in result["results"]]


def test_search_operators(emu, api):
    emu.configure(search_rps=100)
    made = emu.seed(deals=[
        {"properties": {"dealname": "Alpha Widget", "amount": "100", "hs_priority": "low"}},
        {"properties": {"dealname": "beta gadget", "amount": "250", "hs_priority": "high"}},
        {"properties": {"dealname": "Gamma", "amount": "9"}},
    ])
    assert len(made["deals"]) == 3
    eq = {"propertyName": "hs_priority", "operator": "EQ", "value": "HIGH"}  # case-insensitive
    assert ids_of(api, eq) == [1]
    assert ids_of(api, {**eq, "operator": "NEQ"}) == [0, 2]
    assert ids_of(api, {"propertyName": "amount", "operator": "GT", "value": "99"}) == [0, 1]
    assert ids_of(api, {"propertyName": "amount", "operator": "LT", "value": "100"}) == [2]
    assert ids_of(api, {"propertyName": "amount", "operator": "BETWEEN", "value": "50",
                        "highValue": "100"}) == [0]
    assert ids_of(api, {"propertyName": "hs_priority", "operator": "IN",
                        "values": ["low", "high"]}) == [0, 1]
    assert ids_of(api, {"propertyName": "hs_priority", "operator": "NOT_IN",
                        "values": ["low"]}) == [1, 2]
    assert ids_of(api, {"propertyName": "hs_priority", "operator": "HAS_PROPERTY"}) == [0, 1]
    assert ids_of(api, {"propertyName": "hs_priority", "operator": "NOT_HAS_PROPERTY"}) == [2]
    assert ids_of(api, {"propertyName": "dealname", "operator": "CONTAINS_TOKEN",
                        "value": "widget"}) == [0]
    assert ids_of(api, {"propertyName": "dealname", "operator": "NOT_CONTAINS_TOKEN",
                        "value": "gad*"}) == [0, 2]
    # groups are ORed, filters within a group ANDed
    assert ids_of(api, groups=[{"filters": [eq]}, {"filters": [
        {"propertyName": "amount", "operator": "LT", "value": "10"}]}]) == [1, 2]
    assert ids_of(api, query="alpha") == [0]


def test_search_dates_accept_ms_and_iso(emu, api):
    emu.seed_deals(5, start="2025-01-01T00:00:00Z", step_ms=60_000)
    iso_filter = {"propertyName": "hs_lastmodifieddate", "operator": "GTE",
                  "value": "2025-01-01T00:02:00Z"}
    assert ids_of(api, iso_filter) == [2, 3, 4]
    ms = str(1735689600000 + 120_000)
    assert ids_of(api, {**iso_filter, "value": ms}) == [2, 3, 4]
    assert ids_of(api, {**iso_filter, "operator": "LTE", "value": ms}) == [0, 1, 2]


def test_search_sees_the_previous_version_until_the_index_catches_up(emu, api):
    emu.configure(search_lag_ms=5000)
    deal_id = emu.seed_deals(1, properties={"hs_priority": "low"})[0]
    emu.mutate(deal_id, {"hs_priority": "high"})
    query = {"properties": ["hs_priority"]}
    stale = api.ok("POST", DEALS + "/search", json=query)["results"][0]
    assert stale["properties"]["hs_priority"] == "low"
    # GET and batch read are never stale
    assert api.ok("GET", f"{DEALS}/{deal_id}", params={"properties": "hs_priority"})[
        "properties"]["hs_priority"] == "high"
    created = api.ok("POST", DEALS, json={"properties": {"dealname": "fresh"}})
    assert api.ok("POST", DEALS + "/search", json=query)["total"] == 1  # not indexed yet
    emu.clock.advance(5000)
    fresh = api.ok("POST", DEALS + "/search", json=query)
    assert fresh["total"] == 2
    assert fresh["results"][0]["properties"]["hs_priority"] == "high"
    assert fresh["results"][1]["id"] == created["id"]


def test_search_random_default_order_is_stable_per_query(emu, api):
    emu.seed_deals(30)
    emu.configure(default_sort="random")
    first = api.ok("POST", DEALS + "/search", json={"limit": 15})
    second = api.ok("POST", DEALS + "/search", json={"limit": 15, "after": "15"})
    ids = [r["id"] for r in first["results"] + second["results"]]
    assert sorted(ids) == [str(DEAL_ID_START + i) for i in range(30)]
    assert ids != sorted(ids)


def test_same_timestamp_bulk_touch(emu, api):
    emu.seed_deals(20)
    touched = emu.bulk_touch(count=12, at="2025-02-01T00:00:00Z")
    assert len(touched) == 12
    stamps = {emu.deal(i)["properties"]["hs_lastmodifieddate"] for i in touched}
    assert stamps == {"2025-02-01T00:00:00.000Z"}


# --- properties, pipelines, owners, companies, notes (docs/hubspot.md §4, §9, §10) ---------------

def test_properties_definitions_and_create(emu, api):
    names = {p["name"] for p in api.ok("GET", "/crm/v3/properties/deals")["results"]}
    assert {"dealname", "hs_priority", "hs_lastmodifieddate"} <= names
    priority = api.ok("GET", "/crm/v3/properties/deals/hs_priority")
    assert [o["value"] for o in priority["options"]] == ["low", "medium", "high"]
    assert api.call("GET", "/crm/v3/properties/deals/nope")[0] == 404
    spec = {"name": "pingcode_req_status", "label": "Status", "groupName": "dealinformation",
            "type": "enumeration", "fieldType": "select",
            "options": [{"label": "Open", "value": "open"}, {"label": "Done", "value": "done"}]}
    status, body, _ = api.call("POST", "/crm/v3/properties/deals", json=spec)
    assert status == 201
    assert set(body) >= {"name", "label", "type", "fieldType", "groupName", "options",
                         "hasUniqueValue", "modificationMetadata"}
    status, body, _ = api.call("POST", "/crm/v3/properties/deals", json=spec)
    assert status == 409
    assert_error_shape(body, "CONFLICT")
    bad = {**spec, "name": "other", "type": "string", "fieldType": "select"}
    assert api.call("POST", "/crm/v3/properties/deals", json=bad)[0] == 400
    assert api.call("POST", "/crm/v3/properties/deals",
                    json={**spec, "name": "x2", "groupName": "missing"})[0] == 400
    deal_id = emu.seed_deals(1)[0]
    assert api.call("PATCH", f"{DEALS}/{deal_id}",
                    json={"properties": {"pingcode_req_status": "done"}})[0] == 200
    assert api.call("PATCH", f"{DEALS}/{deal_id}",
                    json={"properties": {"pingcode_req_status": "Done"}})[0] == 400


def test_property_groups(emu, api):
    status, _, _ = api.call("POST", "/crm/v3/properties/deals/groups",
                            json={"name": "dealsync", "label": "dealsync"})
    assert status == 201
    assert api.call("POST", "/crm/v3/properties/deals/groups", json={"name": "dealsync"})[0] == 409
    assert "dealsync" in {g["name"] for g in api.ok("GET", "/crm/v3/properties/deals/groups")[
        "results"]}


def test_pipeline_stages_carry_closed_metadata(emu, api):
    pipeline = api.ok("GET", "/crm/v3/pipelines/deals")["results"][0]
    assert pipeline["id"] == "default"
    stages = {s["id"]: s["metadata"] for s in pipeline["stages"]}
    assert stages["closedwon"]["isClosed"] == "true"
    assert stages["closedlost"]["isClosed"] == "true"
    assert stages["appointmentscheduled"]["isClosed"] == "false"


def test_owners_companies_and_v4_associations(emu, api):
    made = emu.seed(companies=[{"name": "Acme", "domain": "acme.test"}, {"name": "Globex"}],
                    owners=[{"email": "ann@x.test", "firstName": "Ann", "lastName": "Lee"}],
                    deals=[{"properties": {"dealname": "D1"}, "companies": [0, 1], "owner": 0},
                           {"properties": {"dealname": "D2"}}])
    owners = api.ok("GET", "/crm/v3/owners")["results"]
    assert owners[0]["id"] == "30001" and owners[0]["firstName"] == "Ann"
    assert emu.deal(made["deals"][0])["properties"]["hubspot_owner_id"] == "30001"
    acme, globex = made["companies"]
    assert acme == "20000000001"
    assert api.ok("GET", f"/crm/v3/objects/companies/{acme}")["properties"]["name"] == "Acme"
    status, body, _ = api.call("POST", "/crm/v3/objects/companies/batch/read", json={
        "properties": ["name"], "inputs": [{"id": globex}, {"id": "1"}]})
    assert status == 207 and body["results"][0]["properties"]["name"] == "Globex"
    single = api.ok("GET", f"/crm/v4/objects/deals/{made['deals'][0]}/associations/companies")
    assert single["results"][0] == {"toObjectId": int(acme), "associationTypes": [
        {"category": "HUBSPOT_DEFINED", "typeId": 5, "label": "Primary"},
        {"category": "HUBSPOT_DEFINED", "typeId": 341, "label": None}]}
    batch = api.ok("POST", "/crm/v4/associations/deals/companies/batch/read",
                   json={"inputs": [{"id": d} for d in made["deals"]]})
    assert [r["from"]["id"] for r in batch["results"]] == [made["deals"][0]]
    assert [t["toObjectId"] for t in batch["results"][0]["to"]] == [int(acme), int(globex)]


def note(deal_id, body="Requirement REQ-42 moved to Done", type_id=214, stamp=True):
    props = {"hs_note_body": body}
    if stamp:
        props["hs_timestamp"] = "2025-01-15T10:30:00.000Z"
    return {"properties": props, "associations": [{"to": {"id": deal_id}, "types": [
        {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]}]}


def test_notes(emu, api):
    deal_id = emu.seed_deals(1)[0]
    status, body, _ = api.call("POST", "/crm/v3/objects/notes", json=note(deal_id))
    assert status == 201
    assert api.call("POST", "/crm/v3/objects/notes", json=note(deal_id, stamp=False))[0] == 400
    assert api.call("POST", "/crm/v3/objects/notes", json=note(deal_id, "x" * 65_537))[0] == 400
    assert api.call("POST", "/crm/v3/objects/notes", json=note(deal_id, type_id=3))[0] == 400
    status, body, _ = api.call("POST", "/crm/v3/objects/notes/batch/create",
                               json={"inputs": [note(deal_id, "a"), note(deal_id, "b")]})
    assert status == 201 and len(body["results"]) == 2
    listed = api.ok("GET", "/crm/v3/objects/notes", params={"associations": "deals"})["results"]
    assert len(listed) == 3
    assert listed[0]["associations"]["deals"]["results"][0]["id"] == deal_id
    assert [n["properties"]["hs_note_body"] for n in emu.notes_for(deal_id)] == [
        "Requirement REQ-42 moved to Done", "a", "b"]


# --- rate limits (docs/hubspot.md §11, §14.5) ----------------------------------------------------

def test_burst_limit_429_body_and_recovery(emu, api):
    emu.configure(burst_max=3)
    for _ in range(3):
        status, _, headers = api.call("GET", DEALS)
        assert status == 200
    status, body, headers = api.call("GET", DEALS)
    assert status == 429
    assert body == {"status": "error",
                    "message": "You have reached your ten_secondly_rolling limit.",
                    "errorType": "RATE_LIMIT", "correlationId": body["correlationId"],
                    "policyName": "TEN_SECONDLY_ROLLING", "requestId": body["requestId"]}
    assert "Retry-After" not in headers  # HubSpot often omits it
    assert headers["X-HubSpot-RateLimit-Remaining"] == "0"
    emu.configure(retry_after="seconds")
    status, _, headers = api.call("GET", DEALS)
    assert status == 429 and 1 <= int(headers["Retry-After"]) <= 10
    emu.clock.advance(10_000)
    assert api.call("GET", DEALS)[0] == 200
    assert emu.stats()["rate_limited"] == {"TEN_SECONDLY_ROLLING": 2}


def test_search_secondly_limit(emu, api):
    emu.configure(search_rps=2)
    assert api.search()[0] == 200 and api.search()[0] == 200
    status, body, headers = api.search()
    assert status == 429
    assert body["policyName"] == "SECONDLY"
    assert body["message"] == "You have reached your secondly limit."
    assert body["groupName"].startswith("publicapi:")
    assert api.call("GET", DEALS)[0] == 200  # other endpoints still flow
    emu.clock.advance(1000)
    assert api.search()[0] == 200


def test_daily_limit_resets_at_midnight(emu, api):
    emu.configure(daily_max=2, retry_after="seconds")
    assert api.call("GET", DEALS)[0] == 200
    _, _, headers = api.call("GET", DEALS)
    assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
    status, body, headers = api.call("GET", DEALS)
    assert status == 429 and body["policyName"] == "DAILY"
    assert body["message"] == "You have reached your daily limit."
    assert 86_000 < int(headers["Retry-After"]) <= 86_400
    emu.clock.advance(86_400_000)
    assert api.call("GET", DEALS)[0] == 200


def test_rate_headers_on_non_search_only(emu, api):
    _, _, headers = api.call("GET", DEALS)
    assert headers["X-HubSpot-RateLimit-Max"] == "100"
    assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    assert headers["X-HubSpot-RateLimit-Remaining"] == "99"
    assert headers["X-HubSpot-RateLimit-Daily"] == "250000"
    assert not any(h.lower().startswith("x-hubspot-ratelimit") for h in api.search()[2])
    emu.configure(auth_kind="oauth")
    assert "X-HubSpot-RateLimit-Daily" not in api.call("GET", DEALS)[2]


# --- control API (docs/hubspot.md §14.6) ---------------------------------------------------------

def test_control_api_over_http(emu, api):
    ctl = requests.Session()
    base = emu.url + "/__emu"
    seeded = ctl.post(base + "/seed/deals", json={
        "count": 30, "start": "2025-01-01T00:00:00Z", "step_ms": 1000, "same_ts_block": 20}).json()
    assert seeded == {"count": 30, "first_id": "10000000001", "last_id": "10000000030"}
    stamps = [emu.deal(str(DEAL_ID_START + i))["properties"]["hs_lastmodifieddate"]
              for i in range(30)]
    assert len(set(stamps[:20])) == 1 and len(set(stamps)) == 11
    made = ctl.post(base + "/seed", json={"companies": [{"name": "Acme"}], "deals": [
        {"properties": {"dealname": "Acme renewal", "amount": "5000"}, "companies": [0]}]}).json()
    assert made["deals"] == ["10000000031"]
    mutated = ctl.post(base + "/mutate", json={"id": "10000000031",
                                               "properties": {"hs_priority": "high"}}).json()
    assert mutated["properties"]["hs_priority"] == "high"
    assert ctl.post(base + "/mutate", json={"id": "10000000031", "properties": {
        "hs_priority": "x"}}).status_code == 400
    assert ctl.post(base + "/bulk_touch", json={"ids": ["10000000001"]}).json() == {
        "ids": ["10000000001"]}
    assert ctl.post(base + "/archive", json={"ids": ["10000000002"]}).json() == {
        "ids": ["10000000002"]}
    history = ctl.get(base + "/deals/10000000031/history").json()["versions"]
    assert [v["source"] for v in history] == ["seed", "mutate:rep"]
    assert history[1]["changed"] == {"hs_priority": "high"}
    api.call("GET", DEALS)
    stats = ctl.get(base + "/stats").json()
    assert stats["routes"]["GET /crm/v3/objects/deals"] == 1
    assert stats["rate_limited"] == {}
    assert ctl.post(base + "/config", json={"nope": 1}).status_code == 400
    assert ctl.post(base + "/clock", json={"set": "2025-06-01T00:00:00Z"}).json() == {
        "now": "2025-06-01T00:00:00.000Z"}


def test_faults_from_the_kit(emu, api):
    requests.post(emu.url + "/__emu/faults", json=[
        {"match": "POST /crm/v3/objects/deals/search", "nth": [1], "status": 503}])
    assert api.search()[0] == 503
    assert api.search()[0] == 200


def test_correlation_ids_are_deterministic(emu, api):
    first = api.call("GET", f"{DEALS}/1")[1]["correlationId"]
    emu.reset()
    assert api.call("GET", f"{DEALS}/1")[1]["correlationId"] == first


def test_clock_ticks_per_request(emu, api):
    before = emu.now_ms()
    api.call("GET", DEALS)
    api.call("GET", DEALS)
    assert emu.now_ms() - before == 2


def test_runs_standalone():
    process = subprocess.Popen([sys.executable, "-m", "plugins.hubspot.emulator", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = line.split(" listening on ")[1].split()[0]
        response = requests.get(url + DEALS, headers={"Authorization": f"Bearer {PRIVATE_TOKEN}"},
                                timeout=5)
        assert response.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=5)
