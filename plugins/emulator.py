"""The shared kit the built-in service emulators are made of.

Each emulator (``plugins/hubspot/emulator.py``, ``plugins/pingcode/emulator.py``) is a stdlib HTTP
server bound to 127.0.0.1 that imitates one vendor API faithfully enough for the connector
contract tests, the demo and the benchmarks. What every emulator needs is here, once:

- routing by method and path pattern, JSON in and out;
- a virtual clock (``/__emu/clock``) so tests control time;
- fault injection by route and call number or probability (``/__emu/faults``);
- a request log (``/__emu/requests``) and per-route call counts (``/__emu/stats``);
- a sliding-window rate limiter helper;
- ``/__emu/reset`` and ``/__emu/config``.

Vendor specifics (shapes, error bodies, limits) live in each emulator, not here.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit


#: What the Chinese trackers' emulators (PingCode, Worktile) seed alike: the demo app whose
#: credentials dealsync's demo uses, and three people to own and edit items.
DEMO_APPS = [{"client_id": "dealsync-demo", "client_secret": "demo-secret", "name": "dealsync"}]
DEMO_USERS = [
    {"name": "lina", "display_name": "李娜", "email": "lina@example.com"},
    {"name": "wangwei", "display_name": "王伟", "email": "wangwei@example.com"},
    {"name": "zhangmin", "display_name": "张敏", "email": "zhangmin@example.com"},
]


class VirtualClock:
    """Time that moves only when told to (plus an optional tick per request)."""

    def __init__(self, start: datetime, tick_ms: int = 0):
        self._now = start.astimezone(timezone.utc)
        self.tick_ms = tick_ms
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(timezone.utc)

    def advance(self, ms: float) -> None:
        with self._lock:
            self._now += timedelta(milliseconds=ms)

    def tick(self) -> None:
        if self.tick_ms:
            self.advance(self.tick_ms)


class RealtimeClock(VirtualClock):
    """A ``VirtualClock`` that also follows the wall clock: ``set``/``advance`` shift it, and real
    time keeps passing. For a standalone emulator serving the demo, where a frozen clock would
    hold a rate-limit window shut forever."""

    def __init__(self, start: datetime | None = None, tick_ms: int = 0):
        super().__init__(start or datetime.now(timezone.utc), tick_ms)
        self._anchor = time.monotonic()

    def now(self) -> datetime:
        with self._lock:
            return self._now + timedelta(seconds=time.monotonic() - self._anchor)

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(timezone.utc)
            self._anchor = time.monotonic()


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw_body: bytes
    params: dict[str, str] = field(default_factory=dict)  # named groups of the route pattern

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        if not self.raw_body:
            return None
        try:
            return json.loads(self.raw_body)
        except ValueError:
            raise HttpError(400, {"message": "body is not valid JSON"}) from None

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.raw_body.decode("utf-8")).items()}

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    #: sent as is instead of ``body`` as JSON: an HTML error page, a truncated reply
    raw: bytes | None = None
    content_type: str = "application/json;charset=utf-8"


class HttpError(Exception):
    """Raise inside a handler to answer with ``status`` and a JSON ``body``."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.response = Response(status, body, headers or {})


@dataclass
class Fault:
    """An injected failure: ``match`` is "METHOD path-regex"; fires on the ``nth`` matching calls
    (1-based) or with probability ``prob``; answers ``status``/``body`` or resets the connection."""

    match: str
    nth: list[int] = field(default_factory=list)
    prob: float = 0.0
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_ms: int = 0
    reset_connection: bool = False
    #: answer this text instead of ``body`` as JSON (a proxy's HTML page, a cut-off body)
    text: str | None = None
    content_type: str = "text/html; charset=utf-8"
    #: let the call reach the service first, then fail it this way (a reply lost after a
    #: write was applied)
    after_handling: bool = False
    seen: int = 0

    def matches(self, method: str, path: str) -> bool:
        want_method, _, pattern = self.match.partition(" ")
        return want_method.upper() in (method, "*") and re.fullmatch(pattern, path) is not None


class SlidingWindow:
    """At most ``limit`` events in any ``window_s`` seconds (of whatever clock is passed in)."""

    def __init__(self, limit: int, window_s: float):
        self.limit = limit
        self.window_s = window_s
        self.events: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self.events and self.events[0] <= now - self.window_s:
            self.events.popleft()

    def try_take(self, now: float) -> bool:
        self._trim(now)
        if len(self.events) >= self.limit:
            return False
        self.events.append(now)
        return True

    def seconds_until_free(self, now: float) -> float:
        self._trim(now)
        if len(self.events) < self.limit:
            return 0.0
        return max(0.0, self.events[0] + self.window_s - now)


