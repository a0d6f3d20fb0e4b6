"""dealsync's overhead over bare HTTP: a backfill against the HubSpot and PingCode emulators, then
the very same requests replayed by a bare ``requests.Session`` loop.

The sync runs on a fresh state store with both emulators' rate limits off (and the connectors'
limits out of the way), so no side waits; every request the emulators receive is logged
(``plugins/emulator.py``), in the order they arrive across both. The emulators are then reset
to the same seed and seeded the same way, and the loop sends each logged request again: the
same method, URL and body, the credential in a header, nothing else. Its URLs and bodies are
built before the clock starts, so the loop is the least any client could spend on that traffic.
Both sides alternate, ``--repeat`` times each, and the medians give the ratio (target
<= 1.3). Both sides get the same answers: the replay checks every status against the log.

On loopback an answer takes about 2 ms, so dealsync's own CPU per request (planning, the
state store, parsing) weighs as much as it ever can; ``--latency-ms`` adds a round trip to
every answer of both sides alike, as the network to a SaaS API does, and dealsync's lanes then
overlap the two services where the bare loop cannot.

    python benchmarks/replay.py [--deals 1000] [--new 300] [--keys 10] [--repeat 9]
    python benchmarks/replay.py --latency-ms 20  # a round trip of 20 ms on every answer
    python benchmarks/replay.py --profile 25     # and where dealsync's own CPU goes (cProfile)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.hubspot.emulator import PRIVATE_TOKEN, HubSpotEmulator  # noqa: E402
from plugins.hubspot.testing import emulator_connector as hubspot_connector  # noqa: E402
from plugins.pingcode.emulator import PingCodeEmulator  # noqa: E402
from plugins.pingcode.testing import emulator_connector as pingcode_connector  # noqa: E402
from sync.engine import Options, Pair, run_pair  # noqa: E402
from sync.mapping import load_mapping  # noqa: E402
from sync.state import StateStore  # noqa: E402

SEED = 7
NO_LIMIT = {"calls": 10**9, "per_seconds": 1}  # the connectors' own windows out of the way
TOKEN_PATH = "/v1/auth/token"


class Recorder:
    """Wraps both emulators' dispatch: the order requests arrive in across the two, and the
    seconds spent answering them (the server's share of both sides' wall time)."""

    def __init__(self, emulators: dict[str, Any]):
        self.order: list[tuple[str, int]] = []  # (emulator, index in its log)
        self.server_s = 0.0
        self._lock = threading.Lock()
        for name, emu in emulators.items():
            emu.dispatch = self._wrap(name, emu, emu.dispatch)

    def _wrap(self, name: str, emu: Any, dispatch: Any) -> Any:
        def recorded(req: Any) -> Any:
            started = time.perf_counter()
            before = len(emu.log)
            response = dispatch(req)
            with self._lock:
                self.server_s += time.perf_counter() - started
                self.order += [(name, i) for i in range(before, len(emu.log))]
            return response
        return recorded

    def clear(self) -> None:
        self.order, self.server_s = [], 0.0


def prepare(hubspot: HubSpotEmulator, pingcode: PingCodeEmulator, mapping: Any, deals: int,
            new: int, keys: int) -> None:
    """Reset both emulators to SEED and seed the same world: ``keys`` existing requirements,
    ``deals`` deals (every third names one of them, the rest ask for one of ``new`` new ones)."""
    for emu in (hubspot, pingcode):
        emu.reset(SEED)
    hubspot.config.update(burst_max=10**9, search_rps=10**9, daily_max=10**9)
    pingcode.config["rate_limit_per_min"] = 0
    existing = [item["identifier"] for item in pingcode.dump_items(False)]
    names = (existing + [item["identifier"] for item in pingcode.add_items(
        max(0, keys - len(existing)), title="Feature {n}")])[:keys]
    crm = hubspot_connector(hubspot, "hubspot")
    crm.ensure_fields(mapping.crm_schema())
    crm.close()
    specs, asking = [], 0
    for n in range(deals):
        if n % 3 == 0:
            request = f"{names[n % keys]}, for site {n}"
        else:
            request = f"New feature {asking % new}\nAsked for by site {n}."
            asking += 1
        specs.append({"properties": {"dealname": f"Deal {n}", "dealstage": "qualifiedtobuy",
                                     "amount": str(1000 + n), "dealsync_request": request},
                      "companies": [n % 50]})
    hubspot.seed(companies=[{"name": f"Company {c}", "domain": f"c{c}.test"}
                            for c in range(50)], deals=specs)
    for emu in (hubspot, pingcode):
        emu.log.clear()


def sync_once(hubspot: HubSpotEmulator, pingcode: PingCodeEmulator, mapping: Any,
              profile: cProfile.Profile | None = None) -> tuple[float, dict[str, Any]]:
    """One backfill on a fresh state store; its wall time and summary."""
    crm = hubspot_connector(hubspot, "hubspot", rate_limits={"default": NO_LIMIT,
                                                              "search": NO_LIMIT})
    tracker = pingcode_connector(pingcode, "rd", rate_limits={"default": NO_LIMIT})
    pair = Pair("bench", crm, tracker, mapping, guard_min_links=10**9, max_creates=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state.db")
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        summary = run_pair(pair, store, Options())
        if profile is not None:
            profile.disable()
        wall = time.perf_counter() - started
        store.close()
    crm.close()
    tracker.close()
    return wall, summary


def recorded(emulators: dict[str, Any], order: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """The logged requests in arrival order, ready to send: URL and body bytes built now."""
    calls = []
    for name, index in order:
        entry = emulators[name].log[index]
        body = entry["body"]
        data = None if body is None else (body.encode("utf-8") if isinstance(body, str)
                                          else json.dumps(body, ensure_ascii=False)
                                          .encode("utf-8"))
        url = requests.Request(entry["method"], emulators[name].url + entry["path"],
                               params=entry["query"]).prepare().url
        calls.append({"emu": name, "method": entry["method"], "url": url, "data": data,
                      "status": entry["status"], "path": entry["path"]})
    return calls


def replay_once(calls: list[dict[str, Any]]) -> float:
    """Send every call with a bare session per emulator; its wall time. The PingCode token
    comes from the replayed token call, as a client would take it."""
    sessions = {name: requests.Session() for name in ("hubspot", "pingcode")}
    headers = {"hubspot": {"Authorization": f"Bearer {PRIVATE_TOKEN}",
                           "Content-Type": "application/json"},
               "pingcode": {"Content-Type": "application/json"}}
    started = time.perf_counter()
    for call in calls:
        response = sessions[call["emu"]].request(call["method"], call["url"], data=call["data"],
                                                 headers=headers[call["emu"]])
        if call["path"] == TOKEN_PATH:
            headers["pingcode"]["Authorization"] = f"Bearer {response.json()['access_token']}"
        if response.status_code != call["status"]:
            raise SystemExit(f"replay: {call['method']} {call['url']} answered "
                             f"{response.status_code}, the sync got {call['status']}")
    wall = time.perf_counter() - started
    for session in sessions.values():
        session.close()
    return wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=1000)
    parser.add_argument("--new", type=int, default=300, help="distinct new requirements")
    parser.add_argument("--keys", type=int, default=10, help="existing requirements named")
    parser.add_argument("--repeat", type=int, default=9, help="runs of each side, alternating")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="a network round trip the emulators add to every answer, for "
                             "both sides alike (default 0: loopback)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile one sync and print its N costliest functions")
    args = parser.parse_args(argv)
    mapping = load_mapping("hubspot-pingcode")
    with HubSpotEmulator(SEED) as hubspot, PingCodeEmulator(SEED) as pingcode:
        emulators = {"hubspot": hubspot, "pingcode": pingcode}
        recorder = Recorder(emulators)
        for emulator in emulators.values():
            emulator.latency_s = args.latency_ms / 1000
        prepare(hubspot, pingcode, mapping, args.deals, args.new, args.keys)
        recorder.clear()
        _, summary = sync_once(hubspot, pingcode, mapping)
        calls = recorded(emulators, recorder.order)
        sync_s, replay_s, sync_server, replay_server = [], [], [], []
        for _ in range(args.repeat):
            for side, times, server in (("sync", sync_s, sync_server),
                                        ("replay", replay_s, replay_server)):
                prepare(hubspot, pingcode, mapping, args.deals, args.new, args.keys)
                recorder.clear()
                if side == "sync":
                    wall, _ = sync_once(hubspot, pingcode, mapping)
                    if len(recorder.order) != len(calls):
                        raise SystemExit(f"sync sent {len(recorder.order)} requests, the "
                                         f"recorded one {len(calls)}")
                else:
                    wall = replay_once(calls)
                times.append(wall)
                server.append(recorder.server_s)
        profile_text = ""
        if args.profile:
            prepare(hubspot, pingcode, mapping, args.deals, args.new, args.keys)
            profile = cProfile.Profile()
            sync_once(hubspot, pingcode, mapping, profile)
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.profile)
            profile_text = out.getvalue()
    report(args, summary, calls, sync_s, replay_s, sync_server, replay_server)
    if profile_text:
        print("\ndealsync's own CPU in one sync (main thread; cProfile, by own time):")
        print(profile_text.rstrip())


def report(args: argparse.Namespace, summary: dict[str, Any], calls: list[dict[str, Any]],
           sync_s: list[float], replay_s: list[float], sync_server: list[float],
           replay_server: list[float]) -> None:
    counts = {k: v for k, v in summary["counts"].items() if v}
    by_emu = {name: sum(1 for c in calls if c["emu"] == name) for name in ("hubspot", "pingcode")}
    sync_m, replay_m = statistics.median(sync_s), statistics.median(replay_s)
    ratio = sync_m / replay_m
    print(f"{args.deals:,} deals ({args.new} new requirements, {args.keys} existing keys): "
          f"{summary['status']}; {counts}")
    print(f"requests: {len(calls)} (HubSpot {by_emu['hubspot']}, PingCode "
          f"{by_emu['pingcode']}), the same in every run, statuses equal in the replay")
    where = (f"{args.latency_ms:g} ms added to every answer" if args.latency_ms
             else "loopback, no latency added")
    print(f"runs alternated, {args.repeat} of each, {where}; medians:")
    print(f"  dealsync sync      {sync_m:6.2f} s  ({' '.join(f'{t:.2f}' for t in sync_s)}); "
          f"emulators answering {statistics.median(sync_server):.2f} s")
    print(f"  bare requests loop {replay_m:6.2f} s  ({' '.join(f'{t:.2f}' for t in replay_s)}); "
          f"emulators answering {statistics.median(replay_server):.2f} s")
    print(f"  per request: sync {sync_m / len(calls) * 1000:.2f} ms, loop "
          f"{replay_m / len(calls) * 1000:.2f} ms; dealsync's own "
          f"{(sync_m - replay_m) / len(calls) * 1000:.2f} ms")
    print(f"ratio {sync_m:.2f} / {replay_m:.2f} = {ratio:.2f} (limit 1.30): "
          f"{'within' if ratio <= 1.3 else 'over'}")
    if len(sync_s) >= 4:  # how far the machine moves the figure from one pair to the next
        paired = sorted(s / r for s, r in zip(sync_s, replay_s))
        quartiles = statistics.quantiles(paired, n=4)
        print(f"paired runs (each sync / the loop right after it): median "
              f"{statistics.median(paired):.2f}, middle half "
              f"{quartiles[0]:.2f}-{quartiles[2]:.2f}, all {paired[0]:.2f}-{paired[-1]:.2f}")


if __name__ == "__main__":
    main()
