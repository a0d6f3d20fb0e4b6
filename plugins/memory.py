"""In-memory CRM and tracker connectors, for tests and property-based simulation.

They behave like real services where it matters to the engine: every write bumps ``updated_at``,
tracker states move only along allowed transitions, priorities come from a fixed list, listing is
paged (and each page counts as an API call), and faults can be injected per record or for the
whole side. With the ``path`` setting the data lives in a JSON file, so the CLI can be exercised
across invocations.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from sync.connectors import (CRMConnector, Deal, InstanceContext, NewRequirement, Requirement,
                             RequirementChange, TrackerConnector, WriteResult, has_marker,
                             workflow_path)
from sync.errors import ItemError, RemoteError, TransitionError
from sync.hookspecs import hookimpl

PAGE_SIZE = 50
KEY_PREFIX = "MEM"  # keys are MEM-1, MEM-2, ...

DEFAULT_STATES = ["Open", "Planned", "In progress", "Done", "Not now", "Won't do"]
DEFAULT_FLOWS = [("Open", "Planned"), ("Planned", "In progress"), ("In progress", "Done"),
                 ("Open", "Not now"), ("Not now", "Open"), ("Open", "Won't do"),
                 ("Planned", "Open"), ("In progress", "Planned"), ("Planned", "Not now")]
DEFAULT_PRIORITIES = ["Highest", "High", "Medium", "Low", "Lowest"]


class Clock:
    """Strictly increasing UTC time, so two writes never share an ``updated_at``."""

    def __init__(self) -> None:
        self._last = datetime(2000, 1, 1, tzinfo=timezone.utc)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            self._last = max(datetime.now(timezone.utc), self._last + timedelta(microseconds=1))
            return self._last


@dataclass
class World:
    """The data behind one memory CRM and one memory tracker (they may share a World)."""

    deals: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: list[str] = field(default_factory=lambda: list(DEFAULT_STATES))
    flows: list[tuple[str, str]] = field(default_factory=lambda: list(DEFAULT_FLOWS))
    priorities: list[str] = field(default_factory=lambda: list(DEFAULT_PRIORITIES))
    crm_options: dict[str, list[str]] = field(default_factory=dict)
    next_item: int = 1
    # Fault injection (not persisted): ids whose writes fail; sides ("crm", "tracker") that
    # raise on every call (outage) or answer every read with nothing (empty).
    failing_ids: set[str] = field(default_factory=set)
    outage: set[str] = field(default_factory=set)
    empty: set[str] = field(default_factory=set)
    # what the tracker cannot change after creation (a tracker like Worktile): field names or
    # "description"; an update that tries is refused
    unwritable: set[str] = field(default_factory=set)
    clock: Clock = field(default_factory=Clock)

    # -- people acting on the systems (tests and the simulation call these) --------------------
    def add_deal(self, deal_id: str, **fields: str | None) -> dict[str, Any]:
        deal = {"id": deal_id, "name": fields.pop("name", f"Deal {deal_id}"),
                "company": fields.pop("company", None), "stage": fields.pop("stage", "open"),
                "amount": fields.pop("amount", None), "owner": fields.pop("owner", None),
                "close_date": fields.pop("close_date", None), "fields": dict(fields),
                "updated_at": self.clock.now().isoformat()}
        self.deals[deal_id] = deal
        return deal

    def edit_deal(self, deal_id: str, **fields: str | None) -> None:
        deal = self.deals[deal_id]
        for key in ("name", "company", "stage", "amount", "owner", "close_date"):
            if key in fields:
                deal[key] = fields.pop(key)
        deal["fields"].update(fields)
        deal["updated_at"] = self.clock.now().isoformat()

    def add_item(self, title: str, description: str = "", status: str | None = None,
                 priority: str | None = None, **props: str | None) -> dict[str, Any]:
        item_id = f"item{self.next_item}"
        item = {"id": item_id, "key": f"{KEY_PREFIX}-{self.next_item}", "title": title,
                "description": description, "status": status or self.states[0],
                "priority": priority or self.priorities[2], "delivery": None,
                "props": dict(props), "deleted": False, "updated_at": self.clock.now().isoformat()}
        item["created_at"] = item["updated_at"]
        self.next_item += 1
        self.items[item_id] = item
        return item

    def edit_item(self, item_id: str, **changes: str | None) -> None:
        """A person's edit: status changes here skip the workflow on purpose (admin override)."""
        self.items[item_id].update(changes)
        self.items[item_id]["updated_at"] = self.clock.now().isoformat()

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"deals": self.deals, "items": self.items, "states": self.states,
                "flows": self.flows, "priorities": self.priorities,
                "crm_options": self.crm_options, "next_item": self.next_item}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "World":
        world = cls(**{k: v for k, v in data.items() if k != "flows"})
        world.flows = [tuple(f) for f in data.get("flows", DEFAULT_FLOWS)]  # type: ignore[misc]
        return world


