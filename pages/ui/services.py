"""The server's shared services as the pages reach them, and the bound on raw uploads.

:func:`services` is :func:`core.shared_services` with Streamlit's answer to "is this session
still alive"; it also records which visitor each session belongs to (:func:`visitor_of`) and,
on a real server, puts a quota on Streamlit's own in-memory upload store.

Why the upload store needs it: ``PUT /_stcore/upload_file/{session}/{file}`` is accepted for
any live session whether or not a widget asked for a file, and Streamlit keeps each file in
the web process's memory until the session ends (16 requests × 49 MiB were accepted in the
issue-17 probe). The guard wraps the store's ``add_file``: a file that would take a visitor
above ``KRONOSCOPE_UPLOAD_SESSION_MB`` (all their tabs' files together), or every visitor
above ``KRONOSCOPE_UPLOAD_TOTAL_MB``, is refused with HTTP 413 before it is kept. Streamlit
itself removes a session's files when the session ends. A replica behind ``deploy/`` nginx
also caps each request's size (``client_max_body_size``) and the rate of upload requests.
"""

from __future__ import annotations

import threading

from core import Services, settings, shared_services

from .session import session_alive, session_id, visitor_id

__all__ = ["services", "visitor_of"]

_visitors: dict[str, str] = {}  # session id → visitor, recorded at each script run
_guard_lock = threading.Lock()
_MAX_REMEMBERED = 10_000  # sessions; beyond, ended ones are forgotten


def services() -> Services:
    """The process's shared services; notes this session's visitor on the way."""
    shared = shared_services(session_alive)
    sid = session_id()
    if sid not in _visitors:
        if len(_visitors) >= _MAX_REMEMBERED:
            for old in [s for s in _visitors if not session_alive(s)]:
                del _visitors[old]
        _visitors[sid] = visitor_id()
        _guard_uploads()
    return shared


def visitor_of(sid: str) -> str:
    """The visitor that session ``sid`` belongs to (the session itself when unknown)."""
    return _visitors.get(sid, sid)


def _guard_uploads() -> None:
    """Wrap the running server's in-memory upload store once (a no-op outside a server)."""
    from streamlit import runtime

    if not runtime.exists():
        return
    store = runtime.get_instance().uploaded_file_mgr
    with _guard_lock:
        if getattr(store, "kronoscope_guarded", False):
            return
        add_file = store.add_file

        def guarded_add_file(session_id: str, file) -> None:
            with _guard_lock:
                _check_room(store, session_id, file)
                add_file(session_id=session_id, file=file)

        store.add_file = guarded_add_file
        store.kronoscope_guarded = True


def _check_room(store, sid: str, file) -> None:
    """Raise HTTP 413 when ``file`` would take its visitor or the server past the quota."""
    from starlette.exceptions import HTTPException

    mib = 2**20
    per_visitor = settings.get("KRONOSCOPE_UPLOAD_SESSION_MB") * mib
    total = settings.get("KRONOSCOPE_UPLOAD_TOTAL_MB") * mib
    visitor = visitor_of(sid)
    used_total = used_visitor = 0
    for other, files in list(store.file_storage.items()):
        size = sum(len(f.data) for fid, f in files.items() if (other, fid) != (sid, file.file_id))
        used_total += size
        if visitor_of(other) == visitor:
            used_visitor += size
    if used_visitor + len(file.data) > per_visitor:
        raise HTTPException(413, "Upload refused: your uploads are above this server's quota.")
    if used_total + len(file.data) > total:
        raise HTTPException(413, "Upload refused: this server's upload space is full.")
