"""End to end: the CLI against the HubSpot and Worktile emulators over HTTP with the shipped
``hubspot-worktile`` mapping, in both worlds.

Writes off (Worktile's documented API, docs/worktile.md §10): create, link by key, Worktile
state and priority reaching every deal, an echo-free second run, and a CRM-side priority change
that waits in the manual-update list until the task shows it. Writes on: both ways, as with
PingCode. Quiet runs are counted per endpoint from the emulators' own request counters.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_end_to_end import SIDES, Stack

from plugins.worktile.emulator import WorktileEmulator
from plugins.worktile.testing import DEMO_SECRETS
from sync.cli import cli
from sync.demo import DEMO_CRMS, deal_view
from sync.mapping import load_mapping, resolve_path
from sync.secrets import env_var

TRACKER_AND_PAIR = """
[tracker.wt]
type = "worktile"
base_url = "{worktile}"
project = "DS"
marker_property = "crm_deal"
task_writes = {writes}

[pair.e2e]
crm = "{crm}"
tracker = "wt"
mapping = "{mapping}"
"""
PROBES = (f"PUT /open-api/mission/tasks/{'0' * 24}", f"PUT /open-api/mission/tasks/{'0' * 24}/state")


class WorktileStack(Stack):
    """``Stack``'s CLI and deal helpers for HubSpot, with Worktile in place of PingCode."""

    def __init__(self, tmp_path: Path, writes: bool = False, mapping: str = "hubspot-worktile"):
        self.crm = DEMO_CRMS["hubspot"]()
        self.worktile = WorktileEmulator(realtime=True)
        self.worktile.config["task_writes"] = "on" if writes else "off"
        self.config = tmp_path / "dealsync.toml"
        section = self.crm.section.format(crm=self.crm.instance,
                                          **{self.crm.url_key: self.crm.start()})
        self.config.write_text("[state]\npath = \"state.db\"\n\n" + section + TRACKER_AND_PAIR.format(
            worktile=self.worktile.start(), writes=str(writes).lower(), crm=self.crm.instance,
            mapping=mapping), encoding="utf-8")
        self.mapping = load_mapping(mapping, tmp_path)
        self.view = deal_view(self.mapping)
        self.side = SIDES["hubspot"](self.crm.emulator)
        self.hubspot = self.crm.emulator

    def item(self, key: str) -> dict:
        return self.worktile.task(key)

    def later(self) -> None:
        for emulator in (self.hubspot, self.worktile):
            emulator.clock.advance(5000)

    def stop(self) -> None:
        self.hubspot.stop()
        self.worktile.stop()

    def calls(self) -> tuple[Counter, Counter]:
        """Each emulator's calls per endpoint so far (a copy)."""
        return Counter(self.hubspot.calls), Counter(self.worktile.calls)

    def writes(self) -> list[dict]:
        """Every write the Worktile emulator answered, besides tokens and probes."""
        return [r for r in self.worktile.log if r["method"] in ("PUT", "PATCH", "POST")
                and f"{r['method']} {r['path']}" not in PROBES
                and not r["path"].endswith("tenant-access-token")]


def _environment(monkeypatch, tmp_path) -> None:
    for name, value in {**DEMO_CRMS["hubspot"]().secrets(),
                        env_var("wt", "client_id"): DEMO_SECRETS["client_id"],
                        env_var("wt", "client_secret"): DEMO_SECRETS["client_secret"]}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEALSYNC_HOME", str(tmp_path / "home"))


def _stack(tmp_path, monkeypatch, writes: bool) -> WorktileStack:
    _environment(monkeypatch, tmp_path)
    made = WorktileStack(tmp_path, writes=writes)
    made.prepare()
    return made


@pytest.fixture(params=[False, True], ids=["writes-off", "writes-on"])
def stack(request, tmp_path, monkeypatch):
    made = _stack(tmp_path, monkeypatch, request.param)
    yield made
    made.stop()


@pytest.fixture
def off(tmp_path, monkeypatch):
    made = _stack(tmp_path, monkeypatch, False)
    yield made
    made.stop()


@pytest.fixture
def on(tmp_path, monkeypatch):
    made = _stack(tmp_path, monkeypatch, True)
    yield made
    made.stop()


