"""``dealsync demo``: the main job on its embedded default, in about a minute.

It starts a CRM emulator (HubSpot by default, Salesforce with ``--crm salesforce``) and the
PingCode emulator on free loopback ports, seeds a believable company (deals across a dozen
customers, several asking for the same feature, some in Chinese), writes a real
``dealsync.toml`` into a folder, and runs real syncs over HTTP with the CRM's shipped
``*-pingcode`` mapping. Then it plays a working day on both sides, syncs again, shows what moved
where, and ends with the pipeline report.

The story is the same for every CRM; what differs (the emulator, its configuration section,
credentials, seeding and editing deals) is a ``DemoCRM`` in ``DEMO_CRMS``. Field names and
values come from the mapping. Nothing here is special-cased for the demo inside the engine or
the connectors: the demo drives them exactly as ``dealsync sync`` does, and reads its "before
and after" from the emulators.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from .check import check_pair, field_roles, field_specs
from .config import Config, PairConfig, load_config
from .engine import Options, run_pair
from .errors import ConfigError
from .mapping import Mapping
from .progress import end_progress
from .report import format_report, pipeline_report
from .secrets import env_var
from .state import StateStore

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

# (company index, deal name, stage, amount, request). A request that names a key (SCR-1),
# alone or in a sentence, links that requirement and creates nothing; otherwise its first line
# is a new requirement's title, and identical titles share one requirement.
DEALS = [
    (0, "Acme plant rollout", "contractsent", 180000, "SCR-1"),
    (1, "Globex EU expansion", "qualifiedtobuy", 95000, "SCR-1"),
    (2, "Initech renewal", "decisionmakerboughtin", 42000, "SCR-1"),
    (6, "华为云 渠道合作 2025", "presentationscheduled", 260000, "SCR-1"),
    (7, "明远科技 全员部署", "appointmentscheduled", 73000, "SCR-3"),
    (8, "智联物流 司机端", "qualifiedtobuy", 128000, "SCR-3"),
    (4, "Stark field service", "contractsent", 56000, "SCR-3"),
    (3, "Umbrella clinics pilot", "appointmentscheduled", 38000,
     "Audit log export\nCompliance needs every change exported monthly to their SIEM."),
    (9, "数澜 数据中台对接", "decisionmakerboughtin", 150000,
     "开放 API 批量写入\n需要支持每分钟上千条记录的批量导入，并返回逐条结果。"),
    (5, "Wayne stores POS", "presentationscheduled", 67000,
     "Custom fields on invoices\nPO number and cost center on every invoice PDF."),
    (10, "Hooli ads team", "qualifiedtobuy", 45000,
     "Dark mode\nTheir designers work at night; <b>please</b> no more white screens."),
    (11, "Vandelay import desk", "appointmentscheduled", 22000,
     "Same as SCR-2, but for the pipeline view"),
    (4, "Stark control room", "qualifiedtobuy", 51000,
     "dark mode\nOperators in the control room asked for it too."),
    (0, "Acme spare parts portal", "closedwon", 30000, "SCR-2"),
    (1, "Globex tender (lost)", "closedlost", 80000, "SCR-2"),
]


class DemoCRM:
    """What the story needs from one CRM's emulator: start it, name it in ``dealsync.toml``,
    give the credentials it accepts, make dealsync's deal fields exist, seed and edit deals,
    and show a deal's fields. One subclass per CRM in ``DEMO_CRMS``."""

    label = ""  # "HubSpot", in the output
    instance = ""  # the [crm.NAME] of the configuration written
    mapping = ""  # the shipped mapping the demo pair uses
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

    def seed(self) -> list[str]:
        """``COMPANIES``, ``OWNERS`` and ``DEALS``; returns the deal ids in ``DEALS`` order."""
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
    label, instance, mapping = "HubSpot", CRM_NAME, "hubspot-pingcode"
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

    def seed(self) -> list[str]:
        made = self.emulator.seed(
            companies=[{"name": name, "domain": domain} for name, domain in COMPANIES],
            owners=[{"email": e, "firstName": f, "lastName": l} for e, f, l in OWNERS],
            deals=[{"properties": {"dealname": name, "dealstage": stage, "amount": str(amount),
                                   "closedate": f"{close_date(n)}T00:00:00.000Z",
                                   self.request_field: request},
                    "companies": [company], "owner": n % len(OWNERS)}
                   for n, (company, name, stage, amount, request) in enumerate(DEALS)])
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
    label, instance, mapping = "Salesforce", "demo-salesforce", "salesforce-pingcode"
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

    def seed(self) -> list[str]:
        made = self.emulator.seed(
            accounts=[{"Name": name} for name, _domain in COMPANIES],
            users=[{"Name": f"{f} {l}", "Username": e, "Email": e} for e, f, l in OWNERS],
            opportunities=[{"fields": self._fields(name, stage, amount, close_date(n), request),
                            "account": company, "owner": n % len(OWNERS)}
                           for n, (company, name, stage, amount, request) in enumerate(DEALS)])
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


