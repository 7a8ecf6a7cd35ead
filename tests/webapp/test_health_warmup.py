"""A fresh server answers its health endpoint 503 "warming up" until it has opened Home and
the explorer's default view itself (serve.py, issue 20), so a proxy or Docker health check
sends no visitor to a cold server; then 200 "ok". A real ``python serve.py`` on 127.0.0.1, at
the root and under a base URL path (``--server.baseUrlPath``, where the warm-up must find the
server too)."""

from __future__ import annotations

import http.client
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from load_bench import Server, free_port  # noqa: E402

import serve  # noqa: E402
from serve import WARMING_UP  # noqa: E402


def _health(server: Server) -> tuple[int, str] | None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
    try:
        conn.request(
            "GET", server.url.removeprefix(f"http://127.0.0.1:{server.port}") + "/_stcore/health"
        )
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@pytest.mark.parametrize("base_path", ["", "kb"], ids=["root", "base-path"])
def test_health_answers_503_until_the_warm_up_finished(tmp_path, base_path):
    server = Server(free_port(), tmp_path, base_path=base_path)
    server.start()
    answers: list[tuple[int, str]] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.proc.poll() is None:
            answer = _health(server)
            if answer is not None:
                if answer[0] == 200:
                    log = server.log_path.read_text(errors="replace")
                    break
                answers.append(answer)
            time.sleep(0.05)
        else:
            raise AssertionError(f"no 200 from the health endpoint; {server.log_tail()}")
    finally:
        server.stop()
    assert answer == (200, "ok")
    assert answers and set(answers) == {(503, WARMING_UP)}  # held, and only by the warm-up
    assert "kronoscope: prewarmed in" in log  # the 200 came after the warm-up finished


def test_the_warm_up_looks_where_streamlit_listens(monkeypatch):
    """Flags first, then Streamlit's environment variables (the image sets those), then the
    config's defaults."""
    for name in ("STREAMLIT_SERVER_PORT", "STREAMLIT_SERVER_BASE_URL_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert serve._loopback([]) == "127.0.0.1:8501"
    monkeypatch.setenv("STREAMLIT_SERVER_PORT", "8555")
    monkeypatch.setenv("STREAMLIT_SERVER_BASE_URL_PATH", "/kb/")
    assert serve._loopback([]) == "127.0.0.1:8555/kb"
    flags = ["--server.port", "9000", "--server.baseUrlPath=a/b"]
    assert serve._loopback(flags) == "127.0.0.1:9000/a/b"
