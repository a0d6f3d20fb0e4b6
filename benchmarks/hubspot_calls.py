"""API calls the HubSpot connector spends per 1,000 deals read (iter_changed) and written (update).

Runs against the in-process emulator (plugins/hubspot/emulator.py) with the documented limits
(100 calls / 10 s, search 5 / s). The connector's rate limiter and sleeps run on the emulator's
virtual clock, so the script finishes in seconds and also reports how long the same traffic
takes at those limits in real time.

    python benchmarks/hubspot_calls.py [--deals 5000] [--companies 500] [--owners 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.hubspot.connector import HubSpotConnector  # noqa: E402
from plugins.hubspot.emulator import HubSpotEmulator  # noqa: E402
from plugins.hubspot.testing import emulator_connector  # noqa: E402


def seed(emu: HubSpotEmulator, deals: int, companies: int, owners: int) -> list[str]:
    for n in range(owners):
        emu.create_owner(f"rep{n}@example.test", f"Rep{n}", "Example")
    company_ids = [emu.create_company({"name": f"Company {n}", "domain": f"c{n}.test"}).id
                   for n in range(companies)]
    ids = emu.seed_deals(deals, step_ms=1000)
    for n, deal_id in enumerate(ids):
        if company_ids:
            emu.associate(deal_id, company_ids[n % len(company_ids)])
    return ids


def connector(emu: HubSpotEmulator) -> HubSpotConnector:
    return emulator_connector(emu, "bench")


def measure(emu: HubSpotEmulator, work) -> tuple[dict[str, int], float, float]:
    hs = connector(emu)
    virtual_start, wall_start = emu.clock.now(), time.perf_counter()
    try:
        work(hs)
        calls = hs.api_calls()
    finally:
        hs.close()
    virtual_s = (emu.clock.now() - virtual_start).total_seconds()
    return calls, virtual_s, time.perf_counter() - wall_start


def report(title: str, deals: int, calls: dict[str, int], virtual_s: float, wall_s: float) -> None:
    total = sum(calls.values())
    per_k = total * 1000 / deals
    print(f"{title}: {total} calls for {deals} deals = {per_k:.1f} calls per 1,000 deals; "
          f"rate-limit waits {virtual_s * 1000 / deals:.2f} s per 1,000 deals at the documented "
          f"limits (ran in {wall_s:.1f} s)")
    for label, count in sorted(calls.items(), key=lambda kv: -kv[1]):
        print(f"    {count * 1000 / deals:7.2f} per 1,000  {label}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=5000)
    parser.add_argument("--companies", type=int, default=500)
    parser.add_argument("--owners", type=int, default=20)
    args = parser.parse_args(argv)

    emu = HubSpotEmulator()
    emu.start()
    try:
        ids = seed(emu, args.deals, args.companies, args.owners)
        properties = ["hs_priority"]
        until = emu.clock.now()
        read = []
        calls, virtual_s, wall_s = measure(
            emu, lambda hs: read.extend(hs.iter_changed(None, until, properties)))
        assert len(read) == args.deals, (len(read), args.deals)
        report("read (iter_changed, with company/owner/stage context)", args.deals, calls,
               virtual_s, wall_s)
        emu.clock.advance(10_000)  # let the burst window empty: a fresh client cannot know it
        calls, virtual_s, wall_s = measure(
            emu, lambda hs: hs.fetch(ids, properties, with_context=False))
        report("read by id (fetch; the engine re-reads every deal it is about to write)",
               args.deals, calls, virtual_s, wall_s)
        emu.clock.advance(10_000)
        calls, virtual_s, wall_s = measure(
            emu, lambda hs: hs.update([(i, {"hs_priority": "high"}) for i in ids]))
        report("write (update)", args.deals, calls, virtual_s, wall_s)
        print(f"429s from the emulator: {emu.stats()['rate_limited'] or 'none'}")
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
