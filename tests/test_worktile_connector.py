"""The Worktile connector against `responses`: requests, tokens, envelopes, paging and error
mapping, one behaviour at a time. No test sleeps for real."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from plugins.worktile.connector import (WorktileConnector, due_day, plain_text, rows_of,
                                        write_form)
from sync.connectors import InstanceContext, NewRequirement, RequirementChange
from sync.errors import AuthError, ConfigError, ItemError, RemoteError

BASE = "https://wt.example.test"
API = BASE + "/open-api"
TOKEN = "f" * 32
PID = "a" * 24
TYPE_ID = "b" * 24
FAR = datetime(2100, 1, 1, tzinfo=timezone.utc)
JSON = {"Content-Type": "application/json;charset=utf-8"}
HTML_429 = ("<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n"
            "<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n"
            "</body>\r\n</html>\r\n")
STATES = [{"_id": "1" * 24, "name": "未激活", "type": 1}, {"_id": "2" * 24, "name": "研发中", "type": 2},
          {"_id": "3" * 24, "name": "已发布", "type": 3}, {"_id": "4" * 24, "name": "已取消", "type": 3}]


class Clock:
    """Wall and monotonic time that move only when the connector sleeps."""

    def __init__(self):
        self.now = 1_700_000_000.0
        self.sleeps: list[float] = []
        self.lock = threading.Lock()

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += seconds


@pytest.fixture
def clock():
    return Clock()


def make(clock: Clock, **settings) -> WorktileConnector:
    ctx = InstanceContext("wt", {"base_url": BASE, "project": "DS", **settings},
                          {"client_id": "cid", "client_secret": "very-secret"}.__getitem__)
    return WorktileConnector(ctx, sleep=clock.sleep, monotonic=clock.time, clock=clock.time)


def row(n: int, updated: int = 1_000, state: int = 0, **props) -> dict:
    return {"_id": f"{n:024x}", "identifier": f"DS-{n}", "title": f"需求 {n}",
            "project_id": PID, "created_at": 100 + n, "updated_at": updated,
            "task_state": STATES[state], "state_type": STATES[state]["type"],
            "properties": props}


def query(request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}


def token_reply(rsps, expires_in=7200, token=TOKEN):
    rsps.add("POST", f"{API}/tenant-access-token",
             json={"tenant_access_token": token, "expires_in": expires_in})


def project_reply(rsps):
    rsps.add("GET", f"{API}/mission/get-projects-by-page", json={
        "items": [{"_id": PID, "identifier": "DS", "task_identifier_prefix": "DS",
                   "name": "示例"}], "total": 1, "has_more": False})


def type_replies(rsps, writes_probe: int | None = None):
    rsps.add("GET", f"{API}/mission/projects/{PID}/task-types",
             json=[{"_id": TYPE_ID, "name": "需求", "description": ""}])
    rsps.add("GET", f"{API}/mission/projects/{PID}/task-types/{TYPE_ID}", json={
        "_id": TYPE_ID, "name": "需求", "states": STATES, "initial_state_id": STATES[0]["_id"],
        "flows": [{"from_state_id": STATES[0]["_id"], "to_state_id": STATES[1]["_id"]},
                  {"from_state_id": STATES[1]["_id"], "to_state_id": STATES[2]["_id"]}],
        "properties": [{"key": "desc", "type": 2}, {"key": "priority", "type": 17},
                       {"key": "crm_deal", "name": "CRM 商机", "type": 1},
                       {"key": "assignee", "type": 9}]})


@pytest.fixture
def api(rsps):
    token_reply(rsps)
    project_reply(rsps)
    return rsps


def pages_of(rows: list[dict], size: int, key: str = "items", total: bool = True,
             seen: list | None = None):
    """A by-page endpoint over ``rows`` that honours page_index (for threads: any order)."""
    def reply(request):
        q = query(request)
        index = int(q["page_index"])
        chunk = rows[index * size:(index + 1) * size]
        if seen is not None:
            seen.append(index)
        if key == "bare":
            return 200, JSON, json.dumps(chunk)
        body = {key: chunk, "has_more": (index + 1) * size < len(rows)}
        if total:
            body["total"] = len(rows)
        return 200, JSON, json.dumps(body)
    return reply


# -- the token (docs/worktile.md §2, §3) -----------------------------------------------------------
def test_the_token_is_posted_once_and_sent_as_both_header_and_query(api, clock):
    conn = make(clock)
    assert conn.key_prefix() == "DS"
    token_call, project_call = api.calls[0].request, api.calls[1].request
    assert json.loads(token_call.body) == {"client_id": "cid", "client_secret": "very-secret"}
    assert query(project_call)["access_token"] == TOKEN
    assert project_call.headers["Authorization"] == f"Bearer {TOKEN}"
    assert query(project_call)["page_index"] == "0"


@pytest.mark.parametrize("expires_in, renewed_after_s", [
    (7200, 7200 - 300),          # a duration, renewed five minutes early
    (400, 200),                  # a short one, half-way
    # above 1e9: an absolute epoch after all (docs/worktile.md §15.2)
    (1_700_000_000 + 3600, 3600 - 300),
])
def test_the_token_is_renewed_early(rsps, clock, expires_in, renewed_after_s):
    token_reply(rsps, expires_in=expires_in)
    project_reply(rsps)
    conn = make(clock)
    conn.project()
    clock.now += renewed_after_s - 1
    conn._project = None
    conn.project()
    assert len([c for c in rsps.calls if "tenant-access-token" in c.request.url]) == 1
    clock.now += 2
    conn._project = None
    conn.project()
    assert len([c for c in rsps.calls if "tenant-access-token" in c.request.url]) == 2


@pytest.mark.parametrize("reply", [
    {"json": {"ok": False, "error_code": 1101, "error_message": "client_id或client_secret错误"}},
    {"json": {"expires_in": 7200}},
    {"status": 401, "json": {"ok": False, "error_code": 1101}},
])
def test_a_token_reply_without_a_token_is_a_failed_login(rsps, clock, reply):
    rsps.add("POST", f"{API}/tenant-access-token", **reply)
    with pytest.raises(AuthError) as caught:
        make(clock).key_prefix()
    assert "client_id and client_secret" in caught.value.hint
    assert "very-secret" not in str(caught.value)


@pytest.mark.parametrize("refusal", [
    {"json": {"ok": False, "error_code": 1103, "error_message": "invalid access token"}},
    {"json": {"ok": False, "error_code": 1102}},
    {"status": 401, "json": {"ok": False, "error_code": 1103}},
])
def test_a_refused_token_is_renewed_once_and_the_call_replayed(rsps, clock, refusal):
    token_reply(rsps, token="1" * 32)
    token_reply(rsps, token="2" * 32)
    rsps.add("GET", f"{API}/mission/get-projects-by-page", **refusal)
    project_reply(rsps)
    assert make(clock).key_prefix() == "DS"
    asked = [query(c.request).get("access_token") for c in rsps.calls
             if "projects" in c.request.url]
    assert asked == ["1" * 32, "2" * 32]


def test_a_token_refused_again_after_renewal_is_an_auth_error_not_an_empty_list(rsps, clock):
    token_reply(rsps)
    rsps.add("GET", f"{API}/mission/get-projects-by-page",
             json={"ok": False, "error_code": 1103})
    with pytest.raises(AuthError) as caught:
        make(clock).key_prefix()
    assert "1103" in str(caught.value) and TOKEN not in str(caught.value)
    assert "access_token=***" in str(caught.value)
    assert len(rsps.calls) == 4  # token, call, token, replay: no loop


# -- replies checked before use (docs/worktile.md §3, §11, §13) ------------------------------------
def test_another_error_in_a_200_body_is_an_item_error_keeping_the_raw_body(api, clock):
    api.add("GET", f"{API}/mission/get-tasks-by-ids",
            json={"ok": False, "error_code": 2001, "error_message": "task_ids不能为空"})
    with pytest.raises(ItemError) as caught:
        make(clock)._by_ids(["x"], "desc")
    assert not caught.value.retryable
    assert '"error_code": 2001' in str(caught.value) and "task_ids不能为空" in str(caught.value)


def test_nginx_html_429_is_retried_with_backoff_and_never_parsed(api, clock):
    api.add("GET", f"{API}/mission/get-tasks-by-ids", status=429, body=HTML_429,
            content_type="text/html")
    api.add("GET", f"{API}/mission/get-tasks-by-ids", json=[row(1)])
    assert list(make(clock).fetch([row(1)["_id"]])) == [row(1)["_id"]]
    # no Retry-After: back off (docs/worktile.md §11)
    assert len(clock.sleeps) == 1 and clock.sleeps[0] >= 1


def test_html_429s_until_the_attempts_run_out_are_a_remote_error_without_html(api, clock):
    api.add("GET", f"{API}/mission/get-tasks-by-ids", status=429, body=HTML_429,
            content_type="text/html")
    with pytest.raises(RemoteError) as caught:
        make(clock).fetch(["x" * 24])
    assert "HTTP 429" in str(caught.value) and "<html>" not in str(caught.value)
    assert caught.value.status == 429


def test_an_html_page_answered_with_200_is_not_taken_for_data(api, clock):
    api.add("GET", f"{API}/mission/get-tasks-by-ids", status=200, body="<html>login</html>",
            content_type="text/html")
    with pytest.raises(RemoteError, match="text/html, not JSON") as caught:
        make(clock).fetch(["x" * 24])
    assert "base_url" in caught.value.hint


def test_a_404_on_a_read_points_at_base_url(rsps, clock):
    token_reply(rsps)
    rsps.add("GET", f"{API}/mission/get-projects-by-page", status=404,
             json={"ok": False, "error_code": 4040, "error_message": "Not Found"})
    with pytest.raises(RemoteError) as caught:
        make(clock).key_prefix()
    assert caught.value.status == 404 and "check base_url" in caught.value.hint


def test_an_unknown_project_is_a_config_error_naming_the_instance(api, clock):
    with pytest.raises(ConfigError) as caught:
        make(clock, project="NOPE").key_prefix()
    assert "tracker.wt.project: Worktile has no project 'NOPE'" in str(caught.value)
    assert "known: DS" in str(caught.value)


# -- envelopes and paging (docs/worktile.md §5) ----------------------------------------------------
@pytest.mark.parametrize("key, total", [("items", True), ("value", True), ("items", False),
                                        ("bare", False)])
def test_every_envelope_is_paged_from_0_to_the_end_and_short_pages_are_not_the_end(
        api, clock, key, total):
    rows = [row(n) for n in range(1, 8)]
    seen: list[int] = []
    # the server caps pages at 3 rows although 200 are asked: short pages, more to come
    api.add_callback("GET", f"{API}/mission/get-project-tasks-by-page",
                     callback=pages_of(rows, 3, key, total, seen))
    found = [r.key for r in make(clock).iter_changed(None, FAR)]
    assert sorted(found, key=lambda k: int(k[3:])) == [f"DS-{n}" for n in range(1, 8)]
    if key == "bare":  # no has_more: page until an empty page
        assert sorted(seen) == [0, 1, 2, 3]
    else:
        assert sorted(seen) == [0, 1, 2]


def test_rows_repeated_across_pages_are_read_once(api, clock):
    pages = [{"items": [row(1), row(2)], "has_more": True},
             {"items": [row(2), row(3)], "has_more": False}]
    for page in pages:
        api.add("GET", f"{API}/mission/get-project-tasks-by-page", json=page)
    assert [r.key for r in make(clock).iter_changed(None, FAR)] == ["DS-1", "DS-2", "DS-3"]


def test_known_pages_are_read_three_at_a_time_and_never_more(api, clock):
    rows = [row(n) for n in range(1, 101)]
    lock, active, peak = threading.Lock(), [0], [0]
    inner = pages_of(rows, 5)

    def slow(request):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)  # the reply is slow: the next pages are asked meanwhile
        try:
            return inner(request)
        finally:
            with lock:
                active[0] -= 1

    api.add_callback("GET", f"{API}/mission/get-project-tasks-by-page", callback=slow)
    keys = [r.key for r in make(clock).iter_changed(None, FAR)]
    assert keys == [f"DS-{n}" for n in range(1, 101)]  # in order, each once
    assert peak[0] == 3


def test_a_refused_page_size_is_asked_again_smaller(api, clock):
    sizes = []

    def reply(request):
        size = int(query(request)["page_size"])
        sizes.append(size)
        if size > 100:
            return 200, JSON, json.dumps({"ok": False, "error_code": 2002,
                                        "error_message": "page_size不能大于100"})
        return 200, JSON, json.dumps({"items": [row(1)], "total": 1, "has_more": False})

    api.add_callback("GET", f"{API}/mission/get-project-tasks-by-page", callback=reply)
    assert [r.key for r in make(clock).iter_changed(None, FAR)] == ["DS-1"]
    assert sizes == [200, 100]


def test_rows_of_accepts_the_three_envelopes_and_refuses_others():
    assert rows_of([{"_id": "a"}]) == ([{"_id": "a"}], None, None)
    assert rows_of({"value": [], "has_more": False, "total": 0}) == ([], False, 0)
    with pytest.raises(RemoteError):
        rows_of({"data": []})


# -- reading tasks (docs/worktile.md §6, §7, §9) ---------------------------------------------------
def test_a_change_scan_asks_small_rows_and_reads_only_the_changed_whole(api, clock):
    rows = [row(n, updated=1_000 + n) for n in range(1, 6)]
    api.add_callback("GET", f"{API}/mission/get-project-tasks-by-page",
                     callback=pages_of(rows, 100))
    api.add("GET", f"{API}/mission/get-tasks-by-ids",
            json=[row(5, updated=1_005, desc="<p>需求</p>")])
    conn = make(clock, marker_property="crm_deal")
    since = datetime.fromtimestamp(1_004.5, timezone.utc)
    changed = list(conn.iter_changed(since, FAR))
    assert [(r.key, r.description) for r in changed] == [("DS-5", "<p>需求</p>")]
    scan, by_ids = [c.request for c in api.calls if "/mission/get-" in c.request.url
                    and "projects" not in c.request.url]
    assert query(scan)["fields"] == "priority,crm_deal"
    assert query(by_ids)["task_ids"] == rows[4]["_id"]
    assert query(by_ids)["fields"] == "priority,desc,due,crm_deal"


def test_a_by_ids_batch_refused_for_an_unknown_id_is_asked_one_by_one(api, clock):
    known, unknown = row(1)["_id"], "9" * 24
    refusal = {"ok": False, "error_code": 2002, "error_message": "task_ids包含不存在的id"}

    def reply(request):
        ids = query(request)["task_ids"].split(",")
        if unknown in ids:
            return 200, JSON, json.dumps(refusal)
        return 200, JSON, json.dumps([row(1)])

    api.add_callback("GET", f"{API}/mission/get-tasks-by-ids", callback=reply)
    assert list(make(clock).fetch([known, unknown])) == [known]


def test_states_in_category_3_are_told_apart_by_name_and_values_are_read_plainly(api, clock):
    slate = json.dumps([{"type": "paragraph", "key": "a", "children": [{"text": "第一段"}]},
                        {"type": "paragraph", "key": "b", "children": [{"text": "第二段"}]}],
                       ensure_ascii=False)
    api.add("GET", f"{API}/mission/get-tasks-by-ids", json=[
        row(1, state=2, desc=slate, priority={"_id": "p1", "name": "最高"},
            due={"date": 1_743_350_400, "with_time": 0}),
        row(2, state=3, desc="[draft] not JSON")])
    conn = make(clock)
    shipped, cancelled = conn.fetch([row(1)["_id"], row(2)["_id"]]).values()
    assert (shipped.fields["status"], cancelled.fields["status"]) == ("已发布", "已取消")
    assert shipped.description == "第一段\n第二段"
    assert cancelled.description == "[draft] not JSON"
    assert shipped.fields["priority"] == "最高" and shipped.fields["due"] == "2025-03-31"
    assert shipped.created_at == datetime.fromtimestamp(101, timezone.utc)
    assert conn._priorities() == {"最高": "p1"}  # learned from what was read (docs/worktile.md §6.3)


def test_keys_and_markers_come_from_the_change_scan_without_another_scan(api, clock):
    marker = "dealsync:p:D-1"
    rows = [row(1, updated=1_001, crm_deal=""), row(2, updated=1_002, crm_deal=marker),
            row(3, updated=1_003, crm_deal=f"{marker}0"), row(5, updated=1_005)]  # DS-4 gone
    api.add_callback("GET", f"{API}/mission/get-project-tasks-by-page",
                     callback=pages_of(rows, 100))
    api.add("GET", f"{API}/mission/get-tasks-by-ids", json=[rows[0]])
    api.add("GET", f"{API}/mission/get-tasks-by-ids", json=[rows[1]])
    conn = make(clock, marker_property="crm_deal")
    assert list(conn.iter_changed(datetime.fromtimestamp(5_000, timezone.utc), FAR)) == []
    assert {k: r.key for k, r in conn.find_by_keys(["DS-1", "ds-1", "DS-4"]).items()} == {
        "DS-1": "DS-1", "ds-1": "DS-1"}
    found = conn.find_by_markers([marker, "dealsync:p:D-2"], "dealsync:p:", 2)
    assert {m: r.key for m, r in found.items()} == {marker: "DS-2"}
    scans = [c for c in api.calls if "get-project-tasks-by-page" in c.request.url]
    assert len(scans) == 1


def test_a_key_newer_than_the_scan_scans_again(api, clock):
    api.add("GET", f"{API}/mission/get-project-tasks-by-page",
            json={"items": [row(1)], "has_more": False, "total": 1})
    api.add("GET", f"{API}/mission/get-project-tasks-by-page",
            json={"items": [row(1), row(2)], "has_more": False, "total": 2})
    api.add("GET", f"{API}/mission/get-tasks-by-ids", json=[row(1)])
    api.add("GET", f"{API}/mission/get-tasks-by-ids", json=[row(2)])
    conn = make(clock)
    assert conn.find_by_key("DS-1").key == "DS-1"
    assert conn.find_by_key("DS-2").key == "DS-2"  # created since: a second scan finds it
    assert len([c for c in api.calls if "get-project-tasks-by-page" in c.request.url]) == 2


# -- creating (docs/worktile.md §8) ----------------------------------------------------------------
def test_create_sends_the_context_priority_and_marker_and_needs_no_read_back(api, clock):
    type_replies(api)
    api.add("GET", f"{API}/mission/projects/{PID}/priorities",
            json=[{"_id": "p2", "name": "较高"}])
    created = row(9, desc="<p>ctx dealsync:p:D-1</p>", crm_deal="dealsync:p:D-1",
                  priority={"_id": "p2", "name": "较高"})
    api.add("POST", f"{API}/mission/task", json=created)
    conn = make(clock, marker_property="crm_deal")
    req = conn.create(NewRequirement("需求 9", "<p>ctx dealsync:p:D-1</p>",
                                     {"priority": "较高"}, "dealsync:p:D-1"))
    assert (req.key, req.fields["priority"]) == ("DS-9", "较高")
    post = next(c.request for c in api.calls if c.request.method == "POST"
                and "/mission/task" in c.request.url)
    assert json.loads(post.body) == {
        "project_id": PID, "task_type_id": TYPE_ID, "title": "需求 9",
        "properties": {"desc": "<p>ctx dealsync:p:D-1</p>", "priority": "p2",
                       "crm_deal": "dealsync:p:D-1"}}
    assert not [c for c in api.calls if "get-tasks-by-ids" in c.request.url]


def test_a_create_whose_reply_lacks_what_was_sent_is_read_back(api, clock, caplog):
    type_replies(api)
    api.add("POST", f"{API}/mission/task", json={"_id": row(9)["_id"], "identifier": "DS-9"})
    api.add("GET", f"{API}/mission/get-tasks-by-ids", json=[row(9, desc="<p>x</p>")])
    req = make(clock).create(NewRequirement("需求 9", "<p>x</p>", {}, "dealsync:p:D-1"))
    assert req.description == "<p>x</p>"
    assert "did not keep" not in caplog.text


def test_an_unknown_priority_fails_before_anything_is_created(api, clock):
    type_replies(api)
    api.add("GET", f"{API}/mission/projects/{PID}/priorities", status=404,
            # not a documented endpoint (docs/worktile.md §6.3)
            json={"ok": False, "error_code": 4040})
    api.add("GET", f"{API}/mission/get-project-tasks-by-page",
            json={"items": [row(1, priority={"_id": "p1", "name": "普通"})], "has_more": False})
    with pytest.raises(ItemError, match="priority '最高' is not known") as caught:
        make(clock).create(NewRequirement("t", "d", {"priority": "最高"}, "dealsync:p:D-1"))
    assert "known: 普通" in str(caught.value) and caught.value.retryable
    assert not [c for c in api.calls if c.request.method == "POST"
                and "/mission/task" in c.request.url]


# -- writes after creation (docs/worktile.md §10) --------------------------------------------------
@pytest.mark.parametrize("status", [404, 405])
def test_a_missing_write_endpoint_turns_the_capability_off_and_says_so_once(
        api, clock, caplog, status):
    for path in (f"{API}/mission/tasks/{'0' * 24}", f"{API}/mission/tasks/{'0' * 24}/state"):
        api.add("PUT", path, status=status, json={"ok": False, "error_code": 4040})
    conn = make(clock, task_writes=True)
    with caplog.at_level(logging.WARNING, logger="dealsync.worktile"):
        assert [conn.can_write(w) for w in ("status", "priority", "description", "title")] == [
            False] * 4
        assert not conn.can_write("status")
    assert len([c for c in api.calls if c.request.method == "PUT"]) == 2  # one probe each
    assert len(conn.write_notes) == 2 and len(caplog.records) == 2
    assert f"HTTP {status}" in conn.write_notes[0] and "manual updates" in conn.write_notes[0]


def test_an_existing_endpoint_refusing_the_probe_task_is_on(api, clock):
    for path in (f"{API}/mission/tasks/{'0' * 24}", f"{API}/mission/tasks/{'0' * 24}/state"):
        api.add("PUT", path, status=400,
                json={"ok": False, "error_code": 3002, "error_message": "任务不存在"})
    conn = make(clock, task_writes=["state"])
    assert conn.can_write("status") and not conn.can_write("priority")
    assert not conn.can_write("due")  # read-only whatever is configured
    assert conn.write_notes == []


def test_writes_not_configured_are_off_without_asking(api, clock):
    conn = make(clock)
    assert not any(conn.can_write(w) for w in ("status", "priority", "description"))
    assert [c.request.method for c in api.calls] == []


def test_a_write_answered_404_mid_run_fails_its_item_and_turns_the_capability_off(api, clock):
    type_replies(api)
    task_id = row(1)["_id"]
    api.add("PUT", f"{API}/mission/tasks/{'0' * 24}", status=400,
            json={"ok": False, "error_code": 3002})
    api.add("GET", f"{API}/mission/get-tasks-by-ids", json=[row(1, desc="d")])
    api.add("PUT", f"{API}/mission/tasks/{task_id}", status=404,
            json={"ok": False, "error_code": 4040})
    conn = make(clock, task_writes=["update"])
    with pytest.raises(ItemError, match="has no task update endpoint") as caught:
        conn.update(task_id, RequirementChange(description="new"))
    assert not caught.value.retryable
    assert not conn.can_write("description") and len(conn.write_notes) == 1


def test_an_update_sends_every_property_back_with_the_change(api, clock):
    """Whether the service merges or replaces properties is not on record (docs/worktile.md §10)."""
    type_replies(api)
    task_id = row(1)["_id"]
    api.add("PUT", f"{API}/mission/tasks/{'0' * 24}", status=400,
            json={"ok": False, "error_code": 3002})
    whole = row(1, desc="d", assignee="u1", crm_deal="", priority={"_id": "p1", "name": "普通"})
    api.add("GET", f"{API}/mission/get-tasks-by-ids", json=[whole])
    api.add("GET", f"{API}/mission/projects/{PID}/priorities",
            json=[{"_id": "p1", "name": "普通"}, {"_id": "p0", "name": "最高"}])
    api.add("PUT", f"{API}/mission/tasks/{task_id}", json=whole)
    api.add("GET", f"{API}/mission/get-tasks-by-ids",
            json=[{**whole, "properties": {**whole["properties"],
                                           "priority": {"_id": "p0", "name": "最高"}}}])
    updated = make(clock, task_writes=True).update(task_id, RequirementChange(
        fields={"priority": "最高"}))
    assert updated.fields["priority"] == "最高"
    put = next(c.request for c in api.calls if c.request.method == "PUT"
               and task_id in c.request.url)
    assert json.loads(put.body) == {"properties": {"desc": "d", "assignee": "u1",
                                                   "priority": "p0"}}


# -- settings and small readers --------------------------------------------------------------------
@pytest.mark.parametrize("settings, problem", [
    ({}, "project: required for type 'worktile'"),
    ({"project": "DS", "task_writes": "yes"}, "task_writes: must be true, false or a list"),
    ({"project": "DS", "task_writes": ["comments"]}, "task_writes: must be true, false"),
    ({"project": "DS", "task_url": "https://x/{key}"}, "task_url: only {id}, {identifier}"),
    ({"project": "DS", "priorities": "最高"}, "priorities: must be a list"),
    ({"project": "DS", "base_url": "dev.worktile.com"}, "base_url: must start with https://"),
    ({"project": "DS", "colour": "red"}, "colour: unknown setting for type 'worktile'"),
])
def test_bad_settings_are_named(settings, problem):
    assert any(p.startswith(problem) for p in WorktileConnector.check_settings(settings)), \
        WorktileConnector.check_settings(settings)


def test_good_settings_pass():
    assert WorktileConnector.check_settings({
        "project": "DS", "task_writes": ["state", "priority"], "marker_property": "crm_deal",
        "priorities": ["最高", "普通"],
        "task_url": "https://acme.worktile.com/mission/projects/{project_id}/tasks/{id}"}) == []


def test_small_readers():
    assert plain_text("<p>html stays</p>") == "<p>html stays</p>"
    assert plain_text(None) == ""
    assert due_day({"date": 0, "with_time": 0}) is None
    assert due_day({"value": {"date": 1_743_350_400, "with_time": 0}}) == "2025-03-31"
    assert write_form({"_id": "o1", "text": "重点"}) == "o1"
    assert write_form([{"_id": "t1"}, "u2"]) == ["t1", "u2"]
    assert write_form({"date": 5, "with_time": 1}) == {"date": 5, "with_time": 1}


def test_the_task_url_is_filled_in(api, clock):
    api.add("GET", f"{API}/mission/get-tasks-by-ids", json=[row(1)])
    conn = make(clock, task_url="https://acme.worktile.com/mission/projects/{project_id}/tasks/"
                                "{identifier}")
    req = conn.fetch([row(1)["_id"]])[row(1)["_id"]]
    assert req.url == f"https://acme.worktile.com/mission/projects/{PID}/tasks/DS-1"


def test_the_connector_is_registered_as_a_builtin():
    from sync import manager

    registered = manager.connector_registry()[("tracker", "worktile")]
    assert registered.cls is WorktileConnector and registered.plugin == "plugins.worktile"


@pytest.mark.parametrize("name", ["hubspot-worktile", "salesforce-worktile"])
def test_the_shipped_mappings_load_and_mark_what_worktile_cannot_write(name):
    from sync.mapping import load_mapping

    mapping = load_mapping(name)
    fields = {f.name: f for f in mapping.fields}
    for field in ("status", "priority"):
        assert fields[field].direction == "both" and fields[field].manual
    assert (fields["delivery"].tracker, fields["delivery"].direction) == ("due", "to_crm")
    assert set(fields["status"].values) == {"未激活", "设计中", "研发中", "测试中", "已发布", "已取消"}
    assert fields["status"].to_crm("已发布") != fields["status"].to_crm("已取消")
    if name.startswith("salesforce"):
        assert all(field.endswith("__c") for field in mapping.crm_schema())
