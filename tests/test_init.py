"""`dealsync init`: a first dealsync.toml from questions on a terminal or from options, checked
as `dealsync check` loads it, written 0600, never over an existing file without --force, and
followed by the next steps for the connectors chosen."""

from __future__ import annotations

import re
import stat
import tomllib
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner

import sync.wizard as wizard
from sync.cli import cli
from sync.config import load_config
from sync.connectors import CRMConnector, SecretSpec

BASE_URLS = {"hubspot": "https://api.hubapi.com", "pingcode": "https://open.pingcode.com",
             "worktile": "https://dev.worktile.com"}
# what each type needs from the options when nothing can be asked
NEEDS = {"hubspot": [], "salesforce": ["login_url=https://acme.my.salesforce.com"],
         "pingcode": ["project=SCR"], "worktile": ["project=DS"]}


def init(path: Path, *args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["-c", str(path), "init", *args], input=input,
                              catch_exceptions=False)


def options(crm: str, tracker: str) -> list[str]:
    args = ["--no-input", "--crm", crm, "--tracker", tracker]
    args += [a for s in NEEDS[crm] for a in ("--crm-setting", s)]
    args += [a for s in NEEDS[tracker] for a in ("--tracker-setting", s)]
    return args


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DEALSYNC_HOME", str(tmp_path / "home"))
    for name in ("HUBSPOT_TOKEN", "PINGCODE_CLIENT_ID", "PINGCODE_CLIENT_SECRET"):
        monkeypatch.delenv(f"DEALSYNC_{name}", raising=False)


@pytest.mark.parametrize("crm,tracker", [(c, t) for c in ("hubspot", "salesforce")
                                         for t in ("pingcode", "worktile")])
def test_options_alone_write_a_config_that_loads(tmp_path, crm, tracker):
    path = tmp_path / "dealsync.toml"
    result = init(path, *options(crm, tracker))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = load_config(path)  # the validation `dealsync check` starts with
    (pair,) = config.pairs.values()
    assert (pair.name, pair.crm.name, pair.tracker.name) == (f"{crm}-{tracker}", crm, tracker)
    assert pair.mapping.source.endswith(f"{crm}-{tracker}.toml")
    data = tomllib.loads(path.read_text())
    for side, kind in (("crm", crm), ("tracker", tracker)):
        if kind in BASE_URLS:  # the vendor's default, written out where people see it
            assert data[side][kind]["base_url"] == BASE_URLS[kind]
    # the next steps: every secret the two connectors declare, then check and a dry run
    out = result.output
    for inst in (pair.crm, pair.tracker):
        for spec in inst.cls.secrets:
            assert f"dealsync -c {path} auth set {inst.name} {spec.name}\n" in out, spec.name
    assert f"dealsync -c {path} check --fix\n" in out
    assert out.rstrip().endswith(f"dealsync -c {path} sync --dry-run")
    # and what it names is what the configuration asks for: `auth status` knows each one
    status = CliRunner().invoke(cli, ["-c", str(path), "auth", "status"])
    assert status.exit_code == 3, status.output  # secrets missing, configuration fine
    named = set(re.findall(r"auth set (\S+) (\S+)\n", out))
    listed = set(re.findall(r"^\w+\.(\S+) (\S+):", status.output, re.M))
    assert named == listed


def test_names_mapping_and_typed_values_come_from_options(tmp_path):
    path = tmp_path / "sub" / "dealsync.toml"
    mapping = tmp_path / "mine.toml"
    mapping.write_text((Path(__file__).parents[1] / "mappings" / "salesforce-worktile.toml")
                       .read_text(encoding="utf-8"), encoding="utf-8")
    result = init(path, "--no-input", "--crm", "salesforce", "--crm-name", "sf",
                  "--crm-setting", "login_url=https://acme.my.salesforce.com",
                  "--crm-setting", "max_api_share=0.7", "--tracker", "worktile",
                  "--tracker-name", "wt", "--tracker-setting", "project=123",
                  "--tracker-setting", "task_writes=true", "--tracker-setting",
                  "priorities=[\"低\", \"高\"]", "--mapping", str(mapping), "--pair", "sales")
    assert result.exit_code == 0, result.output
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert data["crm"]["sf"]["max_api_share"] == 0.7  # a number, as the connector wants
    assert data["tracker"]["wt"]["project"] == "123"  # text, as the connector wants
    assert data["tracker"]["wt"]["task_writes"] is True
    assert data["tracker"]["wt"]["priorities"] == ["低", "高"]
    assert data["pair"]["sales"] == {"crm": "sf", "tracker": "wt", "mapping": str(mapping)}
    assert load_config(path).pairs["sales"].tracker.settings["project"] == "123"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_without_a_terminal_every_missing_value_is_named_with_its_option(tmp_path):
    path = tmp_path / "dealsync.toml"
    result = init(path)  # CliRunner's stdin is no terminal
    assert result.exit_code == 2
    assert "missing --crm TYPE" in result.output and "missing --tracker TYPE" in result.output
    result = init(path, "--crm", "salesforce", "--tracker", "pingcode", "--mapping", "nope")
    assert result.exit_code == 2
    assert "missing --crm-setting login_url=..." in result.output
    assert "missing --tracker-setting project=...: " in result.output
    assert "--mapping: mapping 'nope': no such file" in result.output
    result = init(path, *options("hubspot", "pingcode"), "--tracker-setting",
                  "base_url=ftp://x", "--tracker-setting", "colour=red", "--crm-setting", "x")
    assert result.exit_code == 2 and "x: write KEY=VALUE" in result.output
    result = init(path, *options("hubspot", "pingcode"), "--tracker-setting",
                  "base_url=ftp://x", "--tracker-setting", "colour=red")
    assert result.exit_code == 2
    assert "--tracker-setting base_url: must start with https://" in result.output
    assert "--tracker-setting colour: unknown setting" in result.output
    assert not path.exists()


