"""A deal merged into another in HubSpot (docs/hubspot.md §15, issue 12).

After a merge the merged-away id still answers, with the other deal's record under that deal's
id. dealsync must not take the other deal's values for the old deal's link nor write to the
old id: the link is orphaned with a ``merged into deal N`` reason, the requirement keeps showing
the deal as last seen, the surviving deal is linked by its own request, and nothing is created
or deleted because of the merge.
"""

from __future__ import annotations

import pytest
import requests

from plugins.hubspot.emulator import PRIVATE_TOKEN
from plugins.hubspot.testing import emulator_connector as hubspot_connector
from plugins.pingcode.testing import emulator_connector as pingcode_connector
from sync.engine import Options, Pair, run_pair
from sync.engine.view import MERGED_INTO
from sync.mapping import load_mapping

MAPPING = load_mapping("hubspot-pingcode")
REQUEST = MAPPING.request_field
DEALS = "/crm/v3/objects/deals"


# -- the emulator's merge endpoint -----------------------------------------------------------------

class Api:
    def __init__(self, emu):
        self.emu = emu

    def call(self, method: str, path: str, **kwargs):
        response = requests.request(method, self.emu.url + path, timeout=10, headers={
            "Authorization": f"Bearer {PRIVATE_TOKEN}"}, **kwargs)
        return response.status_code, response.json() if response.content else None


@pytest.fixture
def hs(hubspot_server):
    hubspot_server.reset()
    return hubspot_server


def seed_pair(emu):
    """Two deals of one customer, each with its own company; the second asks for something."""
    made = emu.seed(
        companies=[{"name": "Acme"}, {"name": "Acme EU"}],
        deals=[{"properties": {"dealname": "Acme", "amount": "100", "hs_priority": "high"},
                "companies": [0]},
               {"properties": {"dealname": "Acme (dup)", "amount": "250", "hs_priority": "low",
                               "description": "from the duplicate"}, "companies": [1]}])
    return made["deals"], made["companies"]


def test_merge_endpoint_keeps_the_primary_and_the_old_id_answers_with_it(hs):
    api = Api(hs)
    (primary, merged), (acme, acme_eu) = seed_pair(hs)
    status, body = api.call("POST", f"{DEALS}/merge", json={"primaryObjectId": primary,
                                                            "objectIdToMerge": merged})
    assert status == 200 and body["id"] == primary
    assert body["properties"]["dealname"] == "Acme" and body["properties"]["amount"] == "100"

    # GET and batch read by the old id answer with the primary, under the primary's id
    status, got = api.call("GET", f"{DEALS}/{merged}",
                           params={"properties": "dealname,hs_priority,description,"
                                                 "hs_merged_object_ids"})
    assert status == 200 and got["id"] == primary
    assert got["properties"] == {**got["properties"], "dealname": "Acme", "hs_priority": "high",
                                 "description": None, "hs_merged_object_ids": merged}
    _, read = api.call("POST", f"{DEALS}/batch/read", json={
        "properties": ["dealname"], "inputs": [{"id": merged}, {"id": primary}]})
    assert [r["id"] for r in read["results"]] == [primary] and "errors" not in read
    # search finds the primary only
    _, found = api.call("POST", f"{DEALS}/search", json={"limit": 100})
    assert [r["id"] for r in found["results"]] == [primary] and found["total"] == 1
    # the merged deal's company moved to the primary; the old id has no associations left
    _, assoc = api.call("GET", f"/crm/v4/objects/deals/{primary}/associations/companies")
    assert sorted(str(a["toObjectId"]) for a in assoc["results"]) == sorted([acme, acme_eu])
    assert hs.deals[merged].company_ids == [] and hs.companies[acme_eu].deal_ids == [primary]
    # a write by the old id lands on the primary and answers with the primary's id [I]
    _, written = api.call("POST", f"{DEALS}/batch/update", json={"inputs": [
        {"id": merged, "properties": {"hs_priority": "medium"}}]})
    assert [r["id"] for r in written["results"]] == [primary]
    assert hs.deal(primary)["properties"]["hs_priority"] == "medium"


