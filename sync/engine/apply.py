"""Apply: run a phase's actions in steps that each stick.

Every step, one action or one API batch of actions, is confirmed by the service, then stored in
the state store in one transaction (the new base, and for a create the link), then counted,
before the next begins. A run killed at any point keeps everything it finished, CRM writes
included, and the next run does only the rest: what was written reads back equal to its base.

A failed item goes to the failure queue with its error and a retry time, and the run goes on.
A service error that retries did not cure is queued the same way, once; several in a row mean
the service is down, and the run stops with its cursors unmoved.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Callable, Iterator, TypeVar

from ..connectors import NewRequirement, Requirement, RequirementChange, WriteResult
from ..errors import ItemError, RateLimitExhausted, RemoteError
from ..state import Link, StateStore
from .actions import (Action, AddNote, AgreeBase, CloseManualUpdate, CreateRequirement,
                      LinkRequirement, ManualUpdate, OrphanLink, RecordConflict, ReportProblem,
                      SettleConflict, UpdateDeal, UpdateRequirement)
from .lanes import Lane
from .planners import PlanContext, created_at
from .view import View

log = logging.getLogger("dealsync.engine")

T = TypeVar("T")
REMOTE_FAILURES_TO_STOP = 3  # service errors in a row that mean the service is down
LINKS_PER_STEP = 500  # links in a row stored in one transaction (they call no service)


class Applier:
    def __init__(self, pair, store: StateStore, ctx: PlanContext, counts: dict[str, int],
                 errors: list[str], notify: Callable[..., None],
                 progress: Callable[..., None], concurrent: bool = False):
        self.pair, self.store, self.ctx = pair, store, ctx
        self.name = pair.name
        self.counts, self.errors = counts, errors
        self.notify, self.progress = notify, progress
        self.failed: set[tuple[str, str, str]] = set()  # (kind, deal id, requirement id)
        self.succeeded: set[tuple[str, str, str]] = set()  # the same keys, for what went through
        self._remote_failures = 0
        self._deals_sent = 0
        self._deals_total: int | None = None  # for progress(what, count, total)
        self._intended: set[int] = set()  # creates whose intents are stored (by id())
        self.concurrent = concurrent  # the CRM is written on a lane of its own (lanes.py)

    # -- failures --------------------------------------------------------------------------------
    def guarded(self, action: Callable[[], T], kind: str,
                items: list[tuple[str, str]]) -> T | None:
        """Run one step for ``items`` (deal id, requirement id) and return its result, or None
        if it failed, with every item queued."""
        try:
            result = action()
        except ItemError as exc:
            for deal_id, req_id in items:
                self.fail(kind, deal_id, req_id, exc)
            return None
        except RemoteError as exc:
            self._remote_failures += 1
            if isinstance(exc, RateLimitExhausted) or \
                    self._remote_failures >= REMOTE_FAILURES_TO_STOP:
                raise
            for deal_id, req_id in items:
                self.fail(kind, deal_id, req_id, ItemError(str(exc), exc.hint))
            return None
        self._remote_failures = 0
        return result

    def fail(self, kind: str, deal_id: str, req_id: str, exc: ItemError) -> None:
        message = f"{exc}" + (f" ({exc.hint})" if exc.hint else "")
        log.warning("%s failed for deal %s / requirement %s: %s", kind, deal_id or "-",
                    req_id or "-", message)
        self.counts["failures"] += 1
        self.errors.append(f"{kind} deal={deal_id or '-'} requirement={req_id or '-'}: {message}")
        self.failed.add((kind, deal_id, req_id))
        with self.store.transaction():
            self.store.record_failure(self.name, kind, deal_id, req_id, message, exc.retryable)

    def report(self, problem: ReportProblem) -> None:
        kind = "link" if problem.problem == "missing_key" else "field"
        self.fail(kind, problem.deal_id, problem.req_id,
                  ItemError(problem.message, problem.hint, retryable=problem.retryable))

    # -- phase one -------------------------------------------------------------------------------
    def links(self, actions: list[Action], view: View) -> list[Link]:
        """Creates and links, each stored as it is confirmed; returns the new links."""
        made: list[Link] = []
        created: dict[str, Requirement] = {}  # by key: a deal may name one created just now
        pending: list[LinkRequirement] = []
        creates = [a for a in actions if isinstance(a, CreateRequirement)]
        next_create = {id(a): b for a, b in zip(creates, creates[1:])}
        if actions:
            self.progress("created or linked", 0, len(actions))
        for step, action in enumerate(actions, 1):
            if isinstance(action, ReportProblem) and action.key in created:
                # a key this run has just created: a deal that names keys is in no create,
                # so this link is new
                req, deal = created[action.key], view.deals[action.deal_id]
                action = LinkRequirement(deal.id, deal.name, req.id, req.key, req.url,
                                         req.title, created_at(req), "named")
            if isinstance(action, LinkRequirement):
                # links write nothing remote: a run of them is one step (docs/engine.md §6)
                pending.append(action)
                if len(pending) >= LINKS_PER_STEP:
                    made += self._links(pending, view)
                    pending = []
            else:
                if pending:
                    made += self._links(pending, view)
                    pending = []
                if isinstance(action, ReportProblem):
                    self.report(action)
                elif isinstance(action, CreateRequirement):
                    links = self._create(action, view, next_create.get(id(action)))
                    made += links
                    if links:
                        created[links[0].req_key] = view.reqs[links[0].req_id]
            self.progress("created or linked", step, len(actions))
        if pending:
            made += self._links(pending, view)
        return made

    def _links(self, actions: list[LinkRequirement], view: View) -> list[Link]:
        """Links that need no service call, stored in one transaction, then announced."""
        with self.store.transaction():
            links = self._store_links([(a.deal_id, a.req_id, a.req_key, a.req_url, a.req_title,
                                        a.origin, a.req_created) for a in actions], view)
            for action in actions:
                if action.shared_title:
                    self.store.add_shared_request(self.name, action.shared_title, action.req_id)
            self.store.clear_intents(self.name, [a.deal_id for a in actions if a.shared_title])
        for action in actions:
            self.counts[{"named": "linked", "marker": "relinked", "same_request": "joined"}
                        [action.via]] += 1
            self.succeeded.add(("link", action.deal_id, ""))
            self._announce(action.deal_id, action.req_key, action.req_url, created=False)
        return links

    def _create(self, action: CreateRequirement, view: View,
                following: CreateRequirement | None = None) -> list[Link]:
        """One create and its links in one step. Intents are stored before the create, so
        after a crash its markers are looked for; the next create's intents go into this
        step's transaction, one commit fewer per create (docs/engine.md §2, step 8)."""
        first = action.deal_ids[0]
        if id(action) not in self._intended:
            self._intend(action)
        new = NewRequirement(action.title, action.description, dict(action.fields),
                             action.markers[0], action.markers)
        req = self.guarded(lambda: self.pair.tracker.create(new), "create", [(first, "")])
        if req is None:
            return []
        view.keep_req(req, searched=False)
        with self.store.transaction():
            links = self._store_links([(deal_id, req.id, req.key, req.url, req.title, "created",
                                        created_at(req)) for deal_id in action.deal_ids], view)
            self.store.add_shared_request(self.name, action.shared_title, req.id)
            self.store.clear_intents(self.name, action.deal_ids)
            if following is not None:
                self._intend(following)
        self.counts["created"] += 1
        self.counts["joined"] += len(action.deal_ids) - 1
        self.succeeded.add(("create", first, ""))
        for deal_id in action.deal_ids:
            self._announce(deal_id, req.key, req.url, created=True)
        return links

    def _intend(self, action: CreateRequirement) -> None:
        self.store.add_intents(self.name, list(action.deal_ids), list(action.markers),
                               action.shared_title)
        self._intended.add(id(action))

    def _store_links(self, rows: list[tuple[str, str, str, str | None, str | None, str,
                                            str | None]], view: View) -> list[Link]:
        """The links (deal id, requirement id, key, URL, title, origin, creation time) and
        their deals' contexts, inside the caller's transaction. The view remembers the contexts
        stored, so ``_store_contexts`` does not write them again."""
        links = self.store.add_links(self.name, rows)
        contexts = []
        for link in links:
            deal = view.deals.get(link.deal_id)
            if deal is not None:
                context = self.ctx.context_of(deal)
                contexts.append((deal.id, context, deal.updated_at))
                view.snapshots[deal.id] = context
                view.seen[deal.id] = deal.updated_at.isoformat()
        self.store.set_deal_contexts(self.name, contexts)
        return links

    def _announce(self, deal_id: str, key: str, url: str | None, created: bool) -> None:
        self.notify("link_created", pair=self.name, deal_id=deal_id, requirement_key=key,
                    requirement_url=url, created=created)

    # -- phase two -------------------------------------------------------------------------------
    def fields(self, actions: list[Action], view: View) -> None:
        self._bookkeeping(actions, view)
        for action in actions:
            if isinstance(action, RecordConflict):
                self._conflict(action)
            elif isinstance(action, ReportProblem):
                self.report(action)
        deals = [a for a in actions if isinstance(a, UpdateDeal)]
        self._announce_writes(actions, deals)
        size = max(1, self.pair.crm.batch_size)
        with Lane(f"dealsync-{self.pair.crm.name}", self.concurrent) as lane:
            # Deals that wait for no requirement update go to the CRM on the lane while the
            # tracker is written, in full batches only, so the batches add up as on one thread.
            early = [a for a in deals if not a.waits] if lane.enabled else []
            early = early[:len(early) // size * size]
            sent = [(batch, lane.submit(self._send, batch)) for batch in _batches(early, size)]
            failed_reqs = self._update_requirements(
                [a for a in actions if isinstance(a, UpdateRequirement)],
                between=lambda: self._store_sent(sent, wait=False))
            self._store_contexts(view, failed_reqs)
            written = self._store_sent(sent, wait=True)
        taken = {id(a) for a in early}
        written |= self._update_deals([a for a in deals if id(a) not in taken], failed_reqs)
        self._add_notes([a for a in actions if isinstance(a, AddNote)
                         and (a.deal_id in written or not a.after_update)])
        self._settle([a for a in actions if isinstance(a, SettleConflict)], view, failed_reqs)

    def _bookkeeping(self, actions: list[Action], view: View) -> None:
        """What needs no service: agreed bases, orphaned links, the manual-update list, and the
        key, URL, title and creation time the links show (for `links`, `report` and the
        identity check)."""
        with self.store.transaction():
            agreed = [action.row for action in actions if isinstance(action, AgreeBase)]
            self.store.set_bases(self.name, agreed)
            self.counts["agreed"] += len(agreed)
            for action in actions:
                if isinstance(action, OrphanLink):
                    self.store.orphan_link(self.name, action.deal_id, action.req_id,
                                           action.reason)
                    self.counts["orphaned"] += 1
                elif isinstance(action, ManualUpdate):
                    self.store.record_manual_update(
                        self.name, action.req_id, action.req_key, action.field,
                        action.tracker_field, action.value, action.current, list(action.deal_ids))
                    self.counts["manual_updates"] += 1
                elif isinstance(action, CloseManualUpdate):
                    self.store.resolve_manual_update(self.name, action.req_id, action.field)
            for link in view.links:
                req = view.reqs.get(link.req_id)
                if req is not None and not view.orphan_reason(link):
                    self._remember(link, req)

    def _remember(self, link: Link, req: Requirement) -> None:
        if (link.req_key, link.req_url, link.req_title) != (req.key, req.url, req.title):
            self.store.update_requirement(self.name, req.id, req.key, req.url, req.title)
        if link.req_created is None and req.created_at is not None:
            self.store.set_req_created(self.name, req.id, created_at(req) or "")

    def _conflict(self, action: RecordConflict) -> None:
        with self.store.transaction():
            self.store.record_conflict(self.name, action.req_id, action.req_key, action.field,
                                       list(action.deal_ids), list(action.crm_values),
                                       action.tracker_value, action.policy, action.outcome)
        self.counts["conflicts_queued" if action.outcome is None else "conflicts"] += 1
        self.notify("conflict_found", pair=self.name, conflict={
            "requirement_id": action.req_id, "requirement_key": action.req_key,
            "field": action.field, "deal_ids": list(action.deal_ids),
            "crm_values": list(action.crm_values), "tracker_value": action.tracker_value,
            "policy": action.policy, "outcome": action.outcome})

    def _announce_writes(self, actions: list[Action], deals: list[UpdateDeal]) -> None:
        """Start the write phase's counters with their totals (docs/engine.md §10)."""
        updates = sum(isinstance(a, UpdateRequirement) for a in actions)
        if updates:
            self.progress("requirements written", 0, updates)
        if deals:
            self._deals_total = len(deals)
            self.progress("deals written", 0, len(deals))

    def _update_requirements(self, actions: list[UpdateRequirement],
                             between: Callable[[], object] = lambda: None) -> set[str]:
        """One requirement at a time, each with its bases in one transaction; the failed ids.
        ``between`` runs after each (it stores what the CRM's lane finished meanwhile)."""
        failed: set[str] = set()
        for step, action in enumerate(actions, 1):
            between()
            change = RequirementChange(fields=dict(action.fields), description=action.description)
            updated = self.guarded(lambda: self.pair.tracker.update(action.req_id, change),
                                   "update_tracker", [("", action.req_id)])
            if updated is None:
                failed.add(action.req_id)
                self.progress("requirements written", step, len(actions))
                continue
            with self.store.transaction():
                self.store.set_bases(self.name, action.bases)
                self.store.update_requirement(self.name, updated.id, updated.key, updated.url,
                                              updated.title)
            self.counts["updated_tracker"] += 1
            self.succeeded.add(("update_tracker", "", action.req_id))
            self.progress("requirements written", step, len(actions))
        return failed

    def _store_contexts(self, view: View, failed_reqs: set[str]) -> None:
        """Remember the deal context each requirement's block now shows. A deal whose
        requirement could not be written keeps its old context, so the next run tries again."""
        failed_deals = {link.deal_id for link in view.links if link.req_id in failed_reqs}
        linked = view.linked_deal_ids()
        rows = []
        for deal_id, deal in view.deals.items():
            if deal_id in linked and deal_id not in failed_deals:
                context = self.ctx.context_of(deal)
                if view.snapshots.get(deal_id) != context or \
                        view.seen.get(deal_id) != deal.updated_at.isoformat():
                    rows.append((deal_id, context, deal.updated_at))
        with self.store.transaction():
            self.store.set_deal_contexts(self.name, rows)

    def _update_deals(self, actions: list[UpdateDeal], failed_reqs: set[str]) -> set[str]:
        """Batches of the CRM's batch size, each stored before the next; the deal ids written
        in full (their notes may follow)."""
        ready, partial = [], set()
        for planned in actions:
            action = planned.without(failed_reqs)
            if action is not planned:
                log.info("deal %s: the values waiting for a failed requirement update are "
                         "left for the next run", planned.deal_id)
                partial.add(planned.deal_id)
            if action is not None:
                ready.append(action)
        written: set[str] = set()
        for batch in _batches(ready, max(1, self.pair.crm.batch_size)):
            written |= self._store_batch(batch, lambda: self._send(batch))
        return written - partial

    def _send(self, batch: list[UpdateDeal]) -> list[WriteResult]:
        """One CRM batch write (a service call only: it may run on the CRM's lane)."""
        return self.pair.crm.update([(a.deal_id, dict(a.values)) for a in batch])

    def _store_sent(self, sent: list[tuple[list[UpdateDeal], Future]], wait: bool) -> set[str]:
        """Store the batches the lane has answered, in the order they were sent (all of them
        if ``wait``), taking each off ``sent``; the deal ids written."""
        written: set[str] = set()
        while sent and (wait or sent[0][1].done()):
            batch, future = sent.pop(0)
            written |= self._store_batch(batch, future.result)
        return written

    def _store_batch(self, batch: list[UpdateDeal],
                     send: Callable[[], list[WriteResult]]) -> set[str]:
        """One CRM batch write: sent (or its answer taken), then stored before the next; the
        deal ids written."""
        written: set[str] = set()
        results = self.guarded(send, "update_crm", [(a.deal_id, "") for a in batch])
        if results is not None:
            ok = [(action, result) for action, result in zip(batch, results) if result.ok]
            with self.store.transaction():
                self.store.set_bases(self.name, [row for action, _ in ok for row in action.bases])
                # our write moved each deal's modified time
                self.store.set_deals_seen(self.name, [(action.deal_id, result.updated_at)
                                                      for action, result in ok
                                                      if result.updated_at is not None])
            for action, _ in ok:
                written.add(action.deal_id)
                self.succeeded.add(("update_crm", action.deal_id, ""))
            for action, result in zip(batch, results):
                if not result.ok:
                    self.fail("update_crm", action.deal_id, "", result.error)  # type: ignore[arg-type]
            self.counts["updated_crm"] += sum(result.ok for result in results)
        self._deals_sent += len(batch)
        self.progress("deals written", self._deals_sent, self._deals_total)
        return written

    def _add_notes(self, actions: list[AddNote]) -> None:
        """Notes tell sales what changed, after the values are written. A note that fails is
        logged, never retried, so a flaky notes endpoint cannot hold up the values."""
        if not actions:
            return
        self.progress("notes written", 0, len(actions))
        try:
            results = self.pair.crm.add_notes([(a.deal_id, a.text) for a in actions])
        except (ItemError, RemoteError) as exc:
            if isinstance(exc, RateLimitExhausted):
                raise
            log.warning("%d deal notes not added: %s", len(actions), exc)
            return
        for result in results:
            if result.ok:
                self.counts["notes"] += 1
            else:
                log.warning("deal %s: note not added: %s", result.id, result.error)
        self.progress("notes written", len(actions), len(actions))

    def _settle(self, actions: list[SettleConflict], view: View, failed_reqs: set[str]) -> None:
        """A chosen or converged conflict is closed once its requirement's writes went through;
        otherwise it stays, and the next run applies the choice again."""
        failed_deals = {deal for kind, deal, _ in self.failed if kind == "update_crm"}
        with self.store.transaction():
            for action in actions:
                deals = {link.deal_id for link in view.links if link.req_id == action.req_id}
                if action.req_id not in failed_reqs and not deals & failed_deals:
                    self.store.mark_conflict_applied(action.conflict_id)


def _batches(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def preview_links(actions: list[Action], pair: str, after_seq: int) -> list[Link]:
    """The links phase one would make, for a dry run to plan phase two on. A requirement still
    to be created has no id yet, so its deals are left out (the dry run says so)."""
    links = []
    for action in actions:
        if isinstance(action, LinkRequirement):
            after_seq += 1
            links.append(Link(pair, action.deal_id, action.req_id, action.req_key,
                              action.req_url, action.req_title, action.origin, "", None,
                              after_seq, action.req_created))
    return links
