"""``dealsync demo``: the main job on its embedded default, in about a minute.

It starts a CRM emulator (HubSpot by default, Salesforce with ``--crm salesforce``) and a
tracker emulator (PingCode by default, Worktile with ``--tracker worktile``) on free loopback
ports, seeds a believable company (deals across a dozen customers, several asking for the same
feature, some in Chinese), writes a real ``dealsync.toml`` into a folder, and runs real syncs
over HTTP with the shipped mapping of that CRM and tracker. Then it plays a working day on both
sides, syncs again, shows what moved where, and ends with the pipeline report. Where the
tracker's API cannot change a requirement after creating it (Worktile, docs/engine.md §8), the
day also shows the manual-update list at work: the reps' changes listed for a person, the list
kept by a quiet run, then the PM making the listed changes and a last sync taking them off.

The story is the same for every CRM and tracker; what differs (the emulator, its configuration
section, credentials, seeding and editing deals or requirements) is a ``DemoCRM`` in
``DEMO_CRMS`` and a ``DemoTracker`` in ``DEMO_TRACKERS``. Field names and values come from the
mapping. Nothing here is special-cased for the demo inside the engine or the connectors: the
demo drives them exactly as ``dealsync sync`` does, and reads its "before and after" from the
emulators.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import context
from .check import check_pair, field_roles, field_specs
from .config import Config, PairConfig, load_config
from .engine import Options, run_pair
from .errors import ConfigError
from .files import write_private
from .mapping import Mapping
from .progress import end_progress
from .report import format_report, pipeline_report
from .secrets import env_var
from .state import StateStore
from .words import conflict_words, counted, manual_update
from .words import shown as as_text

CRM_NAME = "demo-hubspot"
TRACKER_NAME = "demo-pingcode"
PAIR_NAME = "demo"

COMPANIES = [
    ("Acme Manufacturing", "acme.example"), ("Globex Logistics", "globex.example"),
    ("Initech Software", "initech.example"), ("Umbrella Health", "umbrella.example"),
    ("Stark Energy", "stark.example"), ("Wayne Retail", "wayne.example"),
    ("华为云合作伙伴", "partner.example.cn"), ("上海明远科技", "mingyuan.example.cn"),
    ("深圳智联物流", "zhilian.example.cn"), ("北京数澜信息", "shulan.example.cn"),
    ("Hooli Media", "hooli.example"), ("Vandelay Imports", "vandelay.example"),
]
OWNERS = [("amy@example.com", "Amy", "Chen"), ("ben@example.com", "Ben", "Ortiz"),
          ("chao@example.com", "Chao", "Li"), ("dana@example.com", "Dana", "Weiss")]

# The requirements the story names, in the tracker before the first sync: how ``DEALS`` names
# them, and their titles. A ``DemoTracker`` seeds them (SSO planned, the Excel export new, the
# offline mode in progress) and says which key each one got.
STORY_REQUIREMENTS = {"sso": "单点登录（SSO）支持", "excel": "导出 Excel 报表",
                      "offline": "移动端离线模式"}

# (company index, deal name, stage, amount, request). A request that names a key ({sso} is
# filled in with the tracker's key, such as SCR-1), alone or in a sentence, links that
# requirement and creates nothing; otherwise its first line is a new requirement's title, and
# identical titles share one requirement.
DEALS = [
    (0, "Acme plant rollout", "contractsent", 180000, "{sso}"),
    (1, "Globex EU expansion", "qualifiedtobuy", 95000, "{sso}"),
    (2, "Initech renewal", "decisionmakerboughtin", 42000, "{sso}"),
    (6, "华为云 渠道合作 2025", "presentationscheduled", 260000, "{sso}"),
    (7, "明远科技 全员部署", "appointmentscheduled", 73000, "{offline}"),
    (8, "智联物流 司机端", "qualifiedtobuy", 128000, "{offline}"),
    (4, "Stark field service", "contractsent", 56000, "{offline}"),
    (3, "Umbrella clinics pilot", "appointmentscheduled", 38000,
     "Audit log export\nCompliance needs every change exported monthly to their SIEM."),
    (9, "数澜 数据中台对接", "decisionmakerboughtin", 150000,
     "开放 API 批量写入\n需要支持每分钟上千条记录的批量导入，并返回逐条结果。"),
    (5, "Wayne stores POS", "presentationscheduled", 67000,
     "Custom fields on invoices\nPO number and cost center on every invoice PDF."),
    (10, "Hooli ads team", "qualifiedtobuy", 45000,
     "Dark mode\nTheir designers work at night; <b>please</b> no more white screens."),
    (11, "Vandelay import desk", "appointmentscheduled", 22000,
     "Same as {excel}, but for the pipeline view"),
    (4, "Stark control room", "qualifiedtobuy", 51000,
     "dark mode\nOperators in the control room asked for it too."),
    (0, "Acme spare parts portal", "closedwon", 30000, "{excel}"),
    (1, "Globex tender (lost)", "closedlost", 80000, "{excel}"),
]


def story_deals(keys: dict[str, str]) -> list[tuple[int, str, str, int, str]]:
    """``DEALS`` with the requests naming the tracker's ``keys`` (see ``STORY_REQUIREMENTS``)."""
    return [(company, name, stage, amount, request.format_map(keys))
            for company, name, stage, amount, request in DEALS]