def test_merge_refusals_and_the_documented_path(hs):
    api = Api(hs)
    (primary, merged), _ = seed_pair(hs)
    assert api.call("POST", f"{DEALS}/merge", json={"primaryObjectId": primary,
                                                     "objectIdToMerge": primary})[0] == 400
    assert api.call("POST", f"{DEALS}/merge", json={"primaryObjectId": primary})[0] == 400
    status, body = api.call("POST", f"{DEALS}/merge", json={"primaryObjectId": primary,
                                                             "objectIdToMerge": "99"})
    assert status == 404 and body["category"] == "OBJECT_NOT_FOUND"
    # the reference's path, /crm/v3/objects/0-3/merge
    assert api.call("POST", "/crm/v3/objects/0-3/merge", json={
        "primaryObjectId": primary, "objectIdToMerge": merged})[0] == 200
    # a merged-away deal cannot be merged again
    assert api.call("POST", f"{DEALS}/merge", json={"primaryObjectId": primary,
                                                     "objectIdToMerge": merged})[0] == 404


def test_merge_into_a_new_record_when_configured(hs):
    """Contact and company merges now make a new record that both old ids answer for
    (docs/hubspot.md §15); ``merge_new_id`` models that for deals."""
    hs.configure(merge_new_id=True)
    (primary, merged), _ = seed_pair(hs)
    made = hs.merge_deals(primary, merged)
    assert made["id"] not in (primary, merged)
    assert made["properties"]["dealname"] == "Acme"  # the primary's values
    for old in (primary, merged):
        status, got = Api(hs).call("GET", f"{DEALS}/{old}",
                                   params={"properties": "hs_merged_object_ids"})
        assert status == 200 and got["id"] == made["id"]
        assert got["properties"]["hs_merged_object_ids"] == f"{primary};{merged}"


# -- the connector ---------------------------------------------------------------------------------

def test_connector_reads_a_merged_id_as_a_tombstone(hs):
    (primary, merged), _ = seed_pair(hs)
    hs.merge_deals(primary, merged)
    crm = hubspot_connector(hs)
    found = crm.fetch([merged], ["description", "hs_priority"])
    assert list(found) == [merged]
    tomb = found[merged]
    assert tomb.id == merged and tomb.merged_into == primary
    assert tomb.fields == {"description": None, "hs_priority": None}  # nothing of the primary
    both = crm.fetch([merged, primary], ["hs_priority"])
    assert both[primary].merged_into is None and both[primary].fields["hs_priority"] == "high"
    assert both[merged].merged_into == primary

    changed = list(crm.iter_changed(None, hs.clock.now(), ["hs_priority"]))
    assert [(d.id, d.merged_into) for d in changed] == [(primary, None), (merged, primary)]


def test_connector_asks_by_id_when_a_stranger_comes_back_without_merged_ids(rsps):
    """A batch read that answers an id with another record that does not list it in
    ``hs_merged_object_ids``: the connector asks for that id alone and believes the GET."""
    from sync.connectors import InstanceContext
    from plugins.hubspot.connector import HubSpotConnector
    api = "https://api.hubapi.com/crm/v3/objects/deals"
    record = {"id": "2", "properties": {"hs_object_id": "2", "hs_priority": "high",
                                        "hs_lastmodifieddate": "2025-01-01T10:00:00.000Z"}}
    rsps.post(f"{api}/batch/read", json={"status": "COMPLETE", "results": [record]})
    rsps.get(f"{api}/1", json=record)
    rsps.post("https://api.hubapi.com/crm/v4/associations/deals/companies/batch/read",
              json={"status": "COMPLETE", "results": []})
    crm = HubSpotConnector(InstanceContext("acme", {}, lambda _name: "token"))
    found = crm.fetch(["1"], ["hs_priority"])
    assert list(found) == ["1"] and found["1"].merged_into == "2"
    assert found["1"].fields == {"hs_priority": None}


