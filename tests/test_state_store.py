"""The state store's own suite, run against both backends: SQLite (a file in tmp_path) and
PostgreSQL (a fresh database on the throwaway server of tests/pgcluster.py). Every test takes
``store`` (or ``target``) and runs twice; the PostgreSQL half skips, saying why, only where
the server cannot start."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from sync.errors import ConfigError, EXIT_LOCKED, LockHeld
from sync.state import SCHEMA_VERSION, StateStore, now_utc, open_store, ts
from sync.state.schema import statements
from sync.state.transfer import check_store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    """Where a store lives: a SQLite path, or a PostgreSQL URL (password in the environment)."""
    if request.param == "sqlite":
        return tmp_path / "state.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(target):
    opened = open_store(target)
    yield opened
    opened.close()


def link(store, deal="d1", req="r1", key="K-1", origin="created"):
    return store.add_link("p", deal, req, key, f"https://t/{key}", f"title {key}", origin)


# -- records ------------------------------------------------------------------------------------
def test_a_new_store_is_at_the_current_schema_and_checks_clean(store):
    assert store.version == SCHEMA_VERSION
    report = check_store(store)
    assert report.problems == [] and set(report.rows) >= {"links", "runs"}


def test_links_keep_their_number_and_a_relink_clears_the_orphan_mark(store):
    first, second = link(store), link(store, "d2", "r2", "K-2")
    assert second.seq > first.seq
    store.orphan_link("p", "d1", "r1", "gone from the CRM")
    assert store.links("p")[0].orphaned == "gone from the CRM"
    again = link(store)  # the same deal and requirement, linked again
    rows = store.links("p")
    assert [l.deal_id for l in rows] == ["d1", "d2"] and rows[0].orphaned is None
    assert rows[0].seq == first.seq != again.seq  # the stored row keeps its place
    store.update_requirement("p", "r2", "K-22", None, "renamed")
    store.set_req_created("p", "r2", "2025-01-01T00:00:00+00:00")
    store.set_req_created("p", "r2", "2030-01-01T00:00:00+00:00")  # only when unknown
    row = store.links("p")[1]
    assert (row.req_key, row.req_url, row.req_title) == ("K-22", None, "renamed")
    assert row.req_created == "2025-01-01T00:00:00+00:00"
    assert store.links("other") == []


def test_bases_contexts_and_shared_requests(store):
    link(store)
    store.set_base("p", "d1", "r1", "status", "open", "新建")
    store.set_base("p", "d1", "r1", "status", "planned", "已计划")
    assert store.bases("p") == {("d1", "r1", "status"): store.bases("p")[("d1", "r1", "status")]}
    assert store.bases("p")[("d1", "r1", "status")].tracker_value == "已计划"
    when = now_utc().replace(microsecond=0)
    store.set_deal_context("p", "d1", {"name": "Acme 渠道", "amount": 5.5}, when)
    store.set_deal_context("p", "d2", {"name": "Globex"})
    assert store.deal_contexts("p")["d1"] == {"name": "Acme 渠道", "amount": 5.5}
    assert store.deal_context_times("p") == {"d1": ts(when)}
    store.set_deal_seen("p", "d2", when + timedelta(seconds=1))
    assert store.deal_context_times("p")["d2"] == ts(when + timedelta(seconds=1))
    store.add_shared_request("p", "sso login", "r1")
    store.add_shared_request("p", "sso login", "r9")
    assert store.shared_requests("p") == {"sso login": "r9"}


def test_intents_are_replaced_and_cleared(store):
    store.add_intents("p", ["d1", "d2"], ["dealsync:p:d1", "dealsync:p:d2"], "sso")
    store.add_intents("p", ["d1"], ["dealsync:p:d1"], "sso again")
    assert sorted((i["deal_id"], i["title"]) for i in store.intents("p")) == \
        [("d1", "sso again"), ("d2", "sso")]
    store.clear_intent("p", "d1")
    assert [i["deal_id"] for i in store.intents("p")] == ["d2"]


def test_cursors_and_positions(store):
    assert store.cursor("p", "crm") is None and store.position("p", "verify_deals") == 0
    when = now_utc()
    store.set_cursor("p", "crm", when)
    store.set_cursor("p", "crm", when + timedelta(minutes=1))
    store.set_position("p", "verify_deals", 140)
    assert store.cursor("p", "crm") == when + timedelta(minutes=1)
    assert store.position("p", "verify_deals") == 140


def test_failures_back_off_and_only_due_ones_are_retried(store):
    store.record_failure("p", "create", "d1", "", "HTTP 500", retryable=True)
    store.record_failure("p", "create", "d1", "", "HTTP 502", retryable=True)
    store.record_failure("p", "link", "d2", "", "SCR-99 does not exist", retryable=False)
    queued = store.failures("p")
    assert [(f["kind"], f["attempts"], f["error"]) for f in queued] == \
        [("create", 2, "HTTP 502"), ("link", 1, "SCR-99 does not exist")]
    assert queued[1]["next_retry_at"] is None
    assert store.failures("p", due_only=True) == []  # ten minutes from now
    past = ts(now_utc() - timedelta(seconds=1))
    store._exec("UPDATE failures SET next_retry_at=? WHERE kind='create'", (past,))
    assert [f["kind"] for f in store.failures("p", due_only=True)] == ["create"]
    store.resolve_failures([queued[0]["id"]])
    assert [f["kind"] for f in store.failures()] == ["link"]


def test_conflicts_open_ones_are_refreshed_and_settled_ones_kept(store):
    first = store.record_conflict("p", "r1", "K-1", "priority", ["d1"], ["low"], "High", "ask",
                                  None)
    again = store.record_conflict("p", "r1", "K-1", "priority", ["d1", "d2"], ["low", "high"],
                                  "Highest", "ask", None)
    applied = store.record_conflict("p", "r1", "K-1", "status", ["d1"], ["open"], "Done",
                                    "tracker", "Done")
    assert first == again != applied
    assert [c["id"] for c in store.conflicts("p", "open")] == [first]
    assert store.conflicts("p", "open")[0]["crm_values"] == ["low", "high"]
    store.resolve_conflict(first, "High")
    assert store.conflicts(status="resolved")[0]["outcome"] == "High"
    store.mark_conflict_applied(first)
    assert {c["status"] for c in store.conflicts("p")} == {"applied"}


def test_manual_updates_are_listed_until_resolved(store):
    store.record_manual_update("p", "r1", "DS-1", "priority", "priority", "最高", "普通", ["d1"])
    store.record_manual_update("p", "r1", "DS-1", "priority", "priority", "较高", "普通", ["d1"])
    (item,) = store.manual_updates("p")
    assert item["value"] == "较高" and item["deal_ids"] == ["d1"]
    store.resolve_manual_update("p", "r1", "priority")
    assert store.manual_updates() == []


def test_runs_and_the_schedule_they_make(store):
    start = now_utc() - timedelta(minutes=10)
    store.record_run("a", start, "ok", {"counts": {}})
    store.record_run("a", start + timedelta(minutes=5), "stopped", {"stop": {"exit_code": 5}})
    store.record_run("a", start + timedelta(minutes=6), "dry-run", {})
    store.record_run("b", start, "ok", {})
    assert store.last_started() == {"a": start + timedelta(minutes=5), "b": start}
    assert [r["status"] for r in store.runs("a")] == ["dry-run", "stopped", "ok"]
    assert store.runs("a", limit=1)[0]["summary"] == {}


# -- transactions and locks -----------------------------------------------------------------------
def test_a_failed_transaction_leaves_nothing_behind(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            link(store)
            with store.transaction():  # part of the outer one
                store.set_base("p", "d1", "r1", "status", "open", "新建")
            raise RuntimeError("killed mid-step")
    assert store.links("p") == [] and store.bases("p") == {}
    with store.transaction():
        link(store)
    assert len(store.links("p")) == 1


def test_a_pair_lock_is_exclusive_between_stores_and_counted_within_one(target, store):
    other = open_store(target)
    try:
        store.lock("p")
        store.lock("p")  # a worker holds it around the run, which takes it again
        with pytest.raises(LockHeld) as busy:
            other.lock("p")
        assert busy.value.exit_code == EXIT_LOCKED == 4
        assert "another run of pair 'p' is in progress" in busy.value.message
        other.lock("q")  # other pairs are free
        store.unlock("p")
        with pytest.raises(LockHeld):
            other.lock("p")
        store.unlock("p")
        other.lock("p")
    finally:
        other.close()
    lock_soon(store, "p")  # closing a store releases its locks


def lock_soon(store, pair: str) -> None:
    """Take the lock, allowing the server a moment to end a session that was closed."""
    deadline = time.monotonic() + 10
    while True:
        try:
            store.lock(pair)
            return
        except LockHeld:
            assert time.monotonic() < deadline, "the lock was never released"
            time.sleep(0.05)


HOLDER = """
import sys, time
from sync.state import open_store
store = open_store(sys.argv[1])
store.lock("p")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_lock_dies_with_the_process_that_held_it(target, store):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld):
            store.lock("p")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        lock_soon(store, "p")
    finally:
        proc.kill()