def difference(after: Counter, before: Counter) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def test_create_link_worktile_to_deals_and_an_echo_free_quiet_run(stack):
    assert "all pairs check out" in stack.cli("check")
    new = stack.deal("Acme rollout", "Bulk import API\nUp to 5,000 rows", amount=120000)
    first = stack.deal("Acme EU", "DS-1", amount=80000)
    second = stack.deal("Acme APAC", "DS-1", amount=20000)

    summary = stack.sync()
    assert summary["counts"]["created"] == 1 and summary["counts"]["linked"] == 2
    created_key = stack.shown(new, "requirement")
    created = stack.item(created_key)
    assert created["title"] == "Bulk import API"
    assert created["task_type"]["name"] == "需求" and created["task_state"]["name"] == "未激活"
    assert "Acme rollout" in created["properties"]["desc"]  # the context, written at creation
    assert created["properties"]["crm_deal"] == f"dealsync:e2e:{new}"
    assert stack.shown(new, "status") == "new"
    # DS-1 is 研发中, 较高, due 2025-03-31 in the emulator's seed: both deals show it
    for deal in (first, second):
        assert (stack.shown(deal, "status"), stack.shown(deal, "priority")) == (
            "in_progress", "high")
        assert stack.shown(deal, "delivery") == "2025-03-31"

    # The PM releases DS-1 and cancels the new one: both states are category 3, told apart
    # by name (docs/worktile.md §6.2).
    stack.worktile.mutate("DS-1", state="已发布", priority="最高")
    stack.worktile.mutate(created_key, state="已取消")
    stack.sync()
    for deal in (first, second):
        assert (stack.shown(deal, "status"), stack.shown(deal, "priority")) == (
            "shipped", "critical")
        assert stack.side.notes(deal)[-1] == (
            "dealsync: DS-1 单点登录（SSO）支持: status is now 已发布 (shipped)")
    assert stack.shown(new, "status") == "wont_do"

    hubspot_before, worktile_before = stack.calls()
    written = len(stack.writes())
    quiet = stack.sync()
    assert quiet["counts"]["updated_crm"] == quiet["counts"]["updated_tracker"] == 0
    assert quiet["counts"]["created"] == quiet["counts"]["linked"] == 0
    assert len(stack.writes()) == written
    hubspot_after, worktile_after = stack.calls()
    # A quiet run on Worktile: one token, the project, one page of the project's tasks (the
    # change scan), and one by-ids read of the tasks that changed within the lookback (both
    # linked tasks did, so the verify slice needs no read of its own). With writes
    # configured, one harmless probe per write endpoint.
    expected = {"POST /open-api/tenant-access-token": 1,
                "GET /open-api/mission/get-projects-by-page": 1,
                "GET /open-api/mission/get-project-tasks-by-page": 1,
                "GET /open-api/mission/get-tasks-by-ids": 1}
    if stack.worktile.config["task_writes"] == "on":
        expected.update(dict.fromkeys(PROBES, 1))
    assert difference(worktile_after, worktile_before) == expected
    assert not [call for call in difference(hubspot_after, hubspot_before)
                if not call.startswith(("GET", "POST /crm/v3/objects/deals/search",
                                        "POST /crm/v3/objects/deals/batch/read",
                                        "POST /crm/v4/associations",
                                        "POST /crm/v3/objects/companies/batch/read"))]

    links = json.loads(stack.cli("links", "--json"))
    assert {(l["deal_id"], l["req_key"]) for l in links} == {
        (new, created_key), (first, "DS-1"), (second, "DS-1")}


