"""The one HTTP client every connector uses.

It owns the ``requests.Session`` (TLS verified, connect and read timeouts on every call), the
client-side rate limiter, retries (``tenacity``), token refresh when a credential is refused
(a 401, or however ``Auth.rejected`` recognises it), the mapping of failed responses to
``sync.errors`` types, redaction of secrets from logs and errors, and the per-endpoint call counts
the run report shows.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from collections.abc import Callable, Container, Iterable
from typing import Any
from urllib.parse import urlsplit

import requests
import tenacity

from .connectors import RateLimit
from .errors import (AmbiguousWrite, AuthError, ConfigError, DealsyncError, ItemError,
                     NotFound, RateLimitExhausted, RemoteError)

log = logging.getLogger("dealsync.http")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRIED_5XX = frozenset({500, 502, 503, 504})
# Transport failures worth another try. SSLError is a ConnectionError but retrying cannot fix it.
TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError)
BACKOFF = tenacity.wait_exponential_jitter(initial=1, max=30)
MASK = "***"
BODY_MESSAGE_LIMIT = 300


# --- authentication -----------------------------------------------------------------------------

class Auth:
    """No authentication; subclasses add headers, a way to renew them, and what to redact."""

    def headers(self) -> dict[str, str]:
        """Headers for the next attempt; called before every attempt so renewals take effect."""
        return {}

    def params(self) -> dict[str, str]:
        """Query parameters for the next attempt, for services that want the credential in the
        URL (Worktile's ``access_token``, docs/worktile.md §3); redacted like any secret."""
        return {}

    def rejected(self, response: requests.Response) -> bool:
        """Whether ``response`` says the credential was refused. A 401, unless the service
        signals it otherwise too (Worktile mostly answers HTTP 200 with an error body,
        docs/worktile.md §3); a rejected response is replayed once after ``refresh``."""
        return response.status_code == 401

    def refresh(self) -> bool:
        """Obtain a new credential after a rejection; True means the request should be
        replayed."""
        return False

    def secret_values(self) -> list[str]:
        """Values that must never appear in logs or error messages."""
        return []


class SecretsInRequest(Auth):
    """Adds no credential of its own; names a secret a request carries in its query or body (an
    app's client secret sent to a token endpoint), so it is kept out of logs and errors. Set
    ``value`` once the secret has been read."""

    def __init__(self) -> None:
        self.value = ""

    def secret_values(self) -> list[str]:
        return [self.value]


class BearerToken(Auth):
    """A static token (a HubSpot private-app token, say): nothing to refresh."""

    def __init__(self, token: str):
        self.token = token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def secret_values(self) -> list[str]:
        return [self.token]


class RefreshingToken(Auth):
    """An access token from ``fetch() -> (token, expires_at_epoch_s)``, renewed ``early_s`` before
    it expires so a long run does not meet a 401 mid-page, and on demand after a 401."""

    def __init__(self, fetch: Callable[[], tuple[str, float]], *, early_s: float = 60.0,
                 clock: Callable[[], float] = time.time):
        self._fetch = fetch
        self._early_s = early_s
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        # Threads sharing one client must not all fetch a token at the same moment.
        self._lock = threading.Lock()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def token(self) -> str:
        """The current access token, renewed first if it is due."""
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at - self._early_s:
                self._renew()
            return self._token  # type: ignore[return-value]

    def refresh(self) -> bool:
        with self._lock:
            self._renew()
        return True

    def secret_values(self) -> list[str]:
        return [self._token] if self._token else []

    def _renew(self) -> None:
        self._token, self._expires_at = self._fetch()


def app_token_clients(instance: str, base_url: str, fetch: Callable[[], tuple[str, float]], *,
                      rate_limits: dict[str, RateLimit], token_auth: type[RefreshingToken]
                      = RefreshingToken, clock: Callable[[], float] = time.time,
                      session: requests.Session | None = None, **common: Any
                      ) -> tuple[SecretsInRequest, "HttpClient", "HttpClient"]:
    """The clients of an app that trades its client id and secret for an access token (PingCode,
    Worktile): the token endpoint's client, whose request carries the secret (set the returned
    ``SecretsInRequest.value`` once it is read, so it stays out of logs and errors), and the API
    client, whose ``token_auth`` calls ``fetch`` when the token is due or refused. ``common``
    (``map_error``, ``sleep``, ``monotonic``) goes to both; the rate limit only to the API."""
    session = session or requests.Session()
    credentials = SecretsInRequest()
    token_http = HttpClient(f"{instance} (token)", base_url, auth=credentials, session=session,
                            **common)
    api = HttpClient(instance, base_url, auth=token_auth(fetch, early_s=0, clock=clock),
                     rate_limits=rate_limits, session=session, **common)
    return credentials, token_http, api


def renew_at(expires_in: float, now: float, early_s: float,
             service_now: datetime | None = None) -> float:
    """When, on this machine's clock ``now``, to renew a token the service says lasts
    ``expires_in``: seconds, or an epoch when above 1e9 (PingCode and Worktile answer either:
    docs/pingcode.md §3.1, docs/worktile.md §2); ``early_s`` before it expires, or half-way for
    a short-lived token. An epoch is the service's clock: with ``service_now`` (the token
    answer's ``Date``) it becomes a lifetime first, so a service clock behind this machine's
    does not make every token look expired and renewed before each call."""
    if expires_in > 1e9:
        base = service_now.timestamp() if service_now is not None else now
        expires_in = expires_in - base
    expires_at = now + expires_in
    return expires_at - min(early_s, max(0.0, expires_in) / 2)


# --- throttling and error mapping ---------------------------------------------------------------

@dataclass
class Throttle:
    """What a 429 means, as read by a connector-specific reader."""

    wait_s: float | None  # None: exponential backoff
    stop: bool = False  # the quota will not free up in this run: give up at once
    message: str = ""


def default_throttle(response: requests.Response) -> Throttle:
    """Honour ``Retry-After`` (seconds or an HTTP date) and PingCode's ``x-pc-retry-after``
    (PingCode sends only the latter: docs/pingcode.md §13)."""
    wait_s = None
    for header in ("x-pc-retry-after", "Retry-After"):
        wait_s = parse_retry_after(response.headers.get(header))
        if wait_s is not None:
            break
    return Throttle(wait_s=wait_s, message=body_message(response))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After``-style value, or None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT by definition
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def default_error(response: requests.Response) -> DealsyncError:
    """Map a final non-OK response to the ``sync.errors`` type the engine acts on."""
    status = response.status_code
    message = describe(response)
    if status in (401, 403):
        return AuthError(message, hint="check the instance's secret with `dealsync auth status` "
                                       "and that the credential has the scopes the connector needs")
    if status == 404:
        return NotFound(message)
    if 400 <= status < 500:
        return ItemError(message, retryable=False)
    return RemoteError(message, status=status, code=body_code(response))


def describe(response: requests.Response) -> str:
    """``METHOD url: HTTP status: body message`` with secret-looking query parameters masked."""
    request = response.request
    method = request.method if request is not None else "?"
    url = redact_params(request.url if request is not None else response.url)
    text = f"{method} {url}: HTTP {response.status_code}"
    detail = body_message(response)
    return f"{text}: {detail}" if detail else text


def body_message(response: requests.Response) -> str:
    """The service's own explanation: ``message`` (or ``code``) of a JSON body, or short plain text.
    Salesforce answers with a list of such objects
    (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, dict):
        detail = body.get("message") or body.get("code") or body.get("errorCode") or ""
    elif response.headers.get("Content-Type", "").startswith("text/plain"):
        detail = response.text
    else:
        detail = ""  # HTML error pages (Worktile's nginx 429) are noise, not an explanation
    return _truncate(" ".join(str(detail).split()))


def body_code(response: requests.Response) -> str | None:
    """The service's error code, if its JSON body carries one."""
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return None if code is None else str(code)


def _truncate(text: str) -> str:
    return text if len(text) <= BODY_MESSAGE_LIMIT else text[:BODY_MESSAGE_LIMIT - 1] + "…"


# --- redaction and labels -----------------------------------------------------------------------

# Parameter names that carry credentials: client_secret, token, access_token, refresh_token,
# password, api_key, HubSpot's legacy hapikey, and the OAuth authorization ``code``.
_SECRET_PARAM = re.compile(
    r"(?i)((?:[a-z0-9_]*(?:secret|token|password|api_?key))|(?<![a-z0-9_])code)"
    r"=(?!\*\*\*)([^&\s#'\"]*)")  # skips values already masked, so redacting twice is harmless


def redact_params(text: str) -> str:
    """Mask the values of secret-looking ``name=value`` query parameters anywhere in ``text``."""
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}={MASK}", text)


