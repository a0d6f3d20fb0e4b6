"""Calls and time for the Worktile connector to find 1% changed tasks among 20,000.

Run: ``python -m benchmarks.worktile_scan [--tasks 20000] [--changed 200] [--latency-ms 100]``
from the repository root.

Worktile has no updated-since filter and no sort (docs/worktile.md §9), so every run pages
through the whole project and compares ``updated_at``; the question is what that costs. The
connector's way (``iter_changed`` with a cursor) asks each page for the small properties only
(priority, the marker property) and then reads the few changed tasks whole by id. It is
compared with reading every task whole, which is what a first run does, and with one request
in flight instead of three.

How it measures: the connector runs against the local emulator (20,000 tasks with a realistic
description each; the emulator caps pages at 100 rows, docs/worktile.md §5). Calls are the
connector's own per-endpoint counters, bytes the reply bodies it received. Two clocks, kept
apart on purpose:

- pacing: the connector's own request window (20 a second by default) runs on the emulator's
  virtual clock, so the seconds it would wait are measured without being spent;
- network: the emulator sleeps ``--latency-ms`` before each reply, for real, outside its lock,
  so requests in flight overlap as they would over a network; wall time measures that. The
  same run without the delay ("local") is what this machine spends serving and parsing.

Waiting for the window and waiting for replies overlap, so a run takes about the larger of the
two. The emulator's own 50-a-second window and its limit of three in flight stay on: a 429
would show in the table.
"""

from __future__ import annotations

import argparse
import math
import random
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import requests

from plugins.worktile import connector as worktile
from plugins.worktile.emulator import WorktileEmulator
from plugins.worktile.testing import emulator_connector

FAR = datetime(2100, 1, 1, tzinfo=timezone.utc)
DESCRIPTION = "客户需要在弱网环境下离线查看与编辑数据，并在恢复网络后自动同步。" * 20  # ~600 chars


def measure(emu: WorktileEmulator, label: str, whole: bool, in_flight: int,
            since: datetime, latency_ms: int) -> dict[str, Any]:
    """One ``iter_changed`` over the seeded project; what it cost."""
    received, lock = Counter(), threading.Lock()

    def count(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        with lock:  # replies arrive on the connector's three reader threads
            received["bytes"] += len(response.content)

    session = requests.Session()
    session.hooks["response"].append(count)
    worktile.MAX_IN_FLIGHT = in_flight  # read when the connector is built
    conn = emulator_connector(emu, "bench", session=session, marker_property="crm_deal")
    try:
        emu.config["latency_ms"] = 0
        conn.key_prefix()  # token and project first: a run does this once
        setup = Counter(conn.api_calls())
        emu.config["latency_ms"] = latency_ms
        throttled_before = dict(emu.throttled)
        clock_start, wall_start = emu.clock.now(), time.perf_counter()
        found = [r.key for r in conn.iter_changed(None if whole else since, FAR)]
        wall_s = time.perf_counter() - wall_start
        calls = Counter(conn.api_calls())
        calls.subtract(setup)
    finally:
        conn.close()
        worktile.MAX_IN_FLIGHT = 3
    return {"label": label, "in_flight": in_flight, "found": len(found),
            "pages": calls["GET /open-api/mission/get-project-tasks-by-page"],
            "by_ids": calls["GET /open-api/mission/get-tasks-by-ids"],
            "setup": sum(setup.values()), "kib": received["bytes"] / 1024,
            "pacing_s": (emu.clock.now() - clock_start).total_seconds(), "network_s": wall_s,
            "throttled": sum(emu.throttled.values()) - sum(throttled_before.values()),
            "peak": emu.peak_in_flight}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--changed", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=100,
                        help="the emulator's delay before each reply (a network round trip)")
    args = parser.parse_args(argv)
    emu = WorktileEmulator()
    emu.start()
    try:
        started = time.perf_counter()
        emu.add_tasks(args.tasks - len(emu.dump_tasks()), description=DESCRIPTION)
        seeded_s = time.perf_counter() - started
        emu.clock.advance(3_600_000)
        since = emu.clock.now()  # the cursor: the previous run's start
        emu.clock.advance(60_000)
        for n in random.Random(7).sample(range(1, args.tasks + 1), args.changed):
            emu.mutate(f"DS-{n}", priority="最高")
        rows = []
        for label, whole, in_flight in (("light scan, changed read by id", False, 3),
                                        ("light scan, changed read by id", False, 1),
                                        ("every task read whole", True, 3)):
            row = measure(emu, label, whole, in_flight, since, args.latency_ms)
            row["local_s"] = measure(emu, label, whole, in_flight, since, 0)["network_s"]
            rows.append(row)
    finally:
        emu.stop()
    print(f"Worktile connector: {args.changed} changed among {args.tasks} tasks "
          f"(seeded in {seeded_s:.1f} s); emulator pages of 100, {args.latency_ms} ms per "
          f"reply; client window 20/s on the virtual clock\n")
    print(f"{'how':34} {'in flight':>9} {'found':>6} {'pages':>6} {'by id':>6} {'KiB':>8} "
          f"{'pacing':>8} {'network':>8} {'local':>7} {'429s':>5}")
    for row in rows:
        print(f"{row['label']:34} {row['in_flight']:>9} {row['found']:>6} {row['pages']:>6} "
              f"{row['by_ids']:>6} {row['kib']:>8.0f} {row['pacing_s']:>7.1f}s "
              f"{row['network_s']:>7.1f}s {row['local_s']:>6.1f}s {row['throttled']:>5}")
    pages = math.ceil(args.tasks / 100)
    print(f"\nset-up per run, before the scan: {rows[0]['setup']} calls (token, project); "
          f"peak requests in flight seen by the emulator: {rows[-1]['peak']}")
    print(f"cost model: calls = 2 + ceil(N / page) + ceil(changed / {worktile.BY_IDS_BATCH}) = "
          f"2 + {pages} + {math.ceil(args.changed / worktile.BY_IDS_BATCH)}; time = "
          f"max(calls / 20 per s, pages x RTT / 3) + by-id reads x RTT")


if __name__ == "__main__":
    main()
