"""Tests for core.training.models: autoencoder architecture, presets, loss convention,
initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.training.datasets import DATASET_SPECS
from core.training.models import (
    INITS,
    PRESETS,
    Autoencoder,
    ModelPreset,
    batch_loss,
    build_model,
    describe_layers,
    linear_layers,
    parse_widths,
    per_sample_nll,
    validate_widths,
)


def _expected_shapes(widths: list[int]) -> list[tuple[int, int]]:
    """nn.Linear weight shapes (out, in) of the encoder followed by the mirrored decoder."""
    enc = [(widths[i + 1], widths[i]) for i in range(len(widths) - 1)]
    rev = widths[::-1]
    dec = [(rev[i + 1], rev[i]) for i in range(len(rev) - 1)]
    return enc + dec


# ---------------------------------------------------------------------------------------------
# Presets and architecture
# ---------------------------------------------------------------------------------------------


def test_paper_presets_have_the_papers_widths() -> None:
    assert PRESETS["curves"].widths == (784, 400, 200, 100, 50, 25, 6)
    assert PRESETS["mnist"].widths == (784, 1000, 500, 250, 30)
    assert PRESETS["faces"].widths == (625, 2000, 1000, 500, 30)
    assert PRESETS["digits"].widths == (64, 32, 16, 8)
    assert PRESETS["curves-small"].widths == (196, 64, 32, 16)


@pytest.mark.parametrize("name", sorted(n for n, p in PRESETS.items() if p.kind == "autoencoder"))
def test_presets_build_with_mirrored_layer_shapes(name: str) -> None:
    preset = PRESETS[name]
    spec = DATASET_SPECS[preset.dataset]  # every preset names a registered dataset
    model = build_model(name, input_dim=spec.input_dim, loss=spec.loss, seed=0)
    widths = list(preset.widths)
    layers = linear_layers(model)
    assert [tuple(m.weight.shape) for _, m in layers] == _expected_shapes(widths)
    assert all(m.bias is not None and m.bias.shape == (m.out_features,) for _, m in layers)
    assert model.loss == spec.loss
    assert sum(p.numel() for p in model.parameters()) == sum(
        info.n_params for info in describe_layers(model)
    )


def test_faces_preset_is_mse() -> None:
    assert DATASET_SPECS[PRESETS["faces"].dataset].loss == "mse"


def test_linear_layers_forward_order_and_names() -> None:
    model = build_model([10, 6, 4, 2], input_dim=10, loss="bce", seed=0)
    names = [name for name, _ in linear_layers(model)]
    assert names == [
        "encoder.linear1",
        "encoder.linear2",
        "encoder.linear3",
        "decoder.linear1",
        "decoder.linear2",
        "decoder.linear3",
    ]
    for name, module in linear_layers(model):
        assert model.get_submodule(name) is module
    # Forward order: hooks fire in the listed order.
    fired: list[str] = []
    for name, module in linear_layers(model):
        module.register_forward_hook(lambda m, i, o, name=name: fired.append(name))
    model(torch.rand(3, 10))
    assert fired == names


def test_activations_relu_hidden_linear_code_and_output() -> None:
    model = build_model([10, 6, 4, 2], input_dim=10, loss="bce", seed=0)
    relus = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    # 3 encoder layers + 3 decoder layers: ReLU after all but the code and the output layer.
    assert len(relus) == 4
    assert [info.activation for info in describe_layers(model)] == [
        "relu",
        "relu",
        "linear",
        "relu",
        "relu",
        "logits",
    ]
    # The code is linear (takes negative values); the same model with a ReLU there would not.
    code = model.encode(torch.rand(256, 10))
    assert code.shape == (256, 2) and (code < 0).any()
    # The forward pass equals the explicit composition.
    x = torch.rand(5, 10)
    h = x
    for info, (_, layer) in zip(describe_layers(model), linear_layers(model), strict=True):
        h = layer(h)
        if info.activation == "relu":
            h = torch.relu(h)
    torch.testing.assert_close(model(x), h)


def test_bce_model_returns_logits_and_reconstruct_applies_sigmoid() -> None:
    model = build_model("digits", input_dim=64, loss="bce", seed=0)
    x = torch.rand(512, 64)
    logits = model(x)
    assert logits.shape == (512, 64)
    assert (logits < 0).any() and (logits.abs() > 0).any()  # not probabilities
    assert not ((logits >= 0) & (logits <= 1)).all()
    rec = model.reconstruct(x)
    torch.testing.assert_close(rec, torch.sigmoid(logits))
    assert ((rec > 0) & (rec < 1)).all()
    assert not rec.requires_grad
    # Images are flattened.
    torch.testing.assert_close(model(x.reshape(512, 8, 8)), logits)


def test_mse_model_returns_linear_outputs() -> None:
    model = build_model([25, 8, 3], input_dim=25, loss="mse", seed=0)
    x = torch.randn(64, 25)
    out = model(x)
    torch.testing.assert_close(model.reconstruct(x), out)
    assert describe_layers(model)[-1].activation == "linear output"


def test_describe_layers_counts_the_bias_column() -> None:
    model = build_model("curves", input_dim=784, loss="bce", seed=0)
    infos = describe_layers(model)
    code = infos[5]
    assert code.name == "encoder.linear6"
    assert (code.dg, code.da, code.shape, code.n_params) == (6, 26, (6, 26), 156)
    first = infos[0]
    assert first.shape == (400, 785) and first.n_params == 400 * 785
    for info, (_, module) in zip(infos, linear_layers(model), strict=True):
        assert info.n_params == module.weight.numel() + module.bias.numel()
    assert "6×26" in code.label and "156" in code.label
    assert [i.index for i in infos] == list(range(12))
    # people count layers from 1, as the names do: layer 6 is encoder.linear6
    assert [i.number for i in infos] == list(range(1, 13))
    assert code.label.startswith("layer 6 · encoder.linear6:")
    assert infos[6].name == "decoder.linear1" and infos[6].label.startswith("layer 7 · ")


# ---------------------------------------------------------------------------------------------
# Widths validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ([784], "at least 2"),
        ([], "at least 2"),
        ([784, 0], "positive"),
        ([784, 100, -3], "positive"),
        ([784, 10.5], "integers"),
        ([784, "10"], "integers"),
        ([784, True], "integers"),
        (784, "list of integers"),
    ],
)
def test_invalid_widths(widths: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(widths, input_dim=784, loss="bce")  # type: ignore[arg-type]


def test_widths_string_is_not_a_width_list() -> None:
    with pytest.raises(ValueError, match="list of integers"):
        validate_widths("784-6")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("784-6", input_dim=784, loss="bce")


def test_first_width_must_match_input_dim() -> None:
    with pytest.raises(ValueError, match="784") as err:
        build_model([196, 64, 16], input_dim=784, loss="bce")
    assert "196" in str(err.value)
    with pytest.raises(ValueError, match="input dimension 64"):
        build_model("curves", input_dim=64, loss="bce")


def test_custom_widths_and_preset_objects() -> None:
    model = build_model((64, 20, 5), input_dim=64, loss="bce", seed=1)
    assert model.widths == [64, 20, 5]
    assert [tuple(m.weight.shape) for _, m in linear_layers(model)] == _expected_shapes([64, 20, 5])
    preset = ModelPreset("tiny", (64, 3), "digits", "two layers")
    assert len(linear_layers(build_model(preset, input_dim=64, loss="bce"))) == 2
    assert validate_widths(torch.tensor([5, 2]).tolist()) == [5, 2]


def test_unknown_preset_and_loss() -> None:
    with pytest.raises(ValueError) as err:
        build_model("resnet", input_dim=784, loss="bce")
    for name in PRESETS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="loss"):
        build_model("digits", input_dim=64, loss="ce")


def test_parse_widths() -> None:
    assert parse_widths("784-400-200-100-50-25-6") == [784, 400, 200, 100, 50, 25, 6]
    assert parse_widths(" 64, 32 ,16 8 ") == [64, 32, 16, 8]
    with pytest.raises(ValueError, match="cannot read"):
        parse_widths("64-abc")
    with pytest.raises(ValueError, match="at least 2"):
        parse_widths("64")


# ---------------------------------------------------------------------------------------------
# Loss convention
# ---------------------------------------------------------------------------------------------


def test_per_sample_nll_bce_is_summed_bernoulli_nll() -> None:
    gen = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(7, 12, generator=gen, dtype=torch.float64)
    x = torch.rand(7, 12, generator=gen, dtype=torch.float64)
    nll = per_sample_nll(z, x, "bce")
    assert nll.shape == (7,)
    p = torch.sigmoid(z)
    by_hand = -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(dim=1)
    torch.testing.assert_close(nll, by_hand)
    torch.testing.assert_close(
        nll, F.binary_cross_entropy_with_logits(z, x, reduction="none").sum(dim=1)
    )
    torch.testing.assert_close(batch_loss(z, x, "bce"), by_hand.mean())
    # Not PyTorch's default (mean over all elements).
    assert not torch.isclose(batch_loss(z, x, "bce"), F.binary_cross_entropy_with_logits(z, x))


def test_per_sample_nll_bce_is_stable_for_large_logits() -> None:
    z = torch.tensor([[100.0, -100.0]])
    x = torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(per_sample_nll(z, x, "bce"), torch.tensor([200.0]))


def test_per_sample_nll_mse_is_half_squared_error() -> None:
    mu = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    x = torch.tensor([[1.0, 0.0, 4.0], [1.0, 1.0, 1.0]])
    nll = per_sample_nll(mu, x, "mse")
    torch.testing.assert_close(nll, torch.tensor([0.5 * (0 + 4 + 1), 0.5 * 3]))
    torch.testing.assert_close(batch_loss(mu, x, "mse"), nll.mean())
    # Gaussian N(mu, I) negative log-likelihood up to the constant (d/2) log 2π.
    gauss = -torch.distributions.Normal(mu, 1.0).log_prob(x).sum(dim=1)
    torch.testing.assert_close(nll + 1.5 * math.log(2 * math.pi), gauss)


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_batch_loss_gradient_is_per_sample_gradient_over_m(loss: str) -> None:
    """The Fisher code relies on autograd handing each sample g_i / m."""
    gen = torch.Generator().manual_seed(1)
    out = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.rand(5, 4, generator=gen, dtype=torch.float64)
    batch_loss(out, x, loss).backward()
    mean = torch.sigmoid(out) if loss == "bce" else out
    torch.testing.assert_close(out.grad, (mean - x).detach() / 5)


def test_per_sample_nll_errors() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        per_sample_nll(torch.zeros(2, 3), torch.zeros(2, 4), "bce")
    with pytest.raises(ValueError, match="loss"):
        per_sample_nll(torch.zeros(2, 3), torch.zeros(2, 3), "l1")


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------


def test_init_is_deterministic_per_seed() -> None:
    a = build_model("curves-small", input_dim=196, loss="bce", seed=3).state_dict()
    b = build_model("curves-small", input_dim=196, loss="bce", seed=3).state_dict()
    c = build_model("curves-small", input_dim=196, loss="bce", seed=4).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.linear1.weight"], c["encoder.linear1.weight"])


def test_init_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_model("curves", input_dim=784, loss="bce", seed=0)
    Autoencoder([10, 3], "mse", seed=1)
    assert torch.equal(torch.rand(4), expected)


def test_init_is_he_normal_with_zero_biases() -> None:
    model = build_model("mnist", input_dim=784, loss="bce", seed=0)
    infos = describe_layers(model)
    for info, (_, layer) in zip(infos, linear_layers(model), strict=True):
        assert torch.count_nonzero(layer.bias) == 0
        gain = math.sqrt(2.0) if info.activation == "relu" else 1.0
        expected = gain / math.sqrt(layer.in_features)
        std = layer.weight.std().item()
        n = layer.weight.numel()
        assert abs(std / expected - 1) < 5 / math.sqrt(n), (info.name, std, expected)
        assert abs(layer.weight.mean().item()) < 5 * expected / math.sqrt(n)


def test_xavier_uniform_bounds_variance_and_zero_biases() -> None:
    """U(−b, b) with b = √(6/(fan_in + fan_out)) (gain 1) in every layer, variance b²/3."""
    model = build_model("mnist", input_dim=784, loss="bce", seed=0, init="xavier_uniform")
    assert model.init == "xavier_uniform"
    for _, layer in linear_layers(model):
        assert torch.count_nonzero(layer.bias) == 0
        w = layer.weight.double()
        bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
        assert w.abs().max().item() <= bound
        assert w.abs().max().item() > 0.99 * bound  # fills the interval, not a narrower one
    # the big 784 → 1000 layer (784,000 draws): sd of the sample variance ≈ 0.1 % of b²/3
    w = model.encoder.linear1.weight.double()
    bound = math.sqrt(6.0 / (784 + 1000))
    assert abs(w.var().item() / (bound**2 / 3) - 1) < 0.01
    assert abs(w.mean().item()) < 5 * bound / math.sqrt(3 * w.numel())


def test_xavier_uniform_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    a = build_model("curves-small", input_dim=196, loss="bce", seed=5, init="xavier_uniform")
    assert torch.equal(torch.rand(4), expected)
    b = build_model("curves-small", input_dim=196, loss="bce", seed=5, init="xavier_uniform")
    c = build_model("curves-small", input_dim=196, loss="bce", seed=6, init="xavier_uniform")
    he = build_model("curves-small", input_dim=196, loss="bce", seed=5)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["encoder.linear1.weight"], c.state_dict()["encoder.linear1.weight"])
    assert not torch.equal(sa["encoder.linear1.weight"], he.state_dict()["encoder.linear1.weight"])
    assert he.init == "he_normal" and INITS == ("he_normal", "xavier_uniform")


@pytest.mark.parametrize("init", ["xavier", "He_normal", "", None, 3])
def test_unknown_init_is_rejected(init: object) -> None:
    with pytest.raises(ValueError, match="init must be one of he_normal, xavier_uniform"):
        build_model("digits", input_dim=64, loss="bce", init=init)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init must be one of"):
        Autoencoder([10, 3], "mse", init=init)  # type: ignore[arg-type]


def test_float64_model_matches_float32_weights() -> None:
    m32 = build_model("digits", input_dim=64, loss="bce", seed=2)
    m64 = build_model("digits", input_dim=64, loss="bce", seed=2, dtype=torch.float64)
    assert m64.encoder.linear1.weight.dtype == torch.float64
    for (_, a), (_, b) in zip(linear_layers(m32), linear_layers(m64), strict=True):
        torch.testing.assert_close(a.weight, b.weight.float())


def test_digits_preset_trains() -> None:
    """Smoke test: a few Adam steps on random [0, 1] data reduce the loss."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(256, 64, generator=gen) < 0.3).float()
    model = build_model("digits", input_dim=64, loss="bce", seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = batch_loss(model(x), x, "bce").item()
    for _ in range(60):
        opt.zero_grad()
        loss = batch_loss(model(x), x, "bce")
        loss.backward()
        opt.step()
    assert loss.item() < 0.9 * start
