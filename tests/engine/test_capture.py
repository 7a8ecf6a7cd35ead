"""Tests of core.engine.capture: per-sample ā_i and g_i of every nn.Linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from core.engine.capture import (
    CaptureResult,
    UnsupportedLayerError,
    capture,
    linear_layer_names,
)

LOSSES = ("bce", "mse", "ce")


def _mlp(d_in: int = 5, d_out: int = 4, seed: int = 0, dtype=torch.float64) -> nn.Module:
    """4 Linear layers with ReLU; one of them without bias, one nested."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(d_in, 7),
        nn.ReLU(),
        nn.Sequential(nn.Linear(7, 6, bias=False), nn.ReLU()),
        nn.Linear(6, 5),
        nn.ReLU(),
        nn.Linear(5, d_out),
    )
    return model.to(dtype)


def _reference_nll(z: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Independent per-sample NLL (one sample: z of shape (d_out,))."""
    if loss == "bce":
        return -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).sum(-1)
    if loss == "mse":
        return 0.5 * ((y - z) ** 2).sum(-1)
    logp = torch.log_softmax(z, dim=-1)
    return -(logp * (torch.arange(z.shape[-1]) == y[..., None])).sum(-1)


def _data(loss: str, m: int = 9, d_in: int = 5, d_out: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d_in, generator=gen, dtype=torch.float64)
    if loss == "bce":
        y = torch.randint(0, 2, (m, d_out), generator=gen).to(torch.float64)
    elif loss == "mse":
        y = torch.randn(m, d_out, generator=gen, dtype=torch.float64)
    else:
        y = torch.randint(0, d_out, (m,), generator=gen)
    return x, y


def _per_sample_weight_gradients(model, x, y, loss):
    """Oracle: per-sample gradients of every parameter via torch.func.vmap(grad(...))."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p, xi, yi):
        return _reference_nll(functional_call(model, p, (xi[None],))[0], yi, loss)

    return vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)


# 1. Outer products g_i ā_iᵀ equal per-sample gradients of [W | b] ------------------------


@pytest.mark.parametrize("loss", LOSSES)
def test_outer_products_match_per_sample_gradients(loss):
    model = _mlp()
    x, y = _data(loss)
    res = capture(model, x, loss=loss, fisher="empirical", targets=y)
    oracle = _per_sample_weight_gradients(model, x, y, loss)

    assert list(res.layers) == ["0", "2.0", "3", "5"]  # forward order
    for name, cap in res.layers.items():
        layer = dict(model.named_modules())[name]
        gw = oracle[f"{name}.weight"]  # (m, dg, d_in)
        if layer.bias is not None:
            gw = torch.cat([gw, oracle[f"{name}.bias"][:, :, None]], dim=2)
        outer = torch.einsum("ip,iq->ipq", cap.g, cap.a)
        assert outer.shape == gw.shape
        torch.testing.assert_close(outer, gw, rtol=0, atol=1e-10)

    # loss = mean per-sample NLL w.r.t. the data targets
    out = model(x).detach()
    expected = torch.stack([_reference_nll(out[i], y[i], loss) for i in range(len(x))]).mean()
    assert res.loss == pytest.approx(float(expected), rel=1e-12)


def test_output_layer_gradient_closed_forms():
    """At the output layer g = σ(z) − y (bce), μ − y (mse), softmax(z) − e_y (ce); not /m."""
    model = _mlp()
    for loss in LOSSES:
        x, y = _data(loss, m=6)
        g = capture(model, x, loss=loss, fisher="empirical", targets=y).layers["5"].g
        z = model(x).detach()
        if loss == "bce":
            expected = torch.sigmoid(z) - y
        elif loss == "mse":
            expected = z - y
        else:
            expected = torch.softmax(z, 1) - F.one_hot(y, z.shape[1]).to(z.dtype)
        torch.testing.assert_close(g, expected, rtol=0, atol=1e-12)


