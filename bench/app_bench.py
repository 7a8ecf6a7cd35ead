"""Benchmark of the Fisher explorer page; numbers go to bench/RESULTS-app.md.

Run: ``.venv/bin/python bench/app_bench.py`` (on a machine with more cores, pin it to two:
``taskset -c 0,1 .venv/bin/python bench/app_bench.py``). Two measurements:

1. **Browser** (needs Debian's Chromium and the playwright package): a ``python serve.py``
   server, started and waited for as a proxy or Docker would (its health check answers only
   after the warm-up). Its first visitor opens Home, then the explorer's default view (DIGITS
   preset, smallest layer, every default method, model at initialization); a second visitor
   (a new browser context) opens the default view and changes the method shown, the tab, m
   and the layer. "Ready" is the moment the app reports its script run finished
   (``data-test-script-state="notRunning"`` after a navigation; after a change, the server's
   ``script_finished`` message on the websocket, since a fragment's rerun may never show the
   "running" state) with a chart drawn (a plotly chart rendered or
   the block heatmaps' picture decoded; Home: its heading),
   measured from the navigation or from the click that commits the change. Each view's
   server-side time is read from the page's own "Server time for this view" caption. The
   whole sequence runs ``--rounds`` times (each on a fresh server); every row is printed with
   its median, fastest and slowest round and its issue-20 target: met (median ≤ target),
   missed within the noise (fastest ≤ target) or MISSED (``--check``: exit 1).
   ``--first-loads N``: only N new visitors' first loads of the explorer's shared link, one
   after the other on one server (ready time, time to the websocket's opening, and the front
   end's probes of ``/explorer/_stcore/``).
2. **Server only** (AppTest, no browser): the same views, timed around ``AppTest.run``; it
   includes AppTest's own overhead (about 1 s of component discovery on the first run of each
   AppTest, and tens of milliseconds per run).

Warm cases: change the method shown (cached results), change the set of methods (a removed
method re-added is cached; one never computed on this layer is computed), and change the layer
of the same model (first visit computes every method there; a revisit is cached).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.webapp.chromium import CHROMIUM, launch  # noqa: E402

LAYERS = [
    "encoder.linear1",
    "encoder.linear2",
    "decoder.linear1",
    "decoder.linear2",
    "decoder.linear3",
]
Row = tuple[str, float, float | None]  # label, wall seconds, server seconds


# -- browser -------------------------------------------------------------------------------


def count_finished_runs(page) -> list[int]:
    """A one-item list counting the script runs the server reports finished on ``page``'s
    websocket (``ForwardMsg.script_finished``, full runs and fragment reruns alike). The page's
    ``data-test-script-state`` is not enough to wait on: a fragment's rerun (the explorer's
    tabs, pages/explorer.py ``views``) can be over within one render, and the attribute then
    never shows "running"."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    finished = [0]

    def frame(payload: str | bytes) -> None:
        if isinstance(payload, bytes):
            msg = ForwardMsg()
            msg.ParseFromString(payload)
            finished[0] += msg.WhichOneof("type") == "script_finished"

    page.on("websocket", lambda ws: ws.on("framereceived", frame))
    return finished


def _server_seconds(page) -> float | None:
    text = page.get_by_text(re.compile("Server time for this view")).last.inner_text()
    match = re.search(r"([\d.]+) s", text)
    return float(match.group(1)) if match else None


