"""Mapping files: which deals take part, where the request is, and how fields cross over.

A mapping is a TOML file, either shipped in ``mappings/`` (named without ``.toml``) or given as a
path. It is validated as a whole: every problem is reported with the file and the key.

Values are translated through value tables written tracker value -> CRM value (many tracker states
may share one CRM value); the reverse direction uses ``to_tracker`` where the table is not
one-to-one.
"""

from __future__ import annotations

import json
import re
import tomllib
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .context import BUILTIN_COLUMNS, DEFAULT_LANGUAGE, LANGUAGES
from .errors import ConfigError, ItemError

DIRECTIONS = ("both", "to_tracker", "to_crm", "on_create")
POLICIES = ("crm", "tracker", "newest", "ask")
CONTEXT_COLUMNS = BUILTIN_COLUMNS
#: a custom context column's name: a TOML bare key that reads as a word
COLUMN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class UnmappedValue(ItemError):
    """A value has no translation in the mapping's value table."""

    def __init__(self, message: str, hint: str):
        super().__init__(message, hint, retryable=False)


@dataclass(frozen=True)
class FieldMap:
    """One mirrored field: a CRM deal property and a tracker field, with direction and policy."""

    name: str
    crm: str
    tracker: str
    direction: str = "both"
    conflict: str = "tracker"
    values: dict[str, str] | None = None  # tracker value -> CRM value
    to_tracker_values: dict[str, str] | None = None  # CRM value -> tracker value (overrides)
    source: str = ""
    #: the tracker cannot write this field: CRM-side changes become manual updates (a person
    #: makes them in the tracker) instead of a configuration error
    manual: bool = False

    def to_crm(self, tracker_value: str | None) -> str | None:
        if tracker_value in (None, "") or self.values is None:
            return tracker_value or None
        if tracker_value in self.values:
            return self.values[tracker_value]
        raise UnmappedValue(
            f"tracker {self.tracker} {tracker_value!r} has no CRM value in {self.source}",
            f"add it under [fields.{self.name}.values] and run `dealsync check`")

    def to_tracker(self, crm_value: str | None) -> str | None:
        if crm_value in (None, "") or self.values is None:
            return crm_value or None
        if self.to_tracker_values and crm_value in self.to_tracker_values:
            return self.to_tracker_values[crm_value]
        matches = [t for t, c in self.values.items() if c == crm_value]
        if len(matches) == 1:
            return matches[0]
        raise UnmappedValue(
            f"CRM {self.crm} {crm_value!r} " + ("maps to several tracker values" if matches
                                                else "has no tracker value") + f" in {self.source}",
            f"add {crm_value!r} under [fields.{self.name}.to_tracker]")

    def same(self, crm_value: str | None, tracker_value: str | None) -> bool:
        """True if the two sides show the same thing, compared in the CRM's terms."""
        return (crm_value or None) == self.to_crm(tracker_value)

    @property
    def reads_crm(self) -> bool:
        return self.direction in ("both", "to_tracker", "on_create")


