"""A faithful local Worktile Open API (the team API under ``/open-api``), built on the shared kit.

It owns what a Worktile connector talks to, as ``docs/worktile.md`` describes it:
the team token whose ``expires_in`` is a *duration* (docs/worktile.md §2), token checks that answer
a bad token mostly with HTTP 200 and ``{"ok": false, "error_code": 1103}`` (docs/worktile.md §3),
members, projects (with creation from a template), task types with their states, flows and property
definitions, per project priorities (docs/worktile.md §6), tasks read as V1 rows, V2 rows and
details (docs/worktile.md §7), task creation (docs/worktile.md §8), paging from ``page_index`` 0
with ``has_more`` and the ``items``/``value``/bare-array envelopes (docs/worktile.md §5), no
updated-since filter (docs/worktile.md §9), archive/activate and transition histories, a
webhook-shaped event log (docs/worktile.md §12), and throttling the way nginx does it: HTML 429
pages, a request window and at most ``max_in_flight`` requests in flight (docs/worktile.md §11).

The write endpoints Worktile does **not** document (task update, state change, priority through
the update, comments; docs/worktile.md §10) are served only when the config says ``task_writes =
"on"``; their paths and bodies are this emulator's assumption. Off (the default), they answer 404
(or 405).

Everything the public record does not settle is a config key (``/__emu/config``, see
``DEFAULT_CONFIG``) or, where a default had to be picked, marked ``[I]``: an assumption, listed as
one in ``docs/worktile.md``. Control API besides the kit's reset/config/clock/faults/requests/stats:
``POST /__emu/seed`` (``seed``), ``POST /__emu/mutate`` (``mutate``: edit a task as a person),
``POST /__emu/expire_tokens``, ``POST /__emu/fail_next``, ``GET /__emu/tasks``,
``GET /__emu/events``. The same operations are plain methods for in-process use; ``hold`` and
``release`` park admitted requests so a test can observe the in-flight limit deterministically.
"""

from __future__ import annotations

import copy
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from plugins.emulator import (DEMO_APPS, DEMO_USERS, Emulator, Fault, HttpError, RealtimeClock,
                              Request, Response, SlidingWindow, VirtualClock, serve_main)

PREFIX = "/open-api"
ID = r"(?P<id>[^/]+)"
DEFAULT_START = datetime(2025, 3, 3, 1, 0, tzinfo=timezone.utc)  # Monday 09:00 in Beijing
TEAM_TZ = ZoneInfo("Asia/Shanghai")  # whole-day dates are local midnights (docs/worktile.md §5) [I]
TOKEN_RE = re.compile(r"[0-9a-f]{32}")  # the real token format is not on record [I]

# Error codes (docs/worktile.md §3, §13). Only 1102 and 1103 are on record; every other code is this
# emulator's.
E_CREDENTIALS = (1101, "client_id或client_secret错误")        # [I]
# docs/worktile.md §3: malformed (or missing)
E_TOKEN_MALFORMED = (1102, "access_token格式错误")
# docs/worktile.md §3: unknown or expired
E_TOKEN_INVALID = (1103, "invalid access token")
E_MISSING = 2001                                             # [I] a required parameter is absent
E_INVALID = 2002                                             # [I] a parameter has a bad value
E_PROJECT = (3001, "项目不存在")                               # [I]
E_TASK = (3002, "任务不存在")                                  # [I]
E_TYPE = (3003, "任务类型不存在")                               # [I]
E_STATE = (3004, "任务状态不存在")                              # [I]
E_FLOW = (3005, "任务状态不能流转到目标状态")                      # [I]
E_NO_ROUTE = (4040, "Not Found")                             # [I]
E_THROTTLED = (4290, "Too Many Requests")                    # [I] only for throttle_body=json

# What nginx prints for the statuses Worktile's gateway answers itself (docs/worktile.md §11).
NGINX_REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
                 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}

# Property type numbers (docs/worktile.md §6.4) and the value a task shows while the property is
# unset.
P_TEXT, P_TEXTAREA, P_NUMBER, P_DATE, P_SELECT, P_MEMBER, P_MEMBERS = 1, 2, 3, 4, 6, 9, 10
P_TAG, P_PRIORITY, P_FILE, P_MULTI = 16, 17, 19, 22
LIST_TYPES = {P_MEMBERS, P_TAG, P_FILE, P_MULTI}
UNSET_DATE = {"date": 0, "with_time": 0}

DEFAULT_CONFIG: dict[str, Any] = {
    # the live lifetime is not on record (docs/worktile.md §2) [I]
    "token_ttl_s": 7200,
    # or "absolute" (an epoch, as PingCode answers) (docs/worktile.md §2)
    "expires_in_mode": "duration",
    # Where a token is accepted: "query" (access_token=, proven live), "header" (Bearer),
    # "either", or "both" (as the docs ask) (docs/worktile.md §2). The default refuses a header-only
    # client, since header-only is unverified against the real service.
    "token_placement": "query",
    # or "401" (docs/worktile.md §3: mostly 200 + body, sometimes 401)
    "auth_error_mode": "200_body",
    "error_status": 400,                # status of other errors; 200 makes them body-only [I]
    "rate_limit": 50,                   # requests per window, all callers together; 0 = off [I]
    "rate_window_ms": 1000,
    # docs/worktile.md §11: ~8 in parallel draw 429s, 3 is stable; 0 = off
    "max_in_flight": 3,
    "latency_ms": 0,                    # sleep before answering, outside the lock
    "throttle_body": "html",            # or "json" (docs/worktile.md §11: nginx's HTML page)
    # or "computed" / "fixed" (docs/worktile.md §11: no header on record)
    "retry_after": "none",
    "retry_after_s": 1,                 # the "fixed" value
    "page_size_default": 20,            # [I]
    "page_size_max": 100,               # [I]
    # or "400" (docs/worktile.md §5: an oversized size is not refused)
    "page_size_over": "clamp",
    # or "value" / "bare" (docs/worktile.md §5: clients accept all three)
    "page_items_key": "items",
    "by_ids_unknown": "omit",           # or "error" (docs/worktile.md §5)
    # or "all" (docs/worktile.md §7.1: V1 rows need fields=)
    "v1_properties_without_fields": "none",
    "detail_envelope": "bare",          # or "data_value" (docs/worktile.md §7.3)
    # "on" serves the undocumented writes (docs/worktile.md §10) [I]
    "task_writes": "off",
    # or 405, what the writes answer while off (docs/worktile.md §10)
    "writes_off_status": 404,
    "enforce_flow": True,               # a state write must follow the type's flows [I]
    "properties_update": "merge",       # or "replace" [I]
    "member_email": False,              # members carry no email on record (docs/worktile.md §4)
}

# -- the default world --------------------------------------------------------------------------
STATES = [  # team-wide workflow states (docs/worktile.md §6.2): name, category
    ("未激活", 1), ("设计中", 2), ("研发中", 2), ("测试中", 2), ("已发布", 3),
    ("未开始", 1), ("进行中", 2), ("已完成", 3), ("已取消", 3),
    ("打开", 1), ("修复中", 2), ("已解决", 3), ("关闭", 3),
]
CATEGORY_COLORS = {1: "#56abfb", 2: "#f6c659", 3: "#73d897"}
BUILTIN_PROPERTIES = [  # docs/worktile.md §6.4 built-in keys
    {"key": "assignee", "name": "负责人", "type": P_MEMBER},
    {"key": "participant", "name": "参与人", "type": P_MEMBERS},
    {"key": "start", "name": "开始时间", "type": P_DATE},
    {"key": "due", "name": "截止时间", "type": P_DATE},
    {"key": "priority", "name": "优先级", "type": P_PRIORITY},
    {"key": "tag", "name": "标签", "type": P_TAG},
    {"key": "desc", "name": "描述", "type": P_TEXTAREA},
    {"key": "attachment", "name": "附件", "type": P_FILE},
]
CUSTOM_PROPERTIES = [
    {"key": "crm_deal", "name": "CRM 商机", "type": P_TEXT},
    {"key": "customer_level", "name": "客户等级", "type": P_SELECT,
     "options": ["战略", "重点", "普通"]},
]
ALL_KEYS = [p["key"] for p in BUILTIN_PROPERTIES + CUSTOM_PROPERTIES]
STORY_STATES = ["未激活", "设计中", "研发中", "测试中", "已发布", "已取消"]
# A requirement walks forward one step at a time; only 未激活 and 设计中 may be cancelled, and a
# released one may only be reopened into development. A connector has to walk this graph.
STORY_FLOWS = [("未激活", "设计中"), ("未激活", "已取消"), ("设计中", "研发中"), ("设计中", "已取消"),
               ("研发中", "测试中"), ("研发中", "设计中"), ("测试中", "已发布"), ("测试中", "研发中"),
               ("已发布", "研发中"), ("已取消", "未激活")]