def _choose(page, label: str, option: str):
    """Open the selectbox and filter its options; returns the click that commits the change
    (the clock starts there, not while the dropdown is being operated)."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    box.locator("input").click()
    page.keyboard.type(option)
    target = page.get_by_role("option").filter(has_text=option).first
    target.wait_for()
    return target.click


# A view is drawn when its chart is: a plotly chart rendered, or the block heatmaps' picture
# (a server-drawn PNG, the block tab's default) loaded and decoded.
DRAWN = """() => document.querySelector('.js-plotly-plot .main-svg') !== null || [...document
  .querySelectorAll('[data-testid="stImage"] img')].some(i => i.complete && i.naturalWidth > 0)"""


def _timed_change(page, finished: list[int], prepare) -> tuple[float, float | None]:
    """Seconds from the click that commits a change until the server has finished the run it
    started (``finished``: :func:`count_finished_runs`) and a chart is drawn."""
    commit = prepare()
    before = finished[0]
    start = time.perf_counter()
    commit()
    deadline = start + 300
    while finished[0] == before:
        if time.perf_counter() > deadline:
            raise TimeoutError("the change started no script run that finished in 300 s")
        page.wait_for_timeout(5)  # lets Playwright deliver the websocket's frames
    page.wait_for_function(DRAWN)
    return time.perf_counter() - start, _server_seconds(page)


BROWSER_TARGETS = {  # seconds in the browser (issue 20)
    "first visitor: home": 1.0,
    "first visitor: explorer default view": 2.0,
    "new visitor: explorer default view": 1.5,
    "change": 0.3,  # method shown, tab, m, layer already computed
    "new layer": 0.6,
}


def _open(page, url: str, *, chart: bool) -> tuple[float, float | None]:
    """Navigate and wait until the script run finished (and a chart is drawn when ``chart``)."""
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    if not chart:
        page.get_by_role("heading").first.wait_for()
        return time.perf_counter() - start, None
    page.wait_for_function(DRAWN)
    return time.perf_counter() - start, _server_seconds(page)


def _tab(page, label: str):
    return page.get_by_role("tab", name=label).click


@contextmanager
def _fresh_server_and_browser():
    """A fresh ``python serve.py`` (waited for through its health check, as a proxy or Docker
    would) and a headless Chromium, both stopped on exit: yields (server, browser)."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "bench"))
    from load_bench import Server, free_port

    log_dir = Path(tempfile.mkdtemp(prefix="kronoscope-app-bench-"))
    with Server(free_port(), log_dir, startup_timeout=180) as server, sync_playwright() as pw:
        browser = launch(pw)
        try:
            yield server, browser
        finally:
            browser.close()


def _visitor(browser):
    """A new visitor: a page in a browser context of its own (no shared cache or session)."""
    page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
    page.set_default_timeout(300_000)
    return page


def browser_round() -> list[Row]:
    """One round of the issue-20 browser targets on a fresh ``python serve.py`` server (health
    held until its warm-up finished, as a proxy or Docker would wait): its first visitor opens
    Home, then the explorer's default view; a second visitor (a new browser context: no shared
    cache or session) opens the default view and changes method, tab, m and layer."""
    rows: list[Row] = []
    with _fresh_server_and_browser() as (server, browser):
        first = _visitor(browser)
        rows.append(("first visitor: home", *_open(first, server.url + "/", chart=False)))
        view = _open(first, f"{server.url}/explorer", chart=True)
        rows.append(("first visitor: explorer default view", *view))
        baseline = _visitor(browser)  # side by side: the same view with the plotly heatmaps
        view = _open(baseline, f"{server.url}/explorer?heatmap=interactive", chart=True)
        rows.append(("new visitor: the same, heatmap=interactive (plotly)", *view))
        baseline.context.close()
        page = _visitor(browser)
        finished = count_finished_runs(page)
        view = _open(page, f"{server.url}/explorer", chart=True)
        rows.append(("new visitor: explorer default view", *view))
        changes = [(f"change: show {m}", lambda m=m: _choose(page, "Approximation shown", m))
                   for m in ("KFAC", "Deflation", "EKFAC")]  # fmt: skip
        changes += [(f"change: tab {t}", lambda t=t: _tab(page, t))
                    for t in ("Kronecker factors", "Spectra")]  # fmt: skip
        # the first plotly chart this visitor meets: plotly.js loads here (no target: the
        # rank curve is also computed on first opening)
        changes.append(("first plotly tab: Kronecker rank", lambda: _tab(page, "Kronecker rank")))
        changes.append(("change: tab Fisher block", lambda: _tab(page, "Fisher block")))
        changes += [
            ("change: m 128 (new m)", lambda: _choose(page, "Fisher minibatch m", "128")),
            ("change: m back to 256", lambda: _choose(page, "Fisher minibatch m", "256")),
        ]
        changes += [(f"new layer: {n}", lambda n=n: _choose(page, "Layer", n)) for n in LAYERS]
        back = "encoder.linear3"
        changes.append((f"change: back to {back}", lambda: _choose(page, "Layer", back)))
        for label, prepare in changes:
            rows.append((label, *_timed_change(page, finished, prepare)))
    return rows


