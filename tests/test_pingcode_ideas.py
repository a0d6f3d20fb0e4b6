"""PingCode Ship ideas (``item_kind = "idea"``): the connector's requests and error mapping with
``responses``, the emulator's idea endpoints against the documented behaviour, and one engine run.

Facts are from docs/pingcode.md §10 and §13: ideas live in a product under ``/v1/ship``, take no
state or priority on create, have no flow endpoint, answer 100725 when unknown and 100702/100719
for a state the product's plan does not allow. The contract suite runs on ideas in
test_pingcode_contract.py.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import pytest
import requests
import responses

from plugins.pingcode.connector import PingCodeConnector, start_of_day
from plugins.pingcode.emulator import DEFAULT_START
from plugins.pingcode.testing import emulator_connector
from sync.connectors import InstanceContext, NewRequirement, RequirementChange, make_marker
from sync.errors import ConfigError, ItemError, NotFound, RemoteError, TransitionError

BASE = "https://pc.test"
SHIP = BASE + "/v1/ship"
NOW = 1740963600  # 2025-03-03T01:00:00Z
PRODUCT = "6422711c3f12e6c1e46d40e9"
IDEA = "64b4d70ba368e6594360ea24"
S = {name: f"63e1bf51898a0be5a2d21b{n:02d}" for n, name in enumerate(
    ["待评审", "已规划", "开发中", "已发布", "已拒绝"])}
TYPES = {"已规划": "in_progress", "开发中": "in_progress", "已发布": "completed",
         "已拒绝": "closed"}
P = {name: f"5cb9466afda1ce4ca00900{n:02d}" for n, name in enumerate(["P0", "P1", "P2", "P3"])}
SECRETS = {"client_id": "cid", "client_secret": "s3cret-value"}
START = int(DEFAULT_START.timestamp())


# == the connector, with `responses` ==============================================================

def envelope(values, total=None):
    return {"page_index": 0, "page_size": 100,
            "total": len(values) if total is None else total, "values": values}


def state(name):
    return {"id": S[name], "url": f"{SHIP}/idea_states/{S[name]}", "name": name,
            "type": TYPES.get(name, "pending")}


def idea(state_name="待评审", priority="P1", identifier="SLC-7", idea_id=IDEA, **extra):
    """The idea's full shape (docs/pingcode.md §10)."""
    return {"id": idea_id, "url": f"{SHIP}/ideas/{idea_id}",
            "product": {"id": PRODUCT, "identifier": "SLC", "name": "示例产品"},
            "identifier": identifier, "title": "示例需求", "short_id": "Ogf1EYey",
            "html_url": "https://t.pingcode.com/ship/ideas/Ogf1EYey", "assignee": None,
            "state": state(state_name),
            "priority": {"id": P[priority], "url": "…", "name": priority} if priority else None,
            "plan": None, "suite": None, "plan_at": None, "real_at": None, "score": 0,
            "progress": 0, "description": "<p>描述</p>", "properties": {"prop_crm_deal": None},
            "participants": [], "completed_at": None, "created_at": NOW, "updated_at": NOW,
            "is_archived": 0, "is_deleted": 0, **extra}


def error(code, message="错误", status=400):
    return {"status": status, "json": {"code": code, "message": message}}


@pytest.fixture
def ready(rsps):
    rsps.get(BASE + "/v1/auth/token", json={"access_token": "tok", "token_type": "Bearer",
                                            "expires_in": NOW + 30 * 86400})
    rsps.get(SHIP + "/products", json=envelope([
        {"id": "5" * 24, "identifier": "OTHER", "name": "别的产品"},
        {"id": PRODUCT, "identifier": "SLC", "name": "示例产品"}]))
    rsps.get(SHIP + "/idea/states", json=envelope([state(n) for n in S]))
    rsps.get(SHIP + "/idea/priorities", json=envelope([{"id": i, "name": n}
                                                       for n, i in P.items()]))
    rsps.get(SHIP + "/idea/properties", json=envelope([
        {"id": "prop_crm_deal", "name": "CRM 商机", "type": "text", "options": None}]))
    return rsps


