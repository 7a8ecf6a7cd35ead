"""Stated answers for training's input and output (issue 22): the test loss over test sets that
do not split evenly into evaluation chunks, a data directory's sibling that shares its name's
prefix, and a resumed download from a server that ignores (or misanswers) the range request.

Every test compares with a value computed here independently (a float64 NLL, the exact bytes
served) or an escape that must be refused; the HTTP server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import copy
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn.functional as F

from core.training.datafiles import list_data_files, resolve_in_dir
from core.training.datasets import Dataset, DatasetError
from core.training.download import DownloadError, download_dataset
from core.training.models import Autoencoder
from core.training.optim import OptimizerConfig
from core.training.runner import RunConfig, TrainingRun

# -- (c) the test loss is the mean over samples, whatever the chunking ---------------------------


def _nll64(model: Autoencoder, x: torch.Tensor) -> float:
    """Mean over samples of the per-sample Bernoulli NLL (summed over pixels), in float64."""
    m = copy.deepcopy(model).to(torch.float64)
    with torch.no_grad():
        logits = m(x.to(torch.float64))
        per_sample = F.binary_cross_entropy_with_logits(
            logits, x.to(torch.float64), reduction="none"
        ).sum(1)
    return float(per_sample.mean())


@pytest.mark.parametrize("n_test", [2048 + 300, 3 * 2048 + 1])
def test_test_loss_is_the_sample_mean_over_uneven_chunks(n_test):
    """A test set of 2348 (or 6145) rows is evaluated in chunks of unequal size; the recorded
    test loss is the plain mean over all rows, not the mean of the chunks' means. The last
    chunk's rows are made very different from the rest, so any weighting by chunk shows."""
    gen = torch.Generator().manual_seed(0)
    x_test = torch.rand(n_test, 16, generator=gen) * 0.1  # near 0: a small NLL
    x_test[-(n_test % 2048 or 1) :] = 0.95  # the short last chunk: a large NLL
    x_train = torch.rand(32, 16, generator=gen)
    ds = Dataset("digits", x_train, x_test, (4, 4), "bce")
    model = Autoencoder([16, 4, 2], "bce", seed=0)
    cfg = RunConfig("digits", OptimizerConfig("sgd", lr=0.01), steps=1, batch_size=32, eval_every=1)
    run = TrainingRun(cfg, dataset=ds, model=model)
    run.run()
    assert run.status == "finished", run.message
    got = run.records()[0]["test_loss"]  # step 0: the initial parameters (the caller's model)
    want = _nll64(model, x_test)
    assert got == pytest.approx(want, rel=1e-5)


# -- (d) a sibling directory that shares the data directory's prefix ---------------------------


@pytest.fixture
def data_and_sibling(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    sibling = tmp_path / "data2"  # "data2" starts with "data"
    (root / "inner").mkdir(parents=True)
    sibling.mkdir()
    (root / "inner" / "own.npz").write_bytes(b"x")
    (root / "own.mat").write_bytes(b"x")
    (sibling / "secret.npz").write_bytes(b"x")
    (sibling / "secret.mat").write_bytes(b"x")
    (root / "link.npz").symlink_to(sibling / "secret.npz")
    (root / "link.mat").symlink_to(sibling / "secret.mat")
    (root / "sib").symlink_to(sibling)
    (root / "same").symlink_to(root / "inner")  # inside: allowed
    return root, sibling


def test_a_sibling_sharing_the_prefix_is_outside(data_and_sibling):
    root, _sibling = data_and_sibling
    for name in ("link.npz", "link.mat", "sib/secret.npz", "sib"):
        with pytest.raises(DatasetError, match="outside the data directory"):
            resolve_in_dir(name, root)
    assert resolve_in_dir("same/own.npz", root) == (root / "inner" / "own.npz").resolve()
    assert resolve_in_dir("own.mat", root) == (root / "own.mat").resolve()
    assert resolve_in_dir(".", root) == root.resolve()


def test_listing_skips_links_into_a_sibling(data_and_sibling):
    root, _sibling = data_and_sibling
    assert list_data_files("curves", root) == ["own.mat"]
    assert list_data_files("faces", root) == ["own.mat"]


def test_a_data_directory_given_with_a_trailing_slash(data_and_sibling):
    root, _sibling = data_and_sibling
    with pytest.raises(DatasetError, match="outside"):
        resolve_in_dir("link.npz", str(root) + "/")
    assert resolve_in_dir("own.mat", str(root) + "/") == (root / "own.mat").resolve()


# -- (i) resuming a download when the server does not honour the range -------------------------


def _curves_mat() -> bytes:
    rng = np.random.default_rng(5)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"bdata": rng.random((12, 784)), "bdatatest": rng.random((4, 784))})
    return buf.getvalue()


class _Server:
    """Serves one body. ``mode``: "honour" (206 from the asked offset), "ignore" (200 and the
    whole body, as many servers do), "wrong-offset" (206 from byte 0), "refuse" (416 to any
    range). ``truncate``: send only this many bytes, once (full Content-Length)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.mode = "honour"
        self.truncate: int | None = None
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5.0

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                ranged = self.headers.get("Range")
                server.requests.append(ranged)
                body, start = server.body, 0
                if ranged and server.mode == "refuse":
                    self.send_error(416)
                    return
                if ranged and server.mode in ("honour", "wrong-offset"):
                    start = int(ranged[6:-1]) if server.mode == "honour" else 0
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                cut, server.truncate = server.truncate, None
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
        self.thread.join(5.0)


@pytest.fixture
def body_server() -> Iterator[_Server]:
    s = _Server(_curves_mat())
    yield s
    s.close()


@pytest.mark.parametrize("mode", ["ignore", "wrong-offset", "refuse", "honour"])
def test_resume_gives_exactly_the_served_bytes(body_server: _Server, tmp_path: Path, mode):
    body = body_server.body
    cut = len(body) // 3
    body_server.truncate = cut
    with pytest.raises(DownloadError, match="resume"):
        download_dataset("curves", cache_dir=tmp_path, base_url=body_server.url, timeout=5.0)
    part = tmp_path / "curves" / "digs3pts_1.mat.part"
    assert part.stat().st_size == cut
    body_server.mode = mode
    seen: list[tuple[int, int | None]] = []
    path = download_dataset(
        "curves",
        cache_dir=tmp_path,
        base_url=body_server.url,
        timeout=5.0,
        progress=lambda _name, done, total: seen.append((done, total)),
    )
    assert body_server.requests[1] == f"bytes={cut}-"  # it did ask to resume
    assert path.read_bytes() == body  # never the first third twice
    assert not part.exists()
    assert seen[-1] == (len(body), len(body))  # progress counts the file, not the bytes sent
    if mode == "honour":
        assert len(body_server.requests) == 2 and seen[0][0] > cut  # resumed, not restarted
