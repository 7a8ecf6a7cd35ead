"""Capture of weight-sharing layers (issue 18): nn.Conv2d patches and sequence nn.Linear.

The oracle is autograd itself: each sample's weight gradient, from a backward pass on that
sample's NLL alone (a loop), must equal Σ_t γ_t ā_tᵀ = Γ_nᵀ A_n built from the captured
patches, with W = weight.reshape(C_out, -1) and the bias as its last column.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.engine.capture import UnsupportedLayerError, capture, layer_names, linear_layer_names
from core.engine.layers import conv_patches, supported_layers, unsupported_reason
from core.engine.likelihoods import likelihood

# (kernel, stride, padding, dilation, bias, padding_mode)
CONV_CASES = [
    (3, 1, 0, 1, True, "zeros"),
    (3, 1, 1, 1, False, "zeros"),
    ((2, 3), (2, 1), (1, 0), 1, True, "zeros"),
    (3, 2, 2, 2, True, "zeros"),
    (1, 1, 0, 1, True, "zeros"),
    (2, 1, "same", 1, True, "zeros"),
    ((3, 2), 1, "same", (1, 2), False, "zeros"),
    (3, 1, "valid", 1, True, "zeros"),
    (3, 1, 1, 1, True, "reflect"),
    (3, 2, 1, 1, True, "circular"),
    (3, 1, (2, 1), 1, True, "replicate"),
]


class _ConvNet(nn.Module):
    """Image rows (m, 2·7·6) → Conv2d (the case) → ReLU → Conv2d 3×3 → Linear → 3 outputs."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv1 = conv
        self.conv2 = nn.Conv2d(conv.out_channels, 2, 3, padding=1)
        with torch.no_grad():
            out = self.conv2(torch.relu(self.conv1(torch.zeros(1, 2, 7, 6))))
        self.head = nn.Linear(out.numel(), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x.reshape(-1, 2, 7, 6)))
        return self.head(torch.tanh(self.conv2(h)).flatten(1))


def _weight_matrix_grads(model: nn.Module, x, y, loss: str) -> dict[str, torch.Tensor]:
    """Oracle: per-sample [W | b] gradients (m, dg, da) of every layer, one backward per
    sample on that sample's NLL (W reshaped to (C_out, C_in·kh·kw) for a convolution)."""
    lik = likelihood(loss)
    out: dict[str, list[torch.Tensor]] = {name: [] for name, _ in supported_layers(model)}
    for n in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        lik.nll(model(x[n : n + 1]), y[n : n + 1]).sum().backward()
        for name, layer in supported_layers(model):
            w = layer.weight.grad.reshape(layer.weight.shape[0], -1)
            if layer.bias is not None:
                w = torch.cat([w, layer.bias.grad[:, None]], dim=1)
            out[name].append(w.clone())
    model.zero_grad(set_to_none=True)
    return {name: torch.stack(ws) for name, ws in out.items()}


def _gradients_from_capture(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """D_n = Γ_nᵀ A_n = Σ_t γ_t ā_tᵀ per sample, (m, dg, da)."""
    if a.dim() == 2:
        return torch.einsum("np,nq->npq", g, a)
    return torch.einsum("ntp,ntq->npq", g, a)


@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation", "bias", "mode"), CONV_CASES)
def test_conv_patches_give_autograds_per_sample_weight_gradient(
    kernel, stride, padding, dilation, bias, mode
):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel, stride, padding, dilation, bias=bias, padding_mode=mode)
    model = _ConvNet(conv).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2 * 7 * 6, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    res = capture(model, x, loss="mse", fisher="empirical", targets=y)
    oracle = _weight_matrix_grads(model, x, y, "mse")

    assert list(res.layers) == ["conv1", "conv2", "head"]
    out1 = conv(x.reshape(5, 2, 7, 6))
    t1 = out1.shape[2] * out1.shape[3]
    da1 = 2 * conv.kernel_size[0] * conv.kernel_size[1] + int(bias)
    assert res.layers["conv1"].a.shape == (5, t1, da1)
    assert res.layers["conv1"].g.shape == (5, t1, 3)
    assert res.layers["conv1"].positions == t1 and res.layers["head"].positions == 1
    for name, cap in res.layers.items():
        torch.testing.assert_close(
            _gradients_from_capture(cap.a, cap.g), oracle[name], rtol=0, atol=1e-12
        )
        if cap.has_bias:
            assert torch.equal(cap.a[..., -1], torch.ones_like(cap.a[..., -1]))