_WORLDS: dict[str, World] = {}


def shared_world(name: str) -> World:
    """A process-wide World by name, for instances configured with ``world = "name"``."""
    return _WORLDS.setdefault(name, World())


class _MemoryBase:
    """What both memory connectors share: where their World lives and how calls are counted."""

    settings_help = {
        "path": "JSON file holding the data (created if missing); without it, data is in memory",
        "world": "name of an in-process data set shared by a memory CRM and tracker",
    }
    ctx: InstanceContext
    calls: Any
    side: str

    def __init__(self, ctx: InstanceContext, world: World | None = None):
        """``world`` hands the connector its data directly (tests); otherwise it comes from the
        ``path`` file or the named in-process ``world``."""
        super().__init__(ctx)  # type: ignore[call-arg]  # the connector base class, by MRO
        path = ctx.settings.get("path") if world is None else None
        self._path = Path(path) if path else None
        self.world = world if world is not None else self._open_world()

    def _open_world(self) -> World:
        if self._path is not None:
            if self._path.exists():
                return World.from_json(json.loads(self._path.read_text(encoding="utf-8")))
            return World()
        return shared_world(self.ctx.settings.get("world", self.ctx.name))

    def _save(self) -> None:
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.world.to_json(), ensure_ascii=False), encoding="utf-8")
            tmp.replace(self._path)  # atomic, so a crash never leaves half a file

    def _call(self, label: str) -> None:
        self.calls[label] += 1
        if self.side in self.world.outage:
            raise RemoteError(f"memory {self.side} {self.ctx.name!r} is unreachable (injected)")

    def _paged(self, rows: list[Any], label: str) -> Iterator[Any]:
        if self.side in self.world.empty:
            rows = []  # a failure that looks like "nothing changed": the engine must catch it
        for start in range(0, max(len(rows), 1), PAGE_SIZE):
            self._call(label)
            yield from rows[start:start + PAGE_SIZE]

    def _check_fault(self, record_id: str) -> None:
        if record_id in self.world.failing_ids:
            raise ItemError(f"memory {self.side}: write to {record_id} refused (injected)")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _in_window(updated_at: str, since: datetime | None, until: datetime) -> bool:
    when = datetime.fromisoformat(updated_at)
    return (since is None or when >= since) and when <= until


