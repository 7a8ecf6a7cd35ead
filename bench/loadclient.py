"""A browserless Streamlit client: one simulated student over Streamlit 1.67's websocket protocol.

Protocol (as Streamlit's own frontend speaks it; proto definitions in ``streamlit/proto``):
the client opens ``ws://HOST:PORT/_stcore/stream`` with subprotocol ``streamlit`` and, once
connected, sends one ``BackMsg`` whose ``rerun_script`` (a ``ClientState``) carries the URL's
``query_string`` (without ``?``), the page's ``page_name`` (its ``url_path``), the widget states
it holds and the browser context. The server answers with ``ForwardMsg`` frames: ``new_session``,
``delta`` (elements and blocks), ``page_info_changed`` (the query string the app wrote to the URL)
and finally ``script_finished``. A user's change of a widget is another ``rerun_script`` whose
``widget_states`` holds the new value under the widget's id (the id and the options come from the
widget's element in the deltas; a selectbox is sent as its displayed option in ``string_value``,
a multiselect as ``string_array_value``) and whose ``query_string`` is the URL the page shows.

What a user sees as a failure: an ``exception`` element (not a warning), an ``alert`` of format
ERROR (``st.error``), a ``page_not_found`` message, or a script that ends with a compile error.
Latency is measured on the client from sending the rerun to ``script_finished``: server time plus
loopback, no browser rendering (bench/RESULTS-load.md says what one scenario does).

Usage::

    async with StudentSession("http://127.0.0.1:8501") as s:
        first = await s.open("explorer", "dataset=digits&seed=0")
        after = await s.change("Layer", next_option)
        print(first.latency_s, first.charts, first.errors, after.ok)

Faults: :func:`disconnect_mid_view` (a tab closed while its view runs) and :func:`slow_reader`
(a client that sends a rerun and never reads its socket).

Visitors and uploads: a browser is known to the server by its ``_streamlit_xsrf`` cookie, set
by ``GET /_stcore/health`` (:func:`xsrf_cookie`) and sent with every websocket handshake of its
tabs (``StudentSession(url, cookie=...)``); two sessions with one cookie are two tabs of one
browser. :func:`put_file` is the raw ``PUT /_stcore/upload_file/{session}/{file}`` a file
uploader makes (multipart, one file, the cookie echoed in ``X-Xsrftoken``);
:meth:`StudentSession.upload` does what the frontend does for ``st.file_uploader``: the PUT,
then a rerun whose widget state lists the file. :meth:`StudentSession.clear_cache` sends the
``clear_cache`` back message any client may send (the "Clear cache" menu item).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import select
import socket
import struct
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import quote, urlsplit

import websockets
from streamlit.proto.Alert_pb2 import Alert
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.Common_pb2 import UploadedFileInfo
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

ERROR_TEXT_CHARS = 300  # error texts are kept for the report, truncated to this
MAX_FRAME_BYTES = 256 * 2**20  # plotly heatmaps exceed websockets' 1 MiB default
FINISHED = ForwardMsg.ScriptFinishedStatus
WIDGET_KINDS = ("selectbox", "multiselect", "radio")
XSRF_COOKIE = "_streamlit_xsrf"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CONTINUE_WAIT_S = 5.0  # how long put_file waits for "100 Continue" before sending the body


def ws_url(base_url: str) -> str:
    """``http://host:port/prefix`` → ``ws://host:port/prefix/_stcore/stream``."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "ws") or not parts.hostname:
        raise ValueError(f"server URL {base_url!r}: give http://HOST:PORT (loopback, plain HTTP)")
    return f"ws://{parts.netloc}{parts.path.rstrip('/')}/_stcore/stream"


