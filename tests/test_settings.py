"""core/settings.py: every host setting read in one place, typed, documented once, and a bad
value stops the server at start with one line naming the variable (issue 17)."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import settings

ROOT = Path(__file__).resolve().parents[1]
TEST_ONLY = {  # steer the test suite and CI, read by the tests themselves
    "KRONOSCOPE_REQUIRE_BROWSER",
    "KRONOSCOPE_BASE_URL",
    "KRONOSCOPE_SCREENSHOT_DIR",
    "KRONOSCOPE_REPLICAS",
    "KRONOSCOPE_PROXY_CONTAINER",
    "KRONOSCOPE_CPUS",
    "KRONOSCOPE_PORT",
}


def _app_sources() -> list[Path]:
    return [*sorted((ROOT / "core").rglob("*.py")), *sorted((ROOT / "pages").rglob("*.py")),
            ROOT / "app.py", ROOT / "serve.py"]  # fmt: skip


def test_only_the_settings_module_reads_the_environment():
    """No other module of the app calls os.environ.get/os.getenv or indexes os.environ."""
    for path in _app_sources():
        if path == ROOT / "core" / "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = ast.unparse(node) if isinstance(node, ast.Call | ast.Subscript) else ""
            assert not re.match(r"os\.(environ\.get|getenv)\(|os\.environ\[", text), (path, text)


def test_streamlit_variables_are_read_here_too_and_only_those(monkeypatch):
    monkeypatch.setenv("STREAMLIT_SERVER_PORT", "8555")
    monkeypatch.setenv("STREAMLIT_SERVER_BASE_URL_PATH", "")
    assert settings.streamlit_variable("STREAMLIT_SERVER_PORT") == "8555"
    assert settings.streamlit_variable("STREAMLIT_SERVER_BASE_URL_PATH") is None  # empty: unset
    with pytest.raises(ValueError, match="not a Streamlit variable"):
        settings.streamlit_variable("KRONOSCOPE_WORKERS")


def test_every_kronoscope_name_in_the_app_is_a_setting():
    names = set()
    for path in _app_sources():
        names |= set(re.findall(r"KRONOSCOPE_[A-Z0-9_]+", path.read_text()))
    unknown = names - set(settings.SETTINGS) - TEST_ONLY
    assert not unknown, f"read or named but not in core/settings.py: {sorted(unknown)}"


def test_docker_md_holds_the_generated_table():
    assert settings.markdown_table() in (ROOT / "DOCKER.md").read_text()


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("KRONOSCOPE_WORKERS", "3", 3),
        ("KRONOSCOPE_WORKERS", "1_0", 10),
        ("KRONOSCOPE_VIEW_BUDGET_S", "2.5", 2.5),
        ("KRONOSCOPE_ALLOW_DOWNLOADS", "yes", True),
        ("KRONOSCOPE_ALLOW_DOWNLOADS", "0", False),
        ("KRONOSCOPE_ENGINE_DTYPE", "float32", "float32"),
        ("KRONOSCOPE_DATA_DIR", " ", None),
        ("KRONOSCOPE_RUN_MAX_STEPS", "", 5000),
    ],
)
def test_values_are_typed(monkeypatch, name, raw, expected):
    monkeypatch.setenv(name, raw)
    assert settings.get(name) == expected


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("KRONOSCOPE_WORKERS", "many", "must be an integer"),
        ("KRONOSCOPE_WORKERS", "-1", "must be ≥ 0"),
        ("KRONOSCOPE_VIEW_BUDGET_S", "inf", "must be a finite number"),
        ("KRONOSCOPE_VIEW_BUDGET_S", "0.5", "must be ≥ 1"),
        ("KRONOSCOPE_ALLOW_DOWNLOADS", "maybe", "must be 1/true"),
        ("KRONOSCOPE_ENGINE_DTYPE", "half", "float32 or float64"),
        ("KRONOSCOPE_DOWNLOAD_BASE_URL", "ftp://x", "http:// or https://"),
        ("KRONOSCOPE_MAX_CONCURRENT_RUNS", "1e309", "must be an integer"),
    ],
)
def test_a_bad_value_names_the_variable(monkeypatch, name, raw, says):
    monkeypatch.setenv(name, raw)
    with pytest.raises(settings.SettingError) as err:
        settings.get(name)
    assert str(err.value).startswith(name) and says in str(err.value) and "\n" not in str(err.value)
    assert settings.check_all() == [str(err.value)]


def test_the_quota_per_visitor_follows_the_run_limit(monkeypatch):
    monkeypatch.delenv("KRONOSCOPE_RUNS_PER_SESSION", raising=False)
    monkeypatch.setenv("KRONOSCOPE_MAX_CONCURRENT_RUNS", "6")
    assert settings.get("KRONOSCOPE_RUNS_PER_SESSION") == 3
    monkeypatch.setenv("KRONOSCOPE_MAX_CONCURRENT_RUNS", "0")
    assert settings.get("KRONOSCOPE_RUNS_PER_SESSION") == 1


def test_a_bad_value_stops_the_server_at_start():
    env = {"PATH": "/usr/bin:/bin", "KRONOSCOPE_MAX_LAYER_PARAMS": "lots"}
    out = subprocess.run([sys.executable, "serve.py"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "kronoscope: KRONOSCOPE_MAX_LAYER_PARAMS must be an integer, got 'lots'"
    ]


def test_the_app_uses_no_streamlit_cache():
    """Any websocket client may send ``clear_cache``, which empties every st.cache_data and
    st.cache_resource of the process: nothing of the app may live there (core/server/services.py
    holds what is shared)."""
    for path in _app_sources():
        used = re.search(r"st\.cache_(resource|data)\b\s*[(.]|@st\.cache", path.read_text())
        assert not used, path


def test_host_settings_has_one_typed_field_per_setting(monkeypatch):
    """HostSettings and SETTINGS list the same variables; read() is every get() at once, and a
    snapshot is frozen and hashable."""
    names = [f.name for f in dataclasses.fields(settings.HostSettings)]
    assert names == [settings.field_name(n) for n in settings.SETTINGS]
    monkeypatch.setenv("KRONOSCOPE_VIEW_BUDGET_S", "2.5")
    monkeypatch.setenv("KRONOSCOPE_MAX_CONCURRENT_RUNS", "6")
    monkeypatch.delenv("KRONOSCOPE_RUNS_PER_SESSION", raising=False)
    host = settings.HostSettings.read()
    for name in settings.SETTINGS:
        assert getattr(host, settings.field_name(name)) == settings.get(name), name
    assert host.view_budget_s == 2.5 and host.runs_per_session == 3
    assert hash(host) == hash(settings.HostSettings.read())
    with pytest.raises(dataclasses.FrozenInstanceError):
        host.workers = 9  # type: ignore[misc]


def test_host_settings_refuse_a_bad_value_with_its_line(monkeypatch):
    monkeypatch.setenv("KRONOSCOPE_WORKERS", "many")
    with pytest.raises(settings.SettingError) as err:
        settings.HostSettings.read()
    assert str(err.value) == "KRONOSCOPE_WORKERS must be an integer, got 'many'"
