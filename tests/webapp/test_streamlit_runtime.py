"""pages/ui/streamlit_runtime.py is the one module that reaches into Streamlit's internals: these
tests fail, naming the missing piece, when a Streamlit upgrade changes one of them, and when any
other module of the app imports ``streamlit.runtime`` itself."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "pages" / "ui" / "streamlit_runtime.py"


def _app_sources() -> list[Path]:
    return [*sorted((ROOT / "core").rglob("*.py")), *sorted((ROOT / "pages").rglob("*.py")),
            ROOT / "app.py", ROOT / "serve.py"]  # fmt: skip


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_only_the_adapter_imports_streamlit_runtime():
    for path in _app_sources():
        if path == ADAPTER:
            continue
        internal = sorted(m for m in _imported_modules(path) if m.startswith("streamlit.runtime"))
        assert not internal, (
            f"{path.relative_to(ROOT)} imports {internal}: use pages/ui/streamlit_runtime.py"
        )


def test_the_runtime_module_functions_exist():
    from streamlit import runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    for name in ("exists", "get_instance"):
        assert callable(getattr(runtime, name, None)), f"streamlit.runtime.{name} is gone"
    assert callable(get_script_run_ctx)
    assert not runtime.exists()  # no server in this test process: the adapter's AppTest branch


def test_the_script_context_names_its_session():
    from streamlit.runtime.scriptrunner import ScriptRunContext

    fields = {f.name for f in dataclasses.fields(ScriptRunContext)}
    assert "session_id" in fields, "ScriptRunContext.session_id is gone"


def test_the_runtime_answers_for_sessions_and_holds_the_upload_store():
    from streamlit.runtime import Runtime

    for name, params in (("is_active_session", ["self", "session_id"]),
                         ("get_client", ["self", "session_id"])):  # fmt: skip
        method = getattr(Runtime, name, None)
        assert callable(method), f"Runtime.{name} is gone"
        assert list(inspect.signature(method).parameters) == params, f"Runtime.{name} changed"
    store = inspect.getattr_static(Runtime, "uploaded_file_mgr", None)
    assert isinstance(store, property), "Runtime.uploaded_file_mgr is gone"


def test_the_health_answer_is_an_awaitable_property_of_the_runtime():
    """What :func:`hold_health_until` wraps (the server's 503-until-warm health check)."""
    from streamlit.runtime import Runtime

    answer = inspect.getattr_static(Runtime, "is_ready_for_browser_connection", None)
    assert isinstance(answer, property), "Runtime.is_ready_for_browser_connection is gone"
    assert inspect.iscoroutinefunction(answer.fget), "the health answer is no longer awaited"


def test_a_client_context_carries_cookies_headers_and_address():
    from streamlit.runtime.session_manager import ClientContext, SessionClient

    for name in ("cookies", "headers", "remote_ip"):
        assert hasattr(ClientContext, name), f"ClientContext.{name} is gone"
    assert hasattr(SessionClient, "client_context"), "SessionClient.client_context is gone"


def test_the_upload_store_keeps_records_by_session_and_file():
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.uploaded_file_manager import UploadedFileRec

    store = MemoryUploadedFileManager("/_stcore/upload_file")
    params = list(inspect.signature(store.add_file).parameters)
    assert params == ["session_id", "file"], f"add_file's parameters are now {params}"
    store.add_file(session_id="s", file=UploadedFileRec("f1", "a.npz", "x", b"12345"))
    record = store.file_storage["s"]["f1"]
    assert record.file_id == "f1" and len(record.data) == 5
    store.remove_session_files("s")
    assert not store.file_storage.get("s")


def test_the_upload_route_turns_the_refusal_into_413():
    from starlette.exceptions import HTTPException

    from pages.ui.streamlit_runtime import refuse_upload

    with pytest.raises(HTTPException) as err:
        refuse_upload("no room")
    assert err.value.status_code == 413 and err.value.detail == "no room"


def test_without_a_server_the_adapter_answers_as_apptest_needs():
    from pages.ui import streamlit_runtime as rt

    assert rt.script_session_id() is None and not rt.server_running()
    assert rt.session_active("anyone") and rt.client_request("anyone") is None
    assert rt.stored_upload_sizes() == {}


def test_the_static_files_factory_and_the_front_ends_index_are_as_wrapped():
    """What :func:`serve_pages_at_their_base` wraps and edits (shared links skip the front
    end's probe of ``/<page>/_stcore/…``; tests/webapp/test_page_base.py checks the effect)."""
    from streamlit import file_util
    from streamlit.web.server.starlette import starlette_static_routes as routes

    factory = getattr(routes, "create_streamlit_static_handler", None)
    assert callable(factory), "starlette_static_routes.create_streamlit_static_handler is gone"
    assert list(inspect.signature(factory).parameters) == ["directory", "base_url"]
    source = inspect.getsource(routes.create_streamlit_static_assets_routes)
    assert "create_streamlit_static_handler(" in source, "the factory is no longer called there"
    index = Path(file_util.get_static_dir(), "index.html").read_text(encoding="utf-8")
    assert index.count('<script type="module"') == 1, "index.html's module script changed"
    bundle = Path(file_util.get_static_dir(), "static", "js")
    assert any(
        "window.__streamlit" in p.read_text(errors="replace")
        and "BACKEND_BASE_URL" in p.read_text(errors="replace")
        for p in bundle.glob("index.*.js")
    ), "the front end no longer reads window.__streamlit.BACKEND_BASE_URL"
