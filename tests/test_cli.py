"""The command line over a memory-backed config: real files, click's runner, no network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from plugins.memory import World
from sync.cli import cli
from conftest import MEMORY_CONFIG

DATA = Path(__file__).parent / "data"

CONFIG = MEMORY_CONFIG


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("DEALSYNC_HOME", str(tmp_path / "home"))
    shutil.copy(DATA / "memory-mapping.toml", tmp_path)
    (tmp_path / "dealsync.toml").write_text(CONFIG)
    crm = World()
    crm.add_deal("d1", name="Acme", company="Acme", amount="1000", request="SSO",
                 pipeline="sales")
    crm.add_deal("d2", name="Globex", company="Globex", amount="500", request="Audit log",
                 pipeline="sales")
    (tmp_path / "crm.json").write_text(json.dumps(crm.to_json()))
    return tmp_path


def invoke(workdir: Path, *args: str):
    return CliRunner().invoke(cli, ["-c", str(workdir / "dealsync.toml"), *args],
                              catch_exceptions=False)


def load(workdir: Path, name: str) -> World:
    return World.from_json(json.loads((workdir / name).read_text()))


def test_sync_json_prints_one_document_with_counts(workdir):
    result = invoke(workdir, "sync", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (pair,) = doc["pairs"]
    assert pair["pair"] == "sales-rd" and pair["status"] == "ok"
    assert pair["counts"]["created"] == 2 and pair["counts"]["updated_crm"] == 2
    assert pair["counts"]["failures"] == pair["counts"]["conflicts"] == 0
    assert pair["api_calls"]["sales"] > 0 and pair["api_calls"]["rd"] > 0
    assert len(load(workdir, "tracker.json").items) == 2
    again = json.loads(invoke(workdir, "sync", "--json").stdout)["pairs"][0]
    assert again["counts"]["created"] == again["counts"]["updated_crm"] == 0


def test_status_shows_the_last_run(workdir):
    invoke(workdir, "sync")
    result = invoke(workdir, "status")
    assert result.exit_code == 0
    assert "sales-rd: 2 links" in result.output
    assert "last run ok at " in result.output and "2 requirements created" in result.output
    doc = json.loads(invoke(workdir, "status", "--json").stdout)
    assert doc["exit_code"] == 0
    assert doc["pairs"][0]["last_run"]["summary"]["counts"]["created"] == 2


def test_status_says_why_the_last_run_stopped_and_exits_with_its_code(workdir):
    config = workdir / "dealsync.toml"
    config.write_text(config.read_text() + "max_creates = 1\n")
    assert invoke(workdir, "sync").exit_code == 5
    invoke(workdir, "sync", "--dry-run")  # a dry run since does not hide the stop
    result = invoke(workdir, "status")
    assert result.exit_code == 5
    assert "last run stopped at " in result.output
    assert "why it stopped: this run (the first run of this pair) would create 2 " \
           "requirements" in result.output
    assert "what to do: look at them with `dealsync sync --dry-run" in result.output
    assert json.loads(invoke(workdir, "status", "--json").stdout)["exit_code"] == 5
    assert invoke(workdir, "sync", "--force").exit_code == 0
    assert invoke(workdir, "status").exit_code == 0


def test_links_report_and_conflicts(workdir):
    invoke(workdir, "sync")
    links = json.loads(invoke(workdir, "links", "--json").stdout)
    assert {l["deal_id"] for l in links} == {"d1", "d2"}
    report = json.loads(invoke(workdir, "report", "--format", "json").stdout)
    assert [r["title"] for r in report] == ["SSO", "Audit log"]  # ranked by open pipeline
    assert report[0]["open_pipeline"] == 1000
    csv_text = invoke(workdir, "report", "--format", "csv").stdout
    assert csv_text.splitlines()[0].startswith("pair,key,title")
    assert invoke(workdir, "conflicts").output.strip() == "no open conflicts"


def test_dry_run_prints_plan_and_changes_nothing(workdir):
    before = (workdir / "crm.json").read_text()
    result = invoke(workdir, "sync", "--dry-run")
    assert result.exit_code == 0
    assert "would create requirement 'SSO'" in result.output
    assert "nothing to do" not in result.output and " planned actions\n" in result.output
    assert (workdir / "crm.json").read_text() == before
    assert not (workdir / "tracker.json").exists()


def test_config_with_three_mistakes_reports_all_three(workdir):
    broken = (CONFIG.replace('path = "crm.json"', 'colour = "red"')
              .replace('tracker = "rd"\nmapping', 'tracker = "qa"\nmapping')
              + "max_change_share = 2\n")
    (workdir / "dealsync.toml").write_text(broken)
    result = CliRunner().invoke(cli, ["-c", str(workdir / "dealsync.toml"), "sync"])
    assert result.exit_code == 2
    text = result.stderr
    assert "3 problems" in text
    assert "dealsync.toml: crm.sales.colour: unknown setting" in text
    assert "dealsync.toml: pair.sales-rd.tracker: no [tracker.qa] instance (defined: rd)" in text
    assert "dealsync.toml: pair.sales-rd.max_change_share: must be a number" in text
    assert "Traceback" not in text


def test_unknown_connector_type_names_installed_ones(workdir):
    (workdir / "dealsync.toml").write_text(CONFIG.replace('type = "memory"', 'type = "hubspott"', 1))
    result = CliRunner().invoke(cli, ["-c", str(workdir / "dealsync.toml"), "status"])
    assert result.exit_code == 2
    assert "unknown crm connector type 'hubspott' (installed: " in result.stderr
    assert "memory" in result.stderr


def test_mapping_missing_a_tracker_state_is_reported_by_name(workdir):
    mapping = (workdir / "memory-mapping.toml").read_text().replace('"Not now" = "not_now"\n', "")
    (workdir / "memory-mapping.toml").write_text(mapping)
    result = CliRunner().invoke(cli, ["-c", str(workdir / "dealsync.toml"), "check"])
    assert result.exit_code == 2
    assert "fields.status.values: misses tracker status 'Not now'" in result.stderr


def test_missing_config_file_says_what_to_do(tmp_path):
    result = CliRunner().invoke(cli, ["-c", str(tmp_path / "nope.toml"), "sync"])
    assert result.exit_code == 2
    assert "dealsync init" in result.stderr


def test_failed_item_exits_7_and_retry_finishes(workdir):
    invoke(workdir, "sync")
    tracker = load(workdir, "tracker.json")
    item = next(iter(tracker.items.values()))
    item["status"] = "Nonexistent"  # a state the mapping cannot translate
    (workdir / "tracker.json").write_text(json.dumps(tracker.to_json()))
    result = invoke(workdir, "sync", "--json")
    assert result.exit_code == 7
    doc = json.loads(result.stdout)
    assert doc["pairs"][0]["counts"]["failures"] == 1
    assert "has no CRM value" in doc["pairs"][0]["errors"][0]
    status = json.loads(invoke(workdir, "status", "--json").stdout)
    assert len(status["pairs"][0]["failures"]) == 1 and status["exit_code"] == 7
    text = invoke(workdir, "status").output
    assert "1 queued failure," in text and "failed field deal - requirement item" in text
    assert "has no CRM value" in text


def test_help_documents_exit_codes():
    result = CliRunner().invoke(cli, ["--help"])
    assert "Exit codes:" in result.output and "safety guard" in result.output


def test_plugins_json_lists_builtins():
    doc = json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).stdout)
    memory = next(p for p in doc if p["name"] == "plugins.memory")
    assert memory["builtin"] and "register_connectors" in memory["hooks"]
    assert set(memory["connectors"]) == {"crm:memory", "tracker:memory"}


def start_run_every(workdir: Path, every: str):
    """``dealsync run --every EVERY`` in its own process, once its first run has synced."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "DEALSYNC_HOME": str(workdir / "home")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sync.cli", "-c", str(workdir / "dealsync.toml"), "run",
         "--every", every], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (workdir / "tracker.json").exists():
        time.sleep(0.1)
    if not (workdir / "tracker.json").exists():
        proc.kill()
        raise AssertionError("the first run did not happen")
    return proc


