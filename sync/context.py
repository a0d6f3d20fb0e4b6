"""The managed deal-context block that dealsync keeps inside a requirement's description.

The block sits between two HTML comments and is rewritten as a whole; text people wrote outside
the markers is never touched. Everything that comes from the CRM is HTML-escaped before it goes
in. The block also carries the identity marker of a requirement dealsync created, so the
requirement is found again even if the state store is lost.

Every word dealsync writes for people (the block, and the notes it leaves on deals) comes from
``WORDS``, one table per language a mapping may choose with ``[context] language``. The
markers are machine-read and never translated: a block written in one language is found, and
replaced whole, after the mapping switches to another.
"""

from __future__ import annotations

import html
import re
from typing import Any, Iterable

BEGIN = "<!-- dealsync:begin -->"
END = "<!-- dealsync:end -->"

#: A deal's request in the block is cut to this many characters: the block lists every deal
#: behind a requirement, and trackers limit a description's length (the full text stays on
#: the deal, and a created requirement's own description carries its requester's text). A
#: custom column's value is cut the same way.
REQUEST_CELL_MAX = 500

#: The columns every CRM connector fills from ``Deal.context`` (mapping ``[context] columns``
#: may add custom ones, each read from a deal property).
BUILTIN_COLUMNS = ("name", "company", "stage", "amount", "close_date", "owner", "request")

#: What dealsync writes for people, by language. The ``pipeline_*`` sentences are HTML around
#: ``{total}`` and ``{count}`` (which are escaped before they go in); the rest is plain text.
#: ``fields`` names a mirrored field in notes (a field not listed keeps the mapping's name).
WORDS: dict[str, dict[str, Any]] = {
    "en": {
        "heading": "Deals asking for this",
        "pipeline_none": "Open pipeline: <strong>{total}</strong> across 0 open deals",
        "pipeline_one": "Open pipeline: <strong>{total}</strong> across 1 open deal",
        "pipeline_many": "Open pipeline: <strong>{total}</strong> across {count} open deals",
        "columns": {"name": "Deal", "company": "Company", "stage": "Stage", "amount": "Amount",
                    "close_date": "Close date", "owner": "Owner", "request": "Request"},
        "gone": " (gone from the CRM)",
        "clipped": "{text} … (cut: the full text is on the deal)",
        "footer": "Kept up to date by dealsync; edits inside this block are replaced.",
        "note_changed": "dealsync: {key} {title}: {field} is now {tracker_value} ({crm_value})",
        "note_manual": "dealsync: {key} {title}: {field} {value} waits for a manual update in "
                       "the tracker",
        "fields": {},
    },
    "zh-CN": {
        "heading": "提出此需求的商机",
        "pipeline_none": "进行中商机金额合计：<strong>{total}</strong>，目前没有进行中的商机",
        "pipeline_one": "进行中商机金额合计：<strong>{total}</strong>，共 1 个进行中的商机",
        "pipeline_many": "进行中商机金额合计：<strong>{total}</strong>，共 {count} 个进行中的商机",
        "columns": {"name": "商机", "company": "客户", "stage": "阶段", "amount": "金额",
                    "close_date": "预计成交日期", "owner": "负责人", "request": "需求说明"},
        "gone": "（已从 CRM 中移除）",
        "clipped": "{text} …（内容过长已截断，完整内容见商机）",
        "footer": "本区块由 dealsync 自动维护；在区块内所做的修改会被替换。",
        "note_changed": "dealsync：{key} {title}：{field}已变为 {tracker_value}（{crm_value}）",
        "note_manual": "dealsync：{key} {title}：{field}需改为 {value}，等待有人在需求管理工具中"
                       "手动修改",
        "fields": {"status": "状态", "priority": "优先级", "delivery": "预计交付"},
    },
}
LANGUAGES = tuple(WORDS)
DEFAULT_LANGUAGE = "en"


def words(language: str = DEFAULT_LANGUAGE) -> dict[str, Any]:
    """The table of ``language`` (a mapping's language is checked when it is loaded)."""
    return WORDS[language]


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


