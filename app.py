"""Kronoscope: Streamlit entry point."""

import streamlit as st

st.set_page_config(page_title="Kronoscope", layout="wide")
st.title("Kronoscope")
st.write("Kronecker-factored approximations of the Fisher information, made visible.")
