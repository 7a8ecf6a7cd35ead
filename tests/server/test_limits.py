"""Tests of core.server.limits and the server's limits read from core.settings: values from
the environment at every call, bad values named, messages that never name a setting."""

from __future__ import annotations

import pytest

from core.server.limits import LimitError, check_layer_size
from core.settings import (
    SETTINGS,
    max_concurrent_runs,
    max_layer_params,
    runs_per_session,
    torch_threads,
    view_budget_s,
    worker_count,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    names = ("MAX_CONCURRENT_RUNS", "MAX_LAYER_PARAMS", "RUNS_PER_SESSION", "TORCH_THREADS",
             "WORKERS", "VIEW_BUDGET_S")  # fmt: skip
    for name in names:
        monkeypatch.delenv(f"KRONOSCOPE_{name}", raising=False)


def test_env_limits(monkeypatch):
    assert max_concurrent_runs() == 4 and max_layer_params() == 4_000_000
    assert runs_per_session() == 2
    monkeypatch.setenv("KRONOSCOPE_MAX_CONCURRENT_RUNS", "6")
    monkeypatch.setenv("KRONOSCOPE_MAX_LAYER_PARAMS", "1_000")
    assert max_concurrent_runs() == 6 and max_layer_params() == 1000 and runs_per_session() == 3
    monkeypatch.setenv("KRONOSCOPE_RUNS_PER_SESSION", "1")
    assert runs_per_session() == 1
    check_layer_size(1000)
    with pytest.raises(LimitError, match="1,001 weights, above this server's limit of 1,000"):
        check_layer_size(1001)
    monkeypatch.setenv("KRONOSCOPE_MAX_CONCURRENT_RUNS", "four")
    with pytest.raises(ValueError, match="must be an integer"):
        max_concurrent_runs()
    monkeypatch.setenv("KRONOSCOPE_TORCH_THREADS", "0")
    with pytest.raises(ValueError, match="≥ 1"):
        torch_threads()


def test_numerics_settings(monkeypatch):
    cpus = SETTINGS["KRONOSCOPE_WORKERS"].read(None)  # the default: the CPUs available
    assert view_budget_s() == 60.0 and worker_count() == cpus >= 1
    monkeypatch.setenv("KRONOSCOPE_WORKERS", "0")
    monkeypatch.setenv("KRONOSCOPE_VIEW_BUDGET_S", "2.5")
    assert worker_count() == 0 and view_budget_s() == 2.5
    monkeypatch.setenv("KRONOSCOPE_VIEW_BUDGET_S", "0.1")
    with pytest.raises(ValueError, match="≥ 1"):
        view_budget_s()
    monkeypatch.setenv("KRONOSCOPE_WORKERS", "-1")
    with pytest.raises(ValueError, match="≥ 0"):
        worker_count()


def test_the_layer_limit_message_never_names_a_setting():
    with pytest.raises(LimitError) as err:
        check_layer_size(10**9)
    assert "KRONOSCOPE" not in str(err.value) and "4,000,000" in str(err.value)
