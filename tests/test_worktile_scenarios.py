"""The Worktile connector against the emulator: the awkward parts of the real API, end to end
(docs/worktile.md). Time is the emulator's virtual clock throughout
(``plugins.worktile.testing``): waiting out a 429 or the client's window advances it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from plugins.memory import MemoryCRM, World
from plugins.worktile.testing import emulator_connector
from sync.connectors import InstanceContext, NewRequirement, RequirementChange, make_marker
from sync.engine import Options, Pair, run_pair
from sync.errors import TransitionError
from sync.mapping import load_mapping
from sync.state import StateStore

FAR = datetime(2100, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def emu(worktile_server):
    worktile_server.reset()
    return worktile_server


def api_log(emu, method, pattern=""):
    return [r for r in emu.log if r["method"] == method and pattern in r["path"]]


def new(title="单点登录", deal="D-1", **fields):
    marker = make_marker("p", deal)
    return NewRequirement(title, f"<p>需求</p><p>{marker}</p>", fields, marker)


# -- tokens (docs/worktile.md §2, §3) --------------------------------------------------------------
@pytest.mark.parametrize("mode", ["200_body", "401"])
def test_a_token_expired_on_the_server_is_renewed_once_and_the_create_not_repeated(emu, mode):
    emu.config["auth_error_mode"] = mode
    conn = emulator_connector(emu)
    conn.create(new(deal="D-1"))
    emu.expire_tokens()  # revoked or expired there, though our copy looks valid
    conn.create(new(title="第二个", deal="D-2"))
    assert [t["title"] for t in emu.dump_tasks()].count("第二个") == 1
    assert emu.calls["POST /open-api/tenant-access-token"] == 2
    assert [r["status"] for r in api_log(emu, "POST", "/mission/task")] == [
        200, 200 if mode == "200_body" else 401, 200]


@pytest.mark.parametrize("expires_in_mode", ["duration", "absolute"])
def test_a_token_is_renewed_before_its_lifetime_runs_out(emu, expires_in_mode):
    emu.config["expires_in_mode"] = expires_in_mode
    conn = emulator_connector(emu)
    conn.key_prefix()
    emu.clock.advance((7200 - 200) * 1000)  # inside the five minutes before expiry
    conn.fetch([emu.task("DS-1")["_id"]])
    assert emu.calls["POST /open-api/tenant-access-token"] == 2
    # renewed ahead of time, not after a refusal: nothing was asked twice
    assert emu.calls["GET /open-api/mission/get-tasks-by-ids"] == 1
    assert all(r["status"] == 200 for r in emu.log)


# -- throttling (docs/worktile.md §11) -------------------------------------------------------------
def test_a_long_scan_keeps_three_requests_in_flight_and_draws_no_429(emu):
    emu.add_tasks(1196)
    emu.config["latency_ms"] = 15  # slow replies: the next pages are asked meanwhile
    conn = emulator_connector(emu)
    assert len({r.id for r in conn.iter_changed(None, FAR)}) == 1200
    assert emu.peak_in_flight == 3
    assert emu.throttled == {"rate": 0, "concurrency": 0}
    assert conn.api_calls()["GET /open-api/mission/get-project-tasks-by-page"] == 12


def test_nginx_html_429_and_502_pages_are_waited_out(emu):
    conn = emulator_connector(emu)
    conn.key_prefix()
    emu.fail_next(429, match=r"GET /open-api/mission/get-tasks-by-ids")
    emu.fail_next(502, match=r"GET /open-api/mission/get-tasks-by-ids")
    started = emu.clock.now()
    assert list(conn.fetch([emu.task("DS-1")["_id"]])) == [emu.task("DS-1")["_id"]]
    statuses = [r["status"] for r in api_log(emu, "GET", "get-tasks-by-ids")]
    assert statuses[:2] == [429, 502] and statuses[-1] == 200
    assert emu.clock.now() > started  # backed off on the virtual clock


def test_the_clients_own_window_keeps_below_the_servers(emu):
    emu.config["rate_limit"] = 25  # a server stricter than the assumed 50 a second
    conn = emulator_connector(emu, rate_limits={"default": {"calls": 20, "per_seconds": 1}})
    task = emu.task("DS-1")["_id"]
    for _ in range(100):
        conn.fetch([task])
    assert emu.throttled["rate"] == 0


@pytest.mark.parametrize("envelope", ["value", "bare"])
def test_other_envelopes_read_the_same_tasks(emu, envelope):
    emu.add_tasks(250)
    emu.config["page_items_key"] = envelope
    conn = emulator_connector(emu)
    assert len({r.key for r in conn.iter_changed(None, FAR)}) == 254


def test_a_server_refusing_oversized_pages_is_asked_smaller_ones(emu):
    emu.config["page_size_over"] = "400"
    emu.add_tasks(150)
    conn = emulator_connector(emu)
    assert len(list(conn.iter_changed(None, FAR))) == 154


# -- change scan, keys and markers (docs/worktile.md §9, §15.5) ------------------------------------
def test_a_change_scan_finds_the_changed_tasks_among_many(emu):
    emu.add_tasks(496)
    conn = emulator_connector(emu)
    emu.clock.advance(3_600_000)
    since = emu.clock.now()
    emu.clock.advance(60_000)
    for key in ("DS-7", "DS-250", "DS-500"):
        emu.mutate(key, priority="最高")
    changed = list(conn.iter_changed(since, FAR))
    assert sorted(r.key for r in changed) == ["DS-250", "DS-500", "DS-7"]
    assert all(r.fields["priority"] == "最高" and r.description is not None for r in changed)
    calls = conn.api_calls()
    assert calls["GET /open-api/mission/get-project-tasks-by-page"] == 5  # 500 tasks, 100 a page
    assert calls["GET /open-api/mission/get-tasks-by-ids"] == 1


def test_a_marker_is_found_in_the_property_or_the_description(emu):
    marker = make_marker("p", "D-7")
    with_property = emulator_connector(emu, marker_property="crm_deal")
    req = with_property.create(NewRequirement("带标记", f"<p>{marker}</p>", {}, marker))
    assert emu.task(req.id)["properties"]["crm_deal"] == marker
    assert with_property.find_by_marker(marker).id == req.id
    assert emulator_connector(emu).find_by_marker(marker).id == req.id
    assert with_property.find_by_marker(make_marker("p", "D-70")) is None
    assert emulator_connector(emu).find_by_key("DS-5").id == req.id


def test_a_marker_property_that_is_not_a_text_property_is_refused(emu):
    from sync.errors import ConfigError

    with pytest.raises(ConfigError, match="customer_level"):
        emulator_connector(emu, marker_property="customer_level").field_values("status")


# -- writes after creation (docs/worktile.md §10) --------------------------------------------------
def test_with_writes_on_a_status_is_reached_through_the_flows(emu):
    emu.config["task_writes"] = "on"
    conn = emulator_connector(emu, task_writes=True)
    req = conn.create(new(status="研发中", priority="较高"))
    assert (req.fields["status"], req.fields["priority"]) == ("研发中", "较高")
    assert [h["to"]["name"] for h in emu.transitions(req.id)] == ["设计中", "研发中"]
    moved = conn.update(req.id, RequirementChange(fields={"status": "已发布"}, title="改名"))
    assert (moved.fields["status"], moved.title) == ("已发布", "改名")


def test_with_writes_off_a_create_still_carries_priority_and_stays_in_its_first_state(emu):
    conn = emulator_connector(emu)
    req = conn.create(new(status="研发中", priority="较高"))
    assert (req.fields["status"], req.fields["priority"]) == ("未激活", "较高")
    assert api_log(emu, "PUT") == []


def test_an_update_loses_no_property_when_the_service_replaces_them(emu):
    emu.config.update(task_writes="on", properties_update="replace")
    conn = emulator_connector(emu, task_writes=True)
    task = emu.task("DS-1")
    before = task["properties"]
    conn.update(task["_id"], RequirementChange(fields={"priority": "最高"},
                                               description="新的描述"))
    after = emu.task("DS-1")["properties"]
    assert after["priority"]["name"] == "最高" and after["desc"] == "新的描述"
    assert after["assignee"] == before["assignee"] and after["due"] == before["due"]


def test_a_state_the_workflow_cannot_reach_is_refused_before_anything_is_written(emu):
    emu.config["task_writes"] = "on"
    emu.seed({"task_types": [{"name": "单向", "states": ["未激活", "研发中", "已发布"],
                              "flows": [("未激活", "研发中"), ("研发中", "已发布")]}],
              "projects": [{"identifier": "ONE", "task_types": ["单向"], "members": ["lina"],
                            "priorities": [["普通", "#ccc"]],
                            "tasks": [{"title": "已完成的", "type": "单向", "state": "已发布"}]}]})
    conn = emulator_connector(emu, project="ONE", task_type="单向", task_writes=True)
    task = emu.task("ONE-1")
    with pytest.raises(TransitionError) as caught:
        conn.update(task["_id"], RequirementChange(fields={"status": "未激活"}, title="不该改"))
    assert "from '已发布' to '未激活'" in str(caught.value) and "allows: nothing" in str(
        caught.value)
    assert emu.task("ONE-1") == task
    assert [r for r in api_log(emu, "PUT") if "0" * 24 not in r["path"]] == []


# -- the engine on the connector -------------------------------------------------------------------
MAPPING = """
[request]
field = "request"
[select.where]
pipeline = ["sales"]
[link]
key_field = "req_key"
[fields.status]
crm = "req_status"
tracker = "status"
direction = "both"
manual = true
[fields.status.values]
"未激活" = "new"
"设计中" = "planned"
"研发中" = "in_progress"
"测试中" = "testing"
"已发布" = "shipped"
"已取消" = "wont_do"
[fields.priority]
crm = "req_priority"
tracker = "priority"
direction = "both"
conflict = "newest"
manual = true
[fields.priority.values]
"最高" = "critical"
"较高" = "high"
"普通" = "medium"
"较低" = "low"
"最低" = "minimal"
"""


def test_with_lost_state_a_created_task_is_found_by_its_marker_from_the_change_scan(
        emu, tmp_path):
    """The marker look-up before a create costs no scan of its own: the run's change scan
    already read the marker property (docs/worktile.md §15.5)."""
    (tmp_path / "mapping.toml").write_text(MAPPING, encoding="utf-8")
    world = World()
    world.add_deal("D-1", request="离线模式", pipeline="sales", req_priority="high")
    mapping = load_mapping(str(tmp_path / "mapping.toml"))

    def run(store_name: str) -> tuple[dict, dict]:
        crm = MemoryCRM(InstanceContext("crm", {}, lambda name: ""), world=world)
        tracker = emulator_connector(emu, "wt", marker_property="crm_deal")
        store = StateStore(tmp_path / store_name)
        try:
            summary = run_pair(Pair("p", crm, tracker, mapping), store, Options())
        finally:
            store.close()
        return summary["counts"], tracker.api_calls()

    counts, _ = run("first.db")
    assert counts["created"] == 1
    assert emu.task("DS-5")["properties"]["priority"]["name"] == "较高"
    emu.clock.advance(timedelta(days=1).total_seconds() * 1000)
    counts, calls = run("restored.db")  # the state store was lost
    assert (counts["created"], counts["relinked"]) == (0, 1)
    assert len(emu.dump_tasks()) == 5
    assert calls["GET /open-api/mission/get-project-tasks-by-page"] == 1
