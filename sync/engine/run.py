"""One run of one pair: read, plan, guard and apply, in two phases.

1. Take the pair's lock; read into a view (``read.py``): changed deals and requirements since
   each cursor minus a lookback, queued failures, resolved conflicts, a rotating slice of
   linked records; stop if a side returns nothing while links exist.
2. Phase one, links: look up every distinct key and marker once, plan the links and creates
   (``planners.plan_links``), plan phase two on the links that exist, and let the guards judge
   both together (``guards.py``). Then apply phase one: each create or link sticks as it lands.
3. Phase two, fields: plan again on the refreshed view, with the new links; re-read by id what
   only a search showed and plan again if anything moved; judge; apply in steps that stick.
4. Advance each cursor over what was read, never past the run's start; record the run.

A dry run does every read and plans both phases, but writes nothing anywhere: phase two is
planned on the links phase one would make, and a requirement still to be created is named as
what the deals behind it wait for.
"""

from __future__ import annotations

import inspect
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from ..connectors import CRMConnector, TrackerConnector
from ..errors import DealsyncError
from ..mapping import Mapping
from ..state import StateStore, now_utc
from . import guards, planners
from .actions import Action, CreateRequirement, ManualUpdate, describe_plan
from .apply import Applier, preview_links
from .collector import fewer_collections
from .grammar import GENERIC_KEY, KeyPattern
from .read import Reader
from .view import View

Progress = Callable[..., None]  # progress(what, count, total=None): docs/engine.md §10
Notify = Callable[..., None]

DEFAULT_MAX_CREATES = 50
# set once a run has finished on this state store: from then on its links are complete, and
# markers are searched only where an intent says a create may have been lost
MARKERS_CHECKED = "markers:checked"
COUNTS = ("deals_read", "requirements_read", "created", "relinked", "linked", "joined",
          "updated_tracker", "updated_crm", "notes", "agreed", "conflicts", "conflicts_queued",
          "manual_updates", "failures", "orphaned")


@dataclass
class Pair:
    """One CRM instance synced with one tracker instance under one mapping."""

    name: str
    crm: CRMConnector
    tracker: TrackerConnector
    mapping: Mapping
    crm_lookback: timedelta = timedelta(minutes=10)
    tracker_lookback: timedelta = timedelta(minutes=10)
    max_change_share: float = 0.5
    guard_min_links: int = 50
    max_creates: int = DEFAULT_MAX_CREATES
    # Linked records re-read by id each run, in rotation, whether they changed or not: the
    # only way to notice a deleted record or a change that does not touch its modified time
    # (a company renamed in the CRM). One HubSpot batch read covers 100 deals; PingCode
    # answers one item per call.
    verify_deals: int = 100
    verify_requirements: int = 10


@dataclass
class Options:
    dry_run: bool = False
    force: bool = False
    retry_all: bool = False  # `dealsync retry`: every queued item, due or not
    scan_markers: bool = False  # look for earlier creates before every create (restored state)
    record_actions: bool = False  # put the applied actions in the summary (dry runs always do)
    concurrent: bool = True  # both services at once where the connectors allow (lanes.py)
    progress: Progress | None = None
    notify: Notify | None = None  # lifecycle hooks: notify("link_created", pair=..., ...)


def key_pattern(pair: Pair) -> KeyPattern:
    """The mapping's ``key_pattern`` if it sets one, else ``<PROJECT>-<n>`` from the tracker."""
    if pair.mapping.key_pattern is not None:
        return KeyPattern(pair.mapping.key_pattern)
    prefix = pair.tracker.key_prefix()
    return KeyPattern.for_prefix(prefix) if prefix else KeyPattern(GENERIC_KEY)


def unwritable(pair: Pair) -> frozenset[str]:
    """The mirrored tracker fields (and "description") the tracker cannot change."""
    names = {fm.tracker for fm in pair.mapping.synced_fields()} | {"description"}
    return frozenset(name for name in names if not pair.tracker.can_write(name))


