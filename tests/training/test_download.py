"""Tests of core.training.download against a local HTTP server on 127.0.0.1 serving fixture files: a
good file, a truncated one, a wrong one, a server error, a resumed download, hashes checked on
later uses, and no network use unless a download is asked for."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from core.training.data import load_dataset
from core.training.download import (
    MANIFEST_NAME,
    DownloadError,
    cached_dataset,
    download_dataset,
    downloads_allowed,
)

TIMEOUT = 5.0


def _curves_mat(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"bdata": rng.random((12, 784)), "bdatatest": rng.random((4, 784))})
    return buf.getvalue()


def _idx_gz(n: int) -> bytes:
    images = np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return gzip.compress(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())


class _Server:
    """Serves ``files[name]`` (bytes), honouring ``Range``; ``truncate[name] = k`` sends the
    full Content-Length but only ``k`` bytes, once; ``status[name]`` answers with that code."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = TIMEOUT

            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append((name, self.headers.get("Range")))
                if name in server.status:
                    self.send_error(server.status[name])
                    return
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes=") and ranged.endswith("-"):
                    start = int(ranged[6:-1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut = server.truncate.pop(name, None)
                self.wfile.write(body[start:cut] if cut is not None else body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(TIMEOUT)


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def _get(server: _Server, cache: Path, name: str = "curves", progress=None) -> Path:
    return download_dataset(
        name, cache_dir=cache, base_url=server.url, progress=progress, timeout=TIMEOUT
    )


def test_good_download_is_checked_recorded_and_not_repeated(server: _Server, tmp_path: Path):
    body = _curves_mat()
    server.files["digs3pts_1.mat"] = body
    calls: list[tuple[str, int, int | None]] = []
    path = _get(server, tmp_path, progress=lambda *a: calls.append(a))
    assert path == tmp_path / "curves" / "digs3pts_1.mat" and path.read_bytes() == body
    assert calls[-1] == ("digs3pts_1.mat", len(body), len(body))
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    entry = manifest["curves/digs3pts_1.mat"]
    assert entry["sha256"] == hashlib.sha256(body).hexdigest() and entry["bytes"] == len(body)
    assert not list(tmp_path.rglob("*.part"))
    ds = load_dataset("curves", path=path)
    assert (ds.n_train, ds.n_test) == (12, 4) and "original" in ds.label
    assert _get(server, tmp_path) == path and len(server.requests) == 1  # cached: no request
    assert cached_dataset("curves", cache_dir=tmp_path) == path


def _labels_gz(n: int) -> bytes:
    return gzip.compress(struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n)))


def test_mnist_download_gives_the_folder_load_mnist_reads(server: _Server, tmp_path: Path):
    server.files["train-images-idx3-ubyte.gz"] = _idx_gz(6)
    server.files["t10k-images-idx3-ubyte.gz"] = _idx_gz(3)
    server.files["train-labels-idx1-ubyte.gz"] = _labels_gz(6)
    server.files["t10k-labels-idx1-ubyte.gz"] = _labels_gz(3)
    path = _get(server, tmp_path, "mnist")
    assert path == tmp_path / "mnist"
    ds = load_dataset("mnist", path=path)
    assert (ds.n_train, ds.n_test) == (6, 3)
    assert ds.y_train is not None and ds.y_train.tolist() == [0, 1, 2, 3, 4, 5]


def test_a_label_download_that_is_not_labels_is_refused(server: _Server, tmp_path: Path):
    server.files["train-images-idx3-ubyte.gz"] = _idx_gz(2)
    server.files["t10k-images-idx3-ubyte.gz"] = _idx_gz(2)
    server.files["train-labels-idx1-ubyte.gz"] = _idx_gz(2)  # images where labels belong
    server.files["t10k-labels-idx1-ubyte.gz"] = _labels_gz(2)
    with pytest.raises(DownloadError, match="not IDX labels.*magic number is 2051"):
        _get(server, tmp_path, "mnist")


def test_truncated_download_fails_then_resumes_with_range(server: _Server, tmp_path: Path):
    body = _curves_mat(1)
    server.files["digs3pts_1.mat"] = body
    server.truncate["digs3pts_1.mat"] = len(body) // 3
    with pytest.raises(DownloadError, match="resume") as err:
        _get(server, tmp_path)
    assert "\n" not in str(err.value)
    part = tmp_path / "curves" / "digs3pts_1.mat.part"
    assert part.stat().st_size == len(body) // 3
    assert not (tmp_path / "curves" / "digs3pts_1.mat").exists()
    path = _get(server, tmp_path)
    assert server.requests[-1] == ("digs3pts_1.mat", f"bytes={len(body) // 3}-")
    assert path.read_bytes() == body and not part.exists()
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["curves/digs3pts_1.mat"]["sha256"] == hashlib.sha256(body).hexdigest()


def test_wrong_file_is_refused_and_not_kept(server: _Server, tmp_path: Path):
    server.files["digs3pts_1.mat"] = b"<html><body>Moved</body></html>"
    with pytest.raises(DownloadError, match="not a MATLAB v5 file"):
        _get(server, tmp_path)
    server.files["train-images-idx3-ubyte.gz"] = gzip.compress(b"not idx at all, no")
    server.files["t10k-images-idx3-ubyte.gz"] = _idx_gz(2)
    with pytest.raises(DownloadError, match="not IDX images"):
        _get(server, tmp_path, "mnist")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing kept, no manifest


def test_server_error_is_one_line_and_leaves_nothing(server: _Server, tmp_path: Path):
    server.status["newfaces_rot_single.mat"] = 500
    with pytest.raises(DownloadError, match="HTTP 500") as err:
        _get(server, tmp_path, "faces")
    assert server.url in str(err.value) and "\n" not in str(err.value)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_hash_is_checked_on_later_uses(server: _Server, tmp_path: Path):
    server.files["digs3pts_1.mat"] = _curves_mat(2)
    path = _get(server, tmp_path)
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")  # changed on disk
    with pytest.raises(DownloadError, match="SHA-256"):
        cached_dataset("curves", cache_dir=tmp_path)
    with pytest.raises(DownloadError, match="SHA-256"):
        _get(server, tmp_path)
    # the source changed: the new download is refused and not put in place
    path.unlink()
    server.files["digs3pts_1.mat"] = _curves_mat(3)
    with pytest.raises(DownloadError, match="differs"):
        _get(server, tmp_path)
    assert not path.exists() and not list(tmp_path.rglob("*.part"))


def test_nothing_touches_the_network_unless_asked(tmp_path: Path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert cached_dataset("mnist", cache_dir=tmp_path) is None
    assert cached_dataset("digits", cache_dir=tmp_path) is None
    with pytest.raises(DownloadError, match="no files to download"):
        download_dataset("digits", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="--data-path"):
        load_dataset("mnist")
    monkeypatch.delenv("KRONOSCOPE_ALLOW_DOWNLOADS", raising=False)
    assert not downloads_allowed()
    monkeypatch.setenv("KRONOSCOPE_ALLOW_DOWNLOADS", "1")
    assert downloads_allowed()
