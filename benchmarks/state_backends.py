"""The two state-store backends side by side: store operations per second in a store holding
100,000 links, and a first sync of 10,000 deals on the memory connectors.

SQLite runs as dealsync runs it (WAL, synchronous=NORMAL). PostgreSQL is a throwaway server
from Debian's package on this machine (tests/pgcluster.py) with fsync on and
synchronous_commit off: like SQLite's NORMAL, a power cut may lose the last commits but never
corrupts the store. ``--url`` measures an existing server instead (its password in
DEALSYNC_STATE_PASSWORD); the database must be empty. Run:

    python benchmarks/state_backends.py --links 100000 --deals 10000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine_memory import memory_pair  # noqa: E402
from sync.engine import Options, run_pair  # noqa: E402
from sync.state import StateStore, now_utc, open_store, ts  # noqa: E402

PAIRS = 100  # the links are spread over this many pairs
FIELDS = ("status", "priority", "delivery")
SECONDS = 3.0  # each operation is repeated for this long


def preload(store: StateStore, links: int) -> None:
    """``links`` links over PAIRS pairs, a base per mirrored field and a deal context each,
    written in one transaction."""
    now = ts(now_utc())
    link_rows, base_rows, context_rows = [], [], []
    for n in range(links):
        pair, deal, req = f"p{n % PAIRS:03d}", f"d{n}", f"r{n // 3}"
        link_rows.append((pair, deal, req, f"SCR-{n // 3}", None, f"Feature {n // 3}", "created",
                          now, None, n + 1, now))
        base_rows += [(pair, deal, req, field, "open", "新建", now) for field in FIELDS]
        context_rows.append((pair, deal, '{"name": "Deal %d", "amount": 1000}' % n, now))
    with store.transaction():
        store.insert_rows("links", ["pair", "deal_id", "req_id", "req_key", "req_url",
                                    "req_title", "origin", "created_at", "orphaned", "seq",
                                    "req_created"], link_rows)
        store.insert_rows("bases", ["pair", "deal_id", "req_id", "field", "crm_value",
                                    "tracker_value", "updated_at"], base_rows)
        store.insert_rows("deal_context", ["pair", "deal_id", "context", "updated_at"],
                          context_rows)


def rate(action: Callable[[int], None]) -> float:
    """Operations per second of ``action(n)`` over SECONDS."""
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS:
        action(count)
        count += 1
    return count / (time.perf_counter() - started)


def operations(store: StateStore, links: int) -> dict[str, float]:
    rng = random.Random(7)

    def field_step(_n: int) -> None:  # phase two: a requirement written, its bases stored
        n = rng.randrange(links)
        pair, deal, req = f"p{n % PAIRS:03d}", f"d{n}", f"r{n // 3}"
        with store.transaction():
            for field in FIELDS[:2]:
                store.set_base(pair, deal, req, field, "planned", "已计划")
            store.update_requirement(pair, req, f"SCR-{n // 3}", None, f"Feature {n // 3}")

    def link_step(n: int) -> None:  # phase one: a create's link, context and shared request
        pair, deal = f"p{n % PAIRS:03d}", f"new{n}"
        with store.transaction():
            store.add_link(pair, deal, f"rn{n}", f"SCR-N{n}", None, f"New {n}", "created")
            store.set_deal_context(pair, deal, {"name": f"New {n}"}, now_utc())
            store.add_shared_request(pair, f"new {n}", f"rn{n}")
            store.clear_intent(pair, deal)

    def load_pair(n: int) -> None:  # what a run reads first: a pair of 1,000 links
        pair = f"p{n % PAIRS:03d}"
        store.links(pair), store.bases(pair), store.deal_contexts(pair)
        store.deal_context_times(pair), store.failures(pair), store.conflicts(pair, "open")

    return {"applied field step (2 bases + requirement, 1 transaction)": rate(field_step),
            "applied link step (link + context + request + intent)": rate(link_step),
            f"load one pair's state ({links // PAIRS:,} links)": rate(load_pair)}


def first_sync(store: StateStore, deals: int) -> float:
    _, pair = memory_pair(deals)  # every fifth deal asks for a new requirement, the rest name one
    started = time.perf_counter()
    summary = run_pair(pair, store, Options())
    assert summary["status"] == "ok", summary["errors"][:3]
    return time.perf_counter() - started


def measure(name: str, opener: Callable[[str], StateStore], links: int, deals: int) -> dict:
    store = opener("ops")
    started = time.perf_counter()
    preload(store, links)
    print(f"{name}: {links:,} links loaded in {time.perf_counter() - started:.1f} s", flush=True)
    figures = operations(store, links)
    store.close()
    store = opener("sync")
    figures[f"first sync of {deals:,} deals (s)"] = first_sync(store, deals)
    store.close()
    for what, value in figures.items():
        print(f"  {what:<58} {value:10.1f}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=100_000)
    parser.add_argument("--deals", type=int, default=10_000)
    parser.add_argument("--url", help="an existing, empty PostgreSQL database instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = measure("SQLite", lambda label: open_store(Path(tmp) / f"{label}.db"),
                         args.links, args.deals)
    cluster = None
    if args.url:
        databases = {"ops": args.url, "sync": args.url}
    else:
        from pgcluster import PASSWORD, start_cluster
        cluster, reason = start_cluster({"fsync": "on", "synchronous_commit": "off",
                                         "full_page_writes": "on"})
        if cluster is None:
            raise SystemExit(f"no PostgreSQL to measure: {reason}")
        os.environ["DEALSYNC_STATE_PASSWORD"] = PASSWORD
        databases = {label: cluster.url(cluster.create_database()) for label in ("ops", "sync")}
    try:
        postgres = measure("PostgreSQL", lambda label: open_store(databases[label]), args.links,
                           args.deals)
    finally:
        if cluster is not None:
            cluster.stop()
    print("How many times faster SQLite is:")
    for what in sqlite:
        faster = postgres[what] / sqlite[what] if what.endswith("(s)") else \
            sqlite[what] / postgres[what]
        print(f"  {what:<58} {faster:10.2f}")


if __name__ == "__main__":
    main()
