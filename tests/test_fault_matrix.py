"""The fault matrix: what each failure of a service does to a run, against both emulators.

Every case runs `dealsync sync --json` with a fault injected into the HubSpot or the PingCode
emulator, and checks: the exit code; a message that names the instance and says what to do
(never an internal error); the state store intact (SQLite's integrity check); no requirement
created twice; the records the fault did not touch synced; and that the next run, with the
fault gone, finishes the rest. The README's "What happens when a service fails" summarises it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import emulator_secrets
from plugins.emulator import Fault
from plugins.hubspot.emulator import PRIVATE_TOKEN, HubSpotEmulator
from plugins.pingcode.emulator import PingCodeEmulator
from sync.cli import cli
from sync.connectors import has_marker, make_marker
from sync.mapping import resolve_path

CONFIG = """
[crm.hs]
type = "hubspot"
base_url = "{hubspot}"
[tracker.pc]
type = "pingcode"
base_url = "{pingcode}"
project = "SCR"
[pair.m]
crm = "hs"
tracker = "pc"
mapping = "hubspot-pingcode"
"""
REQUESTS = ["Bulk export\nCSV please", "SCR-1, for the EU team", "Dark mode"]
HTML_PAGE = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@dataclass
class Run:
    code: int
    doc: dict
    stderr: str

    @property
    def pair(self) -> dict:
        return self.doc["pairs"][0] if "pairs" in self.doc else self.doc


class Matrix:
    def __init__(self, tmp_path: Path, hubspot: HubSpotEmulator, pingcode: PingCodeEmulator):
        self.hubspot, self.pingcode = hubspot, pingcode
        self.home = tmp_path / "home"
        self.config = tmp_path / "dealsync.toml"
        self.config.write_text(CONFIG.format(hubspot=hubspot.url, pingcode=pingcode.url))
        self.deals: list[str] = []

    def sync(self) -> Run:
        result = CliRunner().invoke(cli, ["-c", str(self.config), "sync", "--json"])
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            result.exception
        return Run(result.exit_code, json.loads(result.stdout), result.stderr)

    def seed(self, requests: list[str] = REQUESTS) -> None:
        made = self.hubspot.seed(deals=[{"properties": {
            "dealname": f"Deal {len(self.deals) + n}", "dealstage": "qualifiedtobuy",
            "amount": "1000", "dealsync_request": text}} for n, text in enumerate(requests)])
        self.deals += made["deals"]

    @staticmethod
    def fault(emulator, match: str, **spec) -> None:
        emulator.faults = [Fault(match, **spec)]

    def clear(self) -> None:
        self.hubspot.faults, self.pingcode.faults = [], []

    def intact(self) -> None:
        """The state store passes SQLite's check, and no deal's requirement exists twice."""
        db = sqlite3.connect(self.home / "state.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        items = self.pingcode.dump_items(False)
        for deal_id in self.deals:
            marker = make_marker("m", deal_id)
            assert sum(has_marker(i["description"], marker) for i in items) <= 1, deal_id

    def converged(self) -> Run:
        """With the fault gone the next run finishes; the one after writes nothing."""
        self.clear()
        finish = self.sync()
        assert finish.code == 0, finish.stderr
        quiet = self.sync()
        counts = quiet.pair["counts"]
        assert quiet.code == 0 and counts["created"] == counts["updated_crm"] == 0
        assert counts["updated_tracker"] == 0
        for deal_id in self.deals:
            assert self.hubspot.deal(deal_id)["properties"]["dealsync_requirement"], deal_id
        self.intact()
        return finish


@pytest.fixture
def matrix(hubspot_server, pingcode_server, tmp_path, monkeypatch):
    hubspot_server.reset()
    pingcode_server.reset()
    emulator_secrets(monkeypatch, tmp_path / "home")
    made = Matrix(tmp_path, hubspot_server, pingcode_server)
    assert CliRunner().invoke(cli, ["-c", str(made.config), "check", "--fix"]).exit_code == 0
    made.seed()
    yield made
    made.clear()


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S+ [A-Z]+ ")  # sync/progress.py


def one_line(run: Run) -> str:
    """The error as a person reads it: one line naming what failed, and a hint (the log lines
    around it, a run's progress among them, are for a log reader)."""
    assert "internal error" not in run.stderr and "Traceback" not in run.stderr
    said = "\n".join(line for line in run.stderr.strip().splitlines()
                     if not LOG_LINE.match(line))
    first = said.splitlines()[0]
    assert len(first) < 400, first
    return said


# -- throttling: waited out, never an error ---------------------------------------------------------
@pytest.mark.parametrize("emulator, match, headers", [
    ("pingcode", "POST /v1/pjm/work_items", {"x-pc-retry-after": "1"}),
    ("pingcode", "POST /v1/pjm/work_items/search", {}),
    ("hubspot", "POST /crm/v3/objects/deals/search", {}),
    ("hubspot", "POST /crm/v3/objects/deals/batch/update", {"Retry-After": "1"}),
])
def test_a_429_is_waited_out(matrix, emulator, match, headers):
    body = {"policyName": "TEN_SECONDLY_ROLLING"} if emulator == "hubspot" else {"code": "100029"}
    # twice in a row, but once for HubSpot's rolling ten seconds: with no Retry-After, each
    # costs the client a whole window (docs/hubspot.md), ten real seconds in a test
    nth = [1] if emulator == "hubspot" and not headers else [1, 2]
    matrix.fault(getattr(matrix, emulator), match, nth=nth, status=429, body=body,
                 headers=headers)
    run = matrix.sync()
    assert run.code == 0, run.stderr
    assert run.pair["counts"]["created"] == 2 and run.pair["counts"]["linked"] == 1
    matrix.intact()


def test_a_daily_limit_stops_the_run_saying_when_it_frees_up(matrix):
    matrix.fault(matrix.hubspot, "POST /crm/v3/objects/deals/search", prob=1.0, status=429,
                 body={"policyName": "DAILY", "message": "You have reached your daily limit."})
    run = matrix.sync()
    assert run.code == 6
    text = one_line(run)
    assert text.startswith("Error: hs: ") and "daily" in text.lower()
    matrix.intact()
    matrix.converged()


# -- server errors and pages that are not JSON -----------------------------------------------------
def test_an_html_error_page_on_a_read_is_retried_then_one_line(matrix):
    matrix.fault(matrix.pingcode, "POST /v1/pjm/work_items/search", prob=1.0, status=502,
                 text=HTML_PAGE)
    run = matrix.sync()
    assert run.code == 6
    text = one_line(run)
    assert text.startswith("Error: pc: ") and "502" in text and "<html>" not in text
    assert matrix.pingcode.dump_items(False)[3:] == []  # nothing was created: reads come first
    matrix.converged()


def test_a_5xx_on_one_create_queues_that_deal_and_the_others_sync(matrix):
    matrix.fault(matrix.pingcode, "POST /v1/pjm/work_items", nth=[1], status=500,
                 body={"code": "100000", "message": "系统错误"})
    run = matrix.sync()
    assert run.code == 7, run.stderr
    assert run.pair["counts"]["created"] == 1 and run.pair["counts"]["failures"] == 1
    assert run.pair["counts"]["linked"] == 1
    matrix.intact()
    finish = matrix.converged()
    assert finish.pair["counts"]["created"] == 1  # the queued one, once


def test_a_reply_lost_after_the_create_was_applied_never_duplicates(matrix):
    matrix.fault(matrix.pingcode, "POST /v1/pjm/work_items", nth=[1], after_handling=True,
                 reset_connection=True)
    run = matrix.sync()
    assert run.code == 7, run.stderr
    assert "may or may not have happened" in run.pair["errors"][0]
    matrix.intact()
    finish = matrix.converged()
    assert finish.pair["counts"]["relinked"] == 1 and finish.pair["counts"]["created"] == 0


def test_a_reset_connection_on_a_read_is_retried(matrix):
    matrix.fault(matrix.hubspot, "POST /crm/v3/objects/deals/search", nth=[1],
                 reset_connection=True)
    run = matrix.sync()
    assert run.code == 0, run.stderr
    matrix.intact()


@pytest.mark.parametrize("text", ['{"results": [{"id": "1", "propert', "OK", ""])
def test_a_truncated_or_non_json_body_is_one_line_not_a_bug(matrix, text):
    matrix.fault(matrix.hubspot, "POST /crm/v3/objects/deals/search", prob=1.0, status=200,
                 text=text, content_type="application/json")
    run = matrix.sync()
    assert run.code == 6
    assert one_line(run).startswith("Error: hs: ")
    matrix.converged()


# -- credentials ---------------------------------------------------------------------------------
def test_an_expired_token_is_renewed_once_and_the_call_replayed(matrix):
    run = matrix.sync()
    assert run.code == 0
    matrix.seed(["Audit log"])
    matrix.pingcode.expire_tokens()
    run = matrix.sync()
    assert run.code == 0 and run.pair["counts"]["created"] == 1, run.stderr
    matrix.intact()


def test_revoked_credentials_stop_the_run_with_the_auth_code(matrix):
    matrix.pingcode.apps.clear()  # the app was deleted: no token can be had
    run = matrix.sync()
    assert run.code == 3
    text = one_line(run)
    assert text.startswith("Error: pc") and "dealsync auth" in text
    assert matrix.pingcode.dump_items(False)[3:] == []


def test_a_missing_scope_names_the_scope(matrix):
    matrix.hubspot.config["private_tokens"] = {PRIVATE_TOKEN: [
        "crm.objects.deals.read", "crm.schemas.deals.read", "crm.objects.companies.read"]}
    run = matrix.sync()
    assert run.code in (3, 7), run.stderr
    text = run.stderr + json.dumps(run.doc, ensure_ascii=False)
    assert "crm.objects.deals.write" in text
    matrix.intact()


# -- odd data from a service ---------------------------------------------------------------------
def test_a_state_nobody_mapped_fails_that_requirement_only(matrix, tmp_path):
    assert matrix.sync().code == 0
    shipped = resolve_path("hubspot-pingcode").read_text(encoding="utf-8")
    (tmp_path / "m.toml").write_text(shipped.replace('"不做" = "wont_do"', ""), encoding="utf-8")
    matrix.config.write_text(matrix.config.read_text().replace('"hubspot-pingcode"', '"m.toml"'))
    key = matrix.hubspot.deal(matrix.deals[0])["properties"]["dealsync_requirement"]
    matrix.pingcode.mutate(key, state="不做")  # a state the mapping (now) does not know
    matrix.pingcode.mutate("SCR-1", priority="最高")
    run = matrix.sync()
    assert run.code == 7
    assert any("has no CRM value" in e and key in e for e in run.pair["errors"])
    assert matrix.hubspot.deal(matrix.deals[1])["properties"]["dealsync_priority"] == "critical"
    matrix.intact()


def test_text_with_emoji_control_characters_and_rtl_marks_is_carried_safely(matrix):
    matrix.seed(["Export 🚀 \u202eevil\u202c report\x00\x07\nBody with \x1b[31m colour"])
    run = matrix.sync()
    assert run.code == 0, run.stderr
    item = next(i for i in matrix.pingcode.dump_items(False) if "Export" in i["title"])
    assert "🚀" in item["title"] and "\x00" not in item["title"] and "\x07" not in item["title"]
    assert "\x1b" not in item["description"] and "\x00" not in item["description"]
    assert "\u202e" not in item["title"]  # a right-to-left override could disguise the title
    matrix.converged()


# -- clocks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("skew_min", [-10, 10])
def test_a_service_clock_ten_minutes_off_loses_no_change(matrix, skew_min):
    for emulator in (matrix.hubspot, matrix.pingcode):
        emulator.clock.set(datetime.now(timezone.utc) + timedelta(minutes=skew_min))
    assert matrix.sync().code == 0
    matrix.seed(["Audit log"])
    run = matrix.sync()
    assert run.code == 0 and run.pair["counts"]["created"] == 1, run.pair
    matrix.hubspot.mutate(matrix.deals[0], {"dealsync_priority": "low"})
    run = matrix.sync()
    assert run.pair["counts"]["updated_tracker"] == 1, run.pair
    matrix.intact()