# 2. True (Monte-Carlo) Fisher -----------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
def test_true_fisher_reproducible_and_seeded(loss):
    model = _mlp()
    x, _ = _data(loss)
    rng_before = torch.get_rng_state()
    r1 = capture(model, x, loss=loss, generator=torch.Generator().manual_seed(7))
    r2 = capture(model, x, loss=loss, generator=torch.Generator().manual_seed(7))
    r3 = capture(model, x, loss=loss, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), rng_before), "global RNG was used"
    for name in r1.layers:
        assert torch.equal(r1.layers[name].g, r2.layers[name].g)
        assert torch.equal(r1.layers[name].a, r2.layers[name].a)
    assert r1.loss == r2.loss
    assert not torch.equal(r1.layers["5"].g, r3.layers["5"].g)


def _repeated_inputs(n_distinct: int, reps: int, d_in: int = 5) -> torch.Tensor:
    x = torch.randn(n_distinct, d_in, generator=torch.Generator().manual_seed(3))
    return x.to(torch.float64).repeat_interleave(reps, dim=0)


@pytest.mark.parametrize("loss", LOSSES)
def test_true_fisher_monte_carlo_expectation(loss):
    """E_y[g gᵀ] at the output layer: diag(p(1−p)) (bce), I (mse), diag(p) − p pᵀ (ce)."""
    n_distinct, reps = 3, 6000
    model = _mlp()
    with torch.no_grad():  # spread the predictions away from p = 1/2 (uniform for ce)
        model[5].bias.copy_(torch.tensor([-2.0, 0.0, 1.5, 3.0]))
    x = _repeated_inputs(n_distinct, reps)
    res = capture(model, x, loss=loss, generator=torch.Generator().manual_seed(11))
    g = res.layers["5"].g.reshape(n_distinct, reps, -1)
    emp = torch.einsum("nrp,nrq->npq", g, g) / reps
    z = model(x[::reps]).detach()
    if loss == "bce":
        p = torch.sigmoid(z)
        expected = torch.diag_embed(p * (1 - p))
        atol = 0.02
    elif loss == "mse":
        expected = torch.eye(z.shape[1], dtype=z.dtype).expand(n_distinct, -1, -1)
        atol = 0.1
    else:
        p = torch.softmax(z, 1)
        expected = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        atol = 0.02
    torch.testing.assert_close(emp, expected, rtol=0, atol=atol)
    # the sampled targets were genuinely random: g is not identical across repeats
    assert g.std(dim=1).min() > 0.05


# 3. Hooks removed, .grad untouched -------------------------------------------------------


def _hook_counts(model: nn.Module) -> list[tuple[int, int, int, int]]:
    return [
        (
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(m._backward_hooks),
            len(m._backward_pre_hooks),
        )
        for m in model.modules()
    ]


def test_hooks_removed_and_grads_untouched():
    model = _mlp()
    x, y = _data("bce")
    before = _hook_counts(model)
    capture(model, x, loss="bce", fisher="empirical", targets=y)
    capture(model, x, loss="bce", generator=torch.Generator().manual_seed(0))
    assert _hook_counts(model) == before
    assert all(p.grad is None for p in model.parameters())

    # existing gradients (between optimizer steps) are left exactly as they were
    model(x).sum().backward()
    saved = [p.grad.clone() for p in model.parameters()]
    capture(model, x, loss="bce", fisher="empirical", targets=y)
    for p, s in zip(model.parameters(), saved, strict=True):
        assert torch.equal(p.grad, s)


class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_hooks_removed_after_exception():
    model = nn.Sequential(nn.Linear(3, 4), _Boom(), nn.Linear(4, 2)).double()
    before = _hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, torch.randn(5, 3, dtype=torch.float64), loss="mse", fisher="empirical",
                targets=torch.zeros(5, 2, dtype=torch.float64))  # fmt: skip
    assert _hook_counts(model) == before
    assert all(p.grad is None for p in model.parameters())


def test_hooks_removed_after_nan_output():
    model = _mlp()
    with torch.no_grad():
        model[5].bias[0] = float("nan")
    x, y = _data("mse")
    before = _hook_counts(model)
    with pytest.raises(ValueError, match="output contains NaN"):
        capture(model, x, loss="mse", fisher="empirical", targets=y)
    assert _hook_counts(model) == before


