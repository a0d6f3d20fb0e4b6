"""Progress of a run, and the log lines every command writes on stderr.

The engine reports through one hook, ``progress(what, count, total=None)``
(``sync.engine.Options.progress``, docs/engine.md §10): ``what`` names a counter such as
"deals read", ``count`` is how many are done, ``total`` how many there will be where the engine
knows it. ``PHASES`` groups the counters into the phases of a run (docs/engine.md §2).

- ``LiveProgress``, for a person at a terminal: a rich display on stderr, one row per counter
  with its phase, count, rate and ETA, and a line while a client waits for a rate limit.
- ``LogProgress``, for cron, systemd and containers: ``logging`` lines on stderr, one when a
  phase starts and one when it ends, with counts, and one every N seconds or N items between.

Both subscribe to the HTTP client's rate-limit waits (``sync.http.subscribe_waits``), so a
wait shows as "waiting for <instance>'s rate limit (Ns)" instead of a silence.

``setup_logging`` installs the one stderr handler every command logs through, as text or as
one JSON object per line. stdout is never written here: ``--json`` keeps its one document.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn
from rich.text import Text

from . import http

Progress = Callable[..., None]  # progress(what, count, total=None)

#: which phase of a run each counter belongs to (docs/engine.md §2); others are their own phase
PHASES: dict[str, str] = {
    "deals read": "read", "requirements read": "read",
    "actions planned": "plan",
    "created or linked": "create",
    "requirements written": "write", "deals written": "write", "notes written": "write",
}
#: shorter waits for a rate limit are not worth a line
MIN_WAIT_S = 1.0
EVERY_ENV = "DEALSYNC_PROGRESS_EVERY"

log = logging.getLogger("dealsync.progress")


# --- settings -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Every:
    """How often a phase that runs long logs a line: every ``seconds`` or every ``items``
    counted, whichever comes first; 0 turns either off."""

    seconds: float = 30.0
    items: int = 500


_EVERY_PART = re.compile(r"^(\d+(?:\.\d+)?)(s?)$")


def parse_every(text: str | None) -> Every:
    """``30s``, ``500`` or ``30s,500``; what is not given keeps its default."""
    every = Every()
    if not text:
        return every
    seconds, items = every.seconds, every.items
    for part in text.replace(" ", "").split(","):
        match = _EVERY_PART.match(part)
        if not match:
            raise ValueError(f"{part!r}: use seconds like 30s, a number of items like 500, "
                             f"or both: 30s,500")
        if match.group(2):
            seconds = float(match.group(1))
        else:
            items = int(float(match.group(1)))
    return Every(seconds, items)


# --- the hook -----------------------------------------------------------------------------------

@dataclass
class Counter:
    """One counter of the current phase."""

    what: str
    started: float
    count: int = 0
    total: int | None = None
    logged: int = 0  # the count the last line showed

    def rate(self, now: float) -> float | None:
        elapsed = now - self.started
        return self.count / elapsed if elapsed > 0 and self.count else None

    def eta(self, now: float) -> float | None:
        rate = self.rate(now)
        if self.total is None or not rate:
            return None
        return max(0.0, (self.total - self.count) / rate)

    def done(self) -> str:
        """``120/300 created or linked``, or ``1200 deals read`` (``1 deal read``) with no
        total."""
        if self.total is not None:
            return f"{self.count}/{self.total} {self.what}"
        noun, _, rest = self.what.partition(" ")
        if self.count == 1 and noun.endswith("s") and rest:  # "deals read" -> "deal read"
            return f"1 {noun[:-1]} {rest}"
        return f"{self.count} {self.what}"


class Reporter:
    """The progress hook: follows the phases and counters of one run at a time. Thread-safe (a
    run may read both services at once); subclasses show what it follows."""

    def __init__(self, pair: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.pair = pair
        self.clock = clock
        self.phase: str | None = None
        self.phase_started = 0.0
        self.counters: dict[str, Counter] = {}
        self._lock = threading.RLock()
        self._unsubscribe: Callable[[], None] | None = None

    def start(self, pair: str) -> None:
        """A run of ``pair`` begins."""
        with self._lock:
            self.finish()
            self.pair = pair
            self._subscribe()

    def __call__(self, what: str, count: int, total: int | None = None) -> None:
        with self._lock:
            self._subscribe()
            now = self.clock()
            phase = PHASES.get(what, what)
            began = phase != self.phase
            if began:
                self._close_phase(now)
                self.phase, self.phase_started, self.counters = phase, now, {}
            counter = self.counters.get(what)
            if counter is None:
                counter = self.counters[what] = Counter(what, now)
            counter.count = count
            if total is not None:
                counter.total = total
            if began:
                self.phase_began(counter, now)
            else:
                self.advanced(counter, now)

    def waiting(self, instance: str, seconds: float, reason: str) -> None:
        """The HTTP client is about to sleep ``seconds`` for ``instance``'s rate limit."""
        if seconds < MIN_WAIT_S:
            return
        with self._lock:
            self.waited(instance, seconds, reason, self.clock())

    def finish(self, stopped: bool = False) -> None:
        """The run is over (``stopped``: by an error): close the phase, stop listening for
        waits."""
        with self._lock:
            self._close_phase(self.clock(), stopped)
            self.phase, self.counters = None, {}
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None

    def fields(self, **more: Any) -> dict[str, Any]:
        """The structured fields of a line (``--log-format json``)."""
        return {"pair": self.pair, "phase": self.phase, **more}

    def _subscribe(self) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = http.subscribe_waits(self.waiting)

    def _close_phase(self, now: float, stopped: bool = False) -> None:
        if self.phase is not None:
            self.phase_ended(now, stopped)

    # what subclasses show
    def phase_began(self, counter: Counter, now: float) -> None:
        pass

    def advanced(self, counter: Counter, now: float) -> None:
        pass

    def phase_ended(self, now: float, stopped: bool) -> None:
        pass

    def waited(self, instance: str, seconds: float, reason: str, now: float) -> None:
        pass


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _rate_eta(counter: Counter, now: float, with_eta: bool = True) -> str:
    """`` (4.0/s, ETA 45s)``: the ETA while a total is known and not reached."""
    rate = counter.rate(now)
    if rate is None:
        return ""
    left = counter.total is not None and counter.count < counter.total
    eta = counter.eta(now) if with_eta and left else None
    return f" ({rate:.1f}/s" + (f", ETA {duration(eta)})" if eta is not None else ")")


