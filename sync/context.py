"""The managed deal-context block that dealsync keeps inside a requirement's description.

The block sits between two HTML comments and is rewritten as a whole; text people wrote outside
the markers is never touched. Everything that comes from the CRM is HTML-escaped before it goes
in. The block also carries the identity marker of a requirement dealsync created, so the
requirement is found again even if the state store is lost.
"""

from __future__ import annotations

import html
import re
from typing import Any, Iterable

BEGIN = "<!-- dealsync:begin -->"
END = "<!-- dealsync:end -->"

#: A deal's request in the block is cut to this many characters: the block lists every deal
#: behind a requirement, and trackers limit a description's length (the full text stays on
#: the deal, and a created requirement's own description carries its requester's text).
REQUEST_CELL_MAX = 500

COLUMN_TITLES = {"name": "Deal", "company": "Company", "stage": "Stage", "amount": "Amount",
                 "close_date": "Close date", "owner": "Owner", "request": "Request"}


def _span(description: str) -> tuple[int, int] | None:
    """Where the managed block is: from the last begin marker before the last end marker.

    dealsync appends its block after what people wrote, so the last block is its own. Marker
    text a person typed or pasted above it (a block copied from another requirement, a stray
    begin marker) is theirs and is left alone."""
    end = description.rfind(END)
    if end < 0:
        return None
    begin = description.rfind(BEGIN, 0, end)
    return (begin, end + len(END)) if begin >= 0 else None


def extract(description: str) -> str | None:
    """The current managed block (markers included), or None if there is none."""
    span = _span(description or "")
    return description[span[0]:span[1]] if span else None


def splice(description: str, block: str) -> str:
    """Replace the managed block, or append it after what people wrote."""
    description = description or ""
    span = _span(description)
    if span:
        return description[:span[0]] + block + description[span[1]:]
    return f"{description}\n{block}" if description.strip() else block


# Control characters (but tab and newline), bidirectional overrides and isolates (which can
# make a title read differently from what it says), and lone surrogates (not text at all):
# nothing a person meant to send to the other side.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def clean(text: str) -> str:
    """``text`` without the characters above; everything else (CJK, emoji) as it was."""
    return _UNSAFE.sub("", text)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying so."""
    return text if len(text) <= limit else text[:limit].rstrip() + " … (cut: the full text is on " \
        "the deal)"


def pipeline_text(deals: list[dict[str, Any]]) -> str:
    """The open pipeline, one sum per currency: amounts in different currencies are never
    added together ("120,000 USD + 800,000 CNY"); amounts with no currency sum on their own."""
    sums: dict[str, float] = {}
    for deal in deals:
        if deal.get("is_open") and not deal.get("orphaned"):
            currency = deal.get("currency") or ""
            sums[currency] = sums.get(currency, 0.0) + (deal.get("amount") or 0.0)
    return " + ".join(_money(amount, currency or None)
                      for currency, amount in sorted(sums.items())) or "0"


def _money(amount: float | None, currency: str | None = None) -> str:
    if amount is None:
        return ""
    text = f"{amount:,.0f}" if float(amount).is_integer() else f"{amount:,.2f}"
    return f"{text} {currency}" if currency else text


def _cell(deal: dict[str, Any], column: str) -> str:
    if column == "name":
        name = html.escape(clean(deal.get("name") or deal["id"]))
        url = deal.get("url")
        text = f'<a href="{html.escape(url, quote=True)}">{name}</a>' if url else name
        return text + (" (gone from the CRM)" if deal.get("orphaned") else "")
    if column == "amount":
        return html.escape(_money(deal.get("amount"), deal.get("currency")))
    if column == "request":
        text = clip(clean(deal.get("request") or ""), REQUEST_CELL_MAX)
        return html.escape(text).replace("\n", "<br>")
    return html.escape(clean(str(deal.get(column) or "")))


def render(deals: list[dict[str, Any]], columns: Iterable[str], markers: Iterable[str]) -> str:
    """The block for a requirement asked for by ``deals`` (context dicts, see Deal.context)."""
    columns = list(columns)
    ordered = sorted(deals, key=lambda d: (-(d.get("amount") or 0.0), d["id"]))
    head = "".join(f"<th>{COLUMN_TITLES[c]}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(d, c)}</td>" for c in columns) + "</tr>"
                   for d in ordered)
    total = pipeline_text(ordered)
    count = sum(1 for d in ordered if d.get("is_open") and not d.get("orphaned"))
    marker_text = "".join(f'<p data-dealsync-marker="{html.escape(m, quote=True)}">'
                          f"<small>{html.escape(m)}</small></p>" for m in sorted(markers))
    return (f"{BEGIN}<h3>Deals asking for this</h3>"
            f"<p>Open pipeline: <strong>{html.escape(total)}</strong> "
            f"across {count} open deal{'s' if count != 1 else ''}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            f"{marker_text}<p><small>Kept up to date by dealsync; edits inside this block are "
            f"replaced.</small></p>{END}")
