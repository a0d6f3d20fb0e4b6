"""The HubSpot CRM connector: deals in, requirement status and priority out.

It owns everything HubSpot-specific between the engine and ``sync.http``: the search recipe that
survives the 10,000-result cap and bulk jobs' identical timestamps (docs/hubspot.md §7, §13),
batch reads and writes of 100, the mapping of HubSpot's error shape and 429 policies to
``sync.errors``, custom deal properties, and the deal context (company, stage, owner) shown on
requirements. Timestamps become aware UTC here and nowhere else.
"""

from __future__ import annotations

import html
import logging
import time
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests

from sync.connectors import (CRMConnector, Deal, InstanceContext, RateLimit, SecretSpec,
                             WriteResult, utc)
from sync.errors import (AuthError, DealsyncError, ItemError, NotFound, RateLimitExhausted,
                         RemoteError)
from sync.http import (Auth, BearerToken, HttpClient, RefreshingToken, Throttle, describe,
                       parse_retry_after)

log = logging.getLogger("dealsync.hubspot")

DEFAULT_BASE_URL = "https://api.hubapi.com"
DEFAULT_APP_URL = "https://app.hubspot.com"
BATCH_LIMIT = 100  # batch read/update/create inputs (docs/hubspot.md §8)
SEARCH_PAGE_MAX = 200  # search page size (docs/hubspot.md §7)
SEARCH_CAP = 10_000  # results per search query (docs/hubspot.md §7)
# Burst limits by subscription tier (docs/hubspot.md §11); the search limit is 5/s on every tier.
TIER_BURST = {"free": 100, "starter": 100, "professional": 190, "enterprise": 190,
              "api_limit_increase": 250}
# What the deal context needs besides the mapped properties (docs/hubspot.md §4).
CONTEXT_PROPERTIES = ("dealname", "amount", "dealstage", "pipeline", "closedate",
                      "hubspot_owner_id", "deal_currency_code", "hs_lastmodifieddate")
# The ids merged into a deal, semicolon-separated: how a read tells which merged-away id a
# record answers for (docs/hubspot.md §15).
MERGED_IDS = "hs_merged_object_ids"
PRIMARY_COMPANY = 5  # deal -> company "Primary" association type (docs/hubspot.md §10)
NOTE_TO_DEAL = 214  # note -> deal association type (docs/hubspot.md §10)
OAUTH_EARLY_S = 600.0  # tap-hubspot renews 600 s before expiry (docs/hubspot.md §3)


def to_ms(when: datetime) -> int:
    """Epoch milliseconds, the unit of HubSpot's datetime filters (docs/hubspot.md §6)."""
    return int(utc(when).timestamp() * 1000)


def parse_time(value: Any) -> datetime | None:
    """A HubSpot timestamp (ISO with ``Z``, or epoch ms) as an aware UTC datetime."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=timezone.utc)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else utc(parsed)


def body_of(response: requests.Response) -> dict[str, Any]:
    """The JSON error or batch body; every field optional (docs/hubspot.md §12)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def merged_ids(record: dict[str, Any]) -> list[str]:
    """The ids merged into this record (``hs_merged_object_ids``, docs/hubspot.md §15), never
    its own."""
    text = str((record.get("properties") or {}).get(MERGED_IDS) or "")
    own = str(record.get("id"))
    return [i for i in dict.fromkeys(part.strip() for part in text.split(";")) if i and i != own]


def error_ids(entry: dict[str, Any]) -> list[str]:
    """The record ids a HubSpot error names, in ``context.ids`` or its sub-errors' contexts."""
    ids = list((entry.get("context") or {}).get("ids") or [])
    for sub in entry.get("errors") or []:
        ids += (sub.get("context") or {}).get("ids") or []
    return [str(i) for i in dict.fromkeys(ids)]


def error_properties(entry: dict[str, Any]) -> list[str]:
    names = list((entry.get("context") or {}).get("propertyName") or [])
    for sub in entry.get("errors") or []:
        if sub.get("in"):
            names.append(sub["in"])
        names += (sub.get("context") or {}).get("propertyName") or []
    return [str(n) for n in dict.fromkeys(names)]


def validation_detail(entry: dict[str, Any]) -> str:
    """``hs_priority: INVALID_OPTION (urgent was not one of ...)``, one part per sub-error."""
    parts = []
    for sub in entry.get("errors") or []:
        what = sub.get("in") or ",".join((sub.get("context") or {}).get("propertyName") or [])
        code = sub.get("code") or ""
        parts.append(f"{what}: {code} ({sub.get('message', '')})".strip())
    return "; ".join(parts) or str(entry.get("message") or "")


class MissingScope(AuthError):
    """The credential works but lacks a scope (HTTP 403 ``MISSING_SCOPES``); ``scopes`` names it."""

    def __init__(self, message: str, hint: str | None = None, scopes: list[str] | None = None):
        super().__init__(message, hint)
        self.scopes = scopes or []