# --- without a terminal: log lines --------------------------------------------------------------

class LogProgress(Reporter):
    """A line when a phase starts and ends, and one every ``every`` while it runs, e.g.
    ``pair=main phase=create 120/300 created or linked (4.0/s, ETA 45s)``."""

    def __init__(self, pair: str | None = None, every: Every = Every(),
                 clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log):
        super().__init__(pair, clock)
        self.every = every
        self.log = logger
        self._last_line = 0.0

    def _line(self, text: str, **fields: Any) -> None:
        self.log.info("pair=%s phase=%s %s", self.pair or "-", self.phase, text,
                      extra={"fields": self.fields(**fields)})

    def _counter_fields(self, counter: Counter, now: float) -> dict[str, Any]:
        rate, eta = counter.rate(now), counter.eta(now)
        return {"what": counter.what, "count": counter.count, "total": counter.total,
                "rate": None if rate is None else round(rate, 2),
                "eta_s": None if eta is None else round(eta)}

    def phase_began(self, counter: Counter, now: float) -> None:
        self._last_line = now
        counter.logged = counter.count
        text = "started" if counter.total is None and not counter.count else \
            f"started: {counter.done()}"
        self._line(text, event="start",
                   **self._counter_fields(counter, now))

    def advanced(self, counter: Counter, now: float) -> None:
        by_time = self.every.seconds and now - self._last_line >= self.every.seconds
        by_items = self.every.items and counter.count - counter.logged >= self.every.items
        if not (by_time or by_items):
            return
        self._last_line = now
        counter.logged = counter.count
        self._line(counter.done() + _rate_eta(counter, now), event="progress",
                   **self._counter_fields(counter, now))

    def phase_ended(self, now: float, stopped: bool) -> None:
        counters = list(self.counters.values())
        done = ", ".join(c.done() + _rate_eta(c, now, with_eta=False) for c in counters)
        elapsed = now - self.phase_started
        ended = "stopped after" if stopped else "done in"
        self._line(f"{ended} {elapsed:.1f}s: {done}", event="end", stopped=stopped,
                   elapsed_s=round(elapsed, 3),
                   counts={c.what: c.count for c in counters},
                   totals={c.what: c.total for c in counters if c.total is not None})

    def waited(self, instance: str, seconds: float, reason: str, now: float) -> None:
        self.log.info("pair=%s phase=%s waiting for %s's rate limit (%.0fs)", self.pair or "-",
                      self.phase or "-", instance, seconds,
                      extra={"fields": self.fields(event="wait", instance=instance,
                                                   wait_s=round(seconds, 1), reason=reason)})


# --- on a terminal: a live display --------------------------------------------------------------

class _Display(RichProgress):
    """rich's progress table, and below it the rate-limit waits, counted down as it redraws."""

    def __init__(self, *columns: Any, waits: Callable[[], Text | None], **kwargs: Any):
        self._waits = waits  # first: rich renders once while it is built
        super().__init__(*columns, **kwargs)

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        waits = self._waits()
        if waits is not None:
            yield waits