# -- end to end: HubSpot and PingCode emulators, run_pair ------------------------------------------

@pytest.fixture
def stack(emulators_store):
    return emulators_store


def sync(hubspot, pingcode, store, crm=None, **options) -> dict:
    crm = crm or hubspot_connector(hubspot)
    return run_pair(Pair("merge", crm, pingcode_connector(pingcode, "rd"), MAPPING), store,
                    Options(**options))


def deal(hubspot, name: str, request: str, amount: int) -> str:
    return hubspot.seed(deals=[{"properties": {
        "dealname": name, "dealstage": "qualifiedtobuy", "amount": str(amount),
        REQUEST: request}}])["deals"][0]


def links(store) -> dict[tuple[str, str], str | None]:
    return {(link.deal_id, link.req_key): link.orphaned for link in store.links("merge")}


def writes_to(hubspot, deal_id: str, since: int) -> list[dict]:
    """Every API request from ``since`` on that writes to ``deal_id``: updates, patches, notes."""
    out = []
    for entry in hubspot.log[since:]:
        body, path = entry["body"], entry["path"]
        if entry["method"] == "PATCH" and path.endswith(f"/{deal_id}"):
            out.append(entry)
        elif path.endswith(("/batch/update", "/notes", "/notes/batch/create")):
            text = repr(body)
            if f"'{deal_id}'" in text:
                out.append(entry)
    return out


def creates(pingcode, since: int) -> int:
    return sum(1 for e in pingcode.log[since:]
               if e["method"] == "POST" and e["path"].endswith("/work_items"))


def deletes(pingcode, since: int) -> int:
    return sum(1 for e in pingcode.log[since:] if e["method"] == "DELETE")


def later(*emulators) -> None:
    for emulator in emulators:
        emulator.clock.advance(5000)


def test_two_deals_on_one_requirement_merged(stack):
    hubspot, pingcode, store = stack
    merged = deal(hubspot, "Acme (dup)", "Audit log export\nCSV every night", 250)
    primary = deal(hubspot, "Acme", "audit log  EXPORT", 100)
    first = sync(hubspot, pingcode, store)
    assert first["counts"]["created"] == 1 and first["counts"]["joined"] == 1
    key = hubspot.deal(primary)["properties"]["dealsync_requirement"]
    assert hubspot.deal(merged)["properties"]["dealsync_requirement"] == key
    assert "Acme (dup)" in pingcode.item(key)["description"]
    assert "<strong>350</strong>" in pingcode.item(key)["description"]

    later(hubspot, pingcode)
    hubspot.merge_deals(primary, merged)
    mark_h, mark_p = len(hubspot.log), len(pingcode.log)
    summary = sync(hubspot, pingcode, store)
    assert summary["status"] == "ok" and summary["counts"]["orphaned"] == 1
    assert summary["counts"]["created"] == 0
    now = links(store)
    assert now[(primary, key)] is None  # the primary keeps its link
    assert now[(merged, key)].startswith(f"{MERGED_INTO}{primary} ")
    assert creates(pingcode, mark_p) == 0 and deletes(pingcode, mark_p) == 0
    block = pingcode.item(key)["description"]
    # the PM still sees the merged deal as last seen, no longer counted: 100, not 350
    assert "Acme (dup)" in block
    assert "<strong>100</strong>" in block
    assert writes_to(hubspot, merged, mark_h) == []
    assert hubspot.history(merged)[-1]["source"] == "merge"  # nothing written since

    later(hubspot, pingcode)
    mark_h, mark_p = len(hubspot.log), len(pingcode.log)
    quiet = sync(hubspot, pingcode, store)
    counts = quiet["counts"]
    assert counts["updated_crm"] == counts["updated_tracker"] == counts["orphaned"] == 0
    assert counts["created"] == counts["linked"] == counts["joined"] == 0
    assert writes_to(hubspot, merged, mark_h) == [] and creates(pingcode, mark_p) == 0
    assert links(store) == now


