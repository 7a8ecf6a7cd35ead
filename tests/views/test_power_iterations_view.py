"""The power-iterations figure and caption (issue 19): data in, plotly figure and text out."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

from core.engine.power_iterations import PowerIterationCurve, power_iteration_curve
from core.views.power_iterations import power_iterations_caption, power_iterations_figure


def test_figure_draws_the_errors_shampoo_and_both_reference_lines():
    curve = PowerIterationCurve(errors=(0.9, 0.5, 0.41, 0.4, 0.4), kfac=0.45, kpsvd=0.4)
    fig = power_iterations_figure(curve)
    assert isinstance(fig, go.Figure)
    line, shampoo = fig.data
    assert list(line.x) == [0, 1, 2, 3, 4] and list(line.y) == list(curve.errors)
    assert list(shampoo.x) == [1] and list(shampoo.y) == [0.5] and "Shampoo" in shampoo.name
    refs = {a.text: s.y0 for a, s in zip(fig.layout.annotations, fig.layout.shapes, strict=True)}
    assert refs == {"KFAC": 0.45, "KPSVD": 0.4}
    assert "k = 1 (Shampoo)" in line.text[1]


def test_caption_says_what_the_figure_shows_with_the_layers_numbers():
    curve = PowerIterationCurve(errors=(0.9, 0.5, 0.41, 0.4035, 0.4), kfac=0.45, kpsvd=0.4)
    text = power_iterations_caption(curve)
    assert "Shampoo" in text and "KPSVD" in text
    assert "0.500" in text and "0.450" in text and "after 3 steps" in text
    far = PowerIterationCurve(errors=(0.9, 0.6), kfac=0.45, kpsvd=0.4)
    assert "still above" in power_iterations_caption(far)
    assert "Shampoo" in power_iterations_caption(PowerIterationCurve((0.9,), 0.45, 0.4))


def test_figure_of_a_real_curve():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    curve = power_iteration_curve(a, g, 10)
    fig = power_iterations_figure(curve)
    assert len(fig.data[0].y) == 11
    assert fig.data[0].y[-1] == pytest.approx(curve.kpsvd, rel=1e-3)
