"""Browser smoke test of a running Kronoscope server, e.g. the Docker image of .ci/docker-smoke.

Skipped unless KRONOSCOPE_BASE_URL names the server (e.g. http://127.0.0.1:8501). Drives Debian's
Chromium (/usr/bin/chromium) through Playwright; `playwright install` is never needed. Screenshots
go to artifacts/.
"""

import os
import re
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import pytest

from tests.webapp.chromium import CHROMIUM, launch

BASE_URL = os.environ.get("KRONOSCOPE_BASE_URL", "").rstrip("/")

pytestmark = pytest.mark.skipif(
    not BASE_URL,
    reason="KRONOSCOPE_BASE_URL is not set: this test checks a running server "
    "(`bash .ci/docker-smoke` builds the Docker image, starts it and sets it)",
)

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
APP = '[data-testid="stApp"]'
EXCEPTION = '[data-testid="stException"]'
RENDER_TIMEOUT_MS = 60_000
MAX_PAGES = 20


def test_health_endpoint():
    with urllib.request.urlopen(f"{BASE_URL}/_stcore/health", timeout=10) as response:
        assert response.status == 200
        assert response.read().strip() == b"ok"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver")
    with sync_playwright() as pw:
        browser = launch(pw)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(RENDER_TIMEOUT_MS)
    yield page
    context.close()


def wait_until_idle(page, timeout_ms: int = RENDER_TIMEOUT_MS) -> bool:
    """Wait until the app is connected and its script run has finished; False on time-out."""
    page.wait_for_selector(f'{APP}[data-test-connection-state="CONNECTED"]', timeout=timeout_ms)
    try:
        page.wait_for_selector(f'{APP}[data-test-script-state="notRunning"]', timeout=timeout_ms)
    except Exception:  # Playwright's TimeoutError: a page still computing is judged below
        return False
    return True


def exception_texts(page) -> list[str]:
    return [text.strip()[:2000] for text in page.locator(EXCEPTION).all_inner_texts()]


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_main_page_renders_without_exception(page):
    page.goto(BASE_URL + "/", wait_until="domcontentloaded")
    idle = wait_until_idle(page)
    page.wait_for_function(
        "() => document.title.includes('Kronoscope')"
        " || document.body.innerText.includes('Kronoscope')"
    )
    screenshot(page, "docker-smoke")
    assert idle, "the main page's script run did not finish in time"
    assert exception_texts(page) == [], "the main page shows a Streamlit exception"


def test_visitor_sees_no_developer_tools(page):
    """A hosted instance shows the viewer's toolbar (client.toolbarMode = "viewer" in the image):
    no Deploy button, and the main menu lacks the developer entries. The browser opens the
    server on 127.0.0.1, where Streamlit's default ("auto") would show both."""
    page.goto(BASE_URL + "/", wait_until="domcontentloaded")
    wait_until_idle(page)
    assert page.locator('[data-testid="stAppDeployButton"]').count() == 0, "a Deploy button"
    page.locator('[data-testid="stMainMenu"] button').first.click()
    menu = page.locator('[data-testid="stMainMenuPopover"]')
    menu.wait_for()
    entries = menu.inner_text()
    assert "Print" in entries, f"the main menu did not open as expected: {entries!r}"
    developer = [entry for entry in ("Rerun", "Clear cache", "Deploy") if entry in entries]
    assert developer == [], f"developer entries in the visitor's menu: {developer}"


def test_every_page_renders_without_exception(page):
    """Visit each page of the app's navigation (if it has several) and look for exceptions."""
    page.goto(BASE_URL + "/", wait_until="domcontentloaded")
    wait_until_idle(page)
    links = page.locator('[data-testid="stSidebarNavLink"]')
    hrefs = list(dict.fromkeys(h for h in (a.get_attribute("href") for a in links.all()) if h))
    failures = {}
    for href in hrefs[:MAX_PAGES]:
        url = urljoin(BASE_URL + "/", href)
        page.goto(url, wait_until="domcontentloaded")
        # A page that computes for longer than the time-out is not failed here: only exceptions.
        wait_until_idle(page)
        name = re.sub(r"[^A-Za-z0-9]+", "-", url[len(BASE_URL) :]).strip("-") or "main"
        screenshot(page, f"docker-smoke-page-{name}")
        if texts := exception_texts(page):
            failures[url] = texts
    assert failures == {}, f"pages that show a Streamlit exception: {failures}"
