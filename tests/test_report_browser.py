"""The HTML report in a real headless Chromium (Debian's ``chromium`` package).

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in NUL on file descriptors 3 and 4), which needs neither a websocket library nor
a port. The page is written by ``dealsync report --format html --out`` after a real sync of
memory connectors, opened from its file with the network closed to it by its own policy, and
checked for console errors, the chart's bars, a header click that sorts, and a screenshot.

Skips, saying why, only where Chromium is not installed or does not start; ``.ci/run``
installs it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from plugins.memory import World
from sync.cli import cli
from conftest import MEMORY_CONFIG

DATA = Path(__file__).parent / "data"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe"]
TIMEOUT = 20.0

CONFIG = MEMORY_CONFIG

# (deal id, name, company, amount, stage, close date, request): five requirements, Chinese
# text, a hostile name, and a won deal waiting for its requirement
DEALS = [
    ("d1", "Acme rollout", "Acme", "180000", "proposal", "2025-09-10", "SSO with Okta"),
    ("d2", "华为云 渠道合作", "华为云合作伙伴", "260000", "proposal", "2025-08-02", "SSO with Okta"),
    ("d3", "明远科技 全员部署", "上海明远科技", "73000", "qualified", "2025-05-01", "移动端离线模式"),
    ("d4", "Hooli <b>ads</b>", "<img src=x onerror=alert(2)>", "45000", "qualified",
     "2025-06-01", "<script>alert(1)</script> dark mode"),
    ("d5", "Globex portal", "Globex", "30000", "closedwon", "2025-01-15", "导出 Excel 报表"),
    ("d6", "Initech audit", "Initech", "38000", "qualified", "2025-07-20", "Audit log export"),
]


class Chromium:
    """One headless Chromium and one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, executable: str, profile: Path):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def wire() -> None:
            """In the child: the pipe ends become the protocol's descriptors 3 and 4 (copied
            high first, so that neither end is overwritten by the other)."""
            high_in = fcntl.fcntl(to_browser, fcntl.F_DUPFD_CLOEXEC, 10)
            high_out = fcntl.fcntl(from_browser, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        # close_fds=False: pass_fds would touch 3 and 4 before they exist; every other
        # descriptor Python opens is close-on-exec already
        try:
            self.proc = subprocess.Popen(
                [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                preexec_fn=wire, close_fds=False)
        except OSError:
            os.close(self._write)
            os.close(self._read)
            raise
        finally:  # the child holds its own copies
            os.close(to_browser)
            os.close(from_browser)
        self._buffer, self._next_id, self.events = b"", 0, []
        self.session: str | None = None

    def open_page(self) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)
        attached = self.call("Target.attachToTarget",
                             {"targetId": target["targetId"], "flatten": True}, browser=True)
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, params: dict | None = None, browser: bool = False) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not browser:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        reply = self._until(lambda m: m.get("id") == message["id"], method)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str) -> dict:
        seen = next((e for e in self.events if e["method"] == method), None)
        return seen or self._until(lambda m: m.get("method") == method, method)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A real mouse click, as a person's: pressed and released at one point."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1})

    def _until(self, wanted, what: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer {what} within {TIMEOUT:.0f}s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()}) during {what}")
            self._buffer += chunk

    def close(self) -> None:
        try:
            self.call("Browser.close", browser=True)
            self.proc.wait(5)
        except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self._read)
        os.close(self._write)


