"""Paper reproductions: reports made earlier by ``python -m core reproduce``, read from the
host's results folder; nothing is recomputed here.

Visitors pick among the folder names the server lists (never a path they type); everything
read from the files is shown as plain text or in tables. core/paper/files.py reads each
report once per change of its files, never through a link out of the folder, and checks it; a
report it refuses is one sentence here, and the other reports still show. Visitors are never
told a setting's name: how to configure the folder is the host's documentation (DOCKER.md).
"""

from __future__ import annotations

import streamlit as st

from core import ReportError, list_reports, load_report, results_dir
from pages import ui as sh

sh.ensure_navigation()

PAGE = "reports"
st.title("Paper reproductions")
st.markdown(
    "Results of the seed paper's experiments made earlier, often on a bigger machine, with "
    "`python -m core reproduce`: the settings used, a verdict per claim of the paper with the "
    "numbers that decide it, and the figures (mean ± sd over seeds)."
)

root = results_dir()
if root is None:
    st.info(
        "The host of this server has not configured a results folder, so there are no "
        "reports to show here.",
        icon=":material/info:",
    )
    st.stop()

names = list_reports(root)
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

try:
    report = load_report(root, name)
except ReportError as err:
    st.error(sh.plain(err))
    st.stop()

st.subheader(sh.plain(report.title, 200))
st.subheader("Verdicts", divider="gray")
if report.rule:
    st.text(report.rule)
st.dataframe(report.verdicts, hide_index=True)
st.subheader("Figures", divider="gray")
for i, fig in enumerate(report.figures):
    st.plotly_chart(fig, key=f"reports.fig{i}")
st.subheader("Summary", divider="gray")
st.dataframe(report.summary, hide_index=True)
st.subheader("Settings", divider="gray")
st.dataframe(report.settings_table, hide_index=True)
st.download_button(
    "Results (CSV)",
    lambda: report.results.to_csv(index=False),  # made on a click, not on every visit
    "results.csv",
    "text/csv",
    key="reports.csv",
)
