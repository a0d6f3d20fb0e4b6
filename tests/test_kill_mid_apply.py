"""SIGKILL in the middle of applying a 2,000-deal run against both emulators: the rerun
writes only what was left, counted from the emulators' request logs (docs/engine.md, "Steps
that stick")."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import process_stack, run_dealsync as dealsync

DEALS = 2000
KEYS = ("SCR-1", "SCR-2", "SCR-3")  # seeded in every PingCode emulator


def deal_writes(log: list[dict]) -> list[str]:
    """Deal ids in every batch update the HubSpot emulator applied (a 429 applies nothing: the
    rerun's rate limiter cannot know the calls of the process that was killed)."""
    return [entry["id"] for request in log
            if request["method"] == "POST" and request["path"].endswith("/batch/update")
            and request["status"] in (200, 207)
            for entry in request["body"]["inputs"]]


def item_writes(log: list[dict]) -> list[str]:
    return [request["path"] for request in log if request["method"] == "PATCH"]


@pytest.fixture
def world(tmp_path):
    with process_stack(tmp_path, "kill") as stack:
        yield stack


@pytest.mark.slow
def test_a_rerun_after_sigkill_mid_apply_writes_only_what_was_left(world):
    hubspot, pingcode, config, env = world
    assert dealsync(config, env, "check", "--fix").returncode == 0
    hubspot.seed(deals=[{"properties": {
        "dealname": f"Deal {n}", "dealstage": "qualifiedtobuy", "amount": str(1000 + n),
        "dealsync_request": f"{KEYS[n % 3]}, for site {n}"}} for n in range(DEALS)])
    dispatch = hubspot.dispatch

    def slow_batch_updates(request):  # about 5 s of CRM writes, so the kill lands among them
        if request.path.endswith("/batch/update"):
            time.sleep(0.25)
        return dispatch(request)

    hubspot.dispatch = slow_batch_updates
    hubspot_start, pingcode_start = len(hubspot.log), len(pingcode.log)
    proc = subprocess.Popen([sys.executable, "-m", "sync.cli", "-c", str(config), "sync"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(deal_writes(hubspot.log[hubspot_start:])) < 500:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the run never reached its CRM writes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.5)  # a batch already sent is still applied by the server
    before = deal_writes(hubspot.log[hubspot_start:])
    assert 500 <= len(before) < DEALS and len(set(before)) == len(before)
    assert len(item_writes(pingcode.log[pingcode_start:])) == len(KEYS)  # blocks came first

    hubspot_mid, pingcode_mid = len(hubspot.log), len(pingcode.log)
    rerun = dealsync(config, env, "sync", "--json")
    assert rerun.returncode == 0, rerun.stderr
    after = deal_writes(hubspot.log[hubspot_mid:])
    assert len(after) == DEALS - len(before)
    assert not set(after) & set(before)
    assert item_writes(pingcode.log[pingcode_mid:]) == []
    summary = json.loads(rerun.stdout)["pairs"][0]
    assert summary["counts"]["updated_crm"] == DEALS - len(before)
    assert summary["counts"]["linked"] == 0 and summary["counts"]["created"] == 0
    for deal_id in before[:5] + after[-5:]:
        props = hubspot.deal(deal_id)["properties"]
        assert props["dealsync_requirement"] in KEYS and props["dealsync_status"]
