"""`dealsync demo` in the suite: what it prints is checked against the emulators' final state,
for every CRM and tracker; with Worktile, the manual-update list against `dealsync status`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import sync.demo as demo
from sync.cli import cli

# How each CRM emulator shows a deal's stage and amount (the report is checked against them).
IS_OPEN = {"hubspot": lambda p: p["dealstage"] not in ("closedwon", "closedlost"),
           "salesforce": lambda p: not p["IsClosed"]}
AMOUNT = {"hubspot": lambda p: p["amount"], "salesforce": lambda p: p["Amount"]}
CASES = [(crm, tracker) for tracker in demo.DEMO_TRACKERS for crm in demo.DEMO_CRMS]
LISTED = "manual update needed"


def _run(folder: Path, crm: str, tracker: str) -> dict:
    """`dealsync demo` through the CLI: its output, what the emulators show when it stops, and
    what `dealsync status` printed each time the demo showed the manual-update list."""
    final: dict = {"status": []}
    stop, listed = demo.DemoWorld.stop, demo.manual_update_lines

    def capture_then_stop(world):
        final["deals"] = {d: world.crm.properties(d) for d in world.deal_ids}
        final["items"] = world.tracker.items()
        final["world"] = world
        stop(world)

    def listed_and_status(store):
        status = CliRunner().invoke(cli, ["-c", str(folder / "dealsync.toml"), "status"])
        assert status.exit_code == 0, status.output
        final["status"].append([line.strip() for line in status.output.splitlines()
                                if LISTED in line])
        return listed(store)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo.DemoWorld, "stop", capture_then_stop)
        mp.setattr(demo, "manual_update_lines", listed_and_status)
        for name in demo.secrets(demo.DEMO_CRMS[crm](), demo.DEMO_TRACKERS[tracker]()):
            mp.delenv(name, raising=False)  # the demo provides its own
        args = ["demo", "--dir", str(folder), "--crm", crm, "--tracker", tracker]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (folder / "dealsync.toml").is_file()
    return {**final, "out": result.output}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Each CRM and tracker's demo, run once for the module."""
    runs: dict[tuple[str, str], dict] = {}

    def run(crm: str, tracker: str) -> dict:
        if (crm, tracker) not in runs:
            runs[crm, tracker] = _run(tmp_path_factory.mktemp(f"{crm}-{tracker}"), crm, tracker)
        return runs[crm, tracker]
    return run


def section(out: str, heading: str) -> str:
    """From ``heading`` to the next blank line."""
    start = out.index(heading)
    return out[start:out.index("\n\n", start)]


@pytest.mark.parametrize("crm,tracker", CASES)
def test_demo_output_matches_the_emulators(demo_run, crm, tracker):
    run = demo_run(crm, tracker)
    out, world = run["out"], run["world"]
    view, label, tracker_label = world.view, world.crm.label, world.tracker.label
    deals_by_name = {p[world.crm.name_field]: p for p in run["deals"].values()}

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

    # Every "<tracker> KEY: status|priority a -> b" matches the requirement's final state.
    moves = re.findall(rf"{tracker_label} ([A-Z]+-\d+): (status|priority) \S+ -> (\S+)", out)
    assert moves
    for key, attr, value in moves:
        later = re.findall(rf"{tracker_label} {key}: {attr} \S+ -> (\S+)", out)[-1]
        assert run["items"][key][attr] == later

    # The report's open pipeline per requirement is the sum of its open deals in the CRM.
    report = out[out.index("Requirements ranked"):]
    rows = re.findall(r"^([A-Z]+-\d+)\s+([\d,]+)\s+(\d+)/(\d+)", report, re.M)
    assert len(rows) == len(run["items"])
    for key, pipeline, open_deals, deals in rows:
        linked = [p for p in run["deals"].values()
                  if key in (p.get(view["requirement"]) or "").split("; ")]
        open_ = [p for p in linked if IS_OPEN[crm](p)]
        assert int(deals) == len(linked) and int(open_deals) == len(open_)
        assert int(pipeline.replace(",", "")) == sum(int(float(AMOUNT[crm](p))) for p in open_)
    amounts = [int(p.replace(",", "")) for _, p, _, _ in rows]
    assert amounts == sorted(amounts, reverse=True)

    # The third run wrote nothing, and the conflict the story set up was kept.
    assert "0 requirements and 0 deals updated" in section(out, "Third sync")
    assert "conflict kept: " in out
    if world.tracker.writes_back:  # nothing waits for a person, so no list and no fourth run
        assert LISTED not in out and "Fourth sync" not in out and run["status"] == []


@pytest.mark.parametrize("crm", demo.DEMO_CRMS)
def test_worktile_demo_shows_the_manual_update_list_at_work(demo_run, crm):
    run = demo_run(crm, "worktile")
    out, world = run["out"], run["world"]
    tracker, view, mapping = world.tracker, world.view, world.mapping
    highest, high, _low = tracker.priorities
    sso = world.keys["sso"]
    ids = {p[world.crm.name_field]: d for d, p in run["deals"].items()}
    on_sso = [d for d, p in run["deals"].items() if p[view["requirement"]] == sso]
    status, priority = ({fm.name: fm for fm in mapping.fields}[name] for name in
                        ("status", "priority"))

    # The lists the demo printed are what `dealsync status` printed at that moment.
    printed = [[line.strip() for line in section(out, heading).splitlines() if LISTED in line]
               for heading in ("Second sync", "Third sync", "Fourth sync")]
    assert printed == run["status"]
    second, third, fourth = printed

    # The rep's priority change waits for a person; the PM's state change reached every deal.
    rep = (rf"{LISTED} since .+: set {sso} priority from {high} to {highest} in the tracker "
           rf"\(deal {ids['Globex EU expansion']}\)")
    assert [line for line in second if re.fullmatch(rep, line)]
    assert f"{sso}: status {tracker.planned} -> {tracker.started}  [people]" in section(
        out, "Second sync")
    assert len(on_sso) == 4 and all(
        run["deals"][d][view["status"]] == status.to_crm(tracker.started) for d in on_sso)

    # The third run keeps the list and writes nothing.
    assert third == second
    assert "0 requirements and 0 deals updated" in section(out, "Third sync")
    assert f"{len(second)} listed for a manual update" in section(out, "Third sync")

    # The PM makes each listed change in Worktile; the fourth run takes them off the list, and
    # every deal behind the requirement follows.
    made = section(out, "The PM makes the listed changes")
    assert f"PM sets {sso} ({run['items'][sso]['title']}) priority from {high} to {highest}" in made
    assert made.count("  - PM sets ") == len(second)
    assert fourth == [] and "listed for a person (`dealsync status`): nothing" in out
    assert "listed for a manual update" not in section(out, "Fourth sync")
    assert run["items"][sso]["priority"] == highest
    assert all(run["deals"][d][view["priority"]] == priority.to_crm(highest) for d in on_sso)
