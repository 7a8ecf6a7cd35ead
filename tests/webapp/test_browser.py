"""End-to-end test in a real browser: the Streamlit server, Debian's Chromium, Playwright.

Opens every page, picks a layer and a method in the Fisher explorer, starts a short optimizer
race and sees its loss curve grow, then stops it; screenshots go to
``$KRONOSCOPE_SCREENSHOT_DIR`` (default ``artifacts/screenshots``; the README's images are made
with ``KRONOSCOPE_SCREENSHOT_DIR=docs/screenshots``).

Chromium is Debian's (``apt-get install chromium``), never Playwright's download. Without it
the test is skipped, unless ``KRONOSCOPE_REQUIRE_BROWSER=1`` (set by ``.ci/run``), in which case
it fails.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.webapp.chromium import CHROMIUM, launch

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = os.environ.get("KRONOSCOPE_REQUIRE_BROWSER") == "1"
SHOTS = Path(os.environ.get("KRONOSCOPE_SCREENSHOT_DIR", ROOT / "artifacts" / "screenshots"))
LOG = ROOT / "artifacts" / "streamlit-browser-test.log"  # the server's output, for failures
TIMEOUT_MS = 90_000


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"KRONOSCOPE_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    # a teacher's setting: a visitor may run a four-way race side by side
    env = {**os.environ, "KRONOSCOPE_MAX_CONCURRENT_RUNS": "4", "KRONOSCOPE_RUNS_PER_SESSION": "4"}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--server.port",
        str(port),
    ]
    SHOTS.mkdir(parents=True, exist_ok=True)
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield _wait_healthy(proc, f"http://127.0.0.1:{port}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the Streamlit server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return url
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the Streamlit server did not answer /_stcore/health within {timeout} s")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as pw:
        chromium = launch(pw)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _wait_text(page, text, name: str) -> None:
    """Wait for ``text`` (str or regex); on a timeout, keep a screenshot of the page."""
    try:
        page.get_by_text(text).first.wait_for()
    except Exception:
        page.screenshot(path=str(LOG.parent / f"failure-{name}.png"))
        raise


def _no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, "a page shows an exception"


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the Streamlit selectbox labelled ``label``."""
    for attempt in range(3):  # a rerun still drawing may replace the select under the cursor
        box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
        box.locator("input").click()
        page.keyboard.type(option)
        try:
            page.get_by_role("option").filter(has_text=option).first.click(timeout=20_000)
            return
        except Exception:
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
            time.sleep(1.0)


def _button(page, name: str):
    """An app button (not Streamlit's own "Stop" in the header)."""
    return page.locator('[data-testid="stButton"]').get_by_role("button", name=name, exact=True)


def _plot_points(page, index: int) -> int:
    """Points in the first trace of the ``index``-th plotly chart on the page."""
    return page.evaluate(
        """(i) => {
            const plots = document.querySelectorAll('.js-plotly-plot');
            const traces = plots.length > i ? plots[i]._fullData : null;  // decoded data
            if (!traces || !traces.length) return 0;
            return Math.max(...traces.map(t => (t.x ? t.x.length : 0)));
        }""",
        index,
    )


def _block_picture(page, timeout: float = TIMEOUT_MS) -> int:
    """Wait until the explorer's block heatmaps (a server-drawn PNG, issue 20) are loaded and
    decoded; returns the picture's width in pixels."""
    page.wait_for_function(
        """() => { const img = document.querySelector('[data-testid="stImage"] img');
                   return img && img.complete && img.naturalWidth > 0; }""",
        timeout=timeout,
    )
    return page.evaluate(
        """() => document.querySelector('[data-testid="stImage"] img').naturalWidth"""
    )


def test_every_page_renders(server, page):
    # First request of a fresh server is a deep link (see pages/ui/navigation.py).
    checks = {
        "learn": ("learn", "Why inverting a sum of Kronecker products needs care"),
        "home": ("", "A short guided tour"),
        "training": ("training", "Layer tracked"),
        "race": ("race", "Hyper-parameters"),
    }
    for name, (path, text) in checks.items():
        page.goto(f"{server}/{path}")
        page.get_by_text(text).first.wait_for()
        page.get_by_text("Compute device").first.wait_for()
        _no_exception(page)
        # the app's own navigation (titles), never the legacy pages/ list (file names)
        nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
        assert "Fisher explorer" in nav and "Paper reproductions" in nav, nav
        assert not re.search(r"^(app|explorer|reports)$", nav, re.M), nav
        _shot(page, name)


