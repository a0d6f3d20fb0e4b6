"""The report's rows (sync/report.py) and its HTML page (sync/report_html.py), without a browser:
the figures per requirement, escaping of hostile names, the page's self-containment, and the
`report --format html` command. tests/test_report_browser.py opens the page in Chromium."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from plugins.memory import World
from sync.cli import cli
from sync.mapping import load_mapping
from sync.report import is_won, pipeline_report
from sync.report_html import clip, render_html
from sync.state import StateStore

DATA = Path(__file__).parent / "data"
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture
def store(tmp_path):
    store = StateStore(tmp_path / "state.db")
    yield store
    store.close()


def deal(store, req, deal_id, amount, stage, is_open, close=None, company="Acme", key="A-1",
         title="SSO"):
    store.add_link("p", deal_id, req, key, f"https://tracker.example/{key}", title, "created")
    store.set_deal_context("p", deal_id, {"id": deal_id, "amount": amount, "stage": stage,
                                          "is_open": is_open, "close_date": close,
                                          "company": company})


def test_rows_count_pipeline_companies_waiting_won_revenue_and_last_known_values(store):
    deal(store, "r1", "d1", 1000, "Proposal", True, "2025-05-01")
    deal(store, "r1", "d2", 500, "Closed Won", False, "2025-01-01")
    deal(store, "r1", "d3", 700, "Closed Lost", False, "2025-02-01", company="Globex")
    deal(store, "r1", "d4", 300, "Proposal", True, "2025-06-01", company=None)
    for deal_id, status in (("d1", "In progress"), ("d2", "In progress"), ("d3", "Planned")):
        store.set_base("p", deal_id, "r1", "status", "x", status)
    store.set_base("p", "d1", "r1", "priority", "high", "High")
    deal(store, "r2", "d5", 800, "closedwon", False, key="A-2", title="Audit")
    store.set_base("p", "d5", "r2", "status", "done", "Done")
    deal(store, "r3", "d6", 9999, "Proposal", True, key="A-3")
    store.orphan_link("p", "d6", "r3", "gone from the CRM")  # left out entirely

    rows = pipeline_report(store, ["p"], {"p": load_mapping(str(DATA / "memory-mapping.toml"))})

    first, second = rows
    assert first["key"] == "A-1" and first["open_pipeline"] == 1300 and first["open_deals"] == 2
    assert first["deals"] == 4 and first["companies"] == ["Acme", "Globex"]
    assert first["earliest_close"] == "2025-05-01"  # of the open deals only
    assert (first["status"], first["priority"], first["delivery"]) == ("In progress", "High", None)
    assert first["delivered"] is False
    assert (first["won_waiting"], first["won_waiting_deals"]) == (500, 1)
    assert second["key"] == "A-2" and second["delivered"] is True  # Done -> "done"
    assert second["won_waiting"] == 0 and second["earliest_close"] is None


def test_without_a_mapping_the_fields_named_status_priority_delivery_are_read(store):
    deal(store, "r1", "d1", 100, "赢单", False)
    store.set_base("p", "d1", "r1", "status", None, "已发布")
    store.set_base("p", "d1", "r1", "delivery", None, "v2.4 (2025-06-15)")
    (row,) = pipeline_report(store, ["p"])
    assert row["status"] == "已发布" and row["delivered"] is True and row["won_waiting"] == 0
    assert row["delivery"] == "v2.4 (2025-06-15)"


@pytest.mark.parametrize("context, won", [
    ({"is_open": False, "stage": "Closed Won"}, True),
    ({"is_open": False, "stage": "closedwon"}, True),
    ({"is_open": False, "stage": "赢单"}, True),
    ({"is_open": False, "stage": "Closed Lost"}, False),
    ({"is_open": True, "stage": "Won back (reopened)"}, False),  # open deals are not won
    ({"is_open": False, "stage": "Signed", "is_won": True}, True),  # a connector that knows
    ({}, False),
])
def test_won_is_a_closed_stage_whose_name_says_won(context, won):
    assert is_won(context) is won


def test_a_sync_then_a_shipped_requirement_stops_counting_its_won_deals(h):
    h.deal("d1", "SSO", amount="900", stage="closedwon", company="Acme")
    h.deal("d2", "SSO", amount="400", company="Globex")
    h.sync()
    (row,) = pipeline_report(h.store, ["p"], {"p": h.mapping})
    assert (row["open_pipeline"], row["won_waiting"], row["status"]) == (400, 900, "Open")
    h.world.edit_item(h.item_for("d1")["id"], status="Done")
    h.sync()
    (row,) = pipeline_report(h.store, ["p"], {"p": h.mapping})
    assert (row["status"], row["delivered"], row["won_waiting"]) == ("Done", True, 0)


# -- the page ----------------------------------------------------------------------------------
def row(**overrides):
    base = {"pair": "p", "key": "SCR-1", "title": "单点登录（SSO）支持",
            "url": "https://demo.pingcode.com/pjm/workitems/1", "open_pipeline": 577000.0,
            "open_deals": 4, "deals": 4, "companies": ["Acme", "华为云合作伙伴"],
            "earliest_close": "2025-03-10", "status": "开发中", "priority": "最高",
            "delivery": "v2.3 (2025-03-31)", "delivered": False, "won_waiting": 30000.0,
            "won_waiting_deals": 1}
    return {**base, **overrides}


def hostile_page() -> str:
    return render_html([
        row(),
        row(key='X-2" onmouseover="alert(3)', title=HOSTILE, companies=["<img src=x onerror=1>"],
            url="javascript:alert(4)", status="<b>s</b>", priority="'p'", delivery="</td>",
            pair="<i>pair</i>", open_pipeline=10.0),
        row(key="X-3", title="quotes", url='https://t.example/?a="><script>x</script>',
            open_pipeline=0.0),
    ], pairs=["<i>pair</i>"])


def test_everything_from_the_crm_or_tracker_is_escaped():
    page = hostile_page()
    assert len(re.findall(r"<script", page, re.I)) == 1  # the page's own sorting script
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img" not in page and "<b>s</b>" not in page and "<i>pair</i>" not in page
    assert 'onmouseover="' not in page and "X-2&quot; onmouseover=&quot;alert(3)" in page
    assert "javascript:" not in page  # not a web address: shown as plain text, no link
    assert 'href="https://t.example/?a=&quot;&gt;&lt;script&gt;x&lt;/script&gt;"' in page
    assert "&lt;/td&gt;" in page and "&#x27;p&#x27;" in page


def test_the_page_is_self_contained_and_its_policy_admits_only_its_own_style_and_script():
    page = render_html([row(), row(key="SCR-2")])
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert not re.search(r"<(link|iframe|object|embed|img)\b|\bsrc=|@import|url\(", page)
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)[1]
    assert "default-src 'none'" in policy and "http" not in policy
    for tag in ("style", "script"):
        (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy


def test_the_page_shows_each_figure_a_bar_per_requirement_and_says_how_it_is_computed():
    page = render_html([row(), row(key="SCR-2", title="Dark mode", open_pipeline=96000.0)])
    assert page.count('<rect class="bar"') == 2 and page.count('<tr data-key="') == 2
    for text in ("单点登录（SSO）支持", "华为云合作伙伴", "开发中", "最高", "v2.3 (2025-03-31)",
                 "577,000", "30,000", "1 won deal", "2025-03-10", "4 open"):
        assert text in page
    assert "Noto Sans CJK SC" in page  # a font stack that reaches CJK fonts
    assert "How the figures are computed" in page and "base values in its state store" in page
    assert 'aria-sort="descending"><button type="button">Open pipeline' in page


def test_an_empty_report_is_still_a_page():
    page = render_html([])
    assert "No linked requirements yet" in page and "<tbody>" in page


def test_clip_counts_chinese_characters_as_two_columns():
    assert clip("单点登录支持", 8) == "单点登录…"
    assert clip("SSO with Okta", 40) == "SSO with Okta"


# -- the command ---------------------------------------------------------------------------------
@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("DEALSYNC_HOME", str(tmp_path / "home"))
    shutil.copy(DATA / "memory-mapping.toml", tmp_path)
    (tmp_path / "dealsync.toml").write_text(
        '[crm.sales]\ntype = "memory"\npath = "crm.json"\n'
        '[tracker.rd]\ntype = "memory"\npath = "tracker.json"\n'
        '[pair.sales-rd]\ncrm = "sales"\ntracker = "rd"\nmapping = "memory-mapping.toml"\n')
    world = World()
    world.add_deal("d1", company="华为云", amount="1000", request="单点登录", pipeline="sales")
    world.add_deal("d2", company=HOSTILE, amount="500", request=HOSTILE, pipeline="sales")
    (tmp_path / "crm.json").write_text(json.dumps(world.to_json()))
    return tmp_path


def invoke(workdir: Path, *args: str):
    return CliRunner().invoke(cli, ["-c", str(workdir / "dealsync.toml"), *args],
                              catch_exceptions=False)


def test_report_html_goes_to_stdout_or_to_the_file_named(workdir):
    assert invoke(workdir, "sync").exit_code == 0
    shown = invoke(workdir, "report", "--format", "html")
    assert shown.exit_code == 0 and shown.stdout.startswith("<!DOCTYPE html>")
    assert "单点登录" in shown.stdout and "&lt;script&gt;" in shown.stdout
    out = workdir / "pipeline.html"
    written = invoke(workdir, "report", "--format", "html", "--out", str(out))
    assert written.exit_code == 0 and written.stdout == ""
    assert "report written to" in written.stderr and "(2 requirements)" in written.stderr
    assert out.read_text(encoding="utf-8").count('<rect class="bar"') == 2
    as_json = workdir / "pipeline.json"  # --out takes every format
    assert invoke(workdir, "report", "--format", "json", "--out", str(as_json)).exit_code == 0
    assert json.loads(as_json.read_text(encoding="utf-8"))[0]["open_pipeline"] == 1000


def test_report_out_into_a_missing_folder_is_a_usage_error(workdir):
    result = invoke(workdir, "report", "--format", "html", "--out",
                    str(workdir / "no" / "such" / "dir.html"))
    assert result.exit_code == 2 and "cannot write" in result.stderr
