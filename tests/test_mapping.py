"""Mapping files: parsing, validation that reports everything, translation, requests."""

from __future__ import annotations

import pytest

from sync.errors import ConfigError, ItemError
from sync.mapping import load_mapping, parse_mapping

GOOD = {
    "request": {"field": "req"},
    "fields": {"status": {"crm": "st", "tracker": "status",
                          "values": {"新建": "open", "待评审": "open", "已完成": "done"},
                          "to_tracker": {"open": "新建"}}},
}


def test_many_to_one_table_needs_to_tracker_and_translates_both_ways():
    mapping = parse_mapping(GOOD, "m.toml")
    (fm,) = mapping.fields
    assert fm.to_crm("待评审") == "open"
    assert fm.to_tracker("open") == "新建"
    assert fm.to_tracker("done") == "已完成"
    assert fm.same("open", "待评审")
    with pytest.raises(ItemError, match="has no CRM value"):
        fm.to_crm("已关闭")


def test_every_problem_is_reported_with_file_and_key():
    bad = {
        "request": {},
        "fields": {
            "status": {"crm": "st", "tracker": "status", "direction": "sideways",
                       "values": {"a": "x", "b": "x"}},
            "priority": {"crm": "st", "tracker": "priority", "conflict": "coin"},
        },
        "colour": {},
    }
    with pytest.raises(ConfigError) as err:
        parse_mapping(bad, "m.toml")
    problems = err.value.problems
    assert "m.toml: colour: unknown section (known: context, fields, link, mapping, notes, request, select)" in problems
    assert "m.toml: request.field: required: the deal property where sales writes the request" in problems
    assert "m.toml: fields.status.direction: 'sideways' is not one of both, to_tracker, to_crm, on_create" in problems
    assert "m.toml: fields.priority.conflict: 'coin' is not one of crm, tracker, newest, ask" in problems
    assert len(problems) == 4


def test_ambiguous_reverse_is_reported():
    data = {"request": {"field": "req"},
            "fields": {"s": {"crm": "st", "tracker": "status", "values": {"a": "x", "b": "x"}}}}
    with pytest.raises(ConfigError, match="CRM value 'x' comes from a, b"):
        parse_mapping(data, "m.toml")


def test_key_pattern_comes_from_the_tracker_unless_the_mapping_sets_one():
    assert parse_mapping({**GOOD, "request": {"field": "req"}}, "m.toml").key_pattern is None
    custom = parse_mapping({**GOOD, "request": {"field": "req", "key_pattern": r"R\d+"}},
                           "m.toml")
    assert custom.key_pattern == r"R\d+"
    with pytest.raises(ConfigError, match="request.key_pattern: not a valid regular expression"):
        parse_mapping({**GOOD, "request": {"field": "req", "key_pattern": "("}}, "m.toml")


def test_coverage_problems_name_missing_states_and_options():
    mapping = parse_mapping(GOOD, "m.toml")
    problems = mapping.coverage_problems({"status": ["新建", "待评审", "已完成", "已关闭"]},
                                         {"st": ["open"]})
    assert problems == ["m.toml: fields.status.values: misses tracker status '已关闭'",
                        "m.toml: fields.status.values: CRM property 'st' has no option 'done'"]


def test_unknown_shipped_mapping_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="no such file"):
        load_mapping("no-such-mapping")