def clip(text: str, limit: int, language: str = DEFAULT_LANGUAGE) -> str:
    """``text`` cut to ``limit`` characters, saying so in ``language``."""
    if len(text) <= limit:
        return text
    return words(language)["clipped"].format(text=text[:limit].rstrip())


def note(language: str, kind: str, field: str, **values: Any) -> str:
    """A note dealsync leaves on a deal: ``kind`` "changed" (a mirrored field moved) or
    "manual" (a change waits for a person in the tracker), with the field's name in
    ``language`` where the table has one."""
    table = words(language)
    return table[f"note_{kind}"].format(field=table["fields"].get(field, field), **values)


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


def _long_text(value: Any, language: str) -> str:
    text = clip(clean(str(value or "")), REQUEST_CELL_MAX, language)
    return html.escape(text).replace("\n", "<br>")


def _cell(deal: dict[str, Any], column: str, language: str) -> str:
    if column == "name":
        name = html.escape(clean(deal.get("name") or deal["id"]))
        url = deal.get("url")
        text = f'<a href="{html.escape(url, quote=True)}">{name}</a>' if url else name
        return text + (html.escape(words(language)["gone"]) if deal.get("orphaned") else "")
    if column == "amount":
        return html.escape(_money(deal.get("amount"), deal.get("currency")))
    if column == "request":
        return _long_text(deal.get("request"), language)
    if column not in BUILTIN_COLUMNS:  # a custom column: a deal property (mapping [context])
        return _long_text((deal.get("custom") or {}).get(column), language)
    return html.escape(clean(str(deal.get(column) or "")))


def column_title(column: str, language: str = DEFAULT_LANGUAGE,
                 titles: dict[str, str] | None = None) -> str:
    """A column's heading: the mapping's title, else the language's word, else its name."""
    return (titles or {}).get(column) or words(language)["columns"].get(column) or column


def render(deals: list[dict[str, Any]], columns: Iterable[str], markers: Iterable[str],
           language: str = DEFAULT_LANGUAGE, titles: dict[str, str] | None = None) -> str:
    """The block for a requirement asked for by ``deals`` (context dicts, see Deal.context; a
    custom column's value is under ``custom``), in ``language``, with the mapping's column
    ``titles`` where it gives them."""
    table = words(language)
    columns = list(columns)
    ordered = sorted(deals, key=lambda d: (-(d.get("amount") or 0.0), d["id"]))
    head = "".join(f"<th>{html.escape(column_title(c, language, titles))}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(d, c, language)}</td>" for c in columns)
                   + "</tr>" for d in ordered)
    count = sum(1 for d in ordered if d.get("is_open") and not d.get("orphaned"))
    sentence = table["pipeline_none" if count == 0 else "pipeline_one" if count == 1
                     else "pipeline_many"]
    pipeline = sentence.format(total=html.escape(pipeline_text(ordered)), count=count)
    marker_text = "".join(f'<p data-dealsync-marker="{html.escape(m, quote=True)}">'
                          f"<small>{html.escape(m)}</small></p>" for m in sorted(markers))
    return (f"{BEGIN}<h3>{html.escape(table['heading'])}</h3><p>{pipeline}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            f"{marker_text}<p><small>{html.escape(table['footer'])}</small></p>{END}")


def read_block(block: str) -> tuple[list[str], list[list[str]]]:
    """A rendered block as a person reads it, tags stripped: its paragraphs in order (the
    heading, the pipeline sentence, any markers, the footer) and its table rows (the header
    first), each cell as plain text. For a terminal, e.g. ``dealsync demo``."""
    paragraphs = [_plain(inner) for _tag, inner in
                  re.findall(r"<(h3|p)\b[^>]*>(.*?)</\1>", block, flags=re.S)]
    rows = [[_plain(cell) for cell in re.findall(r"<t[hd]>(.*?)</t[hd]>", row, flags=re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", block, flags=re.S)]
    return paragraphs, rows


def _plain(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment.replace("<br>", " "))).strip()