Spread = tuple[str, float, float, float, float | None]  # label, median, min, max, server median


def browser_bench(rounds: int) -> list[Spread]:
    """``rounds`` rounds (each on its own fresh server, so each has a first visitor); per view
    the median, the fastest and the slowest round, and the median server time."""
    runs = [browser_round() for _ in range(rounds)]
    out: list[Spread] = []
    for i, (label, _wall, _server) in enumerate(runs[0]):
        walls = [run[i][1] for run in runs]
        servers = [run[i][2] for run in runs if run[i][2] is not None]
        server = statistics.median(servers) if servers else None
        out.append((label, statistics.median(walls), min(walls), max(walls), server))
    return out


def show_browser(rows: list[Spread], rounds: int) -> bool:
    """The table with each row's target: met (median ≤ target), missed within the noise (the
    fastest round ≤ target) or MISSED; True when nothing is MISSED."""
    print(f"\nBrowser (Chromium, python serve.py after its health check; {rounds} round(s))")
    print("| view | ready, median (s) | fastest–slowest (s) | server time (s) | target (s) | met |")
    print("|---|---:|---:|---:|---:|---|")
    ok = True
    for label, median, low, high, server in rows:
        goal = _target(label)
        if goal is None:
            verdict = ""
        elif median <= goal:
            verdict = "yes"
        elif low <= goal:
            verdict = "missed within the noise"
        else:
            verdict, ok = "MISSED", False
        print(
            f"| {label} | {median:.2f} | {low:.2f}–{high:.2f} | "
            f"{'' if server is None else f'{server:.2f}'} | {'' if goal is None else goal} | "
            f"{verdict} |"
        )
    return ok


def _target(label: str) -> float | None:
    if label.startswith("change: m 128") or "interactive" in label:  # not a target's case
        return None
    return BROWSER_TARGETS.get(label) or BROWSER_TARGETS.get(label.split(":")[0])


def first_loads(visitors: int) -> None:
    """``visitors`` new visitors, one after the other, each in a fresh browser context (no
    cache), open the explorer's shared link on one warm ``python serve.py``: the median,
    fastest and slowest time to the drawn view, the median time until the page's websocket
    opens (what the front end's search for its server delays), and how many requests went to
    the page path's ``/explorer/_stcore/…`` (that search's probe; 0 since serve.py serves the
    page with the server's base, pages/ui/streamlit_runtime.py)."""
    ready, opened, probes = [], [], 0
    with _fresh_server_and_browser() as (server, browser):
        for _ in range(visitors):
            page = _visitor(browser)
            asked: list[str] = []
            sockets: list[float] = []
            page.on("request", lambda req, asked=asked: asked.append(req.url))
            page.on("websocket", lambda _ws, sockets=sockets: sockets.append(time.perf_counter()))
            start = time.perf_counter()
            ready.append(_open(page, f"{server.url}/explorer", chart=True)[0])
            opened.append(sockets[0] - start)
            probes += sum("/explorer/_stcore/" in url for url in asked)
            page.context.close()
    print(f"\nFirst loads of /explorer by {visitors} new visitors, one after the other")
    print("| ready, median (s) | fastest–slowest (s) | websocket open, median (s) | probes |")
    print("|---:|---:|---:|---:|")
    print(
        f"| {statistics.median(ready):.2f} | {min(ready):.2f}–{max(ready):.2f} | "
        f"{statistics.median(opened):.3f} | {probes} |"
    )