def _all_pairs(names: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for a in names for b in names if a != b]


TASK_STATES = ["未开始", "进行中", "已完成", "已取消"]
BUG_STATES = ["打开", "修复中", "已解决", "关闭"]
DEFAULT_SEED: dict[str, Any] = {
    "apps": DEMO_APPS,
    "users": DEMO_USERS,
    "states": STATES,
    "properties": CUSTOM_PROPERTIES,
    "task_types": [
        {"name": "需求", "states": STORY_STATES, "initial": "未激活", "flows": STORY_FLOWS,
         "properties": ALL_KEYS},
        {"name": "任务", "states": TASK_STATES, "initial": "未开始",
         "flows": _all_pairs(TASK_STATES), "properties": ALL_KEYS[:8]},
        {"name": "缺陷", "states": BUG_STATES, "initial": "打开",
         "flows": _all_pairs(BUG_STATES), "properties": ALL_KEYS[:8]},
    ],
    "templates": {"敏捷开发": ["需求", "任务", "缺陷"], "通用任务": ["任务"]},
    "projects": [{
        "identifier": "DS", "name": "dealsync 示例项目", "template": "敏捷开发",
        "members": ["lina", "wangwei", "zhangmin"],
        "priorities": [["最高", "#ff5b57"], ["较高", "#ff9f73"], ["普通", "#f6c659"],
                       ["较低", "#5dcfff"], ["最低", "#73d897"]],
        "tasks": [
            {"title": "单点登录（SSO）支持", "state": "研发中", "priority": "较高",
             "assignee": "lina", "due": "2025-03-31", "description": "支持 SAML 2.0 与 OIDC 单点登录。"},
            {"title": "导出 Excel 报表", "priority": "普通", "description": "按月导出销售与回款数据。"},
            {"title": "移动端离线模式", "state": "已发布", "priority": "最高", "assignee": "wangwei",
             "description": "弱网环境下可查看与编辑。"},
            {"title": "登录页在 Safari 下错位", "type": "缺陷"},
        ],
    }],
}


@dataclass(frozen=True)
class RawBody:
    """A reply body that is not JSON (nginx's HTML error pages)."""

    content_type: str
    data: bytes


def nginx_page(status: int) -> RawBody:
    """nginx's stock error page, as the gateway in front of Worktile sends it
    (docs/worktile.md §11)."""
    title = f"{status} {NGINX_REASONS[status]}"
    html = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
            "</body>\r\n</html>\r\n")
    return RawBody("text/html", html.encode("ascii"))


def rich_text(text: str) -> str:
    """One slate-style paragraph block as a JSON string: how Worktile stores what a person
    types into a description or comment (docs/worktile.md §7.2)."""
    return json.dumps([{"type": "paragraph", "key": "p0", "children": [{"text": text}]}],
                      ensure_ascii=False)


def _html_capable(base: type, wire: threading.local) -> type:
    """The kit's request handler writes every body as JSON. For a reply ``dispatch`` marked raw
    (an nginx page), swap the two headers the kit writes and send the raw bytes right after
    them; the kit's own payload for such a reply is empty. Everything else is the kit's."""

    class Handler(base):  # type: ignore[misc, valid-type]
        def send_header(self, keyword: str, value: str) -> None:
            raw = getattr(wire, "raw", None)
            if raw is not None and keyword == "Content-Type":
                value = raw.content_type
            elif raw is not None and keyword == "Content-Length":
                value = str(len(raw.data))
            super().send_header(keyword, value)

        def end_headers(self) -> None:
            super().end_headers()
            raw = getattr(wire, "raw", None)
            if raw is not None:
                wire.raw = None
                self.wfile.write(raw.data)

    return Handler


