"""A local Salesforce REST API for Opportunities, faithful to docs/salesforce.md.

It owns what a dealsync Salesforce connector, its tests, the demo and the benchmarks talk to:

- ``POST /services/oauth2/token``: client credentials, refresh token and JWT bearer grants; the
  reply carries ``instance_url`` and no ``expires_in``; sessions die after ``token_ttl_s`` or on
  demand (``expire_tokens``) and then answer 401 ``INVALID_SESSION_ID`` (docs/salesforce.md §1);
- ``GET /services/data/vXX.X/query`` and ``/queryAll`` with the SOQL subset of
  ``plugins/salesforce/soql.py``, batches of at most 2,000 behind ``nextRecordsUrl`` locators,
  and an injectable ``QUERY_TIMEOUT`` (docs/salesforce.md §3, §4);
- ``GET …/sobjects/{object}/updated/`` and ``…/deleted/`` with ``latestDateCovered``
  (docs/salesforce.md §5);
- ``GET``/``PATCH …/sobjects/{object}/{id}`` and ``PATCH …/composite/sobjects`` with per-record
  results and ``allOrNone`` (docs/salesforce.md §6); ``GET …/sobjects/{object}/describe``
  (docs/salesforce.md §7);
- ``POST …/sobjects/{object}/`` and ``POST …/composite/sobjects``: creates, Tasks on an
  opportunity's timeline among them (docs/salesforce.md §11);
- ``Sforce-Limit-Info: api-usage=n/N`` on every API reply, the rolling 24-hour allocation and the
  long-request concurrency cap, both answering 403 ``REQUEST_LIMIT_EXCEEDED``
  (docs/salesforce.md §8).

Datetimes are kept to the second and printed as ``2025-01-01T00:00:00.000+0000``. Edits made
"by the system" (``mutate(..., actor="system")``, ``touch``) move ``SystemModstamp`` but not
``LastModifiedDate``. Every limit and every behaviour the docs mark as inferred is a config key
(``default_config``, ``POST /__emu/config``). Control API, besides the kit's
reset/config/clock/faults/requests/stats: ``POST /__emu/seed``, ``/__emu/seed/opportunities``,
``/__emu/mutate``, ``/__emu/touch``, ``/__emu/delete``, ``/__emu/expire_tokens``,
``GET /__emu/records/{object}/{id}`` (with ``/history``) and ``GET /__emu/tasks``; the same
operations are plain methods.

Run it alone with ``python -m plugins.salesforce.emulator --port N [--tls]``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from plugins.emulator import (Emulator, HttpError, RealtimeClock, Request, Response,
                              SlidingWindow, VirtualClock, parse_iso)
from plugins.salesforce.schema import (DEFAULT_CUSTOM_FIELDS, KEY_PREFIX, OBJECT_LABELS,
                                       STAGE_META, STAGES, STANDARD_FIELDS, TASK_CLOSED,
                                       ErrorItem, FieldSpec, check_changes, custom_spec,
                                       describe_field, make_id, normalize_id, object_fields,
                                       soql_tables, to_json)
from plugins.salesforce.soql import Path, Plan, SoqlError, compile_query
from plugins.salesforce.tls import TlsFiles, serve_tls

API_VERSION = "v60.0"
VERSION = r"/services/data/(?P<version>v\d+\.\d)"
OBJECT = r"(?P<object>[A-Za-z]\w*)"

# Credentials the emulator accepts out of the box (printed by the standalone server).
CLIENT_ID = "3MVG9dealsyncEmulatorConsumerKey"
CLIENT_SECRET = "dealsync-emulator-consumer-secret"
USERNAME = "integration@dealsync.example"
REFRESH_TOKEN = "5Aep861dealsyncEmulatorRefreshToken"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

SESSION_EXPIRED = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
DAILY_LIMIT = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
CONCURRENT_LIMIT = [{"message": "ConcurrentPerOrgLongTxn Limit exceeded.",
                     "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
NOT_FOUND = "The requested resource does not exist"
CREATEABLE = ("Opportunity", "Account", "Task")  # the emulator creates no Users
ROLLED_BACK = {"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
               "message": "Record rolled back because not all records were valid and the request "
                          "was using AllOrNone header", "fields": []}

DEFAULT_USERS = (("Dealsync Integration", USERNAME), ("Avery Rep", "avery@dealsync.example"),
                 ("Jordan Rep", "jordan@dealsync.example"))
DEFAULT_ACCOUNTS = ("Acme Corporation", "Globex", "Initech")


def default_config() -> dict[str, Any]:
    """Every knob with its documented default; ``POST /__emu/config`` edits it."""
    return {
        "epoch": "2025-01-01T00:00:00Z",
        "auto_ms_per_request": 1,
        # auth (docs/salesforce.md §1)
        "require_auth": True,
        "connected_apps": {CLIENT_ID: CLIENT_SECRET},
        "client_credentials_user": USERNAME,  # null: the flow is not enabled on the app
        "refresh_tokens": {REFRESH_TOKEN: USERNAME},
        "rotate_refresh_tokens": False,
        "jwt_approved_users": [USERNAME],
        "jwt_audiences": ["https://login.salesforce.com", "https://test.salesforce.com"],
        "jwt_max_lifetime_s": 180,  # "exp" within 3 minutes; null: no upper bound
        "token_ttl_s": 7200,
        # query (docs/salesforce.md §3, §4)
        "query_batch_max": 2000,
        "query_timeout_if_span_days": None,  # a datetime window wider than this: QUERY_TIMEOUT
        "locator_ttl_s": 900,
        "max_open_locators": 10,  # per user; opening one more drops the oldest
        "unordered_results": "id",  # without ORDER BY: id | reverse | random
        # replication (docs/salesforce.md §5)
        "replication_window_days": 30,
        "replication_lag_s": 0,
        "updated_id_cap": 600000,
        # writes (docs/salesforce.md §6)
        "collections_max": 200,
        "unknown_field_in_collection": "record",  # record: per-record error | request: 400
        "touch_on_noop": True,
        "custom_fields": json.loads(json.dumps(DEFAULT_CUSTOM_FIELDS)),
        # limits (docs/salesforce.md §8)
        "daily_max": 100000,
        "concurrent_long_max": 25,
        "long_threshold_ms": 20000,
        "slow_ms": 0,  # every API request takes this long (real time); long if >= the threshold
    }


class RecordError(Exception):
    """One record's failure: ``errors`` of a per-record result in Collections (``statusCode``),
    the whole error array of a single-record call otherwise (``errorCode``)."""

    def __init__(self, items: list[ErrorItem], status: int = 400):
        super().__init__(items[0][1])
        self.items, self.status = items, status

    @classmethod
    def one(cls, code: str, message: str, fields: list[str] | None = None,
            status: int = 400) -> "RecordError":
        return cls([(code, message, fields or [])], status)

    def results(self) -> list[dict[str, Any]]:
        return [{"statusCode": c, "message": m, "fields": f} for c, m, f in self.items]

    def top(self) -> list[dict[str, Any]]:
        return [{"message": m, "errorCode": c, "fields": f} for c, m, f in self.items]


def fail(status: int, code: str, message: str) -> HttpError:
    """Salesforce's top-level error: an *array* of ``{message, errorCode}``
    (docs/salesforce.md §9)."""
    return HttpError(status, [{"message": message, "errorCode": code}])


def oauth_fail(error: str, description: str, status: int = 400) -> HttpError:
    """Token endpoint errors are objects, not arrays (docs/salesforce.md §1)."""
    return HttpError(status, {"error": error, "error_description": description})


def _second(when: datetime) -> datetime:
    return when.astimezone(timezone.utc).replace(microsecond=0)


def _minute(when: datetime) -> datetime:
    return when.replace(second=0, microsecond=0)


def parse_when(text: str) -> datetime:
    """An ISO 8601 date and time in UTC; one without an offset is taken as UTC."""
    if " " in text:  # an unencoded "+" in a query string arrives as a space
        raise ValueError(text)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _when(value: str | datetime | None, default: datetime) -> datetime:
    if value is None:
        return default
    return _second(value if isinstance(value, datetime) else parse_when(value))


@dataclass
class Cursor:
    """A query locator: the rendered result, frozen when the query ran."""

    user: str
    records: list[dict[str, Any]]
    batch: int
    touched: datetime


@dataclass
class Session:
    user: str
    client: str
    expires: datetime


class SalesforceEmulator(Emulator):
    """Salesforce REST (Opportunity, Account, User) in memory, on 127.0.0.1."""

    name = "salesforce-emulator"

    def __init__(self, seed: int = 0, *, realtime: bool = False, tls: bool = False):
        # realtime: the clock follows the wall clock (the standalone server for the demo); tests
        # keep the virtual clock that moves only when told. tls: serve HTTPS (see ca_path).
        self.realtime = realtime
        self.tls = tls
        self._tls: TlsFiles | None = None
        self._long_in_flight = 0
        super().__init__(seed)

    # -- state ------------------------------------------------------------------------------------
    def reset(self, seed: int = 0) -> None:
        self.config = default_config()
        start = parse_iso(self.config["epoch"])
        self.clock = (RealtimeClock() if self.realtime
                      else VirtualClock(start, self.config["auto_ms_per_request"]))
        self.seed_value = seed
        self.rows: dict[str, dict[str, dict[str, Any]]] = {obj: {} for obj in STANDARD_FIELDS}
        self.deleted_at: dict[str, datetime] = {}
        self.changes: dict[str, list[dict[str, Any]]] = {}
        self._next: Counter[str] = Counter()
        self._sessions: dict[str, Session] = {}
        self._issued_refresh: dict[str, str] = {}
        self._revoked_refresh: set[str] = set()
        self._cursors: dict[str, Cursor] = {}
        self._usage = SlidingWindow(self.config["daily_max"], 86400)
        self.limited: Counter[str] = Counter()
        self.writes = 0
        self.org_id = make_id(KEY_PREFIX["Organization"], 1)
        self.created = _second(self.clock.now())
        self._seed_org()
        super().reset(seed)

    def _seed_org(self) -> None:
        for name, username in DEFAULT_USERS:
            self.create_user(name, username)
        for name in DEFAULT_ACCOUNTS:
            self.create_account(name)

    @property
    def integration_user(self) -> str:
        return self._user_by_username(USERNAME) or next(iter(self.rows["User"]))

    def now(self) -> datetime:
        """The clock, to the second: Salesforce stores datetimes without fractions
        (docs/salesforce.md §2)."""
        return _second(self.clock.now())

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Like ``POST /__emu/config``: unknown keys and malformed custom fields are refused."""
        with self.lock:
            unknown = sorted(set(changes) - set(self.config))
            if unknown:
                raise KeyError(f"unknown config keys: {unknown}")
            for obj, fields in (changes.get("custom_fields") or {}).items():
                if obj not in STANDARD_FIELDS:
                    raise ValueError(f"custom_fields: unknown object {obj!r}")
                for name, spec in fields.items():
                    custom_spec(name, spec)
            self.config.update(changes)
            return dict(self.config)

    def specs(self, obj: str) -> list[FieldSpec]:
        return object_fields(obj, self.config["custom_fields"])

    # -- records ----------------------------------------------------------------------------------
    def _insert(self, obj: str, values: dict[str, Any], at: datetime,
                by: str | None = None) -> dict[str, Any]:
        self._next[obj] += 1
        record_id = make_id(KEY_PREFIX[obj], self._next[obj])
        row: dict[str, Any] = {spec.name: (False if spec.type == "boolean" else None)
                               for spec in self.specs(obj)}
        if by is None:  # data "made in Salesforce" is a sales rep's, never the API user's
            by = (record_id if not self.rows["User"] else self.integration_user) \
                if obj == "User" else self._a_rep()
        row.update(values)
        row.update({"Id": record_id, "CreatedDate": at, "CreatedById": by,
                    "LastModifiedDate": at, "LastModifiedById": by, "SystemModstamp": at})
        self._derive(obj, row, values)
        self.rows[obj][record_id] = row
        self.changes[record_id] = [{"at": to_json(at), "actor": "create", "by": by,
                                    "changed": {k: to_json(v) for k, v in values.items()}}]
        return row

    def _write(self, obj: str, row: dict[str, Any], changes: dict[str, Any], *, at: datetime,
               actor: str, by: str) -> None:
        """Apply a validated write. Any user write moves LastModifiedDate and SystemModstamp; a
        system write (automation, recalculation) moves only SystemModstamp
        (docs/salesforce.md §2)."""
        changed = {k: v for k, v in changes.items() if row.get(k) != v}
        if not changed and not self.config["touch_on_noop"]:
            return
        row.update(changes)
        self._derive(obj, row, changes)
        row["SystemModstamp"] = at
        if actor != "system":
            row["LastModifiedDate"] = at
            row["LastModifiedById"] = by
        self.changes[row["Id"]].append({"at": to_json(at), "actor": actor, "by": by,
                                        "changed": {k: to_json(v) for k, v in changed.items()}})
        self.writes += 1

    def _derive(self, obj: str, row: dict[str, Any], changes: dict[str, Any]) -> None:
        """The fields Salesforce sets from others: an opportunity's from its stage, a task's
        ``IsClosed`` from its status and ``AccountId`` from what it relates to
        (docs/salesforce.md §11)."""
        if obj == "Opportunity":
            self._derive_from_stage(row, changes)
        elif obj == "Task":
            row["IsClosed"] = row.get("Status") in TASK_CLOSED
            what = row.get("WhatId") or ""
            if what.startswith(KEY_PREFIX["Account"]):
                row["AccountId"] = what
            elif what.startswith(KEY_PREFIX["Opportunity"]):
                row["AccountId"] = (self.rows["Opportunity"].get(what) or {}).get("AccountId")
            else:
                row["AccountId"] = None

    @staticmethod
    def _derive_from_stage(row: dict[str, Any], changes: dict[str, Any]) -> None:
        # A stage sets the forecast category, the closed/won flags and, unless the same write
        # sets one, the stage's default probability.
        meta = STAGE_META.get(row.get("StageName") or "")
        if meta is None or "StageName" not in changes:
            return
        probability, forecast, closed, won = meta
        row.update({"ForecastCategoryName": forecast, "IsClosed": closed, "IsWon": won})
        if "Probability" not in changes:
            row["Probability"] = probability

    def _lookup(self, obj: str, record_id: Any) -> dict[str, Any] | None:
        row = self.rows.get(obj, {}).get(record_id) if isinstance(record_id, str) else None
        return None if row is None or row.get("IsDeleted") else row

    def _exists(self, obj: str, record_id: str) -> bool:
        return self._lookup(obj, record_id) is not None

    def _user_by_username(self, username: str) -> str | None:
        for row in self.rows["User"].values():
            if row["Username"] == username and row["IsActive"]:
                return row["Id"]
        return None

    def _checked(self, obj: str, values: dict[str, Any]) -> dict[str, Any]:
        """Validated stored values for Python callers; ValueError carries the error list."""
        changes, errors = check_changes(obj, self.specs(obj), values, self._exists)
        if errors:
            raise ValueError(json.dumps([{"statusCode": c, "message": m, "fields": f}
                                         for c, m, f in errors]))
        return changes

    # -- plain-Python control API (tests and the demo call these in-process) ----------------------
    def create_user(self, name: str, username: str, email: str | None = None) -> str:
        with self.lock:
            values = {"Name": name, "Username": username, "Email": email or username,
                      "IsActive": True}
            return self._insert("User", values, self.now())["Id"]

    def create_account(self, name: str) -> str:
        with self.lock:
            return self._insert("Account", {"Name": name}, self.now())["Id"]

    def seed_opportunities(self, count: int, start: str | datetime | None = None,
                           step_s: int = 1, same_ts_block: int = 0,
                           fields: dict[str, Any] | None = None) -> list[str]:
        """Create ``count`` opportunities stamped from ``start`` by ``step_s`` seconds; the first
        ``same_ts_block`` share one second (a data load or mass update does that). Without
        ``start`` the last stamp is now. The clock catches up if the data would be ahead of it."""
        with self.lock:
            extra = self._checked("Opportunity", fields or {})
            block = max(int(same_ts_block), 1)
            span = timedelta(seconds=max(0, count - block) * step_s)
            first = _when(start, self.now() - span)
            accounts = list(self.rows["Account"])
            reps = [u for u in self.rows["User"] if u != self.integration_user] or \
                [self.integration_user]
            ids = []
            for i in range(count):
                at = first + timedelta(seconds=max(0, i - block + 1) * step_s)
                ids.append(self._insert("Opportunity", {
                    **self._generated(self._next["Opportunity"], at, accounts, reps), **extra},
                    at)["Id"])
            self._catch_up(first + span)
            return ids

    def _generated(self, n: int, at: datetime, accounts: list[str], reps: list[str]
                   ) -> dict[str, Any]:
        open_stages = [s[0] for s in STAGES if not s[3]]
        values: dict[str, Any] = {
            "Name": f"Opportunity {n + 1:05d}", "Amount": float(1000 + (n * 37 % 100) * 250),
            "CloseDate": (at + timedelta(days=30)).date(),
            "StageName": open_stages[n % len(open_stages)],
            "AccountId": accounts[n % len(accounts)] if accounts else None,
            "OwnerId": reps[n % len(reps)],
        }
        if "Priority__c" in (self.config["custom_fields"].get("Opportunity") or {}):
            values["Priority__c"] = ("High", "Medium", "Low")[n % 3]
        return values

    def seed(self, accounts: list[dict[str, Any]] | None = None,
             users: list[dict[str, Any]] | None = None,
             opportunities: list[dict[str, Any]] | None = None) -> dict[str, list[str]]:
        """Seed an org. ``accounts``: ``{"Name"}``; ``users``: ``{"Name", "Username", "Email"}``;
        ``opportunities``: ``{"fields", "account": ref, "owner": ref, "at": iso}`` where a ref is
        an index into this call's list or an id; fields left out get generated values."""
        with self.lock:
            made: dict[str, list[str]] = {"accounts": [], "users": [], "opportunities": []}
            for spec in accounts or []:
                made["accounts"].append(self.create_account(spec["Name"]))
            for spec in users or []:
                made["users"].append(self.create_user(spec["Name"], spec["Username"],
                                                      spec.get("Email")))

            def ref(value: Any, kind: str) -> str:
                return made[kind][value] if isinstance(value, int) else str(value)

            for spec in opportunities or []:
                values = dict(spec.get("fields") or {})
                if "account" in spec:
                    values["AccountId"] = ref(spec["account"], "accounts")
                if "owner" in spec:
                    values["OwnerId"] = ref(spec["owner"], "users")
                at = _when(spec.get("at"), self.now())
                # Required fields the spec leaves out get generated values.
                generated = self._generated(self._next["Opportunity"], at, [], [self._a_rep()])
                checked = self._checked("Opportunity", values)
                made["opportunities"].append(
                    self._insert("Opportunity", {**generated, **checked}, at)["Id"])
                self._catch_up(at)
            return made

    def mutate(self, record_id: str, fields: dict[str, Any] | None = None,
               actor: str = "user", at: str | datetime | None = None,
               obj: str = "Opportunity") -> dict[str, Any]:
        """An edit made in Salesforce itself: by a user (``actor="user"``, by the first sales
        rep) or by the system (``actor="system"``: only SystemModstamp moves)."""
        with self.lock:
            row = self._lookup(obj, normalize_id(record_id))
            if row is None:
                raise KeyError(f"no {obj} {record_id}")
            when = _when(at, self.now())
            self._write(obj, row, self._checked(obj, fields or {}), at=when, actor=actor,
                        by=self._a_rep())
            self._catch_up(when)
            return self.record(row["Id"], obj)

    def touch(self, ids: list[str] | None = None, count: int | None = None,
              at: str | datetime | None = None, actor: str = "system") -> list[str]:
        """Stamp these opportunities (or the first ``count``) with one identical second, as a
        recalculation or mass update does; nothing else changes."""
        with self.lock:
            when = _when(at, self.now())
            chosen = list(self.rows["Opportunity"])[:count] if ids is None else ids
            touched = []
            for record_id in chosen:
                row = self._lookup("Opportunity", normalize_id(record_id))
                if row is not None:
                    self._write("Opportunity", row, {}, at=when, actor=actor, by=self._a_rep())
                    touched.append(row["Id"])
            self._catch_up(when)
            return touched

    def delete(self, ids: list[str], at: str | datetime | None = None) -> list[str]:
        """Move opportunities to the recycle bin: gone from query, still in queryAll with
        ``IsDeleted = true``, listed by getDeleted."""
        with self.lock:
            when = _when(at, self.now())
            deleted = []
            for record_id in ids:
                row = self._lookup("Opportunity", normalize_id(record_id))
                if row is not None:
                    self._write("Opportunity", row, {"IsDeleted": True}, at=when, actor="user",
                                by=self._a_rep())
                    self.deleted_at[row["Id"]] = when
                    deleted.append(row["Id"])
            return deleted

    def record(self, record_id: str, obj: str = "Opportunity") -> dict[str, Any]:
        """The current state with every field (deleted records too)."""
        with self.lock:
            row = self.rows[obj][normalize_id(record_id) or record_id]
            return self._render(obj, row, self._all_paths(obj), API_VERSION)

    def history(self, record_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.changes[normalize_id(record_id) or record_id])

    def tasks(self, what_id: str | None = None) -> list[dict[str, Any]]:
        """Every Task in creation order with every field, or those related to ``what_id``
        (an opportunity's timeline, docs/salesforce.md §11)."""
        with self.lock:
            what = normalize_id(what_id) if what_id is not None else None
            return [self._render("Task", row, self._all_paths("Task"), API_VERSION)
                    for row in self.rows["Task"].values()
                    if not row["IsDeleted"] and (what_id is None or row["WhatId"] == what)]

    def expire_tokens(self, tokens: list[str] | None = None) -> int:
        """End access-token sessions now (all, or the listed ones); refresh tokens still work."""
        with self.lock:
            now = self.clock.now()
            expired = 0
            for token, session in self._sessions.items():
                if tokens is None or token in tokens:
                    session.expires = min(session.expires, now)
                    expired += 1
            return expired

    def api_usage(self) -> int:
        """Calls counted in the rolling 24 hours."""
        with self.lock:
            self._usage.seconds_until_free(self.clock.now().timestamp())  # trims the window
            return len(self._usage.events)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        opportunities = self.rows["Opportunity"].values()
        return {"calls": dict(self.calls), "api_usage": self.api_usage(),
                "daily_max": self.config["daily_max"], "limited": dict(self.limited),
                "opportunities": sum(1 for r in opportunities if not r["IsDeleted"]),
                "tasks": sum(1 for r in self.rows["Task"].values() if not r["IsDeleted"]),
                "deleted": len(self.deleted_at), "writes": self.writes,
                "open_locators": len(self._cursors), "now": to_json(self.clock.now())}

    def _a_rep(self) -> str:
        reps = [u for u in self.rows["User"] if u != self.integration_user]
        return reps[0] if reps else self.integration_user

    def _catch_up(self, when: datetime) -> None:
        if when > self.clock.now():
            self.clock.set(when)

    # -- serving (plain HTTP or TLS) --------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        if self.tls and self._tls is None:
            self._tls = TlsFiles()  # first: without trustme, fail before binding anything
        super().start(port)
        if self._tls is not None:
            assert self.server is not None
            serve_tls(self.server, self._tls.context)
        return self.url

    def stop(self) -> None:
        super().stop()
        if self._tls is not None:
            self._tls.close()
            self._tls = None

    @property
    def url(self) -> str:
        plain = super().url
        return "https" + plain[len("http"):] if self.tls else plain

    @property
    def ca_path(self) -> str:
        """The throwaway CA's PEM file, for ``requests.get(..., verify=ca_path)``."""
        if self._tls is None:
            raise RuntimeError("the emulator serves HTTPS only with tls=True, once started")
        return self._tls.ca_path

    # -- dispatch: limit header and concurrency cap (docs/salesforce.md §8) ------------------------
    def dispatch(self, req: Request) -> Response | None:
        if not req.path.startswith("/services/data/"):
            return super().dispatch(req)
        with self.lock:
            if not self.realtime:
                self.clock.tick_ms = int(self.config["auto_ms_per_request"])
            slow_ms = int(self.config["slow_ms"])
            is_long = slow_ms > 0 and slow_ms >= int(self.config["long_threshold_ms"])
            if is_long and self._long_in_flight >= int(self.config["concurrent_long_max"]):
                self.limited["concurrent"] += 1
                self._record(req, 403, "concurrent_limit")
                return self._with_usage(Response(403, CONCURRENT_LIMIT))
            self._long_in_flight += is_long
        try:
            if slow_ms:
                time.sleep(slow_ms / 1000)  # outside the lock: other requests go on meanwhile
            response = super().dispatch(req)
        finally:
            with self.lock:
                self._long_in_flight -= is_long
        if response is None:
            return None
        with self.lock:
            return self._with_usage(response)

    def _with_usage(self, response: Response) -> Response:
        response.headers["Sforce-Limit-Info"] = \
            f"api-usage={self.api_usage()}/{self.config['daily_max']}"
        return response

    def not_found(self, req: Request) -> Response:
        allowed = sorted({method for method, pattern, _ in self.routes
                          if pattern.fullmatch(req.path)})
        if allowed:
            return Response(405, [{"message": f"HTTP Method '{req.method}' not allowed. Allowed "
                                              f"are {','.join(allowed)}",
                                   "errorCode": "METHOD_NOT_ALLOWED"}])
        return Response(404, [{"message": NOT_FOUND, "errorCode": "NOT_FOUND"}])

    # -- routes -----------------------------------------------------------------------------------
    def install_routes(self) -> None:
        api = self._api
        self.route("POST", r"/services/oauth2/token", self._token)
        api("GET", r"/query/?", lambda r, s: self._query(r, s, "query"))
        api("GET", r"/queryAll/?", lambda r, s: self._query(r, s, "queryAll"))
        api("GET", r"/(?P<endpoint>query|queryAll)/(?P<locator>[^/]+)", self._query_more)
        api("GET", r"/sobjects/" + OBJECT + r"/describe/?", self._describe)
        api("GET", r"/sobjects/" + OBJECT + r"/updated/?", self._get_updated)
        api("GET", r"/sobjects/" + OBJECT + r"/deleted/?", self._get_deleted)
        api("GET", r"/sobjects/" + OBJECT + r"/(?P<id>[^/]+)", self._get_record)
        api("PATCH", r"/sobjects/" + OBJECT + r"/(?P<id>[^/]+)", self._patch_record)
        api("POST", r"/sobjects/" + OBJECT + r"/?", self._create_record)
        api("PATCH", r"/composite/sobjects/?", self._collections_update)
        api("POST", r"/composite/sobjects/?", self._collections_create)
        self.route("POST", r"/__emu/seed", self._ctl(lambda b: self.seed(**_only(
            b, "accounts", "users", "opportunities"))))
        self.route("POST", r"/__emu/seed/opportunities", self._ctl(self._ctl_seed_opportunities))
        self.route("POST", r"/__emu/mutate", self._ctl(lambda b: self.mutate(
            **_only({"record_id" if k == "id" else k: v for k, v in b.items()},
                    "record_id", "fields", "actor", "at", "obj"))))
        self.route("POST", r"/__emu/touch", self._ctl(lambda b: {"ids": self.touch(**_only(
            b, "ids", "count", "at", "actor"))}))
        self.route("POST", r"/__emu/delete", self._ctl(lambda b: {"ids": self.delete(**_only(
            b, "ids", "at"))}))
        self.route("POST", r"/__emu/expire_tokens", self._ctl(lambda b: {
            "expired": self.expire_tokens(b.get("tokens"))}))
        self.route("GET", r"/__emu/records/" + OBJECT + r"/(?P<id>\w+)",
                   lambda r: self._ctl_record(r, lambda: self.record(r.params["id"],
                                                                     r.params["object"])))
        self.route("GET", r"/__emu/records/" + OBJECT + r"/(?P<id>\w+)/history",
                   lambda r: self._ctl_record(r, lambda: {"history": self.history(
                       r.params["id"])}))
        self.route("GET", r"/__emu/tasks", lambda r: {"tasks": self.tasks(r.arg("what_id"))})

    def _api(self, method: str, pattern: str,
             handler: Callable[[Request, Session], Any]) -> None:
        def guarded(req: Request) -> Any:
            session = self._authenticate(req)
            self._count_call()
            try:
                return handler(req, session)
            except RecordError as exc:  # a single-record call fails whole
                raise HttpError(exc.status, exc.top()) from None
        self.route(method, VERSION + pattern, guarded)

    def _count_call(self) -> None:
        """One call against the rolling 24-hour allocation, or 403 when it is spent
        (docs/salesforce.md §8)."""
        self._usage.limit = int(self.config["daily_max"])
        if not self._usage.try_take(self.clock.now().timestamp()):
            self.limited["daily"] += 1
            raise HttpError(403, DAILY_LIMIT)

    # -- control routes ---------------------------------------------------------------------------
    def _ctl(self, action: Callable[[dict[str, Any]], Any]) -> Callable[[Request], Any]:
        def handler(req: Request) -> Any:
            body = req.json() or {}
            try:
                return action(body)
            except (KeyError, IndexError) as exc:
                raise HttpError(404, {"message": f"not found: {exc}"}) from None
            except TypeError as exc:
                raise HttpError(400, {"message": str(exc)}) from None
            except ValueError as exc:
                raise HttpError(400, {"message": "invalid fields",
                                      "errors": _errors_of(exc)}) from None
        return handler

    def _ctl_config(self, req: Request) -> Any:  # replaces the kit's: validates custom fields
        try:
            return self.configure(**(req.json() or {}))
        except (KeyError, ValueError) as exc:
            raise HttpError(400, {"message": str(exc.args[0]),
                                  "known": sorted(self.config)}) from None

    def _ctl_seed_opportunities(self, body: dict[str, Any]) -> Any:
        ids = self.seed_opportunities(**_only(body, "count", "start", "step_s", "same_ts_block",
                                              "fields"))
        return {"count": len(ids), "first_id": ids[0] if ids else None,
                "last_id": ids[-1] if ids else None}

    @staticmethod
    def _ctl_record(req: Request, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except KeyError:
            raise HttpError(404, {"message": f"no {req.params['object']} "
                                             f"{req.params['id']}"}) from None

    # -- OAuth (docs/salesforce.md §1) -------------------------------------------------------------
    def _token(self, req: Request) -> Any:
        try:
            form = req.form()
        except UnicodeDecodeError:
            raise oauth_fail("invalid_request", "the body must be form-encoded UTF-8") from None
        grant = form.get("grant_type", "")
        if grant == "client_credentials":
            client = self._client(form, need_secret=True)
            username = self.config["client_credentials_user"]
            user = self._user_by_username(username) if username else None
            if user is None:
                raise oauth_fail("invalid_grant", "no client credentials user enabled")
            return self._issue(client, user)
        if grant == "refresh_token":
            return self._refresh(form)
        if grant == JWT_GRANT:
            client, user = self._jwt(form.get("assertion", ""))
            return self._issue(client, user)
        raise oauth_fail("unsupported_grant_type", "grant type not supported")

    def _client(self, form: dict[str, str], need_secret: bool) -> str:
        client = form.get("client_id", "")
        apps = self.config["connected_apps"]
        if client not in apps:
            raise oauth_fail("invalid_client_id", "client identifier invalid")
        if need_secret and not hmac.compare_digest(form.get("client_secret", "").encode(),
                                                   str(apps[client]).encode()):
            raise oauth_fail("invalid_client", "invalid client credentials")
        return client

    def _refresh(self, form: dict[str, str]) -> Any:
        client = self._client(form, need_secret="client_secret" in form)
        token = form.get("refresh_token", "")
        known = {**self.config["refresh_tokens"], **self._issued_refresh}
        if token not in known or token in self._revoked_refresh:
            raise oauth_fail("invalid_grant", "expired access/refresh token")
        user = self._user_by_username(known[token])
        if user is None:
            raise oauth_fail("invalid_grant", "inactive user")
        reply = self._issue(client, user)
        if self.config["rotate_refresh_tokens"]:
            # Rotation: the old refresh token dies and the reply carries its successor.
            self._revoked_refresh.add(token)
            fresh = f"5Aep861{self._digest('refresh')[:40]}"
            self._issued_refresh[fresh] = known[token]
            reply["refresh_token"] = fresh
        return reply

    def _jwt(self, assertion: str) -> tuple[str, str]:
        """Check a JWT bearer assertion's structure and claims; its signature is not verified.
        ``exp`` is compared with the wall clock: the client signs with its own clock."""
        header, claims = _jwt_parts(assertion)
        if header.get("alg") != "RS256" or not isinstance(claims.get("exp"), (int, float)):
            raise oauth_fail("invalid_grant", "invalid assertion")
        if claims.get("iss") not in self.config["connected_apps"]:
            raise oauth_fail("invalid_client_id", "client identifier invalid")
        audiences = list(self.config["jwt_audiences"]) + [self.url]
        if claims.get("aud") not in audiences:
            raise oauth_fail("invalid_grant", "audience is invalid")
        now = time.time()
        lifetime = self.config["jwt_max_lifetime_s"]
        skew = 5  # seconds of clock difference forgiven on the upper bound
        too_far = lifetime is not None and claims["exp"] > now + lifetime + skew
        if claims["exp"] <= now or too_far:
            raise oauth_fail("invalid_grant", "invalid assertion")
        user = self._user_by_username(str(claims.get("sub", "")))
        if user is None or self.rows["User"][user]["Username"] not in \
                self.config["jwt_approved_users"]:
            raise oauth_fail("invalid_grant", "user hasn't approved this consumer")
        return str(claims["iss"]), user

    def _issue(self, client: str, user: str) -> dict[str, Any]:
        """A session: no ``expires_in`` (it ends after the org's timeout, ``token_ttl_s``); the
        signature is HMAC-SHA256 of id + issued_at keyed with the client secret
        (docs/salesforce.md §1)."""
        now = self.clock.now()
        token = f"{self.org_id[:15]}!AQ{self._digest('access')}"
        self._sessions[token] = Session(user, client, now + timedelta(
            seconds=int(self.config["token_ttl_s"])))
        identity = f"{self.url}/id/{self.org_id}/{user}"
        issued_at = str(int(now.timestamp() * 1000))
        secret = str(self.config["connected_apps"].get(client, "")).encode()
        signature = base64.b64encode(hmac.new(secret, (identity + issued_at).encode(),
                                              hashlib.sha256).digest()).decode()
        return {"access_token": token, "instance_url": self.url, "id": identity,
                "token_type": "Bearer", "issued_at": issued_at, "signature": signature}

    def _digest(self, kind: str) -> str:
        self._next["token"] += 1
        raw = hashlib.sha256(f"{self.seed_value}:{kind}:{self._next['token']}".encode()).digest()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=").replace("-", ".")

    def _authenticate(self, req: Request) -> Session:
        if not self.config["require_auth"]:
            return Session(self.integration_user, CLIENT_ID, datetime.max.replace(
                tzinfo=timezone.utc))
        scheme, _, token = (req.header("authorization") or "").partition(" ")
        session = self._sessions.get(token.strip()) if scheme.lower() in ("bearer", "oauth") \
            else None
        if session is None or self.clock.now() >= session.expires:
            raise HttpError(401, SESSION_EXPIRED)
        return session

    # -- query (docs/salesforce.md §3, §4) ---------------------------------------------------------
    def _query(self, req: Request, session: Session, endpoint: str) -> Any:
        text = req.arg("q")
        if not text:
            raise fail(400, "MALFORMED_QUERY", "A query string has to be specified")
        try:
            plan = compile_query(text, soql_tables(self.config["custom_fields"]), normalize_id)
        except SoqlError as exc:
            raise fail(400, exc.code, exc.message) from None
        self._check_timeout(plan)
        rows = [row for row in self.rows[plan.table.name].values()
                if endpoint == "queryAll" or not row.get("IsDeleted")]
        if not plan.order:
            rows = self._unordered(rows)
        version = req.params["version"]
        records = [self._render(plan.table.name, row, plan.columns, version)
                   for row in plan.run(rows, self._lookup_any)]
        batch = self._batch_size(req)
        if len(records) <= batch:
            return {"totalSize": len(records), "done": True, "records": records}
        return self._page(self._open_cursor(session.user, records, batch), 0, version, endpoint)

    def _lookup_any(self, obj: str, record_id: Any) -> dict[str, Any] | None:
        # Relationship hops read through to recycled rows too, as queryAll needs.
        return self.rows.get(obj, {}).get(record_id) if isinstance(record_id, str) else None

    def _check_timeout(self, plan: Plan) -> None:
        """QUERY_TIMEOUT for a datetime window wider than the configured span (an open upper
        end reaches to now). A query with no datetime bound never times out; one with only an
        upper bound counts as unbounded and always does."""
        limit = self.config["query_timeout_if_span_days"]
        if limit is None:
            return
        low, high = plan.bounds("datetime")
        if low is None and high is None:
            return
        if low is None or (high or self.clock.now()) - low > timedelta(days=float(limit)):
            raise fail(400, "QUERY_TIMEOUT", "Your query request was running for too long.")

    def _unordered(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Without ORDER BY Salesforce promises no order; "random" makes a connector prove it
        # does not rely on one.
        mode = self.config["unordered_results"]
        if mode == "reverse":
            return rows[::-1]
        if mode == "random":
            rows = list(rows)
            self.random.shuffle(rows)
        return rows

    def _batch_size(self, req: Request) -> int:
        """min(config, the ``Sforce-Query-Options: batchSize=n`` header clamped to 200..2000)."""
        batch = int(self.config["query_batch_max"])
        for option in (req.header("sforce-query-options") or "").split(","):
            key, _, value = option.strip().partition("=")
            if key.strip() == "batchSize" and value.strip().isdigit():
                batch = min(batch, max(200, min(2000, int(value))))
        return max(1, batch)

    def _open_cursor(self, user: str, records: list[dict[str, Any]], batch: int) -> str:
        mine = [key for key, c in self._cursors.items() if c.user == user]
        for key in mine[:max(0, len(mine) - int(self.config["max_open_locators"]) + 1)]:
            del self._cursors[key]  # the oldest go first
        self._next["QueryLocator"] += 1
        locator = make_id(KEY_PREFIX["QueryLocator"], self._next["QueryLocator"])
        self._cursors[locator] = Cursor(user, records, batch, self.clock.now())
        return locator

    def _page(self, locator: str, offset: int, version: str, endpoint: str) -> dict[str, Any]:
        cursor = self._cursors[locator]
        cursor.touched = self.clock.now()
        end = offset + cursor.batch
        body: dict[str, Any] = {"totalSize": len(cursor.records),
                                "done": end >= len(cursor.records)}
        if not body["done"]:
            body["nextRecordsUrl"] = f"/services/data/{version}/{endpoint}/{locator}-{end}"
        body["records"] = cursor.records[offset:end]
        return body

    def _query_more(self, req: Request, session: Session) -> Any:
        locator, _, offset = req.params["locator"].rpartition("-")
        cursor = self._cursors.get(locator)
        ttl = timedelta(seconds=int(self.config["locator_ttl_s"]))
        if cursor is not None and self.clock.now() - cursor.touched > ttl:
            del self._cursors[locator]
            cursor = None
        if cursor is None or cursor.user != session.user or not offset.isdigit() or \
                int(offset) > len(cursor.records):
            raise fail(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(locator, int(offset), req.params["version"], req.params["endpoint"])

    # -- rendering --------------------------------------------------------------------------------
    def _attributes(self, obj: str, record_id: str, version: str) -> dict[str, str]:
        return {"type": obj, "url": f"/services/data/{version}/sobjects/{obj}/{record_id}"}

    def _render(self, obj: str, row: dict[str, Any], paths: tuple[Path, ...] | list[Path],
                version: str) -> dict[str, Any]:
        """A record as the REST API prints it: ``attributes`` first, relationship fields nested
        under the relationship name (``"Account": {"attributes": …, "Name": …}`` or null)."""
        out: dict[str, Any] = {"attributes": self._attributes(obj, row["Id"], version)}
        nested: dict[tuple[str, str, str], list[Path]] = {}
        for path in paths:
            if not path.hops:
                out[path.column.name] = to_json(row.get(path.column.name))
                continue
            hop = path.hops[0]
            out.setdefault(hop[0], None)  # keeps the SELECT order
            nested.setdefault(hop, []).append(Path(path.hops[1:], path.column))
        for (relationship, fk, target), subpaths in nested.items():
            child = self._lookup_any(target, row.get(fk))
            out[relationship] = None if child is None else \
                self._render(target, child, subpaths, version)
        return out

    def _all_paths(self, obj: str) -> list[Path]:
        tables = soql_tables(self.config["custom_fields"])
        return [Path((), column) for column in tables[obj.lower()].columns.values()]

    # -- sObject resources ------------------------------------------------------------------------
    def _object(self, req: Request) -> str:
        for obj in STANDARD_FIELDS:
            if obj.lower() == req.params["object"].lower():
                return obj
        raise fail(404, "NOT_FOUND", NOT_FOUND)

    def _describe(self, req: Request, session: Session) -> Any:
        obj = self._object(req)
        base = f"/services/data/{req.params['version']}/sobjects/{obj}"
        label, plural = OBJECT_LABELS[obj]
        return {"name": obj, "label": label, "labelPlural": plural, "keyPrefix": KEY_PREFIX[obj],
                "custom": False, "createable": obj != "User", "updateable": True,
                "deletable": obj != "User", "queryable": True, "replicateable": True,
                "fields": [describe_field(spec) for spec in self.specs(obj)],
                "urls": {"sobject": base, "describe": f"{base}/describe",
                         "rowTemplate": f"{base}/{{ID}}"}}

    def _get_record(self, req: Request, session: Session) -> Any:
        obj = self._object(req)
        row = self._target(obj, req.params["id"], single=True)
        names = [n.strip() for v in req.query.get("fields", []) for n in v.split(",") if n.strip()]
        if not names:
            return self._render(obj, row, self._all_paths(obj), req.params["version"])
        tables = soql_tables(self.config["custom_fields"])
        try:
            paths = [compile_query(f"SELECT {name} FROM {obj}", tables, normalize_id).columns[0]
                     for name in names]
        except SoqlError as exc:
            raise fail(400, exc.code, exc.message) from None
        return self._render(obj, row, paths, req.params["version"])

    def _patch_record(self, req: Request, session: Session) -> Any:
        obj = self._object(req)
        body = self._body(req)
        if not isinstance(body, dict):
            raise fail(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        row = self._target(obj, req.params["id"], single=True)
        changes = self._changes(obj, {k: v for k, v in body.items() if k != "attributes"})
        self._write(obj, row, changes, at=self.now(), actor="api", by=session.user)
        return Response(204, None)

    def _create_record(self, req: Request, session: Session) -> Any:
        """``POST …/sobjects/{object}/``: 201 with ``{id, errors, success}``; a refusal is the
        error array of docs/salesforce.md §9 (docs/salesforce.md §11)."""
        obj = self._object(req)
        body = self._body(req)
        if not isinstance(body, dict):
            raise fail(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        fields = {k: v for k, v in body.items() if k != "attributes"}
        if any(k.lower() == "id" for k in fields):
            raise fail(400, "INVALID_FIELD", "The Id field should not be specified in the "
                                             "sobject data.")
        values = self._creation(obj, fields, session.user)
        row = self._insert(obj, values, self.now(), by=session.user)
        self.writes += 1
        return Response(201, {"id": row["Id"], "errors": [], "success": True})

    def _creation(self, obj: str, fields: dict[str, Any], user: str) -> dict[str, Any]:
        """The stored values of a new record, or the RecordError Salesforce gives for it:
        defaults for what is left out (the owner is the user who creates it), then every
        required field must have a value."""
        if obj not in CREATEABLE:
            raise RecordError.one("INVALID_TYPE", f"sObject type '{obj}' is not supported.")
        values = self._changes(obj, fields, creating=True)
        specs = self.specs(obj)
        for spec in specs:
            if spec.name not in values:
                if spec.default is not None:
                    values[spec.name] = spec.default
                elif spec.name == "OwnerId":
                    values[spec.name] = user
        missing = [spec.name for spec in specs if spec.required and values.get(spec.name)
                   in (None, "")]
        if missing:
            raise RecordError.one("REQUIRED_FIELD_MISSING", "Required fields are missing: "
                                  f"[{', '.join(missing)}]", missing)
        return values

    def _target(self, obj: str, raw_id: Any, single: bool = False) -> dict[str, Any]:
        """The row an update or read names, or the error Salesforce gives for that id."""
        record_id = normalize_id(raw_id)
        if record_id is None or not record_id.startswith(KEY_PREFIX[obj]):
            if single:  # a path segment that is no id reads as an external id lookup
                raise RecordError.one("NOT_FOUND", "Provided external ID field does not exist "
                                      f"or is not accessible: {raw_id}", status=404)
            raise RecordError.one("MALFORMED_ID", f"{obj} ID: id value of incorrect type: {raw_id}",
                              ["Id"])
        row = self.rows[obj].get(record_id)
        if row is not None and row.get("IsDeleted"):
            raise RecordError.one("ENTITY_IS_DELETED", "entity is deleted", status=404)
        if row is None:
            if single:
                raise RecordError.one("NOT_FOUND", NOT_FOUND, status=404)
            raise RecordError.one("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        return row

    def _changes(self, obj: str, fields: dict[str, Any], creating: bool = False
                 ) -> dict[str, Any]:
        changes, errors = check_changes(obj, self.specs(obj), fields, self._exists, creating)
        if errors:
            raise RecordError(errors)
        return changes

    @staticmethod
    def _body(req: Request) -> Any:
        try:
            return req.json()
        except HttpError:
            raise fail(400, "JSON_PARSER_ERROR", "The request body is not valid JSON") from None

    # -- sObject Collections: update (docs/salesforce.md §6) and create (docs/salesforce.md §11) ---
    def _collections_update(self, req: Request, session: Session) -> Any:
        def apply(item: tuple[str, dict[str, Any], dict[str, Any]], at: datetime) -> str:
            obj, row, changes = item
            self._write(obj, row, changes, at=at, actor="api", by=session.user)
            return row["Id"]
        return self._collections(req, self._plan, apply)

    def _collections_create(self, req: Request, session: Session) -> Any:
        def plan(record: dict[str, Any]) -> RecordError | tuple[str, dict[str, Any]]:
            obj, fields = self._typed(record)
            try:
                if any(k.lower() == "id" for k in fields):
                    raise RecordError.one("INVALID_FIELD_FOR_INSERT_UPDATE",
                                          "cannot specify Id in an insert call", ["Id"])
                return obj, self._creation(obj, fields, session.user)
            except RecordError as exc:
                return exc

        def apply(item: tuple[str, dict[str, Any]], at: datetime) -> str:
            row = self._insert(item[0], item[1], at, by=session.user)
            self.writes += 1
            return row["Id"]
        return self._collections(req, plan, apply)

    def _collections(self, req: Request, plan: Callable[[dict[str, Any]], Any],
                     apply: Callable[[Any, datetime], str]) -> list[dict[str, Any]]:
        """One SaveResult per record in request order; ``allOrNone`` rolls back the good ones
        when any fails. A malformed body or too many records fail the whole call."""
        body = self._body(req)
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise fail(400, "JSON_PARSER_ERROR", "records must be a list of sObjects")
        limit = int(self.config["collections_max"])
        if len(records) > limit:
            raise fail(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than "
                       f"{limit} records into this call")
        planned = [plan(record) for record in records]
        failed = any(isinstance(p, RecordError) for p in planned)
        all_or_none = bool(body.get("allOrNone", False))
        at = self.now()  # one transaction, one second
        results: list[dict[str, Any]] = []
        for item in planned:
            if isinstance(item, RecordError):
                # A failed SaveResult carries no id: match results by position.
                results.append({"success": False, "errors": item.results()})
            elif failed and all_or_none:
                results.append({"success": False, "errors": [dict(ROLLED_BACK)]})
            else:
                results.append({"id": apply(item, at), "success": True, "errors": []})
        return results

    def _typed(self, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """A Collections record's ``attributes.type`` and its fields; a record without a type,
        or (``unknown_field_in_collection: "request"``) an unknown field, fails the call."""
        attributes = record.get("attributes")
        obj = attributes.get("type") if isinstance(attributes, dict) else None
        if not isinstance(obj, str):
            raise fail(400, "JSON_PARSER_ERROR", "Each record needs an attributes map with a type")
        fields = {k: v for k, v in record.items() if k != "attributes"}
        if self.config["unknown_field_in_collection"] == "request" and obj in STANDARD_FIELDS:
            known = {spec.name.lower() for spec in self.specs(obj)} | {"id"}
            for key in fields:
                if key.lower() not in known:
                    raise fail(400, "INVALID_FIELD",
                               f"No such column '{key}' on sobject of type {obj}")
        return obj, fields

    def _plan(self, record: dict[str, Any]
              ) -> RecordError | tuple[str, dict[str, Any], dict[str, Any]]:
        obj, fields = self._typed(record)
        raw_id = next((v for k, v in fields.items() if k.lower() == "id"), None)
        fields = {k: v for k, v in fields.items() if k.lower() != "id"}
        try:
            if obj not in STANDARD_FIELDS:
                raise RecordError.one("INVALID_TYPE", f"sObject type '{obj}' is not supported.")
            if raw_id in (None, ""):
                raise RecordError.one("MISSING_ARGUMENT", "Id not specified in an update call")
            return obj, self._target(obj, raw_id), self._changes(obj, fields)
        except RecordError as exc:
            return exc

    # -- replication: getUpdated / getDeleted (docs/salesforce.md §5) ------------------------------
    def _window(self, req: Request) -> tuple[datetime, datetime]:
        """[start, latestDateCovered): both ends lose their seconds; start at most
        ``replication_window_days`` back; covered never passes now (less the lag)."""
        bounds = []
        for name in ("start", "end"):
            try:
                bounds.append(_minute(parse_when(req.arg(name) or "")))
            except ValueError:
                raise fail(400, "INVALID_REPLICATION_DATE",
                           f"{name}: not an ISO 8601 date and time (URL-encode the '+')"
                           ) from None
        start, end = bounds
        now = self.clock.now()
        oldest = (now - timedelta(days=int(self.config["replication_window_days"]))).replace(
            hour=0, minute=0, second=0, microsecond=0)
        if start < oldest:
            raise fail(400, "INVALID_REPLICATION_DATE",
                       f"startDate can not be more than "
                       f"{self.config['replication_window_days']} days ago")
        if start >= end:
            raise fail(400, "INVALID_REPLICATION_DATE", "startDate must precede endDate")
        ready = _minute(now - timedelta(seconds=int(self.config["replication_lag_s"])))
        return start, max(start, min(end, ready))

    def _get_updated(self, req: Request, session: Session) -> Any:
        obj = self._object(req)
        start, covered = self._window(req)
        hits = sorted((row["SystemModstamp"], row["Id"]) for row in self.rows[obj].values()
                      if not row.get("IsDeleted") and start <= row["SystemModstamp"] < covered)
        self._check_id_cap(len(hits))
        return {"ids": [record_id for _, record_id in hits],
                "latestDateCovered": to_json(covered)}

    def _get_deleted(self, req: Request, session: Session) -> Any:
        obj = self._object(req)
        start, covered = self._window(req)
        hits = sorted((when, record_id) for record_id, when in self.deleted_at.items()
                      if record_id in self.rows[obj] and start <= when < covered)
        self._check_id_cap(len(hits))
        return {"deletedRecords": [{"id": record_id, "deletedDate": to_json(when)}
                                   for when, record_id in hits],
                "earliestDateAvailable": to_json(_minute(self.created)),
                "latestDateCovered": to_json(covered)}

    def _check_id_cap(self, count: int) -> None:
        cap = int(self.config["updated_id_cap"])
        if count > cap:
            raise fail(400, "EXCEEDED_ID_LIMIT", f"more than {cap} ids found; choose start and "
                       "end dates that are closer together")


# --- helpers -------------------------------------------------------------------------------------

def _only(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    unknown = sorted(set(body) - set(keys))
    if unknown:
        raise TypeError(f"unknown fields {unknown}; expected {list(keys)}")
    return {k: body[k] for k in keys if k in body}


def _errors_of(exc: ValueError) -> Any:
    try:
        return json.loads(str(exc))
    except ValueError:
        return str(exc)


def _jwt_parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of ``header.claims.signature`` (base64url, unpadded)."""
    parts = assertion.split(".")
    try:
        if len(parts) != 3 or not parts[2]:
            raise ValueError
        header, claims = (json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
                          for p in parts[:2])
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError
    except (ValueError, binascii.Error):
        raise oauth_fail("invalid_grant", "invalid assertion") from None
    return header, claims


def main(argv: list[str] | None = None) -> None:
    """``python -m plugins.salesforce.emulator``: serve until interrupted, clock on real time."""
    parser = argparse.ArgumentParser(description="Run the Salesforce REST emulator on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    parser.add_argument("--seed", type=int, default=0, help="seed for generated ids and faults")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a throwaway CA")
    args = parser.parse_args(argv)
    emulator = SalesforceEmulator(args.seed, realtime=True, tls=args.tls)
    url = emulator.start(args.port)
    print(f"{emulator.name} listening on {url} (Ctrl-C to stop)", flush=True)
    print(f"  token endpoint: {url}/services/oauth2/token\n"
          f"  client_id:      {CLIENT_ID}\n"
          f"  client_secret:  {CLIENT_SECRET}\n"
          f"  username (JWT sub, client-credentials run-as user): {USERNAME}\n"
          f"  refresh_token:  {REFRESH_TOKEN}", flush=True)
    if args.tls:
        print(f"  CA certificate: {emulator.ca_path}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        emulator.stop()


if __name__ == "__main__":
    main()