class LiveProgress(Reporter):
    """A row per counter (phase, what, count or count/total, a bar, rate, ETA, elapsed) on
    stderr, redrawn in place while the run goes on, cleared when it ends."""

    def __init__(self, pair: str | None = None, console: Console | None = None,
                 clock: Callable[[], float] = time.monotonic, auto_refresh: bool = True):
        super().__init__(pair, clock)
        self.console = console or Console(stderr=True)
        self.auto_refresh = auto_refresh
        self._display: _Display | None = None
        self._tasks: dict[str, Any] = {}  # what -> rich task id, for the current phase
        self._waits: dict[str, float] = {}  # instance -> when its wait ends (clock)

    def _shown(self) -> _Display:
        if self._display is None:
            self._display = _Display(
                TextColumn("[bold cyan]{task.fields[phase]:<7}"),
                TextColumn("{task.description}"),
                TextColumn("[bold]{task.fields[counts]}", justify="right"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[eta]}"),
                TimeElapsedColumn(),
                console=self.console, transient=True, auto_refresh=self.auto_refresh,
                redirect_stdout=False, redirect_stderr=True, get_time=self.clock,
                waits=self._wait_line)
            self._display.start()
        return self._display

    def _columns(self, counter: Counter, now: float) -> dict[str, Any]:
        counts = (f"{counter.count:,}/{counter.total:,}" if counter.total is not None
                  else f"{counter.count:,}")
        rate, eta = counter.rate(now), counter.eta(now)
        return {"counts": counts, "rate": f"{rate:,.1f}/s" if rate else "",
                "eta": f"ETA {duration(eta)}" if eta is not None else ""}

    def _show(self, counter: Counter, now: float) -> None:
        display = self._shown()
        task = self._tasks.get(counter.what)
        if task is None:
            title = f"{self.pair} {self.phase}" if self.pair else self.phase
            task = self._tasks[counter.what] = display.add_task(
                counter.what, total=counter.total, phase=title, **self._columns(counter, now))
        display.update(task, completed=counter.count, total=counter.total,
                       **self._columns(counter, now))
        if not self.auto_refresh:
            display.refresh()

    def phase_began(self, counter: Counter, now: float) -> None:
        self._show(counter, now)

    def advanced(self, counter: Counter, now: float) -> None:
        self._show(counter, now)

    def phase_ended(self, now: float, stopped: bool) -> None:
        if self._display is None:
            return
        for what, task in self._tasks.items():  # a finished phase shows full bars, stopped
            counter = self.counters.get(what)
            if counter is not None:
                self._display.update(task, total=counter.total if counter.total is not None
                                     else counter.count, completed=counter.count)
            self._display.stop_task(task)
        self._tasks = {}

    def waited(self, instance: str, seconds: float, reason: str, now: float) -> None:
        self._waits[instance] = now + seconds
        self._shown()
        if not self.auto_refresh and self._display is not None:
            self._display.refresh()

    def _wait_line(self) -> Text | None:
        # called by rich's refresh thread, which holds rich's lock: taking ours here could
        # deadlock with a progress call holding ours and waiting for rich's; a copy is enough
        now, waits = self.clock(), sorted(self._waits.items())
        lines = [f"waiting for {instance}'s rate limit ({until - now:.0f}s)"
                 for instance, until in waits if until > now]
        return Text("\n".join(lines), style="yellow") if lines else None

    def finish(self, stopped: bool = False) -> None:
        with self._lock:
            super().finish(stopped)
            self._waits = {}
            if self._display is not None:
                self._display.stop()
                self._display = None


# --- building and ending ------------------------------------------------------------------------

def progress_printer(enabled: bool = True, *, pair: str | None = None,
                     every: Every | None = None) -> Reporter | None:
    """The progress hook for a command: a live display when stderr is a terminal (unless
    stderr carries JSON Lines), log lines otherwise; None when not ``enabled``."""
    if not enabled:
        return None
    if sys.stderr.isatty() and not json_logs():
        return LiveProgress(pair)
    return LogProgress(pair, every or Every())


def start_progress(progress: Progress | None, pair: str) -> None:
    """A run of ``pair`` begins (names the pair in what the hook shows)."""
    if isinstance(progress, Reporter):
        progress.start(pair)


def end_progress(progress: Progress | None, stopped: bool = False) -> None:
    """The run is over (``stopped``: by an error): close its last phase and clear the display,
    so what follows starts on a clean line."""
    if isinstance(progress, Reporter):
        progress.finish(stopped)


# --- logging ------------------------------------------------------------------------------------

class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a line is written: click's test
    runner swaps it, and the live display passes it through above itself."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def utc_stamp(created: float, ms: bool = False) -> str:
    when = datetime.fromtimestamp(created, timezone.utc)
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{when.microsecond // 1000:03d}Z" if ms else f"{text}Z"


class TextFormatter(logging.Formatter):
    """``2026-12-02T03:00:00Z dealsync.progress INFO pair=main phase=read ...``"""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{utc_stamp(record.created)} {record.name} {record.levelname} " \
               f"{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, and the line's structured fields
    (pair, phase, count, total, rate, ...) where it has them."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": utc_stamp(record.created, ms=True),
                               "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update({k: v for k, v in fields.items() if k not in doc})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


LOG_FORMATS = ("text", "json")
_state = {"format": "text"}


def setup_logging(level: int, fmt: str = "text") -> None:
    """Every log line on stderr through one handler, replacing the one a previous call
    installed. Progress lines show whatever ``level`` says about other logs."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    log.setLevel(logging.INFO)
    _state["format"] = fmt


def json_logs() -> bool:
    """Whether stderr carries JSON Lines (``--log-format json``): then every line of it must
    be a JSON object, errors included."""
    return _state["format"] == "json"
