"""The PingCode tracker connector: Agile work items or Ship ideas through the PingCode Open API.

One connector class and one HTTP client serve both kinds of requirement (setting ``item_kind``).
``PingCodeConnector`` owns what is PingCode-wide: the client-credentials token (a GET, with an
absolute ``expires_in``), the error codes, paging, the day-granular incremental search, and
caching names until a write fails on a stale id. A small strategy object owns what differs by
kind (``WorkItems``, ``Ideas``): where the items, states and priorities are, how the project or
Ship product is found, what an item's delivery is, and how a state is reached (a work item walks
its state flows; an idea has no flow endpoint and moves in one PATCH). Vendor facts are cited
from ``docs/pingcode.md``.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, Iterator, TypeVar
from zoneinfo import ZoneInfo

import requests

from sync.connectors import (InstanceContext, NewRequirement, RateLimit, Requirement,
                             RequirementChange, SecretSpec, TrackerConnector, has_marker,
                             workflow_path)
from sync.errors import (AuthError, ConfigError, DealsyncError, ItemError, NotFound, RemoteError,
                         TransitionError)
from sync.http import (app_token_clients, body_code, default_error, describe,
                       renew_at)

log = logging.getLogger("dealsync.pingcode")

# Current docs vs. what working clients still use (docs/pingcode.md §2).
PREFIXES = ("/v1/pjm", "/v1/project")
# Ship has one prefix; /v1/project was Agile's old one (docs/pingcode.md §2, §10).
SHIP_PREFIX = "/v1/ship"
PAGE_SIZE = 100  # the maximum (docs/pingcode.md §12)
# Time filters are evaluated per day (docs/pingcode.md §8); PingCode does not say in which zone,
# and it is a Chinese service, so day boundaries and printed dates are Beijing time.
PINGCODE_TZ = ZoneInfo("Asia/Shanghai")
TOKEN_LIFETIME_S = 30 * 86400.0  # docs/pingcode.md §3.1
TOKEN_EARLY_S = 86400.0  # refresh a day before the token expires (docs/pingcode.md §15.2)
# State categories, the same for work items and Ship ideas (docs/pingcode.md §9, §10).
STATE_TYPES = ["pending", "in_progress", "completed", "closed"]
READ_ONLY_FIELDS = ("delivery", "state_type")

# Codes that mean "this request refers to something that is not (or no longer) there"
# (docs/pingcode.md §13); a write failing with one of them may have used a stale cached id.
STALE_ID_CODES = frozenset({"100303", "100003", "100039", "100043", "100044"})
ITEM_ERROR_CODES = frozenset({"100303", "100043", "100044", "100008", "100003", "100039"})
NOT_FOUND_CODES = frozenset({"100317", "100725"})  # work item, idea (docs/pingcode.md §13)
# Ship answers 100702 or 100719 both for a state that does not exist and for an existing state
# its plan does not allow; Agile answers 100379 for a missing flow (docs/pingcode.md §10, §13).
SHIP_STATE_CODES = frozenset({"100702", "100719"})
TRANSITION_CODES = frozenset({"100379"}) | SHIP_STATE_CODES

T = TypeVar("T")


def map_error(response: requests.Response) -> DealsyncError:
    """PingCode errors by ``code`` first, HTTP status second (docs/pingcode.md §13). The code
    is kept on the error as ``.code`` so callers can tell a stale id from other refusals."""
    code = body_code(response)
    message = describe(response)
    error: DealsyncError
    if code in NOT_FOUND_CODES:  # answered as HTTP 400, never 404
        error = NotFound(message)
    elif code == "100379":
        error = TransitionError(message, "the workflow has no transition between these states")
    elif code in SHIP_STATE_CODES:
        error = TransitionError(message, "Ship refused the state: it is not one of the product's "
                                         "idea states, or the state plan does not allow it")
    elif code in ITEM_ERROR_CODES:
        error = ItemError(message, retryable=False)
    elif code == "100024":
        error = AuthError(message, hint="check the app's client_id and client_secret (PingCode "
                                        "企业后台 → 凭据管理) and store them again with `dealsync "
                                        "auth set INSTANCE client_id` and `... client_secret`")
    elif code == "100038":  # rate limited, whatever the status said
        error = RemoteError(message, hint="PingCode allows 200 requests per minute per app; "
                                          "lower rate_limits.default if other tools share it",
                            status=429, code=code)
    elif response.status_code == 404:
        # PingCode answers not-found with 400 (docs/pingcode.md §13); a 404 means the URL
        # itself is wrong, and must never read as "the record is gone".
        error = RemoteError(message, hint="check base_url of this instance (and, for work "
                                          "items, path_prefix: /v1/pjm or /v1/project)",
                            status=404, code=code)
    else:
        error = default_error(response)
    error.code = code  # type: ignore[attr-defined]
    return error


def error_code(exc: Exception) -> str | None:
    return getattr(exc, "code", None)


def from_epoch(value: Any) -> datetime | None:
    """PingCode prints 10-digit unix seconds (docs/pingcode.md §2); be lenient with
    milliseconds."""
    if value in (None, "", 0):
        return None
    seconds = float(value)
    if seconds > 1e11:
        seconds /= 1000
    return datetime.fromtimestamp(seconds, timezone.utc)


def start_of_day(when: datetime) -> int:
    """Unix seconds of the start of ``when``'s day in PingCode's zone."""
    local = when.astimezone(PINGCODE_TZ)
    return int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())


def values_of(page: Any) -> list[dict[str, Any]]:
    """A list envelope's rows; also a bare list, which some configuration endpoints return."""
    if isinstance(page, list):
        return page
    return list((page or {}).get("values") or [])


