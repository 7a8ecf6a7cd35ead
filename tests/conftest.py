"""Shared fixtures of the test suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def app_env(monkeypatch):
    """The app in AppTest as in a fresh server, with its numerics in this process."""
    # AppTest forgets, before every run, that app.py uses st.navigation and sees the pages/
    # folder as a legacy multipage app; a real server is in that state only until its first
    # st.navigation call (pages.ui.ensure_navigation, tested in the browser test). Start
    # every AppTest run in the server's steady state, so that widget events are not lost to
    # ensure_navigation's rerun.
    from streamlit.runtime.pages_manager import PagesManager

    original_init = PagesManager.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)
    # app.py sets torch's thread count; keep this test process's setting unchanged.
    monkeypatch.setenv("KRONOSCOPE_TORCH_THREADS", str(torch.get_num_threads()))
    monkeypatch.delenv("KRONOSCOPE_MAX_CONCURRENT_RUNS", raising=False)
    monkeypatch.delenv("KRONOSCOPE_MAX_LAYER_PARAMS", raising=False)
    monkeypatch.delenv("KRONOSCOPE_DATA_DIR", raising=False)
    # numerics in this process: the worker processes are tested in test_workers.py and, in a
    # real server, by test_load_smoke.py and test_browser.py
    monkeypatch.setenv("KRONOSCOPE_WORKERS", "0")
    yield
    from pages.ui import run_registry

    registry = run_registry()
    for sid in list(registry._groups):
        for group in registry.groups(sid):
            group.stop()
            group.join(30)