def test_explorer_pick_layer_and_method(server, page):
    started = time.monotonic()
    page.goto(f"{server}/explorer")
    page.get_by_text("Server time for this view").wait_for()
    assert _block_picture(page) > 1000  # three panels of ≥ 360 px and a colour bar
    cold = time.monotonic() - started
    _no_exception(page)
    _shot(page, "explorer")

    _choose(page, "Layer", "encoder.linear2")
    # the page's caption (not the select's own label), then the URL, which the page updates
    # after every method's result: the rerun for the new layer has drawn the selects below
    page.get_by_text(re.compile(r"encoder\.linear2: 32→16.* · m = 256")).first.wait_for()
    page.wait_for_url(re.compile(r"layer=encoder\.linear2"))
    _choose(page, "Approximation shown", "KFAC-corrected")
    page.wait_for_url(re.compile(r"layer=encoder\.linear2.*show=kfac_corrected"))
    # the interactive chart on request: plotly.js loads, hover labels come with it
    page.get_by_text("interactive (hover values)").click()
    page.get_by_text("KFAC-corrected − F").first.wait_for()
    page.wait_for_selector(".js-plotly-plot")
    page.wait_for_url(re.compile(r"heatmap=interactive"))
    # a widget bound to the URL by Streamlit (m) next to the hand-made ones: both in the URL
    _choose(page, "Fisher minibatch m", "64")
    page.get_by_text(re.compile(r"encoder\.linear2: 32→16.* · m = 64 ")).first.wait_for()
    page.wait_for_url(re.compile(r"(?=.*[?&]m=64(&|$))(?=.*layer=encoder\.linear2)"))
    _no_exception(page)
    for tab in ("Kronecker factors", "Spectra", "Kronecker rank"):
        page.get_by_role("tab", name=tab).click()
    page.get_by_text("Error of the best sum of r Kronecker products").first.wait_for()
    _shot(page, "explorer-rank")
    print(f"explorer default view in the browser: {cold:.1f} s (cold server)")


def test_changing_what_the_tabs_show_reruns_the_tabs_alone(server, page):
    """The pictures and their tabs are a fragment (pages/explorer.py, ``views``): changing the
    approximation shown reruns them alone, so the metrics table and the sidebar are not sent
    again — their text is in the first view's websocket messages and not in the change's —
    and the URL gains the new value and keeps the others."""
    received: list[bytes] = []

    def record(payload: str | bytes) -> None:
        received.append(payload if isinstance(payload, bytes) else payload.encode())

    page.on("websocket", lambda ws: ws.on("framereceived", record))
    page.goto(f"{server}/explorer")
    page.get_by_text("Server time for this view").wait_for()
    _block_picture(page)
    page.wait_for_url(re.compile(r"dataset=digits"))
    first = b"".join(received)
    for text in (b"How close is each approximation", b"Fisher minibatch m"):
        assert text in first, text
    received.clear()
    _choose(page, "Approximation shown", "EKFAC")
    page.wait_for_url(re.compile(r"(?=.*show=ekfac)(?=.*dataset=digits)(?=.*methods=)"))
    page.wait_for_selector('[data-test-script-state="notRunning"]')
    change = b"".join(received)
    assert b"Server time for this view" in change  # the fragment's rerun, drawn and sent
    for text in (b"How close is each approximation", b"Fisher minibatch m"):
        assert text not in change, text
    assert len(change) < len(first) / 2, (len(change), len(first))
    _no_exception(page)


