"""A faithful local PingCode Open API (Agile work items and Ship ideas), built on the shared kit.

It follows the behaviour described in docs/pingcode.md §16: the GET token endpoint with an
*absolute* ``expires_in``, 401 on a bad bearer, both path prefixes (``/v1/pjm`` and the older
``/v1/project``; ``url`` fields echo the one used), the list envelope paged from 0, no sort
guarantee, the search DSL whose time filters compare whole *days*, state plans and flows that
refuse illegal transitions atomically, not-found as HTTP 400 with a code, string error codes, and
the 200/min sliding window with ``x-pc-retry-after``.

Ship (docs/pingcode.md §10, §16.2 row 18) is served under ``/v1/ship``: products, idea states,
priorities and properties per product, and ideas (create without state or priority, get, patch,
list, search with the same DSL, transition histories). An unknown idea is 400 ``100725``; a state
outside the product's ideas, or one its hidden state plan refuses from the current state, is 400
``100702`` (``100719`` when no such state exists anywhere). Tickets, customers and relations are
not served.

Behaviour docs/pingcode.md marks as inferred (``[I]`` in the comments here) is a config key
(``/__emu/config``).

Control API (besides the kit's reset/config/clock/faults/requests/stats):
``POST /__emu/seed`` (see ``seed``), ``POST /__emu/mutate`` (see ``mutate``; with ``"idea"``
instead of ``"item"``, ``mutate_idea``), ``POST /__emu/expire_tokens``, ``POST /__emu/fail_next``,
``GET /__emu/items``, ``GET /__emu/ideas``. The same operations are plain methods for in-process
use by tests, the demo and the benchmarks.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import random
import string
import uuid
from datetime import date, datetime, time as dtime, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from plugins.emulator import (DEMO_APPS, DEMO_USERS, Emulator, Fault, HttpError, RealtimeClock,
                              Request, Response, SlidingWindow, VirtualClock, serve_main)
from sync.connectors import workflow_path

PREFIX = r"(?P<prefix>/v1/(?:pjm|project))"
ID = r"(?P<id>[^/]+)"
DEFAULT_START = datetime(2025, 3, 3, 1, 0, tzinfo=timezone.utc)  # Monday 09:00 in Beijing

# Error codes (docs/pingcode.md §13). Codes marked [I] are not documented anywhere; the status is
# what matters.
E_INTERNAL = ("100000", "Internal Server Error")
E_BAD_ID = "100003"
E_UNAUTHORIZED = ("100005", "access_token无效或已过期")  # [I] code; 401 is verified
E_MISSING = "100008"
E_CREDENTIALS = ("100024", "'client_id'或'client_secret'错误")
E_RATE = ("100038", "请求频率过高")
E_INVALID = "100039"
E_UNKNOWN_PROPERTY = "100043"
E_BAD_OPTION = "100044"
E_STATE = ("100303", "'state'资源不存在")
E_PROJECT = ("100301", "项目资源不存在")  # [I] code
E_ITEM = ("100317", "工作项资源不存在")
E_FLOW = ("100379", "工作项状态不能流转到当前状态")
E_COMMENT = ("100051", "评论资源不存在")
# [I] code and status: an unknown route answers 404 (docs/pingcode.md §16.3)
E_NO_ROUTE = ("100404", "请求的资源不存在")
# Ship (docs/pingcode.md §10, §13). The codes are verified, the messages are not [I]. Both 100702
# and 100719 mean "state does not exist", and either is also returned for an existing state the
# plan does not allow; which one comes when is not said, so [I]: 100719 for an id that is no idea
# state at all, 100702 for a real state this product or its plan does not allow.
E_IDEA = ("100725", "需求资源不存在")
E_IDEA_STATE = ("100702", "'state'资源不存在")
E_IDEA_STATE_MISSING = ("100719", "'state'资源不存在")
E_PRODUCT = (E_INVALID, "'product'资源不存在")  # [I] code: not documented

TEXT_OPS = {"exists", "contains"}
ENUM_OPS = {"exists", "in", "nin"}
NUMBER_OPS = {"exists", "eq", "ne", "gt", "lt", "gte", "lte"}
TIME_OPS = {"exists", "gt", "lt", "gte", "lte", "between"}
SEARCH_FIELDS = {  # docs/pingcode.md §8, §16.2 row 13: field -> (kind, stored item's attribute)
    "title": ("text", "title"), "description": ("text", "description"),
    "type": ("enum", "type_id"),
    "state.id": ("ref", "state_id"), "priority.id": ("ref", "priority_id"),
    "assignee.id": ("ref", "assignee_id"), "project.id": ("ref", "project_id"),
    "version.id": ("ref", "version_ids"),
    "created_at": ("time", "created_at"), "updated_at": ("time", "updated_at"),
    "start_at": ("time", "start_at"), "end_at": ("time", "end_at"),
    "completed_at": ("time", "completed_at"),
    "story_points": ("number", "story_points"),
    "estimated_workload": ("number", "estimated_workload"),
    "remaining_workload": ("number", "remaining_workload"),
}
NOT_FILTERABLE = {"id", "url", "identifier", "short_id", "html_url", "public_image_token",
                  "is_archived", "is_deleted"}
OPS_BY_KIND = {"text": TEXT_OPS, "enum": ENUM_OPS, "ref": ENUM_OPS, "option": ENUM_OPS,
               "number": NUMBER_OPS, "time": TIME_OPS}
PROPERTY_KIND = {"text": "text", "textarea": "text", "select": "option", "multi_select": "option",
                 "number": "number", "date": "time"}
# The search DSL over these fields, plus properties.* (docs/pingcode.md §8, §10).
IDEA_SEARCH_FIELDS = {
    "title": ("text", "title"), "description": ("text", "description"),
    "product.id": ("ref", "product_id"), "state.id": ("ref", "state_id"),
    "priority.id": ("ref", "priority_id"), "assignee.id": ("ref", "assignee_id"),
    "tags.id": ("ref", "tag_ids"),
    "created_at": ("time", "created_at"), "updated_at": ("time", "updated_at"),
    "completed_at": ("time", "completed_at"),
}
# Idea fields (docs/pingcode.md §10): optional on create, patchable, and list filters.
IDEA_CREATE_FIELDS = {"assignee_id", "description", "suite_id", "properties"}
IDEA_PATCHABLE = {"title", "description", "state_id", "priority_id", "assignee_id", "progress",
                  "plan_at", "real_at", "plan_id", "suite_id", "properties"}
IDEA_LIST_FILTERS = {"product_id": "product_id", "state_id": "state_id",
                     "priority_id": "priority_id"}
# plan_at/real_at granularities, as the older docs build lists them (docs/pingcode.md §10).
GRANULARITIES = {"year", "quarter", "month", "day"}
PATCHABLE = {"title", "description", "start_at", "end_at", "priority_id", "state_id", "assignee_id",
             "parent_id", "version_ids", "board_id", "entry_id", "swimlane_id", "phase_id",
             "story_points", "estimated_workload", "remaining_workload", "properties",
             "sprint_id", "participant_ids"}
LIST_FILTERS = {  # GET list query param -> stored attribute (docs/pingcode.md §8, singular form)
    "identifier": "identifier", "project_id": "project_id", "type_id": "type_id",
    "parent_id": "parent_id", "assignee_id": "assignee_id", "state_id": "state_id",
    "priority_id": "priority_id", "version_id": "version_ids", "created_by": "created_by",
    "sprint_id": "sprint_id",
}

DEFAULT_CONFIG: dict[str, Any] = {
    "token_ttl_s": 2592000,             # 30 days (docs/pingcode.md §3.1)
    "expires_in_mode": "absolute",      # or "duration"; live returns an absolute epoch
                                        # (docs/pingcode.md §3.1)
    "rate_limit_per_min": 200,          # per token, sliding 60 s window; 0 disables
                                        # (docs/pingcode.md §13)
    "page_size_default": 30,
    "page_size_max": 100,
    "path_prefixes": ["/v1/pjm", "/v1/project"],
    "shuffle": False,                   # list/search rows in a per-seed order, not by identifier
    "search_day_granularity": True,     # time filters compare whole days (docs/pingcode.md §8)
    # PingCode does not say which day boundaries the server uses (docs/pingcode.md §8). It is a
    # Chinese service, so days are taken in Beijing time by default [I].
    "day_timezone": "Asia/Shanghai",
    "properties_patch": "merge",        # or "replace" (undocumented, docs/pingcode.md §7) [I]
    "create_status": 201,               # docs say 201; 200 is as good (docs/pingcode.md §2)
    "include_item_type": True,          # an early live run saw `type` missing (docs/pingcode.md §5)
    "tenant": "demo",                   # html_url host: https://<tenant>.pingcode.com
    "base_url": None,                   # root printed in `url` fields; None = this server
}

STORY_STATES = [  # name, category, color
    ("新建", "pending", "#56abfb"), ("待评审", "pending", "#f6c659"),
    ("已计划", "in_progress", "#9a7ef9"), ("开发中", "in_progress", "#5dcfff"),
    ("已完成", "completed", "#73d897"), ("暂不考虑", "closed", "#cacaca"),
    ("不做", "closed", "#ff7575"),
]
# Not everything is one hop away: 新建 → 开发中 takes three transitions, 不做 is terminal, and
# nothing leads back to 新建 except from 暂不考虑. A connector must walk this graph.
STORY_FLOWS = [
    ("新建", "待评审"), ("新建", "暂不考虑"), ("新建", "不做"),
    ("待评审", "已计划"), ("待评审", "暂不考虑"), ("待评审", "不做"),
    ("已计划", "开发中"), ("已计划", "待评审"), ("已计划", "暂不考虑"),
    ("开发中", "已完成"), ("开发中", "已计划"),
    ("已完成", "开发中"),
    ("暂不考虑", "新建"), ("暂不考虑", "待评审"),
]
TASK_STATES = [("打开", "pending", "#56abfb"), ("进行中", "in_progress", "#5dcfff"),
               ("已完成", "completed", "#73d897"), ("关闭", "closed", "#cacaca")]
TASK_FLOWS = [(a, b) for a in ("打开", "进行中", "已完成", "关闭")
              for b in ("打开", "进行中", "已完成", "关闭") if a != b]

# A Ship product's idea states. Ship publishes no idea flows (docs/pingcode.md §10), so any listed
# state may be asked for in one PATCH; the product's hidden plan refuses 已拒绝 → 已发布 (a rejected
# idea is not released without a new review) [I], so clients meet 100702 for an existing state.
IDEA_STATES = [("待评审", "pending"), ("已规划", "in_progress"), ("开发中", "in_progress"),
               ("已发布", "completed"), ("已拒绝", "closed")]
IDEA_REFUSED = [("已拒绝", "已发布")]

DEFAULT_SEED: dict[str, Any] = {
    "apps": DEMO_APPS,
    "users": DEMO_USERS,
    "projects": [{
        "identifier": "SCR", "name": "Scrum 示例项目", "type": "scrum",
        "types": [
            {"id": "story", "name": "用户故事", "group": "requirement",
             "states": STORY_STATES, "initial": "新建", "flows": STORY_FLOWS,
             "properties": [
                 {"id": "prop_crm_deal", "name": "CRM 商机", "type": "text"},
                 {"id": "prop_customer_level", "name": "客户等级", "type": "select",
                  "options": ["战略", "重点", "普通"]},
                 {"id": "risk", "name": "风险", "type": "select", "options": ["高", "中", "低"]},
             ]},
            {"id": "task", "name": "任务", "group": "task", "states": TASK_STATES,
             "initial": "打开", "flows": TASK_FLOWS, "properties": []},
            {"id": "bug", "name": "缺陷", "group": "bug", "states": TASK_STATES,
             "initial": "打开", "flows": TASK_FLOWS, "properties": []},
        ],
        "priorities": ["最高", "高", "中", "低", "最低"],
        "versions": [{"name": "v2.3", "start_at": "2025-01-01", "end_at": "2025-03-31"},
                     {"name": "v2.4", "start_at": "2025-04-01", "end_at": "2025-06-30"}],
        "items": [
            {"title": "单点登录（SSO）支持", "state": "已计划", "priority": "高", "version": "v2.3",
             "description": "<p>支持 SAML 2.0 与 OIDC 单点登录。</p>", "assignee": "lina"},
            {"title": "导出 Excel 报表", "priority": "中",
             "description": "<p>按月导出销售与回款数据。</p>"},
            {"title": "移动端离线模式", "state": "开发中", "priority": "最高", "version": "v2.4",
             "end_at": "2025-06-15", "description": "<p>弱网环境下可查看与编辑。</p>",
             "assignee": "wangwei"},
        ],
    }],
    "products": [{
        "identifier": "SLC", "name": "销售云",
        "states": IDEA_STATES, "initial": "待评审", "refused": IDEA_REFUSED,
        "priorities": ["P0", "P1", "P2", "P3"],
        "properties": [
            {"id": "prop_crm_deal", "name": "CRM 商机", "type": "text"},
            {"id": "backlog_type", "name": "需求类型", "type": "select",
             "options": ["功能需求", "体验优化"]},
        ],
        "plans": ["2025 Q2 版本", "2025 Q3 版本"],
        "ideas": [
            {"title": "对接企业微信审批流", "state": "已规划", "priority": "P1",
             "plan": "2025 Q2 版本", "plan_at": ["2025-04-01", "2025-06-30"],
             "description": "<p>报价与合同审批走企业微信。</p>", "assignee": "zhangmin"},
            {"title": "批量导入客户联系人", "priority": "P2",
             "description": "<p>从 Excel 批量导入联系人并去重。</p>"},
            {"title": "报价单支持多币种", "state": "开发中", "priority": "P0",
             "plan": "2025 Q2 版本", "plan_at": ["2025-04-15", "2025-05-31"],
             "description": "<p>美元、欧元报价，按当日汇率折算。</p>", "assignee": "lina"},
        ],
    }],
}


def _error(code: str, message: str, status: int = 400) -> HttpError:
    return HttpError(status, {"code": code, "message": message})


def _pair(err: tuple[str, str], status: int = 400) -> HttpError:
    return _error(err[0], err[1], status)


def _is_hex_id(value: Any, length: int = 24) -> bool:
    return isinstance(value, str) and len(value) == length and all(
        c in string.hexdigits for c in value)


def _flag(value: Any) -> bool:
    return str(value).lower() in ("true", "1")


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    """In-process calls (tests, the demo) take the lock HTTP handlers run under."""

    @functools.wraps(method)
    def wrapper(self: "PingCodeEmulator", *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


class PingCodeEmulator(Emulator):
    """PingCode Open API on 127.0.0.1. ``realtime=True`` makes the clock follow the wall clock
    (standalone use); tests keep the default frozen virtual clock and move it explicitly."""

    name = "pingcode-emulator"

    def __init__(self, seed: int = 0, realtime: bool = False):
        self.realtime = realtime
        super().__init__(seed)

    def credentials(self) -> str:
        apps = ", ".join(f"client_id={cid} client_secret={app['secret']}"
                         for cid, app in self.apps.items())
        return (f"accepts {apps} (for dealsync: DEALSYNC_<INSTANCE>_CLIENT_ID and "
                "_CLIENT_SECRET, or `dealsync auth set INSTANCE client_id` / client_secret)")

    # == state =====================================================================================
    @_locked
    def reset(self, seed: int = 0) -> None:
        """Forget everything, restore the default config and load ``DEFAULT_SEED``."""
        super().reset(seed)
        self.seed_value = seed
        # Ship data draws its ids from its own generator, so adding Ship left every id of the
        # Agile world (and the demo and benchmark runs built on it) exactly as it was.
        self.ship_random = random.Random(f"ship:{seed}")
        self.config = copy.deepcopy(DEFAULT_CONFIG)
        self.clock = RealtimeClock() if self.realtime else VirtualClock(DEFAULT_START)
        self.apps: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.windows: dict[str, SlidingWindow] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self._clear_data()
        self._caller: str | None = None
        self._prefix = "/v1/pjm"  # the path prefix of the request being answered
        self.seed(DEFAULT_SEED)

    def _clear_data(self) -> None:
        self.projects: dict[str, dict[str, Any]] = {}
        self.types: dict[str, list[dict[str, Any]]] = {}               # project id -> types
        self.plans: dict[str, dict[str, Any]] = {}                     # plan id -> plan
        self.plan_of: dict[tuple[str, str], str] = {}                  # (project, type) -> plan
        self.states: dict[str, dict[str, Any]] = {}                    # state id -> state
        self.priorities: dict[str, list[dict[str, Any]]] = {}          # project id -> priorities
        self.property_defs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}            # project id -> versions
        self.items: dict[str, dict[str, Any]] = {}
        self.short_ids: dict[str, str] = {}
        self.histories: dict[str, list[dict[str, Any]]] = {}
        self.comments: dict[str, dict[str, Any]] = {}
        # Ship (docs/pingcode.md §10): everything is per product
        self.products: dict[str, dict[str, Any]] = {}
        self.idea_states: dict[str, dict[str, Any]] = {}               # state id -> state
        self.idea_state_plans: dict[str, dict[str, Any]] = {}          # product id -> plan
        self.idea_priorities: dict[str, list[dict[str, Any]]] = {}     # product id -> priorities
        self.idea_property_defs: dict[str, list[dict[str, Any]]] = {}  # product id -> defs
        self.release_plans: dict[str, list[dict[str, Any]]] = {}       # product id -> 排期
        self.ideas: dict[str, dict[str, Any]] = {}
        self.idea_histories: dict[str, list[dict[str, Any]]] = {}

    def now(self) -> int:
        """The virtual clock as PingCode prints time: 10-digit unix seconds."""
        return int(self.clock.now().timestamp())

    def _hex(self, length: int = 24, rng: random.Random | None = None) -> str:
        return f"{(rng or self.random).getrandbits(length * 4):0{length}x}"

    def _short_id(self, rng: random.Random | None = None) -> str:
        alphabet = string.ascii_letters + string.digits
        while True:
            short = "".join((rng or self.random).choice(alphabet) for _ in range(8))
            if short not in self.short_ids:
                return short

    def _ship_hex(self) -> str:
        return self._hex(rng=self.ship_random)

    def _day(self, ts: int) -> date:
        return datetime.fromtimestamp(ts, ZoneInfo(self.config["day_timezone"])).date()

    def _time_value(self, value: Any) -> int | None:
        """Seconds from an int, or from "YYYY-MM-DD" (the end of that day, local time) [I]."""
        if value is None or isinstance(value, int):
            return value
        day = date.fromisoformat(str(value))
        local = datetime.combine(day, dtime(23, 59, 59), ZoneInfo(self.config["day_timezone"]))
        return int(local.timestamp())

    # == seeding ===================================================================================
    @_locked
    def seed(self, spec: dict[str, Any], replace: bool = False) -> dict[str, Any]:
        """Add apps, users, projects (with types, states, flows, priorities, properties, versions)
        and items, and Ship products (see ``_seed_product``) with their ideas. A project whose
        identifier exists gets only its new ``items``/``versions`` (and ``generate_items``: N more
        stories); a product likewise gets only its new ``ideas`` (and ``generate_ideas``).
        ``replace`` first drops every project, product, item and idea (apps, users and issued
        tokens stay). Returns the identifiers of the created items (and ideas, when the spec
        has products)."""
        if replace:
            self._clear_data()
        for app in spec.get("apps", []):
            self._seed_app(app)
        for user in spec.get("users", []):
            self._seed_user(user)
        created: list[str] = []
        for project_spec in spec.get("projects", []):
            project = self._project_by_ref(project_spec["identifier"])
            if project is None:
                project = self._seed_project(project_spec)
            else:
                for version in project_spec.get("versions", []):
                    self._seed_version(project["id"], version)
            for item in project_spec.get("items", []):
                created.append(self.add_item(project=project["identifier"], **item)["identifier"])
            first_type = self.types[project["id"]][0]["id"]
            for n in range(int(project_spec.get("generate_items", 0))):
                created.append(self.add_item(project=project["identifier"], type=first_type,
                                             title=f"生成的需求 {n + 1}")["identifier"])
        if "products" not in spec:
            return {"items": created}
        ideas: list[str] = []
        for product_spec in spec["products"]:
            product = self._product_by_ref(product_spec["identifier"])
            if product is None:
                product = self._seed_product(product_spec)
            for idea in product_spec.get("ideas", []):
                ideas.append(self.add_idea(product=product["identifier"], **idea)["identifier"])
            for n in range(int(product_spec.get("generate_ideas", 0))):
                ideas.append(self.add_idea(f"生成的想法 {n + 1}",
                                           product=product["identifier"])["identifier"])
        return {"items": created, "ideas": ideas}

    def _seed_app(self, app: dict[str, Any]) -> None:
        user = self._seed_user({"name": app.get("name", app["client_id"]),
                                "display_name": app.get("name", app["client_id"]),
                                "email": None})
        self.apps[app["client_id"]] = {"secret": app["client_secret"], "user_id": user["id"]}

    def _seed_user(self, spec: dict[str, Any]) -> dict[str, Any]:
        for user in self.users.values():
            if user["name"] == spec["name"]:
                return user
        user = {"id": self._hex(32), "name": spec["name"],
                "display_name": spec.get("display_name", spec["name"]), "email": spec.get("email"),
                "avatar": None}
        self.users[user["id"]] = user
        return user

    def _seed_project(self, spec: dict[str, Any]) -> dict[str, Any]:
        pid = self._hex()
        project = {"id": pid, "identifier": spec["identifier"], "name": spec.get("name", spec[
            "identifier"]), "type": spec.get("type", "scrum"), "is_archived": 0, "is_deleted": 0,
            "next_number": 1}
        self.projects[pid] = project
        self.types[pid] = []
        for type_spec in spec.get("types", []):
            self._seed_type(pid, type_spec)
        self.priorities[pid] = [{"id": self._hex(), "name": name}
                                for name in spec.get("priorities", [])]
        self.versions[pid] = []
        for version in spec.get("versions", []):
            self._seed_version(pid, version)
        return project

    def _seed_type(self, pid: str, spec: dict[str, Any]) -> None:
        type_id = spec["id"]
        self.types[pid].append({"id": type_id, "name": spec.get("name", type_id),
                                "group": spec.get("group", "requirement")})
        by_name = {}
        for entry in spec.get("states", []):
            name, category, color = (entry if isinstance(entry, (list, tuple)) else
                                     (entry["name"], entry["type"], entry.get("color", "#cccccc")))
            state = {"id": self._hex(), "name": name, "type": category, "color": color}
            self.states[state["id"]] = state
            by_name[name] = state["id"]
        plan_id = self._hex()
        self.plans[plan_id] = {
            "id": plan_id, "project_id": pid, "type_id": type_id,
            "states": list(by_name.values()),
            "initial": by_name[spec.get("initial") or next(iter(by_name))],
            "flows": [{"id": self._hex(), "from": by_name[a], "to": by_name[b]}
                      for a, b in spec.get("flows", [])],
        }
        self.plan_of[(pid, type_id)] = plan_id
        self.property_defs[(pid, type_id)] = [
            {"id": prop["id"], "name": prop.get("name", prop["id"]),
             "type": prop.get("type", "text"),
             "options": [{"_id": self._hex(), "text": text} for text in prop.get("options", [])]}
            for prop in spec.get("properties", [])]

    def _seed_version(self, pid: str, spec: dict[str, Any]) -> None:
        self.versions[pid].append({"id": self._hex(), "name": spec["name"],
                                   "start_at": self._time_value(spec.get("start_at")),
                                   "end_at": self._time_value(spec.get("end_at"))})

    @_locked
    def add_item(self, title: str, project: str = "SCR", type: str = "story",
                 state: str | None = None, priority: str | None = None, description: str = "",
                 properties: dict[str, Any] | None = None, end_at: Any = None,
                 version: str | None = None, assignee: str | None = None,
                 by: str | None = None) -> dict[str, Any]:
        """Create an item as a person would in the UI (names, not ids; no flow checks)."""
        proj = self._require_project(project)
        plan = self.plans[self.plan_of[(proj["id"], type)]]
        user = self._user_by_name(by) if by else self._a_person()
        record = self._new_item(proj, type, title, user["id"])
        record.update(description=description, end_at=self._time_value(end_at),
                      state_id=self._state_by_name(plan, state)["id"] if state else plan["initial"],
                      priority_id=self._priority_by_name(proj["id"], priority)["id"]
                      if priority else None,
                      version_ids=[self._version_by_name(proj["id"], version)["id"]]
                      if version else [],
                      assignee_id=self._user_by_name(assignee)["id"] if assignee else None,
                      properties=self._resolve_property_labels(proj["id"], type, properties or {}))
        self._mark_completed(record)
        return self._full(record)

    @_locked
    def add_items(self, count: int, project: str = "SCR", title: str = "需求 {n}",
                  **fields: Any) -> list[dict[str, Any]]:
        """``count`` items titled from ``title`` (``{n}`` is 1-based)."""
        return [self.add_item(title.format(n=n + 1), project=project, **fields)
                for n in range(count)]

    def _new_item(self, project: dict[str, Any], type_id: str, title: str,
                  user_id: str) -> dict[str, Any]:
        now = self.now()
        number = project["next_number"]
        project["next_number"] += 1
        record = {
            "id": self._hex(), "project_id": project["id"], "number": number,
            "identifier": f"{project['identifier']}-{number}", "type_id": type_id, "title": title,
            "description": "", "state_id": None, "priority_id": None, "assignee_id": None,
            "start_at": None, "end_at": None, "parent_id": None, "version_ids": [],
            "sprint_id": None, "properties": {}, "story_points": None,
            "estimated_workload": None, "remaining_workload": None, "participant_ids": [],
            "completed_at": None, "created_at": now, "created_by": user_id, "updated_at": now,
            "updated_by": user_id, "is_archived": 0, "is_deleted": 0, "short_id": self._short_id(),
        }
        self.items[record["id"]] = record
        self.short_ids[record["short_id"]] = record["id"]
        self.histories[record["id"]] = []
        return record

    # == PM-side edits =============================================================================
    @_locked
    def mutate(self, item: str, *, title: str | None = None, state: str | None = None,
               force: bool = False, priority: str | None = None, description: str | None = None,
               end_at: Any = None, version: str | None = None,
               properties: dict[str, Any] | None = None, deleted: bool | None = None,
               by: str = "lina") -> dict[str, Any]:
        """Edit an item as a product manager would (names, not ids). ``state`` walks the flow one
        transition at a time (each recorded); ``force`` jumps there directly, as an admin can.
        ``end_at`` takes seconds or "YYYY-MM-DD"; ``version`` a version name or "" for none."""
        record = self._require_item(item, include_deleted=True)
        user = self._user_by_name(by)
        plan = self._plan_for(record)
        if state is not None:
            target = self._state_by_name(plan, state)["id"]
            path = [target] if force else workflow_path(
                record["state_id"], target, ((f["from"], f["to"]) for f in plan["flows"]))
            if path is None:
                raise _pair(E_FLOW)
            for hop in path:
                self._transition(record, hop, user["id"])
        if title is not None:
            record["title"] = title
        if description is not None:
            record["description"] = description
        if priority is not None:
            record["priority_id"] = self._priority_by_name(record["project_id"], priority)["id"]
        if end_at is not None:
            record["end_at"] = self._time_value(end_at)
        if version is not None:
            record["version_ids"] = ([self._version_by_name(record["project_id"], version)["id"]]
                                     if version else [])
        if properties is not None:
            record["properties"].update(self._resolve_property_labels(
                record["project_id"], record["type_id"], properties))
        if deleted is not None:
            record["is_deleted"] = int(deleted)
        self._touch(record, user["id"])
        return self._full(record)

    @_locked
    def expire_tokens(self) -> int:
        """Make every issued token expired now; returns how many."""
        for token in self.tokens.values():
            token["expires_at"] = self.now() - 1
        return len(self.tokens)

    @_locked
    def fail_next(self, status: int, count: int = 1, match: str = r"* /v1/.*",
                  retry_after: int = 1) -> None:
        """The next ``count`` API calls matching ``match`` answer ``status`` (429, 500 or 401)
        with PingCode's own error body (docs/pingcode.md §16.1)."""
        body = {429: {"code": E_RATE[0], "message": E_RATE[1]},
                401: {"code": E_UNAUTHORIZED[0], "message": E_UNAUTHORIZED[1]}}.get(
            status, {"code": E_INTERNAL[0], "message": E_INTERNAL[1]})
        headers = {"x-pc-retry-after": str(retry_after)} if status == 429 else {}
        self.faults.append(Fault(match=match, nth=list(range(1, count + 1)), status=status,
                                 body=body, headers=headers))

    @_locked
    def dump_items(self, include_deleted: bool = True) -> list[dict[str, Any]]:
        """Every item, full shape, ordered by identifier."""
        rows = sorted(self.items.values(), key=lambda r: (r["project_id"], r["number"]))
        return [self._full(r) for r in rows if include_deleted or not r["is_deleted"]]

    @_locked
    def item(self, ref: str) -> dict[str, Any]:
        """One item (by id, short id or identifier), full shape, deleted or not."""
        return self._full(self._require_item(ref, include_deleted=True))

    @_locked
    def transitions(self, ref: str) -> list[dict[str, Any]]:
        """An item's state changes, oldest first, in the transition-history shape."""
        record = self._require_item(ref, include_deleted=True)
        return [self._history_shape(h) for h in self.histories[record["id"]]]

    # == Ship: seeding, PM-side edits and in-process views (docs/pingcode.md §10) ================
    def _seed_product(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A product with its idea ``states`` (``[name, type]``; default ``IDEA_STATES``),
        ``initial`` state, ``refused`` ``[from, to]`` state pairs its hidden plan does not allow,
        ``priorities``, idea ``properties`` and ``plans`` (排期, by name). Ids are per product,
        as in Ship (docs/pingcode.md §10)."""
        pid, now = self._ship_hex(), self.now()
        product = {"id": pid, "identifier": spec["identifier"],
                   "name": spec.get("name", spec["identifier"]),
                   "description": spec.get("description", ""), "is_archived": 0, "is_deleted": 0,
                   "next_number": 1, "created_at": now, "updated_at": now}
        self.products[pid] = product
        by_name = {}
        for entry in spec.get("states", IDEA_STATES):
            name, category = (entry if isinstance(entry, (list, tuple)) else
                              (entry["name"], entry["type"]))
            state = {"id": self._ship_hex(), "name": name, "type": category}
            self.idea_states[state["id"]] = state
            by_name[name] = state["id"]
        self.idea_state_plans[pid] = {
            "states": list(by_name.values()),
            "initial": by_name[spec.get("initial") or next(iter(by_name))],
            "refused": {(by_name[a], by_name[b]) for a, b in spec.get("refused", [])}}
        self.idea_priorities[pid] = [{"id": self._ship_hex(), "name": name}
                                     for name in spec.get("priorities", [])]
        self.idea_property_defs[pid] = [
            {"id": prop["id"], "name": prop.get("name", prop["id"]),
             "type": prop.get("type", "text"),
             "options": [{"_id": self._ship_hex(), "text": text}
                         for text in prop.get("options", [])]}
            for prop in spec.get("properties", [])]
        self.release_plans[pid] = [{"id": self._ship_hex(), "name": name}
                                   for name in spec.get("plans", [])]
        return product

    @_locked
    def add_idea(self, title: str, product: str = "SLC", state: str | None = None,
                 priority: str | None = None, description: str = "", plan: str | None = None,
                 plan_at: Any = None, properties: dict[str, Any] | None = None,
                 assignee: str | None = None, by: str | None = None) -> dict[str, Any]:
        """Create an idea as a person would in Ship (names, not ids; any of the product's
        states). ``plan_at`` is ``["YYYY-MM-DD", "YYYY-MM-DD"]`` or the API's object."""
        prod = self._require_product(product)
        pid = prod["id"]
        user = self._user_by_name(by) if by else self._a_person()
        record = self._new_idea(prod, title, user["id"])
        record.update(
            description=description,
            state_id=(self._idea_state_by_name(pid, state)["id"] if state
                      else self.idea_state_plans[pid]["initial"]),
            priority_id=self._idea_priority_by_name(pid, priority)["id"] if priority else None,
            plan_id=self._release_plan_by_name(pid, plan)["id"] if plan else None,
            plan_at=self._period(plan_at),
            assignee_id=self._user_by_name(assignee)["id"] if assignee else None,
            properties=self._resolve_labels(self.idea_property_defs[pid], properties or {}))
        self._mark_idea_completed(record, user["id"])
        return self._idea_full(record)

    def _new_idea(self, product: dict[str, Any], title: str, user_id: str) -> dict[str, Any]:
        now = self.now()
        number = product["next_number"]
        product["next_number"] += 1
        record = {
            "id": self._ship_hex(), "product_id": product["id"], "number": number,
            "identifier": f"{product['identifier']}-{number}", "title": title,
            "description": "", "state_id": None, "priority_id": None, "assignee_id": None,
            "plan_id": None, "suite_id": None, "plan_at": None, "real_at": None, "progress": 0,
            "score": 0, "properties": {}, "tag_ids": [], "completed_at": None,
            "completed_by": None, "created_at": now, "created_by": user_id, "updated_at": now,
            "updated_by": user_id, "is_archived": 0, "is_deleted": 0,
            "short_id": self._short_id(self.ship_random),
        }
        self.ideas[record["id"]] = record
        self.short_ids[record["short_id"]] = record["id"]
        self.idea_histories[record["id"]] = []
        return record

    def _period(self, value: Any) -> dict[str, Any] | None:
        """``plan_at``/``real_at`` from ``[first day, last day]``: whole Beijing days [I]."""
        if value is None or isinstance(value, dict):
            return value
        first, last = value
        start = self._time_value(first) - 86399  # the end of the first day, less a day
        return {"from": start, "to": self._time_value(last), "granularity": "day"}

    @_locked
    def mutate_idea(self, idea: str, *, title: str | None = None, state: str | None = None,
                    force: bool = False, priority: str | None = None,
                    description: str | None = None, plan: str | None = None,
                    plan_at: Any = None, properties: dict[str, Any] | None = None,
                    deleted: bool | None = None, by: str = "lina") -> dict[str, Any]:
        """Edit an idea as a product manager would (names, not ids). ``state`` moves in one step
        (Ship has no idea flows, docs/pingcode.md §10) unless the product's plan refuses it (400
        100702); ``force`` moves it anyway, as an admin can. ``plan`` is a plan (排期) name or ""
        for none; ``deleted`` hides the idea (ideas have no DELETE endpoint, docs/pingcode.md §10,
        but people delete them in Ship)."""
        record = self._require_idea(idea, include_deleted=True)
        pid = record["product_id"]
        user = self._user_by_name(by)
        if state is not None:
            target = self._idea_state_by_name(pid, state)["id"]
            if target != record["state_id"]:
                if not force:
                    self._check_idea_move(record, target)
                self._idea_transition(record, target, user["id"])
        if title is not None:
            record["title"] = title
        if description is not None:
            record["description"] = description
        if priority is not None:
            record["priority_id"] = self._idea_priority_by_name(pid, priority)["id"]
        if plan is not None:
            record["plan_id"] = self._release_plan_by_name(pid, plan)["id"] if plan else None
        if plan_at is not None:
            record["plan_at"] = self._period(plan_at)
        if properties is not None:
            record["properties"].update(self._resolve_labels(self.idea_property_defs[pid],
                                                             properties))
        if deleted is not None:
            record["is_deleted"] = int(deleted)
        self._touch(record, user["id"])
        return self._idea_full(record)

    @_locked
    def dump_ideas(self, include_deleted: bool = True) -> list[dict[str, Any]]:
        """Every idea, full shape, ordered by identifier."""
        rows = sorted(self.ideas.values(), key=lambda r: (r["product_id"], r["number"]))
        return [self._idea_full(r) for r in rows if include_deleted or not r["is_deleted"]]

    @_locked
    def idea(self, ref: str) -> dict[str, Any]:
        """One idea (by id, short id or identifier), full shape, deleted or not."""
        return self._idea_full(self._require_idea(ref, include_deleted=True))

    @_locked
    def idea_transitions(self, ref: str) -> list[dict[str, Any]]:
        """An idea's state changes, oldest first, in the transition-history shape."""
        record = self._require_idea(ref, include_deleted=True)
        return [self._idea_history_shape(h) for h in self.idea_histories[record["id"]]]

    def _check_idea_move(self, record: dict[str, Any], target: str) -> None:
        """A real state that is not one of this product's idea states, or that the product's
        plan does not allow from the current state, is refused with 100702
        (docs/pingcode.md §10, §13)."""
        plan = self.idea_state_plans[record["product_id"]]
        if target not in plan["states"] or (record["state_id"], target) in plan["refused"]:
            raise _pair(E_IDEA_STATE)

    def _idea_transition(self, record: dict[str, Any], state_id: str, user_id: str | None) -> None:
        self.idea_histories[record["id"]].append({
            "id": self._ship_hex(), "idea_id": record["id"], "from": record["state_id"],
            "to": state_id, "created_at": self.now(), "created_by": user_id})
        record["state_id"] = state_id
        self._mark_idea_completed(record, user_id)

    def _mark_idea_completed(self, record: dict[str, Any], user_id: str | None) -> None:
        """``completed_at``/``completed_by`` (the idea shape, docs/pingcode.md §10) are set on
        entering a completed or closed state and cleared on leaving one [I], as for work items."""
        if self.idea_states[record["state_id"]]["type"] in ("completed", "closed"):
            if not record["completed_at"]:
                record["completed_at"], record["completed_by"] = self.now(), user_id
        else:
            record["completed_at"] = record["completed_by"] = None

    # == lookups ===================================================================================
    def _project_by_ref(self, ref: str) -> dict[str, Any] | None:
        for project in self.projects.values():
            if ref in (project["id"], project["identifier"]):
                return project
        return None

    def _require_project(self, ref: Any) -> dict[str, Any]:
        project = self._project_by_ref(ref) if isinstance(ref, str) else None
        if project is None:
            raise _pair(E_PROJECT)
        return project

    def _require_item(self, ref: Any, include_deleted: bool = False) -> dict[str, Any]:
        record = self.items.get(ref) or self.items.get(self.short_ids.get(ref, ""))
        if record is None and isinstance(ref, str):
            record = next((r for r in self.items.values() if r["identifier"] == ref), None)
        if record is None or (record["is_deleted"] and not include_deleted):
            raise _pair(E_ITEM)
        return record

    def _product_by_ref(self, ref: str) -> dict[str, Any] | None:
        for product in self.products.values():
            if ref in (product["id"], product["identifier"]):
                return product
        return None

    def _require_product(self, ref: Any) -> dict[str, Any]:
        product = self._product_by_ref(ref) if isinstance(ref, str) else None
        if product is None or product["is_deleted"]:
            raise _pair(E_PRODUCT)
        return product

    def _require_idea(self, ref: Any, include_deleted: bool = False) -> dict[str, Any]:
        """By id, short id or identifier, as for work items; unknown → 400 100725
        (docs/pingcode.md §13)."""
        record = self.ideas.get(ref) or self.ideas.get(self.short_ids.get(ref, ""))
        if record is None and isinstance(ref, str):
            record = next((r for r in self.ideas.values() if r["identifier"] == ref), None)
        if record is None or (record["is_deleted"] and not include_deleted):
            raise _pair(E_IDEA)
        return record

    def _idea_state_by_name(self, pid: str, name: str) -> dict[str, Any]:
        for state_id in self.idea_state_plans[pid]["states"]:
            if name in (state_id, self.idea_states[state_id]["name"]):
                return self.idea_states[state_id]
        raise _pair(E_IDEA_STATE)

    def _idea_priority_by_name(self, pid: str, name: str) -> dict[str, Any]:
        for priority in self.idea_priorities[pid]:
            if name in (priority["id"], priority["name"]):
                return priority
        raise _error(E_INVALID, f"'priority'资源不存在: {name}")

    def _release_plan_by_name(self, pid: str, name: str) -> dict[str, Any]:
        for plan in self.release_plans[pid]:
            if name in (plan["id"], plan["name"]):
                return plan
        raise _error(E_INVALID, f"'plan'资源不存在: {name}")

    def _user_by_name(self, name: str) -> dict[str, Any]:
        for user in self.users.values():
            if name in (user["id"], user["name"], user["display_name"], user["email"]):
                return user
        raise _error(E_INVALID, f"用户不存在: {name}")

    def _a_person(self) -> dict[str, Any]:
        """Someone who is not an app identity, to author seeded items."""
        app_users = {app["user_id"] for app in self.apps.values()}
        people = [u for u in self.users.values() if u["id"] not in app_users]
        return (people or list(self.users.values()))[0]

    def _plan_for(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.plans[self.plan_of[(record["project_id"], record["type_id"])]]

    def _state_by_name(self, plan: dict[str, Any], name: str) -> dict[str, Any]:
        for state_id in plan["states"]:
            if name in (state_id, self.states[state_id]["name"]):
                return self.states[state_id]
        raise _pair(E_STATE)

    def _priority_by_name(self, pid: str, name: str) -> dict[str, Any]:
        for priority in self.priorities[pid]:
            if name in (priority["id"], priority["name"]):
                return priority
        raise _error(E_INVALID, f"'priority'资源不存在: {name}")

    def _version_by_name(self, pid: str, name: str) -> dict[str, Any]:
        for version in self.versions[pid]:
            if name in (version["id"], version["name"]):
                return version
        raise _error(E_INVALID, f"'version'资源不存在: {name}")

    def _resolve_property_labels(self, pid: str, type_id: str,
                                 values: dict[str, Any]) -> dict[str, Any]:
        return self._resolve_labels(self.property_defs.get((pid, type_id), []), values)

    def _resolve_labels(self, definitions: list[dict[str, Any]],
                        values: dict[str, Any]) -> dict[str, Any]:
        """Seed-side convenience: select values may be given as option texts."""
        out = {}
        defs = {d["id"]: d for d in definitions}
        for key, value in values.items():
            definition = defs.get(key)
            if definition and definition["options"]:
                value = next((o["_id"] for o in definition["options"]
                              if value in (o["_id"], o["text"])), value)
            out[key] = value
        self._check_property_values(definitions, out)
        return out

    # == shapes ====================================================================================
    def _root(self) -> str:
        return self.config["base_url"] or (self.url if self.server else "http://127.0.0.1")

    @property
    def _base(self) -> str:
        """What ``url`` fields start with: the root plus the prefix the caller used
        (docs/pingcode.md §16.3)."""
        return self._root() + self._prefix

    def _user_ref(self, user_id: str | None) -> dict[str, Any] | None:
        user = self.users.get(user_id or "")
        if user is None:
            return None
        return {"id": user["id"], "url": f"{self._root()}/v1/directory/users/{user['id']}",
                "name": user["name"], "display_name": user["display_name"],
                "avatar": user["avatar"]}

    def _user_full(self, user: dict[str, Any]) -> dict[str, Any]:
        return {**self._user_ref(user["id"]), "email": user["email"]}  # type: ignore[dict-item]

    def _project_ref(self, pid: str) -> dict[str, Any]:
        p = self.projects[pid]
        return {"id": pid, "url": f"{self._base}/projects/{pid}", "identifier": p["identifier"],
                "name": p["name"], "type": p["type"], "is_archived": p["is_archived"],
                "is_deleted": p["is_deleted"]}

    def _state_ref(self, state_id: str | None) -> dict[str, Any] | None:
        if state_id is None:
            return None
        s = self.states[state_id]
        return {"id": s["id"], "url": f"{self._base}/work_item_states/{s['id']}",
                "name": s["name"], "type": s["type"], "color": s["color"]}

    def _priority_ref(self, pid: str, priority_id: str | None) -> dict[str, Any] | None:
        for p in self.priorities[pid]:
            if p["id"] == priority_id:
                return {"id": p["id"], "url": f"{self._base}/work_item_priorities/{p['id']}",
                        "name": p["name"]}
        return None

    def _version_shape(self, pid: str, version: dict[str, Any], full: bool) -> dict[str, Any]:
        ref = {"id": version["id"], "url": f"{self._base}/projects/{pid}/versions/{version['id']}",
               "name": version["name"]}
        if full:
            ref.update(project=self._project_ref(pid), start_at=version["start_at"],
                       end_at=version["end_at"])
        return ref

    def _full(self, r: dict[str, Any]) -> dict[str, Any]:
        pid = r["project_id"]
        url = f"{self._base}/work_items/{r['id']}"
        versions = [self._version_shape(pid, v, False) for v in self.versions[pid]
                    if v["id"] in r["version_ids"]]
        parent = self.items.get(r["parent_id"] or "")
        properties = {d["id"]: None for d in self.property_defs.get((pid, r["type_id"]), [])}
        properties.update(r["properties"])
        shape = {
            "id": r["id"], "url": url + ("?include_deleted=true" if r["is_deleted"] else ""),
            "project": self._project_ref(pid), "identifier": r["identifier"], "title": r["title"],
            "type": r["type_id"], "start_at": r["start_at"], "end_at": r["end_at"],
            "parent_id": r["parent_id"],
            "parent": {"id": parent["id"], "identifier": parent["identifier"],
                       "title": parent["title"], "type": parent["type_id"]} if parent else None,
            "short_id": r["short_id"],
            "html_url": f"https://{self.config['tenant']}.pingcode.com/pjm/workitems/"
                        f"{r['short_id']}",
            "assignee": self._user_ref(r["assignee_id"]), "state": self._state_ref(r["state_id"]),
            "priority": self._priority_ref(pid, r["priority_id"]),
            "version": versions[0] if versions else None, "versions": versions,
            "sprint": None, "board": None, "entry": None, "swimlane": None, "phase": None,
            "description": r["description"], "completed_at": r["completed_at"],
            "story_points": r["story_points"], "estimated_workload": r["estimated_workload"],
            "remaining_workload": r["remaining_workload"], "properties": properties,
            "tags": [], "participants": [
                {"id": u, "url": f"{self._root()}/v1/directory/users/{u}", "type": "user",
                 "user": self._user_ref(u)} for u in r["participant_ids"]],
            "created_at": r["created_at"], "created_by": self._user_ref(r["created_by"]),
            "updated_at": r["updated_at"], "updated_by": self._user_ref(r["updated_by"]),
            "is_archived": r["is_archived"], "is_deleted": r["is_deleted"],
        }
        if not self.config["include_item_type"]:
            del shape["type"]
        return shape

    def _item_ref(self, r: dict[str, Any]) -> dict[str, Any]:
        return {"id": r["id"], "url": f"{self._base}/work_items/{r['id']}",
                "identifier": r["identifier"], "title": r["title"], "type": r["type_id"]}

    def _history_shape(self, h: dict[str, Any]) -> dict[str, Any]:
        url = f"{self._base}/work_items/{h['item_id']}/transition_histories/{h['id']}"
        return {"id": h["id"], "url": url, "work_item": self._item_ref(self.items[h["item_id"]]),
                "from_state": self._state_ref(h["from"]), "to_state": self._state_ref(h["to"]),
                "created_at": h["created_at"], "created_by": self._user_ref(h["created_by"])}

    # -- Ship shapes (docs/pingcode.md §10; refs as in the older docs build) ----------------------
    @property
    def _ship_base(self) -> str:
        return self._root() + "/v1/ship"

    def _product_ref(self, pid: str) -> dict[str, Any]:
        p = self.products[pid]
        return {"id": pid, "url": f"{self._ship_base}/products/{pid}",
                "identifier": p["identifier"], "name": p["name"],
                "is_archived": p["is_archived"], "is_deleted": p["is_deleted"]}

    def _product_full(self, p: dict[str, Any]) -> dict[str, Any]:
        return {**self._product_ref(p["id"]), "description": p["description"],
                "created_at": p["created_at"], "updated_at": p["updated_at"]}

    def _idea_state_ref(self, state_id: str | None) -> dict[str, Any] | None:
        if state_id is None:
            return None
        s = self.idea_states[state_id]
        return {"id": s["id"], "url": f"{self._ship_base}/idea_states/{s['id']}",
                "name": s["name"], "type": s["type"]}

    def _idea_priority_ref(self, pid: str, priority_id: str | None) -> dict[str, Any] | None:
        for p in self.idea_priorities[pid]:
            if p["id"] == priority_id:
                return {"id": p["id"], "url": f"{self._ship_base}/idea_priorities/{p['id']}",
                        "name": p["name"]}
        return None

    def _release_plan_ref(self, pid: str, plan_id: str | None) -> dict[str, Any] | None:
        for plan in self.release_plans[pid]:
            if plan["id"] == plan_id:
                return {"id": plan["id"],
                        "url": f"{self._ship_base}/products/{pid}/plans/{plan['id']}",
                        "name": plan["name"]}
        return None

    def _idea_full(self, r: dict[str, Any]) -> dict[str, Any]:
        """The idea's full shape (docs/pingcode.md §10)."""
        pid = r["product_id"]
        url = f"{self._ship_base}/ideas/{r['id']}"
        properties = {d["id"]: None for d in self.idea_property_defs[pid]}
        properties.update(r["properties"])
        return {
            "id": r["id"], "url": url, "product": self._product_ref(pid),
            "identifier": r["identifier"], "title": r["title"], "short_id": r["short_id"],
            "html_url": f"https://{self.config['tenant']}.pingcode.com/ship/ideas/"
                        f"{r['short_id']}",
            "assignee": self._user_ref(r["assignee_id"]), "state": self._idea_state_ref(
                r["state_id"]), "priority": self._idea_priority_ref(pid, r["priority_id"]),
            "plan": self._release_plan_ref(pid, r["plan_id"]), "suite": None,
            "plan_at": copy.deepcopy(r["plan_at"]), "real_at": copy.deepcopy(r["real_at"]),
            "score": r["score"], "progress": r["progress"], "description": r["description"],
            "properties": properties, "participants": [],
            "completed_at": r["completed_at"], "completed_by": self._user_ref(r["completed_by"]),
            "created_at": r["created_at"], "created_by": self._user_ref(r["created_by"]),
            "updated_at": r["updated_at"], "updated_by": self._user_ref(r["updated_by"]),
            "is_archived": r["is_archived"], "is_deleted": r["is_deleted"],
        }

    def _idea_ref(self, r: dict[str, Any]) -> dict[str, Any]:
        return {"id": r["id"], "url": f"{self._ship_base}/ideas/{r['id']}",
                "identifier": r["identifier"], "title": r["title"], "short_id": r["short_id"],
                "html_url": f"https://{self.config['tenant']}.pingcode.com/ship/ideas/"
                            f"{r['short_id']}"}

    def _idea_history_shape(self, h: dict[str, Any]) -> dict[str, Any]:
        url = f"{self._ship_base}/ideas/{h['idea_id']}/transition_histories/{h['id']}"
        return {"id": h["id"], "url": url, "idea": self._idea_ref(self.ideas[h["idea_id"]]),
                "from_state": self._idea_state_ref(h["from"]),
                "to_state": self._idea_state_ref(h["to"]),
                "created_at": h["created_at"], "created_by": self._user_ref(h["created_by"])}

    def _envelope(self, rows: list[Any], page_index: int, page_size: int,
                  shape: Callable[[Any], Any] = lambda x: x) -> dict[str, Any]:
        start = page_index * page_size
        return {"page_size": page_size, "page_index": page_index, "total": len(rows),
                "values": [shape(row) for row in rows[start:start + page_size]]}

    def _paging(self, index: Any, size: Any) -> tuple[int, int]:
        try:
            page_index = int(index) if index not in (None, "") else 0
            page_size = int(size) if size not in (None, "") else self.config["page_size_default"]
        except (TypeError, ValueError):
            raise _error(E_INVALID, "'page_index'或'page_size'不是有效的数字") from None
        if page_index < 0 or page_size < 1 or page_size > self.config["page_size_max"]:
            # docs/pingcode.md §16.2 row 12: page_size > 100 is refused [I]
            raise _error(E_INVALID, f"'page_size'不能大于{self.config['page_size_max']}")
        return page_index, page_size

    def _list(self, req: Request, rows: list[Any], shape: Callable[[Any], Any] = lambda x: x,
              ) -> dict[str, Any]:
        page_index, page_size = self._paging(req.arg("page_index"), req.arg("page_size"))
        return self._envelope(rows, page_index, page_size, shape)

    def _order(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """By identifier number, as observed live (docs/pingcode.md §12); or shuffled per seed,
        which is stable for the life of the data so one listing's pages agree with each other."""
        if self.config["shuffle"]:
            return sorted(rows, key=lambda r: hashlib.sha1(
                f"{self.seed_value}:{r['id']}".encode()).hexdigest())
        return sorted(rows, key=lambda r: (self._scope_of(r)["identifier"], r["number"]))

    def _scope_of(self, record: dict[str, Any]) -> dict[str, Any]:
        """The project of a work item, the product of an idea."""
        if "product_id" in record:
            return self.products[record["product_id"]]
        return self.projects[record["project_id"]]

    # == routes ====================================================================================
    def install_routes(self) -> None:
        api = self._api
        self.route("GET", r"/v1/auth/token", self.h_token)
        api("GET", rf"{PREFIX}/projects", self.h_projects)
        api("GET", rf"{PREFIX}/projects/{ID}", self.h_project)
        api("GET", rf"{PREFIX}/projects/{ID}/versions", self.h_versions)
        api("GET", rf"{PREFIX}/work_item/types", self.h_types)
        api("GET", rf"{PREFIX}/work_item/states", self.h_states)
        api("GET", rf"{PREFIX}/work_item/priorities", self.h_priorities)
        api("GET", rf"{PREFIX}/work_item/properties", self.h_properties)
        api("GET", rf"{PREFIX}/work_item_state_plans", self.h_plans)
        api("GET", rf"{PREFIX}/work_item_state_plans/{ID}/work_item_state_flows", self.h_flows)
        api("POST", rf"{PREFIX}/work_items", self.h_create)
        api("PATCH", rf"{PREFIX}/work_items", self.h_bulk_patch)
        api("GET", rf"{PREFIX}/work_items", self.h_list)
        api("POST", rf"{PREFIX}/work_items/search", self.h_search)
        api("GET", rf"{PREFIX}/work_items/{ID}", self.h_get)
        api("PATCH", rf"{PREFIX}/work_items/{ID}", self.h_patch)
        api("DELETE", rf"{PREFIX}/work_items/{ID}", self.h_delete)
        api("GET", rf"{PREFIX}/work_items/{ID}/transition_histories", self.h_histories)
        # Ship (docs/pingcode.md §10, §16.2 row 18): one prefix, so no {prefix} group
        api("GET", r"/v1/ship/products", self.h_ship_products)
        api("GET", r"/v1/ship/idea/states", self.h_idea_states)
        api("GET", r"/v1/ship/idea/priorities", self.h_idea_priorities)
        api("GET", r"/v1/ship/idea/properties", self.h_idea_properties)
        api("POST", r"/v1/ship/ideas", self.h_idea_create)
        api("GET", r"/v1/ship/ideas", self.h_idea_list)
        api("POST", r"/v1/ship/ideas/search", self.h_idea_search)
        api("GET", rf"/v1/ship/ideas/{ID}", self.h_idea_get)
        api("PATCH", rf"/v1/ship/ideas/{ID}", self.h_idea_patch)
        api("GET", rf"/v1/ship/ideas/{ID}/transition_histories", self.h_idea_histories)
        api("POST", r"/v1/comments", self.h_comment_create)
        api("GET", r"/v1/comments", self.h_comments)
        api("GET", r"/v1/directory/users", self.h_users)
        self.route("POST", r"/__emu/seed", lambda r: self.seed(
            {k: v for k, v in (r.json() or {}).items() if k != "replace"},
            replace=bool((r.json() or {}).get("replace"))))
        self.route("POST", r"/__emu/mutate", self._ctl_mutate)
        self.route("POST", r"/__emu/expire_tokens", lambda r: {"expired": self.expire_tokens()})
        self.route("POST", r"/__emu/fail_next", lambda r: self.fail_next(**(r.json() or {})) or
                   {"ok": True})
        self.route("GET", r"/__emu/items", lambda r: {"items": self.dump_items(
            include_deleted=_flag(r.arg("include_deleted", "true")))})
        self.route("GET", r"/__emu/ideas", lambda r: {"ideas": self.dump_ideas(
            include_deleted=_flag(r.arg("include_deleted", "true")))})

    def _ctl_mutate(self, req: Request) -> Any:
        body = dict(req.json() or {})
        if "idea" in body:
            return self.mutate_idea(body.pop("idea"), **body)
        return self.mutate(body.pop("item"), **body)

    def _api(self, method: str, pattern: str, handler: Callable[[Request], Any]) -> None:
        """Route an authenticated API call; sets the caller and the ``url`` base for the shapes."""

        def wrapped(req: Request) -> Any:
            prefix = req.params.get("prefix")
            if prefix is not None and prefix not in self.config["path_prefixes"]:
                return self.not_found(req)
            token = self._token_of(req)
            if token is None:
                raise _pair(E_UNAUTHORIZED, 401)  # bad bearer → 401 (docs/pingcode.md §3.3)
            self._caller = self.apps[token["client_id"]]["user_id"]
            self._prefix = prefix or "/v1/pjm"
            try:
                return handler(req)
            finally:
                self._prefix = "/v1/pjm"

        self.route(method, pattern, wrapped)

    def _token_of(self, req: Request) -> dict[str, Any] | None:
        scheme, _, value = (req.header("authorization") or "").partition(" ")
        token = self.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if token is None or token["expires_at"] <= self.now():
            return None
        return token

    def rate_limit(self, req: Request) -> Response | None:
        """200 per minute per caller, sliding window; 429 + ``x-pc-retry-after``
        (docs/pingcode.md §13)."""
        limit = self.config["rate_limit_per_min"]
        span = float(self.config.get("rate_limit_window_s", 60))  # benchmarks shrink it
        token = self._token_of(req)
        if not limit or token is None:
            return None
        key = token["value"]
        window = self.windows.get(key)
        if window is None or window.limit != limit or window.window_s != span:
            window = self.windows[key] = SlidingWindow(limit, span)
        now = self.clock.now().timestamp()
        if window.try_take(now):
            return None
        wait = max(1, math.ceil(window.seconds_until_free(now)))
        return Response(429, {"code": E_RATE[0], "message": E_RATE[1]},
                        {"x-pc-retry-after": str(wait)})

    def not_found(self, req: Request) -> Response:
        return Response(404, {"code": E_NO_ROUTE[0], "message": E_NO_ROUTE[1]})

    # -- auth -------------------------------------------------------------------------------------
    def h_token(self, req: Request) -> Any:
        if req.arg("grant_type") != "client_credentials":
            raise _error(E_INVALID, "不支持的grant_type")
        app = self.apps.get(req.arg("client_id") or "")
        if app is None or app["secret"] != req.arg("client_secret"):
            raise _pair(E_CREDENTIALS)
        value = str(uuid.UUID(int=self.random.getrandbits(128), version=4))
        expires_at = self.now() + int(self.config["token_ttl_s"])
        client_id = req.arg("client_id")
        self.tokens[value] = {"value": value, "client_id": client_id, "expires_at": expires_at}
        absolute = self.config["expires_in_mode"] == "absolute"
        return {"access_token": value, "token_type": "Bearer",
                "expires_in": expires_at if absolute else int(self.config["token_ttl_s"])}

    # -- configuration ----------------------------------------------------------------------------
    def h_projects(self, req: Request) -> Any:
        rows = [p for p in self.projects.values() if not p["is_deleted"]]
        if req.arg("identifier"):
            rows = [p for p in rows if p["identifier"] == req.arg("identifier")]
        if req.arg("type"):
            rows = [p for p in rows if p["type"] == req.arg("type")]
        if req.arg("keywords"):
            kw = req.arg("keywords", "").lower()
            rows = [p for p in rows if kw in p["name"].lower() or kw in p["identifier"].lower()]
        return self._list(req, rows, lambda p: self._project_ref(p["id"]))

    def h_project(self, req: Request) -> Any:
        project = self.projects.get(req.params["id"])
        if project is None:
            raise _pair(E_PROJECT)
        return self._project_ref(project["id"])

    def h_versions(self, req: Request) -> Any:
        pid = self._require_project_id(req.params["id"])
        return self._list(req, self.versions[pid], lambda v: self._version_shape(pid, v, True))

    def _require_project_id(self, pid: str | None) -> str:
        if not pid:
            raise _error(E_MISSING, "'project_id'不能为空")
        if pid not in self.projects:
            raise _pair(E_PROJECT)
        return pid

    def _require_type(self, pid: str, type_id: str | None) -> str:
        if not type_id:
            raise _error(E_MISSING, "'work_item_type_id'不能为空")
        if (pid, type_id) not in self.plan_of:
            raise _error(E_INVALID, "'work_item_type'资源不存在")
        return type_id

    def h_types(self, req: Request) -> Any:
        pid = self._require_project_id(req.arg("project_id"))
        return self._list(req, self.types[pid], lambda t: {
            "id": t["id"], "url": f"{self._base}/work_item/types/{t['id']}", "name": t["name"],
            "group": t["group"]})

    def h_states(self, req: Request) -> Any:
        pid = self._require_project_id(req.arg("project_id"))
        type_id = self._require_type(pid, req.arg("work_item_type_id"))
        plan = self.plans[self.plan_of[(pid, type_id)]]
        return self._list(req, plan["states"], self._state_ref)

    def h_priorities(self, req: Request) -> Any:
        pid = self._require_project_id(req.arg("project_id"))
        return self._list(req, self.priorities[pid], lambda p: self._priority_ref(pid, p["id"]))

    def h_properties(self, req: Request) -> Any:
        pid = self._require_project_id(req.arg("project_id"))
        type_id = self._require_type(pid, req.arg("work_item_type_id"))
        return self._list(req, self.property_defs[(pid, type_id)], lambda d: {
            "id": d["id"], "url": f"{self._base}/work_item/properties/{d['id']}",
            "name": d["name"], "type": d["type"], "options": copy.deepcopy(d["options"]) or None})

    def _plan_shape(self, plan: dict[str, Any]) -> dict[str, Any]:
        project = self.projects[plan["project_id"]]
        type_name = next(t["name"] for t in self.types[plan["project_id"]]
                         if t["id"] == plan["type_id"])
        return {"id": plan["id"], "url": f"{self._base}/work_item_state_plans/{plan['id']}",
                "project_type": project["type"],
                "work_item_type": {"id": plan["type_id"], "name": type_name},
                "project": self._project_ref(plan["project_id"])}

    def h_plans(self, req: Request) -> Any:
        pid = self._require_project_id(req.arg("project_id"))
        rows = [p for p in self.plans.values() if p["project_id"] == pid]
        return self._list(req, rows, self._plan_shape)

    def h_flows(self, req: Request) -> Any:
        plan = self.plans.get(req.params["id"])
        if plan is None:
            raise _error(E_INVALID, "'state_plan'资源不存在")
        rows = plan["flows"]
        if req.arg("from_state_id"):
            rows = [f for f in rows if f["from"] == req.arg("from_state_id")]
        return self._list(req, rows, lambda f: {
            "id": f["id"], "url": f"{self._base}/work_item_state_flows/{f['id']}",
            "state_plan": {"id": plan["id"]}, "from_state": self._state_ref(f["from"]),
            "to_state": self._state_ref(f["to"])})

    def h_users(self, req: Request) -> Any:
        rows = list(self.users.values())
        if req.arg("keywords"):
            kw = req.arg("keywords", "").lower()
            rows = [u for u in rows if kw in u["name"].lower() or kw in u["display_name"].lower()]
        if req.arg("emails"):
            wanted = set(req.arg("emails", "").split(","))
            rows = [u for u in rows if u["email"] in wanted]
        return self._list(req, rows, self._user_full)

    # -- work items: validation shared by create, patch and bulk patch ----------------------------
    def _check_properties(self, pid: str, type_id: str, values: Any) -> None:
        self._check_property_values(self.property_defs.get((pid, type_id), []), values)

    @staticmethod
    def _check_property_values(definitions: list[dict[str, Any]], values: Any) -> None:
        if not isinstance(values, dict):
            raise _error(E_INVALID, "'properties'格式不正确")
        defs = {d["id"]: d for d in definitions}
        for key, value in values.items():
            definition = defs.get(key)
            if definition is None:  # not in the type's property plan (docs/pingcode.md §6)
                raise _error(E_UNKNOWN_PROPERTY, f"属性'{key}'不存在")
            if value is None:
                continue
            if definition["type"] in ("select", "multi_select"):
                wanted = value if isinstance(value, list) else [value]
                options = {o["_id"] for o in definition["options"]}
                if not all(v in options for v in wanted):
                    raise _error(E_BAD_OPTION, f"属性'{key}'的选项无效")
            elif definition["type"] in ("text", "textarea") and not isinstance(value, str):
                raise _error(E_INVALID, f"属性'{key}'必须是字符串")

    def _check_ref(self, name: str, value: Any) -> None:
        if value is not None and not _is_hex_id(value, 32 if name == "assignee_id" else 24):
            raise _error(E_BAD_ID, f"'{name}'不是有效的字符串(不是有效的id)")

    def _validated_changes(self, record: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """Check a PATCH body against ``record`` without touching it; return the changes."""
        pid, type_id = record["project_id"], record["type_id"]
        if "type_id" in body:
            raise _error(E_INVALID, "'type_id'不能修改")  # docs/pingcode.md §7
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key not in PATCHABLE:
                continue  # unknown fields are ignored, like most of the API [I]
            if key == "title" and (not isinstance(value, str) or not value.strip()):
                raise _error(E_MISSING, "'title'不能为空")
            if key in ("title", "description") and not isinstance(value, (str, type(None))):
                raise _error(E_INVALID, f"'{key}'必须是字符串")
            if key == "state_id":
                self._check_ref(key, value)
                plan = self._plan_for(record)
                if value not in plan["states"]:
                    raise _pair(E_STATE)
                if value != record["state_id"] and not any(
                        f["from"] == record["state_id"] and f["to"] == value
                        for f in plan["flows"]):
                    raise _pair(E_FLOW)
            if key == "priority_id" and value is not None:
                self._check_ref(key, value)
                self._priority_by_name(pid, value)
            if key == "assignee_id" and value is not None:
                self._check_ref(key, value)
                if value not in self.users:
                    raise _error(E_INVALID, "'assignee'资源不存在")
            if key == "version_ids":
                if not isinstance(value, list):
                    raise _error(E_INVALID, "'version_ids'必须是数组")
                for vid in value:
                    self._check_ref("version_ids", vid)
                    self._version_by_name(pid, vid)
            if key in ("start_at", "end_at") and value is not None and not isinstance(value, int):
                raise _error(E_INVALID, f"'{key}'必须是10位时间戳")
            if key == "properties":
                self._check_properties(pid, type_id, value)
                if self.config["properties_patch"] == "merge":
                    value = {**record["properties"], **value}
            if key == "parent_id" and value is not None:
                self._require_item(value)
            changes[key] = value
        return changes

    def _apply(self, record: dict[str, Any], changes: dict[str, Any],
               transition: Callable[[dict[str, Any], str, str | None], None] | None = None
               ) -> bool:
        """Apply validated changes; a state change is recorded by ``transition`` (work items'
        by default, ideas pass their own)."""
        changed = False
        for key, value in changes.items():
            if key == "state_id":
                if value != record["state_id"]:
                    (transition or self._transition)(record, value, self._caller)
                    changed = True
                continue
            if record.get(key) != value:
                record[key] = value
                changed = True
        if changed:
            self._touch(record, self._caller)
        return changed

    def _transition(self, record: dict[str, Any], state_id: str, user_id: str | None) -> None:
        self.histories[record["id"]].append({
            "id": self._hex(), "item_id": record["id"], "from": record["state_id"],
            "to": state_id, "created_at": self.now(), "created_by": user_id})
        record["state_id"] = state_id
        self._mark_completed(record)

    def _mark_completed(self, record: dict[str, Any]) -> None:
        """``completed_at`` is set on entering a completed/closed state and cleared on leaving
        one [I] (docs/pingcode.md §16.2 row 10)."""
        category = self.states[record["state_id"]]["type"]
        if category in ("completed", "closed"):
            record["completed_at"] = record["completed_at"] or self.now()
        else:
            record["completed_at"] = None

    def _touch(self, record: dict[str, Any], user_id: str | None) -> None:
        record["updated_at"] = self.now()
        record["updated_by"] = user_id

    # -- work items: endpoints --------------------------------------------------------------------
    def h_create(self, req: Request) -> Any:
        body = req.json()
        if not isinstance(body, dict):
            raise _error(E_INVALID, "请求体格式不正确")
        for key in ("project_id", "type_id", "title"):
            if not body.get(key):
                raise _error(E_MISSING, f"'{key}'不能为空")  # docs/pingcode.md §16.2 row 8
        project = self._require_project(body["project_id"])
        plan_id = self.plan_of.get((project["id"], body["type_id"]))
        if plan_id is None:
            raise _error(E_INVALID, "'type'资源不存在")
        plan = self.plans[plan_id]
        state_id = body.get("state_id")
        if state_id is not None:
            self._check_ref("state_id", state_id)
            if state_id not in plan["states"]:
                raise _pair(E_STATE)
        probe = {"project_id": project["id"], "type_id": body["type_id"], "properties": {},
                 "state_id": plan["initial"]}
        changes = self._validated_changes(
            probe, {k: v for k, v in body.items()
                    if k not in ("state_id", "project_id", "type_id")})
        record = self._new_item(project, body["type_id"], body["title"], self._caller or "")
        record["state_id"] = state_id or plan["initial"]
        for key, value in changes.items():
            record[key] = value
        self._mark_completed(record)
        return Response(int(self.config["create_status"]), self._full(record))

    def h_get(self, req: Request) -> Any:
        record = self._require_item(req.params["id"],
                                    include_deleted=_flag(req.arg("include_deleted")))
        return self._full(record)

    def h_patch(self, req: Request) -> Any:
        record = self._require_item(req.params["id"])
        body = req.json()
        if not isinstance(body, dict):
            raise _error(E_INVALID, "请求体格式不正确")
        changes = self._validated_changes(record, body)  # raises before anything changes
        self._apply(record, changes)
        return self._full(record)

    def h_bulk_patch(self, req: Request) -> Any:
        """One field on at most 100 ids (docs/pingcode.md §7). All are checked before any is changed
        [I]."""
        body = req.json() or {}
        ids, name = body.get("ids"), body.get("property_name")
        if not isinstance(ids, list) or not ids or not name:
            raise _error(E_MISSING, "'ids'和'property_name'不能为空")
        if len(ids) > 100:
            raise _error(E_INVALID, "'ids'不能超过100个")
        if name not in PATCHABLE:
            raise _error(E_INVALID, f"不支持批量修改'{name}'")
        records = [self._require_item(i) for i in ids]
        planned = [(r, self._validated_changes(r, {name: body.get("property_value")}))
                   for r in records]
        updates = sum(self._apply(r, changes) for r, changes in planned)
        return {"inserts": 0, "updates": updates, "deletes": 0}

    def h_delete(self, req: Request) -> Any:
        record = self._require_item(req.params["id"])
        record["is_deleted"] = 1
        self._touch(record, self._caller)
        return self._full(record)

    def h_histories(self, req: Request) -> Any:
        record = self._require_item(req.params["id"], include_deleted=True)
        return self._list(req, self.histories[record["id"]], self._history_shape)

    # -- work items: listing ----------------------------------------------------------------------
    def h_list(self, req: Request) -> Any:
        """Exact-match filters, the old plural lists and ``*_between`` (docs/pingcode.md §8, §16.2
        row 12)."""
        rows = self._visible(_flag(req.arg("include_deleted")), _flag(req.arg("include_archived")))
        for param, attr in LIST_FILTERS.items():
            wanted = set((req.arg(param) or "").split(",")) if req.arg(param) else None
            plural = req.arg(param.replace("_id", "_ids") if param.endswith("_id") else param + "s")
            if plural:
                wanted = (wanted or set()) | set(plural.split(","))
            if wanted is not None:
                rows = [r for r in rows if self._attr_matches(r, attr, wanted)]
        rows = self._between_and_keywords(req, rows, ("created", "updated", "start", "end"))
        return self._list(req, self._order(rows), self._full)

    def _between_and_keywords(self, req: Request, rows: list[dict[str, Any]],
                              times: tuple[str, ...]) -> list[dict[str, Any]]:
        """The legacy ``*_between`` ranges and ``keywords`` (identifier or title), which work
        item and idea lists share."""
        for field in times:
            between = req.arg(f"{field}_between")
            if between:
                rows = [r for r in rows if self._between(r[f"{field}_at"], between)]
        if req.arg("keywords"):
            kw = req.arg("keywords", "").lower()
            rows = [r for r in rows if kw in r["title"].lower() or kw == r["identifier"].lower()]
        return rows

    def _visible(self, include_deleted: bool, include_archived: bool) -> list[dict[str, Any]]:
        return [r for r in self.items.values()
                if (include_deleted or not r["is_deleted"])
                and (include_archived or not r["is_archived"])]

    @staticmethod
    def _attr_matches(record: dict[str, Any], attr: str, wanted: set[str]) -> bool:
        value = record.get(attr)
        if isinstance(value, list):
            return bool(wanted & set(value))
        return value in wanted

    @staticmethod
    def _between(value: int | None, spec: str) -> bool:
        """The old "a,b" / ",b" / "a" form, in seconds (older docs build, docs/pingcode.md §8)."""
        low, _, high = spec.partition(",")
        if value is None:
            return False
        return (not low or value >= int(low)) and (not high or value <= int(high))

    def h_search(self, req: Request) -> Any:
        defs = [d for defs in self.property_defs.values() for d in defs]
        return self._run_search(req, self._visible, SEARCH_FIELDS, defs, self._full)

    def _run_search(self, req: Request, visible: Callable[[bool, bool], list[dict[str, Any]]],
                    fields: dict[str, tuple[str, str]],
                    property_defs: list[dict[str, Any]],
                    shape: Callable[[dict[str, Any]], Any]) -> Any:
        """The search DSL, for work items and Ship ideas alike (docs/pingcode.md §8, §10)."""
        body = req.json() or {}
        if body.get("mode") != "query" or not isinstance(body.get("payload"), dict):
            raise _error(E_INVALID, "'mode'必须为query且'payload'不能为空")
        payload = body["payload"]
        page_index, page_size = self._paging(payload.get("page_index"), payload.get("page_size"))
        rows = visible(bool(payload.get("include_deleted")), bool(payload.get("include_archived")))
        filters = payload.get("filter") or {}
        if not isinstance(filters, dict):
            raise _error(E_INVALID, "'filter'格式不正确")
        for field, condition in filters.items():
            kind, getter = self._search_field(field, fields, property_defs)
            op, operand = self._operator(field, kind, condition)
            rows = [r for r in rows if self._test(kind, op, getter(r), operand)]
        keywords = (payload.get("keywords") or "").lower()
        if keywords:
            rows = [r for r in rows
                    if keywords in r["title"].lower() or keywords == r["identifier"].lower()]
        return self._envelope(self._order(rows), page_index, page_size, shape)

    @staticmethod
    def _search_field(field: str, fields: dict[str, tuple[str, str]],
                      property_defs: list[dict[str, Any]],
                      ) -> tuple[str, Callable[[dict[str, Any]], Any]]:
        if field in NOT_FILTERABLE:
            raise _error(E_INVALID, f"'{field}'不支持过滤")
        if field in fields:
            kind, attr = fields[field]
            return kind, lambda r: r.get(attr)
        if field.startswith("properties."):
            key = field.split(".", 1)[1]
            kinds = {PROPERTY_KIND.get(d["type"], "text") for d in property_defs if d["id"] == key}
            if not kinds:
                raise _error(E_UNKNOWN_PROPERTY, f"属性'{key}'不存在")
            return kinds.pop(), lambda r: r["properties"].get(key)
        raise _error(E_INVALID, f"'{field}'不支持过滤")

    @staticmethod
    def _operator(field: str, kind: str, condition: Any) -> tuple[str, Any]:
        """Exactly one operator per field, from the field kind's set (docs/pingcode.md §8)."""
        if not isinstance(condition, dict) or len(condition) != 1:
            raise _error(E_INVALID, f"'{field}'的过滤条件必须恰好包含一个操作符")
        op, operand = next(iter(condition.items()))
        if op not in OPS_BY_KIND[kind]:
            raise _error(E_INVALID, f"'{field}'不支持操作符'{op}'")
        if op in ("in", "nin") and not isinstance(operand, list):
            raise _error(E_INVALID, f"'{op}'的值必须是数组")
        if op == "between" and not (isinstance(operand, list) and len(operand) == 2):
            raise _error(E_INVALID, "'between'的值必须是[from,to]")
        if kind in ("time", "number") and op not in ("exists", "between") and not isinstance(
                operand, (int, float)):
            raise _error(E_INVALID, f"'{field}'的值必须是数字")
        return op, operand

    def _test(self, kind: str, op: str, value: Any, operand: Any) -> bool:
        if op == "exists":
            present = value not in (None, "", [])
            return present if operand else not present
        if op == "contains":  # case-insensitive substring of the stored text [I]
            return isinstance(value, str) and str(operand).lower() in value.lower()
        if op in ("in", "nin"):
            values = set(value) if isinstance(value, list) else {value}
            hit = bool(values & set(operand))
            return hit if op == "in" else not hit
        if value is None:
            return False
        if kind == "time" and self.config["search_day_granularity"]:
            # Time filters are evaluated per day (docs/pingcode.md §8), so `gt` today excludes the
            # rest of today and `gte` includes all of it.
            value = self._day(value)
            operand = ([self._day(int(x)) for x in operand] if op == "between"
                       else self._day(int(operand)))
        if op == "between":
            return operand[0] <= value <= operand[1]
        return {"eq": value == operand, "ne": value != operand, "gt": value > operand,
                "lt": value < operand, "gte": value >= operand, "lte": value <= operand}[op]

    # -- Ship: products and idea configuration (docs/pingcode.md §10) -----------------------------
    def h_ship_products(self, req: Request) -> Any:
        """Filters are ``keywords`` (and, in the older docs build, date ranges); no identifier
        filter (docs/pingcode.md §10)."""
        rows = [p for p in self.products.values() if not p["is_deleted"]]
        if req.arg("keywords"):
            kw = req.arg("keywords", "").lower()
            rows = [p for p in rows if kw in p["name"].lower() or kw in p["identifier"].lower()]
        return self._list(req, rows, self._product_full)

    def _require_product_id(self, pid: str | None) -> str:
        if not pid:
            raise _error(E_MISSING, "'product_id'不能为空")
        return self._require_product(pid)["id"]

    def h_idea_states(self, req: Request) -> Any:
        pid = self._require_product_id(req.arg("product_id"))
        return self._list(req, self.idea_state_plans[pid]["states"], self._idea_state_ref)

    def h_idea_priorities(self, req: Request) -> Any:
        pid = self._require_product_id(req.arg("product_id"))
        return self._list(req, self.idea_priorities[pid],
                          lambda p: self._idea_priority_ref(pid, p["id"]))

    def h_idea_properties(self, req: Request) -> Any:
        pid = self._require_product_id(req.arg("product_id"))
        return self._list(req, self.idea_property_defs[pid], lambda d: {
            "id": d["id"], "url": f"{self._ship_base}/idea_properties/{d['id']}",
            "name": d["name"], "type": d["type"], "options": copy.deepcopy(d["options"]) or None})

    # -- Ship: ideas ------------------------------------------------------------------------------
    def _validated_idea_changes(self, record: dict[str, Any],
                                body: dict[str, Any]) -> dict[str, Any]:
        """Check a PATCH body (docs/pingcode.md §10 lists the fields) against ``record`` without
        touching it; return the changes. Unknown fields are ignored, as for work items [I]."""
        pid = record["product_id"]
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key not in IDEA_PATCHABLE:
                continue
            if key == "title":
                self._check_idea_title(value)
            if key == "description" and not isinstance(value, (str, type(None))):
                raise _error(E_INVALID, "'description'必须是字符串")
            if key == "state_id":
                self._check_ref(key, value)
                if value not in self.idea_states:
                    raise _pair(E_IDEA_STATE_MISSING)
                if value != record["state_id"]:
                    self._check_idea_move(record, value)
            if key == "priority_id" and value is not None:
                self._check_ref(key, value)
                self._idea_priority_by_name(pid, value)
            if key == "assignee_id" and value is not None:
                self._check_ref(key, value)
                if value not in self.users:
                    raise _error(E_INVALID, "'assignee'资源不存在")
            if key == "progress" and not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise _error(E_INVALID, "'progress'必须是0到1之间的数字")  # docs/pingcode.md §10: 0–1
            if key in ("plan_at", "real_at") and value is not None:
                self._check_period(key, value)
            if key == "plan_id" and value is not None:
                self._check_ref(key, value)
                self._release_plan_by_name(pid, value)
            if key == "suite_id" and value is not None:
                raise _error(E_INVALID, "'suite'资源不存在")  # no modules are seeded
            if key == "properties":
                self._check_property_values(self.idea_property_defs[pid], value)
                if self.config["properties_patch"] == "merge":
                    value = {**record["properties"], **value}
            changes[key] = value
        return changes

    @staticmethod
    def _check_idea_title(value: Any) -> None:
        if not isinstance(value, str) or not value.strip():
            raise _error(E_MISSING, "'title'不能为空")
        if len(value) > 255:  # docs/pingcode.md §10
            raise _error(E_INVALID, "'title'长度不能超过255")

    @staticmethod
    def _check_period(key: str, value: Any) -> None:
        """``plan_at``/``real_at`` are replaced whole, so all three parts are required, and
        the granularity is one of four (docs/pingcode.md §10, from the older docs build)."""
        ok = (isinstance(value, dict) and isinstance(value.get("from"), int)
              and isinstance(value.get("to"), int) and value.get("granularity") in GRANULARITIES)
        if not ok:
            raise _error(E_INVALID, f"'{key}'必须包含from、to和granularity")

    def h_idea_create(self, req: Request) -> Any:
        """docs/pingcode.md §10: ``product_id`` and ``title`` (≤255) required; ``assignee_id``,
        ``description``, ``suite_id``, ``properties`` optional. "No state or priority on create":
        a ``state_id`` or ``priority_id`` sent anyway is ignored like any unknown field [I]."""
        body = req.json()
        if not isinstance(body, dict):
            raise _error(E_INVALID, "请求体格式不正确")
        for key in ("product_id", "title"):
            if not body.get(key):
                raise _error(E_MISSING, f"'{key}'不能为空")
        product = self._require_product(body["product_id"])
        self._check_idea_title(body["title"])
        probe = {"product_id": product["id"], "properties": {},
                 "state_id": self.idea_state_plans[product["id"]]["initial"]}
        changes = self._validated_idea_changes(
            probe, {k: v for k, v in body.items() if k in IDEA_CREATE_FIELDS})
        record = self._new_idea(product, body["title"], self._caller or "")
        record["state_id"] = probe["state_id"]
        record.update(changes)
        self._mark_idea_completed(record, self._caller)
        return Response(int(self.config["create_status"]), self._idea_full(record))

    def h_idea_get(self, req: Request) -> Any:
        return self._idea_full(self._require_idea(req.params["id"]))

    def h_idea_patch(self, req: Request) -> Any:
        record = self._require_idea(req.params["id"])
        body = req.json()
        if not isinstance(body, dict):
            raise _error(E_INVALID, "请求体格式不正确")
        changes = self._validated_idea_changes(record, body)  # raises before anything changes
        self._apply(record, changes, self._idea_transition)
        return self._idea_full(record)

    def h_idea_histories(self, req: Request) -> Any:
        record = self._require_idea(req.params["id"], include_deleted=True)
        return self._list(req, self.idea_histories[record["id"]], self._idea_history_shape)

    def _visible_ideas(self, include_deleted: bool, include_archived: bool,
                       ) -> list[dict[str, Any]]:
        return [r for r in self.ideas.values()
                if (include_deleted or not r["is_deleted"])
                and (include_archived or not r["is_archived"])]

    def h_idea_list(self, req: Request) -> Any:
        """docs/pingcode.md §10: ``product_id, state_id, priority_id, keywords``; the older docs
        build also ``created_between, updated_between``. ``keywords`` matches the identifier or the
        title (the older docs build: "支持需求编号和需求标题")."""
        rows = self._visible_ideas(_flag(req.arg("include_deleted")),
                                   _flag(req.arg("include_archived")))
        for param, attr in IDEA_LIST_FILTERS.items():
            if req.arg(param):
                rows = [r for r in rows if r[attr] == req.arg(param)]
        rows = self._between_and_keywords(req, rows, ("created", "updated"))
        return self._list(req, self._order(rows), self._idea_full)

    def h_idea_search(self, req: Request) -> Any:
        """The work-item search DSL (docs/pingcode.md §8, §10); time fields created_at, updated_at,
        completed_at; refs
        product.id, state.id, priority.id, assignee.id, tags.id; and properties.*."""
        defs = [d for defs in self.idea_property_defs.values() for d in defs]
        return self._run_search(req, self._visible_ideas, IDEA_SEARCH_FIELDS, defs,
                                self._idea_full)

    # -- comments ---------------------------------------------------------------------------------
    def h_comment_create(self, req: Request) -> Any:
        body = req.json() or {}
        for key in ("principal_type", "principal_id", "content"):
            if not body.get(key):
                raise _error(E_MISSING, f"'{key}'不能为空")
        if body["principal_type"] == "work_item":
            self._require_item(body["principal_id"])
        elif body["principal_type"] == "idea":  # docs/pingcode.md §11
            self._require_idea(body["principal_id"])
        comment = {"id": self._hex(), "principal_type": body["principal_type"],
                   "principal_id": body["principal_id"], "content": body["content"],
                   "created_at": int(body.get("created_at") or self.now()),
                   "created_by": body.get("created_by") or self._caller, "is_deleted": 0}
        self.comments[comment["id"]] = comment
        return Response(int(self.config["create_status"]), self._comment_shape(comment))

    def _comment_shape(self, c: dict[str, Any]) -> dict[str, Any]:
        return {"id": c["id"], "url": f"{self._root()}/v1/comments/{c['id']}",
                "content": c["content"], "attachment_count": 0, "attachments": [],
                "created_at": c["created_at"], "created_by": self._user_ref(c["created_by"]),
                "is_deleted": c["is_deleted"]}

    def h_comments(self, req: Request) -> Any:
        rows = [c for c in self.comments.values()
                if c["principal_type"] == req.arg("principal_type")
                and c["principal_id"] == req.arg("principal_id")]
        return self._list(req, rows, self._comment_shape)


def _realtime_emulator() -> PingCodeEmulator:
    return PingCodeEmulator(realtime=True)


_realtime_emulator.__name__ = "PingCodeEmulator"

if __name__ == "__main__":
    serve_main(_realtime_emulator)
