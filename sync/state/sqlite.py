"""The SQLite backend: one file under ``DEALSYNC_HOME``, the embedded default.

The file runs in WAL mode; its schema version is SQLite's ``user_version``. A write transaction
starts with ``BEGIN IMMEDIATE``, so two processes never interleave inside one step. The
per-pair lock is an OS file lock beside the database: the kernel releases it when the process
dies, so a killed run never blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import ConfigError, LockHeld
from .base import StateStore, now_utc, ts

WAL_CHECKPOINT_PAGES = 8000  # pages of 4 KiB the WAL grows to before a checkpoint


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


class SqliteStore(StateStore):
    """The SQLite state store. One instance per process; not shared across threads."""

    dialect = "sqlite"
    BEGIN = "BEGIN IMMEDIATE"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.where = str(self.path)
        try:
            _private(self.path)
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError([f"state store {self.path}: cannot open: {exc}"],
                              "check that DEALSYNC_HOME (or [state] path) is a directory this "
                              "user can write") from None
        self.db.row_factory = sqlite3.Row
        self._wal()
        self.db.execute("PRAGMA synchronous=NORMAL")
        # A checkpoint (copying the WAL into the database) is the one write that waits for the
        # disk (https://www.sqlite.org/wal.html#ckpt). The default runs one every 1,000 pages,
        # about every 50 steps of a run; every 8,000 pages (32 MiB) the steps of a 1,000-deal
        # backfill cost at most one instead of six. The WAL is cut back to that size afterwards.
        self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        self.db.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_PAGES * 4096}")
        self.db.execute("PRAGMA foreign_keys=ON")
        self._lock_files: dict[str, int] = {}
        super().__init__()

    def _wal(self) -> None:
        """Switch to WAL. Processes opening a new file at the same moment all try to switch,
        and SQLite answers "locked" at once instead of waiting: try again for a while."""
        deadline = time.monotonic() + 30
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, tuple(args))

    def _many(self, sql: str, rows: list[tuple]) -> None:
        self.db.executemany(sql, rows)

    def _read_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _write_version(self, version: int) -> None:
        self.db.execute(f"PRAGMA user_version={int(version)}")

    def close(self) -> None:
        for fd in self._lock_files.values():
            os.close(fd)
        self._lock_files.clear()
        self._held.clear()
        self.db.close()

    # -- locks ----------------------------------------------------------------------------------
    def _acquire(self, pair: str) -> None:
        lock_dir = self.path.parent / "locks"
        lock_dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(lock_dir / f"{pair}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 100).decode(errors="replace").strip()
            os.close(fd)
            raise LockHeld(f"another run of pair {pair!r} is in progress "
                           f"({holder or 'pid unknown'})",
                           "wait for it to finish; runs of different pairs may run in parallel")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {ts(now_utc())}".encode())
        self._lock_files[pair] = fd

    def _release(self, pair: str) -> None:
        fd = self._lock_files.pop(pair, None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- clock, snapshots, catalog --------------------------------------------------------------
    def clock(self) -> float:
        return time.time()  # one machine: its clock is every process's clock

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        # In WAL mode a read transaction sees the database as of its first read, whatever
        # other connections commit meanwhile.
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def catalog(self) -> dict[str, Any]:
        rows = self.db.execute("SELECT type, name, tbl_name FROM sqlite_master").fetchall()
        tables = {r["name"]: {c[1] for c in self.db.execute(f"PRAGMA table_info({r['name']})")}
                  for r in rows if r["type"] == "table" and not r["name"].startswith("sqlite_")}
        return {"tables": tables, "indexes": {r["name"] for r in rows if r["type"] == "index"}}

    def integrity(self) -> list[str]:
        """SQLite's ``integrity_check``: pages, records and every index against its table."""
        rows = [r[0] for r in self.db.execute("PRAGMA integrity_check").fetchall()]
        return [] if rows == ["ok"] else [f"integrity_check: {row}" for row in rows]

    def notes(self) -> list[str]:
        return [f"SQLite {sqlite3.sqlite_version}; integrity_check run"]
