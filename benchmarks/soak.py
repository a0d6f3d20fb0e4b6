"""A soak run: `dealsync run --every 5s` for a long time against both emulators, with random
edits on both sides and random faults, then checks that nothing went wrong.

It reports the scheduler process's resident memory at the start and the end (it must stay
flat), the runs it made (none may overlap another of the same pair), and, once the faults stop
and a last sync has run: duplicates (requirements carrying one deal's marker twice), deleted
requirements, and whether every deal shows its requirement's status and priority (all must
be 0, 0 and yes).

    python benchmarks/soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.emulator import Fault, HttpError  # noqa: E402
from plugins.hubspot.emulator import PRIVATE_TOKEN, HubSpotEmulator  # noqa: E402
from plugins.pingcode.emulator import PingCodeEmulator  # noqa: E402
from plugins.pingcode.testing import DEMO_SECRETS  # noqa: E402
from sync.connectors import has_marker, make_marker  # noqa: E402
from sync.mapping import load_mapping  # noqa: E402
from sync.secrets import env_var  # noqa: E402

CONFIG = """
[crm.hs]
type = "hubspot"
base_url = "{hubspot}"
[tracker.pc]
type = "pingcode"
base_url = "{pingcode}"
project = "SCR"
[pair.soak]
crm = "hs"
tracker = "pc"
mapping = "hubspot-pingcode"
max_creates = 1000
"""
FAULTS = [("POST", r"/crm/v3/objects/deals/batch/update", 503),
          ("POST", r"/crm/v3/objects/deals/search", 502),
          ("POST", r"/v1/pjm/work_items", 500),
          ("PATCH", r"/v1/pjm/work_items/[0-9a-f]+", 503),
          ("POST", r"/v1/pjm/work_items/search", 429)]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Soak:
    def __init__(self, folder: Path, seed: int):
        self.rng = random.Random(seed)
        self.hubspot = HubSpotEmulator(realtime=True)
        self.pingcode = PingCodeEmulator(realtime=True)
        self.config = folder / "dealsync.toml"
        self.config.write_text(CONFIG.format(hubspot=self.hubspot.start(),
                                             pingcode=self.pingcode.start()))
        self.env = {**os.environ, "DEALSYNC_HOME": str(folder / "home"),
                    env_var("hs", "token"): PRIVATE_TOKEN,
                    **{env_var("pc", k): v for k, v in DEMO_SECRETS.items()}}
        self.mapping = load_mapping("hubspot-pingcode")
        self.deals: list[str] = []
        self.most_items = 0

    def dealsync(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sync.cli", "-c", str(self.config), *args],
                              env=self.env, capture_output=True, text=True, timeout=600)

    def add_deals(self, count: int) -> None:
        keys = [i["identifier"] for i in self.pingcode.dump_items(False)]
        requests = [self.rng.choice(keys) if self.rng.random() < 0.5
                    else f"Feature {self.rng.randrange(60)}\nasked at {time.time():.0f}"
                    for _ in range(count)]
        self.deals += self.hubspot.seed(deals=[{"properties": {
            "dealname": f"Deal {len(self.deals) + n}", "dealstage": "qualifiedtobuy",
            "amount": str(self.rng.randrange(1000, 100000)), "dealsync_request": text}}
            for n, text in enumerate(requests)])["deals"]

    def edit(self) -> None:
        """One random person's action on either side, or a fault turned on or off."""
        roll = self.rng.random()
        items = self.pingcode.dump_items(False)
        self.most_items = max(self.most_items, len(items))
        if roll < 0.25:
            self.add_deals(self.rng.randrange(1, 4))
        elif roll < 0.5 and self.deals:
            field = self.rng.choice(["dealsync_priority", "dealsync_status"])
            fm = next(f for f in self.mapping.fields if f.crm == field)
            self.hubspot.mutate(self.rng.choice(self.deals),
                                {field: self.rng.choice(sorted(set(fm.values.values())))})
        elif roll < 0.75 and items:
            item = self.rng.choice(items)["identifier"]
            try:
                if self.rng.random() < 0.5:
                    self.pingcode.mutate(item, priority=self.rng.choice(["最高", "高", "中", "低"]))
                else:
                    self.pingcode.mutate(item, state=self.rng.choice(["新建", "待评审", "已计划"]))
            except HttpError:  # the workflow does not allow that move: a PM could not make it
                pass
        elif roll < 0.85:
            method, path, status = self.rng.choice(FAULTS)
            emulator = self.hubspot if "/crm/" in path else self.pingcode
            emulator.faults = [Fault(f"{method} {path}", prob=0.5, status=status)]
        else:
            self.hubspot.faults, self.pingcode.faults = [], []

    def check(self) -> dict:
        items = self.pingcode.dump_items(False)
        duplicates = sum(max(0, sum(has_marker(i["description"], make_marker("soak", d))
                                    for i in items) - 1) for d in self.deals)
        status = {i["identifier"]: i["state"]["name"] for i in items}
        values = next(f for f in self.mapping.fields if f.name == "status").values or {}
        mismatched = []
        for deal_id in self.deals:
            props = self.hubspot.deal(deal_id)["properties"]
            key = (props.get("dealsync_requirement") or "").split("; ")[0]
            if not key or values.get(status.get(key, "")) != props.get("dealsync_status"):
                mismatched.append(f"{deal_id} {props.get('dealsync_request')!r} shows "
                                  f"{key or '-'} {props.get('dealsync_status')}, which is "
                                  f"{status.get(key)}")
        return {"duplicates": duplicates, "deleted": max(0, self.most_items - len(items)),
                "deals": len(self.deals), "requirements": len(items),
                "deals not showing their requirement": mismatched}

    def stop(self) -> None:
        self.hubspot.stop()
        self.pingcode.stop()


