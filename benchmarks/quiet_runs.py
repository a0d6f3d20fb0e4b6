"""What a run that finds nothing to do costs: right after a backfill (inside the lookback window,
which re-reads the last burst) and once the lookback has passed.

HubSpot and PingCode emulators in-process at their documented limits, on virtual clocks
(``on_virtual_time`` in plugins/emulator.py): the connectors' waits move the emulators' clocks,
and the script moves them on between runs: 2 minutes (inside the lookback), 11 (the first run
past it, whose window still starts a lookback before the previous run), then 5 (after it).
Calls are counted per endpoint and set against the fewest such a run needs, with the
arithmetic.

    python benchmarks/quiet_runs.py [--deals 2000] [--keys 10] [--new 100]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.hubspot.emulator import HubSpotEmulator  # noqa: E402
from plugins.hubspot.testing import emulator_connector as hubspot_connector  # noqa: E402
from plugins.pingcode.emulator import PingCodeEmulator  # noqa: E402
from plugins.pingcode.testing import emulator_connector as pingcode_connector  # noqa: E402
from sync.engine import Options, Pair, run_pair  # noqa: E402
from sync.mapping import load_mapping  # noqa: E402
from sync.state import StateStore  # noqa: E402

HUBSPOT_SEARCH_PAGE = 200  # docs/hubspot.md §7
HUBSPOT_BATCH = 100  # batch reads, association reads (docs/hubspot.md)
PINGCODE_PAGE = 100  # docs/pingcode.md §12
LOOKBACK = Pair.crm_lookback  # the default: 10 minutes


def delta(conn: Any, before: dict[str, int]) -> dict[str, int]:
    return {label: n - before.get(label, 0) for label, n in conn.api_calls().items()
            if n - before.get(label, 0)}


def show(title: str, summary: dict[str, Any], wall: float, calls: dict[str, dict[str, int]]
         ) -> None:
    counts = {k: v for k, v in summary["counts"].items() if v}
    total = sum(sum(c.values()) for c in calls.values())
    print(f"{title}: {summary['status']} in {wall:.1f} s wall, {total} calls; {counts}")
    for side, per in calls.items():
        print(f"  {side}: {sum(per.values())} calls")
        for label, n in sorted(per.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"    {n:6}  {label}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=10, help="existing requirements named")
    parser.add_argument("--new", type=int, default=100, help="new requirements asked for")
    args = parser.parse_args(argv)
    with HubSpotEmulator() as hubspot, PingCodeEmulator() as pingcode:
        pingcode.config["rate_limit_per_min"] = 200
        run(hubspot, pingcode, args)


def run(hubspot: HubSpotEmulator, pingcode: PingCodeEmulator, args: argparse.Namespace) -> None:
    mapping = load_mapping("hubspot-pingcode")
    setup = hubspot_connector(hubspot)
    setup.ensure_fields(mapping.crm_schema())
    setup.close()
    existing = [item["identifier"] for item in pingcode.dump_items(False)]
    names = (existing + [item["identifier"] for item in pingcode.add_items(
        max(0, args.keys - len(existing)), title="Feature {n}")])[:args.keys]
    specs = []
    for n in range(args.deals):
        asks_new = args.new and n % 4 == 0
        request = (f"New feature {n // 4 % args.new}" if asks_new
                   else f"{names[n % args.keys]}, for site {n}")
        specs.append({"properties": {"dealname": f"Deal {n}", "dealstage": "qualifiedtobuy",
                                     "amount": str(1000 + n), "dealsync_request": request},
                      "companies": [n % 50]})
    hubspot.seed(companies=[{"name": f"Company {c}", "domain": f"c{c}.test"} for c in range(50)],
                 deals=specs)
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state.db")
        runs = []
        for title, wait in (
                ("backfill", timedelta(0)),
                ("quiet run inside the lookback (right after the backfill)",
                 timedelta(minutes=2)),
                # its window still starts a lookback before the previous run: the burst again
                ("first quiet run past the lookback", LOOKBACK + timedelta(minutes=1)),
                ("quiet run after the lookback", timedelta(minutes=5))):
            for clock in (hubspot.clock, pingcode.clock):
                clock.advance(wait.total_seconds() * 1000)
            # fresh connectors: each scheduled run is a new process, caches and all
            crm, tracker = hubspot_connector(hubspot), pingcode_connector(pingcode, "rd")
            pair = Pair("bench", crm, tracker, mapping, guard_min_links=10**9,
                        max_creates=10**9)
            started = time.perf_counter()
            summary = run_pair(pair, store, Options())
            wall = time.perf_counter() - started
            calls = {"hubspot": delta(crm, {}), "pingcode": delta(tracker, {})}
            crm.close()
            tracker.close()
            show(title, summary, wall, calls)
            runs.append((summary, calls))
        store.close()
    print()
    pair = Pair("bench", crm, tracker, mapping)  # the defaults: verify slices, lookback
    explain(pair, runs[1], inside=True)
    explain(pair, runs[3], inside=False)
    print(f"429s: HubSpot {sum((hubspot.stats()['rate_limited'] or {}).values())}, PingCode "
          f"{sum(1 for r in pingcode.log if r['status'] == 429)}")


def _fixed(calls: dict[str, int]) -> int:
    """PingCode's configuration reads (token, project, type, states, priorities, plans, flows,
    versions): the same few calls in every run."""
    return sum(n for label, n in calls.items()
               if "/work_items" not in label or "state_plans" in label)


def explain(pair: Pair, run: tuple[dict[str, Any], dict[str, dict[str, int]]],
            inside: bool) -> None:
    summary, calls = run
    read, reqs = summary["counts"]["deals_read"], summary["counts"]["requirements_read"]
    hub, pc = sum(calls["hubspot"].values()), sum(calls["pingcode"].values())
    fixed = _fixed(calls["pingcode"])
    verify = math.ceil(pair.verify_deals / HUBSPOT_BATCH)
    if inside:
        search, pages = math.ceil(read / HUBSPOT_SEARCH_PAGE), max(1, math.ceil(reqs /
                                                                              PINGCODE_PAGE))
        hub_min = search + verify + 1 + 1
        pc_min = fixed + pages
        print(f"inside the lookback: {read:,} deals and {reqs} requirements re-read (the "
              "backfill's own writes are the last burst)")
        print(f"  HubSpot: {search} search pages (ceil({read:,} / {HUBSPOT_SEARCH_PAGE})) + "
              f"{verify} association read and 1 company batch read for the {pair.verify_deals}"
              f"-deal verify slice (already in the search) + 1 pipelines = {hub_min} fewest; "
              f"made {hub}")
        print(f"  PingCode: {fixed} configuration + {pages} search pages (ceil({reqs} / "
              f"{PINGCODE_PAGE})); the verify slice is in the search = {pc_min} fewest; "
              f"made {pc}")
    else:
        # HubSpot: nothing re-read; one empty page, the verify slice read by id (which also
        # shows the side answers: no probe), its companies, the stage labels. PingCode filters
        # by whole days (docs/pingcode.md §8): the day's changes come back on every run that day
        pages = max(1, math.ceil(reqs / PINGCODE_PAGE))
        hub_min = 1 + verify + verify + 1 + 1
        pc_min = fixed + pages
        print(f"after the lookback: {read:,} deals and {reqs} requirements read")
        print(f"  HubSpot: 1 empty search page + {verify} verify batch read + {verify} "
              f"association read + 1 company batch read + 1 pipelines = {hub_min} fewest; made "
              f"{hub} (the cursor is the service's time when the last read began, from its "
              "Date header: docs/engine.md §2, step 11)")
        print(f"  PingCode: {fixed} configuration + {pages} search pages for the day's "
              f"{reqs} changes (its search filters by whole days, docs/pingcode.md §8) = "
              f"{pc_min} fewest; made {pc}")
    print(f"  writes: {summary['counts']['updated_crm']} deals, "
          f"{summary['counts']['updated_tracker']} requirements")


if __name__ == "__main__":
    main()
