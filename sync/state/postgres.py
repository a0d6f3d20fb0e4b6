"""The PostgreSQL backend: one store for any number of workers, processes or pods.

``state_url = "postgresql://USER@HOST:PORT/DB"`` names it; the password never goes in the URL
but through ``dealsync auth set state password`` or ``DEALSYNC_STATE_PASSWORD``, like any secret.
Tables live in the connection's ``current_schema()`` (``?options=-csearch_path%3Dname`` picks
another), with the schema version in ``dealsync_schema``. Migrations run under a transaction-
level advisory lock, so workers starting together migrate once.

A pair's lock is a session-level advisory lock held by the run's connection: PostgreSQL
releases it when the connection ends, so a worker that dies (SIGKILL, a lost pod) frees its
pair for the others. The key is a hash of the schema and the pair name, so deployments that
share a database in different schemas do not block each other.
"""

from __future__ import annotations

import hashlib
import os
import socket
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import AuthError, ConfigError, LockHeld, SecretMissing
from .base import StateStore
from .schema import ID_TABLES

#: libpq keepalives: a worker whose machine vanishes without closing its socket is noticed by
#: its own side within about a minute (the server's tcp_keepalives_* settings do the same for
#: the lock it held: docs/state.md, "Locks").
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}


def psycopg_module() -> Any:
    """psycopg, or a ConfigError that says how to install it (it is an optional extra)."""
    try:
        import psycopg
    except ImportError:
        raise ConfigError(["the state store is PostgreSQL (state_url), but psycopg is not "
                           "installed"], "install it with `pip install 'dealsync[postgres]'`") \
            from None
    return psycopg


def url_problems(url: str) -> list[str]:
    """What is wrong with a ``state_url``: a password in it, above all."""
    parts = urlsplit(url)
    problems = []
    if parts.password is not None or any(k == "password" for k, _ in parse_qsl(parts.query)):
        problems.append("holds a password; keep the URL without it and store the password with "
                        "`dealsync auth set state password` (or DEALSYNC_STATE_PASSWORD)")
    if not parts.path.strip("/") and "dbname" not in dict(parse_qsl(parts.query)):
        problems.append("names no database (postgresql://USER@HOST:PORT/DATABASE)")
    return problems


