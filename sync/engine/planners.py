"""Pure planners: a view in, the list of actions out. No state store, no network.

Phase one, :func:`plan_links`: every selected deal whose request is not yet linked either links
the requirements its request names, or (naming none) asks for a new one; identical new requests
share one requirement. :func:`wanted_keys` and :func:`create_groups` tell the reader what to look
up first, so each key and marker is looked up once per run.

Phase two, :func:`plan_fields`: for each requirement with something new on either side, merge
every mirrored field over the requirement and its deals (the hub), refresh the deal-context
block, and write the keys and URL onto the deals. :func:`touched_requirements` says which
requirements those are; a record that shows exactly what was last agreed is left alone, which
is echo suppression from the base.
"""

from __future__ import annotations

import html
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .. import context
from ..context import clean
from ..connectors import Deal, Requirement, make_marker
from ..errors import ItemError
from ..mapping import FieldMap, Mapping
from ..state import Link
from .actions import (Action, AddNote, AgreeBase, BaseRow, CloseManualUpdate, CreateRequirement,
                      LinkRequirement, ManualUpdate, OrphanLink, RecordConflict, ReportProblem,
                      SettleConflict, UpdateDeal, UpdateRequirement, Wait)
from .grammar import KeyPattern, ParsedRequest, normalize_title, parse_request, request_text
from .merge import Entry, Merged, merge_field
from .view import NOT_OURS, View, deal_context, norm

log = logging.getLogger("dealsync.engine")


@dataclass(frozen=True)
class PlanContext:
    """What the planners need besides the view, and a memo of what they derive per deal (a
    run asks the same questions of every deal several times)."""

    pair: str
    tracker: str  # the tracker instance's name, for messages
    mapping: Mapping
    pattern: KeyPattern
    #: what the tracker cannot change on an existing requirement: field names, "description"
    unwritable: frozenset[str] = frozenset()
    _parsed: dict[str, ParsedRequest] = field(default_factory=dict, compare=False, repr=False)
    _contexts: dict[tuple[str, Any, str | None], dict[str, Any]] = field(
        default_factory=dict, compare=False, repr=False)
    _blocks: dict[Any, str] = field(default_factory=dict, compare=False, repr=False)

    def parse(self, deal: Deal) -> ParsedRequest:
        text = deal.fields.get(self.mapping.request_field) or ""
        if text not in self._parsed:
            self._parsed[text] = parse_request(text, self.pattern)
        return self._parsed[text]

    def context_key(self, deal: Deal) -> tuple[str, Any, str | None]:
        """What a deal's context row depends on, as far as one run can change it."""
        return deal.id, deal.updated_at, deal.fields.get(self.mapping.request_field)

    def context_of(self, deal: Deal) -> dict[str, Any]:
        """The deal as its requirements' blocks show it (a copy the caller may change)."""
        key = self.context_key(deal)
        text = key[2]
        if key not in self._contexts:
            row = deal_context(deal, request_text(text, self.pattern))
            if self.mapping.context_properties:  # custom columns: deal properties
                row["custom"] = self.mapping.context_values(deal.fields)
            self._contexts[key] = row
        return dict(self._contexts[key])


    def block(self, rows: list[dict[str, Any]], keys: list[Any] | None,
              markers: list[str]) -> str:
        """The rendered block for these deal rows, memoised by ``keys`` (each row's
        ``context_key`` and whether it is orphaned; None: not memoised): phase two renders
        again the block of every requirement a create has just rendered."""
        memo = (frozenset(keys), tuple(sorted(markers))) if keys is not None else None
        if memo is not None and memo in self._blocks:
            return self._blocks[memo]
        text = context.render(rows, self.mapping.context_columns, markers,
                              self.mapping.context_language, self.mapping.context_titles)
        if memo is not None:
            self._blocks[memo] = text
        return text


def created_at(req: Requirement) -> str | None:
    return req.created_at.isoformat() if req.created_at else None


# -- phase one: links ---------------------------------------------------------------------------
def _requesting(view: View, ctx: PlanContext) -> list[tuple[Deal, ParsedRequest, list[Link]]]:
    """Selected deals in a stable order, with their parsed request and current links."""
    by_deal = view.index().by_deal
    return [(deal, ctx.parse(deal), by_deal.get(deal.id, []))
            for deal in sorted(view.deals.values(), key=lambda d: d.id)
            if ctx.mapping.selects(deal.fields)]


def _new_keys(parsed: ParsedRequest, links: list[Link]) -> list[str]:
    linked = {link.req_key for link in links}
    return [key for key in parsed.keys if key not in linked]


