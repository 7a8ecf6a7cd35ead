"""A hostile visitor of a public instance (issue 9): the probes, and the safe behaviour.

Against the app itself (AppTest, as a shared link or a visitor's widget would drive it) and
against the upload store. The real-browser probes (no Deploy button or developer menu, no
request to another host) live in tests/webapp/test_browser.py and tests/webapp/test_docker_smoke.py.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest

from core.server.uploads import UploadStore
from core.training.datasets import DatasetError
from tests.webapp.test_app import app, errors, unescaped

pytestmark = pytest.mark.usefixtures("app_env")

INJECTION = "**Session expired** [click here](http://evil.example/login) ![x](http://e/x.png)"


def page_text(at) -> str:
    """Everything the page shows, as raw Markdown bodies (escapes kept)."""
    parts = [e.value for kind in ("error", "warning", "info", "caption", "markdown")
             for e in getattr(at, kind)]  # fmt: skip
    return "\n".join(parts)


def assert_safe(at, given: str = "") -> None:
    """No exception, and nothing about the server: paths, internals, settings' names (the
    visitor's own value ``given`` may be quoted back in a notice)."""
    assert not at.exception, [e.value for e in at.exception]
    text = unescaped(page_text(at)).replace(given, "<given>") if given else unescaped(page_text(at))
    for leak in ("/etc", "/tmp", "/root", "Traceback", "allow_pickle", "KRONOSCOPE_", "pickled"):
        assert leak not in text, (leak, text)


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    x = np.random.default_rng(0).random((12, 625)).astype(np.float32)
    np.savez(folder / "faces-small.npz", x_train=x[:8], x_test=x[8:])
    (folder / "junk.npz").write_bytes(b"not a zip archive at all")
    outside = tmp_path / "secret.npz"
    np.savez(outside, x_train=x[:8], x_test=x[8:])
    (folder / "escape.npz").symlink_to(outside)
    monkeypatch.setenv("KRONOSCOPE_DATA_DIR", str(folder))
    return folder


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc", "/nonexistent", INJECTION])
def test_path_parameter_is_ignored_without_a_data_directory(path):
    at = app("explorer", dataset="faces", path=path)
    assert_safe(at, path)
    notices = [unescaped(w.value) for w in at.warning]
    assert any("URL parameter path" in n and "reads no files named in links" in n for n in notices)
    assert not at.text_input, "no path box on a server without a data directory"
    assert any("upload a file" in i.value for i in at.info)


def test_visitor_text_is_never_markdown():
    at = app("explorer", dataset="faces", path=INJECTION)
    assert_safe(at, INJECTION)
    raw = "\n".join(w.value for w in at.warning)
    # every punctuation character of the visitor's text is escaped: no link, image or emphasis
    assert "[click here](" not in raw and "**Session" not in raw
    assert "\\*\\*Session expired\\*\\* \\[click here\\]\\(http\\:" in raw, raw
    assert INJECTION[:50] in unescaped(raw)  # shown, as plain text (bounded in length)
    at = app("explorer", dataset="digits", seed="<img src=x onerror=alert(1)>")
    raw = "\n".join(w.value for w in at.warning)
    assert "\\<img src\\=x" in raw and not re.search(r"(?<!\\)<", raw), raw


def test_host_directory_offers_only_its_dataset_files(data_dir):
    at = app("explorer", dataset="faces")
    assert_safe(at)
    options = at.selectbox(key="path").options
    assert options == ["(none)", "faces-small.npz", "junk.npz"]  # the escaping link is not
    assert at.selectbox(key="path").value == "faces-small.npz"


@pytest.mark.parametrize("path", ["../secret.npz", "/etc/passwd", "escape.npz", "nope.npz"])
def test_names_outside_the_list_are_refused_with_a_notice(data_dir, path):
    at = app("explorer", dataset="faces", path=path)
    assert_safe(at, path)
    notices = " ".join(unescaped(w.value) for w in at.warning)
    assert f"URL parameter path: the value {path} is not valid here" in notices


def test_a_bad_file_gets_the_same_message_as_any_bad_file(data_dir):
    at = app("explorer", dataset="faces", path="junk.npz")
    assert_safe(at)
    (message,) = errors(at)
    assert "junk.npz is not a readable FACES dataset: expected" in message
    assert str(data_dir) not in message and len(message) < 500


def test_uploads_are_bounded_per_visitor_and_server(tmp_path):
    alive = {"a1", "a2", "b", "c", "d"}
    root = tmp_path / "uploads"
    (root / "old" / "s").mkdir(parents=True)
    (root / "old" / "s" / "left.npz").write_bytes(b"x" * 10)
    store = UploadStore(root, per_visitor_mb=1, total_mb=2, session_alive=alive.__contains__)
    assert not (root / "old").exists(), "an earlier server's uploads are removed at start"
    path, digest = store.save("a1", b"1" * 600_000, ".npz", visitor="A")
    assert path.parent == root / "A" / "a1" and path.name == f"{digest}.npz"
    assert store.save("a1", b"1" * 600_000, ".npz", visitor="A")[0] == path  # stored once
    # a second tab of the same browser shares the visitor's quota
    with pytest.raises(DatasetError, match="limit per visitor") as err:
        store.save("a2", b"2" * 600_000, ".npz", visitor="A")
    assert str(root) not in str(err.value) and "KRONOSCOPE_" not in str(err.value)
    store.save("b", b"3" * 900_000, ".npz", visitor="B")
    store.save("c", b"4" * 500_000, ".npz", visitor="C")
    with pytest.raises(DatasetError, match="space for uploads is full"):
        store.save("d", b"5" * 200_000, ".npz", visitor="D")
    alive.discard("a1")
    store.sweep()
    assert not (root / "A").exists() and (root / "B" / "b").exists()
    assert not list(root.rglob("*.part"))


def test_shared_links_keep_their_parameter_names():
    """URL names are a public interface: old links open the same view."""
    link = dict(dataset="digits", preset="digits", seed="3", model="init", m="64", slow="0",
                layer="encoder.linear2", methods="kfac,kpsvd", tab="spectra")  # fmt: skip
    at = app("explorer", **link)
    assert not at.warning and not at.exception
    assert at.selectbox(key="explorer.layer").value == "encoder.linear2"
    assert at.multiselect(key="explorer.methods").value == ["kfac", "kpsvd"]
    assert at.selectbox(key="m").value == 64
    assert at.number_input(key="seed").value == 3


def test_upload_folder_removed_files_leave_no_trace_in_time(tmp_path):
    store = UploadStore(tmp_path / "u", per_visitor_mb=1, total_mb=1)
    t0 = time.monotonic()
    store.save("s", os.urandom(1000), ".mat")
    assert time.monotonic() - t0 < 5
    assert all(p.suffix in (".mat", ".npz") for p in (tmp_path / "u").rglob("*") if p.is_file())


def test_download_button_only_when_the_host_allows(tmp_path, monkeypatch):
    """No download button by default; a button only with the host's permission (issue 10;
    the download itself is tested against a loopback server in test_download.py)."""
    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KRONOSCOPE_ALLOW_DOWNLOADS", raising=False)
    at = app("explorer", dataset="faces")
    assert_safe(at)
    assert not [b for b in at.button if "Download" in b.label]
    monkeypatch.setenv("KRONOSCOPE_ALLOW_DOWNLOADS", "1")
    at = app("explorer", dataset="faces")
    assert [b.label for b in at.button if "Download" in b.label] == [
        "Download the original FACES files"
    ]
