"""The workers' schedule (sync/workers.py) on both state-store backends: the most overdue pair
first, busy pairs skipped, a pair another worker has just finished not run twice, and a
never-run pair before every other."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sync.state import now_utc, open_store
from sync.workers import BUSY_POLL_S, claim_next, due_order, work

INTERVAL = timedelta(minutes=5)


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request, tmp_path):
    """Three workers' stores on one state store."""
    target = tmp_path / "state.db" if request.param == "sqlite" else \
        request.getfixturevalue("pg_url")
    opened = [open_store(target) for _ in range(3)]
    yield opened
    for store in opened:
        store.close()


def ran(store, pair: str, minutes_ago: float, status: str = "ok") -> None:
    store.record_run(pair, now_utc() - timedelta(minutes=minutes_ago), status, {})


def test_the_most_overdue_pair_comes_first_and_a_new_one_before_all():
    now = now_utc()
    last = {"a": now - timedelta(minutes=6), "b": now - timedelta(minutes=9)}
    assert [name for _, name in due_order(last, ["a", "b", "c"], INTERVAL)] == ["c", "b", "a"]


def test_a_worker_takes_the_most_overdue_free_pair(stores):
    one, two, three = stores
    ran(one, "a", 6)
    ran(one, "b", 9)
    ran(one, "c", 1)  # not due for four minutes
    name, wait = claim_next(one, ["a", "b", "c"], INTERVAL, now_utc())
    assert (name, wait) == ("b", 0.0)
    name, _ = claim_next(two, ["a", "b", "c"], INTERVAL, now_utc())
    assert name == "a"  # b is busy: the next most overdue
    name, wait = claim_next(three, ["a", "b", "c"], INTERVAL, now_utc())
    assert name is None and wait == BUSY_POLL_S  # a and b run elsewhere; look again soon
    one.unlock("b")
    two.unlock("a")


def test_a_pair_finished_meanwhile_is_not_run_again_in_the_round(stores, monkeypatch):
    one, two, _ = stores
    ran(one, "a", 6)
    stale = one.last_started()

    def finished_meanwhile():  # the first read is stale: another worker runs a right now
        monkeypatch.setattr(one, "last_started", fresh)
        ran(two, "a", 0)
        return stale

    fresh = one.last_started.__func__.__get__(one)
    monkeypatch.setattr(one, "last_started", finished_meanwhile)
    name, wait = claim_next(one, ["a"], INTERVAL, now_utc())
    assert name is None and 0 < wait <= INTERVAL.total_seconds()
    assert not one.holds("a")


def test_nothing_due_sleeps_until_the_next_pair_is(stores):
    one, _, _ = stores
    ran(one, "a", 1)
    ran(one, "b", 3)
    name, wait = claim_next(one, ["a", "b"], INTERVAL, now_utc())
    assert name is None and 100 < wait <= 120  # b is due in two minutes


def test_a_stopped_run_counts_as_the_round_so_a_failing_pair_cannot_hog_a_worker(stores):
    one, _, _ = stores
    ran(one, "a", 0, status="stopped")
    ran(one, "b", 7)
    assert claim_next(one, ["a", "b"], INTERVAL, now_utc())[0] == "b"
    one.unlock("b")


def test_the_loop_runs_each_due_pair_once_and_releases_it(stores):
    one, two, _ = stores
    done: list[str] = []

    def run(name: str) -> None:
        assert one.holds(name)
        ran(one, name, 0)
        done.append(name)

    work(lambda: one, ["a", "b"], INTERVAL, run, stopping=lambda: len(done) >= 2,
         sleep=lambda _s: None)
    assert done == ["a", "b"]
    two.lock("a")  # released
    two.unlock("a")
