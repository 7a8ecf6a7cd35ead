"""Sticky sessions of deploy/'s nginx in front of several Kronoscope replicas.

Checks a running topology of deploy/compose.yaml as `.ci/replicas-smoke` brings it up; skipped
unless that script's variables are set: KRONOSCOPE_BASE_URL (the proxy),
KRONOSCOPE_PROXY_CONTAINER (the proxy's container: its access log, read with `docker logs`,
has one line per request naming the replica that served it and the route key) and
KRONOSCOPE_REPLICAS ("name=container=ip:port,..." for each replica).

What must hold (DOCKER.md, "Several replicas behind a proxy"): a browser's first response sets
the route cookie, and every later request of that browser, its websocket (/_stcore/stream)
included, reaches the replica that its first request reached; different browsers spread over
every replica; a browser whose replica stops is served by another one. The last test stops a
replica, so this module runs after any other test of the same topology.
"""

import hashlib
import http.client
import os
import re
import subprocess
import time
import uuid
from urllib.parse import urlsplit

import pytest

BASE_URL = os.environ.get("KRONOSCOPE_BASE_URL", "").rstrip("/")
PROXY = os.environ.get("KRONOSCOPE_PROXY_CONTAINER", "")
REPLICAS = os.environ.get("KRONOSCOPE_REPLICAS", "")

pytestmark = pytest.mark.skipif(
    not (BASE_URL and PROXY and REPLICAS),
    reason="checks replicas behind the proxy: `bash .ci/replicas-smoke` starts them and sets "
    "KRONOSCOPE_BASE_URL, KRONOSCOPE_PROXY_CONTAINER and KRONOSCOPE_REPLICAS",
)

COOKIE = "kronoscope_route"
SET_COOKIE = re.compile(rf"^{COOKIE}=([0-9a-f]{{32}}); Path=/; HttpOnly; SameSite=Lax$")
LOG_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) .*'
    r' upstream="(?P<upstream>[^"]*)" route=(?P<route>\S+)$'
)
# A browser's requests besides the page itself: settings, health, and the session's websocket.
PATHS = ["/", "/_stcore/host-config", "/_stcore/health"]
LOGGED = 3  # log lines per browse(): "/", host-config and the websocket (health is not logged)


def replicas() -> dict[str, tuple[str, str]]:
    """Replica name -> (container id, "ip:port" as nginx's $upstream_addr shows it)."""
    out = {}
    for item in REPLICAS.split(","):
        name, container, addr = item.split("=")
        out[name] = (container, addr)
    return out


def get(path: str, cookie: str | None = None) -> http.client.HTTPResponse:
    url = urlsplit(BASE_URL)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Cookie": f"{COOKIE}={cookie}"} if cookie else {})
        response = conn.getresponse()
        response.read()
        return response
    finally:
        conn.close()


def open_websocket(cookie: str) -> None:
    """Open the session websocket through the proxy as a browser with `cookie` does, then close."""
    from websockets.sync.client import connect

    url = BASE_URL.replace("http://", "ws://", 1) + "/_stcore/stream"
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    with connect(url, additional_headers=headers, subprotocols=["streamlit"], open_timeout=30):
        time.sleep(0.2)


def served(route: str, count: int, timeout_s: float = 15.0) -> list[tuple[str, str, str]]:
    """(path, status, upstream) of the proxy's log lines with this route key, once there are
    `count` of them (a websocket's line is written when it closes). The upstream is the replica
    that answered: the last of nginx's list when a request was retried on another one."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = subprocess.run(
            ["docker", "logs", PROXY], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        lines = [m for m in map(LOG_LINE.search, logs.splitlines()) if m and m["route"] == route]
        if len(lines) >= count or time.monotonic() > deadline:
            return [(m["path"], m["status"], m["upstream"].split(", ")[-1]) for m in lines]
        time.sleep(0.25)


def browse(cookie: str) -> None:
    """What a browser with a route cookie does: the page's requests and its websocket."""
    for path in PATHS:
        assert get(path, cookie).status == 200, path
    open_websocket(cookie)