class Run:
    """One run of one pair. Use ``run_pair(pair, store, options)``."""

    def __init__(self, pair: Pair, store: StateStore, options: Options | None = None):
        self.pair, self.store = pair, store
        self.options = options or Options()
        self.started = now_utc()
        self.counts: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.actions: list[Action] = []  # in the order they were (or would be) applied
        self.waiting: list[str] = []  # dry run: what phase two cannot plan before phase one
        self.stop: dict[str, Any] | None = None  # why the run stopped, if it did
        self._clock = time.monotonic()
        # read once: the hook is called for every step
        self._hook_takes_total = (self.options.progress is not None
                                  and _takes_total(self.options.progress))
        self._calls_before = self._api_calls()

    def execute(self) -> dict[str, Any]:
        self.store.lock(self.pair.name)
        status = "error"
        try:
            with fewer_collections():
                status = self._run()
        except DealsyncError as exc:
            status = "stopped"
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self.stop = {"reason": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}
            raise
        finally:
            summary = self.summary(status)
            if not self.options.dry_run or status == "dry-run":
                self.store.record_run(self.pair.name, self.started, status, summary)
            self.store.unlock(self.pair.name)
            self._notify("run_finished", pair=self.pair.name, summary=summary)
        return summary

    def _run(self) -> str:
        ctx = planners.PlanContext(self.pair.name, self.pair.tracker.name, self.pair.mapping,
                                   key_pattern(self.pair), unwritable(self.pair))
        reader = Reader(self.pair, self.store, self.started, self.options.force, self._progress,
                        self._lanes())
        view = reader.load(self.options.retry_all)
        existing_seq = max((link.seq for link in view.links), default=0)
        reader.verify_slice(view)
        reader.rewrite_blocks_if_settings_changed(view)
        crm_cursor, tracker_cursor = reader.read_changes(view)
        self.counts.update(reader.counts)
        reader.read_verified(view)
        reader.probe_empty_sides(view)  # before anything is planned on what seemed gone

        self._progress("actions planned", 0)
        link_actions = self._plan_links(reader, view, ctx)
        field_actions = self._plan_fields(reader, view, ctx)
        self._progress("actions planned", len(link_actions) + len(field_actions))
        self._judge(link_actions + field_actions, view, existing_seq)

        applier = Applier(self.pair, self.store, ctx, self.counts, self.errors, self._notify,
                          self._progress, self._lanes())
        if self.options.dry_run:
            new_links = preview_links(link_actions, self.pair.name, existing_seq)
            self.waiting = [f"phase two waits for {a.title!r} to be created: its deals "
                            f"({', '.join(a.deal_ids)}) get its key, status and priority then"
                            for a in link_actions if isinstance(a, CreateRequirement)]
        else:
            new_links = applier.links(link_actions, view)
        self.actions += link_actions
        if new_links:  # phase two again, with the requirements the new links brought in
            view.add_links(new_links)
            self._progress("actions planned", 0)
            field_actions = self._plan_fields(reader, view, ctx)
            self._progress("actions planned", len(field_actions))
            self._judge(field_actions, view, existing_seq)
        self.actions += field_actions
        if self.options.dry_run:
            return "dry-run"
        applier.fields(field_actions, view)
        self._settle(view, applier, crm_cursor, tracker_cursor, reader.positions)
        return "partial" if self.counts["failures"] else "ok"

    def _lanes(self) -> bool:
        """Whether this run uses both services at once: asked for, and both connectors allow
        it (``lanes.py``)."""
        return self.options.concurrent and self.pair.crm.concurrent and \
            self.pair.tracker.concurrent

    def _plan_links(self, reader: Reader, view: View, ctx: planners.PlanContext) -> list[Action]:
        reader.resolve_keys(view, planners.wanted_keys(view, ctx))
        asking = [deal.id for members in planners.create_groups(view, ctx).values()
                  for deal, _ in members]
        if asking:
            reader.resolve_markers(view, self._may_have_been_created(view, asking))
        return planners.plan_links(view, ctx)

    def _may_have_been_created(self, view: View, asking: list[str]) -> list[str]:
        """The deals whose requirement an earlier run may have created without recording it:
        those with an intent left by a run that died between create and store, or all of them
        until a run has finished on this store (a new or lost one: a killed run may have
        rebuilt only part of its links) or when ``--scan-markers`` says the store was restored
        from a backup. Anything else was recorded, so no search is needed."""
        if self.options.scan_markers or not self.store.position(self.pair.name, MARKERS_CHECKED):
            return asking
        pending = {intent["deal_id"] for intent in self.store.intents(self.pair.name)}
        return [deal_id for deal_id in asking if deal_id in pending]

    def _plan_fields(self, reader: Reader, view: View,
                     ctx: planners.PlanContext) -> list[Action]:
        touched = planners.touched_requirements(view, ctx)
        reader.complete(view, touched)
        actions = planners.plan_fields(view, ctx, touched)
        if reader.refresh_before_write(view, actions):
            actions = planners.plan_fields(view, ctx, touched)
        return actions

    def _judge(self, actions: list[Action], view: View, existing_seq: int) -> None:
        limits = guards.Limits(self.pair.name, self.pair.tracker.name, self.pair.max_creates,
                               self.pair.max_change_share, self.pair.guard_min_links,
                               first_run=existing_seq == 0,
                               fields=tuple(f.name for f in self.pair.mapping.synced_fields()))
        for warning in guards.judge(actions, view, limits, existing_seq=existing_seq,
                                    force=self.options.force, dry_run=self.options.dry_run):
            if warning not in self.warnings:
                self.warnings.append(warning)

    def _settle(self, view: View, applier: Applier, crm_cursor: datetime | None,
                tracker_cursor: datetime | None, positions: dict[str, int]) -> None:
        """Close the queued items that went through (those retried now, and any that this run
        did anyway, such as a deal that now names a key that exists), then advance the
        cursors."""
        name = self.pair.name
        done = [f["id"] for f in view.due
                if (f["kind"], f["deal_id"], f["req_id"]) not in applier.failed]
        done += [f["id"] for f in self.store.failures(name)
                 if (f["kind"], f["deal_id"], f["req_id"]) in applier.succeeded]
        with self.store.transaction():
            self.store.resolve_failures(done)
            for position, value in positions.items():
                self.store.set_position(name, position, value)
            self.store.set_position(name, MARKERS_CHECKED, 1)
            if crm_cursor:
                self.store.set_cursor(name, "crm", crm_cursor)
            if tracker_cursor:
                self.store.set_cursor(name, "tracker", tracker_cursor)

    # -- reporting ---------------------------------------------------------------------------
    def _api_calls(self) -> dict[str, int]:
        return {self.pair.crm.name: sum(self.pair.crm.api_calls().values()),
                self.pair.tracker.name: sum(self.pair.tracker.api_calls().values())}

    def summary(self, status: str) -> dict[str, Any]:
        calls = {name: total - self._calls_before.get(name, 0)
                 for name, total in self._api_calls().items()}
        summary = {"pair": self.pair.name, "status": status,
                   "started_at": self.started.isoformat(),
                   "duration_s": round(time.monotonic() - self._clock, 3),
                   "counts": {k: self.counts.get(k, 0) for k in COUNTS}, "api_calls": calls,
                   "errors": self.errors}
        if self.stop is not None:
            summary["stop"] = self.stop
        if self.options.dry_run:
            summary["plan"] = (describe_plan(self.actions) + self.waiting
                               + [f"STOP: {warning}" for warning in self.warnings])
        manual = [a.describe() for a in self.actions if isinstance(a, ManualUpdate)]
        if manual:
            summary["manual_updates"] = manual
        if self.options.dry_run or self.options.record_actions:
            summary["actions"] = [action.to_json() for action in self.actions]
        return summary

    def _notify(self, hook: str, **kwargs: Any) -> None:
        if self.options.notify is not None:
            self.options.notify(hook, **kwargs)

    def _progress(self, what: str, count: int, total: int | None = None) -> None:
        hook = self.options.progress
        if hook is None:
            return
        if total is not None and self._hook_takes_total:
            hook(what, count, total)
        else:  # a hook written for progress(what, count) keeps working
            hook(what, count)


def _takes_total(hook: Callable[..., None]) -> bool:
    """Whether ``hook`` accepts ``progress(what, count, total)``."""
    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume the current one
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


def run_pair(pair: Pair, store: StateStore, options: Options | None = None) -> dict[str, Any]:
    """Run one pair once and return its summary."""
    return Run(pair, store, options).execute()
