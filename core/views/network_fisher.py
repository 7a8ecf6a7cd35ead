"""The whole network's Fisher against KFAC's block diagonal and two-level KFAC.

Every other view of Kronoscope looks at one layer's block. This one looks at the network: with
the per-sample gradients ``vec(D_n)`` of every factored layer stacked into one row
``j_n ∈ ℝⁿ`` (layers in forward order, each ``vec`` column-major, bias as the last column of
``W``; targets sampled ONCE per sample for all layers, :func:`core.engine.capture.capture`), the
Fisher of the whole network on a minibatch of ``m`` samples is ``F = JᵀJ / m`` (``J``: ``m × n``),
cross-layer blocks included. Compared, all damped by ``λ`` as the optimizers damp them:

* the exact damped natural-gradient direction ``d* = (F + λI)⁻¹ ∇``, by Woodbury for any ``n``:
  ``(F + λI)⁻¹ v = (v − Jᵀ (mλI + JJᵀ)⁻¹ J v) / λ``;
* the exact block diagonal ``blockdiag(F_ll) + λI`` (every layer's exact block, no cross-layer
  curvature: the ``exact`` optimizer);
* KFAC, ``M = blockdiag((A_l + π√λI) ⊗ (G_l + √λ/πI))`` (Martens & Grosse 2015, factored
  damping as :mod:`core.training.curvature`);
* two-level KFAC, ``P⁻¹ = M⁻¹ + R₀ᵀ (R₀FR₀ᵀ + λI)⁻¹ R₀`` for each coarse space of
  :mod:`core.training.two_level` (Koroko et al. 2023), built from the same minibatch's gradient.

Measures: each direction's relative error ``‖d − d*‖/‖d*‖`` and cosine with ``d*`` (any size),
and, where the network has at most :data:`DENSE_PARAMETER_LIMIT` parameters so that ``n × n``
matrices fit (3,000 parameters: 72 MB per float64 matrix, one ``n³`` inverse for two-level's
``P``), the relative Frobenius error ``‖X − (F + λI)‖_F / ‖F + λI‖_F`` of each damped matrix
``X`` and heatmaps of ``|X|``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from plotly.subplots import make_subplots
from torch import nn

from ..engine.approx import KroneckerSum
from ..engine.capture import LayerCapture, capture
from ..engine.kron import factored_damping
from ..engine.layers import supported_layers
from ..engine.likelihoods import batch_loss
from ..engine.methods import approximate
from ..training.data import load_dataset
from ..training.models import build_model
from ..training.runner import RunConfig, TrainingRun, model_loss
from ..training.two_level import (
    COARSE_SPACES,
    TWO_LEVEL_VARIANTS,
    coarse_basis,
    coarse_vectors,
    per_sample_projections,
    two_level_directions,
)

__all__ = [
    "DENSE_PARAMETER_LIMIT",
    "NETWORK_DATASETS",
    "NetworkView",
    "network_view",
    "NetworkCurvature",
    "network_curvature",
    "network_directions",
    "direction_errors",
    "network_matrices",
    "matrix_errors",
    "network_heatmaps",
    "vec",
]

#: the most parameters for which the n × n matrices (F, KFAC, two-level) are formed
DENSE_PARAMETER_LIMIT = 3000
#: the heatmaps' largest grid (block-averaged |X|)
HEATMAP_CELLS = 150


def vec(v: torch.Tensor) -> torch.Tensor:
    """Column-major ``vec`` of a (dg, da) matrix (the engine's convention)."""
    return v.T.reshape(-1)


def _unvec(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return x.reshape(shape[1], shape[0]).T


@dataclass(frozen=True)
class NetworkCurvature:
    """One minibatch's curvature of the whole network. ``names``/``shapes``: the factored
    layers in forward order and their (dg, da); ``captures``: their float64 captures;
    ``gradients``: the minibatch loss gradient per layer (dg, da); ``j``: the per-sample
    gradients (m × n, float64, layers concatenated in ``names`` order)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    captures: dict[str, LayerCapture]
    gradients: dict[str, torch.Tensor]
    j: torch.Tensor

    @property
    def m(self) -> int:
        return int(self.j.shape[0])

    @property
    def n(self) -> int:
        return int(self.j.shape[1])

    def offsets(self) -> list[tuple[int, int]]:
        """Each layer's (start, stop) in the parameter vector."""
        out, start = [], 0
        for dg, da in self.shapes:
            out.append((start, start + dg * da))
            start += dg * da
        return out

    def flatten(self, per_layer: dict[str, torch.Tensor]) -> torch.Tensor:
        """One vector (length n) of per-layer (dg, da) matrices."""
        return torch.cat([vec(per_layer[name]) for name in self.names])

    def gradient(self) -> torch.Tensor:
        return self.flatten(self.gradients)


def network_curvature(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: str,
    fisher: str = "true",
    seed: int = 0,
) -> NetworkCurvature:
    """Capture every factored layer of ``model`` on ``x`` (Fisher targets sampled with a
    ``seed``-ed generator, or ``targets`` for ``fisher="empirical"``) and the gradient of the
    training loss on ``(x, targets)`` (:func:`core.engine.likelihoods.batch_loss`)."""
    if x.shape[0] < 1:
        raise ValueError("the minibatch is empty: give at least one sample")
    result = capture(
        model,
        x,
        loss=loss,
        fisher=fisher,
        targets=targets,
        generator=torch.Generator().manual_seed(int(seed)),
    )
    layers = dict(supported_layers(model))
    params = []
    for name in result.layers:
        layer = layers[name]
        params.append(layer.weight)
        if layer.bias is not None:
            params.append(layer.bias)
    grads = iter(torch.autograd.grad(batch_loss(model(x), targets, loss), params))
    names, shapes, captures, gradients, rows = [], [], {}, {}, []
    for name, lc in result.layers.items():
        layer = layers[name]
        w_grad = next(grads).reshape(layer.weight.shape[0], -1)
        v = w_grad if layer.bias is None else torch.cat([w_grad, next(grads)[:, None]], dim=1)
        a, g = lc.a.detach().double(), lc.g.detach().double()
        captures[name] = LayerCapture(name, a, g, lc.has_bias)
        a3, g3 = (a[:, None], g[:, None]) if a.dim() == 2 else (a, g)
        d = g3.transpose(1, 2) @ a3  # D_n = Γ_nᵀ A_n, (m, dg, da)
        rows.append(d.transpose(1, 2).reshape(d.shape[0], -1))  # vec, column-major
        names.append(name)
        shapes.append((int(v.shape[0]), int(v.shape[1])))
        gradients[name] = v.detach().double()
    return NetworkCurvature(
        tuple(names), tuple(shapes), captures, gradients, torch.cat(rows, dim=1)
    )


def _woodbury(j: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    """``(JᵀJ/m + λI)⁻¹ v = (v − Jᵀ(mλI + JJᵀ)⁻¹ J v)/λ``."""
    m = j.shape[0]
    k = j @ j.T + m * damping * torch.eye(m, dtype=j.dtype, device=j.device)
    return (v - j.T @ torch.linalg.solve(k, j @ v)) / damping


def _check_damping(damping: float) -> float:
    if not (isinstance(damping, int | float) and math.isfinite(damping) and damping > 0):
        raise ValueError(f"damping must be a finite number > 0, got {damping!r}")
    return float(damping)


def network_directions(
    curv: NetworkCurvature, damping: float, coarse_spaces: Sequence[str] = COARSE_SPACES
) -> dict[str, torch.Tensor]:
    """The damped directions (length-n vectors): ``"exact"`` (whole F, Woodbury),
    ``"exact_block"`` (block diagonal), ``"kfac"`` and ``"two_level:<space>"`` per coarse
    space (module docstring)."""
    lam = _check_damping(damping)
    g = curv.gradient()
    out = {"exact": _woodbury(curv.j, g, lam)}
    blocks = [_woodbury(curv.j[:, lo:hi], g[lo:hi], lam) for lo, hi in curv.offsets()]
    out["exact_block"] = torch.cat(blocks)
    kfac = {
        name: approximate("kfac", lc.a, lc.g).solve(curv.gradients[name], lam, mode="factored")
        for name, lc in curv.captures.items()
    }
    out["kfac"] = curv.flatten(kfac)
    for space in coarse_spaces:
        dirs = two_level_directions(space, curv.gradients, kfac, curv.captures, lam)
        out[f"two_level:{space}"] = curv.flatten(dirs)
    return out


def direction_errors(directions: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Per direction: relative error ``‖d − d*‖/‖d*‖`` and cosine with ``d* = directions
    ["exact"]``."""
    ref = directions["exact"]
    rows = []
    for name, d in directions.items():
        if name == "exact":
            continue
        rows.append(
            {
                "direction": name,
                "relative_error": float(torch.linalg.norm(d - ref) / torch.linalg.norm(ref)),
                "cosine": float(d @ ref / (torch.linalg.norm(d) * torch.linalg.norm(ref))),
            }
        )
    return pd.DataFrame(rows)


def network_matrices(
    curv: NetworkCurvature, damping: float, coarse_spaces: Sequence[str] = COARSE_SPACES
) -> dict[str, torch.Tensor]:
    """The damped n × n matrices (refused above :data:`DENSE_PARAMETER_LIMIT`): ``"exact"``
    ``F + λI``, ``"exact_block"``, ``"kfac"`` ``M`` and ``"two_level:<space>"`` ``P``, the
    inverse of ``P⁻¹ = M⁻¹ + R₀ᵀ(R₀FR₀ᵀ + λI)⁻¹R₀``."""
    lam = _check_damping(damping)
    if curv.n > DENSE_PARAMETER_LIMIT:
        raise ValueError(
            f"the network has {curv.n} parameters; the whole Fisher is formed for at most "
            f"{DENSE_PARAMETER_LIMIT}: choose a smaller network (or compare the directions, "
            "network_directions, which need no n × n matrix)"
        )
    n, j = curv.n, curv.j
    eye = torch.eye(n, dtype=torch.float64)
    f = j.T @ j / curv.m + lam * eye
    block = torch.zeros_like(f)
    kfac = torch.zeros_like(f)
    kfac_inv = torch.zeros_like(f)
    for (lo, hi), name in zip(curv.offsets(), curv.names, strict=True):
        block[lo:hi, lo:hi] = f[lo:hi, lo:hi]
        approx = approximate("kfac", curv.captures[name].a, curv.captures[name].g)
        assert isinstance(approx, KroneckerSum)  # KFAC: one Kronecker product A ⊗ G
        r, s = approx.terms[0]
        rd, sd = factored_damping(r, s, lam)
        kfac[lo:hi, lo:hi] = torch.kron(rd, sd)
        kfac_inv[lo:hi, lo:hi] = torch.kron(torch.linalg.inv(rd), torch.linalg.inv(sd))
    out = {"exact": f, "exact_block": block, "kfac": kfac}
    kfac_dirs = {
        name: _unvec(kfac_inv[lo:hi, lo:hi] @ vec(curv.gradients[name]), curv.shapes[i])
        for i, ((lo, hi), name) in enumerate(zip(curv.offsets(), curv.names, strict=True))
    }
    for space in coarse_spaces:
        basis = coarse_basis(coarse_vectors(space, curv.gradients, kfac_dirs))
        r0 = torch.stack(
            [
                torch.cat(
                    [
                        vec(basis[nm]) if nm == name else torch.zeros(hi - lo, dtype=f.dtype)
                        for (lo, hi), nm in zip(curv.offsets(), curv.names, strict=True)
                    ]
                )
                for name in basis
            ]
        )
        z = per_sample_projections(curv.captures, basis)
        coarse = z.T @ z / curv.m + lam * torch.eye(len(basis), dtype=f.dtype)
        p_inv = kfac_inv + r0.T @ torch.linalg.solve(coarse, r0)
        out[f"two_level:{space}"] = torch.linalg.inv(p_inv)
    return out


def matrix_errors(matrices: dict[str, torch.Tensor]) -> pd.DataFrame:
    """``‖X − (F + λI)‖_F / ‖F + λI‖_F`` of each damped matrix against ``matrices["exact"]``."""
    ref = matrices["exact"]
    scale = float(torch.linalg.norm(ref))
    return pd.DataFrame(
        [
            {"matrix": name, "relative_frobenius_error": float(torch.linalg.norm(x - ref)) / scale}
            for name, x in matrices.items()
            if name != "exact"
        ]
    )


def _pooled(x: torch.Tensor, cells: int) -> torch.Tensor:
    """Block means of ``|x|`` on at most ``cells × cells``."""
    n = x.shape[0]
    step = max(1, math.ceil(n / cells))
    pad = (-n) % step
    y = torch.nn.functional.pad(x.abs(), (0, pad, 0, pad))
    k = y.shape[0] // step
    return y.reshape(k, step, k, step).mean(dim=(1, 3))


def network_heatmaps(matrices: dict[str, torch.Tensor], labels: dict[str, str] | None = None):
    """One heatmap per matrix of ``log10 |X|`` (block means on at most
    :data:`HEATMAP_CELLS` cells a side), on one colour scale."""
    labels = labels or {}
    names = list(matrices)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[labels.get(n, n) for n in names])
    pooled = {n: torch.log10(_pooled(x, HEATMAP_CELLS) + 1e-12) for n, x in matrices.items()}
    top = max(float(p.max()) for p in pooled.values())
    for i, name in enumerate(names, start=1):
        fig.add_heatmap(
            z=pooled[name].numpy(),
            zmin=top - 6,
            zmax=top,
            colorscale="Viridis",
            showscale=i == len(names),
            colorbar={"title": "log10 |entry|"},
            row=1,
            col=i,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=i)
    fig.update_layout(height=360, margin={"t": 40, "b": 10, "l": 10, "r": 10})
    return fig


#: bundled datasets the network view offers, with a default autoencoder small enough
#: (≤ DENSE_PARAMETER_LIMIT parameters) to form the whole Fisher: curves-small 196-6-3
#: (2,599 parameters), digits 64-16-8 (2,408)
NETWORK_DATASETS: dict[str, tuple[int, ...]] = {"curves-small": (196, 6, 3), "digits": (64, 16, 8)}

_LABELS = {
    "exact": "Exact F + λI (whole network)",
    "exact_block": "Exact block diagonal",
    "kfac": "KFAC",
    **{f"two_level:{space}": f"Two-level ({space})" for space in TWO_LEVEL_VARIANTS.values()},
}


@dataclass(frozen=True)
class NetworkView:
    """What the network page shows: the network's size, the direction errors, and (up to
    :data:`DENSE_PARAMETER_LIMIT` parameters) the matrix errors and heatmaps."""

    parameters: int
    directions: pd.DataFrame
    matrices: pd.DataFrame | None
    heatmaps: object | None


def network_view(
    dataset: str,
    widths: tuple[int, ...],
    m: int,
    damping: float,
    seed: int,
    train_steps: int = 0,
) -> NetworkView:
    """The network view of a ``widths`` autoencoder on ``dataset`` (a name of
    :data:`NETWORK_DATASETS`) at initialisation (``seed``), or after ``train_steps`` KFAC steps
    with its defaults; Fisher minibatch: the first ``m`` training samples, true Fisher."""
    if dataset not in NETWORK_DATASETS:
        raise ValueError(
            f"the network view offers the bundled datasets {', '.join(NETWORK_DATASETS)}; "
            f"got {dataset!r}"
        )
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be an integer ≥ 1 (samples), got {m!r}")
    ds = load_dataset(dataset, seed=0)
    if train_steps:
        config = RunConfig.from_settings(
            dataset, "kfac", widths=list(widths), steps=int(train_steps), seed=seed
        )
        run = TrainingRun(config, dataset=ds)
        run.run()
        if run.status != "finished":
            raise ValueError(f"the KFAC training before the view stopped: {run.message}")
        model = run.model
    else:
        model = build_model(list(widths), input_dim=ds.x_train.shape[1], loss=ds.loss, seed=seed)
    model = model.to("cpu").double()
    x = ds.x_train[:m].double()
    curv = network_curvature(model, x, x, loss=model_loss(model, ds), seed=seed)
    directions = direction_errors(network_directions(curv, damping))
    directions.insert(1, "label", directions["direction"].map(_LABELS))
    if curv.n > DENSE_PARAMETER_LIMIT:
        return NetworkView(curv.n, directions, None, None)
    mats = network_matrices(curv, damping)
    errors = matrix_errors(mats)
    errors.insert(1, "label", errors["matrix"].map(_LABELS))
    return NetworkView(curv.n, directions, errors, network_heatmaps(mats, _LABELS))
