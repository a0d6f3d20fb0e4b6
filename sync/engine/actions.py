"""The actions a run can take: frozen, typed, and able to describe themselves.

Planners produce them from a view without I/O; guards judge the whole list; ``apply`` runs them.
``--dry-run`` prints :meth:`Action.describe` and ``--json`` carries :meth:`Action.to_json`, so what
a dry run shows is exactly what a real run would do.

Phase one (links): :class:`CreateRequirement`, :class:`LinkRequirement`, :class:`ReportProblem`.
Phase two (fields): :class:`ReportProblem`, :class:`OrphanLink`, :class:`ManualUpdate`,
:class:`CloseManualUpdate`, :class:`RecordConflict`, :class:`AgreeBase`,
:class:`UpdateRequirement`, :class:`UpdateDeal`, :class:`AddNote`, :class:`SettleConflict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

Value = str | None
#: A base to store once a write is confirmed: (deal id, requirement id, field, CRM, tracker).
BaseRow = tuple[str, str, str, Value, Value]


@dataclass(frozen=True)
class Action:
    kind: ClassVar[str] = ""
    #: False for bookkeeping that changes only dealsync's own state (not listed in a dry run)
    shown: ClassVar[bool] = True

    def describe(self) -> str:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"action": self.kind, **_plain(dataclasses.asdict(self))}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _deal(deal_id: str, name: str) -> str:
    return f"deal {deal_id} ({name})" if name else f"deal {deal_id}"


# -- phase one: links ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateRequirement(Action):
    """One new requirement for every deal whose request has this (normalised) title."""

    kind: ClassVar[str] = "create_requirement"
    deal_ids: tuple[str, ...]
    deal_names: tuple[str, ...]
    title: str
    shared_title: str  # normalised: later identical requests join this requirement
    description: str
    fields: tuple[tuple[str, Value], ...]
    markers: tuple[str, ...]  # one per deal, the first deal's first

    def describe(self) -> str:
        first = _deal(self.deal_ids[0], self.deal_names[0])
        more = len(self.deal_ids) - 1
        also = f" and {more} more deal{'s' if more > 1 else ''} asking the same" if more else ""
        return f"create requirement {self.title!r} for {first}{also}"



@dataclass(frozen=True)
class LinkRequirement(Action):
    kind: ClassVar[str] = "link_requirement"
    deal_id: str
    deal_name: str
    req_id: str
    req_key: str
    req_url: str | None
    req_title: str | None
    req_created: str | None  # ISO time the tracker created it: the link's proof of identity
    via: str  # "named" in the request, "marker" of an earlier run, or "same_request"
    shared_title: str = ""  # for "marker" and "same_request": the normalised request title

    WHY: ClassVar[dict[str, str]] = {
        "named": "named in its request",
        "marker": "found by its marker: an earlier run created it",
        "same_request": "the same request as the deals behind it"}

    @property
    def origin(self) -> str:
        """How the link is stored: "named", or "created" (asked for by text; the
        requirement's block carries the deal's marker)."""
        return "named" if self.via == "named" else "created"

    def describe(self) -> str:
        return f"link {_deal(self.deal_id, self.deal_name)} to {self.req_key} ({self.WHY[self.via]})"



@dataclass(frozen=True)
class ReportProblem(Action):
    """Something a person must fix, queued on the deal or requirement and retried: a request
    naming a key that does not exist (never turned into a new requirement), or a value the
    mapping cannot translate."""

    kind: ClassVar[str] = "report_problem"
    problem: str  # "missing_key" | "unmapped_value"
    deal_id: str
    req_id: str
    message: str
    hint: str
    retryable: bool
    key: str = ""  # for "missing_key": the key named

    def describe(self) -> str:
        return f"report: {self.message}"


# -- phase two: fields ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OrphanLink(Action):
    kind: ClassVar[str] = "orphan_link"
    deal_id: str
    req_id: str
    req_key: str
    reason: str

    def describe(self) -> str:
        return f"orphan the link deal {self.deal_id} <-> {self.req_key}: {self.reason}"



@dataclass(frozen=True)
class RecordConflict(Action):
    kind: ClassVar[str] = "record_conflict"
    req_id: str
    req_key: str
    field: str
    deal_ids: tuple[str, ...]
    crm_values: tuple[Value, ...]
    tracker_value: Value
    policy: str
    outcome: Value  # the tracker value chosen; None when queued for a person ("ask")
    existing_id: int | None  # the open conflict this one refreshes

    def describe(self) -> str:
        deals = ", ".join(f"deal {d} {v or '-'}" for d, v in zip(self.deal_ids, self.crm_values))
        verdict = (f"the {self.policy} policy sets {self.outcome or '-'}"
                   if self.outcome is not None else "queued for a person (dealsync conflicts)")
        return (f"conflict on {self.req_key} {self.field}: tracker {self.tracker_value or '-'} "
                f"vs {deals}: {verdict}")



@dataclass(frozen=True)
class AgreeBase(Action):
    """Both sides show the same value: remember it as the base (no write anywhere)."""

    kind: ClassVar[str] = "agree_base"
    shown: ClassVar[bool] = False
    row: BaseRow

    def describe(self) -> str:
        deal_id, _req, field, crm, tracker = self.row
        return f"record that deal {deal_id} agrees on {field} ({crm or '-'} = {tracker or '-'})"



@dataclass(frozen=True)
class UpdateRequirement(Action):
    kind: ClassVar[str] = "update_requirement"
    req_id: str
    req_key: str
    fields: tuple[tuple[str, Value], ...]
    description: str | None  # the whole new description, when the deal-context block moves
    changes: tuple[str, ...]  # what moves, for people
    bases: tuple[BaseRow, ...]  # stored once the write is confirmed

    def describe(self) -> str:
        return f"update {self.req_key}: " + "; ".join(self.changes)



@dataclass(frozen=True)
class Wait:
    """A deal value that shows a requirement's new value, and what the deal shows instead if
    the requirement's update fails: its current value (``write``: the deal does not show it
    yet)."""

    prop: str  # the deal property
    field: str  # the mirrored field
    req_id: str
    crm_now: Value  # the requirement's current value, in CRM terms
    tracker_now: Value
    write: bool


@dataclass(frozen=True)
class UpdateDeal(Action):
    kind: ClassVar[str] = "update_deal"
    deal_id: str
    values: tuple[tuple[str, Value], ...]
    changes: tuple[str, ...]
    bases: tuple[BaseRow, ...]
    #: the values that show a requirement's new value wait for its update; if it fails, the
    #: deal shows what the requirement still shows instead (``Wait``), and its other values,
    #: keys and link, are written regardless
    waits: tuple[Wait, ...] = ()

    def describe(self) -> str:
        return f"update deal {self.deal_id}: " + "; ".join(self.changes)

    def without(self, failed_reqs: set[str]) -> "UpdateDeal | None":
        """This update as it stands when these requirement updates failed; None if it leaves
        nothing to write."""
        held = [w for w in self.waits if w.req_id in failed_reqs]
        if not held:
            return self
        instead = {w.prop: w for w in held}
        values = tuple((k, instead[k].crm_now if k in instead else v) for k, v in self.values
                       if k not in instead or instead[k].write)
        fields = {(w.req_id, w.field) for w in held}
        bases = tuple(row for row in self.bases if (row[1], row[2]) not in fields) + tuple(
            (self.deal_id, w.req_id, w.field, w.crm_now, w.tracker_now) for w in held)
        if not values:
            return None
        return dataclasses.replace(self, values=values, bases=bases, waits=())


@dataclass(frozen=True)
class AddNote(Action):
    """A note on the deal's timeline, added once the deal's update went through."""

    kind: ClassVar[str] = "add_note"
    deal_id: str
    text: str
    after_update: bool = True  # added only once the deal's update went through

    def describe(self) -> str:
        return f"note on deal {self.deal_id}: {self.text}"



@dataclass(frozen=True)
class ManualUpdate(Action):
    """A change the tracker's API cannot make: listed for a person until the tracker shows it.
    Nothing is written on either side for this field meanwhile, so nothing is lost."""

    kind: ClassVar[str] = "manual_update"
    req_id: str
    req_key: str
    field: str
    tracker_field: str
    value: Value  # what the deals ask for, in tracker terms
    current: Value  # what the tracker shows
    deal_ids: tuple[str, ...]

    def describe(self) -> str:
        deals = ", ".join(self.deal_ids)
        return (f"list for a person: set {self.req_key} {self.tracker_field} from "
                f"{self.current or '-'} to {self.value or '-'} in the tracker (asked by deal "
                f"{deals}; the tracker's API cannot write it)")


@dataclass(frozen=True)
class CloseManualUpdate(Action):
    """The tracker now shows what a listed manual update asked for (or the ask went away)."""

    kind: ClassVar[str] = "close_manual_update"
    shown: ClassVar[bool] = False
    req_id: str
    req_key: str
    field: str

    def describe(self) -> str:
        return f"close the manual update of {self.req_key} {self.field}"


@dataclass(frozen=True)
class SettleConflict(Action):
    """Close a conflict once its requirement's writes went through."""

    kind: ClassVar[str] = "settle_conflict"
    shown: ClassVar[bool] = False
    conflict_id: int
    req_id: str

    def describe(self) -> str:
        return f"close conflict #{self.conflict_id}"



def describe_plan(actions: list[Action]) -> list[str]:
    return [action.describe() for action in actions if action.shown]
