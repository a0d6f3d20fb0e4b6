"""``dealsync.toml``: instances and pairs, found, loaded and validated as a whole.

The file is found through ``-c/--config``, then ``DEALSYNC_CONFIG``, then the user config
directory. It names instances (``[crm.NAME]``, ``[tracker.NAME]``) and pairs (``[pair.NAME]``)
and never holds secrets. Every problem, in this file and in the mappings it names, is collected
and reported at once with the file and the key.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import click

from .connectors import Connector, InstanceContext
from .engine import DEFAULT_MAX_CREATES, Pair
from .errors import ConfigError
from .mapping import Mapping, load_mapping
from .manager import connector_registry, installed_types
from .secrets import env_var, get_secret

CONFIG_NAME = "dealsync.toml"
SIDES = ("crm", "tracker")
PAIR_KEYS = {"crm": "the [crm.NAME] instance", "tracker": "the [tracker.NAME] instance",
             "mapping": "a shipped mapping name or a path to a mapping file",
             "max_change_share": "stop if a run would change more than this share of links (0.5)",
             "guard_min_links": "the share guard applies from this many links on (50)",
             "max_creates": "stop a run that would create more requirements than this (50)",
             "verify_deals": "linked deals re-read by id each run, in rotation (100)",
             "verify_requirements": "linked requirements re-read by id each run (10)"}
DEFAULT_LOOKBACK_MINUTES = 10


def config_path(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("DEALSYNC_CONFIG"):
        return Path(os.environ["DEALSYNC_CONFIG"]).expanduser()
    return Path(click.get_app_dir("dealsync")) / CONFIG_NAME


def dealsync_home() -> Path:
    """Where local state lives: ``DEALSYNC_HOME``, else the user data directory."""
    if os.environ.get("DEALSYNC_HOME"):
        return Path(os.environ["DEALSYNC_HOME"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "dealsync"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "dealsync"
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "dealsync"


@dataclass
class Instance:
    side: str
    name: str
    cls: type[Connector]
    settings: dict[str, Any]

    def connect(self) -> Connector:
        """Build the connector; secrets are read when the connector first needs them."""
        specs = {s.name: s for s in self.cls.secrets}

        def secret(name: str) -> str:
            spec = specs.get(name)
            return get_secret(self.name, name, spec.description if spec else "")

        return self.cls(InstanceContext(self.name, self.settings, secret))

    @property
    def lookback(self) -> timedelta:
        return timedelta(minutes=float(self.settings.get("lookback_minutes",
                                                         DEFAULT_LOOKBACK_MINUTES)))


@dataclass
class PairConfig:
    name: str
    crm: Instance
    tracker: Instance
    mapping: Mapping
    max_change_share: float = 0.5
    guard_min_links: int = 50
    verify_deals: int = 100
    verify_requirements: int = 10
    max_creates: int = DEFAULT_MAX_CREATES

    @contextmanager
    def connected(self) -> Iterator[Pair]:
        """The pair with both connectors built, closed again when the block ends."""
        pair = self.build()
        try:
            yield pair
        finally:
            pair.crm.close()
            pair.tracker.close()

    def build(self) -> Pair:
        return Pair(self.name, self.crm.connect(), self.tracker.connect(),  # type: ignore[arg-type]
                    self.mapping, crm_lookback=self.crm.lookback,
                    tracker_lookback=self.tracker.lookback,
                    max_change_share=self.max_change_share, guard_min_links=self.guard_min_links,
                    verify_deals=self.verify_deals, verify_requirements=self.verify_requirements,
                    max_creates=self.max_creates)


@dataclass
class Config:
    path: Path
    instances: dict[tuple[str, str], Instance] = field(default_factory=dict)
    pairs: dict[str, PairConfig] = field(default_factory=dict)
    state_path: Path = field(default_factory=lambda: dealsync_home() / "state.db")
    #: a PostgreSQL state store instead of the SQLite file (``[state] state_url`` or
    #: ``DEALSYNC_STATE_URL``); never with its password, which is the secret ``state password``
    state_url: str | None = None

    @property
    def state_target(self) -> str | Path:
        """What the state store is: the PostgreSQL URL if one is set, else the SQLite file."""
        return self.state_url or self.state_path

    def select(self, name: str | None) -> list[PairConfig]:
        if name is None:
            return list(self.pairs.values())
        if name not in self.pairs:
            raise ConfigError([f"{self.path}: no pair {name!r} (pairs: "
                               f"{', '.join(self.pairs) or 'none'})"])
        return [self.pairs[name]]


def load_config(path: Path) -> Config:
    if not path.is_file():
        raise ConfigError([f"no configuration file at {path}"],
                          "create one with `dealsync init`, or pass -c/--config or set "
                          "DEALSYNC_CONFIG; `dealsync demo` writes a working example")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_config(data, path)


def parse_config(data: dict[str, Any], path: Path) -> Config:
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(f"{path}: {key}: {message}")

    config = Config(path=path)
    invalid: set[tuple[str, str]] = set()  # reported already; pairs naming them say no more
    for key in sorted(set(data) - {"crm", "tracker", "pair", "state"}):
        bad(key, "unknown section (known: crm, tracker, pair, state)")
    for side in SIDES:
        section = data.get(side, {})
        if not isinstance(section, dict):
            bad(side, "must be a table of instances, e.g. [crm.acme]")
            continue
        for name, settings in section.items():
            instance = _parse_instance(path, side, name, settings, bad)
            if instance is not None:
                config.instances[(side, name)] = instance
            else:
                invalid.add((side, name))
    _parse_state(config, data.get("state", {}), bad)
    pairs = data.get("pair", {})
    if not pairs:
        bad("pair", "no pairs: add a [pair.NAME] table with crm, tracker and mapping")
    for name, spec in (pairs.items() if isinstance(pairs, dict) else []):
        pair = _parse_pair(config, invalid, name, spec, bad)
        if pair is not None:
            config.pairs[name] = pair
    if problems:
        raise ConfigError(problems, "fix the keys named above; `dealsync init` shows an example")
    return config


STATE_KEYS = {"path": "the SQLite state file (default: state.db under DEALSYNC_HOME)",
              "state_url": "a PostgreSQL state store: postgresql://USER@HOST:PORT/DATABASE"}


def _parse_state(config: Config, state: Any, bad: Any) -> None:
    """``[state]``: a SQLite ``path`` or a PostgreSQL ``state_url``; ``DEALSYNC_STATE_URL``
    wins over both, so a container can point an image's configuration elsewhere."""
    from .state.postgres import url_problems

    if not isinstance(state, dict):
        bad("state", "must be a table with path or state_url")
        return
    for key in sorted(set(state) - set(STATE_KEYS)):
        bad(f"state.{key}", f"unknown key (known: {', '.join(STATE_KEYS)})")
    if state.get("path") and state.get("state_url"):
        bad("state", "set path (SQLite) or state_url (PostgreSQL), not both")
    if state.get("path"):
        config.state_path = _relative(config.path, str(state["path"]))
    url, key = os.environ.get("DEALSYNC_STATE_URL"), "DEALSYNC_STATE_URL"
    if not url:
        url, key = state.get("state_url"), "state.state_url"
    if not url:
        return
    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
        bad(key, "must be a postgresql://USER@HOST:PORT/DATABASE URL")
        return
    for problem in url_problems(url):
        bad(key, problem)
    config.state_url = url


