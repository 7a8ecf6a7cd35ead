"""Issue 9's sweep: the explorer over a fixed-seed sample of every view a visitor can reach
without a file (tests/views/explorer_grid.py); any exception or error box fails. The whole grid:
``bench/explorer_sweep.py``."""

from __future__ import annotations

import pytest

from tests.views.explorer_grid import sample
from tests.webapp.test_app import app, errors

pytestmark = pytest.mark.usefixtures("app_env")

SAMPLE = sample(16, seed=2026, max_layer_params=50_000)


@pytest.mark.parametrize("view", SAMPLE, ids=lambda v: "-".join(v.values()))
def test_explorer_view_renders_cleanly(view):
    at = app("explorer", **view)
    assert not at.exception, [e.value for e in at.exception]
    assert not errors(at), errors(at)
    assert not at.warning, [w.value for w in at.warning]  # every URL value was valid
    assert any("Server time for this view" in c.value for c in at.caption)
