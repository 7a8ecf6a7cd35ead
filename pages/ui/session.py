"""Who is asking: this script run's Streamlit session, the visitor behind it, and whether
another session still exists.

A *session* is one browser tab; a *visitor* is one browser, all its tabs together, which is
what quotas count. A browser is recognised by the token in Streamlit's XSRF cookie
(``_streamlit_xsrf``, set by the server on the page's first health request and sent with
every websocket handshake, the same for every tab; only its masked form changes, so the
unmasked token is what names the visitor). A client that sends no such cookie is named by
its address: the proxy's ``X-Forwarded-For`` entry when the host runs a trusted proxy
(``KRONOSCOPE_TRUSTED_PROXY``), else the connection's own address, so cookie-less clients
from one address share one quota. Visitor names are hashed: nothing of the cookie is kept.
"""

from __future__ import annotations

import binascii
import hashlib

import streamlit as st

from core import SHARED_SESSION, settings

__all__ = ["SHARED_SESSION", "session_alive", "session_id", "visitor_id"]


def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def session_alive(sid: str) -> bool:
    """True while session ``sid`` is connected (always True outside a server: AppTest)."""
    from streamlit import runtime

    if sid == SHARED_SESSION or not runtime.exists():
        return True
    return runtime.get_instance().is_active_session(sid)


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
    """A stable, opaque name of the browser behind this session (see the module docstring)."""
    token = xsrf_token(_text(lambda: st.context.cookies.get("_streamlit_xsrf")))
    if token is None:
        address = _text(lambda: st.context.ip_address)
        if settings.get("KRONOSCOPE_TRUSTED_PROXY"):
            forwarded = _text(lambda: st.context.headers.get("X-Forwarded-For"))
            address = forwarded.split(",")[-1].strip() or address
        # no address: outside a server (AppTest), where each session is its own visitor
        token = f"address:{address}" if address else f"session:{session_id()}"
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _text(read) -> str:
    """``read()`` when it gives text, else "" (no request context, or not a string)."""
    try:
        value = read()
    except Exception:
        return ""
    return value if isinstance(value, str) else ""
