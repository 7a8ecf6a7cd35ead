"""Learn: the mathematics behind the approximations (conventions as in core/)."""

import streamlit as st

from pages import ui as sh

sh.ensure_navigation()

st.title("Learn: the mathematics")
st.markdown(
    "Conventions used everywhere in Kronoscope. A linear layer computes $s = W\\bar a$ with "
    "$W$ of shape $d_g \\times d_a$; $\\bar a$ is the input with a trailing 1 when the layer "
    "has a bias (the bias is the last column of $W$). $g = \\partial \\ell / \\partial s$ is "
    "the gradient of **one** sample's negative log-likelihood."
)

st.header("1. The Fisher block of a layer")
st.markdown("With column-major vec, the per-sample weight gradient is")
st.latex(
    r"\operatorname{vec}(\nabla_W \ell) = \operatorname{vec}(g\,\bar a^\top) = \bar a\otimes g,"
)
st.markdown("so on a minibatch of $m$ samples the layer's Fisher block is")
st.latex(
    r"F = \frac1m\sum_{i=1}^m (\bar a_i\otimes g_i)(\bar a_i\otimes g_i)^\top"
    r" = \frac1m\sum_{i=1}^m (\bar a_i\bar a_i^\top)\otimes(g_i g_i^\top),"
    r"\qquad F\in\mathbb R^{d_a d_g\times d_a d_g}."
)
st.markdown(
    "The **true** Fisher draws the targets from the model's own predictive distribution; the "
    "**empirical** Fisher uses the data's targets. $F$ has rank at most $m$: its nonzero "
    "eigenvalues are those of the $m\\times m$ matrix "
    "$\\tfrac1m(\\bar A\\bar A^\\top)\\circ(\\Gamma\\Gamma^\\top)$, which is how Kronoscope "
    "gets the exact spectrum of blocks with millions of rows."
)

st.header("2. KFAC")
st.latex(
    r"F \approx A\otimes G,\qquad A=\frac1m\sum_i \bar a_i\bar a_i^\top,\quad "
    r"G=\frac1m\sum_i g_i g_i^\top"
)
st.markdown(
    "Exact when inputs and output gradients are independent (Martens & Grosse, 2015). Its "
    "inverse is cheap because $(A\\otimes G)^{-1}=A^{-1}\\otimes G^{-1}$ and "
    "$(A\\otimes G)\\operatorname{vec}(V)=\\operatorname{vec}(G V A^\\top)$."
)

st.header("3. The rearrangement and KPSVD")
st.markdown(
    "View $X$ as a $d_a\\times d_a$ grid of $d_g\\times d_g$ blocks $X_{ij}$, and stack the "
    "blocks' vecs as rows: that is $\\mathcal R(X)$ (Van Loan & Pitsianis, 1993). Then"
)
st.latex(
    r"\mathcal R(R\otimes S)=\operatorname{vec}(R)\operatorname{vec}(S)^\top,\qquad"
    r"\|\mathcal R(X)\|_F=\|X\|_F,"
)
st.markdown(
    "so the best sum of $r$ Kronecker products is the rank-$r$ truncated SVD of "
    "$\\mathcal R(F)$ (Eckart–Young):"
)
st.latex(
    r"\min_{R_k,S_k}\Big\|F-\sum_{k=1}^r R_k\otimes S_k\Big\|_F"
    r"\;\Rightarrow\; R_k\otimes S_k=\sigma_k\,U_k\otimes V_k,\quad"
    r"\mathcal R(F)=\sum_k \sigma_k \operatorname{vec}(U_k)\operatorname{vec}(V_k)^\top ."
)
st.markdown(
    "**KPSVD** (Koroko et al., 2022) keeps the top term. Since "
    "$\\mathcal R(F)=\\frac1m PQ^\\top$ with $P=[\\operatorname{vec}(\\bar a_i\\bar a_i^\\top)]_i$ "
    "and $Q=[\\operatorname{vec}(g_ig_i^\\top)]_i$, every singular vector lies in their span, "
    "so each factor has the form $R=\\bar A^\\top\\operatorname{diag}(c)\\bar A$ — as cheap to "
    "form as KFAC's $A$ — and the SVD runs on $m\\times m$ Gram matrices "
    "$(\\bar A\\bar A^\\top)^{\\circ 2}$, $(\\Gamma\\Gamma^\\top)^{\\circ 2}$."
)

st.header("4. Deflation and Lanczos")
st.markdown(
    "Both compute the best **two** terms. Deflation finds the second by power iteration on "
    "$\\mathcal R(F)-\\sigma_1 u_1 v_1^\\top$; Lanczos by Golub–Kahan–Lanczos "
    "bidiagonalisation of $\\mathcal R(F)$. The second singular value is close to the third "
    "on autoencoder layers ($\\sigma_3/\\sigma_2\\approx0.95$), so power iteration converges "
    "slowly while Krylov methods do not."
)

