"""The one door to Streamlit's internals (``streamlit.runtime`` and the upload route's HTTP
error): every other module of pages/ and core/ uses Streamlit's public API only, and
tests/webapp/test_streamlit_runtime.py fails, naming the missing piece, when a Streamlit
upgrade changes one of the internals below.

What is used, and why no public API does it:

* ``streamlit.runtime.scriptrunner.get_script_run_ctx().session_id``: the id of the session
  whose script is running, the key of the server's run registry and upload store
  (:func:`script_session_id`);
* ``streamlit.runtime.exists()`` and ``streamlit.runtime.get_instance()``: the running server,
  absent under AppTest (:func:`server_running`);
* ``Runtime.is_active_session(session_id)``: whether a tab is still connected, so that the run
  registry stops the runs of closed tabs and the upload guard drops their files
  (:func:`session_active`);
* ``Runtime.get_client(session_id).client_context`` with ``cookies``, ``headers`` and
  ``remote_ip``: the request that opened a session's websocket, read for *another* session
  than the running script's (``st.context`` only knows the running one), which is how an
  upload request is charged to its browser (:func:`client_request`);
* ``Runtime.uploaded_file_mgr`` (a ``MemoryUploadedFileManager``) with ``add_file(session_id=,
  file=)``, ``file_storage`` (session → file id → record with ``file_id`` and ``data``) and
  ``remove_session_files(session_id)``: Streamlit keeps raw upload requests in memory with no
  bound of its own (:func:`guard_upload_store`, :func:`stored_upload_sizes`,
  :func:`drop_session_uploads`);
* ``starlette.exceptions.HTTPException``: what the upload route turns into an HTTP status
  (:func:`refuse_upload`);
* ``Runtime.is_ready_for_browser_connection`` (an awaitable property answering ``(ok,
  message)``): what ``/_stcore/health`` reports; wrapped so that it answers 503 until the
  server has warmed up, and a proxy or Docker health check sends no visitor before
  (:func:`hold_health_until`);
* ``streamlit.web.server.starlette.starlette_static_routes.create_streamlit_static_handler``
  (the factory of the ASGI app that serves the front end's files, and ``index.html`` for every
  other path), ``streamlit.file_util.get_static_dir()`` (where ``index.html`` lies, with one
  ``<script type="module"`` tag) and the front end's ``window.__streamlit.BACKEND_BASE_URL``
  (read once, when its bundle loads): opened at a page's URL (``/explorer``), Streamlit's
  front end first looks for its server *at that path*, ``/explorer/_stcore/health`` and
  ``/explorer/_stcore/host-config``, gets two 404s, and only then tries the parent, about
  0.1 s later; every shared link pays it. :func:`serve_pages_at_their_base` serves those
  pages' HTML with the base set, so the first try is the right one.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse
from streamlit import runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

__all__ = [
    "ClientRequest",
    "client_request",
    "drop_session_uploads",
    "guard_upload_store",
    "hold_health_until",
    "refuse_upload",
    "serve_pages_at_their_base",
    "script_session_id",
    "server_running",
    "session_active",
    "stored_upload_sizes",
]

_GUARDED = "kronoscope_guarded"  # marks an upload store, health answer or factory already wrapped
_HEALTH_ANSWER = "is_ready_for_browser_connection"  # Runtime's property /_stcore/health awaits
# the factory of the front end's static files app (replaced by name: ours returns a plain ASGI app)
_STATIC_FACTORY = "create_streamlit_static_handler"


@dataclass(frozen=True)
class ClientRequest:
    """What a session's websocket request carried: its cookies, its headers (as the server
    names them) and the connection's address."""

    cookies: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    remote_ip: str | None = None


