"""The explorer's units of work, as plain functions of picklable values.

The web server runs these in worker processes (:mod:`core.server.workers`): arguments and results
cross the process boundary by value, so each function takes everything it needs (the model,
the batch) and returns a fresh object. Each is one step of :mod:`core.views.explorer`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.fisher import LayerFisher
from ..training.datafiles import load_visitor_dataset
from ..training.datasets import Dataset
from ..views.explorer import capture_layer

__all__ = ["layer_fisher", "visitor_dataset"]


def layer_fisher(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    loss: str,
    fisher: str,
    seed: int,
    targets: torch.Tensor | None = None,
) -> LayerFisher:
    """The exact Fisher block of ``layer`` on the batch ``x`` (held implicitly by its
    per-sample ``ā_i``, ``g_i``, on the CPU); the true Fisher's targets are drawn with
    ``seed`` and the empirical one uses ``targets``: a classifier's class labels, or ``x``
    itself when ``None`` (autoencoders reconstruct their input)."""
    device = next(model.parameters()).device
    x = x.to(device)
    y = x if targets is None else targets.to(device)
    captured = capture_layer(model, x, layer, loss=loss, fisher=fisher, targets=y, seed=seed)
    return LayerFisher(captured.a.cpu(), captured.g.cpu())


def visitor_dataset(name: str, path: str, display_name: str, max_bytes: int | None) -> Dataset:
    """Dataset ``name`` read from a file a visitor chose, in a worker process: a crafted file
    (a decompression bomb, a malformed archive) then costs a worker, never the web server.
    The sizes its headers declare are checked against ``max_bytes`` before anything is
    decompressed (:mod:`core.training.readers`); every failure is one plain
    :class:`~core.training.datasets.DatasetError` naming the file as the visitor knows it."""
    return load_visitor_dataset(name, path, display_name=display_name, max_bytes=max_bytes)
