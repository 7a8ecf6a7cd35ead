"""Kronoscope: Streamlit entry point (`streamlit run app.py`).

Six pages (st.navigation); each page is a thin script in pages/ that reads its settings from
the URL, calls core/ and draws; pages/ui/navigation.py holds the shell every page runs in.
"""

from pages.ui.navigation import run_app

run_app()
