"""Rate-bound work at small windows: how much of each limit the client uses, and its 429s.

The emulators enforce a deliberately small window (HubSpot 10 calls per 5 s, PingCode 30 per
10 s) on virtual clocks; the connectors' limiters are told the same limit, and every wait moves
the emulator's clock instead of sleeping. N calls at L per W seconds cannot take less than
(ceil(N / L) - 1) x W seconds (each window full, the first at once); utilisation is that
minimum over the time taken, 100% for a client that never leaves a slot unused.

    python benchmarks/rate_bound.py [--deals 3000] [--creates 150]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.hubspot.emulator import HubSpotEmulator  # noqa: E402
from plugins.hubspot.testing import emulator_connector as hubspot_connector  # noqa: E402
from plugins.pingcode.emulator import PingCodeEmulator  # noqa: E402
from plugins.pingcode.testing import emulator_connector as pingcode_connector  # noqa: E402
from sync.connectors import NewRequirement, make_marker  # noqa: E402


def utilisation(calls: int, limit: int, window_s: float, elapsed_s: float) -> float:
    fastest = (math.ceil(calls / limit) - 1) * window_s
    return fastest / elapsed_s if elapsed_s else 1.0


def hubspot(deals: int) -> dict:
    emu = HubSpotEmulator()
    emu.start()
    try:
        emu.config.update(burst_max=10, burst_window_ms=5000)
        ids = emu.seed_deals(deals)
        conn = hubspot_connector(emu, rate_limits={"default": {"calls": 10, "per_seconds": 5}})
        start, log_start = emu.clock.now(), len(emu.log)
        conn.fetch(ids, ["dealname"], with_context=False)
        conn.update([(deal_id, {"dealname": f"Deal {n} (renamed)"})
                     for n, deal_id in enumerate(ids)])
        elapsed = (emu.clock.now() - start).total_seconds()
        log = emu.log[log_start:]
        calls = len(log)
        return {"service": "HubSpot", "limit": "10 / 5 s", "work": f"{deals:,} deals read and "
                f"rewritten", "calls": calls, "elapsed_s": elapsed,
                "utilisation": utilisation(calls, 10, 5, elapsed),
                "429s": sum(1 for r in log if r["status"] == 429)}
    finally:
        emu.stop()


def pingcode(creates: int) -> dict:
    emu = PingCodeEmulator()
    emu.start()
    try:
        emu.config.update(rate_limit_per_min=30, rate_limit_window_s=10)  # 30 calls per 10 s
        conn = pingcode_connector(emu, rate_limits={"default": {"calls": 30, "per_seconds": 10}})
        start, log_start = emu.clock.now(), len(emu.log)
        conn.field_values("status")  # a run's set-up reads (token, project, states, ...)
        for n in range(creates):
            marker = make_marker("bench", f"d{n}")
            conn.create(NewRequirement(f"需求 {n}", f"<p>{marker}</p>", {}, marker))
        elapsed = (emu.clock.now() - start).total_seconds()
        log = emu.log[log_start:]
        return {"service": "PingCode", "limit": "30 / 10 s", "work": f"{creates} creates",
                "calls": len(log), "elapsed_s": elapsed,
                "utilisation": utilisation(len(log), 30, 10, elapsed),
                "429s": sum(1 for r in log if r["status"] == 429)}
    finally:
        emu.stop()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=3000)
    parser.add_argument("--creates", type=int, default=150)
    args = parser.parse_args(argv)
    rows = [hubspot(args.deals), pingcode(args.creates)]
    for row in rows:
        print(f"{row['service']} at {row['limit']}, {row['work']}: {row['calls']} calls in "
              f"{row['elapsed_s']:.1f} s of virtual time, utilisation "
              f"{row['utilisation']:.1%}, {row['429s']} x 429")
    return rows


if __name__ == "__main__":
    main()