@dataclass(frozen=True)
class Mapping:
    source: str
    request_field: str
    #: a regular expression for requirement keys; None: ``<PROJECT>-<n>`` from the tracker
    key_pattern: str | None = None
    where: dict[str, list[str]] = field(default_factory=dict)
    fields: tuple[FieldMap, ...] = ()
    key_field: str | None = None
    url_field: str | None = None
    context_columns: tuple[str, ...] = CONTEXT_COLUMNS
    #: the language of what dealsync writes for people: the block and deal notes (``WORDS``)
    context_language: str = DEFAULT_LANGUAGE
    #: column -> the title the mapping gives it (every custom column has one)
    context_titles: dict[str, str] = field(default_factory=dict)
    #: custom column -> the CRM deal property it shows, in column order
    context_properties: dict[str, str] = field(default_factory=dict)
    note_fields: tuple[str, ...] = ()  # mirrored fields whose changes also leave a deal note
    note_manual_updates: bool = False  # a deal note when its change awaits a manual update
    description: str = ""

    def crm_properties(self) -> list[str]:
        """Every deal property the engine needs to read."""
        names = [self.request_field, *self.where, *(f.crm for f in self.fields)]
        names += [n for n in (self.key_field, self.url_field) if n]
        names += self.context_properties.values()
        return list(dict.fromkeys(names))

    def context_fingerprint(self) -> int:
        """A number that changes when what the block shows or how it words it changes
        (columns, titles, properties, language): every block is then rewritten once."""
        settings = [self.context_language, self.context_columns,
                    sorted(self.context_titles.items()), sorted(self.context_properties.items())]
        return zlib.crc32(json.dumps(settings, ensure_ascii=False).encode("utf-8")) or 1

    def context_values(self, fields: dict[str, str | None]) -> dict[str, str | None]:
        """The custom columns' values of a deal with these ``fields``, by column."""
        return {column: fields.get(name) for column, name in self.context_properties.items()}

    def crm_schema(self) -> dict[str, list[str] | None]:
        """The deal properties dealsync reads or writes: name -> the options an enumeration
        needs (from the value table), or None for text (``dealsync check --fix`` creates them)."""
        schema: dict[str, list[str] | None] = {
            f.crm: sorted(set(f.values.values())) if f.values else None for f in self.fields}
        for name in (self.request_field, self.key_field, self.url_field,
                     *self.context_properties.values()):
            if name:
                schema.setdefault(name, None)
        return schema

    def synced_fields(self) -> tuple[FieldMap, ...]:
        return tuple(f for f in self.fields if f.direction != "on_create")

    def selects(self, fields: dict[str, str | None]) -> bool:
        """Does a deal with these values take part (a request, and every ``where`` matches)?"""
        if not (fields.get(self.request_field) or "").strip():
            return False
        return all((fields.get(name) or "") in allowed for name, allowed in self.where.items())

    def coverage_problems(self, tracker_values: dict[str, list[str] | None],
                          crm_options: dict[str, list[str] | None]) -> list[str]:
        """Value-table gaps against live values: tracker states and priorities with no CRM value,
        and CRM values the CRM's enumeration does not offer."""
        problems = []
        for fm in self.fields:
            if fm.values is None:
                continue
            for value in tracker_values.get(fm.tracker) or []:
                if value not in fm.values:
                    problems.append(f"{self.source}: fields.{fm.name}.values: misses tracker "
                                    f"{fm.tracker} {value!r}")
            options = crm_options.get(fm.crm)
            if options is not None:
                for value in sorted(set(fm.values.values()) - set(options)):
                    problems.append(f"{self.source}: fields.{fm.name}.values: CRM property "
                                    f"{fm.crm!r} has no option {value!r}")
        return problems


def resolve_path(ref: str, base_dir: Path | None = None) -> Path:
    """A shipped mapping name (``hubspot-pingcode``) or a path, relative to ``base_dir``."""
    if "/" not in ref and "\\" not in ref and not ref.endswith(".toml"):
        return Path(str(resources.files("mappings").joinpath(f"{ref}.toml")))
    path = Path(ref).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def shipped_mappings() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("mappings").iterdir()
                  if p.name.endswith(".toml"))


def load_mapping(ref: str, base_dir: Path | None = None) -> Mapping:
    path = resolve_path(ref, base_dir)
    if not path.is_file():
        raise ConfigError([f"mapping {ref!r}: no such file {path} (shipped: "
                           f"{', '.join(shipped_mappings()) or 'none'})"])
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_mapping(data, str(path))


