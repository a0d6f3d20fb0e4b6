"""Workers sharing a PostgreSQL state store, against the emulators (issue 15, "Must show").

20 pairs over two HubSpot and two PingCode instances (so every instance is shared by ten
pairs), each pair with its own HubSpot pipeline and a new request every round. Four workers
run them:

- for five rounds: every pair is synced once per round; no two runs of one pair overlap, by the
  run records and by the emulators' request logs (every request that touches a pair's deals or
  requirements falls inside one of that pair's recorded runs, and those never overlap); no
  deal gets two requirements; no call is refused with a 429, though ten pairs share each
  instance's limit;
- with one worker killed (SIGKILL) in the middle of a run, right after the tracker made the
  requirement it asked for and before the answer came back: another worker runs that pair
  within the round, finds that requirement by its marker, and no deal gets two.

Rounds are dealsync's shortest interval, 10 s; each run is small (one new deal per pair).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from plugins.hubspot.emulator import PRIVATE_TOKEN, HubSpotEmulator
from plugins.pingcode.emulator import PingCodeEmulator
from plugins.pingcode.testing import DEMO_SECRETS
from sync.connectors import has_marker, make_marker
from sync.secrets import env_var
from sync.state import open_store, parse_ts
from sync.state.postgres import lock_key
from sync.state.transfer import check_store

ROOT = Path(__file__).resolve().parent.parent
MAPPING = ROOT / "mappings" / "hubspot-pingcode.toml"
INTERVAL = 10  # seconds: dealsync's shortest
PAIRS = 20
WORKERS = 4
MARKER = re.compile(r"dealsync:(p\d\d):")
BURST = (20, 2)  # each HubSpot instance: 20 calls in any 2 s
IN_FLIGHT_S = 1.0  # how long after its sender died a request may still be served


def stamp_requests(emulator: Any) -> None:
    """Give the emulator's request log a wall-clock time per entry (``emulator.times``): the
    log records requests under the emulator's lock, so entry i of one is entry i of the
    other."""
    emulator.times = []
    record = emulator._record

    def timed(req: Any, status: int, note: str | None) -> None:
        record(req, status, note)
        emulator.times.append(time.time())

    emulator._record = timed


class Fleet:
    """Two HubSpot and two PingCode emulators, a dealsync.toml of 20 pairs over them with the
    PostgreSQL store, and the environment a worker needs."""

    def __init__(self, tmp_path: Path, url: str, password: str):
        self.dir = tmp_path
        self.url = url
        self.hubspot = [HubSpotEmulator(realtime=True) for _ in range(2)]
        self.pingcode = [PingCodeEmulator(realtime=True) for _ in range(2)]
        self.pairs = {f"p{n:02d}": (n % 2, (n // 2) % 2) for n in range(PAIRS)}
        self.deals: dict[str, list[str]] = defaultdict(list)  # pair -> its deal ids
        self.workers: list[subprocess.Popen] = []
        for emulator in self.hubspot + self.pingcode:
            stamp_requests(emulator)
        self.env = {**os.environ, "DEALSYNC_HOME": str(tmp_path / "home"),
                    "DEALSYNC_STATE_PASSWORD": password}
        self.config = tmp_path / "dealsync.toml"
        self.config.write_text(self._configure(), encoding="utf-8")

    def _configure(self) -> str:
        text = f'[state]\nstate_url = "{self.url}"\n'
        for n, hubspot in enumerate(self.hubspot):
            url = hubspot.start()
            stages = hubspot.config["pipelines"][0]["stages"]
            hubspot.config["pipelines"] = [{"id": f"pl{name}", "label": f"Pipeline {name}",
                                            "stages": stages} for name in self.pairs]
            # A burst limit four workers would exceed many times over at a round's start
            # if each kept its own count.
            hubspot.config.update(burst_max=BURST[0], burst_window_ms=BURST[1] * 1000)
            text += (f'\n[crm.hs{n}]\ntype = "hubspot"\nbase_url = "{url}"\n'
                     f'rate_limits = {{ default = {{ calls = {BURST[0]}, '
                     f'per_seconds = {BURST[1]} }} }}\n')
            self.env[env_var(f"hs{n}", "token")] = PRIVATE_TOKEN
        for n, pingcode in enumerate(self.pingcode):
            url = pingcode.start()
            # the emulator's 200 a minute, over 10 s: rounds of 10 s stay inside it
            pingcode.config["rate_limit_window_s"] = 10
            text += (f'\n[tracker.pc{n}]\ntype = "pingcode"\nbase_url = "{url}"\n'
                     f'project = "SCR"\nmarker_property = "prop_crm_deal"\n'
                     'rate_limits = { default = { calls = 200, per_seconds = 10 } }\n')
            for name in ("client_id", "client_secret"):
                self.env[env_var(f"pc{n}", name)] = DEMO_SECRETS[name]
        shipped = MAPPING.read_text(encoding="utf-8")
        for name, (crm, tracker) in self.pairs.items():
            mapping = self.dir / f"{name}.toml"
            own = shipped.replace('pipeline = ["default"]', f'pipeline = ["pl{name}"]')
            mapping.write_text(own, encoding="utf-8")
            text += (f'\n[pair.{name}]\ncrm = "hs{crm}"\ntracker = "pc{tracker}"\n'
                     f'mapping = "{mapping.name}"\n')
        return text

    def dealsync(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sync.cli", "-c", str(self.config), *args],
                              env=self.env, capture_output=True, text=True, timeout=120, cwd=ROOT)

    def prepare(self) -> None:
        """The deal properties, as `dealsync check --fix` makes them on each HubSpot."""
        for pair in ("p00", "p01"):
            result = self.dealsync("check", "--fix", "--pair", pair)
            assert result.returncode == 0, result.stdout + result.stderr

    def add_deal(self, pair: str) -> None:
        """A new request on the pair's pipeline: the pair's next run creates a requirement."""
        n = len(self.deals[pair])
        hubspot = self.hubspot[self.pairs[pair][0]]
        (deal,) = hubspot.seed(deals=[{"properties": {
            "dealname": f"{pair} deal {n}", "pipeline": f"pl{pair}",
            "dealstage": "qualifiedtobuy", "amount": str(1000 + n),
            "dealsync_request": f"Feature {n} of {pair}\nasked in round {n + 1}"}}])["deals"]
        self.deals[pair].append(deal)

    def start_workers(self, count: int, *extra: str) -> None:
        for _ in range(count):
            self.workers.append(subprocess.Popen(
                [sys.executable, "-m", "sync.cli", "-c", str(self.config), "run", "--every",
                 f"{INTERVAL}s", *extra], env=self.env, cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=open(self.dir / "workers.err", "a")))

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
        for emulator in self.hubspot + self.pingcode:
            emulator.stop()

    # -- reading what happened -----------------------------------------------------------------
    def runs(self) -> dict[str, list[dict[str, Any]]]:
        store = open_store(self.url)
        try:
            rows = store.runs(limit=100_000)
        finally:
            store.close()
        by_pair: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in reversed(rows):
            by_pair[row["pair"]].append(row)
        return by_pair

    def wait_for(self, done: Any, timeout: float, on_progress: Any = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs()
            if on_progress is not None:
                on_progress(runs)
            if done(runs):
                return runs
            assert time.monotonic() < deadline, f"timed out; runs so far: " \
                f"{ {p: len(r) for p, r in runs.items()} }; " + \
                (self.dir / "workers.err").read_text()[-2000:]
            time.sleep(0.2)

    def requirement_holders(self) -> dict[tuple[str, str], list[str]]:
        """(pair, deal) -> the PingCode keys of every item carrying the deal's marker."""
        holders: dict[tuple[str, str], list[str]] = {}
        for tracker in (0, 1):
            items = self.pingcode[tracker].dump_items(False)
            for pair, deals in self.deals.items():
                if self.pairs[pair][1] != tracker:
                    continue
                for deal in deals:
                    marker = make_marker(pair, deal)
                    holders[(pair, deal)] = [i["identifier"] for i in items
                                             if has_marker(i["description"], marker)]
        return holders

    def attributed_requests(self) -> list[tuple[str, float, str, str]]:
        """``(pair, time, emulator, request)`` for every logged request that names one pair's
        deals or requirements: deal ids on HubSpot, markers and item ids on PingCode."""
        found = []
        for n, hubspot in enumerate(self.hubspot):
            ids = {deal: pair for pair, deals in self.deals.items() if self.pairs[pair][0] == n
                   for deal in deals}
            for entry, at in zip(hubspot.log, hubspot.times):
                pairs = {ids[v] for v in _values(entry) if v in ids}
                found += [(pair, at, f"hs{n}", f"{entry['method']} {entry['path']}")
                          for pair in pairs]
        for n, pingcode in enumerate(self.pingcode):
            owner = {item["id"]: MARKER.search(item["description"]).group(1)
                     for item in pingcode.dump_items(False) if MARKER.search(item["description"])}
            for entry, at in zip(pingcode.log, pingcode.times):
                pairs = {owner[v] for v in _values(entry) if v in owner}
                pairs |= set(MARKER.findall(json.dumps(entry["body"], ensure_ascii=False)))
                found += [(pair, at, f"pc{n}", f"{entry['method']} {entry['path']}")
                          for pair in pairs]
        return found

    def throttled(self) -> int:
        return sum(entry["status"] == 429 for emulator in self.hubspot + self.pingcode
                   for entry in emulator.log)

    def busiest_burst(self) -> int:
        """The most calls one HubSpot instance answered in any window of BURST[1] seconds."""
        best = 0
        for hubspot in self.hubspot:
            times = hubspot.times
            start = 0
            for end, at in enumerate(times):
                while times[start] <= at - BURST[1]:
                    start += 1
                best = max(best, end - start + 1)
        return best


