"""Words people read, in their language, and custom context columns (mapping ``[context]``).

Unit tests of the block and the deal notes in English and Simplified Chinese, of the mapping's
custom columns and their mistakes, and end to end (the CLI against a CRM emulator and the
PingCode emulator, with the shipped zh-CN mapping) that a requirement's block is Chinese with
the custom columns filled, that editing a custom property on a deal rewrites it on the next
run, and that switching the language replaces the block instead of adding a second one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.cells import cell_len
from test_end_to_end import Stack, _environment

from plugins.hubspot.connector import HubSpotConnector
from plugins.pingcode.connector import PingCodeConnector
from sync import context
from sync.cli import cli
from sync.config import load_config
from sync.context import BEGIN, END, WORDS
from sync.demo import DEMO_CRMS
from sync.errors import ConfigError
from sync.mapping import load_mapping, parse_mapping
from sync.state import StateStore

DEALS = [
    {"id": "d1", "name": "Acme EU", "url": "https://crm.example/d1", "company": "Acme",
     "stage": "Qualified", "amount": 80000.0, "currency": None, "close_date": "2025-05-01",
     "owner": "Amy Chen", "is_open": True, "request": "Needs Okta",
     "custom": {"urgency": "高", "workaround": "<b>manual</b> export\u202e"}},
    {"id": "d2", "name": "Acme APAC", "url": None, "company": "Acme", "stage": "Won",
     "amount": 20000.0, "currency": None, "close_date": None, "owner": None, "is_open": True,
     "request": None, "custom": {"urgency": None, "workaround": None}},
]
COLUMNS = ["name", "amount", "urgency", "workaround", "request"]
TITLES = {"urgency": "紧急程度", "workaround": "临时方案"}


def _mapping(context_table: str) -> dict:
    """A small mapping with this ``[context]`` TOML table."""
    return tomllib.loads(f'[request]\nfield = "req"\n{context_table}')


# -- the block ---------------------------------------------------------------------------------
def test_block_in_english_reads_as_before():
    block = context.render(DEALS, ["name", "amount"], ["dealsync:p:d1"])
    assert block.startswith(f"{BEGIN}<h3>Deals asking for this</h3>")
    assert "<p>Open pipeline: <strong>100,000</strong> across 2 open deals</p>" in block
    assert "<th>Deal</th><th>Amount</th>" in block
    assert block.endswith("<p><small>Kept up to date by dealsync; edits inside this block are "
                          f"replaced.</small></p>{END}")
    one = context.render(DEALS[:1], ["name"], [])
    assert "across 1 open deal</p>" in one
    none = context.render([{**DEALS[0], "is_open": False}], ["name"], [])
    assert "across 0 open deals</p>" in none


def test_block_in_chinese_every_word():
    zh = WORDS["zh-CN"]
    block = context.render([{**DEALS[1], "orphaned": True}, DEALS[0]], COLUMNS,
                           ["dealsync:p:d1"], "zh-CN", TITLES)
    assert block.startswith(f"{BEGIN}<h3>提出此需求的商机</h3>") and block.endswith(END)
    assert "<p>进行中商机金额合计：<strong>80,000</strong>，共 1 个进行中的商机</p>" in block
    assert "<th>商机</th><th>金额</th><th>紧急程度</th><th>临时方案</th><th>需求说明</th>" in block
    assert "Acme APAC（已从 CRM 中移除）" in block
    assert f"<small>{zh['footer']}</small>" in block
    # the identity marker and the begin/end markers are machine-read: never translated
    assert '<p data-dealsync-marker="dealsync:p:d1"><small>dealsync:p:d1</small></p>' in block
    assert block.count(BEGIN) == block.count(END) == 1
    # no English word of the block is left
    for word in ("Deals asking", "Open pipeline", "gone from", "Kept up to date", "<th>Deal<"):
        assert word not in block
    many = context.render(DEALS, ["name"], [], "zh-CN")
    assert "共 2 个进行中的商机" in many
    none = context.render([{**DEALS[0], "is_open": False}], ["name"], [], "zh-CN")
    assert "目前没有进行中的商机" in none and "共 0 个" not in none


def test_custom_cells_are_cleaned_escaped_and_clipped():
    block = context.render(DEALS, COLUMNS, [], "zh-CN", TITLES)
    assert "<td>高</td>" in block
    assert "<td>&lt;b&gt;manual&lt;/b&gt; export</td>" in block  # escaped, override dropped
    assert "\u202e" not in block and "<b>" not in block
    long = {**DEALS[0], "custom": {"workaround": "步骤\n" + "很" * 600}}
    cell = context.render([long], ["workaround"], [], "zh-CN", TITLES)
    assert "步骤<br>" in cell
    assert "…（内容过长已截断，完整内容见商机）</td>" in cell
    assert "很" * 600 not in cell
    english = context.render([long], ["workaround"], [], "en", TITLES)
    assert "… (cut: the full text is on the deal)</td>" in english


def test_a_title_in_the_mapping_renames_a_built_in_column():
    block = context.render(DEALS, ["name", "owner"], [], "zh-CN", {"owner": "销售"})
    assert "<th>商机</th><th>销售</th>" in block


def test_changing_the_language_replaces_the_block_and_keeps_the_pms_text():
    description = context.splice("<p>PM text</p>", context.render(DEALS, COLUMNS, [], "en",
                                                                  TITLES))
    switched = context.splice(description, context.render(DEALS, COLUMNS, [], "zh-CN", TITLES))
    assert switched.startswith("<p>PM text</p>\n")
    assert switched.count(BEGIN) == switched.count(END) == 1
    assert "提出此需求的商机" in switched and "Deals asking for this" not in switched
    back = context.splice(switched, context.render(DEALS, COLUMNS, [], "en", TITLES))
    assert back == description


def test_notes_in_each_language():
    assert context.note("en", "changed", "status", key="SCR-1", title="SSO",
                        tracker_value="已完成", crm_value="shipped") == \
        "dealsync: SCR-1 SSO: status is now 已完成 (shipped)"
    assert context.note("zh-CN", "changed", "status", key="SCR-1", title="SSO",
                        tracker_value="已完成", crm_value="shipped") == \
        "dealsync：SCR-1 SSO：状态已变为 已完成（shipped）"
    assert context.note("zh-CN", "manual", "priority", key="DS-2", title="导出",
                        value="critical").startswith("dealsync：DS-2 导出：优先级需改为 critical，")
    # a field the table does not name keeps the mapping's name
    assert "effort已变为" in context.note("zh-CN", "changed", "effort", key="K-1", title="T",
                                           tracker_value="3", crm_value="3")


def test_read_block_gives_the_text_a_person_reads():
    paragraphs, rows = context.read_block(context.render(DEALS, COLUMNS, [], "zh-CN", TITLES))
    assert paragraphs[0] == "提出此需求的商机"
    assert paragraphs[1] == "进行中商机金额合计：100,000，共 2 个进行中的商机"
    assert rows[0] == ["商机", "金额", "紧急程度", "临时方案", "需求说明"]
    assert rows[1] == ["Acme EU", "80,000", "高", "<b>manual</b> export", "Needs Okta"]


# -- the mapping -------------------------------------------------------------------------------
def test_custom_columns_in_the_mapping():
    mapping = parse_mapping(_mapping(
        '[context]\nlanguage = "zh-CN"\ncolumns = ["name", "urgency", "competitor"]\n'
        '[context.titles]\nurgency = "紧急程度"\ncompetitor = "竞品"\n'
        '[context.properties]\nurgency = "dealsync_urgency"\n'), "m.toml")
    assert mapping.context_language == "zh-CN"
    assert mapping.context_columns == ("name", "urgency", "competitor")
    # a custom column reads the property of its own name unless [context.properties] says
    assert mapping.context_properties == {"urgency": "dealsync_urgency",
                                          "competitor": "competitor"}
    assert {"dealsync_urgency", "competitor"} <= set(mapping.crm_properties())
    assert mapping.crm_schema()["dealsync_urgency"] is None  # text, for check --fix
    assert mapping.context_values({"dealsync_urgency": "高", "competitor": None}) == \
        {"urgency": "高", "competitor": None}
    default = parse_mapping(_mapping(""), "m.toml")
    assert default.context_language == "en" and default.context_properties == {}


@pytest.mark.parametrize("table, message", [
    ('[context]\ncolumns = ["name", "compnay"]',
     "context.columns: 'compnay' is not a built-in column"),
    ('[context]\ncolumns = ["name", "name"]', "context.columns: 'name' is listed twice"),
    ('[context]\ncolumns = ["name", "bad-name"]\n[context.titles]\n"bad-name" = "x"',
     "'bad-name' is not a column name"),
    ('[context]\nlanguage = "fr"', "context.language: 'fr' is not one of en, zh-CN"),
    ('[context]\nlang = "zh-CN"', "context.lang: unknown key"),
    ('[context]\ncolumns = ["name"]\n[context.titles]\nurgency = "U"',
     "context.titles.urgency: not a column of context.columns"),
    ('[context]\ncolumns = ["name", "urgency"]\n[context.titles]\nurgency = ""',
     "context.titles.urgency: must be a non-empty string"),
    ('[context]\ncolumns = ["name"]\n[context.properties]\nname = "dealname"',
     "context.properties.name: a built-in column"),
    ('[context]\ncolumns = ["u"]\n[context.titles]\nu = "U"\n[context.properties]\nu = 3',
     "context.properties.u: must be a CRM deal property name"),
])
def test_context_mistakes_are_config_errors(table, message):
    with pytest.raises(ConfigError) as caught:
        parse_mapping(_mapping(table), "m.toml")
    assert any(message in problem for problem in caught.value.problems), caught.value.problems


def test_shipped_pingcode_mappings_are_chinese_with_urgency_and_workaround():
    for name in ("hubspot-pingcode", "salesforce-pingcode"):
        mapping = load_mapping(name)
        assert mapping.context_language == "zh-CN"
        assert set(mapping.context_properties) == {"urgency", "workaround"}
        assert mapping.context_titles == {"urgency": "紧急程度", "workaround": "临时方案"}


# -- end to end: the CLI, a CRM emulator, the PingCode emulator ---------------------------------
def _block(stack: Stack, key: str) -> str:
    description = stack.item(key)["description"]
    assert description.count(BEGIN) == description.count(END) == 1
    return context.extract(description)


@pytest.mark.parametrize("crm", sorted(DEMO_CRMS))
def test_block_is_chinese_with_custom_columns_and_follows_their_edits(tmp_path, monkeypatch,
                                                                       crm):
    _environment(monkeypatch, tmp_path, crm)
    stack = Stack(tmp_path, crm)
    try:
        urgency, workaround = (stack.mapping.context_properties[c]
                               for c in ("urgency", "workaround"))
        # before they are made, the custom columns' properties are reported by column
        missing = CliRunner().invoke(cli, ["-c", str(stack.config), "check"])
        assert missing.exit_code == 2, missing.output
        for column, name in (("urgency", urgency), ("workaround", workaround)):
            assert f"CRM property {name!r} (shown in context column {column}) does not exist" \
                in missing.output
        stack.prepare()  # check --fix (HubSpot), or an admin following its steps (Salesforce)
        assert "all pairs check out" in stack.cli("check")
        eu = stack.deal("Acme EU", "SCR-1", amount=80000)
        apac = stack.deal("Acme APAC", "SCR-1", amount=20000)
        stack.side.edit(eu, {urgency: "高", workaround: "每周手工导出 <CSV>"})
        stack.sync()
        block = _block(stack, "SCR-1")
        assert "<h3>提出此需求的商机</h3>" in block
        assert "进行中商机金额合计：<strong>100,000</strong>，共 2 个进行中的商机" in block
        assert "<th>紧急程度</th><th>临时方案</th><th>需求说明</th>" in block
        assert "<td>高</td><td>每周手工导出 &lt;CSV&gt;</td>" in block
        assert "本区块由 dealsync 自动维护" in block
        stored = _stored_contexts(stack)
        assert stored[eu]["custom"] == {"urgency": "高", "workaround": "每周手工导出 <CSV>"}
        assert stored[apac]["custom"] == {"urgency": None, "workaround": None}

        quiet = stack.sync()
        assert quiet["counts"]["updated_tracker"] == 0  # nothing moved: nothing written

        stack.later()
        stack.side.edit(apac, {urgency: "紧急"})  # only a custom property changes
        changed = stack.sync()
        assert changed["counts"]["updated_tracker"] == 1
        block = _block(stack, "SCR-1")
        assert "Acme APAC</a></td>" in block and "<td>紧急</td>" in block
        assert "<td>高</td>" in block
    finally:
        stack.stop()


def _stored_contexts(stack: Stack) -> dict[str, dict]:
    """The deal contexts the state store keeps for the pair (as the next run compares them)."""
    store = StateStore(load_config(stack.config).state_path)
    try:
        return store.deal_contexts("e2e")
    finally:
        store.close()


def _own_mapping_stack(tmp_path: Path, monkeypatch) -> tuple[Stack, str]:
    """HubSpot and PingCode emulators with a pair on a copy of the shipped hubspot-pingcode
    mapping (``./mapping.toml``, a test may rewrite it); the stack and the mapping's text."""
    text = Path(load_mapping("hubspot-pingcode").source).read_text(encoding="utf-8")
    assert text.count('language = "zh-CN"') == 1
    (tmp_path / "mapping.toml").write_text(text, encoding="utf-8")
    _environment(monkeypatch, tmp_path, "hubspot")
    return Stack(tmp_path, "hubspot", mapping="./mapping.toml"), text