def _relative(config_file: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else config_file.parent / candidate


def _parse_instance(config_file: Path, side: str, name: str, settings: Any,
                    bad: Any) -> Instance | None:
    key = f"{side}.{name}"
    if not isinstance(settings, dict):
        bad(key, "must be a table")
        return None
    kind = settings.get("type")
    if not kind:
        bad(f"{key}.type", f"required (installed {side} types: {', '.join(installed_types(side))})")
        return None
    registered = connector_registry().get((side, kind))
    if registered is None:
        bad(f"{key}.type", f"unknown {side} connector type {kind!r} (installed: "
                           f"{', '.join(installed_types(side))}; plugins add more)")
        return None
    ok = True
    secretish = _secret_settings(name, settings, registered.cls)
    for setting, message in secretish.items():
        bad(f"{key}.{setting}", message)
        ok = False
    for problem in registered.cls.check_settings(settings):
        setting, _, message = problem.partition(": ")
        if setting not in secretish:
            bad(f"{key}.{setting}", message)
            ok = False
    for problem in _rate_limit_problems(settings.get("rate_limits", {}), registered.cls):
        bad(f"{key}.rate_limits", problem)
        ok = False
    lookback = settings.get("lookback_minutes", DEFAULT_LOOKBACK_MINUTES)
    if not isinstance(lookback, (int, float)) or lookback < 0:
        bad(f"{key}.lookback_minutes", "must be a number of minutes >= 0")
        ok = False
    if isinstance(settings.get("path"), str):  # data files sit beside the config file
        settings = {**settings, "path": str(_relative(config_file, settings["path"]))}
    return Instance(side, name, registered.cls, settings) if ok else None


SECRET_NAME = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|private_key)($|_)", re.I)
# Values that are credentials whatever their key: HubSpot private-app and OAuth tokens,
# Salesforce session ids, PEM keys, bearer tokens.
SECRET_VALUE = re.compile(r"^(pat-[a-z0-9]+-|00D[A-Za-z0-9]{12,}!|-----BEGIN |Bearer )", re.I)


