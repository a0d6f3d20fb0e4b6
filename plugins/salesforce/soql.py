"""The SOQL subset the Salesforce emulator answers: parsing, type checks and evaluation.

Grammar (docs/salesforce.md §4)::

    SELECT path [, path]* FROM object
      [WHERE cond [AND cond]*]
      [ORDER BY path [ASC|DESC] [NULLS FIRST|LAST] [, ...]]
      [LIMIT n]
    cond := path (= | != | <> | < | <= | > | >=) literal | path [NOT] IN (literal [, literal]*)
    path := Field | Relationship.Field (any depth)

Literals are quoted strings, numbers, TRUE/FALSE/NULL and *unquoted* date (``2025-01-31``) and
datetime (``2025-01-31T08:00:00Z``, ``…+02:00``, optional milliseconds) literals. Keywords and
field names are case-insensitive, string comparisons too. Anything else (OR, NOT, sub-queries,
aggregates, date functions, OFFSET) is refused with ``MALFORMED_QUERY``: real SOQL accepts some of
it, so the message says the emulator does not.

This module knows nothing about HTTP or storage: the emulator hands it the object schemas
(``Table``) and a ``lookup`` for relationship hops, and gets rows back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Callable

STRING_TYPES = {"id", "reference", "string", "picklist", "combobox", "textarea", "url", "email",
                "phone"}
NUMBER_TYPES = {"currency", "percent", "double", "int"}
# The type word Salesforce's INVALID_FIELD message uses for each literal kind.
SOAP_WORD = {"number": "double", "date": "date", "datetime": "dateTime", "boolean": "boolean",
             "string": "string"}
COMPARISONS = {"=", "!=", "<", "<=", ">", ">="}


class SoqlError(Exception):
    """A query Salesforce refuses: ``code`` is the errorCode of the 400 reply."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --- schema --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    name: str  # canonical API name
    type: str  # describe type: id, string, picklist, currency, date, datetime, boolean, ...


@dataclass
class Table:
    """One queryable sObject: its columns and its lookup relationships (``Account`` via
    ``AccountId``), both keyed by lower-case name because SOQL ignores case."""

    name: str
    columns: dict[str, Column] = field(default_factory=dict)
    relationships: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def add(self, name: str, type: str, relationship: tuple[str, str] | None = None) -> None:
        """``relationship`` is (relationship name, target object) for a reference column."""
        self.columns[name.lower()] = Column(name, type)
        if relationship is not None:
            self.relationships[relationship[0].lower()] = (relationship[0], name, relationship[1])


@dataclass(frozen=True)
class Path:
    """A resolved field path: the relationship hops (name, foreign-key column, target object) and
    the column read at the end."""

    hops: tuple[tuple[str, str, str], ...]
    column: Column

    @property
    def label(self) -> str:
        return ".".join([hop[0] for hop in self.hops] + [self.column.name])


Lookup = Callable[[str, Any], "dict[str, Any] | None"]  # (object name, id) -> row or None


def read(path: Path, row: dict[str, Any] | None, lookup: Lookup) -> Any:
    for _, fk, target in path.hops:
        if row is None:
            return None
        row = lookup(target, row.get(fk))
    return None if row is None else row.get(path.column.name)


# --- tokens --------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<baddate>\d{4}-\d{2}-\d{2}T[\w:.+-]*)
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<number>[+-]?\d+(?:\.\d+)?)
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    column: int  # 1-based, as Salesforce reports it

    def is_word(self, *words: str) -> bool:
        return self.kind == "ident" and self.text.upper() in words


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup == "baddate":
            raise _malformed(text, pos + 1, text[pos:].split(None, 1)[0])
        if match.lastgroup != "space":
            tokens.append(Token(match.lastgroup or "", match.group(), pos + 1))
        pos = match.end()
    return tokens


def _malformed(text: str, column: int, near: str, why: str = "unexpected token") -> SoqlError:
    # Salesforce echoes the statement with a caret line and "ERROR at Row:1:Column:n".
    return SoqlError("MALFORMED_QUERY", f"\n{text}\n{' ' * (column - 1)}^\n"
                                        f"ERROR at Row:1:Column:{column}\n{why}: {near}")


# --- syntax --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Literal:
    kind: str  # string | number | date | datetime | boolean | null
    value: Any


@dataclass(frozen=True)
class Condition:
    field: str
    op: str  # = != < <= > >= IN NOT IN
    value: Literal | tuple[Literal, ...]


@dataclass(frozen=True)
class Order:
    field: str
    descending: bool
    nulls_last: bool


