"""Weight-sharing layer batches: per-sample gradients and the products the engine needs of them.

A weight-sharing layer applies one weight W (dg × da, bias as the last column) at T positions
per sample: the unfolded patches of a ``Conv2d`` (T = H_out·W_out), the tokens of a sequence
``Linear``. With A_n (T × da) the inputs and Γ_n (T × dg) the output gradients of sample n, the
per-sample gradient is D_n = Γ_nᵀ A_n (no longer rank one) and the exact block is

    F = (1/m) Σ_n vec(D_n) vec(D_n)ᵀ = (1/m) Σ_n Σ_{t,s} (a_t a_sᵀ) ⊗ (γ_t γ_sᵀ)

(Grosse & Martens 2016, "A Kronecker-factored approximate Fisher matrix for convolution
layers", KFC; Eschenhagen et al. 2023, "Kronecker-factored approximate curvature for modern
neural network architectures"). T = 1 is the one-position case (D_n = g_n ā_nᵀ), which the
engine keeps on its rank-one routes; everything here serves T > 1.

Two routes for the rearranged products ℛ(F) vec(S) = (1/m) Σ_n D_nᵀ S D_n (da × da) and
ℛ(F)ᵀ vec(R) = (1/m) Σ_n D_n R D_nᵀ (dg × dg), and for the per-sample quadratic forms
tr(D_nᵀ S D_n R) (⟨F, R ⊗ S⟩ = their mean):

* ``"gradients"``: hold D (m × dg × da, formed once for m·T·dg·da multiply-adds); each product
  then costs m·dg·da·(dg + da), independent of T.
* ``"positions"``: A_nᵀ (Γ_n S Γ_nᵀ) A_n without D, through the T × T matrix Γ_n S Γ_nᵀ:
  m·[T·(dg² + da²) + T²·(dg + da)] — this is the route whose cost grows like T².

:func:`product_route` picks the cheaper by this flop count (positions wins when T is small
against the layer's width). The m × m Gram ⟨D_i, D_j⟩ of the exact block, its Woodbury solve
and its matrix-vector products always use D (the position route would need (mT)² entries).
"""

from __future__ import annotations

from functools import cached_property

import torch

from .kron import sym
from .validation import DenseTooLargeError, max_dense_bytes

__all__ = [
    "ROUTES",
    "positions",
    "per_sample_gradients",
    "check_gradients_size",
    "product_route",
    "kfac_expand_factors",
    "kfac_reduce_batch",
    "SharedBatch",
]

ROUTES = ("gradients", "positions")


def positions(a: torch.Tensor) -> int:
    """T, the positions per sample of a checked batch (1 for a 2-D batch)."""
    return 1 if a.ndim == 2 else a.shape[1]


def check_gradients_size(m: int, da: int, dg: int, dtype: torch.dtype) -> None:
    """Refuse to hold m per-sample gradients (m × dg × da) above the dense memory limit
    (KRONOSCOPE_MAX_DENSE_BYTES), saying how much they need and what to do."""
    need = m * da * dg * torch.empty((), dtype=dtype).element_size()
    limit = max_dense_bytes()
    if need > limit:
        raise DenseTooLargeError(
            f"the exact block of a weight-sharing layer holds its {m:,} per-sample gradients "
            f"({m:,} × {dg:,} × {da:,}, {dtype}): {need / 2**20:,.1f} MiB, above the limit of "
            f"{limit / 2**20:,.1f} MiB (KRONOSCOPE_MAX_DENSE_BYTES); use a smaller Fisher batch "
            "or raise the limit"
        )


