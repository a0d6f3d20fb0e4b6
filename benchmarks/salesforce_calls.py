"""API calls the Salesforce connector spends per 1,000 opportunities read and written, against
the minimum the API allows: one query page per 2,000 records read (docs/salesforce.md §3) and one
sObject Collections call per 200 records written (docs/salesforce.md §6).

Run: ``python -m benchmarks.salesforce_calls [--opportunities 10000]`` from the repository root.

How it measures: each operation runs on a fresh connector (so its login is counted once, as in
a run) against the local emulator, with the emulator's documented batch sizes. Calls are the
connector's own per-endpoint counters (``api_calls()``); the emulator's API usage counter
(``Sforce-Limit-Info``, docs/salesforce.md §8) must agree with them, since every call counts against
the daily allocation except the login.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Callable

from plugins.salesforce.connector import COLLECTIONS_MAX, IDS_PER_QUERY, QUERY_BATCH_MAX
from plugins.salesforce.emulator import SalesforceEmulator
from plugins.salesforce.testing import emulator_connector

LOGIN = "POST /services/oauth2/token"


def measure(emu: SalesforceEmulator, work: Callable) -> tuple[dict[str, int], float]:
    """``work(connector)``'s API calls by endpoint, and its wall time."""
    connector = emulator_connector(emu)
    usage_before, started = emu.api_usage(), time.perf_counter()
    try:
        work(connector)
        calls = connector.api_calls()
    finally:
        connector.close()
    # Every call but the login counts against the allocation: the two counts must agree.
    assert emu.api_usage() - usage_before == sum(calls.values()) - calls.get(LOGIN, 0)
    return calls, time.perf_counter() - started


def row(operation: str, records: int, calls: dict[str, int], minimum: float | None,
        wall_s: float) -> str:
    """A Markdown table row; ``minimum`` is the fewest calls the API allows (None: no such
    bound, the URL length sets it)."""
    api = {label: n for label, n in calls.items() if label != LOGIN}
    per_k = sum(api.values()) * 1000 / records
    least = "-" if minimum is None else f"{minimum * 1000 / records:.1f}"
    made_of = ", ".join(f"{n} {label}" for label, n in sorted(api.items()))
    return (f"| {operation} | {records:,} | {per_k:.1f} | {least} | {calls.get(LOGIN, 0)} | "
            f"{made_of} | {wall_s:.1f} s |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opportunities", type=int, default=10_000)
    args = parser.parse_args(argv)
    count = args.opportunities

    emu = SalesforceEmulator()
    emu.start()
    try:
        ids = emu.seed_opportunities(count, start="2025-01-01T00:00:00Z", step_s=1)
        until = emu.clock.now()
        print("| operation | opportunities | calls per 1,000 | minimum per 1,000 | logins "
              "| made of | wall time |")
        print("|---|---|---|---|---|---|---|")
        read: list = []
        calls, wall_s = measure(emu, lambda sf: read.extend(
            sf.iter_changed(None, until, ["Priority__c", "PingCode_Status__c"])))
        assert len(read) == count, (len(read), count)
        print(row("read changed (`iter_changed`, with account and owner names)", count, calls,
                  math.ceil(count / QUERY_BATCH_MAX), wall_s))
        calls, wall_s = measure(emu, lambda sf: sf.fetch(ids, ["Priority__c"], False))
        print(row(f"re-read by id before writing (`fetch`, {IDS_PER_QUERY} ids per query)",
                  count, calls, None, wall_s))
        calls, wall_s = measure(emu, lambda sf: sf.update(
            [(i, {"Priority__c": "High", "PingCode_Status__c": "Planned"}) for i in ids]))
        print(row("write (`update`, sObject Collections)", count, calls,
                  math.ceil(count / COLLECTIONS_MAX), wall_s))
        print(f"\nThe emulator counted {emu.api_usage():,} API calls against the daily "
              f"allocation of {emu.config['daily_max']:,}; no call was refused "
              f"({emu.stats()['limited'] or 'none limited'}).")
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