def test_frozen_parameters_and_no_grad_context():
    model = _mlp()
    x, y = _data("ce")
    ref = capture(model, x, loss="ce", fisher="empirical", targets=y)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        res = capture(model, x, loss="ce", fisher="empirical", targets=y)
    for name in ref.layers:
        torch.testing.assert_close(res.layers[name].g, ref.layers[name].g, rtol=0, atol=1e-14)
        assert not res.layers[name].g.requires_grad and not res.layers[name].a.requires_grad


# 4. Unsupported layers -----------------------------------------------------------------


def _grouped_conv_model() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (2, 4, 4)),
        nn.Conv2d(2, 2, 3, groups=2),
        nn.Flatten(),
        nn.Linear(8, 6),
        nn.LayerNorm(6),
        nn.ReLU(),
        nn.Linear(6, 3),
    ).double()


def test_unsupported_layers_strict_raises_with_names():
    model = _grouped_conv_model()
    x = torch.randn(4, 32, dtype=torch.float64)
    with pytest.raises(UnsupportedLayerError) as info:
        capture(model, x, loss="mse", generator=torch.Generator().manual_seed(0))
    msg = str(info.value)
    assert "1 (Conv2d): groups=2" in msg and "4 (LayerNorm)" in msg
    assert isinstance(info.value, ValueError)


def test_unsupported_layers_listed_when_not_strict():
    model = _grouped_conv_model()
    x = torch.randn(4, 32, dtype=torch.float64)
    res = capture(model, x, loss="mse", generator=torch.Generator().manual_seed(0), strict=False)
    assert isinstance(res, CaptureResult)
    assert res.unsupported == [("1", "Conv2d"), ("4", "LayerNorm")]
    assert list(res.layers) == ["3", "6"]
    assert res.layers["3"].a.shape == (4, 9) and res.layers["6"].g.shape == (4, 3)


def test_batchnorm_in_training_mode_is_unsupported():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2))
    x = torch.randn(6, 3)
    with pytest.raises(UnsupportedLayerError, match=r"1 \(BatchNorm1d\)"):
        capture(model, x, loss="mse", generator=torch.Generator().manual_seed(0))
    model.eval()  # running statistics: samples independent again
    res = capture(model, x, loss="mse", generator=torch.Generator().manual_seed(0))
    assert res.unsupported == []


# 5. Bad inputs ---------------------------------------------------------------------------


def _call(x=None, **kw):
    model = _mlp()
    x = _data("mse")[0] if x is None else x
    kw.setdefault("loss", "mse")
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return capture(model, x, **kw)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"x": torch.tensor([[0.0, float("nan"), 0, 0, 0], [0.0] * 5])}, "x contains NaN or inf"),
        ({"x": torch.tensor([[0.0, float("inf"), 0, 0, 0], [0.0] * 5])}, "x contains NaN or inf"),
        ({"x": torch.zeros(0, 5, dtype=torch.float64)}, "empty batch"),
        ({"x": torch.zeros(5, dtype=torch.float64)}, "must be at least 2-D"),
        ({"x": torch.zeros(2, 5, dtype=torch.long)}, "floating"),
        ({"loss": "nll"}, "unknown loss kind 'nll'"),
        ({"fisher": "exact"}, "unknown fisher kind 'exact'"),
        ({"layers": ["0", "nope"]}, r"unknown layer name\(s\) \['nope'\].*'2\.0'"),
        ({"layers": []}, "selects no layer"),
        ({"fisher": "empirical"}, "needs the data's targets"),
        ({"generator": None}, "needs a torch.Generator"),
        (
            {"fisher": "empirical", "targets": torch.zeros(3, 4, dtype=torch.float64)},
            r"targets must have the output's shape \(9, 4\)",
        ),
        (
            {"loss": "ce", "fisher": "empirical", "targets": torch.full((9,), 4)},
            r"must lie in \[0, 3\]",
        ),
        (
            {"loss": "bce", "fisher": "empirical", "targets": torch.full((9, 4), 2.0)},
            r"must lie in \[0, 1\]",
        ),
    ],
)
def test_bad_inputs(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _call(**kwargs)


def test_shared_layer_and_unused_layer_rejected():
    lin = nn.Linear(3, 3)

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.out = lin, nn.Linear(3, 1)

        def forward(self, x):
            return self.out(self.lin(self.lin(x)))

    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="ran more than once"):
        capture(Shared(), torch.randn(4, 3), loss="mse", generator=gen)

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.head = nn.Linear(3, 1), nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match=r"\['head'\] did not run"):
        capture(Unused(), torch.randn(4, 3), loss="mse", generator=gen)
    res = capture(Unused(), torch.randn(4, 3), loss="mse", generator=gen, layers=["used"])
    assert list(res.layers) == ["used"]