def _secret_settings(name: str, settings: dict[str, Any],
                     cls: type[Connector]) -> dict[str, str]:
    """Settings that hold, or look as if they hold, a secret: the config file is read by
    whoever can read it and often lands in version control, so they are refused."""
    declared = {spec.name for spec in cls.secrets}
    found = {}
    for setting, value in settings.items():
        named = setting in declared or (SECRET_NAME.search(setting) and
                                        not setting.endswith(("_file", "_property")))
        if named or (isinstance(value, str) and SECRET_VALUE.match(value)):
            secret = setting if setting in declared else (sorted(declared) or ["NAME"])[0]
            found[setting] = (f"looks like a secret, which never goes in the configuration: "
                              f"store it with `dealsync auth set {name} {secret}` (or the "
                              f"environment variable {env_var(name, secret)})")
    return found


def _rate_limit_problems(limits: Any, cls: type[Connector]) -> list[str]:
    if not isinstance(limits, dict):
        return ["must be a table like {default = {calls = 100, per_seconds = 10}}"]
    problems = []
    for bucket, spec in limits.items():
        if bucket not in cls.default_rate_limits:
            problems.append(f"unknown bucket {bucket!r} (known: "
                            f"{', '.join(cls.default_rate_limits) or 'none'})")
        elif not (isinstance(spec, dict) and isinstance(spec.get("calls"), int)
                  and isinstance(spec.get("per_seconds"), (int, float))
                  and spec["calls"] > 0 and spec["per_seconds"] > 0):
            problems.append(f"{bucket}: needs calls (> 0) and per_seconds (> 0)")
    return problems


def _parse_pair(config: Config, invalid: set[tuple[str, str]], name: str, spec: Any,
                bad: Any) -> PairConfig | None:
    key = f"pair.{name}"
    if not isinstance(spec, dict):
        bad(key, "must be a table with crm, tracker and mapping")
        return None
    for extra in sorted(set(spec) - set(PAIR_KEYS)):
        bad(f"{key}.{extra}", f"unknown key (known: {', '.join(PAIR_KEYS)})")
    ends: dict[str, Instance] = {}
    for side in SIDES:
        ref = spec.get(side)
        if not ref:
            bad(f"{key}.{side}", f"required: {PAIR_KEYS[side]}")
        elif (side, ref) in invalid:
            continue
        elif (side, ref) not in config.instances:
            defined = ", ".join(n for s, n in config.instances if s == side) or "none"
            bad(f"{key}.{side}", f"no [{side}.{ref}] instance (defined: {defined})")
        else:
            ends[side] = config.instances[(side, ref)]
    mapping = None
    if not spec.get("mapping"):
        bad(f"{key}.mapping", "required: a shipped mapping name or a path")
    else:
        try:
            mapping = load_mapping(str(spec["mapping"]), config.path.parent)
        except ConfigError as exc:
            for problem in exc.problems:
                bad(f"{key}.mapping", problem)
    share = spec.get("max_change_share", 0.5)
    if not isinstance(share, (int, float)) or not 0 < share <= 1:
        bad(f"{key}.max_change_share", "must be a number in (0, 1]")
    counts = {}
    for setting, default in (("guard_min_links", 50), ("verify_deals", 100),
                             ("verify_requirements", 10), ("max_creates", DEFAULT_MAX_CREATES)):
        counts[setting] = spec.get(setting, default)
        if not isinstance(counts[setting], int) or counts[setting] < 0:
            bad(f"{key}.{setting}", "must be a whole number >= 0")
    if len(ends) != 2 or mapping is None:
        return None
    return PairConfig(name, ends["crm"], ends["tracker"], mapping, float(share), **counts)
