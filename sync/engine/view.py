"""The view: everything one run knows, read once, and the pure questions asked of it.

The reader (``read.py``) fills a :class:`View`; the planners only look at it. It holds the
records read in this run, what the state store remembers about the pair (links, bases, the deal
context last written into each requirement, conflicts, queued failures), and what look-ups found
(requirements by key and by marker). Nothing here does I/O.
"""

from __future__ import annotations

import json
from datetime import datetime
from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from ..connectors import Deal, Requirement
from ..state import Base, Link

#: Orphan reasons that begin with these mean the record under the link is not (or no longer)
#: the pair's: another record under a reused id, or one moved to another project. It must
#: never show the link's deal nor give it values (see ``docs/engine.md``, "Identity").
IDENTITY_CHANGED = "identity changed: "
MOVED_OUT = "moved out: "
NOT_OURS = (IDENTITY_CHANGED, MOVED_OUT)
#: The CRM answers the link's deal id with another deal: it was merged into that one (HubSpot,
#: docs/hubspot.md §15). The requirement is still the pair's and keeps showing the deal as last
#: seen; the deal gives no values and gets no writes (``docs/engine.md``, "Identity").
MERGED_INTO = "merged into deal "


def norm(value: str | None) -> str | None:
    """Empty and missing are the same value on both sides."""
    return value if value not in ("", None) else None