def _local(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname in ("127.0.0.1", "localhost")


def test_pages_request_nothing_from_other_hosts(server, browser):
    """A classroom network may be offline: every request goes to this server (issue 8)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    outside: list[str] = []
    page.on("request", lambda req: None if _local(req.url) else outside.append(req.url))
    try:
        page.goto(f"{server}/")
        page.get_by_text("A short guided tour").first.wait_for()
        page.goto(f"{server}/explorer?tab=spectra&heatmap=interactive")
        page.get_by_text("Server time for this view").wait_for()
        page.wait_for_selector(".js-plotly-plot")
        icon = page.evaluate("() => document.querySelector('link[rel*=icon]')?.href || ''")
        assert icon and _local(icon), icon
    finally:
        context.close()
    assert not outside, f"requests to other hosts: {outside}"


def test_ten_students_at_once_each_see_a_complete_explorer(server, browser):
    """Ten browser contexts open the explorer together (a class arriving); each gets the
    whole view: metrics, heatmaps, no error, no exception (issue 8)."""
    contexts = [browser.new_context(viewport={"width": 1200, "height": 1400}) for _ in range(10)]
    crashed: list[int] = []
    try:
        pages = [c.new_page() for c in contexts]
        for i, p in enumerate(pages):  # two thirds on the teacher's link, the rest their own
            p.on("crash", lambda _p, i=i: crashed.append(i))
            query = "dataset=digits&seed=0" if i % 3 else f"dataset=digits&seed={100 + i}"
            p.goto(f"{server}/explorer?{query}", wait_until="commit")
        deadline = time.monotonic() + 240
        ready = [False] * len(pages)
        while not all(ready) and time.monotonic() < deadline and not crashed:
            time.sleep(1.0)  # poll every page: all of them load at once
            ready = [p.get_by_text("Server time for this view").count() > 0 for p in pages]
        for i, p in enumerate(pages):
            if not ready[i]:
                p.screenshot(path=str(LOG.parent / f"failure-student-{i}.png"))
        assert not crashed, f"browser pages crashed: {crashed}"
        assert all(ready), f"views not complete after 240 s: {ready}"
        for p in pages:
            _block_picture(p, timeout=60_000)  # loaded after the script ends
            _no_exception(p)
            assert p.get_by_text("How close is each approximation?").count() == 1
            errors = p.locator('[data-testid="stAlertContentError"]')
            assert errors.count() == 0, errors.all_inner_texts()
    finally:
        for c in contexts:
            c.close()


def test_race_curve_grows_and_stops(server, page):
    page.goto(f"{server}/race?opts=sgd,adam,kfac,kfac_corrected&steps=20000&eval=50")
    _button(page, "Start").click()
    page.get_by_text("Loss against step").first.wait_for()
    deadline = time.monotonic() + 60
    while (first := _plot_points(page, 0)) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert first >= 2, "no loss curve appeared"
    deadline = time.monotonic() + 30
    while _plot_points(page, 0) <= first and time.monotonic() < deadline:
        time.sleep(0.5)
    grown = _plot_points(page, 0)
    assert grown > first, f"the loss curve did not grow ({first} → {grown} points)"
    time.sleep(3)  # a few more seconds of race for the screenshot
    _shot(page, "race")
    _button(page, "Stop").click()
    for name in ("SGD", "Adam", "KFAC", "KFAC-corrected"):
        _wait_text(page, re.compile(rf"{name}: stopped"), "race")
    _no_exception(page)


def test_training_page_grows_error_curves(server, page):
    page.goto(f"{server}/training?steps=20000&every=5&m=64&opt=kfac&methods=kfac,kpsvd,deflation")
    _button(page, "Start").click()
    try:
        page.get_by_text("relative Frobenius error over training").first.wait_for()
        deadline = time.monotonic() + 120  # generous: CI's 2 cores may be busy
        while _plot_points(page, 0) < 4 and time.monotonic() < deadline:
            time.sleep(0.5)
        shown = page.inner_text("body")[-1500:]  # what the student saw, for the report
        assert _plot_points(page, 0) >= 4, f"the error curves did not grow; the page: {shown}"
        _shot(page, "training")
    finally:  # never leave the run going: the next test counts the server's runs
        _button(page, "Stop").click()
    _wait_text(page, re.compile(r"KFAC: stopped"), "training")
    _no_exception(page)


def test_runs_stop_when_their_session_ends(server, browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server}/race?opts=sgd&steps=20000&eval=1000")
    _button(page, "Start").click()
    page.get_by_text(re.compile(r"SGD: running")).first.wait_for()
    other = browser.new_page()
    other.set_default_timeout(TIMEOUT_MS)
    other.goto(f"{server}/learn")
    assert "1 of" in other.get_by_text(re.compile("Training runs on this server")).inner_text()
    context.close()  # the tab goes away: its session ends
    deadline = time.monotonic() + 60  # the registry's grace period is 15 s
    while True:
        other.goto(f"{server}/learn")
        caption = other.get_by_text(re.compile("Training runs on this server")).first
        caption.wait_for()
        if re.search(r": 0 of", caption.inner_text()):
            break
        assert time.monotonic() < deadline, f"the run outlived its session: {caption.inner_text()}"
        time.sleep(3)
    other.close()