def per_sample_gradients(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """D_n = Γ_nᵀ A_n for every sample, shape (m, dg, da); a 2-D batch gives g_n ā_nᵀ."""
    if a.ndim == 2:
        return g[:, :, None] * a[:, None, :]
    check_gradients_size(a.shape[0], a.shape[2], g.shape[2], torch.promote_types(a.dtype, g.dtype))
    return torch.bmm(g.transpose(1, 2), a)


def product_route(t: int, da: int, dg: int) -> str:
    """The cheaper route for products with ℛ(F) (module docstring), by multiply-adds per
    sample and product: dg·da·(dg + da) with D held, T·(dg² + da²) + T²·(dg + da) without."""
    with_gradients = dg * da * (dg + da)
    with_positions = t * (dg * dg + da * da) + t * t * (dg + da)
    return "gradients" if with_gradients <= with_positions else "positions"


def kfac_expand_factors(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KFAC-expand (KFC; Eschenhagen et al. 2023): A = (1/(mT)) Σ_{n,t} a aᵀ and
    G = (1/m) Σ_{n,t} γ γᵀ — every position one more sample of the inputs, every position's
    output gradient summed into the sample's. At T = 1 this is KFAC's (A, G)."""
    m, t = a.shape[0], positions(a)
    flat_a, flat_g = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
    return flat_a.T @ flat_a / (m * t), flat_g.T @ flat_g / m


def kfac_reduce_batch(a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KFAC-reduce's one-position batch (Eschenhagen et al. 2023): â_n = (1/T) Σ_t a_{n,t},
    ĝ_n = Σ_t γ_{n,t}, whose KFAC factors are A = (1/m) Σ â âᵀ, G = (1/m) Σ ĝ ĝᵀ. It is exact
    when every position of a sample sees the same input (then D_n = ĝ_n â_nᵀ)."""
    if a.ndim == 2:
        return a, g
    return a.mean(dim=1), g.sum(dim=1)


class SharedBatch:
    """A T > 1 layer batch with the products of its per-sample gradients D_n = Γ_nᵀ A_n.

    ``a`` (m, T, da) and ``g`` (m, T, dg), already checked; ``route`` for the rearranged
    products (``None``: :func:`product_route`'s choice); ``dtype`` the products' dtype (default
    the inputs'). D is formed on first use, in the inputs' dtype (its m·T·dg·da multiply-adds
    are the largest single cost), then held in ``dtype``.
    """

    def __init__(
        self,
        a: torch.Tensor,
        g: torch.Tensor,
        route: str | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        if a.ndim != 3:
            raise ValueError(f"SharedBatch needs a (m, T, da) batch, got shape {tuple(a.shape)}")
        self.dtype = dtype or a.dtype
        self._inputs = (a, g)
        self.m, self.t, self.da = a.shape
        self.dg = g.shape[2]
        route = route or product_route(self.t, self.da, self.dg)
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; choose one of {ROUTES}")
        self.route = route

    @cached_property
    def d(self) -> torch.Tensor:
        """The per-sample gradients D (m, dg, da), in ``dtype``."""
        return per_sample_gradients(*self._inputs).to(self.dtype)

    @cached_property
    def d_by_output(self) -> torch.Tensor:
        """D laid out output-major, (dg, m, da): every rearranged product is then one GEMM on a
        reshaped view ((dg, m·da) or (dg·m, da)), with no copy per product."""
        if "d" in self.__dict__:
            return self.d.transpose(0, 1).contiguous()
        a, g = self._inputs
        return torch.einsum("ntp,ntq->pnq", g, a).to(self.dtype)

    @cached_property
    def a(self) -> torch.Tensor:
        """The inputs (m, T, da) in ``dtype``."""
        return self._inputs[0].to(self.dtype)

    @cached_property
    def g(self) -> torch.Tensor:
        """The output gradients (m, T, dg) in ``dtype``."""
        return self._inputs[1].to(self.dtype)

    def gram(self) -> torch.Tensor:
        """⟨D_i, D_j⟩ for all pairs, m × m (JJᵀ with J's rows vec(D_n))."""
        flat = self.d.reshape(self.m, -1)
        return flat @ flat.T

    def jv(self, v: torch.Tensor) -> torch.Tensor:
        """(J vec V)_n = ⟨D_n, V⟩, shape (m,)."""
        return self.d.reshape(self.m, -1) @ v.reshape(-1)

    def jt(self, y: torch.Tensor) -> torch.Tensor:
        """Jᵀ y = Σ_n y_n D_n as a (dg, da) matrix."""
        return (y @ self.d.reshape(self.m, -1)).reshape(self.dg, self.da)

    def input_side(self, s: torch.Tensor) -> torch.Tensor:
        """ℛ(F) vec(S) = (1/m) Σ_n D_nᵀ S D_n (da × da; symmetric part, see
        :meth:`~core.engine.rearranged_svd.RearrangedFisher.apply`)."""
        if self.route == "gradients":
            d = self.d_by_output
            out = d.reshape(-1, self.da).T @ (s @ d.reshape(self.dg, -1)).reshape(-1, self.da)
        else:
            inner = torch.bmm(self.g @ s, self.g.transpose(1, 2))  # Γ_n S Γ_nᵀ, (m, T, T)
            out = self.a.reshape(-1, self.da).T @ torch.bmm(inner, self.a).reshape(-1, self.da)
        return sym(out / self.m)

    def output_side(self, r: torch.Tensor) -> torch.Tensor:
        """ℛ(F)ᵀ vec(R) = (1/m) Σ_n D_n R D_nᵀ (dg × dg; symmetric part)."""
        if self.route == "gradients":
            d = self.d_by_output
            out = (d.reshape(-1, self.da) @ r).reshape(self.dg, -1) @ d.reshape(self.dg, -1).T
        else:
            inner = torch.bmm(self.a @ r, self.a.transpose(1, 2))  # A_n R A_nᵀ, (m, T, T)
            out = self.g.reshape(-1, self.dg).T @ torch.bmm(inner, self.g).reshape(-1, self.dg)
        return sym(out / self.m)

    def quadratic(self, r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """tr(D_nᵀ S D_n R) = ⟨S D_n, D_n R⟩ per sample, shape (m,); their mean is
        ⟨F, R ⊗ S⟩. Via positions: ⟨Γ_n S Γ_nᵀ, A_n R A_nᵀ⟩."""
        if self.route == "gradients":
            d = self.d_by_output
            left = (s @ d.reshape(self.dg, -1)).reshape(d.shape)
            return (left * (d @ r)).sum(dim=(0, 2))
        left = torch.bmm(self.g @ s, self.g.transpose(1, 2))
        right = torch.bmm(self.a @ r, self.a.transpose(1, 2))
        return (left * right).sum(dim=(1, 2))

    def mean_gradient(self) -> torch.Tensor:
        """(1/m) Σ_n D_n, the batch gradient of W (dg, da)."""
        flat_a, flat_g = self._inputs
        grad = flat_g.reshape(-1, self.dg).T @ flat_a.reshape(-1, self.da) / self.m
        return grad.to(self.dtype)
