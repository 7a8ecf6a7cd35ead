"""core.engine.likelihoods against closed forms, and core.engine.layers' one definition of a
plain linear layer."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from core.engine import capture as capture_module
from core.engine.layers import is_plain_linear, linear_layers
from core.engine.likelihoods import (
    AUTOENCODER_LOSSES,
    LIKELIHOODS,
    LOSS_KINDS,
    Bernoulli,
    Categorical,
    Gaussian,
    likelihood,
)
from core.training import models
from core.training.optim import _factored_modules

D64 = torch.float64


def _logits(m: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=D64)


def _outcomes(name: str, d: int) -> list[torch.Tensor]:
    """Every outcome y of one sample (Bernoulli: {0,1}^d; categorical: the d classes)."""
    if name == "bce":
        return [torch.tensor(bits, dtype=D64) for bits in itertools.product((0.0, 1.0), repeat=d)]
    return [torch.tensor(k) for k in range(d)]


def _log_prob(name: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y | z) for one sample, written independently of core.engine.likelihoods."""
    if name == "bce":
        p = torch.sigmoid(z)
        return (y * p.log() + (1 - y) * (1 - p).log()).sum()
    return torch.log_softmax(z, dim=0)[y]


# -- lookup ---------------------------------------------------------------------------------


def test_lookup_by_public_name() -> None:
    assert LOSS_KINDS == ("bce", "mse", "ce")
    assert AUTOENCODER_LOSSES == ("bce", "mse")
    assert isinstance(likelihood("bce"), Bernoulli)
    assert isinstance(likelihood("mse"), Gaussian)
    assert isinstance(likelihood("ce"), Categorical)
    assert all(likelihood(name).name == name for name in LOSS_KINDS)
    assert [lik.autoencoder for lik in LIKELIHOODS.values()] == [True, True, False]


@pytest.mark.parametrize("bad", ["nll", "BCE", "", None, 3])
def test_unknown_name_raises(bad) -> None:
    with pytest.raises(ValueError, match="unknown loss kind"):
        likelihood(bad)


# -- NLL and g at the output ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bce", "ce"])
def test_nll_is_minus_log_prob_summed_over_units(name: str) -> None:
    z = _logits(4, 3)
    lik = likelihood(name)
    for i in range(4):
        for y in _outcomes(name, 3):
            nll = lik.nll(z[i : i + 1], y.unsqueeze(0))
            torch.testing.assert_close(nll, -_log_prob(name, z[i], y).reshape(1))


def test_gaussian_nll_is_half_squared_error() -> None:
    mu, y = _logits(5, 3), _logits(5, 3, seed=1)
    torch.testing.assert_close(likelihood("mse").nll(mu, y), 0.5 * ((mu - y) ** 2).sum(dim=1))


