"""The request grammar: what a sales rep's text on a deal asks dealsync to do.

- A key of the pair's tracker project (``SCR-12``; by default ``<PROJECT>-<number>``) links that
  requirement, wherever it stands in the text: alone on a line, or inside a sentence such as
  "Same as SCR-12, for the mobile app". ``ISO-9001`` is not a key of project SCR.
- A request that names at least one key creates nothing. Its other text is the deal's note to
  those requirements (shown in the deal-context block).
- A request that names no key asks for a new requirement: its first non-empty line is the
  title, the rest the description.
- Identical new requests share one requirement: titles are compared once case and whitespace
  are normalised (:func:`normalize_title`).

Everything here is pure: text in, a :class:`ParsedRequest` out. See ``docs/engine.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..context import clean

#: Used only when neither the mapping nor the tracker says what a key looks like.
GENERIC_KEY = r"[A-Z][A-Z0-9]*-\d+"


@dataclass(frozen=True)
class ParsedRequest:
    keys: tuple[str, ...]  # requirement keys named, in order of first mention, normalised
    title: str | None  # a new requirement's title; None when the request names a key
    body: str  # a new requirement's description (plain text)
    note: str  # for a request naming keys: its other text

    @property
    def creates(self) -> bool:
        return self.title is not None


class KeyPattern:
    """Finds requirement keys in free text.

    Built from the tracker project's prefix (``KeyPattern.for_prefix("SCR")``: case-insensitive,
    keys come back upper-case) or from a mapping's own regular expression (used as written).
    A key must stand as a word of its own: ``XSCR-1`` and ``SCR-12b`` are not keys.
    """

    def __init__(self, regex: str, *, ignore_case: bool = False):
        flags = re.IGNORECASE if ignore_case else 0
        self.regex = regex
        self._upper = ignore_case
        self._finder = re.compile(rf"(?<![\w-])(?:{regex})(?![\w-])", flags)

    @classmethod
    def for_prefix(cls, prefix: str) -> "KeyPattern":
        return cls(rf"{re.escape(prefix)}-\d+", ignore_case=True)

    def find(self, text: str) -> list[str]:
        found = [m.group(0) for m in self._finder.finditer(text)]
        if self._upper:
            found = [key.upper() for key in found]
        return list(dict.fromkeys(found))

    def strip(self, text: str) -> str:
        return self._finder.sub("", text)


def parse_request(text: str | None, pattern: KeyPattern) -> ParsedRequest:
    """Split what sales wrote into the keys it names, or the requirement it asks for. Control
    characters and direction overrides are dropped (``context.clean``)."""
    text = clean((text or "").replace("\r\n", "\n")).strip()
    keys = tuple(pattern.find(text))
    if keys:
        return ParsedRequest(keys, None, "", _note(text, pattern))
    lines = text.split("\n")
    title = lines[0].strip() if text else None
    return ParsedRequest((), title or None, "\n".join(lines[1:]).strip(), "")


def _note(text: str, pattern: KeyPattern) -> str:
    """The request without the lines that only list keys ("SCR-1", "SCR-1, SCR-2;")."""
    kept = [line for line in text.split("\n")
            if re.sub(r"[\s,;/&+]|\band\b", "", pattern.strip(line), flags=re.I)]
    return "\n".join(kept).strip()


def normalize_title(title: str) -> str:
    """The form in which two requests count as the same: case and whitespace ignored."""
    return " ".join(title.split()).casefold()


def request_text(text: str | None, pattern: KeyPattern) -> str | None:
    """What the deal-context block shows in its request column: the note of a request that
    names keys, or the whole of a request that asks for a new requirement."""
    parsed = parse_request(text, pattern)
    if parsed.creates:
        return (text or "").strip() or None
    return parsed.note or None