def test_run_loop_stops_cleanly_on_sigterm(workdir):
    import signal

    proc = start_run_every(workdir, "10s")
    try:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "sales-rd: ok" in out and "stopped" in err
    assert len(load(workdir, "tracker.json").items) == 2


def test_second_run_of_same_pair_exits_with_lock_code(workdir):
    from sync.state import StateStore

    store = StateStore(workdir / "home" / "state.db")
    store.lock("sales-rd")
    try:
        result = invoke(workdir, "sync", "--json")
    finally:
        store.close()
    assert result.exit_code == 4
    assert json.loads(result.stdout)["pairs"][0]["status"] == "stopped"
    assert "another run of pair 'sales-rd' is in progress" in result.stderr


def test_an_internal_error_is_reported_without_a_traceback(workdir, monkeypatch):
    import sync.cli

    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(sync.cli, "pipeline_report", broken)
    result = CliRunner().invoke(cli, ["-c", str(workdir / "dealsync.toml"), "report"])
    assert result.exit_code == 1
    assert "internal error: KeyError" in result.stderr and "--debug" in result.stderr
    assert "Traceback" not in result.stderr


def test_max_creates_stops_with_exit_5_naming_the_number_and_the_flag(workdir):
    config = workdir / "dealsync.toml"
    config.write_text(config.read_text() + "max_creates = 1\n")
    result = invoke(workdir, "sync")
    assert result.exit_code == 5
    assert "would create 2 requirements" in result.stderr
    assert "max_creates = 1" in result.stderr and "--force" in result.stderr
    assert not (workdir / "tracker.json").exists() or load(workdir, "tracker.json").items == {}
    forced = invoke(workdir, "sync", "--force")
    assert forced.exit_code == 0, forced.output
    assert len(load(workdir, "tracker.json").items) == 2


