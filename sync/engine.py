"""The sync algorithm: one run of one pair, planned and then applied.

The engine does no I/O of its own: it reads and writes through the two connectors and the state
store. A run is (DESIGN.md, "The sync algorithm"):

1. take the pair's lock;
2. read changed deals and requirements since each cursor minus a lookback, plus the items waiting
   in the failure queue or behind a resolved conflict, and a rotating slice of linked records
   (the only way to see a deletion);
3. link or create the requirement each new request asks for (stage one);
4. merge every mirrored field three ways against the base, with the requirement as the hub of its
   deals, and refresh the managed deal-context block (stage two); records seen only in a search
   are re-read by id before they are written, and merged again if they moved;
5. stop if a safety guard trips, else apply: tracker writes first, then batched CRM writes, each
   confirmed write storing its new base in the same transaction;
6. advance each cursor over what was read, never past the run's start, and record the run.

Echo suppression comes from the base: a write of ours reads back equal to the base, so the
record is left alone and nothing is copied again.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from . import context
from .connectors import (CRMConnector, Deal, NewRequirement, Requirement, RequirementChange,
                         TrackerConnector, make_marker)
from .errors import DealsyncError, ItemError, RateLimitExhausted, RemoteError, SafetyStop
from .mapping import FieldMap, Mapping
from .state import Base, Link, StateStore, now_utc

log = logging.getLogger("dealsync.engine")

Progress = Callable[[str, int], None]
Notify = Callable[..., None]

SAFETY_SAMPLE = 5  # linked records probed when a side returns nothing


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
    progress: Progress | None = None
    notify: Notify | None = None  # lifecycle hooks: notify("link_created", pair=..., ...)


@dataclass
class ConflictInfo:
    field: str
    deal_ids: list[str]
    crm_values: list[str | None]
    tracker_value: str | None
    policy: str
    outcome: str | None  # the tracker value chosen; None when queued for a person ("ask")


@dataclass
class TrackerWrite:
    req: Requirement
    change: RequirementChange = field(default_factory=RequirementChange)
    bases: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class CrmWrite:
    deal_id: str
    values: dict[str, str | None] = field(default_factory=dict)
    bases: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    after: set[str] = field(default_factory=set)  # tracker writes that must succeed first
    notes: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)  # deal notes to add once written


@dataclass
class Plan:
    creates: list[tuple[Deal, str, str]] = field(default_factory=list)
    named: list[tuple[Deal, str]] = field(default_factory=list)
    tracker_writes: dict[str, TrackerWrite] = field(default_factory=dict)
    crm_writes: dict[str, CrmWrite] = field(default_factory=dict)
    agreed: list[tuple[str, str, str, str | None, str | None]] = field(default_factory=list)
    conflicts: list[tuple[Requirement, ConflictInfo, int | None]] = field(default_factory=list)
    orphans: list[tuple[str, str, str]] = field(default_factory=list)  # (side, id, reason)
    settled: list[tuple[int, str]] = field(default_factory=list)  # (conflict id, requirement id)
    warnings: list[str] = field(default_factory=list)

    def crm_write(self, deal_id: str) -> CrmWrite:
        return self.crm_writes.setdefault(deal_id, CrmWrite(deal_id))

    def tracker_write(self, req: Requirement) -> TrackerWrite:
        return self.tracker_writes.setdefault(req.id, TrackerWrite(req))

    def lines(self) -> list[str]:
        """The plan as a person reads it (``--dry-run``)."""
        out = [f"create requirement {title!r} for deal {deal.id} ({deal.name})"
               for deal, title, _ in self.creates]
        out += [f"link deal {deal.id} ({deal.name}) to {key}" for deal, key in self.named]
        for write in self.tracker_writes.values():
            if not write.change.is_empty():
                out.append(f"update {write.req.key}: " + "; ".join(write.notes))
        for write in self.crm_writes.values():
            if write.values:
                out.append(f"update deal {write.deal_id}: " + "; ".join(write.notes))
        for req, info, _ in self.conflicts:
            verdict = (f"{info.policy} policy sets {info.outcome!r}" if info.outcome is not None
                       else "queued for a person (dealsync conflicts)")
            out.append(f"conflict on {req.key} {info.field}: tracker {info.tracker_value!r} vs "
                       f"deals {dict(zip(info.deal_ids, info.crm_values))}: {verdict}")
        out += [f"orphan {side} record {rid}: {reason}" for side, rid, reason in self.orphans]
        return out + [f"STOP: {warning}" for warning in self.warnings]


def _norm(value: str | None) -> str | None:
    return value if value not in ("", None) else None


@dataclass
class _Entry:
    link: Link
    deal: Deal
    base: Base | None


def merge_field(fm: FieldMap, req: Requirement, entries: list[_Entry],
                resolved: tuple[bool, str | None] = (False, None)) -> dict[str, Any]:
    """Three-way merge of one field over a requirement and its deals (the hub).

    Returns ``tracker`` (the value to write, absent for none), ``crm`` (deal id -> value to write),
    ``bases`` (deal id -> (crm, tracker) to store once written) and ``conflict`` (or None).
    A conflict under the ``ask`` policy returns no writes and no bases at all.
    """
    t = _norm(req.fields.get(fm.tracker))
    out: dict[str, Any] = {"crm": {}, "bases": {}, "conflict": None}
    if fm.direction == "to_crm":
        return _align(fm, t, t, entries, out)

    tracker_moved = any(e.base is not None and e.base.tracker_value != t for e in entries)
    proposals: list[tuple[str | None, datetime, str, str | None]] = []
    unbased_disagreement = False
    for e in entries:
        d = _norm(e.deal.fields.get(fm.crm))
        if e.base is None:
            if d is None or fm.same(d, t):
                continue
            unbased_disagreement = True
        elif d == e.base.crm_value or fm.same(d, t):
            continue
        proposals.append((fm.to_tracker(d), e.deal.updated_at, e.deal.id, d))

    if fm.direction == "to_tracker":
        value = max(proposals, key=lambda p: p[1])[0] if proposals else t
        return _align(fm, value, t, entries, out, write_crm=False)

    values = {p[0] for p in proposals}
    if resolved[0]:
        value = resolved[1]
    elif not proposals:
        value = t
    elif len(values) == 1 and not tracker_moved and not unbased_disagreement:
        value = proposals[0][0]
    else:
        value = _decide(fm, req, t, proposals, tracker_moved or unbased_disagreement)
        out["conflict"] = ConflictInfo(fm.name, [p[2] for p in proposals],
                                       [p[3] for p in proposals], t, fm.conflict,
                                       None if fm.conflict == "ask" else value)
        if fm.conflict == "ask":
            return out
    return _align(fm, value, t, entries, out)


def _decide(fm: FieldMap, req: Requirement, t: str | None,
            proposals: list[tuple[str | None, datetime, str, str | None]],
            tracker_changed: bool) -> str | None:
    """The field's conflict policy picks the winning value (in tracker terms)."""
    newest_deal = max(proposals, key=lambda p: p[1])
    if fm.conflict == "tracker":
        return t
    if fm.conflict == "crm":
        return newest_deal[0]
    if fm.conflict == "newest" and tracker_changed and req.updated_at >= newest_deal[1]:
        return t
    return newest_deal[0]


