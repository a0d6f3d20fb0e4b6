"""What the Salesforce emulator knows about its objects: record ids, field definitions, the
describe payload, and how a written value is checked and stored.

The objects are Opportunity (docs/salesforce.md §2), just enough of Account and User to
answer the ``Account.Name`` and ``Owner.Name`` relationship reads, and the Task fields a note on
an opportunity's timeline uses (docs/salesforce.md §11). Custom fields (``…__c``) come
from the emulator's config, so a test can take one away and watch a connector notice.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Callable

from plugins.salesforce.soql import NUMBER_TYPES, STRING_TYPES, Table

# --- record ids (docs/salesforce.md §2) ----------------------------------------------------------

# Digits, then upper, then lower case: ASCII order, so fixed-width ids sort like their numbers
# (ORDER BY Id then follows creation order, as it does on a real org).
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_CHECKSUM = string.ascii_uppercase + "012345"
_POD = "5g0"  # two instance characters and the reserved one

KEY_PREFIX = {"Opportunity": "006", "Account": "001", "User": "005", "Task": "00T",
              "Organization": "00D", "QueryLocator": "01g"}


def make_id(prefix: str, number: int) -> str:
    digits = ""
    while number:
        number, rest = divmod(number, 62)
        digits = _BASE62[rest] + digits
    return id18(prefix + _POD + digits.rjust(9, "0"))


def id18(id15: str) -> str:
    """The case-safe 18-character form: each 5-character chunk adds one character whose bits say
    which of its letters are upper case."""
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, ch in enumerate(id15[start:start + 5]) if ch.isupper())
        suffix += _CHECKSUM[bits]
    return id15 + suffix


def normalize_id(value: Any) -> str | None:
    """The 18-character id for a 15- or 18-character one, or None if it is not an id."""
    if not isinstance(value, str) or not value.isascii() or not value.isalnum():
        return None
    if len(value) == 15:
        return id18(value)
    if len(value) == 18 and id18(value[:15]) == value:
        return value
    return None


# --- fields --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldSpec:
    name: str
    label: str
    type: str  # describe type
    length: int = 0
    updateable: bool = True
    required: bool = False
    values: tuple[str, ...] = ()
    restricted: bool = False
    #: the object a lookup refers to; several for a polymorphic one (Task.WhatId)
    reference_to: str | tuple[str, ...] | None = None
    relationship: str | None = None
    custom: bool = False
    createable: bool | None = None  # None: as updateable
    default: Any = None  # "Defaulted on create": the value a create that leaves it out gets

    @property
    def can_create(self) -> bool:
        return self.updateable if self.createable is None else self.createable

    @property
    def targets(self) -> tuple[str, ...]:
        if self.reference_to is None:
            return ()
        return (self.reference_to,) if isinstance(self.reference_to, str) else self.reference_to


# StageName values of a new org: (value, default probability, forecast category, closed, won).
STAGES = (
    ("Prospecting", 10.0, "Pipeline", False, False),
    ("Qualification", 10.0, "Pipeline", False, False),
    ("Needs Analysis", 20.0, "Pipeline", False, False),
    ("Value Proposition", 50.0, "Pipeline", False, False),
    ("Id. Decision Makers", 60.0, "Pipeline", False, False),
    ("Perception Analysis", 70.0, "Pipeline", False, False),
    ("Proposal/Price Quote", 75.0, "Pipeline", False, False),
    ("Negotiation/Review", 90.0, "Pipeline", False, False),
    ("Closed Won", 100.0, "Closed", True, True),
    ("Closed Lost", 0.0, "Omitted", True, False),
)
STAGE_META = {stage[0]: stage[1:] for stage in STAGES}

# Task (docs/salesforce.md §11): a new org's Status values, the closed one, and the subtypes.
TASK_STATUSES = ("Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred")
TASK_CLOSED = frozenset({"Completed"})
TASK_SUBTYPES = ("Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn")


def _system_fields(label: str) -> tuple[FieldSpec, ...]:
    return (
        FieldSpec("Id", f"{label} ID", "id", 18, updateable=False),
        FieldSpec("IsDeleted", "Deleted", "boolean", updateable=False),
        FieldSpec("CreatedDate", "Created Date", "datetime", updateable=False),
        FieldSpec("CreatedById", "Created By ID", "reference", 18, updateable=False,
                  reference_to="User", relationship="CreatedBy"),
        FieldSpec("LastModifiedDate", "Last Modified Date", "datetime", updateable=False),
        FieldSpec("LastModifiedById", "Last Modified By ID", "reference", 18, updateable=False,
                  reference_to="User", relationship="LastModifiedBy"),
        # Moves on every write, the system's own included (docs/salesforce.md §2).
        FieldSpec("SystemModstamp", "System Modstamp", "datetime", updateable=False),
    )


STANDARD_FIELDS: dict[str, tuple[FieldSpec, ...]] = {
    "Opportunity": _system_fields("Opportunity") + (
        FieldSpec("AccountId", "Account ID", "reference", 18, reference_to="Account",
                  relationship="Account"),
        FieldSpec("Name", "Name", "string", 120, required=True),
        FieldSpec("Description", "Description", "textarea", 32000),
        FieldSpec("StageName", "Stage", "picklist", 255, required=True,
                  values=tuple(s[0] for s in STAGES), restricted=True),
        FieldSpec("Amount", "Amount", "currency"),
        FieldSpec("Probability", "Probability (%)", "percent"),
        FieldSpec("CloseDate", "Close Date", "date", required=True),
        FieldSpec("Type", "Opportunity Type", "picklist", 255, values=(
            "Existing Customer - Upgrade", "Existing Customer - Replacement",
            "Existing Customer - Downgrade", "New Customer")),
        FieldSpec("NextStep", "Next Step", "string", 255),
        FieldSpec("LeadSource", "Lead Source", "picklist", 255, values=(
            "Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")),
        FieldSpec("IsClosed", "Closed", "boolean", updateable=False),
        FieldSpec("IsWon", "Won", "boolean", updateable=False),
        FieldSpec("ForecastCategoryName", "Forecast Category", "picklist", 255, values=(
            "Omitted", "Pipeline", "Best Case", "Commit", "Closed")),
        FieldSpec("OwnerId", "Owner ID", "reference", 18, reference_to="User",
                  relationship="Owner"),
    ),
    "Account": _system_fields("Account") + (
        FieldSpec("Name", "Account Name", "string", 255, required=True),
        FieldSpec("OwnerId", "Owner ID", "reference", 18, reference_to="User",
                  relationship="Owner"),
    ),
    "User": _system_fields("User") + (
        FieldSpec("Username", "Username", "string", 80, updateable=False),
        FieldSpec("Name", "Full Name", "string", 121, updateable=False),
        FieldSpec("Email", "Email", "email", 128),
        FieldSpec("IsActive", "Active", "boolean"),
    ),
    "Task": _system_fields("Activity") + (
        # Polymorphic: any "what" object; of the emulator's objects, Account and Opportunity.
        FieldSpec("WhatId", "Related To ID", "reference", 18,
                  reference_to=("Account", "Opportunity")),
        FieldSpec("Subject", "Subject", "combobox", 255),
        FieldSpec("Description", "Description", "textarea", 32000),
        FieldSpec("Status", "Status", "picklist", 40, required=True, values=TASK_STATUSES,
                  restricted=True, default="Not Started"),
        FieldSpec("Priority", "Priority", "picklist", 40, required=True,
                  values=("High", "Normal", "Low"), restricted=True, default="Normal"),
        FieldSpec("ActivityDate", "Due Date Only", "date"),
        FieldSpec("TaskSubtype", "Task Subtype", "picklist", 40, updateable=False,
                  createable=True, values=TASK_SUBTYPES, restricted=True),
        FieldSpec("IsClosed", "Closed", "boolean", updateable=False),
        FieldSpec("AccountId", "Account ID", "reference", 18, updateable=False,
                  reference_to="Account", relationship="Account"),
        FieldSpec("OwnerId", "Assigned To ID", "reference", 18, reference_to="User",
                  relationship="Owner"),
    ),
}
OBJECT_LABELS = {"Opportunity": ("Opportunity", "Opportunities"),
                 "Account": ("Account", "Accounts"), "User": ("User", "Users"),
                 "Task": ("Task", "Tasks")}

CUSTOM_TYPES = {"string", "textarea", "picklist", "url", "email", "currency", "percent",
                "double", "date", "datetime", "boolean"}

# The custom fields of docs/salesforce.md §6 (status, link) and docs/salesforce.md §2 (priority).
DEFAULT_CUSTOM_FIELDS: dict[str, dict[str, dict[str, Any]]] = {
    "Opportunity": {
        "Priority__c": {"label": "Priority", "type": "picklist",
                        "values": ["High", "Medium", "Low"], "restricted": True},
        "PingCode_Status__c": {"label": "PingCode Status", "type": "string", "length": 100},
        "PingCode_Url__c": {"label": "PingCode URL", "type": "url", "length": 255},
    },
}


def custom_spec(name: str, spec: dict[str, Any]) -> FieldSpec:
    """A FieldSpec from a config entry; ValueError names what is wrong with it."""
    if not name.endswith("__c"):
        raise ValueError(f"custom field {name!r} must end in __c")
    kind = spec.get("type", "string")
    if kind not in CUSTOM_TYPES:
        raise ValueError(f"custom field {name!r}: type must be one of {sorted(CUSTOM_TYPES)}")
    unknown = set(spec) - {"label", "type", "length", "values", "restricted", "required"}
    if unknown:
        raise ValueError(f"custom field {name!r}: unknown keys {sorted(unknown)}")
    default_length = 255 if kind in STRING_TYPES else 0
    return FieldSpec(name, str(spec.get("label") or name[:-3].replace("_", " ")), kind,
                     int(spec.get("length", default_length)), required=bool(spec.get("required")),
                     values=tuple(spec.get("values") or ()),
                     restricted=bool(spec.get("restricted")), custom=True)


def object_fields(obj: str, custom: dict[str, dict[str, dict[str, Any]]]) -> list[FieldSpec]:
    return list(STANDARD_FIELDS[obj]) + [custom_spec(n, s)
                                         for n, s in (custom.get(obj) or {}).items()]


def soql_tables(custom: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Table]:
    tables = {}
    for obj in STANDARD_FIELDS:
        table = Table(obj)
        for spec in object_fields(obj, custom):
            relationship = (spec.relationship, spec.reference_to) if spec.relationship else None
            table.add(spec.name, spec.type, relationship)  # type: ignore[arg-type]
        tables[obj.lower()] = table
    return tables


# --- describe (docs/salesforce.md §7) ------------------------------------------------------------

_SOAP_TYPES = {"id": "tns:ID", "reference": "tns:ID", "currency": "xsd:double",
               "percent": "xsd:double", "double": "xsd:double", "date": "xsd:date",
               "datetime": "xsd:dateTime", "boolean": "xsd:boolean"}


def describe_field(spec: FieldSpec) -> dict[str, Any]:
    return {
        "name": spec.name, "label": spec.label, "type": spec.type, "length": spec.length,
        "soapType": _SOAP_TYPES.get(spec.type, "xsd:string"), "custom": spec.custom,
        "createable": spec.can_create, "updateable": spec.updateable,
        "defaultedOnCreate": spec.default is not None,
        "nillable": not spec.required and spec.type != "boolean" and spec.can_create,
        "calculated": False, "filterable": True, "sortable": spec.type != "textarea",
        "picklistValues": [{"active": True, "defaultValue": False, "label": v, "value": v,
                            "validFor": None} for v in spec.values],
        "restrictedPicklist": spec.restricted,
        "referenceTo": list(spec.targets),
        "relationshipName": spec.relationship,
    }


# --- values --------------------------------------------------------------------------------------

def to_json(value: Any) -> Any:
    """A stored value as the REST API prints it: datetimes to the millisecond with ``+0000``."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
            f"{value.microsecond // 1000:03d}+0000"
    if isinstance(value, date):
        return value.isoformat()
    return value