def test_with_writes_off_a_deal_side_priority_change_waits_for_a_person(off):
    deal = off.deal("Acme EU", "DS-2")  # DS-2 is 普通 (medium)
    off.sync()
    assert off.shown(deal, "priority") == "medium"
    off.later()
    off.edit(deal, "priority", "最高")
    for _ in range(3):  # listed every run, never sent, never lost
        summary = off.sync()
        assert summary["status"] == "ok" and summary["counts"]["manual_updates"] == 1
        assert summary["manual_updates"][0].startswith(
            "list for a person: set DS-2 priority from 普通 to 最高")
        assert re.search(r"manual update needed since .*: set DS-2 priority from 普通 to 最高 in "
                         rf"the tracker \(deal {deal}\)", off.cli("status"))
        assert off.shown(deal, "priority") == "critical"
        assert off.item("DS-2")["properties"]["priority"]["name"] == "普通"
        assert off.writes() == []  # nothing is sent to Worktile, so nothing is retried
    listed = json.loads(off.cli("status", "--json"))["pairs"][0]["manual_updates"]
    assert [(m["req_key"], m["tracker_field"], m["value"]) for m in listed] == [
        ("DS-2", "priority", "最高")]
    assert [n for n in off.side.notes(deal) if "waits for a manual update" in n] == [
        "dealsync: DS-2 导出 Excel 报表: priority critical waits for a manual update in the "
        "tracker"]  # once, not once per run

    off.worktile.mutate("DS-2", priority="最高")  # a person makes the change in Worktile
    summary = off.sync()
    assert summary["counts"]["manual_updates"] == 0
    assert "manual update needed" not in off.cli("status")
    assert json.loads(off.cli("status", "--json"))["pairs"][0]["manual_updates"] == []
    quiet = off.sync()
    assert quiet["counts"]["updated_crm"] == quiet["counts"]["updated_tracker"] == 0
    assert off.shown(deal, "priority") == "critical"


def test_with_writes_off_a_deal_joining_later_shows_on_the_crm_side_not_in_the_block(off):
    """What README says a PM sees: the block stays as created; links and report show more."""
    first = off.deal("Acme rollout", "Offline sync", amount=50000)
    off.sync()
    key = off.shown(first, "requirement")
    block = off.item(key)["properties"]["desc"]
    second = off.deal("Globex EU", key, amount=70000)
    summary = off.sync()
    assert summary["counts"]["linked"] == 1 and summary["counts"]["failures"] == 0
    assert off.item(key)["properties"]["desc"] == block  # Acme only, 50,000
    assert off.shown(second, "requirement") == key
    assert off.shown(second, "status") == "new"
    assert {(l["deal_id"], l["req_key"]) for l in json.loads(off.cli("links", "--json"))} == {
        (first, key), (second, key)}
    assert re.search(rf"{key}\s+120,000\s+2/2", off.cli("report"))


def test_with_writes_on_deal_side_changes_reach_worktile_too(on):
    new = on.deal("Acme rollout", "Offline sync")
    first = on.deal("Acme EU", "DS-1", amount=80000)
    on.sync()
    key = on.shown(new, "requirement")
    second = on.deal("Acme APAC", "DS-1", amount=20000)  # joins later
    on.later()
    on.edit(first, "priority", "最高")
    on.edit(new, "status", "研发中")
    summary = on.sync()
    assert summary["counts"]["manual_updates"] == 0 and summary["counts"]["failures"] == 0
    assert on.item("DS-1")["properties"]["priority"]["name"] == "最高"
    for deal in (first, second):
        assert on.shown(deal, "priority") == "critical"
    assert on.item(key)["task_state"]["name"] == "研发中"
    assert [h["to"]["name"] for h in on.worktile.transitions(key)] == ["设计中", "研发中"]
    task = on.item("DS-1")
    block = task["properties"]["desc"]
    assert "Acme APAC" in block and "Acme EU" in block  # the block follows the deals
    assert block.startswith("支持 SAML 2.0 与 OIDC 单点登录。")  # the PM's text is kept
    assert task["properties"]["assignee"] and task["properties"]["due"]["date"]  # nothing lost
    quiet = on.sync()
    assert quiet["counts"]["updated_crm"] == quiet["counts"]["updated_tracker"] == 0


def test_check_refuses_a_field_worktile_cannot_write_unless_it_is_manual(off, tmp_path):
    shipped = resolve_path("hubspot-worktile").read_text(encoding="utf-8")
    (tmp_path / "strict.toml").write_text(shipped.replace("manual = true", "manual = false"),
                                          encoding="utf-8")
    config = off.config.read_text(encoding="utf-8")
    off.config.write_text(config.replace('mapping = "hubspot-worktile"',
                                         'mapping = "./strict.toml"'), encoding="utf-8")
    result = CliRunner().invoke(cli, ["-c", str(off.config), "check"])
    assert result.exit_code == 2
    for field in ("status", "priority"):
        assert (f"fields.{field}: direction 'both', but the worktile tracker 'wt' cannot change "
                f"'{field}' after creation") in result.output
