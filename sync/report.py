"""``dealsync report``: requirements ranked by the open pipeline asking for them.

Built from the state store alone (links, the deal context last written into each requirement,
and the base values of the mirrored fields), so it costs no API call and shows what the last
sync saw.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .mapping import Mapping, UnmappedValue
from .state import Base, StateStore

#: the requirement facts the report shows, by the tracker field name connectors use for them
ROLES = ("status", "priority", "delivery")

#: status values (tracker names, or the CRM values a mapping gives them) that mean delivered;
#: compared lower case without spaces, dashes or underscores
DELIVERED = frozenset({"shipped", "done", "delivered", "released", "completed", "live",
                       "已完成", "已发布", "已交付", "已上线", "完成"})

#: a closed stage whose name holds one of these was won ("Closed Won", "closedwon", "赢单")
WON_WORDS = ("won", "赢单", "成交", "签约")


def pipeline_report(store: StateStore, pairs: list[str],
                    mappings: dict[str, Mapping] | None = None) -> list[dict[str, Any]]:
    """One row per linked requirement, ranked by open pipeline. ``mappings`` (pair -> mapping)
    says which mirrored fields hold status, priority and delivery; without one the fields
    named so are used."""
    rows: list[dict[str, Any]] = []
    for name in pairs:
        mapping = (mappings or {}).get(name)
        rows += _pair_rows(store, name, mapping)
    return sorted(rows, key=lambda r: (-r["open_pipeline"], r["key"]))


def _pair_rows(store: StateStore, pair: str, mapping: Mapping | None) -> list[dict[str, Any]]:
    contexts = store.deal_contexts(pair)
    bases = store.bases(pair)
    grouped: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for link in store.links(pair):
        if link.orphaned:
            continue
        rows.setdefault(link.req_id, {"pair": pair, "key": link.req_key,
                                      "title": link.req_title, "url": link.req_url})
        grouped.setdefault(link.req_id, []).append((link.deal_id,
                                                    contexts.get(link.deal_id, {})))
    for req_id, row in rows.items():
        deals = grouped[req_id]
        row.update(_deal_figures([deal for _, deal in deals]))
        facts = {role: _last_known([bases.get((deal_id, req_id, field)) for deal_id, _ in deals])
                 for role, field in _role_fields(mapping).items()}
        row.update({role: facts.get(role) for role in ROLES})
        row["delivered"] = _delivered(row["status"], mapping)
        waiting = [] if row["delivered"] else [deal for _, deal in deals if is_won(deal)]
        row["won_waiting"] = sum(deal.get("amount") or 0.0 for deal in waiting)
        row["won_waiting_deals"] = len(waiting)
    return list(rows.values())


def _deal_figures(deals: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, open pipeline, companies and the earliest close date of the open deals."""
    open_deals = [deal for deal in deals if deal.get("is_open")]
    companies = list(dict.fromkeys(deal["company"] for deal in deals if deal.get("company")))
    closes = [deal["close_date"] for deal in open_deals if deal.get("close_date")]
    return {"open_pipeline": sum(deal.get("amount") or 0.0 for deal in open_deals),
            "open_deals": len(open_deals), "deals": len(deals), "companies": companies,
            "earliest_close": min(closes) if closes else None}


def _role_fields(mapping: Mapping | None) -> dict[str, str]:
    """Role -> the mapping's field name holding it (the one whose tracker field is the role)."""
    if mapping is None:
        return {role: role for role in ROLES}
    found = {f.tracker: f.name for f in mapping.fields if f.tracker in ROLES}
    for f in mapping.fields:
        if f.name in ROLES:
            found.setdefault(f.name, f.name)
    return found


def _last_known(bases: Iterable[Base | None]) -> str | None:
    """The tracker value the most deals last agreed on. Every deal mirroring a requirement
    holds its own base; they differ only while a write to some deal waits for a retry."""
    values = Counter(b.tracker_value for b in bases if b is not None and b.tracker_value)
    return values.most_common(1)[0][0] if values else None


def _squash(value: str) -> str:
    return re.sub(r"[\s_\-]+", "", value).lower()


def _delivered(status: str | None, mapping: Mapping | None) -> bool:
    """Whether the status is a delivered one, by its tracker name or its CRM value."""
    if not status:
        return False
    names = {status}
    field = next((f for f in (mapping.fields if mapping else ()) if f.tracker == "status"), None)
    if field is not None:
        try:
            names.add(field.to_crm(status) or "")
        except UnmappedValue:
            pass  # a state the value table does not know yet: judged by its own name
    return any(_squash(name) in DELIVERED for name in names if name)


def is_won(deal: dict[str, Any]) -> bool:
    """A closed deal whose stage says it was won. Deal contexts keep the stage's name and
    whether it is open, not whether it was won, so the name decides."""
    if "is_won" in deal:  # a connector that knows it says so
        return bool(deal["is_won"])
    if deal.get("is_open", True):
        return False
    stage = _squash(deal.get("stage") or "")
    return any(word in stage for word in WON_WORDS)


#: the table's columns: header, how a row fills it, right-aligned; "Open/all deals" is the
#: open deals asking for the requirement over all its linked deals (won and lost included)
COLUMNS = (("Requirement", lambda r: r["key"], False),
           ("Open pipeline", lambda r: f"{r['open_pipeline']:,.0f}", True),
           ("Open/all deals", lambda r: f"{r['open_deals']}/{r['deals']}", True),
           ("Title", lambda r: r["title"] or "", False),
           ("Companies", lambda r: ", ".join(r["companies"]), False))
TITLE_CELLS = 40  # display cells: a Chinese character takes two


def format_report(rows: list[dict[str, Any]]) -> str:
    """The report as a plain-text table, columns aligned by display width (CJK characters take
    two cells; rich measures them), with no terminal codes, whatever the output is."""
    if not rows:
        return "no linked requirements yet"
    table = Table(box=None, pad_edge=False, show_edge=False, header_style=None)
    for header, _, right in COLUMNS:
        table.add_column(header, justify="right" if right else "left", no_wrap=True,
                         max_width=TITLE_CELLS if header == "Title" else None,
                         overflow="ellipsis")
    for row in rows:
        table.add_row(*(Text(cell(row)) for _, cell, _ in COLUMNS))
    out = io.StringIO()
    # Plain text at any width: no colours, no markup or emoji codes read in titles, no wrapping.
    console = Console(file=out, width=100_000, force_terminal=False, color_system=None,
                      highlight=False, markup=False, emoji=False, soft_wrap=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())
