"""The client-side rate limiter against a server that counts a call when it arrives.

A call arrives some time after it is sent; how long varies. A limiter that counts from the
send lets a slow call and a fast one land in one server window with a third: the server
refuses it, and the client pays a whole window. Counting from the answer cannot be caught out
by any latency (sync/http.py, ``_Window``)."""

from __future__ import annotations

import responses

from sync.connectors import RateLimit
from sync.http import HttpClient

BASE = "https://api.example.test"


class Clock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_calls_arrive_within_the_limit_whatever_the_latency():
    clock = Clock()
    client = HttpClient("acme", BASE, sleep=clock.sleep, monotonic=clock.monotonic,
                        rate_limits={"default": RateLimit(2, 1.0)})
    latencies = iter([0.5, 0.0, 0.0, 0.4, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0] * 3)
    arrivals: list[float] = []

    def server(request):
        clock.now += next(latencies)  # the call travels, then the server counts it
        arrivals.append(clock.now)
        return 200, {}, "{}"

    with responses.RequestsMock() as mock:
        mock.add_callback("GET", f"{BASE}/deals", callback=server)
        for _ in range(30):
            client.request("GET", "/deals")
    # the server's window at each arrival: (t - 1 s, t], a nanosecond given to float rounding
    worst = max(sum(1 for t in arrivals if start - 1.0 + 1e-9 < t <= start)
                for start in arrivals)
    assert worst == 2
    # and not slower than it must be: every window but the last holds two calls
    assert clock.now < 30 / 2 * 1.0 + sum([0.5, 0.4, 0.3]) * 3
