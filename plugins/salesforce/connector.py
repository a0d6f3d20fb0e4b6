"""The Salesforce CRM connector: Opportunities in, requirement status and priority out.

It owns everything Salesforce-specific between the engine and ``sync.http``: the three OAuth grants
and a session without an expiry time (docs/salesforce.md §1), the incremental SOQL read on
``SystemModstamp`` that keeps ties and halves its window on ``QUERY_TIMEOUT``
(docs/salesforce.md §2-4), reads by id, sObject Collections writes of 200 with per-record results
(docs/salesforce.md §6), describe for missing fields and picklist values, and the setup steps an
admin follows because the REST API cannot create fields (docs/salesforce.md §7), the daily API
allocation (docs/salesforce.md §8), the mapping of the error array to ``sync.errors``
(docs/salesforce.md §9), and deal notes as completed Tasks on the opportunity
(docs/salesforce.md §11). Timestamps become aware UTC here and nowhere else.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import requests

from sync.connectors import (CRMConnector, Deal, FieldSetup, InstanceContext, SecretSpec,
                             WriteResult, utc)
from sync.errors import (AmbiguousWrite, AuthError, ConfigError, DealsyncError, ItemError,
                         NotFound, RateLimitExhausted, RemoteError)
from sync.http import HttpClient, RefreshingToken

# Salesforce's id checksum (docs/salesforce.md §2), the same function the emulator uses.
from .schema import normalize_id

log = logging.getLogger("dealsync.salesforce")

DEFAULT_LOGIN_URL = "https://login.salesforce.com"
GENERIC_LOGIN_HOSTS = ("login.salesforce.com", "test.salesforce.com")
DEFAULT_API_VERSION = "v60.0"
AUTH_FLOWS = ("client_credentials", "refresh_token", "jwt")
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_LIFETIME_S = 150  # "exp" at most about three minutes ahead (docs/salesforce.md §1)
COLLECTIONS_MAX = 200  # records per sObject Collections call (docs/salesforce.md §6)
# records per query batch, and the smallest batchSize hint (docs/salesforce.md §3)
QUERY_BATCH_MAX = 2000
QUERY_BATCH_MIN = 200
IDS_PER_QUERY = 200  # ids per ``Id IN (...)``: under 6 KB of URL, well inside proxy limits
# public connectors stop at 80% of the allocation (docs/salesforce.md §8)
DEFAULT_MAX_API_SHARE = 0.8
# What the deal context needs besides the mapped fields, read in the same query
# (docs/salesforce.md §2).
CONTEXT_FIELDS = ("Name", "StageName", "Amount", "CloseDate", "IsClosed", "Account.Name",
                  "Owner.Name")
LONG_TEXT_LENGTH = 32_768  # a Text Area (Long) field's default length
TASK_SUBJECT_LENGTH = 255  # Task.Subject and Task.Description lengths (docs/salesforce.md §11)
TASK_DESCRIPTION_LENGTH = 32_000
USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*")
VERSION = re.compile(r"v\d+\.\d")

# errorCode groups (docs/salesforce.md §6, §9; the codes are Salesforce's own).
GONE = {"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "MALFORMED_ID", "NOT_FOUND"}
BAD_NAME = {"INVALID_FIELD", "INVALID_TYPE", "MALFORMED_QUERY", "INVALID_QUERY_FILTER_OPERATOR"}
REFUSED_VALUE = {"INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", "INVALID_FIELD",
                 "INVALID_FIELD_FOR_INSERT_UPDATE", "STRING_TOO_LONG", "REQUIRED_FIELD_MISSING",
                 "INVALID_TYPE_ON_FIELD_IN_RECORD", "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                 "FIELD_INTEGRITY_EXCEPTION", "JSON_PARSER_ERROR"}
NO_ACCESS = {"API_DISABLED_FOR_ORG", "API_CURRENTLY_DISABLED", "INSUFFICIENT_ACCESS",
             "INSUFFICIENT_ACCESS_OR_READONLY", "INVALID_AUTH_HEADER", "INVALID_SESSION_ID"}


class QueryTimeout(RemoteError):
    """400 ``QUERY_TIMEOUT``: the query's window was too wide (docs/salesforce.md §4)."""


# --- values at the edge --------------------------------------------------------------------------

def parse_time(value: Any) -> datetime | None:
    """``2025-05-08T21:20:00.000+0000`` (docs/salesforce.md §2) as an aware UTC datetime."""
    if value in (None, ""):
        return None
    return utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))


def soql_datetime(when: datetime) -> str:
    """A SOQL datetime literal: unquoted, with a zone, to the second (docs/salesforce.md §4)."""
    return utc(when).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_second(when: datetime) -> datetime:
    """Salesforce stores datetimes to the second (docs/salesforce.md §2)."""
    return utc(when).replace(microsecond=0)


