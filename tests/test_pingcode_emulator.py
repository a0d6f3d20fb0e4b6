"""The PingCode emulator against the documented behaviour (docs/pingcode.md)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import requests

from plugins.pingcode.emulator import DEFAULT_START, PingCodeEmulator

CREDS = {"grant_type": "client_credentials", "client_id": "dealsync-demo",
         "client_secret": "demo-secret"}
START = int(DEFAULT_START.timestamp())


@pytest.fixture
def emu(pingcode_server):
    pingcode_server.reset()
    return pingcode_server


class Api:
    """A bare client: a token, and calls that return (status, body)."""

    def __init__(self, emu: PingCodeEmulator, prefix: str = "/v1/pjm"):
        self.emu = emu
        self.prefix = prefix
        self.session = requests.Session()
        self.token = self.session.get(emu.url + "/v1/auth/token", params=CREDS).json()[
            "access_token"]

    def call(self, method: str, path: str, *, token: str | None = "default", **kw):
        headers = {} if token is None else {
            "Authorization": f"Bearer {self.token if token == 'default' else token}"}
        url = self.emu.url + (path if path.startswith("/v1/") and not path.startswith(
            ("/v1/pjm", "/v1/project")) and path.split("/")[2] in ("comments", "directory", "auth")
            else self.prefix + path)
        response = self.session.request(method, url, headers=headers, **kw)
        return response.status_code, response.json() if response.content else None

    def ok(self, method: str, path: str, **kw):
        status, body = self.call(method, path, **kw)
        assert status in (200, 201), (status, body)
        return body

    def meta(self, identifier: str = "SCR", type_id: str = "story"):
        project = self.ok("GET", "/projects", params={"identifier": identifier})["values"][0]
        states = {s["name"]: s for s in self.ok("GET", "/work_item/states", params={
            "project_id": project["id"], "work_item_type_id": type_id})["values"]}
        priorities = {p["name"]: p for p in self.ok("GET", "/work_item/priorities", params={
            "project_id": project["id"]})["values"]}
        return project, states, priorities

    def create(self, title: str = "需求", **fields):
        project = self.meta()[0]
        return self.ok("POST", "/work_items", json={"project_id": project["id"],
                                                    "type_id": "story", "title": title, **fields})


@pytest.fixture
def api(emu):
    return Api(emu)


def test_token_is_a_get_with_an_absolute_expiry(emu):
    body = requests.get(emu.url + "/v1/auth/token", params=CREDS).json()
    assert body["token_type"] == "Bearer"
    # an absolute epoch, 30 days ahead (docs/pingcode.md §3.1)
    assert body["expires_in"] == START + 30 * 86400
    emu.config["expires_in_mode"] = "duration"
    assert requests.get(emu.url + "/v1/auth/token", params=CREDS).json()["expires_in"] == 2592000


def test_bad_credentials_are_a_400_with_code_100024(emu):
    response = requests.get(emu.url + "/v1/auth/token", params={**CREDS, "client_secret": "no"})
    assert response.status_code == 400
    assert response.json() == {"code": "100024", "message": "'client_id'或'client_secret'错误"}


def test_missing_unknown_and_expired_bearer_are_401(emu, api):
    assert api.call("GET", "/projects", token=None)[0] == 401
    status, body = api.call("GET", "/projects", token="not-a-token")
    assert status == 401 and isinstance(body["code"], str)
    second = Api(emu)  # a new token does not revoke the old one (docs/pingcode.md §3.1)
    assert api.call("GET", "/projects")[0] == 200 and second.call("GET", "/projects")[0] == 200
    emu.clock.advance((30 * 86400 + 1) * 1000)
    assert api.call("GET", "/projects")[0] == 401


def test_expire_tokens_control(emu, api):
    assert requests.post(emu.url + "/__emu/expire_tokens").json() == {"expired": 1}
    assert api.call("GET", "/projects")[0] == 401


def test_both_prefixes_and_urls_echo_the_one_used(emu):
    for prefix in ("/v1/pjm", "/v1/project"):
        api = Api(emu, prefix)
        item = api.create("前缀")
        assert item["url"].startswith(emu.url + prefix + "/work_items/")
        assert item["state"]["url"].startswith(emu.url + prefix + "/")
    emu.config["path_prefixes"] = ["/v1/pjm"]
    status, body = Api(emu, "/v1/project").call("GET", "/projects")
    assert status == 404 and set(body) == {"code", "message"}


def test_configuration_endpoints(api):
    project, states, priorities = api.meta()
    assert project["identifier"] == "SCR" and project["type"] == "scrum"
    types = api.ok("GET", "/work_item/types", params={"project_id": project["id"]})["values"]
    assert {"id": "story", "name": "用户故事", "group": "requirement"}.items() <= types[0].items()
    assert list(states) == ["新建", "待评审", "已计划", "开发中", "已完成", "暂不考虑", "不做"]
    assert states["不做"]["type"] == "closed" and set(states["新建"]) == {
        "id", "url", "name", "type", "color"}
    assert list(priorities) == ["最高", "高", "中", "低", "最低"]
    status, body = api.call("GET", "/work_item/states", params={"project_id": project["id"]})
    assert (status, body["code"]) == (400, "100008")  # both params required (docs/pingcode.md §4)
    props = api.ok("GET", "/work_item/properties",
                   params={"project_id": project["id"], "work_item_type_id": "story"})["values"]
    level = next(p for p in props if p["id"] == "prop_customer_level")
    assert [o["text"] for o in level["options"]] == ["战略", "重点", "普通"]
    versions = api.ok("GET", f"/projects/{project['id']}/versions")["values"]
    assert [v["name"] for v in versions] == ["v2.3", "v2.4"] and versions[0]["end_at"]


def test_plans_and_flows(api):
    project, states, _ = api.meta()
    plans = api.ok("GET", "/work_item_state_plans", params={"project_id": project["id"]})["values"]
    story = next(p for p in plans if p["work_item_type"]["id"] == "story")
    flows = api.ok("GET", f"/work_item_state_plans/{story['id']}/work_item_state_flows",
                   params={"from_state_id": states["新建"]["id"]})["values"]
    assert {f["to_state"]["name"] for f in flows} == {"待评审", "暂不考虑", "不做"}
    assert all(f["from_state"]["name"] == "新建" for f in flows)


def test_create_allocates_identifier_short_id_and_initial_state(emu, api):
    item = api.create("单点登录", description="<p>SSO</p>",
                      properties={"prop_crm_deal": "dealsync:p:D-1"})
    assert item["identifier"] == "SCR-4"  # the default seed holds SCR-1..3
    assert len(item["short_id"]) == 8 and item["html_url"].endswith("/" + item["short_id"])
    assert item["type"] == "story" and item["state"]["name"] == "新建"
    assert item["created_at"] == item["updated_at"] == START
    assert item["created_by"]["name"] == "dealsync" and item["properties"]["prop_crm_deal"] == \
        "dealsync:p:D-1"
    response = requests.post(emu.url + "/v1/pjm/work_items", headers={
        "Authorization": f"Bearer {api.token}"}, json={"project_id": item["project"]["id"],
                                                        "type_id": "story", "title": "x"})
    assert response.status_code == 201


@pytest.mark.parametrize("body, code", [
    ({"title": ""}, "100008"),
    ({"properties": {"prop_nope": "x"}}, "100043"),
    ({"properties": {"prop_customer_level": "not-an-option"}}, "100044"),
    ({"state_id": "zz"}, "100003"),
])
def test_create_refusals(api, body, code):
    project = api.meta()[0]
    status, answer = api.call("POST", "/work_items", json={
        "project_id": project["id"], "type_id": "story", "title": "t", **body})
    assert (status, answer["code"]) == (400, code)


def test_get_by_id_or_short_id_and_not_found_is_400(api):
    item = api.create()
    assert api.ok("GET", f"/work_items/{item['short_id']}")["id"] == item["id"]
    status, body = api.call("GET", "/work_items/0123456789abcdef01234567")
    assert (status, body) == (400, {"code": "100317", "message": "工作项资源不存在"})


def test_patch_walks_only_allowed_flows(emu, api):
    _, states, priorities = api.meta()
    item = api.create()
    emu.clock.advance(5000)
    status, body = api.call("PATCH", f"/work_items/{item['id']}",
                            json={"state_id": states["开发中"]["id"], "title": "改了"})
    assert (status, body["code"]) == (400, "100379")
    unchanged = api.ok("GET", f"/work_items/{item['id']}")
    assert unchanged["title"] == item["title"] and unchanged["updated_at"] == item["updated_at"]
    for name in ("待评审", "已计划", "开发中", "已完成"):
        moved = api.ok("PATCH", f"/work_items/{item['id']}", json={"state_id": states[name]["id"]})
    assert moved["state"]["name"] == "已完成" and moved["completed_at"] == START + 5
    assert moved["updated_at"] == START + 5 and moved["updated_by"]["name"] == "dealsync"
    history = api.ok("GET", f"/work_items/{item['id']}/transition_histories")["values"]
    assert [(h["from_state"]["name"], h["to_state"]["name"]) for h in history] == [
        ("新建", "待评审"), ("待评审", "已计划"), ("已计划", "开发中"), ("开发中", "已完成")]
    patched = api.ok("PATCH", f"/work_items/{item['id']}",
                     json={"priority_id": priorities["低"]["id"]})
    assert patched["priority"]["name"] == "低" and patched["state"]["name"] == "已完成"


def test_state_outside_the_plan_is_100303_and_bad_id_100003(api):
    project = api.meta()[0]
    task_states = api.ok("GET", "/work_item/states", params={
        "project_id": project["id"], "work_item_type_id": "task"})["values"]
    item = api.create()
    status, body = api.call("PATCH", f"/work_items/{item['id']}",
                            json={"state_id": task_states[1]["id"]})
    assert (status, body["code"]) == (400, "100303")
    status, body = api.call("PATCH", f"/work_items/{item['id']}", json={"state_id": "bogus"})
    assert (status, body["code"]) == (400, "100003")


def test_properties_merge_by_default_and_replace_when_configured(emu, api):
    item = api.create(properties={"prop_crm_deal": "D-1"})
    project = api.meta()[0]
    props = api.ok("GET", "/work_item/properties", params={
        "project_id": project["id"], "work_item_type_id": "story"})["values"]
    risk_high = next(p for p in props if p["id"] == "risk")["options"][0]["_id"]
    merged = api.ok("PATCH", f"/work_items/{item['id']}", json={"properties": {"risk": risk_high}})
    assert merged["properties"]["prop_crm_deal"] == "D-1" and merged["properties"]["risk"] == \
        risk_high
    emu.config["properties_patch"] = "replace"
    replaced = api.ok("PATCH", f"/work_items/{item['id']}", json={"properties": {"risk": None}})
    assert replaced["properties"]["prop_crm_deal"] is None


def test_bulk_patch(api):
    _, states, _ = api.meta()
    a, b = api.create("a"), api.create("b")
    body = api.ok("PATCH", "/work_items", json={"ids": [a["id"], b["id"]],
                                                "property_name": "state_id",
                                                "property_value": states["待评审"]["id"]})
    assert body == {"inserts": 0, "updates": 2, "deletes": 0}
    status, body = api.call("PATCH", "/work_items", json={
        "ids": [a["id"]], "property_name": "state_id", "property_value": states["新建"]["id"]})
    assert (status, body["code"]) == (400, "100379")  # 待评审 → 新建 is no flow


def test_soft_delete(api):
    item = api.create()
    deleted = api.ok("DELETE", f"/work_items/{item['id']}")
    assert deleted["is_deleted"] == 1 and deleted["type"] == "story"
    assert deleted["url"].endswith("?include_deleted=true")
    assert api.call("GET", f"/work_items/{item['id']}")[1]["code"] == "100317"
    assert api.ok("GET", f"/work_items/{item['id']}", params={"include_deleted": "true"})[
        "is_deleted"] == 1
    listed = api.ok("GET", "/work_items", params={"page_size": 100})["values"]
    assert item["id"] not in {i["id"] for i in listed}


def test_list_paging_defaults_caps_and_filters(emu, api):
    emu.add_items(40)
    page = api.ok("GET", "/work_items")
    assert (page["page_index"], page["page_size"], page["total"], len(page["values"])) == (
        0, 30, 43, 30)
    assert [i["identifier"] for i in page["values"][:3]] == ["SCR-1", "SCR-2", "SCR-3"]
    assert api.ok("GET", "/work_items", params={"page_index": 5})["values"] == []
    status, body = api.call("GET", "/work_items", params={"page_size": 101})
    assert status == 400 and isinstance(body["code"], str)
    _, states, _ = api.meta()
    doing = api.ok("GET", "/work_items", params={"state_id": states["开发中"]["id"]})
    assert [i["identifier"] for i in doing["values"]] == ["SCR-3"]
    both = api.ok("GET", "/work_items", params={
        "state_ids": f"{states['开发中']['id']},{states['已计划']['id']}"})
    assert both["total"] == 2
    assert api.ok("GET", "/work_items", params={"keywords": "离线"})["total"] == 1
    assert api.ok("GET", "/work_items", params={"updated_between": f"{START + 1},"})["total"] == 0


def test_shuffled_listing_is_stable_and_complete(emu, api):
    emu.add_items(120)
    emu.config["shuffle"] = True
    seen = []
    for index in range(2):
        seen += [i["id"] for i in api.ok("GET", "/work_items",
                                         params={"page_index": index, "page_size": 100})["values"]]
    again = [i["id"] for i in api.ok("GET", "/work_items", params={"page_size": 100})["values"]]
    assert len(seen) == len(set(seen)) == 123 and again == seen[:100]
    by_identifier = sorted(seen, key=lambda i: int(emu.item(i)["identifier"].split("-")[1]))
    assert seen != by_identifier


def search(api, filters, **payload):
    return api.call("POST", "/work_items/search", json={"mode": "query", "payload": {
        "filter": filters, "page_size": 100, **payload}})


def test_search_time_filters_compare_whole_days(emu, api):
    # Beijing day boundaries (day_timezone): the clock starts Monday 09:00 +08:00.
    early = api.create("早")
    emu.clock.advance(3 * 3600 * 1000)  # 12:00 the same day
    late = api.create("晚")
    emu.clock.advance(14 * 3600 * 1000)  # 02:00 the next day in Beijing, still Monday in UTC
    next_day = api.create("次日")
    at_late = late["updated_at"]
    ids = lambda body: {i["title"] for i in body["values"]}  # noqa: E731
    status, body = search(api, {"updated_at": {"gte": at_late}})
    assert status == 200 and {"早", "晚", "次日"} <= ids(body)  # the whole day of at_late
    assert ids(search(api, {"updated_at": {"gt": early["updated_at"]}})[1]) == {"次日"}
    assert "次日" not in ids(search(api, {"updated_at": {"lte": at_late}})[1])
    same_day = [next_day["created_at"]] * 2
    assert ids(search(api, {"created_at": {"between": same_day}})[1]) == {"次日"}
    emu.config["day_timezone"] = "UTC"
    assert "次日" not in ids(search(api, {"updated_at": {"gt": early["updated_at"]}})[1])
    emu.config["search_day_granularity"] = False
    assert ids(search(api, {"updated_at": {"gt": early["updated_at"]}})[1]) == {"晚", "次日"}


def test_search_text_reference_and_property_operators(emu, api):
    _, states, _ = api.meta()
    marked = api.create("带标记", description="<p>x dealsync:p:D-9 y</p>",
                        properties={"prop_crm_deal": "dealsync:p:D-9"})
    titles = lambda f: {i["title"] for i in search(api, f)[1]["values"]}  # noqa: E731
    assert titles({"description": {"contains": "dealsync:p:D-9"}}) == {"带标记"}
    assert titles({"properties.prop_crm_deal": {"contains": "D-9"}}) == {"带标记"}
    assert titles({"properties.prop_crm_deal": {"exists": True}}) == {"带标记"}
    assert titles({"state.id": {"in": [states["开发中"]["id"]]}}) == {"移动端离线模式"}
    assert len(titles({"type": {"nin": ["story"]}})) == 0
    assert titles({"project.id": {"in": [marked["project"]["id"]]},
                   "properties.prop_crm_deal": {"exists": True}}) == {"带标记"}


@pytest.mark.parametrize("filters", [
    {"identifier": {"in": ["SCR-1"]}},                 # not filterable (docs/pingcode.md §8)
    {"updated_at": {"gte": 1, "lte": 2}},             # one operator per field
    {"title": {"in": ["x"]}},                          # text takes exists/contains only
    {"nonsense": {"exists": True}},
])
def test_search_refuses_what_the_dsl_does_not_allow(api, filters):
    status, body = search(api, filters)
    assert status == 400 and isinstance(body["code"], str)


def test_search_requires_query_mode_and_pages_from_the_payload(emu, api):
    emu.add_items(5)
    status, _ = api.call("POST", "/work_items/search", json={"payload": {}})
    assert status == 400
    status, body = search(api, {}, page_size=3, page_index=2)
    assert (body["page_index"], body["page_size"], body["total"], len(body["values"])) == (
        2, 3, 8, 2)


def test_rate_limit_sliding_window_per_token(emu, api):
    emu.config["rate_limit_per_min"] = 3
    for _ in range(3):
        assert api.call("GET", "/projects")[0] == 200
    emu.clock.advance(20_000)
    response = requests.get(emu.url + "/v1/pjm/projects",
                            headers={"Authorization": f"Bearer {api.token}"})
    assert response.status_code == 429
    assert response.json() == {"code": "100038", "message": "请求频率过高"}
    assert response.headers["x-pc-retry-after"] == "40"
    assert Api(emu).call("GET", "/projects")[0] == 200  # another token has its own window
    emu.clock.advance(40_000)
    assert api.call("GET", "/projects")[0] == 200


def test_no_rate_headers_on_success(api, emu):
    response = requests.get(emu.url + "/v1/pjm/projects",
                            headers={"Authorization": f"Bearer {api.token}"})
    assert not any("retry" in h.lower() or "ratelimit" in h.lower() for h in response.headers)


def test_fail_next_injects_pingcode_shaped_errors(emu, api):
    requests.post(emu.url + "/__emu/fail_next", json={"status": 429, "count": 2,
                                                       "retry_after": 7})
    first = requests.get(emu.url + "/v1/pjm/projects",
                         headers={"Authorization": f"Bearer {api.token}"})
    assert first.status_code == 429 and first.headers["x-pc-retry-after"] == "7"
    assert api.call("GET", "/projects")[0] == 429
    assert api.call("GET", "/projects")[0] == 200
    emu.fail_next(500)
    assert api.call("GET", "/projects") == (500, {"code": "100000",
                                                  "message": "Internal Server Error"})


def test_comments_and_users(api):
    item = api.create()
    comment = api.ok("POST", "/v1/comments", json={
        "principal_type": "work_item", "principal_id": item["id"], "content": "来自 CRM"})
    assert comment["content"] == "来自 CRM" and comment["created_by"]["name"] == "dealsync"
    listed = api.ok("GET", "/v1/comments", params={"principal_type": "work_item",
                                                   "principal_id": item["id"]})
    assert listed["total"] == 1
    users = api.ok("GET", "/v1/directory/users", params={"emails": "lina@example.com"})["values"]
    assert len(users) == 1 and len(users[0]["id"]) == 32 and users[0]["display_name"] == "李娜"


def test_control_seed_mutate_and_dump(emu, api):
    body = requests.post(emu.url + "/__emu/seed", json={"projects": [{
        "identifier": "SCR", "items": [{"title": "PM 新建", "priority": "低",
                                        "properties": {"prop_customer_level": "重点"}}]}]}).json()
    assert body == {"items": ["SCR-4"]}
    emu.clock.advance(60_000)
    moved = requests.post(emu.url + "/__emu/mutate", json={
        "item": "SCR-4", "state": "开发中", "end_at": "2025-04-30", "version": "v2.4"}).json()
    assert moved["state"]["name"] == "开发中" and moved["updated_by"]["name"] == "lina"
    assert moved["updated_at"] == START + 60 and moved["version"]["name"] == "v2.4"
    beijing = timezone(timedelta(hours=8))
    assert datetime.fromtimestamp(moved["end_at"], beijing).date().isoformat() == "2025-04-30"
    assert len(emu.transitions("SCR-4")) == 3  # 新建 → 待评审 → 已计划 → 开发中, one at a time
    assert emu.mutate("SCR-4", state="不做")["state"]["name"] == "不做"
    refused = requests.post(emu.url + "/__emu/mutate", json={"item": "SCR-4", "state": "新建"})
    assert refused.status_code == 400 and refused.json()["code"] == "100379"  # 不做 is terminal
    forced = emu.mutate("SCR-4", state="新建", force=True)
    assert forced["state"]["name"] == "新建" and forced["completed_at"] is None
    dump = requests.get(emu.url + "/__emu/items").json()["items"]
    assert [i["identifier"] for i in dump] == ["SCR-1", "SCR-2", "SCR-3", "SCR-4"]


def test_seed_replace_and_new_project(emu):
    emu.seed({"projects": [{"identifier": "OPS", "name": "运维", "type": "kanban",
                            "types": [{"id": "task", "states": [("打开", "pending", "#111"),
                                                                ("关闭", "closed", "#222")],
                                       "flows": [("打开", "关闭")]}],
                            "priorities": ["P0"], "generate_items": 2}]}, replace=True)
    assert [i["identifier"] for i in emu.dump_items()] == ["OPS-1", "OPS-2"]


def test_omitting_the_type_field_is_configurable(emu, api):
    emu.config["include_item_type"] = False
    assert "type" not in api.create()


def test_unknown_route_has_the_pingcode_error_shape(emu, api):
    status, body = api.call("GET", "/nothing/here")
    assert status == 404 and set(body) == {"code", "message"}
