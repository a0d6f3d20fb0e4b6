"""The plugin manager: built-in connectors first, then entry-point plugins, then a check.

Built-ins register through the same hooks as third-party plugins. ``check_pending()`` turns a
misspelt hook name in a plugin into an error at start-up instead of a silent no-op. A plugin that
raises while registering is reported by name; one that raises in a lifecycle hook (a notifier) is
logged by name and the sync goes on.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .connectors import Connector
from .errors import PluginError

log = logging.getLogger("dealsync.plugins")

BUILTIN_PLUGINS = ("plugins.memory", "plugins.hubspot", "plugins.pingcode",
                   "plugins.salesforce", "plugins.worktile")


@dataclass(frozen=True)
class Registered:
    cls: type[Connector]
    plugin: str


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    try:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    except Exception as exc:  # a broken third-party package must say which one it is
        raise PluginError(f"could not load a dealsync plugin: {type(exc).__name__}: {exc}",
                          "uninstall or fix the plugin named above; `pip list` shows plugins") \
            from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"plugin {name!r} implements an unknown hook: {exc}",
                          "check the hook names against sync/hookspecs.py") from None
    return pm


def call_strict(hook_name: str, **kwargs: Any) -> None:
    """Call every implementation; the first failure stops dealsync, naming the plugin."""
    hook = getattr(get_plugin_manager().hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames})
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: "
                              f"{type(exc).__name__}: {exc}") from exc


def notify(hook_name: str, **kwargs: Any) -> None:
    """Tell every plugin about a lifecycle event; a failing notifier is logged, never fatal."""
    hook = getattr(get_plugin_manager().hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        try:
            impl.function(**{k: kwargs[k] for k in impl.argnames})
        except Exception as exc:
            log.error("plugin %r failed in %s: %s: %s", impl.plugin_name, hook_name,
                      type(exc).__name__, exc)


@lru_cache(maxsize=1)
def connector_registry() -> dict[tuple[str, str], Registered]:
    """(side, type) -> connector class and the plugin that registered it."""
    registry: dict[tuple[str, str], Registered] = {}
    current: list[str] = [""]

    def register(cls: type) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Connector) and cls.side
                and cls.type_name):
            raise PluginError(f"plugin {current[0]!r} registered {cls!r}, which is not a "
                              "CRMConnector or TrackerConnector subclass with a type_name")
        key = (cls.side, cls.type_name)
        if key in registry:
            raise PluginError(f"plugins {registry[key].plugin!r} and {current[0]!r} both "
                              f"register a {cls.side} connector of type {cls.type_name!r}")
        registry[key] = Registered(cls, current[0])

    hook = get_plugin_manager().hook.register_connectors
    for impl in reversed(hook.get_hookimpls()):
        current[0] = impl.plugin_name
        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} failed in register_connectors: "
                              f"{type(exc).__name__}: {exc}") from exc
    return registry


def installed_types(side: str) -> list[str]:
    return sorted(t for s, t in connector_registry() if s == side)


def describe_plugins() -> list[dict[str, Any]]:
    """Name, version and hooks of every plugin, built-ins included (``dealsync plugins``)."""
    pm = get_plugin_manager()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    own = metadata.version("dealsync") if _installed("dealsync") else "dev"
    out = []
    for name, plugin in pm.list_name_plugin():
        dist = dists.get(id(plugin))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        connectors = sorted(f"{r.cls.side}:{r.cls.type_name}" for r in
                            connector_registry().values() if r.plugin == name)
        out.append({"name": name, "version": dist.version if dist else own,
                    "builtin": name in BUILTIN_PLUGINS, "hooks": hooks, "connectors": connectors})
    return out


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True