@dataclass(frozen=True)
class Statement:
    fields: tuple[str, ...]
    sobject: str
    where: tuple[Condition, ...]
    order: tuple[Order, ...]
    limit: int | None


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise _malformed(self.text, len(self.text) + 1, "<EOF>")
        self.i += 1
        return token

    def word(self, *words: str) -> bool:
        token = self.peek()
        if token is not None and token.is_word(*words):
            self.i += 1
            return True
        return False

    def expect_word(self, word: str) -> None:
        token = self.take()
        if not token.is_word(word):
            raise self.unexpected(token)

    def expect_punct(self, char: str) -> None:
        token = self.take()
        if token.kind != "punct" or token.text != char:
            raise self.unexpected(token)

    def ident(self) -> str:
        token = self.take()
        if token.kind != "ident":
            raise self.unexpected(token)
        return token.text

    def unexpected(self, token: Token, why: str = "unexpected token") -> SoqlError:
        return _malformed(self.text, token.column, token.text, why)

    def unsupported(self, token: Token) -> SoqlError:
        return self.unexpected(token, "not supported by the dealsync emulator's SOQL subset")

    # -- statement --------------------------------------------------------------------------------
    def statement(self) -> Statement:
        self.expect_word("SELECT")
        fields = [self.ident()]
        while self._comma():
            fields.append(self.ident())
        self.expect_word("FROM")
        sobject = self.ident()
        where = self.conditions() if self.word("WHERE") else []
        order: list[Order] = []
        if self.word("ORDER"):
            self.expect_word("BY")
            order.append(self.order_item())
            while self._comma():
                order.append(self.order_item())
        limit = self.limit() if self.word("LIMIT") else None
        rest = self.peek()
        if rest is not None:
            raise (self.unsupported(rest) if rest.is_word("OFFSET", "GROUP", "FOR", "HAVING")
                   else self.unexpected(rest))
        return Statement(tuple(fields), sobject, tuple(where), tuple(order), limit)

    def _comma(self) -> bool:
        token = self.peek()
        if token is not None and token.kind == "punct" and token.text == ",":
            self.i += 1
            return True
        return False

    def conditions(self) -> list[Condition]:
        found = [self.condition()]
        while self.word("AND"):
            found.append(self.condition())
        token = self.peek()
        if token is not None and token.is_word("OR"):
            raise self.unsupported(token)
        return found

    def condition(self) -> Condition:
        token = self.peek()
        if token is not None and (token.is_word("NOT") or token.text == "("):
            raise self.unsupported(token)
        name = self.ident()
        if self.word("NOT"):
            self.expect_word("IN")
            return Condition(name, "NOT IN", self.literal_list())
        if self.word("IN"):
            return Condition(name, "IN", self.literal_list())
        op = self.take()
        if op.kind != "op":
            raise self.unexpected(op)
        return Condition(name, "!=" if op.text == "<>" else op.text, self.literal())

    def literal_list(self) -> tuple[Literal, ...]:
        self.expect_punct("(")
        values = [self.literal()]
        while self._comma():
            values.append(self.literal())
        self.expect_punct(")")
        return tuple(values)

    def literal(self) -> Literal:
        token = self.take()
        if token.kind == "string":
            return Literal("string", re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]),
                                            token.text[1:-1]))
        if token.kind == "number":
            return Literal("number", float(token.text))
        if token.kind == "date":
            return Literal("date", date.fromisoformat(token.text))
        if token.kind == "datetime":
            return Literal("datetime", parse_datetime(token.text))
        if token.is_word("TRUE", "FALSE"):
            return Literal("boolean", token.text.upper() == "TRUE")
        if token.is_word("NULL"):
            return Literal("null", None)
        if token.kind == "ident":
            raise self.unsupported(token)  # date literals such as TODAY, bind variables...
        raise self.unexpected(token)

    def order_item(self) -> Order:
        name = self.ident()
        descending = self.word("DESC")
        if not descending:
            self.word("ASC")
        # "By default, null values are sorted first" whatever the direction (SOQL ORDER BY).
        nulls_last = False
        if self.word("NULLS"):
            token = self.take()
            if not token.is_word("FIRST", "LAST"):
                raise self.unexpected(token)
            nulls_last = token.is_word("LAST")
        return Order(name, descending, nulls_last)

    def limit(self) -> int:
        token = self.take()
        if token.kind != "number" or not token.text.isdigit():
            raise self.unexpected(token)
        return int(token.text)


def parse(text: str) -> Statement:
    return _Parser(text).statement()


def parse_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


# --- semantics -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Filter:
    path: Path
    op: str
    value: Any  # normalized: a set for IN / NOT IN


@dataclass(frozen=True)
class Sort:
    path: Path
    descending: bool
    nulls_last: bool


@dataclass(frozen=True)
class Plan:
    """A checked query, ready to run over rows of ``table``."""

    table: Table
    columns: tuple[Path, ...]
    filters: tuple[Filter, ...]
    order: tuple[Sort, ...]
    limit: int | None

    def run(self, rows: list[dict[str, Any]], lookup: Lookup) -> list[dict[str, Any]]:
        chosen = [row for row in rows if all(_holds(f, read(f.path, row, lookup))
                                             for f in self.filters)]
        for sort in reversed(self.order):  # stable sorts, last key first
            chosen.sort(key=lambda row, s=sort: _sort_key(s, read(s.path, row, lookup)),
                        reverse=sort.descending)
        return chosen if self.limit is None else chosen[:self.limit]

    def bounds(self, type_: str) -> tuple[Any, Any]:
        """The tightest lower and upper bound the WHERE clause puts on columns of ``type_`` of
        the queried object itself (used to decide whether a query would time out)."""
        low = high = None
        for f in self.filters:
            if f.path.hops or f.path.column.type != type_ or f.value is None:
                continue
            if f.op in (">", ">=", "="):
                low = f.value if low is None else max(low, f.value)
            if f.op in ("<", "<=", "="):
                high = f.value if high is None else min(high, f.value)
        return low, high