class WorktileEmulator(Emulator):
    """Worktile's team Open API on 127.0.0.1. ``realtime=True`` makes the clock follow the wall
    clock (standalone use); tests keep the default frozen virtual clock and move it explicitly."""

    name = "worktile-emulator"

    def __init__(self, seed: int = 0, realtime: bool = False):
        self.realtime = realtime
        # The in-flight gate lives outside the kit's lock: requests queue on that lock, and a
        # queued request is in flight as far as the service is concerned.
        self._gate = threading.Lock()
        self._open = threading.Event()
        self._open.set()
        self._wire = threading.local()
        self.in_flight = 0
        super().__init__(seed)

    def credentials(self) -> str:
        apps = ", ".join(f"client_id={cid} client_secret={app['secret']}"
                         for cid, app in self.apps.items())
        return (f"accepts {apps} (POST {PREFIX}/tenant-access-token; send the token as "
                "?access_token=)")

    # == state =====================================================================================
    def reset(self, seed: int = 0) -> None:
        """Forget everything, restore the default config and load ``DEFAULT_SEED``."""
        with self.lock:
            super().reset(seed)
            self.config = copy.deepcopy(DEFAULT_CONFIG)
            self.clock = RealtimeClock() if self.realtime else VirtualClock(DEFAULT_START)
            self.apps: dict[str, dict[str, Any]] = {}
            self.users: dict[str, dict[str, Any]] = {}
            self.tokens: dict[str, dict[str, Any]] = {}
            self.window = SlidingWindow(1, 1.0)
            self.throttled = {"rate": 0, "concurrency": 0}
            self.peak_in_flight = 0
            self.events: list[dict[str, Any]] = []
            self._caller: dict[str, Any] = {}
            self._clear_data()
            self.seed(DEFAULT_SEED)

    def _clear_data(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}          # state id -> state (team-wide)
        self.property_defs: dict[str, dict[str, Any]] = {}   # property key -> definition
        self.types: dict[str, dict[str, Any]] = {}           # type id -> type (team-wide)
        self.templates: dict[str, list[str]] = {}            # template name -> type names
        self.projects: dict[str, dict[str, Any]] = {}
        self.priorities: dict[str, list[dict[str, Any]]] = {}  # project id -> priorities
        self.tasks: dict[str, dict[str, Any]] = {}
        self.histories: dict[str, list[dict[str, Any]]] = {}   # task id -> transitions
        self.comments: dict[str, list[dict[str, Any]]] = {}    # task id -> comments
        for spec in BUILTIN_PROPERTIES:
            self._seed_property(spec)

    def now(self) -> int:
        """The clock as Worktile prints time: unix seconds (docs/worktile.md §5)."""
        return int(self.clock.now().timestamp())

    def _oid(self) -> str:
        """A 24-hex id, like every Worktile id, users' ``uid`` included (docs/worktile.md §5)."""
        return f"{self.random.getrandbits(96):024x}"

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "throttled": dict(self.throttled),
                "in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight,
                "tokens": len(self.tokens)}

    # == seeding ===================================================================================
    def seed(self, spec: dict[str, Any], replace: bool = False) -> dict[str, Any]:
        """Add apps, users, states, custom properties, task types, templates and projects (with
        priorities and tasks). Anything named that exists is reused, so a spec may add tasks to
        an existing project. ``replace`` first drops all of it except apps, users and tokens.
        Returns the identifiers of the created tasks."""
        with self.lock:
            if replace:
                self._clear_data()
            for app in spec.get("apps", []):
                self._seed_app(app)
            for user in spec.get("users", []):
                self._seed_user(user)
            for entry in spec.get("states", []):
                self._seed_state(entry)
            for prop in spec.get("properties", []):
                self._seed_property(prop)
            for type_spec in spec.get("task_types", []):
                self._seed_type(type_spec)
            self.templates.update(spec.get("templates", {}))
            return {"tasks": [key for project in spec.get("projects", [])
                              for key in self._seed_project(project)]}

    def _seed_app(self, app: dict[str, Any]) -> None:
        """An application's credentials; its token acts as the application, shown by its own uid
        (docs/worktile.md §2: the token is not a person) [I]."""
        self.apps[app["client_id"]] = {"secret": app["client_secret"], "uid": self._oid(),
                                       "name": app.get("name", app["client_id"])}

    def _seed_user(self, spec: dict[str, Any]) -> dict[str, Any]:
        existing = self._find_user(spec["name"])
        if existing is not None:
            return existing
        user = {"uid": self._oid(), "name": spec["name"],
                "display_name": spec.get("display_name", spec["name"]),
                "display_name_pinyin": spec.get("pinyin", spec["name"]),
                "avatar": spec.get("avatar", ""), "status": 1, "email": spec.get("email")}
        self.users[user["uid"]] = user
        return user

    def _seed_state(self, entry: Any) -> dict[str, Any]:
        name, category, color = (
            (entry[0], entry[1], None) if isinstance(entry, (list, tuple)) else
            (entry["name"], entry["type"], entry.get("color")))
        existing = next((s for s in self.states.values() if s["name"] == name), None)
        if existing is not None:
            return existing
        state = {"_id": self._oid(), "name": name, "type": int(category),
                 "color": color or CATEGORY_COLORS.get(int(category), "#cacaca"),
                 "description": ""}
        self.states[state["_id"]] = state
        return state

    def _seed_property(self, spec: dict[str, Any]) -> None:
        if spec["key"] in self.property_defs:
            return
        self.property_defs[spec["key"]] = {
            "_id": self._oid(), "key": spec["key"], "name": spec.get("name", spec["key"]),
            "type": int(spec.get("type", P_TEXT)),
            "options": [{"_id": self._oid(), "text": text, "color": "#cacaca"}
                        for text in spec.get("options", [])]}

    def _seed_type(self, spec: dict[str, Any]) -> dict[str, Any]:
        existing = self._find_type(spec["name"])
        if existing is not None:
            return existing
        by_name = {name: self._seed_state(self._state_spec(name))["_id"]
                   for name in spec["states"]}
        task_type = {"_id": self._oid(), "name": spec["name"],
                     "description": spec.get("description", ""),
                     "state_ids": list(by_name.values()),
                     "initial_state_id": by_name[spec.get("initial") or spec["states"][0]],
                     "flows": [(by_name[a], by_name[b]) for a, b in spec.get("flows", [])],
                     "property_keys": list(spec.get("properties", ALL_KEYS[:8]))}
        self.types[task_type["_id"]] = task_type
        return task_type

    def _state_spec(self, name: str) -> Any:
        """A type names its states; an unknown name becomes a new "in progress" state."""
        known = next((s for s in self.states.values() if s["name"] == name), None)
        return known or (name, 2)

    def _seed_project(self, spec: dict[str, Any]) -> list[str]:
        project = self._find_project(spec["identifier"])
        if project is None:
            type_names = spec.get("task_types") or self.templates[spec.get("template", "敏捷开发")]
            members = [self._require_user(name)["uid"] for name in spec.get("members", [])]
            project = self._new_project(spec.get("name", spec["identifier"]),
                                        [self._require_type(n)["_id"] for n in type_names],
                                        members, identifier=spec["identifier"])
            self.priorities[project["_id"]] = [
                {"_id": self._oid(), "name": name, "color": color, "icon": "flag"}
                for name, color in spec.get("priorities", [])]
        created = [self.add_task(project=project["identifier"], **task)["identifier"]
                   for task in spec.get("tasks", [])]
        created += [self.add_task(f"生成的需求 {n + 1}", project=project["identifier"])["identifier"]
                    for n in range(int(spec.get("generate_tasks", 0)))]
        return created

    def _new_project(self, name: str, type_ids: list[str], members: list[str],
                     identifier: str, visibility: int = 1) -> dict[str, Any]:
        project = {"_id": self._oid(), "name": name, "identifier": identifier,
                   "task_identifier_prefix": identifier, "visibility": visibility,
                   "color": "#6698ff", "members": members, "type_ids": type_ids,
                   "is_archived": 0, "created_at": self.now(), "next_number": 1}
        self.projects[project["_id"]] = project
        self.priorities.setdefault(project["_id"], [])
        return project

    def add_task(self, title: str, project: str = "DS", type: str = "需求",
                 state: str | None = None, priority: str | None = None, description: str = "",
                 assignee: str | None = None, due: Any = None,
                 properties: dict[str, Any] | None = None, by: str | None = None,
                 parent: str | None = None) -> dict[str, Any]:
        """Create a task as a person would in Worktile (names, not ids; any state of the type;
        the description typed as rich text). Returns the V1 row with every property."""
        with self.lock:
            proj = self._require_project(project)
            task_type = self._require_type(type)
            person = self._require_user(by) if by else next(iter(self.users.values()))
            values = {"desc": rich_text(description) if description else "",
                      **self._labels_to_values(proj["_id"], task_type, properties or {})}
            if priority:
                values["priority"] = self._require_priority(proj["_id"], priority)["_id"]
            if assignee:
                values["assignee"] = self._require_user(assignee)["uid"]
            if due is not None:
                values["due"] = self._date_value(due)
            state_id = self._require_state_of(task_type, state)["_id"] if state else None
            record = self._new_task(proj, task_type, title, person["uid"], values,
                                    parent=parent, state_id=state_id)
            return self._v1(record, None)

    def add_tasks(self, count: int, title: str = "需求 {n}", **fields: Any) -> list[dict[str, Any]]:
        """``count`` tasks titled from ``title`` (``{n}`` is 1-based)."""
        return [self.add_task(title.format(n=n + 1), **fields) for n in range(count)]

    def _new_task(self, project: dict[str, Any], task_type: dict[str, Any], title: str,
                  uid: str, values: dict[str, Any], parent: str | None = None,
                  state_id: str | None = None) -> dict[str, Any]:
        """A new task with checked property ``values``, in ``state_id`` (a person may create
        one in any state) or its type's initial state."""
        number = project["next_number"]
        project["next_number"] += 1
        now = self.now()
        record = {
            "_id": self._oid(), "project_id": project["_id"], "number": number,
            "identifier": f"{project['task_identifier_prefix']}-{number}",  # docs/worktile.md §7.1
            "title": title, "type_id": task_type["_id"],
            "state_id": state_id or task_type["initial_state_id"], "parent_id": "",
            "parent_ids": [], "derived_ids": [], "relation_ids": [], "properties": dict(values),
            "created_by": uid, "created_at": now, "updated_by": uid, "updated_at": now,
            "completed_at": 0, "is_archived": 0,
        }
        if parent:
            self._attach_parent(record, self._require_task(parent))
        self.tasks[record["_id"]] = record
        self.histories[record["_id"]] = []
        self.comments[record["_id"]] = []
        self._mark_completed(record)
        self._event("task_created", self._created_payload(record))
        return record

    @staticmethod
    def _attach_parent(record: dict[str, Any], parent: dict[str, Any]) -> None:
        record["parent_id"] = parent["_id"]
        record["parent_ids"] = parent["parent_ids"] + [parent["_id"]]
        parent["derived_ids"].append(record["_id"])

    def relate(self, task: str, other: str) -> None:
        """Link two tasks both ways, as 关联任务 in the UI (read by ``get-relation-tasks``)."""
        with self.lock:
            a, b = self._require_task(task), self._require_task(other)
            a["relation_ids"].append(b["_id"])
            b["relation_ids"].append(a["_id"])

    # == edits by people and test controls ========================================================
    def mutate(self, task: str, *, by: str = "lina", title: str | None = None,
               state: str | None = None, priority: str | None = None,
               description: str | None = None, assignee: str | None = None, due: Any = None,
               properties: dict[str, Any] | None = None,
               archived: bool | None = None) -> dict[str, Any]:
        """Edit a task as the person ``by`` would in Worktile (names, not ids): ``updated_at``
        moves to now and ``updated_by`` is that person. A person may pick any state of the
        type (the UI's own rules are not on record); the change is recorded as a transition.
        ``priority`` or ``assignee`` "" clears it. Returns the V1 row with every property."""
        with self.lock:
            record = self._require_task(task)
            person = self._require_user(by)
            pid, task_type = record["project_id"], self.types[record["type_id"]]
            values = self._labels_to_values(pid, task_type, properties or {})
            if priority is not None:
                values["priority"] = self._require_priority(pid, priority)["_id"] if priority \
                    else None
            if assignee is not None:
                values["assignee"] = self._require_user(assignee)["uid"] if assignee else None
            if description is not None:
                values["desc"] = rich_text(description)
            if due is not None:
                values["due"] = self._date_value(due)
            changes = {"title": title} if title is not None else {}
            if values:
                changes["properties"] = values
            self._apply(record, changes, person["uid"])
            if state is not None:
                self._set_state(record, self._require_state_of(task_type, state)["_id"],
                                person["uid"])
            if archived is not None:
                record["is_archived"] = int(archived)
            self._touch(record, person["uid"])
            return self._v1(record, None)

    def expire_tokens(self) -> int:
        """Make every issued token expired now; returns how many."""
        with self.lock:
            for token in self.tokens.values():
                token["expires_at"] = self.now() - 1
            return len(self.tokens)

    def fail_next(self, status: int, count: int = 1, match: str = r"* /open-api/.*") -> None:
        """The next ``count`` API calls matching ``match`` fail with ``status``: 401 answers a
        token error in Worktile's body (docs/worktile.md §3); 429 and 5xx answer nginx's HTML page
        (docs/worktile.md §11)."""
        with self.lock:
            body = self._error_body(E_TOKEN_INVALID) if status == 401 else None
            self.faults.append(Fault(match=match, nth=list(range(1, count + 1)), status=status,
                                     body=body, headers=self._retry_after(1) if status == 429
                                     else {}))

    def hold(self) -> None:
        """Park every admitted API request until ``release`` (to observe the in-flight limit)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def dump_tasks(self) -> list[dict[str, Any]]:
        """Every task, as a V1 row with every property, in creation order."""
        with self.lock:
            return [self._v1(r, None) for r in self.tasks.values()]

    def task(self, ref: str) -> dict[str, Any]:
        """One task by ``_id`` or identifier, as a V1 row with every property."""
        with self.lock:
            return self._v1(self._require_task(ref), None)

    def transitions(self, ref: str) -> list[dict[str, Any]]:
        """A task's state changes, oldest first, in the history shape."""
        with self.lock:
            return [self._history_shape(h) for h in self.histories[self._require_task(ref)["_id"]]]

    # == lookups ===================================================================================
    def _find_user(self, ref: str) -> dict[str, Any] | None:
        return next((u for u in self.users.values()
                     if ref in (u["uid"], u["name"], u["display_name"], u["email"])), None)

    def _require_user(self, ref: str) -> dict[str, Any]:
        user = self._find_user(ref)
        if user is None:
            raise self._error(E_INVALID, f"成员不存在: {ref}")
        return user

    def _find_type(self, ref: str) -> dict[str, Any] | None:
        return next((t for t in self.types.values() if ref in (t["_id"], t["name"])), None)

    def _require_type(self, ref: Any) -> dict[str, Any]:
        task_type = self._find_type(ref) if isinstance(ref, str) else None
        if task_type is None:
            raise self._error(*E_TYPE)
        return task_type

    def _find_project(self, ref: str) -> dict[str, Any] | None:
        return next((p for p in self.projects.values() if ref in (p["_id"], p["identifier"])),
                    None)

    def _require_project(self, ref: Any) -> dict[str, Any]:
        project = self._find_project(ref) if isinstance(ref, str) else None
        if project is None:
            raise self._error(*E_PROJECT)
        return project

    def _require_task(self, ref: Any) -> dict[str, Any]:
        record = self.tasks.get(ref) if isinstance(ref, str) else None
        if record is None and isinstance(ref, str):
            record = next((r for r in self.tasks.values() if r["identifier"] == ref), None)
        if record is None:
            raise self._error(*E_TASK)
        return record

    def _require_state_of(self, task_type: dict[str, Any], ref: Any) -> dict[str, Any]:
        for state_id in task_type["state_ids"]:
            if ref in (state_id, self.states[state_id]["name"]):
                return self.states[state_id]
        raise self._error(*E_STATE)

    def _require_priority(self, pid: str, ref: Any) -> dict[str, Any]:
        for priority in self.priorities[pid]:
            if ref in (priority["_id"], priority["name"]):
                return priority
        raise self._error(E_INVALID, f"优先级不存在: {ref}")

    def _labels_to_values(self, pid: str, task_type: dict[str, Any],
                          values: dict[str, Any]) -> dict[str, Any]:
        """Seed-side convenience: select values may be given as option texts."""
        out = {}
        for key, value in values.items():
            options = self.property_defs.get(key, {}).get("options") or []
            out[key] = next((o["_id"] for o in options if value in (o["_id"], o["text"])), value)
        return self._checked_properties(pid, task_type, out)

    # == validation (writes are checked whole before anything changes) ============================
    def _checked_properties(self, pid: str, task_type: dict[str, Any],
                            values: Any) -> dict[str, Any]:
        """Property values keyed by property key (a dict, or the internal API's list of
        ``{property_id|key, value}``, docs/worktile.md §8), checked and normalised to what is
        stored."""
        if isinstance(values, list):
            values = {self._property_key(entry): entry.get("value") for entry in values}
        if not isinstance(values, dict):
            raise self._error(E_INVALID, "properties格式不正确")
        out = {}
        for key, value in values.items():
            if key not in task_type["property_keys"]:
                raise self._error(E_INVALID, f"属性不存在: {key}")
            out[key] = self._checked_value(pid, self.property_defs[key], value)
        return out

    def _property_key(self, entry: Any) -> str:
        if not isinstance(entry, dict):
            raise self._error(E_INVALID, "properties格式不正确")
        ref = entry.get("key") or entry.get("property_id")
        for definition in self.property_defs.values():
            if ref in (definition["key"], definition["_id"]):
                return definition["key"]
        raise self._error(E_INVALID, f"属性不存在: {ref}")

    def _checked_value(self, pid: str, definition: dict[str, Any], value: Any) -> Any:
        kind, key = definition["type"], definition["key"]
        if value is None or (value == "" and kind not in (P_TEXT, P_TEXTAREA)):
            return None  # clears the property
        checks: dict[int, Callable[[Any], bool]] = {
            P_TEXT: lambda v: isinstance(v, str), P_TEXTAREA: lambda v: isinstance(v, str),
            P_NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            P_SELECT: lambda v: v in {o["_id"] for o in definition["options"]},
            P_MEMBER: lambda v: v in self.users,
            P_MEMBERS: lambda v: isinstance(v, list) and all(u in self.users for u in v),
            P_PRIORITY: lambda v: v in {p["_id"] for p in self.priorities[pid]},
        }
        if kind == P_DATE:
            return self._date_value(value)
        ok = checks.get(kind, lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
        if not ok(value):
            raise self._error(E_INVALID, f"属性值不正确: {key}")
        return value

    def _date_value(self, value: Any) -> dict[str, int]:
        """``{"date": seconds, "with_time": 0|1}`` (docs/worktile.md §5); also from seconds or
        "YYYY-MM-DD" (a whole day: local midnight, ``with_time`` 0)."""
        if isinstance(value, bool):
            raise self._error(E_INVALID, "日期格式不正确")
        if isinstance(value, int):
            return {"date": value, "with_time": 0}
        if isinstance(value, str):
            try:
                day = date.fromisoformat(value)
            except ValueError:
                raise self._error(E_INVALID, "日期格式不正确") from None
            return {"date": int(datetime.combine(day, dtime(0), TEAM_TZ).timestamp()),
                    "with_time": 0}
        ok = (isinstance(value, dict) and isinstance(value.get("date"), int)
              and value.get("with_time", 0) in (0, 1))
        if not ok:
            raise self._error(E_INVALID, "日期格式不正确")
        return {"date": value["date"], "with_time": value.get("with_time", 0)}

    def _checked_title(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self._error(E_MISSING, "title不能为空")
        return value

    # == changing tasks ============================================================================
    def _apply(self, record: dict[str, Any], changes: dict[str, Any], uid: str) -> None:
        """Apply checked ``title``/``properties`` changes, with an event for each kind of change
        a webhook receiver has seen (docs/worktile.md §12)."""
        if "title" in changes and changes["title"] != record["title"]:
            self._change_event(record, "title", record["title"], changes["title"], uid)
            record["title"] = changes["title"]
        for key, value in changes.get("properties", {}).items():
            old = record["properties"].get(key)
            if old != value and key in ("assignee", "desc", "due"):
                self._change_event(record, key, old, value, uid)
            record["properties"][key] = value

    def _set_state(self, record: dict[str, Any], state_id: str, uid: str) -> None:
        if state_id == record["state_id"]:
            return
        history = {"_id": self._oid(), "task_id": record["_id"], "from": record["state_id"],
                   "to": state_id, "created_by": uid, "created_at": self.now()}
        self.histories[record["_id"]].append(history)
        self._event("task_state_changed", {
            "task": {**self._task_ref(record), "state": self._named(self.states[state_id])},
            "update_by": self._person(uid), "from": self._named(self.states[record["state_id"]]),
            "to": self._named(self.states[state_id])})
        record["state_id"] = state_id
        self._mark_completed(record)

    def _mark_completed(self, record: dict[str, Any]) -> None:
        """``completed_at`` is set on entering a category-3 state (docs/worktile.md §6.2); leaving
        one clears it, which the public record does not settle [I]."""
        if self.states[record["state_id"]]["type"] == 3:
            record["completed_at"] = record["completed_at"] or self.now()
        else:
            record["completed_at"] = 0

    def _touch(self, record: dict[str, Any], uid: str) -> None:
        record["updated_at"] = self.now()
        record["updated_by"] = uid

    # == events (webhook-shaped, docs/worktile.md §12; the names are this emulator's)
    # ===============================
    def _event(self, name: str, payload: dict[str, Any]) -> None:
        self.events.append({"event": name, "payload": payload, "at": self.now()})

    def _change_event(self, record: dict[str, Any], key: str, old: Any, new: Any,
                      uid: str) -> None:
        shape = self._person if key == "assignee" else (
            (lambda v: v or UNSET_DATE) if key == "due" else (lambda v: v))
        self._event(f"task_{'description' if key == 'desc' else key}_changed", {
            "task": self._task_ref(record), "update_by": self._person(uid),
            "from": shape(old), "to": shape(new)})

    def _created_payload(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**self._task_ref(record), "creator": self._person(record["created_by"]),
                "assignee": self._person(record["properties"].get("assignee")),
                "due": record["properties"].get("due") or UNSET_DATE}

    def _task_ref(self, record: dict[str, Any]) -> dict[str, Any]:
        project = self.projects[record["project_id"]]
        return {"id": record["_id"], "title": record["title"], "identifier": record["identifier"],
                "type": {"id": record["type_id"], "name": self.types[record["type_id"]]["name"]},
                "project": {"id": project["_id"], "name": project["name"]}}

    def _person(self, uid: str | None) -> dict[str, Any] | None:
        user = self.users.get(uid or "")
        if user is None:
            app = next((a for a in self.apps.values() if a["uid"] == uid), None)
            return None if app is None else {"uid": uid, "user_name": app["name"],
                                             "display_name": app["name"]}
        return {"uid": user["uid"], "user_name": user["name"],
                "display_name": user["display_name"]}

    @staticmethod
    def _named(state: dict[str, Any]) -> dict[str, Any]:
        return {"id": state["_id"], "name": state["name"]}

    # == shapes ====================================================================================
    def _member(self, user: dict[str, Any]) -> dict[str, Any]:
        shape = {k: user[k] for k in ("uid", "name", "display_name", "avatar", "status",
                                      "display_name_pinyin")}
        if self.config["member_email"]:
            shape["email"] = user["email"]
        return shape

    def _project_shape(self, project: dict[str, Any]) -> dict[str, Any]:
        return {k: project[k] for k in ("_id", "name", "identifier", "task_identifier_prefix",
                                        "visibility", "color", "members", "is_archived",
                                        "created_at")}

    def _state_shape(self, state: dict[str, Any]) -> dict[str, Any]:
        return {k: state[k] for k in ("_id", "name", "type", "color")}

    def _type_ref(self, task_type: dict[str, Any]) -> dict[str, Any]:
        return {k: task_type[k] for k in ("_id", "name", "description")}

    def _type_detail(self, task_type: dict[str, Any]) -> dict[str, Any]:
        """docs/worktile.md §6: a type defines its states (category ``type`` 1/2/3), initial state,
        flows and properties. The path and this shape are the emulator's [I]."""
        return {**self._type_ref(task_type),
                "states": [self._state_shape(self.states[s]) for s in task_type["state_ids"]],
                "initial_state_id": task_type["initial_state_id"],
                "flows": [{"from_state_id": a, "to_state_id": b} for a, b in task_type["flows"]],
                "properties": [copy.deepcopy(self.property_defs[k])
                               for k in task_type["property_keys"]]}

    def _value_shape(self, pid: str, key: str, stored: Any) -> Any:
        """A property's value as a V1 row shows it (docs/worktile.md §7.1)."""
        definition = self.property_defs[key]
        kind = definition["type"]
        if kind == P_SELECT:
            option = next((o for o in definition["options"] if o["_id"] == stored), None)
            return copy.deepcopy(option)
        if kind == P_PRIORITY:
            return next((dict(p) for p in self.priorities[pid] if p["_id"] == stored), None)
        if kind == P_DATE:
            return dict(stored or UNSET_DATE)
        if kind in LIST_TYPES:
            return list(stored or [])
        if kind in (P_TEXT, P_TEXTAREA):
            return stored or ""
        return stored

    def _properties(self, record: dict[str, Any], keys: list[str] | None,
                    wrapped: bool) -> dict[str, Any]:
        """The properties named by ``keys`` (all of the type's when None); V2 rows and details
        wrap each value as ``{"value": …}`` (docs/worktile.md §6.4)."""
        type_keys = self.types[record["type_id"]]["property_keys"]
        wanted = type_keys if keys is None else [k for k in keys if k in type_keys]
        out = {}
        for key in wanted:
            value = self._value_shape(record["project_id"], key, record["properties"].get(key))
            out[key] = {"value": value} if wrapped else value
        return out

    def _v1(self, record: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
        """A V1 row (docs/worktile.md §7.1): properties only for ``fields`` (all when None)."""
        state = self.states[record["state_id"]]
        task_type = self.types[record["type_id"]]
        row = {k: copy.deepcopy(record[k]) for k in (
            "_id", "identifier", "title", "project_id", "parent_id", "parent_ids", "derived_ids",
            "created_by", "created_at", "updated_by", "updated_at", "completed_at",
            "is_archived")}
        row.update(state_type=state["type"],
                   task_state={"_id": state["_id"], "name": state["name"], "type": state["type"],
                               "description": state["description"]},
                   task_type=self._type_ref(task_type),
                   properties=self._properties(record, fields, wrapped=False))
        return row

    def _v2(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**self._v1(record, []), "properties": self._properties(record, None, True)}

    def _comment_shape(self, comment: dict[str, Any]) -> dict[str, Any]:
        return dict(comment)

    def _history_shape(self, h: dict[str, Any]) -> dict[str, Any]:
        return {"_id": h["_id"], "task_id": h["task_id"],
                "from": self._state_shape(self.states[h["from"]]),
                "to": self._state_shape(self.states[h["to"]]),
                "created_by": h["created_by"], "created_at": h["created_at"]}

    # == errors, paging and envelopes =============================================================
    def _error_body(self, err: tuple[int, str]) -> dict[str, Any]:
        return {"ok": False, "error_code": err[0], "error_message": err[1]}

    def _error(self, code: int, message: str, status: int | None = None) -> HttpError:
        """docs/worktile.md §13: ``{"ok": false, "error_code", "error_message"}``; the status is
        configurable."""
        return HttpError(status or int(self.config["error_status"]),
                         self._error_body((code, message)))

    def _auth_error(self, err: tuple[int, str]) -> HttpError:
        """docs/worktile.md §3: HTTP 200 with the error in the body, or HTTP 401."""
        return HttpError(401 if str(self.config["auth_error_mode"]) == "401" else 200,
                         self._error_body(err))

    def not_found(self, req: Request) -> Response:
        return Response(404, self._error_body(E_NO_ROUTE))

    def _int_arg(self, req: Request, name: str, default: int) -> int:
        raw = req.arg(name)
        if raw in (None, ""):
            return default
        try:
            return int(raw)  # type: ignore[arg-type]
        except ValueError:
            raise self._error(E_INVALID, f"{name}不是有效的数字") from None

    def _paging(self, req: Request) -> tuple[int, int]:
        """docs/worktile.md §5: ``page_index`` from 0; a size over the cap is clamped silently or
        refused."""
        index = self._int_arg(req, "page_index", 0)
        size = self._int_arg(req, "page_size", int(self.config["page_size_default"]))
        cap = int(self.config["page_size_max"])
        if index < 0 or size < 1:
            raise self._error(E_INVALID, "page_index或page_size不正确")
        if size > cap and str(self.config["page_size_over"]) == "400":
            raise self._error(E_INVALID, f"page_size不能大于{cap}")
        return index, min(size, cap)

    def _page(self, req: Request, rows: list[Any], shape: Callable[[Any], Any]) -> Any:
        """A by-page reply: rows under ``items`` or ``value`` with ``total`` and ``has_more``,
        or a bare array (docs/worktile.md §5)."""
        index, size = self._paging(req)
        chunk = [shape(row) for row in rows[index * size:(index + 1) * size]]
        key = self.config["page_items_key"]
        if key == "bare":
            return chunk
        return {key: chunk, "total": len(rows), "has_more": (index + 1) * size < len(rows)}

    def _by_ids(self, req: Request, param: str, lookup: Callable[[str], Any],
                shape: Callable[[Any], Any]) -> list[Any]:
        """A by-ids reply: a bare array; unknown ids are left out (or refused)
        (docs/worktile.md §5)."""
        ids = [i for i in (req.arg(param) or "").split(",") if i]
        if not ids:
            raise self._error(E_MISSING, f"{param}不能为空")
        found = [(i, lookup(i)) for i in ids]
        if any(row is None for _, row in found) and self.config["by_ids_unknown"] == "error":
            raise self._error(E_INVALID, f"{param}包含不存在的id")
        return [shape(row) for _, row in found if row is not None]

    @staticmethod
    def _fields(req: Request) -> list[str] | None:
        raw = req.arg("fields")
        return None if raw is None else [f for f in raw.split(",") if f]

    def _body(self, req: Request) -> dict[str, Any]:
        try:
            body = req.json()
        except HttpError:
            raise self._error(E_INVALID, "请求体不是有效的JSON") from None
        if not isinstance(body, dict):
            raise self._error(E_INVALID, "请求体格式不正确")
        return body

    # == throttling (docs/worktile.md §11)
    # ==========================================================================
    def _retry_after(self, wait_s: float) -> dict[str, str]:
        mode = self.config["retry_after"]
        if mode == "computed":
            return {"Retry-After": str(max(1, math.ceil(wait_s)))}
        if mode == "fixed":
            return {"Retry-After": str(int(self.config["retry_after_s"]))}
        return {}

    def _throttled(self, reason: str, wait_s: float) -> Response:
        self.throttled[reason] += 1
        body: Any = (nginx_page(429) if self.config["throttle_body"] == "html"
                     else self._error_body(E_THROTTLED))
        return Response(429, body, self._retry_after(wait_s))

    def rate_limit(self, req: Request) -> Response | None:
        """A sliding window over all callers: nginx limits by client address, and every
        client of this emulator is 127.0.0.1 [I]."""
        limit, window_s = int(self.config["rate_limit"]), self.config["rate_window_ms"] / 1000
        if not limit or not req.path.startswith(PREFIX + "/"):
            return None
        if (self.window.limit, self.window.window_s) != (limit, window_s):
            self.window = SlidingWindow(limit, window_s)
        now = self.clock.now().timestamp()
        if self.window.try_take(now):
            return None
        return self._throttled("rate", self.window.seconds_until_free(now))

    def dispatch(self, req: Request) -> Response | None:
        """The kit's dispatch behind an nginx-like front: at most ``max_in_flight`` API requests
        are admitted at once (more are refused at once with 429), admitted ones may be held or
        slowed, and bodyless 429/5xx replies (injected faults) become nginx's HTML page."""
        self._wire.raw = None
        if req.path.startswith("/__emu/"):
            return super().dispatch(req)
        if not self._admit():
            return self._to_wire(self._refuse_concurrent(req))
        try:
            self._open.wait(timeout=30)
            if self.config["latency_ms"]:
                time.sleep(self.config["latency_ms"] / 1000)
            response = super().dispatch(req)
        finally:
            with self._gate:
                self.in_flight -= 1
        return self._to_wire(response)

    def _admit(self) -> bool:
        with self._gate:
            limit = int(self.config["max_in_flight"])
            if limit and self.in_flight >= limit:
                return False
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            return True

    def _refuse_concurrent(self, req: Request) -> Response:
        with self.lock:
            self.calls[f"{req.method} {req.path}"] += 1
            self._record(req, 429, "concurrency")
            return self._throttled("concurrency", 1.0)

    def _to_wire(self, response: Response | None) -> Response | None:
        """Hand a non-JSON body to the handler installed by ``start``; the kit sends none."""
        if response is None:
            return None
        raw = response.body
        if raw is None and response.status in NGINX_REASONS:
            raw = nginx_page(response.status)
        if not isinstance(raw, RawBody):
            return response
        self._wire.raw = raw
        return Response(response.status, None, dict(response.headers))

    def start(self, port: int = 0) -> str:
        url = super().start(port)
        assert self.server is not None
        self.server.RequestHandlerClass = _html_capable(self.server.RequestHandlerClass,
                                                        self._wire)
        return url

    # == routes ====================================================================================
    def install_routes(self) -> None:
        api = self._api
        self.route("POST", rf"{PREFIX}/tenant-access-token/?", self.h_token)
        api("GET", r"/contact/get-members-by-page", self.h_members)
        api("GET", r"/contact/get-members-by-ids", self.h_members_by_ids)
        api("GET", r"/mission/get-projects-by-page", self.h_projects)
        api("GET", r"/mission/get-project-by-ids", self.h_projects_by_ids)
        api("POST", r"/mission/project", self.h_project_create)
        api("GET", r"/mission/task-types", self.h_all_types)
        api("GET", rf"/mission/projects/{ID}/task-types", self.h_project_types)
        api("GET", rf"/mission/projects/{ID}/task-types/(?P<type_id>[^/]+)", self.h_type)
        api("GET", rf"/mission/projects/{ID}/priorities", self.h_priorities)
        api("GET", r"/mission/get-project-tasks-by-page", self.h_tasks_by_page)
        api("GET", r"/mission/get-tasks-by-ids", self.h_tasks_by_ids)
        api("GET", r"/mission/get-relation-tasks", self.h_relation_tasks)
        api("GET", rf"/mission/projects/{ID}/tasks", self.h_tasks_v2)
        api("GET", rf"/mission/tasks/{ID}", self.h_task_detail)
        api("POST", r"/mission/tasks?", self.h_task_create)
        api("GET", rf"/mission/tasks/{ID}/transitions", self.h_transitions)
        api("POST", rf"/mission/tasks/{ID}/archive", lambda r: self._set_archived(r, 1))
        api("POST", rf"/mission/tasks/{ID}/activate", lambda r: self._set_archived(r, 0))
        # docs/worktile.md §10: not in Worktile's documentation. Paths and bodies are assumptions.
        api("PUT", rf"/mission/tasks/{ID}", self.h_task_update, write=True)
        api("PATCH", rf"/mission/tasks/{ID}", self.h_task_update, write=True)
        api("PUT", rf"/mission/tasks/{ID}/state", self.h_task_state, write=True)
        api("POST", rf"/mission/tasks/{ID}/comments", self.h_comment_create, write=True)
        self._install_test_routes()

    def _install_test_routes(self) -> None:
        def seed(req: Request) -> Any:
            body = dict(req.json() or {})
            return self.seed(body, replace=bool(body.pop("replace", False)))

        def mutate(req: Request) -> Any:
            body = dict(req.json() or {})
            return self.mutate(body.pop("task"), **body)

        self.route("POST", r"/__emu/seed", seed)
        self.route("POST", r"/__emu/mutate", mutate)
        self.route("POST", r"/__emu/expire_tokens", lambda r: {"expired": self.expire_tokens()})
        self.route("POST", r"/__emu/fail_next",
                   lambda r: self.fail_next(**(r.json() or {})) or {"ok": True})
        self.route("GET", r"/__emu/tasks", lambda r: {"tasks": self.dump_tasks()})
        self.route("GET", r"/__emu/events", lambda r: {"events": self.events[
            int(r.arg("since", "0") or 0):], "next": len(self.events)})

    def _api(self, method: str, pattern: str, handler: Callable[[Request], Any],
             write: bool = False) -> None:
        """Route a call that needs the team token. An undocumented write that is switched off
        answers as a missing route would, before any token check."""

        def wrapped(req: Request) -> Any:
            if write and self.config["task_writes"] not in ("on", True):
                return self._write_refused(req)
            token = self._authenticate(req)
            self._caller = self.apps[token["client_id"]]
            return handler(req)

        self.route(method, PREFIX + pattern, wrapped)

    def _write_refused(self, req: Request) -> Response:
        """docs/worktile.md §10: 404, or 405 naming the methods the path does serve."""
        if int(self.config["writes_off_status"]) != 405:
            return self.not_found(req)
        allowed = sorted({m for m, pattern, _ in self.routes
                          if m == "GET" and pattern.fullmatch(req.path)})
        headers = {"Allow": ", ".join(allowed)} if allowed else {}
        return Response(405, self._error_body((4050, "Method Not Allowed")), headers)

    # == handlers: auth (docs/worktile.md §2, §3)
    # ===================================================================
    def h_token(self, req: Request) -> Any:
        body = self._body(req)
        app = self.apps.get(str(body.get("client_id") or ""))
        if app is None or app["secret"] != body.get("client_secret"):
            raise self._auth_error(E_CREDENTIALS)
        value = f"{self.random.getrandbits(128):032x}"
        ttl = int(self.config["token_ttl_s"])
        self.tokens[value] = {"value": value, "client_id": body["client_id"],
                              "expires_at": self.now() + ttl}
        absolute = self.config["expires_in_mode"] == "absolute"
        return {"tenant_access_token": value, "expires_in": self.now() + ttl if absolute else ttl}

    def _presented_token(self, req: Request) -> str | None:
        query = req.arg("access_token")
        scheme, _, value = (req.header("authorization") or "").partition(" ")
        header = value.strip() if scheme.lower() == "bearer" else None
        mode = self.config["token_placement"]
        if mode == "both":
            return query if query == header else None
        return {"query": query, "header": header}.get(mode, query or header)

    def _authenticate(self, req: Request) -> dict[str, Any]:
        token = self._presented_token(req)
        if token is None or not TOKEN_RE.fullmatch(token):
            raise self._auth_error(E_TOKEN_MALFORMED)
        record = self.tokens.get(token)
        if record is None or record["expires_at"] <= self.now():
            raise self._auth_error(E_TOKEN_INVALID)
        return record

    # == handlers: members and projects (docs/worktile.md §4)
    # =======================================================
    def h_members(self, req: Request) -> Any:
        return self._page(req, list(self.users.values()), self._member)

    def h_members_by_ids(self, req: Request) -> Any:
        return self._by_ids(req, "uids", self.users.get, self._member)

    def h_projects(self, req: Request) -> Any:
        return self._page(req, list(self.projects.values()), self._project_shape)

    def h_projects_by_ids(self, req: Request) -> Any:
        return self._by_ids(req, "project_ids", self.projects.get, self._project_shape)

    def h_project_create(self, req: Request) -> Any:
        """docs/worktile.md §4: ``template_name`` and ``name`` required; at least one member, the
        first is the admin. The reply shape is not on record: the project [I]."""
        body = self._body(req)
        for key in ("template_name", "name"):
            if not body.get(key):
                raise self._error(E_MISSING, f"{key}不能为空")
        if body["template_name"] not in self.templates:
            raise self._error(E_INVALID, f"模板不存在: {body['template_name']}")
        members = body.get("members")
        if not isinstance(members, list) or not members or any(
                m not in self.users for m in members):
            raise self._error(E_INVALID, "members至少包含一个有效成员")
        if body.get("visibility", 0) not in (0, 1):
            raise self._error(E_INVALID, "visibility只能是0或1")
        identifier = f"P{len(self.projects) + 1}"
        project = self._new_project(
            body["name"], [self._require_type(n)["_id"] for n in self.templates[
                body["template_name"]]], list(members), identifier, int(body.get("visibility", 0)))
        project["ext"] = copy.deepcopy(body.get("ext") or {})
        return self._project_shape(project)

    # == handlers: configuration (docs/worktile.md §6; paths [I])
    # ==================================================
    def h_all_types(self, req: Request) -> Any:
        return [self._type_ref(t) for t in self.types.values()]

    def h_project_types(self, req: Request) -> Any:
        project = self._require_project(req.params["id"])
        return [self._type_ref(self.types[t]) for t in project["type_ids"]]

    def h_type(self, req: Request) -> Any:
        project = self._require_project(req.params["id"])
        if req.params["type_id"] not in project["type_ids"]:
            raise self._error(*E_TYPE)
        return self._type_detail(self.types[req.params["type_id"]])

    def h_priorities(self, req: Request) -> Any:
        return [dict(p) for p in self.priorities[self._require_project(req.params["id"])["_id"]]]

    # == handlers: reading tasks (docs/worktile.md §7, §9)
    # =========================================================
    def _listed(self, pid: str) -> list[dict[str, Any]]:
        """A project's tasks in creation order; archived ones are left out of lists [I]. No
        filter and no sort parameter exist (docs/worktile.md §9)."""
        return [r for r in self.tasks.values() if r["project_id"] == pid and not r["is_archived"]]

    def _required_arg(self, req: Request, name: str) -> str:
        value = req.arg(name)
        if not value:
            raise self._error(E_MISSING, f"{name}不能为空")
        return value

    def _v1_fields(self, req: Request) -> list[str] | None:
        """docs/worktile.md §7.1: V1 rows carry the properties named in ``fields``, none (or all)
        without it."""
        fields = self._fields(req)
        if fields is None and self.config["v1_properties_without_fields"] != "all":
            return []
        return fields

    def h_tasks_by_page(self, req: Request) -> Any:
        project = self._require_project(self._required_arg(req, "project_id"))
        fields = self._v1_fields(req)
        return self._page(req, self._listed(project["_id"]), lambda r: self._v1(r, fields))

    def h_tasks_by_ids(self, req: Request) -> Any:
        fields = self._v1_fields(req)
        return self._by_ids(req, "task_ids", self.tasks.get, lambda r: self._v1(r, fields))

    def h_relation_tasks(self, req: Request) -> Any:
        """A bare array; an unknown task has no relations rather than an error [I]."""
        record = self.tasks.get(self._required_arg(req, "task_id"))
        fields = self._v1_fields(req)
        return [self._v1(self.tasks[i], fields) for i in (record or {}).get("relation_ids", [])]

    def h_tasks_v2(self, req: Request) -> Any:
        """docs/worktile.md §7.1: V2 rows wrap every property value; ``references.users`` resolves
        the uids the page mentions. No ``total`` or ``has_more`` is on record: page until empty
        [I]."""
        project = self._require_project(req.params["id"])
        index, size = self._paging(req)
        rows = self._listed(project["_id"])[index * size:(index + 1) * size]
        uids = {uid for r in rows for uid in self._uids_of(r)}
        return {"value": [self._v2(r) for r in rows],
                "references": {"users": [self._member(u) for u in self.users.values()
                                         if u["uid"] in uids]}}

    @staticmethod
    def _uids_of(record: dict[str, Any]) -> set[str]:
        props = record["properties"]
        return {record["created_by"], record["updated_by"], props.get("assignee") or "",
                *(props.get("participant") or [])}

    def h_task_detail(self, req: Request) -> Any:
        """docs/worktile.md §7.3: ``_id`` and ``title`` plus what ``columns`` names: ``properties``
        (wrapped),
        ``comments``, or any other field of the row."""
        record = self._require_task(req.params["id"])
        detail: dict[str, Any] = {"_id": record["_id"], "title": record["title"]}
        row = self._v1(record, [])
        for column in [c for c in (req.arg("columns") or "").split(",") if c]:
            if column == "properties":
                detail["properties"] = self._properties(record, None, wrapped=True)
            elif column == "comments":
                detail["comments"] = [self._comment_shape(c) for c in self.comments[
                    record["_id"]]]
            elif column in row:
                detail[column] = row[column]
        if self.config["detail_envelope"] == "data_value":
            return {"data": {"value": detail}}
        return detail

    def h_transitions(self, req: Request) -> Any:
        record = self._require_task(req.params["id"])
        return [self._history_shape(h) for h in self.histories[record["_id"]]]

    # == handlers: task writes (docs/worktile.md §8, §10)
    # ==========================================================
    def h_task_create(self, req: Request) -> Any:
        """docs/worktile.md §8: ``project_id``, ``task_type_id`` and ``title`` required; everything
        else in
        ``properties`` (the deal's context goes into ``desc``); optional ``parent_id``. The task
        starts in its type's initial state. Path, body and reply (the V1 row) are [I]."""
        body = self._body(req)
        for key in ("project_id", "task_type_id", "title"):
            if not body.get(key):
                raise self._error(E_MISSING, f"{key}不能为空")
        project = self._require_project(body["project_id"])
        if body["task_type_id"] not in project["type_ids"]:
            raise self._error(*E_TYPE)
        task_type = self.types[body["task_type_id"]]
        title = self._checked_title(body["title"])
        values = self._checked_properties(project["_id"], task_type, body.get("properties") or {})
        if body.get("parent_id"):
            self._require_task(body["parent_id"])
        record = self._new_task(project, task_type, title, self._caller["uid"], values,
                                parent=body.get("parent_id"))
        return self._v1(record, None)

    def h_task_update(self, req: Request) -> Any:
        """ASSUMPTION (docs/worktile.md §10): ``{"title"?, "properties"?}``, priority as
        ``properties.priority = <priority _id>``. Checked whole; a refusal changes nothing."""
        record = self._require_task(req.params["id"])
        body = self._body(req)
        changes: dict[str, Any] = {}
        if "title" in body:
            changes["title"] = self._checked_title(body["title"])
        if "properties" in body:
            values = self._checked_properties(record["project_id"], self.types[record["type_id"]],
                                              body["properties"])
            if self.config["properties_update"] == "replace":  # unnamed properties are cleared
                values = {**{key: None for key in record["properties"]}, **values}
            changes["properties"] = values
        self._apply(record, changes, self._caller["uid"])
        self._touch(record, self._caller["uid"])
        return self._v1(record, None)

    def h_task_state(self, req: Request) -> Any:
        """ASSUMPTION (docs/worktile.md §10): ``{"task_state_id"}``, the body Worktile's own web
        client sends. The state must belong to the task's type and, with ``enforce_flow``, follow a
        flow."""
        record = self._require_task(req.params["id"])
        state_id = self._body(req).get("task_state_id")
        if not state_id:
            raise self._error(E_MISSING, "task_state_id不能为空")
        task_type = self.types[record["type_id"]]
        target = self._require_state_of(task_type, state_id)["_id"]
        if target != record["state_id"] and self.config["enforce_flow"] and (
                record["state_id"], target) not in task_type["flows"]:
            raise self._error(*E_FLOW)
        self._set_state(record, target, self._caller["uid"])
        self._touch(record, self._caller["uid"])
        return self._v1(record, None)

    def h_comment_create(self, req: Request) -> Any:
        """ASSUMPTION (docs/worktile.md §10): ``{"content"}``; plain text is stored as one rich-text
        paragraph. Read back through the detail's ``comments``. Does not move ``updated_at`` [I]."""
        record = self._require_task(req.params["id"])
        content = self._body(req).get("content")
        if not isinstance(content, str) or not content.strip():
            raise self._error(E_MISSING, "content不能为空")
        if not content.lstrip().startswith("["):
            content = rich_text(content)
        comment = {"_id": self._oid(), "content": content, "attachments": [],
                   "created_by": self._caller["uid"], "created_at": self.now()}
        self.comments[record["_id"]].append(comment)
        return self._comment_shape(comment)

    def _set_archived(self, req: Request, archived: int) -> Any:
        """docs/worktile.md §8: archive and activate exist; the paths and the reply (the V1 row) are
        [I]."""
        record = self._require_task(req.params["id"])
        record["is_archived"] = archived
        self._touch(record, self._caller["uid"])
        return self._v1(record, None)


def _standalone() -> WorktileEmulator:
    """The emulator for ``python -m``: real time (``credentials`` says what it accepts)."""
    return WorktileEmulator(realtime=True)


_standalone.__name__ = "WorktileEmulator"

if __name__ == "__main__":
    serve_main(_standalone)