def script_session_id() -> str | None:
    """The session of the running script, or None outside a script run."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def server_running() -> bool:
    """Whether a Streamlit server runs in this process (False under AppTest)."""
    return runtime.exists()


def session_active(session_id: str) -> bool:
    """Whether session ``session_id`` is connected to the running server (True when no server
    runs: nothing can be known to have ended)."""
    return not runtime.exists() or runtime.get_instance().is_active_session(session_id)


def client_request(session_id: str) -> ClientRequest | None:
    """The request that opened session ``session_id``'s websocket, or None when the server
    does not know the session (ended, or no server: AppTest)."""
    client = runtime.get_instance().get_client(session_id) if runtime.exists() else None
    context = getattr(client, "client_context", None)
    if context is None:
        return None
    return ClientRequest(dict(context.cookies), dict(context.headers), context.remote_ip)


def _upload_store() -> Any | None:
    return runtime.get_instance().uploaded_file_mgr if runtime.exists() else None


def guard_upload_store(check: Callable[[str, str, int], None], lock: threading.Lock) -> None:
    """Make the running server's upload store call ``check(session_id, file_id, size)`` under
    ``lock`` before it keeps a file (``check`` refuses with :func:`refuse_upload`); once per
    store, a no-op when no server runs."""
    store = _upload_store()
    if store is None or getattr(store, _GUARDED, False):
        return
    with lock:
        if getattr(store, _GUARDED, False):
            return
        add_file = store.add_file

        def guarded_add_file(session_id: str, file) -> None:
            with lock:
                check(session_id, file.file_id, len(file.data))
                add_file(session_id=session_id, file=file)

        store.add_file = guarded_add_file
        setattr(store, _GUARDED, True)


def stored_upload_sizes() -> dict[str, dict[str, int]]:
    """Session → file id → bytes of every raw upload the server keeps in memory."""
    store = _upload_store()
    if store is None:
        return {}
    return {
        sid: {fid: len(rec.data) for fid, rec in dict(store.file_storage.get(sid, {})).items()}
        for sid in list(store.file_storage)
    }


def drop_session_uploads(session_id: str) -> None:
    """Forget the raw uploads the server keeps for session ``session_id``."""
    store = _upload_store()
    if store is not None:
        store.remove_session_files(session_id)


def refuse_upload(message: str) -> NoReturn:
    """Refuse the upload request being handled with HTTP 413 and ``message``."""
    raise HTTPException(413, message)


def hold_health_until(ready: threading.Event, message: str) -> None:
    """Until ``ready`` is set, ``/_stcore/health`` answers 503 with ``message`` (Streamlit's
    own answer afterwards). Called before Streamlit starts; wraps the class's property once."""
    cls = runtime.Runtime
    # read and replaced by name: typed as the getter, it is a property on the class
    original: property = getattr(cls, _HEALTH_ANSWER)
    getter = original.fget
    if getter is None:
        raise RuntimeError(f"Runtime.{_HEALTH_ANSWER} has no getter")
    if getattr(getter, _GUARDED, False):
        raise RuntimeError("the health endpoint is already held")

    async def answer(self: Any) -> tuple[bool, str]:
        ok, text = await getter(self)
        return (ok, text) if not ok or ready.is_set() else (False, message)

    setattr(answer, _GUARDED, True)
    setattr(cls, _HEALTH_ANSWER, property(answer))


# Run before the front end's bundle: the server answered a page's own URL, so the server's base
# is that URL's folder ("." of it), under whatever prefix a proxy added.
_BASE_SCRIPT = (
    "<script>window.__streamlit = Object.assign({}, window.__streamlit, "
    '{BACKEND_BASE_URL: new URL(".", window.location.href).href});</script>\n    '
)
_MODULE_TAG = '<script type="module"'


def serve_pages_at_their_base(page_paths: Collection[str]) -> None:
    """Serve the front end's ``index.html`` at ``/<page>`` (under the server's base URL path,
    GET only) for every ``page`` of ``page_paths`` with :data:`_BASE_SCRIPT` before the bundle,
    so the front end skips its probe of ``/<page>/_stcore/…`` (module docstring); every other
    request is Streamlit's own. Called before Streamlit starts; wraps the factory once. Raises
    ``RuntimeError`` naming what changed where Streamlit's internals are not as above."""
    try:
        from streamlit import file_util
        from streamlit.web.server.starlette import starlette_static_routes as routes

        factory = getattr(routes, _STATIC_FACTORY)
        index = Path(file_util.get_static_dir(), "index.html").read_text(encoding="utf-8")
    except (ImportError, AttributeError, OSError) as err:
        raise RuntimeError(f"Streamlit's static files are no longer where expected: {err}") from err
    if getattr(factory, _GUARDED, False):
        raise RuntimeError("the pages are already served at their base")
    if index.count(_MODULE_TAG) != 1:
        raise RuntimeError(f"Streamlit's index.html no longer has one {_MODULE_TAG} tag")
    page_html = index.replace(_MODULE_TAG, _BASE_SCRIPT + _MODULE_TAG)
    pages = {f"/{path}" for path in page_paths}

    def handler(directory: str, base_url: str | None) -> Callable[..., Awaitable[None]]:
        static = factory(directory, base_url)

        async def serve(scope: Any, receive: Any, send: Any) -> None:
            own = scope["type"] == "http" and scope["method"] == "GET"
            if own and scope["path"][len(scope.get("root_path", "")) :] in pages:
                reply = HTMLResponse(page_html, headers={"Cache-Control": "no-cache"})
                await reply(scope, receive, send)
            else:
                await static(scope, receive, send)

        return serve

    setattr(handler, _GUARDED, True)
    setattr(routes, _STATIC_FACTORY, handler)
