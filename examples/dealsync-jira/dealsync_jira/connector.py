"""A small Jira tracker connector: the issues of one Jira project as dealsync requirements.

It is an example of a third-party connector, kept short on purpose: Jira's REST API v2 (plain
text descriptions), an API token with Basic auth, JQL searches, and status changes through the
issue's transitions. Everything HTTP goes through dealsync's one client (``sync.http``), which
brings timeouts, retries, rate limiting, redaction and call counts. Vendor facts are cited from
Atlassian's public documentation:

- REST v2 issues, transitions, search: https://developer.atlassian.com/cloud/jira/platform/rest/v2/
- Basic auth with an API token: https://developer.atlassian.com/cloud/jira/platform/basic-auth-for-rest-apis/
- JQL date formats: https://support.atlassian.com/jira-software-cloud/docs/jql-fields/#Updated
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from sync.connectors import (NewRequirement, RateLimit, Requirement, RequirementChange,
                             SecretSpec, TrackerConnector, has_marker)
from sync.errors import ConfigError, ItemError, NotFound, TransitionError
from sync.http import Auth, HttpClient

API = "/rest/api/2"
PAGE_SIZE = 100
FIELDS = "summary,description,status,priority,created,updated,project"


class ApiToken(Auth):
    """Basic auth with the account's e-mail and an API token, read when first needed."""

    def __init__(self, email: str, token: Callable[[], str]):
        self.email, self._read_token = email, token
        self.token = ""

    def headers(self) -> dict[str, str]:
        self.token = self.token or self._read_token()
        pair = base64.b64encode(f"{self.email}:{self.token}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}

    def secret_values(self) -> list[str]:
        return [self.token]


def jira_time(value: str | None) -> datetime | None:
    """Jira prints ``2025-03-03T09:00:00.000+0000``."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z") if value else None


class JiraConnector(TrackerConnector):
    type_name = "jira"
    summary = "Jira issues of one project (REST API v2, API token) [example plugin]"
    secrets = (SecretSpec("api_token", "Jira API token (id.atlassian.com → Security)"),)
    # Jira Cloud limits by cost, not a published count; stay modest.
    default_rate_limits = {"default": RateLimit(10, 1.0)}
    required_settings = ("base_url", "project", "email")
    settings_help = {
        "base_url": "your Jira site, e.g. https://acme.atlassian.net",
        "project": "project key, e.g. CRM",
        "email": "the account the API token belongs to",
        "issue_type": "issue type of new requirements (default Story)",
    }

    def __init__(self, ctx, **http_options: Any):
        super().__init__(ctx)
        self.base_url = str(self.settings["base_url"]).rstrip("/")
        self.project = str(self.settings["project"])
        self.issue_type = str(self.settings.get("issue_type", "Story"))
        self.http = HttpClient(self.name, self.base_url, rate_limits=self.rate_limits(),
                               auth=ApiToken(str(self.settings["email"]),
                                             lambda: ctx.secret("api_token")), **http_options)
        self.clients.append(self.http)

    # -- shapes -------------------------------------------------------------------------------------
    def _requirement(self, issue: dict[str, Any]) -> Requirement:
        f = issue["fields"]
        return Requirement(
            id=str(issue["id"]), key=issue["key"], title=f.get("summary") or "",
            description=f.get("description") or "", url=f"{self.base_url}/browse/{issue['key']}",
            updated_at=jira_time(f["updated"]),  # type: ignore[arg-type]
            created_at=jira_time(f.get("created")),
            fields={"status": (f.get("status") or {}).get("name"),
                    "priority": (f.get("priority") or {}).get("name")})

    def _search(self, jql: str) -> Iterator[dict[str, Any]]:
        """Enhanced JQL search, paged by ``nextPageToken`` (absent on the last page)."""
        token = None
        while True:
            params = {"jql": jql, "fields": FIELDS, "maxResults": PAGE_SIZE}
            if token:
                params["nextPageToken"] = token
            page = self.http.json("GET", f"{API}/search/jql", params=params)
            yield from page.get("issues", [])
            token = page.get("nextPageToken")
            if not token or page.get("isLast"):
                return

    def _issue(self, id_or_key: str) -> dict[str, Any] | None:
        try:
            return self.http.json("GET", f"{API}/issue/{id_or_key}", params={"fields": FIELDS})
        except NotFound:
            return None

    # -- reading ------------------------------------------------------------------------------------
    def iter_changed(self, since: datetime | None, until: datetime) -> Iterator[Requirement]:
        """JQL compares minutes in the API user's time zone: ask a day early, filter exactly."""
        jql = f'project = "{self.project}"'
        if since is not None:
            early = (since - timedelta(days=1)).astimezone(timezone.utc)
            jql += f' AND updated >= "{early:%Y/%m/%d %H:%M}"'
        for issue in self._search(jql + " ORDER BY updated ASC"):
            req = self._requirement(issue)
            if (since is None or req.updated_at >= since) and req.updated_at <= until:
                yield req

    def fetch(self, ids: list[str]) -> dict[str, Requirement]:
        found = {}
        for req_id in ids:
            issue = self._issue(req_id)
            if issue is not None:
                found[req_id] = self._requirement(issue)
        return found

    def key_prefix(self) -> str | None:
        return self.project

    def find_by_key(self, key: str) -> Requirement | None:
        issue = self._issue(key)
        if issue is None or issue["fields"]["project"]["key"] != self.project:
            return None
        return self._requirement(issue)

    def find_by_marker(self, marker: str) -> Requirement | None:
        """Text search is by words, so a hit is confirmed against the exact marker."""
        jql = f'project = "{self.project}" AND description ~ "\\"{marker}\\"" ORDER BY created ASC'
        for issue in self._search(jql):
            if has_marker(issue["fields"].get("description"), marker):
                return self._requirement(issue)
        return None

    def field_values(self, field_name: str) -> list[str] | None:
        if field_name == "priority":
            return [p["name"] for p in self.http.json("GET", f"{API}/priority")]
        if field_name == "status":
            by_type = self.http.json("GET", f"{API}/project/{self.project}/statuses")
            kind = next((t for t in by_type if t["name"] == self.issue_type), None)
            if kind is None:
                raise ConfigError([f"tracker.{self.name}.issue_type: project {self.project} "
                                   f"has no issue type {self.issue_type!r}"])
            return [s["name"] for s in kind["statuses"]]
        return None

    # -- writing ------------------------------------------------------------------------------------
    def create(self, new: NewRequirement) -> Requirement:
        fields: dict[str, Any] = {"project": {"key": self.project},
                                  "issuetype": {"name": self.issue_type},
                                  "summary": new.title, "description": new.description}
        if new.fields.get("priority"):
            fields["priority"] = {"name": new.fields["priority"]}
        made = self.http.json("POST", f"{API}/issue", json={"fields": fields})
        status = new.fields.get("status")
        if status:
            self._transition(made["id"], status)
        return self._requirement(self._issue(made["id"]))  # type: ignore[arg-type]

    def update(self, req_id: str, change: RequirementChange) -> Requirement:
        fields: dict[str, Any] = {}
        if change.title is not None:
            fields["summary"] = change.title
        if change.description is not None:
            fields["description"] = change.description
        if "priority" in change.fields:
            fields["priority"] = {"name": change.fields["priority"]}
        unknown = set(change.fields) - {"status", "priority"}
        if unknown:
            raise ItemError(f"the Jira connector cannot write {', '.join(sorted(unknown))}",
                            retryable=False)
        if "status" in change.fields:  # first: a refused transition changes nothing
            self._transition(req_id, change.fields["status"])
        if fields:
            self.http.request("PUT", f"{API}/issue/{req_id}", json={"fields": fields})
        return self._requirement(self._issue(req_id))  # type: ignore[arg-type]

    def _transition(self, req_id: str, status: str | None) -> None:
        """Jira moves an issue by the transitions its workflow offers from where it is."""
        issue = self._issue(req_id)
        if issue is None or status in (None, issue["fields"]["status"]["name"]):
            return
        offered = self.http.json("GET", f"{API}/issue/{req_id}/transitions")["transitions"]
        match = next((t for t in offered if t["to"]["name"] == status), None)
        if match is None:
            here = issue["fields"]["status"]["name"]
            raise TransitionError(f"{issue['key']}: no transition from {here!r} to {status!r} "
                                  f"(offered: {', '.join(t['to']['name'] for t in offered)})",
                                  "add the transition to the project's workflow, or move the "
                                  "issue by hand")
        self.http.request("POST", f"{API}/issue/{req_id}/transitions",
                          json={"transition": {"id": match["id"]}})
