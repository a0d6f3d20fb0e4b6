"""The reader: every read a run makes, into one view.

It loads what the state store remembers about the pair, streams what changed on each side since
its cursor (minus a lookback), re-reads a rotating slice of linked records by id (the only way to
see a deletion), looks up every distinct key and marker the planners need once, fetches the
other side of each requirement about to be merged, and re-reads by id what is about to be
written when only a search had shown it. "Could not fetch" is never "gone": a side that returns
nothing while links exist is probed by id, and the run stops if nothing comes back.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Callable, Iterable, TypeVar

from ..connectors import Deal, make_marker
from ..errors import SafetyStop
from ..state import StateStore
from .actions import Action, UpdateDeal, UpdateRequirement
from .lanes import Lane
from .view import View

log = logging.getLogger("dealsync.engine")
T = TypeVar("T")
U = TypeVar("U")

SAFETY_SAMPLE = 5  # linked records probed when a side returns nothing
PROGRESS_EVERY = 200
CONTEXT_SETTINGS = "context:settings"  # the position holding the block settings' fingerprint
# Changes are read up to this far past the run's start: a service whose clock runs ahead of
# this machine's stamps a change made now in what is our future, and reading only up to our
# "now" would leave it for a later run. Cursors still never move past the run's start.
READ_AHEAD = timedelta(hours=1)


class Reader:
    def __init__(self, pair, store: StateStore, started: datetime, force: bool,
                 progress: Callable[..., None], concurrent: bool = False):
        self.pair = pair
        self.store = store
        self.started = started
        self.force = force
        self.progress = progress
        self.properties = pair.mapping.crm_properties()
        self.counts = {"deals_read": 0, "requirements_read": 0}
        self.verify: dict[str, list[str]] = {"crm": [], "tracker": []}
        self.positions: dict[str, int] = {}
        self.concurrent = concurrent  # the tracker is read on a lane of its own (lanes.py)

    def _both(self, tracker_read: Callable[[Lane], T], crm_read: Callable[[Future], U]
              ) -> tuple[U, T]:
        """``tracker_read`` on a lane while ``crm_read`` runs here; both results. Without a
        lane the tracker is read second, as on one thread. ``crm_read`` is handed the
        tracker's future (to stop early if it failed), ``tracker_read`` the lane (to stop
        early if the run does)."""
        with Lane(f"dealsync-{self.pair.tracker.name}", self.concurrent) as lane:
            tracker = lane.submit(tracker_read, lane)
            crm = crm_read(tracker)
            return crm, tracker.result()

    # -- what the store remembers ---------------------------------------------------------------
    def load(self, retry_all: bool) -> View:
        name, store = self.pair.name, self.store
        return View(pair=name, links=store.links(name), bases=store.bases(name),
                    snapshots=store.deal_contexts(name), seen=store.deal_context_times(name),
                    shared=store.shared_requests(name),
                    due=store.failures(name, due_only=not retry_all),
                    resolved=store.conflicts(name, status="resolved"),
                    open_conflicts=store.conflicts(name, status="open"),
                    manual={(m["req_id"], m["field"]): m for m in store.manual_updates(name)},
                    key_prefix=self.pair.tracker.key_prefix())

    def rewrite_blocks_if_settings_changed(self, view: View) -> None:
        """When the mapping's block settings (columns, titles, language) are not those the
        store last wrote blocks with, every linked requirement is read and its block planned
        again, once: otherwise a block would change only when its requirement next does."""
        fingerprint = self.pair.mapping.context_fingerprint()
        self.positions[CONTEXT_SETTINGS] = fingerprint
        if self.store.position(self.pair.name, CONTEXT_SETTINGS) != fingerprint:
            view.forced_reqs |= {link.req_id for link in view.links if not link.orphaned}

    # -- what changed ---------------------------------------------------------------------------
    def read_changes(self, view: View) -> tuple[datetime | None, datetime | None]:
        """Read what changed on both sides at once (``_both``); the new CRM and tracker
        cursors."""
        crm_cursor = self.store.cursor(self.pair.name, "crm")
        tracker_cursor = self.store.cursor(self.pair.name, "tracker")
        return self._both(lambda lane: self.read_requirements(view, tracker_cursor, lane),
                          lambda tracker: self.read_deals(view, crm_cursor, tracker))

    def read_deals(self, view: View, cursor: datetime | None,
                   other: Future | None = None) -> datetime | None:
        """Stream changed deals, keeping those that take part; return the new cursor. An error
        on ``other`` (the tracker's read on its lane) stops this read at once."""
        since = cursor - self.pair.crm_lookback if cursor else None
        linked = view.linked_deal_ids()
        crm = self.pair.crm
        deferred = crm.deferred_context
        until = self.started + READ_AHEAD
        began = time.monotonic()
        changes = (crm.iter_changed(since, until, self.properties, with_context=False)
                   if deferred else crm.iter_changed(since, until, self.properties))
        seen, latest, kept = 0, cursor, []
        self.progress("deals read", 0)
        for deal in changes:
            seen += 1
            latest = max(latest, deal.updated_at) if latest else deal.updated_at
            if deal.id in linked or self.pair.mapping.selects(deal.fields):
                view.keep_deal(deal, searched=True)
                kept.append(deal)
            if seen % PROGRESS_EVERY == 0:
                self.progress("deals read", seen)
                if other is not None and other.done() and other.exception() is not None:
                    raise other.exception()  # type: ignore[misc]
        self.progress("deals read", seen)
        self.counts["deals_read"] = seen
        if deferred:
            self._complete_context(view, [d for d in kept if view.deals.get(d.id) is d],
                                   deferred)
        view.forced_deals = {f["deal_id"] for f in view.due if f["deal_id"]}
        cursor = self._next_cursor(crm, latest, began, self.pair.crm_lookback)
        self.fetch_deals(view, view.forced_deals)
        return cursor

    def read_requirements(self, view: View, cursor: datetime | None,
                          lane: Lane | None = None) -> datetime | None:
        """Stream changed requirements, keeping the linked ones; return the new cursor. It
        may run on a lane: it touches the tracker and the view's requirements, nothing else."""
        since = cursor - self.pair.tracker_lookback if cursor else None
        linked = view.linked_req_ids()
        seen, latest = 0, cursor
        self.progress("requirements read", 0)
        began = time.monotonic()
        for req in self.pair.tracker.iter_changed(since, self.started + READ_AHEAD):
            if lane is not None and lane.stopping.is_set():
                return None  # the run is stopping; nothing read here will be used
            seen += 1
            latest = max(latest, req.updated_at) if latest else req.updated_at
            if req.id in linked:
                view.keep_req(req, searched=True)
            if seen % PROGRESS_EVERY == 0:
                self.progress("requirements read", seen)
        self.progress("requirements read", seen)
        self.counts["requirements_read"] = seen
        cursor = self._next_cursor(self.pair.tracker, latest, began,
                                   self.pair.tracker_lookback)
        view.forced_reqs |= ({f["req_id"] for f in view.due if f["req_id"]}
                             | {c["req_id"] for c in view.resolved})
        self.fetch_reqs(view, view.forced_reqs)
        return cursor

    def _next_cursor(self, connector, latest: datetime | None, began: float,
                     lookback: timedelta) -> datetime | None:
        """Where the next read of a side starts, before its lookback: the service's own time
        when this read began, or the newest change the read saw if later; never past this
        run's start. Everything older than the read's beginning was there to be read, but a
        search index may show a change late, which the next read's lookback covers. A quiet
        side then costs one search page once its last burst is a lookback old, instead of
        re-reading that burst until a newer change comes (docs/engine.md §2). The service's
        time comes from its answers (``Connector.service_now``), so a service whose clock
        differs from this machine's is never read past; without it, the newest change read
        is the cursor."""
        if latest is None:
            return None
        now = connector.service_now()
        if now is not None:
            latest = max(latest, now - timedelta(seconds=time.monotonic() - began))
        return min(latest, self.started)

    def _complete_context(self, view: View, deals: list[Deal], deferred: tuple[str, ...]) -> None:
        """Context that costs extra calls is read only for deals that moved since it was
        stored; the lookback window's re-read of unchanged deals costs search pages only."""
        missing = []
        fresh = set(self.verify["crm"])  # this run's rotation: read in full, renames included
        for deal in deals:
            stored = view.snapshots.get(deal.id)
            if deal.id not in fresh and stored is not None and \
                    view.seen.get(deal.id) == deal.updated_at.isoformat():
                for name in deferred:
                    setattr(deal, name, stored.get(name))
            else:
                missing.append(deal)
        if missing:
            self.pair.crm.fill_context(missing)

    def fetch_deals(self, view: View, ids: Iterable[str]) -> None:
        """Read these deals by id, unless already read (or found gone or merged away: a merged
        id reads as a tombstone, and ``keep_deal`` orphans its links, docs/hubspot.md §15)."""
        ids = sorted(set(ids) - set(view.deals) - {i for side, i in view.gone if side == "crm"})
        if not ids:
            return
        found = self.pair.crm.fetch(ids, self.properties)
        for deal in found.values():
            view.keep_deal(deal, searched=False)
        for missing in set(ids) - set(found):
            view.gone[("crm", missing)] = "the CRM says this deal no longer exists"

    def fetch_reqs(self, view: View, ids: Iterable[str]) -> None:
        ids = sorted(set(ids) - set(view.reqs))
        if not ids:
            return
        found = self.pair.tracker.fetch(ids)
        for req in found.values():
            view.keep_req(req, searched=False)
        for missing in set(ids) - set(found):
            view.gone[("tracker", missing)] = "the tracker says this requirement no longer exists"

    # -- could not fetch is not gone --------------------------------------------------------------
    def probe_empty_sides(self, view: View) -> None:
        """A side that returned nothing while links exist is asked for a few linked records by
        id; if none comes back, the run stops before planning anything. The verify slice, read
        just before, is such a read: a side that gave back any of it answers, and costs no
        probe."""
        recent = sorted((link for link in view.links if not link.orphaned),
                        key=lambda link: -link.seq)
        if not recent or self.force:
            return
        answered = {"crm": any(i in view.deals for i in self.verify["crm"]),
                    "tracker": any(i in view.reqs for i in self.verify["tracker"])}
        for side in ("crm", "tracker"):
            if self.counts["deals_read" if side == "crm" else "requirements_read"] or \
                    answered[side]:
                continue
            ids = list(dict.fromkeys(link.deal_id if side == "crm" else link.req_id
                                     for link in recent))[:SAFETY_SAMPLE]
            found = (self.pair.crm.fetch(ids, self.properties) if side == "crm"
                     else self.pair.tracker.fetch(ids))
            if not found:
                instance = self.pair.crm.name if side == "crm" else self.pair.tracker.name
                raise SafetyStop(
                    f"{side} {instance!r} returned no changes and none of {len(ids)} linked "
                    f"records asked for by id; nothing was written",
                    "check the instance's settings (base URL, project, credentials); if the "
                    "records were really deleted, run again with --force to orphan their links")

    def verify_slice(self, view: View) -> None:
        """Choose the next few linked deals and requirements to re-read by id
        (``Pair.verify_*``): a record gone from its system orphans its links, a renamed
        company shows as a changed context. Sets ``self.verify`` and ``self.positions`` (the
        rotation to store once the run succeeds); ``verify`` reads them."""
        live = sorted((link for link in view.links if not link.orphaned), key=lambda l: l.seq)
        for side, count, attr in (("crm", self.pair.verify_deals, "deal_id"),
                                  ("tracker", self.pair.verify_requirements, "req_id")):
            ids = list(dict.fromkeys(getattr(link, attr) for link in live))
            if not ids or not count:
                continue
            start = self.store.position(self.pair.name, f"verify:{side}") % len(ids)
            self.verify[side] = (ids[start:] + ids[:start])[:count]
            self.positions[f"verify:{side}"] = (start + len(self.verify[side])) % len(ids)

    def read_verified(self, view: View) -> None:
        """Read the chosen slice, with context, unless this run's search already did."""
        self._both(lambda _: self.fetch_reqs(view, self.verify["tracker"]),
                   lambda _: self.fetch_deals(view, self.verify["crm"]))

    # -- look-ups the planners need ------------------------------------------------------------
    def resolve_keys(self, view: View, keys: list[str]) -> None:
        """One look-up per distinct key, in one call where the tracker can batch them."""
        keys = [key for key in keys if key not in view.keys]
        if not keys:
            return
        found = self.pair.tracker.find_by_keys(keys)
        for key in keys:
            view.keys[key] = found.get(key)
            if key in found:
                view.keep_req(found[key], searched=False)

    def resolve_markers(self, view: View, deal_ids: list[str]) -> None:
        """Look for requirements an earlier run created for these deals and could not record
        (a crash after the create, a lost or restored state store): identity survives lost
        state."""
        markers = [make_marker(self.pair.name, deal_id) for deal_id in deal_ids]
        markers = [m for m in markers if m not in view.markers]
        if not markers:
            return
        # how many requirements carry the pair's markers, as far as the state knows: sizes a
        # scan against one search per marker
        marked = len({link.req_id for link in view.links if link.origin == "created"})
        found = self.pair.tracker.find_by_markers(markers, make_marker(self.pair.name, ""),
                                                  marked)
        view.markers.update({m: req for m, req in found.items() if m in markers})

    # -- before merging and before writing ----------------------------------------------------------
    def complete(self, view: View, touched: set[str]) -> None:
        """Fetch the requirements to merge and every deal linked to them: fresh values on both
        sides of every link before any field is planned."""
        live = [link for link in view.current_links() if not link.orphaned]
        self._both(lambda _: self.fetch_reqs(view, touched),
                   lambda _: self.fetch_deals(view, [link.deal_id for link in live
                                                     if link.req_id in touched]))

    def refresh_before_write(self, view: View, actions: list[Action]) -> int:
        """Read once more, by id, the records about to be written that only a search showed;
        return how many had moved (then phase two is planned again on the fresh values).

        A CRM's search can lag behind its records (HubSpot's index does, docs/hubspot.md §7),
        and a long run leaves minutes between a read and a write: planning on a stale copy
        would overwrite a newer edit with a value that then looks like the base.
        """
        deal_ids = sorted({a.deal_id for a in actions if isinstance(a, UpdateDeal)}
                          & view.searched_deals)
        req_ids = sorted({a.req_id for a in actions if isinstance(a, UpdateRequirement)}
                         & view.searched_reqs)
        fresh, fresh_reqs = self._both(
            lambda _: self.pair.tracker.fetch(req_ids) if req_ids else {},
            lambda _: self.pair.crm.fetch(deal_ids, self.properties, with_context=False)
            if deal_ids else {})
        moved = 0
        if deal_ids:
            for deal_id, deal in fresh.items():
                if deal.merged_into is not None:  # merged away since the search: never written
                    view.keep_deal(deal, searched=False)
                    moved += 1
                    continue
                old = view.deals[deal_id]
                view.searched_deals.discard(deal_id)
                if deal.fields != old.fields:
                    old.fields, old.updated_at = deal.fields, deal.updated_at  # context stays
                    moved += 1
        if req_ids:
            for req_id, req in fresh_reqs.items():
                old = view.reqs[req_id]
                view.keep_req(req, searched=False)
                if (req.fields, req.description, req.title) != (old.fields, old.description,
                                                                 old.title):
                    moved += 1
        if moved:
            log.info("%d records changed since they were read; planning again", moved)
        return moved