Handler = Callable[[Request], Response | Any]


class Emulator:
    """Base of a vendor emulator. Subclasses call ``route`` in ``install_routes`` and implement
    ``reset``. Handlers run under one lock, so emulator state needs no locking of its own."""

    name = "emulator"

    def __init__(self, seed: int = 0):
        self.lock = threading.RLock()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.faults: list[Fault] = []
        self.log: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        self.config: dict[str, Any] = {}
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        #: a network round trip added to every answer (outside the lock, as a real network
        #: adds it): benchmarks compare clients at a realistic latency, not only on loopback
        self.latency_s = 0.0
        self._install_control_routes()
        self.install_routes()
        self.reset(seed)

    # -- to implement -------------------------------------------------------------------------
    def install_routes(self) -> None:
        raise NotImplementedError

    def credentials(self) -> str:
        """What a client must send to be let in, for a person starting the emulator by hand."""
        return ""

    def reset(self, seed: int = 0) -> None:
        """Drop all data and restore default config. Subclasses set ``self.config`` and
        ``self.clock`` and call ``super().reset(seed)``."""
        self.random = random.Random(seed)
        self.faults.clear()
        self.log.clear()
        self.calls.clear()

    def rate_limit(self, req: Request) -> Response | None:
        """Return a 429 response if this request is over a limit, else None (counted)."""
        return None

    def stats(self) -> dict[str, Any]:
        """What ``GET /__emu/stats`` answers; subclasses extend it with their own counters."""
        return {"calls": dict(self.calls)}

    # -- routing ------------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(pattern), handler))

    def _install_control_routes(self) -> None:
        self.route("POST", r"/__emu/reset", self._ctl_reset)
        self.route("POST", r"/__emu/config", self._ctl_config)
        self.route("GET", r"/__emu/config", lambda r: self.config)
        self.route("POST", r"/__emu/clock", self._ctl_clock)
        self.route("GET", r"/__emu/clock", lambda r: {"now": iso(self.clock.now())})
        self.route("POST", r"/__emu/faults", self._ctl_faults)
        self.route("GET", r"/__emu/requests", self._ctl_requests)
        self.route("GET", r"/__emu/stats", lambda r: self.stats())

    def _ctl_reset(self, req: Request) -> Any:
        self.reset(int((req.json() or {}).get("seed", 0)))
        return {"ok": True}

    def _ctl_config(self, req: Request) -> Any:
        body = req.json() or {}
        unknown = sorted(set(body) - set(self.config))
        if unknown:
            raise HttpError(400, {"message": f"unknown config keys: {unknown}",
                                  "known": sorted(self.config)})
        self.config.update(body)
        return self.config

    def _ctl_clock(self, req: Request) -> Any:
        body = req.json() or {}
        if "set" in body:
            self.clock.set(parse_iso(body["set"]))
        if "advance_ms" in body:
            self.clock.advance(float(body["advance_ms"]))
        return {"now": iso(self.clock.now())}

    def _ctl_faults(self, req: Request) -> Any:
        body = req.json() or []
        self.faults = [Fault(**spec) for spec in (body if isinstance(body, list) else [body])]
        return {"faults": len(self.faults)}

    def _ctl_requests(self, req: Request) -> Any:
        since = int(req.arg("since", "0") or 0)
        return {"requests": self.log[since:], "next": len(self.log)}

    # -- dispatch -----------------------------------------------------------------------------
    def dispatch(self, req: Request) -> Response | None:
        """Answer one request; None means "drop the connection" (an injected reset)."""
        control = req.path.startswith("/__emu/")
        with self.lock:
            handler = self._find(req)
            if not control:
                self.calls[f"{req.method} {req.path}"] += 1
                fault = self._fault_for(req)
                if fault is not None and not fault.after_handling:
                    return self._inject(req, fault)
                if handler is not None:
                    limited = self.rate_limit(req)
                    if limited is not None:
                        self._record(req, limited.status, "rate_limit")
                        return limited
                self.clock.tick()
            response = self._run(handler, req)
            if not control:
                self._record(req, response.status, None)
                if fault is not None:  # the service did the work; its reply is lost
                    return self._inject(req, fault)
            return response

    def _inject(self, req: Request, fault: Fault) -> Response | None:
        self._record(req, 0 if fault.reset_connection else fault.status, "fault")
        if fault.delay_ms:
            time.sleep(fault.delay_ms / 1000)
        if fault.reset_connection:
            return None
        if fault.text is not None:
            return Response(fault.status, None, dict(fault.headers),
                            raw=fault.text.encode("utf-8"), content_type=fault.content_type)
        return Response(fault.status, fault.body, dict(fault.headers))

    def _find(self, req: Request) -> Handler | None:
        for method, pattern, handler in self.routes:
            match = pattern.fullmatch(req.path)
            if match and method == req.method:
                req.params = match.groupdict()
                return handler
        return None

    def _fault_for(self, req: Request) -> Fault | None:
        for fault in self.faults:
            if fault.matches(req.method, req.path):
                fault.seen += 1
                if fault.seen in fault.nth or (fault.prob and self.random.random() < fault.prob):
                    return fault
        return None

    def _run(self, handler: Handler | None, req: Request) -> Response:
        if handler is None:
            return self.not_found(req)
        try:
            result = handler(req)
        except HttpError as exc:
            return exc.response
        return result if isinstance(result, Response) else Response(200, result)

    def not_found(self, req: Request) -> Response:
        return Response(404, {"message": f"no route for {req.method} {req.path}"})

    def _record(self, req: Request, status: int, note: str | None) -> None:
        body: Any = None
        if req.raw_body:
            try:
                body = json.loads(req.raw_body)
            except ValueError:
                body = req.raw_body.decode("utf-8", "replace")
        self.log.append({"method": req.method, "path": req.path,
                         "query": {k: v[0] if len(v) == 1 else v for k, v in req.query.items()},
                         "body": body, "status": status, "note": note})

    # -- serving ------------------------------------------------------------------------------
    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1 in a daemon thread; return the base URL."""
        emulator = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle on, the client's delayed
            # ACK adds ~40 ms to every keep-alive request.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # the request log replaces stderr noise
                pass

            def date_time_string(self, timestamp: float | None = None) -> str:
                """The Date header tells the emulator's own time, virtual or not, as a real
                service tells its clock (dealsync reads it: sync.connectors.service_now)."""
                when = emulator.clock.now().timestamp() if timestamp is None else timestamp
                return formatdate(when, usegmt=True)

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                req = Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                              {k.lower(): v for k, v in self.headers.items()}, raw)
                response = emulator.dispatch(req)
                if emulator.latency_s:
                    time.sleep(emulator.latency_s)
                if response is None:
                    self.close_connection = True
                    self.connection.close()
                    return
                payload = response.raw if response.raw is not None else b"" \
                    if response.body is None else json.dumps(
                        response.body, ensure_ascii=False).encode("utf-8")
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(payload)))
                for key, value in response.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self.server = _Server(("127.0.0.1", port), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name=self.name, daemon=True)
        self.thread.start()
        return self.url

    @property
    def url(self) -> str:
        assert self.server is not None, "emulator not started"
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> "Emulator":
        """``with HubSpotEmulator() as emu:`` serves on a free port until the block ends."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request (a killed sync run) is normal, not an error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def iso(when: datetime) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as HubSpot and most APIs print it."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{when.microsecond // 1000:03d}Z"


def on_virtual_time(emulator: Emulator) -> dict[str, Callable[..., Any]]:
    """``clock``, ``monotonic`` and ``sleep`` for a connector that runs on the emulator's
    virtual clock: every wait moves that clock instead of sleeping (tests, benchmarks)."""

    def now() -> float:
        return emulator.clock.now().timestamp()

    def sleep(seconds: float) -> None:
        emulator.clock.advance(seconds * 1000)

    return {"clock": now, "monotonic": now, "sleep": sleep}


def serve_main(factory: Callable[[], Emulator], argv: list[str] | None = None) -> None:
    """``python -m plugins.<vendor>.emulator --port N``: serve until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(description=f"Run the {factory.__name__} on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    parser.add_argument("--seed", type=int, default=0, help="seed for generated ids and faults")
    args = parser.parse_args(argv)
    emulator = factory()
    emulator.reset(args.seed)
    url = emulator.start(args.port)
    print(f"{emulator.name} listening on {url} (Ctrl-C to stop)", flush=True)
    if emulator.credentials():
        print(emulator.credentials(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        emulator.stop()
