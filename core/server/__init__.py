"""Serving many visitors: what a server refuses (``limits``), the queue of training runs
(``run_queue``), the worker-process pool that
runs the explorer's numerics out of the server process (``workers``) and its jobs (``jobs``).
Nothing here imports Streamlit; pages/ui/ is the glue.
"""
