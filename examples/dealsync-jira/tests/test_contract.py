"""The dealsync connector contract against the fake Jira. Run from this folder after
``pip install -e '.[test]'``: ``pytest``. dealsync's own suite runs it too, installing the plugin
from this folder (tests/test_example_plugin.py in dealsync)."""

from __future__ import annotations

import pytest
from fake_jira import EMAIL, TOKEN, FakeJira

from dealsync_jira import JiraConnector
from sync.connectors import InstanceContext
from sync.contract import TrackerContract


@pytest.fixture
def jira():
    with FakeJira() as fake:
        fake.add_issue("Existing request", "Asked by two customers.")
        yield fake


@pytest.fixture
def tracker(jira):
    settings = {"base_url": jira.url, "project": "CRM", "email": EMAIL,
                "rate_limits": {"default": {"calls": 1000, "per_seconds": 1}}}  # a fake is fast
    ctx = InstanceContext("jira", settings, {"api_token": TOKEN}.__getitem__)
    connector = JiraConnector(ctx)
    yield connector
    connector.close()


@pytest.fixture
def missing_req_id():
    return "99999"


class TestJiraTracker(TrackerContract):
    pass
