"""Benchmark of the Fisher explorer page; numbers go to bench/RESULTS-app.md.

Run: ``.venv/bin/python bench/app_bench.py`` (on a machine with more cores, pin it to two:
``taskset -c 0,1 .venv/bin/python bench/app_bench.py``). Two measurements:

1. **Browser** (needs Debian's Chromium and the playwright package): a fresh
   ``streamlit run app.py`` server; Chromium opens the explorer's default view (DIGITS preset,
   smallest layer, all seven methods, model at initialization). "Ready" is the moment the app
   reports its script run finished (``data-test-script-state="notRunning"``) with the charts
   on the page, measured from the navigation (cold) or from the widget change (warm). Each
   view's server-side time is read from the page's own "Server time for this view" caption.
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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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

WATCH = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  window.__ready = new Promise(resolve => {
    let seen = false;
    const observer = new MutationObserver(() => {
      const state = app.getAttribute('data-test-script-state');
      if (state === 'running') seen = true;
      if (seen && state === 'notRunning') { observer.disconnect(); resolve(true); }
    });
    observer.observe(app, {attributes: true});
  });
}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def _timed_change(page, prepare) -> tuple[float, float | None]:
    commit = prepare()
    page.evaluate(WATCH)
    start = time.perf_counter()
    commit()
    page.evaluate("window.__ready")
    page.wait_for_selector(".js-plotly-plot")
    return time.perf_counter() - start, _server_seconds(page)


def browser_bench() -> list[Row]:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--server.port", str(port),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    rows: list[Row] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.2)
        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(300_000)
            start = time.perf_counter()
            page.goto(f"{url}/explorer")
            page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
            page.wait_for_selector(".js-plotly-plot")
            rows.append(
                ("cold: default view, fresh server", time.perf_counter() - start,
                 _server_seconds(page))
            )  # fmt: skip
            for method in ("KFAC", "Deflation", "EKFAC"):
                wall, server = _timed_change(
                    page, lambda m=method: _choose(page, "Approximation shown", m)
                )
                rows.append((f"warm: show {method}", wall, server))
            for layer in LAYERS:
                wall, server = _timed_change(page, lambda n=layer: _choose(page, "Layer", n))
                rows.append((f"warm: layer {layer}, first visit", wall, server))
            wall, server = _timed_change(page, lambda: _choose(page, "Layer", "encoder.linear3"))
            rows.append(("warm: back to the default layer (cached)", wall, server))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return rows


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
    websocket protocol and sum the bytes of the ForwardMsg frames of its one script run;
    also the largest plotly chart frame and its figure's title."""
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
                elif element.WhichOneof("type") == "exception":
                    raise RuntimeError(f"{query}: {element.exception.message}")
            early = ForwardMsg.ScriptFinishedStatus.FINISHED_EARLY_FOR_RERUN
            if kind == "script_finished" and reply.script_finished != early:
                return total, largest, title


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
    print("\nPayload: bytes of the ForwardMsgs of one script run (new visitor, no compression)")
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
        "--payload",
        action="store_true",
        help="measure only the bytes each explorer view sends (exit 1 when a target is missed)",
    )
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU cores visible: {os.cpu_count()}, load average (1 min) at start: {load:.2f}")
    if args.payload:
        sys.exit(0 if show_payload(payload_bench()) else 1)
    if not args.no_browser:
        if CHROMIUM.exists():
            show("Browser (Chromium, fresh server)", browser_bench())
        else:
            print(f"\nBrowser part skipped: {CHROMIUM} is missing")
    show("Server only (AppTest)", apptest_bench(args.repeat))


if __name__ == "__main__":
    main()
