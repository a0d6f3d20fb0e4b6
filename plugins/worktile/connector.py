"""The Worktile tracker connector: the tasks of one project, through Worktile's team Open API.

It owns what that API makes awkward: the tenant token whose ``expires_in`` is a duration
(docs/worktile.md §2), refused tokens that arrive as HTTP 200 bodies as well as 401s
(docs/worktile.md §3), replies checked before use and nginx's HTML error pages
(docs/worktile.md §11, §13), the ``items``/``value`` and bare-array envelopes with ``page_index``
from 0 (docs/worktile.md §5), at most three requests in flight (docs/worktile.md §11), change
detection by scanning the project because there is no updated-since filter (docs/worktile.md §9),
states and priorities by name (docs/worktile.md §6), and every write after creation as a capability:
on only where the instance's ``task_writes`` setting says so and the API proves it
(docs/worktile.md §10). Creating a task, with its priority and the deal context in its description,
is always possible (docs/worktile.md §8).

Look-ups have no search to lean on, so one scan serves several purposes within a run: every
scan remembers each task's key, id, creation time and marker text, and ``find_by_keys`` and
``find_by_markers`` answer from what the run's change scan already read.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, TypeVar
from zoneinfo import ZoneInfo

import requests

from sync.connectors import (InstanceContext, NewRequirement, RateLimit, Requirement,
                             RequirementChange, SecretSpec, TrackerConnector, has_marker,
                             workflow_path)
from sync.errors import (AmbiguousWrite, AuthError, ConfigError, DealsyncError, ItemError,
                         RemoteError, TransitionError)
from sync.http import (RefreshingToken, app_token_clients, default_error, describe,
                       renew_at)

log = logging.getLogger("dealsync.worktile")

# the team API's prefix on the public cloud and private hosts alike (docs/worktile.md §2)
API = "/open-api"
DEFAULT_BASE_URL = "https://dev.worktile.com"
# Asked per page. Production accepted 200 without an error; a server may cap it silently, so
# the effective size is whatever the first page holds (docs/worktile.md §5). One that refuses an
# oversized page instead is asked again with the next size down (20 is the default size).
PAGE_SIZES = (200, 100, 20)
BY_IDS_BATCH = 100  # ids per get-tasks-by-ids call; no limit is on record, so stay modest
MAX_IN_FLIGHT = 3  # about 8 in parallel draw 429s, 3 is stable (docs/worktile.md §11)
# used only if a token reply carries no expires_in (docs/worktile.md §2)
DEFAULT_TOKEN_TTL_S = 7200.0
TOKEN_EARLY_S = 300.0  # renew this long before expiry, or half-way for short-lived tokens
AUTH_CODES = frozenset({1102, 1103})  # malformed, unknown or expired token (docs/worktile.md §3)
# what the emulator answers bad client credentials with (docs/worktile.md §2)
CREDENTIAL_CODE = 1101
AUTH_BODY_MAX = 4096  # an auth error body is tiny; a page of tasks is not worth parsing twice
# Whole-day dates are Beijing midnights (docs/worktile.md §5); a due date is shown as that day.
WORKTILE_TZ = ZoneInfo("Asia/Shanghai")
PROBE_ID = "0" * 24  # a well-formed task id no task has: a write probe cannot change anything

# Writes after creation (docs/worktile.md §10). Each capability rides on one endpoint; a 404 or 405
# from that endpoint turns off every capability on it.
CAPABILITIES = ("update", "state", "priority")
ENDPOINT_OF = {"update": "update", "priority": "update", "state": "state"}
CAPABILITY_OF = {"status": "state", "priority": "priority", "description": "update",
                 "title": "update"}
READ_ONLY_FIELDS = ("due",)
MISSING_ROUTE = frozenset({404, 405})

T = TypeVar("T")
R = TypeVar("R")


# -- replies and errors ----------------------------------------------------------------------------
def error_code(response: requests.Response) -> int | None:
    """``error_code`` of a JSON error body (``{"ok": false, "error_code": …}``,
    docs/worktile.md §3, §13)."""
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("ok") is not False:
        return None
    try:
        return int(body.get("error_code"))
    except (TypeError, ValueError):
        return None


def _message(response: requests.Response, code: int | None) -> str:
    """The request, the status and, for a JSON body, the raw body: only the auth codes are on
    record, so whatever else Worktile says is kept for the person reading it
    (docs/worktile.md §13)."""
    text = describe(response)
    if code is not None:
        raw = json.dumps(response.json(), ensure_ascii=False)  # readable, \u escapes or not
        text += f": {raw[:300]}"
    return text


def map_error(response: requests.Response) -> DealsyncError:
    """By HTTP status first, then by ``ok``/``error_code`` when the body is JSON
    (docs/worktile.md §13)."""
    status, code = response.status_code, error_code(response)
    message = _message(response, code)
    if code in AUTH_CODES or code == CREDENTIAL_CODE or status in (401, 403):
        return AuthError(message, hint="check the instance's client_id and client_secret "
                                       "(`dealsync auth status`); Worktile refused them or the "
                                       "token made from them")
    if status in MISSING_ROUTE:
        # Worktile has no such route. For a read this is a wrong base_url; for a write after
        # creation it is the documented state of the API (docs/worktile.md §10), which the caller
        # handles.
        return RemoteError(message, hint="check base_url of this instance (the API lives under "
                                         f"{API}, e.g. {DEFAULT_BASE_URL})",
                           status=status, code=None if code is None else str(code))
    if status == 200 or (400 <= status < 500 and status != 429):
        return ItemError(message, retryable=False)
    return default_error(response)


def rows_of(body: Any) -> tuple[list[dict[str, Any]], bool | None, int | None]:
    """A list reply's rows, ``has_more`` and ``total``: rows under ``items`` or ``value``, or a
    bare array that says neither (docs/worktile.md §5)."""
    if isinstance(body, list):
        return body, None, None
    if not isinstance(body, dict):
        raise RemoteError(f"Worktile answered a list request with {type(body).__name__}")
    rows = body.get("items", body.get("value"))
    if not isinstance(rows, list):
        keys = ", ".join(sorted(body)[:8]) or "none"
        raise RemoteError(f"Worktile answered a list without items or value (its keys: {keys})",
                          hint="check base_url of this instance")
    more = body.get("has_more")
    total = body.get("total")
    return rows, None if more is None else bool(more), total if isinstance(total, int) else None


def from_epoch(value: Any) -> datetime | None:
    """Worktile prints unix seconds (docs/worktile.md §5)."""
    if value in (None, "", 0):
        return None
    return datetime.fromtimestamp(float(value), timezone.utc)


def unwrap(value: Any) -> Any:
    """V2 rows and details wrap each property as ``{"value": …}`` (docs/worktile.md §7.1)."""
    if isinstance(value, dict) and set(value) == {"value"}:
        return value["value"]
    return value


def plain_text(desc: Any) -> str:
    """A description as text. What dealsync sends is stored as sent; what a person types is a
    JSON string of slate-style blocks, read here as its paragraphs' text (docs/worktile.md §7.2)."""
    if not isinstance(desc, str):
        return ""
    if not desc.startswith("[{"):
        return desc
    try:
        blocks = json.loads(desc)
    except ValueError:
        return desc
    if not (isinstance(blocks, list) and all(isinstance(b, dict) for b in blocks)):
        return desc
    return "\n".join("".join(_texts(b)) for b in blocks)


