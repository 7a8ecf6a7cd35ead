"""Fixtures of the reproduction tests."""

from __future__ import annotations

import pytest

from tests.paper.reproductions import make_outputs


@pytest.fixture(scope="session")
def outputs(tmp_path_factory):
    """One training and one quality reproduction (made once: they are the slow part)."""
    base = tmp_path_factory.mktemp("repro")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KRONOSCOPE_CACHE_DIR", str(base / "cache"))
        return make_outputs(base)
