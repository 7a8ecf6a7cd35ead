"""Routing every page through app.py's ``st.navigation``."""

from __future__ import annotations

import streamlit as st

__all__ = ["ensure_navigation"]


def ensure_navigation() -> None:
    """Run every page through app.py's ``st.navigation``.

    Streamlit treats a folder named ``pages/`` next to the main script as a legacy (v1)
    multipage app until the process's first ``st.navigation`` call: the first request of a
    fresh server that deep-links to a page (and every AppTest run) would then run the page
    script alone, with Streamlit's automatic page list and without app.py's set-up. Switch the
    process to ``st.navigation`` and rerun; app.py then routes to the same page.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
