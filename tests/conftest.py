"""Shared fixtures of the test suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def app_env(monkeypatch):
    """The app in AppTest as in a fresh server (whose first run is in Streamlit's legacy
    pages/ mode: pages.ui.navigation handles it), with its numerics in this process."""
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
            group.join(300)  # until it ends: a leftover run would hold a slot of the next test