st.header("5. KFAC-corrected")
st.latex(
    r"F\approx A\otimes G + R\otimes S,\qquad R\otimes S=\arg\min\|F-A\otimes G-R\otimes S\|_F ."
)
st.markdown(
    "Because $\\mathcal R(A\\otimes G)=\\operatorname{vec}(A)\\operatorname{vec}(G)^\\top"
    "=\\frac1{m^2}P\\mathbf 1\\mathbf 1^\\top Q^\\top$, the residual is "
    "$\\frac1m P C Q^\\top$ with the centering matrix $C=I-\\frac1m\\mathbf 1\\mathbf 1^\\top$: "
    "the same Gram machinery, centred."
)

st.header("6. Comparison rows: EKFAC and Shampoo")
st.markdown(
    "**EKFAC** (George et al., 2018) keeps KFAC's eigenbasis $U_A\\otimes U_G$ and refits the "
    "diagonal to the second moments of the projected per-sample gradients. **Shampoo**-style "
    "factors (Gupta et al., 2018) are "
    "$L=\\frac1m\\sum\\|g_i\\|^2\\bar a_i\\bar a_i^\\top$ and "
    "$R=\\frac1m\\sum\\|\\bar a_i\\|^2 g_ig_i^\\top$, scaled by the Frobenius-optimal scalar."
)

st.header("7. Why inverting a sum of Kronecker products needs care")
st.markdown(
    "For one product, $(R\\otimes S+\\lambda I)^{-1}$ is diagonal in the eigenbasis "
    "$U_R\\otimes U_S$. The inverse of a sum of two products is in general neither a "
    "Kronecker product nor a sum of two, and the two terms have different eigenbases. With "
    "$R_1,S_1$ positive definite (after damping), solve the generalized eigenproblems"
)
st.latex(
    r"R_2x=\mu R_1x,\quad S_2y=\nu S_1y,\qquad E_R^\top R_1E_R=I,\;"
    r"E_R^\top R_2E_R=\operatorname{diag}(\mu)"
)
st.markdown("(and likewise for $S$); then the sum is congruent to a diagonal matrix and")
st.latex(
    r"(R_1\otimes S_1+R_2\otimes S_2)^{-1}\operatorname{vec}(V)"
    r"=\operatorname{vec}\!\Big(E_S\big[(E_S^\top V E_R)\oslash(\mathbf 1+\nu\mu^\top)\big]"
    r"E_R^\top\Big)."
)
st.markdown(
    "The second term is **indefinite** (a singular vector of $\\mathcal R(F)$ beyond the first "
    "need not be positive semi-definite), and so can be the sum: where "
    "$1+\\mu_i\\nu_j\\le 0$ the approximation is not positive definite and the formula above "
    "would amplify or flip a direction. Kronoscope floors $1+\\mu\\nu$ (default 0.1: the "
    "correction may cancel at most 90% of the damped first term along any generalized "
    "eigendirection) and counts how often that happens — never a silent $|\\cdot|$."
)
st.markdown(
    "Damping: the optimizers apply Martens–Grosse factored damping to the first term, "
    "$(R_1+\\pi\\sqrt\\lambda I)\\otimes(S_1+\\sqrt\\lambda/\\pi\\, I)$ with "
    "$\\pi=\\sqrt{(\\operatorname{tr}R_1/d_a)/(\\operatorname{tr}S_1/d_g)}$. The explorer's "
    "natural-gradient cosine uses exact damping $(\\tilde F+\\lambda I)^{-1}$ on both sides."
)

st.header("8. The numbers in the explorer")
st.latex(
    r"\text{relative error}=\frac{\|F-\tilde F\|_F}{\|F\|_F},\qquad"
    r"\text{spectrum error}=\frac{\|\lambda(F)-\lambda(\tilde F)\|_2}{\|\lambda(F)\|_2},"
)
st.latex(
    r"\text{natural-gradient cosine}=\cos\angle\big((F+\lambda I)^{-1}\nabla,\;"
    r"(\tilde F+\lambda I)^{-1}\nabla\big),"
)
st.markdown(
    "all computed without forming $F$: $\\|F\\|_F^2=\\frac1{m^2}\\sum_{ij}"
    "(\\bar a_i^\\top\\bar a_j)^2(g_i^\\top g_j)^2$, "
    "$\\langle F,R\\otimes S\\rangle=\\frac1m\\sum_i(\\bar a_i^\\top R\\bar a_i)"
    "(g_i^\\top S g_i)$, and the exact natural gradient by Woodbury on the $m\\times m$ Gram "
    "matrix. Eigenvalues are sorted descending and zero-padded."
)

