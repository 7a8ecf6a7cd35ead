"""Kronoscope: Streamlit entry point (`streamlit run app.py`).

Six pages (st.navigation); each page is a thin script in pages/ that reads its settings from
the URL, calls core/ and draws. The sidebar shows the compute device and the server's limits.
"""

import streamlit as st
import torch

from core.limits import torch_threads
from pages import ui as sh
from pages.ui.icon import page_icon

sh.ensure_navigation()  # before anything else: see its docstring
torch.set_num_threads(torch_threads())  # one intra-op thread per task: see core/limits.py
st.set_page_config(page_title="Kronoscope", page_icon=page_icon(), layout="wide")
st.set_option("client.showErrorDetails", "type")  # never a traceback on the page

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page(
        "pages/explorer.py", title="Fisher explorer", icon=":material/grid_on:", url_path="explorer"
    ),
    st.Page(
        "pages/training.py",
        title="Approximation over training",
        icon=":material/show_chart:",
        url_path="training",
    ),
    st.Page(
        "pages/race.py", title="Optimizer race", icon=":material/sports_score:", url_path="race"
    ),
    st.Page(
        "pages/reports.py",
        title="Paper reproductions",
        icon=":material/fact_check:",
        url_path="reports",
    ),
    st.Page("pages/learn.py", title="Learn", icon=":material/functions:", url_path="learn"),
]
page = st.navigation(PAGES)
sh.compute.pool()  # start the worker processes with the server's first session
sh.uploads()  # empties the upload folder left by an earlier server
with st.sidebar:
    st.caption(f"Compute device: **{sh.device_label()}**")
    st.caption(sh.limits_caption())
with sh.friendly_errors(page.title):
    page.run()