@dataclass
class View:
    pair: str
    links: list[Link] = field(default_factory=list)
    bases: dict[tuple[str, str, str], Base] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)  # deal id -> context
    seen: dict[str, str] = field(default_factory=dict)  # deal id -> modified time of snapshot
    deals: dict[str, Deal] = field(default_factory=dict)
    reqs: dict[str, Requirement] = field(default_factory=dict)
    # records known only from a search, so maybe stale by the time they are written
    searched_deals: set[str] = field(default_factory=set)
    searched_reqs: set[str] = field(default_factory=set)
    # records that a queued failure, a resolved conflict or a new link make this run look at
    forced_deals: set[str] = field(default_factory=set)
    forced_reqs: set[str] = field(default_factory=set)
    gone: dict[tuple[str, str], str] = field(default_factory=dict)  # (side, id) -> why
    keys: dict[str, Requirement | None] = field(default_factory=dict)  # looked up by key
    markers: dict[str, Requirement] = field(default_factory=dict)  # found by marker
    shared: dict[str, str] = field(default_factory=dict)  # normalised title -> created req id
    due: list[dict[str, Any]] = field(default_factory=list)  # queued failures to retry
    resolved: list[dict[str, Any]] = field(default_factory=list)  # conflicts a person settled
    open_conflicts: list[dict[str, Any]] = field(default_factory=list)
    manual: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # listed ones
    key_prefix: str | None = None  # the tracker project's: a key without it moved elsewhere

    # -- links --------------------------------------------------------------------------------
    def add_links(self, links: list[Link]) -> None:
        """Links made in this run (phase one): their requirements are merged in phase two."""
        known = {(link.deal_id, link.req_id) for link in self.links}
        for link in links:
            if (link.deal_id, link.req_id) not in known:
                self.links.append(link)
                self.forced_reqs.add(link.req_id)

    @cached_property
    def _prefix(self) -> str:
        return f"{(self.key_prefix or '').upper()}-"

    def current_links(self) -> list[Link]:
        """The links with what this run found applied: a gone record or a changed identity
        orphans a link (in the view; ``OrphanLink`` actions make it stick)."""
        out = []
        for link in self.links:
            reason = self.orphan_reason(link)
            out.append(replace(link, orphaned=reason) if reason and not link.orphaned else link)
        return out

    def orphan_reason(self, link: Link) -> str | None:
        """Why this run finds the link broken, or None (links already orphaned stay as they are)."""
        if link.orphaned:
            return None
        req = self.reqs.get(link.req_id)
        if req is not None and identity_changed(link, req):
            return (f"{IDENTITY_CHANGED}{link.req_key} is now another record ({req.key} "
                    f"{req.title!r}, created {req.created_at:%Y-%m-%d %H:%M} UTC) than the one "
                    "this deal was linked to")
        if req is not None and self.key_prefix and \
                not req.key.upper().startswith(self._prefix):
            return (f"{MOVED_OUT}{link.req_key} was moved out of project {self.key_prefix} (it "
                    f"is now {req.key}); link the deal again by naming a key of "
                    f"{self.key_prefix}")
        return self.gone.get(("crm", link.deal_id)) or self.gone.get(("tracker", link.req_id))

    def index(self) -> "LinkIndex":
        """The current links by deal and by requirement, and each deal's primary requirement
        (the first live link: a deal mirrors its fields), in one pass."""
        index = LinkIndex()
        for link in sorted(self.current_links(), key=lambda link: link.seq):
            index.by_deal[link.deal_id].append(link)
            index.by_req[link.req_id].append(link)
            if not link.orphaned:
                index.primary.setdefault(link.deal_id, link.req_id)
        return index

    def linked_deal_ids(self) -> set[str]:
        return {link.deal_id for link in self.links}

    def linked_req_ids(self) -> set[str]:
        return {link.req_id for link in self.links}

    def shared_requirement(self, title: str) -> Link | None:
        """A live link to the requirement created earlier for requests with this normalised
        title, else one orphaned only because its deal was merged away, or None (never
        created, or every link to it is otherwise orphaned)."""
        req_id = self.shared.get(title)
        if req_id is None:
            return None
        links = [link for link in self.current_links() if link.req_id == req_id]
        live = next((link for link in links if not link.orphaned), None)
        if live is not None or ("tracker", req_id) in self.gone:
            return live
        # deals merged away still vouch for it: the deal they became must join, not create
        return next((link for link in links
                     if (link.orphaned or "").startswith(MERGED_INTO)), None)

    def live_keys(self) -> dict[str, Requirement]:
        """Key -> requirement, for the requirements read in this run that a live link knows by
        that key: these need no look-up. One pass over the links."""
        known: dict[str, Requirement] = {}
        for link in self.links:
            req = self.reqs.get(link.req_id)
            if req is not None and not link.orphaned and req.key == link.req_key \
                    and not identity_changed(link, req):
                known.setdefault(link.req_key, req)
        return known

    # -- deals --------------------------------------------------------------------------------
    def keep_deal(self, deal: Deal, searched: bool) -> None:
        if deal.merged_into is not None:
            self.merged_away(deal)
            return
        previous = self.deals.get(deal.id)
        if previous is None or deal.updated_at >= previous.updated_at:
            self.deals[deal.id] = deal
            if searched:
                self.searched_deals.add(deal.id)

    def merged_away(self, deal: Deal) -> None:
        """The CRM answered this deal's id with another deal (``Deal.merged_into``): its links
        are orphaned, and nothing of the other deal is taken for it or written to it."""
        into = deal.merged_into
        self.deals.pop(deal.id, None)
        self.searched_deals.discard(deal.id)
        self.gone[("crm", deal.id)] = (
            f"{MERGED_INTO}{into} in the CRM (deal {deal.id} now answers as deal {into}); deal "
            f"{into} is linked by its own request: name this requirement there to keep it")

    def keep_req(self, req: Requirement, searched: bool) -> None:
        previous = self.reqs.get(req.id)
        if previous is None or req.updated_at >= previous.updated_at:
            self.reqs[req.id] = req
            if searched:
                self.searched_reqs.add(req.id)
            else:
                self.searched_reqs.discard(req.id)


@dataclass
class LinkIndex:
    by_deal: dict[str, list[Link]] = field(default_factory=lambda: defaultdict(list))
    by_req: dict[str, list[Link]] = field(default_factory=lambda: defaultdict(list))
    primary: dict[str, str] = field(default_factory=dict)


def identity_changed(link: Link, req: Requirement) -> bool:
    """True if the record under the link's requirement id is not the one that was linked: the
    tracker says it was created at another time (a reset tracker reusing ids, say). Trackers
    store creation times to the second, so a difference under one second is the same record."""
    if link.req_created is None or req.created_at is None:
        return False
    linked = datetime.fromisoformat(link.req_created)  # cheaper than formatting req's
    return abs((req.created_at - linked).total_seconds()) >= 1


def deal_context(deal: Deal, request: str | None) -> dict[str, Any]:
    """What the requirement's block shows of a deal, JSON-safe (and as stored). ``request`` is
    what the deal's request says to its requirements (see ``grammar.request_text``)."""
    row = {**deal.context(), "request": request}
    if all(value is None or type(value) in _JSON_SCALARS for value in row.values()):
        return row  # already what JSON gives back: the usual case, without the round trip
    return json.loads(json.dumps(row))


_JSON_SCALARS = (str, int, float, bool)
