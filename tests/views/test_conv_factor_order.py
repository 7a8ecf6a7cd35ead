"""A convolution's input factor grouped by kernel position (core.views.explorer), checked
against the patches cut directly from the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.engine.layers import conv_patches
from core.engine.methods import approximate
from core.views.explorer import factor_views, kernel_position_order


def test_blocks_are_the_channel_covariances_between_kernel_positions():
    torch.manual_seed(0)
    c_in, (kh, kw) = 3, (2, 3)
    conv = nn.Conv2d(c_in, 4, (kh, kw), bias=True).double()
    x = torch.randn(5, c_in, 6, 7, dtype=torch.float64)
    patches = conv_patches(conv, x)  # (m, T, C_in·kh·kw), channel-major
    a = torch.cat([patches, torch.ones(*patches.shape[:2], 1, dtype=x.dtype)], -1)
    a = a.reshape(-1, a.shape[-1])
    order = kernel_position_order(c_in, (kh, kw), bias=True)
    big = (a.T @ a).numpy()[np.ix_(order, order)]
    # the same patches cut by hand: channel vector at kernel offset (i, j) of every window
    out_h, out_w = 6 - kh + 1, 7 - kw + 1
    cut = {
        (i, j): x[:, :, i : i + out_h, j : j + out_w].permute(0, 2, 3, 1).reshape(-1, c_in)
        for i in range(kh)
        for j in range(kw)
    }
    offsets = [(i, j) for i in range(kh) for j in range(kw)]  # unfold's row-major positions
    for p, op in enumerate(offsets):
        for q, oq in enumerate(offsets):
            block = big[p * c_in : (p + 1) * c_in, q * c_in : (q + 1) * c_in]
            np.testing.assert_allclose(block, (cut[op].T @ cut[oq]).numpy(), atol=1e-10)
    bias_row = big[-1, : c_in * kh * kw]
    np.testing.assert_allclose(bias_row, np.concatenate([cut[o].sum(0) for o in offsets]))


def test_factor_views_reorder_only_the_input_factors():
    torch.manual_seed(1)
    m, t, c_in, kernel = 8, 4, 2, (2, 2)
    a = torch.randn(m, t, c_in * 4 + 1, dtype=torch.float64)
    g = torch.randn(m, t, 3, dtype=torch.float64)
    order = kernel_position_order(c_in, kernel, bias=True)
    for method in ("kfac", "kpsvd", "ekfac"):
        approx = approximate(method, a, g)
        plain, grouped = factor_views(approx), factor_views(approx, input_order=order)
        for before, after in zip(plain, grouped, strict=True):
            if before.side == "input":
                np.testing.assert_array_equal(after.matrix, before.matrix[np.ix_(order, order)])
            else:  # output factors and EKFAC's eigenbasis scaling are untouched
                np.testing.assert_array_equal(after.matrix, before.matrix)


def test_bad_orders_are_refused():
    with pytest.raises(ValueError, match="C_in, kh, kw ≥ 1"):
        kernel_position_order(0, (3, 3), bias=False)
    a, g = torch.randn(4, 2, 5, dtype=torch.float64), torch.randn(4, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="permutation of the 5 inputs"):
        factor_views(approximate("kfac", a, g), input_order=np.arange(4))
