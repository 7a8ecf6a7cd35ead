"""The server's shared services as the pages reach them, and the bound on raw uploads.

:func:`services` is :func:`core.shared_services` with Streamlit's answer to "is this session
still alive"; on a real server :func:`guard_uploads` puts a quota on Streamlit's own in-memory
upload store (``serve.py`` installs it as soon as the server answers; the first script run
does otherwise).

Why the upload store needs it: ``PUT /_stcore/upload_file/{session}/{file}`` is accepted for
any live session whether or not a widget asked for a file, and Streamlit keeps each file in
the web process's memory until the session ends (16 requests × 49 MiB were accepted in the
issue-17 probe). The guard wraps the store's ``add_file``: a file that would take a visitor
above ``KRONOSCOPE_UPLOAD_SESSION_MB`` (all their tabs' files together), or every visitor
above ``KRONOSCOPE_UPLOAD_TOTAL_MB``, is refused with HTTP 413 before it is kept. The visitor
is read from the session's own websocket request (:func:`pages.ui.session.visitor_of`), so a
tab whose script never ran is still its browser's. Files of sessions that are no longer
connected are dropped at the next upload: Streamlit keeps a closed tab's session for two
minutes in case it reconnects, and its files with it (such a tab, if it does come back, has to
upload again). Streamlit reads a request's whole body before the store sees it, so what is in
flight is bounded by ``server.maxUploadSize`` per request; ``deploy/`` nginx also caps each
request's size (``client_max_body_size``).
"""

from __future__ import annotations

import threading

from core import Services, settings, shared_services

from .session import session_alive, visitor_of

__all__ = ["guard_uploads", "services"]

_guard_lock = threading.Lock()


def services() -> Services:
    """The process's shared services (and, on a real server, the upload guard)."""
    guard_uploads()
    return shared_services(session_alive)


def guard_uploads() -> None:
    """Wrap the running server's in-memory upload store once (a no-op outside a server)."""
    from streamlit import runtime

    if not runtime.exists():
        return
    store = runtime.get_instance().uploaded_file_mgr
    if getattr(store, "kronoscope_guarded", False):
        return
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
    """Drop the files of disconnected sessions, then raise HTTP 413 when ``file`` would take
    its visitor or the server past the quota."""
    from starlette.exceptions import HTTPException
    from streamlit import runtime

    server = runtime.get_instance()
    mib = 2**20
    per_visitor = settings.get("KRONOSCOPE_UPLOAD_SESSION_MB") * mib
    total = settings.get("KRONOSCOPE_UPLOAD_TOTAL_MB") * mib
    visitor = visitor_of(sid)
    used_total = used_visitor = 0
    for other in list(store.file_storage):
        if other != sid and not server.is_active_session(other):
            store.remove_session_files(other)
            continue
        files = store.file_storage.get(other, {})
        size = sum(len(f.data) for fid, f in files.items() if (other, fid) != (sid, file.file_id))
        used_total += size
        if visitor_of(other) == visitor:
            used_visitor += size
    if used_visitor + len(file.data) > per_visitor:
        raise HTTPException(413, "Upload refused: your uploads are above this server's quota.")
    if used_total + len(file.data) > total:
        raise HTTPException(413, "Upload refused: this server's upload space is full.")
