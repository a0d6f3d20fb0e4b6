"""The three-way merge of one mirrored field over a requirement and its deals.

A requirement is the hub of its deals: each deal proposes a value when it differs from the
base (the last value both sides agreed on), the tracker proposes one when it moved from the
base, and the field's policy settles a conflict (``crm``, ``tracker``, ``newest``; ``ask`` leaves
both sides alone and queues it). Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..connectors import Deal, Requirement
from ..mapping import FieldMap
from ..state import Base
from .view import norm


@dataclass(frozen=True)
class Entry:
    """One deal mirroring the requirement, with its base for the field (None: never agreed)."""

    deal: Deal
    base: Base | None


@dataclass(frozen=True)
class Conflict:
    field: str
    deal_ids: tuple[str, ...]
    crm_values: tuple[str | None, ...]
    tracker_value: str | None
    policy: str
    outcome: str | None  # the tracker value chosen; None when queued for a person ("ask")


@dataclass
class Merged:
    """What a merge decided: the tracker value to write (``write_tracker``), deal id -> value to
    write, deal id -> (CRM, tracker) base to store once written, and the conflict if any."""

    tracker_value: str | None
    write_tracker: bool = False
    crm: dict[str, str | None] = field(default_factory=dict)
    bases: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    conflict: Conflict | None = None


Proposal = tuple[str | None, datetime, str, str | None]  # tracker value, when, deal id, CRM value


def merge_field(fm: FieldMap, req: Requirement, entries: list[Entry],
                resolution: tuple[bool, str | None] = (False, None)) -> Merged:
    """Merge ``fm`` over ``req`` and the deals mirroring it. ``resolution`` is (True, value) when
    a person settled this field's conflict. Under ``ask`` a conflict returns no writes at all.
    Raises ``UnmappedValue`` (an ``ItemError``) when a value has no translation."""
    t = norm(req.fields.get(fm.tracker))
    if fm.direction == "to_crm":
        return _align(fm, t, t, entries)
    tracker_moved = any(e.base is not None and e.base.tracker_value != t for e in entries)
    proposals, unbased = _proposals(fm, t, entries)
    if fm.direction == "to_tracker":
        value = max(proposals, key=lambda p: p[1])[0] if proposals else t
        return _align(fm, value, t, entries, write_crm=False)
    values = {p[0] for p in proposals}
    if resolution[0]:
        return _align(fm, resolution[1], t, entries)
    if not proposals:
        return _align(fm, t, t, entries)
    if len(values) == 1 and not tracker_moved and not unbased:
        return _align(fm, proposals[0][0], t, entries)
    value = _decide(fm, req, t, proposals, tracker_moved or unbased)
    conflict = Conflict(fm.name, tuple(p[2] for p in proposals), tuple(p[3] for p in proposals),
                        t, fm.conflict, None if fm.conflict == "ask" else value)
    if fm.conflict == "ask":
        return Merged(t, conflict=conflict)
    merged = _align(fm, value, t, entries)
    merged.conflict = conflict
    return merged


def _proposals(fm: FieldMap, t: str | None, entries: list[Entry]) -> tuple[list[Proposal], bool]:
    """The deals that ask for another value than the tracker's, and whether one of them has
    never agreed with the tracker (a new link whose deal shows something else).

    A new link whose deal already shows the tracker's value asks for nothing by itself; but
    when another deal asks for a change, its value counts as an ask too (a rep may have set
    it after the other rep's change), so the two meet as a conflict, settled by the policy
    and recorded, instead of one silently overwriting the other."""
    proposals: list[Proposal] = []
    agreeing: list[Proposal] = []
    unbased = False
    for e in entries:
        d = norm(e.deal.fields.get(fm.crm))
        if e.base is None:
            if d is None:
                continue
            if fm.same(d, t):
                agreeing.append((t, e.deal.updated_at, e.deal.id, d))
                continue
            unbased = True
        elif d == e.base.crm_value or fm.same(d, t):
            continue
        proposals.append((fm.to_tracker(d), e.deal.updated_at, e.deal.id, d))
    if proposals and agreeing:
        return proposals + agreeing, True
    return proposals, unbased


def _decide(fm: FieldMap, req: Requirement, t: str | None, proposals: list[Proposal],
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


def _align(fm: FieldMap, value: str | None, current: str | None, entries: list[Entry],
           write_crm: bool = True) -> Merged:
    """Make every deal show ``value`` and record the new base for each link."""
    merged = Merged(value, write_tracker=value != current)
    target = fm.to_crm(value)
    for e in entries:
        d = norm(e.deal.fields.get(fm.crm))
        crm_after = target if write_crm else d
        if write_crm and d != target:
            merged.crm[e.deal.id] = target
        if e.base != Base(crm_after, value):
            merged.bases[e.deal.id] = (crm_after, value)
    return merged
