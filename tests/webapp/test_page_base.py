"""A shared link finds its server at the first try (issue 20): opened at a page's URL
(``/explorer?...``), Streamlit's front end first looks for its server at that path and gets two
404s before it tries the parent; ``python serve.py`` serves the pages' HTML with the server's
base set (:func:`pages.ui.streamlit_runtime.serve_pages_at_their_base`). Checked over HTTP
and in Chromium, at the root and under a base URL path (``--server.baseUrlPath kb``, as a host
behind a proxy sets it), on real ``serve.py`` servers on 127.0.0.1 (no warm-up: not needed)."""

from __future__ import annotations

import http.client
import re
import sys
from pathlib import Path

import pytest
from streamlit import file_util

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from load_bench import Server, free_port  # noqa: E402

from pages.ui.navigation import PAGE_PATHS  # noqa: E402
from tests.webapp.chromium import CHROMIUM, launch  # noqa: E402

BASE_SCRIPT = re.compile(r"<script>window\.__streamlit = .*?BACKEND_BASE_URL.*?</script>\s*")
STREAMLIT_INDEX = Path(file_util.get_static_dir(), "index.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module", params=["", "kb"], ids=["root", "base-path"])
def server(request, tmp_path_factory):
    logs = tmp_path_factory.mktemp("page-base-logs")
    env = {"KRONOSCOPE_PREWARM": "0"}
    with Server(free_port(), logs, base_path=request.param, env=env) as srv:
        yield srv


def _get(server: Server, path: str, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        prefix = f"/{server.base_path}" if server.base_path else ""
        conn.request(method, prefix + path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", errors="replace")
    finally:
        conn.close()


def test_page_urls_carry_the_base_and_nothing_else_changes(server):
    for path in PAGE_PATHS:
        for query in ("", "?dataset=digits&layer=encoder.linear3"):
            status, html = _get(server, f"/{path}{query}")
            assert status == 200, (path, query, status)
            assert len(BASE_SCRIPT.findall(html)) == 1, f"/{path}{query} has no base script"
            # the script comes before the bundle, and is the only difference
            assert html.index("BACKEND_BASE_URL") < html.index('<script type="module"')
            assert BASE_SCRIPT.sub("", html) == STREAMLIT_INDEX
    for path in ("/", "/no-such-page", "/explorer/more"):  # Home, and Streamlit's fallbacks
        status, html = _get(server, path)
        assert (status, html) == (200, STREAMLIT_INDEX), path
    # Streamlit's own answers where the front end probes, and for other methods
    assert _get(server, "/explorer/_stcore/health")[0] == 404
    assert _get(server, "/_stcore/health") == (200, "ok")
    assert _get(server, "/explorer", method="HEAD")[0] == 200


def test_a_shared_link_connects_at_the_first_try(server):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium chromium-driver)")
    sync_api = pytest.importorskip("playwright.sync_api")
    asked: list[tuple[str, int]] = []
    sockets: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            page.on("response", lambda resp: asked.append((resp.url, resp.status)))
            page.on("websocket", lambda ws: sockets.append(ws.url))
            page.goto(f"{server.url}/explorer?tab=factors")
            page.get_by_text("Server time for this view").wait_for()
        finally:
            browser.close()
    failed = [(url, status) for url, status in asked if status >= 400]
    assert not failed, f"requests that failed: {failed}"
    probes = [url for url, _ in asked if "/explorer/_stcore/" in url]
    assert not probes, f"the front end probed the page's path: {probes}"
    assert sockets == [server.url.replace("http://", "ws://") + "/_stcore/stream"]
