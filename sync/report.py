"""``dealsync report``: requirements ranked by the open pipeline asking for them.

Built from the state store alone (links and the deal context last written into each
requirement), so it costs no API call and shows what the last sync saw.
"""

from __future__ import annotations

from typing import Any

from .state import StateStore


def pipeline_report(store: StateStore, pairs: list[str]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name in pairs:
        contexts = store.deal_contexts(name)
        for link in store.links(name):
            if link.orphaned:
                continue
            row = rows.setdefault((name, link.req_id), {
                "pair": name, "key": link.req_key, "title": link.req_title, "url": link.req_url,
                "open_pipeline": 0.0, "open_deals": 0, "deals": 0, "companies": []})
            deal = contexts.get(link.deal_id, {})
            row["deals"] += 1
            if deal.get("is_open"):
                row["open_deals"] += 1
                row["open_pipeline"] += deal.get("amount") or 0.0
            if deal.get("company") and deal["company"] not in row["companies"]:
                row["companies"].append(deal["company"])
    return sorted(rows.values(), key=lambda r: (-r["open_pipeline"], r["key"]))


def format_report(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no linked requirements yet"
    lines = [f"{'Requirement':<10} {'Open pipeline':>14} {'Deals':>6}  {'Title':<40} Companies"]
    for r in rows:
        title = (r["title"] or "")[:40]
        lines.append(f"{r['key']:<10} {r['open_pipeline']:>14,.0f} {r['open_deals']:>3}/"
                     f"{r['deals']:<2}  {title:<40} {', '.join(r['companies'])}")
    return "\n".join(lines)
