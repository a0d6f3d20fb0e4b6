"""The Worktile emulator against the documented behaviour."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from plugins.worktile.emulator import DEFAULT_START, WorktileEmulator

CREDS = {"client_id": "dealsync-demo", "client_secret": "demo-secret"}
START = int(DEFAULT_START.timestamp())


@pytest.fixture(scope="module")
def worktile_server():
    """One Worktile emulator (virtual clock) per module; each test resets it."""
    emulator = WorktileEmulator()
    emulator.start()
    yield emulator
    emulator.release()
    emulator.stop()


@pytest.fixture
def emu(worktile_server):
    worktile_server.reset()
    return worktile_server


class Api:
    """A bare client: a team token sent as the query parameter (docs/worktile.md §3), replies as
    responses."""

    def __init__(self, emu: WorktileEmulator):
        self.emu = emu
        self.session = requests.Session()
        self.token = self.session.post(emu.url + "/open-api/tenant-access-token",
                                       json=CREDS).json()["tenant_access_token"]

    def call(self, method: str, path: str, *, params: dict | None = None, **kw):
        params = {"access_token": self.token, **(params or {})}
        return self.session.request(method, self.emu.url + "/open-api" + path, params=params,
                                    **kw)

    def ok(self, method: str, path: str, **kw):
        response = self.call(method, path, **kw)
        body = response.json()
        assert response.status_code == 200 and not (isinstance(body, dict) and body.get(
            "ok") is False), (response.status_code, body)
        return body

    def get(self, path: str, **params):
        return self.ok("GET", path, params=params)

    def project(self) -> dict:
        return self.get("/mission/get-projects-by-page")["items"][0]

    def story_type(self) -> dict:
        pid = self.project()["_id"]
        ref = next(t for t in self.get(f"/mission/projects/{pid}/task-types")
                   if t["name"] == "需求")
        return self.get(f"/mission/projects/{pid}/task-types/{ref['_id']}")

    def create(self, title: str = "新需求", **properties) -> dict:
        return self.ok("POST", "/mission/task", json={
            "project_id": self.project()["_id"], "task_type_id": self.story_type()["_id"],
            "title": title, "properties": properties})


@pytest.fixture
def api(emu):
    return Api(emu)


def _error(response, code: int, status: int = 200) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False and body["error_code"] == code


# -- token and auth failures (docs/worktile.md §2, §3) ---------------------------------------------
def test_token_is_a_json_post_whose_expires_in_is_a_duration(emu):
    body = requests.post(emu.url + "/open-api/tenant-access-token", json=CREDS).json()
    assert set(body) == {"tenant_access_token", "expires_in"} and body["expires_in"] == 7200
    slash = requests.post(emu.url + "/open-api/tenant-access-token/", json=CREDS)
    assert slash.status_code == 200 and "tenant_access_token" in slash.json()
    emu.config["expires_in_mode"] = "absolute"
    absolute = requests.post(emu.url + "/open-api/tenant-access-token", json=CREDS).json()
    assert absolute["expires_in"] == START + 7200


def test_token_stops_working_once_its_duration_has_passed(emu, api):
    api.get("/mission/get-projects-by-page")
    emu.clock.advance(7199 * 1000)
    api.get("/mission/get-projects-by-page")
    emu.clock.advance(1000)
    _error(api.call("GET", "/mission/get-projects-by-page"), 1103)
    fresh = Api(emu)  # no refresh token: ask again (docs/worktile.md §2)
    assert fresh.get("/mission/get-projects-by-page")["total"] == 1


def test_bad_credentials_get_no_token(emu):
    response = requests.post(emu.url + "/open-api/tenant-access-token",
                             json={**CREDS, "client_secret": "wrong"})
    assert "tenant_access_token" not in response.json()
    assert response.json()["ok"] is False


def test_token_errors_are_mostly_http_200_bodies_sometimes_401(emu, api):
    url = emu.url + "/open-api/mission/get-projects-by-page"
    _error(requests.get(url), 1102)                                         # missing
    _error(requests.get(url, params={"access_token": "not-a-token"}), 1102)  # malformed
    _error(requests.get(url, params={"access_token": "0" * 32}), 1103)      # unknown
    emu.config["auth_error_mode"] = "401"
    _error(requests.get(url, params={"access_token": "0" * 32}), 1103, status=401)
    emu.config["auth_error_mode"] = "200_body"
    assert requests.post(emu.url + "/__emu/expire_tokens").json() == {"expired": 1}
    _error(api.call("GET", "/mission/get-projects-by-page"), 1103)


def test_fail_next_401_is_a_token_error_in_worktiles_body(emu, api):
    requests.post(emu.url + "/__emu/fail_next", json={"status": 401})
    _error(api.call("GET", "/mission/get-projects-by-page"), 1103, status=401)
    api.get("/mission/get-projects-by-page")


@pytest.mark.parametrize("placement, query, header, accepted", [
    ("query", True, False, True), ("query", False, True, False), ("query", True, True, True),
    ("header", False, True, True), ("header", True, False, False),
    ("both", True, True, True), ("both", True, False, False), ("both", False, True, False),
    ("either", False, True, True), ("either", True, False, True),
])
def test_token_placement(emu, api, placement, query, header, accepted):
    emu.config["token_placement"] = placement
    response = requests.get(
        emu.url + "/open-api/mission/get-projects-by-page",
        params={"access_token": api.token} if query else {},
        headers={"Authorization": f"Bearer {api.token}"} if header else {})
    assert ("items" in response.json()) is accepted


# -- members and projects (docs/worktile.md §4) ----------------------------------------------------
def test_members_by_page_and_by_ids(emu, api):
    page = api.get("/contact/get-members-by-page")
    assert page["total"] == 3 and page["has_more"] is False
    lina = page["items"][0]
    assert set(lina) == {"uid", "name", "display_name", "avatar", "status",
                         "display_name_pinyin"}
    assert len(lina["uid"]) == 24 and int(lina["uid"], 16) >= 0
    found = api.get("/contact/get-members-by-ids", uids=f"{lina['uid']},{'f' * 24}")
    assert [m["uid"] for m in found] == [lina["uid"]]  # a bare array; the unknown is left out
    emu.config["by_ids_unknown"] = "error"
    _error(api.call("GET", "/contact/get-members-by-ids", params={"uids": "f" * 24}), 2002, 400)
    emu.config["member_email"] = True
    assert api.get("/contact/get-members-by-page")["items"][0]["email"] == "lina@example.com"


def test_projects_by_page_by_ids_and_create_from_template(emu, api):
    project = api.project()
    assert project["identifier"] == project["task_identifier_prefix"] == "DS"
    assert api.get("/mission/get-project-by-ids", project_ids=project["_id"]) == [project]
    members = [m["uid"] for m in api.get("/contact/get-members-by-page")["items"]]
    created = api.ok("POST", "/mission/project", json={
        "template_name": "通用任务", "name": "新项目", "visibility": 0, "members": members[:1],
        "ext": {"assignee": "", "start": None, "due": None, "properties": []}})
    assert created["members"] == members[:1] and created["visibility"] == 0
    types = api.get(f"/mission/projects/{created['_id']}/task-types")
    assert [t["name"] for t in types] == ["任务"]
    _error(api.call("POST", "/mission/project", json={"template_name": "通用任务", "name": "x",
                                                       "members": []}), 2002, 400)


# -- paging and envelopes (docs/worktile.md §5) ----------------------------------------------------
def test_paging_starts_at_zero_and_ends_on_has_more(emu, api):
    emu.add_tasks(41)
    pid = api.project()["_id"]
    pages, index = [], 0
    while True:
        page = api.get("/mission/get-project-tasks-by-page", project_id=pid,
                       page_index=index, page_size=20)
        pages.append(page)
        if not page["has_more"]:
            break
        index += 1
    assert [len(p["items"]) for p in pages] == [20, 20, 5]
    assert [p["has_more"] for p in pages] == [True, True, False]
    assert {p["total"] for p in pages} == {45}
    ids = [t["_id"] for p in pages for t in p["items"]]
    assert len(set(ids)) == 45 and pages[0]["items"][0]["identifier"] == "DS-1"
    beyond = api.get("/mission/get-project-tasks-by-page", project_id=pid, page_index=3,
                     page_size=20)
    assert beyond["items"] == [] and beyond["has_more"] is False
    default = api.get("/mission/get-project-tasks-by-page", project_id=pid)
    assert len(default["items"]) == 20  # default page size [I]


@pytest.mark.parametrize("key", ["items", "value"])
def test_by_page_envelope_key_is_configurable(emu, api, key):
    emu.config["page_items_key"] = key
    body = api.get("/contact/get-members-by-page", page_size=2)
    assert set(body) == {key, "total", "has_more"} and len(body[key]) == 2


def test_by_page_may_be_a_bare_array(emu, api):
    emu.config["page_items_key"] = "bare"
    assert [m["name"] for m in api.get("/contact/get-members-by-page")] == [
        "lina", "wangwei", "zhangmin"]


def test_oversized_page_is_capped_silently_or_refused(emu, api):
    emu.add_tasks(146)
    pid = api.project()["_id"]
    page = api.get("/mission/get-project-tasks-by-page", project_id=pid, page_size=200)
    assert len(page["items"]) == 100 and page["has_more"] is True  # shorter than asked, not last
    emu.config["page_size_over"] = "400"
    _error(api.call("GET", "/mission/get-project-tasks-by-page",
                    params={"project_id": pid, "page_size": 200}), 2002, 400)


# -- configuration: types, states and their categories, priorities, properties (docs/worktile.md §6)
def test_states_carry_integer_categories_and_3_covers_every_terminal_state(api):
    story = api.story_type()
    states = {s["name"]: s for s in story["states"]}
    assert {name: s["type"] for name, s in states.items()} == {
        "未激活": 1, "设计中": 2, "研发中": 2, "测试中": 2, "已发布": 3, "已取消": 3}
    assert set(states["已发布"]) == {"_id", "name", "type", "color"}
    assert story["initial_state_id"] == states["未激活"]["_id"]
    flows = {(f["from_state_id"], f["to_state_id"]) for f in story["flows"]}
    assert (states["未激活"]["_id"], states["设计中"]["_id"]) in flows
    assert (states["未激活"]["_id"], states["已发布"]["_id"]) not in flows
    level = next(p for p in story["properties"] if p["key"] == "customer_level")
    assert level["type"] == 6 and [o["text"] for o in level["options"]] == ["战略", "重点", "普通"]
    priorities = api.get(f"/mission/projects/{api.project()['_id']}/priorities")
    assert [p["name"] for p in priorities] == ["最高", "较高", "普通", "较低", "最低"]
    assert set(priorities[0]) == {"_id", "name", "color", "icon"}
    assert {t["name"] for t in api.get("/mission/task-types")} == {"需求", "任务", "缺陷"}


def test_done_and_cancelled_tasks_differ_only_by_state_name(emu, api):
    done, cancelled = emu.add_task("上线了", state="已发布"), emu.add_task("不做了", state="已取消")
    assert done["state_type"] == cancelled["state_type"] == 3
    assert done["task_state"]["type"] == cancelled["task_state"]["type"] == 3
    assert (done["task_state"]["name"], cancelled["task_state"]["name"]) == ("已发布", "已取消")
    assert done["completed_at"] == cancelled["completed_at"] == START


# -- reading tasks (docs/worktile.md §7) -----------------------------------------------------------
def test_v1_rows_carry_only_the_properties_named_in_fields(emu, api):
    ids = ",".join(t["_id"] for t in emu.dump_tasks()[:2])
    bare = api.get("/mission/get-tasks-by-ids", task_ids=ids)
    assert len(bare) == 2 and bare[0]["properties"] == {}
    rows = api.get("/mission/get-tasks-by-ids", task_ids=ids, fields="priority,assignee,due")
    first = rows[0]["properties"]
    assert set(first) == {"priority", "assignee", "due"} and first["priority"]["name"] == "较高"
    assert first["due"] == {"date": 1743350400, "with_time": 0}  # 2025-03-31, Beijing midnight
    assert len(first["assignee"]) == 24 and rows[0]["identifier"] == "DS-1"
    emu.config["v1_properties_without_fields"] = "all"
    assert "desc" in api.get("/mission/get-tasks-by-ids", task_ids=ids)[0]["properties"]


def test_v2_rows_wrap_property_values_and_reference_users(emu, api):
    pid = api.project()["_id"]
    body = api.get(f"/mission/projects/{pid}/tasks", page_index=0, page_size=2)
    assert set(body) == {"value", "references"} and len(body["value"]) == 2
    props = body["value"][0]["properties"]
    assert props["assignee"] == {"value": body["references"]["users"][0]["uid"]}
    assert props["due"] == {"value": {"date": 1743350400, "with_time": 0}}
    assert props["priority"]["value"]["name"] == "较高"
    assert api.get(f"/mission/projects/{pid}/tasks", page_index=2, page_size=2)["value"] == []


def test_detail_answers_id_and_title_plus_requested_columns(emu, api):
    task = emu.task("DS-1")
    assert api.get(f"/mission/tasks/{task['_id']}") == {"_id": task["_id"],
                                                          "title": task["title"]}
    detail = api.get(f"/mission/tasks/{task['_id']}", columns="properties,comments,identifier")
    assert detail["identifier"] == "DS-1" and detail["comments"] == []
    # rich-text JSON (docs/worktile.md §7.2)
    assert '"children"' in detail["properties"]["desc"]["value"]
    emu.config["detail_envelope"] = "data_value"
    wrapped = api.get(f"/mission/tasks/{task['_id']}")
    assert wrapped == {"data": {"value": {"_id": task["_id"], "title": task["title"]}}}


def test_relation_tasks_are_a_bare_array(emu, api):
    emu.relate("DS-1", "DS-2")
    rows = api.get("/mission/get-relation-tasks", task_id=emu.task("DS-1")["_id"])
    assert [r["identifier"] for r in rows] == ["DS-2"]
    assert api.get("/mission/get-relation-tasks", task_id="f" * 24) == []


# -- creating tasks (docs/worktile.md §8) ----------------------------------------------------------
def test_create_starts_in_the_initial_state_with_the_context_in_the_description(emu, api):
    level = next(o for p in api.story_type()["properties"] if p["key"] == "customer_level"
                 for o in p["options"] if o["text"] == "战略")
    task = api.create("[CRM] ACME – SSO", desc="ACME 需要 SSO（商机 D-1，金额 12 万）",
                      crm_deal="dealsync:p:D-1", customer_level=level["_id"])
    assert task["identifier"] == "DS-5" and task["task_state"]["name"] == "未激活"
    assert task["state_type"] == 1 and task["created_at"] == task["updated_at"] == START
    assert task["properties"]["customer_level"]["text"] == "战略"
    assert task["created_by"] == emu.apps["dealsync-demo"]["uid"]  # the app, not a person
    detail = api.get(f"/mission/tasks/{task['_id']}", columns="properties")
    assert detail["properties"]["desc"] == {"value": "ACME 需要 SSO（商机 D-1，金额 12 万）"}
    assert detail["properties"]["crm_deal"] == {"value": "dealsync:p:D-1"}
    alias = api.ok("POST", "/mission/tasks", json={
        "project_id": task["project_id"], "task_type_id": task["task_type"]["_id"],
        "title": "别名路径"})
    assert alias["identifier"] == "DS-6"


@pytest.mark.parametrize("change, code", [
    ({"title": ""}, 2001), ({"task_type_id": None}, 2001), ({"project_id": "f" * 24}, 3001),
    ({"properties": {"nope": 1}}, 2002), ({"properties": {"priority": "f" * 24}}, 2002),
    ({"properties": {"due": "tomorrow"}}, 2002),
])
def test_create_refusals_create_nothing(emu, api, change, code):
    body = {"project_id": api.project()["_id"], "task_type_id": api.story_type()["_id"],
            "title": "x", **change}
    _error(api.call("POST", "/mission/task", json=body), code, 400)
    assert len(emu.dump_tasks()) == 4


# -- incremental scans (docs/worktile.md §9) -------------------------------------------------------
def test_no_updated_since_filter_so_a_scan_compares_updated_at(emu, api):
    watermark = START
    emu.clock.advance(60_000)
    edited = emu.mutate("DS-2", by="wangwei", priority="最高")
    assert edited["updated_at"] == START + 60
    assert emu.users[edited["updated_by"]]["name"] == "wangwei"  # the person, not the app
    rows = api.get("/mission/get-project-tasks-by-page", project_id=api.project()["_id"],
                   updated_at_from=watermark + 1)  # not a filter: ignored
    assert len(rows["items"]) == 4
    assert [t["identifier"] for t in rows["items"] if t["updated_at"] > watermark] == ["DS-2"]


# -- writes Worktile does not document (docs/worktile.md §10) --------------------------------------
WRITES = [("PUT", "/mission/tasks/{id}", {"title": "x"}),
          ("PATCH", "/mission/tasks/{id}", {"title": "x"}),
          ("PUT", "/mission/tasks/{id}/state", {"task_state_id": "f" * 24}),
          ("POST", "/mission/tasks/{id}/comments", {"content": "x"})]


@pytest.mark.parametrize("method, path, body", WRITES)
def test_undocumented_writes_are_404_while_task_writes_is_off(emu, api, method, path, body):
    task = emu.task("DS-1")
    response = api.call(method, path.format(id=task["_id"]), json=body)
    _error(response, 4040, 404)
    assert emu.task("DS-1") == task


def test_writes_off_may_answer_405_with_the_methods_the_path_serves(emu, api):
    emu.config["writes_off_status"] = 405
    task_id = emu.task("DS-1")["_id"]
    response = api.call("PUT", f"/mission/tasks/{task_id}", json={"title": "x"})
    assert response.status_code == 405 and response.headers["Allow"] == "GET"
    state = api.call("PUT", f"/mission/tasks/{task_id}/state", json={"task_state_id": "x"})
    assert state.status_code == 405 and "Allow" not in state.headers


def test_task_writes_on_update_title_and_priority(emu, api):
    emu.config["task_writes"] = "on"
    task = emu.task("DS-2")
    top = next(p for p in api.get(f"/mission/projects/{task['project_id']}/priorities")
               if p["name"] == "最高")
    emu.clock.advance(5000)
    updated = api.ok("PATCH", f"/mission/tasks/{task['_id']}",
                     json={"title": "导出报表", "properties": {"priority": top["_id"]}})
    assert updated["title"] == "导出报表" and updated["properties"]["priority"]["name"] == "最高"
    assert updated["updated_at"] == START + 5 and updated["properties"]["desc"]  # merged
    assert updated["updated_by"] == emu.apps["dealsync-demo"]["uid"]
    refused = api.call("PUT", f"/mission/tasks/{task['_id']}",
                       json={"title": "不该生效", "properties": {"priority": "f" * 24}})
    _error(refused, 2002, 400)
    assert emu.task("DS-2") == updated  # a refused write changes nothing
    emu.config["properties_update"] = "replace"
    replaced = api.ok("PUT", f"/mission/tasks/{task['_id']}",
                      json={"properties": {"crm_deal": "dealsync:p:D-9"}})
    assert replaced["properties"]["priority"] is None and replaced["properties"]["desc"] == ""


def test_task_writes_on_state_follows_the_flows(emu, api):
    emu.config["task_writes"] = "on"
    story = {s["name"]: s["_id"] for s in api.story_type()["states"]}
    task_id = emu.task("DS-2")["_id"]  # 未激活
    path = f"/mission/tasks/{task_id}/state"
    _error(api.call("PUT", path, json={"task_state_id": story["已发布"]}), 3005, 400)
    assert emu.task("DS-2")["task_state"]["name"] == "未激活"
    _error(api.call("PUT", path, json={"task_state_id": emu.task("DS-4")["task_state"]["_id"]}),
           3004, 400)  # 打开 belongs to 缺陷, not to this type
    for name in ("设计中", "研发中", "测试中", "已发布"):
        moved = api.ok("PUT", path, json={"task_state_id": story[name]})
    assert moved["state_type"] == 3 and moved["completed_at"] == START
    history = api.get(f"/mission/tasks/{task_id}/transitions")
    assert [(h["from"]["name"], h["to"]["name"]) for h in history][-1] == ("测试中", "已发布")
    emu.config["enforce_flow"] = False
    assert api.ok("PUT", path, json={"task_state_id": story["已取消"]})["state_type"] == 3


def test_task_writes_on_comments_read_back_through_the_detail(emu, api):
    emu.config["task_writes"] = "on"
    task_id = emu.task("DS-1")["_id"]
    before = emu.task("DS-1")["updated_at"]
    comment = api.ok("POST", f"/mission/tasks/{task_id}/comments", json={"content": "客户催了"})
    assert set(comment) == {"_id", "content", "attachments", "created_by", "created_at"}
    detail = api.get(f"/mission/tasks/{task_id}", columns="comments")
    assert detail["comments"] == [comment] and "客户催了" in comment["content"]
    assert emu.task("DS-1")["updated_at"] == before


def test_archive_and_activate(emu, api):
    task = emu.task("DS-3")
    archived = api.ok("POST", f"/mission/tasks/{task['_id']}/archive")
    assert archived["is_archived"] == 1
    listed = api.get("/mission/get-project-tasks-by-page", project_id=task["project_id"])
    assert task["_id"] not in {t["_id"] for t in listed["items"]}
    assert api.get("/mission/get-tasks-by-ids", task_ids=task["_id"])[0]["is_archived"] == 1
    assert api.ok("POST", f"/mission/tasks/{task['_id']}/activate")["is_archived"] == 0


# -- throttling (docs/worktile.md §11) -------------------------------------------------------------
def test_rate_limit_answers_nginxs_html_429(emu, api):
    emu.config["rate_limit"] = 3
    for _ in range(3):
        api.get("/contact/get-members-by-page")
    throttled = api.call("GET", "/contact/get-members-by-page")
    assert throttled.status_code == 429
    assert throttled.headers["Content-Type"] == "text/html"
    assert "<center><h1>429 Too Many Requests</h1></center>" in throttled.text
    assert "Retry-After" not in throttled.headers
    emu.config["retry_after"] = "computed"
    assert api.call("GET", "/contact/get-members-by-page").headers["Retry-After"] == "1"
    emu.clock.advance(1000)
    api.get("/contact/get-members-by-page")
    emu.clock.advance(1000)
    emu.config.update(throttle_body="json", retry_after="fixed", retry_after_s=7)
    for _ in range(3):
        api.get("/contact/get-members-by-page")
    json_429 = api.call("GET", "/contact/get-members-by-page")
    assert json_429.headers["Retry-After"] == "7" and json_429.json()["ok"] is False
    assert emu.stats()["throttled"]["rate"] == 3


def test_at_most_three_requests_in_flight(emu, api):
    url = emu.url + "/open-api/contact/get-members-by-page"
    results: list[int] = []
    emu.hold()
    try:
        threads = [threading.Thread(target=lambda: results.append(requests.get(
            url, params={"access_token": api.token}).status_code)) for _ in range(5)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while (results.count(429) < 2 or emu.in_flight < 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(results) == [429, 429] and emu.in_flight == 3
    finally:
        emu.release()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [200, 200, 200, 429, 429]
    assert emu.stats()["peak_in_flight"] == 3
    assert emu.stats()["throttled"]["concurrency"] == 2


# -- fault injection, request log, events, control API ---------------------------------------------
def test_faults_and_the_request_log(emu, api):
    requests.post(emu.url + "/__emu/faults", json=[
        {"match": "GET /open-api/contact/.*", "nth": [2], "status": 503},
        {"match": "GET /open-api/mission/get-projects-by-page", "nth": [1], "status": 500,
         "body": {"ok": False, "error_code": 5000}}])
    api.get("/contact/get-members-by-page")
    gateway = api.call("GET", "/contact/get-members-by-page")
    assert gateway.status_code == 503 and gateway.headers["Content-Type"] == "text/html"
    assert "503 Service Temporarily Unavailable" in gateway.text
    assert api.call("GET", "/mission/get-projects-by-page").json()["error_code"] == 5000
    requests.post(emu.url + "/__emu/fail_next", json={"status": 429, "count": 1})
    assert api.call("GET", "/contact/get-members-by-page").status_code == 429
    log = requests.get(emu.url + "/__emu/requests").json()
    assert [(r["status"], r["note"]) for r in log["requests"]] == [
        (200, None), (200, None), (503, "fault"), (500, "fault"), (429, "fault")]
    assert log["requests"][1]["query"]["access_token"] == api.token
    assert log["requests"][0]["body"] == CREDS
    calls = requests.get(emu.url + "/__emu/stats").json()["calls"]
    assert calls["GET /open-api/contact/get-members-by-page"] == 3


def test_events_are_webhook_shaped(emu, api):
    start = len(emu.events)
    emu.mutate("DS-2", by="zhangmin", state="设计中", assignee="lina", title="导出报表")
    events = requests.get(emu.url + "/__emu/events", params={"since": start}).json()["events"]
    by_name = {e["event"]: e["payload"] for e in events}
    assert set(by_name) == {"task_title_changed", "task_assignee_changed", "task_state_changed"}
    state = by_name["task_state_changed"]
    assert (state["from"]["name"], state["to"]["name"]) == ("未激活", "设计中")
    assert state["update_by"]["user_name"] == "zhangmin"
    assert state["task"]["identifier"] == "DS-2"
    assert emu.transitions("DS-2")[0]["to"]["name"] == "设计中"


def test_control_seed_mutate_config_and_dump(emu):
    seeded = requests.post(emu.url + "/__emu/seed", json={"projects": [
        {"identifier": "DS", "tasks": [{"title": "追加", "type": "任务", "state": "进行中"}]},
        {"identifier": "OPS", "name": "运维", "template": "通用任务", "generate_tasks": 2}]}).json()
    assert seeded == {"tasks": ["DS-5", "OPS-1", "OPS-2"]}
    emu.clock.advance(1000)
    moved = requests.post(emu.url + "/__emu/mutate", json={
        "task": "DS-5", "by": "lina", "state": "已完成"}).json()
    assert moved["state_type"] == 3 and moved["updated_at"] == START + 1
    assert requests.post(emu.url + "/__emu/config", json={"nope": 1}).status_code == 400
    assert requests.post(emu.url + "/__emu/config", json={"task_writes": "on"}).json()[
        "task_writes"] == "on"
    dump = requests.get(emu.url + "/__emu/tasks").json()["tasks"]
    assert [t["identifier"] for t in dump][-3:] == ["DS-5", "OPS-1", "OPS-2"]
    requests.post(emu.url + "/__emu/reset")
    assert len(emu.dump_tasks()) == 4 and emu.config["task_writes"] == "off"
