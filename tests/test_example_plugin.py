"""The third-party plugin example (examples/dealsync-jira), installed from its own folder: its
entry point loaded by sync/manager.py, listed by `dealsync plugins --json`, passing the
connector contract against its fake Jira, and running a sync from the CLI."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from plugins.memory import World
from sync import manager
from sync.cli import cli
from sync.connectors import InstanceContext
from sync.contract import TrackerContract

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dealsync-jira"


def dist_info(site: Path, project_dir: Path) -> Path:
    """What ``pip install`` leaves for a distribution: a ``*.dist-info`` folder with its name,
    version and entry points, taken from the plugin's pyproject.toml. Its code is imported from
    the folder itself, as an editable install does."""
    project = tomllib.loads((project_dir / "pyproject.toml").read_text("utf-8"))["project"]
    folder = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                     f"Version: {project['version']}\n", "utf-8")
    (folder / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in project.get("entry-points", {}).items()), "utf-8")
    return folder


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    site = tmp_path_factory.mktemp("site-packages")
    dist_info(site, EXAMPLE)
    added = [str(site), str(EXAMPLE), str(EXAMPLE / "tests")]  # tests: its fake Jira
    sys.path[:0] = added
    manager.get_plugin_manager.cache_clear()
    manager.connector_registry.cache_clear()
    try:
        yield
    finally:
        for entry in added:
            sys.path.remove(entry)
        for module in [m for m in sys.modules if m.split(".")[0] in ("dealsync_jira",
                                                                      "fake_jira")]:
            del sys.modules[module]
        manager.get_plugin_manager.cache_clear()
        manager.connector_registry.cache_clear()


@pytest.fixture
def jira(installed):
    from fake_jira import FakeJira

    with FakeJira() as fake:
        fake.add_issue("Existing request", "Asked by two customers.", status="In Progress",
                       priority="High")
        yield fake


def test_dealsync_plugins_lists_the_installed_plugin(installed):
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["jira"] == {"name": "jira", "version": "0.1.0", "builtin": False,
                            "hooks": ["register_connectors"], "connectors": ["tracker:jira"]}
    assert rows["plugins.worktile"]["connectors"] == ["tracker:worktile"]


class TestInstalledJiraPlugin(TrackerContract):
    @pytest.fixture
    def tracker(self, jira):
        from fake_jira import EMAIL, TOKEN

        cls = manager.connector_registry()[("tracker", "jira")].cls  # loaded by entry point
        connector = cls(InstanceContext("jira", {
            "base_url": jira.url, "project": "CRM", "email": EMAIL,
            "rate_limits": {"default": {"calls": 1000, "per_seconds": 1}}},
            {"api_token": TOKEN}.__getitem__))
        yield connector
        connector.close()

    @pytest.fixture
    def missing_req_id(self):
        return "99999"


MAPPING = """
[request]
field = "request"
[select.where]
pipeline = ["sales"]
[link]
key_field = "req_key"
url_field = "req_url"
[fields.status]
crm = "req_status"
tracker = "status"
direction = "both"
values = { "To Do" = "open", "In Progress" = "in_progress", "Done" = "done" }
[fields.priority]
crm = "req_priority"
tracker = "priority"
direction = "both"
conflict = "newest"
values = { "Highest" = "critical", "High" = "high", "Medium" = "medium", "Low" = "low", "Lowest" = "minimal" }
"""

CONFIG = """
[state]
path = "state.db"
[crm.sales]
type = "memory"
path = "crm.json"
[tracker.jira]
type = "jira"
base_url = "{url}"
project = "CRM"
email = "{email}"
rate_limits = {{ default = {{ calls = 1000, per_seconds = 1 }} }}
[pair.sales-jira]
crm = "sales"
tracker = "jira"
mapping = "./mapping.toml"
"""


def test_a_sync_runs_with_the_plugin(jira, tmp_path, monkeypatch):
    from fake_jira import EMAIL, TOKEN

    monkeypatch.setenv("DEALSYNC_JIRA_API_TOKEN", TOKEN)
    monkeypatch.setenv("DEALSYNC_HOME", str(tmp_path / "home"))
    world = World()
    world.add_deal("D-1", request="Offline mode\nField teams lose signal.", pipeline="sales",
                   req_priority="high", name="Acme rollout", amount="50000")
    world.add_deal("D-2", request="CRM-1", pipeline="sales", name="Globex EU")
    (tmp_path / "crm.json").write_text(json.dumps(world.to_json()), "utf-8")
    (tmp_path / "mapping.toml").write_text(MAPPING, "utf-8")
    config = tmp_path / "dealsync.toml"
    config.write_text(CONFIG.format(url=jira.url, email=EMAIL), "utf-8")

    def dealsync(*args: str) -> str:
        result = CliRunner().invoke(cli, ["-c", str(config), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    assert "all pairs check out" in dealsync("check")
    first = json.loads(dealsync("sync", "--json"))["pairs"][0]
    assert (first["counts"]["created"], first["counts"]["linked"]) == (1, 1)
    created = jira.issues["10002"]
    assert created["fields"]["summary"] == "Offline mode"
    assert created["fields"]["priority"]["name"] == "High"
    assert "dealsync:sales-jira:D-1" in created["fields"]["description"]
    deals = json.loads((tmp_path / "crm.json").read_text("utf-8"))["deals"]
    assert deals["D-2"]["fields"]["req_status"] == "in_progress"
    assert deals["D-1"]["fields"]["req_key"] == "CRM-2"

    jira.edit("CRM-2", status="In Progress")
    dealsync("sync")
    deals = json.loads((tmp_path / "crm.json").read_text("utf-8"))["deals"]
    assert deals["D-1"]["fields"]["req_status"] == "in_progress"
    quiet = json.loads(dealsync("sync", "--json"))["pairs"][0]["counts"]
    assert quiet["updated_crm"] == quiet["updated_tracker"] == quiet["created"] == 0
