"""End to end: the CLI against a CRM emulator and the PingCode emulator over HTTP with the CRM's
shipped mapping, for every CRM of ``sync.demo.DEMO_CRMS`` (HubSpot and Salesforce).

Covers create, link by key, status and priority both ways (through every deal of a
requirement), the deal-context block, an echo-free second run, and a conflict under each policy.
The tests speak PingCode's values; the mapping says what each CRM shows for them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from plugins.pingcode.emulator import PingCodeEmulator
from sync.cli import cli
from sync.config import load_config
from sync.demo import DEMO_CRMS, config_template, deal_view, secrets
from sync.mapping import load_mapping, resolve_path

COMPANY = "Acme <Holdings>"


class HubSpotSide:
    """What these tests do in HubSpot."""

    def __init__(self, emu):
        self.emu = emu
        self.company = emu.create_company({"name": COMPANY}).id

    def deal(self, name: str, request: str, amount: int, request_field: str) -> str:
        made = self.emu.seed(deals=[{"properties": {
            "dealname": name, "dealstage": "qualifiedtobuy", "amount": str(amount),
            request_field: request}, "companies": [self.company]}])
        return made["deals"][0]

    def props(self, deal_id: str) -> dict:
        return self.emu.deal(deal_id)["properties"]

    def edit(self, deal_id: str, values: dict) -> None:
        self.emu.mutate(deal_id, values)

    def remove(self, deal_id: str) -> None:
        self.emu.archive([deal_id])

    def rename_company(self, name: str) -> None:
        self.emu.mutate_company(self.company, {"name": name})

    def notes(self, deal_id: str) -> list[str] | None:
        return [n["properties"]["hs_note_body"] for n in self.emu.notes_for(deal_id)]


class SalesforceSide:
    """What these tests do in Salesforce (docs/salesforce.md)."""

    def __init__(self, emu):
        self.emu = emu
        self.company = emu.create_account(COMPANY)

    def deal(self, name: str, request: str, amount: int, request_field: str) -> str:
        made = self.emu.seed(opportunities=[{"fields": {
            "Name": name, "StageName": "Qualification", "Amount": float(amount),
            "Priority__c": None, request_field: request}, "account": self.company}])
        return made["opportunities"][0]

    def props(self, deal_id: str) -> dict:
        return self.emu.record(deal_id)

    def edit(self, deal_id: str, values: dict) -> None:
        self.emu.mutate(deal_id, values, actor="user")

    def remove(self, deal_id: str) -> None:
        self.emu.delete([deal_id])  # the recycle bin

    def rename_company(self, name: str) -> None:
        self.emu.mutate(self.company, {"Name": name}, obj="Account")

    def notes(self, deal_id: str) -> list[str] | None:
        """The notes on the opportunity's timeline: its completed Tasks
        (docs/salesforce.md §11), oldest first."""
        tasks = self.emu.tasks(deal_id)
        assert all(t["Status"] == "Completed" and t["IsClosed"] for t in tasks)
        return [t["Description"] for t in tasks]


SIDES = {"hubspot": HubSpotSide, "salesforce": SalesforceSide}


class Stack:
    def __init__(self, tmp_path: Path, crm: str = "hubspot", mapping: str | None = None):
        self.crm = DEMO_CRMS[crm]()
        self.pingcode = PingCodeEmulator(realtime=True)
        self.config = tmp_path / "dealsync.toml"
        text = config_template(self.crm).format(
            **{self.crm.url_key: self.crm.start()}, pingcode=self.pingcode.start(),
            crm=self.crm.instance, tracker="demo-pingcode", pair="e2e")
        self.config.write_text(text.replace(f'mapping = "{self.crm.mapping}"',
                                            f'mapping = "{mapping or self.crm.mapping}"'))
        self.mapping = load_mapping(mapping or self.crm.mapping, tmp_path)
        self.view = deal_view(self.mapping)
        self.side = SIDES[crm](self.crm.emulator)

    def prepare(self) -> None:
        """The CRM fields the mapping names: made by an admin where the API cannot make them
        (Salesforce), then by `check --fix`."""
        self.crm.prepare(load_config(self.config).pairs["e2e"])
        self.cli("check", "--fix")

    def cli(self, *args: str, code: int = 0) -> str:
        result = CliRunner().invoke(cli, ["-c", str(self.config), *args], catch_exceptions=False)
        assert result.exit_code == code, result.output + result.stderr
        return result.stdout

    def sync(self) -> dict:
        return json.loads(self.cli("sync", "--json"))["pairs"][0]

    def deal(self, name: str, request: str, amount: int = 1000) -> str:
        return self.side.deal(name, request, amount, self.mapping.request_field)

    def shown(self, deal_id: str, what: str):
        """What the deal shows for ``what`` (requirement, status, priority, delivery)."""
        return self.side.props(deal_id).get(self.view[what])

    def value(self, field: str, tracker_value: str) -> str:
        """The CRM's word for a tracker value, through the mapping's value table."""
        return next(f for f in self.mapping.fields if f.name == field).to_crm(tracker_value)

    def edit(self, deal_id: str, field: str, tracker_value: str) -> None:
        """A rep sets ``field`` on the deal to what stands for ``tracker_value``."""
        self.side.edit(deal_id, {self.view[field]: self.value(field, tracker_value)})

    def item(self, key: str) -> dict:
        return self.pingcode.item(key)

    def later(self) -> None:
        """Move both services' clocks on, so the next edit is unambiguously newer."""
        for emulator in (self.crm.emulator, self.pingcode):
            emulator.clock.advance(5000)

    def stop(self) -> None:
        self.crm.emulator.stop()
        self.pingcode.stop()


