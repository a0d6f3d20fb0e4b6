"""``dealsync check``: a pair's mapping against its live systems.

Every value table must cover the tracker's live states and priorities, every CRM value must be
an option of its deal property, and the deal properties dealsync reads and writes must exist
(those the mapping's custom context columns show included, each named with its column;
``--fix`` creates them where the CRM allows it, and prints the steps for a person where it does
not: ``CRMConnector.field_setup_steps``).
"""

from __future__ import annotations

from typing import Callable

from .config import PairConfig
from .connectors import CRMConnector
from .engine import Pair
from .mapping import Mapping


def check_pair(pair_config: PairConfig, built: Pair, fix: bool,
               echo: Callable[[str], None]) -> list[str]:
    """The problems found (each names the pair); ``echo`` reports what was fixed or is fine."""
    mapping = pair_config.mapping
    tracker_values = {f.tracker: built.tracker.field_values(f.tracker) for f in mapping.fields}
    wanted = mapping.crm_schema()
    missing = built.crm.missing_fields(wanted)
    if missing and fix:
        created = built.crm.ensure_fields({name: wanted[name] for name in missing})
        if created:
            echo(f"{pair_config.name}: created CRM properties {', '.join(created)}")
        missing = [name for name in missing if name not in created]
    setups = {setup.name: setup for setup in
              built.crm.field_setup_steps(field_specs(mapping), field_roles(mapping))}
    if fix:
        for setup in setups.values():
            echo(f"{pair_config.name}: CRM field {setup.name} must be {setup.what}; by hand:")
            for number, step in enumerate(setup.steps, 1):
                echo(f"  {number}. {step}")
    shown_in = context_columns_of(mapping)
    problems = [f"{pair_config.name}: CRM property {name!r}{shown_in.get(name, '')} does not "
                f"exist; it must be {setups[name].what} (dealsync check --fix prints the steps)"
                if name in setups else f"{pair_config.name}: CRM property {name!r}"
                f"{shown_in.get(name, '')} does not exist (dealsync check --fix creates it)"
                for name in missing]
    if mapping.note_fields and type(built.crm).add_note is CRMConnector.add_note:
        problems.append(f"{pair_config.name}: {mapping.source}: notes.fields: the "
                        f"{built.crm.type_name} connector cannot write deal notes")
    crm_options = {f.crm: built.crm.field_options(f.crm) for f in mapping.fields}
    problems += mapping.coverage_problems(tracker_values, crm_options)
    problems += unwritable_problems(pair_config, built)
    if not problems:
        echo(f"{pair_config.name}: ok ({mapping.source})")
    return problems


def context_columns_of(mapping: Mapping) -> dict[str, str]:
    """Deal property -> " (shown in context column X)", for the properties custom context
    columns read (mapping ``[context.properties]``), so a missing one names its column."""
    columns: dict[str, list[str]] = {}
    for column, name in mapping.context_properties.items():
        columns.setdefault(name, []).append(column)
    return {name: f" (shown in context column {', '.join(found)})"
            for name, found in columns.items()}


def field_specs(mapping: Mapping) -> dict[str, list[str] | None]:
    """The deal fields the mapping needs, each value list in the mapping's order (the order a
    person should give a picklist), not sorted as ``Mapping.crm_schema`` has it."""
    specs = mapping.crm_schema()
    for fm in mapping.fields:
        if fm.values:
            specs[fm.crm] = list(dict.fromkeys(fm.values.values()))
    return specs


def field_roles(mapping: Mapping) -> dict[str, str]:
    """Which deal field is the request, the key list and the URL (``field_setup_steps``)."""
    return {name: role for role, name in (("request", mapping.request_field),
                                          ("key", mapping.key_field), ("url", mapping.url_field))
            if name}


def unwritable_problems(pair_config: PairConfig, built: Pair) -> list[str]:
    """Fields the mapping sends to the tracker that its API cannot write, unless the mapping
    marks them ``manual`` (changes are then listed for a person; docs/engine.md)."""
    return [f"{pair_config.name}: {fm.source}: fields.{fm.name}: direction {fm.direction!r}, but "
            f"the {built.tracker.type_name} tracker {built.tracker.name!r} cannot change "
            f"{fm.tracker!r} after creation; set direction = \"to_crm\", or manual = true to "
            "list CRM-side changes for a person to make"
            for fm in pair_config.mapping.synced_fields()
            if fm.direction in ("both", "to_tracker") and not fm.manual
            and not built.tracker.can_write(fm.tracker)]
