"""The method lists, named (issue 22): tests that loop over the registry's own sets cannot see
a method dropped from, or added to, a set; these state each set and each method's facts.

Only the package's public names are used (``core.METHODS``, ``core.OPTIMIZERS``, …, ``core
.approximate``, ``core.OptimizerConfig``, ``core.default_lr``/``default_damping``), so that the
tests hold wherever the registry's entries live.
"""

from __future__ import annotations

import pytest
import torch

import core

APPROXIMATIONS = (
    "kfac",
    "kfac_reduce",
    "kpsvd",
    "deflation",
    "lanczos",
    "kfac_corrected",
    "ekfac",
    "shampoo",
    "eva",
)
FIRST_ORDER = ("sgd", "adam", "swan")
TWO_LEVEL = (
    "kfac_two_level",
    "kfac_two_level_grad",
    "kfac_two_level_nicolaides",
    "kfac_two_level_residual",
    "kfac_two_level_spectral",
    "kfac_two_level_krylov",
    "kfac_two_level_krylov_residual",
    "kfac_two_level_tselepidis",
    "kfac_two_level_nicolaides_layerwise",
)
NATURAL = (*APPROXIMATIONS, "exact", *TWO_LEVEL)
# Kronecker terms of each block (None: not a sum of Kronecker products)
TERMS = {
    "kfac": 1,
    "kfac_reduce": 1,
    "kpsvd": 1,
    "deflation": 2,
    "lanczos": 2,
    "kfac_corrected": 2,
    "ekfac": None,
    "shampoo": 1,
    "eva": 1,
    "exact": None,
}
LABELS = {
    "sgd": "SGD",
    "adam": "Adam",
    "swan": "SWAN",
    "kfac": "KFAC",
    "kfac_reduce": "KFAC-reduce",
    "kpsvd": "KPSVD",
    "deflation": "Deflation",
    "lanczos": "Lanczos",
    "kfac_corrected": "KFAC-corrected",
    "ekfac": "EKFAC",
    "shampoo": "Shampoo",
    "eva": "Eva",
    "exact": "Exact block Fisher",
    "kfac_two_level": "Two-level KFAC",
    "kfac_two_level_grad": "Two-level KFAC (gradient)",
    "kfac_two_level_nicolaides": "Two-level KFAC (Nicolaides)",
    "kfac_two_level_residual": "Two-level KFAC (residual)",
    "kfac_two_level_spectral": "Two-level KFAC (spectral)",
    "kfac_two_level_krylov": "Two-level KFAC (Krylov, Nicolaides)",
    "kfac_two_level_krylov_residual": "Two-level KFAC (Krylov, residual)",
    "kfac_two_level_tselepidis": "Two-level KFAC (Tselepidis)",
    "kfac_two_level_nicolaides_layerwise": "Two-level KFAC (Nicolaides, no cross-layer terms)",
}
# default (lr, damping) per optimizer: curves-small's, and the presets that override them
DEFAULTS = {
    None: {
        "sgd": (0.01, 0.0),
        "adam": (0.01, 0.0),
        "swan": (0.03, 0.0),
        "kfac": (0.3, 0.1),
        "kfac_reduce": (0.3, 0.1),
        "kpsvd": (0.3, 0.1),
        "deflation": (0.3, 0.1),
        "lanczos": (0.3, 0.1),
        "kfac_corrected": (0.3, 0.1),
        "ekfac": (0.03, 0.1),
        "shampoo": (0.1, 0.1),
        "eva": (0.1, 1.0),
        "exact": (0.1, 0.1),
    },
    "curves": {"sgd": (1e-3, 0.0), "adam": (3e-3, 0.0), "kfac": (0.03, 1.0), "kpsvd": (0.03, 1.0)},
    "mnist": {"sgd": (1e-3, 0.0), "adam": (1e-3, 0.0), "kfac": (0.3, 0.1)},
    "faces": {"sgd": (1e-4, 0.0), "adam": (3e-4, 0.0), "kfac": (0.3, 0.1)},
}


def test_the_method_and_optimizer_lists_in_order():
    assert tuple(core.METHODS) == APPROXIMATIONS
    assert tuple(core.OPTIMIZERS) == (*FIRST_ORDER, *NATURAL)
    assert tuple(core.FIRST_ORDER) == FIRST_ORDER


def test_which_optimizers_are_natural_gradient():
    natural = tuple(n for n in core.OPTIMIZERS if core.OptimizerConfig(n, lr=0.1).natural)
    assert natural == NATURAL


def test_optimizer_labels():
    assert dict(core.OPTIMIZER_LABELS) == LABELS


@pytest.mark.parametrize("preset", list(DEFAULTS))
def test_default_lr_and_damping(preset):
    for name, (lr, damping) in DEFAULTS[preset].items():
        assert core.default_lr(name, preset) == pytest.approx(lr, rel=1e-12), name
        assert core.default_damping(name, preset) == pytest.approx(damping, rel=1e-12), name


def test_a_natural_optimizer_needs_damping_and_a_first_order_one_does_not():
    for name in NATURAL:
        with pytest.raises(ValueError, match="damping must be > 0"):
            core.OptimizerConfig(name, lr=0.1, damping=0.0)
    for name in FIRST_ORDER:
        assert core.OptimizerConfig(name, lr=0.1, damping=0.0).damping == 0.0


def _batch():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    a[:, -1] = 1.0
    g = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    return a, g


@pytest.mark.parametrize("name", list(TERMS))
def test_kronecker_terms_of_each_block(name):
    a, g = _batch()
    block = core.approximate(name, a, g)
    assert block.method == name
    assert block.n_terms == TERMS[name]
    assert (block.da, block.dg) == (5, 3)


def test_kfac_corrected_is_kfac_plus_the_best_correction():
    """KFAC-corrected = A ⊗ G + the best Kronecker product of F − A ⊗ G: its first term is
    KFAC's, and it is closer to F than KFAC (a named oracle, not a registry lookup)."""
    a, g = _batch()
    m = a.shape[0]
    f = sum(torch.kron(torch.outer(a[i], a[i]), torch.outer(g[i], g[i])) for i in range(m)) / m
    kfac = torch.kron(a.T @ a / m, g.T @ g / m)
    torch.testing.assert_close(core.approximate("kfac", a, g).to_dense(), kfac)
    corrected = core.approximate("kfac_corrected", a, g).to_dense()
    assert torch.linalg.norm(f - corrected) < torch.linalg.norm(f - kfac)
    # the correction lies in the span of one Kronecker product: rank 1 after rearrangement
    diff = (corrected - kfac).reshape(5, 3, 5, 3).permute(0, 2, 1, 3).reshape(25, 9)
    sv = torch.linalg.svdvals(diff)
    assert float(sv[1]) <= 1e-10 * float(sv[0])
