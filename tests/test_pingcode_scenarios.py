"""The PingCode connector against the emulator: the awkward parts of the real API, end to end.

Time is the emulator's virtual clock throughout (``plugins.pingcode.testing``): waiting out a
429 or the client's own 200/min window advances it instead of sleeping.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests

from plugins.pingcode.testing import emulator_connector
from sync.connectors import NewRequirement, RequirementChange, make_marker
from sync.errors import TransitionError

FAST = {"rate_limits": {"default": {"calls": 100_000, "per_seconds": 60}}}


@pytest.fixture
def emu(pingcode_server):
    pingcode_server.reset()
    pingcode_server.config["rate_limit_per_min"] = 0  # only the rate-limit scenarios turn it on
    return pingcode_server


def api_log(emu, method, pattern=""):
    return [r for r in emu.log if r["method"] == method and pattern in r["path"]]


def new(title="单点登录", description="<p>需求</p>", deal="D-1", **fields):
    return NewRequirement(title=title, description=description, fields=fields,
                          marker=make_marker("p", deal))


def test_token_expiring_mid_run_is_refreshed_once_without_a_duplicate_write(emu):
    conn = emulator_connector(emu, **FAST)
    conn.create(new(deal="D-1"))
    emu.expire_tokens()  # revoked/expired on the server, though our copy looks valid
    created = conn.create(new(title="第二个", deal="D-2"))
    assert [i["title"] for i in emu.dump_items()].count("第二个") == 1
    assert emu.calls["GET /v1/auth/token"] == 2
    posts = api_log(emu, "POST", "/work_items")
    assert [p["status"] for p in posts] == [201, 401, 201]
    assert conn.fetch([created.id])[created.id].title == "第二个"


def test_token_reaching_its_absolute_expiry_is_renewed_before_it_is_refused(emu):
    conn = emulator_connector(emu, **FAST)
    conn.field_values("status")
    emu.clock.advance(timedelta(days=29, hours=1).total_seconds() * 1000)
    conn.create(new())
    assert emu.calls["GET /v1/auth/token"] == 2
    assert not [r for r in emu.log if r["status"] == 401]


def test_a_state_two_transitions_away_is_reached_through_the_flow(emu):
    conn = emulator_connector(emu, **FAST)
    req = conn.create(new())
    moved = conn.update(req.id, RequirementChange(fields={"status": "已计划"}, title="改名"))
    assert moved.fields["status"] == "已计划" and moved.title == "改名"
    hops = [(h["from_state"]["name"], h["to_state"]["name"]) for h in emu.transitions(req.id)]
    assert hops == [("新建", "待评审"), ("待评审", "已计划")]


def test_a_status_on_create_is_reached_after_the_create(emu):
    conn = emulator_connector(emu, **FAST)
    req = conn.create(new(status="开发中", priority="最高"))
    assert (req.fields["status"], req.fields["priority"]) == ("开发中", "最高")
    assert len(emu.transitions(req.id)) == 3


def test_an_unreachable_state_is_reported_and_the_item_is_unchanged(emu):
    conn = emulator_connector(emu, **FAST)
    req = conn.create(new())
    emu.mutate(req.id, state="不做")  # a PM closes it: 不做 has no way out
    emu.clock.advance(60_000)
    before = emu.item(req.id)
    patches = len(api_log(emu, "PATCH"))
    with pytest.raises(TransitionError) as caught:
        conn.update(req.id, RequirementChange(fields={"status": "开发中", "priority": "低"},
                                              title="不该改"))
    assert "不做 → 开发中" in str(caught.value)
    assert emu.item(req.id) == before
    assert len(api_log(emu, "PATCH")) == patches


def test_an_item_edited_during_a_run_on_the_cursor_day_is_picked_up_next_run(emu):
    conn = emulator_connector(emu, **FAST)
    emu.clock.advance(2 * 3_600_000)  # the seeded items were edited at 09:00, the run is at 11
    first_start = emu.clock.now()
    assert {r.key for r in conn.iter_changed(None, first_start)} == {"SCR-1", "SCR-2", "SCR-3"}
    cursor = first_start  # the engine never advances past the run's start
    emu.clock.advance(30_000)
    emu.mutate("SCR-2", title="运行中被修改")  # while the first run is still busy
    emu.clock.advance(3_600_000)
    second_start = emu.clock.now()
    changed = list(conn.iter_changed(cursor - timedelta(minutes=10), second_start))
    # the whole day comes back (the pages are paid for); the edit made during the run with it
    assert ("SCR-2", "运行中被修改") in [(r.key, r.title) for r in changed]
    assert {r.key for r in changed} == {"SCR-1", "SCR-2", "SCR-3"}
    # Why the connector asks from the start of the day: the server compares whole days, so
    # asking for "after the cursor" misses everything edited later that same day.
    token = requests.get(emu.url + "/v1/auth/token", params={
        "grant_type": "client_credentials", "client_id": "dealsync-demo",
        "client_secret": "demo-secret"}).json()["access_token"]
    naive = requests.post(emu.url + "/v1/pjm/work_items/search", headers={
        "Authorization": f"Bearer {token}"}, json={"mode": "query", "payload": {
            "filter": {"updated_at": {"gt": int(cursor.timestamp())}}}}).json()
    assert naive["total"] == 0


def test_350_shuffled_items_across_pages_are_each_seen_once(emu):
    emu.add_items(350)
    emu.config["shuffle"] = True
    conn = emulator_connector(emu, **FAST)
    keys = [r.key for r in conn.iter_changed(None, emu.clock.now())]
    assert len(keys) == len(set(keys)) == 353
    assert keys[:3] != ["SCR-1", "SCR-2", "SCR-3"]
    assert conn.api_calls()["POST /v1/pjm/work_items/search"] == 4


def test_a_429_with_x_pc_retry_after_waits_and_succeeds(emu):
    emu.config["rate_limit_per_min"] = 200
    conn = emulator_connector(emu, **FAST)  # our own limiter out of the way: the server's 429
    req = conn.create(new())
    emu.fail_next(429, count=1, retry_after=7)
    started = emu.clock.now()
    assert req.id in conn.fetch([req.id])
    assert (emu.clock.now() - started).total_seconds() == pytest.approx(7)
    for _ in range(250):  # over the server's sliding window
        conn.fetch([req.id])
    throttled = [r for r in emu.log if r["status"] == 429]
    assert len(throttled) >= 2 and emu.log[-1]["status"] == 200


def test_the_client_keeps_under_200_per_minute_without_a_single_429(emu):
    emu.config["rate_limit_per_min"] = 200
    conn = emulator_connector(emu)  # default_rate_limits: 200 per 60 s
    req = conn.create(new())
    started = emu.clock.now()
    for _ in range(450):
        conn.fetch([req.id])
    assert not [r for r in emu.log if r["status"] == 429]
    assert (emu.clock.now() - started).total_seconds() >= 120


def test_chinese_text_survives_a_round_trip_byte_for_byte(emu):
    conn = emulator_connector(emu, **FAST)
    title = "支持「企业微信」单点登录 — 第二期（华东区）🚀"
    description = "<p>客户：上海某某科技有限公司<br>需求：𠮷野家、〜、＆、“引号”</p>"
    req = conn.create(new(title=title, description=description))
    back = conn.fetch([req.id])[req.id]
    assert back.title.encode("utf-8") == title.encode("utf-8")
    assert back.description.encode("utf-8") == description.encode("utf-8")
    edited = description + "<p>追加：修改后的说明</p>"
    conn.update(req.id, RequirementChange(description=edited))
    assert emu.item(req.id)["description"] == edited


def test_escaped_crm_text_is_stored_verbatim(emu):
    conn = emulator_connector(emu, **FAST)
    escaped = "<p>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; 更多</p>"
    req = conn.create(new(description=escaped))
    assert emu.item(req.id)["description"] == escaped
    assert conn.fetch([req.id])[req.id].description == escaped
    raw = "<p><script>alert(1)</script></p>"  # whatever is sent arrives unchanged
    conn.update(req.id, RequirementChange(description=raw))
    assert emu.item(req.id)["description"] == raw


def test_marker_is_found_again_in_the_property_or_the_description(emu):
    marker = make_marker("p", "D-7")
    with_prop = emulator_connector(emu, marker_property="prop_crm_deal", **FAST)
    req = with_prop.create(NewRequirement("带标记", f"<p>{marker}</p>", {}, marker))
    assert emu.item(req.id)["properties"]["prop_crm_deal"] == marker
    assert with_prop.find_by_marker(marker).id == req.id
    assert emulator_connector(emu, **FAST).find_by_marker(marker).id == req.id
    assert with_prop.find_by_marker(make_marker("p", "D-70")) is None
    assert emulator_connector(emu, **FAST).find_by_key("SCR-4").id == req.id


def test_older_path_prefix_and_missing_type_field(emu):
    emu.config["include_item_type"] = False
    conn = emulator_connector(emu, path_prefix="/v1/project", **FAST)
    req = conn.create(new())
    assert conn.fetch([req.id])[req.id].key == "SCR-4"
    assert all(r["path"].startswith(("/v1/project/", "/v1/auth/")) for r in emu.log)


def test_a_deleted_item_is_absent_from_fetch(emu):
    conn = emulator_connector(emu, **FAST)
    req = conn.create(new())
    emu.mutate(req.id, deleted=True)
    assert conn.fetch([req.id]) == {}


MAPPING = """
[mapping]
description = "memory CRM <-> PingCode emulator"
[request]
field = "request"
key_pattern = 'SCR-\\d+'
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
"新建" = "open"
"已计划" = "planned"
"开发中" = "in_progress"
"已完成" = "done"
"暂不考虑" = "not_now"
"不做" = "wont_do"
[fields.priority]
crm = "req_priority"
tracker = "priority"
direction = "both"
conflict = "newest"
[fields.priority.values]
"最高" = "highest"
"高" = "high"
"中" = "medium"
"低" = "low"
"最低" = "lowest"
"""


def test_engine_runs_end_to_end_against_the_emulator(emu, tmp_path):
    from plugins.memory import MemoryCRM, World
    from sync.connectors import InstanceContext
    from sync.engine import Options, Pair, run_pair
    from sync.mapping import load_mapping
    from sync.state import StateStore

    (tmp_path / "mapping.toml").write_text(MAPPING, encoding="utf-8")
    world = World()
    crm = MemoryCRM(InstanceContext("crm", {}, lambda name: ""), world=world)
    tracker = emulator_connector(emu, "rd", marker_property="prop_crm_deal", **FAST)
    pair = Pair("p", crm, tracker, load_mapping(str(tmp_path / "mapping.toml")))
    store = StateStore(tmp_path / "state.db")
    try:
        world.add_deal("D-1", request="需要 SSO <script>x</script>", pipeline="sales",
                       req_status="planned", req_priority="high", name="ACME 集团")
        world.add_deal("D-2", request="SCR-1", pipeline="sales", name="Beta")
        first = run_pair(pair, store, Options())["counts"]
        assert (first["created"], first["linked"], first["failures"]) == (1, 1, 0)
        created = emu.item("SCR-4")
        assert (created["state"]["name"], created["priority"]["name"]) == ("已计划", "高")
        assert "&lt;script&gt;" in created["description"]
        assert created["properties"]["prop_crm_deal"] == "dealsync:p:D-1"
        assert run_pair(pair, store, Options())["counts"]["updated_tracker"] == 0
        emu.clock.advance(60_000)
        emu.mutate("SCR-4", state="开发中")
        assert run_pair(pair, store, Options())["counts"]["updated_crm"] == 1
        assert world.deals["D-1"]["fields"]["req_status"] == "in_progress"
    finally:
        store.close()
