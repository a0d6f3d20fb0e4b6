"""Connector base classes and the record types connectors exchange with the engine.

A connector talks to one kind of system. It converts everything at its edge: timestamps become
timezone-aware UTC ``datetime``s, ids become strings, and field values become plain strings (or
``None``) named the way the mapping file names them. The engine never sees HTTP or JSON.

Reads distinguish "not found" from "could not fetch": ``fetch`` leaves an id out of its result only
when the service said the record does not exist, and raises when it could not ask.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, Iterable, Iterator

from .errors import ItemError


def utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; naive values are refused, not guessed."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: connectors must convert to UTC at their edge")
    return value.astimezone(timezone.utc)


@dataclass(frozen=True)
class SecretSpec:
    """A secret a connector needs, e.g. ``SecretSpec("token", "HubSpot private-app token")``."""

    name: str
    description: str
    required: bool = True


@dataclass(frozen=True)
class RateLimit:
    """At most ``calls`` requests per ``per_seconds`` seconds for one instance (a token bucket)."""

    calls: int
    per_seconds: float


@dataclass
class Deal:
    """One CRM deal as the engine sees it."""

    id: str
    updated_at: datetime
    fields: dict[str, str | None]
    name: str = ""
    url: str | None = None
    company: str | None = None
    stage: str | None = None
    amount: float | None = None
    currency: str | None = None
    close_date: str | None = None  # ISO date
    owner: str | None = None
    is_open: bool = True
    #: Set when the CRM answers this deal's id with another record: the deal was merged into
    #: the deal with this id (HubSpot, docs/hubspot.md §15). Such a Deal is a tombstone: its
    #: ``fields`` are all empty, it must never give values to a link nor be written to, and
    #: the engine orphans its links instead.
    merged_into: str | None = None

    def __post_init__(self) -> None:
        self.updated_at = utc(self.updated_at)

    def context(self) -> dict[str, Any]:
        """The deal facts a product manager sees on the requirement (JSON-safe)."""
        return {
            "id": self.id, "name": self.name, "url": self.url, "company": self.company,
            "stage": self.stage, "amount": self.amount, "currency": self.currency,
            "close_date": self.close_date, "owner": self.owner, "is_open": self.is_open,
        }


@dataclass
class Requirement:
    """One tracker requirement (work item, idea, task) as the engine sees it.

    ``fields`` holds the tracker-side values the mapping can name: ``status`` and ``priority`` as
    the names people see in the tracker, ``delivery`` as the expected delivery, and any property.
    """

    id: str
    key: str
    updated_at: datetime
    title: str
    description: str
    fields: dict[str, str | None]
    url: str | None = None
    #: when the tracker created it; a link remembers it to notice a reused id (None: unknown)
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        self.updated_at = utc(self.updated_at)
        if self.created_at is not None:
            self.created_at = utc(self.created_at)


@dataclass
class NewRequirement:
    """What the engine asks a tracker to create. ``marker`` must be findable by ``find_by_marker``,
    and so must each of ``markers`` (every deal the requirement is created for; the
    description's deal-context block carries them all)."""

    title: str
    description: str
    fields: dict[str, str | None]
    marker: str
    markers: tuple[str, ...] = ()


@dataclass
class RequirementChange:
    """A partial update: only the attributes that are not ``None`` change."""

    fields: dict[str, str | None] = field(default_factory=dict)
    description: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class FieldSetup:
    """A deal field a person must create or change by hand (``CRMConnector.field_setup_steps``):
    ``what`` it must be ("a restricted picklist with the values A, B") and the ``steps``."""

    name: str
    what: str
    steps: tuple[str, ...]


@dataclass
class WriteResult:
    """The outcome of one item in a (possibly batched) write."""

    id: str
    record: Any = None
    error: ItemError | None = None
    #: the record's modified time after the write, where the service says it
    updated_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class InstanceContext:
    """What a connector instance is built from: its config section and a way to read secrets."""

    name: str
    settings: dict[str, Any]
    secret: Callable[[str], str]


MARKER_RE = re.compile(r"dealsync:(?P<pair>[A-Za-z0-9_.-]+):(?P<deal>[A-Za-z0-9_.-]+)")


def workflow_path(start: str, target: str,
                  transitions: Iterable[tuple[str, str]]) -> list[str] | None:
    """The states to pass through, in order, to go from ``start`` to ``target`` by allowed
    ``(from, to)`` transitions, fewest first (breadth-first); ``[]`` if already there, ``None``
    if no path exists. Trackers with workflows walk this before moving anything."""
    following: dict[str, list[str]] = {}
    for source, dest in transitions:
        following.setdefault(source, []).append(dest)
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if state == target:
            path = []
            while previous[state] is not None:
                path.append(state)
                state = previous[state]  # type: ignore[assignment]
            return path[::-1]
        for dest in sorted(following.get(state, ())):
            if dest not in previous:
                previous[dest] = state
                queue.append(dest)
    return None


def make_marker(pair: str, deal_id: str) -> str:
    """The identity a created requirement carries so it is found again after lost state."""
    return f"dealsync:{pair}:{deal_id}"


def has_marker(text: str | None, marker: str) -> bool:
    """True if ``text`` carries exactly this marker (``dealsync:p:d1`` is not in ``...:d10``).
    Trackers can only search by substring; connectors confirm a hit with this."""
    return any(m.group(0) == marker for m in MARKER_RE.finditer(text or ""))


class Connector:
    """What every connector declares and offers, whichever side it is on."""

    #: "crm" or "tracker"; set by the two base classes below.
    side: ClassVar[str] = ""
    #: the ``type`` users write in ``dealsync.toml``, e.g. "hubspot".
    type_name: ClassVar[str] = ""
    #: one line shown by ``dealsync plugins``.
    summary: ClassVar[str] = ""
    #: secrets this connector needs; looked up per instance (keyring, then environment).
    secrets: ClassVar[tuple[SecretSpec, ...]] = ()
    #: documented API limits, by bucket name ("default", "search", ...). Config may override them.
    default_rate_limits: ClassVar[dict[str, RateLimit]] = {}
    #: how many records one batch write can carry (1 when the API has no batch write).
    batch_size: ClassVar[int] = 1
    #: True when this connector may be called from a thread of its own while the pair's other
    #: connector works on the main thread (one call at a time per connector still): dealsync
    #: then reads and writes both services at once (docs/engine.md §9). Leave it False unless
    #: the connector keeps no state shared with the other side.
    concurrent: ClassVar[bool] = False
    #: settings keys this connector accepts, with a description each (used for config validation).
    settings_help: ClassVar[dict[str, str]] = {}
    #: settings keys that must be present.
    required_settings: ClassVar[tuple[str, ...]] = ()
    #: the settings ``dealsync init`` asks for, in order, each with the vendor's default (None:
    #: none). Whatever ``check_settings`` reports missing is asked for as well, so a connector
    #: that declares nothing here still gets its required settings asked for.
    setup_settings: ClassVar[dict[str, Any]] = {}

    def __init__(self, ctx: InstanceContext):
        self.ctx = ctx
        self.name = ctx.name
        self.settings = ctx.settings
        self.calls: Counter[str] = Counter()  # calls a connector counts itself (no HTTP)
        self.clients: list[Any] = []  # its sync.http.HttpClients: counted and closed here

    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> list[str]:
        """Problems with an instance's settings, as ``key: what is wrong`` strings."""
        problems = [f"{key}: required for type {cls.type_name!r}" for key in cls.required_settings
                    if key not in settings]
        known = set(cls.settings_help) | {"type", "rate_limits", "lookback_minutes"}
        for key in settings:
            if key not in known:
                choices = ", ".join(sorted(known))
                problems.append(f"{key}: unknown setting for type {cls.type_name!r} (known: {choices})")
        return problems

    def rate_limits(self) -> dict[str, RateLimit]:
        """The documented limits, with this instance's ``rate_limits`` overrides from the config
        (``rate_limits = { default = { calls = 190, per_seconds = 10 } }``)."""
        limits = dict(self.default_rate_limits)
        for bucket, spec in (self.settings.get("rate_limits") or {}).items():
            limits[bucket] = RateLimit(int(spec["calls"]), float(spec["per_seconds"]))
        return limits

    def service_now(self) -> datetime | None:
        """The service's own clock as of its latest answer to any of ``clients`` (None when
        unknown: no answer yet, or no Date header). The engine moves a read's cursor by it,
        never by this machine's clock, so a service whose clock is off is read right."""
        times = [t for t in (client.server_time() for client in self.clients) if t is not None]
        return max(times) if times else None

    def api_calls(self) -> dict[str, int]:
        """API calls made so far, by endpoint label, over every HTTP client in ``clients``."""
        total = Counter(self.calls)
        for client in self.clients:
            total.update(client.calls)
        return dict(total)

    def close(self) -> None:
        """Release sessions and files; called once when the run ends."""
        for client in self.clients:
            client.close()


class CRMConnector(Connector):
    side = "crm"

    #: Deal attributes (e.g. "company") that cost this CRM extra calls per deal. The engine
    #: then reads changes with ``with_context=False``, takes them from what it stored for a
    #: deal whose modified time has not moved, and asks ``fill_context`` for the rest.
    deferred_context: ClassVar[tuple[str, ...]] = ()

    def iter_changed(self, since: datetime | None, until: datetime,
                     properties: list[str], with_context: bool = True) -> Iterator[Deal]:
        """Deals modified in ``[since, until]`` (all deals when ``since`` is None), streamed page by
        page. A deal may appear twice; the engine de-duplicates. ``properties`` are the mapped
        field names to fill in ``Deal.fields``. With ``with_context=False`` the attributes in
        ``deferred_context`` may be left empty."""
        raise NotImplementedError

    def fill_context(self, deals: list[Deal]) -> None:
        """Fill the ``deferred_context`` attributes of these deals in place, in batches."""

    def fetch(self, ids: list[str], properties: list[str],
              with_context: bool = True) -> dict[str, Deal]:
        """The deals with these ids. An id is absent only if the CRM said it does not exist.
        With ``with_context=False`` only ``fields`` and ``updated_at`` need be filled, which
        lets a CRM skip its company and owner look-ups."""
        raise NotImplementedError

    def update(self, updates: list[tuple[str, dict[str, str | None]]]) -> list[WriteResult]:
        """Write field values onto deals, batching up to ``batch_size``. One result per input, in
        order; a failed item carries its ``ItemError`` and does not fail the others."""
        raise NotImplementedError

    def add_note(self, deal_id: str, text: str) -> str:
        """Add a plain-text note to the deal's timeline (mapping ``[notes]``); return its id.
        CRMs without notes leave this unimplemented, and ``dealsync check`` says so."""
        raise NotImplementedError(f"{self.type_name} CRM has no notes")

    def add_notes(self, notes: list[tuple[str, str]]) -> list[WriteResult]:
        """Add ``(deal_id, text)`` notes, one result each. CRMs with a batch endpoint override
        this; the default adds them one by one."""
        results = []
        for deal_id, text in notes:
            try:
                results.append(WriteResult(deal_id, record=self.add_note(deal_id, text)))
            except ItemError as exc:
                results.append(WriteResult(deal_id, error=exc))
        return results

    def field_options(self, field_name: str) -> list[str] | None:
        """The allowed values of an enumerated deal field, or None if it is free text."""
        return None

    def missing_fields(self, names: Iterable[str]) -> list[str]:
        """Which of these deal fields do not exist in the CRM (``dealsync check``)."""
        return []

    def ensure_fields(self, specs: dict[str, list[str] | None]) -> list[str]:
        """Create the missing deal fields (name -> options, None for text); return the created."""
        return []

    def field_setup_steps(self, specs: dict[str, list[str] | None],
                          roles: dict[str, str] | None = None) -> list[FieldSetup]:
        """For a CRM whose API cannot create or change fields (``ensure_fields`` creates
        nothing): what a person must do so that these deal fields exist with these values.
        ``specs`` as for ``ensure_fields`` (values in the mapping's order); ``roles`` names the
        mapping's ``request``, ``key`` and ``url`` fields. ``dealsync check`` names each
        ``FieldSetup.what``; ``check --fix`` prints the steps. The default, ``[]``, is right for
        a CRM that creates its fields itself."""
        return []


class TrackerConnector(Connector):
    side = "tracker"

    def iter_changed(self, since: datetime | None, until: datetime) -> Iterator[Requirement]:
        """Requirements modified in ``[since, until]``, streamed; duplicates allowed."""
        raise NotImplementedError

    def fetch(self, ids: list[str]) -> dict[str, Requirement]:
        """The requirements with these ids. An id is absent only if the tracker said it is gone."""
        raise NotImplementedError

    def key_prefix(self) -> str | None:
        """The prefix of this tracker's requirement keys (the project identifier, ``SCR`` in
        ``SCR-12``), so a request's ``ISO-9001`` is not taken for a key; None if keys have no
        fixed prefix (the mapping's ``key_pattern`` or a generic pattern is used then)."""
        return None

    def find_by_key(self, key: str) -> Requirement | None:
        """The requirement people call ``key`` (``SCR-12``), or None if there is none."""
        raise NotImplementedError

    def find_by_keys(self, keys: list[str]) -> dict[str, Requirement]:
        """The requirements these keys name; a key that names none is left out. The engine
        calls this once per run with every distinct key; trackers with a batch look-up
        override it, the default asks one key at a time."""
        found = {}
        for key in keys:
            req = self.find_by_key(key)
            if req is not None:
                found[key] = req
        return found

    def find_by_marker(self, marker: str) -> Requirement | None:
        """The requirement dealsync created with this marker, or None."""
        raise NotImplementedError

    def find_by_markers(self, markers: list[str], prefix: str,
                        marked: int) -> dict[str, Requirement]:
        """The requirements carrying these markers (every marker starts with ``prefix``, and
        about ``marked`` requirements carry one of the pair's markers). The default asks one
        marker at a time; a tracker that can list every requirement carrying ``prefix`` in
        fewer calls than ``len(markers)`` should do that instead."""
        found = {}
        for marker in markers:
            req = self.find_by_marker(marker)
            if req is not None:
                found[marker] = req
        return found

    def create(self, new: NewRequirement) -> Requirement:
        """Create a requirement. Raises ``ItemError`` on refusal. Never retried blindly."""
        raise NotImplementedError

    def update(self, req_id: str, change: RequirementChange) -> Requirement:
        """Apply a partial change. A status change walks the workflow or raises
        ``TransitionError`` naming the missing transition, leaving the item unchanged."""
        raise NotImplementedError

    def field_values(self, field_name: str) -> list[str] | None:
        """The values a tracker field can take (state names, priority names), None if free."""
        return None

    def can_write(self, what: str) -> bool:
        """Whether this connector can change ``what`` on an existing requirement: a tracker
        field (``status``, ``priority``) or ``description`` (where the deal-context block
        lives). Creating is always possible. A tracker whose API cannot update some of these
        says so here; dealsync then lists a CRM-side change to such a field as a manual update
        for a person to make in the tracker, and leaves the block as it was written at
        creation (docs/engine.md, "Trackers that cannot write everything")."""
        return True
