"""A local HubSpot CRM v3 deals API, faithful to the behaviour described in docs/hubspot.md §14.

It serves what dealsync's HubSpot connector, the demo, the scenario tests and the benchmarks need:
deals (list, get, create, patch, batch read and update, search with its 10,000-result cap and its
index lag), property definitions and groups, the default pipeline, owners, companies with their v4
deal associations, notes, bearer and OAuth authentication with scopes, and HubSpot's three rate
limits with their exact 429 bodies. Everything a test needs to set up or inspect is reachable both
over HTTP under ``/__emu/`` and as plain methods (``seed_deals``, ``seed``, ``mutate``,
``bulk_touch``, ``archive``, ``history``, ``configure``), which are much faster for volume tests.

Things docs/hubspot.md marks as inferred (``[I]`` in the comments here) are knobs in
``default_config()`` rather than guesses baked in. Run it alone with
``python -m plugins.hubspot.emulator --port N``.
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import math
import random
import re
import uuid
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from plugins.emulator import (Emulator, HttpError, RealtimeClock, Request, Response,
                              SlidingWindow, VirtualClock, iso, parse_iso, serve_main)

DEAL_ID_START = 10000000001
COMPANY_ID_START = 20000000001
OWNER_ID_START = 30001
NOTE_ID_START = 40000000001  # HubSpot documents no range; any distinct range will do

PRIVATE_TOKEN = "pat-emu-private-token"
OAUTH_CLIENT_ID = "emu-client-id"
OAUTH_CLIENT_SECRET = "emu-client-secret"
OAUTH_REFRESH_TOKEN = "emu-refresh-token"

SCOPE_DEALS_READ = "crm.objects.deals.read"
SCOPE_DEALS_WRITE = "crm.objects.deals.write"
SCOPE_SCHEMAS_READ = "crm.schemas.deals.read"
SCOPE_SCHEMAS_WRITE = "crm.schemas.deals.write"
SCOPE_COMPANIES_READ = "crm.objects.companies.read"
SCOPE_OWNERS_READ = "crm.objects.owners.read"

# The deals object under its classic path and the date-versioned alias (docs/hubspot.md §2, §14.2).
DEALS = r"(?:/crm/v3/objects/deals|/crm/objects/2026-03/0-3)"
SEARCH_PATH = re.compile(DEALS + r"/search")

# Returned when a read names no properties (docs/hubspot.md §4).
DEFAULT_DEAL_PROPERTIES = ("dealname", "amount", "closedate", "pipeline", "dealstage",
                           "createdate", "hs_lastmodifieddate", "hs_object_id")
ALWAYS_RETURNED = ("hs_object_id", "createdate", "hs_lastmodifieddate")
READ_ONLY_DEAL_PROPERTIES = ("hs_object_id", "hs_lastmodifieddate", "createdate",
                             "hs_merged_object_ids")
# The ids merged into a record, semicolon-separated (docs/hubspot.md §15).
MERGED_IDS = "hs_merged_object_ids"

# type -> allowed fieldTypes (docs/hubspot.md §9).
FIELD_TYPES = {
    "bool": {"booleancheckbox"},
    "enumeration": {"select", "radio", "checkbox", "booleancheckbox"},
    "date": {"date"},
    "datetime": {"date"},
    "string": {"text", "textarea", "html", "phonenumber"},
    "number": {"number"},
}

OPERATORS = {"EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN", "HAS_PROPERTY",
             "NOT_HAS_PROPERTY", "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"}

# Association type ids (docs/hubspot.md §10).
NOTE_TO_DEAL = 214
NOTE_TO_COMPANY = 190
DEAL_TO_COMPANY_PRIMARY = 5
DEAL_TO_COMPANY = 341

NOT_FOUND_MESSAGE = "Object not found.  objectId are usually numeric."
POLICY_MESSAGES = {
    "TEN_SECONDLY_ROLLING": "You have reached your ten_secondly_rolling limit.",
    "SECONDLY": "You have reached your secondly limit.",
    "DAILY": "You have reached your daily limit.",
}

DEFAULT_STAGES = [
    # id, label, probability, isClosed
    ("appointmentscheduled", "Appointment Scheduled", "0.2", False),
    ("qualifiedtobuy", "Qualified To Buy", "0.4", False),
    ("presentationscheduled", "Presentation Scheduled", "0.6", False),
    ("decisionmakerboughtin", "Decision Maker Bought-In", "0.8", False),
    ("contractsent", "Contract Sent", "0.9", False),
    ("closedwon", "Closed Won", "1.0", True),
    ("closedlost", "Closed Lost", "0.0", True),
]


def default_config() -> dict[str, Any]:
    """Every knob, with the documented default (docs/hubspot.md §14); ``POST /__emu/config``
    edits it."""
    return {
        "epoch": "2025-01-01T00:00:00Z",
        "auto_ms_per_request": 1,
        "portal_id": 1234567,
        # auth (docs/hubspot.md §3, §14.2): token -> list of scopes, or null for every scope
        "require_auth": True,
        "private_tokens": {PRIVATE_TOKEN: None},
        "oauth_clients": {OAUTH_CLIENT_ID: OAUTH_CLIENT_SECRET},
        "oauth_refresh_tokens": {OAUTH_REFRESH_TOKEN: None},
        "oauth_ttl_s": 1800,
        "rotate_refresh": False,
        "auth_kind": "private",  # "private" adds the daily rate-limit headers, "oauth" does not
        # list and batch
        "list_max": 100,
        "list_over_limit": "clamp",  # clamp | 400 (real behaviour unknown [I])
        "batch_max": 100,
        # 207 | 400_all (a 400 naming the failing ids) | 400_opaque (a 400 naming none)
        "batch_partial_mode": "207",
        "touch_on_noop": True,
        # merges (docs/hubspot.md §15): False keeps the primary's id for the merged record; True
        # makes a new record with a new id that both old ids answer for [I]
        "merge_new_id": False,
        "note_body_max": 65536,
        # search (docs/hubspot.md §7, §14.4)
        "search_max_limit": 200,
        "search_over_limit": "clamp",  # clamp | 400 [I]
        "search_max_groups": 5,
        "search_max_filters_per_group": 6,
        "search_max_filters_total": 18,
        "search_max_sorts": 1,
        "search_cap": 10000,
        "search_lag_ms": 0,
        "default_sort": "id",  # id | random
        "search_rate_headers": False,
        # rate limits (docs/hubspot.md §11, §14.5)
        "burst_max": 100,
        "burst_window_ms": 10000,
        "daily_max": 250000,
        "account_tz": "UTC",
        "search_rps": 5,
        "search_counts_toward_burst": True,
        "retry_after": "none",  # none | seconds | random
        # the default pipeline (docs/hubspot.md §4): stages with probability and isClosed metadata
        "pipelines": [{"id": "default", "label": "Sales Pipeline", "stages": [
            {"id": sid, "label": label, "probability": p, "isClosed": closed}
            for sid, label, p, closed in DEFAULT_STAGES]}],
    }


# --- time helpers -------------------------------------------------------------------------------

_EPOCH0 = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_ms(when: datetime) -> int:
    return (when - _EPOCH0) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    return _EPOCH0 + timedelta(milliseconds=ms)


def iso_ms(ms: int) -> str:
    return iso(from_ms(ms))


def parse_time_ms(text: str) -> int | None:
    """Epoch ms from a ms string, an ISO datetime or an ISO date; None if unreadable."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return to_ms(datetime.fromisoformat(text).replace(tzinfo=timezone.utc))
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return to_ms(parsed)


# --- records -------------------------------------------------------------------------------------

@dataclass(slots=True)
class Version:
    """One state of a deal. Search reads the newest version that is past the index lag."""

    at_ms: int  # the record's hs_lastmodifieddate
    written_ms: int  # when the write happened (index lag counts from here); 0 = always indexed
    props: dict[str, str | None]
    archived: bool
    source: str
    changed: dict[str, str | None]


@dataclass(slots=True)
class DealRecord:
    id: str
    num: int
    created_ms: int
    versions: list[Version]
    company_ids: list[str] = field(default_factory=list)
    note_ids: list[str] = field(default_factory=list)
    #: the record this id now answers for, once merged away (docs/hubspot.md §15)
    merged_into: str | None = None

    @property
    def current(self) -> Version:
        return self.versions[-1]


@dataclass(slots=True)
class SimpleRecord:
    """A company or a note: no history, no search."""

    id: str
    props: dict[str, str | None]
    created_ms: int
    updated_ms: int
    deal_ids: list[str] = field(default_factory=list)
    company_ids: list[str] = field(default_factory=list)