st.header("9. Methods that followed: Eva, SWAN, and Shampoo as one power step")
st.markdown(
    "**Eva** (Zhang, Shi & Li, ICLR 2023) keeps only the batch means of KFAC's vectors, "
    "$\\bar a=\\frac1m\\sum_i\\bar a_i$ and $\\bar g=\\frac1m\\sum_i g_i$, and uses the rank-one "
    "product of their outer products, damped as a whole and inverted by Sherman–Morrison "
    "(no eigendecomposition; the optimizer keeps a running average of the two vectors):"
)
st.latex(
    r"\tilde F=(\bar a\bar a^\top)\otimes(\bar g\bar g^\top),\qquad"
    r"(\tilde F+\lambda I)^{-1}\operatorname{vec}(V)=\frac1\lambda\operatorname{vec}\!\Big(V-"
    r"\frac{\bar g^\top V\bar a}{\lambda+\|\bar a\|^2\|\bar g\|^2}\,\bar g\bar a^\top\Big)."
)
st.markdown(
    "Since $A-\\bar a\\bar a^\\top$ and $G-\\bar g\\bar g^\\top$ are covariances, Eva's factors "
    "lie below KFAC's; the explorer shows how far its $\\tilde F$ is from $F$."
)
st.markdown(
    "**SWAN** (Ma, Gong, Scetbon & Meeds, 2024) keeps no state at all: each layer's gradient "
    "matrix $V$ is standardised row by row (GradNorm) and whitened (GradWhitening), and the "
    "weights move by $-\\eta$ times the result:"
)
st.latex(
    r"\tilde V=\operatorname{diag}(s)^{-1}(V-\bar v\mathbf 1^\top),\qquad"
    r"\Delta W=(\tilde V\tilde V^\top)^{-1/2}\tilde V=UW^\top\quad(\tilde V=U\Sigma W^\top),"
)
st.markdown(
    "computed by Newton–Schulz iterations $X\\leftarrow\\frac12(3X-XX^\\top X)$ from "
    "$\\tilde V/\\|\\tilde V\\|_F$. Its relation to the Fisher factors: Shampoo's factors are "
    "the expectations $L=\\mathbb E[D_iD_i^\\top]$, $R=\\mathbb E[D_i^\\top D_i]$ over the "
    "per-sample gradients $D_i=g_i\\bar a_i^\\top$ (section 6), and its step is "
    "$L^{-1/4}VR^{-1/4}$. SWAN puts the one standardised minibatch gradient in place of the "
    "expectation, $L=\\tilde V\\tilde V^\\top$, $R=\\tilde V^\\top\\tilde V$, and then "
    "$L^{-1/4}\\tilde VR^{-1/4}=(\\tilde V\\tilde V^\\top)^{-1/2}\\tilde V$: the same "
    "whitening, with nothing averaged over samples or steps."
)
st.markdown(
    "**Shampoo and KPSVD** (Morwani et al., 2024): the best single Kronecker product is the top "
    "singular pair of $\\mathcal R(F)$, and the power method for it, started from the "
    "identity on both sides, reaches Shampoo's factors after one step:"
)
st.latex(
    r"R_k=\mathcal R(F)\,S_{k-1},\quad S_k=\mathcal R(F)^\top R_{k-1},\quad R_0=S_0=I;"
    r"\qquad R_1\propto\tfrac1m\textstyle\sum_i\|g_i\|^2\bar a_i\bar a_i^\top,\;"
    r"S_1\propto\tfrac1m\textstyle\sum_i\|\bar a_i\|^2 g_ig_i^\top ."
)
st.markdown(
    "With the best scale $c_k=\\langle F,R_k\\otimes S_k\\rangle/\\|R_k\\otimes S_k\\|_F^2$, "
    "$\\tilde F_k=c_kR_k\\otimes S_k$ goes from Shampoo ($k=1$) to KPSVD ($k\\to\\infty$, at "
    "the rate $(\\sigma_2/\\sigma_1)^k$); its error can never fall below KPSVD's."
)
st.caption(
    "In the explorer: the *Power iterations* tab draws this error against $k$ for the chosen "
    "layer, with KFAC and KPSVD as reference lines (URL parameter `power_k`)."
)