def parse_mapping(data: dict[str, Any], source: str) -> Mapping:
    """Build a Mapping, collecting every problem before raising one ConfigError."""
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(f"{source}: {key}: {message}")

    known = {"mapping", "select", "request", "link", "fields", "context", "notes"}
    for key in sorted(set(data) - known):
        bad(key, f"unknown section (known: {', '.join(sorted(known))})")

    request = _table(data, "request", bad)
    request_field = request.get("field")
    if not isinstance(request_field, str) or not request_field:
        bad("request.field", "required: the deal property where sales writes the request")
        request_field = ""
    key_pattern = request.get("key_pattern")
    if key_pattern is not None:
        try:
            re.compile(key_pattern)
        except (re.error, TypeError) as exc:
            bad("request.key_pattern", f"not a valid regular expression: {exc}")
            key_pattern = None

    where: dict[str, list[str]] = {}
    for name, allowed in _table(_table(data, "select", bad), "where", bad, "select.").items():
        values = [allowed] if isinstance(allowed, str) else allowed
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            bad(f"select.where.{name}", "must be a string or a list of strings")
            continue
        where[name] = values

    fields = []
    for name, spec in _table(data, "fields", bad).items():
        parsed = _parse_field(name, spec, source, bad)
        if parsed is not None:
            fields.append(parsed)
    crm_names = [f.crm for f in fields]
    for dup in sorted({n for n in crm_names if crm_names.count(n) > 1}):
        bad("fields", f"CRM property {dup!r} is mapped twice")

    link = _table(data, "link", bad)
    columns, language, titles, properties = _parse_context(_table(data, "context", bad), bad)

    notes_table = _table(data, "notes", bad)
    notes = notes_table.get("fields", [])
    names = {f.name for f in fields}
    if not isinstance(notes, list) or any(n not in names for n in notes):
        bad("notes.fields", f"must list mirrored fields (defined: {', '.join(sorted(names))})")
        notes = []
    note_manual = notes_table.get("manual_updates", False)
    if not isinstance(note_manual, bool):
        bad("notes.manual_updates", "must be true or false")
    for extra in sorted(set(notes_table) - {"fields", "manual_updates"}):
        bad(f"notes.{extra}", "unknown key (known: fields, manual_updates)")

    if problems:
        raise ConfigError(problems)
    return Mapping(
        source=source, request_field=request_field, key_pattern=key_pattern, where=where,
        fields=tuple(fields), key_field=link.get("key_field"), url_field=link.get("url_field"),
        context_columns=tuple(columns), context_language=language, context_titles=titles,
        context_properties=properties, note_fields=tuple(notes),
        note_manual_updates=note_manual is True, description=str(_table(data, "mapping", bad).get("description", "")))


def _parse_context(context: dict[str, Any], bad: Any
                   ) -> tuple[list[str], str, dict[str, str], dict[str, str]]:
    """``[context]``: the block's columns (built-in, or custom: a deal property with a title
    under ``[context.titles]``, read from ``[context.properties]`` or the property of the
    column's name), its language, and the titles and properties by column."""
    for extra in sorted(set(context) - {"columns", "language", "titles", "properties"}):
        bad(f"context.{extra}", "unknown key (known: columns, language, titles, properties)")
    language = context.get("language", DEFAULT_LANGUAGE)
    if language not in LANGUAGES:
        bad("context.language", f"{language!r} is not one of {', '.join(LANGUAGES)}")
        language = DEFAULT_LANGUAGE
    titles = _table(context, "titles", bad, "context.")
    properties = _table(context, "properties", bad, "context.")
    columns = context.get("columns", list(CONTEXT_COLUMNS))
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        bad("context.columns", f"must be a list of column names (built in: "
            f"{', '.join(CONTEXT_COLUMNS)}; or custom ones, each with a title under "
            "[context.titles])")
        columns = list(CONTEXT_COLUMNS)
    for dup in sorted({c for c in columns if columns.count(c) > 1}):
        bad("context.columns", f"{dup!r} is listed twice")
    custom = [c for c in dict.fromkeys(columns) if c not in CONTEXT_COLUMNS]
    for column in custom:
        if not COLUMN_NAME.fullmatch(column):
            bad("context.columns", f"{column!r} is not a column name (letters, digits, _)")
        elif column not in titles:
            bad("context.columns", f"{column!r} is not a built-in column "
                f"({', '.join(CONTEXT_COLUMNS)}); a custom column showing a deal property "
                f"needs a title: add {column} = \"...\" under [context.titles]")
    for column, title in titles.items():
        if column not in columns:
            bad(f"context.titles.{column}", "not a column of context.columns")
        elif not isinstance(title, str) or not title.strip():
            bad(f"context.titles.{column}", "must be a non-empty string")
    for column, name in properties.items():
        if column in CONTEXT_COLUMNS:
            bad(f"context.properties.{column}", "a built-in column: it shows the deal itself, "
                "not a property")
        elif column not in columns:
            bad(f"context.properties.{column}", "not a column of context.columns")
        elif not isinstance(name, str) or not name:
            bad(f"context.properties.{column}", "must be a CRM deal property name")
    shown = {column: properties.get(column) or column for column in custom}
    return (list(dict.fromkeys(columns)), language,
            {c: t for c, t in titles.items() if isinstance(t, str) and t.strip()},
            {c: p for c, p in shown.items() if isinstance(p, str)})