def _values(entry: dict[str, Any]) -> set[str]:
    """Every path segment and every string or number in the query and body of a request."""
    found = set(entry["path"].split("/"))

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, (str, int)):
            found.add(str(value))

    walk(entry["query"])
    walk(entry["body"])
    return found


def intervals(runs: list[dict[str, Any]]) -> list[tuple[datetime, datetime]]:
    return [(parse_ts(r["started_at"]), parse_ts(r["finished_at"])) for r in runs]


def assert_no_overlap(fleet: Fleet, runs: dict[str, list[dict[str, Any]]],
                      allowed: dict[str, tuple[float, float]] | None = None) -> None:
    """By the run records: one pair's runs follow each other. By the request logs: every
    request touching a pair's records was made during one of that pair's recorded runs (or in
    ``allowed``: the stretch of a run killed before it could record itself, which must not
    overlap the others either; a request it had already sent may still be served a moment
    after the kill, IN_FLIGHT_S)."""
    for pair, rows in runs.items():
        spans = sorted((s.timestamp(), e.timestamp()) for s, e in intervals(rows))
        if pair in (allowed or {}):
            spans = sorted(spans + [allowed[pair]])
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end <= start, f"{pair}: runs overlap ({end} > {start})"
    outside = [(pair, at, where, what) for pair, at, where, what in fleet.attributed_requests()
               if not any(s.timestamp() <= at <= e.timestamp() for s, e in intervals(runs[pair]))
               and not (pair in (allowed or {})
                        and allowed[pair][0] <= at <= allowed[pair][1] + IN_FLIGHT_S)]
    assert outside == []