ErrorItem = tuple[str, str, list[str]]  # (statusCode, message, fields)
Exists = Callable[[str, str], bool]  # (object, 18-character id) -> is it there


def check_changes(obj: str, specs: list[FieldSpec], incoming: dict[str, Any], exists: Exists,
                  creating: bool = False) -> tuple[dict[str, Any], list[ErrorItem]]:
    """Stored values for a write of ``incoming`` (API names, any case) and the errors Salesforce
    would report for it (docs/salesforce.md §6); ``creating``: a create, where the fields that
    are createable but not updateable (Task.TaskSubtype, docs/salesforce.md §11) may be set too."""
    by_name = {spec.name.lower(): spec for spec in specs}
    changes: dict[str, Any] = {}
    errors: list[ErrorItem] = []
    for key, raw in incoming.items():
        spec = by_name.get(key.lower())
        if spec is None:
            errors.append(("INVALID_FIELD", f"No such column '{key}' on sobject of type {obj}",
                           []))
        elif not (spec.can_create if creating else spec.updateable):
            errors.append(("INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: "
                           f"{spec.name}. Please check the security settings of this field and "
                           "verify that it is read/write for your profile or permission set.",
                           [spec.name]))
        elif raw is None or raw == "":
            if spec.required:
                errors.append(("REQUIRED_FIELD_MISSING",
                               f"Required fields are missing: [{spec.name}]", [spec.name]))
            else:
                changes[spec.name] = False if spec.type == "boolean" else None
        else:
            value, problem = _stored(spec, raw, exists)
            if problem is not None:
                errors.append(problem)
            else:
                changes[spec.name] = value
    return changes, errors


