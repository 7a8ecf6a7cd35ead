"""Who is asking: this script run's Streamlit session, the visitor behind it, and whether
another session still exists.

A *session* is one browser tab; a *visitor* is one browser, all its tabs together, which is
what quotas count. A browser is recognised by the token in Streamlit's XSRF cookie
(``_streamlit_xsrf``, set by the server on the page's first health request and sent with
every websocket handshake, the same for every tab; only its masked form changes, so the
unmasked token is what names the visitor). A client that sends no such cookie is named by
its address: the proxy's ``X-Forwarded-For`` entry when the host runs a trusted proxy
(``KRONOSCOPE_TRUSTED_PROXY``), else the connection's own address, so cookie-less clients
from one address share one quota; a loopback address names nobody (a proxy on the same host,
a test client), and such a client is one visitor per tab. Visitor names are hashed: nothing
of the cookie is kept. Streamlit's internals are reached through :mod:`.streamlit_runtime`.
"""

from __future__ import annotations

import binascii
import hashlib

from core import SHARED_SESSION, settings

from .streamlit_runtime import client_request, script_session_id, session_active

__all__ = ["SHARED_SESSION", "session_alive", "session_id", "visitor_id", "visitor_of"]


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def session_id() -> str:
    """This script run's session (``"no-session"`` outside a script run)."""
    return script_session_id() or "no-session"


def session_alive(sid: str) -> bool:
    """True while session ``sid`` is connected (always True outside a server: AppTest)."""
    return sid == SHARED_SESSION or session_active(sid)


def xsrf_token(cookie: str) -> str | None:
    """The token inside a ``_streamlit_xsrf`` cookie value, unmasked (Tornado's version-2
    format ``2|mask|masked token|timestamp``, the token XOR-ed with the repeated 4-byte mask;
    any other text is taken whole). None for an empty value."""
    parts = cookie.split("|")
    if len(parts) == 4 and parts[0] == "2":
        try:
            mask, masked = binascii.a2b_hex(parts[1]), binascii.a2b_hex(parts[2])
        except (binascii.Error, ValueError):
            return cookie or None
        if len(mask) == 4:
            return bytes(b ^ mask[i % 4] for i, b in enumerate(masked)).hex()
    return cookie or None


def visitor_id() -> str:
    """The visitor behind this script run's session (see the module docstring)."""
    return visitor_of(session_id())


def visitor_of(sid: str) -> str:
    """A stable, opaque name of the browser behind session ``sid``, read from the request
    that opened its websocket (so it is known before the session's script has run, e.g. for
    a raw upload request); a session unknown to the server (ended, or AppTest) is its own
    visitor."""
    request = client_request(sid)
    cookies = request.cookies if request is not None else {}
    token = xsrf_token(str(cookies.get("_streamlit_xsrf", "")))
    if token is None:
        address = request.remote_ip if request is not None else None
        if request is not None and settings.get("KRONOSCOPE_TRUSTED_PROXY"):
            forwarded = request.headers.get("x-forwarded-for", "")
            address = forwarded.split(",")[-1].strip() or address
        if address in LOOPBACK:  # a local proxy or test client: the address names nobody
            address = None
        token = f"address:{address}" if address else f"session:{sid}"
    return hashlib.sha256(token.encode()).hexdigest()[:16]