def _texts(node: dict[str, Any]) -> Iterator[str]:
    if isinstance(node.get("text"), str):
        yield node["text"]
    for child in node.get("children") or []:
        if isinstance(child, dict):
            yield from _texts(child)


def due_day(value: Any) -> str | None:
    """``{"date": seconds, "with_time": 0|1}`` as the Beijing day (docs/worktile.md §5); unset is
    date 0."""
    value = unwrap(value)
    if not isinstance(value, dict) or not value.get("date"):
        return None
    return datetime.fromtimestamp(int(value["date"]), WORKTILE_TZ).date().isoformat()


def write_form(value: Any) -> Any:
    """A property value as a V1 row shows it, in the form a write takes: references (select
    options, priorities) by ``_id`` (docs/worktile.md §6.3, §6.4)."""
    if isinstance(value, dict) and "_id" in value:
        return value["_id"]
    if isinstance(value, list):
        return [write_form(v) for v in value]
    return value


# -- authentication --------------------------------------------------------------------------------
class TenantToken(RefreshingToken):
    """The team token, sent as both the Bearer header and ``access_token`` (the docs ask for
    both; production is known to accept the query parameter, docs/worktile.md §3). A refusal is a
    401 or an HTTP 200 body with error_code 1102/1103; either is renewed once and replayed."""

    def params(self) -> dict[str, str]:
        return {"access_token": self.token()}

    def rejected(self, response: requests.Response) -> bool:
        if response.status_code == 401:
            return True
        if response.status_code != 200 or len(response.content) > AUTH_BODY_MAX:
            return False
        return error_code(response) in AUTH_CODES


# -- what names resolve to -------------------------------------------------------------------------
@dataclass
class Project:
    """The project and the task type new requirements get, read once per connector."""

    id: str
    identifier: str
    prefix: str  # task keys are <prefix>-<number> (docs/worktile.md §7.1)


@dataclass
class TaskType:
    id: str
    name: str
    where: str  # for messages: "DS/需求"
    states: dict[str, dict[str, Any]]  # name -> {_id, name, type}
    initial_state_id: str
    flows: list[tuple[str, str]]  # (from state id, to state id)
    property_keys: list[str]

    def state_name(self, state_id: str) -> str:
        return next((n for n, s in self.states.items() if s["_id"] == state_id), state_id)


@dataclass
class ScanIndex:
    """What the latest full scan (and every task read since) showed about each task: enough to
    answer key and marker look-ups without another scan."""

    ids: dict[str, str] = field(default_factory=dict)  # KEY-12 -> task id
    marks: dict[str, str] = field(default_factory=dict)  # task id -> text carrying markers
    created: dict[str, float] = field(default_factory=dict)  # task id -> created_at
    top: int = 0  # the highest task number seen
    marker_source: str | None = None  # what ``marks`` holds: a property key or "desc"
    scanned_at: float | None = None  # when the last full scan finished; None: none has


