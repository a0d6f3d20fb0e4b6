"""``dealsync init``: a first ``dealsync.toml`` from questions or options, never from reading code.

What it asks for comes from the connectors: each declares ``setup_settings`` (the settings a
first instance needs, with the vendor's default) and ``settings_help``; whatever its
``check_settings`` still reports missing is asked for too, so a plugin's required settings are
asked for without any code here. Every value can be given as an option (``--crm-setting
KEY=VALUE``), and without a terminal, or with ``--no-input``, a value still missing is an error
naming the option that gives it. The file is validated as ``dealsync check`` loads it before it
is written, 0600 like every file dealsync writes (README, "What dealsync stores and sends").
"""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from .config import Instance, _secret_settings, parse_config
from .connectors import Connector, SecretSpec
from .errors import EXIT_USAGE, ConfigError, DealsyncError
from .manager import connector_registry, installed_types
from .mapping import load_mapping, shipped_mappings
from .secrets import env_var

#: settings every connector accepts (sync/config.py reads them); not asked for, but allowed
COMMON_SETTINGS = ("rate_limits", "lookback_minutes")
SIDE_WORDS = {"crm": "CRM", "tracker": "tracker"}
MAX_TRIES = 5  # a person who answers wrong this often is told what is wrong and stops


def terminal() -> bool:
    """Whether a person can answer questions (tests make this True to answer them)."""
    return sys.stdin.isatty()


class FileExists(DealsyncError):
    exit_code = EXIT_USAGE


@dataclass
class Answers:
    """What ``init`` was given on the command line; missing values are asked or defaulted."""

    crm: str | None = None
    crm_name: str | None = None
    crm_settings: dict[str, str] = field(default_factory=dict)
    tracker: str | None = None
    tracker_name: str | None = None
    tracker_settings: dict[str, str] = field(default_factory=dict)
    mapping: str | None = None
    pair: str | None = None


