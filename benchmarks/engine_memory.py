"""Engine cost on the memory connectors: a first sync of N deals, then a quiet second run.

Measures wall time, time per deal, the process's peak RSS (one size per process, so the peak is
that size's) and connector calls, so the engine's own overhead can be told apart from any
API's. Run:

    python benchmarks/engine_memory.py --deals 10000 --share 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
import resource
from pathlib import Path

from plugins.memory import MemoryCRM, MemoryTracker, World
from sync.connectors import InstanceContext
from sync.engine import Options, Pair, run_pair
from sync.mapping import load_mapping
from sync.state import StateStore

MAPPING = Path(__file__).resolve().parent.parent / "tests" / "data" / "memory-mapping.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--share", type=int, default=5,
                        help="deals per requirement (every Nth deal creates, the rest link)")
    args = parser.parse_args()
    world = World()
    for n in range(args.deals):
        request = f"Feature {n}" if n % args.share == 0 else f"MEM-{n // args.share + 1}"
        world.add_deal(f"d{n:06d}", request=request, pipeline="sales", amount=str(1000 + n),
                       company=f"Company {n % 300}")
    crm = MemoryCRM(InstanceContext("crm", {}, lambda n: ""), world=world)
    tracker = MemoryTracker(InstanceContext("tracker", {}, lambda n: ""), world=world)
    pair = Pair("bench", crm, tracker, load_mapping(str(MAPPING)), guard_min_links=10**9,
                max_creates=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state.db")
        # Every deal is re-read by the second run (all fall inside the lookback window), so it
        # measures the cost of proving that nothing changed.
        for label in ("first sync", "second sync, nothing new"):
            started = time.perf_counter()
            summary = run_pair(pair, store, Options())
            elapsed = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            counts = {k: v for k, v in summary["counts"].items() if v}
            print(f"{label:<28} {elapsed:7.2f} s  {elapsed / args.deals * 1000:5.2f} ms a deal  "
                  f"peak RSS {peak:6.0f} MiB  calls {summary['api_calls']}  {counts}")
        store.close()


if __name__ == "__main__":
    main()