def connector(**settings) -> PingCodeConnector:
    settings = {"base_url": BASE, "item_kind": "idea", "product": "SLC", **settings}
    return PingCodeConnector(InstanceContext("ship", settings, SECRETS.__getitem__),
                             sleep=lambda s: None, clock=lambda: NOW)


def calls(rsps, method, path):
    return [c for c in rsps.calls if c.request.method == method
            and c.request.url.split("?")[0] == BASE + path]


def body_of(call):
    return json.loads(call.request.body)


def test_check_settings_for_ideas():
    check = PingCodeConnector.check_settings
    assert check({"item_kind": "idea", "product": "SLC"}) == []
    assert check({"item_kind": "idea", "product": "SLC", "marker_property": "x",
                  "base_url": "https://pc.example/open"}) == []
    problems = "\n".join(check({"item_kind": "idea", "project": "SCR", "work_item_type": "story",
                                "path_prefix": "/v1/pjm"}))
    assert 'product: required with item_kind = "idea"' in problems
    assert 'project: not used with item_kind = "idea"' in problems
    assert "work_item_type: does not apply" in problems
    assert "path_prefix: does not apply" in problems
    assert "product: only used with" in "\n".join(check({"project": "SCR", "product": "SLC"}))
    assert check({"item_kind": "ideas", "product": "SLC"}) == [
        "item_kind: must be \"work_item\" (Agile work items, the default) or \"idea\" "
        "(Ship ideas), not 'ideas'"]
    assert "item_kind" in PingCodeConnector.settings_help
    assert "product" in PingCodeConnector.settings_help


def test_names_resolve_per_product_without_flows_and_are_cached(ready):
    conn = connector()
    assert conn.field_values("status") == list(S)
    assert conn.field_values("priority") == list(P)
    assert conn.field_values("state_type") == ["pending", "in_progress", "completed", "closed"]
    conn.field_values("status")
    assert len(calls(ready, "GET", "/v1/ship/idea/states")) == 1
    for path in ("/v1/ship/idea/states", "/v1/ship/idea/priorities"):
        assert f"product_id={PRODUCT}" in calls(ready, "GET", path)[0].request.url
    products_url = calls(ready, "GET", "/v1/ship/products")[0].request.url
    # the product list has no identifier filter (docs/pingcode.md §10)
    assert "identifier" not in products_url and "keywords" not in products_url
    assert all("/v1/pjm/" not in c.request.url and "flows" not in c.request.url
               for c in ready.calls)
    assert not calls(ready, "GET", "/v1/ship/idea/properties")  # no marker_property


def test_product_by_id_and_unknown_product_is_a_config_error(ready):
    assert connector(product=PRODUCT).field_values("priority") == list(P)
    with pytest.raises(ConfigError) as caught:
        connector(product="NOPE").field_values("status")
    assert "tracker.ship.product" in str(caught.value) and "OTHER, SLC" in str(caught.value)
    with pytest.raises(ConfigError, match="prop_other"):
        connector(marker_property="prop_other").field_values("status")


def test_fetch_maps_the_idea_shape(ready):
    ready.get(f"{SHIP}/ideas/{IDEA}", json=idea(
        "开发中", plan={"id": "p1", "url": "…", "name": "2025 Q2 版本"},
        plan_at={"from": 1743436800, "to": 1751299199, "granularity": "day"}))
    req = connector().fetch([IDEA])[IDEA]
    assert (req.key, req.url) == ("SLC-7", "https://t.pingcode.com/ship/ideas/Ogf1EYey")
    assert req.updated_at == datetime(2025, 3, 3, 1, 0, tzinfo=timezone.utc)
    assert req.fields == {"status": "开发中", "state_type": "in_progress", "priority": "P1",
                          "delivery": "2025 Q2 版本 (2025-06-30)"}


@pytest.mark.parametrize("extra, delivery", [
    ({"plan": {"id": "p1", "name": "账号管理"}}, "账号管理"),
    ({"plan_at": {"from": 1, "to": 1759247999, "granularity": "quarter"}}, "2025-09-30"),
    ({}, None),
])
def test_delivery_is_the_plan_and_the_end_of_its_planned_time(ready, extra, delivery):
    ready.get(f"{SHIP}/ideas/{IDEA}", json=idea(**extra))
    assert connector().fetch([IDEA])[IDEA].fields["delivery"] == delivery