def _loopback_url(base_url: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of a plain-HTTP loopback URL; ValueError for anything else."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK:
        raise ValueError(f"server URL {base_url!r}: only http://127.0.0.1:PORT (loopback)")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


def xsrf_cookie(base_url: str, *, timeout: float = 10.0) -> str:
    """A fresh ``_streamlit_xsrf`` cookie value, as a browser gets it from the server's first
    ``GET /_stcore/health`` (every call: another browser, i.e. another visitor)."""
    _loopback_url(base_url)
    with urllib.request.urlopen(base_url.rstrip("/") + "/_stcore/health", timeout=timeout) as r:
        headers = r.headers.get_all("Set-Cookie") or []
    for header in headers:
        morsel = SimpleCookie(header).get(XSRF_COOKIE)
        if morsel is not None and morsel.value:
            return morsel.value
    raise RuntimeError(f"{base_url}: /_stcore/health set no {XSRF_COOKIE} cookie ({headers!r})")


def put_file(
    base_url: str,
    session_id: str,
    file_id: str,
    name: str,
    data: bytes,
    cookie: str | None,
    *,
    timeout: float = 60.0,
) -> int:
    """``PUT /_stcore/upload_file/{session_id}/{file_id}`` with ``data`` as the one multipart
    file, the XSRF cookie sent and echoed in ``X-Xsrftoken`` as the frontend does; the HTTP
    status (204 accepted, 413 refused, 403 without a valid cookie, 400 unknown session).

    Sent with ``Expect: 100-continue``: a server that refuses the request from its headers
    (a ``Content-Length`` above ``server.maxUploadSize``) answers before the body is sent, so
    the status is read instead of a reset connection. Blocking: call it through
    ``asyncio.to_thread`` from a coroutine."""
    host, port, prefix = _loopback_url(base_url)
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    body = b"".join((head, data, f"\r\n--{boundary}--\r\n".encode()))
    lines = [
        f"PUT {prefix}/_stcore/upload_file/{quote(session_id)}/{quote(file_id)} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        f"Content-Length: {len(body)}",
        "Expect: 100-continue",
        "Connection: close",
    ]
    if cookie:
        lines += [f"Cookie: {XSRF_COOKIE}={cookie}", f"X-Xsrftoken: {cookie}"]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        reader = sock.makefile("rb")
        # wait (select: a timed-out socket file cannot be read again) for an early answer
        early, _, _ = select.select([sock], [], [], CONTINUE_WAIT_S)
        if early:
            status = _read_status(reader)
            if status != 100:
                return status
            while reader.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # the rest of the interim response
        # a server that answered and closed meanwhile may still have its answer readable
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(body)
        return _read_status(reader)


def _read_status(reader) -> int:
    """The status code of the HTTP response line ``reader`` gives next."""
    line = reader.readline(65537)
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ConnectionError(f"no HTTP status line from the server: {line[:80]!r}")
    return int(parts[1])


def _truncate(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT_CHARS else text[: ERROR_TEXT_CHARS - 1] + "…"


@dataclass
class Widget:
    """A widget as the page last sent it: ``options`` and ``value`` as displayed strings."""

    id: str
    kind: str  # one of WIDGET_KINDS
    label: str
    options: list[str]
    value: str | list[str]


@dataclass
class ViewResult:
    """One view: a page open or a rerun after a widget change, as the student experienced it."""

    action: str  # "open" or "change <label>"
    page: str
    query: str  # the query string sent with the rerun
    started: float  # time.monotonic() when the rerun was sent
    latency_s: float | None = None  # send → script_finished; None: never finished
    status: str = "pending"  # finished | compile_error | timeout | dropped | skipped | refused
    errors: list[str] = field(default_factory=list)  # what the user saw as failures
    exceptions: list[str] = field(default_factory=list)  # of errors: exception elements
    charts: int = 0  # plotly charts and pictures (the explorer's block heatmaps are a PNG)
    elements: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "finished" and not self.errors

    def as_dict(self) -> dict:
        return {
            "action": self.action,
            "page": self.page,
            "query": self.query,
            "latency_s": self.latency_s,
            "status": self.status,
            "errors": self.errors,
            "exceptions": self.exceptions,
            "charts": self.charts,
            "elements": self.elements,
            "note": self.note,
        }


class StudentSession:
    """One browser tab: a websocket session that opens pages and changes widgets.

    ``open`` and ``change`` each send one rerun and read frames until the run finishes, the
    connection drops or ``timeout`` seconds pass; they never raise for server-side failures,
    they record them in the returned :class:`ViewResult`. ``dropped`` tells whether the
    connection ended without the client closing it.
    """

    def __init__(
        self, base_url: str, *, connect_timeout: float = 10.0, cookie: str | None = None
    ) -> None:
        self.base_url = base_url
        self.url = ws_url(base_url)
        self.connect_timeout = connect_timeout
        self.cookie = cookie  # the browser's _streamlit_xsrf value (None: a cookie-less client)
        self.page = ""
        self.query = ""  # the URL's query string as the page last set it
        self.widgets: dict[str, Widget] = {}  # by label, from the last run
        self.uploaders: dict[str, str] = {}  # file_uploader label → widget id, from the last run
        self.dropped = False
        self.session_id = ""
        self._ws = None

    async def __aenter__(self) -> StudentSession:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> None:
        # No client pings: a browser sends none, and a starved server must not make the
        # client hang up on its own.
        headers = {"Cookie": f"{XSRF_COOKIE}={self.cookie}"} if self.cookie else None
        self._ws = await websockets.connect(
            self.url,
            subprotocols=["streamlit"],
            additional_headers=headers,
            max_size=MAX_FRAME_BYTES,
            ping_interval=None,
            open_timeout=self.connect_timeout,
            close_timeout=2,
        )

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (a killed tab or lost network)."""
        if self._ws is not None:
            self._ws.transport.abort()
            self._ws = None

    async def open(self, page: str, query: str = "", *, timeout: float = 120.0) -> ViewResult:
        """Open ``page`` (its url_path; "" for the default page) with the URL ``query``."""
        self.page, self.query = page, query
        return await self._rerun("open", {}, timeout)

    async def open_and_stop(
        self, page: str, query: str = "", *, timeout: float = 60.0
    ) -> ViewResult:
        """Open ``page`` and send ``stop_script`` right behind the rerun (the Stop button
        pressed at once): the run ends early, usually before the page's first line, but the
        session exists and its id is known (``new_session`` comes first)."""
        self.page, self.query = page, query
        return await self._rerun("open and stop", {}, timeout, stop=True)

    async def change(
        self,
        label: str,
        choose: Callable[[Widget], str | list[str]],
        *,
        timeout: float = 120.0,
    ) -> ViewResult:
        """Set the widget labelled ``label`` to ``choose(widget)`` and wait for the rerun.

        ``choose`` gets the widget as last drawn and returns the new displayed value (a list
        for a multiselect). A widget the page did not draw gives a ``skipped`` result.
        """
        widget = self.widgets.get(label)
        if widget is None:
            view = ViewResult(f"change {label}", self.page, self.query, time.monotonic())
            view.status = "skipped"
            view.note = f"no widget labelled {label!r} on the page"
            return view
        state = WidgetState(id=widget.id)
        value = choose(widget)
        if widget.kind == "multiselect":
            state.string_array_value.data.extend(list(value))
        else:
            state.string_value = str(value)
        return await self._rerun(f"change {label}", {widget.id: state}, timeout)

    async def clear_cache(self) -> None:
        """Send ``BackMsg(clear_cache=True)`` (the frontend's "Clear cache"; any client may)."""
        if self._ws is None:
            raise ConnectionError("not connected")
        msg = BackMsg()
        msg.clear_cache = True
        await self._ws.send(msg.SerializeToString())

    async def upload(
        self, label: str, name: str, data: bytes, *, timeout: float = 120.0
    ) -> ViewResult:
        """Give the file uploader labelled ``label`` (or whose label starts with it) the file
        ``name`` holding ``data``, as the frontend does: PUT the file, then rerun with the
        widget's ``uploaded_file_info`` listing it, and wait for that run. A refused PUT gives
        a ``refused`` result with the HTTP status in ``note``; no such widget, ``skipped``."""
        action = f"upload {name} to {label}"
        wid = self.uploaders.get(label) or next(
            (w for lab, w in self.uploaders.items() if lab.startswith(label)), None
        )
        view = ViewResult(action, self.page, self.query, time.monotonic())
        if wid is None:
            view.status, view.note = "skipped", f"no file uploader labelled {label!r}"
            return view
        file_id = uuid.uuid4().hex
        status = await asyncio.to_thread(
            put_file, self.base_url, self.session_id, file_id, name, data, self.cookie,
            timeout=timeout,
        )  # fmt: skip
        if status not in (200, 204):
            view.status, view.note = "refused", f"HTTP {status}"
            return view
        state = WidgetState(id=wid)
        info = UploadedFileInfo(name=name, size=len(data), file_id=file_id)
        state.file_uploader_state_value.uploaded_file_info.append(info)
        return await self._rerun(action, {wid: state}, timeout)

    async def send_rerun(self, page: str, query: str = "") -> None:
        """Send the opening rerun and return at once (for fault scenarios)."""
        self.page, self.query = page, query
        await self._ws.send(self._rerun_msg({}).SerializeToString())

    def _rerun_msg(self, states: dict) -> BackMsg:
        msg = BackMsg()
        rerun = msg.rerun_script
        rerun.query_string = self.query
        rerun.page_name = self.page
        rerun.widget_states.widgets.extend(states.values())
        info = rerun.context_info
        info.timezone, info.timezone_offset, info.locale = "UTC", 0, "en-US"
        info.url = self.url.replace("ws://", "http://").replace("/_stcore/stream", "/")
        if self.page:
            info.url += self.page
        if self.query:
            info.url += "?" + self.query
        return msg

    async def _rerun(
        self, action: str, states: dict, timeout: float, *, stop: bool = False
    ) -> ViewResult:
        view = ViewResult(action, self.page, self.query, time.monotonic())
        if self._ws is None:
            view.status, view.note = "dropped", "not connected"
            return view
        widgets: dict[str, Widget] = {}
        uploaders: dict[str, str] = {}
        try:
            await self._ws.send(self._rerun_msg(states).SerializeToString())
            if stop:
                await self._ws.send(BackMsg(stop_script=True).SerializeToString())
            async with asyncio.timeout(timeout):
                while True:
                    msg = ForwardMsg()
                    msg.ParseFromString(await self._ws.recv())
                    if self._absorb(msg, view, widgets, uploaders):
                        break
        except TimeoutError:
            view.status = "timeout"
        except websockets.ConnectionClosed as err:
            view.status, view.note = "dropped", _truncate(f"connection closed: {err}")
            self.dropped = True
            self._ws = None
        if view.status == "finished":
            view.latency_s = time.monotonic() - view.started
            self.widgets, self.uploaders = widgets, uploaders
        return view

    def _absorb(
        self,
        msg: ForwardMsg,
        view: ViewResult,
        widgets: dict[str, Widget],
        uploaders: dict[str, str] | None = None,
    ) -> bool:
        """Record one frame; True when the run is over."""
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.session_id = msg.new_session.initialize.session_id or self.session_id
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string
        elif kind == "page_not_found":
            view.errors.append(_truncate(f"page not found: {view.page!r}"))
        elif kind == "session_event" and msg.session_event.HasField("script_compilation_exception"):
            exc = msg.session_event.script_compilation_exception
            view.errors.append(_truncate(f"{exc.type}: {exc.message}"))
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            self._element(msg.delta.new_element, view, widgets, uploaders)
        elif kind == "script_finished":
            status = msg.script_finished
            if status == FINISHED.FINISHED_EARLY_FOR_RERUN:
                return False  # the script called st.rerun: the view is the next run
            view.status = (
                "compile_error" if status == FINISHED.FINISHED_WITH_COMPILE_ERROR else ("finished")
            )
            return True
        return False

    @staticmethod
    def _element(
        element, view: ViewResult, widgets: dict[str, Widget], uploaders: dict[str, str] | None
    ) -> None:
        kind = element.WhichOneof("type")
        view.elements += 1
        if kind in ("plotly_chart", "imgs"):
            view.charts += 1
        elif kind == "exception" and not element.exception.is_warning:
            exc = element.exception
            view.errors.append(_truncate(f"{exc.type}: {exc.message}"))
            view.exceptions.append(view.errors[-1])
        elif kind == "alert" and element.alert.format == Alert.Format.ERROR:
            view.errors.append(_truncate(element.alert.body))
        elif kind in WIDGET_KINDS:
            w = getattr(element, kind)
            value = list(w.raw_values) if kind == "multiselect" else w.raw_value
            widgets[w.label] = Widget(w.id, kind, w.label, list(w.options), value)
        elif kind == "file_uploader" and uploaders is not None:
            uploaders[element.file_uploader.label] = element.file_uploader.id


# -- choosers for StudentSession.change -------------------------------------------------------


def next_option(widget: Widget) -> str:
    """The option after the current one (cyclic): another layer, another m."""
    opts = widget.options
    if not opts:
        raise ValueError(f"widget {widget.label!r} has no options")
    current = widget.value if isinstance(widget.value, str) else ""
    i = opts.index(current) if current in opts else -1
    return opts[(i + 1) % len(opts)]


def first_options(k: int) -> Callable[[Widget], list[str]]:
    """A multiselect chooser: keep the first ``k`` options (another method set)."""

    def choose(widget: Widget) -> list[str]:
        return list(widget.options[:k])

    return choose


# -- faults -----------------------------------------------------------------------------------


async def disconnect_mid_view(
    base_url: str, page: str, query: str, *, after_elements: int = 3, timeout: float = 60.0
) -> ViewResult:
    """Open a view and drop the connection (no close handshake) once ``after_elements``
    elements have arrived, i.e. while the script is running. ``status`` is "aborted" when the
    drop happened mid-run, "finished" if the run ended first."""
    session = StudentSession(base_url)
    await session.connect()
    await session.send_rerun(page, query)
    view = ViewResult("disconnect mid-view", page, query, time.monotonic())
    try:
        async with asyncio.timeout(timeout):
            while view.elements < after_elements:
                msg = ForwardMsg()
                msg.ParseFromString(await session._ws.recv())
                if session._absorb(msg, view, {}):
                    break
    except (TimeoutError, websockets.ConnectionClosed) as err:
        view.note = _truncate(f"before the drop: {type(err).__name__}")
    if view.status != "finished":
        view.status = "aborted"
    session.abort()
    return view


async def slow_reader(
    base_url: str, page: str, query: str, *, hold_s: float = 30.0, rcvbuf: int = 4096
) -> dict:
    """A client that sends the opening rerun and then never reads its socket for ``hold_s``.

    Spoken over a raw socket (handshake and one masked binary frame per RFC 6455) so that no
    library reads on its behalf; a small receive buffer makes the server's sends back up soon.
    Returns how the server treated it: whether it closed the connection during the hold.
    """
    parts = urlsplit(ws_url(base_url))
    host, port = parts.hostname, parts.port or 80
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)  # the loop's sock_* calls read only when asked
    try:
        async with asyncio.timeout(10):
            await loop.sock_connect(sock, (host, port))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: streamlit\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(sock, 1)  # byte by byte: leave the frames unread
                if not chunk:
                    raise ConnectionError("server closed the connection during the handshake")
                head += chunk
        status_line = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status_line:
            raise ConnectionError(f"websocket handshake refused: {status_line!r}")
        session = StudentSession(base_url)
        session.page, session.query = page, query
        frame = _masked_binary_frame(session._rerun_msg({}).SerializeToString())
        await loop.sock_sendall(sock, frame)
        started = time.monotonic()
        await asyncio.sleep(hold_s)
        # Did the server give up on us? Drain what it sent: a closed peer ends in EOF or a
        # reset once the buffered frames are read.
        closed = False
        try:
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    closed = True
                    break
        except BlockingIOError:
            pass
        except ConnectionError:
            closed = True
        return {"held_s": round(time.monotonic() - started, 1), "server_closed": closed}
    finally:
        sock.close()


def _masked_binary_frame(payload: bytes) -> bytes:
    """One final binary frame, client-masked (RFC 6455 §5.2)."""
    n = len(payload)
    head = bytearray([0x82])
    if n < 126:
        head.append(0x80 | n)
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def summarize_views(views: Sequence[ViewResult]) -> dict:
    """Counts a report needs: finished, errors, incomplete (no plotly chart), drops, timeouts."""
    done = [v for v in views if v.status == "finished"]
    return {
        "views": len(views),
        "finished": len(done),
        "with_errors": sum(1 for v in views if v.errors),
        "without_chart": sum(1 for v in done if v.charts == 0),
        "timeouts": sum(1 for v in views if v.status == "timeout"),
        "dropped": sum(1 for v in views if v.status == "dropped"),
        "skipped": sum(1 for v in views if v.status == "skipped"),
    }