# -- schema ---------------------------------------------------------------------------------------
def old_store(target, version: int):
    """A store as an older dealsync left it: migrations up to ``version`` and one link."""
    row = ("p", "d1", "r1", "K-1", None, None, "named", "2024-01-01T00:00:00+00:00", None, 1)
    insert = ("INSERT INTO links (pair, deal_id, req_id, req_key, req_url, req_title, origin,"
              " created_at, orphaned, seq) VALUES ({})")
    if isinstance(target, Path):
        import sqlite3
        db = sqlite3.connect(target)
        for v in range(1, version + 1):
            for statement in statements(v, "sqlite"):
                db.execute(statement)
        db.execute(insert.format(",".join("?" * len(row))), row)
        db.execute(f"PRAGMA user_version={version}")
        db.commit()
        db.close()
        return
    import psycopg
    from pgcluster import PASSWORD
    with psycopg.connect(target, password=PASSWORD, autocommit=True) as db:
        for v in range(1, version + 1):
            for statement in statements(v, "postgresql"):
                db.execute(statement)
        db.execute(insert.format(",".join(["%s"] * len(row))), row)
        db.execute("CREATE TABLE dealsync_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO dealsync_schema VALUES (%s)", (version,))


def test_an_older_store_is_migrated_forward_keeping_its_rows(target):
    old_store(target, 3)
    store = open_store(target)
    try:
        assert store.version == SCHEMA_VERSION
        assert [l.req_key for l in store.links("p")] == ["K-1"]
        store.set_deal_context("p", "d1", {"name": "x"}, now_utc())  # a column of version 4
        assert check_store(store).problems == []
    finally:
        store.close()