def test_fetch_leaves_out_an_unknown_idea_and_raises_when_it_could_not_ask(ready):
    ready.get(f"{SHIP}/ideas/{IDEA}", json=idea())
    ready.get(f"{SHIP}/ideas/{'0' * 24}", **error("100725", "需求资源不存在"))
    ready.get(f"{SHIP}/ideas/{'1' * 24}", **error("100000", "Internal Server Error", 500))
    conn = connector()
    assert list(conn.fetch([IDEA, "0" * 24])) == [IDEA]
    with pytest.raises(RemoteError) as caught:
        conn.fetch(["1" * 24])
    assert not isinstance(caught.value, NotFound)


def test_iter_changed_searches_ideas_of_the_product_from_the_start_of_the_day(ready):
    since = datetime(2025, 3, 3, 1, 0, tzinfo=timezone.utc)
    ready.post(f"{SHIP}/ideas/search", json=envelope([
        idea(idea_id="a" * 24, updated_at=NOW - 60), idea(updated_at=NOW + 60)]))
    got = [r.id for r in connector().iter_changed(since, datetime(2030, 1, 1,
                                                                  tzinfo=timezone.utc))]
    assert got == ["a" * 24, IDEA]  # the day's search answer, the earlier edit included
    body = body_of(calls(ready, "POST", "/v1/ship/ideas/search")[0])
    assert body["mode"] == "query" and body["payload"]["page_size"] == 100
    assert body["payload"]["filter"] == {"product.id": {"in": [PRODUCT]},
                                         "updated_at": {"gte": start_of_day(since)}}


def test_find_by_key_lists_by_keywords_and_matches_the_identifier_exactly(ready):
    ready.get(f"{SHIP}/ideas", json=envelope([
        idea(idea_id="a" * 24, identifier="SLC-70"), idea(title="见 SLC-7 的补充", identifier="SLC-9"),
        idea()]))
    assert connector().find_by_key("slc-7").id == IDEA
    url = calls(ready, "GET", "/v1/ship/ideas")[0].request.url
    assert f"product_id={PRODUCT}" in url and "keywords=SLC-7" in url
    ready.replace(responses.GET, f"{SHIP}/ideas", json=envelope([idea(identifier="SLC-70")]))
    assert connector().find_by_key("SLC-7") is None


def test_find_by_marker_in_the_description_or_the_property(ready):
    ready.post(f"{SHIP}/ideas/search", json=envelope([
        idea(idea_id="a" * 24, description="<p>dealsync:p:D-10</p>"),
        idea(description="<p>dealsync:p:D-1</p>", properties={"prop_crm_deal": "dealsync:p:D-1"})]))
    assert connector().find_by_marker("dealsync:p:D-1").id == IDEA
    assert connector(marker_property="CRM 商机").find_by_marker("dealsync:p:D-1").id == IDEA
    first, second = [body_of(c)["payload"]["filter"]
                     for c in calls(ready, "POST", "/v1/ship/ideas/search")]
    assert first == {"product.id": {"in": [PRODUCT]},
                     "description": {"contains": "dealsync:p:D-1"}}
    assert second == {"product.id": {"in": [PRODUCT]},
                      "properties.prop_crm_deal": {"contains": "dealsync:p:D-1"}}


def test_create_posts_without_state_or_priority_then_patches_them_once(ready):
    ready.post(f"{SHIP}/ideas", status=201, json=idea(priority=None))
    ready.patch(f"{SHIP}/ideas/{IDEA}", json=idea("已规划", priority="P0"))
    new = NewRequirement(title="单点登录", description="<p>&lt;b&gt;</p>",
                         fields={"priority": "P0", "status": "已规划"}, marker="dealsync:p:D-1")
    req = connector(marker_property="prop_crm_deal").create(new)
    assert (req.fields["status"], req.fields["priority"]) == ("已规划", "P0")
    assert body_of(calls(ready, "POST", "/v1/ship/ideas")[0]) == {
        "product_id": PRODUCT, "title": "单点登录", "description": "<p>&lt;b&gt;</p>",
        "properties": {"prop_crm_deal": "dealsync:p:D-1"}}
    assert [body_of(c) for c in calls(ready, "PATCH", f"/v1/ship/ideas/{IDEA}")] == [
        {"priority_id": P["P0"], "state_id": S["已规划"]}]


