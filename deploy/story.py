"""The demo story against running emulators and workers (deploy/docker-compose.yml).

`dealsync demo` plays its story in one process, emulators included. Here the emulators, the
PostgreSQL store and two `dealsync run` workers are separate containers, so this script plays
the same story over HTTP and lets the workers sync:

1. wait for the emulators and the store; `dealsync check --fix` makes the deal properties;
2. seed the demo company (sync/demo.py's companies, owners and deals) on HubSpot;
3. wait for a worker's sync; show what it linked and created;
4. play a working day: the PM plans the Excel export and starts SSO in PingCode, a rep marks a
   deal critical, a new deal names the Excel export;
5. wait for the next sync; show what crossed over, the pipeline report, and `state check`.

It exits 0 when every step showed what the story expects, so `docker compose up
--abort-on-container-exit story` passes or fails with it. Environment: HUBSPOT_URL,
PINGCODE_URL, DEALSYNC_CONFIG, and what the workers have (secrets, DEALSYNC_STATE_*).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable

import requests

from sync.demo import COMPANIES, DEALS, OWNERS, PAIR_NAME, STORY_REQUIREMENTS, story_deals
from sync.errors import DealsyncError
from sync.secrets import env_var
from sync.state import open_store, parse_ts

HUBSPOT = os.environ.get("HUBSPOT_URL", "http://127.0.0.1:8081")
PINGCODE = os.environ.get("PINGCODE_URL", "http://127.0.0.1:8082")
CRM = "demo-hubspot"
WAIT_S = float(os.environ.get("STORY_WAIT_S", "120"))


def say(line: str = "") -> None:
    print(line, flush=True)


def until(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something true; fail the story after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (requests.RequestException, DealsyncError) as exc:
            result, last = None, exc
        else:
            last = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise SystemExit(f"story: gave up waiting for {what}" + (f": {last}" if last else ""))
        time.sleep(0.5)


def dealsync(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sync.cli", *args], capture_output=True,
                          text=True, timeout=300)


def control(base: str, path: str, body: Any = None) -> Any:
    """The emulators' control API (``/__emu/...``)."""
    method = "GET" if body is None else "POST"
    response = requests.request(method, f"{base}/__emu/{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def deal_properties(deal_id: str) -> dict[str, Any]:
    """A deal as a rep sees it, through HubSpot's API."""
    token = os.environ[env_var(CRM, "token")]
    response = requests.get(f"{HUBSPOT}/crm/v3/objects/deals/{deal_id}", timeout=30,
                            headers={"Authorization": f"Bearer {token}"},
                            params={"properties": "dealname,dealsync_requirement,"
                                                  "dealsync_status,dealsync_priority"})
    response.raise_for_status()
    return response.json()["properties"]


def synced_after(moment: datetime) -> dict[str, Any] | None:
    """The first successful run of the demo pair that started after ``moment``, if any."""
    store = open_store(_state_target())
    try:
        runs = store.runs(PAIR_NAME, 20)
    finally:
        store.close()
    done = [r for r in runs if r["status"] in ("ok", "partial")
            and parse_ts(r["started_at"]) > moment]
    return done[-1] if done else None


def store_ready() -> bool:
    open_store(_state_target()).close()
    return True


def _state_target() -> str:
    from sync.config import load_config, config_path

    return str(load_config(config_path()).state_target)


def keys_by_title() -> dict[str, dict[str, Any]]:
    return {item["title"]: item for item in control(PINGCODE, "items")["items"]}


def main() -> int:
    say("== waiting for the emulators and the state store")
    until("the emulators", lambda: control(HUBSPOT, "config") and control(PINGCODE, "config"))
    until("the state store", store_ready)
    fixed = until("`dealsync check --fix`", lambda: (r := dealsync("check", "--fix")).returncode
                  == 0 and r)
    say(fixed.stdout.strip().splitlines()[-1])

    say("== seeding the demo company on HubSpot")
    items = keys_by_title()
    keys = {name: items[title]["identifier"] for name, title in STORY_REQUIREMENTS.items()}
    deals = story_deals(keys)
    seeded = control(HUBSPOT, "seed", {
        "companies": [{"name": name, "domain": domain} for name, domain in COMPANIES],
        "owners": [{"email": e, "firstName": f, "lastName": l} for e, f, l in OWNERS],
        "deals": [{"properties": {"dealname": name, "dealstage": stage, "amount": str(amount),
                                  "dealsync_request": request},
                   "companies": [company], "owner": n % len(OWNERS)}
                  for n, (company, name, stage, amount, request) in enumerate(deals)]})
    ids = dict(zip((name for _, name, _, _, _ in DEALS), seeded["deals"]))
    seeded_at = datetime.now(timezone.utc)
    say(f"{len(ids)} deals across {len(COMPANIES)} companies")

    say("== waiting for a worker to sync")
    first = until("the first sync", lambda: synced_after(seeded_at))
    counts = first["summary"]["counts"]
    say(f"synced: {counts['created']} requirements created, {counts['linked']} deals linked to "
        f"the requirements they name, {counts['joined']} joined a shared request")
    if counts["created"] < 1 or counts["linked"] < 1:
        say("story: the first sync created or linked nothing")
        return 1

    say("== a working day")
    sso, excel = keys["sso"], keys["excel"]
    control(PINGCODE, "mutate", {"item": excel, "state": "已计划"})
    control(PINGCODE, "mutate", {"item": sso, "state": "开发中"})
    say(f"the PM plans {excel} and starts work on {sso} in PingCode")
    critical = ids["Globex EU expansion"]
    control(HUBSPOT, "mutate", {"id": critical, "properties": {"dealsync_priority": "critical"}})
    say("a rep marks 'Globex EU expansion' critical")
    (late,) = control(HUBSPOT, "seed", {"deals": [{"properties": {
        "dealname": "Initech reporting add-on", "dealstage": "qualifiedtobuy",
        "amount": "18000", "dealsync_request": f"{excel}, monthly"}}]})["deals"]
    say(f"a new deal names {excel}")
    day_at = datetime.now(timezone.utc)

    say("== waiting for the next sync")
    until("the sync after the day", lambda: synced_after(day_at))
    checks = {
        "Acme plant rollout": ("dealsync_status", "in_progress"),
        "Acme spare parts portal": ("dealsync_status", "planned"),
    }
    failed = False
    for name, (prop, wanted) in checks.items():
        shown = deal_properties(ids[name])
        say(f"{name}: {shown['dealsync_requirement']} {prop.split('_')[1]} = {shown[prop]}")
        failed |= shown[prop] != wanted
    late_deal = deal_properties(late)
    say(f"Initech reporting add-on: linked to {late_deal['dealsync_requirement']}, status "
        f"{late_deal['dealsync_status']}")
    failed |= late_deal["dealsync_requirement"] != excel
    priority = (keys_by_title()[STORY_REQUIREMENTS["sso"]].get("priority") or {}).get("name")
    say(f"{sso} priority in PingCode, after the rep's change: {priority}")
    failed |= priority != "最高"

    say("== the pipeline report")
    say(dealsync("report").stdout.rstrip())
    check = dealsync("state", "check")
    say(check.stdout.rstrip())
    if failed or check.returncode:
        say("story: something did not cross over as expected")
        return 1
    say("== the story ran: two workers, one PostgreSQL state store")
    return 0


if __name__ == "__main__":
    sys.exit(main())