@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation", "bias", "mode"), CONV_CASES)
def test_conv_patches_reproduce_the_layer_output(kernel, stride, padding, dilation, bias, mode):
    """conv(x)[n, :, t] = W ā_t (+ b): the patches are the layer's own inputs, in its order."""
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, kernel, stride, padding, dilation, bias=bias, padding_mode=mode)
    conv = conv.double()
    x = torch.randn(4, 2, 7, 6, dtype=torch.float64)
    patches = conv_patches(conv, x)
    s = patches @ conv.weight.reshape(3, -1).T
    if bias:
        s = s + conv.bias
    expected = conv(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(s, expected, rtol=0, atol=1e-12)


def test_conv_true_fisher_gradients_scale_per_sample():
    """The true-Fisher capture is the per-sample gradient of the sampled targets' NLL (not /m):
    the same D_n as the empirical capture given those sampled targets."""
    torch.manual_seed(3)
    model = _ConvNet(nn.Conv2d(2, 4, 3, padding=1)).double()
    x = torch.randn(6, 84, dtype=torch.float64)
    sampled = capture(model, x, loss="bce", generator=torch.Generator().manual_seed(5))
    y = likelihood("bce").sample(model(x), torch.Generator().manual_seed(5))
    oracle = _weight_matrix_grads(model, x, y, "bce")
    for name, cap in sampled.layers.items():
        torch.testing.assert_close(
            _gradients_from_capture(cap.a, cap.g), oracle[name], rtol=0, atol=1e-12
        )


class _SequenceNet(nn.Module):
    """(m, 4·3) → tokens (m, 4, 3) → Linear 3→5 per token → tanh → Linear 5→2 per token →
    flatten → Linear 8→3; the middle layer without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 5)
        self.mix = nn.Linear(5, 2, bias=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(x.reshape(-1, 4, 3)))
        return self.head(self.mix(h).flatten(1))


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_sequence_linear_gives_autograds_per_sample_weight_gradient(loss):
    torch.manual_seed(4)
    model = _SequenceNet().double()
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(7, 12, generator=gen, dtype=torch.float64)
    if loss == "ce":
        y = torch.randint(0, 3, (7,), generator=gen)
    else:
        y = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    res = capture(model, x, loss=loss, fisher="empirical", targets=y)
    assert res.layers["embed"].a.shape == (7, 4, 4) and res.layers["embed"].g.shape == (7, 4, 5)
    assert res.layers["mix"].a.shape == (7, 4, 5) and res.layers["mix"].g.shape == (7, 4, 2)
    assert res.layers["head"].a.shape == (7, 9) and res.layers["head"].g.shape == (7, 3)
    oracle = _weight_matrix_grads(model, x, y, loss)
    for name, cap in res.layers.items():
        torch.testing.assert_close(
            _gradients_from_capture(cap.a, cap.g), oracle[name], rtol=0, atol=1e-12
        )


def test_linear_on_image_tensor_input_and_multi_axis_tokens():
    """A model taking (m, C, H, W) directly; a Linear over (m, t₁, t₂, d) has T = t₁·t₂."""
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.Linear(3, 4), nn.Flatten(), nn.Linear(32, 2))
    model = model.double()
    x = torch.randn(3, 1, 5, 4, dtype=torch.float64)
    y = torch.randn(3, 2, dtype=torch.float64)
    res = capture(model, x, loss="mse", fisher="empirical", targets=y)
    assert res.layers["0"].a.shape == (3, 12, 5)
    assert res.layers["1"].a.shape == (3, 8, 4) and res.layers["1"].g.shape == (3, 8, 4)
    oracle = _weight_matrix_grads(model, x, y, "mse")
    for name, cap in res.layers.items():
        torch.testing.assert_close(
            _gradients_from_capture(cap.a, cap.g), oracle[name], rtol=0, atol=1e-12
        )


class _OwnForwardConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


@pytest.mark.parametrize(
    ("layer", "why"),
    [
        (nn.Conv2d(2, 4, 3, groups=2), "groups=2"),
        (nn.ConvTranspose2d(2, 2, 3), "transposed convolutions"),
        (nn.Conv1d(2, 2, 3), "1-D convolutions"),
        (nn.Conv3d(2, 2, 3), "3-D convolutions"),
        (_OwnForwardConv(2, 2, 3), "overrides forward"),
        (nn.LayerNorm(3), "only nn.Linear and nn.Conv2d"),
    ],
)
def test_unsupported_layers_raise_naming_the_layer_and_why(layer, why):
    model = nn.Sequential(nn.Linear(3, 3), layer)
    assert unsupported_reason(layer) is not None and why in unsupported_reason(layer)
    with pytest.raises(UnsupportedLayerError, match=rf"1 \({type(layer).__name__}\): .*{why}"):
        capture(model, torch.randn(2, 3), loss="mse", generator=torch.Generator())


def test_layer_names_list_convolutions_and_linears():
    model = _ConvNet(nn.Conv2d(2, 3, 3))
    assert layer_names(model) == ["conv1", "conv2", "head"]
    assert linear_layer_names(model) == ["head"]
    assert [n for n, _ in supported_layers(nn.Sequential(nn.Conv2d(2, 4, 3, groups=2)))] == []


def test_conv_input_shape_checked():
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x.reshape(1, 4, 4)).reshape(x.shape[0], -1)  # unbatched 3-D input

    with pytest.raises(ValueError, match=r"layer 'conv' got input of shape \(1, 4, 4\)"):
        capture(Bad(), torch.randn(1, 16), loss="mse", generator=torch.Generator())