class HubSpotConnector(CRMConnector):
    type_name = "hubspot"
    summary = "HubSpot CRM deals (API v3: search, batch update, custom properties, notes)"
    secrets = (
        SecretSpec("token", "HubSpot private-app access token (not used with auth = \"oauth\")"),
        SecretSpec("client_id", "HubSpot OAuth app client id (auth = \"oauth\" only)",
                   required=False),
        SecretSpec("client_secret", "HubSpot OAuth app client secret (auth = \"oauth\" only)",
                   required=False),
        SecretSpec("refresh_token", "HubSpot OAuth refresh token (auth = \"oauth\" only)",
                   required=False),
    )
    default_rate_limits = {"default": RateLimit(100, 10), "search": RateLimit(5, 1)}
    batch_size = BATCH_LIMIT
    concurrent = True  # its own HTTP client and state (docs/engine.md §9)
    deferred_context = ("company",)  # association and company reads: two calls per 100 deals
    setup_settings = {"base_url": DEFAULT_BASE_URL, "portal_id": None}  # `dealsync init`
    settings_help = {
        "base_url": f"API base URL (default {DEFAULT_BASE_URL})",
        "app_url": f"web app URL for deal links (default {DEFAULT_APP_URL}; EU: "
                   f"https://app-eu1.hubspot.com)",
        "portal_id": "HubSpot account (portal) id, used to link to deals; without it deals "
                     "have no URL",
        "api_prefix": "path prefix of the CRM API (default /crm/v3)",
        "auth": "\"private\" (private-app token, the default) or \"oauth\" (client id, secret "
                "and refresh token)",
        "tier": f"subscription tier for the burst limit: {', '.join(TIER_BURST)} (default "
                f"starter); rate_limits overrides it",
        "account_timezone": "the HubSpot account's time zone, when the daily limit resets "
                            "(default UTC)",
        "search_page_size": f"search page size, 1-{SEARCH_PAGE_MAX} (default {SEARCH_PAGE_MAX})",
        "search_cap": f"results HubSpot returns per search query (default {SEARCH_CAP})",
        "search_paging": "\"keyset\" (default: every page restarts from the last id, immune to "
                         "records leaving the window mid-read) or \"offset\" (follow paging.after "
                         "and restart from the last id at the cap)",
        "property_group": "group that ensure_fields puts new deal properties in (default "
                          "dealsync)",
    }

    def __init__(self, ctx: InstanceContext, *, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 clock: Callable[[], float] = time.time):
        super().__init__(ctx)
        s = self.settings
        self.base_url = str(s.get("base_url", DEFAULT_BASE_URL)).rstrip("/")
        self.app_url = str(s.get("app_url", DEFAULT_APP_URL)).rstrip("/")
        self.portal_id = str(s["portal_id"]) if s.get("portal_id") not in (None, "") else None
        self.prefix = "/" + str(s.get("api_prefix", "/crm/v3")).strip("/")
        self.page_size = int(s.get("search_page_size", SEARCH_PAGE_MAX))
        self.search_cap = int(s.get("search_cap", SEARCH_CAP))
        self.search_paging = s.get("search_paging", "keyset")
        self.group = s.get("property_group", "dealsync")
        self.account_tz = s.get("account_timezone", "UTC")
        self._session, self._sleep, self._monotonic, self._clock = session, sleep, monotonic, clock
        self._http: HttpClient | None = None
        self._oauth_http: HttpClient | None = None
        self._refresh_token: str | None = None
        self._definitions: dict[str, dict[str, Any]] | None = None
        self._stages: dict[str, tuple[str, bool]] | None = None
        self._owners: dict[str, str | None] | None = None
        self._company_names: dict[str, str | None] = {}
        self._degraded: set[str] = set()

    # -- settings ---------------------------------------------------------------------------------
    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> list[str]:
        problems = super().check_settings(settings)
        if settings.get("auth", "private") not in ("private", "oauth"):
            problems.append("auth: must be \"private\" or \"oauth\"")
        if settings.get("tier", "starter") not in TIER_BURST:
            problems.append(f"tier: must be one of {', '.join(TIER_BURST)}")
        size = settings.get("search_page_size", SEARCH_PAGE_MAX)
        if not isinstance(size, int) or not 1 <= size <= SEARCH_PAGE_MAX:
            problems.append(f"search_page_size: must be a whole number from 1 to {SEARCH_PAGE_MAX}")
        cap = settings.get("search_cap", SEARCH_CAP)
        if not isinstance(cap, int) or cap < SEARCH_PAGE_MAX:
            problems.append(f"search_cap: must be a whole number >= {SEARCH_PAGE_MAX}")
        if settings.get("search_paging", "keyset") not in ("keyset", "offset"):
            problems.append("search_paging: must be \"keyset\" or \"offset\"")
        portal = settings.get("portal_id")
        if portal is not None and not str(portal).isdigit():
            problems.append("portal_id: must be the numeric HubSpot account id")
        try:
            ZoneInfo(settings.get("account_timezone", "UTC"))
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            problems.append("account_timezone: not a known time zone (e.g. Europe/Berlin)")
        return problems

    def rate_limits(self) -> dict[str, RateLimit]:
        """The tier's burst limit and the search limit, then any ``rate_limits`` override."""
        limits = super().rate_limits()
        if "default" not in (self.settings.get("rate_limits") or {}):
            limits["default"] = RateLimit(TIER_BURST[self.settings.get("tier", "starter")], 10)
        return limits

    # -- HTTP -------------------------------------------------------------------------------------
    @property
    def http(self) -> HttpClient:
        """Built on first use, so a connector can be constructed without reading secrets."""
        if self._http is None:
            auth = self._oauth() if self.settings.get("auth") == "oauth" else \
                BearerToken(self.ctx.secret("token"))
            self._http = self._client(auth)
        return self._http

    def _client(self, auth: Auth | None, redact: Iterable[str] = (),
                map_error: Callable[[requests.Response], DealsyncError] | None = None
                ) -> HttpClient:
        client = HttpClient(self.name, self.base_url, auth=auth, rate_limits=self.rate_limits(),
                            read_throttle=self.read_throttle,
                            map_error=map_error or self.map_error, redact=redact,
                            sleep=self._sleep, monotonic=self._monotonic, session=self._session)
        self.clients.append(client)
        return client

    def _oauth(self) -> RefreshingToken:
        client_id = self.ctx.secret("client_id")
        client_secret = self.ctx.secret("client_secret")
        self._refresh_token = self.ctx.secret("refresh_token")

        def fetch() -> tuple[str, float]:
            # POST /oauth/v1/token, form-encoded (docs/hubspot.md §3). Retrying a refresh is
            # safe: at worst it mints a second access token.
            assert self._oauth_http is not None
            body = self._oauth_http.json("POST", "/oauth/v1/token", idempotent=True, data={
                "grant_type": "refresh_token", "client_id": client_id,
                "client_secret": client_secret, "refresh_token": self._refresh_token})
            if body.get("refresh_token"):  # some apps rotate refresh tokens
                self._refresh_token = body["refresh_token"]
            return body["access_token"], self._clock() + float(body.get("expires_in", 1800))

        self._oauth_http = self._client(None, redact=(client_secret, self._refresh_token,
                                                      client_id),
                                        map_error=self._map_oauth_error)
        # HubSpot says a 401 is no reliable sign of expiry, so renew ahead of the TTL
        # (docs/hubspot.md §3).
        return RefreshingToken(fetch, early_s=OAUTH_EARLY_S, clock=self._clock)

    def _map_oauth_error(self, response: requests.Response) -> DealsyncError:
        body = body_of(response)
        if response.status_code in (400, 401, 403):
            refusal = f"{body.get('status', '')}: {body.get('message', '')}".rstrip(": ")
            return AuthError(f"HubSpot refused the OAuth token refresh: HTTP "
                             f"{response.status_code} {refusal}",
                             hint=f"authorize the app again and store the new refresh token with "
                                  f"`dealsync auth set {self.name} refresh_token`")
        return self.map_error(response)

    def read_throttle(self, response: requests.Response) -> Throttle:
        """What a 429 asks for, by ``policyName`` (docs/hubspot.md §11, §13 step 5)."""
        body = body_of(response)
        policy = body.get("policyName")
        message = str(body.get("message") or "")
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if policy == "DAILY":
            resets = self._next_daily_reset()
            wait_s = max(0.0, resets.timestamp() - self._clock())
            return Throttle(wait_s=wait_s, stop=True, message=(
                f"{message} HubSpot's daily API limit resets at midnight in the account's time "
                f"zone ({self.account_tz}): {resets:%Y-%m-%d %H:%M %Z}").strip())
        if policy == "SECONDLY":  # the search limit: 5 requests per second
            return Throttle(wait_s=retry_after if retry_after is not None else 1.0,
                            message=message)
        if policy == "TEN_SECONDLY_ROLLING":
            window_ms = response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
            window_s = min(10.0, float(window_ms) / 1000) if window_ms else 10.0
            return Throttle(wait_s=retry_after if retry_after is not None else window_s,
                            message=message)
        return Throttle(wait_s=retry_after, message=message or "HTTP 429")

    def _next_daily_reset(self) -> datetime:
        local = datetime.fromtimestamp(self._clock(), tz=ZoneInfo(self.account_tz))
        return datetime.combine(local.date() + timedelta(days=1), datetime.min.time(),
                                tzinfo=local.tzinfo)

    def map_error(self, response: requests.Response) -> DealsyncError:
        """HubSpot's error shape (docs/hubspot.md §12) to the error the engine acts on."""
        body = body_of(response)
        status, category = response.status_code, body.get("category")
        where = describe(response)
        if status == 401 or category in ("INVALID_AUTHENTICATION", "EXPIRED_AUTHENTICATION"):
            which = "OAuth app credentials" if self.settings.get("auth") == "oauth" else "token"
            return AuthError(f"{where} (HubSpot rejected the {which})",
                             hint=f"store a valid private-app token with `dealsync auth set "
                                  f"{self.name} token`" if which == "token" else
                                  f"re-authorize the app and `dealsync auth set {self.name} "
                                  f"refresh_token`")
        if status == 403 or category == "MISSING_SCOPES":
            scopes = self._required_scopes(body)
            named = ", ".join(scopes) or "a scope this call needs"
            return MissingScope(f"{where} (the HubSpot credential lacks the scope {named})",
                                hint=f"add {named} to the private app's scopes in HubSpot "
                                     f"(Settings > Integrations > Private apps), then store the "
                                     f"new token", scopes=scopes)
        if status == 404 or category == "OBJECT_NOT_FOUND":
            return NotFound(where)
        if category == "VALIDATION_ERROR" or status == 400:
            names = error_properties(body)
            about = f" (property {', '.join(names)}: {validation_detail(body)})" if names else ""
            return ItemError(f"{where}{about}", retryable=False,
                             hint="check the value against the property's options in HubSpot "
                                  "(dealsync check lists them)" if names else None)
        if status == 409 or category == "CONFLICT":
            return ItemError(where, retryable=False)
        if status == 414:
            return RemoteError(where, hint="too many properties in one request", status=status)
        if 400 <= status < 500:
            return ItemError(where, retryable=False)
        return RemoteError(where, status=status, code=category)

    @staticmethod
    def _required_scopes(body: dict[str, Any]) -> list[str]:
        scopes = list((body.get("context") or {}).get("requiredScopes") or [])
        for sub in body.get("errors") or []:
            context = sub.get("context") or {}
            scopes += context.get("requiredScopes") or context.get("requiredGranularScopes") or []
        return list(dict.fromkeys(str(s) for s in scopes))

    # -- reading deals ----------------------------------------------------------------------------
    def iter_changed(self, since: datetime | None, until: datetime,
                     properties: list[str], with_context: bool = True) -> Iterator[Deal]:
        """docs/hubspot.md §7, §13: window on ``hs_lastmodifieddate`` (GTE since, LTE until),
        order by ``hs_object_id`` and restart from the last id + 1, so the 10,000-result cap and
        10k+ identical timestamps (airbyte #43317) end, and each deal comes once per read.

        By default every page restarts from the last id (``search_paging = "keyset"``): offset
        paging over a live result set skips a record whenever a deal earlier in the order is
        edited mid-read and leaves the window, and a skipped deal older than the lookback would
        never be read. ``"offset"`` follows ``paging.next.after`` as docs/hubspot.md §13
        describes.

        A deal that others were merged into also yields a tombstone for each of them
        (``Deal.merged_into``, docs/hubspot.md §15): search no longer finds those ids."""
        wanted = list(dict.fromkeys([*properties, *CONTEXT_PROPERTIES, MERGED_IDS]))
        until_ms = to_ms(until)
        since_ms = to_ms(since) if since is not None else None
        floor, after = 0, 0
        while True:
            page = self.http.json("POST", f"{self.prefix}/objects/deals/search",
                                  json=self._search_body(since_ms, until_ms, floor, after, wanted),
                                  buckets=("search", "default"), idempotent=True)
            results = page.get("results") or []
            for record, deal in zip(results, self._deals(results, properties, with_context)):
                yield deal
                yield from (_tombstone(old, deal.id, deal.updated_at, properties)
                            for old in merged_ids(record))
            next_after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not results or next_after is None:
                return
            if self.search_paging == "offset" and int(next_after) + self.page_size <= \
                    self.search_cap:
                after = int(next_after)
            else:
                floor, after = int(results[-1]["id"]) + 1, 0

    def _search_body(self, since_ms: int | None, until_ms: int, floor: int, after: int,
                     properties: list[str]) -> dict[str, Any]:
        filters = []
        if since_ms is not None:
            filters.append({"propertyName": "hs_lastmodifieddate", "operator": "GTE",
                            "value": str(since_ms)})
        filters.append({"propertyName": "hs_lastmodifieddate", "operator": "LTE",
                        "value": str(until_ms)})
        filters.append({"propertyName": "hs_object_id", "operator": "GTE", "value": str(floor)})
        return {"filterGroups": [{"filters": filters}],
                "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                "properties": properties, "limit": self.page_size, "after": str(after)}

    def fetch(self, ids: list[str], properties: list[str],
              with_context: bool = True) -> dict[str, Deal]:
        """Batch read, 100 per call (docs/hubspot.md §8). An id is left out only when HubSpot named
        it not found; anything else it failed to return raises. Without context, the company
        association reads are skipped (half the calls).

        HubSpot answers a merged-away id with the deal it was merged into, under that deal's
        id (docs/hubspot.md §15). Such an id maps to a tombstone (``Deal.merged_into``), never
        to the other deal's values; the other deal is not added unless it was asked for."""
        wanted = list(dict.fromkeys([*properties, *CONTEXT_PROPERTIES, MERGED_IDS]))
        unique = list(dict.fromkeys(str(i) for i in ids))
        found: dict[str, Deal] = {}
        for start in range(0, len(unique), BATCH_LIMIT):
            chunk = unique[start:start + BATCH_LIMIT]
            body = self.http.json("POST", f"{self.prefix}/objects/deals/batch/read",
                                  json={"properties": wanted, "inputs": [{"id": i} for i in chunk]},
                                  idempotent=True)
            results = body.get("results") or []
            not_found: set[str] = set()
            for entry in body.get("errors") or []:
                if entry.get("category") != "OBJECT_NOT_FOUND":
                    raise RemoteError(f"{self.name}: HubSpot batch read failed for some deals: "
                                      f"{entry.get('category')}: {entry.get('message')}")
                not_found.update(error_ids(entry))
            asked, answered = set(chunk), {str(r["id"]) for r in results}
            merged = {old: r for r in results for old in merged_ids(r)
                      if old in asked and old not in answered}
            unanswered = asked - answered - not_found - set(merged)
            if unanswered and answered - asked:
                # a record nobody asked for that does not say whom it stands for: ask by id
                for deal_id in sorted(unanswered):
                    record = self._read_one(deal_id, wanted)
                    if record is None:
                        not_found.add(deal_id)
                    elif str(record["id"]) != deal_id:
                        merged[deal_id] = record
                    else:
                        results.append(record)
                unanswered = set()
            if unanswered:
                raise RemoteError(f"{self.name}: HubSpot batch read returned neither these deals "
                                  f"nor a not-found for them: {sorted(unanswered)}")
            own = [r for r in results if str(r["id"]) in asked]
            found.update((deal.id, deal) for deal in self._deals(own, properties, with_context))
            for old, record in merged.items():
                log.info("%s: deal %s was merged into deal %s", self.name, old, record["id"])
                found[old] = _tombstone(old, str(record["id"]), _modified(record), properties)
        return found

    def _read_one(self, deal_id: str, wanted: list[str]) -> dict[str, Any] | None:
        """``GET .../deals/{id}``: the record this id answers for, None if HubSpot says none."""
        try:
            return self.http.json("GET", f"{self.prefix}/objects/deals/{deal_id}",
                                  params={"properties": ",".join(wanted)})
        except NotFound:
            return None

    def _deals(self, records: list[dict[str, Any]], properties: list[str],
               with_context: bool = True) -> list[Deal]:
        companies = self._companies_of([str(r["id"]) for r in records]) if with_context else {}
        return [self._deal(record, properties, companies.get(str(record["id"])))
                for record in records]

    def _deal(self, record: dict[str, Any], properties: list[str], company: str | None) -> Deal:
        props = record.get("properties") or {}
        deal_id = str(record["id"])
        stage_label, is_open = self._stage(props.get("dealstage"))
        return Deal(
            id=deal_id,
            updated_at=_modified(record),
            fields={name: props.get(name) if props.get(name) != "" else None
                    for name in properties},
            name=props.get("dealname") or "",
            url=f"{self.app_url}/contacts/{self.portal_id}/deal/{deal_id}" if self.portal_id
            else None,
            company=company, stage=stage_label, amount=_amount(props.get("amount")),
            currency=props.get("deal_currency_code") or None,
            close_date=_iso_date(props.get("closedate")),
            owner=self._owner(props.get("hubspot_owner_id")), is_open=is_open)

    def fill_context(self, deals: list[Deal]) -> None:
        """The primary company of each deal (two batch reads per 100 deals,
        docs/hubspot.md §10); stage and owner come with every read at no extra cost."""
        companies = self._companies_of([deal.id for deal in deals])
        for deal in deals:
            deal.company = companies.get(deal.id)

    # -- deal context (cached for the connector's life, i.e. one run) --------------------------
    def _context(self, kind: str, call: Callable[[], Any]) -> Any:
        """Context is for display: a token without the scope for it loses the context, not
        the sync. The warning names the scope once."""
        if kind in self._degraded:
            return None
        try:
            return call()
        except MissingScope as exc:  # a rejected token (401) still stops the run
            self._degraded.add(kind)
            log.warning("%s: no deal %s in requirement context: %s", self.name, kind, exc)
            return None

    def _companies_of(self, deal_ids: list[str]) -> dict[str, str | None]:
        """Deal id -> primary company name, via v4 batch association reads
        (docs/hubspot.md §10)."""
        primary: dict[str, str] = {}
        for start in range(0, len(deal_ids), BATCH_LIMIT):
            chunk = deal_ids[start:start + BATCH_LIMIT]
            body = self._context("company", lambda: self.http.json(
                "POST", "/crm/v4/associations/deals/companies/batch/read", idempotent=True,
                json={"inputs": [{"id": i} for i in chunk]}))
            if body is None:
                return {}
            for result in body.get("results") or []:
                links = result.get("to") or []
                chosen = next((link for link in links if any(
                    kind.get("typeId") == PRIMARY_COMPANY
                    for kind in link.get("associationTypes") or [])), links[0] if links else None)
                if chosen is not None:
                    primary[str(result["from"]["id"])] = str(chosen["toObjectId"])
        self._load_company_names(set(primary.values()) - set(self._company_names))
        return {deal: self._company_names.get(company) for deal, company in primary.items()}

    def _load_company_names(self, company_ids: set[str]) -> None:
        pending = sorted(company_ids)
        for start in range(0, len(pending), BATCH_LIMIT):
            chunk = pending[start:start + BATCH_LIMIT]
            body = self._context("company", lambda: self.http.json(
                "POST", f"{self.prefix}/objects/companies/batch/read", idempotent=True,
                json={"properties": ["name"], "inputs": [{"id": i} for i in chunk]}))
            if body is None:
                return
            for company in chunk:
                self._company_names.setdefault(company, None)
            for record in body.get("results") or []:
                self._company_names[str(record["id"])] = \
                    (record.get("properties") or {}).get("name") or None

    def _stage(self, stage_id: str | None) -> tuple[str | None, bool]:
        """Stage label and whether the deal is still open (``isClosed``, docs/hubspot.md §4)."""
        if not stage_id:
            return None, True
        if self._stages is None or stage_id not in self._stages:
            self._load_pipelines()
            # a stage no pipeline lists (deleted, or no scope): show its id, count it as open
            self._stages.setdefault(stage_id, (stage_id, True))  # type: ignore[union-attr]
        return self._stages[stage_id]  # type: ignore[index]

    def _load_pipelines(self) -> None:
        body = self._context("stage", lambda: self.http.json(
            "GET", f"{self.prefix}/pipelines/deals")) or {}
        stages = dict(self._stages or {})
        for pipeline in body.get("results") or []:
            for stage in pipeline.get("stages") or []:
                closed = str((stage.get("metadata") or {}).get("isClosed", "false")).lower()
                stages[str(stage["id"])] = (stage.get("label") or stage["id"], closed != "true")
        self._stages = stages

    def _owner(self, owner_id: str | None) -> str | None:
        if not owner_id:
            return None
        if self._owners is None:
            self._owners = self._load_owners()
        if owner_id not in self._owners:  # an owner added since the list was read
            self._owners[owner_id] = self._read_owner(owner_id)
        return self._owners[owner_id]

    def _load_owners(self) -> dict[str, str | None]:
        owners: dict[str, str | None] = {}
        params: dict[str, Any] = {"limit": 100}
        while True:
            body = self._context("owner", lambda: self.http.json(
                "GET", f"{self.prefix}/owners", params=dict(params)))
            if body is None:
                return owners
            for owner in body.get("results") or []:
                owners[str(owner["id"])] = _owner_name(owner)
            after = ((body.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return owners
            params["after"] = after

    def _read_owner(self, owner_id: str) -> str | None:
        try:
            owner = self._context("owner", lambda: self.http.json(
                "GET", f"{self.prefix}/owners/{owner_id}"))
        except NotFound:
            return None
        return _owner_name(owner) if owner else None

    # -- writing deals ----------------------------------------------------------------------------
    def update(self, updates: list[tuple[str, dict[str, str | None]]]) -> list[WriteResult]:
        """Batch update in chunks of 100 (docs/hubspot.md §8). A 207 or a 400 that names ids fails
        only those deals and the rest are sent again; a 400 that names none is bisected to find
        them."""
        outcome: dict[int, WriteResult] = {}
        outage: ItemError | None = None
        for chunk in self._chunks(updates):
            if outage is None:
                try:
                    self._update_chunk(chunk, outcome)
                except ItemError as exc:  # e.g. AmbiguousWrite: this chunk's fate is unknown
                    self._fail_rest(chunk, outcome, exc)
                except RateLimitExhausted:
                    raise  # the DAILY quota: stop the run and keep the cursor
                except RemoteError as exc:
                    # Retries did not cure it: stop sending, queue this chunk and the rest, and
                    # keep the results of the chunks already written.
                    outage = ItemError(str(exc), hint=exc.hint, retryable=True)
            if outage is not None:
                self._fail_rest(chunk, outcome, outage)
        return [outcome[i] for i in range(len(updates))]

    @staticmethod
    def _fail_rest(chunk: list[tuple[int, tuple[str, dict[str, str | None]]]],
                   outcome: dict[int, WriteResult], error: ItemError) -> None:
        for index, (deal_id, _) in chunk:
            outcome.setdefault(index, WriteResult(deal_id, error=error))

    @staticmethod
    def _chunks(updates: list[tuple[str, dict[str, str | None]]]
                ) -> Iterator[list[tuple[int, tuple[str, dict[str, str | None]]]]]:
        """Chunks of up to 100 with no id twice (HubSpot refuses duplicates with a 400)."""
        chunk: list[tuple[int, tuple[str, dict[str, str | None]]]] = []
        ids: set[str] = set()
        for index, (deal_id, values) in enumerate(updates):
            deal_id = str(deal_id)
            if len(chunk) == BATCH_LIMIT or deal_id in ids:
                yield chunk
                chunk, ids = [], set()
            chunk.append((index, (deal_id, values)))
            ids.add(deal_id)
        if chunk:
            yield chunk

    def _update_chunk(self, chunk: list[tuple[int, tuple[str, dict[str, str | None]]]],
                      outcome: dict[int, WriteResult]) -> None:
        pending = list(chunk)
        while pending:
            response = self.http.request(
                "POST", f"{self.prefix}/objects/deals/batch/update",
                # Setting absolute values is idempotent: a replay after a 5xx writes the same
                # values again (the echo is suppressed by the base), so retries are safe here.
                json={"inputs": [{"id": deal_id, "properties": _wire(values)}
                                 for _, (deal_id, values) in pending]},
                idempotent=True, ok=(200, 201, 207, 400, 404))
            body = body_of(response)
            if response.status_code in (200, 201, 207):
                self._settle(pending, body, outcome)
                return
            named = self._named_errors(response, body)
            if named.keys() & {deal_id for _, (deal_id, _) in pending}:
                for index, (deal_id, _) in pending:
                    if deal_id in named:
                        outcome[index] = WriteResult(deal_id, error=named[deal_id])
                pending = [item for item in pending if item[1][0] not in named]
                continue  # the batch was refused as a whole: send the good ones again
            if response.status_code == 404 or not body.get("category") or \
                    body.get("category") not in ("VALIDATION_ERROR", "OBJECT_NOT_FOUND"):
                raise self.map_error(response)
            if len(pending) == 1:
                index, (deal_id, _) = pending[0]
                outcome[index] = WriteResult(deal_id, error=self._item_error(response, body))
                return
            middle = len(pending) // 2
            self._update_chunk(pending[:middle], outcome)
            self._update_chunk(pending[middle:], outcome)
            return

    def _settle(self, pending: list[tuple[int, tuple[str, dict[str, str | None]]]],
                body: dict[str, Any], outcome: dict[int, WriteResult]) -> None:
        written = {str(r["id"]): r for r in body.get("results") or []}
        errors: dict[str, ItemError] = {}
        for entry in body.get("errors") or []:
            for deal_id in error_ids(entry):
                errors[deal_id] = self._entry_error(entry, deal_id)
        for index, (deal_id, _) in pending:
            if deal_id in errors:
                outcome[index] = WriteResult(deal_id, error=errors[deal_id])
            elif deal_id in written:
                record = written[deal_id]
                outcome[index] = WriteResult(deal_id, record=record, updated_at=parse_time(
                    (record.get("properties") or {}).get("hs_lastmodifieddate")
                    or record.get("updatedAt")))
            elif set(written) - {deal_id for _, (deal_id, _) in pending}:
                # another deal answered: this id was merged away (docs/hubspot.md §15); the
                # retry reads it by id first, which orphans its links
                outcome[index] = WriteResult(deal_id, error=ItemError(
                    f"{self.name}: HubSpot answered the update of deal {deal_id} with another "
                    f"deal; it was probably merged into it"))
            else:
                outcome[index] = WriteResult(deal_id, error=ItemError(
                    f"{self.name}: HubSpot's batch update answered neither success nor an error "
                    f"for deal {deal_id}"))

    def _entry_error(self, entry: dict[str, Any], deal_id: str) -> ItemError:
        category = entry.get("category")
        if category == "OBJECT_NOT_FOUND":
            return NotFound(f"{self.name}: deal {deal_id} does not exist in HubSpot")
        names = error_properties(entry)
        return ItemError(f"{self.name}: HubSpot refused the update of deal {deal_id}: "
                         f"{category}: {validation_detail(entry)}", retryable=category not in (
                             "VALIDATION_ERROR",),
                         hint=f"check the value of {', '.join(names)} against the property's "
                              f"options in HubSpot" if names else None)

    def _named_errors(self, response: requests.Response, body: dict[str, Any]
                      ) -> dict[str, ItemError]:
        """Deal id -> its error, from a whole-batch 400/404 whose body names ids."""
        named: dict[str, ItemError] = {}
        for sub in body.get("errors") or []:
            for deal_id in error_ids(sub):
                named[deal_id] = self._entry_error({"category": body.get("category"),
                                                    "errors": [sub]}, deal_id)
        fallback = None
        for deal_id in error_ids(body):
            if deal_id not in named:
                fallback = fallback or self._item_error(response, body)
                named[deal_id] = fallback
        return named

    def _item_error(self, response: requests.Response, body: dict[str, Any]) -> ItemError:
        error = self.map_error(response)
        if isinstance(error, ItemError):
            return error
        return ItemError(str(error), retryable=False)

    def add_note(self, deal_id: str, text: str) -> str:
        """Write a note on a deal (docs/hubspot.md §10); returns the note id. A create:
        never re-sent after an ambiguous failure (``AmbiguousWrite``)."""
        body = self.http.json("POST", f"{self.prefix}/objects/notes",
                              json=self._note_input(deal_id, text))
        return str(body["id"])

    def add_notes(self, notes: list[tuple[str, str]]) -> list[WriteResult]:
        """Notes in batches of 100 (``notes/batch/create``, docs/hubspot.md §10). HubSpot creates a
        batch all or nothing, so a refused batch fails each of its notes; an ambiguous one is not
        re-sent."""
        results: list[WriteResult] = []
        for start in range(0, len(notes), BATCH_LIMIT):
            chunk = notes[start:start + BATCH_LIMIT]
            try:
                body = self.http.json("POST", f"{self.prefix}/objects/notes/batch/create",
                                      json={"inputs": [self._note_input(d, t) for d, t in chunk]})
            except ItemError as exc:
                results += [WriteResult(deal_id, error=exc) for deal_id, _ in chunk]
                continue
            created = body.get("results") or []
            results += [WriteResult(deal_id, record=str(created[n]["id"]) if n < len(created)
                                    else None) for n, (deal_id, _) in enumerate(chunk)]
        return results

    def _note_input(self, deal_id: str, text: str) -> dict[str, Any]:
        stamp = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
        return {"properties": {"hs_timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.")
                               + f"{stamp.microsecond // 1000:03d}Z",
                               # the note body is HTML; text from the tracker is escaped first
                               "hs_note_body": html.escape(text)[:65_536]},
                "associations": [{"to": {"id": str(deal_id)}, "types": [
                    {"associationCategory": "HUBSPOT_DEFINED",
                     "associationTypeId": NOTE_TO_DEAL}]}]}

    # -- deal properties (docs/hubspot.md §9) -----------------------------------------------------
    def _definitions_by_name(self) -> dict[str, dict[str, Any]]:
        if self._definitions is None:
            body = self.http.json("GET", f"{self.prefix}/properties/deals")
            self._definitions = {d["name"]: d for d in body.get("results") or []}
        return self._definitions

    def field_options(self, field_name: str) -> list[str] | None:
        definition = self._definitions_by_name().get(field_name)
        if definition is None:
            return None
        if definition.get("type") == "bool":
            return ["true", "false"]
        if definition.get("type") != "enumeration":
            return None
        return [str(o["value"]) for o in definition.get("options") or [] if not o.get("hidden")]

    def missing_fields(self, names: Iterable[str]) -> list[str]:
        known = self._definitions_by_name()
        return [name for name in names if name not in known]

    def ensure_fields(self, specs: dict[str, list[str] | None]) -> list[str]:
        """Create missing deal properties in the ``dealsync`` group: an enumeration (select) for a
        list of options, a string otherwise. An existing custom enumeration that lacks some of
        the options gets them added. Returns the names created or extended."""
        known = self._definitions_by_name()
        changed = []
        for name, options in specs.items():
            definition = known.get(name)
            if definition is None:
                self._ensure_group()
                self._create_property(name, options)
                changed.append(name)
            elif options and definition.get("type") == "enumeration" and \
                    not definition.get("hubspotDefined"):
                present = [o["value"] for o in definition.get("options") or []]
                missing = [o for o in options if o not in present]
                if missing:
                    self.http.json("PATCH", f"{self.prefix}/properties/deals/{name}", json={
                        "options": [*definition["options"], *_options(missing, len(present))]})
                    changed.append(name)
        if changed:
            self._definitions = None
        return changed

    def _ensure_group(self) -> None:
        response = self.http.request("POST", f"{self.prefix}/properties/deals/groups",
                                     json={"name": self.group, "label": "dealsync"},
                                     idempotent=True, ok=(200, 201, 409))
        if response.status_code == 409:
            log.debug("%s: property group %s exists", self.name, self.group)

    def _create_property(self, name: str, options: list[str] | None) -> None:
        spec: dict[str, Any] = {"name": name, "label": _label(name), "groupName": self.group,
                                "description": "Maintained by dealsync", "formField": False,
                                "hasUniqueValue": False}
        if options:
            spec.update(type="enumeration", fieldType="select", options=_options(options, 0))
        else:
            spec.update(type="string", fieldType="text")
        # A replayed create meets 409 CONFLICT (the property exists), so a retry cannot make a
        # second one: this create is safe to treat as idempotent.
        self.http.request("POST", f"{self.prefix}/properties/deals", json=spec, idempotent=True,
                          ok=(200, 201, 409))


def _tombstone(deal_id: str, into: str, updated_at: datetime, properties: list[str]) -> Deal:
    """What a deal id merged into deal ``into`` reads as: no values of its own, only where it
    went (``Deal.merged_into``), so nothing of ``into`` is taken for it (docs/hubspot.md §15)."""
    return Deal(id=deal_id, updated_at=updated_at, fields=dict.fromkeys(properties),
                merged_into=into)


def _modified(record: dict[str, Any]) -> datetime:
    props = record.get("properties") or {}
    return (parse_time(props.get("hs_lastmodifieddate")) or parse_time(record.get("updatedAt"))
            or datetime.now(timezone.utc))


def _wire(values: dict[str, str | None]) -> dict[str, str]:
    """HubSpot clears a property with an empty string; all values travel as strings
    (docs/hubspot.md §4)."""
    return {name: "" if value is None else str(value) for name, value in values.items()}


def _options(values: list[str], start: int) -> list[dict[str, Any]]:
    return [{"label": _label(v), "value": v, "displayOrder": start + i, "hidden": False}
            for i, v in enumerate(values)]


def _label(name: str) -> str:
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _amount(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _iso_date(value: Any) -> str | None:
    try:
        when = parse_time(value)
    except ValueError:
        try:
            return date.fromisoformat(str(value)[:10]).isoformat()
        except ValueError:
            return None
    return when.date().isoformat() if when else None


def _owner_name(owner: dict[str, Any]) -> str | None:
    name = " ".join(p for p in (owner.get("firstName"), owner.get("lastName")) if p).strip()
    return name or owner.get("email") or None