class MemoryCRM(_MemoryBase, CRMConnector):
    type_name = "memory"
    summary = "in-memory CRM for tests and simulation (optionally persisted to a JSON file)"
    batch_size = 100

    def _deal(self, raw: dict[str, Any], properties: list[str]) -> Deal:
        return Deal(id=raw["id"], updated_at=datetime.fromisoformat(raw["updated_at"]),
                    fields={p: raw["fields"].get(p) for p in properties}, name=raw["name"],
                    url=f"memory://deals/{raw['id']}", company=raw["company"], stage=raw["stage"],
                    amount=float(raw["amount"]) if raw["amount"] not in (None, "") else None,
                    close_date=raw["close_date"], owner=raw["owner"],
                    is_open=raw["stage"] not in ("closedwon", "closedlost"))

    def iter_changed(self, since: datetime | None, until: datetime,
                     properties: list[str]) -> Iterator[Deal]:
        rows = [d for d in self.world.deals.values() if _in_window(d["updated_at"], since, until)]
        for raw in self._paged(rows, "search deals"):
            yield self._deal(raw, properties)

    def fetch(self, ids: list[str], properties: list[str],
              with_context: bool = True) -> dict[str, Deal]:
        found = {}
        for start in range(0, len(ids), self.batch_size):
            self._call("batch read deals")
            for deal_id in ids[start:start + self.batch_size]:
                if deal_id in self.world.deals and "crm" not in self.world.empty:
                    found[deal_id] = self._deal(self.world.deals[deal_id], properties)
        return found

    def update(self, updates: list[tuple[str, dict[str, str | None]]]) -> list[WriteResult]:
        results = []
        for start in range(0, len(updates), self.batch_size):
            self._call("batch update deals")
            for deal_id, values in updates[start:start + self.batch_size]:
                results.append(self._update_one(deal_id, values))
        self._save()
        return results

    def _update_one(self, deal_id: str, values: dict[str, str | None]) -> WriteResult:
        try:
            self._check_fault(deal_id)
            if deal_id not in self.world.deals:
                raise ItemError(f"deal {deal_id} does not exist", retryable=False)
            for name, value in values.items():
                options = self.world.crm_options.get(name)
                if options is not None and value is not None and value not in options:
                    raise ItemError(f"deal {deal_id}: {value!r} is not an option of {name}",
                                    retryable=False)
            self.world.edit_deal(deal_id, **values)
        except ItemError as exc:
            return WriteResult(deal_id, error=exc)
        record = self.world.deals[deal_id]
        return WriteResult(deal_id, record=record,
                           updated_at=datetime.fromisoformat(record["updated_at"]))

    def add_note(self, deal_id: str, text: str) -> str:
        self._call("create note")
        self._check_fault(deal_id)
        notes = self.world.deals[deal_id].setdefault("notes", [])
        notes.append(text)
        self._save()
        return f"{deal_id}-note{len(notes)}"

    def field_options(self, field_name: str) -> list[str] | None:
        return self.world.crm_options.get(field_name)