# -- the connector ---------------------------------------------------------------------------------
class WorktileConnector(TrackerConnector):
    type_name = "worktile"
    summary = "Worktile project tasks (team Open API, tenant token); writes after creation opt-in"
    secrets = (SecretSpec("client_id", "Worktile app client_id (企业后台 → 开放平台)"),
               SecretSpec("client_secret", "Worktile app client_secret"))
    # Worktile publishes no limit (docs/worktile.md §11). The in-flight cap of 3 is what keeps
    # requests stable; this window paces a long scan and leaves room for other tools using the same
    # app.
    default_rate_limits = {"default": RateLimit(20, 1.0)}
    batch_size = 1
    concurrent = True  # its own HTTP client and state (docs/engine.md §9)
    required_settings = ("project",)
    setup_settings = {"base_url": DEFAULT_BASE_URL, "project": None}  # `dealsync init`
    settings_help = {
        "base_url": f"Worktile host, default {DEFAULT_BASE_URL} (a private deployment has its "
                    f"own); the API is under {API}",
        "project": "project identifier (e.g. DS) or id",
        "task_type": "task type new requirements get, by name or id (default 需求)",
        "marker_property": "optional key of a custom text property (e.g. crm_deal) that also "
                           "carries dealsync's marker: look-ups then scan only that property",
        "task_writes": "writes after creation, which Worktile's documented API lacks: false "
                       "(default), true, or a list of update, state, priority. Each one is "
                       "checked against the API; a 404 or 405 turns it off for the run",
        "priorities": "optional list of the project's priority names, in order (Worktile has "
                      "no endpoint listing them; otherwise they are learned from tasks)",
        "task_url": "optional address of a task in the Worktile web app, with {id}, "
                    "{identifier} and {project_id}, e.g. "
                    "https://acme.worktile.com/mission/projects/{project_id}/tasks/{id}",
    }

    def __init__(self, ctx: InstanceContext, *, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 clock: Callable[[], float] = time.time):
        """``session``, ``sleep``, ``monotonic`` and ``clock`` (wall time, for token expiry)
        are for tests and benchmarks on the emulator's virtual clock."""
        super().__init__(ctx)
        base_url = str(self.settings.get("base_url", DEFAULT_BASE_URL))
        self._clock = clock
        self._credentials, self._token_http, self.http = app_token_clients(
            self.name, base_url, self._fetch_token, rate_limits=self.rate_limits(),
            token_auth=TenantToken, clock=clock, session=session, map_error=map_error,
            sleep=sleep, monotonic=monotonic)
        self.clients += [self._token_http, self.http]
        # The token call stays outside: it is made by a request already holding a slot, before
        # that request is sent, so a slot never holds two requests on the wire.
        self._in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        self._writes = set(configured_writes(self.settings.get("task_writes", False)))
        self._proven: set[str] = set()  # endpoints the API has answered for
        self.write_notes: list[str] = []  # why a configured write was turned off, once each
        self._project: Project | None = None
        self._type: TaskType | None = None
        self._priority_ids: dict[str, str] | None = None
        self._index = ScanIndex()
        self._index_lock = threading.Lock()
        self._page_size = PAGE_SIZES[0]

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> list[str]:
        problems = super().check_settings(settings)
        base_url = settings.get("base_url", DEFAULT_BASE_URL)
        if not (isinstance(base_url, str) and re.match(r"https?://", base_url)):
            problems.append("base_url: must start with https:// (or http:// for the emulator)")
        for key in ("project", "task_type", "marker_property"):
            if key in settings and not (isinstance(settings[key], str) and settings[key]):
                problems.append(f"{key}: must be a non-empty string")
        try:
            configured_writes(settings.get("task_writes", False))
        except ValueError as exc:
            problems.append(f"task_writes: {exc}")
        priorities = settings.get("priorities")
        if priorities is not None and not (isinstance(priorities, list) and priorities and all(
                isinstance(p, str) and p for p in priorities)):
            problems.append("priorities: must be a list of the project's priority names")
        problems += _task_url_problems(settings.get("task_url"))
        return problems

    # -- plumbing ----------------------------------------------------------------------------------
    def _fetch_token(self) -> tuple[str, float]:
        """POST the app's credentials; ``expires_in`` is a duration, an epoch only if it is
        above 1e9 (docs/worktile.md §2, §15.2). A reply without a token is a failed login, whatever
        its status. Returns the time to renew at: TOKEN_EARLY_S early, or half-way for short
        tokens."""
        client_id, secret = self.ctx.secret("client_id"), self.ctx.secret("client_secret")
        self._credentials.value = secret
        response = self._token_http.request(
            "POST", f"{API}/tenant-access-token", idempotent=True,  # asking again is harmless
            json={"client_id": client_id, "client_secret": secret})
        body = self._body(response)
        token = body.get("tenant_access_token") if isinstance(body, dict) else None
        if not token:
            raise AuthError(f"Worktile gave tracker {self.name!r} no token: "
                            f"{_message(response, error_code(response))}",
                            hint=f"check client_id and client_secret of instance {self.name!r} "
                                 "(`dealsync auth status`) against the app in Worktile")
        expires_in = float(body.get("expires_in") or DEFAULT_TOKEN_TTL_S)
        return str(token), renew_at(expires_in, self._clock(), TOKEN_EARLY_S,
                                    self._token_http.server_time())

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call under the in-flight cap; its body, checked (``_body``)."""
        with self._in_flight:
            response = self.http.request(method, API + path, **kwargs)
        return self._body(response)

    @staticmethod
    def _body(response: requests.Response) -> Any:
        """Every reply is checked before use: its content type first (a gateway answers HTML),
        then ``ok`` of a JSON object, which is false on errors sent as HTTP 200
        (docs/worktile.md §3, §15.3)."""
        if not response.content:
            return None
        content_type = response.headers.get("Content-Type", "")
        if "json" not in content_type:
            raise RemoteError(f"{describe(response)}: the reply is {content_type or 'untyped'}, "
                              "not JSON", hint="a proxy or gateway page answered instead of the "
                                               "API; check base_url of this instance",
                              status=response.status_code)
        try:
            body = response.json()
        except ValueError:
            raise RemoteError(f"{describe(response)}: the reply is not valid JSON",
                              status=response.status_code) from None
        if isinstance(body, dict) and body.get("ok") is False:
            raise map_error(response)
        return body

    def _get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params=params)

    def _ahead(self, work: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``work`` over ``items`` on up to MAX_IN_FLIGHT threads, results in order, never more
        than MAX_IN_FLIGHT started ahead of the consumer."""
        todo = iter(items)
        with ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix=f"{self.name}-read") as pool:
            pending = deque(pool.submit(work, item) for item in islice(todo, MAX_IN_FLIGHT))
            try:
                while pending:
                    result = pending.popleft().result()
                    following = next(todo, None)
                    if following is not None:
                        pending.append(pool.submit(work, following))
                    yield result
            finally:
                for future in pending:
                    future.cancel()

    def _paged(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every row of a by-page list: ``page_index`` from 0 until ``has_more`` is false or a
        page is empty, never stopping at a short page (docs/worktile.md §5). When the first page
        gives
        ``total``, the remaining pages are known and fetched up to three at a time."""
        def page(index: int) -> tuple[list[dict[str, Any]], bool | None, int | None]:
            return rows_of(self._get(path, **params, page_size=self._page_size,
                                     page_index=index))

        rows, more, total = self._first_page(page)
        ahead: Iterator[tuple[list[dict[str, Any]], bool | None, int | None]] = iter(())
        if more and total and rows:
            ahead = self._ahead(page, range(1, math.ceil(total / len(rows))))
        index = 0
        try:
            while True:
                yield from rows
                if not rows or more is False:
                    return
                index += 1
                rows, more, _ = next(ahead, None) or page(index)
        finally:
            close = getattr(ahead, "close", None)
            if close is not None:
                close()

    def _first_page(self, page: Callable[[int], T]) -> T:
        """Page 0, asking a smaller page size while the service refuses the size
        (docs/worktile.md §5)."""
        while True:
            try:
                return page(0)
            except ItemError as exc:
                smaller = [size for size in PAGE_SIZES if size < self._page_size]
                if not smaller:
                    raise
                log.info("%s: %s; asking %d rows a page instead of %d", self.name, exc,
                         smaller[0], self._page_size)
                self._page_size = smaller[0]

    # -- names to ids ------------------------------------------------------------------------------
    def project(self) -> Project:
        """The configured project, by identifier or id (docs/worktile.md §4), read once."""
        if self._project is None:
            wanted = str(self.settings["project"])
            projects = list(self._paged("/mission/get-projects-by-page", {}))
            match = next((p for p in projects if wanted in (
                p.get("identifier"), p.get("_id"), p.get("task_identifier_prefix"))), None)
            if match is None:
                known = ", ".join(str(p.get("identifier")) for p in projects) or "none"
                raise ConfigError([f"tracker.{self.name}.project: Worktile has no project "
                                   f"{wanted!r} the app can see (known: {known})"],
                                  hint="use the project identifier shown in Worktile (e.g. DS), "
                                       "and make the app a member of the project")
            self._project = Project(match["_id"], match.get("identifier") or wanted,
                                    match.get("task_identifier_prefix") or match["identifier"])
        return self._project

    def task_type(self) -> TaskType:
        """The task type new requirements get, with its states, flows and properties
        (docs/worktile.md §6.1, docs/worktile.md §6.2: the paths are the emulator's assumption, the
        endpoints are listed in the docs)."""
        if self._type is None:
            project = self.project()
            wanted = str(self.settings.get("task_type", "需求"))
            refs = rows_of(self._get(f"/mission/projects/{project.id}/task-types"))[0]
            ref = next((t for t in refs if wanted in (t.get("_id"), t.get("name"))), None)
            if ref is None:
                known = ", ".join(str(t.get("name")) for t in refs) or "none"
                raise ConfigError([f"tracker.{self.name}.task_type: project "
                                   f"{project.identifier} has no task type {wanted!r} "
                                   f"(known: {known})"])
            detail = self._get(f"/mission/projects/{project.id}/task-types/{ref['_id']}")
            states = {s["name"]: s for s in detail.get("states") or []}
            flows = [(f["from_state_id"], f["to_state_id"]) for f in detail.get("flows") or []]
            props = detail.get("properties")
            keys = [p["key"] for p in props or [] if p.get("key")]
            self._type = TaskType(ref["_id"], ref.get("name") or wanted,
                                  f"{project.identifier}/{ref.get('name') or wanted}", states,
                                  detail.get("initial_state_id") or "", flows, keys)
            if props is not None:
                self._check_marker_property(props)
        return self._type

    def _check_marker_property(self, props: list[dict[str, Any]]) -> None:
        """The marker property must be a text property of the type (docs/worktile.md §6.4: types 1
        and 2)."""
        wanted = self.settings.get("marker_property")
        if not wanted:
            return
        match = next((p for p in props if wanted in (p.get("key"), p.get("name"))), None)
        if match is None or match.get("type") not in (1, 2):
            known = ", ".join(f"{p.get('key')} ({p.get('name')})" for p in props
                              if p.get("type") in (1, 2)) or "none"
            raise ConfigError([f"tracker.{self.name}.marker_property: {wanted!r} is not a text "
                               f"property of task type {self._where()} (text properties: "
                               f"{known})"], hint="create a text property for the task type in "
                                                  "Worktile, or remove marker_property")

    def _where(self) -> str:
        return self._type.where if self._type else str(self.settings.get("project"))

    def _marker_key(self) -> str | None:
        """The configured marker property's key (a name is resolved through the type)."""
        wanted = self.settings.get("marker_property")
        return str(wanted) if wanted else None

    def _priorities(self) -> dict[str, str]:
        """Priority names to ids. Worktile documents no endpoint listing them
        (docs/worktile.md §6.3): ask the one the emulator assumes, accept its absence, and learn
        the rest from tasks read."""
        if self._priority_ids is None:
            self._priority_ids = {}
            try:
                rows = rows_of(self._get(f"/mission/projects/{self.project().id}/priorities"))[0]
            except RemoteError as exc:
                if exc.status not in MISSING_ROUTE:
                    raise
                rows = []
            for row in rows:
                self._learn_priority(row)
        return self._priority_ids

    def _learn_priority(self, value: Any) -> None:
        value = unwrap(value)
        if isinstance(value, dict) and value.get("name") and value.get("_id"):
            if self._priority_ids is None:
                self._priority_ids = {}
            self._priority_ids.setdefault(value["name"], value["_id"])

    def _priority_id(self, name: str) -> str:
        known = self._priorities()
        if name not in known:  # not seen yet: read every task's priority once
            self._light_scan()
            known = self._priorities()
        if name not in known:
            raise ItemError(f"Worktile priority {name!r} is not known in project "
                            f"{self.project().identifier} (known: {', '.join(known) or 'none'})",
                            hint="Worktile lists no priorities: set this priority on any task of "
                                 "the project once, or fix the mapping's priority values")
        return known[name]

    # -- shapes ------------------------------------------------------------------------------------
    def _requirement(self, raw: dict[str, Any]) -> Requirement:
        props = raw.get("properties") or {}
        priority = unwrap(props.get("priority"))
        self._learn_priority(priority)
        return Requirement(
            id=raw["_id"], key=raw["identifier"], title=raw.get("title") or "",
            description=plain_text(unwrap(props.get("desc"))), url=self._url(raw),
            updated_at=from_epoch(raw["updated_at"]),  # type: ignore[arg-type]
            created_at=from_epoch(raw.get("created_at")),
            fields={"status": (raw.get("task_state") or {}).get("name"),
                    "priority": priority.get("name") if isinstance(priority, dict) else None,
                    "due": due_day(props.get("due"))})

    def _url(self, raw: dict[str, Any]) -> str | None:
        template = self.settings.get("task_url")
        if not template:
            return None
        return str(template).format(id=raw["_id"], identifier=raw["identifier"],
                                    project_id=raw.get("project_id") or "")

    def _fields(self, *extra: str) -> str:
        """Always name the properties: V1 rows carry only those (docs/worktile.md §7.1). The light
        set is the priority (its ids are learned from tasks, docs/worktile.md §6.3) and the marker
        property."""
        keys = ["priority", *extra]
        marker = self._marker_key()
        if marker:
            keys.append(marker)
        return ",".join(dict.fromkeys(keys))

    def _full_fields(self) -> str:
        return self._fields("desc", "due")

    def _light_scan(self) -> None:
        """Scan for the index alone (keys, markers in the property, priorities)."""
        for _ in self._scan(self._fields().split(",")):
            pass

    # -- the scan index ----------------------------------------------------------------------------
    def _remember(self, raw: dict[str, Any]) -> None:
        """Note a task's key, id, creation time and, where this read carried it, the text its
        markers are in: every read keeps the index current, creates included."""
        with self._index_lock:
            index = self._index
            key = str(raw.get("identifier") or "").upper()
            if key:
                index.ids[key] = raw["_id"]
                index.top = max(index.top, _number(key))
            index.created[raw["_id"]] = float(raw.get("created_at") or 0)
            props = raw.get("properties") or {}
            if index.marker_source is not None and index.marker_source in props:
                text = unwrap(props[index.marker_source])
                index.marks[raw["_id"]] = text if isinstance(text, str) else ""

    def _scan(self, keys: list[str]) -> Iterator[dict[str, Any]]:
        """Every task of the project, with the properties ``keys``, once each (offset paging
        over changing rows may repeat one, docs/worktile.md §5). The index starts over with this
        scan and counts as complete only once the scan is."""
        source = self._marker_key() or "desc"
        with self._index_lock:
            self._index = ScanIndex(marker_source=source if source in keys else None)
        seen: set[str] = set()
        params = {"project_id": self.project().id, "fields": ",".join(keys)}
        for raw in self._paged("/mission/get-project-tasks-by-page", params):
            if raw["_id"] in seen:
                continue
            seen.add(raw["_id"])
            self._learn_priority((raw.get("properties") or {}).get("priority"))
            self._remember(raw)
            yield raw
        self._index.scanned_at = self._clock()

    def _tasks_by_ids(self, ids: list[str], fields: str) -> dict[str, dict[str, Any]]:
        """Tasks by id, BY_IDS_BATCH a call, up to three calls at once; unknown ids are simply
        missing from the bare array (docs/worktile.md §5). If a batch is refused because it names an
        unknown id (``by_ids_unknown``), its ids are asked one by one and a refused one is gone."""
        def batch(chunk: list[str]) -> list[dict[str, Any]]:
            try:
                return self._by_ids(chunk, fields)
            except ItemError:
                if len(chunk) == 1:
                    return []
                return [row for one in chunk for row in batch([one])]

        chunks = [ids[i:i + BY_IDS_BATCH] for i in range(0, len(ids), BY_IDS_BATCH)]
        found: dict[str, dict[str, Any]] = {}
        for rows in self._ahead(batch, chunks):
            for raw in rows:
                self._remember(raw)
                found[raw["_id"]] = raw
        return found

    def _by_ids(self, ids: list[str], fields: str) -> list[dict[str, Any]]:
        return rows_of(self._get("/mission/get-tasks-by-ids", task_ids=",".join(ids),
                                 fields=fields))[0]

    # -- reading -----------------------------------------------------------------------------------
    def iter_changed(self, since: datetime | None, until: datetime) -> Iterator[Requirement]:
        """There is no updated-since filter (docs/worktile.md §9): scan the project and compare
        ``updated_at``. From the beginning every task is wanted, so one scan reads them whole.
        Otherwise the scan asks only the small properties (priority, the marker) and the few tasks
        that changed are read whole by id afterwards: the same number of pages, far fewer bytes,
        and the index for look-ups comes with it."""
        if since is None:
            for raw in self._scan(self._full_fields().split(",")):
                req = self._requirement(raw)
                if req.updated_at <= until:
                    yield req
            return
        changed = [raw["_id"] for raw in self._scan(self._fields().split(","))
                   if _within(raw, since, until)]
        for raw in self._tasks_by_ids(changed, self._full_fields()).values():
            yield self._requirement(raw)

    def fetch(self, ids: list[str]) -> dict[str, Requirement]:
        rows = self._tasks_by_ids(list(dict.fromkeys(ids)), self._full_fields())
        return {task_id: self._requirement(raw) for task_id, raw in rows.items()}

    def key_prefix(self) -> str | None:
        return self.project().prefix

    def find_by_key(self, key: str) -> Requirement | None:
        return self.find_by_keys([key]).get(key)

    def find_by_keys(self, keys: list[str]) -> dict[str, Requirement]:
        """No filter by identifier is on record, so keys come from the scan index (the run's
        change scan filled it): a scan only if there has been none, or a key names a task
        newer than any seen. Then one by-ids read for all of them."""
        wanted = {key: key.strip().upper() for key in keys}
        if self._index.scanned_at is None or any(
                k not in self._index.ids and _number(k) > self._index.top
                for k in wanted.values()):
            self._light_scan()
        ids = {key: self._index.ids[k] for key, k in wanted.items() if k in self._index.ids}
        rows = self._tasks_by_ids(list(dict.fromkeys(ids.values())), self._full_fields())
        return {key: self._requirement(rows[task_id]) for key, task_id in ids.items()
                if task_id in rows and rows[task_id]["identifier"].upper() == wanted[key]}

    def find_by_marker(self, marker: str) -> Requirement | None:
        return self.find_by_markers([marker], marker, 0).get(marker)

    def find_by_markers(self, markers: list[str], prefix: str,
                        marked: int) -> dict[str, Requirement]:
        """No search exists (docs/worktile.md §9), so markers come from a scan: of the marker
        property where one is configured (small rows, docs/worktile.md §15.5), else of the
        descriptions. The run's change scan already read the marker property, so then no call is
        needed but one by-ids read of the hits; tasks created since are in the index too. The first
        created wins."""
        if not markers:
            return {}
        source = self._marker_key() or "desc"
        if self._index.scanned_at is None or self._index.marker_source != source:
            for _ in self._scan(self._fields(*(["desc"] if source == "desc" else [])).split(",")):
                pass
        index = self._index
        hits: dict[str, str] = {}
        for task_id, text in sorted(index.marks.items(),
                                    key=lambda item: (index.created.get(item[0], 0), item[0])):
            if prefix not in text:
                continue
            for marker in markers:
                if marker not in hits and has_marker(text, marker):
                    hits[marker] = task_id
        rows = self._tasks_by_ids(list(dict.fromkeys(hits.values())), self._full_fields())
        return {marker: self._requirement(rows[task_id]) for marker, task_id in hits.items()
                if task_id in rows}

    def field_values(self, field_name: str) -> list[str] | None:
        if field_name == "status":
            return list(self.task_type().states)
        if field_name == "priority":
            configured = self.settings.get("priorities")
            if configured:
                return list(configured)
            if not self._priorities():
                self._light_scan()
            return list(self._priorities())
        return None

    # -- write capabilities (docs/worktile.md §10) -------------------------------------------------
    def can_write(self, what: str) -> bool:
        """Creating is always possible. Changing a task afterwards is not in Worktile's
        documented API (docs/worktile.md §10): a capability is on only if ``task_writes`` names it
        and its endpoint exists (probed once, harmlessly, on a task id no task has)."""
        capability = CAPABILITY_OF.get(what)
        return capability is not None and self._capable(capability)

    def _capable(self, capability: str) -> bool:
        endpoint = ENDPOINT_OF[capability]
        if capability in self._writes and endpoint not in self._proven:
            self._probe(endpoint)
        return capability in self._writes

    def _probe(self, endpoint: str) -> None:
        """A write to a task that does not exist: a missing endpoint answers 404 or 405
        (docs/worktile.md §10), an existing one refuses the unknown task. Nothing can change either
        way."""
        path, body = _write_call(endpoint, PROBE_ID, {} if endpoint == "update"
                                 else {"task_state_id": PROBE_ID})
        try:
            self._call("PUT", path, json=body, label=f"PUT {API}/mission/tasks/{{id}}"
                       f"{'/state' if endpoint == 'state' else ''} (probe)")
        except RemoteError as exc:
            if exc.status not in MISSING_ROUTE:
                raise
            self._turn_off(endpoint, exc.status)
        except ItemError:
            pass  # the endpoint is there: it refused the made-up task
        self._proven.add(endpoint)

    def _turn_off(self, endpoint: str, status: int | None) -> None:
        """Report once, then act as if the capability had never been configured."""
        lost = sorted(c for c in self._writes if ENDPOINT_OF[c] == endpoint)
        if not lost:
            return
        self._writes -= set(lost)
        fields = sorted(f for f, c in CAPABILITY_OF.items() if c in lost)
        note = (f"{self.name}: Worktile answered HTTP {status} to its task {endpoint} "
                f"endpoint, so the {' and '.join(lost)} write{'s' if len(lost) > 1 else ''} "
                f"configured in task_writes {'are' if len(lost) > 1 else 'is'} off for this "
                f"run: CRM-side changes to {', '.join(fields)} are listed as manual updates "
                "(docs/worktile.md §10)")
        self.write_notes.append(note)
        log.warning("%s", note)

    def _write(self, endpoint: str, task: dict[str, Any], body: dict[str, Any]) -> Any:
        """A write after creation; a 404 or 405 turns its capability off (reported once) and
        fails only this item. Setting absolute values is harmless to repeat after a 5xx."""
        path, body = _write_call(endpoint, task["_id"], body)
        try:
            return self._call("PUT", path, json=body, idempotent=True)
        except RemoteError as exc:
            if exc.status not in MISSING_ROUTE:
                raise
            self._turn_off(endpoint, exc.status)
            raise ItemError(f"{task.get('identifier', task['_id'])}: Worktile has no task "
                            f"{endpoint} endpoint (HTTP {exc.status}); nothing was changed",
                            hint="the change is listed as a manual update from the next run; "
                                 "remove it from task_writes", retryable=False) from None

    def _require(self, capabilities: Iterable[str], what: str) -> None:
        for capability in capabilities:
            if not self._capable(capability):
                raise ItemError(f"tracker {self.name!r} cannot change {what} of a Worktile task "
                                f"after creation ({capability} is not on in task_writes, or the "
                                "API lacks it; docs/worktile.md §10)",
                                hint="mark the field manual = true in the mapping, or set "
                                     "direction = \"to_crm\"", retryable=False)

    # -- writing -----------------------------------------------------------------------------------
    def create(self, new: NewRequirement) -> Requirement:
        """docs/worktile.md §8: the deal's context goes into ``desc`` now, since it may never be
        changed later; the priority and the marker property too. The task starts in its type's
        initial state; a status is reached afterwards only where the state write is on."""
        fields = dict(new.fields)
        status, priority = fields.pop("status", None), fields.pop("priority", None)
        _refuse_other_fields(fields)
        task_type = self.task_type()
        properties: dict[str, Any] = {"desc": new.description}
        if priority:
            properties["priority"] = self._priority_id(priority)  # unknown: fails before POST
        marker = self._marker_key()
        if marker:
            properties[marker] = " ".join(new.markers or (new.marker,))
        raw = self._call("POST", "/mission/task", json={
            "project_id": self.project().id, "task_type_id": task_type.id, "title": new.title,
            "properties": properties})
        raw = self._verified(raw, properties)
        if status and status != (raw.get("task_state") or {}).get("name"):
            raw = self._settle_status(raw, status)
        return self._requirement(raw)

    def _verified(self, raw: Any, sent: dict[str, Any]) -> dict[str, Any]:
        """Unknown fields of a create are ignored (docs/worktile.md §8), so check that the
        description and marker stuck, reading the task back when the reply does not show them."""
        if not isinstance(raw, dict) or not raw.get("_id"):
            raise AmbiguousWrite(f"Worktile answered a create in {self._where()} without a task "
                                 f"id: {str(raw)[:200]}")
        self._remember(raw)
        if self._kept(raw, sent):
            return raw
        again = self._tasks_by_ids([raw["_id"]], self._full_fields()).get(raw["_id"], raw)
        if not self._kept(again, sent):
            log.error("%s: Worktile created %s but did not keep its description or marker; "
                      "it cannot be found again by its marker", self.name, raw.get("identifier"))
        return again

    @staticmethod
    def _kept(raw: dict[str, Any], sent: dict[str, Any]) -> bool:
        props = raw.get("properties") or {}
        return all(unwrap(props.get(key)) == sent[key] for key in sent if key != "priority")

    def _settle_status(self, raw: dict[str, Any], status: str) -> dict[str, Any]:
        """After a create: reach the deal's status where the state write is on. A failure
        leaves the task as created (the engine sees its real status) rather than failing a
        create that happened."""
        if not self._capable("state"):
            return raw
        try:
            self._move(raw, status)
            return self._tasks_by_ids([raw["_id"]], self._full_fields()).get(raw["_id"], raw)
        except DealsyncError as exc:
            log.warning("%s: created %s but could not set its status: %s", self.name,
                        raw.get("identifier"), exc)
            return raw

    def update(self, req_id: str, change: RequirementChange) -> Requirement:
        """docs/worktile.md §10 (every write here is an assumption of the emulator). Names are
        resolved and the state path found before anything is written, so a refusal changes nothing.
        Every property the task has is sent back with the change: right whether the service merges
        or replaces properties, which is not on record."""
        fields = dict(change.fields)
        status = fields.pop("status", None)
        has_priority = "priority" in fields
        priority = fields.pop("priority", None)
        _refuse_other_fields(fields)
        self._require({"state"} if status else set(), "status")
        self._require({"priority"} if has_priority else set(), "priority")
        self._require({"update"} if change.title is not None or change.description is not None
                      else set(), "the title or description")
        task = self._whole(req_id)
        path = self._path(task, status) if status else []
        changes: dict[str, Any] = {}
        if change.description is not None:
            changes["desc"] = change.description
        if has_priority:
            changes["priority"] = self._priority_id(priority) if priority else None
        body: dict[str, Any] = {} if change.title is None else {"title": change.title}
        if changes:
            current = {k: write_form(unwrap(v)) for k, v in (task.get("properties") or {}).items()
                       if unwrap(v) not in (None, "", [])}
            body["properties"] = {**current, **changes}
        if body:
            self._write("update", task, body)
        for state_id in path:
            self._write("state", task, {"task_state_id": state_id})
        fresh = self._tasks_by_ids([req_id], self._full_fields())
        return self._requirement(fresh.get(req_id, task))

    def _whole(self, req_id: str) -> dict[str, Any]:
        """The task with every property of its type (the write-back of ``update``)."""
        keys = self.task_type().property_keys or self._full_fields().split(",")
        rows = self._tasks_by_ids([req_id], ",".join(dict.fromkeys([*keys,
                                                                     *self._full_fields()
                                                                     .split(",")])))
        if req_id not in rows:
            raise ItemError(f"Worktile task {req_id} does not exist (any more)", retryable=False)
        return rows[req_id]

    def _path(self, task: dict[str, Any], status: str) -> list[str]:
        """The state ids to pass through to ``status``, by the type's flows
        (docs/worktile.md §6.2)."""
        task_type = self.task_type()
        target = task_type.states.get(status)
        if target is None:
            raise ItemError(f"Worktile state {status!r} does not exist in {task_type.where} "
                            f"(known: {', '.join(task_type.states)})", retryable=False)
        current = (task.get("task_state") or {}).get("_id", "")
        path = workflow_path(current, target["_id"], task_type.flows)
        if path is None:
            here = task_type.state_name(current)
            nexts = sorted(task_type.state_name(b) for a, b in task_type.flows if a == current)
            raise TransitionError(
                f"{task.get('identifier')}: cannot move from {here!r} to {status!r}: the "
                f"workflow of {task_type.where} has no path (from {here!r} it allows: "
                f"{', '.join(nexts) or 'nothing'})",
                f"add the transition {here} → {status} to the task type's workflow in "
                "Worktile, or move the task by hand")
        return path

    def _move(self, task: dict[str, Any], status: str) -> None:
        for state_id in self._path(task, status):
            self._write("state", task, {"task_state_id": state_id})


def configured_writes(value: Any) -> tuple[str, ...]:
    """``task_writes``: false, true (every capability) or a list of capability names."""
    if value is False or value is None:
        return ()
    if value is True:
        return CAPABILITIES
    if isinstance(value, list) and all(v in CAPABILITIES for v in value):
        return tuple(value)
    raise ValueError(f"must be true, false or a list of {', '.join(CAPABILITIES)}; not "
                     f"{value!r}")


def _write_call(endpoint: str, task_id: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Where each write goes: ``PUT /mission/tasks/{id}`` and ``…/{id}/state``
    (docs/worktile.md §10, the emulator's assumption, the state body being what Worktile's own web
    client sends)."""
    return (f"/mission/tasks/{task_id}" + ("/state" if endpoint == "state" else "")), body


def _refuse_other_fields(fields: dict[str, Any]) -> None:
    for name in fields:
        if name in READ_ONLY_FIELDS:
            raise ItemError(f"{name} is read-only in the Worktile connector", retryable=False)
        raise ItemError(f"the Worktile connector cannot write field {name!r} (writable: status, "
                        "priority)", retryable=False)


def _within(raw: dict[str, Any], since: datetime, until: datetime) -> bool:
    updated = from_epoch(raw.get("updated_at"))
    return updated is not None and since <= updated <= until


def _number(key: str) -> int:
    tail = key.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


def _task_url_problems(template: Any) -> list[str]:
    if template is None:
        return []
    if not isinstance(template, str) or not re.match(r"https?://", template):
        return ["task_url: must be an https:// address with {id}, {identifier} or {project_id}"]
    try:
        template.format(id="x", identifier="DS-1", project_id="p")
    except (KeyError, IndexError, ValueError) as exc:
        return [f"task_url: only {{id}}, {{identifier}} and {{project_id}} may be filled in "
                f"({type(exc).__name__}: {exc})"]
    return []
