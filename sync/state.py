"""The state store: everything dealsync remembers between runs, in one SQLite file.

It holds links (pair, deal, requirement), the base value of every mirrored field per link, create
intents, cursors, the failure queue, conflicts with both values, and run records. The file runs in
WAL mode with a schema version and forward migrations. Each applied action is written in one
transaction, so a crash leaves either the old or the new state, never half of one.

The per-pair lock is an OS file lock beside the database: it is released by the kernel when the
process dies, so a killed run never blocks the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, LockHeld

SCHEMA_VERSION = 4

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE links (
        pair TEXT NOT NULL, deal_id TEXT NOT NULL, req_id TEXT NOT NULL,
        req_key TEXT NOT NULL, req_url TEXT, req_title TEXT, origin TEXT NOT NULL,
        created_at TEXT NOT NULL, orphaned TEXT, seq INTEGER NOT NULL,
        PRIMARY KEY (pair, deal_id, req_id));
    CREATE INDEX links_req ON links (pair, req_id);
    CREATE TABLE deal_context (
        pair TEXT NOT NULL, deal_id TEXT NOT NULL, context TEXT NOT NULL,
        PRIMARY KEY (pair, deal_id));
    CREATE TABLE bases (
        pair TEXT NOT NULL, deal_id TEXT NOT NULL, req_id TEXT NOT NULL, field TEXT NOT NULL,
        crm_value TEXT, tracker_value TEXT, updated_at TEXT NOT NULL,
        PRIMARY KEY (pair, deal_id, req_id, field));
    CREATE TABLE intents (
        pair TEXT NOT NULL, deal_id TEXT NOT NULL, marker TEXT NOT NULL, title TEXT,
        created_at TEXT NOT NULL, PRIMARY KEY (pair, deal_id));
    CREATE TABLE cursors (
        pair TEXT NOT NULL, side TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (pair, side));
    CREATE TABLE failures (
        id INTEGER PRIMARY KEY, pair TEXT NOT NULL, kind TEXT NOT NULL,
        deal_id TEXT NOT NULL DEFAULT '', req_id TEXT NOT NULL DEFAULT '',
        error TEXT NOT NULL, retryable INTEGER NOT NULL, attempts INTEGER NOT NULL,
        next_retry_at TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        resolved_at TEXT);
    CREATE UNIQUE INDEX failures_open ON failures (pair, kind, deal_id, req_id)
        WHERE resolved_at IS NULL;
    CREATE TABLE conflicts (
        id INTEGER PRIMARY KEY, pair TEXT NOT NULL, req_id TEXT NOT NULL, req_key TEXT,
        field TEXT NOT NULL, deal_ids TEXT NOT NULL, crm_values TEXT NOT NULL,
        tracker_value TEXT, policy TEXT NOT NULL, outcome TEXT,
        status TEXT NOT NULL, created_at TEXT NOT NULL, resolved_at TEXT);
    CREATE UNIQUE INDEX conflicts_open ON conflicts (pair, req_id, field)
        WHERE status IN ('open', 'resolved');
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY, pair TEXT NOT NULL, started_at TEXT NOT NULL,
        finished_at TEXT, status TEXT NOT NULL, summary TEXT NOT NULL);
    """,
    # req_created: when the tracker created the linked requirement, the link's proof of
    # identity (docs/engine.md, "Identity"). requests: the requirement created for each
    # normalised request title, so identical requests share it across runs.
    2: """
    ALTER TABLE links ADD COLUMN req_created TEXT;
    CREATE INDEX links_seq ON links (seq);
    CREATE TABLE requests (
        pair TEXT NOT NULL, title TEXT NOT NULL, req_id TEXT NOT NULL,
        PRIMARY KEY (pair, title));
    """,
    # Changes a tracker's API cannot make, listed for a person until the tracker shows them.
    3: """
    CREATE TABLE manual_updates (
        id INTEGER PRIMARY KEY, pair TEXT NOT NULL, req_id TEXT NOT NULL, req_key TEXT NOT NULL,
        field TEXT NOT NULL, tracker_field TEXT NOT NULL, value TEXT, current TEXT,
        deal_ids TEXT NOT NULL, first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
        resolved_at TEXT);
    CREATE UNIQUE INDEX manual_open ON manual_updates (pair, req_id, field)
        WHERE resolved_at IS NULL;
    """,
    # the deal's modified time when its context was stored: an unchanged deal's company
    # (which HubSpot answers only through extra calls) is taken from here instead
    4: """
    ALTER TABLE deal_context ADD COLUMN updated_at TEXT;
    """,
}