def assert_no_duplicates(fleet: Fleet) -> None:
    holders = fleet.requirement_holders()
    assert len(holders) == sum(len(d) for d in fleet.deals.values())
    doubled = {key: keys for key, keys in holders.items() if len(keys) != 1}
    assert doubled == {}, "a deal has no requirement or more than one"
    for (pair, deal), (key,) in holders.items():
        shown = fleet.hubspot[fleet.pairs[pair][0]].deal(deal)["properties"]
        assert shown["dealsync_requirement"] == key


@pytest.fixture
def fleet(tmp_path, pg_url):
    from pgcluster import PASSWORD

    world = Fleet(tmp_path, pg_url, PASSWORD)
    world.prepare()
    for pair in world.pairs:
        world.add_deal(pair)
    yield world
    world.stop()


ROUNDS = 5


def test_four_workers_share_twenty_pairs_for_five_rounds(fleet):
    fed: dict[str, int] = defaultdict(int)

    def feed(runs: dict[str, list]) -> None:  # a new request after each run, for the next
        for pair, rows in runs.items():
            while fed[pair] < min(len(rows), ROUNDS - 1):
                fed[pair] += 1
                fleet.add_deal(pair)

    fleet.start_workers(1, "--workers", str(WORKERS))
    runs = fleet.wait_for(lambda r: len(r) == PAIRS and
                          all(len(rows) >= ROUNDS for rows in r.values()),
                          timeout=ROUNDS * INTERVAL + 60, on_progress=feed)
    fleet.stop()
    runs = fleet.runs()

    for pair, rows in runs.items():  # once per round: a round apart, never two in one
        assert len(rows) == ROUNDS, (pair, len(rows))
        assert [r["status"] for r in rows] == ["ok"] * ROUNDS, (pair, rows[-1]["summary"])
        assert [r["summary"]["counts"]["created"] for r in rows] == [1] * ROUNDS
        starts = [s for s, _ in intervals(rows)]
        gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:])]
        assert all(INTERVAL <= gap < 2 * INTERVAL for gap in gaps), (pair, gaps)
    assert_no_overlap(fleet, runs)
    assert_no_duplicates(fleet)
    assert fleet.throttled() == 0
    assert fleet.busiest_burst() >= BURST[0] * 0.9  # the shared limit was reached, not passed
    store = open_store(fleet.url)
    try:
        assert check_store(store).problems == []
    finally:
        store.close()


