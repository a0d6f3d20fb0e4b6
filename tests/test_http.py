"""Tests for sync.http: retries, throttling, auth refresh, error mapping, rate limiting,
redaction and call counting. No test touches the network or really sleeps."""

from __future__ import annotations

import logging
import threading
import time
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest
import requests
import responses

from sync.connectors import RateLimit
from sync.errors import (AmbiguousWrite, AuthError, ItemError, NotFound, RateLimitExhausted,
                         RemoteError)
from sync.http import (Auth, BearerToken, HttpClient, RateLimiter, RefreshingToken, Throttle,
                       default_error, default_throttle, endpoint_label, parse_retry_after,
                       redact_params)

BASE = "https://api.example.test/v1"


class FakeClock:
    """A monotonic clock that only moves when something sleeps; remembers every sleep."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def mock(rsps):
    return rsps


@pytest.fixture
def client(clock):
    return make_client(clock)


def make_client(clock: FakeClock, **kwargs) -> HttpClient:
    return HttpClient("acme", BASE, sleep=clock.sleep, monotonic=clock.monotonic, **kwargs)


def add_sequence(mock, method, url, *replies):
    """Register replies returned in order (the last one repeats)."""
    for reply in replies:
        if isinstance(reply, Exception):
            mock.add(method, url, body=reply)
        else:
            status, extra = (reply, {}) if isinstance(reply, int) else reply
            mock.add(method, url, status=status, json=extra.pop("json", {"ok": True}), **extra)


# --- basics -------------------------------------------------------------------------------------

def test_get_joins_base_url_and_passes_timeouts_and_tls(mock, client):
    mock.add("GET", f"{BASE}/items", json={"items": [1]})
    assert client.json("GET", "/items") == {"items": [1]}
    sent = mock.calls[0].request
    assert sent.url == f"{BASE}/items"
    assert sent.req_kwargs["timeout"] == (5.0, 30.0)
    assert sent.req_kwargs["verify"] not in (False, None)  # True, or REQUESTS_CA_BUNDLE's path


def test_absolute_url_is_used_as_is(mock, client):
    mock.add("GET", "https://other.example.test/oauth/info", json={})
    client.request("GET", "https://other.example.test/oauth/info")
    assert client.calls == {"GET /oauth/info": 1}


def test_json_of_empty_body_is_none(mock, client):
    mock.add("DELETE", f"{BASE}/items/1", status=204)
    assert client.json("DELETE", "/items/1") is None


def test_json_of_html_body_is_remote_error(mock, client):
    mock.add("GET", f"{BASE}/items", body="<html>proxy login</html>", content_type="text/html")
    with pytest.raises(RemoteError, match="not JSON"):
        client.json("GET", "/items")


def test_headers_merge_auth_then_caller(mock, clock):
    client = make_client(clock, auth=BearerToken("tok"))
    mock.add("GET", f"{BASE}/a")
    mock.add("GET", f"{BASE}/b")
    client.request("GET", "/a", headers={"X-Extra": "1"})
    client.request("GET", "/b", headers={"Authorization": "Basic override"})
    assert mock.calls[0].request.headers["Authorization"] == "Bearer tok"
    assert mock.calls[0].request.headers["X-Extra"] == "1"
    assert mock.calls[1].request.headers["Authorization"] == "Basic override"


def test_status_outside_ok_is_mapped(mock, client):
    mock.add("GET", f"{BASE}/items/1", status=404, json={"message": "gone"})
    assert client.request("GET", "/items/1", ok=(200, 404)).status_code == 404


# --- 429 ----------------------------------------------------------------------------------------

def test_429_honours_retry_after_seconds(mock, client, clock):
    add_sequence(mock, "GET", f"{BASE}/deals", (429, {"headers": {"Retry-After": "7"}}), 200)
    assert client.request("GET", "/deals").status_code == 200
    assert clock.sleeps == [7.0]
    assert client.calls["GET /deals"] == 2


def test_429_honours_pingcode_header(mock, client, clock):
    body = {"code": "100038", "message": "请求频率过高"}
    add_sequence(mock, "GET", f"{BASE}/work_items",
                 (429, {"headers": {"x-pc-retry-after": "50"}, "json": body}), 200)
    client.request("GET", "/work_items")
    assert clock.sleeps == [50.0]


def test_429_honours_retry_after_http_date(mock, client, clock):
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    add_sequence(mock, "GET", f"{BASE}/deals", (429, {"headers": {"Retry-After": when}}), 200)
    client.request("GET", "/deals")
    assert len(clock.sleeps) == 1 and 25 <= clock.sleeps[0] <= 30


def test_429_without_header_backs_off_exponentially_with_jitter(mock, client, clock):
    add_sequence(mock, "GET", f"{BASE}/deals", 429, 429, 429, 200)
    client.request("GET", "/deals")
    assert [int(s) for s in clock.sleeps] == [1, 2, 4]
    assert all(low <= s <= low + 1 for s, low in zip(clock.sleeps, [1, 2, 4]))


def test_backoff_is_capped_at_30_seconds(mock, clock):
    client = make_client(clock, max_attempts=8)
    add_sequence(mock, "GET", f"{BASE}/deals", 503)
    with pytest.raises(RemoteError):
        client.request("GET", "/deals")
    assert max(clock.sleeps) == 30
    assert len(clock.sleeps) == 7


def test_throttle_stop_raises_at_once(mock, clock):
    def hubspot_policy(response):
        policy = response.json().get("policyName")
        return Throttle(wait_s=None, stop=policy == "DAILY", message="daily limit")

    client = make_client(clock, read_throttle=hubspot_policy)
    mock.add("GET", f"{BASE}/deals", status=429, json={"policyName": "DAILY"})
    with pytest.raises(RateLimitExhausted, match="daily limit") as caught:
        client.request("GET", "/deals")
    assert len(mock.calls) == 1
    assert clock.sleeps == []
    assert caught.value.status == 429
    assert "later" in caught.value.hint


def test_wait_longer_than_max_wait_raises_with_resume_time(mock, clock):
    client = make_client(clock, max_wait_s=120)
    mock.add("GET", f"{BASE}/deals", status=429, headers={"Retry-After": "3600"})
    with pytest.raises(RateLimitExhausted) as caught:
        client.request("GET", "/deals")
    assert "3600 s" in caught.value.hint
    assert len(mock.calls) == 1 and clock.sleeps == []


def test_429_on_post_is_retried_because_nothing_was_done(mock, client, clock):
    add_sequence(mock, "POST", f"{BASE}/items", (429, {"headers": {"Retry-After": "1"}}), 201)
    assert client.request("POST", "/items", json={"a": 1}).status_code == 201
    assert len(mock.calls) == 2


def test_429_until_attempts_run_out_is_remote_error(mock, clock):
    client = make_client(clock, max_attempts=3)
    mock.add("GET", f"{BASE}/deals", status=429, headers={"Retry-After": "2"},
             json={"message": "slow down"})
    with pytest.raises(RemoteError, match="after 3 attempts") as caught:
        client.request("GET", "/deals")
    assert type(caught.value) is RemoteError
    assert caught.value.status == 429
    assert clock.sleeps == [2.0, 2.0]
    assert client.calls["GET /deals"] == 3


# --- 5xx and transport errors -------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_retried_on_get(mock, client, clock, status):
    add_sequence(mock, "GET", f"{BASE}/deals", status, status, 200)
    assert client.request("GET", "/deals").status_code == 200
    assert len(mock.calls) == 3
    assert len(clock.sleeps) == 2


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_5xx_retried_on_idempotent_methods(mock, client, method):
    add_sequence(mock, method, f"{BASE}/items/1", 503, 200)
    client.request(method, "/items/1")
    assert len(mock.calls) == 2


@pytest.mark.parametrize("status", [502, 503, 504])
def test_5xx_retried_on_post_marked_idempotent(mock, client, status):
    add_sequence(mock, "POST", f"{BASE}/deals/search", status, 200)
    client.request("POST", "/deals/search", json={}, idempotent=True)
    assert len(mock.calls) == 2


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_on_write_is_ambiguous_and_not_resent(mock, client, clock, method, status):
    add_sequence(mock, method, f"{BASE}/items", status, 201)
    with pytest.raises(AmbiguousWrite) as caught:
        client.request(method, "/items", json={"title": "x"})
    assert len(mock.calls) == 1
    assert client.calls[f"{method} /items"] == 1
    assert clock.sleeps == []
    assert caught.value.retryable is True
    assert f"HTTP {status}" in str(caught.value)


def test_get_marked_not_idempotent_is_not_retried(mock, client):
    add_sequence(mock, "GET", f"{BASE}/jobs/run", 503, 200)
    with pytest.raises(AmbiguousWrite):
        client.request("GET", "/jobs/run", idempotent=False)
    assert len(mock.calls) == 1


@pytest.mark.parametrize("error", [requests.ConnectionError("reset"), requests.Timeout("slow")])
def test_transport_errors_retried_on_get(mock, client, clock, error):
    add_sequence(mock, "GET", f"{BASE}/deals", error, 200)
    assert client.request("GET", "/deals").status_code == 200
    assert len(mock.calls) == 2
    assert len(clock.sleeps) == 1


def test_connection_error_retried_on_idempotent_post(mock, client):
    add_sequence(mock, "POST", f"{BASE}/deals/search", requests.ConnectionError("reset"), 200)
    client.request("POST", "/deals/search", json={}, idempotent=True)
    assert len(mock.calls) == 2


@pytest.mark.parametrize("error", [requests.ConnectionError("reset"),
                                   requests.exceptions.ReadTimeout("slow")])
def test_transport_error_on_post_is_ambiguous_and_not_resent(mock, client, clock, error):
    add_sequence(mock, "POST", f"{BASE}/items", error, 201)
    with pytest.raises(AmbiguousWrite, match="may or may not"):
        client.request("POST", "/items", json={"title": "x"})
    assert len(mock.calls) == 1
    assert client.calls["POST /items"] == 1
    assert clock.sleeps == []


def test_connection_errors_exhausted_hint_at_base_url(mock, client):
    mock.add("GET", f"{BASE}/deals", body=requests.ConnectionError("refused"))
    with pytest.raises(RemoteError, match="after 5 attempts") as caught:
        client.request("GET", "/deals")
    assert "base_url" in caught.value.hint and "network" in caught.value.hint
    assert caught.value.status is None
    assert len(mock.calls) == 5


def test_5xx_exhausted_is_remote_error_with_status(mock, client, clock):
    mock.add("GET", f"{BASE}/deals", status=503, json={"message": "maintenance"})
    with pytest.raises(RemoteError, match="maintenance") as caught:
        client.request("GET", "/deals")
    assert caught.value.status == 503
    assert len(mock.calls) == 5
    assert len(clock.sleeps) == 4


def test_tls_error_is_not_retried(mock, client):
    mock.add("GET", f"{BASE}/deals", body=requests.exceptions.SSLError("bad cert"))
    with pytest.raises(RemoteError, match="TLS") as caught:
        client.request("GET", "/deals")
    assert "REQUESTS_CA_BUNDLE" in caught.value.hint
    assert len(mock.calls) == 1


# --- 401 and auth -------------------------------------------------------------------------------

def test_401_refreshes_once_and_replays(mock, clock):
    tokens = iter(["first", "second"])
    auth = RefreshingToken(lambda: (next(tokens), time.time() + 3600))
    client = make_client(clock, auth=auth)
    add_sequence(mock, "POST", f"{BASE}/items", 401, 201)
    assert client.request("POST", "/items", json={}).status_code == 201
    assert [c.request.headers["Authorization"] for c in mock.calls] == ["Bearer first",
                                                                        "Bearer second"]
    assert client.calls["POST /items"] == 2


def test_second_401_is_auth_error(mock, clock):
    refreshes = []

    class CountingAuth(Auth):
        def refresh(self):
            refreshes.append(1)
            return True

    client = make_client(clock, auth=CountingAuth())
    mock.add("GET", f"{BASE}/deals", status=401, json={"message": "expired"})
    with pytest.raises(AuthError, match="expired") as caught:
        client.request("GET", "/deals")
    assert refreshes == [1]
    assert len(mock.calls) == 2
    assert "dealsync auth status" in caught.value.hint


def test_401_without_refresh_is_auth_error_without_replay(mock, clock):
    client = make_client(clock, auth=BearerToken("static"))
    mock.add("GET", f"{BASE}/deals", status=401)
    with pytest.raises(AuthError):
        client.request("GET", "/deals")
    assert len(mock.calls) == 1


def test_refreshing_token_renews_before_expiry():
    now = [0.0]
    fetched = []

    def fetch():
        fetched.append(now[0])
        return f"token-{len(fetched)}", now[0] + 3600

    auth = RefreshingToken(fetch, early_s=60, clock=lambda: now[0])
    assert auth.secret_values() == []
    assert auth.headers() == {"Authorization": "Bearer token-1"}
    now[0] = 3000
    assert auth.headers() == {"Authorization": "Bearer token-1"}
    now[0] = 3541  # inside the 60 s margin before expiry at 3600
    assert auth.headers() == {"Authorization": "Bearer token-2"}
    assert fetched == [0.0, 3541]
    assert auth.refresh() is True
    assert auth.headers() == {"Authorization": "Bearer token-3"}
    assert auth.secret_values() == ["token-3"]


def test_bearer_token_never_refreshes():
    auth = BearerToken("abc")
    assert auth.refresh() is False
    assert auth.secret_values() == ["abc"]


class BodyRejectingToken(RefreshingToken):
    """A service that says "token refused" in an HTTP 200 body (Worktile, docs/worktile.md §3)
    and wants the token as a query parameter as well."""

    def params(self):
        return {"access_token": self.token()}

    def rejected(self, response):
        return response.status_code == 401 or response.json().get("ok") is False


def test_a_refusal_in_a_200_body_refreshes_once_and_replays_with_the_new_query_token(mock,
                                                                                  clock):
    tokens = iter(["first", "second"])
    client = make_client(clock, auth=BodyRejectingToken(lambda: (next(tokens),
                                                                 time.time() + 3600)))
    mock.add("POST", f"{BASE}/items", json={"ok": False, "error_code": 1103})
    mock.add("POST", f"{BASE}/items", json={"_id": "x"})
    assert client.request("POST", "/items", json={}).json() == {"_id": "x"}
    assert [c.request.url for c in mock.calls] == [f"{BASE}/items?access_token=first",
                                                   f"{BASE}/items?access_token=second"]
    assert [c.request.headers["Authorization"] for c in mock.calls] == ["Bearer first",
                                                                        "Bearer second"]


def test_a_refusal_in_a_200_body_after_the_replay_is_an_error_not_a_result(mock, clock):
    def map_error(response):
        return AuthError(f"refused: {response.json()['error_code']} at {response.url}")

    client = make_client(clock, auth=BodyRejectingToken(lambda: (SECRET_TOKEN,
                                                                 time.time() + 3600)),
                         map_error=map_error)
    mock.add("GET", f"{BASE}/items", json={"ok": False, "error_code": 1103})
    with pytest.raises(AuthError, match="refused: 1103") as caught:
        client.request("GET", "/items", params={"page": 1})
    assert len(mock.calls) == 2  # one replay, no loop
    assert_clean(str(caught.value))  # the query token is masked like any secret


# --- error mapping ------------------------------------------------------------------------------

@pytest.mark.parametrize("status, kind", [(401, AuthError), (403, AuthError), (404, NotFound),
                                          (400, ItemError), (409, ItemError), (422, ItemError)])
def test_client_errors_map_without_retry(mock, client, clock, status, kind):
    mock.add("GET", f"{BASE}/deals/1", status=status, json={"message": "nope"})
    with pytest.raises(kind) as caught:
        client.request("GET", "/deals/1")
    assert type(caught.value) is kind
    assert len(mock.calls) == 1 and clock.sleeps == []


def test_400_is_item_error_not_retryable_with_details(mock, client):
    mock.add("PATCH", f"{BASE}/deals/7", status=400,
             json={"message": "Property 'x' does not exist"})
    with pytest.raises(ItemError) as caught:
        client.request("PATCH", "/deals/7", json={})
    assert caught.value.retryable is False
    assert str(caught.value) == f"acme: PATCH {BASE}/deals/7: HTTP 400: Property 'x' does not exist"


def test_404_is_not_found_and_names_the_masked_url(mock, client):
    mock.add("GET", f"{BASE}/deals/7", status=404)
    with pytest.raises(NotFound) as caught:
        client.request("GET", "/deals/7", params={"token": "abc"})
    assert str(caught.value) == f"acme: GET {BASE}/deals/7?token=***: HTTP 404"


def test_unretried_5xx_is_remote_error_with_code(mock, client):
    mock.add("GET", f"{BASE}/deals", status=501, json={"code": "100000"})
    with pytest.raises(RemoteError, match="100000") as caught:
        client.request("GET", "/deals")
    assert caught.value.status == 501 and caught.value.code == "100000"
    assert len(mock.calls) == 1


def test_custom_map_error_is_used(mock, clock):
    client = make_client(clock, map_error=lambda r: ItemError(f"custom {r.status_code}"))
    mock.add("GET", f"{BASE}/deals", status=418)
    with pytest.raises(ItemError, match="custom 418"):
        client.request("GET", "/deals")


def _response(status, *, json=None, body=None, headers=None, content_type="application/json"):
    with responses.RequestsMock() as mock:
        kwargs = {"json": json} if json is not None else {"body": body or ""}
        mock.add("GET", f"{BASE}/x", status=status, headers=headers or {},
                 content_type=content_type, **kwargs)
        return requests.get(f"{BASE}/x", timeout=1)


def test_default_error_truncates_long_messages():
    error = default_error(_response(400, json={"message": "x" * 2000}))
    assert len(str(error)) < 400
    assert str(error).endswith("…")


def test_default_error_reads_salesforce_list_body_and_plain_text():
    listed = default_error(_response(400, json=[{"message": "bad field", "errorCode": "E1"}]))
    assert "bad field" in str(listed)
    plain = default_error(_response(400, body="plain words", content_type="text/plain"))
    assert str(plain).endswith("HTTP 400: plain words")
    html = default_error(_response(502, body="<html>nginx</html>", content_type="text/html"))
    assert str(html) == f"GET {BASE}/x: HTTP 502"


def test_default_throttle_reads_headers():
    assert default_throttle(_response(429, headers={"Retry-After": "3"})).wait_s == 3.0
    assert default_throttle(_response(429, headers={"x-pc-retry-after": "50"})).wait_s == 50.0
    bare = default_throttle(_response(429, json={"message": "slow down"}))
    assert bare == Throttle(wait_s=None, stop=False, message="slow down")


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ("soon", None), ("2.5", 2.5), ("-4", 0.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: go now
])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value) == expected


# --- rate limiting ------------------------------------------------------------------------------

def sent_times(mock, clock, method, url):
    """Register a reply that records the fake time at which each request was sent."""
    times = []

    def reply(request):
        times.append(clock.now)
        return 200, {}, "{}"

    mock.add_callback(method, url, callback=reply)
    return times


def max_in_window(times: list[float], width: float) -> int:
    return max(sum(1 for t in times if start <= t < start + width) for start in times)


def test_rate_limit_spaces_calls(mock, clock):
    client = make_client(clock, rate_limits={"default": RateLimit(2, 1.0)})
    times = sent_times(mock, clock, "GET", f"{BASE}/deals")
    for _ in range(5):
        client.request("GET", "/deals")
    assert max_in_window(times, 1.0) == 2
    assert times == [1000.0, 1000.0, 1001.0, 1001.0, 1002.0]
    assert sum(clock.sleeps) == pytest.approx(2.0)


def test_request_waits_for_every_named_bucket(mock, clock):
    limits = {"default": RateLimit(100, 10.0), "search": RateLimit(1, 0.25)}
    client = make_client(clock, rate_limits=limits)
    times = sent_times(mock, clock, "POST", f"{BASE}/deals/search")
    for _ in range(4):
        client.request("POST", "/deals/search", buckets=("default", "search"), idempotent=True)
    assert times == pytest.approx([1000.0, 1000.25, 1000.5, 1000.75])


def test_unconfigured_bucket_is_unlimited(mock, clock):
    client = make_client(clock, rate_limits={"search": RateLimit(1, 1.0)})
    mock.add("GET", f"{BASE}/deals")
    for _ in range(10):
        client.request("GET", "/deals")
    assert clock.sleeps == []


def test_retries_take_rate_limit_slots_too(mock, clock):
    client = make_client(clock, rate_limits={"default": RateLimit(1, 10.0)})
    add_sequence(mock, "GET", f"{BASE}/deals", (503, {}), 200)
    client.request("GET", "/deals")
    # the backoff (1-2 s) is shorter than the window, so the limiter waits out the rest
    assert sum(clock.sleeps) == pytest.approx(10.0)


def test_rate_limiter_is_thread_safe():
    granted = []
    lock = threading.Lock()
    limiter = RateLimiter({"default": RateLimit(5, 0.05)}, time.sleep, time.monotonic)

    def worker():
        for _ in range(5):
            limiter.acquire(("default",))
            with lock:
                granted.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 20 grants at 5 per 50 ms need at least three full windows after the first burst
    assert len(granted) == 20
    assert time.monotonic() - started >= 0.15


# --- counting -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, label", [
    ("/crm/v3/objects/deals/123", "GET /crm/v3/objects/deals/{id}"),
    ("/v1/project/work_items/5f1d2c3b4a5e6f7a8b9c0d1e", "GET /v1/project/work_items/{id}"),
    ("/items/550e8400-e29b-41d4-a716-446655440000/comments", "GET /items/{id}/comments"),
    ("/deals/search?after=100", "GET /deals/search"),
    ("https://h.example/v2/agile/projects", "GET /v2/agile/projects"),
    ("/v1/projects/SCR/work_items", "GET /v1/projects/SCR/work_items"),
])
def test_endpoint_label_collapses_ids(path, label):
    assert endpoint_label("get", path) == label


def test_calls_counted_per_label_with_retries(mock, client):
    mock.add("GET", f"{BASE}/deals/1")
    mock.add("GET", f"{BASE}/deals/2")
    add_sequence(mock, "GET", f"{BASE}/deals/3", 503, 200)
    mock.add("POST", f"{BASE}/deals/search")
    for n in (1, 2, 3):
        client.request("GET", f"/deals/{n}")
    client.request("POST", "/deals/search", label="search deals", idempotent=True)
    assert client.calls == {"GET /deals/{id}": 4, "search deals": 1}


# --- redaction ----------------------------------------------------------------------------------

SECRET_TOKEN = "tok-SECRET-12345"
CLIENT_SECRET = "cs-HIDDEN-67890"
EXTRA = "extra-PRIVATE-abc"


def assert_clean(*texts: str | None) -> None:
    for text in texts:
        for secret in (SECRET_TOKEN, CLIENT_SECRET, EXTRA):
            assert secret not in (text or "")


def test_secrets_never_reach_errors_or_logs(mock, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="dealsync.http")
    client = make_client(clock, auth=BearerToken(SECRET_TOKEN), redact=[EXTRA])
    body = {"message": f"token {SECRET_TOKEN} and {EXTRA} rejected "
                       f"for client_secret={CLIENT_SECRET}"}
    add_sequence(mock, "POST", f"{BASE}/oauth/token", 503, (400, {"json": body}))
    with pytest.raises(ItemError) as caught:
        client.request("POST", "/oauth/token", params={"client_secret": CLIENT_SECRET},
                       idempotent=True)
    assert "client_secret=***" in str(caught.value)
    assert "token *** and *** rejected" in str(caught.value)
    assert_clean(str(caught.value), caught.value.hint, caplog.text)
    assert "503" in caplog.text  # the retry was logged, just without secrets


def test_secrets_in_url_never_reach_transport_errors(mock, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="dealsync.http")
    client = make_client(clock, auth=BearerToken(SECRET_TOKEN))
    url = f"{BASE}/items?access_token={SECRET_TOKEN}&client_secret={CLIENT_SECRET}"
    mock.add("POST", url,
             body=requests.ConnectionError(f"Max retries exceeded with url: {url}"))
    with pytest.raises(AmbiguousWrite) as caught:
        client.request("POST", url)
    assert_clean(str(caught.value), caught.value.hint, caplog.text)
    assert caught.value.__suppress_context__


def test_secrets_never_reach_exhausted_retry_errors(mock, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="dealsync.http")
    client = make_client(clock, auth=BearerToken(SECRET_TOKEN), max_attempts=2)
    url = f"{BASE}/deals?hapikey={SECRET_TOKEN}"
    mock.add("GET", url, body=requests.ConnectionError(f"refused {url}"))
    with pytest.raises(RemoteError) as caught:
        client.request("GET", url)
    assert_clean(str(caught.value), caught.value.hint, caplog.text)
    assert "refused" in caplog.text


def test_refreshed_token_is_redacted_too(mock, clock):
    tokens = iter(["old-token-aaaa", SECRET_TOKEN])
    client = make_client(clock, auth=RefreshingToken(lambda: (next(tokens), time.time() + 3600)))
    mock.add("GET", f"{BASE}/me", status=401, json={"message": f"bad {SECRET_TOKEN}"})
    with pytest.raises(AuthError) as caught:
        client.request("GET", "/me")
    assert_clean(str(caught.value))


@pytest.mark.parametrize("text, expected", [
    ("https://x/t?client_secret=abc&next=1", "https://x/t?client_secret=***&next=1"),
    ("?code=xyz&state=1", "?code=***&state=1"),
    ("?refresh_token=r&password=p&api_key=k", "?refresh_token=***&password=***&api_key=***"),
    ("?secret=s&token=t&access_token=a", "?secret=***&token=***&access_token=***"),
    ("?status_code=500&client_id=app&after=5", "?status_code=500&client_id=app&after=5"),
    ("GET /x?token=***: HTTP 404", "GET /x?token=***: HTTP 404"),
])
def test_redact_params(text, expected):
    assert redact_params(text) == expected
    assert redact_params(redact_params(text)) == expected


def test_close_closes_the_session(clock):
    session = requests.Session()
    closed = []
    session.close = lambda: closed.append(True)
    make_client(clock, session=session).close()
    assert closed == [True]


@pytest.mark.parametrize("url", ["http://api.example.com", "http://10.0.0.5:8080/open"])
def test_plain_http_to_another_machine_is_refused(url):
    from sync.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        HttpClient("rd", url)
    assert "rd: base_url" in str(caught.value) and "unencrypted" in str(caught.value)
    assert caught.value.hint.startswith("use https://")


@pytest.mark.parametrize("url", ["https://api.example.com", "http://127.0.0.1:8081",
                                 "http://localhost:9000", "http://[::1]:8080"])
def test_https_and_emulators_on_this_machine_are_accepted(url):
    assert HttpClient("rd", url).base_url == url


def test_the_environment_is_read_once_per_host_and_still_honoured(mock, monkeypatch):
    """Proxies and a CA bundle from the environment apply as requests would apply them, but
    the environment is read once per host, not on every call, and ~/.netrc never is."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example.test")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp-ca.pem")
    lookups = []
    real = requests.utils.get_environ_proxies
    monkeypatch.setattr(requests.utils, "get_environ_proxies",
                        lambda url, no_proxy=None: lookups.append(url) or real(url, no_proxy))
    http = HttpClient("rd", BASE, sleep=lambda s: None)
    mock.add("GET", f"{BASE}/items", json={})
    mock.add("GET", "https://direct.example.test/x", json={})
    for _ in range(3):
        http.json("GET", "/items")
    http.json("GET", "https://direct.example.test/x")
    sent = [call.request.req_kwargs for call in mock.calls]
    assert sent[0]["proxies"]["https"] == "http://proxy.internal:3128"
    assert sent[3]["proxies"] == {}  # NO_PROXY
    assert all(kwargs["verify"] == "/etc/ssl/corp-ca.pem" for kwargs in sent)
    assert lookups == ["https://api.example.test", "https://direct.example.test"]  # per host
    assert http._session.trust_env is False  # so no ~/.netrc credentials are ever added