@pytest.mark.parametrize("name", LOSS_KINDS)
def test_output_grad_is_autograd_of_nll(name: str) -> None:
    lik = likelihood(name)
    z = _logits(6, 4).requires_grad_(True)
    y = lik.sample(z, torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(lik.nll(z, y).sum(), z)
    torch.testing.assert_close(lik.output_grad(z.detach(), y), grad)


@pytest.mark.parametrize("name", ["bce", "mse"])
def test_output_grad_is_mean_minus_target(name: str) -> None:
    lik = likelihood(name)
    z, y = _logits(3, 4), torch.rand(3, 4, dtype=D64)
    torch.testing.assert_close(lik.output_grad(z, y), lik.mean(z) - y)


# -- E[g gᵀ] equals the output Fisher ----------------------------------------------------------


@pytest.mark.parametrize("name", ["bce", "ce"])
def test_expected_g_outer_is_output_fisher_by_enumeration(name: str) -> None:
    """Exact: Σ_y p(y|z) g gᵀ over every outcome equals diag(σ(1−σ)) or diag(p) − ppᵀ."""
    lik = likelihood(name)
    d = 4
    z = _logits(3, d, seed=2)
    for i in range(3):
        zi = z[i : i + 1]
        expected = torch.zeros(d, d, dtype=D64)
        mean = torch.zeros(d, dtype=D64)
        for y in _outcomes(name, d):
            p = _log_prob(name, z[i], y).exp()
            g = lik.output_grad(zi, y.unsqueeze(0))[0]
            expected += p * torch.outer(g, g)
            mean += p * (y if name == "bce" else nn.functional.one_hot(y, d).to(D64))
        torch.testing.assert_close(lik.output_fisher(zi)[0], expected)
        torch.testing.assert_close(lik.mean(zi)[0], mean)


def test_output_fisher_closed_forms() -> None:
    z = _logits(2, 3)
    s, p = torch.sigmoid(z), torch.softmax(z, dim=1)
    torch.testing.assert_close(likelihood("bce").output_fisher(z), torch.diag_embed(s * (1 - s)))
    torch.testing.assert_close(
        likelihood("mse").output_fisher(z), torch.eye(3, dtype=D64).expand(2, 3, 3)
    )
    torch.testing.assert_close(
        likelihood("ce").output_fisher(z), torch.diag_embed(p) - torch.einsum("mi,mj->mij", p, p)
    )


@pytest.mark.parametrize("name", LOSS_KINDS)
def test_sampled_g_outer_estimates_output_fisher(name: str) -> None:
    """Monte Carlo through :meth:`sample`: (1/n) Σ g gᵀ → F_z (I for the unit Gaussian)."""
    lik = likelihood(name)
    n, d = 40_000, 3
    z = _logits(1, d, seed=3).expand(n, d)
    y = lik.sample(z, torch.Generator().manual_seed(4))
    g = lik.output_grad(z, y)
    estimate = g.T @ g / n
    # Entries of g are bounded by 1 (bce, ce) or N(0, 1) (mse): 5 standard errors ≈ 5·√(2/n).
    torch.testing.assert_close(estimate, lik.output_fisher(z[:1])[0], atol=0.04, rtol=0)


# -- sampling and targets ---------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSS_KINDS)
def test_sample_is_seeded_by_the_generator_only(name: str) -> None:
    lik = likelihood(name)
    z = _logits(5, 3)
    state = torch.get_rng_state()
    a = lik.sample(z, torch.Generator().manual_seed(7))
    b = lik.sample(z, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert a.shape == ((5,) if name == "ce" else (5, 3))
    assert not a.requires_grad


def test_check_targets() -> None:
    out = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        likelihood("mse").check_targets([[0.0] * 3] * 2, out)
    with pytest.raises(ValueError, match="must lie in"):
        likelihood("bce").check_targets(torch.full((2, 3), -0.5), out)
    assert likelihood("mse").check_targets(torch.full((2, 3), -0.5, dtype=D64), out).dtype == (
        torch.float32
    )
    with pytest.raises(ValueError, match="class indices"):
        likelihood("ce").check_targets(torch.zeros(2), out)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        likelihood("ce").check_targets(torch.tensor([0, 3]), out)
    assert likelihood("ce").check_targets(torch.tensor([0, 2], dtype=torch.int32), out).dtype == (
        torch.long
    )


# -- one plain-linear definition -------------------------------------------------------------


class _ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class _TaggedLinear(nn.Linear):
    """A subclass that keeps nn.Linear's forward: still a plain linear layer."""


def test_one_plain_linear_definition_everywhere() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), _ScaledLinear(4, 4), _TaggedLinear(4, 2))
    assert [is_plain_linear(m) for m in model] == [True, False, False, True]
    names = [name for name, _ in linear_layers(model)]
    assert names == ["0", "3"]
    assert [name for name, _ in models.linear_layers(model)] == names
    assert capture_module.linear_layer_names(model) == names
    assert list(_factored_modules(model)) == names
    assert [info.name for info in models.describe_layers(model)] == names
