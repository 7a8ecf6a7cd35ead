"""The downstream jobs on a trained network (issue 19): how much the held-out loss grows when one
layer is compressed to rank k (:mod:`core.engine.compress`) or pruned to a sparsity
(:mod:`core.engine.prune`), for every curvature in the registry and the baselines.

Per sweep: capture the layer's per-sample inputs and output gradients on a Fisher batch
(:func:`core.engine.capture.capture`), build each method's approximation and damped curvature
once, then for each rank or sparsity put the new weights into a *copy* of the model and
measure the mean per-sample NLL on a held-out batch (the model passed in is never changed).
Each point also carries ``fisher_increase`` = ½ vec(ΔW)ᵀ F vec(ΔW) with F the exact Fisher block
of the capture batch, computed as ½ (1/m) Σ_i (g_iᵀ ΔW ā_i)² without forming F (for a layer
shared by T positions, ½ (1/m) Σ_i (Σ_t g_{i,t}ᵀ ΔW ā_{i,t})²): the
second-order prediction every method's change is judged by on the same yardstick.

A method whose curvature cannot be formed for this layer (a dense-only one above
:data:`core.engine.weight_metric.DENSE_LIMIT`, singular factors at damping 0) is listed in
``skipped`` with the reason. No plotting or table library is imported here (worker processes
run the sweeps); the figures are :mod:`core.views.downstream_figures`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine.capture import capture
from ..engine.compress import COMPRESS_BASELINES, fisher_diagonal, low_rank
from ..engine.likelihoods import batch_loss
from ..engine.methods import SHOWN, approximate
from ..engine.prune import magnitude_prune, prune_with_metric
from ..engine.weight_metric import (
    WeightMetric,
    identity_metric,
    row_diagonal_metric,
    weight_metric,
)
from ..training.models import Autoencoder

__all__ = [
    "COMPRESS_METHODS",
    "PRUNE_METHODS",
    "DownstreamPoint",
    "DownstreamResult",
    "layer_weight",
    "held_out_loss",
    "compress_sweep",
    "prune_sweep",
    "merge_results",
    "reconstructions",
]

COMPRESS_METHODS: tuple[str, ...] = (*COMPRESS_BASELINES, *SHOWN)
PRUNE_METHODS: tuple[str, ...] = ("magnitude", *SHOWN)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class DownstreamPoint:
    """One method at one rank k (compress) or sparsity (prune).

    ``loss``: held-out mean NLL with the new weights; ``loss_increase``: minus the original's;
    ``fisher_increase``: ½ ΔWᵀ F ΔW (exact Fisher of the capture batch); ``objective``: the
    method's own vec(ΔW)ᵀ M vec(ΔW) (NaN for magnitude pruning); ``seconds``: the job's time.
    """

    method: str
    x: float
    loss: float
    loss_increase: float
    fisher_increase: float
    objective: float
    seconds: float


@dataclass
class DownstreamResult:
    """A sweep's points, in method order then x order (see the module docstring)."""

    job: str  # "compress" or "prune"
    layer: str
    shape: tuple[int, int]  # (dg, da) of W, bias column included
    base_loss: float
    damping: float
    structure: str | None = None  # prune: "unstructured", "rows" or "columns"
    points: list[DownstreamPoint] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    weights: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(p.method for p in self.points))

    def series(self, method: str, value: str = "loss_increase") -> tuple[list[float], list[float]]:
        """(x values, ``value`` of each point) of one method."""
        points = [p for p in self.points if p.method == method]
        return [p.x for p in points], [float(getattr(p, value)) for p in points]


def merge_results(parts: Sequence[DownstreamResult]) -> DownstreamResult:
    """One sweep from sweeps of the same layer, job, damping and structure that each ran some
    of the methods (the explorer runs one job per method, so the page can say how many are
    done and a method added later is the only one computed): points in the parts' order,
    their skipped methods and kept weights together. Every part measured the same unchanged
    model on the same held-out batch, so their base losses agree; a part that disagrees is an
    error, not averaged away."""
    if not parts:
        raise ValueError("no sweep to merge")
    first = parts[0]
    for part in parts[1:]:
        same = (part.job, part.layer, part.shape, part.damping, part.structure)
        if same != (first.job, first.layer, first.shape, first.damping, first.structure):
            raise ValueError(f"cannot merge sweeps of different settings: {same}")
        if not math.isclose(part.base_loss, first.base_loss, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(
                f"the sweeps' base losses differ ({first.base_loss} vs {part.base_loss}): "
                "they did not measure the same model"
            )
    merged = DownstreamResult(
        first.job, first.layer, first.shape, first.base_loss, first.damping, first.structure
    )
    for part in parts:
        merged.points.extend(part.points)
        merged.skipped.update(part.skipped)
        merged.weights.update(part.weights)
    return merged


def _linear(model: nn.Module, layer: str) -> nn.Linear:
    module = dict(model.named_modules()).get(layer)
    if not isinstance(module, nn.Linear):
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"unknown linear layer {layer!r}; choose one of {', '.join(names)}")
    return module