# -- server only (AppTest) -------------------------------------------------------------------


def apptest_bench(repeat: int) -> list[Row]:
    from streamlit.testing.v1 import AppTest

    def run(at: AppTest) -> tuple[float, float | None]:
        start = time.perf_counter()
        at.run()
        wall = time.perf_counter() - start
        if at.exception:
            raise RuntimeError([e.value for e in at.exception])
        caption = [c.value for c in at.caption if "Server time" in c.value]
        match = re.search(r"([\d.]+) s", caption[-1]) if caption else None
        return wall, float(match.group(1)) if match else None

    rows: list[Row] = []
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.switch_page("pages/explorer.py")
    rows.append(("cold: default view, empty caches", *run(at)))
    methods = at.multiselect(key="explorer.methods")
    full = list(methods.value)
    walls, servers = [], []
    for _ in range(repeat):
        at.multiselect(key="explorer.methods").set_value([m for m in full if m != "lanczos"])
        wall, server = run(at)
        at.multiselect(key="explorer.methods").set_value(full)
        wall2, server2 = run(at)
        walls += [wall, wall2]
        servers += [server, server2]
    rows.append(("warm: remove / re-add a method, median", statistics.median(walls),
                 statistics.median(servers)))  # fmt: skip
    for layer in LAYERS:
        at.selectbox(key="explorer.layer").set_value(layer)
        rows.append((f"warm: layer {layer}, first visit", *run(at)))
    at.selectbox(key="explorer.layer").set_value("encoder.linear3")
    rows.append(("warm: back to the default layer (cached)", *run(at)))
    return rows


# -- payload over the websocket --------------------------------------------------------------

CLASSROOM = ("digits", "curves-small")  # the presets the home page calls classroom ones
TABS = ("block", "factors", "spectra", "rank")
PAYLOAD_TARGETS = {"default": 150_000, "any": 400_000}  # bytes (issue 20)
Payload = tuple[str, int, int, str]  # view, bytes of the run, largest chart's bytes, its title


async def _payload_of(port: int, query: str) -> tuple[int, int, str]:
    """Open the explorer at ``query`` as a fresh visitor (a new session) over Streamlit's
    websocket protocol and sum the bytes of the ForwardMsg frames of its one script run and of
    the pictures they refer to (fetched over HTTP, as a browser does); also the largest plotly
    chart frame or picture and its title."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    url = f"ws://127.0.0.1:{port}/_stcore/stream"
    total, largest, title = 0, 0, ""
    async with websockets.connect(
        url, subprotocols=["streamlit"], max_size=2**28, compression=None
    ) as ws:
        msg = BackMsg()
        msg.rerun_script.query_string, msg.rerun_script.page_name = query, "explorer"
        await ws.send(msg.SerializeToString())
        while True:
            frame = await ws.recv()
            total += len(frame)
            reply = ForwardMsg()
            reply.ParseFromString(frame)
            kind = reply.WhichOneof("type")
            if kind == "delta" and reply.delta.WhichOneof("type") == "new_element":
                element = reply.delta.new_element
                if element.WhichOneof("type") == "plotly_chart" and len(frame) > largest:
                    largest, title = len(frame), _figure_title(element.plotly_chart.spec)
                elif element.WhichOneof("type") == "imgs":  # fetched by the browser over HTTP
                    for image in element.imgs.imgs:
                        size = _media_bytes(port, image.url)
                        total += size
                        if size > largest:
                            largest, title = size, "a picture (PNG) drawn on the server"
                elif element.WhichOneof("type") == "exception":
                    raise RuntimeError(f"{query}: {element.exception.message}")
            early = ForwardMsg.ScriptFinishedStatus.FINISHED_EARLY_FOR_RERUN
            if kind == "script_finished" and reply.script_finished != early:
                return total, largest, title


def _media_bytes(port: int, url: str) -> int:
    """Bytes of a picture the page refers to (Streamlit's media endpoint), as the browser gets
    them; fetched while the session that made it is open."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{url}", timeout=30) as response:
        return len(response.read())