# 6. Bias column --------------------------------------------------------------------------


def test_bias_column_only_when_layer_has_bias():
    model = _mlp()
    x, y = _data("mse")
    res = capture(model, x, loss="mse", fisher="empirical", targets=y)
    no_bias = res.layers["2.0"]
    assert not no_bias.has_bias and no_bias.a.shape == (9, 7)
    first = res.layers["0"]
    assert first.has_bias and first.a.shape == (9, 6)
    torch.testing.assert_close(first.a[:, :5], x, rtol=0, atol=0)
    assert torch.equal(first.a[:, -1], torch.ones(9, dtype=torch.float64))
    # the bias-free layer's input is the ReLU of layer 0's output, without a ones column
    h = torch.relu(model[0](x)).detach()
    torch.testing.assert_close(no_bias.a, h, rtol=0, atol=1e-14)


def test_layer_selection_and_names():
    model = _mlp()
    assert linear_layer_names(model) == ["0", "2.0", "3", "5"]
    x, y = _data("bce")
    res = capture(model, x, loss="bce", fisher="empirical", targets=y, layers=["5", "0"])
    assert list(res.layers) == ["0", "5"]  # forward order, not request order
    full = capture(model, x, loss="bce", fisher="empirical", targets=y)
    assert torch.equal(res.layers["5"].g, full.layers["5"].g)
    assert res.unsupported == [] and all(c.name == n for n, c in res.layers.items())


def test_forward_order_differs_from_registration_order():
    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a_out = nn.Linear(2, 3)  # registered first, runs second
            self.b_in = nn.Linear(3, 2)

        def forward(self, x):
            return self.a_out(torch.tanh(self.b_in(x)))

    model = Reversed().double()
    assert linear_layer_names(model) == ["a_out", "b_in"]
    x = torch.randn(4, 3, dtype=torch.float64)
    res = capture(model, x, loss="mse", generator=torch.Generator().manual_seed(0))
    assert list(res.layers) == ["b_in", "a_out"]
    assert res.layers["b_in"].a.shape == (4, 4) and res.layers["a_out"].g.shape == (4, 3)


def test_concurrent_captures_on_one_shared_model_match_single_threaded():
    """Many sessions capturing on one cached model at once (issue 8): each result equals the
    single-threaded capture of the same batch and seed, and no hook sees another's pass."""
    from concurrent.futures import ThreadPoolExecutor

    model = _mlp(d_in=5, d_out=5, seed=3)
    batches = [torch.randn(16, 5, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    batches = [b.to(torch.float64) for b in batches]

    def one(i: int):
        x = batches[i % len(batches)]
        gen = torch.Generator().manual_seed(100 + i)
        return capture(model, x, loss="mse", generator=gen)

    expected = [one(i) for i in range(48)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        # plain forward passes interleaved: they must pass through the hooks untouched
        plain = [pool.submit(model, batches[0]) for _ in range(24)]
        got = list(pool.map(one, range(48)))
    for ref, res in zip(expected, got, strict=True):
        assert list(res.layers) == list(ref.layers)
        for name, layer in ref.layers.items():
            torch.testing.assert_close(res.layers[name].a, layer.a, rtol=0, atol=0)
            torch.testing.assert_close(res.layers[name].g, layer.g, rtol=0, atol=0)
    for f in plain:
        torch.testing.assert_close(f.result(), model(batches[0]), rtol=0, atol=0)
    assert _hook_counts(model) == [(0, 0, 0, 0)] * len(_hook_counts(model))
