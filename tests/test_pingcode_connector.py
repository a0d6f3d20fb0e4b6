"""The PingCode connector's requests and error mapping, one `responses` fixture per call.

Facts are from docs/pingcode.md §3.1, §8, §9, §13: GET token with an absolute ``expires_in``,
not-found as HTTP 400 ``100317``, string error codes, the search DSL and its day-granular
time filter, state flows.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import responses
from responses import matchers

from plugins.pingcode.connector import PingCodeConnector, start_of_day
from sync.connectors import InstanceContext, NewRequirement, RequirementChange
from sync.errors import (AmbiguousWrite, AuthError, ConfigError, ItemError, NotFound, RemoteError,
                         TransitionError)

BASE = "https://pc.test"
API = BASE + "/v1/pjm"
NOW = 1740963600  # 2025-03-03T01:00:00Z
PID = "5eb623f6a70571487ea47000"
ITEM = "6efca131b06329c524cdd2fb"
S = {name: f"5c9b35de90ad7153c2062f{n:02d}" for n, name in enumerate(
    ["新建", "待评审", "已计划", "开发中", "已完成", "不做"])}
P = {name: f"5eb623f6a70571487ea471{n:02d}" for n, name in enumerate(["最高", "高", "中", "低"])}
FLOWS = [("新建", "待评审"), ("待评审", "已计划"), ("已计划", "开发中"), ("开发中", "已完成"),
         ("新建", "不做")]
SECRETS = {"client_id": "cid", "client_secret": "s3cret-value"}


def envelope(values, total=None, page_index=0, page_size=100):
    return {"page_index": page_index, "page_size": page_size,
            "total": len(values) if total is None else total, "values": values}


def state(name):
    kind = {"已完成": "completed", "不做": "closed", "开发中": "in_progress",
            "已计划": "in_progress"}.get(name, "pending")
    return {"id": S[name], "url": f"{API}/work_item_states/{S[name]}", "name": name, "type": kind,
            "color": "#ccc"}


def item(state_name="新建", updated_at=NOW, item_id=ITEM, identifier="SCR-7", **extra):
    return {"id": item_id, "identifier": identifier, "title": "单点登录", "type": "story",
            "description": "<p>描述</p>", "state": state(state_name),
            "priority": {"id": P["高"], "name": "高"}, "version": None, "versions": [],
            "end_at": None, "project": {"id": PID, "identifier": "SCR"},
            "html_url": "https://t.pingcode.com/pjm/workitems/abcdEFGH", "short_id": "abcdEFGH",
            "properties": {"prop_crm_deal": None}, "created_at": NOW, "updated_at": updated_at,
            **extra}


def error(code, message="错误", status=400):
    return {"status": status, "json": {"code": code, "message": message}}


def add_token(rsps, expires_in=NOW + 30 * 86400, token="tok-1"):
    rsps.get(BASE + "/v1/auth/token", json={"access_token": token, "token_type": "Bearer",
                                            "expires_in": expires_in})


def add_metadata(rsps, prefix=API):
    rsps.get(prefix + "/projects", json=envelope([{"id": PID, "identifier": "SCR",
                                                   "name": "Scrum", "type": "scrum"}]))
    rsps.get(prefix + "/work_item/types",
             json=envelope([{"id": "story", "name": "用户故事", "group": "requirement"}]))
    rsps.get(prefix + "/work_item/states", json=envelope([state(n) for n in S]))
    rsps.get(prefix + "/work_item/priorities",
             json=envelope([{"id": i, "name": n} for n, i in P.items()]))
    rsps.get(prefix + "/work_item_state_plans", json=envelope([
        {"id": "plan1", "work_item_type": {"id": "story"}, "project_type": "scrum"}]))
    rsps.get(prefix + "/work_item_state_plans/plan1/work_item_state_flows", json=envelope([
        {"id": f"f{n}", "from_state": state(a), "to_state": state(b)}
        for n, (a, b) in enumerate(FLOWS)]))
    rsps.get(prefix + "/work_item/properties", json=envelope([
        {"id": "prop_crm_deal", "name": "CRM 商机", "type": "text", "options": None}]))


class Clock:
    def __init__(self, now=NOW):
        self.now = float(now)

    def __call__(self):
        return self.now


def connector(clock=None, **settings) -> PingCodeConnector:
    settings = {"base_url": BASE, "project": "SCR", **settings}
    sleeps = []
    conn = PingCodeConnector(InstanceContext("rd", settings, SECRETS.__getitem__),
                             sleep=sleeps.append, clock=clock or Clock())
    conn.sleeps = sleeps  # type: ignore[attr-defined]
    return conn


@pytest.fixture
def ready(rsps):
    add_token(rsps)
    add_metadata(rsps)
    return rsps


def calls(rsps, method, path):
    return [c for c in rsps.calls if c.request.method == method
            and c.request.url.split("?")[0] == BASE + path]


def body_of(call):
    return json.loads(call.request.body)


# -- token and auth ---------------------------------------------------------------------------

def test_token_is_fetched_with_a_get_and_sent_as_bearer(ready):
    conn = connector()
    conn.field_values("status")
    token_call = calls(ready, "GET", "/v1/auth/token")[0]
    assert "grant_type=client_credentials" in token_call.request.url
    assert "client_id=cid" in token_call.request.url
    assert calls(ready, "GET", "/v1/pjm/projects")[0].request.headers["Authorization"] == \
        "Bearer tok-1"
    assert conn.api_calls()["GET /v1/auth/token"] == 1


def test_absolute_expiry_is_refreshed_a_day_early(rsps):
    add_token(rsps, expires_in=NOW + 30 * 86400)
    add_metadata(rsps)
    clock = Clock()
    conn = connector(clock)
    conn.field_values("status")
    clock.now += 28 * 86400  # more than a day before expiry: same token
    conn.field_values("status")
    conn._workflow = None
    conn.field_values("status")
    assert len(calls(rsps, "GET", "/v1/auth/token")) == 1
    clock.now += 1.5 * 86400  # within the last day: renewed before any 401
    conn._workflow = None
    conn.field_values("status")
    assert len(calls(rsps, "GET", "/v1/auth/token")) == 2


@pytest.mark.parametrize("skew_s", [-400 * 86400, -2 * 3600, 2 * 86400])
def test_absolute_expiry_is_read_on_the_services_clock(rsps, skew_s):
    """The epoch is PingCode's clock; its Date header says where that clock stands. A service
    clock a year or two hours behind this machine's must not make each token look expired
    (a token fetched before every call), nor one two days ahead make it last longer."""
    from email.utils import formatdate
    service_now = NOW + skew_s
    rsps.get(BASE + "/v1/auth/token", json={"access_token": "tok-1", "token_type": "Bearer",
                                            "expires_in": service_now + 30 * 86400},
             headers={"Date": formatdate(service_now, usegmt=True)})
    add_metadata(rsps)
    clock = Clock()
    conn = connector(clock)
    for _ in range(3):
        conn._workflow = None
        conn.field_values("status")
    assert len(calls(rsps, "GET", "/v1/auth/token")) == 1
    clock.now += 28 * 86400  # on this machine's clock: still more than a day to go
    conn._workflow = None
    conn.field_values("status")
    assert len(calls(rsps, "GET", "/v1/auth/token")) == 1
    clock.now += 1.5 * 86400  # within the last day of the 30
    conn._workflow = None
    conn.field_values("status")
    assert len(calls(rsps, "GET", "/v1/auth/token")) == 2


def test_duration_expiry_is_read_as_seconds_from_now(rsps):
    add_token(rsps, expires_in=3600)
    add_metadata(rsps)
    clock = Clock()
    conn = connector(clock)
    conn.field_values("status")
    clock.now += 1000
    conn._workflow = None
    conn.field_values("status")
    assert len(calls(rsps, "GET", "/v1/auth/token")) == 1
    clock.now += 1000  # past half of a short lifetime
    conn._workflow = None
    conn.field_values("status")
    assert len(calls(rsps, "GET", "/v1/auth/token")) == 2


def test_bad_credentials_are_an_auth_error_without_the_secret(rsps):
    rsps.get(BASE + "/v1/auth/token", **error("100024", "'client_id'或'client_secret'错误"))
    with pytest.raises(AuthError) as caught:
        connector().field_values("status")
    assert "s3cret-value" not in str(caught.value) + (caught.value.hint or "")
    assert "client_secret" in caught.value.hint


def test_401_refreshes_the_token_once_and_replays(rsps):
    rsps.get(BASE + "/v1/auth/token", json={"access_token": "old", "expires_in": NOW + 9e6})
    rsps.get(BASE + "/v1/auth/token", json={"access_token": "new", "expires_in": NOW + 9e6})
    rsps.get(API + "/projects", status=401, json={"code": "100005", "message": "invalid"},
             match=[matchers.header_matcher({"Authorization": "Bearer old"})])
    add_metadata(rsps)
    assert connector().field_values("priority") == ["最高", "高", "中", "低"]
    project_calls = calls(rsps, "GET", "/v1/pjm/projects")
    assert [c.request.headers["Authorization"] for c in project_calls] == ["Bearer old",
                                                                          "Bearer new"]


# -- configuration ----------------------------------------------------------------------------

def test_names_resolve_per_project_and_type_and_are_cached(ready):
    conn = connector()
    assert conn.field_values("status") == list(S)
    assert conn.field_values("priority") == list(P)
    assert conn.field_values("delivery") is None
    conn.field_values("status")
    assert len(calls(ready, "GET", "/v1/pjm/work_item/states")) == 1
    states_call = calls(ready, "GET", "/v1/pjm/work_item/states")[0].request.url
    assert f"project_id={PID}" in states_call and "work_item_type_id=story" in states_call
    assert not calls(ready, "GET", "/v1/pjm/work_item/properties")  # no marker_property


def test_older_path_prefix(rsps):
    add_token(rsps)
    add_metadata(rsps, BASE + "/v1/project")
    conn = connector(path_prefix="/v1/project")
    assert conn.field_values("status") == list(S)
    assert all("/v1/pjm/" not in c.request.url for c in rsps.calls)


def test_unknown_project_type_or_marker_property_is_a_config_error(ready):
    with pytest.raises(ConfigError, match="NOPE"):
        connector(project="NOPE").field_values("status")
    ready.replace(responses.GET, API + "/projects", json=envelope([
        {"id": PID, "identifier": "SCR", "name": "Scrum", "type": "scrum"}]))
    with pytest.raises(ConfigError, match="epic"):
        connector(work_item_type="epic").field_values("status")
    with pytest.raises(ConfigError, match="prop_other"):
        connector(marker_property="prop_other").field_values("status")


def test_check_settings():
    assert PingCodeConnector.check_settings({"project": "SCR"}) == []
    problems = PingCodeConnector.check_settings({"path_prefix": "/v2", "base_url": "ftp://x",
                                                 "colour": "red"})
    joined = "\n".join(problems)
    assert "project: required" in joined and "path_prefix" in joined and "base_url" in joined
    assert "colour: unknown setting" in joined


# -- reading ----------------------------------------------------------------------------------

def test_fields_and_timestamps_at_the_edge(ready):
    raw = item("已计划", versions=[{"id": "v1", "name": "v2.3"}], end_at=1743436799)
    ready.get(f"{API}/work_items/{ITEM}", json=raw)
    req = connector().fetch([ITEM])[ITEM]
    assert req.key == "SCR-7" and req.url.endswith("/abcdEFGH")
    assert req.updated_at == datetime(2025, 3, 3, 1, 0, tzinfo=timezone.utc)
    assert req.fields == {"status": "已计划", "state_type": "in_progress", "priority": "高",
                          "delivery": "v2.3 (2025-03-31)"}


def test_delivery_falls_back_to_the_version_end_date(ready):
    ready.get(f"{API}/work_items/{ITEM}", json=item(version={"id": "v1", "name": "v2.3"}))
    ready.get(f"{API}/projects/{PID}/versions", json=envelope([
        {"id": "v1", "name": "v2.3", "start_at": None, "end_at": 1743436799}]))
    assert connector().fetch([ITEM])[ITEM].fields["delivery"] == "v2.3 (2025-03-31)"


def test_delivery_without_the_release_scope_shows_the_version_name(ready):
    ready.get(f"{API}/work_items/{ITEM}", json=item(versions=[{"id": "v1", "name": "v2.3"}]))
    ready.get(f"{API}/projects/{PID}/versions", status=403, json={"code": "100006",
                                                                   "message": "no scope"})
    assert connector().fetch([ITEM])[ITEM].fields["delivery"] == "v2.3"


def test_fetch_leaves_out_only_what_pingcode_says_is_gone(ready):
    ready.get(f"{API}/work_items/{ITEM}", json=item())
    ready.get(f"{API}/work_items/0123456789abcdef01234567",
              **error("100317", "工作项资源不存在"))
    found = connector().fetch([ITEM, "0123456789abcdef01234567"])
    assert list(found) == [ITEM]


@pytest.mark.parametrize("status, body", [
    (500, {"code": "100000", "message": "Internal Server Error"}),
    (404, {"code": "100404", "message": "not found"}),  # a wrong URL, not a deleted item
])
def test_fetch_raises_when_it_could_not_ask(ready, status, body):
    ready.get(f"{API}/work_items/{ITEM}", status=status, json=body)
    with pytest.raises(RemoteError) as caught:
        connector().fetch([ITEM])
    assert not isinstance(caught.value, NotFound)


def test_iter_changed_searches_from_the_start_of_the_day_and_keeps_the_whole_day(ready):
    since = datetime(2025, 3, 3, 1, 0, tzinfo=timezone.utc)  # 09:00 Beijing
    until = datetime(2025, 3, 3, 5, 0, tzinfo=timezone.utc)
    page0 = [item(item_id=f"{n:024x}", identifier=f"SCR-{n}", updated_at=NOW + n * 60 - 3000)
             for n in range(100)]
    page1 = [page0[99], item(item_id="f" * 24, identifier="SCR-999", updated_at=NOW + 99999),
             item(item_id="e" * 24, identifier="SCR-998", updated_at=NOW + 60)]
    ready.post(f"{API}/work_items/search", json=envelope(page0, total=102))
    ready.post(f"{API}/work_items/search", json=envelope(page1, total=102, page_index=1))
    got = [r.key for r in connector().iter_changed(since, until)]
    bodies = [body_of(c) for c in calls(ready, "POST", "/v1/pjm/work_items/search")]
    assert [b["payload"]["page_index"] for b in bodies] == [0, 1]
    assert bodies[0]["mode"] == "query" and bodies[0]["payload"]["page_size"] == 100
    assert bodies[0]["payload"]["filter"] == {
        "project.id": {"in": [PID]}, "type": {"in": ["story"]},
        "updated_at": {"gte": start_of_day(since)}}
    assert start_of_day(since) == 1740931200  # 2025-03-03T00:00+08:00
    # the day's items before since kept (paid for, and they spare reads by id), the
    # page-boundary repeat once, the one past until dropped
    assert got == [f"SCR-{n}" for n in range(100)] + ["SCR-998"]


def test_iter_changed_without_since_reads_the_whole_project(ready):
    ready.post(f"{API}/work_items/search", json=envelope([item()]))
    got = list(connector().iter_changed(None, datetime(2030, 1, 1, tzinfo=timezone.utc)))
    assert len(got) == 1
    payload = body_of(calls(ready, "POST", "/v1/pjm/work_items/search")[0])["payload"]
    assert "updated_at" not in payload["filter"]


def test_search_is_retried_after_a_5xx(ready):
    ready.post(f"{API}/work_items/search", **error("100000", "Internal Server Error", 500))
    ready.post(f"{API}/work_items/search", json=envelope([item()]))
    conn = connector()
    assert len(list(conn.iter_changed(None, datetime(2030, 1, 1, tzinfo=timezone.utc)))) == 1
    assert len(conn.sleeps) == 1


def test_429_waits_for_x_pc_retry_after(ready):
    ready.get(f"{API}/work_items/{ITEM}", status=429, headers={"x-pc-retry-after": "17"},
              json={"code": "100038", "message": "请求频率过高"})
    ready.get(f"{API}/work_items/{ITEM}", json=item())
    conn = connector()
    assert ITEM in conn.fetch([ITEM])
    assert conn.sleeps == [17.0]


def test_find_by_key_lists_by_identifier_in_the_project(ready):
    ready.get(f"{API}/work_items", json=envelope([item()]))
    assert connector().find_by_key("scr-7").id == ITEM
    url = calls(ready, "GET", "/v1/pjm/work_items")[0].request.url
    assert "identifier=SCR-7" in url and f"project_id={PID}" in url
    ready.replace(responses.GET, f"{API}/work_items", json=envelope([]))
    assert connector().find_by_key("SCR-404") is None


def test_find_by_marker_in_the_description_matches_exactly(ready):
    ten = item(item_id="a" * 24, description="<p>dealsync:p:D-10</p>", identifier="SCR-10")
    one = item(description="<small>dealsync:p:D-1</small>")
    ready.post(f"{API}/work_items/search", json=envelope([ten, one]))
    assert connector().find_by_marker("dealsync:p:D-1").key == "SCR-7"
    payload = body_of(calls(ready, "POST", "/v1/pjm/work_items/search")[0])["payload"]
    assert payload["filter"] == {"project.id": {"in": [PID]},
                                 "description": {"contains": "dealsync:p:D-1"}}
    ready.replace(responses.POST, f"{API}/work_items/search", json=envelope([ten]))
    assert connector().find_by_marker("dealsync:p:D-1") is None


def test_find_by_marker_uses_the_marker_property_when_configured(ready):
    ready.post(f"{API}/work_items/search", json=envelope([item(properties={
        "prop_crm_deal": "dealsync:p:D-1"})]))
    assert connector(marker_property="CRM 商机").find_by_marker("dealsync:p:D-1").id == ITEM
    payload = body_of(calls(ready, "POST", "/v1/pjm/work_items/search")[0])["payload"]
    assert payload["filter"]["properties.prop_crm_deal"] == {"contains": "dealsync:p:D-1"}


# -- writing ----------------------------------------------------------------------------------

def test_create_sends_what_it_is_given(ready):
    ready.post(f"{API}/work_items", status=201, json=item())
    new = NewRequirement(title="单点登录", description="<p>&lt;script&gt; 中文</p>",
                         fields={"priority": "高"}, marker="dealsync:p:D-1")
    req = connector(marker_property="prop_crm_deal").create(new)
    assert req.id == ITEM
    assert body_of(calls(ready, "POST", "/v1/pjm/work_items")[0]) == {
        "project_id": PID, "type_id": "story", "title": "单点登录",
        "description": "<p>&lt;script&gt; 中文</p>", "priority_id": P["高"],
        "properties": {"prop_crm_deal": "dealsync:p:D-1"}}


def test_create_then_walks_to_the_wanted_status(ready):
    ready.post(f"{API}/work_items", status=201, json=item())
    ready.patch(f"{API}/work_items/{ITEM}", json=item("待评审"))
    ready.patch(f"{API}/work_items/{ITEM}", json=item("已计划"))
    req = connector().create(NewRequirement("t", "d", {"status": "已计划"}, "dealsync:p:D-1"))
    assert req.fields["status"] == "已计划"
    assert [body_of(c) for c in calls(ready, "PATCH", f"/v1/pjm/work_items/{ITEM}")] == [
        {"state_id": S["待评审"]}, {"state_id": S["已计划"]}]


def test_create_with_an_unreachable_status_keeps_the_created_item(ready):
    ready.post(f"{API}/work_items", status=201, json=item("不做"))
    ready.get(f"{API}/work_items/{ITEM}", json=item("不做"))  # re-read after a fresh look
    req = connector().create(NewRequirement("t", "d", {"status": "开发中"}, "m"))
    assert req.fields["status"] == "不做"  # reported in the log; the create stands
    assert not calls(ready, "PATCH", f"/v1/pjm/work_items/{ITEM}")


def test_an_outage_after_the_create_does_not_fail_it(ready):
    ready.post(f"{API}/work_items", status=201, json=item("新建"))
    ready.patch(f"{API}/work_items/{ITEM}", **error("100000", "Internal Server Error", 500))
    req = connector().create(NewRequirement("t", "d", {"status": "待评审"}, "m"))
    assert req.id == ITEM and req.fields["status"] == "新建"


def test_a_create_that_fails_ambiguously_is_not_resent(ready):
    ready.post(f"{API}/work_items", **error("100000", "Internal Server Error", 500))
    with pytest.raises(AmbiguousWrite):
        connector().create(NewRequirement("t", "d", {}, "m"))
    assert len(calls(ready, "POST", "/v1/pjm/work_items")) == 1


def test_create_refuses_unknown_priority_and_read_only_fields(ready):
    with pytest.raises(ItemError, match="最高, 高"):
        connector().create(NewRequirement("t", "d", {"priority": "P0"}, "m"))
    with pytest.raises(ItemError, match="read-only"):
        connector().update(ITEM, RequirementChange(fields={"delivery": "v9"}))
    assert not calls(ready, "POST", "/v1/pjm/work_items")


def test_update_sends_one_partial_patch(ready):
    ready.patch(f"{API}/work_items/{ITEM}", json=item(title="新标题"))
    connector().update(ITEM, RequirementChange(fields={"priority": "低"}, title="新标题",
                                               description="<p>新</p>"))
    assert [body_of(c) for c in calls(ready, "PATCH", f"/v1/pjm/work_items/{ITEM}")] == [
        {"title": "新标题", "description": "<p>新</p>", "priority_id": P["低"]}]


def test_update_walks_the_flow_with_other_changes_on_the_first_hop(ready):
    ready.get(f"{API}/work_items/{ITEM}", json=item("待评审"))
    ready.patch(f"{API}/work_items/{ITEM}", json=item("已计划"))
    ready.patch(f"{API}/work_items/{ITEM}", json=item("开发中"))
    req = connector().update(ITEM, RequirementChange(fields={"status": "开发中",
                                                             "priority": "最高"}))
    assert req.fields["status"] == "开发中"
    assert [body_of(c) for c in calls(ready, "PATCH", f"/v1/pjm/work_items/{ITEM}")] == [
        {"priority_id": P["最高"], "state_id": S["已计划"]}, {"state_id": S["开发中"]}]


def test_unreachable_status_names_the_missing_transition_and_patches_nothing(ready):
    ready.get(f"{API}/work_items/{ITEM}", json=item("不做"))
    with pytest.raises(TransitionError) as caught:
        connector().update(ITEM, RequirementChange(fields={"status": "开发中"}, title="x"))
    assert "不做 → 开发中" in str(caught.value) and caught.value.retryable is False
    assert not calls(ready, "PATCH", f"/v1/pjm/work_items/{ITEM}")


def test_unknown_state_name_is_an_item_error(ready):
    ready.get(f"{API}/work_items/{ITEM}", json=item())
    with pytest.raises(ItemError, match="Done"):
        connector().update(ITEM, RequirementChange(fields={"status": "Done"}))


def test_server_side_100379_is_a_transition_error_after_one_fresh_look(ready):
    conn = connector()
    conn.field_values("status")  # cache the workflow
    ready.get(f"{API}/work_items/{ITEM}", json=item("新建"))
    ready.patch(f"{API}/work_items/{ITEM}", **error("100379", "工作项状态不能流转到当前状态"))
    with pytest.raises(TransitionError):
        conn.update(ITEM, RequirementChange(fields={"status": "待评审"}))
    assert len(calls(ready, "GET", "/v1/pjm/work_item/states")) == 2  # re-read once
    assert len(calls(ready, "PATCH", f"/v1/pjm/work_items/{ITEM}")) == 2


def test_a_write_failing_on_a_stale_id_rereads_names_once(ready):
    conn = connector()
    conn.field_values("priority")
    ready.patch(f"{API}/work_items/{ITEM}", **error("100039", "'priority'资源不存在"))
    ready.patch(f"{API}/work_items/{ITEM}", json=item())
    conn.update(ITEM, RequirementChange(fields={"priority": "低"}))
    assert len(calls(ready, "GET", "/v1/pjm/work_item/priorities")) == 2
    assert len(calls(ready, "PATCH", f"/v1/pjm/work_items/{ITEM}")) == 2


@pytest.mark.parametrize("code, kind", [
    ("100317", NotFound), ("100379", TransitionError), ("100303", ItemError),
    ("100043", ItemError), ("100044", ItemError), ("100008", ItemError), ("100003", ItemError),
])
def test_error_codes_map_to_error_types(ready, code, kind):
    ready.patch(f"{API}/work_items/{ITEM}", **error(code))
    with pytest.raises(kind) as caught:
        connector().update(ITEM, RequirementChange(title="x"))
    assert caught.value.retryable is False and type(caught.value) is kind


def test_100038_under_another_status_is_still_a_rate_limit(ready):
    ready.patch(f"{API}/work_items/{ITEM}", **error("100038", "请求频率过高"))
    with pytest.raises(RemoteError) as caught:
        connector().update(ITEM, RequirementChange(title="x"))
    assert caught.value.status == 429


def test_registered_through_the_plugin_hook():
    import plugins.pingcode as plugin

    registered = []
    plugin.register_connectors(register=registered.append)
    assert registered == [PingCodeConnector]
    assert PingCodeConnector.type_name == "pingcode"
    assert [s.name for s in PingCodeConnector.secrets] == ["client_id", "client_secret"]
    assert PingCodeConnector.default_rate_limits["default"].calls == 200