def test_create_without_status_or_priority_is_one_post(ready):
    ready.post(f"{SHIP}/ideas", status=201, json=idea(priority=None))
    req = connector().create(NewRequirement("t", "d", {"status": "待评审"}, "m"))
    assert req.fields["status"] == "待评审" and not calls(ready, "PATCH", f"/v1/ship/ideas/{IDEA}")


def test_a_refused_status_after_the_create_keeps_the_created_idea(ready, caplog):
    ready.post(f"{SHIP}/ideas", status=201, json=idea(priority=None))
    ready.get(f"{SHIP}/ideas/{IDEA}", json=idea(priority=None))
    ready.patch(f"{SHIP}/ideas/{IDEA}", **error("100702", "'state'资源不存在"))
    with caplog.at_level(logging.WARNING, "dealsync.pingcode"):
        req = connector().create(NewRequirement("t", "d", {"status": "已发布", "priority": "P2"},
                                                "m"))
    assert req.id == IDEA and req.fields["status"] == "待评审"
    assert "could not set its status or priority" in caplog.text
    assert len(calls(ready, "POST", "/v1/ship/ideas")) == 1  # never re-created


def test_create_refuses_what_cannot_be_sent_before_posting(ready):
    conn = connector()
    with pytest.raises(ItemError, match="P0, P1"):
        conn.create(NewRequirement("t", "d", {"priority": "最高"}, "m"))
    with pytest.raises(ItemError, match="255"):  # title ≤ 255 (docs/pingcode.md §10)
        conn.create(NewRequirement("长" * 256, "d", {}, "m"))
    with pytest.raises(ItemError, match="plan"):
        conn.update(IDEA, RequirementChange(fields={"delivery": "2025 Q3"}))
    assert not calls(ready, "POST", "/v1/ship/ideas")


def test_update_moves_to_any_listed_state_in_one_patch_with_the_other_changes(ready):
    ready.get(f"{SHIP}/ideas/{IDEA}", json=idea())
    ready.patch(f"{SHIP}/ideas/{IDEA}", json=idea("已发布", priority="P3"))
    req = connector().update(IDEA, RequirementChange(fields={"status": "已发布", "priority": "P3"},
                                                     title="新标题"))
    assert req.fields["status"] == "已发布"
    assert [body_of(c) for c in calls(ready, "PATCH", f"/v1/ship/ideas/{IDEA}")] == [
        {"title": "新标题", "priority_id": P["P3"], "state_id": S["已发布"]}]


def test_update_to_the_current_state_sends_nothing(ready):
    ready.get(f"{SHIP}/ideas/{IDEA}", json=idea())
    assert connector().update(IDEA, RequirementChange(fields={"status": "待评审"})).id == IDEA
    assert not calls(ready, "PATCH", f"/v1/ship/ideas/{IDEA}")


@pytest.mark.parametrize("code", ["100702", "100719"])
def test_a_refused_state_is_a_transition_error_naming_both_states(ready, code):
    conn = connector()
    conn.field_values("status")  # cached: the refusal earns one fresh look (docs/pingcode.md §15.3)
    ready.get(f"{SHIP}/ideas/{IDEA}", json=idea("已拒绝"))
    ready.patch(f"{SHIP}/ideas/{IDEA}", **error(code, "'state'资源不存在"))
    with pytest.raises(TransitionError) as caught:
        conn.update(IDEA, RequirementChange(fields={"status": "已发布"}))
    message = str(caught.value)
    assert "SLC-7" in message and "'已拒绝'" in message and "'已发布'" in message
    assert code in message and "SLC" in caught.value.hint and caught.value.retryable is False
    assert len(calls(ready, "GET", "/v1/ship/idea/states")) == 2
    assert len(calls(ready, "PATCH", f"/v1/ship/ideas/{IDEA}")) == 2


@pytest.mark.parametrize("code, kind", [
    ("100725", NotFound), ("100702", TransitionError), ("100719", TransitionError),
    ("100043", ItemError), ("100039", ItemError),
])
def test_idea_error_codes_map_to_error_types(ready, code, kind):
    ready.patch(f"{SHIP}/ideas/{IDEA}", **error(code))
    with pytest.raises(kind) as caught:
        connector().update(IDEA, RequirementChange(title="x"))
    assert type(caught.value) is kind and caught.value.retryable is False