def test_switching_the_language_rewrites_the_block_never_adds_one(tmp_path, monkeypatch):
    stack, text = _own_mapping_stack(tmp_path, monkeypatch)
    try:
        stack.prepare()
        stack.deal("Acme EU", "SCR-1", amount=80000)
        stack.sync()
        assert "提出此需求的商机" in _block(stack, "SCR-1")
        (tmp_path / "mapping.toml").write_text(
            text.replace('language = "zh-CN"', 'language = "en"'), encoding="utf-8")
        switched = stack.sync()
        assert switched["counts"]["updated_tracker"] == 1
        description = stack.item("SCR-1")["description"]
        assert description.startswith("<p>支持 SAML 2.0 与 OIDC 单点登录。</p>")  # the PM's text
        block = _block(stack, "SCR-1")  # exactly one block
        assert "<h3>Deals asking for this</h3>" in block and "提出此需求" not in block
        assert "<th>紧急程度</th>" in block  # the mapping's own titles stay as written
        assert stack.sync()["counts"]["updated_tracker"] == 0
    finally:
        stack.stop()


def test_demo_shows_the_block_in_chinese_with_the_custom_columns(tmp_path, monkeypatch):
    from sync import demo

    for name in demo.secrets():
        monkeypatch.delenv(name, raising=False)  # the demo sets its own; restored afterwards
    monkeypatch.setenv("DEALSYNC_HOME", str(tmp_path / "home"))
    lines: list[str] = []
    demo.run_demo(tmp_path / "demo", False, lines.append)
    out = "\n".join(lines)
    start = out.index("SCR-1 in PingCode, the block dealsync keeps in its description:")
    shown = out[start:out.index("\n\n", start)].splitlines()
    assert shown[1:3] == ["  提出此需求的商机", "  进行中商机金额合计：577,000，共 4 个进行中的商机"]
    header = shown[3].split()
    assert header[:3] == ["商机", "客户", "阶段"] and header[-2:] == ["紧急程度", "临时方案"]
    assert "需求说明" not in header  # every deal names SCR-1 by its key: no request text
    acme = next(line for line in shown if "Acme plant rollout" in line)
    assert "高：6 月上线前必须具备" in acme and "暂用共享管理员账号" in acme
    # aligned: every row's urgency starts in the same display column as its heading
    def at(line: str, text: str) -> int:
        return cell_len(line[:line.index(text)])
    assert at(acme, "高：") == at(shown[3], "紧急程度")
    assert "<" not in "\n".join(shown)  # readable text, not HTML
    assert shown[-1] == "  本区块由 dealsync 自动维护；在区块内所做的修改会被替换。"