def overlaps(home: Path) -> tuple[int, int]:
    """How many runs the state store recorded, and how many overlapped the one before."""
    import sqlite3

    db = sqlite3.connect(home / "state.db")
    rows = db.execute("SELECT started_at, finished_at FROM runs WHERE pair='soak' AND status"
                      " != 'dry-run' ORDER BY started_at").fetchall()
    db.close()
    return len(rows), sum(1 for a, b in zip(rows, rows[1:]) if b[0] < a[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--every", default="5s", help="the schedule (default: 5s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        soak = Soak(Path(tmp), args.seed)
        try:
            assert soak.dealsync("check", "--fix").returncode == 0
            soak.add_deals(20)
            job_log = (Path(tmp) / "run.log").open("w")
            job = subprocess.Popen([sys.executable, "-m", "sync.cli", "-c", str(soak.config),
                                    "run", "--every", args.every], env=soak.env,
                                   stdout=job_log, stderr=subprocess.STDOUT)
            time.sleep(15)
            rss = [rss_mib(job.pid)]
            deadline = time.monotonic() + args.minutes * 60
            while time.monotonic() < deadline and job.poll() is None:
                soak.edit()
                time.sleep(soak.rng.uniform(1, 5))
            if job.poll() is not None:
                tail = (Path(tmp) / "run.log").read_text().splitlines()[-30:]
                sys.exit(f"the scheduler stopped early (exit {job.returncode}):\n"
                         + "\n".join(tail))
            rss.append(rss_mib(job.pid))
            job.send_signal(signal.SIGTERM)
            stopped = job.wait(timeout=600)
            soak.hubspot.faults, soak.pingcode.faults = [], []
            # queued failures wait minutes for their retry: retry them now, then settle
            finish = [json.loads(soak.dealsync(command, "--json").stdout or "{}")
                      for command in ("retry", "retry", "sync")]
            runs, overlapping = overlaps(Path(soak.env["DEALSYNC_HOME"]))
            quiet = finish[-1]["pairs"][0]["counts"]
            report = {"minutes": args.minutes, "runs": runs, "overlapping runs": overlapping,
                      "scheduler exit": stopped, "RSS at start (MiB)": round(rss[0], 1),
                      "RSS at end (MiB)": round(rss[1], 1),
                      "last run wrote": quiet["updated_crm"] + quiet["updated_tracker"] +
                      quiet["created"], **soak.check(),
                      "errors in the last runs": [e for doc in finish for pair in doc["pairs"]
                                                  for e in pair.get("errors", [])]}
            print(json.dumps(report, ensure_ascii=False, indent=2))
        finally:
            soak.stop()


if __name__ == "__main__":
    main()
