"""SWAN: SGD with gradient normalisation and whitening, and no optimizer state.

Ma, Gong, Scetbon & Meeds, "SWAN: SGD with Normalization and Whitening Enables Stateless LLM
Training" (arXiv 2412.13148, 2024; ICML 2025). Each layer's gradient matrix
``V = [∇W | ∇b]`` (dg × da: outputs × inputs, the bias as the last column as everywhere in
Kronoscope; a convolution's ∇W reshaped to (C_out, C_in·kh·kw)) is processed in two stateless
steps, and the parameters move by ``−lr`` times the result:

1. GradNorm, row-wise standardisation over the input columns:
   ``Ṽ = diag(s)⁻¹ (V − v̄ 1ᵀ)``, ``v̄ = V 1 / da``, ``s_p = sqrt(Σ_i (V_pi − v̄_p)² / da)``
   (a row with s_p = 0, e.g. a dead unit, stays zero);
2. GradWhitening: ``(Ṽ Ṽᵀ)^{-1/2} Ṽ``. With the SVD Ṽ = U Σ Wᵀ this is U Wᵀ, the orthogonal
   polar factor (on the range: ṼṼᵀ is singular, since every row of Ṽ is orthogonal to 1, and
   the inverse square root is taken on its range, the ε → 0 limit of (ṼṼᵀ + εI)^{-1/2} Ṽ).

The whitening is computed, as the paper does, by Newton–Schulz iterations, here the cubic
polar iteration ``X₀ = Ṽ / ‖Ṽ‖_F``, ``X_{k+1} = (3 X_k − X_k X_kᵀ X_k) / 2``: every singular value
x = σ/‖Ṽ‖_F ∈ (0, 1] follows x ← (3x − x³)/2 to 1 and zeros stay zero, so X_k = U f_k(Σ/‖Ṽ‖_F) Wᵀ
(tests compare with that and with a dense eigh of ṼṼᵀ). ``NEWTON_SCHULZ_STEPS`` = 16 brings every
singular value above 0.5 % of ‖Ṽ‖_F to within 1e-4 of 1; smaller ones are only partly whitened
(round-off directions, ~1e-16, grow by 1.5¹⁶ ≈ 660 only).

Relation to the Fisher factors: Shampoo's factors of one layer are E[D Dᵀ] and E[Dᵀ D] over the
per-sample gradients D_i = g_i ā_iᵀ (in Kronoscope ``(1/m) Σ ‖ā_i‖² g_i g_iᵀ`` and
``(1/m) Σ ‖g_i‖² ā_i ā_iᵀ``, :func:`core.engine.approx.build_shampoo`), and its update is
``L^{-1/4} V R^{-1/4}``. SWAN puts the single standardised minibatch gradient in place of the
expectation, ``L = ṼṼᵀ``, ``R = ṼᵀṼ``: then ``L^{-1/4} Ṽ R^{-1/4} = (ṼṼᵀ)^{-1/2} Ṽ = U Wᵀ``, the
same whitening, with nothing accumulated between steps.

``momentum`` is not used (the method is stateless by design); ``weight_decay`` is decoupled,
``θ ← θ − lr · weight_decay · θ``. Parameters outside the factored layers (none in this
project's networks) take a plain SGD step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..engine.layers import supported_layers

__all__ = ["NEWTON_SCHULZ_STEPS", "grad_norm", "grad_whitening", "swan_direction", "Swan"]

NEWTON_SCHULZ_STEPS = 16


def grad_norm(v: torch.Tensor) -> torch.Tensor:
    """Row-wise standardisation ``diag(s)⁻¹ (V − v̄ 1ᵀ)`` over the columns (population std)."""
    if v.ndim != 2:
        raise ValueError(f"grad_norm needs a 2-D gradient matrix, got shape {tuple(v.shape)}")
    centred = v - v.mean(dim=1, keepdim=True)
    s = centred.pow(2).mean(dim=1, keepdim=True).sqrt()
    return centred / torch.where(s > 0, s, torch.ones_like(s))


def grad_whitening(v: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> torch.Tensor:
    """``(V Vᵀ)^{-1/2} V`` on the range of V (its polar factor U Wᵀ) by ``steps`` cubic
    Newton–Schulz iterations from ``V / ‖V‖_F`` (module docstring); zero for V = 0."""
    if v.ndim != 2:
        raise ValueError(f"grad_whitening needs a 2-D matrix, got shape {tuple(v.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer ≥ 0, got {steps!r}")
    norm = torch.linalg.norm(v)
    if float(norm) == 0.0:
        return torch.zeros_like(v)
    x = v / norm
    wide = x.shape[0] <= x.shape[1]  # multiply through the smaller Gram matrix
    for _ in range(steps):
        x = 1.5 * x - 0.5 * ((x @ x.T) @ x if wide else x @ (x.T @ x))
    whitened: torch.Tensor = x
    return whitened


def swan_direction(v: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> torch.Tensor:
    """SWAN's update direction of one gradient matrix: GradWhitening(GradNorm(V)), computed in
    V's dtype but at least float32 (the paper whitens in float32), returned in V's dtype."""
    work = torch.promote_types(v.dtype, torch.float32)
    return grad_whitening(grad_norm(v.to(work)), steps).to(v.dtype)


def _gradient_matrix(layer: nn.Linear | nn.Conv2d) -> torch.Tensor | None:
    """``[∇W | ∇b]`` of one layer (dg × da), or None when its weight has no gradient."""
    w_grad = layer.weight.grad
    if w_grad is None:
        return None
    v = w_grad.reshape(layer.weight.shape[0], -1)
    b = layer.bias
    if b is not None:
        if b.grad is None:
            raise ValueError("a layer's weight has a gradient but not its bias")
        v = torch.cat([v, b.grad[:, None]], dim=1)
    return v


class Swan(torch.optim.Optimizer):
    """SWAN over a model: every factored layer (:func:`core.engine.layers.supported_layers`)
    steps by ``−lr · swan_direction([∇W | ∇b])``; no state is kept (module docstring)."""

    def __init__(self, model: nn.Module, *, lr: float, weight_decay: float = 0.0) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.layers = [layer for _, layer in supported_layers(model)]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None if closure is None else closure()
        group = self.param_groups[0]
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        params: Iterable[torch.Tensor] = group["params"]
        if wd:
            for p in params:
                if p.grad is not None:
                    p.mul_(1.0 - lr * wd)
        done: set[int] = set()
        for layer in self.layers:
            v = _gradient_matrix(layer)
            if v is None:
                continue
            d = swan_direction(v)
            w = layer.weight
            w.sub_(lr * d[:, : w[0].numel()].reshape(w.shape))
            done.add(id(w))
            if layer.bias is not None:
                layer.bias.sub_(lr * d[:, -1])
                done.add(id(layer.bias))
        for p in group["params"]:
            if id(p) not in done and p.grad is not None:
                p.sub_(lr * p.grad)
        return loss