def _environment(monkeypatch, tmp_path: Path, crm: str) -> None:
    for name, value in secrets(DEMO_CRMS[crm]()).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEALSYNC_HOME", str(tmp_path / "home"))


@pytest.fixture(params=sorted(DEMO_CRMS))
def stack(request, tmp_path, monkeypatch):
    _environment(monkeypatch, tmp_path, request.param)
    made = Stack(tmp_path, request.param)
    made.prepare()
    yield made
    made.stop()


def test_create_link_mirror_context_and_echo_free(stack):
    assert "all pairs check out" in stack.cli("check")
    new = stack.deal("Acme rollout", "Bulk import API\nUp to 5,000 rows <script>x()</script>",
                     amount=120000)
    first = stack.deal("Acme EU", "SCR-1", amount=80000)
    second = stack.deal("Acme APAC", "SCR-1", amount=20000)

    summary = stack.sync()
    assert summary["counts"]["created"] == 1 and summary["counts"]["linked"] == 2
    created_key = stack.shown(new, "requirement")
    created = stack.item(created_key)
    assert created["title"] == "Bulk import API"
    assert "&lt;script&gt;x()&lt;/script&gt;" in created["description"]
    assert "<script>" not in created["description"]
    assert stack.shown(new, "status") == stack.value("status", "新建")
    # SCR-1 is 已计划 with priority 高 in the emulator's seed: both deals show it
    for deal in (first, second):
        assert stack.shown(deal, "status") == stack.value("status", "已计划")
        assert stack.shown(deal, "priority") == stack.value("priority", "高")
        assert stack.shown(deal, "delivery").startswith("v2.3")
    block = stack.item("SCR-1")["description"]
    assert block.startswith("<p>支持 SAML 2.0 与 OIDC 单点登录。</p>")  # the PM's text stays
    assert "Acme EU" in block and "Acme APAC" in block and "Acme &lt;Holdings&gt;" in block
    # the shipped mapping writes the block in Simplified Chinese ([context] language)
    assert "进行中商机金额合计：<strong>100,000</strong>，共 2 个进行中的商机" in block

    # PM moves SCR-1 two transitions on; sales raises priority on one of its deals.
    stack.pingcode.mutate("SCR-1", state="已完成")
    stack.edit(first, "priority", "最高")
    summary = stack.sync()
    assert stack.item("SCR-1")["priority"]["name"] == "最高"
    shipped = stack.value("status", "已完成")
    for deal in (first, second):
        assert stack.shown(deal, "status") == shipped
        assert stack.shown(deal, "priority") == stack.value("priority", "最高")
        notes = stack.side.notes(deal)
        if notes is not None:  # a CRM whose mapping asks for notes
            assert notes[-1] == \
                f"dealsync：SCR-1 单点登录（SSO）支持：状态已变为 已完成（{shipped}）"

    # Sales moves the created requirement through the workflow from the deal.
    stack.edit(new, "status", "已计划")
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