def ref_id(value: Any) -> str | None:
    """The id of a reference that may be a bare string or an object (``type``,
    docs/pingcode.md §5)."""
    return value.get("id") if isinstance(value, dict) else value


def name_of(value: Any) -> str | None:
    return (value or {}).get("name")


def delivery_text(names: str, end: datetime | None) -> str | None:
    """"v2.3 (2025-03-31)": what is planned and its end date (Beijing), either alone."""
    day = end.astimezone(PINGCODE_TZ).date().isoformat() if end else ""
    if names and day:
        return f"{names} ({day})"
    return names or day or None


@dataclass
class Workflow:
    """What names resolve to in one scope (a project and work item type, or a Ship product),
    read once and cached."""

    scope_id: str  # project id or product id
    where: str  # how messages name the scope: "SCR/story", "SLC"
    states: dict[str, dict[str, Any]]  # name -> state
    priorities: dict[str, dict[str, Any]]  # name -> priority
    scope_filter: dict[str, Any]  # search filter confining a search to the project or product
    type_id: str | None = None  # work item type; None for ideas, which have none
    # from state id -> to state ids; None when the kind has no flow endpoint (Ship ideas)
    flows: dict[str, set[str]] | None = None
    marker_property: str | None = None  # property id
    key_prefix: str | None = None  # the project or product identifier: keys are SCR-12

    def state_name(self, state_id: str) -> str:
        return next((n for n, s in self.states.items() if s["id"] == state_id), state_id)

    def path(self, start: str, target: str) -> list[str] | None:
        """State ids to pass through from ``start`` to ``target``: shortest, by BFS."""
        return workflow_path(start, target, ((source, dest)
                                             for source, dests in (self.flows or {}).items()
                                             for dest in dests))