def test_a_secret_is_refused_as_a_setting(tmp_path):
    path = tmp_path / "dealsync.toml"
    result = init(path, *options("hubspot", "pingcode"), "--crm-setting", "token=pat-na1-x")
    assert result.exit_code == 2
    assert "never goes in the configuration" in result.output
    assert not path.exists()


def test_an_existing_file_is_kept_unless_forced(tmp_path):
    path = tmp_path / "dealsync.toml"
    path.write_text("# mine\n")
    path.chmod(0o644)
    result = init(path, *options("hubspot", "pingcode"))
    assert result.exit_code == 2 and "exists already" in result.output
    assert "--force" in result.output and path.read_text() == "# mine\n"
    result = init(path, *options("hubspot", "pingcode"), "--force")
    assert result.exit_code == 0, result.output
    assert "[pair.hubspot-pingcode]" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # was 0644


def test_on_a_terminal_it_asks_showing_each_vendors_default(tmp_path, monkeypatch):
    monkeypatch.setattr(wizard, "terminal", lambda: True)
    path = tmp_path / "dealsync.toml"
    answers = ["",            # CRM type [hubspot]
               "acme",        # instance name
               "",            # base_url [https://api.hubapi.com]
               "1234567",     # portal_id (optional)
               "worktile",    # tracker type
               "",            # instance name [worktile]
               "ftp://wt",    # base_url: refused, asked again
               "DS",          # project
               "https://wt.example",  # base_url again
               "",            # mapping [hubspot-worktile]
               "acme-wt"]     # pair name
    result = init(path, input="\n".join(answers) + "\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "CRM type (hubspot, memory, salesforce) [hubspot]:" in out
    assert "base_url [https://api.hubapi.com]:" in out
    assert "base_url [https://dev.worktile.com]:" in out
    assert "portal_id (optional, Enter to skip):" in out
    assert "base_url: must start with https://" in out  # said why, then asked again
    assert "Mapping (a shipped one, or a path to your own) [hubspot-worktile]:" in out
    data = tomllib.loads(path.read_text())
    assert data["crm"]["acme"] == {"type": "hubspot", "base_url": "https://api.hubapi.com",
                                   "portal_id": "1234567"}
    assert data["tracker"]["worktile"] == {"type": "worktile", "base_url": "https://wt.example",
                                           "project": "DS"}
    assert data["pair"]["acme-wt"]["mapping"] == "hubspot-worktile"
    assert "dealsync -c" in out and "auth set acme token" in out
    load_config(path)


def test_no_input_asks_nothing_even_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr(wizard, "terminal", lambda: True)
    result = init(tmp_path / "dealsync.toml", "--no-input", "--crm", "hubspot", "--tracker",
                  "pingcode", input="SCR\n")
    assert result.exit_code == 2
    assert "missing --tracker-setting project=..." in result.output


class Required(CRMConnector):
    """A plugin's connector that declares required settings and no ``setup_settings``."""

    type_name = "needy"
    required_settings: ClassVar[tuple[str, ...]] = ("email",)
    settings_help: ClassVar[dict[str, str]] = {"email": "the account the token belongs to"}
    secrets = (SecretSpec("api_token", "the API token"),)


def test_a_connector_declaring_only_required_settings_gets_them_asked(monkeypatch):
    quiet = wizard.Wizard(wizard.Answers(), interactive=False)
    assert quiet.settings("crm", Required, {}) == {}
    assert quiet.errors == ["missing --crm-setting email=...: the account the token belongs to"]
    asked = wizard.Wizard(wizard.Answers(), interactive=True, echo=lambda _line: None)
    monkeypatch.setattr("click.prompt", lambda text, **kw: "bot@example.com")
    assert asked.settings("crm", Required, {}) == {"email": "bot@example.com"}
    assert not asked.errors


def test_next_steps_skip_secrets_when_none_are_declared(tmp_path):
    mapping = Path(__file__).parent / "data" / "memory-mapping.toml"
    result = init(tmp_path / "dealsync.toml", "--no-input", "--crm", "memory", "--tracker",
                  "memory", "--mapping", str(mapping))
    assert result.exit_code == 0, result.output
    assert "auth set" not in result.output and "check --fix" in result.output