def test_dry_run_json_lists_the_actions_and_writes_nothing(workdir):
    result = invoke(workdir, "sync", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    (pair,) = json.loads(result.stdout)["pairs"]
    assert pair["status"] == "dry-run"
    assert [(a["action"], a["deal_ids"]) for a in pair["actions"]] == [
        ("create_requirement", ["d1"]), ("create_requirement", ["d2"])]
    assert pair["plan"][0] == "create requirement 'SSO' for deal d1 (Acme)"
    assert not (workdir / "tracker.json").exists()
    text = invoke(workdir, "sync", "--dry-run").output
    assert "would create requirement 'SSO' for deal d1 (Acme)" in text
    assert "phase two waits for 'SSO' to be created" in text


def test_check_refuses_a_field_the_tracker_cannot_write_unless_it_is_manual(workdir):
    from plugins.memory import shared_world

    config = workdir / "dealsync.toml"  # an in-process tracker whose priority is read-only
    config.write_text(config.read_text().replace('path = "tracker.json"', 'world = "ro"'))
    shared_world("ro").unwritable.add("priority")
    result = invoke(workdir, "check")
    assert result.exit_code == 2
    assert "fields.priority: direction 'both', but the memory tracker 'rd' cannot change " \
           "'priority' after creation" in result.stderr
    mapping = workdir / "memory-mapping.toml"
    mapping.write_text(mapping.read_text().replace(
        '[fields.priority]\n', '[fields.priority]\nmanual = true\n'))
    assert invoke(workdir, "check").exit_code == 0


def test_a_damaged_state_store_is_named_with_what_to_do(workdir):
    home = workdir / "home"
    home.mkdir()
    (home / "state.db").write_bytes(b"this is not a database" * 100)
    result = invoke(workdir, "status")
    assert result.exit_code == 2
    assert f"state store {home / 'state.db'}" in result.stderr
    assert "restore a backup" in result.stderr and "internal error" not in result.stderr


def test_ctrl_c_is_not_a_bug(workdir, monkeypatch):
    import sync.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sync.cli, "run_pair", interrupted)
    result = invoke(workdir, "sync")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert "internal error" not in result.stderr


def test_resolving_a_conflict_that_is_not_open_is_a_usage_error(workdir):
    result = invoke(workdir, "conflicts", "resolve", "99999", "--take", "crm")
    assert result.exit_code == 2 and "no open conflict #99999" in result.stderr


def test_a_reader_that_stops_reading_is_not_a_bug(workdir):
    import os
    import subprocess
    import sys

    invoke(workdir, "sync")
    proc = subprocess.Popen([sys.executable, "-m", "sync.cli", "-c", str(workdir / "dealsync.toml"),
                             "links"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "DEALSYNC_HOME": str(workdir / "home")})
    proc.stdout.close()  # `dealsync links | head -0`
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr


def test_json_is_one_line_for_a_job_and_one_document_on_a_config_error(workdir):
    result = invoke(workdir, "sync", "--json")
    assert len(result.stdout.strip().splitlines()) == 1  # appends to a .jsonl file as is
    (workdir / "dealsync.toml").write_text("[pair.x]\ncrm = 1\n")
    broken = invoke(workdir, "sync", "--json")
    assert broken.exit_code == 2
    doc = json.loads(broken.stdout)
    assert doc["exit_code"] == 2 and "problem" in doc["error"]