class MemoryTracker(_MemoryBase, TrackerConnector):
    type_name = "memory"
    summary = "in-memory tracker with a workflow and fixed priorities"

    def _req(self, raw: dict[str, Any]) -> Requirement:
        return Requirement(id=raw["id"], key=raw["key"], title=raw["title"],
                           description=raw["description"], url=f"memory://items/{raw['key']}",
                           updated_at=datetime.fromisoformat(raw["updated_at"]),
                           created_at=_time(raw.get("created_at")),
                           fields={"status": raw["status"], "priority": raw["priority"],
                                   "delivery": raw["delivery"], **raw["props"]})

    def _live(self) -> list[dict[str, Any]]:
        return [i for i in self.world.items.values() if not i["deleted"]]

    def iter_changed(self, since: datetime | None, until: datetime) -> Iterator[Requirement]:
        rows = [i for i in self._live() if _in_window(i["updated_at"], since, until)]
        for raw in self._paged(rows, "search items"):
            yield self._req(raw)

    def fetch(self, ids: list[str]) -> dict[str, Requirement]:
        found = {}
        for item_id in ids:
            self._call("get item")
            raw = self.world.items.get(item_id)
            if raw is not None and not raw["deleted"] and "tracker" not in self.world.empty:
                found[item_id] = self._req(raw)
        return found

    def key_prefix(self) -> str | None:
        return KEY_PREFIX

    def find_by_key(self, key: str) -> Requirement | None:
        return self.find_by_keys([key]).get(key)

    def find_by_keys(self, keys: list[str]) -> dict[str, Requirement]:
        """One call for any number of keys (a tracker with a batch look-up)."""
        self._call("find items by key")
        wanted = set(keys)
        return {i["key"]: self._req(i) for i in self._live() if i["key"] in wanted}

    def find_by_marker(self, marker: str) -> Requirement | None:
        return self.find_by_markers([marker], marker, 0).get(marker)

    def find_by_markers(self, markers: list[str], prefix: str,
                        marked: int) -> dict[str, Requirement]:
        """One scan for every requirement carrying ``prefix``, matched exactly per marker."""
        self._call("search items by marker")
        found: dict[str, Requirement] = {}
        for item in self._live():
            if prefix in item["description"]:
                for marker in markers:
                    if marker not in found and has_marker(item["description"], marker):
                        found[marker] = self._req(item)
        return found

    def create(self, new: NewRequirement) -> Requirement:
        self._call("create item")
        fields = dict(new.fields)
        status = fields.pop("status", None)
        priority = fields.pop("priority", None)
        self._check_priority(priority)
        self._check_fault(new.marker)
        raw = self.world.add_item(new.title, new.description, priority=priority, **fields)
        if status and status != raw["status"]:
            self._move(raw, status)
        self._save()
        return self._req(raw)

    def update(self, req_id: str, change: RequirementChange) -> Requirement:
        self._call("update item")
        raw = self.world.items.get(req_id)
        if raw is None or raw["deleted"]:
            raise ItemError(f"item {req_id} does not exist", retryable=False)
        self._check_fault(req_id)
        refused = set(change.fields) | ({"description"} if change.description is not None
                                        else set())
        if refused & self.world.unwritable:
            raise ItemError(f"item {req_id}: {', '.join(sorted(refused & self.world.unwritable))}"
                            " cannot be changed after creation", retryable=False)
        fields = dict(change.fields)
        if "delivery" in fields:
            raise ItemError("delivery is read-only in the tracker", retryable=False)
        self._check_priority(fields.get("priority"))
        if "status" in fields and fields["status"] != raw["status"]:
            self._move(raw, fields.pop("status"))  # raises before anything else changes
        fields.pop("status", None)
        updates = {k: v for k, v in fields.items() if k == "priority"}
        props = {k: v for k, v in fields.items() if k != "priority"}
        if change.title is not None:
            updates["title"] = change.title
        if change.description is not None:
            updates["description"] = change.description
        if props:
            updates["props"] = {**raw["props"], **props}
        self.world.edit_item(req_id, **updates)
        self._save()
        return self._req(raw)

    def _check_priority(self, priority: str | None) -> None:
        if priority is not None and priority not in self.world.priorities:
            raise ItemError(f"priority {priority!r} does not exist (known: "
                            f"{', '.join(self.world.priorities)})", retryable=False)

    def _move(self, raw: dict[str, Any], target: str) -> None:
        """Walk the workflow to ``target`` one allowed transition at a time."""
        if target not in self.world.states:
            raise ItemError(f"state {target!r} does not exist", retryable=False)
        path = workflow_path(raw["status"], target, self.world.flows)
        if path is None:
            raise TransitionError(f"{raw['key']}: no transition path from {raw['status']!r} to "
                                  f"{target!r} in the workflow",
                                  f"add a transition {raw['status']!r} -> {target!r} to the "
                                  "workflow, or move the item by hand")
        for step in path:
            self.world.edit_item(raw["id"], status=step)

    def field_values(self, field_name: str) -> list[str] | None:
        return {"status": self.world.states, "priority": self.world.priorities}.get(field_name)

    def can_write(self, what: str) -> bool:
        return what not in self.world.unwritable


@hookimpl
def register_connectors(register: Any) -> None:
    register(MemoryCRM)
    register(MemoryTracker)
