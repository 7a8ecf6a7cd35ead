"""Views: the numbers and figures a page or report shows — the explorer's per-layer comparison,
plotly figures, the training report. The paper reproductions are :mod:`core.paper`.
"""