def parse_settings(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``KEY=VALUE`` options into a dict; anything else is a usage error naming ``option``."""
    settings: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item}: write KEY=VALUE, e.g. base_url=https://...",
                                     param_hint=option)
        if key.strip() == "type":
            raise click.BadParameter("the type has its own option", param_hint=option)
        settings[key.strip()] = value.strip()
    return settings


def _missing(cls: type[Connector], settings: dict[str, Any]) -> dict[str, str]:
    """Settings ``check_settings`` wants and ``settings`` lacks: key -> what is wrong."""
    found = {}
    for problem in cls.check_settings(settings):
        key, _, message = problem.partition(": ")
        if key not in settings:
            found[key] = message
    return found


def _problems(cls: type[Connector], settings: dict[str, Any]) -> dict[str, str]:
    """Problems with the values in ``settings``: key -> what is wrong."""
    found = {}
    for problem in cls.check_settings(settings):
        key, _, message = problem.partition(": ")
        if key in settings:
            found.setdefault(key, message)
    return found


def coerce(cls: type[Connector], settings: dict[str, Any], key: str, raw: str) -> Any:
    """A value typed as text, as the connector wants it: the text itself, unless the
    connector refuses it and accepts the TOML value it spells (``0.8``, ``true``,
    ``["update", "state"]``)."""
    try:
        literal = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    if isinstance(literal, str) or key not in _problems(cls, {**settings, key: raw}):
        return raw
    return literal if key not in _problems(cls, {**settings, key: literal}) else raw


def describe(cls: type[Connector], key: str) -> str:
    return cls.settings_help.get(key, "")


class Wizard:
    """Asks (on a terminal) or takes from the options everything a first pair needs. Without
    a terminal every missing or refused value is collected, and ``run`` names them all at once,
    each with the option that gives it."""

    def __init__(self, answers: Answers, interactive: bool,
                 echo: Callable[[str], None] = click.echo):
        self.answers = answers
        self.interactive = interactive
        self.echo = echo
        self.errors: list[str] = []

    def run(self, base_dir: Path) -> tuple[Instance, Instance, str, str]:
        """The CRM and tracker instances, the mapping and the pair's name."""
        crm, tracker = self.instance("crm"), self.instance("tracker")
        mapping = self.mapping(crm, tracker, base_dir) if crm and tracker else None
        pair = self.pair(crm, tracker) if crm and tracker else None
        if self.errors or not (crm and tracker and mapping and pair):
            raise click.UsageError("\n".join(self.errors) + "\n(on a terminal and without "
                                   "--no-input, `dealsync init` asks for them)")
        return crm, tracker, mapping, pair

    # -- asking ------------------------------------------------------------------------------
    def _ask(self, text: str, option: str, default: Any = None, required: bool = True,
             choices: list[str] | None = None, help_text: str = "") -> str | None:
        """One value: prompted on a terminal, else the default; a required value with no
        default and no terminal is an error naming ``option``."""
        if not self.interactive:
            if default is None and required:
                self.errors.append(f"missing {option}" + (f": {help_text}" if help_text else ""))
            return None if default is None else str(default)
        if help_text and not choices:  # a choice's prompt lists the choices itself
            self.echo(f"  {help_text}")
        if not required and default is None:
            value = click.prompt(f"{text} (optional, Enter to skip)", default="",
                                 show_default=False)
            return value.strip() or None
        kind = click.Choice(choices) if choices else click.STRING
        return str(click.prompt(text, default=default, type=kind)).strip()

    def connector_type(self, side: str, given: str | None) -> type[Connector] | None:
        types = installed_types(side)
        option = f"--{side}"
        if given is None:
            default = next((t for t in ("hubspot", "pingcode") if t in types), None)
            given = self._ask(f"{SIDE_WORDS[side]} type", f"{option} TYPE",
                              default=default if self.interactive else None, choices=types,
                              help_text=f"one of {', '.join(types)}")
        if given is None:
            return None
        if given not in types:
            self.errors.append(f"{option}: {given} is not an installed {SIDE_WORDS[side]} "
                               f"type (installed: {', '.join(types)})")
            return None
        return connector_registry()[(side, given)].cls

    def instance(self, side: str) -> Instance | None:
        if self.interactive:
            self.echo(f"\n{SIDE_WORDS[side][0].upper()}{SIDE_WORDS[side][1:]}")
        cls = self.connector_type(side, getattr(self.answers, side))
        if cls is None:
            return None
        name = getattr(self.answers, f"{side}_name") or self._ask(
            f"Name of this {SIDE_WORDS[side]} instance", f"--{side}-name", default=cls.type_name,
            help_text="secrets are stored under it: `dealsync auth set NAME SECRET`")
        given: dict[str, str] = getattr(self.answers, f"{side}_settings")
        secrets = _secret_settings(name or cls.type_name, given, cls)
        if secrets:  # refused at once: a secret typed on a command line is worth stopping for
            raise click.UsageError("\n".join(f"--{side}-setting {key}: {message}"
                                             for key, message in secrets.items()))
        return Instance(side, name or cls.type_name, cls, self.settings(side, cls, given))

    def settings(self, side: str, cls: type[Connector], given: dict[str, str]) -> dict[str, Any]:
        """The instance's settings: those given, then the declared ones asked for (or their
        defaults), then whatever the connector still finds missing or wrong."""
        option = f"--{side}-setting"
        settings: dict[str, Any] = {}
        for key, raw in given.items():
            settings[key] = coerce(cls, settings, key, raw)
        for key, default in cls.setup_settings.items():
            required = key in _missing(cls, settings)
            if key in settings or (required and default is None and not self.interactive):
                continue  # given; or missing, which the check below reports with the rest
            value = self._ask(key, f"{option} {key}=...", default=default, required=required,
                              help_text=describe(cls, key))
            if value is not None:
                settings[key] = coerce(cls, settings, key, value)
        for _ in range(MAX_TRIES):
            missing, wrong = _missing(cls, settings), _problems(cls, settings)
            if not missing and not wrong:
                return settings
            if not self.interactive:
                self.errors += [f"missing {option} {key}=...: {describe(cls, key) or message}"
                                for key, message in missing.items()]
                self.errors += [f"{option} {key}: {message}" for key, message in wrong.items()]
                return settings
            for key, message in wrong.items():
                self.echo(f"  {key}: {message}")
                settings.pop(key)
            for key in [*wrong, *_missing(cls, settings)]:
                if key not in settings:
                    value = self._ask(key, f"{option} {key}=...", help_text=describe(cls, key))
                    settings[key] = coerce(cls, settings, key, value or "")
        raise click.UsageError(f"{option}: still not accepted after {MAX_TRIES} tries")

    def mapping(self, crm: Instance, tracker: Instance, base_dir: Path) -> str | None:
        shipped = f"{crm.cls.type_name}-{tracker.cls.type_name}"
        default = shipped if shipped in shipped_mappings() else None
        ref = self.answers.mapping
        if self.interactive:
            self.echo("\nPair")
        for _ in range(MAX_TRIES):
            if ref is None:
                ref = self._ask("Mapping (a shipped one, or a path to your own)",
                                "--mapping NAME|FILE", default=default,
                                help_text="shipped: " + ", ".join(shipped_mappings()))
            if ref is None:
                return None
            try:
                load_mapping(ref, base_dir)
                return ref
            except ConfigError as exc:
                if not self.interactive:
                    self.errors.append("--mapping: " + "; ".join(exc.problems))
                    return None
                self.echo("  " + "; ".join(exc.problems))
                ref = None
        raise click.UsageError(f"--mapping: still not found after {MAX_TRIES} tries")

    def pair(self, crm: Instance, tracker: Instance) -> str | None:
        return self.answers.pair or self._ask("Name of the pair", "--pair NAME",
                                              default=f"{crm.name}-{tracker.name}")


# -- the file -----------------------------------------------------------------------------------
def toml_value(value: Any) -> str:
    """A TOML literal: strings as basic strings (JSON's escapes are TOML's), numbers, booleans
    and lists as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) \
            + " }"
    return json.dumps(str(value), ensure_ascii=False)


def toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() \
        else json.dumps(key, ensure_ascii=False)


HEADER = """\
# Written by `dealsync init`. Secrets never go here: `dealsync auth set INSTANCE NAME` stores
# them (or DEALSYNC_<INSTANCE>_<NAME> environment variables). `dealsync init --help` lists every
# setting of each connector.
"""
PAIR_FOOTER = """\
# max_creates = 50              # stop a run that would create more requirements than this
# max_change_share = 0.5        # stop if a run would change more than half the links
"""


def render(crm: Instance, tracker: Instance, mapping: str, pair: str) -> str:
    lines = [HEADER]
    for inst in (crm, tracker):
        lines.append(f"[{inst.side}.{toml_key(inst.name)}]")
        lines.append(f"type = {toml_value(inst.cls.type_name)}")
        order = [*inst.cls.setup_settings, *inst.settings]  # declared ones first
        lines += [f"{toml_key(key)} = {toml_value(inst.settings[key])}"
                  for key in dict.fromkeys(order) if key in inst.settings]
        lines.append("")
    lines += [f"[pair.{toml_key(pair)}]", f"crm = {toml_value(crm.name)}",
              f"tracker = {toml_value(tracker.name)}", f"mapping = {toml_value(mapping)}",
              PAIR_FOOTER]
    return "\n".join(lines)


def validate(text: str, path: Path) -> None:
    """Load the text as ``dealsync check`` loads the file; raise its ``ConfigError`` if not."""
    parse_config(tomllib.loads(text), path)


def secret_steps(instances: list[Instance], config_flag: str) -> list[str]:
    """``dealsync auth set`` for each secret the chosen connectors declare, required first,
    each with what it is, and the environment variables a job without a keyring sets."""
    specs: list[tuple[Instance, SecretSpec]] = [(inst, spec) for inst in instances
                                                for spec in inst.cls.secrets]
    ordered = [item for item in specs if item[1].required] + \
        [item for item in specs if not item[1].required]
    lines = []
    for inst, spec in ordered:
        lines.append(f"dealsync{config_flag} auth set {inst.name} {spec.name}")
        lines.append(f"    {'' if spec.required else 'optional: '}{spec.description}")
    if ordered:
        inst, spec = ordered[0]
        lines.append(f"(a job without a keyring sets DEALSYNC_<INSTANCE>_<NAME> instead, e.g. "
                     f"{env_var(inst.name, spec.name)})")
    return lines


def settings_listing(side: str) -> list[str]:
    """Each installed connector of ``side`` and its settings, for ``dealsync init --help``:
    ``*`` marks what it requires, ``[...]`` the default init writes."""
    lines = []
    registry = connector_registry()
    for kind in installed_types(side):
        cls = registry[(side, kind)].cls
        missing = _missing(cls, {})
        lines.append(f"{kind}: {cls.summary}" if cls.summary else kind)
        keys = list(dict.fromkeys([*cls.setup_settings, *missing, *cls.settings_help]))
        for key in keys:
            mark = "*" if key in missing else " "
            default = cls.setup_settings.get(key)
            shown = f" [{default}]" if default is not None else ""
            lines.append(f"  {mark}{key}{shown}: {describe(cls, key) or missing.get(key, '')}")
        for spec in cls.secrets:
            lines.append(f"   secret {spec.name}: {spec.description}")
    return lines