class HubSpotEmulator(Emulator):
    """HubSpot CRM v3 deals, in memory, on 127.0.0.1."""

    name = "hubspot-emulator"

    def __init__(self, seed: int = 0, *, realtime: bool = False):
        # realtime: the clock also follows the wall clock (a standalone server for the demo, whose
        # clients really sleep); tests keep the default virtual clock that moves only when told.
        self.realtime = realtime
        super().__init__(seed)

    def credentials(self) -> str:
        return (f"accepts the private-app token {PRIVATE_TOKEN} (for dealsync: "
                "DEALSYNC_<INSTANCE>_TOKEN, or `dealsync auth set INSTANCE token`)")

    # -- state -----------------------------------------------------------------------------------
    def reset(self, seed: int = 0) -> None:
        self.seed_value = seed
        self.config = default_config()
        start = parse_iso(self.config["epoch"])
        # A standalone server keeps real time from now, so its timestamps compare with other
        # services' (the "newest" conflict policy does); tests start at the fixed epoch.
        self.clock = (RealtimeClock() if self.realtime
                      else VirtualClock(start, self.config["auto_ms_per_request"]))
        self.deals: dict[str, DealRecord] = {}
        self._order: list[int] = []  # deal numbers in creation (= id) order, for list paging
        self.companies: dict[str, SimpleRecord] = {}
        self.owners: list[dict[str, Any]] = []
        self.notes: dict[str, SimpleRecord] = {}
        self.properties: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self._next = {"deal": DEAL_ID_START, "company": COMPANY_ID_START, "owner": OWNER_ID_START,
                      "note": NOTE_ID_START, "token": 1}
        self._access_tokens: dict[str, dict[str, Any]] = {}
        self._issued_refresh: dict[str, Any] = {}
        self._revoked_refresh: set[str] = set()
        self._burst = SlidingWindow(self.config["burst_max"], self.config["burst_window_ms"] / 1000)
        self._search_window = SlidingWindow(self.config["search_rps"], 1.0)
        self._daily: dict[str, int] = {}
        self.throttled: dict[str, int] = {}
        self.writes = 0
        self._correlation = 0
        self._data_version = 0
        self._last_write_ms = 0
        self._search_cache: dict[str, tuple[int, list[tuple[DealRecord, Version]]]] = {}
        self._time_memo: dict[str, int | None] = {}
        self._num_cache: dict[int, tuple[list[Any], list[int]]] = {}
        self._install_default_properties()
        super().reset(seed)

    def _install_default_properties(self) -> None:
        self.groups["dealinformation"] = {"name": "dealinformation", "label": "Deal information",
                                          "displayOrder": 0, "archived": False}
        builtin = [
            ("dealname", "Deal Name", "string", "text", None),
            ("amount", "Amount", "number", "number", None),
            ("dealstage", "Deal Stage", "enumeration", "select", []),
            ("pipeline", "Pipeline", "enumeration", "select", []),
            ("closedate", "Close Date", "datetime", "date", None),
            ("hubspot_owner_id", "Deal owner", "enumeration", "select", []),
            ("hs_priority", "Priority", "enumeration", "select", ["low", "medium", "high"]),
            ("description", "Deal Description", "string", "textarea", None),
            ("deal_currency_code", "Currency", "enumeration", "select",
             ["USD", "EUR", "GBP", "CNY", "JPY"]),
            ("createdate", "Create Date", "datetime", "date", None),
            ("hs_lastmodifieddate", "Last Modified Date", "datetime", "datetime", None),
            ("hs_object_id", "Record ID", "number", "number", None),
            (MERGED_IDS, "Merged record IDs", "string", "text", None),
        ]
        for order, (name, label, ptype, field_type, options) in enumerate(builtin):
            definition = self._definition(
                name=name, label=label, type=ptype, fieldType=field_type if field_type != "datetime"
                else "date", groupName="dealinformation", displayOrder=order,
                options=[{"label": v.title(), "value": v, "displayOrder": i, "hidden": False}
                         for i, v in enumerate(options or [])],
                read_only=name in READ_ONLY_DEAL_PROPERTIES, hubspot_defined=True)
            if name in ("dealstage", "pipeline", "hubspot_owner_id"):
                definition["externalOptions"] = True  # options come from pipelines / owners
            self.properties[name] = definition

    def _definition(self, *, name: str, label: str, type: str, fieldType: str, groupName: str,
                    displayOrder: int = -1, options: list[dict[str, Any]] | None = None,
                    description: str = "", hasUniqueValue: bool = False, formField: bool = False,
                    read_only: bool = False, hubspot_defined: bool = False) -> dict[str, Any]:
        stamp = iso(self.clock.now())
        return {
            "name": name, "label": label, "type": type, "fieldType": fieldType,
            "description": description, "groupName": groupName, "options": options or [],
            "displayOrder": displayOrder, "calculated": False, "externalOptions": False,
            "hasUniqueValue": hasUniqueValue, "hidden": False, "formField": formField,
            "hubspotDefined": hubspot_defined, "createdAt": stamp, "updatedAt": stamp,
            "archived": False,
            "modificationMetadata": {"archivable": not hubspot_defined,
                                     "readOnlyDefinition": hubspot_defined,
                                     "readOnlyValue": read_only},
        }

    # -- plain-Python control API (tests and the demo call these in-process) ---------------------
    def configure(self, **changes: Any) -> dict[str, Any]:
        """Like ``POST /__emu/config``: unknown keys are refused."""
        with self.lock:
            unknown = sorted(set(changes) - set(self.config))
            if unknown:
                raise KeyError(f"unknown config keys: {unknown}")
            self.config.update(changes)
            return dict(self.config)

    def now_ms(self) -> int:
        return to_ms(self.clock.now())

    def seed_deals(self, count: int, start: str | datetime | None = None, step_ms: int = 1000,
                   same_ts_block: int = 0, properties: dict[str, Any] | None = None) -> list[str]:
        """Create ``count`` deals whose ``hs_lastmodifieddate`` runs from ``start`` by ``step_ms``;
        the first ``same_ts_block`` deals share one timestamp (HubSpot bulk jobs do that). Without
        ``start`` the last timestamp is now. The clock moves forward if the data would be ahead of
        it. Seeded history counts as already indexed (no search lag)."""
        with self.lock:
            extra = self._validated(properties or {}, None)
            block = max(int(same_ts_block), 1)
            if start is None:
                start_ms = self.now_ms() - max(0, count - block) * step_ms
            else:
                start_ms = to_ms(start) if isinstance(start, datetime) else parse_time_ms(start)
                if start_ms is None:
                    raise ValueError(f"unreadable start time {start!r}")
            owners = [o["id"] for o in self.owners]
            ids = []
            for i in range(count):
                at = start_ms + max(0, i - block + 1) * step_ms
                n = self._next["deal"] - DEAL_ID_START
                stage = DEFAULT_STAGES[n % len(DEFAULT_STAGES)][0]
                props: dict[str, str | None] = {
                    "dealname": f"Deal {n + 1:05d}",
                    "amount": str(1000 + (n * 37 % 100) * 250),
                    "pipeline": "default", "dealstage": stage,
                    "closedate": iso_ms(at + 30 * 86_400_000),
                    "hs_priority": ("low", "medium", "high")[n % 3],
                    "hubspot_owner_id": owners[n % len(owners)] if owners else None,
                }
                props.update(extra)
                ids.append(self._create_deal(props, at_ms=at, written_ms=0, source="seed").id)
            self._catch_up_clock(start_ms + max(0, count - block) * step_ms)
            return ids

    def seed(self, companies: list[dict[str, Any]] | None = None,
             owners: list[dict[str, Any]] | None = None,
             deals: list[dict[str, Any]] | None = None) -> dict[str, list[str]]:
        """Seed a believable account. ``companies``: ``{"name","domain"}``; ``owners``:
        ``{"email","firstName","lastName"}``; ``deals``: ``{"properties", "companies": [ref],
        "owner": ref, "at": iso}`` where a ref is an index into this call's list or an id."""
        with self.lock:
            made: dict[str, list[str]] = {"companies": [], "owners": [], "deals": []}
            for spec in companies or []:
                made["companies"].append(self.create_company(spec).id)
            for spec in owners or []:
                made["owners"].append(self.create_owner(**spec)["id"])

            def ref(value: Any, kind: str) -> str:
                return made[kind][value] if isinstance(value, int) else str(value)

            for spec in deals or []:
                props = dict(spec.get("properties") or {})
                if "owner" in spec:
                    props["hubspot_owner_id"] = ref(spec["owner"], "owners")
                props.setdefault("pipeline", "default")
                at = parse_time_ms(spec["at"]) if spec.get("at") else self.now_ms()
                record = self._create_deal(self._validated(props, None), at_ms=at, written_ms=0,
                                           source="seed")
                for company in spec.get("companies") or []:
                    self.associate(record.id, ref(company, "companies"))
                made["deals"].append(record.id)
                self._catch_up_clock(at)
            return made

    def create_company(self, spec: dict[str, Any]) -> SimpleRecord:
        with self.lock:
            now = self.now_ms()
            cid = str(self._next["company"])
            self._next["company"] += 1
            props = {"name": spec.get("name"), "domain": spec.get("domain"),
                     **(spec.get("properties") or {})}
            props.update({"hs_object_id": cid, "createdate": iso_ms(now),
                          "hs_lastmodifieddate": iso_ms(now)})
            record = SimpleRecord(cid, props, now, now)
            self.companies[cid] = record
            return record

    def create_owner(self, email: str, firstName: str = "", lastName: str = "") -> dict[str, Any]:
        with self.lock:
            oid = self._next["owner"]
            self._next["owner"] += 1
            stamp = iso(self.clock.now())
            owner = {"id": str(oid), "email": email, "firstName": firstName,
                     "lastName": lastName, "userId": 9_000_000 + oid, "createdAt": stamp,
                     "updatedAt": stamp, "archived": False}
            self.owners.append(owner)
            return owner

    def associate(self, deal_id: str, company_id: str) -> None:
        with self.lock:
            deal, company = self.deals[str(deal_id)], self.companies[str(company_id)]
            if company.id not in deal.company_ids:
                deal.company_ids.append(company.id)
                company.deal_ids.append(deal.id)

    def mutate(self, deal_id: str, properties: dict[str, Any], at: str | datetime | None = None,
               actor: str = "rep") -> dict[str, Any]:
        """An edit as a sales rep (or a HubSpot workflow: ``actor="system"``) makes it: validated
        like the API, stamped ``at`` (default now), subject to the search index lag."""
        with self.lock:
            record = self._live_deal(str(deal_id))
            if record is None:
                raise KeyError(f"no deal {deal_id}")
            at_ms = None if at is None else (to_ms(at) if isinstance(at, datetime)
                                             else parse_time_ms(at))
            self._write(record, self._validated(properties, record.current.props),
                        at_ms=at_ms, source=f"mutate:{actor}")
            return self._render(record, record.current, list(record.current.props))

    def mutate_company(self, company_id: str, properties: dict[str, Any]) -> None:
        with self.lock:
            company = self.companies[str(company_id)]
            company.props.update({k: None if v is None else str(v) for k, v in properties.items()})
            company.updated_ms = self.now_ms()
            company.props["hs_lastmodifieddate"] = iso_ms(company.updated_ms)

    def bulk_touch(self, ids: list[str] | None = None, count: int | None = None,
                   at: str | datetime | None = None) -> list[str]:
        """Give these deals (or the first ``count``) one identical ``hs_lastmodifieddate``, as a
        HubSpot bulk job does; nothing else changes."""
        with self.lock:
            at_ms = self.now_ms() if at is None else (to_ms(at) if isinstance(at, datetime)
                                                       else parse_time_ms(at))
            if ids is None:
                ids = list(self.deals)[:count]
            touched = []
            for deal_id in ids:
                record = self._live_deal(str(deal_id))
                if record is not None:
                    self._write(record, {}, at_ms=at_ms, source="bulk_touch", force=True)
                    touched.append(record.id)
            return touched

    def archive(self, ids: list[str]) -> list[str]:
        with self.lock:
            archived = []
            for deal_id in ids:
                record = self._live_deal(str(deal_id))
                if record is not None:
                    self._write(record, {}, source="archive", force=True, archived=True)
                    archived.append(record.id)
            return archived

    def merge_deals(self, primary_id: str, merged_id: str) -> dict[str, Any]:
        """Merge deal ``merged_id`` into ``primary_id`` as ``POST .../merge`` does
        (docs/hubspot.md §15); return the merged record as that call answers it.

        The primary keeps its property values; the merged deal's companies and notes move to
        it; ``hs_merged_object_ids`` lists the ids merged in. The merged-away id still answers
        GET, batch read and writes with the merged record, and search no longer finds it. With
        ``merge_new_id`` the merged record is a new deal with a new id, and both old ids answer
        with it."""
        with self.lock:
            primary, merged = self._live_deal(str(primary_id)), self._live_deal(str(merged_id))
            if primary is None or merged is None:
                raise KeyError(str(primary_id) if primary is None else str(merged_id))
            if primary.id == merged.id:
                raise ValueError("a deal cannot be merged into itself")
            absorbed = [primary.id] if self.config["merge_new_id"] else []
            absorbed += [*_id_list(primary), merged.id, *_id_list(merged)]
            if self.config["merge_new_id"]:
                now = self.now_ms()
                props = {k: v for k, v in primary.current.props.items()
                         if k not in READ_ONLY_DEAL_PROPERTIES}
                target = self._create_deal({**props, MERGED_IDS: ";".join(absorbed)},
                                           at_ms=now, written_ms=now, source="merge")
                away = [primary, merged]
            else:
                self._write(primary, {MERGED_IDS: ";".join(absorbed)}, source="merge")
                target, away = primary, [merged]
            for record in away:
                self._absorb(target, record)
            self.writes += 1
            return self._render(target, target.current, None)

    def _absorb(self, target: DealRecord, record: DealRecord) -> None:
        """``record`` merged into ``target``: its associations move, its id answers for
        ``target`` from now on, and search stops finding it."""
        for company_id in record.company_ids:
            company = self.companies[company_id]
            company.deal_ids = [d for d in company.deal_ids if d != record.id]
            if company_id not in target.company_ids:
                target.company_ids.append(company_id)
                company.deal_ids.append(target.id)
        for note_id in record.note_ids:
            note = self.notes[note_id]
            note.deal_ids = list(dict.fromkeys(target.id if d == record.id else d
                                               for d in note.deal_ids))
            if note_id not in target.note_ids:
                target.note_ids.append(note_id)
        record.company_ids, record.note_ids = [], []
        record.merged_into = target.id
        self._write(record, {}, source="merge", force=True, archived=True)

    def history(self, deal_id: str) -> list[dict[str, Any]]:
        """Every version of a deal: when, by what, which properties changed."""
        with self.lock:
            record = self.deals[str(deal_id)]
            return [{"at": iso_ms(v.at_ms),
                     "written_at": iso_ms(v.written_ms) if v.written_ms else None,
                     "source": v.source, "changed": dict(v.changed), "archived": v.archived,
                     "properties": dict(v.props)} for v in record.versions]

    def deal(self, deal_id: str) -> dict[str, Any]:
        """The current state of a deal with every property set on it (archived ones too)."""
        with self.lock:
            record = self.deals[str(deal_id)]
            return self._render(record, record.current, list(record.current.props))

    def notes_for(self, deal_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [self._render_simple(self.notes[n], list(self.notes[n].props))
                    for n in self.deals[str(deal_id)].note_ids]

    def expire_tokens(self, tokens: list[str] | None = None) -> int:
        """Expire OAuth access tokens now (all, or the listed ones); private tokens never expire."""
        with self.lock:
            now = self.now_ms()
            expired = 0
            for token, info in self._access_tokens.items():
                if tokens is None or token in tokens:
                    info["expires_ms"] = min(info["expires_ms"], now)
                    expired += 1
            return expired

    def stats(self) -> dict[str, Any]:
        routes: dict[str, int] = {}
        for key, count in self.calls.items():
            label = re.sub(r"/\d+(?=/|$)", "/{id}", key)
            routes[label] = routes.get(label, 0) + count
        return {"calls": dict(self.calls), "routes": routes, "rate_limited": dict(self.throttled),
                "daily_used": self._daily.get(self._day_key(self.clock.now()), 0),
                "deals": len(self.deals), "writes": self.writes, "now": iso(self.clock.now())}

    # -- the deal store ---------------------------------------------------------------------------
    def _create_deal(self, props: dict[str, str | None], *, at_ms: int, written_ms: int,
                     source: str) -> DealRecord:
        num = self._next["deal"]
        self._next["deal"] += 1
        deal_id = str(num)
        props = {k: v for k, v in props.items() if v is not None}
        props.update({"hs_object_id": deal_id, "createdate": iso_ms(at_ms),
                      "hs_lastmodifieddate": iso_ms(at_ms)})
        record = DealRecord(deal_id, num, at_ms,
                            [Version(at_ms, written_ms, props, False, source, dict(props))])
        self.deals[deal_id] = record
        self._order.append(num)
        self._data_version += 1
        if written_ms:
            self._last_write_ms = max(self._last_write_ms, written_ms)
        return record

    def _write(self, record: DealRecord, changes: dict[str, str | None], *,
               at_ms: int | None = None, source: str, force: bool = False,
               archived: bool | None = None) -> Version:
        """Append a version; a write that changes nothing still bumps the modified time unless
        ``touch_on_noop`` is off (docs/hubspot.md §14.3)."""
        now = self.now_ms()
        current = record.current
        changed = {k: v for k, v in changes.items() if current.props.get(k) != v}
        if not changed and not force and not self.config["touch_on_noop"]:
            return current
        at = now if at_ms is None else at_ms
        props = dict(current.props)
        for key, value in changes.items():
            if value is None:
                props.pop(key, None)
            else:
                props[key] = value
        props["hs_lastmodifieddate"] = iso_ms(at)
        version = Version(at, now, props, current.archived if archived is None else archived,
                          source, changed)
        record.versions.append(version)
        self.writes += 1
        self._data_version += 1
        self._last_write_ms = max(self._last_write_ms, now)
        return version

    def _live_deal(self, deal_id: str) -> DealRecord | None:
        record = self.deals.get(deal_id)
        return None if record is None or record.current.archived else record

    def _resolve(self, deal_id: str) -> DealRecord | None:
        """The record an id answers for: itself, or the deal it was merged into
        (docs/hubspot.md §15)."""
        record = self.deals.get(deal_id)
        for _ in range(len(self.deals)):
            if record is None or record.merged_into is None:
                break
            record = self.deals.get(record.merged_into)
        return record

    def _resolve_live(self, deal_id: str) -> DealRecord | None:
        record = self._resolve(deal_id)
        return None if record is None or record.current.archived else record

    def _catch_up_clock(self, ms: int) -> None:
        if ms > self.now_ms():
            self.clock.set(from_ms(ms))

    # -- validation (docs/hubspot.md §14.3) -------------------------------------------------------
    def _validated(self, incoming: dict[str, Any], current: dict[str, Any] | None
                   ) -> dict[str, str | None]:
        """Normalized values, or ValueError carrying the HubSpot error list (Python callers)."""
        values, errors = self._check_properties(incoming, current)
        if errors:
            raise ValueError(json.dumps(errors))
        return values

    def _check_properties(self, incoming: Any, current: dict[str, Any] | None
                          ) -> tuple[dict[str, str | None], list[dict[str, Any]]]:
        if not isinstance(incoming, dict):
            return {}, [_sub_error("INVALID_INPUT", "properties", "properties must be an object")]
        values: dict[str, str | None] = {}
        errors: list[dict[str, Any]] = []
        for name, raw in incoming.items():
            definition = self.properties.get(name)
            if definition is None:
                errors.append(_sub_error("PROPERTY_DOESNT_EXIST", name,
                                         f'Property "{name}" does not exist'))
                continue
            if definition["modificationMetadata"]["readOnlyValue"]:
                errors.append(_sub_error(
                    "READ_ONLY_VALUE", name,
                    f'"{name}" is a read only property; its value cannot be set.'))
                continue
            if raw is None or raw == "":
                values[name] = None
                continue
            text = ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
            problem, normalized = self._check_value(definition, text)
            if problem:
                errors.append(_sub_error(problem[0], name, problem[1]))
            else:
                values[name] = normalized
        stage = values.get("dealstage")
        if stage is not None and not any(e["in"] == "dealstage" for e in errors):
            pipeline = values.get("pipeline") or (current or {}).get("pipeline") or "default"
            stages = [s["id"] for p in self.config["pipelines"] if p["id"] == pipeline
                      for s in p["stages"]]
            if stage not in stages:
                errors.append(_sub_error("INVALID_OPTION", "dealstage",
                                         f"{stage} was not one of the allowed options: {stages}"))
        return values, errors

    def _check_value(self, definition: dict[str, Any], text: str
                     ) -> tuple[tuple[str, str] | None, str | None]:
        name, ptype = definition["name"], definition["type"]
        if ptype == "number":
            try:
                if not math.isfinite(float(text)):
                    raise ValueError
            except ValueError:
                return ("INVALID_DECIMAL", f"{text} was not a valid number."), None
            return None, text.strip()
        if ptype in ("datetime", "date"):
            ms = parse_time_ms(text)
            if ms is None:
                return ("INVALID_DATE", f"{text} was not a valid date."), None
            return None, iso_ms(ms) if ptype == "datetime" else iso_ms(ms)[:10]
        if ptype == "bool":
            if text.lower() not in ("true", "false"):
                return ("INVALID_BOOLEAN", f"{text} was not a valid boolean."), None
            return None, text.lower()
        if ptype == "enumeration":
            if name == "dealstage":
                return None, text  # checked against the deal's pipeline by the caller
            if name == "pipeline":
                allowed = [p["id"] for p in self.config["pipelines"]]
            elif name == "hubspot_owner_id":
                allowed = [o["id"] for o in self.owners]
                if text not in allowed:  # [I]: HubSpot's code for an unknown owner
                    return ("INVALID_OWNER_ID", f"{text} is not a valid owner id."), None
                return None, text
            else:
                allowed = [o["value"] for o in definition["options"]]
            chosen = text.split(";") if definition["fieldType"] == "checkbox" else [text]
            bad = [v for v in chosen if v not in allowed]
            if bad:
                return ("INVALID_OPTION",
                        f"{bad[0]} was not one of the allowed options: {allowed}"), None
            return None, text
        return None, text

    # -- errors -----------------------------------------------------------------------------------
    def correlation_id(self) -> str:
        self._correlation += 1
        return str(uuid.uuid5(uuid.NAMESPACE_URL,
                              f"hubspot-emulator:{self.seed_value}:{self._correlation}"))

    def error_body(self, category: str, message: str, **extra: Any) -> dict[str, Any]:
        return {"status": "error", "message": message, "correlationId": self.correlation_id(),
                "category": category, **extra}

    def fail(self, status: int, category: str, message: str, **extra: Any) -> HttpError:
        return HttpError(status, self.error_body(category, message, **extra))

    def _validation_error(self, errors: list[dict[str, Any]], ids: list[str] | None = None
                          ) -> dict[str, Any]:
        summary = [{"isValid": False, "message": e["message"], "error": e["code"], "name": e["in"]}
                   for e in errors]
        context: dict[str, Any] = {"propertyName": sorted({e["in"] for e in errors})}
        if ids is not None:
            context["ids"] = ids
        return self.error_body("VALIDATION_ERROR",
                               f"Property values were not valid: {json.dumps(summary)}",
                               context=context, errors=errors)

    def _bad_request(self, message: str, **extra: Any) -> HttpError:
        return self.fail(400, "VALIDATION_ERROR", message, **extra)

    def not_found(self, req: Request) -> Response:
        return Response(404, self.error_body("OBJECT_NOT_FOUND",
                                             f"No route for {req.method} {req.path}"))

    def _deal_not_found(self, deal_id: str) -> HttpError:
        return self.fail(404, "OBJECT_NOT_FOUND", NOT_FOUND_MESSAGE, context={"id": [deal_id]})

    # -- auth (docs/hubspot.md §3, §14.2) ---------------------------------------------------------
    def _authorize(self, req: Request, scope: str) -> None:
        if not self.config["require_auth"]:
            return
        header = req.header("authorization") or ""
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        missing = ("Authentication credentials not found. This API supports OAuth 2.0 "
                   "authentication and you can find more details at "
                   "https://developers.hubspot.com/docs/methods/auth/oauth-overview")
        if not token:
            raise self.fail(401, "INVALID_AUTHENTICATION", missing)
        if token in self.config["private_tokens"]:
            scopes = self.config["private_tokens"][token]
        elif token in self._access_tokens:
            info = self._access_tokens[token]
            now = self.now_ms()
            if now >= info["expires_ms"]:
                ago = max(1, (now - info["expires_ms"]) // 1000)
                raise self.fail(401, "INVALID_AUTHENTICATION", f"The OAuth token used to make "
                                f"this call expired {ago} second(s) ago.")
            scopes = info["scopes"]
        else:
            raise self.fail(401, "INVALID_AUTHENTICATION", missing)
        if scopes is not None and scope not in scopes:
            raise self.fail(
                403, "MISSING_SCOPES",
                "This app hasn't been granted all required scopes to make this call. Read more "
                "about required scopes here: https://developers.hubspot.com/scopes.",
                context={"requiredScopes": [scope]},
                errors=[{"message": "One or more of the following scopes are required.",
                         "context": {"requiredScopes": [scope]}}])

    def _oauth_token(self, req: Request) -> Any:
        form = req.form()
        if form.get("grant_type") != "refresh_token":
            raise HttpError(400, {"status": "BAD_GRANT_TYPE",
                                  "message": "grant_type must be refresh_token",
                                  "correlationId": self.correlation_id()})
        client_id = form.get("client_id", "")
        if not client_id or self.config["oauth_clients"].get(client_id) != form.get(
                "client_secret"):
            raise HttpError(400, {"status": "BAD_CLIENT_ID",
                                  "message": "missing or unknown client id or secret",
                                  "correlationId": self.correlation_id()})
        refresh = form.get("refresh_token", "")
        known = {**self.config["oauth_refresh_tokens"], **self._issued_refresh}
        if refresh not in known or refresh in self._revoked_refresh:
            raise HttpError(400, {"status": "BAD_REFRESH_TOKEN",
                                  "message": "missing or unknown refresh token",
                                  "correlationId": self.correlation_id()})
        scopes = known[refresh]
        number = self._next["token"]
        self._next["token"] += 1
        access = f"emu-access-{self.seed_value}-{number}"
        ttl = int(self.config["oauth_ttl_s"])
        self._access_tokens[access] = {"expires_ms": self.now_ms() + ttl * 1000, "scopes": scopes}
        if self.config["rotate_refresh"]:
            self._revoked_refresh.add(refresh)
            refresh = f"emu-refresh-{self.seed_value}-{number}"
            self._issued_refresh[refresh] = scopes
        return {"access_token": access, "refresh_token": refresh, "expires_in": ttl,
                "token_type": "bearer"}

    # -- rate limits (docs/hubspot.md §11, §14.5) -------------------------------------------------
    def dispatch(self, req: Request) -> Response | None:
        with self.lock:
            if not self.realtime:
                self.clock.tick_ms = int(self.config["auto_ms_per_request"])
            logged = len(self.log)
            response = super().dispatch(req)
            if response is None:
                return None
            if response.status == 429 and len(self.log) > logged and \
                    isinstance(response.body, dict):
                self.log[-1]["policy"] = response.body.get("policyName")  # which limit was hit
            if self._carries_rate_headers(req):
                response.headers.update(self._rate_headers())
            return response

    def _carries_rate_headers(self, req: Request) -> bool:
        if req.path.startswith(("/__emu/", "/oauth/")):
            return False
        return self.config["search_rate_headers"] or not SEARCH_PATH.fullmatch(req.path)

    def _rate_headers(self) -> dict[str, str]:
        cfg = self.config
        self._sync_windows()
        now = self.clock.now()
        self._burst.seconds_until_free(now.timestamp())  # trims the window
        remaining = max(0, cfg["burst_max"] - len(self._burst.events))
        headers = {"X-HubSpot-RateLimit-Max": str(cfg["burst_max"]),
                   "X-HubSpot-RateLimit-Remaining": str(remaining),
                   "X-HubSpot-RateLimit-Interval-Milliseconds": str(cfg["burst_window_ms"])}
        if cfg["auth_kind"] == "private":
            used = self._daily.get(self._day_key(now), 0)
            headers["X-HubSpot-RateLimit-Daily"] = str(cfg["daily_max"])
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(max(0, cfg["daily_max"] - used))
        return headers

    def _sync_windows(self) -> None:
        cfg = self.config
        self._burst.limit = int(cfg["burst_max"])
        self._burst.window_s = cfg["burst_window_ms"] / 1000
        self._search_window.limit = int(cfg["search_rps"])

    def _day_key(self, when: datetime) -> str:
        return when.astimezone(ZoneInfo(self.config["account_tz"])).date().isoformat()

    def _seconds_to_midnight(self, when: datetime) -> float:
        local = when.astimezone(ZoneInfo(self.config["account_tz"]))
        midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(),
                                    tzinfo=local.tzinfo)
        return (midnight - local).total_seconds()

    def rate_limit(self, req: Request) -> Response | None:
        if req.path.startswith("/oauth/"):
            return None
        self._sync_windows()
        now_dt = self.clock.now()
        now = now_dt.timestamp()
        day = self._day_key(now_dt)
        search = SEARCH_PATH.fullmatch(req.path) is not None
        counts_burst = not search or self.config["search_counts_toward_burst"]
        if self._daily.get(day, 0) >= self.config["daily_max"]:
            return self._throttle("DAILY", self._seconds_to_midnight(now_dt))
        if search and self._search_window.seconds_until_free(now) > 0:
            return self._throttle("SECONDLY", self._search_window.seconds_until_free(now))
        if counts_burst and self._burst.seconds_until_free(now) > 0:
            return self._throttle("TEN_SECONDLY_ROLLING", self._burst.seconds_until_free(now))
        if search:
            self._search_window.try_take(now)
        if counts_burst:
            self._burst.try_take(now)
        self._daily[day] = self._daily.get(day, 0) + 1
        return None

    def _throttle(self, policy: str, wait_s: float) -> Response:
        self.throttled[policy] = self.throttled.get(policy, 0) + 1
        body = {"status": "error", "message": POLICY_MESSAGES[policy], "errorType": "RATE_LIMIT",
                "correlationId": self.correlation_id(), "policyName": policy,
                "requestId": str(uuid.uuid5(uuid.NAMESPACE_OID,
                                            f"{self.seed_value}:{self._correlation}"))}
        if policy == "SECONDLY":
            body["groupName"] = f"publicapi:search-secondly:{self.config['portal_id']}"
        headers = {}
        mode = self.config["retry_after"]
        if mode == "seconds":
            headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
        elif mode == "random":
            headers["Retry-After"] = str(self.random.randint(1, 10))
        return Response(429, body, headers)

    # -- routes ----------------------------------------------------------------------------------
    def install_routes(self) -> None:
        api = self._api
        self.route("POST", r"/oauth/v1/token", self._oauth_token)
        self.route("POST", r"/oauth/v3/token", self._oauth_token)
        api("GET", DEALS, self._list_deals, SCOPE_DEALS_READ)
        api("POST", DEALS, self._create_deal_route, SCOPE_DEALS_WRITE)
        api("POST", DEALS + r"/search", self._search, SCOPE_DEALS_READ)
        api("POST", DEALS + r"/batch/read", self._batch_read, SCOPE_DEALS_READ)
        api("POST", DEALS + r"/batch/update", self._batch_update, SCOPE_DEALS_WRITE)
        # docs/hubspot.md §15: the reference shows /crm/v3/objects/0-3/merge
        api("POST", DEALS + r"/merge", self._merge_route, SCOPE_DEALS_WRITE)
        api("POST", r"/crm/v3/objects/0-3/merge", self._merge_route, SCOPE_DEALS_WRITE)
        api("GET", DEALS + r"/(?P<id>[^/]+)", self._get_deal, SCOPE_DEALS_READ)
        api("PATCH", DEALS + r"/(?P<id>[^/]+)", self._patch_deal, SCOPE_DEALS_WRITE)
        api("DELETE", DEALS + r"/(?P<id>[^/]+)", self._delete_deal, SCOPE_DEALS_WRITE)
        api("GET", r"/crm/v3/properties/deals", self._list_properties, SCOPE_SCHEMAS_READ)
        api("POST", r"/crm/v3/properties/deals", self._create_property, SCOPE_SCHEMAS_WRITE)
        api("GET", r"/crm/v3/properties/deals/groups", self._list_groups, SCOPE_SCHEMAS_READ)
        api("POST", r"/crm/v3/properties/deals/groups", self._create_group, SCOPE_SCHEMAS_WRITE)
        api("GET", r"/crm/v3/properties/deals/(?P<name>[^/]+)", self._get_property,
            SCOPE_SCHEMAS_READ)
        api("PATCH", r"/crm/v3/properties/deals/(?P<name>[^/]+)", self._patch_property,
            SCOPE_SCHEMAS_WRITE)
        api("GET", r"/crm/v3/pipelines/deals", self._list_pipelines, SCOPE_DEALS_READ)
        api("GET", r"/crm/v3/pipelines/deals/(?P<id>[^/]+)", self._get_pipeline, SCOPE_DEALS_READ)
        api("GET", r"/crm/v3/owners/?", self._list_owners, SCOPE_OWNERS_READ)
        api("GET", r"/crm/v3/owners/(?P<id>[^/]+)", self._get_owner, SCOPE_OWNERS_READ)
        api("GET", r"/crm/v3/objects/companies/(?P<id>[^/]+)", self._get_company,
            SCOPE_COMPANIES_READ)
        api("POST", r"/crm/v3/objects/companies/batch/read", self._batch_read_companies,
            SCOPE_COMPANIES_READ)
        api("GET", r"/crm/v4/objects/deals/(?P<id>[^/]+)/associations/companies",
            self._deal_companies_v4, SCOPE_DEALS_READ)
        api("POST", r"/crm/v4/associations/deals/companies/batch/read",
            self._batch_deal_companies_v4, SCOPE_DEALS_READ)
        api("POST", r"/crm/v3/objects/notes", self._create_note, SCOPE_DEALS_WRITE)
        api("POST", r"/crm/v3/objects/notes/batch/create", self._batch_create_notes,
            SCOPE_DEALS_WRITE)
        api("GET", r"/crm/v3/objects/notes", self._list_notes, SCOPE_DEALS_READ)
        api("GET", r"/crm/v3/objects/notes/(?P<id>[^/]+)", self._get_note, SCOPE_DEALS_READ)
        # control API beyond the kit's reset/config/clock/faults/requests/stats
        self.route("POST", r"/__emu/seed/deals", self._ctl_seed_deals)
        self.route("POST", r"/__emu/seed", self._ctl_seed)
        self.route("POST", r"/__emu/mutate", self._ctl_mutate)
        self.route("POST", r"/__emu/bulk_touch", lambda r: {"ids": self.bulk_touch(**_only(
            r.json() or {}, "ids", "count", "at"))})
        self.route("POST", r"/__emu/archive", lambda r: {"ids": self.archive(
            (r.json() or {}).get("ids", []))})
        self.route("GET", r"/__emu/deals/(?P<id>\d+)/history", self._ctl_history)
        self.route("POST", r"/__emu/expire_tokens", lambda r: {"expired": self.expire_tokens(
            (r.json() or {}).get("tokens"))})

    def _api(self, method: str, pattern: str, handler: Callable[[Request], Any],
             scope: str) -> None:
        def guarded(req: Request) -> Any:
            self._authorize(req, scope)
            return handler(req)
        self.route(method, pattern, guarded)

    def _ctl_config(self, req: Request) -> Any:
        body = req.json() or {}
        try:
            return self.configure(**body)
        except KeyError as exc:
            raise HttpError(400, {"message": str(exc.args[0]),
                                  "known": sorted(self.config)}) from None

    def _ctl_seed_deals(self, req: Request) -> Any:
        body = req.json() or {}
        try:
            ids = self.seed_deals(**_only(body, "count", "start", "step_ms", "same_ts_block",
                                          "properties"))
        except ValueError as exc:
            raise HttpError(400, {"message": str(exc)}) from None
        return {"count": len(ids), "first_id": ids[0] if ids else None,
                "last_id": ids[-1] if ids else None}

    def _ctl_seed(self, req: Request) -> Any:
        try:
            return self.seed(**_only(req.json() or {}, "companies", "owners", "deals"))
        except (KeyError, IndexError) as exc:
            raise HttpError(400, {"message": f"unknown reference: {exc}"}) from None
        except ValueError as exc:
            raise HttpError(400, {"message": "invalid properties", "errors": json.loads(str(exc))}
                            ) from None

    def _ctl_mutate(self, req: Request) -> Any:
        body = req.json() or {}
        try:
            if body.get("object") == "companies":
                self.mutate_company(body["id"], body.get("properties") or {})
                return self._render_simple(self.companies[str(body["id"])], ["name", "domain"])
            return self.mutate(body["id"], body.get("properties") or {}, at=body.get("at"),
                               actor=body.get("actor", "rep"))
        except KeyError as exc:
            raise HttpError(404, {"message": f"not found: {exc}"}) from None
        except ValueError as exc:
            raise HttpError(400, {"message": "invalid properties", "errors": json.loads(str(exc))}
                            ) from None

    def _ctl_history(self, req: Request) -> Any:
        if req.params["id"] not in self.deals:
            raise HttpError(404, {"message": f"no deal {req.params['id']}"})
        return {"id": req.params["id"], "versions": self.history(req.params["id"])}

    # -- rendering -------------------------------------------------------------------------------
    def _requested(self, req: Request) -> list[str] | None:
        names = [n.strip() for value in req.query.get("properties", []) for n in value.split(",")]
        names = [n for n in names if n]
        return names or None

    def _render(self, record: DealRecord, version: Version, names: list[str] | None,
                associations: list[str] = ()) -> dict[str, Any]:
        wanted = list(DEFAULT_DEAL_PROPERTIES) if names is None else names
        props = version.props
        properties = {n: props.get(n) for n in wanted if n in self.properties or n in props}
        for name in ALWAYS_RETURNED:
            properties[name] = props.get(name)
        out: dict[str, Any] = {"id": record.id, "properties": properties,
                               "createdAt": iso_ms(record.created_ms),
                               "updatedAt": props["hs_lastmodifieddate"],
                               "archived": version.archived}
        if version.archived:
            out["archivedAt"] = iso_ms(version.written_ms or version.at_ms)
        assoc = {}
        if "companies" in associations and record.company_ids:
            assoc["companies"] = {"results": [{"id": c, "type": "deal_to_company"}
                                              for c in record.company_ids]}
        if "notes" in associations and record.note_ids:
            assoc["notes"] = {"results": [{"id": n, "type": "deal_to_note"}
                                          for n in record.note_ids]}
        if assoc:
            out["associations"] = assoc
        return out

    def _render_simple(self, record: SimpleRecord, names: list[str] | None,
                       associations: list[str] = ()) -> dict[str, Any]:
        names = names or [n for n in ("name", "domain", "hs_note_body", "hs_timestamp")
                          if n in record.props]
        properties = {n: record.props.get(n) for n in names}
        for name in ("hs_object_id", "hs_lastmodifieddate"):
            properties[name] = record.props.get(name)
        out: dict[str, Any] = {"id": record.id, "properties": properties,
                               "createdAt": iso_ms(record.created_ms),
                               "updatedAt": iso_ms(record.updated_ms), "archived": False}
        if "deals" in associations and record.deal_ids:
            out["associations"] = {"deals": {"results": [{"id": d, "type": "note_to_deal"}
                                                         for d in record.deal_ids]}}
        return out

    def _batch_body(self, results: list[Any], errors: list[dict[str, Any]], started: str
                    ) -> Response:
        body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": started,
                                "completedAt": iso(self.clock.now())}
        if errors:
            body["numErrors"] = len(errors)
            body["errors"] = errors
        body["links"] = {}
        return Response(207 if errors else 200, body)

    def _inputs(self, body: Any, limit: int | None = None) -> list[dict[str, Any]]:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
            raise self._bad_request("Invalid input JSON: inputs must be a list of objects")
        limit = self.config["batch_max"] if limit is None else limit
        if len(inputs) > limit:
            raise self._bad_request(f"Batch input size of {len(inputs)} exceeds the limit of "
                                    f"{limit}", context={"maxSize": [str(limit)]})
        return inputs

    # -- deals: list, get, create, patch, delete ------------------------------------------------
    def _list_deals(self, req: Request) -> Any:
        limit = self._int_arg(req, "limit", 10)
        if limit > self.config["list_max"]:
            if self.config["list_over_limit"] == "400":
                raise self._bad_request(f"limit must be at most {self.config['list_max']}")
            limit = self.config["list_max"]
        if limit < 1:
            raise self._bad_request("limit must be at least 1")
        after = req.arg("after")
        start = 0
        if after:
            try:
                start = int(base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)).decode())
            except ValueError:
                raise self._bad_request(f"invalid after cursor {after!r}") from None
        archived = (req.arg("archived", "false") or "false").lower() == "true"
        names = self._requested(req)
        associations = [a for v in req.query.get("associations", []) for a in v.split(",")]
        results = []
        last = None
        position = bisect_right(self._order, start)
        more = False
        while position < len(self._order):
            record = self.deals[str(self._order[position])]
            position += 1
            if record.current.archived != archived or record.merged_into is not None:
                continue
            if len(results) == limit:
                more = True
                break
            results.append(self._render(record, record.current, names, associations))
            last = record.num
        body: dict[str, Any] = {"results": results}
        if more and last is not None:
            cursor = base64.urlsafe_b64encode(str(last).encode()).decode().rstrip("=")
            body["paging"] = {"next": {"after": cursor,
                                       "link": f"{req.path}?after={cursor}&limit={limit}"}}
        return body

    def _get_deal(self, req: Request) -> Any:
        record = self._find_deal(req)
        archived = (req.arg("archived", "false") or "false").lower() == "true"
        if record is None or record.current.archived != archived:
            raise self._deal_not_found(req.params["id"])
        associations = [a for v in req.query.get("associations", []) for a in v.split(",")]
        return self._render(record, record.current, self._requested(req), associations)

    def _find_deal(self, req: Request) -> DealRecord | None:
        id_property = req.arg("idProperty")
        if id_property and id_property != "hs_object_id":
            return self._by_property(id_property, req.params["id"])
        return self._resolve(req.params["id"])

    def _by_property(self, name: str, value: str) -> DealRecord | None:
        for record in self.deals.values():
            if record.current.props.get(name) == value and not record.current.archived:
                return record
        return None

    def _create_deal_route(self, req: Request) -> Any:
        body = req.json() or {}
        values, errors = self._check_properties(body.get("properties", {}), None)
        companies = self._deal_associations(body.get("associations") or [])
        if errors:
            raise HttpError(400, self._validation_error(errors))
        values.setdefault("pipeline", "default")
        now = self.now_ms()
        record = self._create_deal(values, at_ms=now, written_ms=now, source="api:create")
        self.writes += 1
        for company in companies:
            self.associate(record.id, company)
        return Response(201, self._render(record, record.current, list(record.current.props),
                                          ["companies"]))

    def _deal_associations(self, specs: list[dict[str, Any]]) -> list[str]:
        companies = []
        for spec in specs:
            target = str((spec.get("to") or {}).get("id", ""))
            types = {t.get("associationTypeId") for t in spec.get("types") or []}
            if not types or not types <= {DEAL_TO_COMPANY_PRIMARY, DEAL_TO_COMPANY}:
                raise self._bad_request(f"unsupported association types {sorted(map(str, types))}")
            if target not in self.companies:
                raise self._bad_request(f"company {target} does not exist")
            companies.append(target)
        return companies

    def _merge_route(self, req: Request) -> Any:
        body = req.json() or {}
        ids = [body.get("primaryObjectId") if isinstance(body, dict) else None,
               body.get("objectIdToMerge") if isinstance(body, dict) else None]
        if not all(isinstance(i, (str, int)) and str(i).strip() for i in ids):
            raise self._bad_request("primaryObjectId and objectIdToMerge are required")
        primary, merged = (str(i).strip() for i in ids)
        if primary == merged:
            raise self._bad_request(f"cannot merge object {primary} into itself")
        try:
            return self.merge_deals(primary, merged)
        except KeyError as exc:
            raise self._deal_not_found(exc.args[0]) from None

    def _patch_deal(self, req: Request) -> Any:
        record = self._find_deal(req)
        if record is None or record.current.archived:
            raise self._deal_not_found(req.params["id"])
        body = req.json() or {}
        values, errors = self._check_properties(body.get("properties", {}), record.current.props)
        if errors:
            raise HttpError(400, self._validation_error(errors))
        self._write(record, values, source="api:patch")
        return self._render(record, record.current, list(record.current.props))

    def _delete_deal(self, req: Request) -> Any:
        record = self._live_deal(req.params["id"])
        if record is not None:
            self._write(record, {}, source="api:archive", force=True, archived=True)
        return Response(204, None)

    # -- deals: batch -----------------------------------------------------------------------------
    def _batch_read(self, req: Request) -> Any:
        started = iso(self.clock.now())
        body = req.json() or {}
        inputs = self._inputs(body)
        names = body.get("properties") or None
        id_property = body.get("idProperty")
        results, missing, answered = [], [], set()
        for item in inputs:
            key = str(item.get("id", ""))
            if id_property and id_property != "hs_object_id":
                record = self._by_property(id_property, key)
            else:
                record = self._resolve_live(key)  # a merged-away id answers with its deal
            if record is None:
                missing.append(key)
            elif record.id not in answered:  # [I] one result per record
                answered.add(record.id)
                results.append(self._render(record, record.current, names))
        errors = []
        if missing:
            errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                           "message": "Could not get some DEAL objects, they may be deleted or not "
                                      "exist. Check that ids are valid.",
                           "context": {"ids": missing}})
        return self._batch_body(results, errors, started)

    def _batch_update(self, req: Request) -> Any:
        started = iso(self.clock.now())
        inputs = self._inputs(req.json() or {})
        ids = [str(item.get("id", "")) for item in inputs]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise self._bad_request(f"Duplicate IDs found in batch input: {duplicates}. IDs must "
                                    f"be unique", context={"ids": duplicates})
        good: list[tuple[DealRecord, dict[str, str | None]]] = []
        invalid: list[tuple[str, list[dict[str, Any]]]] = []
        missing: list[str] = []
        for deal_id, item in zip(ids, inputs):
            record = self._resolve_live(deal_id)  # [I] a merged-away id writes to its deal
            if record is None:
                missing.append(deal_id)
                continue
            values, errors = self._check_properties(item.get("properties", {}),
                                                    record.current.props)
            if errors:
                invalid.append((deal_id, errors))
            else:
                good.append((record, values))
        mode = self.config["batch_partial_mode"]
        if (invalid or missing) and mode in ("400_all", "400_opaque"):
            raise HttpError(400, self._whole_batch_error(invalid, missing,
                                                         name_ids=mode == "400_all"))
        results = []
        for record, values in good:
            self._write(record, values, source="api:batch_update")
            results.append(self._render(record, record.current, list(values) or None))
        errors = [self._item_error(deal_id, errs) for deal_id, errs in invalid]
        if missing:
            errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                           "message": "Could not get some DEAL objects, they may be deleted or not "
                                      "exist. Check that ids are valid.",
                           "context": {"ids": missing}})
        return self._batch_body(results, errors, started)

    def _item_error(self, deal_id: str, errors: list[dict[str, Any]]) -> dict[str, Any]:
        body = self._validation_error(errors, ids=[deal_id])
        body.pop("correlationId")
        return body

    def _whole_batch_error(self, invalid: list[tuple[str, list[dict[str, Any]]]],
                           missing: list[str], name_ids: bool) -> dict[str, Any]:
        if not invalid:
            body = self.error_body("OBJECT_NOT_FOUND", "Could not get some DEAL objects, they may "
                                   "be deleted or not exist. Check that ids are valid.")
            if name_ids:
                body["context"] = {"ids": missing}
            return body
        flat = []
        for deal_id, errors in invalid:
            for error in errors:
                entry = copy.deepcopy(error)
                if name_ids:
                    entry["context"]["ids"] = [deal_id]
                flat.append(entry)
        bad_ids = [deal_id for deal_id, _ in invalid] + missing
        return self._validation_error(flat, ids=bad_ids if name_ids else None)

    # -- search (docs/hubspot.md §6, §7, §14.4) ---------------------------------------------------
    def _search(self, req: Request) -> Any:
        cfg = self.config
        body = req.json() or {}
        if not isinstance(body, dict):
            raise self._bad_request("Invalid input JSON: expected an object")
        groups = body.get("filterGroups") or []
        if not isinstance(groups, list) or len(groups) > cfg["search_max_groups"]:
            raise self._bad_request(f"Too many filter groups: at most {cfg['search_max_groups']} "
                                    f"are allowed")
        total_filters = 0
        for group in groups:
            filters = group.get("filters") if isinstance(group, dict) else None
            if not isinstance(filters, list):
                raise self._bad_request("each filter group needs a filters list")
            if len(filters) > cfg["search_max_filters_per_group"]:
                raise self._bad_request(f"Too many filters in a group: at most "
                                        f"{cfg['search_max_filters_per_group']} are allowed")
            total_filters += len(filters)
        if total_filters > cfg["search_max_filters_total"]:
            raise self._bad_request(f"Too many filters: at most {cfg['search_max_filters_total']} "
                                    f"are allowed in total")
        sorts = body.get("sorts") or []
        if not isinstance(sorts, list) or len(sorts) > cfg["search_max_sorts"]:
            raise self._bad_request(f"At most {cfg['search_max_sorts']} sort is allowed")
        limit = body.get("limit", 10)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise self._bad_request(f"limit must be a non-negative integer, got {limit!r}")
        if limit > cfg["search_max_limit"]:
            if cfg["search_over_limit"] == "400":
                raise self._bad_request(f"limit must be at most {cfg['search_max_limit']}")
            limit = cfg["search_max_limit"]
        try:
            offset = int(body.get("after") or 0)
        except (TypeError, ValueError):
            raise self._bad_request(f"after must be an integer offset, got {body.get('after')!r}"
                                    ) from None
        if offset < 0:
            raise self._bad_request("after must not be negative")
        cap = cfg["search_cap"]
        if offset + limit > cap:
            raise self._bad_request(
                f"There was a problem with the request: paging beyond {cap} results is not "
                f"supported. The search endpoints are limited to {cap} total results for any "
                f"given query.")
        matched = self._search_matches(groups, sorts, body.get("query"))
        names = body.get("properties") or None
        page = matched[offset:offset + limit]
        results = [self._render(record, version, names) for record, version in page]
        out: dict[str, Any] = {"total": len(matched), "results": results}
        if page and offset + len(page) < len(matched):
            after = str(offset + len(page))
            out["paging"] = {"next": {"after": after, "link": f"?after={after}"}}
        return out

    def _search_matches(self, groups: list[dict[str, Any]], sorts: list[Any], query: Any
                        ) -> list[tuple[DealRecord, Version]]:
        """The query's matches in order. A query whose every group starts at the same
        ``hs_object_id`` floor (the keyset recipe of docs/hubspot.md §7) and that is ordered by
        id is answered from the cached matches of the query without the floor: same result, one
        scan in all."""
        floor, rest = self._id_floor(groups)
        by_id = not sorts or sorts[0] == {"propertyName": "hs_object_id", "direction": "ASCENDING"}
        if floor is not None and by_id and self.config["default_sort"] == "id":
            full = self._matches(json.dumps([rest, [], query], sort_keys=True),
                                 self._compile_groups(rest, query), None)
            nums = self._num_index(full)
            return full[bisect_left(nums, floor):]
        return self._matches(json.dumps([groups, sorts, query], sort_keys=True),
                             self._compile_groups(groups, query),
                             self._compile_sort(sorts[0]) if sorts else None)

    def _id_floor(self, groups: list[dict[str, Any]]) -> tuple[int | None, list[dict[str, Any]]]:
        floors, rest = set(), []
        for group in groups:
            bounds = [f for f in group["filters"] if isinstance(f, dict)
                      and f.get("propertyName") == "hs_object_id"
                      and f.get("operator") in ("GTE", "GT")]
            if len(bounds) != 1:
                return None, groups
            try:
                value = float(bounds[0].get("value"))
            except (TypeError, ValueError):
                return None, groups  # let the full path report the bad value
            floors.add(math.floor(value) + 1 if bounds[0]["operator"] == "GT" else math.ceil(value))
            rest.append({**group, "filters": [f for f in group["filters"] if f is not bounds[0]]})
        if len(floors) != 1:
            return None, groups
        return floors.pop(), rest

    def _num_index(self, matched: list[tuple[DealRecord, Version]]) -> list[int]:
        cached = self._num_cache.get(id(matched))
        if cached is None or cached[0] is not matched:
            if len(self._num_cache) > 32:
                self._num_cache.clear()
            cached = (matched, [record.num for record, _ in matched])
            self._num_cache[id(matched)] = cached
        return cached[1]

    def _matches(self, key: str, predicate: Callable[[dict[str, Any]], bool],
                 sort_key: tuple[Callable[[dict[str, Any]], Any], bool] | None
                 ) -> list[tuple[DealRecord, Version]]:
        """Every visible match, in order; cached per query while the data and the index stand
        still, so paging through one query costs one scan."""
        lag = int(self.config["search_lag_ms"])
        now = self.now_ms()
        settled = lag <= 0 or now - lag >= self._last_write_ms
        key = f"{key}|{self.config['default_sort']}"
        cached = self._search_cache.get(key)
        if settled and cached is not None and cached[0] == self._data_version:
            return cached[1]
        matched = []
        for record in self.deals.values():
            version = self._visible(record, now, lag)
            if version is not None and not version.archived and predicate(version.props):
                matched.append((record, version))
        if sort_key is not None:
            getter, descending = sort_key
            present = [m for m in matched if getter(m[1].props) is not None]
            absent = [m for m in matched if getter(m[1].props) is None]
            present.sort(key=lambda m: getter(m[1].props), reverse=descending)
            matched = present + absent
        elif self.config["default_sort"] == "random":
            random.Random(f"{self.seed_value}:{key}").shuffle(matched)
        if settled:
            if len(self._search_cache) > 32:
                self._search_cache.clear()
            self._search_cache[key] = (self._data_version, matched)
        return matched

    @staticmethod
    def _visible(record: DealRecord, now: int, lag: int) -> Version | None:
        if lag <= 0:
            return record.current
        cutoff = now - lag
        for version in reversed(record.versions):
            if version.written_ms <= cutoff:
                return version
        return None

    def _kind(self, name: str) -> str:
        ptype = (self.properties.get(name) or {}).get("type", "string")
        return {"datetime": "date", "date": "date", "number": "number"}.get(ptype, "string")

    def _record_key(self, kind: str, raw: str | None) -> Any:
        if raw is None or raw == "":
            return None
        if kind == "date":
            if raw not in self._time_memo:
                if len(self._time_memo) > 500_000:
                    self._time_memo.clear()
                self._time_memo[raw] = parse_time_ms(raw)
            return self._time_memo[raw]
        if kind == "number":
            try:
                return float(raw)
            except ValueError:
                return None
        return raw.lower()

    def _filter_key(self, name: str, kind: str, value: Any) -> Any:
        if value is None:
            raise self._bad_request(f"filter on {name} needs a value")
        text = str(value)
        if kind == "date":
            ms = parse_time_ms(text)
            if ms is None:
                raise self._bad_request(f"{text} is not a valid date value for {name}")
            return ms
        if kind == "number":
            try:
                return float(text)
            except ValueError:
                raise self._bad_request(f"{text} is not a valid number for {name}") from None
        return text.lower()

    def _compile_groups(self, groups: list[dict[str, Any]], query: Any
                        ) -> Callable[[dict[str, Any]], bool]:
        compiled = [[self._compile_filter(f) for f in group["filters"]] for group in groups]
        text = str(query).lower().strip() if query else ""

        def predicate(props: dict[str, Any]) -> bool:
            if text and text not in (props.get("dealname") or "").lower():
                return False
            if not compiled:
                return True
            return any(all(f(props) for f in group) for group in compiled)
        return predicate

    def _compile_filter(self, spec: Any) -> Callable[[dict[str, Any]], bool]:
        if not isinstance(spec, dict):
            raise self._bad_request("each filter must be an object")
        name, op = spec.get("propertyName"), spec.get("operator")
        if op not in OPERATORS:
            raise self._bad_request(f"Unknown operator {op!r}; expected one of {sorted(OPERATORS)}")
        if name not in self.properties:
            raise self._bad_request(f"Unknown property {name!r} in filter",
                                    errors=[_sub_error("PROPERTY_DOESNT_EXIST", str(name),
                                                       f'Property "{name}" does not exist')])
        kind = self._kind(name)
        key = self._record_key

        def get(props: dict[str, Any]) -> Any:
            return key(kind, props.get(name))

        if op == "HAS_PROPERTY":
            return lambda p: get(p) is not None
        if op == "NOT_HAS_PROPERTY":
            return lambda p: get(p) is None
        if op in ("IN", "NOT_IN"):
            values = spec.get("values")
            if not isinstance(values, list):
                raise self._bad_request(f"{op} on {name} needs a values list")
            wanted = {self._filter_key(name, kind, v) for v in values}
            if op == "IN":
                return lambda p: get(p) in wanted
            return lambda p: get(p) not in wanted
        if op in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
            token = str(spec.get("value", "")).lower()

            def contains(p: dict[str, Any]) -> bool:
                words = re.split(r"\W+", str(p.get(name) or "").lower())
                return any(fnmatch.fnmatchcase(w, token) for w in words if w)
            return contains if op == "CONTAINS_TOKEN" else (lambda p: not contains(p))
        value = self._filter_key(name, kind, spec.get("value"))
        if op == "BETWEEN":
            high = self._filter_key(name, kind, spec.get("highValue"))
            return lambda p: (v := get(p)) is not None and value <= v <= high
        if op == "EQ":
            return lambda p: get(p) == value
        if op == "NEQ":
            return lambda p: get(p) != value
        compare = {"LT": lambda v: v < value, "LTE": lambda v: v <= value,
                   "GT": lambda v: v > value, "GTE": lambda v: v >= value}[op]
        return lambda p: (v := get(p)) is not None and compare(v)

    def _compile_sort(self, spec: Any) -> tuple[Callable[[dict[str, Any]], Any], bool]:
        if isinstance(spec, str):  # the short form "-hs_lastmodifieddate" some clients send
            spec = {"propertyName": spec.lstrip("-"),
                    "direction": "DESCENDING" if spec.startswith("-") else "ASCENDING"}
        if not isinstance(spec, dict) or spec.get("propertyName") not in self.properties:
            raise self._bad_request(f"invalid sort {spec!r}")
        direction = spec.get("direction", "ASCENDING")
        if direction not in ("ASCENDING", "DESCENDING"):
            raise self._bad_request(f"sort direction must be ASCENDING or DESCENDING, got "
                                    f"{direction!r}")
        name = spec["propertyName"]
        kind = self._kind(name)
        return (lambda props: self._record_key(kind, props.get(name))), direction == "DESCENDING"

    # -- properties and groups (docs/hubspot.md §9) -----------------------------------------------
    def _list_properties(self, req: Request) -> Any:
        return {"results": [self._public_definition(d) for d in self.properties.values()]}

    def _get_property(self, req: Request) -> Any:
        definition = self.properties.get(req.params["name"])
        if definition is None:
            raise self.fail(404, "OBJECT_NOT_FOUND", f"Unable to find property with name "
                            f"{req.params['name']} for object type deals")
        return self._public_definition(definition)

    def _public_definition(self, definition: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(definition)
        if definition["name"] == "dealstage":
            out["options"] = [{"label": s["label"], "value": s["id"], "displayOrder": i,
                               "hidden": False} for p in self.config["pipelines"]
                              for i, s in enumerate(p["stages"])]
        elif definition["name"] == "pipeline":
            out["options"] = [{"label": p["label"], "value": p["id"], "displayOrder": i,
                               "hidden": False} for i, p in enumerate(self.config["pipelines"])]
        return out

    def _create_property(self, req: Request) -> Any:
        body = req.json() or {}
        name = body.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise self._bad_request(f"Invalid property name {name!r}: use lower-case letters, "
                                    f"digits and underscores, starting with a letter")
        if name in self.properties:
            raise self.fail(409, "CONFLICT", f"A property named '{name}' already exists.",
                            context={"name": [name]})
        ptype, field_type = body.get("type"), body.get("fieldType")
        if ptype not in FIELD_TYPES:
            raise self._bad_request(f"Invalid type {ptype!r}; expected one of "
                                    f"{sorted(FIELD_TYPES)}")
        if field_type not in FIELD_TYPES[ptype]:
            raise self._bad_request(f"fieldType {field_type!r} is not valid for type {ptype!r}; "
                                    f"expected one of {sorted(FIELD_TYPES[ptype])}")
        group = body.get("groupName")
        if group not in self.groups:
            raise self._bad_request(f"Property group {group!r} does not exist")
        if not body.get("label"):
            raise self._bad_request("label is required")
        options = self._check_options(body.get("options") or [])
        if ptype == "enumeration" and not options and field_type != "booleancheckbox":
            raise self._bad_request("an enumeration property needs options")
        definition = self._definition(
            name=name, label=body["label"], type=ptype, fieldType=field_type, groupName=group,
            displayOrder=int(body.get("displayOrder", -1)), options=options,
            description=str(body.get("description", "")),
            hasUniqueValue=bool(body.get("hasUniqueValue", False)),
            formField=bool(body.get("formField", False)))
        self.properties[name] = definition
        return Response(201, self._public_definition(definition))

    def _check_options(self, options: Any) -> list[dict[str, Any]]:
        if not isinstance(options, list):
            raise self._bad_request("options must be a list")
        clean = []
        for i, option in enumerate(options):
            if not isinstance(option, dict) or not option.get("label") or \
                    option.get("value") in (None, ""):
                raise self._bad_request(f"option {i} needs a label and a value")
            clean.append({"label": str(option["label"]), "value": str(option["value"]),
                          "displayOrder": int(option.get("displayOrder", i)),
                          "hidden": bool(option.get("hidden", False))})
        values = [o["value"] for o in clean]
        if len(set(values)) != len(values):
            raise self._bad_request("option values must be unique")
        return clean

    def _patch_property(self, req: Request) -> Any:
        definition = self.properties.get(req.params["name"])
        if definition is None:
            raise self.fail(404, "OBJECT_NOT_FOUND", f"Unable to find property with name "
                            f"{req.params['name']} for object type deals")
        if definition["modificationMetadata"]["readOnlyDefinition"]:
            raise self._bad_request(f"{req.params['name']} is a HubSpot-defined property whose "
                                    f"definition cannot be changed")
        body = req.json() or {}
        if "options" in body:
            definition["options"] = self._check_options(body["options"])
        for key in ("label", "description", "groupName", "displayOrder"):
            if key in body:
                definition[key] = body[key]
        definition["updatedAt"] = iso(self.clock.now())
        return self._public_definition(definition)

    def _list_groups(self, req: Request) -> Any:
        return {"results": list(self.groups.values())}

    def _create_group(self, req: Request) -> Any:
        body = req.json() or {}
        name = body.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise self._bad_request(f"Invalid group name {name!r}")
        if name in self.groups:
            raise self.fail(409, "CONFLICT", f"A property group named '{name}' already exists.")
        group = {"name": name, "label": str(body.get("label") or name),
                 "displayOrder": int(body.get("displayOrder", -1)), "archived": False}
        self.groups[name] = group
        return Response(201, group)

    # -- pipelines and owners --------------------------------------------------------------------
    def _pipeline(self, spec: dict[str, Any], order: int) -> dict[str, Any]:
        stamp = iso(parse_iso(self.config["epoch"]))
        return {"id": spec["id"], "label": spec["label"], "displayOrder": order,
                "archived": False, "createdAt": stamp, "updatedAt": stamp,
                "stages": [{"id": s["id"], "label": s["label"], "displayOrder": i,
                            # HubSpot sends stage metadata values as strings
                            "metadata": {"probability": str(s["probability"]),
                                         "isClosed": "true" if s["isClosed"] else "false"},
                            "archived": False, "createdAt": stamp, "updatedAt": stamp,
                            "writePermissions": "CRM_PERMISSIONS_ENFORCEMENT"}
                           for i, s in enumerate(spec["stages"])]}

    def _list_pipelines(self, req: Request) -> Any:
        return {"results": [self._pipeline(p, i) for i, p in enumerate(self.config["pipelines"])]}

    def _get_pipeline(self, req: Request) -> Any:
        for i, spec in enumerate(self.config["pipelines"]):
            if spec["id"] == req.params["id"]:
                return self._pipeline(spec, i)
        raise self.fail(404, "OBJECT_NOT_FOUND", f"pipeline {req.params['id']} not found")

    def _list_owners(self, req: Request) -> Any:
        limit = min(self._int_arg(req, "limit", 100), 100)
        start = self._int_arg(req, "after", 0)
        page = self.owners[start:start + limit]
        body: dict[str, Any] = {"results": page}
        if start + limit < len(self.owners):
            body["paging"] = {"next": {"after": str(start + limit)}}
        return body

    def _get_owner(self, req: Request) -> Any:
        for owner in self.owners:
            if owner["id"] == req.params["id"]:
                return owner
        raise self.fail(404, "OBJECT_NOT_FOUND", f"owner {req.params['id']} not found")

    # -- companies and associations (docs/hubspot.md §10) --------------------------------------
    def _get_company(self, req: Request) -> Any:
        company = self.companies.get(req.params["id"])
        if company is None:
            raise self.fail(404, "OBJECT_NOT_FOUND", NOT_FOUND_MESSAGE,
                            context={"id": [req.params["id"]]})
        return self._render_simple(company, self._requested(req) or ["name", "domain"])

    def _batch_read_companies(self, req: Request) -> Any:
        started = iso(self.clock.now())
        body = req.json() or {}
        inputs = self._inputs(body)
        names = body.get("properties") or ["name", "domain"]
        results, missing = [], []
        for item in inputs:
            company = self.companies.get(str(item.get("id", "")))
            if company is None:
                missing.append(str(item.get("id", "")))
            else:
                results.append(self._render_simple(company, names))
        errors = []
        if missing:
            errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                           "message": "Could not get some COMPANY objects, they may be deleted or "
                                      "not exist. Check that ids are valid.",
                           "context": {"ids": missing}})
        return self._batch_body(results, errors, started)

    @staticmethod
    def _company_links(record: DealRecord) -> list[dict[str, Any]]:
        links = []
        for position, company in enumerate(record.company_ids):
            types = [{"category": "HUBSPOT_DEFINED", "typeId": DEAL_TO_COMPANY, "label": None}]
            if position == 0:
                types.insert(0, {"category": "HUBSPOT_DEFINED", "typeId": DEAL_TO_COMPANY_PRIMARY,
                                 "label": "Primary"})
            links.append({"toObjectId": int(company), "associationTypes": types})
        return links

    def _deal_companies_v4(self, req: Request) -> Any:
        record = self.deals.get(req.params["id"])
        if record is None:
            raise self._deal_not_found(req.params["id"])
        return {"results": self._company_links(record)}

    def _batch_deal_companies_v4(self, req: Request) -> Any:
        started = iso(self.clock.now())
        inputs = self._inputs(req.json() or {}, limit=1000)
        results, missing = [], []
        for item in inputs:
            record = self.deals.get(str(item.get("id", "")))
            if record is None:
                missing.append(str(item.get("id", "")))
            elif record.company_ids:  # deals without companies are simply absent
                results.append({"from": {"id": record.id}, "to": self._company_links(record)})
        errors = []
        if missing:
            errors.append({"status": "error", "category": "OBJECT_NOT_FOUND",
                           "message": "Could not find some deals", "context": {"ids": missing}})
        return self._batch_body(results, errors, started)

    # -- notes (docs/hubspot.md §10) -------------------------------------------------------------
    def _note_input(self, item: Any) -> tuple[dict[str, str], list[str], list[str]]:
        if not isinstance(item, dict):
            raise self._bad_request("each note input must be an object")
        props = item.get("properties") or {}
        allowed = {"hs_timestamp", "hs_note_body", "hubspot_owner_id", "hs_attachment_ids"}
        errors = [_sub_error("PROPERTY_DOESNT_EXIST", n, f'Property "{n}" does not exist')
                  for n in props if n not in allowed]
        stamp = parse_time_ms(str(props.get("hs_timestamp") or ""))
        if not props.get("hs_timestamp"):
            errors.append(_sub_error("REQUIRED_PROPERTY", "hs_timestamp",
                                     "hs_timestamp is required"))
        elif stamp is None:
            errors.append(_sub_error("INVALID_DATE", "hs_timestamp",
                                     f"{props['hs_timestamp']} was not a valid date."))
        body = str(props.get("hs_note_body") or "")
        if len(body) > self.config["note_body_max"]:
            errors.append(_sub_error("INVALID_STRING_LENGTH", "hs_note_body",
                                     f"hs_note_body is longer than {self.config['note_body_max']} "
                                     f"characters"))
        if errors:
            raise HttpError(400, self._validation_error(errors))
        deals, companies = [], []
        for spec in item.get("associations") or []:
            target = str((spec.get("to") or {}).get("id", ""))
            for kind in spec.get("types") or []:
                type_id = kind.get("associationTypeId")
                if type_id == NOTE_TO_DEAL and self._live_deal(target) is not None:
                    deals.append(target)
                elif type_id == NOTE_TO_COMPANY and target in self.companies:
                    companies.append(target)
                else:
                    raise self._bad_request(
                        f"Invalid association: type {type_id} to object {target} (expected "
                        f"{NOTE_TO_DEAL} to an existing deal or {NOTE_TO_COMPANY} to a company)")
        clean = {k: str(v) for k, v in props.items() if v is not None}
        clean["hs_timestamp"] = iso_ms(stamp)
        return clean, deals, companies

    def _store_note(self, props: dict[str, str], deals: list[str], companies: list[str]
                    ) -> SimpleRecord:
        now = self.now_ms()
        note_id = str(self._next["note"])
        self._next["note"] += 1
        props.update({"hs_object_id": note_id, "hs_createdate": iso_ms(now),
                      "hs_lastmodifieddate": iso_ms(now)})
        note = SimpleRecord(note_id, props, now, now, deals, companies)
        self.notes[note_id] = note
        for deal_id in deals:
            self.deals[deal_id].note_ids.append(note_id)
        self.writes += 1
        return note

    def _create_note(self, req: Request) -> Any:
        note = self._store_note(*self._note_input(req.json() or {}))
        return Response(201, self._render_simple(note, list(note.props), ["deals"]))

    def _batch_create_notes(self, req: Request) -> Any:
        started = iso(self.clock.now())
        checked = [self._note_input(item) for item in self._inputs(req.json() or {})]
        notes = [self._store_note(*parts) for parts in checked]  # all or nothing
        response = self._batch_body([self._render_simple(n, list(n.props), ["deals"])
                                     for n in notes], [], started)
        response.status = 201
        return response

    def _list_notes(self, req: Request) -> Any:
        limit = min(self._int_arg(req, "limit", 10), 100)
        start = self._int_arg(req, "after", 0)
        associations = [a for v in req.query.get("associations", []) for a in v.split(",")]
        notes = list(self.notes.values())
        body: dict[str, Any] = {"results": [self._render_simple(n, self._requested(req) or
                                                                ["hs_timestamp", "hs_note_body"],
                                                                associations)
                                            for n in notes[start:start + limit]]}
        if start + limit < len(notes):
            body["paging"] = {"next": {"after": str(start + limit)}}
        return body

    def _get_note(self, req: Request) -> Any:
        note = self.notes.get(req.params["id"])
        if note is None:
            raise self.fail(404, "OBJECT_NOT_FOUND", NOT_FOUND_MESSAGE)
        associations = [a for v in req.query.get("associations", []) for a in v.split(",")]
        return self._render_simple(note, list(note.props), associations)

    # -- small helpers ---------------------------------------------------------------------------
    def _int_arg(self, req: Request, name: str, default: int) -> int:
        value = req.arg(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise self._bad_request(f"{name} must be an integer, got {value!r}") from None


def _sub_error(code: str, name: str, message: str) -> dict[str, Any]:
    """One entry of ``errors[]`` in HubSpot's error shape (docs/hubspot.md §12)."""
    return {"message": message, "code": code, "in": name, "context": {"propertyName": [name]}}


def _id_list(record: DealRecord) -> list[str]:
    """The ids already merged into a record (``hs_merged_object_ids``, docs/hubspot.md §15)."""
    return [i for i in (record.current.props.get(MERGED_IDS) or "").split(";") if i]


def _only(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    unknown = sorted(set(body) - set(keys))
    if unknown:
        raise HttpError(400, {"message": f"unknown fields {unknown}; expected {list(keys)}"})
    return {k: body[k] for k in keys if k in body}


def realtime_hubspot_emulator() -> HubSpotEmulator:
    """The standalone server: its clock follows the wall clock, so rate windows free up."""
    return HubSpotEmulator(realtime=True)


if __name__ == "__main__":
    serve_main(realtime_hubspot_emulator)