def test_first_visit_gets_a_cookie_that_keeps_it_on_one_replica():
    first = get("/")
    assert first.status == 200
    cookies = first.headers.get_all("Set-Cookie") or []
    matches = [m for m in map(SET_COOKIE.match, cookies) if m]
    assert len(matches) == 1, f"no route cookie among {cookies}"
    route = matches[0][1]
    browse(route)
    lines = served(route, 1 + LOGGED)
    # /_stcore/health is not logged: the first page, "/" and host-config again, the websocket
    assert [(path, status) for path, status, _ in lines] == [
        ("/", "200"),
        ("/", "200"),
        ("/_stcore/host-config", "200"),
        ("/_stcore/stream", "101"),
    ]
    upstreams = {upstream for _, _, upstream in lines}
    assert len(upstreams) == 1, f"one browser's requests went to several replicas: {lines}"
    assert upstreams <= {addr for _, addr in replicas().values()}
    # with the cookie, no new one
    assert get("/", route).headers.get_all("Set-Cookie") is None


def test_an_invalid_cookie_is_replaced():
    response = get("/", "../../etc/passwd")
    cookies = response.headers.get_all("Set-Cookie") or []
    assert any(SET_COOKIE.match(c) for c in cookies), cookies


def test_the_proxy_compresses_the_apps_scripts():
    """deploy/nginx.conf gzips Streamlit's scripts (uncompressed from the app itself): the
    page's main script comes gzip-encoded, decodes to the replica's bytes, and is smaller."""
    import gzip

    page = urlsplit(BASE_URL)
    conn = http.client.HTTPConnection(page.hostname, page.port, timeout=30)
    try:
        conn.request("GET", "/")
        html = conn.getresponse().read().decode()
        script = re.search(r'src="\.?(/?static/js/[^"]+\.js)"', html)
        assert script, "no script in the page"
        path = "/" + script[1].lstrip("/")
        conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
        response = conn.getresponse()
        body = response.read()
        assert response.getheader("Content-Encoding") == "gzip", response.getheaders()
        conn.request("GET", path)
        plain = conn.getresponse().read()
    finally:
        conn.close()
    assert gzip.decompress(body) == plain
    assert len(body) < 0.5 * len(plain), (len(body), len(plain))


def test_different_browsers_spread_over_every_replica():
    # Fixed route keys (the hash depends only on them and the replicas' names in nginx.conf),
    # so this spread is the same on every run; a random one misses a replica with 2**-11.
    routes = [hashlib.md5(f"browser-{i}".encode()).hexdigest() for i in range(12)]
    where = {}
    for route in routes:
        browse(route)
    for route in routes:
        lines = served(route, LOGGED)
        upstreams = {upstream for _, _, upstream in lines}
        assert len(upstreams) == 1, f"browser {route} went to several replicas: {lines}"
        where[route] = upstreams.pop()
    counts = {name: list(where.values()).count(addr) for name, (_, addr) in replicas().items()}
    assert all(counts.values()), f"a replica got no browser: {counts}"


def test_a_stopped_replicas_browsers_move_to_another():
    by_addr = {addr: (name, container) for name, (container, addr) in replicas().items()}
    route = uuid.uuid4().hex
    browse(route)
    (upstream,) = {upstream for _, _, upstream in served(route, LOGGED)}
    name, container = by_addr[upstream]
    subprocess.run(["docker", "stop", "--time", "5", container], check=True, timeout=60)
    assert get("/_stcore/health").status == 200, "health through the proxy with one replica down"
    browse(route)
    moved = [line for line in served(route, 2 * LOGGED) if line[2] != upstream]
    assert moved, f"no request of this browser reached another replica after {name} stopped"
    assert all(status in {"200", "101"} for _, status, _ in moved), moved
