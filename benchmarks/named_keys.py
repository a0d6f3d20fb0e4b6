"""A whole sync of 12,000 HubSpot deals whose requests name 10 existing PingCode requirements.

Both emulators run in-process at their documented limits (HubSpot 100 calls / 10 s and search
5 / s; PingCode 200 / min) on virtual clocks: every wait of the connectors' rate limiters moves
the emulator's clock instead of sleeping, so the script reports how long the same traffic takes
against the real services, in seconds of wall time. Calls are counted per endpoint and set
against the fewest the work needs.

    python benchmarks/named_keys.py [--deals 12000] [--keys 10]
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
from plugins.pingcode.testing import emulator_connector  # noqa: E402
from sync.engine import Options, Pair, run_pair  # noqa: E402
from sync.mapping import load_mapping  # noqa: E402
from sync.state import StateStore  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=12_000)
    parser.add_argument("--keys", type=int, default=10)
    args = parser.parse_args(argv)
    with HubSpotEmulator() as hubspot, PingCodeEmulator() as pingcode:
        pingcode.config["rate_limit_per_min"] = 200
        run(hubspot, pingcode, args.deals, args.keys)


def run(hubspot: HubSpotEmulator, pingcode: PingCodeEmulator, deals: int, keys: int) -> None:
    mapping = load_mapping("hubspot-pingcode")
    crm, tracker = hubspot_connector(hubspot), emulator_connector(pingcode, "rd")
    crm.ensure_fields(mapping.crm_schema())
    existing = [item["identifier"] for item in pingcode.dump_items(False)]
    names = existing + [item["identifier"] for item in
                        pingcode.add_items(max(0, keys - len(existing)), title="Feature {n}")]
    names = names[:keys]
    hubspot.seed(deals=[{"properties": {
        "dealname": f"Deal {n}", "dealstage": "qualifiedtobuy", "amount": str(1000 + n),
        "dealsync_request": f"{names[n % keys]}, for site {n}"}} for n in range(deals)])
    before_calls = {"crm": dict(crm.api_calls()), "tracker": dict(tracker.api_calls())}
    clocks = hubspot.clock.now(), pingcode.clock.now()
    pair = Pair("bench", crm, tracker, mapping, guard_min_links=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state.db")
        started = time.perf_counter()
        summary = run_pair(pair, store, Options())
        wall = time.perf_counter() - started
        store.close()
    counts = {k: v for k, v in summary["counts"].items() if v}
    print(f"{deals:,} deals naming {keys} existing keys: {summary['status']} in {wall:.1f} s "
          f"wall; {counts}")
    print(f"virtual time at the documented limits: HubSpot "
          f"{(hubspot.clock.now() - clocks[0]).total_seconds():.0f} s, PingCode "
          f"{(pingcode.clock.now() - clocks[1]).total_seconds():.0f} s")
    for side, conn in (("crm", crm), ("tracker", tracker)):
        calls = {label: n - before_calls[side].get(label, 0)
                 for label, n in conn.api_calls().items() if n - before_calls[side].get(label, 0)}
        print(f"{conn.name}: {sum(calls.values())} calls")
        for label, count in sorted(calls.items(), key=lambda kv: -kv[1]):
            print(f"    {count:6}  {label}")
    print("fewest the work needs: " + ", ".join([
        f"{keys} key look-ups", f"{keys} requirement writes (their deal lists)",
        f"{math.ceil(deals / 200)} search pages", f"{math.ceil(deals / 100)} deal batch writes"]))
    print(f"429s: HubSpot {hubspot.stats()['rate_limited'] or 0}, PingCode "
          f"{sum(1 for r in pingcode.log if r['status'] == 429)}")


if __name__ == "__main__":
    main()
