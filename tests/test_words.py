"""What people read: counted nouns with the right plural, values never as a Python repr, and the
pipeline table aligned by display width (a Chinese character takes two cells), with no terminal
codes when the output is not a terminal."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.cells import cell_len

import sync.demo as demo
from plugins.memory import World
from sync.cli import cli, count_words
from sync.report import COLUMNS, format_report
from sync.state import StateStore
from sync.words import conflict_words, counted, listing, manual_update, plural, shown
from conftest import MEMORY_CONFIG

DATA = Path(__file__).parent / "data"
#: what must never reach a person: a list or dict repr, a None, a count with the wrong plural
REPRS = ("['", "{'", "None", "1 conflicts", "1 requirements", "1 deals ", "1 links")


def test_counted_nouns_agree_with_their_count():
    assert counted(1, "conflict") == "1 conflict"
    assert counted(0, "conflict") == "0 conflicts"
    assert counted(2, "deal linked to the requirement it names",
                   "deals linked to the requirements they name") == \
        "2 deals linked to the requirements they name"
    assert plural(1, "deal") == "deal" and plural(3, "deal") == "deals"
    words = count_words({"created": 1, "conflicts": 1, "linked": 2, "failures": 1,
                         "updated_crm": 0})
    assert words == ["1 requirement created", "2 deals linked to the requirements they name",
                     "1 conflict settled by policy", "1 item failed (queued for retry)"]


def test_values_are_shown_as_people_write_them():
    assert shown(None) == shown("") == "-"
    assert shown(["high"]) == "high" and shown(["high", None]) == "high, -"
    assert shown({"a": 1}) == "a 1" and shown(3) == "3"
    assert listing([]) == "none" and listing(["x", "y"]) == "x, y"


def conflict_row(**changes):
    row = {"id": 3, "pair": "p", "req_key": "SCR-7", "field": "priority", "deal_ids": ["d1"],
           "crm_values": ["high"], "tracker_value": "低", "outcome": "高", "policy": "newest",
           "status": "applied"}
    return {**row, **changes}


def test_conflict_wording_has_no_repr():
    assert conflict_words(conflict_row(), "PingCode") == \
        "SCR-7 priority: PingCode 低, deal: high -> 高 (newest policy)"
    two = conflict_row(deal_ids=["d1", "d2"], crm_values=["high", None])
    assert conflict_words(two) == "SCR-7 priority: tracker 低, deals: high, - -> 高 (newest policy)"
    assert conflict_words(two, by_deal=True).startswith(
        "SCR-7 priority: tracker 低, deal d1 high, deal d2 -")
    open_one = conflict_words(conflict_row(outcome=None, policy="ask", tracker_value=None))
    assert open_one == ("SCR-7 priority: tracker -, deal: high (ask policy: open until "
                        "`dealsync conflicts resolve 3`)")


def test_manual_update_names_one_deal_or_several():
    item = {"first_seen": "2025-03-01T10:00:00+00:00", "req_key": "DS-2",
            "tracker_field": "priority", "current": None, "value": "最高", "deal_ids": ["7"]}
    assert manual_update(item).endswith("set DS-2 priority from - to 最高 in the tracker (deal 7)")
    assert manual_update({**item, "deal_ids": ["7", "9"]}).endswith("(deals 7, 9)")


# -- the pipeline table ---------------------------------------------------------------------------
ROWS = [
    {"key": "SCR-1", "open_pipeline": 577000.0, "open_deals": 4, "deals": 4,
     "title": "单点登录（SSO）支持", "companies": ["华为云合作伙伴", "Acme Manufacturing"]},
    {"key": "SCR-12", "open_pipeline": 22000.0, "open_deals": 1, "deals": 3,
     "title": "导出 Excel 报表", "companies": ["上海明远科技"]},
    {"key": "SCR-5", "open_pipeline": 1500.0, "open_deals": 0, "deals": 1,
     "title": "Audit log export", "companies": []},
    {"key": "SCR-40", "open_pipeline": 0.0, "open_deals": 0, "deals": 2,
     "title": "开放 API 批量写入" * 4, "companies": ["Globex"]},  # longer than the column
]


def test_report_columns_align_by_display_width():
    text = format_report(ROWS)
    lines = text.splitlines()
    assert "\x1b" not in text and len(lines) == len(ROWS) + 1
    header, at = {}, 0
    for name, _, _ in COLUMNS:  # each header's display cells
        start = lines[0].index(name, at)
        header[name] = (cell_len(lines[0][:start]), cell_len(lines[0][:start + len(name)]))
        at = start + len(name)
    for row, line in zip(ROWS, lines[1:]):
        at = 0
        for name, cell, right in COLUMNS:
            value = cell(row)
            if cell_len(value) > 40:  # a long title is cut to 40 cells, with an ellipsis
                value = line[line.index(value[:4], at):line.index("…", at) + 1]
                assert cell_len(value) <= 40
            if not value:
                continue
            start = line.index(value, at)
            span = (cell_len(line[:start]), cell_len(line[:start + len(value)]))
            if right:  # numbers end where their header ends
                assert span[1] == header[name][1], (line, name)
            else:  # text starts where its header starts
                assert span[0] == header[name][0], (line, name)
            at = start + len(value)


def test_report_header_explains_the_deals_column():
    header = format_report(ROWS).splitlines()[0]
    assert "Open/all deals" in header
    assert re.search(r"^SCR-12\s+22,000\s+1/3\s", format_report(ROWS).splitlines()[2])


def test_markup_and_emoji_codes_in_titles_are_shown_as_written():
    text = format_report([{**ROWS[2], "title": "[bold]Dark[/bold] mode :smile:"}])
    assert "[bold]Dark[/bold] mode :smile:" in text


# -- what the commands print ----------------------------------------------------------------------
@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("DEALSYNC_HOME", str(tmp_path / "home"))
    shutil.copy(DATA / "memory-mapping.toml", tmp_path)
    (tmp_path / "dealsync.toml").write_text(MEMORY_CONFIG)
    crm = World()
    crm.add_deal("d1", name="华为云 渠道合作", company="华为云合作伙伴", amount="1000",
                 request="单点登录（SSO）支持", pipeline="sales")
    (tmp_path / "crm.json").write_text(json.dumps(crm.to_json()))
    return tmp_path


def invoke(workdir: Path, *args: str):
    return CliRunner().invoke(cli, ["-c", str(workdir / "dealsync.toml"), *args],
                              catch_exceptions=False)


def test_sync_status_conflicts_and_report_speak_plainly(workdir):
    synced = invoke(workdir, "sync")
    assert synced.exit_code == 0, synced.output
    assert "1 deal and 0 requirements read" in synced.output
    assert "1 requirement created" in synced.output
    store = StateStore(workdir / "home" / "state.db")
    try:
        store.record_conflict("sales-rd", "r1", "MEM-1", "priority", ["d1", "d2"],
                              [None, "high"], None, "ask", None)
    finally:
        store.close()
    status = invoke(workdir, "status").stdout
    assert "sales-rd: 1 link, 0 queued failures, 1 open conflict" in status
    conflicts = invoke(workdir, "conflicts").stdout
    assert "MEM-1 priority: tracker -, deal d1 -, deal d2 high (ask policy" in conflicts
    report = invoke(workdir, "report")
    assert "单点登录（SSO）支持" in report.output and "\x1b" not in report.output
    # stdout: what each command answers (stderr's live progress lines are checked where made)
    for text in (synced.stdout, status, conflicts, report.stdout):
        for bad in REPRS:
            assert bad not in text, (bad, text)


@pytest.fixture(scope="module", params=["pingcode", "worktile"])
def demo_output(request, tmp_path_factory):
    """The HubSpot demo with each tracker, then `dealsync report` on what it left."""
    folder = tmp_path_factory.mktemp(f"words-{request.param}")
    with pytest.MonkeyPatch.context() as mp:
        for name in demo.secrets(demo.HubSpotDemo(), demo.DEMO_TRACKERS[request.param]()):
            mp.delenv(name, raising=False)  # the demo provides its own
        result = CliRunner().invoke(cli, ["demo", "--dir", str(folder), "--tracker",
                                          request.param], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = CliRunner().invoke(cli, ["-c", str(folder / "dealsync.toml"), "report"],
                                catch_exceptions=False)
    assert report.exit_code == 0, report.output
    return result.output, report.output


def test_demo_and_report_show_no_repr_and_right_plurals(demo_output):
    out, report = demo_output
    for bad in REPRS:
        assert bad not in out, bad
        assert bad not in report, bad
    assert "\x1b" not in out and "\x1b" not in report
    assert re.search(r"conflict kept: \S+ priority: \S+ \S+, deals?: [^\[\]']+ -> ", out)
    assert "1 conflict settled" in out
    assert "Open/all deals" in report and report.strip() in out


def test_demo_report_is_aligned_by_display_width(demo_output):
    _, report = demo_output
    lines = report.rstrip("\n").splitlines()
    title_at = cell_len(lines[0][:lines[0].index("Title")])
    companies_at = cell_len(lines[0][:lines[0].index("Companies")])
    chinese = 0
    for line in lines[1:]:
        key, rest = line.split(maxsplit=1)
        numbers = re.match(r"\s*[\d,]+\s+\d+/\d+\s+", rest)
        assert numbers, line
        before_title = line[:line.index(rest) + numbers.end()]
        assert cell_len(before_title) == title_at, line
        chinese += bool(re.search(r"[\u4e00-\u9fff]", line))
        title_and_gap = re.match(r"(.+?)\s{2,}(\S.*)$", line[len(before_title):])
        assert title_and_gap, line
        assert cell_len(line[:len(line) - len(title_and_gap.group(2))]) == companies_at, line
    assert chinese >= 3  # the demo's Chinese titles and companies are in the table