def holder_pid(url: str, password: str, pair: str) -> int | None:
    """The process id of the worker holding ``pair``'s lock, from its application name."""
    import psycopg

    key = lock_key("pair", "public", pair) & 0xFFFFFFFFFFFFFFFF
    with psycopg.connect(url, password=password, autocommit=True) as db:
        row = db.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            " AND l.classid::bigint = %s AND l.objid::bigint = %s",
            (key >> 32, key & 0xFFFFFFFF)).fetchone()
    return int(row[0].rsplit(" ", 1)[1]) if row else None


def kill_at_first_create(fleet: Fleet, password: str) -> dict[str, Any]:
    """Arm the PingCode emulators: the first requirement created kills (SIGKILL) the worker
    that asked for it, after the tracker made it and before the answer leaves, so the run dies
    with its create done and unrecorded. Returns what happened: pair, pid, time."""
    killed: dict[str, Any] = {}
    for pingcode in fleet.pingcode:
        record = pingcode._record

        def armed(req: Any, status: int, note: str | None, record: Any = record) -> None:
            record(req, status, note)
            if killed or req.method != "POST" or not req.path.endswith("/work_items"):
                return
            pair = MARKER.search(req.raw_body.decode("utf-8", "replace"))
            pid = holder_pid(fleet.url, password, pair.group(1)) if pair else None
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.update(pair=pair.group(1), pid=pid, at=time.time())

        pingcode._record = armed
    return killed


def test_a_worker_killed_mid_run_leaves_its_pair_to_the_others_without_duplicates(fleet):
    from pgcluster import PASSWORD

    killed = kill_at_first_create(fleet, PASSWORD)
    fleet.start_workers(WORKERS)
    deadline = time.monotonic() + 60
    while not killed:
        assert time.monotonic() < deadline, "no worker ever created a requirement"
        time.sleep(0.05)
    pair, victim = killed["pair"], next(w for w in fleet.workers if w.pid == killed["pid"])
    victim.wait(timeout=10)
    assert victim.returncode == -signal.SIGKILL

    fed: dict[str, int] = defaultdict(int)

    def feed(runs: dict[str, list]) -> None:
        for name, rows in runs.items():
            if not fed[name] and rows:
                fed[name] = 1
                fleet.add_deal(name)

    runs = fleet.wait_for(lambda r: len(r) == PAIRS and all(len(rows) >= 2 for rows in
                                                             r.values()),
                          timeout=4 * INTERVAL + 60, on_progress=feed)
    fleet.stop()
    runs = fleet.runs()

    (pickup, _) = runs[pair]  # the killed run recorded nothing; the others ran the pair twice
    started = parse_ts(pickup["started_at"]).timestamp()
    assert killed["at"] <= started <= killed["at"] + INTERVAL, "not picked up within the round"
    counts = pickup["summary"]["counts"]
    assert (pickup["status"], counts["created"], counts["relinked"]) == ("ok", 0, 1)
    for name, rows in runs.items():
        assert [r["status"] for r in rows] == ["ok"] * len(rows), name
    assert_no_overlap(fleet, runs, allowed={pair: (0.0, killed["at"])})
    assert_no_duplicates(fleet)
    assert fleet.throttled() == 0