def _table(data: dict[str, Any], key: str, bad: Any, prefix: str = "") -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        bad(prefix + key, "must be a table")
        return {}
    return value


def _parse_field(name: str, spec: Any, source: str, bad: Any) -> FieldMap | None:
    key = f"fields.{name}"
    if not isinstance(spec, dict):
        bad(key, "must be a table with crm, tracker, direction")
        return None
    ok = True
    for attr in ("crm", "tracker"):
        if not isinstance(spec.get(attr), str) or not spec.get(attr):
            bad(f"{key}.{attr}", "required: a field name")
            ok = False
    direction = spec.get("direction", "both")
    if direction not in DIRECTIONS:
        bad(f"{key}.direction", f"{direction!r} is not one of {', '.join(DIRECTIONS)}")
        ok = False
    conflict = spec.get("conflict", "tracker")
    if conflict not in POLICIES:
        bad(f"{key}.conflict", f"{conflict!r} is not one of {', '.join(POLICIES)}")
        ok = False
    values = spec.get("values")
    to_tracker = spec.get("to_tracker")
    for attr, table in (("values", values), ("to_tracker", to_tracker)):
        if table is not None and (not isinstance(table, dict) or
                                  not all(isinstance(v, str) for v in table.values())):
            bad(f"{key}.{attr}", "must be a table of strings")
            ok = False
    manual = spec.get("manual", False)
    if not isinstance(manual, bool):
        bad(f"{key}.manual", "must be true or false")
        ok = False
    unknown = set(spec) - {"crm", "tracker", "direction", "conflict", "values", "to_tracker",
                           "manual"}
    for extra in sorted(unknown):
        bad(f"{key}.{extra}", "unknown key")
        ok = False
    if ok and values is not None and direction in ("both", "to_tracker", "on_create"):
        ok = _check_reversible(key, values, to_tracker or {}, bad)
    if ok and to_tracker:
        for crm_value, tracker_value in to_tracker.items():
            if values is not None and tracker_value not in values:
                bad(f"{key}.to_tracker.{crm_value}", f"{tracker_value!r} is not a key of values")
                ok = False
    if not ok:
        return None
    return FieldMap(name=name, crm=spec["crm"], tracker=spec["tracker"], direction=direction,
                    conflict=conflict, values=values, to_tracker_values=to_tracker, source=source,
                    manual=manual)


def _check_reversible(key: str, values: dict[str, str], to_tracker: dict[str, str],
                      bad: Any) -> bool:
    """CRM -> tracker needs one tracker value per CRM value; name it where several share one."""
    ok = True
    by_crm: dict[str, list[str]] = {}
    for tracker_value, crm_value in values.items():
        by_crm.setdefault(crm_value, []).append(tracker_value)
    for crm_value, trackers in by_crm.items():
        if len(trackers) > 1 and crm_value not in to_tracker:
            bad(f"{key}.to_tracker", f"CRM value {crm_value!r} comes from {', '.join(trackers)}: "
                "say which one it sets in the tracker")
            ok = False
    return ok
