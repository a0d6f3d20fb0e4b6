"""End to end: the CLI against both emulators over HTTP with the shipped mapping.

Covers create, link by key, status and priority both ways (through every deal of a
requirement), the deal-context block, an echo-free second run, and a conflict under each policy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from plugins.hubspot.emulator import HubSpotEmulator
from plugins.pingcode.emulator import PingCodeEmulator
from sync.cli import cli
from sync.demo import CONFIG_TEMPLATE, secrets
from sync.mapping import resolve_path


class Stack:
    def __init__(self, tmp_path: Path, mapping: str = "hubspot-pingcode"):
        self.hubspot = HubSpotEmulator(realtime=True)
        self.pingcode = PingCodeEmulator(realtime=True)
        self.config = tmp_path / "dealsync.toml"
        text = CONFIG_TEMPLATE.format(hubspot=self.hubspot.start(), pingcode=self.pingcode.start(),
                                      crm="demo-hubspot", tracker="demo-pingcode", pair="e2e")
        self.config.write_text(text.replace('mapping = "hubspot-pingcode"',
                                            f'mapping = "{mapping}"'))
        self.company = self.hubspot.create_company({"name": "Acme <Holdings>"}).id

    def cli(self, *args: str, code: int = 0) -> str:
        result = CliRunner().invoke(cli, ["-c", str(self.config), *args], catch_exceptions=False)
        assert result.exit_code == code, result.output + result.stderr
        return result.stdout

    def sync(self) -> dict:
        return json.loads(self.cli("sync", "--json"))["pairs"][0]

    def deal(self, name: str, request: str, amount: str = "1000") -> str:
        made = self.hubspot.seed(deals=[{"properties": {
            "dealname": name, "dealstage": "qualifiedtobuy", "amount": amount,
            "dealsync_request": request}, "companies": [self.company]}])
        return made["deals"][0]

    def props(self, deal_id: str) -> dict:
        return self.hubspot.deal(deal_id)["properties"]

    def item(self, key: str) -> dict:
        return self.pingcode.item(key)

    def later(self) -> None:
        """Move both services' clocks on, so the next edit is unambiguously newer."""
        for emulator in (self.hubspot, self.pingcode):
            emulator.clock.advance(5000)

    def stop(self) -> None:
        self.hubspot.stop()
        self.pingcode.stop()


@pytest.fixture
def stack(tmp_path, monkeypatch):
    for name, value in secrets().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEALSYNC_HOME", str(tmp_path / "home"))
    made = Stack(tmp_path)
    made.cli("check", "--fix")
    yield made
    made.stop()


def test_create_link_mirror_context_and_echo_free(stack):
    assert "all pairs check out" in stack.cli("check")
    new = stack.deal("Acme rollout", "Bulk import API\nUp to 5,000 rows <script>x()</script>",
                     amount="120000")
    first = stack.deal("Acme EU", "SCR-1", amount="80000")
    second = stack.deal("Acme APAC", "SCR-1", amount="20000")

    summary = stack.sync()
    assert summary["counts"]["created"] == 1 and summary["counts"]["linked"] == 2
    created_key = stack.props(new)["dealsync_requirement"]
    created = stack.item(created_key)
    assert created["title"] == "Bulk import API"
    assert "&lt;script&gt;x()&lt;/script&gt;" in created["description"]
    assert "<script>" not in created["description"]
    assert stack.props(new)["dealsync_status"] == "new"
    # SCR-1 is 已计划 with priority 高 in the emulator's seed: both deals show it
    for deal in (first, second):
        assert stack.props(deal)["dealsync_status"] == "planned"
        assert stack.props(deal)["dealsync_priority"] == "high"
        assert stack.props(deal)["dealsync_delivery"].startswith("v2.3")
    block = stack.item("SCR-1")["description"]
    assert block.startswith("<p>支持 SAML 2.0 与 OIDC 单点登录。</p>")  # the PM's text stays
    assert "Acme EU" in block and "Acme APAC" in block and "Acme &lt;Holdings&gt;" in block
    assert "Open pipeline: <strong>100,000</strong> across 2 open deals" in block

    # PM moves SCR-1 two transitions on; sales raises priority on one of its deals.
    stack.pingcode.mutate("SCR-1", state="已完成")
    stack.hubspot.mutate(first, {"dealsync_priority": "critical"})
    summary = stack.sync()
    assert stack.item("SCR-1")["priority"]["name"] == "最高"
    for deal in (first, second):
        assert stack.props(deal)["dealsync_status"] == "shipped"
        assert stack.props(deal)["dealsync_priority"] == "critical"
        notes = [n["properties"]["hs_note_body"] for n in stack.hubspot.notes_for(deal)]
        assert notes[-1] == "dealsync: SCR-1 单点登录（SSO）支持: status is now 已完成 (shipped)"

    # Sales moves the created requirement through the workflow from the deal.
    stack.hubspot.mutate(new, {"dealsync_status": "planned"})
    stack.sync()
    assert stack.item(created_key)["state"]["name"] == "已计划"

    quiet = stack.sync()
    assert quiet["counts"]["updated_crm"] == quiet["counts"]["updated_tracker"] == 0
    assert quiet["counts"]["created"] == quiet["counts"]["linked"] == 0

    status = stack.cli("status")
    assert "e2e: 3 links, 0 queued failures, 0 open conflicts" in status
    links = json.loads(stack.cli("links", "--json"))
    assert {(l["deal_id"], l["req_key"]) for l in links} == {
        (new, created_key), (first, "SCR-1"), (second, "SCR-1")}
    assert stack.cli("conflicts").strip() == "no open conflicts"


