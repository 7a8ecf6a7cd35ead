"""Dense float64 oracles shared by the downstream-job tests (compress, prune): a small layer
batch and the damped curvature M formed from the approximation's own solve, independently of
core/engine/weight_metric.py."""

from __future__ import annotations

import torch

from core.engine.kron import unvec, vec

F64 = torch.float64
DAMPING = 1e-3


def layer_batch(m=60, da=6, dg=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, da, generator=gen, dtype=F64)
    a[:, -1] = 1.0
    g = torch.randn(m, dg, generator=gen, dtype=F64) * torch.linspace(0.3, 2.0, dg, dtype=F64)
    w = torch.randn(dg, da, generator=gen, dtype=F64)
    return a, g, w


def factored(r, s, damping):
    """(R + π√λ I, S + √λ/π I), π² = (tr R / da) / (tr S / dg) (Martens & Grosse 2015)."""
    pi = ((torch.trace(r) / r.shape[0]) / (torch.trace(s) / s.shape[0])).sqrt()
    root = damping**0.5
    return r + pi * root * torch.eye(r.shape[0], dtype=F64), s + root / pi * torch.eye(
        s.shape[0], dtype=F64
    )


def solve_matrix(approx, damping):
    """The approximation's own damped solve as a dense n × n matrix (mode "factored" for one or
    two Kronecker products, "exact" otherwise), column by column."""
    mode = "factored" if approx.n_terms in (1, 2) else "exact"
    cols = [
        vec(approx.solve(unvec(e, approx.dg, approx.da), damping, mode=mode).to(F64))
        for e in torch.eye(approx.n, dtype=F64)
    ]
    inverse = torch.stack(cols, 1)
    return 0.5 * (inverse + inverse.T)


def dense_metric(approx, damping):
    """M = the inverse of the approximation's own damped solve, inverted densely."""
    m = torch.linalg.inv(solve_matrix(approx, damping))
    return 0.5 * (m + m.T)