def layer_weight(model: nn.Module, layer: str) -> torch.Tensor:
    """W of ``layer`` as the engine sees it: (dg, da), the bias as the last column."""
    module = _linear(model, layer)
    w = module.weight.detach()
    if module.bias is None:
        return w.clone()
    return torch.cat([w, module.bias.detach()[:, None]], 1)


def _set_weight(module: nn.Linear, w: torch.Tensor) -> None:
    with torch.no_grad():
        if module.bias is None:
            module.weight.copy_(w)
        else:
            module.weight.copy_(w[:, :-1])
            module.bias.copy_(w[:, -1])


@torch.no_grad()
def held_out_loss(
    model: nn.Module, x: torch.Tensor, *, loss: str, targets: torch.Tensor | None = None
) -> float:
    """Mean per-sample NLL of ``model`` on ``x`` (targets: ``x`` itself, for autoencoders)."""
    return float(batch_loss(model(x), x if targets is None else targets, loss))


class _Evaluator:
    """A private copy of the model with one layer's W swappable, and the capture batch's
    (ā, g) for the exact-Fisher yardstick."""

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        x_eval: torch.Tensor,
        loss: str,
        targets: torch.Tensor | None,
        a: torch.Tensor,
        g: torch.Tensor,
    ) -> None:
        self.model = copy.deepcopy(model)
        self.module = _linear(self.model, layer)
        self.w0 = layer_weight(self.model, layer)
        self.shape = (int(self.w0.shape[0]), int(self.w0.shape[1]))
        self.x, self.loss, self.targets = x_eval, loss, targets
        self.a, self.g = a, g
        self.base = held_out_loss(self.model, x_eval, loss=loss, targets=targets)

    def point(
        self, method: str, x: float, w: torch.Tensor, objective: float, seconds: float
    ) -> DownstreamPoint:
        _set_weight(self.module, w.to(self.w0.dtype))
        loss = held_out_loss(self.model, self.x, loss=self.loss, targets=self.targets)
        _set_weight(self.module, self.w0)
        delta = (w.to(torch.float64) - self.w0.to(torch.float64)).to(self.a.device)
        # ⟨D_i, ΔW⟩ with D_i = Σ_t g_{i,t} ā_{i,t}ᵀ (one position t unless the layer is shared)
        per_sample = ((self.g @ delta) * self.a).flatten(1).sum(1)
        fisher = 0.5 * float((per_sample**2).mean())
        return DownstreamPoint(method, x, loss, loss - self.base, fisher, objective, seconds)


def _capture(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    *,
    loss: str,
    fisher: str,
    targets: torch.Tensor | None,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device=x.device).manual_seed(seed)
    if fisher == "empirical" and targets is None:  # an autoencoder's targets are its inputs
        targets = x
    result = capture(
        model,
        x,
        loss=loss,
        fisher=fisher,
        layers=[layer],
        targets=targets if fisher == "empirical" else None,
        generator=generator if fisher == "true" else None,
    )
    cap = result.layers[layer]
    return cap.a.to(torch.float64), cap.g.to(torch.float64)


def _metrics(
    methods: Sequence[str],
    a: torch.Tensor,
    g: torch.Tensor,
    damping: float,
    choices: tuple[str, ...],
) -> tuple[dict[str, WeightMetric | None], dict[str, str]]:
    """Each method's damped curvature (``None`` for magnitude pruning), and the skipped ones."""
    unknown = [m for m in methods if m not in choices]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(choices)}")
    dg, da = g.shape[-1], a.shape[-1]
    out: dict[str, WeightMetric | None] = {}
    skipped: dict[str, str] = {}
    for method in methods:
        try:
            if method == "svd":
                out[method] = identity_metric(da, dg)
            elif method == "fwsvd":
                out[method] = row_diagonal_metric(fisher_diagonal(a, g).sum(1) + damping, da)
            elif method == "magnitude":
                out[method] = None
            else:
                out[method] = weight_metric(approximate(method, a, g), damping)
        except ValueError as error:
            skipped[method] = str(error)
    return out, skipped