@pytest.mark.parametrize("crm", sorted(DEMO_CRMS))
@pytest.mark.parametrize("policy", ["crm", "tracker", "newest", "ask"])
def test_conflict_under_each_policy(tmp_path, monkeypatch, policy, crm):
    shipped = resolve_path(DEMO_CRMS[crm].mapping).read_text(encoding="utf-8")
    custom = re.sub(r'(\[fields\.priority\][^\[]*?conflict = )"newest"', rf'\1"{policy}"',
                    shipped, flags=re.S)
    assert f'conflict = "{policy}"' in custom
    (tmp_path / "mapping.toml").write_text(custom, encoding="utf-8")
    _environment(monkeypatch, tmp_path, crm)
    stack = Stack(tmp_path, crm, mapping="./mapping.toml")
    try:
        stack.prepare()
        deal = stack.deal("Acme EU", "SCR-1")
        stack.sync()
        stack.pingcode.mutate("SCR-1", priority="低")  # the PM first...
        stack.later()
        stack.edit(deal, "priority", "最高")  # ...then the rep
        stack.sync()
        item, shown = stack.item("SCR-1")["priority"]["name"], stack.shown(deal, "priority")
        conflicts = json.loads(stack.cli("conflicts", "--all", "--json"))
        assert len(conflicts) == 1
        assert conflicts[0]["tracker_value"] == "低"
        assert conflicts[0]["crm_values"] == [stack.value("priority", "最高")]
        expected = {"crm": ("最高", "最高"), "tracker": ("低", "低"),
                    "newest": ("最高", "最高"), "ask": ("低", "最高")}[policy]
        assert (item, shown) == (expected[0], stack.value("priority", expected[1]))
        if policy == "ask":
            assert "SCR-1 priority" in stack.cli("conflicts")
            stack.cli("conflicts", "resolve", str(conflicts[0]["id"]), "--take", "tracker")
            stack.sync()
            assert stack.shown(deal, "priority") == stack.value("priority", "低")
            assert stack.cli("conflicts").strip() == "no open conflicts"
        quiet = stack.sync()
        assert quiet["counts"]["updated_crm"] == quiet["counts"]["updated_tracker"] == 0
    finally:
        stack.stop()


def test_archived_deal_is_flagged_and_company_rename_reaches_the_requirement(stack):
    kept = stack.deal("Acme EU", "SCR-1", amount=80000)
    archived = stack.deal("Acme APAC", "SCR-1", amount=20000)
    stack.sync()
    stack.side.remove(archived)
    stack.side.rename_company("Acme Group")
    summary = stack.sync()
    assert summary["counts"]["orphaned"] == 1
    block = stack.item("SCR-1")["description"]
    assert "Acme APAC</a>（已从 CRM 中移除）" in block
    assert "Acme EU</a></td><td>Acme Group</td>" in block  # re-read: the new name
    assert "Acme APAC</a>（已从 CRM 中移除）</td><td>Acme &lt;Holdings&gt;" in block  # last known
    assert "进行中商机金额合计：<strong>80,000</strong>，共 1 个进行中的商机" in block
    assert "orphaned: deal " + archived in stack.cli("status")
    assert stack.shown(kept, "requirement") == "SCR-1"


def test_salesforce_check_names_missing_fields_and_fix_prints_the_steps(tmp_path, monkeypatch):
    """Salesforce's REST API cannot create fields (docs/salesforce.md §7): `check` names each
    missing one with its type and picklist values, `check --fix` prints the steps, and once an
    admin has followed them the pair checks out."""
    _environment(monkeypatch, tmp_path, "salesforce")
    stack = Stack(tmp_path, "salesforce")
    try:
        org = stack.crm.emulator
        fields = dict(org.config["custom_fields"]["Opportunity"])
        del fields["PingCode_Status__c"]  # the emulator's org has it as text; this one lacks it
        org.configure(custom_fields={"Opportunity": fields})

        def check(*args: str) -> str:
            result = CliRunner().invoke(cli, ["-c", str(stack.config), "check", *args])
            assert result.exit_code == 2, result.output
            return result.output

        out = check()
        statuses = "New, In Review, Planned, In Progress, Shipped, Not Now, Won't Do"
        assert (f"CRM property 'PingCode_Status__c' does not exist; it must be a restricted "
                f"picklist with the values {statuses} (dealsync check --fix prints the steps)"
                ) in out
        assert "'Dealsync_Request__c' does not exist; it must be a Text Area (Long) field" in out
        assert "'PingCode_Key__c' does not exist; it must be a Text field of 255 characters" in out
        assert "CRM property 'Priority__c' has no option 'Critical'" in out  # a value, by name
        assert "by hand" not in out

        out = check("--fix")
        assert f"CRM field PingCode_Status__c must be a restricted picklist with the values " \
               f"{statuses}; by hand:" in out
        assert "  1. Setup > Object Manager > Opportunity > Fields & Relationships > New; " \
               "Data Type: Picklist; Next" in out
        assert "CRM field Priority__c must be a picklist that also has the values Critical, " \
               "Minimal; by hand:" in out
        assert "created CRM properties" not in out

        stack.prepare()  # an admin follows the steps
        assert "all pairs check out" in stack.cli("check")
    finally:
        stack.stop()
