"""API calls per endpoint for whole runs against both emulators: a small backfill, a quiet run
and a key-heavy run. Counts, not times: if waste comes back (a look-up per deal, a marker
search per create, context reads for unchanged deals), one of these numbers moves."""

from __future__ import annotations

from collections import Counter

import pytest

from plugins.hubspot.testing import emulator_connector as hubspot_connector
from plugins.pingcode.testing import emulator_connector
from sync.engine import Options, Pair, run_pair
from sync.mapping import load_mapping

MAPPING = load_mapping("hubspot-pingcode")
PINGCODE_SETUP = {  # read once per run (a new connector per run, as the CLI builds them)
    "GET /v1/auth/token": 1, "GET /v1/pjm/projects": 1, "GET /v1/pjm/work_item/types": 1,
    "GET /v1/pjm/work_item/states": 1, "GET /v1/pjm/work_item/priorities": 1,
    "GET /v1/pjm/work_item_state_plans": 1,
    "GET /v1/pjm/work_item_state_plans/{id}/work_item_state_flows": 1}


@pytest.fixture
def stack(emulators_store):
    return emulators_store


def sync(hubspot, pingcode, store) -> tuple[dict, Counter, Counter]:
    """One run with fresh connectors; the calls each side made, by endpoint."""
    crm, tracker = hubspot_connector(hubspot), emulator_connector(pingcode, "rd")
    summary = run_pair(Pair("calls", crm, tracker, MAPPING), store, Options())
    return summary, Counter(crm.api_calls()), Counter(tracker.api_calls())


def deals(hubspot, requests: list[str]) -> None:
    hubspot.seed(deals=[{"properties": {"dealname": f"Deal {n}", "dealstage": "qualifiedtobuy",
                                        "amount": "1000", "dealsync_request": text}}
                        for n, text in enumerate(requests)])


def test_backfill_quiet_run_and_key_heavy_run(stack):
    hubspot, pingcode, store = stack
    # 12 deals name the 3 seeded requirements; 20 ask for 10 new ones, two deals each
    deals(hubspot, [f"SCR-{n % 3 + 1}, for site {n}" for n in range(12)]
          + [f"Feature {n % 10}\nasked by deal {n}" for n in range(20)])
    summary, crm, tracker = sync(hubspot, pingcode, store)
    assert summary["counts"]["created"] == 10 and summary["counts"]["joined"] == 10
    assert summary["counts"]["linked"] == 12 and summary["counts"]["updated_crm"] == 32
    assert crm == {
        "POST /crm/v3/objects/deals/search": 1,  # 32 deals, one page of 200
        "POST /crm/v4/associations/deals/companies/batch/read": 1,  # context, once per 100
        "GET /crm/v3/pipelines/deals": 1,  # stage labels, once per run
        "POST /crm/v3/objects/deals/batch/read": 1,  # the re-read before writing
        "POST /crm/v3/objects/deals/batch/update": 1}  # 32 deals, one batch of 100
    assert tracker == {
        **PINGCODE_SETUP,
        "POST /v1/pjm/work_items/search": 2,  # changed items; one scan for markers (new state)
        "GET /v1/pjm/work_items": 3,  # one look-up per distinct key, not per deal
        "POST /v1/pjm/work_items": 10,  # one create per distinct request, not per deal
        "PATCH /v1/pjm/work_items/{id}": 3,  # the deal lists of the 3 named requirements
        "GET /v1/pjm/projects/{id}/versions": 1}  # delivery versions, once per run

    summary, crm, tracker = sync(hubspot, pingcode, store)  # nothing new
    assert summary["counts"]["updated_crm"] == summary["counts"]["updated_tracker"] == 0
    assert crm == {"POST /crm/v3/objects/deals/search": 1, "GET /crm/v3/pipelines/deals": 1,
                   # the verify rotation (up to 100 linked deals a run) reads its deals' company
                   # afresh, to see a renamed company: the only context read of a quiet run
                   "POST /crm/v4/associations/deals/companies/batch/read": 1}
    assert tracker == {**PINGCODE_SETUP, "POST /v1/pjm/work_items/search": 1,
                       "GET /v1/pjm/projects/{id}/versions": 1}

    # 60 more deals name the same 3 keys, 10 ask for a new requirement: still no look-up or
    # marker search per deal
    deals(hubspot, [f"SCR-{n % 3 + 1}" for n in range(60)] + [f"Feature X{n}" for n in range(10)])
    summary, crm, tracker = sync(hubspot, pingcode, store)
    assert summary["counts"]["linked"] == 60 and summary["counts"]["created"] == 10
    assert crm == {
        "POST /crm/v3/objects/deals/search": 1,
        # the 70 new deals and the 32 of the verify rotation: 102 deals, two calls of 100
        "POST /crm/v4/associations/deals/companies/batch/read": 2,
        "GET /crm/v3/pipelines/deals": 1,
        "POST /crm/v3/objects/deals/batch/read": 1,
        "POST /crm/v3/objects/deals/batch/update": 1}
    assert tracker == {
        **PINGCODE_SETUP,
        "POST /v1/pjm/work_items/search": 1,  # changed items only: no marker search at all
        # the 3 keys are known from this run's read of their requirements: no key look-up,
        # but each named requirement is read by id before its deal list is rewritten
        "GET /v1/pjm/work_items/{id}": 3,
        "POST /v1/pjm/work_items": 10,
        "PATCH /v1/pjm/work_items/{id}": 3,
        "GET /v1/pjm/projects/{id}/versions": 1}


def test_a_quiet_run_after_the_lookback_costs_one_search_page(stack):
    """The cursor moves to the service's own time (its Date header) when a read began, so once
    the last burst is a lookback old a quiet HubSpot run reads one empty search page, and the
    verify slice shows the side answers: no probe read."""
    hubspot, pingcode, store = stack
    deals(hubspot, [f"SCR-{n % 3 + 1}, site {n}" for n in range(450)])  # 3 search pages
    sync(hubspot, pingcode, store)
    for minutes in (2, 11):  # inside the lookback, then the first run past it
        for emulator in (hubspot, pingcode):
            emulator.clock.advance(minutes * 60 * 1000)
        summary, crm, _ = sync(hubspot, pingcode, store)
        assert summary["counts"]["deals_read"] == 450  # the backfill's burst, read again
        assert crm["POST /crm/v3/objects/deals/search"] == 3
    for emulator in (hubspot, pingcode):
        emulator.clock.advance(5 * 60 * 1000)
    summary, crm, _ = sync(hubspot, pingcode, store)
    assert summary["status"] == "ok" and summary["counts"]["deals_read"] == 0
    assert crm == {"POST /crm/v3/objects/deals/search": 1,  # one empty page
                   "POST /crm/v3/objects/deals/batch/read": 1,  # the verify slice: 100 deals
                   "POST /crm/v4/associations/deals/companies/batch/read": 1,  # their companies
                   "GET /crm/v3/pipelines/deals": 1}