_ID_SEGMENT = re.compile(
    r"^(?:\d+|[0-9a-fA-F]{16,}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12})$")


def endpoint_label(method: str, path: str) -> str:
    """``GET /crm/v3/objects/deals/{id}``: one counter per endpoint, not per record."""
    segments = urlsplit(path).path.split("/")
    collapsed = "/".join("{id}" if _ID_SEGMENT.match(s) else s for s in segments)
    return f"{method.upper()} {collapsed}"


# --- rate limiting ------------------------------------------------------------------------------

class _Slot:
    """One call's place in a window: when it was sent, then when its answer came back."""

    __slots__ = ("at",)

    def __init__(self, at: float):
        self.at = at


class _Window:
    """A sliding window like the server's: at most ``calls`` in any ``per_seconds``.

    The server counts a call when it arrives, some time between our send and its answer. So a
    slot is stamped when the answer is back (``RateLimiter.done``): a call sent a whole window
    after that answer cannot arrive inside the same server window, whatever the latency, and
    no call of ours is refused for a limit we know. Until then it counts from its send.
    """

    def __init__(self, limit: RateLimit):
        self.calls = limit.calls
        self.per_seconds = limit.per_seconds
        self.slots: list[_Slot] = []

    def wait(self, now: float) -> float:
        """Seconds until this window has room (0 if it has room now)."""
        # one expression for "expires" in every test, so rounding cannot make a slot count as
        # gone in one and present in another. Answers mostly come back in the order sent, so
        # the expired slots are dropped from the front; a slot answered out of order may stay
        # behind a live one, which only over-counts, so the exact filter runs when full.
        slots, per = self.slots, self.per_seconds
        expired = 0
        while expired < len(slots) and not slots[expired].at + per > now:
            expired += 1
        del slots[:expired]
        if len(slots) < self.calls:
            return 0.0
        self.slots = [s for s in slots if s.at + per > now]
        if len(self.slots) < self.calls:
            return 0.0
        return min(s.at + self.per_seconds for s in self.slots) - now

    def take(self, now: float) -> _Slot:
        slot = _Slot(now)
        self.slots.append(slot)
        return slot