def test_merged_deal_asked_for_a_requirement_the_primary_did_not(stack):
    hubspot, pingcode, store = stack
    primary = deal(hubspot, "Acme", "SCR-1", 100)
    merged = deal(hubspot, "Acme (dup)", "SCR-2\nNeeds the EU region", 250)
    sync(hubspot, pingcode, store)
    assert links(store) == {(primary, "SCR-1"): None, (merged, "SCR-2"): None}
    assert "<strong>250</strong>" in pingcode.item("SCR-2")["description"]

    later(hubspot, pingcode)
    hubspot.merge_deals(primary, merged)
    mark_h, mark_p = len(hubspot.log), len(pingcode.log)
    summary = sync(hubspot, pingcode, store)
    assert summary["counts"]["orphaned"] == 1 and summary["counts"]["created"] == 0
    assert summary["counts"]["linked"] == 0  # the primary does not ask for SCR-2
    now = links(store)
    assert set(now) == {(primary, "SCR-1"), (merged, "SCR-2")}
    assert now[(primary, "SCR-1")] is None
    assert now[(merged, "SCR-2")].startswith(f"{MERGED_INTO}{primary} ")
    assert "name this requirement there" in now[(merged, "SCR-2")]
    item = pingcode.item("SCR-2")  # never deleted: the PM still sees who asked, not counted
    assert "Acme (dup)" in item["description"] and "<strong>0</strong>" in item["description"]
    assert creates(pingcode, mark_p) == 0 and deletes(pingcode, mark_p) == 0
    assert writes_to(hubspot, merged, mark_h) == []
    assert hubspot.deal(primary)["properties"]["dealsync_requirement"] == "SCR-1"

    # the rep then names SCR-2 on the surviving deal: it links like any request
    later(hubspot, pingcode)
    hubspot.mutate(primary, {REQUEST: "SCR-1, SCR-2"})
    summary = sync(hubspot, pingcode, store)
    assert summary["counts"]["linked"] == 1 and summary["counts"]["created"] == 0
    assert links(store)[(primary, "SCR-2")] is None
    quiet = sync(hubspot, pingcode, store)["counts"]
    assert quiet["updated_crm"] == quiet["updated_tracker"] == quiet["orphaned"] == 0


def test_merge_into_a_new_record_joins_the_requirement_instead_of_creating(stack):
    """Both old ids answer for a new deal: both links are orphaned, and the new deal, asking
    what the primary asked, joins the requirement they were linked to (no duplicate)."""
    hubspot, pingcode, store = stack
    hubspot.configure(merge_new_id=True)
    first = deal(hubspot, "Acme", "Audit log export", 100)
    second = deal(hubspot, "Acme (dup)", "Audit log export", 250)
    sync(hubspot, pingcode, store)
    key = hubspot.deal(first)["properties"]["dealsync_requirement"]

    later(hubspot, pingcode)
    made = hubspot.merge_deals(first, second)["id"]
    mark_h, mark_p = len(hubspot.log), len(pingcode.log)
    summary = sync(hubspot, pingcode, store)
    assert summary["counts"]["created"] == 0 and summary["counts"]["orphaned"] == 2
    now = links(store)
    assert now[(made, key)] is None
    assert all(now[(old, key)].startswith(f"{MERGED_INTO}{made} ") for old in (first, second))
    assert creates(pingcode, mark_p) == 0
    assert writes_to(hubspot, first, mark_h) == writes_to(hubspot, second, mark_h) == []
    assert hubspot.deal(made)["properties"]["dealsync_requirement"] == key
    quiet = sync(hubspot, pingcode, store)["counts"]
    assert quiet["updated_crm"] == quiet["updated_tracker"] == quiet["created"] == 0