def compress_sweep(
    model: nn.Module,
    layer: str,
    x_fisher: torch.Tensor,
    x_eval: torch.Tensor,
    *,
    loss: str,
    ranks: Sequence[int],
    methods: Sequence[str] = COMPRESS_METHODS,
    fisher: str = "true",
    targets: torch.Tensor | None = None,
    fisher_targets: torch.Tensor | None = None,
    seed: int = 0,
    damping: float = 1e-3,
    keep_weights: bool = False,
    progress: Progress | None = None,
) -> DownstreamResult:
    """Held-out loss increase of ``layer`` compressed to each rank in ``ranks`` by each method
    (``svd``, ``fwsvd`` and the registry's; see the module docstring). ``keep_weights``: keep
    every compressed W in ``result.weights`` (for reconstruction images). ``targets``: the
    class labels of ``x_eval`` for a classifier (``None``: an autoencoder, whose targets are its
    inputs); ``fisher_targets``: those of ``x_fisher`` for the empirical Fisher, when it is not
    ``x_eval`` (default: ``targets``)."""
    capture_targets = targets if fisher_targets is None else fisher_targets
    a, g = _capture(
        model, layer, x_fisher, loss=loss, fisher=fisher, targets=capture_targets, seed=seed
    )
    evaluator = _Evaluator(model, layer, x_eval, loss, targets, a, g)
    metrics, skipped = _metrics(methods, a, g, damping, COMPRESS_METHODS)
    result = DownstreamResult(
        "compress", layer, evaluator.shape, evaluator.base, damping, skipped=skipped
    )

    def compress_one(method: str, k: float) -> tuple[float, torch.Tensor, float]:
        metric = metrics[method]
        assert metric is not None
        compressed = low_rank(metric, evaluator.w0, int(k))
        return k, compressed.weight, compressed.objective

    _sweep(result, evaluator, list(metrics), ranks, compress_one, "rank", keep_weights, progress)
    return result


def prune_sweep(
    model: nn.Module,
    layer: str,
    x_fisher: torch.Tensor,
    x_eval: torch.Tensor,
    *,
    loss: str,
    sparsities: Sequence[float],
    structure: str = "unstructured",
    methods: Sequence[str] = PRUNE_METHODS,
    shots: int = 1,
    fisher: str = "true",
    targets: torch.Tensor | None = None,
    fisher_targets: torch.Tensor | None = None,
    seed: int = 0,
    damping: float = 1e-3,
    keep_weights: bool = False,
    progress: Progress | None = None,
) -> DownstreamResult:
    """Held-out loss increase of ``layer`` pruned to each sparsity by OBS with each method's
    curvature, and by magnitude (see the module docstring and :mod:`core.engine.prune`);
    ``targets`` and ``fisher_targets`` as in :func:`compress_sweep`."""
    capture_targets = targets if fisher_targets is None else fisher_targets
    a, g = _capture(
        model, layer, x_fisher, loss=loss, fisher=fisher, targets=capture_targets, seed=seed
    )
    evaluator = _Evaluator(model, layer, x_eval, loss, targets, a, g)
    metrics, skipped = _metrics(methods, a, g, damping, PRUNE_METHODS)
    result = DownstreamResult(
        "prune",
        layer,
        evaluator.shape,
        evaluator.base,
        damping,
        structure=structure,
        skipped=skipped,
    )

    def prune_one(method: str, sparsity: float) -> tuple[float, torch.Tensor, float]:
        metric = metrics[method]
        if metric is None:
            pruned = magnitude_prune(evaluator.w0, sparsity, structure=structure)
        else:
            pruned = prune_with_metric(
                metric, evaluator.w0, sparsity, structure=structure, shots=shots
            )
        return pruned.sparsity, pruned.weight, pruned.objective

    _sweep(
        result, evaluator, list(metrics), sparsities, prune_one, "sparsity", keep_weights, progress
    )
    return result


def _sweep(
    result: DownstreamResult,
    evaluator: _Evaluator,
    methods: Sequence[str],
    values: Sequence[float],
    job: Callable[[str, float], tuple[float, torch.Tensor, float]],
    what: str,
    keep_weights: bool,
    progress: Progress | None,
) -> None:
    """Run ``job(method, value)`` — returning (the value reached, the new W, its objective) —
    for every method and value, timing each and appending its point (and W) to ``result``."""
    jobs = [(method, value) for method in methods for value in values]
    for done, (method, value) in enumerate(jobs):
        start = time.perf_counter()
        reached, weight, objective = job(method, value)
        seconds = time.perf_counter() - start
        result.points.append(evaluator.point(method, reached, weight, objective, seconds))
        if keep_weights:
            result.weights[(method, float(value))] = weight
        if progress is not None:
            progress(done + 1, len(jobs), f"{method}, {what} {value:g}")


@torch.no_grad()
def reconstructions(
    model: nn.Module, layer: str, weights: Mapping[str, torch.Tensor], x: torch.Tensor
) -> dict[str, torch.Tensor]:
    """An autoencoder's reconstructions of ``x`` (``model.reconstruct``) with ``layer``'s W
    replaced by each of ``weights`` (name → (dg, da)), on a copy of the model; key
    ``"original"``: the model as it is."""
    if not isinstance(model, Autoencoder):
        raise ValueError("reconstruction images need an autoencoder (core.training.models)")
    clone = copy.deepcopy(model)
    module = _linear(clone, layer)
    w0 = layer_weight(clone, layer)
    out = {"original": clone.reconstruct(x)}
    for name, w in weights.items():
        if tuple(w.shape) != tuple(w0.shape):
            raise ValueError(
                f"weights[{name!r}] has shape {tuple(w.shape)}, W is {tuple(w0.shape)}"
            )
        _set_weight(module, w.to(w0.dtype))
        out[name] = clone.reconstruct(x)
    _set_weight(module, w0)
    return out