def wanted_keys(view: View, ctx: PlanContext) -> list[str]:
    """Every distinct key that requests name and that neither a link nor this run's reads
    already resolve: each is looked up once, however many deals name it."""
    keys: dict[str, None] = {}
    known = view.live_keys()
    for _deal, parsed, links in _requesting(view, ctx):
        for key in _new_keys(parsed, links):
            if key not in known:
                keys[key] = None
    return list(keys)


def create_groups(view: View, ctx: PlanContext) -> dict[str, list[tuple[Deal, ParsedRequest]]]:
    """Deals asking for a new requirement, grouped by normalised title (first deal first)."""
    groups: dict[str, list[tuple[Deal, ParsedRequest]]] = defaultdict(list)
    for deal, parsed, links in _requesting(view, ctx):
        if parsed.creates and not any(link.origin == "created" for link in links):
            groups[normalize_title(parsed.title or "")].append((deal, parsed))
    return dict(groups)


def plan_links(view: View, ctx: PlanContext) -> list[Action]:
    """Phase one, in the order it is applied: creates (and the links that stand for them),
    links to the requirements requests name, then keys that name nothing."""
    creates: list[Action] = []
    for title, members in create_groups(view, ctx).items():
        creates += _plan_group(view, ctx, title, members)
    links: list[Action] = []
    problems: list[Action] = []
    known = {**view.keys, **view.live_keys()}
    for deal, parsed, current in _requesting(view, ctx):
        linked_ids = {link.req_id for link in current}
        for key in _new_keys(parsed, current):
            req = known.get(key)
            if req is None:
                problems.append(ReportProblem(
                    "missing_key", deal.id, "",
                    f"deal {deal.id} ({deal.name}) names {key}, which does not exist in "
                    f"{ctx.tracker!r}", "fix the key in the deal's request; it is retried on "
                    "its own, and never turned into a new requirement", True, key))
            elif req.id not in linked_ids:
                linked_ids.add(req.id)
                links.append(_link(deal, req, "named"))
    return creates + links + problems


def _link(deal: Deal, req: Requirement, via: str, title: str = "") -> LinkRequirement:
    return LinkRequirement(deal.id, deal.name, req.id, req.key, req.url, req.title,
                           created_at(req), via, title)


def _plan_group(view: View, ctx: PlanContext, title: str,
                members: list[tuple[Deal, ParsedRequest]]) -> list[Action]:
    """One requirement for deals asking the same: found by a marker (an earlier run created it
    and then lost its state), joined (created for the same request in an earlier run), or new."""
    deals = [deal for deal, _ in members]
    found = next((view.markers[m] for m in (make_marker(ctx.pair, d.id) for d in deals)
                  if m in view.markers), None)
    if found is not None:
        return [_link(d, found, "marker", title) for d in deals]
    shared = view.shared_requirement(title)
    if shared is not None:
        return [LinkRequirement(d.id, d.name, shared.req_id, shared.req_key, shared.req_url,
                                shared.req_title, shared.req_created, "same_request", title)
                for d in deals]
    first, parsed = members[0]
    markers = [make_marker(ctx.pair, d.id) for d in deals]
    block = ctx.block([ctx.context_of(d) for d in deals],
                      [(*ctx.context_key(d), False) for d in deals], markers)
    text = request_html(parsed.body, ctx.mapping.context_language)
    return [CreateRequirement(tuple(d.id for d in deals), tuple(d.name for d in deals),
                              parsed.title or "", title,
                              f"{text}\n{block}" if text else block,
                              tuple(sorted(initial_fields(ctx.mapping, first).items())),
                              tuple(markers))]


def initial_fields(mapping: Mapping, deal: Deal) -> dict[str, str | None]:
    """Tracker values a new requirement starts with: what the deal already shows."""
    values: dict[str, str | None] = {}
    for fm in mapping.fields:
        if fm.reads_crm and norm(deal.fields.get(fm.crm)):
            try:
                values[fm.tracker] = fm.to_tracker(deal.fields[fm.crm])
            except ItemError as exc:
                log.warning("deal %s: %s; the tracker default is kept", deal.id, exc)
    return values


#: A new requirement's description carries at most this much of the request: a 100 KB paste
#: must not make a description the tracker refuses (the full text stays on the deal).
REQUEST_BODY_MAX = 20_000