def reply_summary(response: requests.Response) -> str:
    """``GET https://…/query: HTTP 400: INVALID_FIELD: No such column …``: the path without its
    query string (a SOQL statement of 200 ids says nothing a person needs), then the error."""
    code, message = first_error(response)
    request = response.request
    url = (request.url if request is not None else response.url) or ""
    method = request.method if request is not None else "?"
    detail = ": ".join(part for part in (code, " ".join(message.split())) if part)
    return f"{method} {url.split('?')[0]}: HTTP {response.status_code}" + \
        (f": {detail}" if detail else "")


def first_error(response: requests.Response) -> tuple[str | None, str]:
    """``(errorCode, message)`` of the error array (docs/salesforce.md §9), any field optional."""
    try:
        body = response.json()
    except ValueError:
        return None, ""
    entry = body[0] if isinstance(body, list) and body else body
    if not isinstance(entry, dict):
        return None, ""
    return entry.get("errorCode") or entry.get("statusCode"), str(entry.get("message") or "")


def field_value(record: dict[str, Any], path: str) -> Any:
    """A field of a query record by API name, any case; ``Account.Name`` walks the nested
    relationship object, which is null when the lookup is empty (docs/salesforce.md §3)."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        key = part if part in value else next((k for k in value if k.lower() == part.lower()),
                                              None)
        value = value.get(key) if key is not None else None
    return value


def as_text(value: Any) -> str | None:
    """A field value as the engine sees it: text, or None for null and empty."""
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _amount(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class _Seen:
    """De-duplication by ``(Id, SystemModstamp)`` within one read, across halved windows and
    re-queries. Rows come in ``SystemModstamp`` order, so a row older than the newest stamp
    seen was read already, and only the ids at that newest stamp need remembering."""

    def __init__(self) -> None:
        self.stamp: datetime | None = None
        self.ids: set[str] = set()

    def first_time(self, record_id: str, stamp: datetime) -> bool:
        if self.stamp is None or stamp > self.stamp:
            self.stamp, self.ids = stamp, {record_id}
            return True
        if stamp < self.stamp or record_id in self.ids:
            return False
        self.ids.add(record_id)
        return True


@dataclass(frozen=True)
class _Window:
    """``SystemModstamp >= low`` (no bound when None) and ``<= high`` (``<`` when not
    ``inclusive``: the first half of a halved window)."""

    low: datetime | None
    high: datetime
    inclusive: bool = True

    def where(self) -> str:
        conditions = [f"SystemModstamp >= {soql_datetime(self.low)}"] if self.low else []
        conditions.append(f"SystemModstamp {'<=' if self.inclusive else '<'} "
                          f"{soql_datetime(self.high)}")
        return " AND ".join(conditions)

    def halves(self) -> list[_Window]:
        assert self.low is not None
        middle = to_second(self.low + (self.high - self.low) / 2)
        return [_Window(self.low, middle, False), _Window(middle, self.high, self.inclusive)]


# --- custom fields an admin creates (docs/salesforce.md §7) --------------------------------------

@dataclass(frozen=True)
class FieldPlan:
    """One Opportunity field as the mapping needs it: to create (``exists`` False), or an
    existing picklist that lacks ``missing_values``. ``type`` is the describe type."""

    name: str
    type: str  # picklist | textarea | url | string
    length: int = 0
    values: tuple[str, ...] = ()
    exists: bool = False
    missing_values: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.name.removesuffix("__c").replace("_", " ").strip()

    def summary(self) -> str:
        if self.exists:
            return f"a picklist that also has the values {', '.join(self.missing_values)}"
        return {"picklist": f"a restricted picklist with the values {', '.join(self.values)}",
                "textarea": f"a Text Area (Long) field of {self.length:,} characters",
                "url": "a URL field",
                "string": f"a Text field of {self.length} characters"}[self.type]

    def steps(self) -> tuple[str, ...]:
        where = "Setup > Object Manager > Opportunity > Fields & Relationships"
        if self.exists:
            return (f"{where} > {self.label} ({self.name}) > Values > New",
                    f"enter, one per line: {', '.join(self.missing_values)}; Save")
        api_name = self.name.removesuffix("__c")
        kind = {"picklist": "Picklist", "textarea": "Text Area (Long)", "url": "URL",
                "string": "Text"}[self.type]
        detail = {"picklist": f"values, one per line in this order: {', '.join(self.values)}; "
                              "tick \"Restrict picklist to the values defined in the value "
                              "set\"",
                  "textarea": f"Length {self.length}, Visible Lines 5",
                  "url": "no length to set",
                  "string": f"Length {self.length}"}[self.type]
        return (f"{where} > New; Data Type: {kind}; Next",
                f"Field Label: {self.label}; Field Name: {api_name} (the API name becomes "
                f"{self.name}); {detail}; Next",
                "Field-Level Security: Visible, not Read-Only, for the profile or permission "
                "set of the integration user dealsync logs in as; Next",
                "add it to the Opportunity page layouts sales uses; Save")


# --- the connector -------------------------------------------------------------------------------

class SalesforceConnector(CRMConnector):
    type_name = "salesforce"
    summary = ("Salesforce Opportunities (REST: SOQL on SystemModstamp, sObject Collections, "
               "describe, notes as Tasks)")
    secrets = (
        SecretSpec("client_id", "Salesforce connected app consumer key"),
        SecretSpec("client_secret", "connected app consumer secret (auth client_credentials or "
                                    "refresh_token)", required=False),
        SecretSpec("refresh_token", "OAuth refresh token (auth refresh_token)", required=False),
        SecretSpec("private_key", "PEM private key of the certificate uploaded to the connected "
                                  "app (auth jwt, unless private_key_file is set)",
                   required=False),
    )
    # no per-second limit, only the daily allocation (docs/salesforce.md §8)
    default_rate_limits = {}
    batch_size = COLLECTIONS_MAX
    concurrent = True  # its own HTTP client and state (docs/engine.md §9)
    # `dealsync init`: login.salesforce.com is refused for client_credentials, so no default
    setup_settings = {"auth": "client_credentials", "login_url": None}
    settings_help = {
        "auth": "\"client_credentials\" (the default), \"refresh_token\" or \"jwt\"",
        "login_url": f"where the token is requested: the org's My Domain URL "
                     f"(https://NAME.my.salesforce.com; required for client_credentials), or "
                     f"{DEFAULT_LOGIN_URL} / https://test.salesforce.com (sandboxes)",
        "username": "the Salesforce user the JWT bearer flow logs in as (auth jwt)",
        "jwt_audience": f"the JWT's aud: {DEFAULT_LOGIN_URL} (default), or "
                        f"https://test.salesforce.com for a sandbox",
        "private_key_file": "path to the PEM private key for auth jwt (instead of the "
                            "private_key secret)",
        "api_version": f"REST API version (default {DEFAULT_API_VERSION})",
        "max_api_share": f"stop the run cleanly once this share of the org's daily API calls is "
                         f"used (default {DEFAULT_MAX_API_SHARE})",
        "query_batch_size": f"records per query page, {QUERY_BATCH_MIN}-{QUERY_BATCH_MAX} "
                            f"(default {QUERY_BATCH_MAX})",
        "app_url": "web URL for opportunity links (default: the instance_url of the login)",
    }

    def __init__(self, ctx: InstanceContext, *, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 clock: Callable[[], float] = time.time):
        super().__init__(ctx)
        s = self.settings
        self.auth = s.get("auth", "client_credentials")
        self.login_url = str(s.get("login_url", DEFAULT_LOGIN_URL)).rstrip("/")
        self.api = f"/services/data/{s.get('api_version', DEFAULT_API_VERSION)}"
        self.max_api_share = float(s.get("max_api_share", DEFAULT_MAX_API_SHARE))
        self.batch = int(s.get("query_batch_size", QUERY_BATCH_MAX))
        self.instance_url: str | None = None
        #: ``(used, allocation)`` from the last ``Sforce-Limit-Info`` header (docs/salesforce.md §8)
        self.api_usage: tuple[int, int] | None = None
        self._session = session or requests.Session()
        # Every response passes here, retried and refused ones too: the usage header is on all.
        self._session.hooks["response"].append(self._note_usage)
        self._sleep, self._monotonic, self._clock = sleep, monotonic, clock
        self._http: HttpClient | None = None
        self._login_http: HttpClient | None = None
        self._refresh_token: str | None = None
        self._key: Any = None
        self._described: dict[str, dict[str, Any]] | None = None

    # -- settings ---------------------------------------------------------------------------------
    @classmethod
    def check_settings(cls, settings: dict[str, Any]) -> list[str]:
        problems = super().check_settings(settings)
        auth = settings.get("auth", "client_credentials")
        if auth not in AUTH_FLOWS:
            problems.append(f"auth: must be one of {', '.join(AUTH_FLOWS)}")
        login = str(settings.get("login_url", DEFAULT_LOGIN_URL))
        if not login.startswith(("https://", "http://")):
            problems.append("login_url: must be a URL, e.g. https://NAME.my.salesforce.com")
        elif auth == "client_credentials" and any(h in login for h in GENERIC_LOGIN_HOSTS):
            # https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_client_credentials_flow.htm&type=5
            problems.append("login_url: the client credentials flow needs the org's My Domain "
                            "URL (https://NAME.my.salesforce.com), not login.salesforce.com")
        if auth == "jwt" and not settings.get("username"):
            problems.append("username: required for auth \"jwt\" (the user to log in as)")
        share = settings.get("max_api_share", DEFAULT_MAX_API_SHARE)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            problems.append("max_api_share: must be a number above 0 and at most 1, e.g. 0.8")
        batch = settings.get("query_batch_size", QUERY_BATCH_MAX)
        if not isinstance(batch, int) or not QUERY_BATCH_MIN <= batch <= QUERY_BATCH_MAX:
            problems.append(f"query_batch_size: must be a whole number from {QUERY_BATCH_MIN} "
                            f"to {QUERY_BATCH_MAX}")
        if not VERSION.fullmatch(str(settings.get("api_version", DEFAULT_API_VERSION))):
            problems.append("api_version: must look like v60.0")
        return problems

    # -- HTTP and login (docs/salesforce.md §1) ---------------------------------------------------
    @property
    def http(self) -> HttpClient:
        """Built on first use, so a connector can be constructed without reading secrets. It
        logs in at once: the token reply's ``instance_url`` is where every call goes."""
        if self._http is None:
            # No expires_in: the session is used until a call answers 401 INVALID_SESSION_ID;
            # sync.http then logs in again once and replays that call.
            token = RefreshingToken(self._login, early_s=0.0, clock=self._clock)
            self._http = self._client(self.login_url, token, self.map_error)
            token.headers()
        return self._http

    def _client(self, base_url: str, auth: Any, map_error: Callable[[requests.Response],
                                                                     DealsyncError],
                redact: Iterable[str] = ()) -> HttpClient:
        client = HttpClient(self.name, base_url, auth=auth, rate_limits=self.rate_limits(),
                            map_error=map_error, redact=redact, sleep=self._sleep,
                            monotonic=self._monotonic, session=self._session)
        self.clients.append(client)
        return client

    def _login(self) -> tuple[str, float]:
        """One grant at ``login_url``/services/oauth2/token; remembers ``instance_url`` and a
        rotated refresh token (kept for this run only)."""
        form = self._grant()
        if self._login_http is None:
            self._login_http = self._client(
                self.login_url, None, self._map_login_error,
                redact=[v for k, v in form.items() if k in ("client_secret", "refresh_token")])
        # Retrying a grant is harmless: at worst it opens a second session.
        body = self._login_http.json("POST", "/services/oauth2/token", data=form,
                                     idempotent=True) or {}
        instance = str(body.get("instance_url") or "").rstrip("/")
        if not body.get("access_token") or not instance:
            raise AuthError(f"{self.name}: Salesforce's token reply has no access_token or "
                            f"instance_url", hint=f"check login_url of instance {self.name!r}")
        if body.get("refresh_token"):  # refresh-token rotation (docs/salesforce.md §1)
            self._refresh_token = body["refresh_token"]
        self.instance_url = instance
        if self._http is not None:
            self._http.base_url = instance
        return str(body["access_token"]), math.inf

    def _grant(self) -> dict[str, str]:
        secret = self.ctx.secret
        if self.auth == "jwt":
            return {"grant_type": JWT_GRANT, "assertion": self._assertion()}
        if self.auth == "refresh_token":
            if self._refresh_token is None:
                self._refresh_token = secret("refresh_token")
            return {"grant_type": "refresh_token", "client_id": secret("client_id"),
                    "client_secret": secret("client_secret"),
                    "refresh_token": self._refresh_token}
        return {"grant_type": "client_credentials", "client_id": secret("client_id"),
                "client_secret": secret("client_secret")}

    def _assertion(self) -> str:
        """An RS256-signed JWT (docs/salesforce.md §1). Salesforce reads ``exp`` against its
        own clock, so this is the wall clock, never an injected one."""
        claims = {"iss": self.ctx.secret("client_id"), "sub": self.settings.get("username"),
                  "aud": self.settings.get("jwt_audience", DEFAULT_LOGIN_URL),
                  "exp": int(time.time()) + JWT_LIFETIME_S}
        signing_input = (f"{_b64url(json.dumps({'alg': 'RS256'}).encode())}."
                         f"{_b64url(json.dumps(claims).encode())}")
        return f"{signing_input}.{_b64url(self._sign(signing_input.encode()))}"

    def _sign(self, data: bytes) -> bytes:
        try:
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import padding
        except ImportError:
            raise ConfigError([f"crm.{self.name}.auth: \"jwt\" needs the cryptography package"],
                              hint="pip install 'dealsync[salesforce]'") from None
        if self._key is None:
            pem = self._pem()
            try:
                self._key = serialization.load_pem_private_key(pem.encode(), password=None)
            except (ValueError, TypeError) as exc:
                raise AuthError(f"{self.name}: the JWT private key is not an unencrypted PEM "
                                f"private key ({type(exc).__name__})",
                                hint="store the key that belongs to the certificate uploaded to "
                                     f"the connected app: `dealsync auth set {self.name} "
                                     "private_key`, or set private_key_file") from None
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def _pem(self) -> str:
        path = self.settings.get("private_key_file")
        if not path:
            # A prompt takes one line: "\n" written out stands for a line break.
            return self.ctx.secret("private_key").replace("\\n", "\n")
        try:
            return Path(path).expanduser().read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"crm.{self.name}.private_key_file: cannot read {path}: "
                               f"{type(exc).__name__}"],
                              hint="point it at the PEM file of the JWT key") from None

    def _map_login_error(self, response: requests.Response) -> DealsyncError:
        """Token errors are OAuth objects, not arrays (docs/salesforce.md §1)."""
        if response.status_code >= 500:
            return RemoteError(reply_summary(response), status=response.status_code)
        try:
            body = response.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        reason = ": ".join(str(body[k]) for k in ("error", "error_description") if body.get(k))
        return AuthError(f"{self.name}: Salesforce refused the {self.auth} login at "
                         f"{self.login_url}: HTTP {response.status_code} {reason}".rstrip(),
                         hint=self._auth_hint())

    def _auth_hint(self) -> str:
        store = f"`dealsync auth set {self.name}"
        return {
            "client_credentials": f"check the consumer key and secret ({store} client_id`, "
                                  f"{store} client_secret`), that the connected app enables the "
                                  "client credentials flow with a run-as user, and that "
                                  "login_url is the org's My Domain URL",
            "refresh_token": f"authorize the connected app again and store the new refresh "
                             f"token with {store} refresh_token`",
            "jwt": "check that client_id is the connected app's consumer key, that the "
                   "private key belongs to its certificate, that the user in username is "
                   "pre-approved for the app, and jwt_audience (test.salesforce.com for "
                   "sandboxes)",
        }.get(self.auth, f"check the secrets of instance {self.name!r}")

    # -- limits (docs/salesforce.md §8) -----------------------------------------------------------
    def _note_usage(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        match = USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
        if match:
            self.api_usage = (int(match[1]), int(match[2]))

    def _check_quota(self) -> None:
        """Stop before a call once ``max_api_share`` of the allocation is used: a clean stop
        keeps the cursors and whatever was written; running into the 403 helps nobody."""
        if self.api_usage is None or not self.api_usage[1]:
            return
        used, limit = self.api_usage
        if used >= self.max_api_share * limit:
            raise RateLimitExhausted(
                f"{self.name}: Salesforce API usage is {used:,} of the org's {limit:,} daily "
                f"calls ({used / limit:.0%}), at or over max_api_share = {self.max_api_share}; "
                f"the run stops here and keeps its cursors",
                hint=f"{self._resets()}; or raise max_api_share of instance {self.name!r} if "
                     f"the org's other integrations can spare the calls",
                status=None, code="max_api_share")

    def _resets(self) -> str:
        at = datetime.fromtimestamp(self._clock(), tz=timezone.utc) + timedelta(days=1)
        return ("Salesforce counts API calls over a rolling 24 hours, so room comes back as the "
                f"calls of a day ago age out: run again later, by {at:%Y-%m-%d %H:%M} UTC at "
                "the latest")

    # -- errors (docs/salesforce.md §9) -----------------------------------------------------------
    def map_error(self, response: requests.Response) -> DealsyncError:
        """A failed reply's error array, by ``errorCode``, to the error the engine acts on."""
        code, message = first_error(response)
        status, what = response.status_code, reply_summary(response)
        if code == "REQUEST_LIMIT_EXCEEDED":
            # Never retried: the daily allocation frees up over hours (docs/salesforce.md §8).
            long_requests = "ConcurrentPerOrgLongTxn" in message
            return RateLimitExhausted(
                f"{what} (Salesforce's {'long-request' if long_requests else 'daily API'} "
                f"limit)", status=status, code=code,
                hint="too many long-running requests on the org at once; run again in a few "
                     "minutes" if long_requests else self._resets())
        if status == 401 or code in ("INVALID_SESSION_ID", "INVALID_AUTH_HEADER"):
            return AuthError(f"{what} (the session was refused even after logging in again)",
                             hint=self._auth_hint())
        if status == 403 or code in NO_ACCESS:
            return AuthError(what, hint="the integration user needs the API Enabled "
                                         "permission and read and edit access to Opportunity and "
                                         "the fields the mapping names")
        if code == "QUERY_TIMEOUT":
            return QueryTimeout(what, status=status, code=code)
        if code in BAD_NAME:
            hint = f"a mapping may name a field instance {self.name!r} cannot see: run " \
                   f"`dealsync check`"
            if response.request is not None and response.request.method == "GET":
                return ConfigError([what], hint=hint)  # a read that can never succeed
            return ItemError(what, retryable=False, hint=hint)
        if status == 404 or code in GONE:
            return NotFound(what)
        # paging idled too long (docs/salesforce.md §3): read again later
        if code == "INVALID_QUERY_LOCATOR":
            return RemoteError(what, status=status, code=code,
                               hint="the next run reads the same window again")
        if 400 <= status < 500:
            return ItemError(what, retryable=code not in REFUSED_VALUE)
        return RemoteError(what, status=status, code=code)

    def _record_error(self, deal_id: str, errors: list[dict[str, Any]],
                      what: str = "the update of opportunity") -> ItemError:
        """A failed SaveResult's errors (``statusCode``, message, fields; docs/salesforce.md §6) for
        one record;
        ``what`` names the write (the note (Task) on opportunity …, docs/salesforce.md §11)."""
        first = errors[0] if errors else {}
        code = first.get("statusCode") or first.get("errorCode")
        detail = "; ".join(f"{e.get('statusCode') or e.get('errorCode')}: {e.get('message')}"
                           for e in errors) or "no reason given"
        message = f"{self.name}: Salesforce refused {what} {deal_id}: {detail}"
        if code in GONE:
            return NotFound(message)
        fields = sorted({f for e in errors for f in e.get("fields") or []})
        hint = (f"check the value of {', '.join(fields)} against the field in Salesforce "
                "(dealsync check lists picklist values)") if fields else None
        return ItemError(message, hint=hint, retryable=code not in REFUSED_VALUE)

    # -- queries (docs/salesforce.md §3, §4) ------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Every API call: the allocation guard first, then sync.http."""
        http = self.http
        self._check_quota()
        return http.json(method, path, **kwargs)

    def query(self, soql: str) -> Iterator[dict[str, Any]]:
        """The records of a SOQL query, following ``nextRecordsUrl`` until ``done``."""
        headers = {"Sforce-Query-Options": f"batchSize={self.batch}"} \
            if self.batch != QUERY_BATCH_MAX else None
        page = self._call("GET", f"{self.api}/query", params={"q": soql}, headers=headers)
        while True:
            yield from page.get("records") or []
            following = page.get("nextRecordsUrl")
            if page.get("done", True) or not following:
                return
            page = self._call("GET", following, headers=headers,
                              label=f"GET {self.api}/query/{{locator}}")

    def _select(self, properties: list[str]) -> str:
        for name in properties:
            if not API_NAME.fullmatch(name):
                raise ConfigError([f"instance {self.name!r}: {name!r} is not a Salesforce field "
                                   f"API name"], hint="use API names such as Priority__c or "
                                                      "Account.Industry in the mapping")
        columns: dict[str, str] = {}
        for name in ("Id", "SystemModstamp", *CONTEXT_FIELDS, *properties):
            columns.setdefault(name.lower(), name)
        return "SELECT " + ", ".join(columns.values()) + " FROM Opportunity"

    def iter_changed(self, since: datetime | None, until: datetime,
                     properties: list[str], with_context: bool = True) -> Iterator[Deal]:
        """Opportunities with ``since <= SystemModstamp <= until``, ``ORDER BY SystemModstamp,
        Id``, paged through ``nextRecordsUrl`` (docs/salesforce.md §2-4).

        ``SystemModstamp`` moves on every change, automation's too, and is stored to the
        second: many records share a second, so the lower bound is ``>=`` (a ``>`` cursor
        would lose the records stamped in its second after it was read) and ``Id`` makes the
        order total. ``QUERY_TIMEOUT`` halves the window. Each (Id, SystemModstamp) comes once;
        ``Account.Name`` and ``Owner.Name`` come in the same query, so there is no context to
        defer and ``with_context`` changes nothing."""
        select = self._select(properties)
        seen = _Seen()
        windows = [_Window(to_second(since) if since else None, to_second(until))]
        while windows:
            window = windows.pop(0)
            try:
                for record in self.query(f"{select} WHERE {window.where()} "
                                         "ORDER BY SystemModstamp, Id"):
                    deal = self._deal(record, properties)
                    if seen.first_time(deal.id, deal.updated_at):
                        yield deal
            except QueryTimeout as timeout:
                windows[:0] = self._halve(window, timeout)

    def _halve(self, window: _Window, timeout: QueryTimeout) -> list[_Window]:
        low = window.low if window.low is not None else self._oldest_stamp()
        if low is None:
            return []  # no opportunity at all
        if window.high - low <= timedelta(seconds=1):
            raise timeout  # one second cannot be split: the org must be asked to index it
        log.info("%s: query timed out over %s .. %s; reading it in halves", self.name, low,
                 window.high)
        return _Window(low, window.high, window.inclusive).halves()

    def _oldest_stamp(self) -> datetime | None:
        """A lower bound for a window that has none, so it can be halved."""
        for record in self.query("SELECT SystemModstamp FROM Opportunity "
                                 "ORDER BY SystemModstamp LIMIT 1"):
            return parse_time(record.get("SystemModstamp"))
        return None

    def fetch(self, ids: list[str], properties: list[str],
              with_context: bool = True) -> dict[str, Deal]:
        """By id, ``IDS_PER_QUERY`` per ``Id IN (...)`` query, with the context fields in the
        same query. An id the answer leaves out does not exist (or is in the recycle bin); a
        string that cannot be a Salesforce id cannot exist either and is left out unasked."""
        select = self._select(properties)
        # The answer carries 18-character ids; remember the form each id was asked in
        # (docs/salesforce.md §2).
        asked = {normalize_id(i): i for i in dict.fromkeys(str(i) for i in ids)}
        asked.pop(None, None)  # not an id, or a wrong checksum: "invalid ID field" for all
        valid = list(asked)
        found: dict[str, Deal] = {}
        for start in range(0, len(valid), IDS_PER_QUERY):
            quoted = ", ".join(f"'{i}'" for i in valid[start:start + IDS_PER_QUERY])
            for record in self.query(f"{select} WHERE Id IN ({quoted})"):
                deal = self._deal(record, properties)
                found[asked.get(deal.id, deal.id)] = deal
        return found

    def _deal(self, record: dict[str, Any], properties: list[str]) -> Deal:
        deal_id = str(record["Id"])
        base = (self.settings.get("app_url") or self.instance_url or "").rstrip("/")
        return Deal(
            id=deal_id,
            updated_at=parse_time(field_value(record, "SystemModstamp"))
            or datetime.now(timezone.utc),
            fields={name: as_text(field_value(record, name)) for name in properties},
            name=str(field_value(record, "Name") or ""),
            url=f"{base}/lightning/r/Opportunity/{deal_id}/view" if base else None,
            company=as_text(field_value(record, "Account.Name")),
            stage=as_text(field_value(record, "StageName")),
            amount=_amount(field_value(record, "Amount")),
            close_date=as_text(field_value(record, "CloseDate")),
            owner=as_text(field_value(record, "Owner.Name")),
            is_open=not field_value(record, "IsClosed"))

    # -- writes (docs/salesforce.md §6) -----------------------------------------------------------
    def update(self, updates: list[tuple[str, dict[str, str | None]]]) -> list[WriteResult]:
        """sObject Collections PATCH, 200 records per call, ``allOrNone: false``: a record's
        errors fail only that record. A call refused whole fails its records; an outage that
        retries did not cure stops sending and fails the rest as retryable."""
        records = [(str(deal_id), {"attributes": {"type": "Opportunity"}, "id": str(deal_id),
                                   **{name: value if value != "" else None
                                      for name, value in values.items()}})
                   for deal_id, values in updates]
        # Absolute values: a replay after a 5xx writes the same values again (and the echo is
        # suppressed by the stored base), so the call is safe to retry.
        return self._collections("PATCH", _chunks(records, distinct=True),
                                 "the update of opportunity")

    def _collections(self, method: str, chunks: Iterable[list[tuple[str, dict[str, Any]]]],
                     what: str) -> list[WriteResult]:
        """One sObject Collections call per chunk of ``(deal id, record)``
        (docs/salesforce.md §6, §11), one result per record in order. A call refused whole, or a
        create that may or may not have happened (``AmbiguousWrite``, never re-sent), fails its
        records; an outage that retries did not cure stops sending and fails the rest as
        retryable."""
        results: list[WriteResult] = []
        outage: ItemError | None = None
        for chunk in chunks:
            failure = outage
            if failure is None:
                try:
                    results += self._collections_call(method, chunk, what)
                    continue
                except ItemError as exc:  # refused whole, or AmbiguousWrite
                    failure = exc
                except RateLimitExhausted:
                    raise  # stop the run; the engine keeps its cursors
                except RemoteError as exc:
                    failure = outage = ItemError(str(exc), hint=exc.hint, retryable=True)
            results += [WriteResult(deal_id, error=failure) for deal_id, _ in chunk]
        return results

    def _collections_call(self, method: str, chunk: list[tuple[str, dict[str, Any]]],
                          what: str) -> list[WriteResult]:
        # PATCH writes absolute values and may be replayed; a POST creates, so sync.http never
        # re-sends it after an ambiguous failure.
        saved = self._call(method, f"{self.api}/composite/sobjects", idempotent=method == "PATCH",
                           json={"allOrNone": False, "records": [r for _, r in chunk]})
        if not isinstance(saved, list) or len(saved) != len(chunk):
            raise RemoteError(f"{self.name}: sObject Collections answered "
                              f"{len(saved) if isinstance(saved, list) else 'no'} results for "
                              f"{len(chunk)} records", status=200)
        # A failed SaveResult carries no id: results match records by position
        # (docs/salesforce.md §6).
        return [WriteResult(deal_id, record=result.get("id")) if result.get("success") else
                WriteResult(deal_id, error=self._record_error(
                    deal_id, result.get("errors") or [], what))
                for (deal_id, _), result in zip(chunk, saved)]

    # -- notes (docs/salesforce.md §11) -----------------------------------------------------------
    def add_note(self, deal_id: str, text: str) -> str:
        """One note as a completed Task on the opportunity: ``POST …/sobjects/Task`` (201 with
        the new id); a refusal is the error array, mapped by ``map_error``. A create: never
        re-sent after an ambiguous failure (``AmbiguousWrite``)."""
        body = self._call("POST", f"{self.api}/sobjects/Task", json=self._task(deal_id, text))
        if not isinstance(body, dict) or not body.get("id"):
            raise AmbiguousWrite(f"{self.name}: Salesforce's answer to the Task create for "
                                 f"opportunity {deal_id} names no id",
                                 hint="the note may have been added; it is not sent again")
        return str(body["id"])

    def add_notes(self, notes: list[tuple[str, str]]) -> list[WriteResult]:
        """Notes as completed Tasks, 200 per sObject Collections create (``POST
        …/composite/sobjects``, ``allOrNone: false``), one result per note in order; a
        refused Task (an opportunity gone, say) fails only its note."""
        records = [(str(deal_id), {"attributes": {"type": "Task"}, **self._task(deal_id, text)})
                   for deal_id, text in notes]
        return self._collections("POST", _chunks(records, distinct=False),
                                 "the note (Task) on opportunity")

    def _task(self, deal_id: str, text: str) -> dict[str, Any]:
        """A Task that shows on the opportunity's activity timeline as done today (UTC): the
        note's first line as ``Subject``, the whole note as ``Description`` (plain text)."""
        today = datetime.fromtimestamp(self._clock(), tz=timezone.utc).date()
        first = (text.strip().splitlines() or [""])[0].strip()
        subject = first if len(first) <= TASK_SUBJECT_LENGTH else \
            first[:TASK_SUBJECT_LENGTH - 1] + "…"
        return {"Subject": subject, "Description": text[:TASK_DESCRIPTION_LENGTH],
                "Status": "Completed", "WhatId": str(deal_id),
                "ActivityDate": today.isoformat(), "TaskSubtype": "Task"}

    # -- fields (docs/salesforce.md §7) -----------------------------------------------------------
    def _fields(self) -> dict[str, dict[str, Any]]:
        """Opportunity's describe, by lower-case API name (API names ignore case)."""
        if self._described is None:
            body = self._call("GET", f"{self.api}/sobjects/Opportunity/describe") or {}
            self._described = {str(f["name"]).lower(): f for f in body.get("fields") or []}
        return self._described

    def missing_fields(self, names: Iterable[str]) -> list[str]:
        """Fields describe does not list: absent, or hidden from the integration user by
        field-level security (either way they cannot be read or written). Relationship paths
        (``Account.Industry``) are not checked."""
        known = self._fields()
        return [name for name in names if "." not in name and name.lower() not in known]

    def field_options(self, field_name: str) -> list[str] | None:
        definition = self._fields().get(field_name.lower())
        if definition is None or definition.get("type") not in ("picklist", "multipicklist"):
            return None
        return [str(v["value"]) for v in definition.get("picklistValues") or []
                if v.get("active", True)]

    def ensure_fields(self, specs: dict[str, list[str] | None]) -> list[str]:
        """Creates nothing: the REST API cannot create fields (Metadata or Tooling API, or
        Setup, docs/salesforce.md §7). ``field_setup_steps`` says what an admin does."""
        return []

    def field_plan(self, specs: dict[str, list[str] | None],
                   roles: dict[str, str] | None = None) -> list[FieldPlan]:
        """What to create or change so that these fields exist with these values: a missing
        field with values becomes a restricted picklist, the request field long text, the URL
        field a URL, any other a 255-character text; an existing picklist lacking values gets
        them added."""
        roles = roles or {}
        known = self._fields()
        plans = []
        for name, values in specs.items():
            if "." in name:
                continue
            existing = known.get(name.lower())
            if existing is None:
                plans.append(_new_field(name, values, roles.get(name)))
            elif values and existing.get("type") in ("picklist", "multipicklist"):
                present = {str(v["value"]) for v in existing.get("picklistValues") or []
                           if v.get("active", True)}
                lacking = tuple(v for v in values if v not in present)
                if lacking:
                    plans.append(FieldPlan(str(existing["name"]), "picklist", values=tuple(values),
                                           exists=True, missing_values=lacking))
        return plans

    def field_setup_steps(self, specs: dict[str, list[str] | None],
                          roles: dict[str, str] | None = None) -> list[FieldSetup]:
        return [FieldSetup(plan.name, plan.summary(), plan.steps())
                for plan in self.field_plan(specs, roles)]


def _new_field(name: str, values: list[str] | None, role: str | None) -> FieldPlan:
    if values:
        return FieldPlan(name, "picklist", values=tuple(values))
    if role == "request":  # several lines of what the prospect asked for
        return FieldPlan(name, "textarea", LONG_TEXT_LENGTH)
    if role == "url":
        return FieldPlan(name, "url", 255)
    return FieldPlan(name, "string", 255)


def _chunks(records: list[tuple[str, dict[str, Any]]], distinct: bool
            ) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Up to 200 ``(deal id, record)`` per Collections call (docs/salesforce.md §6); with
    ``distinct`` (updates) no deal twice in one call, while creates may carry several Tasks for one
    deal."""
    chunk: list[tuple[str, dict[str, Any]]] = []
    ids: set[str] = set()
    for deal_id, record in records:
        if len(chunk) == COLLECTIONS_MAX or (distinct and deal_id in ids):
            yield chunk
            chunk, ids = [], set()
        chunk.append((deal_id, record))
        ids.add(deal_id)
    if chunk:
        yield chunk