# == the emulator's idea endpoints (docs/pingcode.md §10, §16.2 row 18) ===========================

@pytest.fixture
def emu(pingcode_server):
    pingcode_server.reset()
    return pingcode_server


class Ship:
    """A bare client for /v1/ship: calls return (status, body)."""

    def __init__(self, emu):
        self.emu = emu
        self.session = requests.Session()
        token = self.session.get(emu.url + "/v1/auth/token", params={
            "grant_type": "client_credentials", "client_id": "dealsync-demo",
            "client_secret": "demo-secret"}).json()["access_token"]
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.product = self.ok("GET", "/products")["values"][0]
        self.states = self.names("/idea/states")
        self.priorities = self.names("/idea/priorities")

    def call(self, method, path, **kw):
        response = self.session.request(method, self.emu.url + "/v1/ship" + path, **kw)
        return response.status_code, response.json() if response.content else None

    def ok(self, method, path, **kw):
        status, body = self.call(method, path, **kw)
        assert status in (200, 201), (status, body)
        return body

    def names(self, path, product_id=None):
        rows = self.ok("GET", path, params={"product_id": product_id or self.product["id"]})
        return {row["name"]: row for row in rows["values"]}

    def create(self, title="想法", **body):
        return self.ok("POST", "/ideas", json={"product_id": self.product["id"], "title": title,
                                               **body})

    def move(self, idea_id, state_name, **body):
        return self.call("PATCH", f"/ideas/{idea_id}",
                         json={"state_id": self.states[state_name]["id"], **body})


@pytest.fixture
def ship(emu):
    return Ship(emu)


def test_products_and_per_product_metadata(emu, ship):
    assert {k: ship.product[k] for k in ("identifier", "name")} == {"identifier": "SLC",
                                                                   "name": "销售云"}
    assert ship.product["url"] == f"{emu.url}/v1/ship/products/{ship.product['id']}"
    assert ship.ok("GET", "/products", params={"keywords": "销售"})["total"] == 1
    assert ship.ok("GET", "/products", params={"keywords": "nope"})["total"] == 0
    assert list(ship.states) == ["待评审", "已规划", "开发中", "已发布", "已拒绝"]
    assert set(ship.states["已拒绝"]) == {"id", "url", "name", "type"}
    assert ship.states["已发布"]["url"].startswith(emu.url + "/v1/ship/idea_states/")
    assert list(ship.priorities) == ["P0", "P1", "P2", "P3"]
    props = ship.names("/idea/properties")
    assert [o["text"] for o in props["需求类型"]["options"]] == ["功能需求", "体验优化"]
    status, body = ship.call("GET", "/idea/states")
    assert (status, body["code"]) == (400, "100008")
    emu.seed({"products": [{"identifier": "OPS", "name": "运维平台", "priorities": ["高"]}]})
    other = next(p for p in ship.ok("GET", "/products")["values"] if p["identifier"] == "OPS")
    assert set(ship.names("/idea/states", other["id"])).isdisjoint(
        s["id"] for s in ship.states.values()) and list(ship.names("/idea/priorities",
                                                                   other["id"])) == ["高"]


def test_create_takes_no_state_or_priority_and_allocates_an_identifier(emu, ship):
    idea = ship.create("单点登录", description="<p>SSO</p>", state_id=ship.states["已发布"]["id"],
                       priority_id=ship.priorities["P0"]["id"],
                       properties={"prop_crm_deal": "dealsync:p:D-1"})
    assert idea["identifier"] == "SLC-4"  # the default seed holds SLC-1..3
    assert idea["state"]["name"] == "待评审" and idea["priority"] is None  # docs/pingcode.md §10
    assert idea["url"] == f"{emu.url}/v1/ship/ideas/{idea['id']}"
    assert idea["html_url"].endswith("/ship/ideas/" + idea["short_id"])
    assert idea["created_at"] == idea["updated_at"] == START
    assert idea["created_by"]["name"] == "dealsync"
    assert idea["properties"]["prop_crm_deal"] == "dealsync:p:D-1"
    assert ship.ok("GET", f"/ideas/{idea['id']}") == idea