def request_html(body: str, language: str = context.DEFAULT_LANGUAGE) -> str:
    """The request's text (after its title line) as escaped HTML paragraphs."""
    body = context.clip(body, REQUEST_BODY_MAX, language)
    paragraphs = [p.strip() for p in body.split("\n\n") if p.strip()]
    return "".join("<p>" + html.escape(p).replace("\n", "<br>") + "</p>" for p in paragraphs)


# -- phase two: which requirements ----------------------------------------------------------------
def touched_requirements(view: View, ctx: PlanContext) -> set[str]:
    """Requirements with something new on either side.

    The lookback window re-reads the latest records every run, and our own writes come back as
    changes; a record that shows exactly what was last agreed (every mirrored field equal to its
    base, the same deal context) is left alone, so a quiet run writes nothing.
    """
    index = view.index()
    primary, by_deal, by_req = index.primary, index.by_deal, index.by_req
    changed = {req_id for req_id, req in view.reqs.items()
               if req_id in view.forced_reqs
               or not _req_is_quiet(view, ctx, req, by_req.get(req_id, []), primary)}
    changed |= {link.req_id for link in view.links if view.orphan_reason(link)}
    for deal_id, deal in view.deals.items():
        if deal_id in view.forced_deals or not _deal_is_quiet(view, ctx, deal,
                                                               by_deal.get(deal_id, []), primary):
            changed |= {link.req_id for link in by_deal.get(deal_id, [])}
    return changed


def _deal_is_quiet(view: View, ctx: PlanContext, deal: Deal, links: list[Link],
                   primary: dict[str, str]) -> bool:
    live = [link for link in links if not link.orphaned]
    if not live or deal.id not in primary:
        return False
    if _new_keys(ctx.parse(deal), links):
        return False
    req_id = primary[deal.id]
    for fm in ctx.mapping.synced_fields():
        base = view.bases.get((deal.id, req_id, fm.name))
        if base is None or norm(deal.fields.get(fm.crm)) != base.crm_value:
            return False
    wanted = wanted_link_fields(ctx.mapping, live, req_id)
    if any(norm(deal.fields.get(name)) != norm(value) for name, value in wanted.items()):
        return False
    return view.snapshots.get(deal.id) == ctx.context_of(deal)


def _req_is_quiet(view: View, ctx: PlanContext, req: Requirement, links: list[Link],
                  primary: dict[str, str]) -> bool:
    mirrored = [link for link in links if not link.orphaned and primary.get(link.deal_id) == req.id]
    for fm in ctx.mapping.synced_fields():
        value = norm(req.fields.get(fm.tracker))
        for link in mirrored:
            base = view.bases.get((link.deal_id, req.id, fm.name))
            if base is None or base.tracker_value != value:
                return False
    if "description" in ctx.unwritable:
        return True  # the block stays as written at creation
    return context.extract(req.description) == desired_block(view, ctx, links)


def desired_block(view: View, ctx: PlanContext, links: list[Link]) -> str:
    """The deal-context block for a requirement with these links. A link whose requirement
    changed identity is left out: its deal never asked for the record now under that id."""
    deals: list[dict[str, Any]] = []
    keys: list[Any] = []
    from_state = False  # a row from the state store, not this run: not memoised
    shown = [link for link in links if not (link.orphaned or "").startswith(NOT_OURS)]
    for link in shown:
        deal = view.deals.get(link.deal_id)
        ctx_row = ctx.context_of(deal) if deal else view.snapshots.get(link.deal_id)
        if ctx_row is not None:
            deals.append({**ctx_row, "orphaned": bool(link.orphaned)})
            if deal is None:
                from_state = True
            else:
                keys.append((*ctx.context_key(deal), bool(link.orphaned)))
    markers = [make_marker(ctx.pair, link.deal_id) for link in shown if link.origin == "created"]
    return ctx.block(deals, None if from_state else keys, markers)


def wanted_link_fields(mapping: Mapping, live: list[Link], primary_req: str) -> dict[str, str | None]:
    """The requirement keys and the primary requirement's URL, as the deal should show them."""
    wanted: dict[str, str | None] = {}
    ordered = sorted(live, key=lambda link: link.seq)
    if mapping.key_field:
        wanted[mapping.key_field] = "; ".join(link.req_key for link in ordered)
    if mapping.url_field:
        first = next(link for link in ordered if link.req_id == primary_req)
        wanted[mapping.url_field] = first.req_url
    return wanted


