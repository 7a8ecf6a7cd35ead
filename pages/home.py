"""Home: what Kronoscope shows, and where to start."""

import streamlit as st

from pages import ui as sh

sh.ensure_navigation()

st.title("Kronoscope")
st.markdown(
    "**See how well Kronecker products approximate the Fisher information of a neural network "
    "layer, and what that does to training.**"
)
st.markdown(
    """
Natural-gradient methods precondition each layer's gradient with that layer's **Fisher block**
F, a matrix with one row and one column per weight: far too large to store or invert. KFAC
replaces it by one Kronecker product A ⊗ G of two small matrices. Kronoscope puts the exact block
next to KFAC and to better Kronecker approximations (KPSVD, Deflation, Lanczos, KFAC-corrected,
EKFAC, Shampoo) so you can *see* what each one keeps and loses, and then races the optimizers
built on them.

Every number on these pages is computed by the `core/` package on the deep autoencoders of
Hinton & Salakhutdinov (2006), the test bed of the KFAC papers. The small DIGITS model
(64-32-16-8, mirrored) trains in seconds on a laptop CPU.
"""
)

st.subheader("A short guided tour")
col1, col2 = st.columns(2)
with col1:
    st.markdown(
        "**1. Look at one Fisher block.** The default view is the DIGITS model's "
        "smallest layer at initialization with every method."
    )
    st.page_link("pages/explorer.py", label="Open the Fisher explorer", icon=":material/grid_on:")
    st.markdown(
        "Compare the three heatmaps (exact, approximation, difference: one colour scale), then "
        "the table: KPSVD is never worse than KFAC in Frobenius error; the two-term methods "
        "improve on both. Move the *Kronecker rank* slider to see how many terms F needs."
    )
    st.markdown("**2. Watch the approximations change during training.**")
    st.page_link(
        "pages/training.py", label="Approximation over training", icon=":material/show_chart:"
    )
with col2:
    st.markdown(
        "**3. Race the optimizers.** SGD, Adam, KFAC and the new methods train the "
        "same model from the same start; loss curves grow live, against steps and "
        "against wall time."
    )
    st.page_link("pages/race.py", label="Start an optimizer race", icon=":material/sports_score:")
    st.markdown("**4. Read the mathematics** behind each approximation and its inverse.")
    st.page_link("pages/learn.py", label="Learn", icon=":material/functions:")

st.subheader("Good to know")
st.markdown(
    """
- **Links reproduce views.** Every setting is kept in the address bar: copy it to share
  exactly what you see.
- **Downloads.** Tables and figure data download as CSV and NPZ.
- **Large layers work.** Heatmaps of large blocks are averaged over blocks of inputs and
  outputs (the chart says so); the metrics never form the block.
- **Shared servers.** Your runs are yours: they stop when you close the tab. The server limits
  how many training runs go at once and how large a layer can be; if a limit is in your way,
  ask the host to raise it.
"""
)
