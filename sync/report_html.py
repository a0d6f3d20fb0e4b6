"""The pipeline report as one self-contained HTML page (``dealsync report --format html``).

Everything is inline: the style, an SVG bar chart and a small script that sorts the table, so
the page opens from a file or an attachment with no server and no network. Its Content Security
Policy admits only that style and script (by hash) and fetches nothing, so a value that got past
escaping still could not run or call out. Every value from the CRM or the tracker is escaped.
The rows come from ``sync.report.pipeline_report``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import unicodedata
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

FONTS = ('system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, '
         '"Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Hiragino Sans GB", '
         '"Microsoft YaHei", "WenQuanYi Micro Hei", sans-serif')

STYLE = """
body { font-family: %s; margin: 2rem auto; max-width: 78rem; padding: 0 1rem;
       color: #1d2330; background: #fff; line-height: 1.45; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.1rem; margin: 2rem 0 .5rem; }
.meta, .muted { color: #5b6475; }
.summary { display: flex; flex-wrap: wrap; gap: 1rem; margin: 1rem 0; padding: 0; }
.summary li { list-style: none; border: 1px solid #dde2ea; border-radius: 6px;
              padding: .5rem .9rem; }
.summary b { display: block; font-size: 1.25rem; }
.chart { width: 100%%; max-width: 980px; height: auto; }
.chart text { font-family: inherit; font-size: 12px; fill: #1d2330; }
.chart .value { fill: #5b6475; }
.chart .bar { fill: #2f6fdf; }
.chart .bar:hover { fill: #1b4fae; }
table { border-collapse: collapse; width: 100%%; font-size: .9rem; }
th, td { border-bottom: 1px solid #e5e8ef; padding: .45rem .5rem; text-align: left;
         vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.req { min-width: 12rem; }
td.tag { white-space: nowrap; }
td.delivery { white-space: nowrap; }  /* "v2.3 (2025-03-31)" reads as one */
td.companies { min-width: 10rem; max-width: 22rem; }
th { background: #f4f6fa; position: sticky; top: 0; }
th button { font: inherit; font-weight: 600; color: inherit; background: none; border: 0;
            padding: 0; cursor: pointer; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
td .sub { display: block; color: #5b6475; font-size: .8rem; }
a { color: #1b4fae; }
.notes li { margin-bottom: .35rem; }
""" % FONTS

# Sorts on the data-value of each cell; empty cells stay last whichever way the column goes.
SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("requirements");
  if (!table) { return; }
  var collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function compare(type, a, b) {
    return type === "num" ? Number(a) - Number(b) : collator.compare(a, b);
  }
  function sortBy(th) {
    var index = headers.indexOf(th), type = th.getAttribute("data-type");
    var current = th.getAttribute("aria-sort");
    var first = type === "num" ? "descending" : "ascending";
    var order = current ? (current === "ascending" ? "descending" : "ascending") : first;
    var sign = order === "ascending" ? 1 : -1;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (x, y) {
      var a = x.cells[index].getAttribute("data-value") || "";
      var b = y.cells[index].getAttribute("data-value") || "";
      if (a === "" || b === "") { return (a === "") - (b === ""); }
      return sign * compare(type, a, b);
    });
    rows.forEach(function (row) { body.appendChild(row); });
    headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", order);
  }
  headers.forEach(function (th) {
    if (th.hasAttribute("data-type")) {
      th.addEventListener("click", function () { sortBy(th); });
    }
  });
})();
"""

# (title, sort type, cell class): the table's columns, in order
COLUMNS = (
    ("#", "num", "num"), ("Requirement", "text", "req"), ("Status", "text", "tag"),
    ("Priority", "text", "tag"), ("Delivery", "text", "delivery"), ("Deals", "num", "num"),
    ("Companies", "num", "companies"), ("Open pipeline", "num", "num"),
    ("Won, not delivered", "num", "num"), ("Earliest close", "text", "num"),
)
SORTED_BY = "Open pipeline"  # the order pipeline_report returns
MISSING = '<span class="muted">–</span>'  # a value nobody has given yet

NOTES = (
    "<b>Open pipeline</b>: the amounts of the linked deals that were open in the CRM at the "
    "last sync (open as the CRM's stage says). Amounts are added as stored, whatever their "
    "currency.",
    "<b>Won, not delivered</b>: the amounts of closed deals whose stage name says won (such "
    "as “Closed Won”) linked to a requirement whose status is not a delivered one (shipped, "
    "done, delivered, released, 已完成, 已发布, by the tracker's name or the CRM value the "
    "mapping gives it). A requirement with no known status counts as not delivered.",
    "<b>Earliest close</b>: the earliest close date among the requirement's open deals.",
    "<b>Status, priority and delivery</b>: the tracker values dealsync last mirrored onto the "
    "deals (the base values in its state store), not read live; – where the mapping mirrors "
    "no such field or nothing has been mirrored yet.",
    "<b>Deals and companies</b>: every linked deal, open or closed; a deal whose CRM record "
    "or requirement is gone is left out. A deal asking for several requirements counts in each, "
    "so the totals above can count it more than once.",
)


def render_html(rows: list[dict[str, Any]], pairs: list[str] | None = None,
                generated: datetime | None = None) -> str:
    """The whole page for ``rows`` (ranked as given)."""
    generated = generated or datetime.now(timezone.utc)
    body = "\n".join([
        "<h1>Requirements by open pipeline</h1>",
        f'<p class="meta">{_meta(pairs or [], generated)}</p>',
        _summary(rows),
        "<h2>Open pipeline by requirement</h2>",
        _chart(rows) if rows else '<p class="muted">No linked requirements yet: run '
                                  '<code>dealsync sync</code> first.</p>',
        "<h2>Requirements</h2>",
        '<p class="muted">Click a column header to sort; click it again to reverse.</p>',
        _table(rows),
        "<h2>How the figures are computed</h2>",
        '<ul class="notes">' + "".join(f"<li>{note}</li>" for note in NOTES) + "</ul>",
    ])
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{_policy()}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>dealsync: requirements by open pipeline</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")


def _policy() -> str:
    """Nothing from anywhere; only this page's own style and script, named by their hash."""
    return (f"default-src 'none'; style-src '{_hash(STYLE)}'; script-src '{_hash(SCRIPT)}'; "
            "img-src data:; base-uri 'none'; form-action 'none'")


def _hash(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def esc(value: Any) -> str:
    """Text for an HTML element or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _money(value: float) -> str:
    return f"{value:,.0f}"


def _meta(pairs: list[str], generated: datetime) -> str:
    stamp = generated.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    which = f" · pairs: {esc(', '.join(pairs))}" if pairs else ""
    return f"From dealsync's state store, as of the last sync · generated {stamp}{which}"


def _summary(rows: list[dict[str, Any]]) -> str:
    facts = (("requirements", str(len(rows))),
             ("open pipeline", _money(sum(r["open_pipeline"] for r in rows))),
             ("won, not delivered", _money(sum(r["won_waiting"] for r in rows))))
    return '<ul class="summary">' + "".join(
        f"<li><b>{value}</b>{label}</li>" for label, value in facts) + "</ul>"


# -- the chart: one horizontal bar per requirement ------------------------------------------------
LABEL_W, BAR_W, VALUE_W, ROW_H, BAR_H = 320, 540, 110, 26, 16


def _chart(rows: list[dict[str, Any]]) -> str:
    top = max((r["open_pipeline"] for r in rows), default=0.0) or 1.0
    width, height = LABEL_W + BAR_W + VALUE_W, ROW_H * len(rows) + 8
    bars = [_bar(i, row, top) for i, row in enumerate(rows)]
    return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'aria-label="Open pipeline by requirement">\n' + "\n".join(bars) + "\n</svg>")


def _bar(index: int, row: dict[str, Any], top: float) -> str:
    y = 4 + index * ROW_H
    length = round(BAR_W * row["open_pipeline"] / top, 1)
    label = f"{row['key']} {clip(row['title'] or '', 34)}"
    text_y = y + BAR_H - 4
    return (f'<g><title>{esc(row["key"])} {esc(row["title"])}: open pipeline '
            f'{_money(row["open_pipeline"])}</title>'
            f'<text x="{LABEL_W - 8}" y="{text_y}" text-anchor="end">{esc(label)}</text>'
            f'<rect class="bar" data-key="{esc(row["key"])}" x="{LABEL_W}" y="{y}" '
            f'width="{length}" height="{BAR_H}" rx="2"></rect>'
            f'<text class="value" x="{LABEL_W + length + 6}" y="{text_y}">'
            f'{_money(row["open_pipeline"])}</text></g>')


def clip(text: str, cells: int) -> str:
    """At most ``cells`` columns of text, a CJK character counting two, with … if cut."""
    used, out = 0, []
    for char in text:
        used += 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if used > cells:
            return "".join(out).rstrip() + "…"
        out.append(char)
    return text


# -- the table ------------------------------------------------------------------------------------
def _table(rows: list[dict[str, Any]]) -> str:
    head = "".join(
        f'<th scope="col" data-type="{kind}"'
        + (f' class="{cls}"' if cls else "")
        + (' aria-sort="descending"' if title == SORTED_BY else "")
        + f'><button type="button">{esc(title)}</button></th>'
        for title, kind, cls in COLUMNS)
    several_pairs = len({row["pair"] for row in rows}) > 1
    body = "\n".join(_row(rank, row, several_pairs) for rank, row in enumerate(rows, 1))
    return (f'<table id="requirements">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n</table>")


def _row(rank: int, row: dict[str, Any], show_pair: bool) -> str:
    companies = ", ".join(row["companies"])
    cells = [
        _cell(rank, str(rank), "num"),
        _cell(row["key"], _requirement(row, show_pair), "req"),
        _text_cell(row["status"], "tag"),
        _text_cell(row["priority"], "tag"),
        _text_cell(row["delivery"], "delivery"),
        _cell(row["deals"], f'{row["deals"]}<span class="sub">{row["open_deals"]} open</span>',
              "num"),
        _cell(len(row["companies"]), esc(companies) or MISSING, "companies"),
        _cell(row["open_pipeline"], _money(row["open_pipeline"]), "num"),
        _cell(row["won_waiting"], _won_waiting(row), "num"),
        _text_cell(row["earliest_close"], "num"),
    ]
    return f'<tr data-key="{esc(row["key"])}">' + "".join(cells) + "</tr>"


def _requirement(row: dict[str, Any], show_pair: bool) -> str:
    pair = f'<span class="sub">pair {esc(row["pair"])}</span>' if show_pair else ""
    return f'{_link(row["key"], row["url"])}<span class="sub">{esc(row["title"])}</span>{pair}'


def _won_waiting(row: dict[str, Any]) -> str:
    count = row["won_waiting_deals"]
    deals = f'<span class="sub">{count} won deal{"" if count == 1 else "s"}</span>'
    return _money(row["won_waiting"]) + (deals if count else "")


def _cell(value: Any, content: str, cls: str = "") -> str:
    """A cell showing ``content`` (already escaped) and sorting on ``value``."""
    klass = f' class="{cls}"' if cls else ""
    return f'<td{klass} data-value="{esc(value)}">{content}</td>'


def _text_cell(value: str | None, cls: str = "") -> str:
    return _cell(value or "", esc(value) if value else MISSING, cls)


def _link(text: str, url: str | None) -> str:
    """A link only to a web address: a stored ``javascript:`` URL stays plain text."""
    try:
        web = bool(url) and urlsplit(url).scheme.lower() in ("http", "https")
    except ValueError:  # not a URL at all
        web = False
    if web:
        return f'<a href="{esc(url)}" target="_blank" rel="noopener noreferrer">{esc(text)}</a>'
    return f"<b>{esc(text)}</b>"