# -- phase two: the plan ---------------------------------------------------------------------------
@dataclass
class _ReqDraft:
    req: Requirement
    fields: dict[str, str | None] = field(default_factory=dict)
    description: str | None = None
    changes: list[str] = field(default_factory=list)
    bases: list[BaseRow] = field(default_factory=list)

    def action(self) -> UpdateRequirement | None:
        if not self.fields and self.description is None:
            return None
        return UpdateRequirement(self.req.id, self.req.key, tuple(self.fields.items()),
                                 self.description, tuple(self.changes), tuple(self.bases))


@dataclass
class _DealDraft:
    deal_id: str
    values: dict[str, str | None] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    bases: list[BaseRow] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan_fields(view: View, ctx: PlanContext, touched: set[str]) -> list[Action]:
    """Phase two for the ``touched`` requirements (see :func:`touched_requirements`)."""
    return _FieldPlanner(view, ctx).plan(touched)


class _FieldPlanner:
    """Collects one run's field decisions into drafts, then freezes them into actions."""

    def __init__(self, view: View, ctx: PlanContext):
        self.view, self.ctx = view, ctx
        self.index = view.index()
        self.primary = self.index.primary
        self.reqs: dict[str, _ReqDraft] = {}
        self.deals: dict[str, _DealDraft] = {}
        self.records: list[Action] = []  # problems, conflicts, agreed bases, manual updates
        self.manual_notes: list[AddNote] = []
        self.settled: list[SettleConflict] = []
        self.resolutions = {(c["req_id"], c["field"]): c for c in view.resolved}
        self.open = {(c["req_id"], c["field"]): c for c in view.open_conflicts}

    def plan(self, touched: set[str]) -> list[Action]:
        by_req = self.index.by_req
        for req_id in sorted(touched & set(self.view.reqs)):
            links = by_req.get(req_id, [])
            if links and all((link.orphaned or "").startswith(NOT_OURS) for link in links):
                continue  # not the record that was linked: it gives nothing and gets nothing
            self._requirement(self.view.reqs[req_id], links)
        self._link_fields(touched)
        return self._freeze()

    def _freeze(self) -> list[Action]:
        orphans: list[Action] = [
            OrphanLink(link.deal_id, link.req_id, link.req_key, reason)
            for link in self.view.links if (reason := self.view.orphan_reason(link))]
        reqs = [a for a in (d.action() for d in self.reqs.values()) if a is not None]
        deals = [UpdateDeal(d.deal_id, tuple(d.values.items()), tuple(d.changes),
                            tuple(d.bases), tuple(d.waits))
                 for d in self.deals.values() if d.values]
        notes = [AddNote(d.deal_id, text)
                 for d in self.deals.values() if d.values for text in d.notes]
        return [*orphans, *self.records, *reqs, *deals, *notes, *self.manual_notes,
                *self.settled]

    def _deal(self, deal_id: str) -> _DealDraft:
        return self.deals.setdefault(deal_id, _DealDraft(deal_id))

    def _req(self, req: Requirement) -> _ReqDraft:
        return self.reqs.setdefault(req.id, _ReqDraft(req))

    def _requirement(self, req: Requirement, links: list[Link]) -> None:
        mirrored = [link for link in links if not link.orphaned
                    and self.primary.get(link.deal_id) == req.id and link.deal_id in self.view.deals]
        for fm in self.ctx.mapping.synced_fields():
            entries = [Entry(self.view.deals[link.deal_id],
                             self.view.bases.get((link.deal_id, req.id, fm.name)))
                       for link in mirrored]
            if entries:
                self._merge(fm, req, entries)
        if "description" in self.ctx.unwritable:
            return
        block = desired_block(self.view, self.ctx, links)
        if context.extract(req.description) != block:
            draft = self._req(req)
            draft.description = context.splice(req.description, block)
            draft.changes.append("deal context")

    def _merge(self, fm: FieldMap, req: Requirement, entries: list[Entry]) -> None:
        resolution = self.resolutions.get((req.id, fm.name))
        try:
            merged = merge_field(fm, req, entries,
                                 (True, resolution["outcome"]) if resolution else (False, None))
        except ItemError as exc:
            self.records.append(ReportProblem("unmapped_value", "", req.id, f"{req.key}: {exc}",
                                              exc.hint or "", exc.retryable))
            return
        existing = self.open.get((req.id, fm.name))
        manual = merged.write_tracker and fm.tracker in self.ctx.unwritable
        listed = (req.id, fm.name) in self.view.manual
        if merged.conflict is not None:
            c = merged.conflict
            # one whose outcome waits for a manual update comes back every run until a person
            # makes it: it is recorded once, when the update is first listed
            if not (manual and listed):
                self.records.append(RecordConflict(
                    req.id, req.key, c.field, c.deal_ids, c.crm_values, c.tracker_value,
                    c.policy, c.outcome, existing["id"] if existing else None))
            if c.outcome is None:
                return
        elif existing is not None:  # the sides converged meanwhile
            self.settled.append(SettleConflict(existing["id"], req.id))
        if resolution is not None:
            self.settled.append(SettleConflict(resolution["id"], req.id))
        if manual:
            self._manual(fm, req, merged, entries)
            return
        if listed:
            self.records.append(CloseManualUpdate(req.id, req.key, fm.name))
        self._write(fm, req, merged)

    def _manual(self, fm: FieldMap, req: Requirement, merged: Merged,
                entries: list[Entry]) -> None:
        """The deals ask for a value the tracker's API cannot write: list it for a person and
        write nothing for this field, so the deals keep their value and no base moves. It is
        listed again each run (not retried: nothing is sent) until the tracker shows it."""
        target = fm.to_crm(merged.tracker_value)
        asking = tuple(e.deal.id for e in entries if norm(e.deal.fields.get(fm.crm)) == target)
        self.records.append(ManualUpdate(req.id, req.key, fm.name, fm.tracker,
                                         merged.tracker_value, req.fields.get(fm.tracker),
                                         asking))
        if self.ctx.mapping.note_manual_updates and (req.id, fm.name) not in self.view.manual:
            text = context.note(self.ctx.mapping.context_language, "manual", fm.name,
                                key=req.key, title=req.title, value=target)
            self.manual_notes += [AddNote(deal_id, text, after_update=False)
                                  for deal_id in asking]

    def _write(self, fm: FieldMap, req: Requirement, merged: Merged) -> None:
        """Turn a merge into drafts: the requirement's new value, each deal's, their bases."""
        if merged.write_tracker:
            draft = self._req(req)
            draft.fields[fm.tracker] = merged.tracker_value
            draft.changes.append(f"{fm.tracker} {req.fields.get(fm.tracker) or '-'} -> "
                                 f"{merged.tracker_value or '-'}")
        for deal_id in sorted(set(merged.crm) | set(merged.bases)):
            crm_value, tracker_base = merged.bases.get(
                deal_id, (merged.crm.get(deal_id), merged.tracker_value))
            row: BaseRow = (deal_id, req.id, fm.name, crm_value, tracker_base)
            if deal_id in merged.crm:
                self._deal_value(fm, req, merged, deal_id, row)
            elif merged.write_tracker:
                self._req(req).bases.append(row)
            else:
                self.records.append(AgreeBase(row))

    def _deal_value(self, fm: FieldMap, req: Requirement, merged: Merged, deal_id: str,
                    row: BaseRow) -> None:
        draft = self._deal(deal_id)
        value = merged.crm[deal_id]
        draft.values[fm.crm] = value
        draft.bases.append(row)
        draft.changes.append(f"{fm.crm} {self.view.deals[deal_id].fields.get(fm.crm) or '-'} -> "
                             f"{value or '-'}")
        # A note tells a deal that already mirrored the field that it moved; a deal just
        # linked gets its first value without one (12,000 new links are not 12,000 notes).
        if fm.name in self.ctx.mapping.note_fields and \
                (deal_id, req.id, fm.name) in self.view.bases:
            draft.notes.append(clean(context.note(
                self.ctx.mapping.context_language, "changed", fm.name, key=req.key,
                title=req.title, tracker_value=merged.tracker_value, crm_value=value)))
        if merged.write_tracker:
            now = norm(req.fields.get(fm.tracker))
            crm_now = fm.to_crm(now)
            shows = norm(self.view.deals[deal_id].fields.get(fm.crm))
            draft.waits.append(Wait(fm.crm, fm.name, req.id, crm_now, now, shows != crm_now))

    def _link_fields(self, touched: set[str]) -> None:
        """Write the requirement keys and the primary URL onto each touched, linked deal."""
        live = {deal_id: alive for deal_id, links in self.index.by_deal.items()
                if (alive := [link for link in links if not link.orphaned])}
        deal_ids = {link.deal_id for link in self.view.links if link.req_id in touched}
        for deal_id in sorted(deal_ids & set(live)):
            deal = self.view.deals.get(deal_id)
            if deal is None:
                continue
            wanted = wanted_link_fields(self.ctx.mapping, live[deal_id], self.primary[deal_id])
            for name, value in wanted.items():
                if norm(deal.fields.get(name)) != norm(value):
                    draft = self._deal(deal_id)
                    draft.values[name] = value
                    draft.changes.append(f"{name} -> {value or '-'}")
