"""API calls the PingCode connector makes per 1,000 requirements, and the request rate it
sustains against PingCode's limit of 200 requests per minute (docs/pingcode.md §13).

Run: ``python -m benchmarks.pingcode_calls [--items 1000]`` from the repository root.

How it measures: the connector runs against the local emulator with both limits on, the
emulator's server-side 200/min sliding window and the connector's own client-side window
(``default_rate_limits``). Time is the emulator's virtual clock: every wait (the client's
limiter, a ``x-pc-retry-after``) advances it instead of sleeping, so the minutes the real API
would take are measured without being spent. Calls are the connector's own per-endpoint
counters (``api_calls()``); the emulator's request log counts 429s.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Callable

from plugins.pingcode.emulator import PingCodeEmulator
from plugins.pingcode.testing import emulator_connector
from sync.connectors import NewRequirement, RequirementChange, make_marker


def measure(emu: PingCodeEmulator, label: str, work: Callable[..., int],
            **settings) -> dict[str, float]:
    """Run ``work(connector)``, which returns how many requirements it handled."""
    conn = emulator_connector(emu, **settings)
    conn.field_values("status")  # resolve names first: a run does this once
    setup = sum(conn.api_calls().values())
    log_start, clock_start, wall_start = len(emu.log), emu.clock.now(), time.perf_counter()
    handled = work(conn)
    calls = Counter(conn.api_calls())
    virtual_s = (emu.clock.now() - clock_start).total_seconds()
    work_calls = sum(calls.values()) - setup
    throttled = sum(1 for r in emu.log[log_start:] if r["status"] == 429)
    return {"label": label, "handled": handled, "calls": work_calls, "setup": setup,
            "virtual_s": virtual_s,
            "rate_per_min": work_calls / virtual_s * 60 if virtual_s >= 60 else None,
            "429s": throttled, "wall_s": time.perf_counter() - wall_start}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    n = parser.parse_args(argv).items
    emu = PingCodeEmulator()
    emu.start()
    try:
        emu.config["rate_limit_per_min"] = 200
        created: list[str] = []

        def create(conn, status=None, offset=0):
            for i in range(n):
                fields = {"priority": "高", **({"status": status} if status else {})}
                marker = make_marker("bench", f"D-{offset + i}")
                req = conn.create(NewRequirement(f"需求 {i}", f"<p>正文 {i}</p><p>{marker}</p>",
                                                 fields, marker))
                created.append(req.id)
            return n

        def status_two_away(conn):
            for req_id in created[:n]:
                conn.update(req_id, RequirementChange(fields={"status": "已计划"}))
            return n

        rows = [
            measure(emu, "create", create),
            measure(emu, "create with a status 2 transitions away",
                    lambda c: create(c, "已计划", n)),
            measure(emu, "read: iter_changed (search, 100/page)",
                    lambda c: sum(1 for _ in c.iter_changed(None, emu.clock.now()))),
            measure(emu, "read: fetch by id", lambda c: len(c.fetch(created[:n]))),
            measure(emu, "find_by_marker", lambda c: sum(
                c.find_by_marker(make_marker("bench", f"D-{i}")) is not None for i in range(n))),
            measure(emu, "update: status 2 transitions away", status_two_away),
        ]
    finally:
        emu.stop()
    print("PingCode connector on the emulator (server and client limits: 200/min; virtual "
          "clock)\n")
    print(f"{'operation':42} {'items':>6} {'calls':>6} {'per 1000':>9} {'virtual':>9} "
          f"{'req/min':>8} {'429s':>5} {'wall':>6}")
    for row in rows:
        rate = "-" if row["rate_per_min"] is None else f"{row['rate_per_min']:.1f}"
        print(f"{row['label']:42} {row['handled']:>6} {row['calls']:>6} "
              f"{row['calls'] * 1000 / row['handled']:>9.0f} {row['virtual_s'] / 60:>7.1f} m "
              f"{rate:>8} {row['429s']:>5} {row['wall_s']:>5.1f}s")
    print(f"\none-off per run: {rows[0]['setup']} calls (token, project, type, states, "
          f"priorities, state plan, flows)")


if __name__ == "__main__":
    main()
