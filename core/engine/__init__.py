"""The engine: a layer's Fisher block and its Kronecker-factored approximations.

Layers, bottom to top: ``kron`` (Kronecker algebra, the rearrangement ℛ), ``shared_batch``
(weight-sharing layers' per-sample gradients D_n = Γ_nᵀ A_n and their products),
``rearranged_svd`` (leading singular triplets of ℛ(F) without forming F), ``inverses`` (a
damped inverse per approximation and damping), ``approx`` (every approximation: one interface),
``fisher`` (the exact block, behind the same interface), ``fisher_ema`` (the EMA of the Fisher
in rearranged low-rank form), ``capture`` (per-sample layer inputs and output gradients),
``likelihoods`` (one class per loss), ``methods`` (the registry of method names and
``approximate()``, the front door), ``validation`` (input checks and size limits). Nothing here
knows about datasets or training.
"""