class DemoCRM:
    """What the story needs from one CRM's emulator: start it, name it in ``dealsync.toml``,
    give the credentials it accepts, make dealsync's deal fields exist, seed and edit deals,
    and show a deal's fields. One subclass per CRM in ``DEMO_CRMS``."""

    label = ""  # "HubSpot", in the output
    kind = ""  # the connector type, and the first half of the shipped mapping's name
    instance = ""  # the [crm.NAME] of the configuration written
    mapping = ""  # the shipped mapping with PingCode (``mapping_name`` for any tracker)
    deals_word, companies_word = "deals", "companies"
    name_field = ""  # the deal property holding the deal's name
    url_key = ""  # the placeholder of the emulator's URL in ``section``
    section = ""  # the [crm.NAME] section of dealsync.toml
    #: modified times kept to the second: a later edit must fall in a later second
    whole_seconds = False

    def __init__(self) -> None:
        self.emulator: Any = None
        self.request_field = ""

    def start(self) -> str:
        raise NotImplementedError

    def secrets(self) -> dict[str, str]:
        """The emulator's default credentials as the environment variables of ``instance``."""
        raise NotImplementedError

    def prepare(self, pair_config: PairConfig) -> None:
        """Whatever must happen before ``dealsync check --fix`` finds every field in place."""
        self.request_field = pair_config.mapping.request_field

    def seed(self, deals: list[tuple[int, str, str, int, str]]) -> list[str]:
        """``COMPANIES``, ``OWNERS`` and ``deals`` (``story_deals``); returns the deal ids in
        that order."""
        raise NotImplementedError

    def add_deal(self, name: str, company: str, stage: str, amount: int, close_date: str,
                 request: str, owner: int) -> str:
        raise NotImplementedError

    def properties(self, deal_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def mutate(self, deal_id: str, values: dict[str, str]) -> None:
        """An edit a sales rep makes in the CRM."""
        raise NotImplementedError


def close_date(n: int) -> str:
    return f"2025-0{3 + n % 6}-{10 + n % 18:02d}"


class HubSpotDemo(DemoCRM):
    label, kind, instance, mapping = "HubSpot", "hubspot", CRM_NAME, "hubspot-pingcode"
    name_field, url_key = "dealname", "hubspot"
    section = """\
[crm.{crm}]
type = "hubspot"
base_url = "{hubspot}"
portal_id = "4242"
lookback_minutes = 10
"""

    def start(self) -> str:
        from plugins.hubspot.emulator import HubSpotEmulator

        self.emulator = HubSpotEmulator(realtime=True)
        return self.emulator.start()

    def secrets(self) -> dict[str, str]:
        from plugins.hubspot.emulator import PRIVATE_TOKEN

        return {env_var(self.instance, "token"): PRIVATE_TOKEN}

    def seed(self, deals: list[tuple[int, str, str, int, str]]) -> list[str]:
        made = self.emulator.seed(
            companies=[{"name": name, "domain": domain} for name, domain in COMPANIES],
            owners=[{"email": e, "firstName": f, "lastName": l} for e, f, l in OWNERS],
            deals=[{"properties": {"dealname": name, "dealstage": stage, "amount": str(amount),
                                   "closedate": f"{close_date(n)}T00:00:00.000Z",
                                   self.request_field: request},
                    "companies": [company], "owner": n % len(OWNERS)}
                   for n, (company, name, stage, amount, request) in enumerate(deals)])
        return made["deals"]

    def add_deal(self, name: str, company: str, stage: str, amount: int, close_date: str,
                 request: str, owner: int) -> str:
        hs = self.emulator
        company_id = next(c for c, r in hs.companies.items() if r.props.get("name") == company)
        made = hs.seed(deals=[{"properties": {
            "dealname": name, "dealstage": stage, "amount": str(amount),
            "closedate": f"{close_date}T00:00:00.000Z", self.request_field: request},
            "companies": [company_id], "owner": hs.owners[owner]["id"]}])
        return made["deals"][0]

    def properties(self, deal_id: str) -> dict[str, Any]:
        return self.emulator.deal(deal_id)["properties"]

    def mutate(self, deal_id: str, values: dict[str, str]) -> None:
        self.emulator.mutate(deal_id, values)


# The demo's deals carry HubSpot's stage ids; these are a new Salesforce org's stages
# (docs/salesforce.md §2).
SALESFORCE_STAGES = {"appointmentscheduled": "Prospecting", "qualifiedtobuy": "Qualification",
                     "presentationscheduled": "Value Proposition",
                     "decisionmakerboughtin": "Id. Decision Makers",
                     "contractsent": "Negotiation/Review", "closedwon": "Closed Won",
                     "closedlost": "Closed Lost"}


class SalesforceDemo(DemoCRM):
    label, kind, instance = "Salesforce", "salesforce", "demo-salesforce"
    mapping = "salesforce-pingcode"
    deals_word, companies_word = "opportunities", "accounts"
    name_field, url_key = "Name", "salesforce"
    whole_seconds = True  # docs/salesforce.md §2
    section = """\
[crm.{crm}]
type = "salesforce"
login_url = "{salesforce}"
auth = "client_credentials"
lookback_minutes = 10
"""

    def __init__(self) -> None:
        super().__init__()
        self.accounts: dict[str, str] = {}
        self.users: list[str] = []
        self.blank: dict[str, None] = {}

    def start(self) -> str:
        from plugins.salesforce.emulator import SalesforceEmulator

        self.emulator = SalesforceEmulator(realtime=True)
        return self.emulator.start()

    def secrets(self) -> dict[str, str]:
        from plugins.salesforce.testing import EMULATOR_SECRETS

        return {env_var(self.instance, name): EMULATOR_SECRETS[name]
                for name in ("client_id", "client_secret")}

    def prepare(self, pair_config: PairConfig) -> None:
        """Salesforce's API cannot create fields: an admin follows the steps `dealsync check
        --fix` prints, done here to the emulator's org."""
        from plugins.salesforce.testing import create_fields

        super().prepare(pair_config)
        # The emulator makes up values for fields a seed leaves out; the story starts blank.
        self.blank = {fm.crm: None for fm in pair_config.mapping.fields}
        with pair_config.connected() as pair:
            plans = pair.crm.field_plan(field_specs(pair_config.mapping),
                                        field_roles(pair_config.mapping))
        create_fields(self.emulator, plans)

    def seed(self, deals: list[tuple[int, str, str, int, str]]) -> list[str]:
        made = self.emulator.seed(
            accounts=[{"Name": name} for name, _domain in COMPANIES],
            users=[{"Name": f"{f} {l}", "Username": e, "Email": e} for e, f, l in OWNERS],
            opportunities=[{"fields": self._fields(name, stage, amount, close_date(n), request),
                            "account": company, "owner": n % len(OWNERS)}
                           for n, (company, name, stage, amount, request) in enumerate(deals)])
        self.accounts = {name: made["accounts"][n] for n, (name, _) in enumerate(COMPANIES)}
        self.users = made["users"]
        return made["opportunities"]

    def _fields(self, name: str, stage: str, amount: int, close: str,
                request: str) -> dict[str, Any]:
        return {**self.blank, "Name": name, "StageName": SALESFORCE_STAGES[stage],
                "Amount": float(amount), "CloseDate": close, self.request_field: request}

    def add_deal(self, name: str, company: str, stage: str, amount: int, close_date: str,
                 request: str, owner: int) -> str:
        made = self.emulator.seed(opportunities=[{
            "fields": self._fields(name, stage, amount, close_date, request),
            "account": self.accounts[company], "owner": self.users[owner]}])
        return made["opportunities"][0]

    def properties(self, deal_id: str) -> dict[str, Any]:
        return self.emulator.record(deal_id)

    def mutate(self, deal_id: str, values: dict[str, str]) -> None:
        self.emulator.mutate(deal_id, values, actor="user")


DEMO_CRMS: dict[str, type[DemoCRM]] = {"hubspot": HubSpotDemo, "salesforce": SalesforceDemo}


class DemoTracker:
    """What the story needs from one tracker's emulator: start it, name it in
    ``dealsync.toml``, give the credentials it accepts, seed the requirements the story names,
    edit one as a product manager, and show each requirement's state and priority. One
    subclass per tracker in ``DEMO_TRACKERS``."""

    label = ""  # "PingCode", in the output
    kind = ""  # the connector type, and the second half of the shipped mapping's name
    instance = ""  # the [tracker.NAME] of the configuration written
    url_key = ""  # the placeholder of the emulator's URL in ``section``
    section = ""  # the [tracker.NAME] section of dealsync.toml
    #: the states the PM moves the story's requirements to: planned, then in progress
    planned, started = "", ""
    #: the priorities the story uses, highest first: highest, high, low
    priorities = ("", "", "")
    #: False where the API cannot change a requirement after creating it (docs/engine.md §8):
    #: the CRM side's changes are then listed for a person, and the story shows that list
    writes_back = True

    def __init__(self) -> None:
        self.emulator: Any = None

    def start(self) -> str:
        raise NotImplementedError

    def secrets(self) -> dict[str, str]:
        """The emulator's default credentials as the environment variables of ``instance``."""
        raise NotImplementedError

    def seed(self) -> dict[str, str]:
        """Make ``STORY_REQUIREMENTS`` exist as the story starts; returns their keys by the
        names ``DEALS`` uses."""
        by_title = {item["title"]: key for key, item in self.items().items()}
        return {name: by_title[title] for name, title in STORY_REQUIREMENTS.items()}

    def items(self) -> dict[str, dict[str, Any]]:
        """Every requirement, by key: its title, status (state name) and priority name."""
        raise NotImplementedError

    def mutate(self, key: str, status: str | None = None,
               priority: str | None = None) -> list[str]:
        """An edit a product manager makes in the tracker; returns the states the requirement
        passed on the way to ``status``, where the workflow made it walk."""
        raise NotImplementedError


class PingCodeDemo(DemoTracker):
    """The story's requirements are the emulator's own sample project: SCR-1 to SCR-3."""

    label, kind, instance, url_key = "PingCode", "pingcode", TRACKER_NAME, "pingcode"
    planned, started = "已计划", "开发中"
    priorities = ("最高", "高", "低")
    section = """
[tracker.{tracker}]
type = "pingcode"
base_url = "{pingcode}"
project = "SCR"
marker_property = "prop_crm_deal"
"""

    def start(self) -> str:
        from plugins.pingcode.emulator import PingCodeEmulator

        self.emulator = PingCodeEmulator(realtime=True)
        return self.emulator.start()

    def secrets(self) -> dict[str, str]:
        from plugins.pingcode.testing import DEMO_SECRETS

        return {env_var(self.instance, name): DEMO_SECRETS[name]
                for name in ("client_id", "client_secret")}

    def items(self) -> dict[str, dict[str, Any]]:
        return {i["identifier"]: {"title": i["title"], "status": i["state"]["name"],
                                  "priority": (i.get("priority") or {}).get("name")}
                for i in self.emulator.dump_items(False)}

    def mutate(self, key: str, status: str | None = None,
               priority: str | None = None) -> list[str]:
        before = len(self.emulator.transitions(key))
        self.emulator.mutate(key, state=status, priority=priority)
        walked = self.emulator.transitions(key)[before:]
        return [h["to_state"]["name"] for h in walked[:-1]]


# The story's requirements in Worktile, as in PingCode's sample project (the Worktile
# emulator's own sample has SSO in development already, and a bug).
WORKTILE_TASKS = [
    {"title": STORY_REQUIREMENTS["sso"], "state": "设计中", "priority": "较高",
     "assignee": "lina", "due": "2025-03-31", "description": "支持 SAML 2.0 与 OIDC 单点登录。"},
    {"title": STORY_REQUIREMENTS["excel"], "priority": "普通",
     "description": "按月导出销售与回款数据。"},
    {"title": STORY_REQUIREMENTS["offline"], "state": "研发中", "priority": "最高",
     "assignee": "wangwei", "due": "2025-06-15", "description": "弱网环境下可查看与编辑。"},
]


class WorktileDemo(DemoTracker):
    label, kind, instance, url_key = "Worktile", "worktile", "demo-worktile", "worktile"
    planned, started = "设计中", "研发中"
    priorities = ("最高", "较高", "较低")
    writes_back = False  # the emulator serves Worktile's documented API: no task updates
    task_type = "需求"  # the type the connector creates and reads (its default)
    section = """
[tracker.{tracker}]
type = "worktile"
base_url = "{worktile}"
project = "DS"
marker_property = "crm_deal"
"""

    def start(self) -> str:
        from plugins.worktile.emulator import WorktileEmulator

        self.emulator = WorktileEmulator(realtime=True)
        return self.emulator.start()

    def secrets(self) -> dict[str, str]:
        from plugins.worktile.testing import DEMO_SECRETS

        return {env_var(self.instance, name): DEMO_SECRETS[name]
                for name in ("client_id", "client_secret")}

    def seed(self) -> dict[str, str]:
        """Project DS with the emulator's sample configuration and ``WORKTILE_TASKS`` only."""
        from plugins.worktile.emulator import DEFAULT_SEED

        project = {**DEFAULT_SEED["projects"][0], "tasks": WORKTILE_TASKS}
        self.emulator.seed({**DEFAULT_SEED, "apps": [], "projects": [project]}, replace=True)
        return super().seed()

    def items(self) -> dict[str, dict[str, Any]]:
        return {t["identifier"]: {"title": t["title"], "status": t["task_state"]["name"],
                                  "priority": (t["properties"].get("priority") or {}).get("name")}
                for t in self.emulator.dump_tasks()
                if t["task_type"]["name"] == self.task_type and not t["is_archived"]}

    def mutate(self, key: str, status: str | None = None,
               priority: str | None = None) -> list[str]:
        self.emulator.mutate(key, state=status, priority=priority)
        return []  # a person may pick any state of the type


DEMO_TRACKERS: dict[str, type[DemoTracker]] = {"pingcode": PingCodeDemo, "worktile": WorktileDemo}


@dataclass
class DemoWorld:
    crm: DemoCRM
    tracker: DemoTracker
    folder: Path
    config_path: Path
    deal_ids: list[str]
    #: what a person reads on a deal ("requirement", "status", ...) -> the CRM property
    view: dict[str, str] = field(default_factory=dict)
    mapping: Mapping | None = None
    #: the keys of ``STORY_REQUIREMENTS`` in the tracker
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def hubspot(self) -> Any:
        """The HubSpot emulator, in the default demo."""
        if not isinstance(self.crm, HubSpotDemo):
            raise AttributeError(f"this demo runs {self.crm.label}, not HubSpot")
        return self.crm.emulator

    @property
    def pingcode(self) -> Any:
        """The PingCode emulator, in the default demo."""
        if not isinstance(self.tracker, PingCodeDemo):
            raise AttributeError(f"this demo runs {self.tracker.label}, not PingCode")
        return self.tracker.emulator

    def stop(self) -> None:
        self.crm.emulator.stop()
        self.tracker.emulator.stop()


def mapping_name(crm: DemoCRM, tracker: DemoTracker) -> str:
    """The shipped mapping of the demo pair: ``hubspot-pingcode``, ``salesforce-worktile``..."""
    return f"{crm.kind}-{tracker.kind}"


def config_template(crm: DemoCRM, tracker: DemoTracker | None = None) -> str:
    """``dealsync.toml`` for the demo pair, with ``{crm}``, ``{tracker}``, ``{pair}`` and the
    CRM's and the tracker's ``url_key`` (``{pingcode}`` by default) still to fill in."""
    tracker = tracker or PingCodeDemo()
    return (CONFIG_HEAD.replace("{label}", crm.label).replace("{tracker_label}", tracker.label)
            + crm.section + tracker.section
            + PAIR_SECTION.replace("{mapping}", mapping_name(crm, tracker)))


def start(folder: Path, crm: DemoCRM | None = None,
          tracker: DemoTracker | None = None) -> DemoWorld:
    """Start both emulators and write the configuration and its secrets into ``folder``."""
    crm, tracker = crm or HubSpotDemo(), tracker or PingCodeDemo()
    crm_url, tracker_url = crm.start(), tracker.start()
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "dealsync.toml"
    config_path.write_text(config_template(crm, tracker).format(
        **{crm.url_key: crm_url, tracker.url_key: tracker_url}, crm=crm.instance,
        tracker=tracker.instance, pair=PAIR_NAME), encoding="utf-8")
    env = secrets(crm, tracker)
    # credentials, even if only the emulators'
    write_private(folder / "demo.env", "".join(f"export {k}={v}\n" for k, v in env.items()))
    os.environ.update(env)
    return DemoWorld(crm, tracker, folder, config_path, [])


def secrets(crm: DemoCRM | None = None, tracker: DemoTracker | None = None) -> dict[str, str]:
    """The credentials both emulators accept by default (the HubSpot and PingCode demo's unless
    ``crm`` or ``tracker`` says otherwise), as the environment variables a job without a keyring
    uses."""
    return {**(crm or HubSpotDemo()).secrets(), **(tracker or PingCodeDemo()).secrets()}


CONFIG_HEAD = """\
# Written by `dealsync demo`: a {label} emulator and a {tracker_label} emulator on this machine.
# Secrets come from the environment: `source demo.env` in this folder.

[state]
path = "state.db"

"""
PAIR_SECTION = """
[pair.{pair}]
crm = "{crm}"
tracker = "{tracker}"
mapping = "{mapping}"
"""
#: The HubSpot demo's configuration; format it with hubspot, pingcode, crm, tracker, pair.
CONFIG_TEMPLATE = config_template(HubSpotDemo())


def deal_view(mapping: Mapping) -> dict[str, str]:
    """What the demo shows of a deal, by the CRM property the mapping puts it in."""
    view = {"requirement": mapping.key_field or ""}
    view.update((fm.name, fm.crm) for fm in mapping.fields)
    return view


def seed(world: DemoWorld, config: Config) -> None:
    """Seed the requirements the story names, make dealsync's deal fields exist the way
    `dealsync check --fix` does (or an admin following its steps, where the CRM's API cannot
    create fields), then seed the deals naming those requirements."""
    pair_config = config.pairs[PAIR_NAME]
    world.mapping = pair_config.mapping
    world.view = deal_view(pair_config.mapping)
    world.keys = world.tracker.seed()
    world.crm.prepare(pair_config)
    with pair_config.connected() as pair:
        problems = check_pair(pair_config, pair, fix=True, echo=lambda _line: None)
    if problems:
        raise ConfigError(problems)
    world.deal_ids = world.crm.seed(story_deals(world.keys))
    fill_context_columns(world)


# What reps wrote in the custom context columns of some deals (mapping [context]; the shipped
# PingCode mappings show urgency and workaround), by deal name.
CONTEXT_VALUES = {
    "Acme plant rollout": {"urgency": "高：6 月上线前必须具备", "workaround": "暂用共享管理员账号"},
    "Globex EU expansion": {"urgency": "紧急", "workaround": ""},
    "华为云 渠道合作 2025": {"urgency": "中", "workaround": "通过 LDAP 定时同步用户"},
    "智联物流 司机端": {"urgency": "高", "workaround": "司机先拍照，回网点后补录"},
}


def fill_context_columns(world: DemoWorld) -> None:
    """Reps fill the custom context columns the mapping shows (``CONTEXT_VALUES``)."""
    assert world.mapping is not None
    properties = world.mapping.context_properties
    names = {world.crm.properties(d)[world.crm.name_field]: d for d in world.deal_ids}
    for name, values in CONTEXT_VALUES.items():
        wanted = {properties[c]: v for c, v in values.items() if c in properties and v}
        if wanted:
            world.crm.mutate(names[name], wanted)


def context_block_lines(world: DemoWorld, story: str = "sso") -> list[str]:
    """The deal-context block of one requirement of the story, as a person reads it in the
    tracker: heading, open pipeline, an aligned table (CJK measured by display width), footer.
    Empty where the tracker is not PingCode (Worktile's block is written at creation only)."""
    try:
        description = world.pingcode.item(world.keys[story])["description"]
    except AttributeError:
        return []
    block = context.extract(description)
    if block is None:
        return []
    paragraphs, rows = context.read_block(block)
    filled = [n for n in range(len(rows[0])) if any(row[n] for row in rows[1:])]
    table = Table(box=None, pad_edge=False, show_edge=False, header_style=None)
    for n in filled:  # a column no deal fills (a request that only names the key) is left out
        table.add_column(rows[0][n], no_wrap=True, max_width=24, overflow="ellipsis")
    for row in rows[1:]:
        table.add_row(*(Text(row[n]) for n in filled))
    out = io.StringIO()
    Console(file=out, width=100_000, force_terminal=False, color_system=None, highlight=False,
            markup=False, emoji=False, soft_wrap=False).print(table)
    shown = [f"  {p}" for p in paragraphs[:2]]
    shown += [f"    {line.rstrip()}" for line in out.getvalue().splitlines()]
    return shown + [f"  {p}" for p in paragraphs[2:] if not p.startswith("dealsync:")]


def show_context_block(world: DemoWorld, echo: Callable[[str], None]) -> None:
    """Print what a PM reads on the story's SSO requirement (``context_block_lines``)."""
    lines = context_block_lines(world)
    if lines:
        echo(f"\n{world.keys['sso']} in {world.tracker.label}, the block dealsync keeps in its "
             "description:")
        for line in lines:
            echo(line)


def _crm_value(world: DemoWorld, name: str, tracker_value: str) -> str:
    """A tracker value in the CRM's words, through the mapping's value table."""
    assert world.mapping is not None
    fm = next(f for f in world.mapping.fields if f.name == name)
    return fm.to_crm(tracker_value) or ""


def play_a_day(world: DemoWorld) -> list[str]:
    """What people do between two syncs; returns the story, line by line."""
    tracker, crm = world.tracker, world.crm
    deal = {crm.properties(d)[crm.name_field]: d for d in world.deal_ids}
    items = tracker.items()
    key = {item["title"]: k for k, item in items.items()}
    audit, dark = key["Audit log export"], key["Dark mode"]
    sso, excel = world.keys["sso"], world.keys["excel"]
    highest, high, low = tracker.priorities
    walked = tracker.mutate(excel, status=tracker.planned)
    tracker.mutate(sso, status=tracker.started)
    tracker.mutate(audit, priority=highest)
    tracker.mutate(dark, priority=low)
    if crm.whole_seconds:  # the reps' edits must be the later ones, to the CRM's second too
        time.sleep(1.01 - time.time() % 1)
    priority = world.view["priority"]
    critical, crm_high = _crm_value(world, "priority", highest), _crm_value(world, "priority", high)
    crm.mutate(deal["Globex EU expansion"], {priority: critical})
    crm.mutate(deal["Hooli ads team"], {priority: crm_high})
    world.deal_ids.append(crm.add_deal("Initech analytics add-on", "Initech Software",
                                       "qualifiedtobuy", 64000, "2025-05-20", audit, owner=1))
    passes = f"; the workflow passes {', '.join(walked)}" if walked else ""
    return [
        f"PM moves {excel} (导出 Excel 报表) from {items[excel]['status']} to {tracker.planned} "
        f"(planned){passes}",
        f"PM starts {sso} (单点登录): {tracker.planned} -> {tracker.started} (in progress)",
        f"PM raises {audit} (Audit log export) to {highest}",
        f"PM lowers {dark} (Dark mode) to {low}, while Hooli's rep asks for {crm_high} on the "
        "deal (a conflict: the priority policy is 'newest', the rep was later)",
        f"Globex's rep marks {sso} {critical} for the EU expansion deal",
        f"A new deal, 'Initech analytics add-on', asks for {audit} by its key",
    ]


def manual_update_lines(store: StateStore) -> list[str]:
    """The changes waiting for a person in the tracker, as `dealsync status` lists them."""
    return [manual_update(item) for item in store.manual_updates(PAIR_NAME)]


def show_manual_updates(store: StateStore, echo: Callable[[str], None]) -> list[str]:
    """Print the manual-update list; returns its lines."""
    lines = manual_update_lines(store)
    echo("  listed for a person (`dealsync status`):" + ("" if lines else " nothing"))
    for line in lines:
        echo(f"    {line}")
    return lines


def make_listed_changes(world: DemoWorld, store: StateStore) -> list[str]:
    """The PM makes in the tracker each change `dealsync status` lists; returns the story."""
    titles = {key: item["title"] for key, item in world.tracker.items().items()}
    story = []
    for item in store.manual_updates(PAIR_NAME):
        world.tracker.mutate(item["req_key"], **{item["tracker_field"]: item["value"]})
        story.append(f"PM sets {item['req_key']} ({titles[item['req_key']]}) "
                     f"{item['tracker_field']} from {item['current'] or '-'} to {item['value']}, "
                     "as the list asks")
    return story


def snapshot(world: DemoWorld) -> dict[str, Any]:
    """What a person would see: every requirement's state and priority, every deal's mirror."""
    items = world.tracker.items()
    deals = {}
    for deal_id in world.deal_ids:
        props = world.crm.properties(deal_id)
        deals[deal_id] = {"name": props.get(world.crm.name_field),
                          **{shown: props.get(name) for shown, name in world.view.items()}}
    return {"items": items, "deals": deals}


def _item_moves(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    if old is None:
        return [f"created: {new['title']}"]
    return [f"{attr} {old[attr] or '-'} -> {new[attr] or '-'}" for attr in ("status", "priority")
            if old[attr] != new[attr]]


def _deal_moves(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{attr} {as_text(old.get(attr))} -> {as_text(value)}"
            for attr, value in new.items() if attr != "name" and old.get(attr) != value]


def what_moved(day_start: dict[str, Any], day_end: dict[str, Any], synced: dict[str, Any],
               crm_label: str = "HubSpot", tracker_label: str = "PingCode") -> list[str]:
    """Per requirement, side by side: what people changed, and what dealsync carried across."""
    lines = []
    keys = sorted(synced["items"], key=lambda key: int(key.split("-")[1]))
    for key in keys:
        entries = []
        for who, before, after in (("people", day_start, day_end), ("dealsync", day_end, synced)):
            moves = (_item_moves(before["items"].get(key), after["items"][key])
                     if key in after["items"] else [])
            if moves:
                entries.append(f"    {tracker_label} {key}: {', '.join(moves)}  [{who}]")
            for deal_id, deal in after["deals"].items():
                if key not in (deal.get("requirement") or "").split("; "):
                    continue
                moves = _deal_moves(before["deals"].get(deal_id, {}), deal)
                if moves:
                    entries.append(f"    {crm_label} '{deal['name']}': {', '.join(moves)}"
                                   f"  [{who}]")
        if entries:
            lines.append(f"  {key} {synced['items'][key]['title']}")
            lines += entries
    return lines


def run_sync(config: Config, store: StateStore, progress: Callable[[str, int], None] | None,
             echo: Callable[[str], None]) -> dict[str, Any]:
    try:
        with config.pairs[PAIR_NAME].connected() as pair:
            summary = run_pair(pair, store, Options(progress=progress))
    finally:
        end_progress(progress)
    counts = summary["counts"]
    calls = ", ".join(f"{name} {n}" for name, n in summary["api_calls"].items())
    manual = counts.get("manual_updates")
    echo(f"  {summary['status']} in {summary['duration_s']:.1f}s: "
         f"{counted(counts['deals_read'], 'deal')} and "
         f"{counted(counts['requirements_read'], 'requirement')} read, "
         f"{counts['created']} created, {counts['linked']} linked by key, "
         f"{counts['joined']} joined an identical request, "
         f"{counted(counts['updated_tracker'], 'requirement')} and "
         f"{counted(counts['updated_crm'], 'deal')} updated, "
         f"{counted(counts['conflicts'], 'conflict')} settled, {counts['failures']} failed"
         + (f", {manual} listed for a manual update" if manual else "")
         + f"; API calls: {calls}")
    return summary


def run_demo(folder: Path | None, keep_running: bool, echo: Callable[[str], None],
             progress: Callable[[str, int], None] | None = None,
             crm: str = "hubspot", tracker: str = "pingcode") -> dict[str, Any]:
    """The whole demo against the ``crm`` of ``DEMO_CRMS`` and the ``tracker`` of
    ``DEMO_TRACKERS``; returns what it did (the tests compare it with the emulators)."""
    started = time.monotonic()
    folder = folder or Path(tempfile.mkdtemp(prefix="dealsync-demo-"))
    world = start(folder, DEMO_CRMS[crm](), DEMO_TRACKERS[tracker]())
    label, tracker_label = world.crm.label, world.tracker.label
    listing = not world.tracker.writes_back  # the story shows the manual-update list
    try:
        config = load_config(world.config_path)
        echo(f"dealsync demo: {label} emulator at {world.crm.emulator.url}, {tracker_label} "
             f"emulator at {world.tracker.emulator.url}")
        echo(f"configuration written to {world.config_path}\n")
        seed(world, config)
        echo(f"Seeded {len(world.deal_ids)} {label} {world.crm.deals_word} across "
             f"{len(COMPANIES)} {world.crm.companies_word} and "
             f"{counted(len(world.tracker.items()), tracker_label + ' requirement')}.\n")
        store = StateStore(config.state_path)
        listed: dict[str, list[str]] = {}
        fourth = closing = moved_at_last = final = None
        try:
            echo("First sync: requests become requirements, deals get their status")
            empty = snapshot(world)
            first = run_sync(config, store, progress, echo)
            day_start = snapshot(world)
            first_moves = what_moved(empty, empty, day_start, label, tracker_label)
            for line in first_moves:
                echo(line)
            echo("\nA day passes:")
            story = play_a_day(world)
            for line in story:
                echo(f"  - {line}")
            day_end = snapshot(world)
            if listing:
                echo(f"\nSecond sync: {tracker_label}'s changes cross over, to every deal behind "
                     "a requirement; the deals' changes are listed for a person, as "
                     f"{tracker_label}'s API cannot change a requirement after creating it")
            else:
                echo("\nSecond sync: every change crosses over, to every deal behind a "
                     "requirement")
            second = run_sync(config, store, progress, echo)
            after = snapshot(world)
            moved = what_moved(day_start, day_end, after, label, tracker_label)
            for line in moved:
                echo(line)
            for conflict in store.conflicts(PAIR_NAME):
                echo(f"  conflict kept: {conflict_words(conflict, tracker_label)}")
            if listing:
                listed["second"] = show_manual_updates(store, echo)
            echo("\nThird sync: nothing new, so nothing is written"
                 + (f"; the list stays until {tracker_label} shows the values" if listing
                    else ""))
            third = run_sync(config, store, progress, echo)
            if listing:
                listed["third"] = show_manual_updates(store, echo)
                quiet = snapshot(world)
                echo(f"\nThe PM makes the listed changes in {tracker_label}:")
                closing = make_listed_changes(world, store)
                for line in closing:
                    echo(f"  - {line}")
                made = snapshot(world)
                echo(f"\nFourth sync: {tracker_label} shows the listed values, so they leave the "
                     "list, and every deal behind those requirements follows")
                fourth = run_sync(config, store, progress, echo)
                final = snapshot(world)
                moved_at_last = what_moved(quiet, made, final, label, tracker_label)
                for line in moved_at_last:
                    echo(line)
                listed["fourth"] = show_manual_updates(store, echo)
            show_context_block(world, echo)
            rows = pipeline_report(store, [PAIR_NAME])
            echo("\nRequirements ranked by the open pipeline asking for them:")
            echo(format_report(rows))
        finally:
            store.close()
        echo(f"\nDone in {time.monotonic() - started:.1f}s. Everything is in {folder}.")
        if keep_running:
            echo(f"The emulators keep running. In another shell:\n  cd {folder} && source "
                 f"demo.env\n  dealsync -c dealsync.toml sync\n  dealsync -c dealsync.toml status"
                 "\nPress Ctrl-C to stop.")
            wait_forever()
        else:
            again = ("dealsync demo" + ("" if crm == "hubspot" else f" --crm {crm}")
                     + ("" if tracker == "pingcode" else f" --tracker {tracker}"))
            echo(f"Run `{again} --keep-running` to try `dealsync sync` and `status` "
                 "against the emulators yourself.")
        return {"first": first, "second": second, "third": third, "story": story,
                "moved": moved, "first_moves": first_moves, "report": rows,
                "day_start": day_start, "day_end": day_end, "after": after, "folder": folder,
                "listed": listed, "closing": closing, "fourth": fourth,
                "moved_at_last": moved_at_last, "final": final}
    finally:
        world.stop()


def wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopping the emulators", err=True)
