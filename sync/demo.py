"""``dealsync demo``: the main job on its embedded default, in about a minute.

It starts the HubSpot and PingCode emulators on free loopback ports, seeds a believable
company (deals across a dozen customers, several asking for the same feature, some in Chinese),
writes a real ``dealsync.toml`` into a folder, and runs real syncs over HTTP with the shipped
``hubspot-pingcode`` mapping. Then it plays a working day on both sides, syncs again, shows
what moved where, and ends with the pipeline report.

Nothing here is special-cased for the demo inside the engine or the connectors: the demo drives
them exactly as ``dealsync sync`` does, and reads its "before and after" from the emulators.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from .check import check_pair
from .config import Config, load_config
from .engine import Options, run_pair
from .errors import ConfigError
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


@dataclass
class DemoWorld:
    hubspot: Any
    pingcode: Any
    folder: Path
    config_path: Path
    deal_ids: list[str]

    def stop(self) -> None:
        self.hubspot.stop()
        self.pingcode.stop()


def start(folder: Path) -> DemoWorld:
    """Start both emulators and write the configuration and its secrets into ``folder``."""
    from plugins.hubspot.emulator import HubSpotEmulator
    from plugins.pingcode.emulator import PingCodeEmulator

    hubspot, pingcode = HubSpotEmulator(realtime=True), PingCodeEmulator(realtime=True)
    hubspot_url, pingcode_url = hubspot.start(), pingcode.start()
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "dealsync.toml"
    config_path.write_text(CONFIG_TEMPLATE.format(hubspot=hubspot_url, pingcode=pingcode_url,
                                                  crm=CRM_NAME, tracker=TRACKER_NAME,
                                                  pair=PAIR_NAME), encoding="utf-8")
    (folder / "demo.env").write_text("".join(f"export {k}={v}\n" for k, v in secrets().items()),
                                     encoding="utf-8")
    os.environ.update(secrets())
    return DemoWorld(hubspot, pingcode, folder, config_path, [])


def secrets() -> dict[str, str]:
    """The credentials both emulators accept by default, as the environment variables a job
    without a keyring uses."""
    from plugins.hubspot.emulator import PRIVATE_TOKEN
    from plugins.pingcode.testing import DEMO_SECRETS

    return {env_var(CRM_NAME, "token"): PRIVATE_TOKEN,
            env_var(TRACKER_NAME, "client_id"): DEMO_SECRETS["client_id"],
            env_var(TRACKER_NAME, "client_secret"): DEMO_SECRETS["client_secret"]}


CONFIG_TEMPLATE = """\
# Written by `dealsync demo`: a HubSpot emulator and a PingCode emulator on this machine.
# Secrets come from the environment: `source demo.env` in this folder.

[state]
path = "state.db"

[crm.{crm}]
type = "hubspot"
base_url = "{hubspot}"
portal_id = "4242"
lookback_minutes = 10

[tracker.{tracker}]
type = "pingcode"
base_url = "{pingcode}"
project = "SCR"
marker_property = "prop_crm_deal"

[pair.{pair}]
crm = "{crm}"
tracker = "{tracker}"
mapping = "hubspot-pingcode"
"""


def seed_crm(world: DemoWorld, config: Config) -> None:
    """Create dealsync's deal properties the way `dealsync check --fix` does, then the deals."""
    pair_config = config.pairs[PAIR_NAME]
    with pair_config.connected() as pair:
        problems = check_pair(pair_config, pair, fix=True, echo=lambda _line: None)
    if problems:
        raise ConfigError(problems)
    made = world.hubspot.seed(
        companies=[{"name": name, "domain": domain} for name, domain in COMPANIES],
        owners=[{"email": e, "firstName": f, "lastName": l} for e, f, l in OWNERS],
        deals=[{"properties": {"dealname": name, "dealstage": stage, "amount": str(amount),
                               "closedate": f"2025-0{3 + n % 6}-{10 + n % 18:02d}T00:00:00.000Z",
                               "dealsync_request": request},
                "companies": [company], "owner": n % len(OWNERS)}
               for n, (company, name, stage, amount, request) in enumerate(DEALS)])
    world.deal_ids = made["deals"]


