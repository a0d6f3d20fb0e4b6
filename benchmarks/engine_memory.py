"""Engine cost on the memory connectors: a first sync of N deals, then a quiet second run.

Measures wall time, CPU time (user + system: steadier than wall time on a shared machine), time
per deal, the time spent in Python's cyclic garbage collector, the process's peak RSS (one size
per process, so the peak is that size's) and connector calls, so the engine's own overhead can be
told apart from any API's. The memory connectors keep their data (the "world") in the same
process, so the RSS once the world is built is printed too: the engine's share is the peak
minus that. Run:

    python benchmarks/engine_memory.py --deals 10000 --share 5
"""

from __future__ import annotations

import argparse
import gc
import resource
import tempfile
import time
from pathlib import Path

from plugins.memory import MemoryCRM, MemoryTracker, World
from sync.connectors import InstanceContext
from sync.engine import Options, Pair, run_pair
from sync.mapping import load_mapping
from sync.state import StateStore
from sync.words import counted

MAPPING = Path(__file__).resolve().parent.parent / "tests" / "data" / "memory-mapping.toml"


class GcTimer:
    """Seconds spent in the cyclic garbage collector, and collections by generation
    (``gc.callbacks``: https://docs.python.org/3/library/gc.html#gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds, self.collections = 0.0, [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1

    def take(self) -> tuple[float, list[int]]:
        taken = self.seconds, self.collections
        self.seconds, self.collections = 0.0, [0, 0, 0]
        return taken


def rss_mib() -> float:
    """The current resident set size (``/proc/self/statm``, Linux), in MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_pair(deals: int, share: int = 5) -> tuple[World, Pair]:
    """A memory world of ``deals`` deals, every ``share``-th asking for a new requirement and
    the others naming it by key (MEM-n), and a pair over it with the guards out of the way."""
    world = World()
    for n in range(deals):
        request = f"Feature {n}" if n % share == 0 else f"MEM-{n // share + 1}"
        world.add_deal(f"d{n:06d}", request=request, pipeline="sales", amount=str(1000 + n),
                       company=f"Company {n % 300}")
    crm = MemoryCRM(InstanceContext("crm", {}, lambda n: ""), world=world)
    tracker = MemoryTracker(InstanceContext("tracker", {}, lambda n: ""), world=world)
    return world, Pair("bench", crm, tracker, load_mapping(str(MAPPING)),
                       guard_min_links=10**9, max_creates=10**9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--share", type=int, default=5,
                        help="deals per requirement (every Nth deal creates, the rest link)")
    args = parser.parse_args()
    world, pair = memory_pair(args.deals, args.share)
    world_rss = rss_mib()
    print(f"{'world of ' + format(args.deals, ',') + ' deals built':<28} RSS {world_rss:6.0f} MiB")
    timer = GcTimer()
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state.db")
        # Every deal is re-read by the second run (all fall inside the lookback window), so it
        # measures the cost of proving that nothing changed.
        for label in ("first sync", "second sync, nothing new", "1% changed on each side"):
            if label.startswith("1%"):
                # sales edits the amount of 1 deal in 100 (its requirement's block changes),
                # product the priority of 1 requirement in 100 (its deals' priority changes)
                for n in range(0, args.deals, 100):
                    world.edit_deal(f"d{n:06d}", amount=str(2000 + n))
                items = sorted(world.items)
                for item_id in items[::100]:
                    world.edit_item(item_id, priority="Highest")
                changed = (len(range(0, args.deals, 100)), len(items[::100]))
            timer.take()
            started, cpu = time.perf_counter(), cpu_s()
            summary = run_pair(pair, store, Options())
            elapsed, cpu = time.perf_counter() - started, cpu_s() - cpu
            gc_s, collections = timer.take()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            counts = {k: v for k, v in summary["counts"].items() if v}
            print(f"{label:<28} {elapsed:7.2f} s  {elapsed / args.deals * 1000:5.2f} ms a deal  "
                  f"CPU {cpu:7.2f} s {cpu / args.deals * 1000:5.2f} ms a deal  "
                  f"GC {gc_s:5.2f} s ({collections[2]} full)  peak RSS {peak:6.0f} MiB "
                  f"(engine {peak - world_rss:5.0f})  calls {summary['api_calls']}  {counts}")
        store.close()
    deals_changed, reqs_changed = changed
    print(f"1% changed: {counted(deals_changed, 'deal amount')} and "
          f"{counted(reqs_changed, 'requirement priority', 'requirement priorities')} "
          f"edited; the fewest writes are one per requirement whose deal list "
          f"changed and one per deal whose requirement's priority changed (the counts above)")


if __name__ == "__main__":
    main()
