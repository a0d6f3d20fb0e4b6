"""Words for people: counted nouns and values as a person reads them, never a Python repr.

Every count dealsync prints goes through ``counted`` (``1 conflict``, ``2 conflicts``), and every
field value through ``shown`` (a missing value is ``-``, a list is its items joined by commas),
so no ``['high']``, ``None`` or ``1 conflicts`` reaches a terminal.
"""

from __future__ import annotations

from typing import Any, Iterable


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``singular`` for a count of one, else ``plural_form`` (default: ``singular`` + "s")."""
    return singular if count == 1 else (plural_form or singular + "s")


def counted(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 deal``, ``2 deals``, ``0 deals``; give ``plural_form`` where adding "s" is wrong
    (``counted(n, "deal linked to the requirement it names", "deals linked to the
    requirements they name")``)."""
    return f"{count} {plural(count, singular, plural_form)}"


def shown(value: Any) -> str:
    """A value as a person reads it: ``-`` for none, items joined by ", " for a list."""
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return ", ".join(shown(item) for item in items) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{key} {shown(item)}" for key, item in value.items()) or "-"
    return str(value)


def listing(items: Iterable[Any], none: str = "none") -> str:
    """Items joined by ", ", or ``none`` when there are none."""
    text = ", ".join(shown(item) for item in items)
    return text or none


def manual_update(item: dict[str, Any]) -> str:
    """A change waiting for a person in the tracker (a row of ``StateStore.manual_updates``),
    as ``dealsync status`` and the demo word it."""
    deals = item["deal_ids"]
    return (f"manual update needed since {item['first_seen'][:16]}: set {item['req_key']} "
            f"{item['tracker_field']} from {shown(item['current'])} to {shown(item['value'])} "
            f"in the tracker ({plural(len(deals), 'deal')} {listing(deals)})")


def conflict_words(conflict: dict[str, Any], tracker: str = "tracker",
                   by_deal: bool = False) -> str:
    """A conflict (a row of ``StateStore.conflicts``): ``SCR-7 priority: PingCode 低, deal:
    high -> 高 (newest policy)``. ``by_deal`` names each deal with its value; otherwise the
    deals' distinct values are listed once."""
    deals, values = conflict["deal_ids"], conflict["crm_values"]
    if by_deal:
        crm = ", ".join(f"deal {deal} {shown(value)}" for deal, value in zip(deals, values))
    else:
        distinct = dict.fromkeys(shown(value) for value in values)
        crm = f"{plural(len(deals), 'deal')}: {listing(distinct, '-')}"
    if conflict["outcome"] is not None:
        outcome = f" -> {shown(conflict['outcome'])} ({conflict['policy']} policy)"
    else:
        outcome = (f" ({conflict['policy']} policy: open until `dealsync conflicts resolve "
                   f"{conflict['id']}`)")
    return (f"{conflict['req_key']} {conflict['field']}: {tracker} "
            f"{shown(conflict['tracker_value'])}, {crm}{outcome}")
