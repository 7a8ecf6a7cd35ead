r"""The project's likelihoods, one class each: :class:`Bernoulli` (``"bce"``), :class:`Gaussian`
(``"mse"``) and :class:`Categorical` (``"ce"``); :func:`likelihood` looks one up by its name.

The model's output ``z`` (``(m, d)``, one row per sample) parametrises a distribution
``p(y | z)`` over targets. Every class answers the same verbs:

* :meth:`~Likelihood.nll`: the per-sample negative log-likelihood ``ℓ_i = −log p(y_i | z_i)``,
  **summed over output units** (never averaged), shape ``(m,)``; a training loss is its mean over
  samples (:func:`batch_loss`);
* :meth:`~Likelihood.sample`: targets ``y_i ~ p(· | z_i)`` drawn with the caller's
  ``torch.Generator`` (the true Fisher's Monte-Carlo targets; the global RNG is never used);
* :meth:`~Likelihood.check_targets`: validate data targets (the empirical Fisher's);
* :meth:`~Likelihood.mean`: the predictive mean ``E[y | z]`` in data space (reconstructions);
* :meth:`~Likelihood.output_grad`: the closed form of ``g = ∂ℓ/∂z`` at the output;
* :meth:`~Likelihood.output_fisher`: the Fisher of ``p(y | z)`` w.r.t. ``z``,
  ``F_z = E_{y ~ p(·|z)}[g gᵀ]``, per sample ``(m, d, d)``;
* :attr:`~Likelihood.autoencoder`: whether the targets are the inputs (a reconstruction loss).

All three are exponential families in their natural parameter ``z`` with the canonical link, so
``g = E[y | z] − y`` (the "matching loss" property: Schraudolph 2002, *Fast curvature
matrix-vector products for second-order gradient descent*, §3; Bishop 2006, *Pattern Recognition
and Machine Learning*, §4.3.6) and the output Fisher is the covariance of the sufficient
statistic, ``F_z = Cov[y | z] = ∇²_z A(z)`` (``A`` the log-partition; Martens 2020, *New
insights and perspectives on the natural gradient method*, JMLR 21, §9.2):

========== ============================== ====================== ===========================
name       ``ℓ(z, y)``                    ``g = ∂ℓ/∂z``          ``F_z = E[g gᵀ]``
========== ============================== ====================== ===========================
``"bce"``  ``Σ_j softplus(z_j) − y_j z_j`` ``σ(z) − y``           ``diag(σ(z)(1 − σ(z)))``
``"mse"``  ``½ ‖z − y‖²``                  ``z − y``              ``I``
``"ce"``   ``−log softmax(z)_y``           ``softmax(z) − e_y``   ``diag(p) − p pᵀ``
========== ============================== ====================== ===========================

(``"mse"`` is the N(z, I) NLL without its constant ``(d/2) log 2π``; PyTorch's
``BCEWithLogitsLoss``/``MSELoss`` average over units by default and ``MSELoss`` has no ½:
neither is this loss.) Sampling targets from the model's own predictive distribution makes
``(1/m) Σ_i g_i g_iᵀ`` an unbiased estimate of the true Fisher's output factor (Martens & Grosse
2015, *Optimizing neural networks with Kronecker-factored approximate curvature*, §5); the data's
targets give the empirical Fisher (Kunstner, Balles & Hennig 2019, *Limitations of the empirical
Fisher approximation for natural gradient descent*).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

__all__ = [
    "AUTOENCODER_LOSSES",
    "LIKELIHOODS",
    "LOSS_KINDS",
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "Likelihood",
    "Loss",
    "batch_loss",
    "likelihood",
    "per_sample_nll",
]

Loss = Literal["bce", "mse", "ce"]


class Likelihood(ABC):
    """A distribution ``p(y | z)`` over targets, parametrised by the model output ``z``.

    Subclasses are stateless; use the shared instances through :func:`likelihood`.
    """

    name: ClassVar[str]
    """The public string (``loss="bce"`` everywhere)."""
    autoencoder: ClassVar[bool]
    """Whether the targets are the inputs (a reconstruction loss an autoencoder trains on)."""
    output_activation: ClassVar[str]
    """What the last layer returns, as :func:`core.training.models.describe_layers` labels it."""

    @abstractmethod
    def nll(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``ℓ_i = −log p(y_i | z_i)`` summed over output units, shape ``(m,)``."""

    @abstractmethod
    def mean(self, output: torch.Tensor) -> torch.Tensor:
        """The predictive mean ``E[y | z]`` (for ``"ce"``: the class probabilities)."""

    @abstractmethod
    def _draw(self, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``y ~ p(· | z)`` for a detached ``z`` on the generator's device."""

    @abstractmethod
    def check_targets(self, targets: Any, output: torch.Tensor) -> torch.Tensor:
        """Validate data targets for ``output``; return them on its device. ``ValueError``."""

    @abstractmethod
    def output_grad(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The closed form of ``g_i = ∂ℓ_i/∂z_i``, shape ``(m, d)`` (see the module table)."""

    @abstractmethod
    def output_fisher(self, output: torch.Tensor) -> torch.Tensor:
        """``F_z = E_{y ~ p(·|z)}[g gᵀ]`` per sample, shape ``(m, d, d)``."""

    def sample(self, output: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draw ``y_i ~ p(· | z_i)`` from the model's predictive distribution (no gradient).

        Sampling happens on the generator's device, then moves to the output's device, so a
        CPU generator gives the same targets whatever device the model runs on.
        """
        z = output.detach().to(generator.device)
        return self._draw(z, generator).to(output.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check_dense_targets(targets: Any, output: torch.Tensor, name: str) -> torch.Tensor:
    """Targets of the output's shape, finite, cast to its dtype and device."""
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if tuple(targets.shape) != tuple(output.shape):
        raise ValueError(
            f"for loss={name!r} targets must have the output's shape {tuple(output.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    t = targets.to(device=output.device, dtype=output.dtype)
    if not torch.isfinite(t).all():
        raise ValueError("targets contain NaN or inf")
    return t


def _summed_over_units(
    output: torch.Tensor,
    target: torch.Tensor,
    elementwise_nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    if output.shape != target.shape:
        raise ValueError(
            f"output and target shapes differ: {tuple(output.shape)} vs {tuple(target.shape)}"
        )
    if output.ndim < 1:
        raise ValueError("output must have a batch dimension")
    return elementwise_nll(output, target).reshape(output.shape[0], -1).sum(dim=1)


class Bernoulli(Likelihood):
    r"""Independent Bernoulli units with logits ``z``: ``p(y_j = 1 | z) = σ(z_j)``.

    ``ℓ = Σ_j −y_j log σ(z_j) − (1 − y_j) log(1 − σ(z_j)) = Σ_j softplus(z_j) − y_j z_j``
    (computed stably by ``binary_cross_entropy_with_logits``; targets in ``[0, 1]`` are allowed,
    as for grey-level images). ``g = σ(z) − y``, ``F_z = diag(σ(z)(1 − σ(z)))``.
    """

    name = "bce"
    autoencoder = True
    output_activation = "logits"

    def nll(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _summed_over_units(
            output,
            target,
            lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction="none"),
        )

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output)

    def _draw(self, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(z), generator=generator)

    def check_targets(self, targets: Any, output: torch.Tensor) -> torch.Tensor:
        t = _check_dense_targets(targets, output, self.name)
        if (t < 0).any() or (t > 1).any():
            raise ValueError("for loss='bce' targets must lie in [0, 1]")
        return t

    def output_grad(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output) - target

    def output_fisher(self, output: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(output)
        return torch.diag_embed(s * (1 - s))


class Gaussian(Likelihood):
    r"""Unit-variance Gaussian with mean ``z``: ``y ~ N(z, I)``.

    ``ℓ = ½ ‖z − y‖²`` (the NLL without its constant ``(d/2) log 2π``), ``g = z − y``,
    ``F_z = I``.
    """

    name = "mse"
    autoencoder = True
    output_activation = "linear output"

    def nll(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _summed_over_units(output, target, lambda z, y: 0.5 * (z - y).square())

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def _draw(self, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return z + torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)

    def check_targets(self, targets: Any, output: torch.Tensor) -> torch.Tensor:
        return _check_dense_targets(targets, output, self.name)

    def output_grad(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return output - target

    def output_fisher(self, output: torch.Tensor) -> torch.Tensor:
        m, d = output.shape
        eye = torch.eye(d, dtype=output.dtype, device=output.device)
        return eye.expand(m, d, d).clone()


class Categorical(Likelihood):
    r"""One class out of ``d`` with logits ``z``: ``p(y = k | z) = softmax(z)_k``.

    Targets are integer class indices, shape ``(m,)``. ``ℓ = −log softmax(z)_y``,
    ``g = softmax(z) − e_y``, ``F_z = diag(p) − p pᵀ`` with ``p = softmax(z)``.
    """

    name = "ce"
    autoencoder = False
    output_activation = "logits"

    def nll(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target, reduction="none")

    def mean(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output, dim=1)

    def _draw(self, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        probs = torch.softmax(z, dim=1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    def check_targets(self, targets: Any, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(targets, torch.Tensor):
            raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
        m = output.shape[0]
        if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.dim() != 1:
            raise ValueError(
                "for loss='ce' targets must be a 1-D integer tensor of class indices of shape "
                f"({m},), got dtype {targets.dtype} and shape {tuple(targets.shape)}"
            )
        if targets.shape[0] != m:
            raise ValueError(f"targets have batch {targets.shape[0]}, but x has batch {m}")
        n_classes = output.shape[1]
        if targets.numel() and (targets.min() < 0 or targets.max() >= n_classes):
            raise ValueError(f"class-index targets must lie in [0, {n_classes - 1}]")
        return targets.to(device=output.device, dtype=torch.long)

    def output_grad(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(target, output.shape[1]).to(output.dtype)
        return torch.softmax(output, dim=1) - onehot

    def output_fisher(self, output: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(output, dim=1)
        return torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)


LIKELIHOODS: dict[str, Likelihood] = {
    lik.name: lik for lik in (Bernoulli(), Gaussian(), Categorical())
}
"""The likelihoods by their public name."""

LOSS_KINDS: tuple[str, ...] = tuple(LIKELIHOODS)
AUTOENCODER_LOSSES: tuple[str, ...] = tuple(n for n, lik in LIKELIHOODS.items() if lik.autoencoder)


def likelihood(name: str) -> Likelihood:
    """The :class:`Likelihood` named ``name`` (``"bce"``, ``"mse"`` or ``"ce"``); ``ValueError``
    for any other name."""
    lik = LIKELIHOODS.get(name) if isinstance(name, str) else None
    if lik is None:
        raise ValueError(f"unknown loss kind {name!r}; expected one of {LOSS_KINDS}")
    return lik


def per_sample_nll(output: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample negative log-likelihood of the likelihood named ``loss``, summed over output
    units; shape ``(batch,)``. See :meth:`Likelihood.nll` and the module table."""
    return likelihood(loss).nll(output, target)


def batch_loss(output: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """The training loss: mean over the batch of :func:`per_sample_nll` (a scalar)."""
    return per_sample_nll(output, target, loss).mean()
