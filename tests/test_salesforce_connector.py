"""The Salesforce connector's requests and error mapping, with ``responses``
(docs/salesforce.md)."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from conftest import Sleeps
from plugins.salesforce.connector import QueryTimeout, SalesforceConnector
from plugins.salesforce.schema import make_id
from sync.connectors import InstanceContext
from sync.errors import (AmbiguousWrite, AuthError, ConfigError, ItemError, NotFound,
                         RateLimitExhausted, RemoteError)

LOGIN = "https://login.salesforce.com"
INSTANCE = "https://acme.my.salesforce.com"
TOKEN_URL = f"{LOGIN}/services/oauth2/token"
API = f"{INSTANCE}/services/data/v60.0"
QUERY = f"{API}/query"
COLLECTIONS = f"{API}/composite/sobjects"
DESCRIBE = f"{API}/sobjects/Opportunity/describe"
SECRETS = {"client_id": "3MVGconsumer", "client_secret": "consumer-secret",
           "refresh_token": "5Aep-refresh"}
SINCE = datetime(2025, 1, 1, 0, 0, 0, 400_000, tzinfo=timezone.utc)
UNTIL = datetime(2025, 1, 2, 0, 0, 0, 900_000, tzinfo=timezone.utc)
NOW = 1735732800.0  # 2025-01-01T12:00:00Z
USAGE = {"Sforce-Limit-Info": "api-usage=10/100000"}


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def make():
    def build(secrets=None, **settings) -> SalesforceConnector:
        values = {**SECRETS, **(secrets or {})}
        ctx = InstanceContext("acme", {"auth": "refresh_token", "login_url": LOGIN, **settings},
                              lambda name: values[name])
        return SalesforceConnector(ctx, sleep=Sleeps(), clock=lambda: NOW)
    return build


def token(rsps, access="tok-1", **extra):
    rsps.post(TOKEN_URL, json={"access_token": access, "instance_url": INSTANCE,
                               "id": f"{LOGIN}/id/00D/005", "token_type": "Bearer",
                               "issued_at": "1735732800000", "signature": "c2ln", **extra})


def oid(n: int) -> str:
    """A real 18-character Opportunity id, checksum included (docs/salesforce.md §2)."""
    return make_id("006", n)


def opp(n: int, stamp: str = "2025-01-01T10:00:00.000+0000", **fields):
    record = {"attributes": {"type": "Opportunity", "url": f"/services/data/v60.0/sobjects/"
                                                           f"Opportunity/{oid(n)}"},
              "Id": oid(n), "SystemModstamp": stamp, "Name": f"Deal {n}",
              "StageName": "Qualification", "Amount": 1500.0, "CloseDate": "2025-03-31",
              "IsClosed": False,
              "Account": {"attributes": {"type": "Account"}, "Name": "Acme Corp"},
              "Owner": {"attributes": {"type": "User"}, "Name": "Avery Rep"}}
    record.update(fields)
    return record


def page(records, next_url=None):
    body = {"totalSize": len(records), "done": next_url is None, "records": records}
    if next_url:
        body["nextRecordsUrl"] = next_url
    return body


def soql(call) -> str:
    return parse_qs(urlsplit(call.request.url).query)["q"][0]


def form(call) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(call.request.body).items()}


def error(code: str, message: str = "boom"):
    return [{"message": message, "errorCode": code}]


# --- registration and settings ---------------------------------------------------------------

def test_registered_through_the_hook_and_listed_as_builtin():
    import plugins.salesforce as plugin
    from sync.manager import BUILTIN_PLUGINS, installed_types
    registered = []
    plugin.register_connectors(register=registered.append)
    assert registered == [SalesforceConnector]
    assert "plugins.salesforce" in BUILTIN_PLUGINS and "salesforce" in installed_types("crm")
    assert SalesforceConnector.batch_size == 200
    assert [s.name for s in SalesforceConnector.secrets] == [
        "client_id", "client_secret", "refresh_token", "private_key"]


def test_settings_are_checked():
    assert SalesforceConnector.check_settings({
        "login_url": "https://acme.my.salesforce.com", "max_api_share": 0.5,
        "query_batch_size": 500, "api_version": "v61.0"}) == []
    assert SalesforceConnector.check_settings({"auth": "jwt", "username": "u@x.test"}) == []
    problems = SalesforceConnector.check_settings({
        "auth": "password", "login_url": "login.salesforce.com", "max_api_share": 1.5,
        "query_batch_size": 50, "api_version": "60", "colour": "red"})
    assert {p.split(":")[0] for p in problems} == {
        "auth", "login_url", "max_api_share", "query_batch_size", "api_version", "colour"}
    # Client credentials need the org's My Domain, and JWT needs the user to log in as.
    assert [p.split(":")[0] for p in SalesforceConnector.check_settings({})] == ["login_url"]
    assert [p.split(":")[0] for p in SalesforceConnector.check_settings(
        {"auth": "jwt"})] == ["username"]


def test_no_secret_is_read_before_the_first_call():
    def refuse(name):
        raise AssertionError(f"secret {name} read too early")
    SalesforceConnector(InstanceContext("acme", {}, refuse)).close()


# --- login (docs/salesforce.md §1) -------------------------------------------------------------

def test_client_credentials_login_then_every_call_goes_to_instance_url(rsps, make):
    login = "https://acme.my.salesforce.com"
    rsps.post(f"{login}/services/oauth2/token", json={
        "access_token": "tok-cc", "instance_url": INSTANCE, "token_type": "Bearer"})
    rsps.get(QUERY, json=page([opp(1)]), headers=USAGE)
    sf = make(auth="client_credentials", login_url=login)
    deals = list(sf.iter_changed(SINCE, UNTIL, []))
    assert [d.id for d in deals] == [oid(1)]
    assert form(rsps.calls[0]) == {"grant_type": "client_credentials",
                                   "client_id": "3MVGconsumer", "client_secret": "consumer-secret"}
    assert rsps.calls[1].request.headers["Authorization"] == "Bearer tok-cc"
    assert deals[0].url == f"{INSTANCE}/lightning/r/Opportunity/{oid(1)}/view"


def test_expired_session_logs_in_again_once_and_replays(rsps, make):
    """No expires_in: a 401 INVALID_SESSION_ID is the signal (docs/salesforce.md §1). A rotated
    refresh token is used for the next grant."""
    token(rsps, "tok-1", refresh_token="5Aep-rotated")
    rsps.get(QUERY, status=401, json=error("INVALID_SESSION_ID", "Session expired or invalid"))
    token(rsps, "tok-2")
    rsps.get(QUERY, json=page([opp(1)]), headers=USAGE)
    sf = make()
    assert len(list(sf.iter_changed(SINCE, UNTIL, []))) == 1
    assert form(rsps.calls[0])["refresh_token"] == "5Aep-refresh"
    assert form(rsps.calls[2])["refresh_token"] == "5Aep-rotated"
    assert rsps.calls[3].request.headers["Authorization"] == "Bearer tok-2"
    assert sf.api_calls() == {"POST /services/oauth2/token": 2,
                              "GET /services/data/v60.0/query": 2}


def test_session_refused_after_logging_in_again_is_an_auth_error(rsps, make):
    token(rsps, "tok-1")
    rsps.get(QUERY, status=401, json=error("INVALID_SESSION_ID"))
    token(rsps, "tok-2")
    rsps.get(QUERY, status=401, json=error("INVALID_SESSION_ID"))
    with pytest.raises(AuthError) as caught:
        list(make().iter_changed(SINCE, UNTIL, []))
    assert "refused even after logging in again" in str(caught.value)
    assert len(rsps.calls) == 4  # one new login, one replay: never a loop


def test_login_refusal_names_the_flow_and_hides_secrets(rsps, make):
    rsps.post(TOKEN_URL, status=400, json={"error": "invalid_grant",
                                           "error_description": "expired access/refresh token"})
    with pytest.raises(AuthError) as caught:
        make().fetch([oid(1)], [])
    text = f"{caught.value} {caught.value.hint}"
    assert "refresh_token login" in text and "invalid_grant: expired access/refresh token" in text
    assert "dealsync auth set acme refresh_token" in caught.value.hint
    assert "consumer-secret" not in text and "5Aep-refresh" not in text
    assert caught.value.exit_code == 3


def test_jwt_bearer_assertion_is_rs256_with_the_documented_claims(rsps, make):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    token(rsps, "tok-jwt")
    rsps.get(QUERY, json=page([]), headers=USAGE)
    sf = make(secrets={"private_key": pem.replace("\n", "\\n")}, auth="jwt",
              username="integration@acme.test")
    list(sf.iter_changed(SINCE, UNTIL, []))
    sent = form(rsps.calls[0])
    assert sent["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    head, claims, signature = sent["assertion"].split(".")

    def decode(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    assert json.loads(decode(head)) == {"alg": "RS256"}
    body = json.loads(decode(claims))
    assert (body["iss"], body["sub"], body["aud"]) == ("3MVGconsumer", "integration@acme.test",
                                                       LOGIN)
    assert time.time() < body["exp"] <= time.time() + 180  # wall clock, at most 3 minutes
    key.public_key().verify(decode(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(),
                            hashes.SHA256())


def test_jwt_with_a_broken_key_says_what_to_store(make):
    sf = make(secrets={"private_key": "not a key"}, auth="jwt", username="u@acme.test")
    with pytest.raises(AuthError) as caught:
        sf.fetch([oid(1)], [])
    assert "dealsync auth set acme private_key" in caught.value.hint


# --- reading (docs/salesforce.md §2-4) ---------------------------------------------------------

def test_iter_changed_window_order_relationships_and_paging(rsps, make):
    token(rsps)
    first = [opp(1, Priority__c="High"), opp(2, Account=None, IsClosed=True, Amount=None)]
    rsps.get(QUERY, json=page(first, "/services/data/v60.0/query/01gLOC-2"), headers=USAGE)
    rsps.get(f"{API}/query/01gLOC-2", json=page([opp(3, "2025-01-01T11:00:00.000+0000")]),
             headers=USAGE)
    sf = make()
    deals = list(sf.iter_changed(SINCE, UNTIL, ["Priority__c", "Account.Industry"]))
    assert soql(rsps.calls[1]) == (
        "SELECT Id, SystemModstamp, Name, StageName, Amount, CloseDate, IsClosed, Account.Name, "
        "Owner.Name, Priority__c, Account.Industry FROM Opportunity "
        "WHERE SystemModstamp >= 2025-01-01T00:00:00Z AND SystemModstamp <= 2025-01-02T00:00:00Z "
        "ORDER BY SystemModstamp, Id")
    assert [d.id for d in deals] == [oid(1), oid(2), oid(3)]
    one, two, three = deals
    assert one.fields == {"Priority__c": "High", "Account.Industry": None}
    assert (one.name, one.company, one.owner, one.stage) == ("Deal 1", "Acme Corp", "Avery Rep",
                                                            "Qualification")
    assert (one.amount, one.close_date, one.is_open) == (1500.0, "2025-03-31", True)
    assert one.updated_at == datetime(2025, 1, 1, 10, tzinfo=timezone.utc)
    assert (two.company, two.amount, two.is_open) == (None, None, False)
    assert three.updated_at.hour == 11
    assert sf.api_calls() == {"POST /services/oauth2/token": 1,
                              "GET /services/data/v60.0/query": 1,
                              "GET /services/data/v60.0/query/{locator}": 1}


def test_first_read_has_no_lower_bound_and_batch_size_is_a_header(rsps, make):
    token(rsps)
    rsps.get(QUERY, json=page([]), headers=USAGE)
    list(make(query_batch_size=500).iter_changed(None, UNTIL, []))
    assert " WHERE SystemModstamp <= 2025-01-02T00:00:00Z ORDER BY" in soql(rsps.calls[1])
    assert rsps.calls[1].request.headers["Sforce-Query-Options"] == "batchSize=500"


def test_each_id_and_stamp_comes_once(rsps, make):
    token(rsps)
    rsps.get(QUERY, status=400, json=error("QUERY_TIMEOUT", "Your query request was running "
                                                            "for too long."))
    # The halves overlap the stamp they share; a record edited since comes again, newer.
    rsps.get(QUERY, json=page([opp(1, "2025-01-01T06:00:00.000+0000"),
                               opp(2, "2025-01-01T12:00:00.000+0000")]), headers=USAGE)
    rsps.get(QUERY, json=page([opp(2, "2025-01-01T12:00:00.000+0000"),
                               opp(3, "2025-01-01T12:00:00.000+0000"),
                               opp(1, "2025-01-01T13:00:00.000+0000")]), headers=USAGE)
    deals = list(make().iter_changed(SINCE, UNTIL, []))
    assert [(d.id, d.updated_at.hour) for d in deals] == [(oid(1), 6), (oid(2), 12),
                                                         (oid(3), 12), (oid(1), 13)]


def test_query_timeout_halves_the_window(rsps, make):
    token(rsps)
    rsps.get(QUERY, status=400, json=error("QUERY_TIMEOUT"))
    rsps.get(QUERY, json=page([opp(1)]), headers=USAGE)
    rsps.get(QUERY, json=page([opp(2, "2025-01-01T20:00:00.000+0000")]), headers=USAGE)
    deals = list(make().iter_changed(SINCE, UNTIL, []))
    assert len(deals) == 2
    assert "SystemModstamp >= 2025-01-01T00:00:00Z AND SystemModstamp < 2025-01-01T12:00:00Z " \
           "ORDER BY" in soql(rsps.calls[2])
    assert "SystemModstamp >= 2025-01-01T12:00:00Z AND SystemModstamp <= 2025-01-02T00:00:00Z " \
           "ORDER BY" in soql(rsps.calls[3])


def test_query_timeout_without_a_lower_bound_starts_at_the_oldest_stamp(rsps, make):
    token(rsps)
    rsps.get(QUERY, status=400, json=error("QUERY_TIMEOUT"))
    rsps.get(QUERY, json=page([{"SystemModstamp": "2025-01-01T00:00:00.000+0000"}]),
             headers=USAGE)
    rsps.get(QUERY, json=page([]), headers=USAGE)
    rsps.get(QUERY, json=page([]), headers=USAGE)
    list(make().iter_changed(None, UNTIL, []))
    assert soql(rsps.calls[2]) == ("SELECT SystemModstamp FROM Opportunity ORDER BY "
                                   "SystemModstamp LIMIT 1")
    assert "SystemModstamp >= 2025-01-01T00:00:00Z AND SystemModstamp < 2025-01-01T12:00:00Z" \
        in soql(rsps.calls[3])


def test_a_one_second_window_that_times_out_is_reported(rsps, make):
    token(rsps)
    rsps.get(QUERY, status=400, json=error("QUERY_TIMEOUT"))
    second = datetime(2025, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(QueryTimeout) as caught:
        list(make().iter_changed(second, second + timedelta(seconds=1), []))
    assert caught.value.exit_code == 6


def test_a_field_name_that_is_no_api_name_is_a_config_error(make):
    with pytest.raises(ConfigError) as caught:
        list(make().iter_changed(SINCE, UNTIL, ["Priority__c; DELETE"]))
    assert "'acme'" in str(caught.value) and "not a Salesforce field API name" in str(caught.value)


def test_fetch_asks_200_ids_per_query_and_leaves_out_what_is_not_there(rsps, make):
    ids = [oid(n) for n in range(1, 451)]
    token(rsps)
    for start in range(0, 450, 200):
        rsps.get(QUERY, json=page([opp(n) for n in range(start + 1, min(start + 201, 451))
                                   if n != 8]), headers=USAGE)
    found = make().fetch(ids + ["12345", "not-an-id"], ["Priority__c"])
    assert set(found) == set(ids) - {ids[7]}
    queries = [soql(call) for call in rsps.calls[1:]]
    assert len(queries) == 3
    assert queries[0].endswith(f"WHERE Id IN ('{ids[0]}', '{ids[1]}', " + ", ".join(
        f"'{i}'" for i in ids[2:200]) + ")")
    assert "12345" not in "".join(queries)


# --- writing (docs/salesforce.md §6) ----------------------------------------------------------

def saved(records, failures=None):
    failures = failures or {}
    return [failures[r["id"]] if r["id"] in failures else
            {"id": r["id"], "success": True, "errors": []} for r in records]


def test_update_sends_collections_of_200_with_all_or_none_false(rsps, make):
    token(rsps)

    def answer(request):
        body = json.loads(request.body)
        return 200, USAGE, json.dumps(saved(body["records"]))

    rsps.add_callback(responses.PATCH, COLLECTIONS, callback=answer)
    updates = [(oid(n), {"Priority__c": "High", "PingCode_Url__c": ""})
               for n in range(1, 451)]
    results = make().update(updates)
    assert [r.id for r in results] == [u[0] for u in updates] and all(r.ok for r in results)
    bodies = [json.loads(c.request.body) for c in rsps.calls[1:]]
    assert [len(b["records"]) for b in bodies] == [200, 200, 50]
    assert all(b["allOrNone"] is False for b in bodies)
    assert bodies[0]["records"][0] == {"attributes": {"type": "Opportunity"},
                                       "id": oid(1), "Priority__c": "High",
                                       "PingCode_Url__c": None}


def test_per_record_errors_fail_only_their_records(rsps, make):
    token(rsps)
    rsps.patch(COLLECTIONS, headers=USAGE, json=[
        {"id": oid(1), "success": True, "errors": []},
        {"success": False, "errors": [{"statusCode": "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                       "message": "Priority: bad value for restricted picklist "
                                                  "field: Urgent", "fields": ["Priority__c"]}]},
        {"success": False, "errors": [{"statusCode": "ENTITY_IS_DELETED",
                                       "message": "entity is deleted", "fields": []}]},
        {"success": False, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW",
                                       "message": "unable to obtain exclusive access",
                                       "fields": []}]}])
    ok, bad, gone, locked = make().update([(oid(n), {"Priority__c": "Urgent"})
                                           for n in range(1, 5)])
    assert ok.ok and ok.record == oid(1)
    assert isinstance(bad.error, ItemError) and not bad.error.retryable
    assert "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in str(bad.error)
    assert "Priority__c" in bad.error.hint
    assert isinstance(gone.error, NotFound)
    assert locked.error.retryable and not isinstance(locked.error, NotFound)


def test_a_call_refused_whole_fails_its_records_and_the_next_call_goes_on(rsps, make):
    token(rsps)
    rsps.patch(COLLECTIONS, status=400, headers=USAGE,
               json=error("INVALID_FIELD", "No such column 'Nope__c' on sobject of type "
                                           "Opportunity"))
    rsps.patch(COLLECTIONS, headers=USAGE, json=[{"id": oid(201), "success": True,
                                                  "errors": []}])
    results = make().update([(oid(n), {"Nope__c": "x"}) for n in range(1, 202)])
    assert not any(r.ok for r in results[:200]) and results[200].ok
    assert not results[0].error.retryable and "dealsync check" in results[0].error.hint


def test_an_outage_stops_sending_and_fails_the_rest_for_retry(rsps, make):
    token(rsps)
    for _ in range(5):
        rsps.patch(COLLECTIONS, status=503, body="unavailable")
    results = make().update([(oid(n), {"Priority__c": "High"}) for n in range(1, 402)])
    assert len(rsps.calls) == 6  # five attempts of the first call; the others are not sent
    assert all(not r.ok and r.error.retryable for r in results)


# --- notes as Tasks (docs/salesforce.md §11) ----------------------------------------------------

TASK = f"{API}/sobjects/Task"


def tid(n: int) -> str:
    return make_id("00T", n)


def test_add_notes_creates_completed_tasks_200_per_collections_call(rsps, make):
    token(rsps)
    made = iter(range(1, 1000))

    def answer(request):
        body = json.loads(request.body)
        return 200, USAGE, json.dumps([{"id": tid(next(made)), "success": True, "errors": []}
                                       for _ in body["records"]])

    rsps.add_callback(responses.POST, COLLECTIONS, callback=answer)
    notes = [(oid(1 + n % 7), f"dealsync: SCR-{n} SSO: status is now 开发中 (In Progress)")
             for n in range(450)]
    results = make().add_notes(notes)
    assert [r.id for r in results] == [deal for deal, _ in notes]
    assert [r.record for r in results] == [tid(n) for n in range(1, 451)]
    assert all(r.ok for r in results)
    calls = rsps.calls[1:]
    assert [c.request.method for c in calls] == ["POST"] * 3
    bodies = [json.loads(c.request.body) for c in calls]
    assert [len(b["records"]) for b in bodies] == [200, 200, 50]  # one deal many times is fine
    assert all(b["allOrNone"] is False for b in bodies)
    assert bodies[0]["records"][0] == {
        "attributes": {"type": "Task"}, "Subject": notes[0][1], "Description": notes[0][1],
        "Status": "Completed", "WhatId": oid(1), "ActivityDate": "2025-01-01",  # NOW, in UTC
        "TaskSubtype": "Task"}


def test_a_refused_task_fails_only_its_note(rsps, make):
    token(rsps)
    rsps.post(COLLECTIONS, headers=USAGE, json=[
        {"id": tid(1), "success": True, "errors": []},
        {"success": False, "errors": [{"statusCode": "INVALID_CROSS_REFERENCE_KEY",
                                       "message": "invalid cross reference id",
                                       "fields": ["WhatId"]}]},
        {"success": False, "errors": [{"statusCode": "FIELD_INTEGRITY_EXCEPTION",
                                       "message": "Related To ID: id value of incorrect type: "
                                                  "005000000000001AAA", "fields": ["WhatId"]}]},
        {"success": False, "errors": [{"statusCode": "UNABLE_TO_LOCK_ROW",
                                       "message": "unable to obtain exclusive access",
                                       "fields": []}]},
        {"id": tid(2), "success": True, "errors": []}])
    ok, gone, wrong, locked, last = make().add_notes([(oid(n), "note") for n in range(1, 6)])
    assert (ok.record, last.record) == (tid(1), tid(2)) and ok.ok and last.ok
    assert isinstance(gone.error, NotFound)
    assert str(gone.error).startswith(f"acme: Salesforce refused the note (Task) on opportunity "
                                      f"{oid(2)}: INVALID_CROSS_REFERENCE_KEY")
    assert type(wrong.error) is ItemError and not wrong.error.retryable
    assert "WhatId" in wrong.error.hint
    assert locked.error.retryable and not isinstance(locked.error, NotFound)


def test_an_ambiguous_collections_create_is_not_sent_again(rsps, make):
    token(rsps)
    rsps.post(COLLECTIONS, status=503, body="unavailable")  # the Tasks may exist now
    rsps.post(COLLECTIONS, headers=USAGE, json=[{"id": tid(1), "success": True, "errors": []}])
    results = make().add_notes([(oid(n), "note") for n in range(1, 202)])
    assert len(rsps.calls) == 3  # token, the first call once, the second
    assert all(isinstance(r.error, AmbiguousWrite) for r in results[:200])
    assert results[200].ok and results[200].record == tid(1)


def test_add_note_is_a_single_record_create(rsps, make):
    token(rsps)
    rsps.post(TASK, status=201, headers=USAGE,
              json={"id": tid(7), "errors": [], "success": True})
    rsps.post(TASK, status=400, headers=USAGE,
              json=[{"message": "invalid cross reference id",
                     "errorCode": "INVALID_CROSS_REFERENCE_KEY", "fields": ["WhatId"]}])
    sf = make()
    text = "dealsync: SCR-1 " + "长" * 300 + "\nsecond line"
    assert sf.add_note(oid(1), text) == tid(7)
    sent = json.loads(rsps.calls[1].request.body)
    assert sent["Subject"] == ("dealsync: SCR-1 " + "长" * 300)[:254] + "…"
    assert len(sent["Subject"]) == 255 and sent["Description"] == text
    assert (sent["Status"], sent["WhatId"], sent["TaskSubtype"]) == ("Completed", oid(1), "Task")
    with pytest.raises(NotFound, match="INVALID_CROSS_REFERENCE_KEY"):
        sf.add_note(oid(2), "note")
    assert len(rsps.calls) == 3  # a create is not retried


# --- limits (docs/salesforce.md §8) -----------------------------------------------------------

def test_request_limit_exceeded_stops_at_once_with_when_it_frees_up(rsps, make):
    token(rsps)
    rsps.get(QUERY, status=403, headers={"Sforce-Limit-Info": "api-usage=100001/100000"},
             json=error("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."))
    with pytest.raises(RateLimitExhausted) as caught:
        list(make().iter_changed(SINCE, UNTIL, []))
    assert len(rsps.calls) == 2  # never retried
    assert caught.value.exit_code == 6
    assert "rolling 24 hours" in caught.value.hint and "2025-01-02 12:00 UTC" in caught.value.hint


def test_usage_at_max_api_share_stops_before_the_next_call(rsps, make):
    token(rsps)
    rsps.get(QUERY, json=page([opp(1)], "/services/data/v60.0/query/01gLOC-1"),
             headers={"Sforce-Limit-Info": "api-usage=80/100"})
    sf = make()
    deals = sf.iter_changed(SINCE, UNTIL, [])
    assert next(deals).id == oid(1)
    with pytest.raises(RateLimitExhausted) as caught:
        next(deals)
    assert len(rsps.calls) == 2  # the next page was never asked for
    assert sf.api_usage == (80, 100)
    assert "80 of the org's 100 daily calls (80%)" in str(caught.value)
    assert "keeps its cursors" in str(caught.value) and "max_api_share" in caught.value.hint


def test_max_api_share_is_configurable(rsps, make):
    token(rsps)
    rsps.get(QUERY, json=page([opp(1)], "/services/data/v60.0/query/01gLOC-1"),
             headers={"Sforce-Limit-Info": "api-usage=80/100"})
    rsps.get(f"{API}/query/01gLOC-1", json=page([opp(2)]),
             headers={"Sforce-Limit-Info": "api-usage=81/100"})
    assert len(list(make(max_api_share=0.9).iter_changed(SINCE, UNTIL, []))) == 2


# --- errors (docs/salesforce.md §9) ------------------------------------------------------------

def reply(status: int, body, method: str = "GET") -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    response.headers["Content-Type"] = "application/json"
    response.request = requests.Request(method, QUERY).prepare()
    response.url = QUERY
    return response


@pytest.mark.parametrize("status, code, method, expected", [
    (401, "INVALID_SESSION_ID", "GET", AuthError),
    (403, "API_DISABLED_FOR_ORG", "GET", AuthError),
    (403, "INSUFFICIENT_ACCESS", "PATCH", AuthError),
    (403, "REQUEST_LIMIT_EXCEEDED", "GET", RateLimitExhausted),
    (400, "QUERY_TIMEOUT", "GET", QueryTimeout),
    (400, "INVALID_FIELD", "GET", ConfigError),
    (400, "MALFORMED_QUERY", "GET", ConfigError),
    (400, "INVALID_FIELD", "PATCH", ItemError),
    (404, "NOT_FOUND", "GET", NotFound),
    (404, "ENTITY_IS_DELETED", "PATCH", NotFound),
    (400, "INVALID_QUERY_LOCATOR", "GET", RemoteError),
    (400, "JSON_PARSER_ERROR", "PATCH", ItemError),
    (500, "UNKNOWN_EXCEPTION", "GET", RemoteError),
])
def test_error_array_is_mapped_by_error_code(make, status, code, method, expected):
    error_ = make().map_error(reply(status, error(code, "what Salesforce said"), method))
    assert type(error_) is expected
    assert "what Salesforce said" in str(error_)


def test_the_long_request_limit_is_told_apart_from_the_daily_one(make):
    error_ = make().map_error(reply(403, error("REQUEST_LIMIT_EXCEEDED",
                                               "ConcurrentPerOrgLongTxn Limit exceeded.")))
    assert isinstance(error_, RateLimitExhausted) and "few minutes" in error_.hint


# --- fields (docs/salesforce.md §7) -----------------------------------------------------------

DESCRIBED = {"name": "Opportunity", "fields": [
    {"name": "Id", "type": "id", "picklistValues": []},
    {"name": "StageName", "type": "picklist", "picklistValues": [
        {"value": "Prospecting", "active": True}, {"value": "Old", "active": False}]},
    {"name": "Priority__c", "type": "picklist", "restrictedPicklist": True, "picklistValues": [
        {"value": "High", "active": True}, {"value": "Low", "active": True}]},
    {"name": "PingCode_Status__c", "type": "string", "picklistValues": []},
]}


def test_describe_gives_missing_fields_options_and_setup_steps(rsps, make):
    token(rsps)
    rsps.get(DESCRIBE, json=DESCRIBED, headers=USAGE)
    sf = make()
    assert sf.missing_fields(["priority__c", "PingCode_Key__c", "Account.Industry"]) == [
        "PingCode_Key__c"]
    assert sf.field_options("StageName") == ["Prospecting"]
    assert sf.field_options("PingCode_Status__c") is None
    assert sf.ensure_fields({"PingCode_Key__c": None}) == []
    setups = sf.field_setup_steps(
        {"Priority__c": ["Critical", "High", "Low"], "PingCode_Key__c": None,
         "Dealsync_Request__c": None, "PingCode_Url__c": None,
         "Stage__c": ["New", "Won't Do"], "PingCode_Status__c": ["New"]},
        {"Dealsync_Request__c": "request", "PingCode_Url__c": "url"})
    what = {s.name: s.what for s in setups}
    assert what == {
        "Priority__c": "a picklist that also has the values Critical",
        "PingCode_Key__c": "a Text field of 255 characters",
        "Dealsync_Request__c": "a Text Area (Long) field of 32,768 characters",
        "PingCode_Url__c": "a URL field",
        "Stage__c": "a restricted picklist with the values New, Won't Do"}
    steps = {s.name: s.steps for s in setups}
    assert "values, one per line in this order: New, Won't Do" in " ".join(steps["Stage__c"])
    assert "Field Name: Stage (the API name becomes Stage__c)" in " ".join(steps["Stage__c"])
    assert "Field-Level Security" in " ".join(steps["PingCode_Key__c"])
    assert steps["Priority__c"][1] == "enter, one per line: Critical; Save"
    assert len(rsps.calls) == 2  # describe is read once
