"""The plugin manager: built-ins through the same hooks, errors that name the plugin."""

from __future__ import annotations

import pytest

from sync import manager
from sync.errors import PluginError
from sync.hookspecs import hookimpl


@pytest.fixture
def fresh_manager():
    manager.get_plugin_manager.cache_clear()
    manager.connector_registry.cache_clear()
    yield manager.get_plugin_manager()
    manager.get_plugin_manager.cache_clear()
    manager.connector_registry.cache_clear()


def test_builtins_register_their_connectors(fresh_manager):
    registry = manager.connector_registry()
    assert registry[("crm", "memory")].plugin == "plugins.memory"
    assert "memory" in manager.installed_types("tracker")


def test_error_in_a_plugin_names_the_plugin(fresh_manager):
    class Broken:
        @hookimpl
        def register_connectors(self, register):
            raise RuntimeError("boom")

    fresh_manager.register(Broken(), name="acme-broken")
    with pytest.raises(PluginError, match="plugin 'acme-broken' failed in register_connectors"):
        manager.connector_registry()


def test_registering_a_non_connector_is_refused(fresh_manager):
    class Wrong:
        @hookimpl
        def register_connectors(self, register):
            register(dict)

    fresh_manager.register(Wrong(), name="wrong")
    with pytest.raises(PluginError, match="'wrong' registered"):
        manager.connector_registry()


def test_failing_notifier_is_logged_not_fatal(fresh_manager, caplog):
    seen = []

    class Notifier:
        @hookimpl
        def run_finished(self, pair, summary):
            raise ValueError("chat is down")

    class Listener:
        @hookimpl
        def run_finished(self, pair, summary):
            seen.append(pair)

    fresh_manager.register(Notifier(), name="chat")
    fresh_manager.register(Listener(), name="listener")
    manager.notify("run_finished", pair="p", summary={})
    assert seen == ["p"]
    assert "plugin 'chat' failed in run_finished" in caplog.text


def test_misspelt_hook_in_an_installed_plugin_stops_startup(monkeypatch):
    import pluggy

    class Typo:
        @hookimpl
        def run_finishd(self, pair, summary):
            pass

    def load_entry_points(pm, group):  # stands in for an installed package with a typo
        pm.register(Typo(), name="typo-plugin")

    monkeypatch.setattr(pluggy.PluginManager, "load_setuptools_entrypoints", load_entry_points)
    manager.get_plugin_manager.cache_clear()
    try:
        with pytest.raises(PluginError, match="'typo-plugin' implements an unknown hook"):
            manager.get_plugin_manager()
    finally:
        manager.get_plugin_manager.cache_clear()