def chromium_executable() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run "
                    "installs it)")
    return found


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Chromium:
    executable = chromium_executable()
    chrome = None
    try:
        chrome = Chromium(executable, tmp_path_factory.mktemp("chromium-profile"))
        chrome.open_page()
    except (OSError, RuntimeError, TimeoutError) as exc:
        if chrome is not None:
            chrome.close()
        pytest.skip(f"Chromium at {executable} did not start: {exc}")
    chrome.call("Emulation.setDeviceMetricsOverride",
                {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    """The page ``dealsync report --format html --out`` writes after a real sync."""
    work = tmp_path_factory.mktemp("report")
    shutil.copy(DATA / "memory-mapping.toml", work)
    (work / "dealsync.toml").write_text(CONFIG + f'\n[state]\npath = "{work / "state.db"}"\n')
    world = World()
    for deal_id, name, company, amount, stage, close, request in DEALS:
        world.add_deal(deal_id, name=name, company=company, amount=amount, stage=stage,
                       close_date=close, request=request, pipeline="sales")
    (work / "crm.json").write_text(json.dumps(world.to_json()))
    run = CliRunner()
    config = ["-c", str(work / "dealsync.toml")]
    assert run.invoke(cli, [*config, "sync"], catch_exceptions=False).exit_code == 0
    out = work / "report.html"
    result = run.invoke(cli, [*config, "report", "--format", "html", "--out", str(out)],
                        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def page(browser: Chromium, report_file: Path) -> Chromium:
    """The report freshly loaded; ``browser.events`` holds only what this load produced."""
    browser.events.clear()
    browser.call("Page.navigate", {"url": report_file.as_uri()})
    browser.wait_event("Page.loadEventFired")
    return browser


def problems(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions, blocked loads (CSP) and dialogs (an alert)."""
    found = []
    for event in events:
        method, params = event["method"], event["params"]
        if method == "Runtime.exceptionThrown":
            found.append(f"exception: {params['exceptionDetails']}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            found.append(f"console.{params['type']}: {params['args']}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"log: {params['entry']['text']}")
        elif method == "Page.javascriptDialogOpening":
            found.append(f"dialog: {params['message']}")
    return found


def row_keys(page: Chromium) -> list[str]:
    return page.evaluate("Array.from(document.querySelectorAll('#requirements tbody tr'))"
                         ".map(r => r.dataset.key)")


def click_header(page: Chromium, title: str) -> None:
    box = page.evaluate(f"""(() => {{
        const th = Array.from(document.querySelectorAll('#requirements th'))
            .find(h => h.textContent === {json.dumps(title)});
        th.scrollIntoView({{block: 'center'}});
        const r = th.getBoundingClientRect();
        return {{x: r.x + r.width / 2, y: r.y + r.height / 2}};
    }})()""")
    page.click(box["x"], box["y"])


def test_the_page_loads_offline_with_no_console_errors(page):
    time.sleep(0.2)  # late console messages, if any, arrive with the next read
    page.evaluate("1")
    assert problems(page.events) == []
    # nothing was fetched: every byte of the page came with its file
    assert page.evaluate("performance.getEntriesByType('resource').length") == 0
    # hostile names arrived as text, not as markup
    assert page.evaluate("document.querySelectorAll('img, b > script, td script').length") == 0
    assert "<script>alert(1)</script>" in page.evaluate("document.body.innerText")
    assert "<img src=x onerror=alert(2)>" in page.evaluate("document.body.innerText")


def test_the_chart_shows_one_bar_per_requirement(page):
    bars = page.evaluate("""Array.from(document.querySelectorAll('svg.chart rect.bar'))
        .map(b => ({key: b.dataset.key, width: b.getBoundingClientRect().width}))""")
    assert [bar["key"] for bar in bars] == row_keys(page)
    assert len(bars) == 5  # five requirements asked for across the six deals
    widths = [bar["width"] for bar in bars]
    assert widths == sorted(widths, reverse=True) and widths[0] > 100  # ranked, drawn


def test_a_click_on_a_column_header_sorts_the_table(page):
    ranked = row_keys(page)
    dates = "Array.from(document.querySelectorAll('#requirements tbody tr td:last-child'))" \
            ".map(c => c.dataset.value)"
    click_header(page, "Earliest close")
    closes = page.evaluate(dates)
    known = sorted(c for c in closes if c)  # a requirement with no open deal has no date
    assert closes == [*known, ""] and row_keys(page) != ranked
    click_header(page, "Earliest close")  # again: the other way round, unknown still last
    assert page.evaluate(dates) == [*reversed(known), ""]
    click_header(page, "Open pipeline")
    assert row_keys(page) == ranked
    assert page.evaluate("document.querySelector('th[aria-sort]').textContent") == "Open pipeline"


def test_chinese_text_is_drawn_with_a_font_that_has_it(page):
    """Not as empty boxes: Chromium names the fonts it used for the cell's text."""
    fc_list = shutil.which("fc-list")
    if fc_list and not subprocess.run([fc_list, ":lang=zh"], capture_output=True,
                                      text=True).stdout.strip():
        pytest.skip("no font with Chinese glyphs is installed (Debian: fonts-wqy-microhei or "
                    "fonts-noto-cjk; .ci/run installs the first)")
    page.call("DOM.enable")
    page.call("CSS.enable")
    root = page.call("DOM.getDocument")["root"]["nodeId"]
    node = page.call("DOM.querySelector", {"nodeId": root,
                                           "selector": "#requirements td.companies"})
    cell = page.evaluate("document.querySelector('#requirements td.companies').textContent")
    assert "华为云合作伙伴" in cell
    fonts = page.call("CSS.getPlatformFontsForNode", {"nodeId": node["nodeId"]})["fonts"]
    names = " ".join(f["familyName"] for f in fonts)
    assert any(word in names for word in ("CJK", "WenQuanYi", "Han", "Hei")), fonts


def test_screenshot(page, tmp_path):
    shot = page.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path = tmp_path / "report.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    print(f"screenshot: {path}")
