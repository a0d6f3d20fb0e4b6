"""Moving a whole store between backends (``dealsync state export|import``) and checking one
(``dealsync state check``).

A copy reads the source in one consistent snapshot, writes the destination in one
transaction while holding every pair's lock there (so no run writes meanwhile), then reads the
destination back and compares it with the snapshot row for row, table by table. Ids are kept,
so conflict numbers people have noted stay valid. ``rate_slots`` is not copied: it describes the
last few seconds of API calls, not the sync.

A check asks the database to check itself (SQLite's ``integrity_check``; PostgreSQL reads
every table, and runs amcheck where installed), compares the schema with what the migrations
create, and tests the rules the engine keeps between tables.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from ..errors import DealsyncError, EXIT_USAGE
from .base import StateStore, parse_ts
from .schema import DURABLE_TABLES, INDEXES, SCHEMA_VERSION, statements, tables


class StateProblem(DealsyncError):
    """The store is not what dealsync expects (``state check``), or a copy did not match."""

    exit_code = EXIT_USAGE


@dataclass
class TableCopy:
    table: str
    rows: int  # in the source
    missing: int = 0  # source rows the destination does not have
    extra: int = 0  # destination rows the source does not have

    @property
    def matches(self) -> bool:
        return not self.missing and not self.extra


def copy_store(source: StateStore, dest: StateStore, *, replace: bool = False) -> list[TableCopy]:
    """Copy every durable table of ``source`` into ``dest`` and compare them row for row.
    ``dest`` must be empty unless ``replace``; its pairs must not be running (``LockHeld``)."""
    columns = {table: source.columns(table) for table in DURABLE_TABLES}
    for table in DURABLE_TABLES:
        if set(dest.columns(table)) != set(columns[table]):
            raise StateProblem(f"{table} has other columns in {dest.where} than in "
                               f"{source.where}", "open both with the same dealsync version")
    with source.snapshot():
        data = {table: source.table_rows(table, columns[table]) for table in DURABLE_TABLES}
    pairs = sorted(_pairs(data, columns) | _pairs_in(dest))
    for taken, pair in enumerate(pairs):
        try:
            dest.lock(pair)
        except DealsyncError:
            for held in pairs[:taken]:
                dest.unlock(held)
            raise
    try:
        _write(dest, data, columns, replace)
    finally:
        for pair in pairs:
            dest.unlock(pair)
    return [_compare(table, data[table], dest.table_rows(table, columns[table]))
            for table in DURABLE_TABLES]


def _write(dest: StateStore, data: dict[str, list[tuple]], columns: dict[str, list[str]],
           replace: bool) -> None:
    with dest.transaction():
        filled = [table for table in DURABLE_TABLES if dest.count(table)]
        if filled and not replace:
            raise StateProblem(f"{dest.where} is not empty ({', '.join(filled)} have rows)",
                               "copy into an empty store, or pass --replace to overwrite it")
        for table in DURABLE_TABLES:
            dest.clear(table)
            dest.insert_rows(table, columns[table], data[table])


def _pairs(data: dict[str, list[tuple]], columns: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    for table, rows in data.items():
        at = columns[table].index("pair")
        found.update(row[at] for row in rows)
    return found


def _pairs_in(store: StateStore) -> set[str]:
    return {row["pair"] for table in DURABLE_TABLES
            for row in store._rows(f"SELECT DISTINCT pair FROM {table}")}


def _compare(table: str, source: list[tuple], dest: list[tuple]) -> TableCopy:
    want, have = Counter(source), Counter(dest)
    return TableCopy(table, len(source), sum((want - have).values()), sum((have - want).values()))


def require_match(copies: list[TableCopy], source: StateStore, dest: StateStore) -> None:
    """Raise unless every table arrived whole and alone."""
    wrong = [c for c in copies if not c.matches]
    if wrong:
        detail = "; ".join(f"{c.table}: {c.missing} rows missing, {c.extra} unexpected"
                           for c in wrong)
        raise StateProblem(f"the copy from {source.where} to {dest.where} does not match: "
                           f"{detail}", "run was the source written to meanwhile? Copy again "
                           "with --replace once no worker runs")


# -- checking -------------------------------------------------------------------------------------
@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


@lru_cache(maxsize=1)
def expected_columns() -> dict[str, set[str]]:
    """Each table's columns as the migrations make them, read from a scratch SQLite database:
    the one schema source decides, not a second list kept by hand."""
    db = sqlite3.connect(":memory:")
    for version in range(1, SCHEMA_VERSION + 1):
        for statement in statements(version, "sqlite"):
            db.execute(statement)
    return {table: {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for table in tables()}


def check_store(store: StateStore) -> CheckReport:
    report = CheckReport(problems=store.integrity(), notes=store.notes())
    schema = schema_problems(store)
    report.problems += schema
    if schema:  # the rules below assume the tables are whole
        return report
    report.rows = {table: store.count(table) for table in DURABLE_TABLES}
    for rule in RULES:
        report.problems += rule(store)
    pending = store.count("intents")
    if pending:
        report.notes.append(f"{pending} create intents wait: runs died between a create and "
                            "its record; the next run of their pairs looks the markers up")
    return report


def schema_problems(store: StateStore) -> list[str]:
    problems = []
    if store.version != SCHEMA_VERSION:
        problems.append(f"schema version {store.version}, expected {SCHEMA_VERSION}")
    catalog = store.catalog()
    for table, wanted in expected_columns().items():
        have = catalog["tables"].get(table)
        if have is None:
            problems.append(f"table {table} is missing")
        elif wanted - have:
            problems.append(f"table {table} lacks columns {', '.join(sorted(wanted - have))}")
    for table, names in INDEXES.items():
        problems += [f"index {name} on {table} is missing" for name in names
                     if name not in catalog["indexes"]]
    return problems


def _orphan_rows(store: StateStore, sql: str, noun: tuple[str, str], rest: str) -> list[str]:
    """One problem line for the rows ``sql`` finds: ``noun`` for one row and for several."""
    rows = store._rows(sql)
    if not rows:
        return []
    first = ", ".join(f"{k}={v}" for k, v in rows[0].items())
    return [f"{len(rows)} {noun[0] if len(rows) == 1 else noun[1]} {rest} (first: {first})"]


def bases_without_link(store: StateStore) -> list[str]:
    return _orphan_rows(store, "SELECT b.pair, b.deal_id, b.req_id, b.field FROM bases b WHERE"
                        " NOT EXISTS (SELECT 1 FROM links l WHERE l.pair = b.pair AND"
                        " l.deal_id = b.deal_id AND l.req_id = b.req_id)",
                        ("base belongs", "bases belong"), "to no link")


def requests_without_link(store: StateStore) -> list[str]:
    return _orphan_rows(store, "SELECT r.pair, r.title, r.req_id FROM requests r WHERE NOT EXISTS"
                        " (SELECT 1 FROM links l WHERE l.pair = r.pair AND l.req_id = r.req_id)",
                        ("shared request title names", "shared request titles name"),
                        "a requirement no link has")


def duplicate_sequence(store: StateStore) -> list[str]:
    return _orphan_rows(store, "SELECT pair, seq, COUNT(*) AS n FROM links GROUP BY pair, seq"
                        " HAVING COUNT(*) > 1", ("link number is", "link numbers are"),
                        "used twice within a pair")


def known_values(store: StateStore) -> list[str]:
    return (_orphan_rows(store, "SELECT pair, deal_id, origin FROM links WHERE origin NOT IN"
                         " ('created', 'named')", ("link", "links"), "of unknown origin")
            + _orphan_rows(store, "SELECT id, status FROM conflicts WHERE status NOT IN"
                           " ('open', 'resolved', 'applied')", ("conflict", "conflicts"),
                           "of unknown status")
            + _orphan_rows(store, "SELECT id, pair, kind FROM failures WHERE resolved_at IS NULL"
                           " AND retryable = 1 AND next_retry_at IS NULL",
                           ("retryable failure", "retryable failures"),
                           "without a retry time")
            + _orphan_rows(store, "SELECT id, pair, kind FROM failures WHERE attempts < 1",
                           ("failure", "failures"), "without an attempt"))


#: (table, key columns, column, how to read it): each value must read back.
READABLE = [
    ("deal_context", ("pair", "deal_id"), "context", json.loads),
    ("conflicts", ("id",), "deal_ids", json.loads),
    ("conflicts", ("id",), "crm_values", json.loads),
    ("manual_updates", ("id",), "deal_ids", json.loads),
    ("runs", ("id",), "summary", json.loads),
    ("runs", ("id",), "started_at", parse_ts),
    ("runs", ("id",), "finished_at", parse_ts),
    ("links", ("pair", "deal_id", "req_id"), "created_at", parse_ts),
    ("failures", ("id",), "next_retry_at", parse_ts),
    ("bases", ("pair", "deal_id", "req_id", "field"), "updated_at", parse_ts),
]


def unreadable_values(store: StateStore) -> list[str]:
    problems = []
    for table, keys, column, read in READABLE:
        problems += _unreadable(store, f"SELECT {', '.join(keys)}, {column} AS value FROM {table}",
                                f"{table}.{column}", read)
    problems += _unreadable(store, "SELECT pair, side, value FROM cursors WHERE side IN"
                            " ('crm', 'tracker')", "cursors.value", parse_ts)
    return problems


def _unreadable(store: StateStore, sql: str, what: str, read: Callable[[str], Any]) -> list[str]:
    bad = []
    for row in store._rows(sql):
        try:
            if row["value"] is not None:
                read(row["value"])
        except (ValueError, TypeError):
            bad.append(row)
    if not bad:
        return []
    where = ", ".join(f"{k}={v}" for k, v in bad[0].items() if k != "value")
    verb = "value of {} does" if len(bad) == 1 else "values of {} do"
    return [f"{len(bad)} {verb.format(what)} not read back (first: {where})"]


RULES: list[Callable[[StateStore], list[str]]] = [
    bases_without_link, requests_without_link, duplicate_sequence, known_values,
    unreadable_values]
