"""The request grammar, as a sales rep writes requests (sync/engine/grammar.py). Pure: no I/O."""

from __future__ import annotations

import pytest

from sync.engine.grammar import (GENERIC_KEY, KeyPattern, normalize_title, parse_request,
                                 request_text)

SCR = KeyPattern.for_prefix("SCR")


def test_key_alone_links_and_creates_nothing():
    parsed = parse_request("SCR-12", SCR)
    assert parsed.keys == ("SCR-12",) and not parsed.creates and parsed.note == ""


def test_key_plus_note_the_note_goes_to_the_requirement():
    parsed = parse_request("SCR-2\nNeeds Okta and Azure AD.", SCR)
    assert parsed.keys == ("SCR-2",) and not parsed.creates
    assert parsed.note == "Needs Okta and Azure AD."


def test_key_inside_a_sentence_links_and_keeps_the_sentence():
    parsed = parse_request("Same as scr-12, for the mobile app", SCR)
    assert parsed.keys == ("SCR-12",) and not parsed.creates
    assert parsed.note == "Same as scr-12, for the mobile app"


def test_two_keys_in_order_of_mention_once_each():
    parsed = parse_request("SCR-3, SCR-1\nand SCR-3 again for the EU team", SCR)
    assert parsed.keys == ("SCR-3", "SCR-1")
    assert parsed.note == "and SCR-3 again for the EU team"


def test_text_only_asks_for_a_new_requirement():
    parsed = parse_request("\n  Bulk export \nCSV and XLSX\n\nmonthly", SCR)
    assert parsed.creates and parsed.keys == ()
    assert parsed.title == "Bulk export" and parsed.body == "CSV and XLSX\n\nmonthly"


@pytest.mark.parametrize("text", ["Must be ISO-9001 certified", "XSCR-1 in the old system",
                                  "SCR-12b", "see ABC-SCR-4"])
def test_what_is_not_a_key_of_the_project_creates(text):
    parsed = parse_request(text, SCR)
    assert parsed.keys == () and parsed.title == text


def test_an_empty_request_asks_for_nothing():
    parsed = parse_request("  \n ", SCR)
    assert parsed.keys == () and not parsed.creates


def test_a_mapping_pattern_is_used_as_written():
    pattern = KeyPattern(r"REQ\d{4}")
    assert parse_request("see REQ0042 please", pattern).keys == ("REQ0042",)
    assert parse_request("see req0042", pattern).keys == ()
    assert parse_request("ISO-9001", KeyPattern(GENERIC_KEY)).keys == ("ISO-9001",)


def test_titles_compare_without_case_and_whitespace():
    assert normalize_title("SSO with  Okta ") == normalize_title("sso WITH okta")
    assert normalize_title("SSO with Okta") != normalize_title("SSO with Okta!")


def test_the_block_shows_the_note_or_the_whole_request():
    assert request_text("SCR-2\nNeeds Okta.", SCR) == "Needs Okta."
    assert request_text("SCR-2", SCR) is None
    assert request_text("Dark mode\nat night", SCR) == "Dark mode\nat night"
