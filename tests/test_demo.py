"""`dealsync demo` in the suite: what it prints is checked against the emulators' final state."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

import sync.demo as demo
from sync.cli import cli

# How each CRM emulator shows a deal's stage and amount (the report is checked against them).
IS_OPEN = {"hubspot": lambda p: p["dealstage"] not in ("closedwon", "closedlost"),
           "salesforce": lambda p: not p["IsClosed"]}
AMOUNT = {"hubspot": lambda p: p["amount"], "salesforce": lambda p: p["Amount"]}


@pytest.mark.parametrize("crm", sorted(demo.DEMO_CRMS))
def test_demo_output_matches_the_emulators(tmp_path, monkeypatch, crm):
    final = {}
    stop = demo.DemoWorld.stop

    def capture_then_stop(world):
        final["deals"] = {d: world.crm.properties(d) for d in world.deal_ids}
        final["items"] = {i["identifier"]: i for i in world.pingcode.dump_items(False)}
        final["view"], final["crm"] = world.view, world.crm
        stop(world)

    monkeypatch.setattr(demo.DemoWorld, "stop", capture_then_stop)
    for name in demo.secrets(demo.DEMO_CRMS[crm]()):
        monkeypatch.delenv(name, raising=False)
    args = ["demo", "--dir", str(tmp_path / "demo")] + (["--crm", crm] if crm != "hubspot" else [])
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    view, label = final["view"], final["crm"].label
    deals_by_name = {p[final["crm"].name_field]: p for p in final["deals"].values()}

    # Every "<CRM> 'deal': field a -> b" the demo printed is what the deal shows at the end,
    # unless a later line moved the same field again. Values may hold spaces, never commas.
    last: dict[tuple[str, str], str] = {}
    fields = "|".join(view)
    for name, moves in re.findall(rf"{label} '([^']+)': (.+?)  \[", out):
        for field, new in re.findall(rf"({fields}) .+? -> (.+?)(?=, (?:{fields}) |$)", moves):
            last[(name, field)] = new.strip()
    assert last, "the demo printed no deal changes"
    for (name, field), value in last.items():
        assert deals_by_name[name][view[field]] == value, (name, field)

    # Every "PingCode KEY: status|priority a -> b" matches the item's final state.
    for key, attr, value in re.findall(r"PingCode (SCR-\d+): (status|priority) \S+ -> (\S+)", out):
        item = final["items"][key]
        shown = item["state"]["name"] if attr == "status" else item["priority"]["name"]
        later = re.findall(rf"PingCode {key}: {attr} \S+ -> (\S+)", out)[-1]
        assert shown == later

    # The report's open pipeline per requirement is the sum of its open deals in HubSpot.
    report = out[out.index("Requirements ranked"):]
    rows = re.findall(r"^(SCR-\d+)\s+([\d,]+)\s+(\d+)/(\d+)", report, re.M)
    assert len(rows) == len(final["items"])
    for key, pipeline, open_deals, deals in rows:
        linked = [p for p in final["deals"].values()
                  if key in (p.get(view["requirement"]) or "").split("; ")]
        open_ = [p for p in linked if IS_OPEN[crm](p)]
        assert int(deals) == len(linked) and int(open_deals) == len(open_)
        assert int(pipeline.replace(",", "")) == sum(int(float(AMOUNT[crm](p))) for p in open_)
    amounts = [int(p.replace(",", "")) for _, p, _, _ in rows]
    assert amounts == sorted(amounts, reverse=True)

    # The third run wrote nothing, and the conflict the story set up was kept.
    third = out[out.index("Third sync"):out.index("Requirements ranked")]
    assert "0 requirements and 0 deals updated" in third
    assert "conflict kept: " in out
    assert (tmp_path / "demo" / "dealsync.toml").is_file()
