"""Input checks shared by the engine: every public entry point validates before computing."""

from __future__ import annotations

import numpy as np
import torch

from .. import settings


def as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Return ``x`` as a floating torch tensor, or raise ValueError naming ``name``."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


class NonFiniteValueError(ValueError):
    """An input holds NaN or inf. A ``ValueError`` like every other bad input; its own type lets
    a training loop tell a diverged run from a programming error without reading the message."""


def check_finite(x: torch.Tensor, name: str) -> float:
    """Raise :class:`NonFiniteValueError` when ``x`` holds NaN or inf, saying how many and what
    to do; else return the largest magnitude of its entries. The test is one pass without a
    temporary: the ends of ``torch.aminmax``, which propagates NaN and shows ±inf as an end,
    are both finite exactly when every entry is (ten times faster than ``isfinite(x).any()``
    on a 1024 × 1001 batch; the count is made only for the message)."""
    if x.numel() == 0:
        return 0.0
    low, high = torch.aminmax(x)
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        return max(-float(low), float(high))
    bad = int((~torch.isfinite(x)).sum())
    raise NonFiniteValueError(
        f"{name} contains {bad} non-finite value(s) (NaN or inf); "
        "the training run that produced it has probably diverged — lower the learning rate "
        "or raise the damping, and capture again"
    )


def check_layer_batch(
    a: torch.Tensor | np.ndarray, g: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one layer batch: per-sample inputs ``a`` and output gradients ``g``.

    Two forms (issue 18): ``a`` (m, da) and ``g`` (m, dg), one position per sample; or
    ``a`` (m, T, da) and ``g`` (m, T, dg), T positions sharing one weight W (the unfolded
    patches of a convolution, the tokens of a sequence ``Linear``). A 3-D batch with T = 1 is
    returned squeezed to the 2-D form, so it gives the 2-D numbers exactly. Returns both as
    tensors of one floating dtype (the wider of the two).
    """
    a = as_tensor(a, "a (layer inputs)")
    g = as_tensor(g, "g (output gradients)")
    if a.ndim != g.ndim or a.ndim not in (2, 3):
        raise ValueError(
            "a and g must both be 2-D (samples × features) or both 3-D (samples × positions × "
            f"features); got a of shape {tuple(a.shape)} and g of shape {tuple(g.shape)}"
        )
    if a.shape[0] != g.shape[0]:
        raise ValueError(
            f"a and g must hold the same number of samples: a has {a.shape[0]}, g has {g.shape[0]}"
        )
    if a.shape[0] == 0:
        raise ValueError("empty batch: a and g have 0 samples; the Fisher needs at least one")
    if a.ndim == 3 and a.shape[1] != g.shape[1]:
        raise ValueError(
            f"a and g must hold the same number of positions T per sample: a has {a.shape[1]}, "
            f"g has {g.shape[1]} (capture the layer's inputs and output gradients together)"
        )
    if a.ndim == 3 and a.shape[1] == 0:
        raise ValueError("a and g have 0 positions per sample (T = 0); each sample needs one")
    if a.shape[-1] == 0 or g.shape[-1] == 0:
        raise ValueError(
            f"a and g need at least one feature; got da={a.shape[-1]}, dg={g.shape[-1]}"
        )
    largest = {
        name: (check_finite(x, name), x.shape[-1])
        for x, name in ((a, "a (layer inputs)"), (g, "g (output gradients)"))
    }
    if a.ndim == 3 and a.shape[1] == 1:
        a, g = a[:, 0], g[:, 0]
    dtype = torch.promote_types(a.dtype, g.dtype)
    for name, (size, width) in largest.items():
        _check_products_fit(size, width, dtype, name)
    return a.to(dtype), g.to(dtype)


def _check_products_fit(size: float, width: int, dtype: torch.dtype, name: str) -> None:
    """Raise ValueError where a per-sample inner product ā_iᵀā_j (at most ``width`` ·
    ``size``², ``size`` the largest |entry|) could overflow ``dtype``, or its square, which the
    KPSVD family's Grams (ĀĀᵀ)∘² hold in float64, could overflow float64: the results would be
    inf, and every method fail with a linear-algebra error instead of this message."""
    limit = min(torch.finfo(dtype).max, torch.finfo(torch.float64).max ** 0.5)
    if width * size * size <= limit:
        return
    raise ValueError(
        f"{name} is too large to square in {str(dtype).removeprefix('torch.')}: its largest "
        f"entry is {size:.3g}, and products of samples over {width} features would reach "
        f"{width * size * size:.3g} (the limit is {limit:.3g}). Rescale the data, or use "
        "float64 inputs"
    )


def check_gradient_matrix(v: torch.Tensor | np.ndarray, da: int, dg: int) -> torch.Tensor:
    """Validate a gradient matrix V of shape (dg, da) (the layer's weight shape)."""
    v = as_tensor(v, "V (gradient matrix)")
    if tuple(v.shape) != (dg, da):
        raise ValueError(
            f"V must have the layer's weight shape (dg, da) = ({dg}, {da}); got {tuple(v.shape)}"
        )
    check_finite(v, "V (gradient matrix)")
    return v


def check_damping(damping: float) -> float:
    """Damping must be a finite, strictly positive number."""
    damping = float(damping)
    if not np.isfinite(damping) or damping <= 0.0:
        raise ValueError(f"damping must be a finite number > 0, got {damping}")
    return damping


def max_dense_bytes() -> int:
    """Largest dense matrix the engine forms: KRONOSCOPE_MAX_DENSE_BYTES (default 1 GiB)."""
    return int(settings.get("KRONOSCOPE_MAX_DENSE_BYTES"))


def check_dense_size(n: int, dtype: torch.dtype, what: str, alternative: str) -> None:
    """Refuse to form an n × n dense matrix larger than :func:`max_dense_bytes`.

    The message states the memory it would need and names the matrix-free alternative.
    """
    need = n * n * torch.empty((), dtype=dtype).element_size()
    limit = max_dense_bytes()
    if need > limit:
        raise DenseTooLargeError(
            f"forming the dense {what} ({n:,} × {n:,}, {dtype}) needs {_human(need)}, above the "
            f"limit of {_human(limit)} (KRONOSCOPE_MAX_DENSE_BYTES); use {alternative} instead, "
            "which works without forming it"
        )


class DenseTooLargeError(ValueError):
    """A dense matrix was requested above the configured memory limit."""


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")