def play_a_day(world: DemoWorld) -> list[str]:
    """What people do between two syncs; returns the story, line by line."""
    pc, hs = world.pingcode, world.hubspot
    deal = {hs.deal(d)["properties"]["dealname"]: d for d in world.deal_ids}
    audit = next(i["identifier"] for i in pc.dump_items(False) if i["title"] == "Audit log export")
    dark = next(i["identifier"] for i in pc.dump_items(False) if i["title"] == "Dark mode")
    pc.mutate("SCR-2", state="已计划")
    pc.mutate("SCR-1", state="开发中")
    pc.mutate(audit, priority="最高")
    pc.mutate(dark, priority="低")
    hs.mutate(deal["Globex EU expansion"], {"dealsync_priority": "critical"})
    hs.mutate(deal["Hooli ads team"], {"dealsync_priority": "high"})
    initech = next(c for c, r in hs.companies.items() if r.props.get("name") == "Initech Software")
    new = hs.seed(deals=[{"properties": {
        "dealname": "Initech analytics add-on", "dealstage": "qualifiedtobuy", "amount": "64000",
        "closedate": "2025-05-20T00:00:00.000Z", "dealsync_request": audit},
        "companies": [initech], "owner": hs.owners[1]["id"]}])
    world.deal_ids += new["deals"]
    return [
        "PM moves SCR-2 (导出 Excel 报表) from 新建 to 已计划 (planned); the workflow passes 待评审",
        "PM starts SCR-1 (单点登录): 已计划 -> 开发中 (in progress)",
        f"PM raises {audit} (Audit log export) to 最高",
        f"PM lowers {dark} (Dark mode) to 低, while Hooli's rep asks for high on the deal "
        "(a conflict: the priority policy is 'newest', the rep was later)",
        "Globex's rep marks SCR-1 critical for the EU expansion deal",
        f"A new deal, 'Initech analytics add-on', asks for {audit} by its key",
    ]


def snapshot(world: DemoWorld) -> dict[str, Any]:
    """What a person would see: every requirement's state and priority, every deal's mirror."""
    items = {i["identifier"]: {"title": i["title"], "status": i["state"]["name"],
                               "priority": (i.get("priority") or {}).get("name")}
             for i in world.pingcode.dump_items(False)}
    deals = {}
    for deal_id in world.deal_ids:
        props = world.hubspot.deal(deal_id)["properties"]
        deals[deal_id] = {k: props.get(k) for k in DEAL_VIEW}
    return {"items": items, "deals": deals}


DEAL_VIEW = ("dealname", "dealsync_requirement", "dealsync_status", "dealsync_priority",
             "dealsync_delivery")


def _item_moves(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    if old is None:
        return [f"created: {new['title']}"]
    return [f"{attr} {old[attr] or '-'} -> {new[attr] or '-'}" for attr in ("status", "priority")
            if old[attr] != new[attr]]


def _deal_moves(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{attr.removeprefix('dealsync_')} {old.get(attr) or '-'} -> {new[attr]}"
            for attr in DEAL_VIEW[1:] if old.get(attr) != new[attr]]


def what_moved(day_start: dict[str, Any], day_end: dict[str, Any],
               synced: dict[str, Any]) -> list[str]:
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
                if key not in (deal.get("dealsync_requirement") or "").split("; "):
                    continue
                moves = _deal_moves(before["deals"].get(deal_id, {}), deal)
                if moves:
                    entries.append(f"    HubSpot '{deal['dealname']}': {', '.join(moves)}"
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
             progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """The whole demo; returns what it did (the tests compare it with the emulators)."""
    started = time.monotonic()
    folder = folder or Path(tempfile.mkdtemp(prefix="dealsync-demo-"))
    world = start(folder)
    try:
        config = load_config(world.config_path)
        echo(f"dealsync demo: HubSpot emulator at {world.hubspot.url}, PingCode emulator at "
             f"{world.pingcode.url}")
        echo(f"configuration written to {world.config_path}\n")
        seed_crm(world, config)
        echo(f"Seeded {len(world.deal_ids)} HubSpot deals across {len(COMPANIES)} companies "
             f"and {len(world.pingcode.dump_items(False))} PingCode requirements.\n")
        store = StateStore(config.state_path)
        try:
            echo("First sync: requests become requirements, deals get their status")
            empty = snapshot(world)
            first = run_sync(config, store, progress, echo)
            day_start = snapshot(world)
            first_moves = what_moved(empty, empty, day_start)
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
            moved = what_moved(day_start, day_end, after)
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
            echo("Run `dealsync demo --keep-running` to try `dealsync sync` and `status` "
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