def test_a_newer_store_is_refused(target):
    old_store(target, SCHEMA_VERSION)
    store = open_store(target)
    store._write_version(SCHEMA_VERSION + 1)
    store.close()
    with pytest.raises(ConfigError, match="newer than this dealsync understands"):
        open_store(target)


def test_workers_starting_together_migrate_once(target):
    versions, failed = [], []

    def start() -> None:
        try:
            store = open_store(target)
            versions.append(store.version)
            store.close()
        except Exception as exc:  # collected: the assertion below shows it
            failed.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == [] and versions == [SCHEMA_VERSION] * 6
    store = open_store(target)
    try:
        assert check_store(store).problems == []
    finally:
        store.close()


# -- rate-limit windows ---------------------------------------------------------------------------
def test_two_stores_share_one_rate_window(target, store):
    other = open_store(target)
    try:
        limits = {"default": (3, 0.5)}
        taken = [s.take_rate_slots("hubspot", limits) for s in (store, other, store)]
        assert all(ids and wait == 0 for ids, wait in taken)
        ids, wait = other.take_rate_slots("hubspot", limits)
        assert ids == [] and 0 < wait <= 1.0  # unanswered calls count for two windows
        assert store.take_rate_slots("pingcode", limits)[0]  # another instance's window
        store.answer_rate_slots([i for ids, _ in taken for i in ids])
        ids, wait = other.take_rate_slots("hubspot", limits)
        assert ids == [] and 0 < wait <= 0.5  # answered: one window from the answer
        time.sleep(wait + 0.01)
        assert other.take_rate_slots("hubspot", limits)[0]
    finally:
        other.close()


def test_a_call_takes_a_slot_in_each_of_its_buckets_or_none(store):
    limits = {"default": (5, 10.0), "search": (1, 0.3)}
    ids, _ = store.take_rate_slots("hs", limits)
    assert len(ids) == 2
    ids, wait = store.take_rate_slots("hs", limits)
    assert ids == [] and 0 < wait <= 0.6
    assert store.count("rate_slots") == 2  # nothing taken in "default" either


# -- checking -------------------------------------------------------------------------------------
def test_check_finds_rows_that_break_the_rules(store):
    link(store)
    store.set_base("p", "d1", "r1", "status", "open", "新建")
    store.set_base("p", "d9", "r1", "status", "open", "新建")  # no such link
    store.add_shared_request("p", "dark mode", "r7")  # no link to r7
    store._exec("UPDATE links SET origin='guessed'")
    store.set_deal_context("p", "d1", {"name": "x"})
    store._exec("UPDATE deal_context SET context='{not json'")
    problems = check_store(store).problems
    assert len(problems) == 4, problems
    assert any("1 base belongs to no link" in p and "deal_id=d9" in p for p in problems)
    assert any("1 shared request title names a requirement no link has" in p
               for p in problems)
    assert any("1 link of unknown origin" in p for p in problems)
    assert any("1 value of deal_context.context does not read back" in p for p in problems)


def test_check_finds_a_missing_index(store):
    store._exec("DROP INDEX links_seq")
    assert check_store(store).problems == ["index links_seq on links is missing"]


def test_the_store_names_itself_without_secrets(target, store):
    assert store.where == str(target)
    assert "dealsync-test-pw" not in store.where
    json.dumps({"where": store.where})


def test_a_state_store_is_opened_by_what_its_target_is(target):
    store = StateStore(target)  # the password, if any, from the secrets
    store.close()
    assert type(store).__name__ == ("SqliteStore" if isinstance(target, Path) else
                                    "PostgresStore")
