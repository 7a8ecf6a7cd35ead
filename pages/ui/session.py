"""This script run's Streamlit session, and whether another session still exists."""

from __future__ import annotations

__all__ = ["SHARED_SESSION", "session_alive", "session_id"]

#: The owner of work done for every session (the explorer's trained models): always alive.
SHARED_SESSION = "shared"


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
