"""Progress and logs: the live display on a terminal, log lines without one, JSON Lines under
`--log-format json`, and rate-limit waits shown instead of a silence (sync/progress.py)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from conftest import MEMORY_CONFIG, Harness, emulator_secrets
from plugins.memory import World
from plugins.emulator import Fault
from sync import http
from sync.cli import cli
from sync.connectors import RateLimit
from sync.progress import (Every, JsonFormatter, LiveProgress, LogProgress, TextFormatter,
                           parse_every)

DATA = Path(__file__).parent / "data"

CONFIG = """
[crm.hs]
type = "hubspot"
base_url = "{hubspot}"
{limits}
[tracker.pc]
type = "pingcode"
base_url = "{pingcode}"
project = "SCR"
[pair.main]
crm = "hs"
tracker = "pc"
mapping = "hubspot-pingcode"
"""
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ dealsync\.progress INFO pair=main "
                  r"phase=(\w+) (.*)$")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the hook, alone ------------------------------------------------------------------------------
def log_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dealsync.progress"]


def test_log_progress_says_when_a_phase_starts_and_ends_and_every_n_items(caplog):
    caplog.set_level(logging.INFO, logger="dealsync.progress")
    clock = Clock()
    progress = LogProgress(every=Every(seconds=0, items=100), clock=clock)
    progress.start("main")
    progress("deals read", 0)
    clock.now += 2
    progress("deals read", 200)
    progress("requirements read", 0)
    progress("requirements read", 40)
    progress("created or linked", 0, 300)
    for done in range(1, 121):
        clock.now += 0.25
        progress("created or linked", done, 300)
    progress.finish()
    lines = log_lines(caplog)
    assert lines[0] == "pair=main phase=read started"
    assert "pair=main phase=read 200 deals read (100.0/s)" in lines
    assert lines[lines.index("pair=main phase=read 200 deals read (100.0/s)") + 1] == \
        "pair=main phase=read done in 2.0s: 200 deals read (100.0/s), 40 requirements read"
    assert "pair=main phase=create started: 0/300 created or linked" in lines
    # 120 of 300 in 30 s: 4 a second, 45 s to go; one line per 100 items, not per item
    assert lines[-2] == "pair=main phase=create 100/300 created or linked (4.0/s, ETA 50s)"
    assert lines[-1] == ("pair=main phase=create done in 30.0s: 120/300 created or linked "
                         "(4.0/s)")
    assert len(lines) == 6


def test_counts_without_a_total_have_their_plural_right():
    from sync.progress import Counter
    assert Counter("deals read", 0.0, count=1).done() == "1 deal read"
    assert Counter("requirements read", 0.0, count=2).done() == "2 requirements read"
    assert Counter("deals written", 0.0, count=1, total=3).done() == "1/3 deals written"


def test_log_progress_every_n_seconds_whatever_the_count(caplog):
    caplog.set_level(logging.INFO, logger="dealsync.progress")
    clock = Clock()
    progress = LogProgress("main", every=Every(seconds=30, items=0), clock=clock)
    progress("deals written", 0, 10)
    for done in range(1, 11):
        clock.now += 10
        progress("deals written", done, 10)
    periodic = [line for line in log_lines(caplog) if "started" not in line]
    assert periodic == ["pair=main phase=write 3/10 deals written (0.1/s, ETA 1m10s)",
                        "pair=main phase=write 6/10 deals written (0.1/s, ETA 40s)",
                        "pair=main phase=write 9/10 deals written (0.1/s, ETA 10s)"]


@pytest.mark.parametrize("text, every", [
    (None, Every(30, 500)), ("10s", Every(10, 500)), ("50", Every(30, 50)),
    ("5s,20", Every(5, 20)), ("0,0s", Every(0, 0))])
def test_progress_every_reads_seconds_and_items(text, every):
    assert parse_every(text) == every


def test_a_bad_progress_every_is_a_usage_error():
    result = CliRunner().invoke(cli, ["--progress-every", "often", "plugins"])
    assert result.exit_code == 2 and "use seconds like 30s" in result.stderr


def test_the_live_display_shows_phases_counts_rate_eta_and_waits():
    clock = Clock()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    progress = LiveProgress(console=console, clock=clock, auto_refresh=False)
    progress.start("main")
    progress("deals read", 0)
    clock.now += 1
    progress("deals read", 1200)
    progress("actions planned", 0)
    progress("actions planned", 301)
    progress("created or linked", 0, 300)
    clock.now += 30
    progress("created or linked", 120, 300)
    http._announce_wait("hs", 8.0, "limit")  # what the HTTP client says before it sleeps
    shown = out.getvalue()
    for text in ("main read", "deals read", "1,200", "main plan", "301", "main create",
                 "120/300", "4.0/s", "ETA 45s", "waiting for hs's rate limit (8s)"):
        assert text in shown, text
    progress.finish()
    assert progress._display is None
    before = len(out.getvalue())
    http._announce_wait("hs", 8.0, "limit")  # a finished display listens no more
    assert len(out.getvalue()) == before


def test_json_lines_carry_the_structured_fields():
    record = logging.LogRecord("dealsync.progress", logging.INFO, __file__, 1, "pair=%s", ("m",),
                               None)
    record.fields = {"pair": "m", "phase": "create", "count": 3, "total": 9, "rate": 1.5}
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "pair=m" and doc["logger"] == "dealsync.progress"
    assert doc["level"] == "INFO" and doc["ts"].endswith("Z")
    assert (doc["pair"], doc["phase"], doc["count"], doc["total"], doc["rate"]) == \
        ("m", "create", 3, 9, 1.5)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ dealsync\.progress INFO pair=m$",
                    TextFormatter().format(record))


def test_the_client_announces_its_own_rate_limit_waits():
    heard, slept = [], []
    now = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    client = http.HttpClient("acme", "https://api.example.test", sleep=sleep,
                             monotonic=lambda: now[0], rate_limits={"default": RateLimit(1, 10)})
    unsubscribe = http.subscribe_waits(lambda *args: heard.append(args))
    try:
        client._limiter.acquire(["default"])
        now[0] += 4.0
        client._limiter.acquire(["default"])  # the window is full for 6 more seconds
    finally:
        unsubscribe()
    assert heard == [("acme", 6.0, "limit")] and slept == [6.0]  # announced, then slept
    client._limiter.acquire(["default"])
    assert len(heard) == 1 and len(slept) == 2  # nobody listens any more


def test_a_hook_with_the_old_two_argument_signature_still_works(h: Harness):
    h.deal("d1", "SSO", name="Acme", company="Acme", amount="1000")
    seen: list[tuple[str, int]] = []
    summary = h.sync(progress=lambda what, count: seen.append((what, count)))
    assert summary["counts"]["created"] == 1
    assert ("created or linked", 1) in seen and ("deals read", 1) in seen


# -- the command line, against the emulators ------------------------------------------------------
@pytest.fixture
def stack(hubspot_server, pingcode_server, tmp_path, monkeypatch):
    hubspot_server.reset()
    pingcode_server.reset()
    emulator_secrets(monkeypatch, tmp_path / "home")
    monkeypatch.delenv("DEALSYNC_PROGRESS_EVERY", raising=False)
    monkeypatch.delenv("DEALSYNC_LOG_FORMAT", raising=False)

    def configure(limits: str = "") -> str:
        config = tmp_path / "dealsync.toml"
        config.write_text(CONFIG.format(hubspot=hubspot_server.url, pingcode=pingcode_server.url,
                                        limits=limits))
        assert CliRunner().invoke(cli, ["-c", str(config), "check", "--fix"]).exit_code == 0
        return str(config)

    yield hubspot_server, configure
    hubspot_server.faults, pingcode_server.faults = [], []


def phase_lines(stderr: str) -> list[tuple[str, str]]:
    return [m.groups() for m in map(LINE.match, stderr.splitlines()) if m]


def test_without_a_terminal_each_phase_logs_its_start_end_and_progress(stack, monkeypatch):
    hubspot, configure = stack
    config = configure()
    hubspot.seed_deals(300, properties={"dealsync_request": "SCR-1, for the EU team"})
    monkeypatch.setenv("DEALSYNC_PROGRESS_EVERY", "100")
    result = CliRunner().invoke(cli, ["-c", config, "sync", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["pairs"][0]["counts"]["linked"] == 300  # stdout intact
    lines = phase_lines(result.stderr)
    assert [phase for phase, text in lines if text.startswith("started")] == \
        ["read", "plan", "create", "plan", "write"]
    assert ("create", "started: 0/300 created or linked") in lines
    periodic = [text for phase, text in lines if phase == "create" and
                re.match(r"\d+/300 created or linked \(", text)]
    assert [text.split()[0] for text in periodic] == ["100/300", "200/300", "300/300"]
    ends = {phase: text for phase, text in lines if text.startswith("done in")}
    assert "300 deals read" in ends["read"]
    assert "300/300 created or linked" in ends["create"]
    assert "300/300 deals written" in ends["write"]


def test_log_format_json_gives_one_object_per_line_with_fields(stack):
    hubspot, configure = stack
    config = configure()
    hubspot.seed_deals(20, properties={"dealsync_request": "SCR-1"})
    result = CliRunner().invoke(cli, ["-c", config, "--log-format", "json", "sync", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["exit_code"] == 0  # still exactly one document on stdout
    docs = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert docs and all({"ts", "level", "logger", "message"} <= set(doc) for doc in docs)
    create_end = next(d for d in docs if d.get("phase") == "create" and d["event"] == "end")
    assert create_end["pair"] == "main" and create_end["counts"] == {"created or linked": 20}
    write_start = next(d for d in docs if d.get("phase") == "write" and d["event"] == "start")
    assert (write_start["what"], write_start["count"], write_start["total"]) == \
        ("requirements written", 0, 1) and "rate" in write_start
    write_end = next(d for d in docs if d.get("phase") == "write" and d["event"] == "end")
    assert write_end["totals"] == {"requirements written": 1, "deals written": 20}


def test_an_error_under_log_format_json_is_a_json_line_too(stack):
    hubspot, configure = stack
    config = configure()
    hubspot.faults = [Fault("POST /crm/v3/objects/deals/search", prob=1.0, status=429,
                            body={"policyName": "DAILY", "message": "daily limit"})]
    result = CliRunner().invoke(cli, ["-c", config, "--log-format", "json", "sync"])
    assert result.exit_code == 6
    docs = [json.loads(line) for line in result.stderr.splitlines()]
    error = next(d for d in docs if d["level"] == "ERROR")
    assert error["message"].startswith("hs: ") and error["exit_code"] == 6 and error["hint"]
    read_end = next(d for d in docs if d.get("phase") == "read" and d.get("event") == "end")
    assert read_end["stopped"] is True  # not "done": the run stopped in that phase
    assert read_end["message"].startswith("pair=main phase=read stopped after ")
    assert docs.index(read_end) < docs.index(error)


def test_a_rate_limit_wait_is_logged_not_silent(stack):
    hubspot, configure = stack
    # one search in two seconds: the second page of deals (200 a page) waits for the client's
    # own limiter
    config = configure('rate_limits = { search = { calls = 1, per_seconds = 2 } }')
    hubspot.seed_deals(250, properties={"dealsync_request": "SCR-1"})
    hubspot.faults = [Fault("POST /crm/v3/objects/deals/batch/update", nth=[1], status=429,
                            body={"policyName": "TEN_SECONDLY_ROLLING"},
                            headers={"Retry-After": "1"})]
    result = CliRunner().invoke(cli, ["-c", config, "sync"])
    assert result.exit_code == 0, result.stderr
    waits = [(phase, text) for phase, text in phase_lines(result.stderr)
             if text.startswith("waiting for")]
    # the client's own limiter: up to 2 s, less what reading the first page took
    assert any(phase == "read" and re.fullmatch(r"waiting for hs's rate limit \([12]s\)", text)
               for phase, text in waits), waits
    assert ("write", "waiting for hs's rate limit (1s)") in waits  # a 429's Retry-After


def test_the_demo_tells_its_own_story_without_log_lines(tmp_path):
    """The demo narrates every sync on stdout; without a terminal it adds no progress lines
    (on one it shows the live display)."""
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.stderr
    assert "Requirements ranked by the open pipeline" in result.stdout
    assert "dealsync.progress" not in result.stderr


def test_run_every_logs_each_run_as_json_lines(tmp_path):
    shutil.copy(DATA / "memory-mapping.toml", tmp_path)
    (tmp_path / "dealsync.toml").write_text(MEMORY_CONFIG)
    world = World()
    world.add_deal("d1", name="Acme", company="Acme", amount="1000", request="SSO",
                   pipeline="sales")
    (tmp_path / "crm.json").write_text(json.dumps(world.to_json()))
    env = {**os.environ, "DEALSYNC_HOME": str(tmp_path / "home"), "DEALSYNC_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sync.cli", "-c", str(tmp_path / "dealsync.toml"), "run",
         "--every", "10s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(60, proc.kill)  # a run that never logs fails, not hangs
    watchdog.start()
    docs = []
    try:
        for line in proc.stderr:
            docs.append(json.loads(line))
            if docs[-1].get("phase") == "write" and docs[-1].get("event") == "end":
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        watchdog.cancel()
        proc.kill()
    docs += [json.loads(line) for line in err.splitlines()]
    assert proc.returncode == 0, docs
    assert "sales-rd: ok" in out
    ends = {d["phase"]: d for d in docs if d.get("event") == "end"}
    assert ends["create"]["counts"] == {"created or linked": 1}
    assert ends["write"]["pair"] == "sales-rd"
    assert any(d["message"] == "stopped" for d in docs)  # the loop's own last words, as JSON
