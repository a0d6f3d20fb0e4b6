"""`dealsync state export|import|check`, `[state] state_url` and the PostgreSQL store through
the command line, over the memory connectors (tests/test_cli.py's world)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from plugins.memory import World
from sync.cli import cli
from sync.state import open_store
from conftest import MEMORY_CONFIG

DATA = Path(__file__).parent / "data"

PAIRS = MEMORY_CONFIG


def write_config(folder: Path, state: str, name: str = "dealsync.toml") -> Path:
    config = folder / name
    config.write_text(f"[state]\n{state}\n" + PAIRS, encoding="utf-8")
    return config


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("DEALSYNC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DEALSYNC_STATE_URL", raising=False)
    shutil.copy(DATA / "memory-mapping.toml", tmp_path)
    crm = World()
    for n in range(3):
        crm.add_deal(f"d{n}", name=f"Deal {n}", company="Acme", amount="1000",
                     request=f"Feature {n}", pipeline="sales")
    (tmp_path / "crm.json").write_text(json.dumps(crm.to_json()))
    return tmp_path


def dealsync(config: Path, *args: str):
    return CliRunner().invoke(cli, ["-c", str(config), *args], catch_exceptions=False)


def test_a_store_moves_from_postgresql_to_sqlite_and_back_row_for_row(workdir, pg_url,
                                                                      postgres_cluster):
    on_postgres = write_config(workdir, f'state_url = "{pg_url}"')
    assert dealsync(on_postgres, "sync").exit_code == 0
    dealsync(on_postgres, "conflicts")  # nothing open; the store is in use
    links = json.loads(dealsync(on_postgres, "links", "--json").stdout)
    assert len(links) == 3

    exported = dealsync(on_postgres, "state", "export", str(workdir / "copy.db"), "--json")
    assert exported.exit_code == 0, exported.output
    doc = json.loads(exported.stdout)
    assert doc["matches"] and doc["to"] == str(workdir / "copy.db")
    assert {t["table"]: t["rows"] for t in doc["tables"]}["links"] == 3
    assert "dealsync-test-pw" not in exported.output
    checked = dealsync(on_postgres, "state", "check", str(workdir / "copy.db"))
    assert checked.exit_code == 0 and "ok" in checked.stdout

    other = postgres_cluster.url(postgres_cluster.create_database())
    elsewhere = write_config(workdir, f'state_url = "{other}"', "other.toml")
    imported = dealsync(elsewhere, "state", "import", str(workdir / "copy.db"))
    assert imported.exit_code == 0, imported.output
    assert "links                  3 rows  every row matches" in imported.stdout
    assert json.loads(dealsync(elsewhere, "links", "--json").stdout) == links
    quiet = json.loads(dealsync(elsewhere, "sync", "--json").stdout)["pairs"][0]
    assert quiet["counts"]["created"] == 0  # the state came along: nothing is made twice

    again = dealsync(elsewhere, "state", "import", str(workdir / "copy.db"))
    assert again.exit_code == 2 and "is not empty" in again.stderr
    replaced = dealsync(elsewhere, "state", "import", str(workdir / "copy.db"), "--replace")
    assert replaced.exit_code == 0, replaced.output
    store = open_store(other)
    try:
        assert store.runs("sales-rd", 10)[0]["status"] == "ok"  # ids and rows as exported
        assert [r["id"] for r in store.runs(limit=10)] == [1]
        store.record_run("sales-rd", store.last_started()["sales-rd"], "ok", {})
        assert [r["id"] for r in store.runs(limit=10)] == [2, 1]  # numbering goes on
    finally:
        store.close()


def test_import_waits_for_no_worker(workdir, pg_url):
    sqlite = write_config(workdir, 'path = "state.db"', "sqlite.toml")
    assert dealsync(sqlite, "sync").exit_code == 0
    on_postgres = write_config(workdir, f'state_url = "{pg_url}"')
    running = open_store(pg_url)
    running.lock("sales-rd")
    try:
        result = dealsync(on_postgres, "state", "import", str(workdir / "state.db"))
    finally:
        running.close()
    assert result.exit_code == 4
    assert "another run of pair 'sales-rd' is in progress" in result.stderr


def test_a_busy_pair_exits_with_the_busy_code_on_postgresql(workdir, pg_url):
    config = write_config(workdir, f'state_url = "{pg_url}"')
    running = open_store(pg_url)
    running.lock("sales-rd")
    try:
        result = dealsync(config, "sync", "--json")
    finally:
        running.close()
    assert result.exit_code == 4
    assert json.loads(result.stdout)["pairs"][0]["status"] == "stopped"


def test_check_names_each_problem_and_exits_2(workdir, pg_url):
    config = write_config(workdir, f'state_url = "{pg_url}"')
    assert dealsync(config, "sync").exit_code == 0
    store = open_store(pg_url)
    try:
        store.set_base("sales-rd", "d99", "r99", "status", "open", "Open")
    finally:
        store.close()
    result = dealsync(config, "state", "check", "--json")
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert not doc["ok"] and doc["rows"]["links"] == 3
    assert doc["problems"] == ["1 base belongs to no link (first: pair=sales-rd, deal_id=d99, "
                               "req_id=r99, field=status)"]


def test_a_password_in_the_url_is_refused_without_being_shown(workdir):
    config = write_config(workdir, 'state_url = "postgresql://sync:hunter2@db:5432/dealsync"')
    result = dealsync(config, "status")
    assert result.exit_code == 2
    assert "state.state_url: holds a password" in result.stderr
    assert "hunter2" not in result.output


def test_the_environment_names_the_store_and_auth_status_lists_its_password(
        workdir, pg_url, monkeypatch):
    config = write_config(workdir, 'path = "state.db"')
    monkeypatch.setenv("DEALSYNC_STATE_URL", pg_url)
    assert dealsync(config, "sync").exit_code == 0
    assert not (workdir / "state.db").exists()  # the environment's store was used
    status = json.loads(dealsync(config, "auth", "status", "--json").stdout)
    assert {"instance": "state", "side": "state", "secret": "password", "required": False,
            "source": "environment"} in status


def test_a_wrong_password_is_an_auth_error_and_no_server_a_store_error(workdir, pg_url,
                                                                       monkeypatch):
    config = write_config(workdir, f'state_url = "{pg_url}"')
    monkeypatch.setenv("DEALSYNC_STATE_PASSWORD", "not-it")
    wrong = dealsync(config, "status")
    assert wrong.exit_code == 3 and "dealsync auth set state password" in wrong.stderr
    assert "not-it" not in wrong.output
    nowhere = write_config(workdir, 'state_url = "postgresql://sync@127.0.0.1:9/dealsync"')
    down = dealsync(nowhere, "status")
    assert down.exit_code == 2 and "cannot connect" in down.stderr


def test_workers_need_the_postgresql_store(workdir):
    config = write_config(workdir, 'path = "state.db"')
    result = dealsync(config, "run", "--every", "10s", "--workers", "2")
    assert result.exit_code == 2 and "--workers needs the PostgreSQL state store" in result.output
