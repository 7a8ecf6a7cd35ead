"""Paper reproductions: reports made earlier by ``python -m core reproduce``, read from the
host's results folder (``$KRONOSCOPE_RESULTS_DIR``); nothing is recomputed here.

Visitors pick among the folder names the server lists (never a path they type); everything
read from the files is shown as plain text or in tables (core/views/reproduce.py checks it).
"""

from __future__ import annotations

import streamlit as st

from core import reproduce
from pages import ui as sh

sh.ensure_navigation()

PAGE = "reports"
st.title("Paper reproductions")
st.markdown(
    "Results of the seed paper's experiments made earlier, often on a bigger machine, with "
    "`python -m core reproduce`: the settings used, a verdict per claim of the paper with the "
    "numbers that decide it, and the figures (mean ± sd over seeds)."
)

root = reproduce.results_dir()
if root is None:
    st.info(
        "No results folder is configured on this server. To show reports here: make them "
        "with `python -m core reproduce --experiment training --dataset curves --out "
        "RESULTS/curves-training` (one sub-folder per report), then start the app with "
        "`KRONOSCOPE_RESULTS_DIR=RESULTS`.",
        icon=":material/info:",
    )
    st.stop()

names = reproduce.list_reports(root)
if not names:
    st.info(
        "The results folder holds no report yet: each report is a sub-folder with "
        "settings.json and results.csv, as `python -m core reproduce --out` writes it.",
        icon=":material/info:",
    )
    st.stop()

settings = sh.UrlSettings(PAGE)
name = settings.select("Report", names, "report")
settings.show_notices()
settings.sync()

with sh.friendly_errors("Reading the report"):
    report = reproduce.load_report(root, name)
    verdicts = report.verdicts()
    summary = report.summary()
    figures = report.figures()

st.subheader(sh.plain(report.title, 200))
rule = report.settings.get("rules", {})
rule_text = rule.get("quality" if report.settings["experiment"] == "quality" else "training")
st.subheader("Verdicts", divider="gray")
if rule_text:
    st.text(str(rule_text))
st.dataframe(verdicts, hide_index=True)
st.subheader("Figures", divider="gray")
for i, fig in enumerate(figures):
    st.plotly_chart(fig, key=f"reports.fig{i}")
st.subheader("Summary", divider="gray")
st.dataframe(summary, hide_index=True)
st.subheader("Settings", divider="gray")
st.dataframe(report.settings_table(), hide_index=True)
st.download_button(
    "Results (CSV)",
    report.results.to_csv(index=False),
    "results.csv",
    "text/csv",
    key="reports.csv",
)
