"""The explorer's units of work, as plain functions of picklable values.

The web server runs these in worker processes (:mod:`core.server.workers`): arguments and results
cross the process boundary by value, so each function takes everything it needs (the model,
the batch) and returns a fresh object. Each is one step of :mod:`core.views.explorer`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..engine.fisher import LayerFisher
from ..engine.power_iterations import PowerIterationCurve, power_iteration_curve
from ..training.datafiles import load_visitor_dataset
from ..training.datasets import Dataset
from ..views.downstream import DownstreamResult, compress_sweep, prune_sweep
from ..views.explorer import capture_layer

__all__ = ["downstream_sweep", "layer_fisher", "power_iterations", "visitor_dataset"]


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


def downstream_sweep(
    job: str,
    model: nn.Module,
    layer: str,
    x_fisher: torch.Tensor,
    x_eval: torch.Tensor,
    loss: str,
    fisher: str,
    seed: int,
    values: tuple[float, ...],
    methods: tuple[str, ...],
    damping: float,
    structure: str = "unstructured",
    targets: torch.Tensor | None = None,
    fisher_targets: torch.Tensor | None = None,
    keep: tuple[str, ...] = (),
) -> DownstreamResult:
    """The explorer's "Compress" (``job="compress"``, ``values``: ranks k) or "Prune"
    (``job="prune"``, ``values``: sparsities, ``structure``) sweep of ``layer``
    (:func:`core.views.downstream.compress_sweep` / :func:`~core.views.downstream.prune_sweep`)
    on a CPU copy of ``model``: the curvature from ``x_fisher``, the held-out loss on ``x_eval``
    (``targets``: its class labels for a classifier, ``None`` for an autoencoder;
    ``fisher_targets``: ``x_fisher``'s labels, for a classifier's empirical Fisher).
    ``keep``: methods whose new W at the last value of ``values`` is returned in
    ``result.weights`` (for reconstruction images; the others are not sent back)."""
    model = copy.deepcopy(model).cpu()
    common: dict[str, Any] = dict(
        loss=loss,
        methods=methods,
        fisher=fisher,
        targets=targets,
        seed=seed,
        fisher_targets=fisher_targets,
    )
    if job == "compress":
        result = compress_sweep(
            model, layer, x_fisher.cpu(), x_eval.cpu(), ranks=[int(v) for v in values],
            damping=damping, keep_weights=bool(keep), **common,
        )  # fmt: skip
    elif job == "prune":
        result = prune_sweep(
            model, layer, x_fisher.cpu(), x_eval.cpu(), sparsities=[float(v) for v in values],
            structure=structure, damping=damping, keep_weights=bool(keep), **common,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown downstream job {job!r}; choose compress or prune")
    last = float(values[-1]) if values else None
    result.weights = {
        (method, x): w for (method, x), w in result.weights.items() if method in keep and x == last
    }
    return result


def power_iterations(fisher: LayerFisher, steps: int) -> PowerIterationCurve:
    """The explorer's "Power iterations" curve: k = 0 … ``steps`` power steps on ℛ(F) of the
    block ``fisher`` from the identity
    (:func:`core.engine.power_iterations.power_iteration_curve`)."""
    return power_iteration_curve(fisher.a, fisher.g, steps)