st.header("10. What better curvature buys: compressing and pruning a layer")
st.markdown(
    "Around trained weights (gradient ≈ 0) the loss grows by about "
    "$\\tfrac12\\operatorname{vec}(\\Delta W)^\\top F\\operatorname{vec}(\\Delta W)$, so each "
    "approximation, damped as its optimizer damps it ($M$), says which changes of $W$ are cheap. "
    "**Compress** replaces $W$ by the rank-$k$ matrix closest in that norm. For one product "
    "$M=\\tilde A\\otimes\\tilde G$ (factored damping) the answer is closed-form — the "
    "Generalized Fisher-Weighted SVD (Chekalina et al., 2025); FWSVD (Hsu et al., 2022) weights "
    "each output row by its summed Fisher diagonal, and the plain SVD by nothing:"
)
st.latex(
    r"X_k=\arg\min_{\operatorname{rank}X\le k}\operatorname{vec}(W-X)^\top M"
    r"\operatorname{vec}(W-X),\qquad M=\tilde A\otimes\tilde G:\;"
    r"X_k=\tilde G^{-1/2}\big[\tilde G^{1/2}W\tilde A^{1/2}\big]_k\tilde A^{-1/2}."
)
st.markdown(
    "A sum of two products has no closed form: in the generalized eigenbases of the two terms "
    "the norm weights each entry by $1+\\nu_p\\mu_i$, and Kronoscope solves that weighted "
    "low-rank problem by alternating least squares from the leading term's closed form (never "
    "worse than it). EKFAC and the exact block are solved densely on small layers."
)
st.markdown(
    "**Prune** removes a fraction of the weights (single weights, whole output rows or whole "
    "input columns) with the optimal brain surgeon (Hassibi & Stork, 1993) on a Kronecker "
    "curvature, as in The LLM Surgeon (van der Ouderaa et al., 2023): remove the set $Q$ of "
    "least saliency and move the other weights to compensate,"
)
st.latex(
    r"\rho_q=\frac{w_q^2}{2\,[M^{-1}]_{qq}},\qquad"
    r"\delta=-M^{-1}E\,(E^\top M^{-1}E)^{-1}E^\top w,\qquad"
    r"\operatorname{diag}\big((\tilde A\otimes\tilde G)^{-1}\big)="
    r"\operatorname{diag}(\tilde A^{-1})\otimes\operatorname{diag}(\tilde G^{-1}),"
)
st.markdown(
    "with $E$ the columns of the identity on $Q$ (the update zeroes exactly the removed "
    "weights). Many weights go in one shot, or in several shots that rank again after each "
    "compensation. Magnitude pruning — drop the smallest $|w|$, change nothing else — is the "
    "baseline. The explorer plots the held-out loss increase against $k$ or the sparsity for "
    "every method: does a better approximation of $F$ give a better compressed or pruned "
    "network?"
)
st.caption(
    "In the explorer: the *Compress* and *Prune* tabs run these sweeps on the chosen layer "
    "(URL parameters `compress_k`, `prune_sparsity`, `prune_kind`); `python -m core reproduce "
    "--experiment compress` (or `prune`) runs them on a trained network with verdicts."
)

st.header("11. Two-level KFAC: curvature between layers")
st.markdown(
    "KFAC's preconditioner is block-diagonal: it ignores every block of $F$ that couples two "
    "layers. Two-level KFAC (Tselepidis et al., 2020; compared by Koroko et al., 2023), after "
    "two-level domain decomposition, adds a coarse correction on a small space $R_0^\\top$ "
    "($n\\times k$) of vectors that each live on one layer, orthonormalised:"
)
st.latex(
    r"P^{-1}=M^{-1}+R_0^\top\big(R_0FR_0^\top+\lambda I\big)^{-1}R_0,\qquad"
    r"(R_0FR_0^\top)_{ij}=\frac1m\sum_n (R_0 g_n)_i\,(R_0 g_n)_j,"
)
st.markdown(
    "with $M$ KFAC's damped block diagonal and $g_n$ the per-sample gradients of the whole "
    "network, so the $k\\times k$ coarse matrix costs one projection per coarse vector and no "
    "$n\\times n$ matrix. The coarse spaces, one optimizer each: the layer's KFAC direction "
    "(`kfac_two_level`), its gradient (`_grad`), its constant vector (Nicolaides, `_nicolaides`), "
    "the preconditioned residual $M_l^{-1}r_l$ with $r=\\nabla-(F+\\lambda I)M^{-1}\\nabla$ "
    "(`_residual`), the eigenvector of the smallest eigenvalue of KFAC's block (`_spectral`), "
    "the Krylov pairs $\\{1, M_l^{-1}1\\}$ (`_krylov`) and $\\{M_l^{-1}r_l, M_l^{-2}r_l\\}$ "
    "(`_krylov_residual`), and the constant vector with Tselepidis et al.'s Kronecker-factored "
    "coarse matrix, $F_{ij}\\approx A_{ij}\\otimes G_{ij}$ from cross-layer factors "
    "(`_tselepidis`). `_nicolaides_layerwise` is a control: the constant vectors with the "
    "coarse matrix cut to its diagonal, a per-layer rescaling with no curvature between "
    'layers. The paper finds that two-level KFAC "does not really improve the performance '
    'of KFAC"; `python -m core reproduce --experiment two_level` measures it with every '
    "variant and the control, and the **Network Fisher** page shows the whole $F$ next to "
    "KFAC and two-level KFAC on networks small enough to form it."
)