def test_a_secret_in_the_configuration_is_refused_with_the_way_to_store_it(workdir):
    config = workdir / "dealsync.toml"
    config.write_text(config.read_text().replace(
        'type = "memory"\npath = "crm.json"',
        'type = "memory"\npath = "crm.json"\napi_key = "s3cr3t"\nowner = "pat-na1-0a1b2c3d"'))
    result = invoke(workdir, "sync")
    assert result.exit_code == 2
    assert "crm.sales.api_key: looks like a secret" in result.stderr
    assert "crm.sales.owner: looks like a secret" in result.stderr
    assert "dealsync auth set sales" in result.stderr
    assert "s3cr3t" not in result.stderr and "pat-na1" not in result.stderr


def test_everything_under_a_fresh_home_is_private_after_a_sync(workdir):
    import stat

    assert invoke(workdir, "sync").exit_code == 0
    home = workdir / "home"
    paths = [home, *home.rglob("*")]
    assert any(p.name == "state.db" for p in paths) and any(p.suffix == ".lock" for p in paths)
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_auth_set_takes_only_the_secrets_a_connector_asks_for(workdir, monkeypatch):
    import keyring
    from keyring.backends import fail

    config = workdir / "dealsync.toml"
    config.write_text(config.read_text() + '\n[tracker.pc]\ntype = "pingcode"\nproject = "SCR"\n')
    typo = invoke(workdir, "auth", "set", "pc", "client_secre")
    assert typo.exit_code == 2
    assert "instance 'pc' has no secret 'client_secre'; it takes client_id, client_secret" \
        in typo.stderr
    unknown = invoke(workdir, "auth", "set", "nosuch", "token")
    assert unknown.exit_code == 2 and "no instance 'nosuch'" in unknown.stderr
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:  # no keyring: said at once, before asking for the value
        result = CliRunner().invoke(cli, ["-c", str(config), "auth", "set", "pc",
                                          "client_secret"], input="")
    finally:
        keyring.set_keyring(previous)
    assert result.exit_code == 3
    assert "export DEALSYNC_PC_CLIENT_SECRET=..." in result.stderr
    assert "client_secret for pc" not in result.output  # never prompted


def test_a_missing_secret_is_said_once_with_both_ways_to_provide_it(workdir, monkeypatch):
    monkeypatch.delenv("DEALSYNC_PC_CLIENT_ID", raising=False)
    monkeypatch.delenv("DEALSYNC_PC_CLIENT_SECRET", raising=False)
    (workdir / "dealsync.toml").write_text(CONFIG.replace(
        'type = "memory"\npath = "tracker.json"',
        'type = "pingcode"\nbase_url = "http://127.0.0.1:9"\nproject = "SCR"'))
    result = invoke(workdir, "sync")
    assert result.exit_code == 3
    text = result.output  # stdout and stderr as a terminal shows them
    assert text.count("is not set") == 1
    assert "dealsync auth set rd client_id" in text
    assert "export DEALSYNC_RD_CLIENT_ID=..." in text


def test_run_every_takes_5_seconds_and_up(workdir):
    too_often = CliRunner().invoke(cli, ["-c", str(workdir / "dealsync.toml"), "run",
                                         "--every", "4s"])
    assert too_often.exit_code == 2 and "at most every 5 seconds" in too_often.output
    typo = CliRunner().invoke(cli, ["-c", str(workdir / "dealsync.toml"), "run",
                                    "--every", "5 min"])
    assert typo.exit_code == 2 and "use a number with s, m or h" in typo.output


def test_status_names_the_next_scheduled_run_while_run_every_is_active(workdir):
    import signal
    import time

    assert "not scheduled" in invoke(workdir, "status").output
    proc = start_run_every(workdir, "10m")
    try:
        time.sleep(0.5)
        text = invoke(workdir, "status").output
        doc = json.loads(invoke(workdir, "status", "--json").stdout)["pairs"][0]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert "next run at " in text and "(`dealsync run --every 10m` is running)" in text
    started = doc["last_run"]["started_at"]
    assert doc["next_run"]["every_s"] == 600 and doc["next_run"]["at"] > started


def test_a_scheduler_not_seen_for_its_interval_is_taken_as_stopped(tmp_path):
    import time
    from datetime import timedelta

    from sync.state import StateStore
    from sync.workers import SCHEDULE_GRACE_S, next_run, note_schedule

    store = StateStore(tmp_path / "state.db")
    assert next_run(store, "p", None) is None
    note_schedule(store, ["p"], timedelta(minutes=5))
    assert next_run(store, "p", None)["every_s"] == 300
    later = time.time() + 300 + SCHEDULE_GRACE_S + 5
    assert next_run(store, "p", None, now=later) is None
    store.close()
