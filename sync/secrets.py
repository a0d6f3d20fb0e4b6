"""Where secrets live: the system keyring first, a ``DEALSYNC_<INSTANCE>_<NAME>`` environment
variable second (for scheduled jobs without a keyring). Nothing here logs or returns a secret's
value except ``get_secret``.
"""

from __future__ import annotations

import logging
import os
import re

import keyring
from keyring.backends import fail
from keyring.errors import NoKeyringError, PasswordDeleteError

from .errors import SecretMissing

SERVICE = "dealsync"

log = logging.getLogger("dealsync.secrets")


def env_var(instance: str, name: str) -> str:
    """``DEALSYNC_<INSTANCE>_<NAME>``: upper case, every non-alphanumeric character as ``_``."""
    return "DEALSYNC_" + re.sub(r"[^A-Za-z0-9]", "_", f"{instance}_{name}").upper()


def get_secret(instance: str, name: str, description: str = "") -> str:
    """The secret from the keyring, else the environment; ``SecretMissing`` if neither has it."""
    value = _from_keyring(instance, name) or os.environ.get(env_var(instance, name))
    if value:
        return value
    what = f" ({description})" if description else ""
    raise SecretMissing(
        f"secret {name!r}{what} for instance {instance!r} is not set",
        hint=f"store it in the keyring with `dealsync auth set {instance} {name}`, or, for a job "
             f"without a keyring, `export {env_var(instance, name)}=...`")


def keyring_usable() -> bool:
    """Whether a system keyring can be asked at all (a server often has none)."""
    if isinstance(keyring.get_keyring(), fail.Keyring):
        return False
    try:
        keyring.get_password(SERVICE, "dealsync.probe")
    except Exception:  # any backend failure: locked, no D-Bus, no secret service
        return False
    return True


def no_keyring(instance: str, name: str) -> SecretMissing:
    return SecretMissing(
        f"no usable system keyring to store secret {name!r} of instance {instance!r}",
        hint=f"set it in the job's environment instead: `export {env_var(instance, name)}=...`")


def set_secret(instance: str, name: str, value: str) -> None:
    """Store the secret in the keyring; ``SecretMissing`` if there is no usable keyring."""
    if not value:
        raise SecretMissing(f"refusing to store an empty secret {name!r} for instance {instance!r}")
    try:
        keyring.set_password(SERVICE, _username(instance, name), value)
    except Exception:  # any backend failure means "no usable keyring", whatever its type
        raise no_keyring(instance, name) from None


def delete_secret(instance: str, name: str) -> bool:
    """Remove the secret from the keyring; False if it was not there (or there is no keyring).
    Environment variables are the shell's to unset."""
    try:
        keyring.delete_password(SERVICE, _username(instance, name))
    except (PasswordDeleteError, NoKeyringError):
        return False
    except Exception as exc:  # a keyring that exists but fails: do not pretend it was absent
        raise SecretMissing(
            f"cannot delete secret {name!r} for instance {instance!r}: the system keyring failed "
            f"({type(exc).__name__})") from None
    return True


def secret_source(instance: str, name: str) -> str:
    """``"keyring"``, ``"environment"`` or ``"missing"``; never the value itself."""
    if _from_keyring(instance, name):
        return "keyring"
    if os.environ.get(env_var(instance, name)):
        return "environment"
    return "missing"


def _username(instance: str, name: str) -> str:
    return f"{instance}.{name}"


def _from_keyring(instance: str, name: str) -> str | None:
    """The keyring's value, or None. A missing, locked or broken keyring (no D-Bus on a server,
    keyring's fail backend) must not stop a job that has the environment variable."""
    try:
        return keyring.get_password(SERVICE, _username(instance, name))
    except Exception as exc:  # backends raise more than KeyringError (D-Bus, secretstorage)
        log.debug("keyring unavailable for %s.%s (%s); trying the environment",
                  instance, name, type(exc).__name__)
        return None