class RateLimiter:
    """Sliding windows by bucket name; names without a limit are unlimited. Thread-safe."""

    def __init__(self, limits: dict[str, RateLimit], sleep: Callable[[float], None],
                 monotonic: Callable[[], float]):
        self._windows = {name: _Window(limit) for name, limit in limits.items()}
        self._sleep = sleep
        self._monotonic = monotonic
        self._lock = threading.Lock()

    def acquire(self, buckets: Iterable[str]) -> list[_Slot]:
        """Block until every named bucket has room, then take a slot in each at once; hand
        the slots to ``done`` when the answer is back."""
        windows = [self._windows[b] for b in buckets if b in self._windows]
        while True:
            with self._lock:
                now = self._monotonic()
                wait = max((w.wait(now) for w in windows), default=0.0)
                if wait <= 0:
                    return [window.take(now) for window in windows]
            self._sleep(wait)  # outside the lock so other buckets keep flowing

    def done(self, slots: list[_Slot]) -> None:
        """The call's answer (or failure) is back: it counts from now."""
        now = self._monotonic()
        with self._lock:
            for slot in slots:
                slot.at = max(slot.at, now)


def local_limiter(instance: str, limits: dict[str, RateLimit], sleep: Callable[[float], None],
                  monotonic: Callable[[], float]) -> RateLimiter:
    """The limiter of a client whose instance no other process calls: windows in memory."""
    return RateLimiter(limits, sleep, monotonic)