@pytest.mark.parametrize("body, code", [
    ({"title": ""}, "100008"),
    ({"product_id": None}, "100008"),
    ({"title": "长" * 256}, "100039"),
    ({"properties": {"prop_nope": "x"}}, "100043"),
    ({"properties": {"backlog_type": "not-an-option"}}, "100044"),
])
def test_create_refusals(ship, body, code):
    status, answer = ship.call("POST", "/ideas", json={
        "product_id": ship.product["id"], "title": "t", **body})
    assert (status, answer["code"]) == (400, code)


def test_an_unknown_or_deleted_idea_is_400_100725(emu, ship):
    status, body = ship.call("GET", "/ideas/0123456789abcdef01234567")
    assert (status, body) == (400, {"code": "100725", "message": "需求资源不存在"})
    assert ship.call("PATCH", "/ideas/0123456789abcdef01234567", json={})[1]["code"] == "100725"
    emu.mutate_idea("SLC-2", deleted=True)
    assert ship.call("GET", f"/ideas/{emu.idea('SLC-2')['id']}")[1]["code"] == "100725"


def test_any_listed_state_is_one_patch_away_and_recorded(emu, ship):
    idea = ship.create()
    emu.clock.advance(5000)
    status, moved = ship.move(idea["id"], "已发布", title="直接发布")
    assert status == 200 and moved["state"]["name"] == "已发布" and moved["title"] == "直接发布"
    assert moved["completed_at"] == moved["updated_at"] == START + 5
    assert moved["updated_by"]["name"] == "dealsync" and moved["completed_by"]["name"] == "dealsync"
    status, back = ship.move(idea["id"], "开发中")
    assert back["completed_at"] is None
    history = ship.ok("GET", f"/ideas/{idea['id']}/transition_histories")["values"]
    assert [(h["from_state"]["name"], h["to_state"]["name"]) for h in history] == [
        ("待评审", "已发布"), ("已发布", "开发中")]
    assert history[0]["idea"]["identifier"] == idea["identifier"]


def test_a_state_the_plan_refuses_is_100702_and_changes_nothing(emu, ship):
    idea = ship.create()
    assert ship.move(idea["id"], "已拒绝")[0] == 200
    before = ship.ok("GET", f"/ideas/{idea['id']}")
    emu.clock.advance(5000)
    status, body = ship.move(idea["id"], "已发布", title="不该改",
                             priority_id=ship.priorities["P0"]["id"])
    assert (status, body["code"]) == (400, "100702")
    assert ship.ok("GET", f"/ideas/{idea['id']}") == before  # atomic: updated_at untouched too


def test_states_of_another_product_unknown_and_malformed_ids(emu, ship):
    emu.seed({"products": [{"identifier": "OPS"}]})
    other = next(p for p in ship.ok("GET", "/products")["values"] if p["identifier"] == "OPS")
    foreign = ship.names("/idea/states", other["id"])["待评审"]["id"]
    idea = ship.create()
    answers = [ship.call("PATCH", f"/ideas/{idea['id']}", json={"state_id": state_id})
               for state_id in (foreign, "0123456789abcdef01234567", "bogus")]
    assert [(status, body["code"]) for status, body in answers] == [
        (400, "100702"), (400, "100719"), (400, "100003")]


def test_patch_fields_and_their_checks(ship):
    idea = ship.create()
    plan_at = {"from": 1743436800, "to": 1751299199, "granularity": "quarter"}
    patched = ship.ok("PATCH", f"/ideas/{idea['id']}", json={
        "priority_id": ship.priorities["P2"]["id"], "progress": 0.5, "plan_at": plan_at,
        "properties": {"prop_crm_deal": "D-1"}})
    assert patched["priority"]["name"] == "P2" and patched["progress"] == 0.5
    assert patched["plan_at"] == plan_at and patched["properties"]["prop_crm_deal"] == "D-1"
    for body in ({"progress": 1.5}, {"plan_at": {"from": 1, "to": 2}},
                 {"priority_id": "0123456789abcdef01234567"}, {"title": "长" * 256}):
        status, answer = ship.call("PATCH", f"/ideas/{idea['id']}", json=body)
        assert (status, answer["code"]) == (400, "100039"), body


