"""The app shell: every script run goes through :func:`run_app` and its ``st.navigation``.

Streamlit treats a folder named ``pages/`` next to the main script as a legacy multipage app
until the process's first ``st.navigation`` call. On a fresh server whose first request
deep-links to a page (``/explorer?...``), and in every AppTest run, Streamlit then executes
that page's file alone, without app.py. Each page therefore starts with
:func:`ensure_navigation`: when the run did not come through :func:`run_app`, it runs the app
here — its ``st.navigation`` (the public API) leaves the legacy mode and routes to this same
page, whose URL path is its file name — and ends the outer run with ``st.stop()``. Only public
Streamlit API is used; no private state is written.
"""

from __future__ import annotations

import threading

import streamlit as st
import torch

from core import torch_threads

from .controls import device_label
from .errors import friendly_errors
from .icon import page_icon
from .runs import limits_caption
from .services import services

__all__ = ["PAGES", "PAGE_PATHS", "ensure_navigation", "run_app"]

_shell = threading.local()  # set while this script thread runs inside run_app

# (script, title, icon, URL path) of every page, Home first ("" : the app's root). The URL
# paths are part of every shared link: keep them.
PAGES = (
    ("pages/home.py", "Home", ":material/home:", ""),
    ("pages/explorer.py", "Fisher explorer", ":material/grid_on:", "explorer"),
    ("pages/training.py", "Approximation over training", ":material/show_chart:", "training"),
    ("pages/race.py", "Optimizer race", ":material/sports_score:", "race"),
    ("pages/reports.py", "Paper reproductions", ":material/fact_check:", "reports"),
    ("pages/network.py", "Network Fisher", ":material/hub:", "network"),
    ("pages/learn.py", "Learn", ":material/functions:", "learn"),
)
PAGE_PATHS = tuple(path for *_, path in PAGES if path)


def ensure_navigation() -> None:
    """Make sure this page runs inside :func:`run_app` (see the module docstring)."""
    if not getattr(_shell, "active", False):
        run_app()
        st.stop()  # the page was drawn by run_app's navigation; end the outer run


def run_app() -> None:
    """Page set-up, the navigation, the sidebar's server lines, and the chosen page."""
    _shell.active = True
    try:
        _run()
    finally:
        _shell.active = False


def _run() -> None:
    torch.set_num_threads(
        torch_threads()
    )  # one intra-op thread per task: see core.settings.torch_threads
    st.set_page_config(page_title="Kronoscope", page_icon=page_icon(), layout="wide")
    st.set_option("client.showErrorDetails", "type")  # never a traceback on the page

    pages = [
        st.Page(script, title=title, icon=icon, url_path=path or None, default=not path)
        for script, title, icon, path in PAGES
    ]
    page = st.navigation(pages)
    services()  # the shared services, made with the server's first session (or at start)
    with st.sidebar:
        st.caption(f"Compute device: **{device_label()}**")
        st.caption(limits_caption())
    with friendly_errors(page.title):
        page.run()