#: Makes each new client's limiter: ``(instance, limits, sleep, monotonic) -> limiter`` with
#: ``acquire``/``done`` as ``RateLimiter``. Workers that share instances across processes swap
#: in one that keeps the windows in the state store (``sync.state.limiter``).
limiter_factory: Callable[..., Any] = local_limiter

#: Told ``(instance, seconds, reason)`` before a client sleeps for a rate limit: its own
#: limiter's (reason "limit") or a 429's Retry-After or backoff ("429"). The progress display
#: subscribes (``sync.progress``); this module shows nothing itself.
_wait_listeners: list[Callable[[str, float, str], None]] = []


def subscribe_waits(listener: Callable[[str, float, str], None]) -> Callable[[], None]:
    """Call ``listener`` before every rate-limit wait; returns the way to unsubscribe."""
    _wait_listeners.append(listener)
    return lambda: _wait_listeners.remove(listener) if listener in _wait_listeners else None


def _announce_wait(instance: str, seconds: float, reason: str) -> None:
    for listener in list(_wait_listeners):
        try:
            listener(instance, seconds, reason)
        except Exception as exc:  # a display must never stop a request
            log.debug("rate-limit wait listener failed: %s", exc)


# --- the client ---------------------------------------------------------------------------------

class _Retry(Exception):
    """An attempt failed in a way another attempt may cure (internal to ``HttpClient``)."""

    def __init__(self, summary: str, *, response: requests.Response | None = None,
                 wait_s: float | None = None):
        super().__init__(summary)
        self.summary = summary
        self.response = response  # None: the attempt failed without one (connection, timeout)
        self.wait_s = wait_s  # None: exponential backoff


@dataclass
class _Call:
    """Everything about one logical request that its attempts share."""

    method: str
    url: str
    label: str
    buckets: tuple[str, ...]
    idempotent: bool
    kwargs: dict[str, Any]
    attempts: int = 0  # across the 401 replay too, so log lines stay distinguishable


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def only_https(instance: str, base_url: str) -> str:
    """``base_url``, unless it is plain HTTP to another machine: credentials and deal data
    would cross the network unencrypted. Plain HTTP is for emulators on this machine."""
    parts = urlsplit(base_url)
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        raise ConfigError([f"{instance}: base_url {base_url} is plain HTTP: its token and "
                           "deal data would cross the network unencrypted"],
                          f"use https://{base_url[len('http://'):]} (plain HTTP is accepted "
                          "only for an emulator on this machine)")
    return base_url


