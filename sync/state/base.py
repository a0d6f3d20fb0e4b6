"""What the state store remembers, and how, written once for both backends.

``StateStore`` holds every query the engine and the commands make: links (pair, deal,
requirement), the base value of every mirrored field per link, create intents, cursors, the
failure queue, conflicts with both values, manual updates, run records, and the rate-limit
windows workers share. The SQL is written once, with ``?`` placeholders and only what both
SQLite and PostgreSQL understand; a backend (``sqlite.py``, ``postgres.py``) supplies the
connection, the per-pair lock, the schema version's home and a few catalog queries.

Each applied action is written in one transaction (``transaction()``), so a crash leaves either
the old or the new state, never half of one. A store is used by one thread.

``StateStore(target)`` opens the store ``target`` names: a ``postgresql://`` URL, or else the
path of a SQLite file.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import ConfigError
from .schema import SCHEMA_VERSION, statements


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def ts(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def parse_ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def is_postgres_url(target: Any) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True)
class Link:
    pair: str
    deal_id: str
    req_id: str
    req_key: str
    req_url: str | None
    req_title: str | None
    origin: str  # "created" | "named"
    created_at: str
    orphaned: str | None
    seq: int
    req_created: str | None = None  # ISO time the tracker created the requirement


@dataclass(frozen=True)
class Base:
    crm_value: str | None
    tracker_value: str | None


class StateStore:
    """The state store. ``StateStore(path)`` is SQLite, ``StateStore("postgresql://...")``
    PostgreSQL (``password=`` then goes with it); both answer the same methods."""

    #: "sqlite" or "postgresql": which spelling of ``schema.MIGRATIONS`` this backend runs
    dialect = ""
    #: how a write transaction starts: SQLite's IMMEDIATE takes the write lock at once, so
    #: two processes never meet half-way through a step
    BEGIN = "BEGIN"

    def __new__(cls, target: Any = None, *args: Any, **kwargs: Any) -> "StateStore":
        if cls is StateStore:
            if is_postgres_url(target):
                from .postgres import PostgresStore
                cls = PostgresStore
            else:
                from .sqlite import SqliteStore
                cls = SqliteStore
        return super().__new__(cls)

    def __init__(self) -> None:
        """Called by the backends once connected: bring the schema up to date."""
        self._in_transaction = False
        self._held: dict[str, int] = {}  # pair -> how many times this store took its lock
        self._migrate()

    # -- what a backend supplies ----------------------------------------------------------------
    #: where the store is, for messages: a file path, or the URL without any secret
    where = ""

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> Any:
        """Run one statement; the cursor's rows are dicts."""
        raise NotImplementedError

    def _many(self, sql: str, rows: list[tuple]) -> None:
        raise NotImplementedError

    def _read_version(self) -> int:
        raise NotImplementedError

    def _write_version(self, version: int) -> None:
        raise NotImplementedError

    @contextmanager
    def _migrating(self) -> Iterator[None]:
        """One migration step's transaction, exclusive among processes."""
        with self.transaction():
            yield

    def _acquire(self, pair: str) -> None:
        """Take the pair's lock at once or raise ``LockHeld``."""
        raise NotImplementedError

    def _release(self, pair: str) -> None:
        raise NotImplementedError

    def clock(self) -> float:
        """Seconds since the epoch on the store's clock (one clock for every worker)."""
        raise NotImplementedError

    def _serialise(self, keys: list[str]) -> None:
        """Inside a transaction: wait until no other transaction holds any of ``keys``."""

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one consistent state of the whole store."""
        raise NotImplementedError

    def catalog(self) -> dict[str, Any]:
        """``{"tables": {table: {column, ...}}, "indexes": {index, ...}}`` as the database
        has them (``state check``)."""
        raise NotImplementedError

    def integrity(self) -> list[str]:
        """The database's own check of its files; ``[]`` when sound."""
        return []

    def notes(self) -> list[str]:
        """What ``state check`` says about the backend besides problems."""
        return []

    def _after_copy(self, table: str) -> None:
        """After rows were inserted with their ids (``state import``)."""

    def close(self) -> None:
        raise NotImplementedError

    # -- schema ---------------------------------------------------------------------------------
    def _migrate(self) -> None:
        version = self._read_version()
        if version > SCHEMA_VERSION:
            raise ConfigError([f"state store {self.where}: schema version {version} is newer "
                               f"than this dealsync understands ({SCHEMA_VERSION})"],
                              "upgrade dealsync, or point the state store elsewhere")
        while version < SCHEMA_VERSION:
            with self._migrating():
                # Read again under the migration lock: another process may have done it.
                version = self._read_version()
                if version >= SCHEMA_VERSION:
                    break
                version += 1
                for statement in statements(version, self.dialect):
                    self._exec(statement)
                self._write_version(version)  # commits with the schema change

    @property
    def version(self) -> int:
        return self._read_version()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One atomic unit: everything inside commits together or not at all. Inside another
        transaction it is part of that one."""
        if self._in_transaction:
            yield self
            return
        self._exec(self.BEGIN)
        self._in_transaction = True
        try:
            yield self
        except BaseException:
            self._in_transaction = False
            with suppress(Exception):  # a lost connection must not hide why we roll back
                self._exec("ROLLBACK")
            raise
        self._in_transaction = False
        self._exec("COMMIT")

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in self._exec(sql, args).fetchall()]

    def _one(self, sql: str, args: Iterable[Any] = ()) -> dict[str, Any] | None:
        # fetchall, not fetchone: SQLite finishes an INSERT ... RETURNING only once every row
        # was read, and a COMMIT with a statement unfinished fails
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    def _value(self, sql: str, args: Iterable[Any] = ()) -> Any:
        row = self._one(sql, args)
        return next(iter(row.values())) if row else None

    # -- locks ----------------------------------------------------------------------------------
    def lock(self, pair: str) -> None:
        """Take the pair's lock or raise LockHeld at once. Taking it again through the same
        store only counts (the scheduler holds it around a run, which takes it too)."""
        if pair not in self._held:
            self._acquire(pair)
        self._held[pair] = self._held.get(pair, 0) + 1

    def unlock(self, pair: str) -> None:
        count = self._held.get(pair, 0) - 1
        if count > 0:
            self._held[pair] = count
        elif pair in self._held:
            del self._held[pair]
            self._release(pair)

    def holds(self, pair: str) -> bool:
        return pair in self._held

    # -- links and bases ------------------------------------------------------------------------
    def links(self, pair: str) -> list[Link]:
        rows = self._rows("SELECT * FROM links WHERE pair=? ORDER BY seq", (pair,))
        return [Link(**row) for row in rows]

    def add_link(self, pair: str, deal_id: str, req_id: str, req_key: str, req_url: str | None,
                 req_title: str | None, origin: str, req_created: str | None = None) -> Link:
        return self.add_links(pair, [(deal_id, req_id, req_key, req_url, req_title, origin,
                                      req_created)])[0]

    def add_links(self, pair: str, rows: list[tuple[str, str, str, str | None, str | None, str,
                                                    str | None]]) -> list[Link]:
        """``add_link`` for many (deal id, requirement id, key, URL, title, origin, creation
        time) rows, numbered in order from one look-up of the highest ``seq``."""
        # One numbering over all pairs. Workers on other pairs may draw the same number at the
        # same moment; only the order within a pair matters (its runs never overlap).
        first = self._value("SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM links")
        created = ts(now_utc())
        links = [Link(pair, deal_id, req_id, req_key, req_url, req_title, origin, created, None,
                      first + n, req_created)
                 for n, (deal_id, req_id, req_key, req_url, req_title, origin, req_created)
                 in enumerate(rows)]
        if links:
            self._many(
                "INSERT INTO links (pair, deal_id, req_id, req_key, req_url, req_title, origin,"
                " created_at, seq, req_created) VALUES (?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (pair, deal_id, req_id) DO UPDATE"
                " SET req_key=excluded.req_key, req_url=excluded.req_url,"
                " req_title=excluded.req_title, req_created=excluded.req_created, orphaned=NULL",
                [(pair, link.deal_id, link.req_id, link.req_key, link.req_url, link.req_title,
                  link.origin, created, link.seq, link.req_created) for link in links])
        return links

    def set_req_created(self, pair: str, req_id: str, created: str) -> None:
        """Record when the tracker created a requirement linked before this was known."""
        self._exec("UPDATE links SET req_created=? WHERE pair=? AND req_id=?"
                   " AND req_created IS NULL", (created, pair, req_id))

    def update_requirement(self, pair: str, req_id: str, req_key: str, req_url: str | None,
                           req_title: str | None) -> None:
        """Keep the requirement's key, URL and title as last seen (reports and `links`)."""
        self._exec("UPDATE links SET req_key=?, req_url=?, req_title=? WHERE pair=?"
                   " AND req_id=?", (req_key, req_url, req_title, pair, req_id))

    def orphan_link(self, pair: str, deal_id: str, req_id: str, reason: str) -> None:
        self._exec("UPDATE links SET orphaned=? WHERE pair=? AND deal_id=? AND req_id=?"
                   " AND orphaned IS NULL", (reason, pair, deal_id, req_id))

    def shared_requests(self, pair: str) -> dict[str, str]:
        """Normalised request title -> the requirement created for it."""
        rows = self._rows("SELECT title, req_id FROM requests WHERE pair=?", (pair,))
        return {r["title"]: r["req_id"] for r in rows}

    def add_shared_request(self, pair: str, title: str, req_id: str) -> None:
        self._exec("INSERT INTO requests (pair, title, req_id) VALUES (?,?,?)"
                   " ON CONFLICT (pair, title) DO UPDATE SET req_id=excluded.req_id",
                   (pair, title, req_id))

    def bases(self, pair: str) -> dict[tuple[str, str, str], Base]:
        rows = self._rows("SELECT deal_id, req_id, field, crm_value, tracker_value FROM bases"
                          " WHERE pair=?", (pair,))
        return {(r["deal_id"], r["req_id"], r["field"]): Base(r["crm_value"], r["tracker_value"])
                for r in rows}

    def set_base(self, pair: str, deal_id: str, req_id: str, field: str,
                 crm_value: str | None, tracker_value: str | None) -> None:
        self.set_bases(pair, [(deal_id, req_id, field, crm_value, tracker_value)])

    def set_bases(self, pair: str, rows: Iterable[tuple[str, str, str, str | None,
                                                         str | None]]) -> None:
        """``set_base`` for many (deal id, requirement id, field, crm value, tracker value)
        rows in one statement: a step's bases are stored together anyway."""
        now = ts(now_utc())
        rows = [(pair, *row, now) for row in rows]
        if rows:
            self._many(
                "INSERT INTO bases (pair, deal_id, req_id, field, crm_value, tracker_value,"
                " updated_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT (pair, deal_id, req_id, field)"
                " DO UPDATE SET crm_value=excluded.crm_value,"
                " tracker_value=excluded.tracker_value, updated_at=excluded.updated_at", rows)

    def deal_contexts(self, pair: str) -> dict[str, dict[str, Any]]:
        rows = self._rows("SELECT deal_id, context FROM deal_context WHERE pair=?", (pair,))
        return {r["deal_id"]: json.loads(r["context"]) for r in rows}

    def set_deal_seen(self, pair: str, deal_id: str, updated_at: datetime) -> None:
        """After our own write: the deal's context is unchanged as of this modified time."""
        self.set_deals_seen(pair, [(deal_id, updated_at)])

    def set_deals_seen(self, pair: str, seen: Iterable[tuple[str, datetime]]) -> None:
        """``set_deal_seen`` for a batch of (deal id, modified time), in one statement."""
        rows = [(ts(updated_at), pair, deal_id) for deal_id, updated_at in seen]
        if rows:
            self._many("UPDATE deal_context SET updated_at=? WHERE pair=? AND deal_id=?", rows)

    def deal_context_times(self, pair: str) -> dict[str, str]:
        """Deal id -> its modified time (ISO) when its context was stored."""
        rows = self._rows("SELECT deal_id, updated_at FROM deal_context WHERE pair=? AND"
                          " updated_at IS NOT NULL", (pair,))
        return {r["deal_id"]: r["updated_at"] for r in rows}

    def set_deal_context(self, pair: str, deal_id: str, context: dict[str, Any],
                         updated_at: datetime | None = None) -> None:
        self.set_deal_contexts(pair, [(deal_id, context, updated_at)])

    def set_deal_contexts(self, pair: str, rows: Iterable[tuple[str, dict[str, Any],
                                                                datetime | None]]) -> None:
        """``set_deal_context`` for many (deal id, context, modified time), in one statement."""
        args = [(pair, deal_id, json.dumps(context), ts(updated_at) if updated_at else None)
                for deal_id, context, updated_at in rows]
        if args:
            self._many("INSERT INTO deal_context (pair, deal_id, context, updated_at)"
                       " VALUES (?,?,?,?) ON CONFLICT (pair, deal_id) DO UPDATE"
                       " SET context=excluded.context, updated_at=excluded.updated_at", args)

    # -- create intents -------------------------------------------------------------------------
    def add_intents(self, pair: str, deal_ids: list[str], markers: list[str],
                    title: str) -> None:
        """Before a create: one row per deal it is for, so a crash is noticed on any of them."""
        with self.transaction():
            self._many("INSERT INTO intents (pair, deal_id, marker, title, created_at)"
                       " VALUES (?,?,?,?,?) ON CONFLICT (pair, deal_id) DO UPDATE"
                       " SET marker=excluded.marker, title=excluded.title,"
                       " created_at=excluded.created_at",
                       [(pair, deal_id, marker, title, ts(now_utc()))
                        for deal_id, marker in zip(deal_ids, markers)])

    def clear_intent(self, pair: str, deal_id: str) -> None:
        self.clear_intents(pair, [deal_id])

    def clear_intents(self, pair: str, deal_ids: Iterable[str]) -> None:
        rows = [(pair, deal_id) for deal_id in deal_ids]
        if rows:
            self._many("DELETE FROM intents WHERE pair=? AND deal_id=?", rows)

    def intents(self, pair: str) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM intents WHERE pair=?", (pair,))

    # -- cursors --------------------------------------------------------------------------------
    def cursor(self, pair: str, side: str) -> datetime | None:
        return parse_ts(self._value("SELECT value FROM cursors WHERE pair=? AND side=?",
                                    (pair, side)))

    def set_cursor(self, pair: str, side: str, value: datetime) -> None:
        self._set_cursor_row(pair, side, ts(value))

    def position(self, pair: str, name: str) -> int:
        """A rotating position (how far the links have been verified), 0 if none yet."""
        value = self._value("SELECT value FROM cursors WHERE pair=? AND side=?", (pair, name))
        return int(value) if value is not None else 0

    def set_position(self, pair: str, name: str, value: int) -> None:
        self._set_cursor_row(pair, name, str(value))

    def _set_cursor_row(self, pair: str, side: str, value: str) -> None:
        self._exec("INSERT INTO cursors (pair, side, value) VALUES (?,?,?)"
                   " ON CONFLICT (pair, side) DO UPDATE SET value=excluded.value",
                   (pair, side, value))

    # -- failure queue --------------------------------------------------------------------------
    def record_failure(self, pair: str, kind: str, deal_id: str, req_id: str, error: str,
                       retryable: bool) -> None:
        """Queue a failed item, or count another attempt of one already queued."""
        now = now_utc()
        row = self._one(
            "SELECT id, attempts FROM failures WHERE pair=? AND kind=? AND deal_id=? AND req_id=?"
            " AND resolved_at IS NULL", (pair, kind, deal_id, req_id))
        attempts = (row["attempts"] if row else 0) + 1
        # Back off 5 min, 10, 20 ... capped at a day; items that cannot succeed by themselves
        # wait for `dealsync retry` or for the record to change.
        retry_at = ts(now + min(timedelta(minutes=5 * 2 ** (attempts - 1)), timedelta(days=1))) \
            if retryable else None
        if row:
            self._exec("UPDATE failures SET error=?, retryable=?, attempts=?, next_retry_at=?,"
                       " updated_at=? WHERE id=?",
                       (error, int(retryable), attempts, retry_at, ts(now), row["id"]))
        else:
            self._exec(
                "INSERT INTO failures (pair, kind, deal_id, req_id, error, retryable, attempts,"
                " next_retry_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (pair, kind, deal_id, req_id, error, int(retryable), attempts, retry_at,
                 ts(now), ts(now)))

    def failures(self, pair: str | None = None, *, due_only: bool = False) -> list[dict[str, Any]]:
        """Queued items not yet resolved; ``due_only``: those whose retry time has come."""
        sql = "SELECT * FROM failures WHERE resolved_at IS NULL"
        args: list[Any] = []
        if pair:
            sql += " AND pair=?"
            args.append(pair)
        rows = self._rows(sql + " ORDER BY id", args)
        if due_only:
            # Compared as times, not as text: PostgreSQL orders text by the database's
            # collation, which need not be the byte order ISO times sort by.
            now = now_utc()
            rows = [r for r in rows if r["next_retry_at"] and parse_ts(r["next_retry_at"]) <= now]
        return rows

    def resolve_failures(self, ids: list[int]) -> None:
        self._many("UPDATE failures SET resolved_at=? WHERE id=?",
                   [(ts(now_utc()), i) for i in ids])

    # -- conflicts ------------------------------------------------------------------------------
    def record_conflict(self, pair: str, req_id: str, req_key: str, field: str,
                        deal_ids: list[str], crm_values: list[str | None],
                        tracker_value: str | None, policy: str, outcome: str | None) -> int:
        """Keep a conflict with both sides' values. Policy-resolved ones are kept as 'applied';
        'ask' ones stay 'open' (one row per requirement and field, refreshed each run)."""
        status = "open" if outcome is None else "applied"
        values = (json.dumps(deal_ids), json.dumps(crm_values), tracker_value, policy, outcome)
        if status == "open":
            row = self._one("SELECT id FROM conflicts WHERE pair=? AND req_id=? AND field=?"
                            " AND status='open'", (pair, req_id, field))
            if row:
                self._exec("UPDATE conflicts SET deal_ids=?, crm_values=?, tracker_value=?,"
                           " policy=?, outcome=? WHERE id=?", (*values, row["id"]))
                return int(row["id"])
        return int(self._value(
            "INSERT INTO conflicts (pair, req_id, req_key, field, deal_ids, crm_values,"
            " tracker_value, policy, outcome, status, created_at, resolved_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (pair, req_id, req_key, field, *values, status, ts(now_utc()),
             ts(now_utc()) if status == "applied" else None)))

    def conflicts(self, pair: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM conflicts WHERE 1=1", []
        if pair:
            sql += " AND pair=?"
            args.append(pair)
        if status:
            sql += " AND status=?"
            args.append(status)
        rows = self._rows(sql + " ORDER BY id", args)
        for row in rows:
            row["deal_ids"] = json.loads(row["deal_ids"])
            row["crm_values"] = json.loads(row["crm_values"])
        return rows

    def resolve_conflict(self, conflict_id: int, tracker_value: str | None) -> None:
        """A person chose: the value (in tracker terms) is applied by the next sync."""
        with self.transaction():
            self._exec("UPDATE conflicts SET status='resolved', outcome=?, resolved_at=?"
                       " WHERE id=? AND status='open'",
                       (tracker_value, ts(now_utc()), conflict_id))

    def mark_conflict_applied(self, conflict_id: int) -> None:
        self._exec("UPDATE conflicts SET status='applied' WHERE id=?", (conflict_id,))

    # -- manual updates -------------------------------------------------------------------------
    def record_manual_update(self, pair: str, req_id: str, req_key: str, field: str,
                             tracker_field: str, value: str | None, current: str | None,
                             deal_ids: list[str]) -> None:
        """List (or refresh) a change a person must make in the tracker."""
        now = ts(now_utc())
        row = self._one("SELECT id FROM manual_updates WHERE pair=? AND req_id=? AND"
                        " field=? AND resolved_at IS NULL", (pair, req_id, field))
        if row:
            self._exec("UPDATE manual_updates SET req_key=?, value=?, current=?,"
                       " deal_ids=?, last_seen=? WHERE id=?",
                       (req_key, value, current, json.dumps(deal_ids), now, row["id"]))
            return
        self._exec(
            "INSERT INTO manual_updates (pair, req_id, req_key, field, tracker_field, value,"
            " current, deal_ids, first_seen, last_seen) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (pair, req_id, req_key, field, tracker_field, value, current, json.dumps(deal_ids),
             now, now))

    def resolve_manual_update(self, pair: str, req_id: str, field: str) -> None:
        self._exec("UPDATE manual_updates SET resolved_at=? WHERE pair=? AND req_id=? AND"
                   " field=? AND resolved_at IS NULL", (ts(now_utc()), pair, req_id, field))

    def manual_updates(self, pair: str | None = None) -> list[dict[str, Any]]:
        """The changes waiting for a person, oldest first."""
        sql, args = "SELECT * FROM manual_updates WHERE resolved_at IS NULL", []
        if pair:
            sql += " AND pair=?"
            args.append(pair)
        rows = self._rows(sql + " ORDER BY id", args)
        for row in rows:
            row["deal_ids"] = json.loads(row["deal_ids"])
        return rows

    # -- runs -----------------------------------------------------------------------------------
    def record_run(self, pair: str, started_at: datetime, status: str,
                   summary: dict[str, Any]) -> int:
        with self.transaction():
            return int(self._value(
                "INSERT INTO runs (pair, started_at, finished_at, status, summary)"
                " VALUES (?,?,?,?,?) RETURNING id",
                (pair, ts(started_at), ts(now_utc()), status, json.dumps(summary))))

    def runs(self, pair: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM runs", []
        if pair:
            sql += " WHERE pair=?"
            args.append(pair)
        rows = self._rows(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        for row in rows:
            row["summary"] = json.loads(row["summary"])
        return rows

    def last_started(self) -> dict[str, datetime]:
        """Pair -> when its last recorded run (dry runs aside) started: the schedule. A run
        is recorded when it ends, so a run killed mid-way leaves the pair due."""
        rows = self._rows("SELECT pair, started_at FROM runs WHERE id IN (SELECT MAX(id)"
                          " FROM runs WHERE status <> 'dry-run' GROUP BY pair)")
        return {r["pair"]: parse_ts(r["started_at"]) for r in rows}  # type: ignore[misc]

    # -- rate-limit windows shared by workers ---------------------------------------------------
    def take_rate_slots(self, instance: str, limits: dict[str, tuple[int, float]]) -> \
            tuple[list[int], float]:
        """One call's place in every window of ``limits`` (bucket -> calls, per seconds):
        ``(slot ids, 0)`` when each has room, else ``([], seconds to wait)``.

        A slot counts from when its answer came back (``answer_rate_slots``), as the
        in-process limiter does (sync/http.py); one whose answer never came (its worker died)
        counts for two windows from when it was sent."""
        buckets = sorted(limits)
        with self.transaction():
            self._serialise([f"rate:{instance}:{bucket}" for bucket in buckets])
            now = self.clock()
            wait = 0.0
            for bucket in buckets:
                calls, per = limits[bucket]
                self._exec("DELETE FROM rate_slots WHERE instance=? AND bucket=? AND"
                           " ((answered=1 AND at<=?) OR at<=?)",
                           (instance, bucket, now - per, now - 2 * per))
                row = self._one("SELECT COUNT(*) AS n, MIN(CASE WHEN answered=1 THEN at + ?"
                                " ELSE at + ? END) AS free_at FROM rate_slots"
                                " WHERE instance=? AND bucket=?",
                                (per, 2 * per, instance, bucket))
                if row and row["n"] >= calls:
                    wait = max(wait, float(row["free_at"]) - now)
            if wait > 0:
                return [], wait
            ids = [int(self._value("INSERT INTO rate_slots (instance, bucket, at, answered)"
                                   " VALUES (?,?,?,0) RETURNING id", (instance, bucket, now)))
                   for bucket in buckets]
        return ids, 0.0

    def answer_rate_slots(self, ids: list[int]) -> None:
        """The call's answer (or failure) is back: its slots count from now."""
        if not ids:
            return
        with self.transaction():
            now = self.clock()
            self._many("UPDATE rate_slots SET answered=1, at=CASE WHEN at<? THEN ? ELSE at END"
                       " WHERE id=?", [(now, now, slot) for slot in ids])

    # -- moving and checking the whole store ----------------------------------------------------
    # Table names below come from schema.py, never from input.
    def columns(self, table: str) -> list[str]:
        cursor = self._exec(f"SELECT * FROM {table} WHERE 1=0")
        return [column[0] for column in cursor.description]

    def table_rows(self, table: str, columns: list[str]) -> list[tuple]:
        names = ", ".join(columns)
        return [tuple(row[c] for c in columns)
                for row in self._rows(f"SELECT {names} FROM {table}")]

    def count(self, table: str) -> int:
        return int(self._value(f"SELECT COUNT(*) AS n FROM {table}"))

    def insert_rows(self, table: str, columns: list[str], rows: list[tuple]) -> None:
        marks = ", ".join("?" for _ in columns)
        if rows:
            self._many(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
        self._after_copy(table)

    def clear(self, table: str) -> None:
        self._exec(f"DELETE FROM {table}")


def describe_target(target: str | Path) -> str:
    """A store's location for messages, never with a password in it."""
    if is_postgres_url(target):
        from .postgres import redact_url
        return redact_url(str(target))
    return str(target)
