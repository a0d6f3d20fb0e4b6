"""Tests for sync.secrets: keyring first, environment second, and errors that say what to do."""

from __future__ import annotations

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail
from keyring.errors import KeyringError, PasswordDeleteError

from sync.errors import EXIT_AUTH, SecretMissing
from sync.secrets import (SERVICE, delete_secret, env_var, get_secret, secret_source,
                          set_secret)


class MemoryKeyring(KeyringBackend):
    priority = 1

    def __init__(self):
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.store.get((service, username))

    def set_password(self, service, username, password):
        self.store[(service, username)] = password

    def delete_password(self, service, username):
        if self.store.pop((service, username), None) is None:
            raise PasswordDeleteError("not found")


class BrokenKeyring(KeyringBackend):
    """A backend that exists but fails, like a locked Secret Service without D-Bus."""

    priority = 1

    def get_password(self, service, username):
        raise KeyringError("locked")

    def set_password(self, service, username, password):
        raise KeyringError("locked")

    def delete_password(self, service, username):
        raise KeyringError("locked")


def _use(backend):
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


@pytest.fixture
def memory():
    yield from _use(MemoryKeyring())


@pytest.fixture
def broken():
    yield from _use(BrokenKeyring())


@pytest.fixture
def no_keyring():
    yield from _use(fail.Keyring())


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("DEALSYNC_ACME_TOKEN", "DEALSYNC_RD_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("instance, name, expected", [
    ("acme", "token", "DEALSYNC_ACME_TOKEN"),
    ("rd", "client_secret", "DEALSYNC_RD_CLIENT_SECRET"),
    ("eu-west.prod", "api key", "DEALSYNC_EU_WEST_PROD_API_KEY"),
    ("crm2", "tök", "DEALSYNC_CRM2_T_K"),
])
def test_env_var_naming(instance, name, expected):
    assert env_var(instance, name) == expected


def test_keyring_wins_over_environment(memory, monkeypatch):
    memory.store[(SERVICE, "acme.token")] = "from-keyring"
    monkeypatch.setenv("DEALSYNC_ACME_TOKEN", "from-env")
    assert get_secret("acme", "token") == "from-keyring"
    assert secret_source("acme", "token") == "keyring"


def test_environment_used_when_keyring_lacks_it(memory, monkeypatch):
    monkeypatch.setenv("DEALSYNC_ACME_TOKEN", "from-env")
    assert get_secret("acme", "token") == "from-env"
    assert secret_source("acme", "token") == "environment"


@pytest.mark.parametrize("backend", ["broken", "no_keyring"])
def test_unusable_keyring_falls_through_to_environment(request, monkeypatch, backend):
    request.getfixturevalue(backend)
    monkeypatch.setenv("DEALSYNC_ACME_TOKEN", "from-env")
    assert get_secret("acme", "token") == "from-env"
    assert secret_source("acme", "token") == "environment"


def test_missing_secret_names_both_ways(memory):
    with pytest.raises(SecretMissing) as caught:
        get_secret("acme", "token", "HubSpot private-app token")
    error = caught.value
    assert "'acme'" in error.message and "'token'" in error.message
    assert "HubSpot private-app token" in error.message
    assert "`dealsync auth set acme token`" in error.hint
    assert "export DEALSYNC_ACME_TOKEN=" in error.hint
    assert error.exit_code == EXIT_AUTH
    assert secret_source("acme", "token") == "missing"


def test_empty_environment_variable_counts_as_missing(memory, monkeypatch):
    monkeypatch.setenv("DEALSYNC_ACME_TOKEN", "")
    with pytest.raises(SecretMissing):
        get_secret("acme", "token")


def test_set_and_delete_round_trip(memory):
    set_secret("rd", "client_secret", "s3cr3t")
    assert memory.store == {(SERVICE, "rd.client_secret"): "s3cr3t"}
    assert get_secret("rd", "client_secret") == "s3cr3t"
    assert delete_secret("rd", "client_secret") is True
    assert delete_secret("rd", "client_secret") is False
    assert secret_source("rd", "client_secret") == "missing"


@pytest.mark.parametrize("backend", ["broken", "no_keyring"])
def test_set_without_usable_keyring_points_to_environment(request, backend):
    request.getfixturevalue(backend)
    with pytest.raises(SecretMissing) as caught:
        set_secret("rd", "client_secret", "s3cr3t")
    assert caught.value.exit_code == EXIT_AUTH
    assert "export DEALSYNC_RD_CLIENT_SECRET=" in caught.value.hint
    assert "s3cr3t" not in str(caught.value) + caught.value.hint


def test_set_refuses_empty_value(memory):
    with pytest.raises(SecretMissing, match="empty"):
        set_secret("rd", "client_secret", "")
    assert memory.store == {}


def test_delete_without_keyring_is_false(no_keyring):
    assert delete_secret("acme", "token") is False


def test_delete_on_broken_keyring_raises(broken):
    with pytest.raises(SecretMissing, match="keyring failed"):
        delete_secret("acme", "token")


def test_secret_source_never_reveals_value(memory, monkeypatch):
    monkeypatch.setenv("DEALSYNC_ACME_TOKEN", "hush")
    assert "hush" not in secret_source("acme", "token")