IdNormalizer = Callable[[str], "str | None"]


def compile_query(text: str, tables: dict[str, Table], normalize_id: IdNormalizer) -> Plan:
    """Parse ``text`` and check it against the schema; raise ``SoqlError`` as Salesforce would."""
    statement = parse(text)
    table = tables.get(statement.sobject.lower())
    if table is None:
        raise SoqlError("INVALID_TYPE", f"sObject type '{statement.sobject}' is not supported. "
                        "If you are attempting to use a custom object, be sure to append the "
                        "'__c' after the entity name. Please reference your WSDL or the describe "
                        "call for the appropriate names.")
    columns: dict[str, Path] = {}
    for name in statement.fields:
        path = resolve(tables, table, name)
        columns.setdefault(path.label, path)
    filters = tuple(_filter(tables, table, c, normalize_id) for c in statement.where)
    order = tuple(Sort(resolve(tables, table, o.field), o.descending, o.nulls_last)
                  for o in statement.order)
    return Plan(table, tuple(columns.values()), filters, order, statement.limit)


def resolve(tables: dict[str, Table], table: Table, dotted: str) -> Path:
    *relationships, name = dotted.split(".")
    hops = []
    current = table
    for rel in relationships:
        hop = current.relationships.get(rel.lower())
        if hop is None:
            raise SoqlError("INVALID_FIELD", f"Didn't understand relationship '{rel}' in field "
                            "path. If you are attempting to use a custom relationship, be sure to "
                            "append the '__r' after the custom relationship name. Please reference "
                            "your WSDL or the describe call for the appropriate names.")
        hops.append(hop)
        current = tables[hop[2].lower()]
    column = current.columns.get(name.lower())
    if column is None:
        raise SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{current.name}'. If "
                        "you are attempting to use a custom field, be sure to append the '__c' "
                        "after the custom field name. Please reference your WSDL or the describe "
                        "call for the appropriate names.")
    return Path(tuple(hops), column)


def _kind_of(column: Column) -> str:
    if column.type in STRING_TYPES:
        return "string"
    if column.type in NUMBER_TYPES:
        return "number"
    return column.type  # date, datetime, boolean


def _filter(tables: dict[str, Table], table: Table, cond: Condition,
            normalize_id: IdNormalizer) -> Filter:
    path = resolve(tables, table, cond.field)
    if cond.op in ("IN", "NOT IN"):
        assert isinstance(cond.value, tuple)
        values = {_checked(path, lit, normalize_id, allow_null=True) for lit in cond.value}
        return Filter(path, cond.op, frozenset(values))
    assert isinstance(cond.value, Literal)
    allow_null = cond.op in ("=", "!=")
    return Filter(path, cond.op, _checked(path, cond.value, normalize_id, allow_null))


def _checked(path: Path, literal: Literal, normalize_id: IdNormalizer, allow_null: bool) -> Any:
    """The literal as a comparable value, or the INVALID_FIELD Salesforce answers when its kind
    does not fit the column (a quoted datetime, an unquoted string...)."""
    column = path.column
    if literal.kind == "null" and allow_null:
        return None
    kind = _kind_of(column)
    if literal.kind != kind:
        quoting = ("should be enclosed in quotes" if kind == "string"
                   else "should not be enclosed in quotes")
        raise SoqlError("INVALID_FIELD", f"value of filter criterion for field '{column.name}' "
                        f"must be of type {SOAP_WORD[kind]} and {quoting}")
    if column.type in ("id", "reference"):
        normalized = normalize_id(literal.value)
        if normalized is None:
            raise SoqlError("INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {literal.value}")
        return normalized
    return _comparable(column, literal.value)


def _comparable(column: Column, value: Any) -> Any:
    # SOQL compares text case-insensitively; ids are exact (18-character form).
    if isinstance(value, str) and column.type not in ("id", "reference"):
        return value.casefold()
    return value


def _holds(f: Filter, raw: Any) -> bool:
    value = _comparable(f.path.column, raw)
    if f.op == "IN":
        return value in f.value
    if f.op == "NOT IN":
        return value not in f.value
    if f.op == "=":
        return value == f.value
    if f.op == "!=":
        return value != f.value
    if value is None or f.value is None:
        return False  # a range never matches a null
    if f.op == "<":
        return value < f.value
    if f.op == "<=":
        return value <= f.value
    if f.op == ">":
        return value > f.value
    return value >= f.value


def _sort_key(sort: Sort, raw: Any) -> tuple[Any, ...]:
    # With reverse=True the whole key flips, so the null rank is flipped to keep nulls in place.
    null_rank = 1 if sort.nulls_last != sort.descending else 0
    if raw is None:
        return (null_rank,)
    return (1 - null_rank, _comparable(sort.path.column, raw))
