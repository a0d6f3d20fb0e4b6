"""The state store: everything dealsync remembers between runs.

Two backends answer one interface (``base.StateStore``): SQLite, a file under
``DEALSYNC_HOME`` and the embedded default (``sqlite.py``), and PostgreSQL for any number of
workers (``postgres.py``). ``schema.py`` is the one schema and list of migrations for both;
``limiter.py`` shares each instance's rate limit among workers; ``transfer.py`` moves a store
from one backend to the other and checks a store. docs/state.md explains them.

``StateStore(path)`` opens a SQLite file, ``StateStore("postgresql://...")`` a database whose
password is the secret ``state password`` (``dealsync auth set state password``, or
``DEALSYNC_STATE_PASSWORD``).
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from .base import Base, Link, StateStore, describe_target, is_postgres_url, now_utc, parse_ts, ts
from .schema import SCHEMA_VERSION

__all__ = ["Base", "Link", "SCHEMA_VERSION", "StateStore", "describe_target", "is_postgres_url",
           "now_utc", "open_store", "parse_ts", "store_errors", "ts"]


def open_store(target: str | Path) -> StateStore:
    """The store ``target`` names: a ``postgresql://`` URL, or else a SQLite path."""
    return StateStore(str(target) if is_postgres_url(target) else Path(target))


def store_errors() -> tuple[type[BaseException], ...]:
    """The exception types of the databases under the store, for an ``except`` clause:
    psycopg's only once it was imported (a PostgreSQL store was opened), so the CLI never
    imports it for nothing."""
    psycopg = sys.modules.get("psycopg")
    return (sqlite3.Error, psycopg.Error) if psycopg is not None else (sqlite3.Error,)
