"""Start a Kronoscope server: ``python serve.py [Streamlit flags]`` (``make run``, the image).

1. Every host setting is checked first (:func:`core.settings.check_all`): a bad value stops
   the server here, with one line naming the variable, before any visitor arrives.
2. Streamlit then serves ``app.py`` in this process (``streamlit run app.py`` with the same
   flags), so the shared services of :mod:`core.server.services` are this process's.
3. A thread waits for the HTTP server to answer; then it puts the quota on raw upload
   requests (:func:`pages.ui.services.guard_uploads`, before any visitor can have a session)
   and, with ``KRONOSCOPE_PREWARM`` on (the default), opens the pages a class opens first
   (Home and the Fisher explorer's default view) as a browserless visitor over Streamlit's
   own websocket protocol, on loopback. The worker processes start, the numerical stack is
   imported and the default view's results and figures are cached before the first
   student's request, and they are exactly what that request asks for, since the page itself
   computed them.
4. Until then ``/_stcore/health`` answers 503 "warming up"
   (:func:`pages.ui.streamlit_runtime.hold_health_until`), so a proxy or a Docker health
   check sends no visitor to a cold server; it answers 200 once the warm-up finished (or
   failed: a failed warm-up costs the first visitor time, it does not keep the server out).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import urllib.error
import urllib.request

from core import settings

PREWARM_PAGES = (("", ""), ("explorer", ""))  # (url path, query): Home, the default view
PREWARM_TIMEOUT_S = 300.0
WARMING_UP = "warming up: the server opens its first pages itself before it takes visitors"


def _option(argv: list[str], name: str) -> str:
    """Streamlit option ``name`` as Streamlit will see it: this command line's flag
    (``--name value`` or ``--name=value``), else its environment variable
    (``STREAMLIT_SERVER_PORT``: Streamlit's command line reads those, its config does not
    before it runs), else its config files or default."""
    flag = f"--{name}"
    for i, arg in enumerate(argv):
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
    from streamlit import config

    value = settings.streamlit_variable(config.get_config_options()[name].env_var)
    return value or str(config.get_option(name))


def _loopback(argv: list[str]) -> str:
    """Where this server answers on loopback: ``127.0.0.1:PORT`` and its base URL path."""
    base = _option(argv, "server.baseUrlPath").strip("/")
    return f"127.0.0.1:{int(_option(argv, 'server.port'))}" + (f"/{base}" if base else "")


async def _open(server: str, page: str, query: str) -> None:
    """One script run of ``page`` as a visitor would ask for it; returns when it finished."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    url = f"ws://{server}/_stcore/stream"
    async with websockets.connect(url, subprotocols=["streamlit"], max_size=2**28) as ws:
        msg = BackMsg()
        msg.rerun_script.query_string, msg.rerun_script.page_name = query, page
        await ws.send(msg.SerializeToString())
        while True:
            reply = ForwardMsg()
            reply.ParseFromString(await ws.recv())
            if reply.WhichOneof("type") == "script_finished":
                return


def _after_start(server: str, prewarm: bool, guard_uploads, ready: threading.Event) -> None:
    deadline = time.monotonic() + PREWARM_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{server}/_stcore/health", timeout=2)
            break
        except urllib.error.HTTPError:  # answering, with 503 while held: the server is up
            break
        except OSError:
            time.sleep(0.2)
    guard_uploads()
    try:
        if prewarm:
            _prewarm(server)
    finally:
        ready.set()


def _prewarm(server: str) -> None:
    started = time.monotonic()
    for page, query in PREWARM_PAGES:
        try:
            asyncio.run(asyncio.wait_for(_open(server, page, query), PREWARM_TIMEOUT_S))
        except Exception as err:  # a failed warm-up costs the first visitor time, nothing else
            print(f"kronoscope: prewarming {page or 'home'} failed: {err}", file=sys.stderr)
            return
    print(f"kronoscope: prewarmed in {time.monotonic() - started:.1f} s", file=sys.stderr)


def main(argv: list[str]) -> int:
    problems = settings.check_all()
    if problems:
        print(f"kronoscope: {problems[0]}", file=sys.stderr)
        return 2
    prewarm = settings.get("KRONOSCOPE_PREWARM")
    # The app's package is imported here, before Streamlit serves: imported by a thread and a
    # first script run at the same time, its modules were seen half initialised (ImportError).
    from pages.ui.navigation import PAGE_PATHS
    from pages.ui.services import guard_uploads
    from pages.ui.streamlit_runtime import hold_health_until, serve_pages_at_their_base

    ready = threading.Event()
    hold_health_until(ready, WARMING_UP)
    try:
        serve_pages_at_their_base(PAGE_PATHS)
    except RuntimeError as err:  # shared links then find the server 0.1 s later, nothing else
        print(f"kronoscope: pages served as Streamlit serves them: {err}", file=sys.stderr)
    threading.Thread(
        target=_after_start, args=(_loopback(argv), prewarm, guard_uploads, ready), daemon=True
    ).start()
    from streamlit.web import cli

    return cli.main(["run", "app.py", *argv], prog_name="streamlit", standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