def test_merged_id_in_the_failure_queue(stack):
    hubspot, pingcode, store = stack
    primary = deal(hubspot, "Acme", "SCR-1", 100)
    merged = deal(hubspot, "Acme (dup)", "SCR-1", 250)
    sync(hubspot, pingcode, store)
    req_id = next(l.req_id for l in store.links("merge") if l.deal_id == merged)
    store.record_failure("merge", "update_crm", merged, "", "HTTP 502", True)
    later(hubspot, pingcode)
    hubspot.merge_deals(primary, merged)
    mark_h = len(hubspot.log)
    summary = sync(hubspot, pingcode, store, retry_all=True)
    assert summary["counts"]["orphaned"] == 1
    assert links(store)[(merged, "SCR-1")].startswith(f"{MERGED_INTO}{primary} ")
    assert store.failures("merge") == []  # settled: there is nothing left to retry
    assert writes_to(hubspot, merged, mark_h) == []
    assert {l.req_id for l in store.links("merge")} == {req_id}


class HiddenMerges:
    """A HubSpot connector whose search missed the merge (say, the index lagged): it drops the
    surviving deal and the tombstones, so only reads by id can see it."""

    def __init__(self, crm, hidden: set[str]):
        self.crm, self.hidden = crm, hidden

    def __getattr__(self, name):
        return getattr(self.crm, name)

    def iter_changed(self, *args, **kwargs):
        for found in self.crm.iter_changed(*args, **kwargs):
            if found.id not in self.hidden and found.merged_into is None:
                yield found


def test_merged_id_in_the_verify_slice(stack):
    hubspot, pingcode, store = stack
    primary = deal(hubspot, "Acme", "SCR-1", 100)
    merged = deal(hubspot, "Acme (dup)", "SCR-2", 250)
    sync(hubspot, pingcode, store)
    later(hubspot, pingcode)
    hubspot.merge_deals(primary, merged)
    mark_h = len(hubspot.log)
    crm = HiddenMerges(hubspot_connector(hubspot), {primary})
    summary = sync(hubspot, pingcode, store, crm=crm)
    assert summary["counts"]["orphaned"] == 1
    assert links(store)[(merged, "SCR-2")].startswith(f"{MERGED_INTO}{primary} ")
    reads = [e for e in hubspot.log[mark_h:] if e["path"].endswith("/batch/read")
             and {"id": merged} in e["body"]["inputs"]]
    assert reads  # found by the verify slice's read by id
    assert writes_to(hubspot, merged, mark_h) == []


def test_deal_merged_between_the_search_and_the_write(stack):
    """The search showed the deal; it is merged before its update is sent: the re-read by id
    before writing sees the merge, and the plan is made again without the deal."""
    hubspot, pingcode, store = stack
    primary = deal(hubspot, "Acme", "SCR-1", 100)
    merged = deal(hubspot, "Acme (dup)", "SCR-1", 250)
    sync(hubspot, pingcode, store)
    later(hubspot, pingcode)
    pingcode.mutate("SCR-1", priority="最高")  # both deals would get the new priority
    hubspot.mutate(merged, {"amount": "300"})  # the search shows the merged deal too
    crm = hubspot_connector(hubspot)
    fetch = crm.fetch

    def merge_then_fetch(ids, properties, with_context=True):
        if not with_context and merged in ids and hubspot.deals[merged].merged_into is None:
            hubspot.merge_deals(primary, merged)  # the re-read before writing
        return fetch(ids, properties, with_context)

    crm.fetch = merge_then_fetch
    mark_h = len(hubspot.log)
    summary = sync(hubspot, pingcode, store, crm=crm)
    assert hubspot.deals[merged].merged_into == primary  # the merge did happen mid-run
    assert summary["counts"]["orphaned"] == 1
    assert links(store)[(merged, "SCR-1")].startswith(f"{MERGED_INTO}{primary} ")
    assert writes_to(hubspot, merged, mark_h) == []
    priority = next(f for f in MAPPING.fields if f.name == "priority")
    assert hubspot.deal(primary)["properties"][priority.crm] == priority.to_crm("最高")