def _align(fm: FieldMap, value: str | None, current: str | None, entries: list[_Entry],
           out: dict[str, Any], write_crm: bool = True) -> dict[str, Any]:
    """Make every deal show ``value`` and record the new base for each link."""
    if value != current:
        out["tracker"] = value
    target = fm.to_crm(value)
    for e in entries:
        d = _norm(e.deal.fields.get(fm.crm))
        crm_after = target if write_crm else d
        if write_crm and d != target:
            out["crm"][e.deal.id] = target
        if e.base != Base(crm_after, value):
            out["bases"][e.deal.id] = (crm_after, value)
    return out


def request_html(body: str) -> str:
    """The request's text (after its title line) as escaped HTML paragraphs."""
    paragraphs = [p.strip() for p in body.split("\n\n") if p.strip()]
    return "".join("<p>" + html.escape(p).replace("\n", "<br>") + "</p>" for p in paragraphs)


class Run:
    """One run of one pair. Use ``Run(pair, store, options).execute()``."""

    def __init__(self, pair: Pair, store: StateStore, options: Options | None = None):
        self.pair = pair
        self.store = store
        self.options = options or Options()
        self.mapping = pair.mapping
        self.started = now_utc()
        self.counts: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self.plan = Plan()
        self.deals: dict[str, Deal] = {}
        self.reqs: dict[str, Requirement] = {}
        self.links: list[Link] = []
        self.bases: dict[tuple[str, str, str], Base] = {}
        self._failed: set[tuple[str, str, str]] = set()
        self._last_seq = self._next_seq = 0
        self._remote_failures = 0  # service errors in a row while applying
        # records known only from a search, so maybe stale by the time they are written
        self._searched_deals: set[str] = set()
        self._searched_reqs: set[str] = set()
        # records a queued failure, a resolved conflict or a new link make this run look at
        self._forced_deals: set[str] = set()
        self._forced_reqs: set[str] = set()
        self._touched: set[str] = set()  # requirements this run merges
        self._linked_pairs: set[tuple[str, str]] = set()
        self._req_facts: dict[str, tuple[str, str | None, str | None]] = {}
        self._snapshots: dict[str, dict[str, Any]] | None = None
        self._clock = time.monotonic()
        self._calls_before = self._api_calls()

    # -- orchestration ------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        name = self.pair.name
        self.store.lock(name)
        status = "error"
        try:
            self.links = self.store.links(name)
            self._last_seq = self._next_seq = max((link.seq for link in self.links), default=0)
            self._linked_pairs = {(link.deal_id, link.req_id) for link in self.links}
            self.bases = self.store.bases(name)
            due = self.store.failures(name, due_only=not self.options.retry_all)
            resolved = self.store.conflicts(name, status="resolved")
            crm_cursor, deal_count = self._read_deals(due)
            tracker_cursor, req_count = self._read_requirements(due, resolved)
            self._safety_probe(deal_count, req_count)
            positions = self._verify_slice()
            self._stage_links()
            self._complete_reads()
            self._stage_fields(resolved)
            if self._refresh_before_write():
                self._stage_fields(resolved)
            self._guard_share()
            if self.options.dry_run:
                status = "dry-run"
            else:
                self._apply()
                self._settle(due, crm_cursor, tracker_cursor, positions)
                status = "partial" if self.counts["failures"] else "ok"
        except DealsyncError as exc:
            status = "stopped"
            self.errors.append(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            summary = self.summary(status)
            if not self.options.dry_run or status == "dry-run":
                self.store.record_run(name, self.started, status, summary)
            self.store.unlock(name)
            self._notify("run_finished", pair=name, summary=summary)
        return summary

    def _api_calls(self) -> dict[str, int]:
        return {self.pair.crm.name: sum(self.pair.crm.api_calls().values()),
                self.pair.tracker.name: sum(self.pair.tracker.api_calls().values())}

    def summary(self, status: str) -> dict[str, Any]:
        calls = {name: total - self._calls_before.get(name, 0)
                 for name, total in self._api_calls().items()}
        keys = ("deals_read", "requirements_read", "created", "relinked", "linked",
                "updated_tracker", "updated_crm", "notes", "agreed", "conflicts",
                "conflicts_queued", "failures", "orphaned")
        summary = {"pair": self.pair.name, "status": status, "started_at": self.started.isoformat(),
                   "duration_s": round(time.monotonic() - self._clock, 3),
                   "counts": {k: self.counts.get(k, 0) for k in keys}, "api_calls": calls,
                   "errors": self.errors}
        if self.options.dry_run:
            summary["plan"] = self.plan.lines()
        return summary

    def _notify(self, hook: str, **kwargs: Any) -> None:
        if self.options.notify is not None:
            self.options.notify(hook, **kwargs)

    def _progress(self, what: str, count: int) -> None:
        if self.options.progress is not None:
            self.options.progress(what, count)

    # -- reading ------------------------------------------------------------------------------
    def _linked_deal_ids(self) -> set[str]:
        return {link.deal_id for link in self.links}

    def _linked_req_ids(self) -> set[str]:
        return {link.req_id for link in self.links}

    def _read_deals(self, due: list[dict[str, Any]]) -> tuple[datetime | None, int]:
        crm, name = self.pair.crm, self.pair.name
        cursor = self.store.cursor(name, "crm")
        since = cursor - self.pair.crm_lookback if cursor else None
        linked = self._linked_deal_ids()
        seen, latest = 0, cursor
        for deal in crm.iter_changed(since, self.started, self.mapping.crm_properties()):
            seen += 1
            latest = max(latest, deal.updated_at) if latest else deal.updated_at
            if deal.id in linked or self.mapping.selects(deal.fields):
                self._keep_deal(deal)
                self._searched_deals.add(deal.id)
            if seen % 200 == 0:
                self._progress("deals read", seen)
        self._progress("deals read", seen)
        self.counts["deals_read"] = seen
        self._forced_deals = {f["deal_id"] for f in due if f["deal_id"]}
        self._fetch_deals(self._forced_deals - set(self.deals))
        return (min(latest, self.started) if latest else None), seen

    def _keep_deal(self, deal: Deal) -> None:
        previous = self.deals.get(deal.id)
        if previous is None or deal.updated_at >= previous.updated_at:
            self.deals[deal.id] = deal

    def _read_requirements(self, due: list[dict[str, Any]],
                           resolved: list[dict[str, Any]]) -> tuple[datetime | None, int]:
        tracker, name = self.pair.tracker, self.pair.name
        cursor = self.store.cursor(name, "tracker")
        since = cursor - self.pair.tracker_lookback if cursor else None
        linked = self._linked_req_ids()
        seen, latest = 0, cursor
        for req in tracker.iter_changed(since, self.started):
            seen += 1
            latest = max(latest, req.updated_at) if latest else req.updated_at
            if req.id in linked:
                previous = self.reqs.get(req.id)
                if previous is None or req.updated_at >= previous.updated_at:
                    self.reqs[req.id] = req
                    self._searched_reqs.add(req.id)
            if seen % 200 == 0:
                self._progress("requirements read", seen)
        self._progress("requirements read", seen)
        self.counts["requirements_read"] = seen
        self._forced_reqs = {f["req_id"] for f in due if f["req_id"]} | \
            {c["req_id"] for c in resolved}
        self._fetch_reqs(self._forced_reqs - set(self.reqs))
        return (min(latest, self.started) if latest else None), seen

    def _fetch_deals(self, ids: Iterable[str]) -> None:
        ids = sorted(set(ids) - set(self.deals))
        if not ids:
            return
        found = self.pair.crm.fetch(ids, self.mapping.crm_properties())
        self.deals.update(found)
        for missing in set(ids) - set(found):
            self.plan.orphans.append(("crm", missing, "the CRM says this deal no longer exists"))

    def _fetch_reqs(self, ids: Iterable[str]) -> None:
        ids = sorted(set(ids) - set(self.reqs))
        if not ids:
            return
        found = self.pair.tracker.fetch(ids)
        self.reqs.update(found)
        for missing in set(ids) - set(found):
            self.plan.orphans.append(("tracker", missing,
                                      "the tracker says this requirement no longer exists"))

    def _safety_probe(self, deal_count: int, req_count: int) -> None:
        """'Could not fetch' never means 'gone': a side that returns nothing while links exist is
        asked for a few linked records by id; if none comes back, the run stops."""
        recent = sorted((link for link in self.links if not link.orphaned),
                        key=lambda link: -link.seq)
        if not recent or self.options.force:
            return
        for side, count in (("crm", deal_count), ("tracker", req_count)):
            if count:
                continue
            ids = list(dict.fromkeys(link.deal_id if side == "crm" else link.req_id
                                     for link in recent))[:SAFETY_SAMPLE]
            found = (self.pair.crm.fetch(ids, self.mapping.crm_properties()) if side == "crm"
                     else self.pair.tracker.fetch(ids))
            if not found:
                instance = self.pair.crm.name if side == "crm" else self.pair.tracker.name
                raise SafetyStop(
                    f"{side} {instance!r} returned no changes and none of {len(ids)} linked "
                    f"records asked for by id; nothing was written",
                    "check the instance's settings (base URL, project, credentials); if the "
                    "records were really deleted, run again with --force to orphan their links")

    def _verify_slice(self) -> dict[str, int]:
        """Re-read the next few linked deals and requirements by id (see ``Pair.verify_*``);
        a record gone from its system orphans its links, a changed one is merged as usual.
        Returns the rotation positions to store once the run succeeds."""
        live = sorted((link for link in self.links if not link.orphaned), key=lambda l: l.seq)
        positions = {}
        for side, count, key in (("crm", self.pair.verify_deals, "deal_id"),
                                 ("tracker", self.pair.verify_requirements, "req_id")):
            ids = list(dict.fromkeys(getattr(link, key) for link in live))
            if not ids or not count:
                continue
            start = self.store.position(self.pair.name, f"verify:{side}") % len(ids)
            chosen = (ids[start:] + ids[:start])[:count]
            positions[f"verify:{side}"] = (start + len(chosen)) % len(ids)
            # Read with their context: a renamed company changes no modified time, and shows
            # as a context that differs from the last one written into the requirement.
            (self._fetch_deals if side == "crm" else self._fetch_reqs)(chosen)
        return positions

    # -- stage one: links and creates ---------------------------------------------------------
    def _stage_links(self) -> None:
        by_deal: dict[str, list[Link]] = defaultdict(list)
        for link in self.links:
            by_deal[link.deal_id].append(link)
        for deal in list(self.deals.values()):
            if not self.mapping.selects(deal.fields):
                continue
            keys, title, body = self.mapping.parse_request(deal.fields.get(self.mapping.request_field))
            known_keys = {link.req_key for link in by_deal[deal.id]}
            for key in keys:
                if key not in known_keys:
                    self.plan.named.append((deal, key))
            if title and not any(link.origin == "created" for link in by_deal[deal.id]):
                self.plan.creates.append((deal, title, body))
        # Creates first, so a deal naming a requirement another deal created in this run links.
        if not self.options.dry_run:
            for deal, title, body in self.plan.creates:
                self._guarded(lambda: self._create(deal, title, body), "create", deal.id, "")
        for deal, key in self.plan.named:
            self._guarded(lambda: self._link_named(deal, key), "link", deal.id, "")

    def _guarded(self, action: Callable[[], Any], kind: str, deal_id: str, req_id: str) -> Any:
        """Run one item's action and return its result, or None if it failed.

        An ItemError queues the item and the run goes on. So does a service error that retries
        did not cure, once: a single record the service keeps failing on must not block every
        run. Several in a row mean the service is down, and the run stops (cursors unmoved).
        """
        try:
            result = action()
        except ItemError as exc:
            self._fail(kind, deal_id, req_id, exc)
            return None
        except RemoteError as exc:
            if isinstance(exc, RateLimitExhausted) or self._remote_failures >= 2:
                raise
            self._remote_failures += 1
            self._fail(kind, deal_id, req_id, ItemError(str(exc), exc.hint))
            return None
        self._remote_failures = 0
        return result

    def _fail(self, kind: str, deal_id: str, req_id: str, exc: ItemError) -> None:
        message = f"{exc}" + (f" ({exc.hint})" if exc.hint else "")
        log.warning("%s failed for deal %s / requirement %s: %s", kind, deal_id or "-",
                    req_id or "-", message)
        self.counts["failures"] += 1
        self.errors.append(f"{kind} deal={deal_id or '-'} requirement={req_id or '-'}: {message}")
        self._failed.add((kind, deal_id, req_id))
        if not self.options.dry_run:
            with self.store.transaction():
                self.store.record_failure(self.pair.name, kind, deal_id, req_id, message,
                                          exc.retryable)

    def _link_named(self, deal: Deal, key: str) -> None:
        req = self.pair.tracker.find_by_key(key)
        if req is None:
            raise ItemError(f"deal {deal.id} asks for {key}, which does not exist in "
                            f"{self.pair.tracker.name!r}",
                            "fix the key on the deal; the link is retried automatically")
        self._add_link(deal, req, "named")

    def _create(self, deal: Deal, title: str, body: str) -> None:
        marker = make_marker(self.pair.name, deal.id)
        self.store.add_intent(self.pair.name, deal.id, marker, title)
        # Identity survives lost state: look for our marker before creating anything.
        req = self.pair.tracker.find_by_marker(marker)
        if req is not None:
            self.counts["relinked"] += 1
        else:
            new = NewRequirement(title=title, fields=self._initial_fields(deal), marker=marker,
                                 description=self._new_description(deal, body, marker))
            req = self.pair.tracker.create(new)
            self.counts["created"] += 1
        self._add_link(deal, req, "created")

    def _initial_fields(self, deal: Deal) -> dict[str, str | None]:
        values: dict[str, str | None] = {}
        for fm in self.mapping.fields:
            if fm.reads_crm and _norm(deal.fields.get(fm.crm)):
                try:
                    values[fm.tracker] = fm.to_tracker(deal.fields[fm.crm])
                except ItemError as exc:
                    log.warning("deal %s: %s; the tracker default is kept", deal.id, exc)
        return values

    def _new_description(self, deal: Deal, body: str, marker: str) -> str:
        block = context.render([self._context(deal)], self.mapping.context_columns, [marker])
        text = request_html(body)
        return f"{text}\n{block}" if text else block

    def _context(self, deal: Deal, orphaned: bool = False) -> dict[str, Any]:
        return {**deal.context(), "request": deal.fields.get(self.mapping.request_field),
                "orphaned": orphaned}

    def _add_link(self, deal: Deal, req: Requirement, origin: str) -> None:
        if (deal.id, req.id) in self._linked_pairs:
            return
        self.reqs[req.id] = req
        if not self.options.dry_run:
            with self.store.transaction():
                self.store.add_link(self.pair.name, deal.id, req.id, req.key, req.url, req.title,
                                    origin)
                self.store.set_deal_context(self.pair.name, deal.id, self._context(deal))
                if origin == "created":
                    self.store.clear_intent(self.pair.name, deal.id)
        self._next_seq += 1
        self.links.append(Link(self.pair.name, deal.id, req.id, req.key, req.url, req.title,
                               origin, now_utc().isoformat(), None, self._next_seq))
        self._linked_pairs.add((deal.id, req.id))
        self._forced_reqs.add(req.id)
        if origin == "named":
            self.counts["linked"] += 1
        if not self.options.dry_run:
            self._notify("link_created", pair=self.pair.name, deal_id=deal.id,
                         requirement_key=req.key, requirement_url=req.url,
                         created=origin == "created")

    # -- completing the picture ---------------------------------------------------------------
    def _complete_reads(self) -> None:
        """Decide which requirements this run merges, and fetch the other side of each of
        their links: fresh values before any write."""
        self._mark_orphans()  # those found so far, so their requirements get merged
        self._touched = self._changed_requirements()
        self._fetch_reqs(self._touched)
        live = [link for link in self.links if not link.orphaned]
        self._fetch_deals(link.deal_id for link in live if link.req_id in self._touched)
        self._mark_orphans()

    def _mark_orphans(self) -> None:
        gone = {(side, rid) for side, rid, _ in self.plan.orphans}
        self.links = [self._orphan_view(link, gone) for link in self.links]

    def _changed_requirements(self) -> set[str]:
        """Requirements with something new on either side.

        The lookback window re-reads the latest records every run, and our own writes come
        back as changes; a record that shows exactly what was last agreed (every mirrored field
        equal to its base, the same deal context) is left alone, so a quiet run fetches and
        writes nothing. This is echo suppression at the read, from the base, not from time.
        """
        primary = self._primary()
        by_deal: dict[str, list[Link]] = defaultdict(list)
        by_req: dict[str, list[Link]] = defaultdict(list)
        for link in self.links:
            by_deal[link.deal_id].append(link)
            by_req[link.req_id].append(link)
        changed = {req_id for req_id, req in self.reqs.items() if req_id in self._forced_reqs
                   or not self._req_is_quiet(req, by_req[req_id], primary)}
        changed |= {link.req_id for link in self.links if link.orphaned == "gone"}
        for deal_id, deal in self.deals.items():
            if deal_id in self._forced_deals or not self._deal_is_quiet(deal, by_deal[deal_id],
                                                                        primary):
                changed |= {link.req_id for link in by_deal[deal_id]}
        return changed

    def _deal_is_quiet(self, deal: Deal, links: list[Link], primary: dict[str, str]) -> bool:
        live = [link for link in links if not link.orphaned]
        if not live or deal.id not in primary:
            return False
        keys, title, _ = self.mapping.parse_request(deal.fields.get(self.mapping.request_field))
        if set(keys) - {link.req_key for link in links}:
            return False
        req_id = primary[deal.id]
        for fm in self.mapping.synced_fields():
            base = self.bases.get((deal.id, req_id, fm.name))
            if base is None or _norm(deal.fields.get(fm.crm)) != base.crm_value:
                return False
        wanted = self._wanted_link_fields(live, req_id)
        if any(_norm(deal.fields.get(name)) != _norm(value) for name, value in wanted.items()):
            return False
        snapshot = self._snapshot(deal.id)
        return snapshot is not None and snapshot == json.loads(json.dumps(self._context(deal)))

    def _req_is_quiet(self, req: Requirement, links: list[Link], primary: dict[str, str]) -> bool:
        mirrored = [link for link in links if not link.orphaned
                    and primary.get(link.deal_id) == req.id]
        for fm in self.mapping.synced_fields():
            value = _norm(req.fields.get(fm.tracker))
            for link in mirrored:
                base = self.bases.get((link.deal_id, req.id, fm.name))
                if base is None or base.tracker_value != value:
                    return False
        return context.extract(req.description) == self._desired_block(links)

    def _snapshot(self, deal_id: str) -> dict[str, Any] | None:
        if self._snapshots is None:
            self._snapshots = self.store.deal_contexts(self.pair.name)
        return self._snapshots.get(deal_id)

    def _orphan_view(self, link: Link, gone: set[tuple[str, str]]) -> Link:
        if link.orphaned or not ({("crm", link.deal_id), ("tracker", link.req_id)} & gone):
            return link
        self.counts["orphaned"] += 1
        return dataclasses.replace(link, orphaned="gone")

    def _primary(self) -> dict[str, str]:
        """Each deal mirrors the fields of its first live link (its primary requirement)."""
        primary: dict[str, str] = {}
        for link in sorted(self.links, key=lambda link: link.seq):
            if not link.orphaned:
                primary.setdefault(link.deal_id, link.req_id)
        return primary

    # -- stage two: fields and context --------------------------------------------------------
    def _stage_fields(self, resolved: list[dict[str, Any]]) -> None:
        primary = self._primary()
        resolutions = {(c["req_id"], c["field"]): c for c in resolved}
        open_conflicts = {(c["req_id"], c["field"]): c
                          for c in self.store.conflicts(self.pair.name, status="open")}
        by_req: dict[str, list[Link]] = defaultdict(list)
        for link in self.links:
            by_req[link.req_id].append(link)
        for req_id in sorted(self._touched & set(self.reqs)):
            req = self.reqs[req_id]
            links = by_req.get(req_id, [])
            mirrored = [link for link in links if not link.orphaned
                        and primary.get(link.deal_id) == req_id and link.deal_id in self.deals]
            for fm in self.mapping.synced_fields():
                entries = [_Entry(link, self.deals[link.deal_id],
                                  self.bases.get((link.deal_id, req_id, fm.name)))
                           for link in mirrored]
                if entries:
                    self._merge(fm, req, entries, resolutions, open_conflicts)
            self._plan_context(req, links)
        self._plan_link_fields(primary)

    def _refresh_before_write(self) -> bool:
        """Read the records about to be written once more, by id; say if any had moved.

        A CRM's search can lag behind its records (HubSpot's index does, reference/hubspot.md
        §5), and a long run (PingCode allows 200 calls a minute) leaves minutes between a read
        and a write. Planning on a stale copy would overwrite a newer edit with a value that then
        looks like the base, and the edit would be lost. Records read by id in this run are
        fresh already. If anything moved, stage two is planned again on the fresh values.
        """
        deal_ids = sorted(deal_id for deal_id, write in self.plan.crm_writes.items()
                          if write.values and deal_id in self._searched_deals)
        req_ids = sorted(req_id for req_id, write in self.plan.tracker_writes.items()
                         if not write.change.is_empty() and req_id in self._searched_reqs)
        moved = 0
        if deal_ids:
            fresh = self.pair.crm.fetch(deal_ids, self.mapping.crm_properties(),
                                        with_context=False)
            for deal_id, deal in fresh.items():
                if deal.fields != self.deals[deal_id].fields:
                    # the context read earlier stays; only the values move
                    self.deals[deal_id].fields = deal.fields
                    self.deals[deal_id].updated_at = deal.updated_at
                    moved += 1
        if req_ids:
            for req_id, req in self.pair.tracker.fetch(req_ids).items():
                old = self.reqs[req_id]
                if (req.fields, req.description, req.title) != (old.fields, old.description,
                                                                 old.title):
                    self.reqs[req_id] = req
                    moved += 1
        if not moved:
            return False
        log.info("%d records changed since they were read; planning again", moved)
        self.plan.tracker_writes.clear()
        self.plan.crm_writes.clear()
        self.plan.agreed.clear()
        self.plan.conflicts.clear()
        self.plan.settled.clear()
        return True

    def _merge(self, fm: FieldMap, req: Requirement, entries: list[_Entry],
               resolutions: dict[tuple[str, str], dict[str, Any]],
               open_conflicts: dict[tuple[str, str], dict[str, Any]]) -> None:
        resolution = resolutions.get((req.id, fm.name))
        try:
            out = merge_field(fm, req, entries,
                              (True, resolution["outcome"]) if resolution else (False, None))
        except ItemError as exc:
            self._fail("field", "", req.id, exc)
            return
        existing = open_conflicts.get((req.id, fm.name))
        if out["conflict"] is not None:
            self.plan.conflicts.append((req, out["conflict"], existing["id"] if existing else None))
            if out["conflict"].outcome is None:
                return
        elif existing is not None:
            self.plan.settled.append((existing["id"], req.id))  # the sides converged meanwhile
        if resolution is not None:
            self.plan.settled.append((resolution["id"], req.id))
        tracker_value = out.get("tracker", req.fields.get(fm.tracker))
        if "tracker" in out:
            write = self.plan.tracker_write(req)
            write.change.fields[fm.tracker] = out["tracker"]
            write.notes.append(f"{fm.tracker} {req.fields.get(fm.tracker)!r} -> {out['tracker']!r}")
        for deal_id in sorted(set(out["crm"]) | set(out["bases"])):
            crm_value, tracker_base = out["bases"].get(deal_id, (out["crm"].get(deal_id),
                                                                 tracker_value))
            record = (req.id, fm.name, crm_value, tracker_base)
            if deal_id in out["crm"]:
                write = self.plan.crm_write(deal_id)
                write.values[fm.crm] = out["crm"][deal_id]
                write.bases.append(record)
                write.notes.append(f"{fm.crm} {self.deals[deal_id].fields.get(fm.crm)!r} -> "
                                   f"{out['crm'][deal_id]!r}")
                if fm.name in self.mapping.note_fields:
                    write.timeline.append(f"{req.key} {req.title}: {fm.name} is now "
                                          f"{tracker_value} ({out['crm'][deal_id]})")
                if "tracker" in out:
                    write.after.add(req.id)
            elif "tracker" in out:
                self.plan.tracker_write(req).bases.append((deal_id, fm.name, crm_value,
                                                           tracker_base))
            else:
                self.plan.agreed.append((deal_id, req.id, fm.name, crm_value, tracker_value))

    def _desired_block(self, links: list[Link]) -> str:
        """The managed deal-context block for a requirement with these links."""
        deals = []
        for link in links:
            deal = self.deals.get(link.deal_id)
            ctx = self._context(deal) if deal else self._snapshot(link.deal_id)
            if ctx is not None:
                deals.append({**ctx, "orphaned": bool(link.orphaned)})
        markers = [make_marker(self.pair.name, link.deal_id) for link in links
                   if link.origin == "created"]
        return context.render(deals, self.mapping.context_columns, markers)

    def _plan_context(self, req: Requirement, links: list[Link]) -> None:
        block = self._desired_block(links)
        if context.extract(req.description) != block:
            write = self.plan.tracker_write(req)
            write.change.description = context.splice(req.description, block)
            write.notes.append("deal context")

    def _wanted_link_fields(self, live: list[Link], primary_req: str) -> dict[str, str | None]:
        """The requirement keys and the primary requirement's URL, as the deal should show them."""
        wanted: dict[str, str | None] = {}
        ordered = sorted(live, key=lambda link: link.seq)
        if self.mapping.key_field:
            wanted[self.mapping.key_field] = "; ".join(link.req_key for link in ordered)
        if self.mapping.url_field:
            first = next(link for link in ordered if link.req_id == primary_req)
            wanted[self.mapping.url_field] = first.req_url
        return wanted

    def _plan_link_fields(self, primary: dict[str, str]) -> None:
        """Write the requirement keys and the primary URL onto each touched, linked deal."""
        live: dict[str, list[Link]] = defaultdict(list)
        for link in self.links:
            if not link.orphaned:
                live[link.deal_id].append(link)
        touched_deals = {link.deal_id for link in self.links if link.req_id in self._touched}
        for deal_id in sorted(touched_deals & set(live)):
            deal = self.deals.get(deal_id)
            if deal is None:
                continue
            for name, value in self._wanted_link_fields(live[deal_id], primary[deal_id]).items():
                if _norm(deal.fields.get(name)) != _norm(value):
                    write = self.plan.crm_write(deal_id)
                    write.values[name] = value
                    write.notes.append(f"{name} -> {value!r}")

    # -- guards -------------------------------------------------------------------------------
    def _guard_share(self) -> None:
        # Only links that existed before this run count: new links always get written.
        existing = [link for link in self.links if link.seq <= self._last_seq]
        if self.options.force or len(existing) < self.pair.guard_min_links:
            return
        total = len(existing)
        affected = {(link.deal_id, link.req_id) for link in existing
                    if link.orphaned == "gone"}  # orphaned by this run
        existing = [link for link in existing if not link.orphaned]
        for write in self.plan.tracker_writes.values():
            if write.change.fields:
                affected |= {(link.deal_id, link.req_id) for link in existing
                             if link.req_id == write.req.id}
        for write in self.plan.crm_writes.values():
            if write.bases:
                affected |= {(link.deal_id, link.req_id) for link in existing
                             if link.deal_id == write.deal_id}
        share = len(affected) / total
        if share <= self.pair.max_change_share:
            return
        message = (f"this run would change or orphan {len(affected)} of {total} links "
                   f"({share:.0%}, limit {self.pair.max_change_share:.0%})")
        if self.options.dry_run:  # show the plan that would be refused, and say so
            self.plan.warnings.append(message + "; a real run stops here without --force")
            return
        raise SafetyStop(message + "; no existing link was changed",
                         "look at `dealsync sync --dry-run`; if the changes are intended, "
                         "run with --force")

    # -- applying -----------------------------------------------------------------------------
    def _apply(self) -> None:
        name = self.pair.name
        self._req_facts = {link.req_id: (link.req_key, link.req_url, link.req_title)
                           for link in self.links}
        with self.store.transaction():
            linked = self._linked_deal_ids()
            for deal_id, deal in self.deals.items():
                if deal_id in linked:
                    self.store.set_deal_context(name, deal_id, self._context(deal))
            for req in self.reqs.values():
                self._remember(req)
            for deal_id, req_id, fname, crm_value, tracker_value in self.plan.agreed:
                self.store.set_base(name, deal_id, req_id, fname, crm_value, tracker_value)
                self.counts["agreed"] += 1
            for side, rid, reason in self.plan.orphans:
                self.store.set_orphaned(name, deal_id=rid if side == "crm" else None,
                                        req_id=rid if side == "tracker" else None, reason=reason)
        self._record_conflicts()
        failed_reqs = self._apply_tracker()
        self._apply_crm(failed_reqs)
        self._settle_conflicts(failed_reqs)

    def _settle_conflicts(self, failed_reqs: set[str]) -> None:
        """A chosen or converged conflict is closed once its requirement's writes went through;
        otherwise it stays, and the next run applies the choice again."""
        failed_deals = {deal for kind, deal, _ in self._failed if kind == "update_crm"}
        with self.store.transaction():
            for conflict_id, req_id in self.plan.settled:
                deals = {link.deal_id for link in self.links if link.req_id == req_id}
                if req_id not in failed_reqs and not deals & failed_deals:
                    self.store.mark_conflict_applied(conflict_id)

    def _remember(self, req: Requirement) -> None:
        """Keep the key, URL and title the links show (for `links` and `report`) current."""
        facts = (req.key, req.url, req.title)
        if req.id in self._req_facts and self._req_facts[req.id] != facts:
            self.store.update_requirement(self.pair.name, req.id, *facts)
            self._req_facts[req.id] = facts

    def _record_conflicts(self) -> None:
        for req, info, _ in self.plan.conflicts:
            with self.store.transaction():
                self.store.record_conflict(self.pair.name, req.id, req.key, info.field,
                                           info.deal_ids, info.crm_values, info.tracker_value,
                                           info.policy, info.outcome)
            self.counts["conflicts_queued" if info.outcome is None else "conflicts"] += 1
            self._notify("conflict_found", pair=self.pair.name, conflict={
                "requirement_id": req.id, "requirement_key": req.key, **info.__dict__})

    def _apply_tracker(self) -> set[str]:
        failed: set[str] = set()
        writes = [w for w in self.plan.tracker_writes.values() if not w.change.is_empty()]
        for index, write in enumerate(writes, 1):
            updated = self._guarded(lambda: self.pair.tracker.update(write.req.id, write.change),
                                    "update_tracker", "", write.req.id)
            if updated is None:
                failed.add(write.req.id)
                continue
            with self.store.transaction():
                for deal_id, fname, crm_value, tracker_value in write.bases:
                    self.store.set_base(self.pair.name, deal_id, write.req.id, fname,
                                        crm_value, tracker_value)
                self._remember(updated)
            self.counts["updated_tracker"] += 1
            self._progress("requirements written", index)
        return failed

    def _apply_crm(self, failed_reqs: set[str]) -> None:
        writes = []
        for write in self.plan.crm_writes.values():
            if not write.values:
                continue
            if write.after & failed_reqs:
                log.info("deal %s waits: its requirement's update failed", write.deal_id)
                continue
            writes.append(write)
        if not writes:
            return
        results = self.pair.crm.update([(w.deal_id, w.values) for w in writes])
        notes: list[tuple[str, str]] = []
        for write, result in zip(writes, results):
            if not result.ok:
                self._fail("update_crm", write.deal_id, "", result.error)  # type: ignore[arg-type]
                continue
            with self.store.transaction():
                for req_id, fname, crm_value, tracker_value in write.bases:
                    self.store.set_base(self.pair.name, write.deal_id, req_id, fname,
                                        crm_value, tracker_value)
            self.counts["updated_crm"] += 1
            notes += [(write.deal_id, f"dealsync: {text}") for text in write.timeline]
        self._progress("deals written", len(writes))
        self._add_notes(notes)

    def _add_notes(self, notes: list[tuple[str, str]]) -> None:
        """Notes tell sales what changed, after the values are written. A note that fails is
        logged, never retried, so a flaky notes endpoint cannot hold up the values."""
        if not notes:
            return
        try:
            results = self.pair.crm.add_notes(notes)
        except (ItemError, RemoteError) as exc:
            if isinstance(exc, RateLimitExhausted):
                raise
            log.warning("%d deal notes not added: %s", len(notes), exc)
            return
        for result in results:
            if result.ok:
                self.counts["notes"] += 1
            else:
                log.warning("deal %s: note not added: %s", result.id, result.error)

    def _settle(self, due: list[dict[str, Any]], crm_cursor: datetime | None,
                tracker_cursor: datetime | None, positions: dict[str, int]) -> None:
        """Close the queued items that went through, then advance the cursors."""
        done = [f["id"] for f in due if (f["kind"], f["deal_id"], f["req_id"]) not in self._failed]
        with self.store.transaction():
            self.store.resolve_failures(done)
            for name, value in positions.items():
                self.store.set_position(self.pair.name, name, value)
            if crm_cursor:
                self.store.set_cursor(self.pair.name, "crm", crm_cursor)
            if tracker_cursor:
                self.store.set_cursor(self.pair.name, "tracker", tracker_cursor)


def run_pair(pair: Pair, store: StateStore, options: Options | None = None) -> dict[str, Any]:
    """Run one pair once and return its summary (see ``Run.summary``)."""
    return Run(pair, store, options).execute()
