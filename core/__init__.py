"""Kronoscope's numerical core: Fisher blocks, their Kronecker-factored approximations,
natural-gradient optimizers, datasets and training runs. No Streamlit import anywhere here.

Conventions (fixed once, used everywhere; the README's "engine in five lines" repeats them):

* A linear layer computes ``s = W ā`` with ``W`` of shape ``(dg, da)``; ``ā`` carries a trailing
  ``1`` when the layer has a bias (the bias is the last column of ``W``).
* ``g = ∂ℓ_i/∂s`` is the gradient of ONE sample's negative log-likelihood w.r.t. the layer output.
* Column-major ``vec``: ``vec(g āᵀ) = ā ⊗ g``, so the layer's Fisher block is
  ``F = (1/m) Σ_i (ā_i ā_iᵀ) ⊗ (g_i g_iᵀ)``, indexed in ``vec(W)`` order.
"""