def test_list_filters_and_keywords(emu, ship):
    listed = ship.ok("GET", "/ideas", params={"product_id": ship.product["id"]})
    assert [i["identifier"] for i in listed["values"]] == ["SLC-1", "SLC-2", "SLC-3"]
    assert listed["values"][0]["plan"]["name"] == "2025 Q2 版本"
    doing = ship.ok("GET", "/ideas", params={"state_id": ship.states["开发中"]["id"]})
    assert [i["title"] for i in doing["values"]] == ["报价单支持多币种"]
    assert [i["identifier"] for i in ship.ok("GET", "/ideas", params={
        "keywords": "slc-2"})["values"]] == ["SLC-2"]
    assert ship.ok("GET", "/ideas", params={"keywords": "多币种"})["total"] == 1
    assert ship.ok("GET", "/ideas", params={"page_size": 2, "page_index": 1})["values"][0][
        "identifier"] == "SLC-3"


def search(ship, filters):
    return ship.call("POST", "/ideas/search", json={"mode": "query", "payload": {
        "filter": filters, "page_size": 100}})


def test_search_uses_the_same_dsl_with_whole_day_time_filters(emu, ship):
    marked = ship.create("带标记", description="<p>dealsync:p:D-9</p>",
                         properties={"prop_crm_deal": "dealsync:p:D-9"})
    emu.clock.advance(3 * 3600 * 1000)
    later = ship.create("晚些")
    titles = lambda f: {i["title"] for i in search(ship, f)[1]["values"]}  # noqa: E731
    assert titles({"description": {"contains": "D-9"}}) == {"带标记"}
    assert titles({"properties.prop_crm_deal": {"exists": True}}) == {"带标记"}
    assert titles({"product.id": {"in": [ship.product["id"]]},
                   "state.id": {"in": [ship.states["开发中"]["id"]]}}) == {"报价单支持多币种"}
    assert "带标记" in titles({"updated_at": {"gte": later["updated_at"]}})  # the whole day
    assert titles({"updated_at": {"gt": marked["updated_at"]}}) == set()
    for bad in ({"type": {"in": ["story"]}}, {"identifier": {"in": ["SLC-1"]}}):
        status, body = search(ship, bad)
        assert status == 400 and isinstance(body["code"], str)


def test_control_api_seeds_mutates_and_dumps_ideas(emu, ship):
    body = requests.post(emu.url + "/__emu/seed", json={"products": [{
        "identifier": "SLC", "ideas": [{"title": "PM 提的", "priority": "P3",
                                        "properties": {"backlog_type": "体验优化"}}]}]}).json()
    assert body == {"items": [], "ideas": ["SLC-4"]}
    emu.clock.advance(60_000)
    moved = requests.post(emu.url + "/__emu/mutate", json={
        "idea": "SLC-4", "state": "已拒绝", "plan": "2025 Q3 版本",
        "plan_at": ["2025-07-01", "2025-09-30"]}).json()
    assert moved["state"]["name"] == "已拒绝" and moved["updated_by"]["name"] == "lina"
    assert moved["updated_at"] == START + 60 and moved["plan"]["name"] == "2025 Q3 版本"
    assert moved["plan_at"] == {"from": 1751299200, "to": 1759247999, "granularity": "day"}
    refused = requests.post(emu.url + "/__emu/mutate", json={"idea": "SLC-4", "state": "已发布"})
    assert refused.status_code == 400 and refused.json()["code"] == "100702"
    assert emu.mutate_idea("SLC-4", state="已发布", force=True)["state"]["name"] == "已发布"
    assert len(emu.idea_transitions("SLC-4")) == 2
    dump = requests.get(emu.url + "/__emu/ideas").json()["ideas"]
    assert [i["identifier"] for i in dump] == ["SLC-1", "SLC-2", "SLC-3", "SLC-4"]
    assert [i["identifier"] for i in emu.dump_items()] == ["SCR-1", "SCR-2", "SCR-3"]


def test_comments_on_ideas(emu, ship):
    token = ship.session.headers["Authorization"]
    post = lambda body: requests.post(emu.url + "/v1/comments", json=body,  # noqa: E731
                                      headers={"Authorization": token})
    idea = emu.idea("SLC-1")
    assert post({"principal_type": "idea", "principal_id": idea["id"],
                 "content": "来自 CRM"}).status_code == 201
    missing = post({"principal_type": "idea", "principal_id": "0" * 24, "content": "x"})
    assert missing.status_code == 400 and missing.json()["code"] == "100725"