class HttpClient:
    """HTTP for one connector instance."""

    def __init__(self, instance: str, base_url: str, *, auth: Auth | None = None,
                 rate_limits: dict[str, RateLimit] | None = None,
                 timeout: tuple[float, float] = (5.0, 30.0),
                 max_attempts: int = 5, max_wait_s: float = 120.0,
                 read_throttle: Callable[[requests.Response], Throttle] = default_throttle,
                 map_error: Callable[[requests.Response], DealsyncError] = default_error,
                 redact: Iterable[str] = (),
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 session: requests.Session | None = None):
        self.instance = instance
        self.base_url = only_https(instance, base_url)
        self.auth = auth or Auth()
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s
        self.read_throttle = read_throttle
        self.map_error = map_error
        self.calls: Counter[str] = Counter()
        self._redact = [value for value in redact if value]
        self._sleep = sleep
        self._monotonic = monotonic
        self._limiter = limiter_factory(instance, rate_limits or {}, self._wait_for_limit,
                                        monotonic)
        self._session = session or requests.Session()
        # The environment is read once per host, not on every call: with trust_env on,
        # requests walks os.environ for proxies and stats ~/.netrc on each request
        # (https://requests.readthedocs.io/en/latest/api/#requests.Session.trust_env), which
        # was a fifth of dealsync's own time per call. Proxies (HTTPS_PROXY, NO_PROXY) and a CA
        # bundle (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE) are honoured as before; ~/.netrc is not:
        # credentials come from the connector's auth only.
        self._session.trust_env = False
        self._proxies: dict[str, dict[str, str]] = {}  # by scheme://host
        self._verify: str | bool = (os.environ.get("REQUESTS_CA_BUNDLE")
                                    or os.environ.get("CURL_CA_BUNDLE") or True)
        self._date: str | None = None  # the Date header of the latest answer
        self._calls_lock = threading.Lock()

    # public API

    def request(self, method: str, path: str, *, params=None, json=None, data=None, headers=None,
                buckets: tuple[str, ...] = ("default",), idempotent: bool | None = None,
                label: str | None = None,
                ok: Container[int] = (200, 201, 202, 204, 207)) -> requests.Response:
        """Send a request with rate limiting, retries and one token refresh; return the response
        if its status is in ``ok``, else raise the ``DealsyncError`` it maps to."""
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        call = _Call(method=method, url=self._url(path),
                     label=label or endpoint_label(method, path), buckets=buckets,
                     idempotent=idempotent, kwargs={"params": params, "json": json, "data": data,
                                                    "headers": headers or {}})
        try:
            response = self._send_with_retries(call)
            # A refused credential means nothing was done, so replaying even a create is safe.
            if self.auth.rejected(response) and self.auth.refresh():
                response = self._send_with_retries(call)
            # A refusal that arrived as HTTP 200 is an error all the same.
            if response.status_code in ok and not self.auth.rejected(response):
                return response
            raise self.map_error(response)
        except DealsyncError as exc:
            raise self._scrubbed(exc) from None

    def json(self, method: str, path: str, **kwargs) -> Any:
        """``request(...)`` then its parsed JSON body; None for a 204 No Content."""
        response = self.request(method, path, **kwargs)
        if response.status_code == 204:
            return None
        if not response.content:  # a proxy or a failing service; never "nothing changed"
            raise self._scrubbed(RemoteError(
                f"{method.upper()} {redact_params(response.url)}: HTTP {response.status_code} "
                "with an empty body where JSON was expected",
                hint="the service or a proxy in front of it failed to answer; try again later, "
                     "and check base_url if it persists", status=response.status_code))
        try:
            return response.json()
        except ValueError:
            raise self._scrubbed(RemoteError(
                f"{method.upper()} {redact_params(response.url)}: HTTP {response.status_code} "
                "but the body is "
                f"not JSON: {_truncate(' '.join(response.text.split()))}",
                hint="a proxy or error page may be answering instead of the API; check base_url",
                status=response.status_code)) from None

    def close(self) -> None:
        self._session.close()

    def _wait_for_limit(self, seconds: float) -> None:
        """The limiter's sleep, announced first (``subscribe_waits``)."""
        _announce_wait(self.instance, seconds, "limit")
        self._sleep(seconds)

    # internals

    def _url(self, path: str) -> str:
        if path.startswith(("https://", "http://")):
            return path
        return f"{self.base_url.rstrip('/')}/{path.lstrip('/')}"

    def _send_with_retries(self, call: _Call) -> requests.Response:
        # Nearly every call succeeds at once: the retry machinery is set up only after a first
        # attempt asks for it, and that attempt counts as its first (docs/performance.md §3).
        try:
            return self._attempt(call)
        except _Retry as first:
            pending = [first]

        def attempt() -> requests.Response:
            if pending:
                raise pending.pop()
            return self._attempt(call)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Retry),
            sleep=self._sleep,
            before_sleep=lambda state: self._log_retry(call, state),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retry as final:
            raise self._gave_up(call, final) from None

    @staticmethod
    def _wait(state: tenacity.RetryCallState) -> float:
        wait_s = state.outcome.exception().wait_s  # only _Retry is retried
        return BACKOFF(state) if wait_s is None else wait_s

    def _attempt(self, call: _Call) -> requests.Response:
        """One attempt: a response to return, ``_Retry``, or a final ``DealsyncError``."""
        # The token first: fetching it may take a while, and a slot taken before it would
        # count from too early.
        headers = {**self.auth.headers(), **call.kwargs["headers"]}
        params = call.kwargs["params"]
        auth_params = self.auth.params()  # per attempt, so a replay carries the renewed token
        if auth_params:
            params = {**(params or {}), **auth_params}
        slots = self._limiter.acquire(call.buckets)
        with self._calls_lock:
            self.calls[call.label] += 1
        call.attempts += 1
        started = self._monotonic()
        try:
            response = self._session.send(
                self._prepare(call, params, headers), timeout=self.timeout,
                verify=self._verify, proxies=self._proxies_for(call.url), allow_redirects=True)
        except requests.exceptions.SSLError as exc:
            self._limiter.done(slots)
            raise RemoteError(f"{self._where(call)}: TLS failure: {self._clean(str(exc))}",
                              hint="TLS verification stays on; if a proxy re-signs traffic, point "
                                   "REQUESTS_CA_BUNDLE at its CA certificate") from None
        except TRANSPORT_ERRORS as exc:
            self._limiter.done(slots)
            self._log_attempt(call, type(exc).__name__, started)
            raise self._transport_failure(call, exc) from None
        except requests.RequestException as exc:
            self._limiter.done(slots)
            raise RemoteError(f"{self._where(call)}: {self._clean(str(exc))}",
                              hint=f"check base_url of instance {self.instance!r}") from None
        self._limiter.done(slots)
        self._date = response.headers.get("Date") or self._date
        self._log_attempt(call, response.status_code, started)
        return self._classify(call, response)

    def _prepare(self, call: _Call, params: Any, headers: dict[str, str]
                 ) -> requests.PreparedRequest:
        """The request as ``Session.request`` prepares it, without the per-call merging it
        does for what dealsync never sets per call (request cookies, auth objects, the
        environment, which is read once per host): the session's headers, then the call's;
        the session's cookies and hooks as they are. About 50 µs a call instead of 180 µs
        (docs/performance.md §3)."""
        prepared = requests.PreparedRequest()
        prepared.prepare(method=call.method, url=call.url, params=params,
                         headers={**self._session.headers, **headers},
                         json=call.kwargs["json"], data=call.kwargs["data"],
                         cookies=self._session.cookies, hooks=self._session.hooks)
        return prepared

    def _proxies_for(self, url: str) -> dict[str, str]:
        """The proxies the environment names for ``url``'s host (none where NO_PROXY
        excludes it), looked up once per host."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._proxies:
            self._proxies[origin] = requests.utils.get_environ_proxies(origin)
        return self._proxies[origin]

    def server_time(self) -> datetime | None:
        """The service's own clock as of its latest answer (its ``Date`` header:
        https://www.rfc-editor.org/rfc/rfc9110#section-6.6.1), or None. Parsed only when asked,
        so an answer costs no date parsing."""
        try:
            return parsedate_to_datetime(self._date) if self._date else None
        except (TypeError, ValueError):
            return None

    def _transport_failure(self, call: _Call, exc: Exception) -> Exception:
        """What to raise for a failure without a response: retry only if re-sending is harmless."""
        summary = f"{type(exc).__name__}: {self._clean(str(exc))}"
        if not call.idempotent:
            return AmbiguousWrite(f"{self._where(call)}: {summary}; the write may or may not "
                                  f"have happened, so it is not re-sent")
        return _Retry(summary)

    def _classify(self, call: _Call, response: requests.Response) -> requests.Response:
        status = response.status_code
        if status == 429:
            throttle = self.read_throttle(response)
            self._check_throttle(call, throttle)
            raise _Retry(f"HTTP 429 {throttle.message}".rstrip(), response=response,
                         wait_s=throttle.wait_s)
        if status in RETRIED_5XX:
            if not call.idempotent:
                raise AmbiguousWrite(f"{describe(response)}; the write may or may not have "
                                     f"happened, so it is not re-sent")
            raise _Retry(f"HTTP {status}", response=response)
        return response

    def _check_throttle(self, call: _Call, throttle: Throttle) -> None:
        """Give up at once on a quota that will not free up soon enough to wait for."""
        too_long = throttle.wait_s is not None and throttle.wait_s > self.max_wait_s
        if not (throttle.stop or too_long):
            return
        detail = f": {throttle.message}" if throttle.message else ""
        if throttle.wait_s is None:
            resume = "it frees up later (often the next day)"
        else:
            at = datetime.now(timezone.utc) + timedelta(seconds=throttle.wait_s)
            resume = f"{throttle.wait_s:.0f} s, at {at:%Y-%m-%d %H:%M:%S} UTC"
        raise RateLimitExhausted(
            f"{self._where(call)}: rate limit exhausted{detail}",
            hint=f"the service's quota is used up; run again after {resume}",
            status=429)

    def _gave_up(self, call: _Call, final: _Retry) -> RemoteError:
        attempts = f"after {self.max_attempts} attempt{'s' if self.max_attempts != 1 else ''}"
        if final.response is None:
            return RemoteError(
                f"{self._where(call)}: {final.summary} ({attempts})",
                hint=f"check base_url of instance {self.instance!r} and the network "
                     f"(proxy, DNS, firewall)")
        response = final.response
        return RemoteError(f"{describe(response)} ({attempts})",
                           hint="the service is failing or throttling; try again later",
                           status=response.status_code, code=body_code(response))

    def _log_attempt(self, call: _Call, outcome: int | str, started: float) -> None:
        if not log.isEnabledFor(logging.DEBUG):  # the URL is redacted only for a line shown
            return
        elapsed_ms = (self._monotonic() - started) * 1000
        log.debug("%s: %s -> %s in %.0f ms (attempt %d)", self.instance, self._where(call), outcome,
                  elapsed_ms, call.attempts)

    def _log_retry(self, call: _Call, state: tenacity.RetryCallState) -> None:
        failure = state.outcome.exception()
        throttled = failure.response is not None and failure.response.status_code == 429
        if throttled:
            _announce_wait(self.instance, state.next_action.sleep, "429")
        log.log(logging.INFO if throttled else logging.WARNING,
                "%s: %s failed (%s); retrying in %.1f s (attempt %d of %d)", self.instance,
                self._where(call), self._clean(failure.summary), state.next_action.sleep,
                state.attempt_number + 1, self.max_attempts)

    def _where(self, call: _Call) -> str:
        return self._clean(f"{call.method} {call.url}")

    def _secrets(self) -> list[str]:
        values = {v for v in (*self.auth.secret_values(), *self._redact) if v}
        return sorted(values, key=len, reverse=True)  # longest first: no half-masked secret

    def _clean(self, text: str) -> str:
        return redact_params(self._mask(text))

    def _mask(self, text: str) -> str:
        for value in self._secrets():
            text = text.replace(value, MASK)
        return text

    def _scrubbed(self, exc: DealsyncError) -> DealsyncError:
        """Name the instance in, and mask every secret of, an error about to leave the client:
        the one funnel every connector's errors pass through."""
        if not exc.message.startswith(self.instance):
            exc.message = f"{self.instance}: {exc.message}"
        exc.message = self._clean(exc.message)
        exc.args = (exc.message,)
        if exc.hint:  # our own words: only a secret's value is masked, not `export X=...`
            exc.hint = self._mask(exc.hint)
        return exc