def _figure_title(spec: str) -> str:
    import json

    text = json.loads(spec).get("layout", {}).get("title", {}).get("text", "") or ""
    return text.split("<br>")[0]


def _layers(preset: str) -> list[str]:
    from core import PRESETS, build_model, describe_layers

    model = build_model(preset, input_dim=PRESETS[preset].widths[0], loss="bce")
    return [info.name for info in describe_layers(model)]


def payload_bench() -> list[Payload]:
    """Every explorer view of the classroom presets (each layer × each tab) and the default
    view, each opened by a new visitor of one ``python serve.py`` server."""
    import asyncio

    sys.path.insert(0, str(ROOT / "bench"))
    from load_bench import Server, free_port

    views = [("default view (no parameters)", "")]
    for preset in CLASSROOM:
        for layer in _layers(preset):
            for tab in TABS:
                query = f"dataset={preset}&preset={preset}&layer={layer}&tab={tab}"
                views.append((f"{preset} · {layer} · {tab}", query))
    rows: list[Payload] = []
    log_dir = Path(tempfile.mkdtemp(prefix="kronoscope-payload-"))
    with Server(free_port(), log_dir, startup_timeout=180) as server:
        for label, query in views:
            total, largest, title = asyncio.run(_payload_of(server.port, query))
            rows.append((label, total, largest, title))
            print(f"  {label}: {total:,} B", file=sys.stderr)
    return rows


def show_payload(rows: list[Payload]) -> bool:
    """Print the table; True when every target is met."""
    print(
        "\nPayload: bytes of the ForwardMsgs of one script run and of the pictures they refer to"
        " (new visitor, no compression)"
    )
    print("| view | total (kB) | largest figure (kB) | largest figure |")
    print("|---|---:|---:|---|")
    for label, total, largest, title in rows:
        print(f"| {label} | {total / 1000:.1f} | {largest / 1000:.1f} | {title} |")
    default = rows[0][1]
    worst = max(rows, key=lambda r: r[1])
    ok_default = default <= PAYLOAD_TARGETS["default"]
    ok_any = worst[1] <= PAYLOAD_TARGETS["any"]
    print(
        f"\nTargets: default view {default / 1000:.1f} kB ≤ 150 kB: "
        f"{'met' if ok_default else 'MISSED'}; largest view {worst[0]} {worst[1] / 1000:.1f} kB "
        f"≤ 400 kB: {'met' if ok_any else 'MISSED'}"
    )
    return ok_default and ok_any


def show(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print("| view | ready (s) | server time (s) |")
    print("|---|---:|---:|")
    for label, wall, server in rows:
        print(f"| {label} | {wall:.2f} | {'' if server is None else f'{server:.2f}'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="AppTest repetitions (warm)")
    parser.add_argument("--no-browser", action="store_true", help="skip the browser part")
    parser.add_argument(
        "--rounds", type=int, default=3, help="browser rounds, each on a fresh server"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="the browser targets only; exit 1 when one is missed beyond the noise of the rounds",
    )
    parser.add_argument(
        "--payload",
        action="store_true",
        help="measure only the bytes each explorer view sends (exit 1 when a target is missed)",
    )
    parser.add_argument(
        "--first-loads",
        type=int,
        metavar="N",
        help="only N new visitors' first loads of the explorer's link, one after the other",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be ≥ 1")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU cores visible: {os.cpu_count()}, load average (1 min) at start: {load:.2f}")
    if args.payload:
        sys.exit(0 if show_payload(payload_bench()) else 1)
    if args.first_loads:
        first_loads(args.first_loads)
        return
    if args.check or not args.no_browser:
        if not CHROMIUM.exists():
            print(f"\nBrowser part skipped: {CHROMIUM} is missing")
            sys.exit(1 if args.check else 0)
        met = show_browser(browser_bench(args.rounds), args.rounds)
        if args.check:
            sys.exit(0 if met else 1)
    show("Server only (AppTest)", apptest_bench(args.repeat))


if __name__ == "__main__":
    main()