@dataclass
class DemoWorld:
    crm: DemoCRM
    pingcode: Any
    folder: Path
    config_path: Path
    deal_ids: list[str]
    #: what a person reads on a deal ("requirement", "status", ...) -> the CRM property
    view: dict[str, str] = field(default_factory=dict)
    mapping: Mapping | None = None

    @property
    def hubspot(self) -> Any:
        """The HubSpot emulator, in the default demo."""
        if not isinstance(self.crm, HubSpotDemo):
            raise AttributeError(f"this demo runs {self.crm.label}, not HubSpot")
        return self.crm.emulator

    def stop(self) -> None:
        self.crm.emulator.stop()
        self.pingcode.stop()


def config_template(crm: DemoCRM) -> str:
    """``dealsync.toml`` for the demo pair, with ``{crm}``, ``{tracker}``, ``{pair}``,
    ``{pingcode}`` and the CRM's ``url_key`` still to fill in."""
    return (CONFIG_HEAD.replace("{label}", crm.label) + crm.section
            + TRACKER_AND_PAIR.replace("{mapping}", crm.mapping))


def start(folder: Path, crm: DemoCRM | None = None) -> DemoWorld:
    """Start both emulators and write the configuration and its secrets into ``folder``."""
    from plugins.pingcode.emulator import PingCodeEmulator

    crm = crm or HubSpotDemo()
    pingcode = PingCodeEmulator(realtime=True)
    crm_url, pingcode_url = crm.start(), pingcode.start()
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "dealsync.toml"
    config_path.write_text(config_template(crm).format(
        **{crm.url_key: crm_url}, pingcode=pingcode_url, crm=crm.instance, tracker=TRACKER_NAME,
        pair=PAIR_NAME), encoding="utf-8")
    env = secrets(crm)
    (folder / "demo.env").write_text("".join(f"export {k}={v}\n" for k, v in env.items()),
                                     encoding="utf-8")
    os.environ.update(env)
    return DemoWorld(crm, pingcode, folder, config_path, [])


def secrets(crm: DemoCRM | None = None) -> dict[str, str]:
    """The credentials both emulators accept by default (the HubSpot demo's unless ``crm``
    says otherwise), as the environment variables a job without a keyring uses."""
    from plugins.pingcode.testing import DEMO_SECRETS

    return {**(crm or HubSpotDemo()).secrets(),
            env_var(TRACKER_NAME, "client_id"): DEMO_SECRETS["client_id"],
            env_var(TRACKER_NAME, "client_secret"): DEMO_SECRETS["client_secret"]}


CONFIG_HEAD = """\
# Written by `dealsync demo`: a {label} emulator and a PingCode emulator on this machine.
# Secrets come from the environment: `source demo.env` in this folder.

[state]
path = "state.db"

"""
TRACKER_AND_PAIR = """
[tracker.{tracker}]
type = "pingcode"
base_url = "{pingcode}"
project = "SCR"
marker_property = "prop_crm_deal"

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


def seed_crm(world: DemoWorld, config: Config) -> None:
    """Make dealsync's deal fields exist the way `dealsync check --fix` does (or an admin
    following its steps, where the CRM's API cannot create fields), then seed the deals."""
    pair_config = config.pairs[PAIR_NAME]
    world.mapping = pair_config.mapping
    world.view = deal_view(pair_config.mapping)
    world.crm.prepare(pair_config)
    with pair_config.connected() as pair:
        problems = check_pair(pair_config, pair, fix=True, echo=lambda _line: None)
    if problems:
        raise ConfigError(problems)
    world.deal_ids = world.crm.seed()


def _crm_value(world: DemoWorld, name: str, tracker_value: str) -> str:
    """A tracker value in the CRM's words, through the mapping's value table."""
    assert world.mapping is not None
    fm = next(f for f in world.mapping.fields if f.name == name)
    return fm.to_crm(tracker_value) or ""


def play_a_day(world: DemoWorld) -> list[str]:
    """What people do between two syncs; returns the story, line by line."""
    pc, crm = world.pingcode, world.crm
    deal = {crm.properties(d)[crm.name_field]: d for d in world.deal_ids}
    audit = next(i["identifier"] for i in pc.dump_items(False) if i["title"] == "Audit log export")
    dark = next(i["identifier"] for i in pc.dump_items(False) if i["title"] == "Dark mode")
    pc.mutate("SCR-2", state="已计划")
    pc.mutate("SCR-1", state="开发中")
    pc.mutate(audit, priority="最高")
    pc.mutate(dark, priority="低")
    if crm.whole_seconds:  # the reps' edits must be the later ones, to the CRM's second too
        time.sleep(1.01 - time.time() % 1)
    priority = world.view["priority"]
    critical, high = _crm_value(world, "priority", "最高"), _crm_value(world, "priority", "高")
    crm.mutate(deal["Globex EU expansion"], {priority: critical})
    crm.mutate(deal["Hooli ads team"], {priority: high})
    world.deal_ids.append(crm.add_deal("Initech analytics add-on", "Initech Software",
                                       "qualifiedtobuy", 64000, "2025-05-20", audit, owner=1))
    return [
        "PM moves SCR-2 (导出 Excel 报表) from 新建 to 已计划 (planned); the workflow passes 待评审",
        "PM starts SCR-1 (单点登录): 已计划 -> 开发中 (in progress)",
        f"PM raises {audit} (Audit log export) to 最高",
        f"PM lowers {dark} (Dark mode) to 低, while Hooli's rep asks for {high} on the deal "
        "(a conflict: the priority policy is 'newest', the rep was later)",
        f"Globex's rep marks SCR-1 {critical} for the EU expansion deal",
        f"A new deal, 'Initech analytics add-on', asks for {audit} by its key",
    ]