@pytest.mark.parametrize("policy", ["crm", "tracker", "newest", "ask"])
def test_conflict_under_each_policy(tmp_path, monkeypatch, policy):
    shipped = resolve_path("hubspot-pingcode").read_text(encoding="utf-8")
    custom = re.sub(r'(\[fields\.priority\][^\[]*?conflict = )"newest"', rf'\1"{policy}"',
                    shipped, flags=re.S)
    assert f'conflict = "{policy}"' in custom
    (tmp_path / "mapping.toml").write_text(custom, encoding="utf-8")
    for name, value in secrets().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEALSYNC_HOME", str(tmp_path / "home"))
    stack = Stack(tmp_path, mapping="./mapping.toml")
    try:
        stack.cli("check", "--fix")
        deal = stack.deal("Acme EU", "SCR-1")
        stack.sync()
        stack.pingcode.mutate("SCR-1", priority="低")  # the PM first...
        stack.later()
        stack.hubspot.mutate(deal, {"dealsync_priority": "critical"})  # ...then the rep
        stack.sync()
        item, props = stack.item("SCR-1")["priority"]["name"], stack.props(deal)
        conflicts = json.loads(stack.cli("conflicts", "--all", "--json"))
        assert len(conflicts) == 1
        assert conflicts[0]["tracker_value"] == "低" and conflicts[0]["crm_values"] == ["critical"]
        expected = {"crm": ("最高", "critical"), "tracker": ("低", "low"),
                    "newest": ("最高", "critical"), "ask": ("低", "critical")}[policy]
        assert (item, props["dealsync_priority"]) == expected
        if policy == "ask":
            assert "SCR-1 priority" in stack.cli("conflicts")
            stack.cli("conflicts", "resolve", str(conflicts[0]["id"]), "--take", "tracker")
            stack.sync()
            assert stack.props(deal)["dealsync_priority"] == "low"
            assert stack.cli("conflicts").strip() == "no open conflicts"
        quiet = stack.sync()
        assert quiet["counts"]["updated_crm"] == quiet["counts"]["updated_tracker"] == 0
    finally:
        stack.stop()


def test_archived_deal_is_flagged_and_company_rename_reaches_the_requirement(stack):
    kept = stack.deal("Acme EU", "SCR-1", amount="80000")
    archived = stack.deal("Acme APAC", "SCR-1", amount="20000")
    stack.sync()
    stack.hubspot.archive([archived])
    stack.hubspot.mutate_company(stack.company, {"name": "Acme Group"})
    summary = stack.sync()
    assert summary["counts"]["orphaned"] == 1
    block = stack.item("SCR-1")["description"]
    assert "Acme APAC</a> (gone from the CRM)" in block
    assert "Acme EU</a></td><td>Acme Group</td>" in block  # re-read: the new name
    assert "Acme APAC</a> (gone from the CRM)</td><td>Acme &lt;Holdings&gt;" in block  # last known
    assert "Open pipeline: <strong>80,000</strong> across 1 open deal" in block
    assert "orphaned: deal " + archived in stack.cli("status")
    assert stack.props(kept)["dealsync_requirement"] == "SCR-1"
