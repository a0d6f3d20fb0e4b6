"""The Salesforce emulator against the documented behaviour."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from plugins.salesforce.emulator import (CLIENT_ID, CLIENT_SECRET, JWT_GRANT, REFRESH_TOKEN,
                                         SESSION_EXPIRED, USERNAME, SalesforceEmulator)
from plugins.salesforce.schema import id18, normalize_id

ROOT = Path(__file__).resolve().parents[1]
V = "/services/data/v60.0"
OPP = "Opportunity"
EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)
WINDOW = "SELECT Id, SystemModstamp FROM Opportunity WHERE SystemModstamp >= {} " \
         "ORDER BY SystemModstamp, Id"




@pytest.fixture
def emu(salesforce_server):
    salesforce_server.reset()
    return salesforce_server


class Api:
    """A bare REST client: OAuth login, calls, and paging through ``nextRecordsUrl``."""

    def __init__(self, emu: SalesforceEmulator, verify: bool | str = True):
        self.emu = emu
        self.session = requests.Session()
        # Per request: a session-level setting would lose to REQUESTS_CA_BUNDLE in the env.
        self.verify = verify
        self.token: str | None = None

    def grant(self, **form) -> requests.Response:
        return self.session.post(self.emu.url + "/services/oauth2/token", data=form,
                                 verify=self.verify)

    def login(self) -> "Api":
        reply = self.grant(grant_type="client_credentials", client_id=CLIENT_ID,
                           client_secret=CLIENT_SECRET)
        assert reply.status_code == 200, reply.text
        self.token = reply.json()["access_token"]
        return self

    def call(self, method: str, path: str, headers: dict | None = None, **kw) -> requests.Response:
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return self.session.request(method, self.emu.url + path, headers=headers,
                                    verify=self.verify, **kw)

    def ok(self, method: str, path: str, **kw):
        reply = self.call(method, path, **kw)
        assert reply.status_code == 200, (reply.status_code, reply.text)
        return reply.json()

    def query(self, soql: str, endpoint: str = "query", **kw) -> requests.Response:
        return self.call("GET", f"{V}/{endpoint}", params={"q": soql}, **kw)

    def pages(self, soql: str, endpoint: str = "query", **kw) -> list[dict]:
        first = self.query(soql, endpoint, **kw)
        assert first.status_code == 200, first.text
        pages = [first.json()]
        while not pages[-1]["done"]:
            pages.append(self.ok("GET", pages[-1]["nextRecordsUrl"]))
        return pages

    def patch_many(self, records: list[dict], all_or_none: bool = False) -> requests.Response:
        return self.call("PATCH", f"{V}/composite/sobjects",
                         json={"allOrNone": all_or_none, "records": records})


@pytest.fixture
def api(emu):
    return Api(emu).login()


def sf_time(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def soql_time(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def records_of(pages: list[dict]) -> list[dict]:
    return [record for page in pages for record in page["records"]]


def upd(record_id: str, **fields) -> dict:
    return {"attributes": {"type": OPP}, "id": record_id, **fields}


def assert_error(reply: requests.Response, status: int, code: str) -> list[dict]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    # array envelope, docs/salesforce.md §9
    assert isinstance(body, list) and body[0]["errorCode"] == code, body
    assert body[0]["message"]
    return body


def jwt(alg: str = "RS256", **claims) -> str:
    """An assertion with a placeholder signature: the emulator checks claims, not signatures."""
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    body = {"iss": CLIENT_ID, "sub": USERNAME, "aud": "https://login.salesforce.com",
            "exp": int(time.time()) + 120, **claims}
    return f"{part({'alg': alg, 'typ': 'JWT'})}.{part(body)}.c2lnbmF0dXJl"


def advance(emu: SalesforceEmulator, **delta) -> None:
    emu.clock.advance(timedelta(**delta).total_seconds() * 1000)


# --- ids (docs/salesforce.md §2) ------------------------------------------------------------------

def test_ids_are_18_characters_with_the_case_checksum(emu):
    ids = emu.seed_opportunities(3)
    assert all(re.fullmatch(r"006[0-9A-Za-z]{15}", i) for i in ids)
    assert id18("001A0000006Vm9r") == "001A0000006Vm9rIAC"  # a worked example
    assert normalize_id(ids[0][:15]) == ids[0]
    assert normalize_id(ids[0][:15] + "XXX") is None
    assert sorted(ids) == ids  # ORDER BY Id follows creation order


# --- auth (docs/salesforce.md §1) -----------------------------------------------------------------

def test_client_credentials_reply_has_instance_url_and_no_expiry(emu):
    reply = Api(emu).grant(grant_type="client_credentials", client_id=CLIENT_ID,
                           client_secret=CLIENT_SECRET)
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"access_token", "instance_url", "id", "token_type", "issued_at",
                         "signature"}
    assert body["instance_url"] == emu.url
    assert body["token_type"] == "Bearer"
    assert re.fullmatch(r"00D\w{12}!\S+", body["access_token"])
    assert body["issued_at"] == str(int(EPOCH.timestamp() * 1000) + 1)  # ms, one request in
    expected = hmac.new(CLIENT_SECRET.encode(), (body["id"] + body["issued_at"]).encode(),
                        hashlib.sha256).digest()
    assert base64.b64decode(body["signature"]) == expected


def test_token_endpoint_errors_are_objects(emu):
    client = Api(emu)
    cases = [
        ({"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "no"},
         "invalid_client"),
        ({"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"},
         "invalid_client_id"),
        ({"grant_type": "password", "client_id": CLIENT_ID}, "unsupported_grant_type"),
        ({"grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
          "refresh_token": "nope"}, "invalid_grant"),
    ]
    for form, error in cases:
        reply = client.grant(**form)
        assert reply.status_code == 400
        assert reply.json()["error"] == error and reply.json()["error_description"]


def test_client_credentials_needs_a_run_as_user(emu):
    emu.configure(client_credentials_user=None)
    reply = Api(emu).grant(grant_type="client_credentials", client_id=CLIENT_ID,
                           client_secret=CLIENT_SECRET)
    assert reply.json() == {"error": "invalid_grant",
                            "error_description": "no client credentials user enabled"}


def test_refresh_token_flow_and_rotation(emu):
    client = Api(emu)
    form = {"grant_type": "refresh_token", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN}
    plain = client.grant(**form)
    assert plain.status_code == 200 and "refresh_token" not in plain.json()
    emu.configure(rotate_refresh_tokens=True)
    rotated = client.grant(**form).json()
    assert rotated["refresh_token"] != REFRESH_TOKEN
    old = client.grant(**form)
    assert old.status_code == 400
    assert old.json() == {"error": "invalid_grant",
                          "error_description": "expired access/refresh token"}
    assert client.grant(**{**form, "refresh_token": rotated["refresh_token"]}).status_code == 200


def test_jwt_bearer_checks_structure_and_claims_not_the_signature(emu):
    client = Api(emu)
    good = client.grant(grant_type=JWT_GRANT, assertion=jwt())
    assert good.status_code == 200 and good.json()["instance_url"] == emu.url
    cases = [
        ("not-a-jwt", "invalid assertion"),
        (jwt(aud="https://example.com"), "audience is invalid"),
        (jwt(exp=int(time.time()) - 5), "invalid assertion"),
        (jwt(exp=int(time.time()) + 3600), "invalid assertion"),  # exp within 3 minutes
        (jwt(sub="someone@else.example"), "user hasn't approved this consumer"),
        (jwt(alg="HS256"), "invalid assertion"),
    ]
    for assertion, description in cases:
        reply = client.grant(grant_type=JWT_GRANT, assertion=assertion)
        assert reply.status_code == 400, assertion
        assert reply.json() == {"error": "invalid_grant", "error_description": description}
    unknown = client.grant(grant_type=JWT_GRANT, assertion=jwt(iss="nobody"))
    assert unknown.json()["error"] == "invalid_client_id"


def test_session_expires_after_the_timeout_with_the_401_array(emu, api):
    assert api.call("GET", f"{V}/sobjects/Opportunity/describe").status_code == 200
    advance(emu, seconds=7199)
    assert api.call("GET", f"{V}/sobjects/Opportunity/describe").status_code == 200
    advance(emu, seconds=2)
    expired = api.call("GET", f"{V}/sobjects/Opportunity/describe")
    assert expired.status_code == 401 and expired.json() == SESSION_EXPIRED
    missing = Api(emu).call("GET", f"{V}/sobjects/Opportunity/describe")
    assert missing.status_code == 401 and missing.json() == SESSION_EXPIRED
    api.login()
    assert api.call("GET", f"{V}/sobjects/Opportunity/describe").status_code == 200


def test_expired_session_mid_paging_then_the_locator_still_works(emu, api):
    emu.seed_opportunities(2500)
    first = api.query(WINDOW.format("2024-12-01T00:00:00Z")).json()
    assert requests.post(emu.url + "/__emu/expire_tokens", json={}).json() == {"expired": 1}
    again = api.call("GET", first["nextRecordsUrl"])
    assert again.status_code == 401 and again.json() == SESSION_EXPIRED
    api.login()  # re-authenticate once and retry (docs/salesforce.md §1)
    rest = api.ok("GET", first["nextRecordsUrl"])
    assert rest["done"] and len(first["records"]) + len(rest["records"]) == 2500


# --- SOQL, paging, ties (docs/salesforce.md §3, §4) -----------------------------------------------

def test_window_filters_are_inclusive_and_order_breaks_ties_by_id(emu, api):
    base = EPOCH - timedelta(hours=1)
    ids = emu.seed_opportunities(10, start=base, step_s=60, same_ts_block=4)
    # The first four share `base`; the others follow a minute apart.
    stamps = [base] * 4 + [base + timedelta(minutes=m) for m in range(1, 7)]
    low, high = stamps[0], stamps[6]
    soql = (f"SELECT Id, SystemModstamp FROM Opportunity WHERE SystemModstamp >= "
            f"{soql_time(low)} AND SystemModstamp <= {soql_time(high)} ORDER BY SystemModstamp, Id")
    body = api.query(soql).json()
    assert body["done"] and body["totalSize"] == 7
    assert [r["Id"] for r in body["records"]] == ids[:7]
    assert [r["SystemModstamp"] for r in body["records"]] == [sf_time(s) for s in stamps[:7]]
    strict = api.query(soql.replace(">=", ">").replace("<=", "<")).json()
    assert [r["Id"] for r in strict["records"]] == ids[4:6]
    desc = api.query("SELECT Id FROM Opportunity ORDER BY SystemModstamp DESC, Id DESC LIMIT 3")
    assert [r["Id"] for r in desc.json()["records"]] == ids[::-1][:3]


def test_1200_records_in_one_second_all_come_back_through_next_records_url(emu, api):
    emu.seed_opportunities(1200, same_ts_block=1200)
    advance(emu, minutes=1)
    emu.seed_opportunities(5)  # later, so the tie sits inside a wider window
    pages = api.pages(WINDOW.format("2024-12-01T00:00:00Z"),
                      headers={"Sforce-Query-Options": "batchSize=500"})
    assert [len(p["records"]) for p in pages] == [500, 500, 205]
    assert {p["totalSize"] for p in pages} == {1205}
    records = records_of(pages)
    ids = [r["Id"] for r in records]
    assert len(set(ids)) == 1205
    tie = records[:1200]
    assert len({r["SystemModstamp"] for r in tie}) == 1
    assert [r["Id"] for r in tie] == sorted(r["Id"] for r in tie)


def test_5000_records_come_in_batches_of_2000(emu, api):
    emu.seed_opportunities(5000)
    pages = api.pages(WINDOW.format("2024-01-01T00:00:00Z"))
    assert [len(p["records"]) for p in pages] == [2000, 2000, 1000]
    assert re.fullmatch(r"/services/data/v60\.0/query/01g\w{15}-2000", pages[0]["nextRecordsUrl"])
    assert pages[1]["nextRecordsUrl"].endswith("-4000")
    assert "nextRecordsUrl" not in pages[2]
    assert len({r["Id"] for r in records_of(pages)}) == 5000


def test_batch_size_follows_config_and_clamped_header(emu, api):
    emu.seed_opportunities(700)
    emu.configure(query_batch_max=300)
    assert [len(p["records"]) for p in api.pages("SELECT Id FROM Opportunity")] == [300, 300, 100]
    emu.configure(query_batch_max=2000)
    small = api.pages("SELECT Id FROM Opportunity",
                      headers={"Sforce-Query-Options": "batchSize=50"})
    assert [len(p["records"]) for p in small] == [200, 200, 200, 100]  # at least 200


def test_relationship_fields_are_nested_objects_or_null(emu, api):
    made = emu.seed(accounts=[{"Name": "Umbrella"}],
                    users=[{"Name": "Sam Seller", "Username": "sam@dealsync.example"}],
                    opportunities=[{"fields": {"Name": "Big"}, "account": 0, "owner": 0},
                                   {"fields": {"Name": "Orphan", "AccountId": None}}])
    body = api.query("SELECT Id, Name, Account.Name, Owner.Name, AccountId FROM Opportunity "
                     "WHERE Name IN ('big', 'ORPHAN') ORDER BY Name").json()
    big, orphan = body["records"]
    assert list(big) == ["attributes", "Id", "Name", "Account", "Owner", "AccountId"]
    assert big["attributes"] == {"type": OPP, "url": f"{V}/sobjects/Opportunity/{big['Id']}"}
    assert big["Account"] == {"attributes": {"type": "Account", "url": f"{V}/sobjects/Account/"
                                             f"{made['accounts'][0]}"}, "Name": "Umbrella"}
    assert big["Owner"]["Name"] == "Sam Seller"
    assert orphan["Account"] is None and orphan["AccountId"] is None
    filtered = api.query("SELECT Id FROM Opportunity WHERE Account.Name = 'umbrella'").json()
    assert [r["Id"] for r in filtered["records"]] == [big["Id"]]


def test_id_in_accepts_15_and_18_character_ids(emu, api):
    ids = emu.seed_opportunities(5)
    soql = f"SELECT Id FROM Opportunity WHERE Id IN ('{ids[1][:15]}', '{ids[3]}') ORDER BY Id"
    assert [r["Id"] for r in api.query(soql).json()["records"]] == [ids[1], ids[3]]
    bad = api.query("SELECT Id FROM Opportunity WHERE Id IN ('nope')")
    assert_error(bad, 400, "INVALID_QUERY_FILTER_OPERATOR")
    notin = api.query(f"SELECT Id FROM Opportunity WHERE Id NOT IN ('{ids[0]}')").json()
    assert notin["totalSize"] == 4


@pytest.mark.parametrize("soql, code", [
    ("SELECT FROM Opportunity", "MALFORMED_QUERY"),
    ("SELECT Id FROM Opportunity WHERE", "MALFORMED_QUERY"),
    ("SELECT Id FROM Opportunity WHERE SystemModstamp >= 2025-01-01T00:00:00", "MALFORMED_QUERY"),
    ("SELECT Id FROM Opportunity WHERE Name = 'a' OR Name = 'b'", "MALFORMED_QUERY"),
    ("SELECT Id, Nope__c FROM Opportunity", "INVALID_FIELD"),
    ("SELECT Id, Nope.Name FROM Opportunity", "INVALID_FIELD"),
    ("SELECT Id FROM Opportunity WHERE SystemModstamp >= '2025-01-01T00:00:00Z'", "INVALID_FIELD"),
    ("SELECT Id FROM Opportunity WHERE CloseDate > 2025-01-01T00:00:00Z", "INVALID_FIELD"),
    ("SELECT Id FROM Opportunity WHERE Name = 5", "INVALID_FIELD"),
    ("SELECT Id FROM Widget__c", "INVALID_TYPE"),
])
def test_query_errors(emu, api, soql, code):
    assert_error(api.query(soql), 400, code)


def test_locators_unknown_or_idle_are_invalid(emu, api):
    emu.seed_opportunities(450)
    first = api.query("SELECT Id FROM Opportunity",
                      headers={"Sforce-Query-Options": "batchSize=200"}).json()
    assert_error(api.call("GET", f"{V}/query/01gNOPE-200"), 400, "INVALID_QUERY_LOCATOR")
    advance(emu, seconds=901)  # cursors die after 15 idle minutes
    assert_error(api.call("GET", first["nextRecordsUrl"]), 400, "INVALID_QUERY_LOCATOR")


def test_query_all_returns_deleted_rows(emu, api):
    ids = emu.seed_opportunities(3)
    emu.delete([ids[1]])
    live = api.query("SELECT Id FROM Opportunity").json()
    assert [r["Id"] for r in live["records"]] == [ids[0], ids[2]]
    everything = api.query("SELECT Id, IsDeleted FROM Opportunity ORDER BY Id", "queryAll").json()
    assert [(r["Id"], r["IsDeleted"]) for r in everything["records"]] == \
        [(ids[0], False), (ids[1], True), (ids[2], False)]
    gone = api.call("GET", f"{V}/sobjects/Opportunity/{ids[1]}")
    assert_error(gone, 404, "ENTITY_IS_DELETED")


def test_query_timeout_for_wide_windows_and_by_fault_injection(emu, api):
    emu.seed_opportunities(10)
    emu.configure(query_timeout_if_span_days=7)
    wide = api.query(WINDOW.format(soql_time(EPOCH - timedelta(days=30))))
    body = assert_error(wide, 400, "QUERY_TIMEOUT")
    assert body[0]["message"] == "Your query request was running for too long."
    assert api.query(WINDOW.format(soql_time(EPOCH - timedelta(days=5)))).status_code == 200
    assert api.query("SELECT Id FROM Opportunity").status_code == 200  # no datetime bound
    emu.configure(query_timeout_if_span_days=None)
    requests.post(emu.url + "/__emu/faults", json={
        "match": r"GET /services/data/v60\.0/query", "nth": [1], "status": 400,
        "body": [{"message": "Your query request was running for too long.",
                  "errorCode": "QUERY_TIMEOUT"}]})
    assert_error(api.query("SELECT Id FROM Opportunity"), 400, "QUERY_TIMEOUT")
    assert api.query("SELECT Id FROM Opportunity").status_code == 200


# --- getUpdated / getDeleted (docs/salesforce.md §5) ----------------------------------------------

def replication(api: Api, kind: str, start: datetime, end: datetime) -> requests.Response:
    return api.call("GET", f"{V}/sobjects/Opportunity/{kind}/",
                    params={"start": start.isoformat(), "end": end.isoformat()})


def test_get_updated_truncates_seconds_and_reports_latest_date_covered(emu, api):
    t0 = EPOCH + timedelta(hours=12, minutes=30)
    emu.clock.set(t0 + timedelta(hours=1))
    api.login()  # the first session ended after two hours
    ids = emu.seed_opportunities(3, start=t0 + timedelta(seconds=10), step_s=60)
    # start 12:30:45 reads as 12:30:00 and so covers the record stamped 12:30:10.
    body = replication(api, "updated", t0 + timedelta(seconds=45),
                       t0 + timedelta(minutes=2, seconds=30)).json()
    assert body == {"ids": ids[:2], "latestDateCovered": sf_time(t0 + timedelta(minutes=2))}
    ahead = replication(api, "updated", t0, t0 + timedelta(days=1)).json()
    assert ahead["latestDateCovered"] == sf_time(t0 + timedelta(hours=1))  # never past now
    assert ahead["ids"] == ids


def test_get_updated_rules(emu, api):
    now = emu.clock.now()
    too_old = replication(api, "updated", now - timedelta(days=32), now)
    assert_error(too_old, 400, "INVALID_REPLICATION_DATE")
    backwards = replication(api, "updated", now, now - timedelta(hours=1))
    assert_error(backwards, 400, "INVALID_REPLICATION_DATE")
    unencoded = api.call("GET", f"{V}/sobjects/Opportunity/updated/?start=2024-12-31T00:00:00"
                                f"+00:00&end=2025-01-01T00:00:00+00:00")
    assert_error(unencoded, 400, "INVALID_REPLICATION_DATE")
    emu.seed_opportunities(5)
    emu.configure(updated_id_cap=2)
    capped = replication(api, "updated", now - timedelta(days=1), now + timedelta(minutes=1))
    assert_error(capped, 400, "EXCEEDED_ID_LIMIT")


def test_get_deleted_lists_recycled_records(emu, api):
    ids = emu.seed_opportunities(3)
    advance(emu, minutes=5)
    when = emu.now()
    emu.delete([ids[0], ids[2]])
    advance(emu, minutes=5)
    body = replication(api, "deleted", when - timedelta(minutes=1), emu.clock.now()).json()
    assert body["deletedRecords"] == [{"id": ids[0], "deletedDate": sf_time(when)},
                                      {"id": ids[2], "deletedDate": sf_time(when)}]
    assert body["latestDateCovered"] == sf_time(emu.clock.now().replace(second=0, microsecond=0))
    assert body["earliestDateAvailable"] == sf_time(EPOCH)
    updated = replication(api, "updated", when - timedelta(hours=1), emu.clock.now()).json()
    assert ids[0] not in updated["ids"]


# --- writes (docs/salesforce.md §6) ---------------------------------------------------------------

def test_collections_partial_failure_returns_one_result_per_record_in_order(emu, api):
    ids = emu.seed_opportunities(3)
    emu.delete([ids[2]])
    missing = id18("006" + "5g0" + "zzzzzzzzz")
    reply = api.patch_many([
        upd(ids[0], Priority__c="High", PingCode_Status__c="In Progress"),
        upd(ids[1], Priority__c="Urgent"),
        upd("003000000000000AAA", Priority__c="Low"),
        upd(ids[1], Nope__c="x"),
        upd(ids[2], Priority__c="Low"),
        upd(missing, Priority__c="Low"),
        {"attributes": {"type": OPP}, "Priority__c": "Low"},
        upd(ids[1], IsWon=True),
        upd(ids[1], Name=""),
        upd(ids[1], Name="x" * 121),
    ])
    assert reply.status_code == 200
    results = reply.json()
    assert results[0] == {"id": ids[0], "success": True, "errors": []}
    codes = [(r["success"], r["errors"][0]["statusCode"] if r["errors"] else None) for r in results]
    assert codes[1:] == [(False, code) for code in (
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "MALFORMED_ID", "INVALID_FIELD",
        "ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "MISSING_ARGUMENT",
        "INVALID_FIELD_FOR_INSERT_UPDATE", "REQUIRED_FIELD_MISSING", "STRING_TOO_LONG")]
    assert all("id" not in r for r in results[1:])  # failures are matched by position
    assert results[1]["errors"][0] == {
        "statusCode": "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "message": "Priority: bad value for restricted picklist field: Urgent",
        "fields": ["Priority__c"]}
    assert results[2]["errors"][0]["message"] == \
        "Opportunity ID: id value of incorrect type: 003000000000000AAA"
    assert emu.record(ids[0])["PingCode_Status__c"] == "In Progress"
    assert emu.record(ids[1])["Priority__c"] == "Medium"  # untouched


def test_collections_all_or_none_rolls_back_the_good_records(emu, api):
    ids = emu.seed_opportunities(2)
    before = emu.record(ids[0])
    results = api.patch_many([upd(ids[0], Priority__c="Low"), upd(ids[1], Priority__c="Bad")],
                             all_or_none=True).json()
    assert results[0] == {"success": False, "errors": [{
        "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "message": "Record rolled back because not all records were valid and the request was "
                   "using AllOrNone header", "fields": []}]}
    assert results[1]["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert emu.record(ids[0]) == before
    ok = api.patch_many([upd(ids[0], Priority__c="Low")], all_or_none=True).json()
    assert ok == [{"id": ids[0], "success": True, "errors": []}]


def test_collections_limits_and_malformed_bodies(emu, api):
    ids = emu.seed_opportunities(1)
    too_many = api.patch_many([upd(ids[0], Priority__c="Low")] * 201)
    assert_error(too_many, 400, "EXCEEDED_ID_LIMIT")
    assert_error(api.call("PATCH", f"{V}/composite/sobjects", data="{"), 400, "JSON_PARSER_ERROR")
    emu.configure(unknown_field_in_collection="request")
    whole = api.patch_many([upd(ids[0], Priority__c="Low"), upd(ids[0], Nope__c=1)])
    assert_error(whole, 400, "INVALID_FIELD")
    assert emu.record(ids[0])["Priority__c"] == "High"


def test_single_record_patch_and_get(emu, api):
    ids = emu.seed_opportunities(1)
    path = f"{V}/sobjects/Opportunity/{ids[0]}"
    reply = api.call("PATCH", path, json={"StageName": "Closed Won"})
    assert reply.status_code == 204 and reply.content == b""
    record = api.ok("GET", path, params={"fields": "StageName,IsWon,Probability,Account.Name"})
    assert {k: v for k, v in record.items() if k != "attributes"} == {
        "StageName": "Closed Won", "IsWon": True, "Probability": 100.0,
        "Account": {"attributes": {"type": "Account", "url": record["Account"]["attributes"]
                                   ["url"]}, "Name": "Acme Corporation"}}
    body = assert_error(api.call("PATCH", path, json={"StageName": "Dreaming"}), 400,
                        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST")
    assert body[0]["fields"] == ["StageName"]
    missing = id18("006" + "5g0" + "zzzzzzzzz")
    assert_error(api.call("GET", f"{V}/sobjects/Opportunity/{missing}"), 404, "NOT_FOUND")
    assert_error(api.call("PATCH", f"{V}/sobjects/Opportunity/{missing}", json={}), 404,
                 "NOT_FOUND")
    assert_error(api.call("GET", f"{V}/sobjects/Opportunity/abc"), 404, "NOT_FOUND")


def test_api_writes_stamp_both_dates_to_the_second(emu, api):
    ids = emu.seed_opportunities(1)
    emu.clock.set(EPOCH + timedelta(minutes=3, seconds=7, milliseconds=750))
    api.patch_many([upd(ids[0], Priority__c="Low")])
    record = emu.record(ids[0])
    assert record["LastModifiedDate"] == record["SystemModstamp"] == \
        sf_time(EPOCH + timedelta(minutes=3, seconds=7))
    assert record["LastModifiedById"] == api.ok(
        "GET", f"{V}/query", params={"q": f"SELECT Id FROM User WHERE Username = '{USERNAME}'"}
    )["records"][0]["Id"]


# --- automation edits (docs/salesforce.md §2) -----------------------------------------------------

def test_system_edits_move_only_system_modstamp(emu, api):
    ids = emu.seed_opportunities(2)
    created = emu.record(ids[0])["LastModifiedDate"]
    advance(emu, minutes=10)
    edited = requests.post(emu.url + "/__emu/mutate", json={
        "id": ids[0], "actor": "system", "fields": {"Amount": 4242}}).json()
    assert edited["Amount"] == 4242.0
    assert edited["LastModifiedDate"] == created
    assert edited["SystemModstamp"] == sf_time(emu.now())
    since = soql_time(emu.now() - timedelta(minutes=1))
    by_stamp = api.query(f"SELECT Id FROM Opportunity WHERE SystemModstamp >= {since}").json()
    by_edit = api.query(f"SELECT Id FROM Opportunity WHERE LastModifiedDate >= {since}").json()
    assert [r["Id"] for r in by_stamp["records"]] == [ids[0]]
    assert by_edit["totalSize"] == 0
    user_edit = emu.mutate(ids[1], {"NextStep": "Call"})
    assert user_edit["LastModifiedDate"] == user_edit["SystemModstamp"]
    touched = emu.touch(count=2, at=emu.now() + timedelta(seconds=30))
    assert touched == ids
    assert {emu.record(i)["SystemModstamp"] for i in ids} == {sf_time(emu.now())}


# --- describe and custom fields (docs/salesforce.md §7) -------------------------------------------

def test_describe_lists_fields_and_picklist_values(emu, api):
    body = api.ok("GET", f"{V}/sobjects/Opportunity/describe")
    assert body["name"] == OPP and body["keyPrefix"] == "006"
    fields = {f["name"]: f for f in body["fields"]}
    assert {"Id", "Name", "AccountId", "Amount", "CloseDate", "StageName", "Probability",
            "ForecastCategoryName", "IsClosed", "IsWon", "OwnerId", "LastModifiedDate",
            "SystemModstamp", "IsDeleted", "Priority__c", "PingCode_Status__c",
            "PingCode_Url__c"} <= set(fields)
    priority = fields["Priority__c"]
    assert priority["custom"] and priority["type"] == "picklist" and priority["restrictedPicklist"]
    assert [v["value"] for v in priority["picklistValues"]] == ["High", "Medium", "Low"]
    assert fields["AccountId"]["relationshipName"] == "Account"
    assert fields["AccountId"]["referenceTo"] == ["Account"]
    assert not fields["SystemModstamp"]["updateable"]
    assert "Closed Won" in [v["value"] for v in fields["StageName"]["picklistValues"]]
    assert_error(api.call("GET", f"{V}/sobjects/Widget__c/describe"), 404, "NOT_FOUND")


def test_a_missing_custom_field_shows_everywhere(emu, api):
    ids = emu.seed_opportunities(1)
    custom = json.loads(json.dumps(emu.config["custom_fields"]))
    del custom["Opportunity"]["PingCode_Url__c"]
    reply = requests.post(emu.url + "/__emu/config", json={"custom_fields": custom})
    assert reply.status_code == 200
    names = {f["name"] for f in api.ok("GET", f"{V}/sobjects/Opportunity/describe")["fields"]}
    assert "PingCode_Url__c" not in names
    assert_error(api.query("SELECT PingCode_Url__c FROM Opportunity"), 400, "INVALID_FIELD")
    result = api.patch_many([upd(ids[0], PingCode_Url__c="https://x")]).json()[0]
    assert result["errors"][0]["statusCode"] == "INVALID_FIELD"
    bad = requests.post(emu.url + "/__emu/config",
                        json={"custom_fields": {"Opportunity": {"Nope": {"type": "string"}}}})
    assert bad.status_code == 400
    assert requests.post(emu.url + "/__emu/config", json={"nope": 1}).status_code == 400


# --- creates: Tasks on an opportunity's timeline (docs/salesforce.md §11) -------------------------

def task(what_id: str, **fields) -> dict:
    return {"Subject": "SCR-1 status", "Description": "SCR-1 is now Shipped",
            "Status": "Completed", "WhatId": what_id, "ActivityDate": "2025-01-01",
            "TaskSubtype": "Task", **fields}


def new(record: dict, kind: str = "Task") -> dict:
    return {"attributes": {"type": kind}, **record}


def usage(reply: requests.Response) -> int:
    return int(reply.headers["Sforce-Limit-Info"].split("=")[1].split("/")[0])


def test_single_record_create_of_a_completed_task(emu, api):
    opp = emu.seed_opportunities(1)[0]
    reply = api.call("POST", f"{V}/sobjects/Task/", json=task(opp))
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body == {"id": body["id"], "errors": [], "success": True}
    assert body["id"].startswith("00T") and normalize_id(body["id"]) == body["id"]
    record = api.ok("GET", f"{V}/sobjects/Task/{body['id']}")
    assert {k: record[k] for k in ("WhatId", "Subject", "Description", "Status", "ActivityDate",
                                   "TaskSubtype", "IsClosed", "Priority", "OwnerId",
                                   "AccountId")} == {
        "WhatId": opp, "Subject": "SCR-1 status", "Description": "SCR-1 is now Shipped",
        "Status": "Completed", "ActivityDate": "2025-01-01", "TaskSubtype": "Task",
        "IsClosed": True, "Priority": "Normal",  # defaulted on create
        "OwnerId": emu.integration_user,  # the API user who created it
        "AccountId": emu.record(opp)["AccountId"]}  # from the opportunity
    open_task = api.call("POST", f"{V}/sobjects/Task", json={"WhatId": opp}).json()
    assert emu.record(open_task["id"], "Task")["Status"] == "Not Started"
    assert emu.record(open_task["id"], "Task")["IsClosed"] is False
    assert [t["Id"] for t in emu.tasks(opp)] == [body["id"], open_task["id"]]
    listed = requests.get(emu.url + "/__emu/tasks", params={"what_id": opp}).json()["tasks"]
    assert [t["Description"] for t in listed] == ["SCR-1 is now Shipped", None]
    assert emu.stats()["tasks"] == 2
    assert usage(reply) == 1  # a create is one call against the allocation (docs/salesforce.md §8)


def test_single_record_create_refusals_are_the_error_array(emu, api):
    ids = emu.seed_opportunities(2)
    emu.delete([ids[1]])
    missing = id18("006" + "5g0" + "zzzzzzzzz")
    cases = [
        (task(missing), "INVALID_CROSS_REFERENCE_KEY", ["WhatId"]),
        (task(ids[1]), "INVALID_CROSS_REFERENCE_KEY", ["WhatId"]),  # in the recycle bin
        (task(emu.integration_user), "FIELD_INTEGRITY_EXCEPTION", ["WhatId"]),  # a User's id
        (task("nope"), "MALFORMED_ID", ["WhatId"]),
        (task(ids[0], Status="Done"), "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["Status"]),
        (task(ids[0], Status=None), "REQUIRED_FIELD_MISSING", ["Status"]),
        (task(ids[0], IsClosed=True), "INVALID_FIELD_FOR_INSERT_UPDATE", ["IsClosed"]),
        (task(ids[0], Subject="x" * 256), "STRING_TOO_LONG", ["Subject"]),
        (task(ids[0], Nope__c="x"), "INVALID_FIELD", []),
    ]
    for body, code, fields in cases:
        refused = assert_error(api.call("POST", f"{V}/sobjects/Task", json=body), 400, code)
        assert refused[0]["fields"] == fields, (code, refused)
    assert refused[0]["message"] == "No such column 'Nope__c' on sobject of type Task"
    wrong_type = api.call("POST", f"{V}/sobjects/Task", json=task(emu.integration_user)).json()
    assert wrong_type[0]["message"] == \
        f"Related To ID: id value of incorrect type: {emu.integration_user}"
    with_id = api.call("POST", f"{V}/sobjects/Task", json={**task(ids[0]), "Id": missing})
    assert assert_error(with_id, 400, "INVALID_FIELD")[0]["message"] == \
        "The Id field should not be specified in the sobject data."
    assert_error(api.call("POST", f"{V}/sobjects/Task", data="{"), 400, "JSON_PARSER_ERROR")
    assert_error(api.call("POST", f"{V}/sobjects/User", json={"Name": "x"}), 400,
                 "INVALID_TYPE")
    assert emu.tasks() == []
    # An account is a "what" too; TaskSubtype is set on create and never changed after.
    made = api.call("POST", f"{V}/sobjects/Task",
                    json=task(emu.record(ids[0])["AccountId"])).json()["id"]
    assert emu.record(made, "Task")["AccountId"] == emu.record(ids[0])["AccountId"]
    assert_error(api.call("PATCH", f"{V}/sobjects/Task/{made}", json={"TaskSubtype": "Call"}),
                 400, "INVALID_FIELD_FOR_INSERT_UPDATE")
    assert api.call("PATCH", f"{V}/sobjects/Task/{made}",
                    json={"Status": "In Progress"}).status_code == 204
    assert emu.record(made, "Task")["IsClosed"] is False


def test_collections_create_gives_one_result_per_record_in_order(emu, api):
    ids = emu.seed_opportunities(2)
    emu.delete([ids[1]])
    reply = api.call("POST", f"{V}/composite/sobjects", json={"allOrNone": False, "records": [
        new(task(ids[0], Description="first")),
        new(task(ids[1])),
        new(task(ids[0], Status="Done")),
        new({**task(ids[0]), "Id": ids[0]}),
        new(task(ids[0], Description="second")),
        new({"Name": "Globex renewal"}, "Opportunity"),
        new({"Name": "Globex"}, "Account"),
        new(task(ids[0]), "Note"),
    ]})
    assert reply.status_code == 200 and usage(reply) == 1
    results = reply.json()
    assert [r["success"] for r in results] == [True, False, False, False, True, False, True,
                                               False]
    assert [r["errors"][0]["statusCode"] for r in results if not r["success"]] == [
        "INVALID_CROSS_REFERENCE_KEY", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "INVALID_FIELD_FOR_INSERT_UPDATE", "REQUIRED_FIELD_MISSING", "INVALID_TYPE"]
    assert results[5]["errors"][0] == {
        "statusCode": "REQUIRED_FIELD_MISSING",
        "message": "Required fields are missing: [StageName, CloseDate]",
        "fields": ["StageName", "CloseDate"]}
    assert all("id" not in r for r in results if not r["success"])  # matched by position
    made = [r["id"] for r in results if r["success"]]
    assert [t["Id"] for t in emu.tasks(ids[0])] == made[:2]
    assert [t["Description"] for t in emu.tasks(ids[0])] == ["first", "second"]
    assert emu.record(made[2], "Account")["Name"] == "Globex"
    assert {t["CreatedDate"] for t in emu.tasks()} == {emu.tasks()[0]["CreatedDate"]}


def test_collections_create_all_or_none_limits_and_malformed_bodies(emu, api):
    opp = emu.seed_opportunities(1)[0]
    missing = id18("006" + "5g0" + "zzzzzzzzz")
    rolled = api.call("POST", f"{V}/composite/sobjects", json={
        "allOrNone": True, "records": [new(task(opp)), new(task(missing))]}).json()
    assert rolled[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert rolled[1]["errors"][0]["statusCode"] == "INVALID_CROSS_REFERENCE_KEY"
    assert emu.tasks() == []
    too_many = api.call("POST", f"{V}/composite/sobjects",
                        json={"records": [new(task(opp))] * 201})
    assert_error(too_many, 400, "EXCEEDED_ID_LIMIT")
    untyped = api.call("POST", f"{V}/composite/sobjects", json={"records": [task(opp)]})
    assert_error(untyped, 400, "JSON_PARSER_ERROR")
    assert emu.tasks() == []
    full = api.call("POST", f"{V}/composite/sobjects", json={"records": [new(task(opp))] * 200})
    assert all(r["success"] for r in full.json()) and len(emu.tasks(opp)) == 200


def test_creates_count_against_the_daily_allocation(emu, api):
    opp = emu.seed_opportunities(1)[0]
    emu.configure(daily_max=2)
    statuses = [api.call("POST", f"{V}/sobjects/Task", json=task(opp)).status_code,
                api.call("POST", f"{V}/composite/sobjects",
                         json={"records": [new(task(opp))] * 3}).status_code,
                api.call("POST", f"{V}/sobjects/Task", json=task(opp)).status_code]
    assert statuses == [201, 200, 403]
    assert len(emu.tasks()) == 4


def test_task_describe_and_query(emu, api):
    described = api.ok("GET", f"{V}/sobjects/Task/describe")
    fields = {f["name"]: f for f in described["fields"]}
    assert described["keyPrefix"] == "00T" and described["createable"] is True
    assert fields["WhatId"]["referenceTo"] == ["Account", "Opportunity"]
    assert (fields["TaskSubtype"]["createable"], fields["TaskSubtype"]["updateable"]) == \
        (True, False)
    assert (fields["Status"]["defaultedOnCreate"], fields["Status"]["nillable"]) == (True, False)
    assert [v["value"] for v in fields["Status"]["picklistValues"]] == [
        "Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"]
    assert fields["Subject"]["type"] == "combobox" and fields["Subject"]["length"] == 255
    opp = emu.seed_opportunities(1)[0]
    made = api.call("POST", f"{V}/sobjects/Task", json=task(opp)).json()["id"]
    rows = api.query(f"SELECT Id, Subject, Owner.Name FROM Task WHERE WhatId = '{opp[:15]}' "
                     "AND IsClosed = TRUE").json()["records"]
    assert [(r["Id"], r["Subject"], r["Owner"]["Name"]) for r in rows] == [
        (made, "SCR-1 status", "Dealsync Integration")]


# --- limits (docs/salesforce.md §8) ---------------------------------------------------------------

def test_limit_header_on_every_response_counts_api_calls(emu, api):
    usage = []
    for path in (f"{V}/sobjects/Opportunity/describe", f"{V}/query?q=SELECT+Nope+FROM+x",
                 f"{V}/nowhere"):
        reply = api.call("GET", path)
        usage.append(reply.headers["Sforce-Limit-Info"])
    assert usage == ["api-usage=1/100000", "api-usage=2/100000", "api-usage=2/100000"]
    unauthenticated = Api(emu).call("GET", f"{V}/sobjects/Opportunity/describe")
    assert unauthenticated.headers["Sforce-Limit-Info"] == "api-usage=2/100000"
    token = Api(emu).grant(grant_type="client_credentials", client_id=CLIENT_ID,
                           client_secret=CLIENT_SECRET)
    assert "Sforce-Limit-Info" not in token.headers
    assert "Retry-After" not in unauthenticated.headers


def test_daily_allocation_answers_403_then_frees_over_24_hours(emu, api):
    emu.configure(daily_max=3)
    statuses = [api.call("GET", f"{V}/sobjects/Opportunity/describe") for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 403]
    assert statuses[-1].json() == [{"message": "TotalRequests Limit exceeded.",
                                    "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert statuses[-1].headers["Sforce-Limit-Info"] == "api-usage=3/3"
    advance(emu, hours=23)
    api.login()  # sessions end after two hours; logging in is no API call
    assert api.call("GET", f"{V}/sobjects/Opportunity/describe").status_code == 403
    advance(emu, hours=1, seconds=1)  # the rolling window lets the first calls go
    api.login()
    again = api.call("GET", f"{V}/sobjects/Opportunity/describe")
    assert again.status_code == 200 and again.headers["Sforce-Limit-Info"] == "api-usage=1/3"


def test_concurrent_long_requests_are_capped(emu, api):
    # Four requests that each take 0.8 s arrive together; only two may run at once.
    emu.configure(slow_ms=800, long_threshold_ms=100, concurrent_long_max=2)
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def one() -> None:
        client = Api(emu)
        client.token = api.token
        barrier.wait()
        statuses.append(client.call("GET", f"{V}/sobjects/Opportunity/describe").status_code)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 200, 403, 403]
    assert emu.stats()["limited"] == {"concurrent": 2}


def test_locators_per_user_are_capped_and_query_all_pages_on_its_own_path(emu, api):
    emu.seed_opportunities(450)
    emu.configure(max_open_locators=2)
    small = {"Sforce-Query-Options": "batchSize=200"}
    first, second, third = (api.query("SELECT Id FROM Opportunity", "queryAll", headers=small)
                            .json() for _ in range(3))
    assert first["nextRecordsUrl"].startswith(f"{V}/queryAll/01g")
    assert_error(api.call("GET", first["nextRecordsUrl"]), 400, "INVALID_QUERY_LOCATOR")
    assert api.call("GET", second["nextRecordsUrl"]).status_code == 200
    assert api.call("GET", third["nextRecordsUrl"]).status_code == 200


def test_unordered_results_can_be_shuffled_deterministically(emu, api):
    ids = emu.seed_opportunities(50)
    assert [r["Id"] for r in api.query("SELECT Id FROM Opportunity").json()["records"]] == ids
    emu.configure(unordered_results="random")
    shuffled = [r["Id"] for r in api.query("SELECT Id FROM Opportunity").json()["records"]]
    assert shuffled != ids and sorted(shuffled) == ids


def test_control_api_over_http(emu, api):
    control = emu.url + "/__emu"
    made = requests.post(control + "/seed/opportunities",
                         json={"count": 3, "start": "2024-12-31T10:00:00Z", "step_s": 60}).json()
    assert made["count"] == 3
    touched = requests.post(control + "/touch", json={"ids": [made["first_id"]],
                                                      "at": "2024-12-31T12:00:00Z"}).json()
    assert touched == {"ids": [made["first_id"]]}
    record = requests.get(f"{control}/records/Opportunity/{made['first_id']}").json()
    assert record["SystemModstamp"] == "2024-12-31T12:00:00.000+0000"
    assert record["LastModifiedDate"] == "2024-12-31T10:00:00.000+0000"
    history = requests.get(f"{control}/records/Opportunity/{made['first_id']}/history").json()
    assert [h["actor"] for h in history["history"]] == ["create", "system"]
    assert requests.post(control + "/delete", json={"ids": [made["last_id"]]}).json() == \
        {"ids": [made["last_id"]]}
    bad = requests.post(control + "/mutate", json={"id": made["first_id"],
                                                   "fields": {"Priority__c": "Urgent"}})
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert requests.get(f"{control}/records/Opportunity/006nope").status_code == 404
    assert requests.post(control + "/seed", json={"nope": []}).status_code == 400
    stats = requests.get(control + "/stats").json()
    assert (stats["opportunities"], stats["deleted"]) == (2, 1)


def test_auth_can_be_switched_off_for_the_demo(emu):
    emu.configure(require_auth=False)
    assert Api(emu).call("GET", f"{V}/sobjects/Opportunity/describe").status_code == 200


def test_the_emulator_needs_trustme_only_for_tls(monkeypatch):
    monkeypatch.setitem(sys.modules, "trustme", None)  # as if it were not installed
    plain = SalesforceEmulator()
    plain.start()
    plain.stop()
    with pytest.raises(RuntimeError, match="trustme"):
        SalesforceEmulator(tls=True).start()


# --- protocol details ----------------------------------------------------------------------------

def test_unknown_routes_and_methods(emu, api):
    assert_error(api.call("GET", f"{V}/nowhere"), 404, "NOT_FOUND")
    assert_error(api.call("DELETE", f"{V}/composite/sobjects"), 405, "METHOD_NOT_ALLOWED")


def test_stage_sets_forecast_probability_and_closed_flags(emu):
    ids = emu.seed_opportunities(1)
    lost = emu.mutate(ids[0], {"StageName": "Closed Lost"})
    assert (lost["IsClosed"], lost["IsWon"], lost["ForecastCategoryName"],
            lost["Probability"]) == (True, False, "Omitted", 0.0)
    custom = emu.mutate(ids[0], {"StageName": "Negotiation/Review", "Probability": 85})
    assert custom["Probability"] == 85.0 and not custom["IsClosed"]
    assert [h["actor"] for h in emu.history(ids[0])] == ["create", "user", "user"]


def test_standalone_server_prints_url_and_credentials():
    process = subprocess.Popen([sys.executable, "-m", "plugins.salesforce.emulator"],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        lines = [process.stdout.readline() for _ in range(6)]
    finally:
        process.terminate()
        process.wait(timeout=10)
    url = re.search(r"http://127\.0\.0\.1:\d+", lines[0])
    assert url is not None
    text = "".join(lines)
    for secret in (CLIENT_ID, CLIENT_SECRET, USERNAME, REFRESH_TOKEN):
        assert secret in text


# --- TLS -----------------------------------------------------------------------------------------

def test_https_with_a_throwaway_ca_and_verification_on():
    pytest.importorskip("trustme", reason="trustme is needed to mint the throwaway CA")
    emulator = SalesforceEmulator(tls=True)
    url = emulator.start()
    try:
        assert url.startswith("https://127.0.0.1:")
        client = Api(emulator, verify=emulator.ca_path).login()
        body = client.ok("GET", f"{V}/query", params={"q": "SELECT Id, Name FROM Account"})
        assert body["totalSize"] == 3
        token = client.grant(grant_type="client_credentials", client_id=CLIENT_ID,
                             client_secret=CLIENT_SECRET).json()
        assert token["instance_url"] == url
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url + f"{V}/query", timeout=5)  # the system CAs do not know it
    finally:
        emulator.stop()