def test_ship_ignores_the_agile_path_prefixes(emu, ship):
    emu.config["path_prefixes"] = ["/v1/project"]
    assert ship.call("GET", "/products")[0] == 200


# == end to end ==================================================================================

def test_connector_reaches_states_and_reports_a_refusal_against_the_emulator(emu):
    conn = emulator_connector(emu, item_kind="idea", marker_property="prop_crm_deal")
    req = conn.create(NewRequirement("多币种发票", "<p>x</p>", {"status": "已拒绝",
                                                                "priority": "P1"},
                                     make_marker("p", "D-3")))
    assert (req.fields["status"], req.fields["priority"], req.key) == ("已拒绝", "P1", "SLC-4")
    assert emu.idea(req.id)["properties"]["prop_crm_deal"] == "dealsync:p:D-3"
    before = emu.idea(req.id)
    with pytest.raises(TransitionError, match="'已拒绝' to '已发布'"):
        conn.update(req.id, RequirementChange(fields={"status": "已发布"}, title="不该改"))
    assert emu.idea(req.id) == before
    assert conn.update(req.id, RequirementChange(fields={"status": "开发中"})).fields[
        "status"] == "开发中"
    assert conn.find_by_key("SLC-1").fields["delivery"] == "2025 Q2 版本 (2025-06-30)"
    assert all(r["path"].startswith(("/v1/ship/", "/v1/auth/")) for r in emu.log)


MAPPING = """
[mapping]
description = "memory CRM <-> PingCode Ship ideas (emulator)"
[request]
field = "request"
key_pattern = 'SLC-\\d+'
[select.where]
pipeline = ["sales"]
[link]
key_field = "req_key"
url_field = "req_url"
[fields.status]
crm = "req_status"
tracker = "status"
direction = "both"
conflict = "tracker"
[fields.status.values]
"待评审" = "open"
"已规划" = "planned"
"开发中" = "in_progress"
"已发布" = "done"
"已拒绝" = "wont_do"
[fields.priority]
crm = "req_priority"
tracker = "priority"
direction = "both"
conflict = "newest"
[fields.priority.values]
"P0" = "highest"
"P1" = "high"
"P2" = "medium"
"P3" = "low"
[fields.delivery]
crm = "req_delivery"
tracker = "delivery"
direction = "to_crm"
"""


def test_engine_syncs_deals_with_ship_ideas(emu, tmp_path):
    from plugins.memory import MemoryCRM, World
    from sync.engine import Options, Pair, run_pair
    from sync.mapping import load_mapping
    from sync.state import StateStore

    (tmp_path / "mapping.toml").write_text(MAPPING, encoding="utf-8")
    world = World()
    crm = MemoryCRM(InstanceContext("crm", {}, lambda name: ""), world=world)
    tracker = emulator_connector(emu, "ship", item_kind="idea")
    pair = Pair("p", crm, tracker, load_mapping(str(tmp_path / "mapping.toml")))
    store = StateStore(tmp_path / "state.db")
    try:
        world.add_deal("D-1", request="需要多币种发票", pipeline="sales", req_status="planned",
                       req_priority="high", name="ACME 集团")
        world.add_deal("D-2", request="SLC-3", pipeline="sales", name="Beta")
        first = run_pair(pair, store, Options())["counts"]
        assert (first["created"], first["linked"], first["failures"]) == (1, 1, 0)
        created = emu.idea("SLC-4")
        assert (created["state"]["name"], created["priority"]["name"]) == ("已规划", "P1")
        assert world.deals["D-2"]["fields"]["req_delivery"] == "2025 Q2 版本 (2025-05-31)"
        assert run_pair(pair, store, Options())["counts"]["updated_tracker"] == 0
        emu.clock.advance(60_000)
        emu.mutate_idea("SLC-4", state="已发布")
        assert run_pair(pair, store, Options())["counts"]["updated_crm"] == 1
        assert world.deals["D-1"]["fields"]["req_status"] == "done"
    finally:
        store.close()
