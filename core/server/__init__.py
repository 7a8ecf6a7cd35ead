"""Serving many visitors: limits and the run queue (``limits``), the worker-process pool that
runs the explorer's numerics out of the server process (``workers``) and its jobs (``jobs``).
Nothing here imports Streamlit; pages/ui/ is the glue.
"""
