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
from .streamlit_runtime import (
    drop_session_uploads,
    guard_upload_store,
    refuse_upload,
    session_active,
    stored_upload_sizes,
)

__all__ = ["guard_uploads", "services"]

_guard_lock = threading.Lock()


def services() -> Services:
    """The process's shared services (and, on a real server, the upload guard)."""
    guard_uploads()
    return shared_services(session_alive)


def guard_uploads() -> None:
    """Put the quota on the running server's in-memory upload store, once (a no-op outside a
    server)."""
    guard_upload_store(_check_room, _guard_lock)


def _check_room(sid: str, file_id: str, size: int) -> None:
    """Drop the files of disconnected sessions, then refuse (HTTP 413) a file of ``size``
    bytes that would take its visitor or the server past the quota."""
    mib = 2**20
    per_visitor = settings.get("KRONOSCOPE_UPLOAD_SESSION_MB") * mib
    total = settings.get("KRONOSCOPE_UPLOAD_TOTAL_MB") * mib
    visitor = visitor_of(sid)
    used_total = used_visitor = 0
    for other, files in stored_upload_sizes().items():
        if other != sid and not session_active(other):
            drop_session_uploads(other)
            continue
        kept = sum(n for fid, n in files.items() if (other, fid) != (sid, file_id))
        used_total += kept
        if visitor_of(other) == visitor:
            used_visitor += kept
    if used_visitor + size > per_visitor:
        refuse_upload("Upload refused: your uploads are above this server's quota.")
    if used_total + size > total:
        refuse_upload("Upload refused: this server's upload space is full.")