class PingCodeConnector(TrackerConnector):
    type_name = "pingcode"
    summary = "PingCode Agile work items or Ship ideas (Open API, enterprise token)"
    secrets = (SecretSpec("client_id", "PingCode app client_id (企业后台 → 凭据管理)"),
               SecretSpec("client_secret", "PingCode app client_secret"))
    # 200/min per identity (docs/pingcode.md §13)
    default_rate_limits = {"default": RateLimit(200, 60)}
    batch_size = 1
    concurrent = True  # its own HTTP client and state (docs/engine.md §9)
    setup_settings = {"base_url": "https://open.pingcode.com", "project": None}  # dealsync init
    settings_help = {
        "base_url": "API root, default https://open.pingcode.com (self-hosted: https://HOST/open)",
        "item_kind": '"work_item" (default: Agile work items in a project) or "idea" (Ship '
                     'ideas, 需求, in a product)',
        "project": 'item_kind "work_item": project identifier (e.g. SCR) or id (required)',
        "work_item_type": 'item_kind "work_item": work item type id or name, default story',
        "path_prefix": 'item_kind "work_item": /v1/pjm (default, current docs) or /v1/project '
                       '(older, same shapes); Ship is always /v1/ship',
        "product": 'item_kind "idea": Ship product identifier (e.g. SLC) or id (required)',
        "marker_property": "optional text property (id like prop_crm_deal, or its name) of the "
                           "work item type or of the product's ideas that holds dealsync's "
                           "marker; the marker is always in the description too",
    }

    def __init__(self, ctx: InstanceContext, *, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 clock: Callable[[], float] = time.time):
        """``session``, ``sleep``, ``monotonic`` and ``clock`` (wall time, for token expiry) are
        for tests and benchmarks that run against the emulator's virtual clock."""
        super().__init__(ctx)
        base_url = self.settings.get("base_url", "https://open.pingcode.com")
        self._clock = clock
        self._credentials, self._token_http, self.http = app_token_clients(
            self.name, base_url, self._fetch_token, rate_limits=self.rate_limits(), clock=clock,
            session=session, map_error=map_error, sleep=sleep, monotonic=monotonic)
        self.clients += [self._token_http, self.http]
        self.kind = self._item_kind()
        self._workflow: Workflow | None = None

    def _item_kind(self) -> ItemKind:
        wanted = self.settings.get("item_kind", "work_item")
        if wanted == "idea":
            return Ideas(self, SHIP_PREFIX)
        if wanted == "work_item":
            return WorkItems(self, self.settings.get("path_prefix", PREFIXES[0]).rstrip("/"))
        raise ConfigError([f"tracker.{self.name}.item_kind: {_kind_problem(wanted)}"])

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> list[str]:
        problems = super().check_settings(settings)
        kind = settings.get("item_kind", "work_item")
        if kind == "work_item":
            problems += _work_item_problems(settings)
        elif kind == "idea":
            problems += _idea_problems(settings)
        else:
            problems.append(f"item_kind: {_kind_problem(kind)}")
        base_url = settings.get("base_url", "https://open.pingcode.com")
        if not (isinstance(base_url, str) and re.match(r"https?://", base_url)):
            problems.append("base_url: must start with https:// (or http:// for the emulator)")
        return problems

    # -- plumbing ---------------------------------------------------------------------------------
    def _fetch_token(self) -> tuple[str, float]:
        """GET with query parameters; ``expires_in`` is an absolute epoch when > 1e9, else a
        duration (docs/pingcode.md §3.1). Returns the time to renew at: a day early, or half-way
        for short ones."""
        client_id, secret = self.ctx.secret("client_id"), self.ctx.secret("client_secret")
        self._credentials.value = secret
        body = self._token_http.json("GET", "/v1/auth/token", params={
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})
        expires_in = float(body.get("expires_in") or TOKEN_LIFETIME_S)
        return body["access_token"], renew_at(expires_in, self._clock(), TOKEN_EARLY_S,
                                              self._token_http.server_time())

    def _get(self, path: str, **params: Any) -> Any:
        """GET ``path`` under the item kind's API prefix (/v1/pjm, /v1/project or /v1/ship)."""
        return self.http.json("GET", self.kind.api + path, params=params or None)

    def _all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every row of a GET list (docs/pingcode.md §12)."""
        return list(self._pages(lambda index: self._get(path, **params, page_index=index,
                                                        page_size=PAGE_SIZE)))

    def _search(self, filters: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """``POST …/search`` page by page; Ship ideas take the same DSL
        (docs/pingcode.md §8, §10). Search only reads, so it may be retried after a 5xx."""
        return self._pages(lambda index: self.http.json(
            "POST", f"{self.kind.api}{self.kind.items}/search", idempotent=True,
            json={"mode": "query", "payload": {"filter": filters, "page_size": PAGE_SIZE,
                                                "page_index": index}}))

    @staticmethod
    def _pages(page: Callable[[int], Any]) -> Iterator[dict[str, Any]]:
        """The rows of a paged list (docs/pingcode.md §12): ``page_index`` from 0, PAGE_SIZE
        rows a page, until a short page or ``total``. Some configuration endpoints answer a
        bare list: one page."""
        index = 0
        while True:
            body = page(index)
            values = values_of(body)
            yield from values
            if isinstance(body, list) or len(values) < PAGE_SIZE or \
                    (index + 1) * PAGE_SIZE >= (body.get("total") or 0):
                return
            index += 1

    def _get_item(self, req_id: str) -> dict[str, Any]:
        return self._get(f"{self.kind.items}/{req_id}")

    def _patch(self, req_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """A PATCH sets absolute values (a title, a state id), so sending it twice does no harm:
        it may be retried after a 5xx or a dropped connection, unlike a create."""
        return self.http.json("PATCH", f"{self.kind.api}{self.kind.items}/{req_id}", json=body,
                              idempotent=True)

    # -- names to ids -----------------------------------------------------------------------------
    def workflow(self) -> Workflow:
        """Scope, states, flows, priorities and the marker property, resolved by name (per
        product for ideas) and cached until a write fails on a stale id
        (docs/pingcode.md §15.3, §10)."""
        if self._workflow is None:
            self._workflow = self.kind.load_workflow()
        return self._workflow

    def _with_fresh_ids(self, operation: Callable[[Workflow], T]) -> T:
        """Run ``operation``; if it fails on what may be a stale cached id or flow, drop the
        cache, read the names again and run it once more (docs/pingcode.md §15.3). Ship's
        100702/100719 also mean "no such state" (docs/pingcode.md §13), so they earn a fresh
        look too."""
        cached = self._workflow is not None
        try:
            return operation(self.workflow())
        except ItemError as exc:
            stale = error_code(exc) in STALE_ID_CODES | TRANSITION_CODES
            if not (cached and stale):
                raise
            log.info("%s: %s; re-reading the %s configuration and retrying once", self.name, exc,
                     self.kind.scope_setting)
            self._workflow = None
            self.kind.forget()
            return operation(self.workflow())

    def _state(self, wf: Workflow, name: str) -> dict[str, Any]:
        state = wf.states.get(name)
        if state is None:
            raise ItemError(f"PingCode state {name!r} does not exist in {wf.where} "
                            f"(known: {', '.join(wf.states)})", retryable=False)
        return state

    def _priority_id(self, wf: Workflow, name: str | None) -> str | None:
        if name is None:
            return None
        priority = wf.priorities.get(name)
        if priority is None:
            raise ItemError(f"PingCode priority {name!r} does not exist in {wf.where} "
                            f"(known: {', '.join(wf.priorities)})", retryable=False)
        return priority["id"]

    def _marker_property(self, props: list[dict[str, Any]], where: str, hint: str) -> str:
        wanted = str(self.settings["marker_property"])
        match = next((p for p in props if wanted in (p["id"], p.get("name"))), None)
        if match is None:
            known = ", ".join(p["id"] for p in props)
            raise ConfigError([f"tracker.{self.name}.marker_property: no property {wanted!r} on "
                               f"{where} (known: {known})"], hint=hint)
        return match["id"]

    # -- shapes -----------------------------------------------------------------------------------
    def _requirement(self, raw: dict[str, Any]) -> Requirement:
        state = raw.get("state") or {}
        return Requirement(
            id=raw["id"], key=raw["identifier"], title=raw.get("title") or "",
            description=raw.get("description") or "", url=raw.get("html_url") or raw.get("url"),
            updated_at=from_epoch(raw["updated_at"]),  # type: ignore[arg-type]
            created_at=from_epoch(raw.get("created_at")),
            fields={"status": state.get("name"), "state_type": state.get("type"),
                    "priority": name_of(raw.get("priority")),
                    "delivery": self.kind.delivery(raw)})

    # -- reading ----------------------------------------------------------------------------------
    def iter_changed(self, since: datetime | None, until: datetime) -> Iterator[Requirement]:
        """Search ``updated_at gte`` the start of ``since``'s day (the filter is day-granular;
        Ship's ``updated_at`` is a time field of the same DSL), drop what is newer than
        ``until``, and de-duplicate by (id, updated_at) because offset paging over unsorted,
        changing rows can repeat them (docs/pingcode.md §8, §10, §12). What the day
        brings from before ``since`` is kept: its pages are paid for, and a linked item among
        them needs no read by id this run (the verify slice)."""
        wf = self.workflow()
        filters: dict[str, Any] = dict(wf.scope_filter)
        if wf.type_id is not None:
            filters["type"] = {"in": [wf.type_id]}
        if since is not None:
            filters["updated_at"] = {"gte": start_of_day(since)}
        seen: set[tuple[str, Any]] = set()
        for raw in self._search(filters):
            key = (raw["id"], raw.get("updated_at"))
            if key in seen:
                continue
            seen.add(key)
            req = self._requirement(raw)
            if req.updated_at <= until:
                yield req

    def fetch(self, ids: list[str]) -> dict[str, Requirement]:
        found = {}
        for req_id in ids:
            try:
                raw = self._get_item(req_id)
            except NotFound:  # 100317 (deleted included) or 100725 (docs/pingcode.md §13)
                continue
            found[req_id] = self._requirement(raw)
        return found

    def key_prefix(self) -> str | None:
        return self.workflow().key_prefix

    def find_by_key(self, key: str) -> Requirement | None:
        wf = self.workflow()
        wanted = key.strip().upper()
        rows = self.kind.rows_for_key(wf, wanted)
        match = next((r for r in rows if r.get("identifier", "").upper() == wanted), None)
        return self._requirement(match) if match else None

    def find_by_marker(self, marker: str) -> Requirement | None:
        """Search the marker property when configured, else the description
        (docs/pingcode.md §15.6).
        ``contains`` is a substring test, so ``…:D-1`` also finds ``…:D-10``: compare exactly."""
        wf = self.workflow()
        filters: dict[str, Any] = dict(wf.scope_filter)
        if wf.marker_property:
            filters[f"properties.{wf.marker_property}"] = {"contains": marker}
        else:
            filters["description"] = {"contains": marker}
        matches = [raw for raw in self._search(filters) if self._carries(raw, marker, wf)]
        if not matches:
            return None
        return self._requirement(min(matches, key=_oldest))

    def find_by_markers(self, markers: list[str], prefix: str,
                        marked: int) -> dict[str, Requirement]:
        """One search per marker, or, when that would cost more, one paged search for every
        item carrying the pair's ``prefix`` (in the description, and in the marker property
        where configured), matched exactly per marker afterwards."""
        wf = self.workflow()
        fields = ["description"] + ([f"properties.{wf.marker_property}"]
                                    if wf.marker_property else [])
        scan_calls = len(fields) * (marked // PAGE_SIZE + 1)
        if scan_calls >= len(markers):
            return super().find_by_markers(markers, prefix, marked)
        rows: dict[str, dict[str, Any]] = {}
        for name in fields:
            for raw in self._search({**wf.scope_filter, name: {"contains": prefix}}):
                rows.setdefault(raw["id"], raw)
        found: dict[str, Requirement] = {}
        for raw in sorted(rows.values(), key=_oldest):
            for marker in markers:
                if marker not in found and self._carries(raw, marker, wf):
                    found[marker] = self._requirement(raw)
        return found

    @staticmethod
    def _carries(raw: dict[str, Any], marker: str, wf: Workflow) -> bool:
        if wf.marker_property and has_marker((raw.get("properties") or {})
                                             .get(wf.marker_property), marker):
            return True
        return has_marker(raw.get("description"), marker)

    def field_values(self, field_name: str) -> list[str] | None:
        wf = self.workflow()
        if field_name == "status":
            return list(wf.states)
        if field_name == "priority":
            return list(wf.priorities)
        if field_name == "state_type":
            return list(STATE_TYPES)
        return None

    # -- writing ----------------------------------------------------------------------------------
    def create(self, new: NewRequirement) -> Requirement:
        """docs/pingcode.md §6, §10. A create refused with a 400 did not happen, so it may be
        re-sent once with fresh ids; anything ambiguous is never re-sent (``sync.http``). What the
        create cannot carry (any status; an idea's priority) is PATCHed right after it."""
        fields = dict(new.fields)
        status = fields.pop("status", None)
        self._check_writable(fields, new.title)
        priority = fields.get("priority")

        def send(wf: Workflow) -> dict[str, Any]:
            priority_id = self._priority_id(wf, priority)  # an unknown name fails before the POST
            body = self.kind.create_body(wf, new)
            if priority_id and self.kind.create_takes_priority:
                body["priority_id"] = priority_id
            if wf.marker_property:
                body["properties"] = {wf.marker_property: " ".join(new.markers or (new.marker,))}
            return self.http.json("POST", f"{self.kind.api}{self.kind.items}", json=body)

        raw = self._with_fresh_ids(send)
        later_priority = None if self.kind.create_takes_priority else priority
        if not self._differs(raw, status, later_priority):
            return self._requirement(raw)
        created = iter([raw])

        def settle(wf: Workflow) -> dict[str, Any]:  # a retry re-reads where the item is
            current = next(created, None) or self._get_item(raw["id"])
            body = {}
            if later_priority and later_priority != name_of(current.get("priority")):
                body["priority_id"] = self._priority_id(wf, later_priority)
            target = status or name_of(current.get("state")) or ""
            return self.kind.move(wf, current, target, body)

        try:
            raw = self._with_fresh_ids(settle)
        except DealsyncError as exc:
            # The item exists now: report the problem without failing the create, which would
            # leave the engine unsure whether it happened. The engine sees the real status and
            # priority on the returned requirement and carries on from there.
            log.warning("%s: created %s but could not set its %s: %s", self.name,
                        raw.get("identifier"), "status or priority" if later_priority else
                        "status", exc)
        return self._requirement(raw)

    @staticmethod
    def _differs(raw: dict[str, Any], status: str | None, priority: str | None) -> bool:
        return bool((status and status != name_of(raw.get("state")))
                    or (priority and priority != name_of(raw.get("priority"))))

    def update(self, req_id: str, change: RequirementChange) -> Requirement:
        """docs/pingcode.md §7, §10. A status change is checked before the first PATCH where the
        kind allows, and the other changes ride on the first PATCH, so a refusal changes
        nothing."""
        fields = dict(change.fields)
        status = fields.pop("status", None)
        self._check_writable(fields, change.title)

        def send(wf: Workflow) -> dict[str, Any]:
            body: dict[str, Any] = {}
            if change.title is not None:
                body["title"] = change.title
            if change.description is not None:
                body["description"] = change.description
            if "priority" in fields:
                body["priority_id"] = self._priority_id(wf, fields["priority"])
            if status is not None:
                return self.kind.move(wf, self._get_item(req_id), status, body)
            if not body:
                return self._get_item(req_id)
            return self._patch(req_id, body)

        return self._requirement(self._with_fresh_ids(send))

    def _check_writable(self, fields: dict[str, Any], title: str | None) -> None:
        for name in fields:
            if name in READ_ONLY_FIELDS:
                raise ItemError(f"{name} is read-only in PingCode (it comes from "
                                f"{self.kind.delivery_source})", retryable=False)
            if name not in ("priority", *READ_ONLY_FIELDS):
                raise ItemError(f"PingCode connector cannot write field {name!r} (writable: "
                                f"status, priority)", retryable=False)
        limit = self.kind.title_limit
        if limit is not None and title is not None and len(title) > limit:
            raise ItemError(f"PingCode {self.kind.noun} titles are limited to {limit} "
                            f"characters; this one has {len(title)}", retryable=False)


def _kind_problem(kind: Any) -> str:
    return (f'must be "work_item" (Agile work items, the default) or "idea" (Ship ideas), '
            f"not {kind!r}")


def _work_item_problems(settings: dict[str, Any]) -> list[str]:
    problems = []
    if "project" not in settings:
        problems.append("project: required for type 'pingcode' with item_kind \"work_item\" "
                        "(the project identifier, e.g. SCR)")
    if "product" in settings:
        problems.append('product: only used with item_kind = "idea"; work items live in a '
                        "project (set project)")
    prefix = settings.get("path_prefix", PREFIXES[0])
    if prefix not in PREFIXES:
        problems.append(f"path_prefix: must be one of {', '.join(PREFIXES)}, not {prefix!r}")
    return problems


def _idea_problems(settings: dict[str, Any]) -> list[str]:
    problems = []
    if "product" not in settings:
        problems.append('product: required with item_kind = "idea" (the Ship product '
                        "identifier, e.g. SLC)")
    if "project" in settings:
        problems.append('project: not used with item_kind = "idea"; ideas belong to a Ship '
                        "product (set product)")
    if "work_item_type" in settings:
        problems.append('work_item_type: does not apply to item_kind = "idea" (Ship ideas have '
                        "no work item types)")
    if "path_prefix" in settings:
        problems.append('path_prefix: does not apply to item_kind = "idea"; Ship is always '
                        "under /v1/ship")
    return problems


class ItemKind:
    """What differs between the kinds of PingCode requirement: paths, how names resolve, the
    shape of an item's delivery and how an item reaches a state. The connector does the rest."""

    name: ClassVar[str]  # the item_kind setting
    noun: ClassVar[str]  # for messages
    scope_setting: ClassVar[str]  # the setting naming the container: project or product
    items: ClassVar[str]  # the collection, under ``api``
    create_takes_priority: ClassVar[bool]
    title_limit: ClassVar[int | None] = None
    delivery_source: ClassVar[str]  # where the read-only delivery comes from, for messages

    def __init__(self, conn: PingCodeConnector, api: str):
        self.conn = conn
        self.api = api  # path prefix of every call this kind makes

    def load_workflow(self) -> Workflow:
        raise NotImplementedError

    def forget(self) -> None:
        """Drop what this kind caches besides the workflow."""

    def rows_for_key(self, wf: Workflow, key: str) -> list[dict[str, Any]]:
        """Items that may be the one people call ``key``; the connector matches exactly."""
        raise NotImplementedError

    def create_body(self, wf: Workflow, new: NewRequirement) -> dict[str, Any]:
        raise NotImplementedError

    def delivery(self, raw: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def move(self, wf: Workflow, raw: dict[str, Any], target_name: str,
             body: dict[str, Any]) -> dict[str, Any]:
        """Bring ``raw`` to state ``target_name``, sending ``body`` with the first PATCH (or
        alone if the item is already there). A refusal leaves the item unchanged."""
        raise NotImplementedError


class WorkItems(ItemKind):
    """Agile work items of one type in one project (docs/pingcode.md §4-9)."""

    name = "work_item"
    noun = "work item"
    scope_setting = "project"
    items = "/work_items"
    create_takes_priority = True  # docs/pingcode.md §6
    delivery_source = "the planned version and end date"

    def __init__(self, conn: PingCodeConnector, api: str):
        super().__init__(conn, api)
        self._version_ends: dict[str, Any] | None = None

    def forget(self) -> None:
        self._version_ends = None

    def load_workflow(self) -> Workflow:
        conn = self.conn
        project = self._project()
        pid = project["id"]
        type_id = self._type_id(pid)
        states = {s["name"]: s for s in conn._all("/work_item/states", project_id=pid,
                                                  work_item_type_id=type_id)}
        priorities = {p["name"]: p for p in conn._all("/work_item/priorities", project_id=pid)}
        flows: dict[str, set[str]] = {}
        plan = next((p for p in conn._all("/work_item_state_plans", project_id=pid)
                     if ref_id(p.get("work_item_type")) == type_id), None)
        if plan is not None:
            for flow in conn._all(f"/work_item_state_plans/{plan['id']}/work_item_state_flows"):
                flows.setdefault(flow["from_state"]["id"], set()).add(flow["to_state"]["id"])
        workflow = Workflow(pid, f"{project['identifier']}/{type_id}", states, priorities,
                            scope_filter={"project.id": {"in": [pid]}}, type_id=type_id,
                            flows=flows, key_prefix=project["identifier"])
        if conn.settings.get("marker_property"):
            props = conn._all("/work_item/properties", project_id=pid, work_item_type_id=type_id)
            workflow.marker_property = conn._marker_property(
                props, f"type {type_id}",
                hint="create a text property in the project's work item settings")
        return workflow

    def _project(self) -> dict[str, Any]:
        conn = self.conn
        wanted = str(conn.settings["project"])
        projects = conn._all("/projects", identifier=wanted)
        match = next((p for p in projects if wanted in (p["identifier"], p["id"])), None)
        if match is None and re.fullmatch(r"[0-9a-f]{24}", wanted):
            match = next((p for p in conn._all("/projects") if p["id"] == wanted), None)
        if match is None:
            raise ConfigError([f"tracker.{conn.name}.project: PingCode has no project {wanted!r}"],
                              hint="use the project identifier shown in PingCode (e.g. SCR)")
        return match

    def _type_id(self, pid: str) -> str:
        conn = self.conn
        wanted = str(conn.settings.get("work_item_type", "story"))
        types = conn._all("/work_item/types", project_id=pid)
        match = next((t for t in types if wanted in (t["id"], t.get("name"))), None)
        if match is None:
            known = ", ".join(f"{t['id']} ({t.get('name')})" for t in types)
            raise ConfigError([f"tracker.{conn.name}.work_item_type: no type {wanted!r} in "
                               f"project {conn.settings['project']} (known: {known})"])
        return match["id"]

    def rows_for_key(self, wf: Workflow, key: str) -> list[dict[str, Any]]:
        return self.conn._all("/work_items", identifier=key, project_id=wf.scope_id)

    def create_body(self, wf: Workflow, new: NewRequirement) -> dict[str, Any]:
        return {"project_id": wf.scope_id, "type_id": wf.type_id, "title": new.title,
                "description": new.description}

    def delivery(self, raw: dict[str, Any]) -> str | None:
        """"v2.3 (2025-03-31)": the planned version(s) and the end date (the item's own, else
        its version's), either alone when the other is missing."""
        versions = raw.get("versions") or ([raw["version"]] if raw.get("version") else [])
        names = ", ".join(v["name"] for v in versions if v.get("name"))
        end = from_epoch(raw.get("end_at"))
        if end is None and versions:
            end = from_epoch(self._version_end(raw, versions[0]["id"]))
        return delivery_text(names, end)

    def _version_end(self, raw: dict[str, Any], version_id: str) -> int | None:
        """End dates of the project's versions (发布), read once. A version ref inside an item
        carries only id and name; the list needs the ``read:pjm:release`` scope, so without it
        delivery shows the version name alone."""
        if self._version_ends is None:
            conn = self.conn
            project_id = (raw.get("project") or {}).get("id") or conn.workflow().scope_id
            try:
                rows = conn._all(f"/projects/{project_id}/versions")
            except (AuthError, ItemError, RemoteError) as exc:
                log.warning("%s: cannot read version end dates (%s); delivery shows version "
                            "names only", conn.name, exc)
                rows = []
            self._version_ends = {v["id"]: v.get("end_at") for v in rows}
        return self._version_ends.get(version_id)

    def move(self, wf: Workflow, raw: dict[str, Any], target_name: str,
             body: dict[str, Any]) -> dict[str, Any]:
        """Walk the state flows one allowed transition at a time (docs/pingcode.md §7, §9).
        Raises ``TransitionError`` before any PATCH if no path exists."""
        target = self.conn._state(wf, target_name)["id"]
        current = (raw.get("state") or {}).get("id")
        path = wf.path(current, target)
        if path is None:
            here = wf.state_name(current)
            reachable = sorted(wf.state_name(s) for s in (wf.flows or {}).get(current, ()))
            error = TransitionError(
                f"{raw.get('identifier', raw['id'])}: cannot move from {here!r} to "
                f"{target_name!r}: the workflow of {wf.where} has no transition "
                f"{here} → {target_name} and no path through other states "
                f"(from {here!r} it allows: {', '.join(reachable) or 'nothing'})",
                f"add the transition {here} → {target_name} in PingCode's state flow settings, "
                f"or move the item by hand")
            error.code = "100379"  # type: ignore[attr-defined]  # as the server would say
            raise error
        if not path and not body:
            return raw
        for index, hop in enumerate(path or [None]):
            patch = {**body} if index == 0 else {}
            if hop is not None:
                patch["state_id"] = hop
            raw = self.conn._patch(raw["id"], patch)
        return raw


class Ideas(ItemKind):
    """Ship ideas (需求, customer demands) of one product (docs/pingcode.md §10)."""

    name = "idea"
    noun = "idea"
    scope_setting = "product"
    items = "/ideas"
    # No state or priority on create: PATCH them afterwards (docs/pingcode.md §10).
    create_takes_priority = False
    title_limit = 255  # docs/pingcode.md §10
    delivery_source = "the idea's plan (排期) and planned time (plan_at)"

    def load_workflow(self) -> Workflow:
        """States and priorities are per product, and there are no flows to read: ideas have
        no flow endpoint (docs/pingcode.md §10), so ``flows`` stays None and ``move`` asks
        Ship."""
        conn = self.conn
        product = self._product()
        pid = product["id"]
        states = {s["name"]: s for s in conn._all("/idea/states", product_id=pid)}
        priorities = {p["name"]: p for p in conn._all("/idea/priorities", product_id=pid)}
        workflow = Workflow(pid, product["identifier"], states, priorities,
                            scope_filter={"product.id": {"in": [pid]}}, flows=None,
                            key_prefix=product["identifier"])
        if conn.settings.get("marker_property"):
            props = conn._all("/idea/properties", product_id=pid)
            workflow.marker_property = conn._marker_property(
                props, f"the ideas of product {product['identifier']}",
                hint="create a text property in the product's idea settings (Ship)")
        return workflow

    def _product(self) -> dict[str, Any]:
        """The product list filters by ``keywords`` and dates only, not by identifier
        (docs/pingcode.md §10), so read it (products are few) and match the identifier or id
        exactly."""
        conn = self.conn
        wanted = str(conn.settings["product"])
        products = conn._all("/products")
        match = next((p for p in products if wanted in (p.get("identifier"), p["id"])), None)
        if match is None:
            known = ", ".join(p.get("identifier") or p["id"] for p in products) or "none"
            raise ConfigError([f"tracker.{conn.name}.product: PingCode Ship has no product "
                               f"{wanted!r} (known: {known})"],
                              hint="use the product identifier shown in Ship (e.g. SLC)")
        return match

    def rows_for_key(self, wf: Workflow, key: str) -> list[dict[str, Any]]:
        """The idea list has no identifier filter; ``keywords`` matches the idea number
        (需求编号) and the title (docs/pingcode.md §10), so titles mentioning the key come back
        too and the connector keeps only the exact identifier."""
        return self.conn._all("/ideas", product_id=wf.scope_id, keywords=key)

    def create_body(self, wf: Workflow, new: NewRequirement) -> dict[str, Any]:
        return {"product_id": wf.scope_id, "title": new.title, "description": new.description}

    def delivery(self, raw: dict[str, Any]) -> str | None:
        """"2025 Q2 版本 (2025-06-30)": the plan (排期) the idea is scheduled in and the end of
        its planned time ``plan_at.to``, either alone: ``plan{id,url,name}`` and
        ``plan_at{from,to,granularity}`` in the idea shape (docs/pingcode.md §10). The end is
        printed as a day whatever the granularity (year, quarter, month, day): it is the last
        second of the period, so its date is the period's last day."""
        plan = name_of(raw.get("plan")) or ""
        return delivery_text(plan, from_epoch((raw.get("plan_at") or {}).get("to")))

    def move(self, wf: Workflow, raw: dict[str, Any], target_name: str,
             body: dict[str, Any]) -> dict[str, Any]:
        """One PATCH with ``state_id`` and ``body``. Ship publishes no idea flows, so every
        listed state is a candidate and Ship is the judge: it refuses a state its plan does not
        allow with 100702/100719, atomically (docs/pingcode.md §10, §13, §15.4). That refusal
        becomes a TransitionError naming both states."""
        target = self.conn._state(wf, target_name)["id"]
        current = (raw.get("state") or {}).get("id")
        patch = dict(body)
        if target != current:
            patch["state_id"] = target
        if not patch:
            return raw
        try:
            return self.conn._patch(raw["id"], patch)
        except TransitionError as exc:
            if error_code(exc) not in SHIP_STATE_CODES:
                raise
            here = wf.state_name(current) if current else "?"
            error = TransitionError(
                f"{raw.get('identifier', raw['id'])}: PingCode Ship refused to move the idea "
                f"from {here!r} to {target_name!r} (code {error_code(exc)}: the state is not "
                f"one of product {wf.where}'s idea states, or its state plan does not allow "
                f"it from {here!r}): {exc}",
                f"Ship publishes no idea state flows to check beforehand; look at the idea "
                f"states and state plan of product {wf.where} in Ship, or move the idea by hand")
            error.code = error_code(exc)  # type: ignore[attr-defined]  # for _with_fresh_ids
            raise error from None


def _oldest(raw: dict[str, Any]) -> tuple[Any, str]:
    """Where several items carry one marker, the first one created is the one dealsync made."""
    return (raw.get("created_at") or 0, raw["id"])
