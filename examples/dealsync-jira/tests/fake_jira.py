"""A tiny in-memory Jira behind ``responses``: the few REST v2 calls the connector makes, a
three-state workflow, and just enough JQL (``project =``, ``updated >=``, ``description ~``).

    with FakeJira() as jira:
        jira.add_issue("Existing request")
        ...  # a JiraConnector with base_url=jira.url talks to it

It checks the Basic credentials, bumps ``updated`` on every write and pages searches by
``nextPageToken``, which is all the connector contract relies on.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import responses

URL = "https://jira.example.test"
EMAIL, TOKEN = "bot@example.com", "jira-token-123"
STATUSES = ["To Do", "In Progress", "Done"]
WORKFLOW = {"To Do": ["In Progress"], "In Progress": ["To Do", "Done"], "Done": ["In Progress"]}
PRIORITIES = ["Highest", "High", "Medium", "Low", "Lowest"]
ISSUE = re.compile(rf"{URL}/rest/api/2/issue/(?P<ref>[^/?]+)(?:\?.*)?$")
TRANSITIONS = re.compile(rf"{URL}/rest/api/2/issue/(?P<ref>[^/?]+)/transitions(?:\?.*)?$")


class FakeJira:
    def __init__(self, project: str = "CRM"):
        self.project, self.url = project, URL
        self.issues: dict[str, dict[str, Any]] = {}
        self.now = datetime(2025, 3, 3, 1, 0, tzinfo=timezone.utc)
        self.mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        self.calls: list[str] = []

    # -- people acting in Jira ------------------------------------------------------------------
    def add_issue(self, summary: str, description: str = "", status: str = "To Do",
                  priority: str = "Medium") -> dict[str, Any]:
        number = len(self.issues) + 1
        issue = {"id": str(10000 + number), "key": f"{self.project}-{number}", "fields": {
            "summary": summary, "description": description, "status": {"name": status},
            "priority": {"name": priority}, "project": {"key": self.project},
            "created": self._stamp(), "updated": self._stamp()}}
        self.issues[issue["id"]] = issue
        return issue

    def edit(self, key: str, **fields: Any) -> None:
        issue = self._find(key)
        for name, value in fields.items():
            issue["fields"][name] = {"name": value} if name in ("status", "priority") else value
        issue["fields"]["updated"] = self._stamp()

    def _stamp(self) -> str:
        self.now += timedelta(seconds=1)
        return self.now.strftime("%Y-%m-%dT%H:%M:%S.000+0000")

    def _find(self, ref: str) -> dict[str, Any]:
        return self.issues.get(ref) or next((i for i in self.issues.values() if i["key"] == ref),
                                            None)  # type: ignore[return-value]

    # -- the HTTP side ----------------------------------------------------------------------------
    def __enter__(self) -> "FakeJira":
        self.mock.__enter__()
        api = f"{URL}/rest/api/2"
        for method, url, handler in [
            ("GET", re.compile(rf"{api}/search/jql(\?.*)?$"), self._search),
            ("GET", re.compile(rf"{api}/priority$"), lambda q, b: (200, [
                {"name": p} for p in PRIORITIES])),
            ("GET", re.compile(rf"{api}/project/[^/]+/statuses$"), lambda q, b: (200, [
                {"name": "Story", "statuses": [{"name": s} for s in STATUSES]}])),
            ("POST", re.compile(rf"{api}/issue$"), self._create),
            ("GET", TRANSITIONS, self._transitions),
            ("POST", TRANSITIONS, self._transition),
            ("GET", ISSUE, self._get),
            ("PUT", ISSUE, self._edit),
        ]:
            self.mock.add_callback(method, url, callback=self._wrap(handler))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mock.__exit__(*exc)

    def _wrap(self, handler):
        def reply(request):
            self.calls.append(f"{request.method} {urlsplit(request.url).path}")
            expected = base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
            if request.headers.get("Authorization") != f"Basic {expected}":
                return 401, {}, json.dumps({"errorMessages": ["unauthorized"]})
            query = {k: v[0] for k, v in parse_qs(urlsplit(request.url).query).items()}
            body = json.loads(request.body) if request.body else None
            issue_url = ISSUE.match(request.url) or TRANSITIONS.match(request.url)
            ref = issue_url.group("ref") if issue_url else None
            status, payload = handler(query, {"body": body, "ref": ref})
            headers = {"Content-Type": "application/json"}
            return status, headers, "" if payload is None else json.dumps(payload)
        return reply

    def _search(self, query: dict[str, str], _: dict) -> tuple[int, Any]:
        rows = sorted(self.issues.values(), key=lambda i: i["fields"]["updated"])
        for clause in query["jql"].split(" ORDER BY")[0].split(" AND "):
            rows = [i for i in rows if self._matches(i, clause.strip())]
        start, size = int(query.get("nextPageToken", 0)), int(query.get("maxResults", 50))
        page = {"issues": rows[start:start + size], "isLast": start + size >= len(rows)}
        if not page["isLast"]:
            page["nextPageToken"] = str(start + size)
        return 200, page

    @staticmethod
    def _matches(issue: dict[str, Any], clause: str) -> bool:
        f = issue["fields"]
        if m := re.fullmatch(r'project = "(.+)"', clause):
            return f["project"]["key"] == m.group(1)
        if m := re.fullmatch(r'updated >= "(.+)"', clause):
            since = datetime.strptime(m.group(1), "%Y/%m/%d %H:%M").replace(tzinfo=timezone.utc)
            return datetime.strptime(f["updated"], "%Y-%m-%dT%H:%M:%S.%f%z") >= since
        if m := re.fullmatch(r'description ~ "\\"(.+)\\""', clause):
            return m.group(1) in (f.get("description") or "")
        raise AssertionError(f"the fake does not understand JQL {clause!r}")

    def _create(self, _: dict, req: dict) -> tuple[int, Any]:
        fields = req["body"]["fields"]
        issue = self.add_issue(fields["summary"], fields.get("description") or "",
                               priority=(fields.get("priority") or {}).get("name", "Medium"))
        return 201, {"id": issue["id"], "key": issue["key"]}

    def _get(self, _: dict, req: dict) -> tuple[int, Any]:
        issue = self._find(req["ref"])
        if issue is None:
            return 404, {"errorMessages": ["Issue does not exist or you do not have "
                                           "permission to see it."]}
        return 200, issue

    def _edit(self, _: dict, req: dict) -> tuple[int, Any]:
        issue = self._find(req["ref"])
        if issue is None:
            return 404, {"errorMessages": ["Issue does not exist"]}
        fields = req["body"]["fields"]
        if "priority" in fields and fields["priority"]["name"] not in PRIORITIES:
            return 400, {"errors": {"priority": "invalid priority"}}
        self.edit(issue["key"], **{k: v["name"] if isinstance(v, dict) else v
                                   for k, v in fields.items()})
        return 204, None

    def _transitions(self, _: dict, req: dict) -> tuple[int, Any]:
        here = self._find(req["ref"])["fields"]["status"]["name"]
        return 200, {"transitions": [{"id": str(STATUSES.index(to) + 11), "to": {"name": to}}
                                     for to in WORKFLOW[here]]}

    def _transition(self, _: dict, req: dict) -> tuple[int, Any]:
        issue = self._find(req["ref"])
        target = STATUSES[int(req["body"]["transition"]["id"]) - 11]
        if target not in WORKFLOW[issue["fields"]["status"]["name"]]:
            return 400, {"errorMessages": ["Transition is not valid"]}
        self.edit(issue["key"], status=target)
        return 204, None