def snapshot(world: DemoWorld) -> dict[str, Any]:
    """What a person would see: every requirement's state and priority, every deal's mirror."""
    items = {i["identifier"]: {"title": i["title"], "status": i["state"]["name"],
                               "priority": (i.get("priority") or {}).get("name")}
             for i in world.pingcode.dump_items(False)}
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
    return [f"{attr} {old.get(attr) or '-'} -> {value}"
            for attr, value in new.items() if attr != "name" and old.get(attr) != value]


def what_moved(day_start: dict[str, Any], day_end: dict[str, Any],
               synced: dict[str, Any], crm_label: str = "HubSpot") -> list[str]:
    """Per requirement, side by side: what people changed, and what dealsync carried across."""
    lines = []
    keys = sorted(synced["items"], key=lambda key: int(key.split("-")[1]))
    for key in keys:
        entries = []
        for who, before, after in (("people", day_start, day_end), ("dealsync", day_end, synced)):
            moves = (_item_moves(before["items"].get(key), after["items"][key])
                     if key in after["items"] else [])
            if moves:
                entries.append(f"    PingCode {key}: {', '.join(moves)}  [{who}]")
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
    echo(f"  {summary['status']} in {summary['duration_s']:.1f}s: "
         f"{counts['deals_read']} deals and {counts['requirements_read']} requirements read, "
         f"{counts['created']} created, {counts['linked']} linked by key, "
         f"{counts['joined']} joined an identical request, "
         f"{counts['updated_tracker']} requirements and {counts['updated_crm']} deals updated, "
         f"{counts['conflicts']} conflicts settled, {counts['failures']} failed; "
         f"API calls: {calls}")
    return summary


def run_demo(folder: Path | None, keep_running: bool, echo: Callable[[str], None],
             progress: Callable[[str, int], None] | None = None,
             crm: str = "hubspot") -> dict[str, Any]:
    """The whole demo against the ``crm`` of ``DEMO_CRMS``; returns what it did (the tests
    compare it with the emulators)."""
    started = time.monotonic()
    folder = folder or Path(tempfile.mkdtemp(prefix="dealsync-demo-"))
    world = start(folder, DEMO_CRMS[crm]())
    label = world.crm.label
    try:
        config = load_config(world.config_path)
        echo(f"dealsync demo: {label} emulator at {world.crm.emulator.url}, PingCode emulator at "
             f"{world.pingcode.url}")
        echo(f"configuration written to {world.config_path}\n")
        seed_crm(world, config)
        echo(f"Seeded {len(world.deal_ids)} {label} {world.crm.deals_word} across "
             f"{len(COMPANIES)} {world.crm.companies_word} and "
             f"{len(world.pingcode.dump_items(False))} PingCode requirements.\n")
        store = StateStore(config.state_path)
        try:
            echo("First sync: requests become requirements, deals get their status")
            empty = snapshot(world)
            first = run_sync(config, store, progress, echo)
            day_start = snapshot(world)
            first_moves = what_moved(empty, empty, day_start, label)
            for line in first_moves:
                echo(line)
            echo("\nA day passes:")
            story = play_a_day(world)
            for line in story:
                echo(f"  - {line}")
            day_end = snapshot(world)
            echo("\nSecond sync: every change crosses over, to every deal behind a requirement")
            second = run_sync(config, store, progress, echo)
            after = snapshot(world)
            moved = what_moved(day_start, day_end, after, label)
            for line in moved:
                echo(line)
            for conflict in store.conflicts(PAIR_NAME):
                echo(f"  conflict kept: {conflict['req_key']} {conflict['field']}: PingCode "
                     f"{conflict['tracker_value']} vs deal {conflict['crm_values']} -> "
                     f"{conflict['outcome']} ({conflict['policy']} policy)")
            echo("\nThird sync: nothing new, so nothing is written")
            third = run_sync(config, store, progress, echo)
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
            again = "dealsync demo" + ("" if crm == "hubspot" else f" --crm {crm}")
            echo(f"Run `{again} --keep-running` to try `dealsync sync` and `status` "
                 "against the emulators yourself.")
        return {"first": first, "second": second, "third": third, "story": story,
                "moved": moved, "first_moves": first_moves, "report": rows,
                "day_start": day_start, "day_end": day_end, "after": after, "folder": folder}
    finally:
        world.stop()


def wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopping the emulators", err=True)