def redact_url(url: str) -> str:
    """The URL for messages and logs: any password masked, wherever it was put."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = urlencode([(k, "***" if k == "password" else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def lock_key(*names: str) -> int:
    """A signed 64-bit advisory lock key for ``names`` (a collision is a 1 in 2**64 event)."""
    digest = hashlib.sha256("\0".join(("dealsync",) + names).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """The store's ``?`` placeholders as psycopg's ``%s`` (no statement holds a literal ? or %)."""
    return sql.replace("?", "%s")


def connect_error(where: str, exc: Exception) -> Exception:
    """A failed connection as the error a person can act on."""
    text = " ".join(str(exc).split())
    if "password" in text and ("authentication failed" in text or "no password" in text):
        return AuthError(f"state store {where}: {text}",
                         "store the database password with `dealsync auth set state password`, "
                         "or set DEALSYNC_STATE_PASSWORD in the job's environment")
    return ConfigError([f"state store {where}: cannot connect: {text}"],
                       "check state_url (or DEALSYNC_STATE_URL) and that PostgreSQL accepts "
                       "connections from here")


def state_password() -> str | None:
    """The password from the keyring or the environment (the secret ``state password``);
    None lets libpq find its own (``~/.pgpass``, a client certificate, peer authentication)."""
    from ..secrets import get_secret

    try:
        return get_secret("state", "password", "the PostgreSQL state store's password")
    except SecretMissing:
        return None


class PostgresStore(StateStore):
    """The PostgreSQL state store. One connection per store; a store is used by one thread."""

    dialect = "postgresql"
    BEGIN = "BEGIN"

    def __init__(self, url: str, password: str | None = None):
        """``password`` None: from the secrets, as ``state_password`` finds it."""
        psycopg = psycopg_module()
        from psycopg.rows import dict_row

        self.url = url
        self.where = redact_url(url)
        options: dict[str, Any] = {"autocommit": True, "row_factory": dict_row,
                                   "connect_timeout": 10, **KEEPALIVES,
                                   "application_name": application_name()}
        password = password if password is not None else state_password()
        if password:
            options["password"] = password
        try:
            self.db = psycopg.connect(url, **options)
        except psycopg.Error as exc:
            raise connect_error(self.where, exc) from None
        self.schema = self.db.execute("SELECT current_schema() AS s").fetchone()["s"]
        if self.schema is None:
            self.db.close()
            raise ConfigError([f"state store {self.where}: its search_path names no schema "
                               "that exists"], "create the schema, or fix search_path")
        self._lock_keys: dict[str, int] = {}
        super().__init__()

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> Any:
        values = tuple(args)
        return self.db.execute(to_pyformat(sql), values or None)

    def _many(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            with self.db.cursor() as cursor:
                cursor.executemany(to_pyformat(sql), rows)

    # -- schema version ---------------------------------------------------------------------------
    def _read_version(self) -> int:
        if self._value("SELECT to_regclass('dealsync_schema') IS NOT NULL AS present") is False:
            return 0
        return int(self._value("SELECT COALESCE(MAX(version), 0) AS v FROM dealsync_schema"))

    def _write_version(self, version: int) -> None:
        self._exec("DELETE FROM dealsync_schema")
        self._exec("INSERT INTO dealsync_schema (version) VALUES (?)", (version,))

    @contextmanager
    def _migrating(self) -> Iterator[None]:
        with self.transaction():
            self._exec("SELECT pg_advisory_xact_lock(?)", (lock_key("migrate", self.schema),))
            self._exec("CREATE TABLE IF NOT EXISTS dealsync_schema (version INTEGER NOT NULL)")
            yield

    def close(self) -> None:
        self._held.clear()
        self._lock_keys.clear()
        self.db.close()  # the server releases every advisory lock of the session

    # -- locks ----------------------------------------------------------------------------------
    def _acquire(self, pair: str) -> None:
        key = lock_key("pair", self.schema, pair)
        if not self._value("SELECT pg_try_advisory_lock(?) AS ok", (key,)):
            holder = self._holder(key)
            raise LockHeld(f"another run of pair {pair!r} is in progress ({holder})",
                           "wait for it to finish; other workers take the other pairs meanwhile")
        self._lock_keys[pair] = key

    def _release(self, pair: str) -> None:
        key = self._lock_keys.pop(pair, None)
        if key is not None and not self.db.closed:
            self._exec("SELECT pg_advisory_unlock(?)", (key,))

    def _holder(self, key: int) -> str:
        """Who holds the lock: its application name (host and pid), as far as we may see it."""
        row = self._one(
            "SELECT a.application_name AS name, a.backend_start AS since FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
            " AND l.granted AND l.classid::bigint = ? AND l.objid::bigint = ?"
            " AND l.objsubid = 1", ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF))
        if row is None:
            return "holder unknown"
        return row["name"] or "a session of another user"

    # -- clock, snapshots, catalog --------------------------------------------------------------
    def clock(self) -> float:
        # The server's clock: workers on several machines share it, whatever their own say.
        return float(self._value("SELECT extract(epoch FROM clock_timestamp()) AS t"))

    def _serialise(self, keys: list[str]) -> None:
        for name in sorted(keys):  # one order for every worker, so no two wait on each other
            self._exec("SELECT pg_advisory_xact_lock(?)", (lock_key("serial", self.schema, name),))

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        self._exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            yield
        finally:
            self._exec("COMMIT")

    def catalog(self) -> dict[str, Any]:
        tables: dict[str, set[str]] = {}
        for row in self._rows("SELECT table_name, column_name FROM information_schema.columns"
                              " WHERE table_schema = current_schema()"):
            tables.setdefault(row["table_name"], set()).add(row["column_name"])
        indexes = {r["indexname"] for r in self._rows(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
        return {"tables": tables, "indexes": indexes}

    def integrity(self) -> list[str]:
        """Every table read whole (a damaged page fails the read), and with the amcheck
        extension installed, every B-tree index checked against its rules."""
        problems = []
        for table in self.catalog()["tables"]:
            try:
                self._value(f'SELECT COUNT(*) AS n FROM "{table}"')
            except Exception as exc:  # any error reading a table is what this check reports
                problems.append(f"reading {table}: {exc}")
        if self._amcheck():
            for row in self._rows(
                    "SELECT c.relname AS name FROM pg_index i JOIN pg_class c ON c.oid ="
                    " i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am am"
                    " ON am.oid = c.relam WHERE n.nspname = current_schema()"
                    " AND am.amname = 'btree'"):
                try:
                    self._exec("SELECT bt_index_check(?::regclass)", (row["name"],))
                except Exception as exc:
                    problems.append(f"index {row['name']}: {exc}")
        return problems

    def _amcheck(self) -> bool:
        return bool(self._value("SELECT COUNT(*) AS n FROM pg_extension"
                                " WHERE extname = 'amcheck'"))

    def notes(self) -> list[str]:
        version = self._value("SHOW server_version")
        amcheck = "amcheck checked every index" if self._amcheck() else \
            "amcheck is not installed, so indexes were not checked (CREATE EXTENSION amcheck)"
        return [f"PostgreSQL {version}, schema {self.schema}; every table read; {amcheck}"]

    def _after_copy(self, table: str) -> None:
        """Rows came in with their ids: the identity continues after the highest."""
        if table in ID_TABLES:
            self._exec(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                       f" COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)")


def application_name() -> str:
    """What ``pg_stat_activity`` shows for a worker, and the busy message names."""
    return f"dealsync {socket.gethostname()} pid {os.getpid()}"[:63]
