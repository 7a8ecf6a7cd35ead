"""Network-level view: the whole network's Fisher against KFAC's block diagonal and two-level
KFAC (core.views.network_fisher; Koroko et al. 2023)."""

from __future__ import annotations

import streamlit as st

from core import network_fisher
from pages import ui as sh

sh.ensure_navigation()

# the autoencoders offered per dataset: the first two fit the dense limit, the last does not
WIDTHS = {
    "curves-small": ("196-6-3", "196-4-2", "196-8-4"),
    "digits": ("64-16-8", "64-8-4", "64-32-16"),
}

st.title("Network-level Fisher")
st.markdown(
    "Every other view looks at one layer. Here the Fisher of the **whole network** "
    "(F = JᵀJ/m from the per-sample gradients of all layers, cross-layer blocks included) is "
    "compared with KFAC's block diagonal, the exact block diagonal, and **two-level KFAC** "
    "(KFAC plus a coarse correction R₀ᵀ(R₀FR₀ᵀ + λI)⁻¹R₀ with one vector per layer; Koroko et "
    "al. 2023). Networks up to "
    f"{network_fisher.DENSE_PARAMETER_LIMIT:,} parameters get the matrices and heatmaps; "
    "larger ones the directions only."
)
settings = sh.UrlSettings("network")
sh.compute.start_view()
settings.show_notices()
with st.sidebar:
    st.header("Network")
    dataset = settings.select("Dataset", list(WIDTHS), "net_data", "curves-small")
    widths = settings.select("Autoencoder widths", WIDTHS[dataset], "net_widths")
    seed = settings.number("Seed", "net_seed", 0, min_value=0, max_value=10_000)
    steps = settings.number(
        "KFAC steps before the view", "net_steps", 0, min_value=0, max_value=300,
        help="0: the network at initialisation.",
    )  # fmt: skip
    m = settings.number("Fisher minibatch m", "net_m", 128, min_value=8, max_value=512)
    damping = settings.select_slider("Damping λ", [1e-3, 1e-2, 1e-1, 1.0], "net_damping", 1e-1)
settings.sync(final=False)

shape = tuple(int(w) for w in widths.split("-"))
key = ("network_view", dataset, shape, int(m), float(damping), int(seed), int(steps))
with sh.friendly_errors("Network-level Fisher"):
    view = sh.compute.compute(
        key, network_fisher.network_view, dataset, shape, int(m), float(damping), int(seed),
        int(steps), what="The whole network's Fisher", how="choose a smaller network or m",
        lane="heavy",
    )  # fmt: skip
    st.subheader(f"Directions ({view.parameters:,} parameters)")
    st.caption(
        "Each damped direction d against the exact damped natural gradient d* = (F + λI)⁻¹∇ "
        "of the whole network: relative error ‖d − d*‖/‖d*‖ (lower is closer) and cosine."
    )
    st.dataframe(view.directions, hide_index=True)
    if view.matrices is None:
        st.info(
            f"{view.parameters:,} parameters: above the dense limit of "
            f"{network_fisher.DENSE_PARAMETER_LIMIT:,}, so no n × n matrices are formed."
        )
    else:
        st.subheader("Matrices")
        st.caption(
            "Relative Frobenius error of each damped matrix against F + λI (two-level: P, the "
            "inverse of P⁻¹ = M⁻¹ + R₀ᵀ(R₀FR₀ᵀ + λI)⁻¹R₀). Heatmaps: log10 |entry|, averaged over "
            "cells; the off-diagonal blocks of the first panel are what KFAC leaves out."
        )
        st.dataframe(view.matrices, hide_index=True)
        st.plotly_chart(view.heatmaps, width="stretch")
settings.sync()