def _stored(spec: FieldSpec, raw: Any, exists: Exists) -> tuple[Any, ErrorItem | None]:
    wrong_type = ("INVALID_TYPE_ON_FIELD_IN_RECORD",
                  f"{spec.label}: value not of required type: {raw}", [spec.name])
    if spec.type in ("id", "reference"):
        ident = normalize_id(raw)
        incorrect = f"{spec.label}: id value of incorrect type: {raw}"
        if ident is None:  # not an id at all
            return None, ("MALFORMED_ID", incorrect, [spec.name])
        target = next((t for t in spec.targets if ident.startswith(KEY_PREFIX.get(t, "?"))),
                      None)
        # an id, of an object this lookup cannot refer to (docs/salesforce.md §11)
        if target is None:
            return None, ("FIELD_INTEGRITY_EXCEPTION", incorrect, [spec.name])
        if not exists(target, ident):
            return None, ("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id",
                          [spec.name])
        return ident, None
    if spec.type in NUMBER_TYPES:
        try:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw), None
        except (TypeError, ValueError):
            return None, wrong_type
    if spec.type == "boolean":
        return (raw, None) if isinstance(raw, bool) else (None, wrong_type)
    if spec.type in ("date", "datetime"):
        return _stored_time(spec, raw, wrong_type)
    if not isinstance(raw, str):
        return None, wrong_type
    if spec.type == "picklist" and spec.restricted and raw not in spec.values:
        return None, ("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                      f"{spec.label}: bad value for restricted picklist field: {raw}",
                      [spec.name])
    if spec.length and len(raw) > spec.length:
        return None, ("STRING_TOO_LONG", f"{spec.label}: data value too large: {raw[:20]}"
                      f"{'...' if len(raw) > 20 else ''} (max length={spec.length})",
                      [spec.name])
    return raw, None


def _stored_time(spec: FieldSpec, raw: Any, wrong_type: ErrorItem
                 ) -> tuple[Any, ErrorItem | None]:
    if not isinstance(raw, str):
        return None, wrong_type
    try:
        if spec.type == "date":
            return date.fromisoformat(raw[:10]), None
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None, wrong_type
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    # Salesforce keeps datetimes to the second (docs/salesforce.md §2).
    return parsed.astimezone(timezone.utc).replace(microsecond=0), None