def _private(path: Path) -> None:
    """The state holds deal names, companies, amounts and requests: its folder is the user's
    alone (0700 when dealsync creates it) and the database file is 0600. SQLite gives its
    -wal and -shm files the database file's permissions. A file an older dealsync created
    readable by others is tightened."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    elif path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
        os.chmod(path, 0o600)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def ts(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def parse_ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


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
    """The SQLite state store. One instance per process; not shared across threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            _private(self.path)
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError([f"state store {self.path}: cannot open: {exc}"],
                              "check that DEALSYNC_HOME (or [state] path) is a directory this "
                              "user can write") from None
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._locks: dict[str, int] = {}

    # -- schema -------------------------------------------------------------------------------
    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError([f"state store {self.path}: schema version {version} is newer than "
                               f"this dealsync understands ({SCHEMA_VERSION})"],
                              "upgrade dealsync, or point DEALSYNC_HOME at another directory")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # The schema change and the version bump commit together.
            self.db.executescript("BEGIN IMMEDIATE;" + MIGRATIONS[target] +
                                  f";PRAGMA user_version={target}; COMMIT;")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit: everything inside commits together or not at all."""
        if self.db.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        for fd in self._locks.values():
            os.close(fd)
        self._locks.clear()
        self.db.close()

    # -- locks --------------------------------------------------------------------------------
    def lock(self, pair: str) -> None:
        """Take the pair's lock or raise LockHeld at once."""
        lock_dir = self.path.parent / "locks"
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(lock_dir / f"{pair}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 100).decode(errors="replace").strip()
            os.close(fd)
            raise LockHeld(f"another run of pair {pair!r} is in progress ({holder or 'pid unknown'})",
                           "wait for it to finish; runs of different pairs may run in parallel")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {ts(now_utc())}".encode())
        self._locks[pair] = fd

    def unlock(self, pair: str) -> None:
        fd = self._locks.pop(pair, None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- links and bases ----------------------------------------------------------------------
    def links(self, pair: str) -> list[Link]:
        rows = self.db.execute("SELECT * FROM links WHERE pair=? ORDER BY seq", (pair,))
        return [Link(**dict(row)) for row in rows]

    def add_link(self, pair: str, deal_id: str, req_id: str, req_key: str, req_url: str | None,
                 req_title: str | None, origin: str, req_created: str | None = None) -> Link:
        seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM links").fetchone()[0]
        created = ts(now_utc())
        self.db.execute(
            "INSERT INTO links (pair, deal_id, req_id, req_key, req_url, req_title, origin,"
            " created_at, seq, req_created) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE"
            " SET req_key=excluded.req_key, req_url=excluded.req_url,"
            " req_title=excluded.req_title, req_created=excluded.req_created, orphaned=NULL",
            (pair, deal_id, req_id, req_key, req_url, req_title, origin, created, seq,
             req_created))
        return Link(pair, deal_id, req_id, req_key, req_url, req_title, origin, created, None,
                    seq, req_created)

    def set_req_created(self, pair: str, req_id: str, created: str) -> None:
        """Record when the tracker created a requirement linked before this was known."""
        self.db.execute("UPDATE links SET req_created=? WHERE pair=? AND req_id=?"
                        " AND req_created IS NULL", (created, pair, req_id))

    def update_requirement(self, pair: str, req_id: str, req_key: str, req_url: str | None,
                           req_title: str | None) -> None:
        """Keep the requirement's key, URL and title as last seen (reports and `links`)."""
        self.db.execute("UPDATE links SET req_key=?, req_url=?, req_title=? WHERE pair=?"
                        " AND req_id=?", (req_key, req_url, req_title, pair, req_id))

    def orphan_link(self, pair: str, deal_id: str, req_id: str, reason: str) -> None:
        self.db.execute("UPDATE links SET orphaned=? WHERE pair=? AND deal_id=? AND req_id=?"
                        " AND orphaned IS NULL", (reason, pair, deal_id, req_id))

    def shared_requests(self, pair: str) -> dict[str, str]:
        """Normalised request title -> the requirement created for it."""
        rows = self.db.execute("SELECT title, req_id FROM requests WHERE pair=?", (pair,))
        return {r["title"]: r["req_id"] for r in rows}

    def add_shared_request(self, pair: str, title: str, req_id: str) -> None:
        self.db.execute("INSERT INTO requests VALUES (?,?,?) ON CONFLICT DO UPDATE SET"
                        " req_id=excluded.req_id", (pair, title, req_id))

    def bases(self, pair: str) -> dict[tuple[str, str, str], Base]:
        rows = self.db.execute("SELECT deal_id, req_id, field, crm_value, tracker_value FROM bases"
                               " WHERE pair=?", (pair,))
        return {(r["deal_id"], r["req_id"], r["field"]): Base(r["crm_value"], r["tracker_value"])
                for r in rows}

    def set_base(self, pair: str, deal_id: str, req_id: str, field: str,
                 crm_value: str | None, tracker_value: str | None) -> None:
        self.db.execute(
            "INSERT INTO bases VALUES (?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET"
            " crm_value=excluded.crm_value, tracker_value=excluded.tracker_value,"
            " updated_at=excluded.updated_at",
            (pair, deal_id, req_id, field, crm_value, tracker_value, ts(now_utc())))

    def deal_contexts(self, pair: str) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT deal_id, context FROM deal_context WHERE pair=?", (pair,))
        return {r["deal_id"]: json.loads(r["context"]) for r in rows}

    def set_deal_seen(self, pair: str, deal_id: str, updated_at: datetime) -> None:
        """After our own write: the deal's context is unchanged as of this modified time."""
        self.db.execute("UPDATE deal_context SET updated_at=? WHERE pair=? AND deal_id=?",
                        (ts(updated_at), pair, deal_id))

    def deal_context_times(self, pair: str) -> dict[str, str]:
        """Deal id -> its modified time (ISO) when its context was stored."""
        rows = self.db.execute("SELECT deal_id, updated_at FROM deal_context WHERE pair=? AND"
                               " updated_at IS NOT NULL", (pair,))
        return {r["deal_id"]: r["updated_at"] for r in rows}

    def set_deal_context(self, pair: str, deal_id: str, context: dict[str, Any],
                         updated_at: datetime | None = None) -> None:
        self.db.execute("INSERT INTO deal_context (pair, deal_id, context, updated_at)"
                        " VALUES (?,?,?,?) ON CONFLICT DO UPDATE SET context=excluded.context,"
                        " updated_at=excluded.updated_at",
                        (pair, deal_id, json.dumps(context),
                         ts(updated_at) if updated_at else None))

    # -- create intents -----------------------------------------------------------------------
    def add_intents(self, pair: str, deal_ids: list[str], markers: list[str],
                    title: str) -> None:
        """Before a create: one row per deal it is for, so a crash is noticed on any of them."""
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO intents VALUES (?,?,?,?,?)",
                                [(pair, deal_id, marker, title, ts(now_utc()))
                                 for deal_id, marker in zip(deal_ids, markers)])

    def clear_intent(self, pair: str, deal_id: str) -> None:
        self.db.execute("DELETE FROM intents WHERE pair=? AND deal_id=?", (pair, deal_id))

    def intents(self, pair: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM intents WHERE pair=?", (pair,))]

    # -- cursors ------------------------------------------------------------------------------
    def cursor(self, pair: str, side: str) -> datetime | None:
        row = self.db.execute("SELECT value FROM cursors WHERE pair=? AND side=?",
                              (pair, side)).fetchone()
        return parse_ts(row["value"]) if row else None

    def set_cursor(self, pair: str, side: str, value: datetime) -> None:
        self.db.execute("INSERT INTO cursors VALUES (?,?,?) ON CONFLICT DO UPDATE SET"
                        " value=excluded.value", (pair, side, ts(value)))

    def position(self, pair: str, name: str) -> int:
        """A rotating position (how far the links have been verified), 0 if none yet."""
        row = self.db.execute("SELECT value FROM cursors WHERE pair=? AND side=?",
                              (pair, name)).fetchone()
        return int(row["value"]) if row else 0

    def set_position(self, pair: str, name: str, value: int) -> None:
        self.db.execute("INSERT INTO cursors VALUES (?,?,?) ON CONFLICT DO UPDATE SET"
                        " value=excluded.value", (pair, name, str(value)))

    # -- failure queue ------------------------------------------------------------------------
    def record_failure(self, pair: str, kind: str, deal_id: str, req_id: str, error: str,
                       retryable: bool) -> None:
        """Queue a failed item, or count another attempt of one already queued."""
        now = now_utc()
        row = self.db.execute(
            "SELECT id, attempts FROM failures WHERE pair=? AND kind=? AND deal_id=? AND req_id=?"
            " AND resolved_at IS NULL", (pair, kind, deal_id, req_id)).fetchone()
        attempts = (row["attempts"] if row else 0) + 1
        # Back off 5 min, 10, 20 ... capped at a day; items that cannot succeed by themselves
        # wait for `dealsync retry` or for the record to change.
        retry_at = ts(now + min(timedelta(minutes=5 * 2 ** (attempts - 1)), timedelta(days=1))) \
            if retryable else None
        if row:
            self.db.execute("UPDATE failures SET error=?, retryable=?, attempts=?, next_retry_at=?,"
                            " updated_at=? WHERE id=?",
                            (error, int(retryable), attempts, retry_at, ts(now), row["id"]))
        else:
            self.db.execute(
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
        if due_only:
            sql += " AND next_retry_at IS NOT NULL AND next_retry_at <= ?"
            args.append(ts(now_utc()))
        return [dict(r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def resolve_failures(self, ids: list[int]) -> None:
        self.db.executemany("UPDATE failures SET resolved_at=? WHERE id=?",
                            [(ts(now_utc()), i) for i in ids])

    # -- conflicts ----------------------------------------------------------------------------
    def record_conflict(self, pair: str, req_id: str, req_key: str, field: str,
                        deal_ids: list[str], crm_values: list[str | None],
                        tracker_value: str | None, policy: str, outcome: str | None) -> int:
        """Keep a conflict with both sides' values. Policy-resolved ones are kept as 'applied';
        'ask' ones stay 'open' (one row per requirement and field, refreshed each run)."""
        status = "open" if outcome is None else "applied"
        values = (json.dumps(deal_ids), json.dumps(crm_values), tracker_value, policy, outcome)
        if status == "open":
            row = self.db.execute("SELECT id FROM conflicts WHERE pair=? AND req_id=? AND field=?"
                                  " AND status='open'", (pair, req_id, field)).fetchone()
            if row:
                self.db.execute("UPDATE conflicts SET deal_ids=?, crm_values=?, tracker_value=?,"
                                " policy=?, outcome=? WHERE id=?", (*values, row["id"]))
                return int(row["id"])
        cur = self.db.execute(
            "INSERT INTO conflicts (pair, req_id, req_key, field, deal_ids, crm_values,"
            " tracker_value, policy, outcome, status, created_at, resolved_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (pair, req_id, req_key, field, *values, status, ts(now_utc()),
             ts(now_utc()) if status == "applied" else None))
        return int(cur.lastrowid or 0)

    def conflicts(self, pair: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM conflicts WHERE 1=1", []
        if pair:
            sql += " AND pair=?"
            args.append(pair)
        if status:
            sql += " AND status=?"
            args.append(status)
        rows = [dict(r) for r in self.db.execute(sql + " ORDER BY id", args)]
        for row in rows:
            row["deal_ids"] = json.loads(row["deal_ids"])
            row["crm_values"] = json.loads(row["crm_values"])
        return rows

    def resolve_conflict(self, conflict_id: int, tracker_value: str | None) -> None:
        """A person chose: the value (in tracker terms) is applied by the next sync."""
        with self.transaction():
            self.db.execute("UPDATE conflicts SET status='resolved', outcome=?, resolved_at=?"
                            " WHERE id=? AND status='open'",
                            (tracker_value, ts(now_utc()), conflict_id))

    def mark_conflict_applied(self, conflict_id: int) -> None:
        self.db.execute("UPDATE conflicts SET status='applied' WHERE id=?", (conflict_id,))

    # -- manual updates -----------------------------------------------------------------------
    def record_manual_update(self, pair: str, req_id: str, req_key: str, field: str,
                             tracker_field: str, value: str | None, current: str | None,
                             deal_ids: list[str]) -> None:
        """List (or refresh) a change a person must make in the tracker."""
        now = ts(now_utc())
        row = self.db.execute("SELECT id FROM manual_updates WHERE pair=? AND req_id=? AND"
                              " field=? AND resolved_at IS NULL", (pair, req_id, field)).fetchone()
        if row:
            self.db.execute("UPDATE manual_updates SET req_key=?, value=?, current=?,"
                            " deal_ids=?, last_seen=? WHERE id=?",
                            (req_key, value, current, json.dumps(deal_ids), now, row["id"]))
            return
        self.db.execute(
            "INSERT INTO manual_updates (pair, req_id, req_key, field, tracker_field, value,"
            " current, deal_ids, first_seen, last_seen) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (pair, req_id, req_key, field, tracker_field, value, current, json.dumps(deal_ids),
             now, now))

    def resolve_manual_update(self, pair: str, req_id: str, field: str) -> None:
        self.db.execute("UPDATE manual_updates SET resolved_at=? WHERE pair=? AND req_id=? AND"
                        " field=? AND resolved_at IS NULL", (ts(now_utc()), pair, req_id, field))

    def manual_updates(self, pair: str | None = None) -> list[dict[str, Any]]:
        """The changes waiting for a person, oldest first."""
        sql, args = "SELECT * FROM manual_updates WHERE resolved_at IS NULL", []
        if pair:
            sql += " AND pair=?"
            args.append(pair)
        rows = [dict(r) for r in self.db.execute(sql + " ORDER BY id", args)]
        for row in rows:
            row["deal_ids"] = json.loads(row["deal_ids"])
        return rows

    # -- runs ---------------------------------------------------------------------------------
    def record_run(self, pair: str, started_at: datetime, status: str,
                   summary: dict[str, Any]) -> int:
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO runs (pair, started_at, finished_at, status, summary) VALUES (?,?,?,?,?)",
                (pair, ts(started_at), ts(now_utc()), status, json.dumps(summary)))
        return int(cur.lastrowid or 0)

    def runs(self, pair: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM runs", []
        if pair:
            sql += " WHERE pair=?"
            args.append(pair)
        rows = [dict(r) for r in self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]
        for row in rows:
            row["summary"] = json.loads(row["summary"])
        return rows
