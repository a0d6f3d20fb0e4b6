"""Both services at once: the same run with lanes off and on, on real time, where both rate
limits bind (docs/engine.md §9).

Both emulators run on the wall clock with a small window (HubSpot 10 calls per second, search
included; PingCode 10 per second) and the connectors' limiters are told the same. The work:
DEALS deals linked to REQS requirements; then a PM changes the priority of every requirement
(every deal gets the new value: DEALS / 100 HubSpot batches) while sales changes one deal's
amount per requirement (each requirement's deal list is rewritten: REQS PingCode updates). The
run is made twice on identical data, once on one thread and once with lanes.

The floor of a run is its busiest service: N calls at L per second take at least
(ceil(N / L) - 1) seconds, so the best wall time with lanes is the larger of the two floors,
and on one thread it is about their sum.

    python benchmarks/lanes.py [--deals 3000] [--reqs 30]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.hubspot.emulator import HubSpotEmulator  # noqa: E402
from plugins.hubspot.testing import emulator_connector as hubspot_connector  # noqa: E402
from plugins.pingcode.emulator import PingCodeEmulator  # noqa: E402
from plugins.pingcode.testing import emulator_connector as pingcode_connector  # noqa: E402
from sync.engine import Options, Pair, run_pair  # noqa: E402
from sync.mapping import load_mapping  # noqa: E402
from sync.state import StateStore  # noqa: E402

PER_S = 10  # calls a second, each service
MAPPING = load_mapping("hubspot-pingcode")


def floor_s(calls: int) -> float:
    return max(0, math.ceil(calls / PER_S) - 1)


def one(deals: int, reqs: int, concurrent: bool) -> dict:
    limits = {"default": {"calls": PER_S, "per_seconds": 1},
              "search": {"calls": PER_S, "per_seconds": 1}}
    with HubSpotEmulator(realtime=True) as hubspot, PingCodeEmulator(realtime=True) as pingcode:
        hubspot.configure(burst_max=PER_S, burst_window_ms=1000, search_rps=PER_S)
        pingcode.config.update(rate_limit_per_min=PER_S, rate_limit_window_s=1)
        hubspot_connector(hubspot, virtual_time=False).ensure_fields(MAPPING.crm_schema())
        keys = [pingcode.add_item(f"需求 {n}")["identifier"] for n in range(reqs)]
        ids = hubspot.seed(deals=[{"properties": {
            "dealname": f"Deal {n}", "dealstage": "qualifiedtobuy", "amount": "1000",
            "dealsync_request": keys[n % reqs]}} for n in range(deals)])["deals"]

        def sync(with_lanes: bool) -> tuple[dict, float]:
            crm = hubspot_connector(hubspot, virtual_time=False, rate_limits=limits)
            tracker = pingcode_connector(pingcode, "rd", virtual_time=False,
                                         rate_limits=limits)
            clock = time.perf_counter()
            summary = run_pair(Pair("bench", crm, tracker, MAPPING, max_change_share=1.0,
                                    max_creates=0), store, Options(concurrent=with_lanes))
            return summary, time.perf_counter() - clock

        with tempfile.TemporaryDirectory() as tmp:
            store = StateStore(Path(tmp) / "state.db")
            sync(True)  # the backfill: every deal linked
            for key in keys:
                pingcode.mutate(key, priority="最高")
            for n in range(reqs):
                hubspot.mutate(ids[n], {"amount": "2000"})
            time.sleep(1.1)  # a fresh window on both services
            before = {"hubspot": len(hubspot.log), "pingcode": len(pingcode.log)}
            summary, wall = sync(concurrent)
            store.close()
        log = {"hubspot": hubspot.log[before["hubspot"]:],
               "pingcode": pingcode.log[before["pingcode"]:]}
        calls = {side: len(entries) for side, entries in log.items()}
        assert summary["status"] == "ok", summary
        assert summary["counts"]["updated_crm"] == deals, summary["counts"]
        return {"lanes": concurrent, "wall_s": wall, "calls": calls,
                "429s": sum(1 for side in log.values() for r in side if r["status"] == 429),
                "updated_crm": summary["counts"]["updated_crm"],
                "updated_tracker": summary["counts"]["updated_tracker"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=3000)
    parser.add_argument("--reqs", type=int, default=30)
    args = parser.parse_args(argv)
    serial = one(args.deals, args.reqs, concurrent=False)
    lanes = one(args.deals, args.reqs, concurrent=True)
    floors = {side: floor_s(n) for side, n in lanes["calls"].items()}
    result = {"work": f"{args.deals:,} deals written, {args.reqs} requirements updated",
              "serial": serial, "lanes": lanes, "floor_lanes_s": max(floors.values()),
              "floor_serial_s": sum(floors.values()),
              "speedup": serial["wall_s"] / lanes["wall_s"]}
    for run in (serial, lanes):
        print(f"lanes {'on ' if run['lanes'] else 'off'}: {run['wall_s']:.1f} s, calls "
              f"HubSpot {run['calls']['hubspot']}, PingCode {run['calls']['pingcode']}, "
              f"429s {run['429s']}")
    print(f"floor with lanes max({floors['hubspot']:.0f}, {floors['pingcode']:.0f}) = "
          f"{result['floor_lanes_s']:.0f} s; on one thread about "
          f"{result['floor_serial_s']:.0f} s; lanes {result['speedup']:.2f}x faster")
    return result


if __name__ == "__main__":
    main()