def test_new_block_settings_rewrite_every_block_once_even_where_nothing_moved(tmp_path,
                                                                             monkeypatch):
    """Blocks outside the lookback window, on requirements and deals nobody touched, follow a
    change of language too: the run after the change reads every linked requirement once."""
    stack, text = _own_mapping_stack(tmp_path, monkeypatch)
    try:
        stack.prepare()
        stack.deal("Acme EU", "SCR-1", amount=80000)
        stack.deal("Acme APAC", "SCR-2", amount=20000)
        stack.sync()
        # the records are long past the lookback window: no search returns them, and the
        # verify rotation (which would reach them in time) is off
        monkeypatch.setattr(PingCodeConnector, "iter_changed", lambda *_: iter(()))
        monkeypatch.setattr(HubSpotConnector, "iter_changed", lambda *_, **__: iter(()))
        config = stack.config.read_text(encoding="utf-8")
        stack.config.write_text(config.replace('mapping = "./mapping.toml"',
                                               'mapping = "./mapping.toml"\nverify_deals = 0\n'
                                               'verify_requirements = 0'), encoding="utf-8")
        assert stack.sync()["counts"]["updated_tracker"] == 0
        (tmp_path / "mapping.toml").write_text(
            text.replace('language = "zh-CN"', 'language = "en"'), encoding="utf-8")
        switched = stack.sync()
        assert switched["counts"]["updated_tracker"] == 2
        for key in ("SCR-1", "SCR-2"):
            assert "<h3>Deals asking for this</h3>" in _block(stack, key)
        assert stack.sync()["counts"]["updated_tracker"] == 0
    finally:
        stack.stop()
