"""The engine's precision/device policy (core.engine.precision), its float32 route measured
against the float64 route on the CPU, and the CUDA path against the CPU (where CUDA is).

The optimizers' float32 route (``KRONOSCOPE_ENGINE_DTYPE=float32`` forces it on the CPU; the same
code runs on a slow-float64 GPU) keeps the curvature refresh in float64 and does the per-step
solves in float32 from the rounded float64 decompositions. Measured as relative differences to
the float64 route on the same captures (each optimizer, each EMA mode, every layer):

* this file's small autoencoder: 9e-7 to 1.3e-6 (exact: 0, its Woodbury solve is float64);
* the paper's CURVES network (784-400-…-6 after 30 Adam steps, two Fisher batches of 256):
  at most 1.3e-5 over layers (median 2–3e-6), every optimizer and mode (exact: 0).

What the refresh in float64 avoids — the engine alone on float32 inputs, ``approximate(method,
ā.float(), g.float())`` against the same call on float64 inputs: F̃ vec(V) within 2.5e-6 here
(the float32 rounding of the factors), the damped solve within 1e-5 here but 1e-5 to 1.3e-4 on
CURVES and up to 4e-3 for EKFAC (cond · 2⁻²⁴: rounding a factor before its eigendecomposition);
``FisherEMA`` from float32 captures within 1e-6 now that its Grams are float64 (2e-2 before).

Tolerances: about 10× the largest difference measured on this file's data, so a regression of
an order of magnitude fails; they are far below a minibatch Fisher's sampling noise.
"""

from __future__ import annotations

import pytest
import torch

from core.engine.capture import capture
from core.engine.fisher import LayerFisher
from core.engine.fisher_ema import FisherEMA
from core.engine.methods import SHOWN, approximate
from core.engine.precision import ENV_VAR, choose_precision, engine_precision
from core.training.models import build_model, per_sample_nll
from core.training.optim import EMA_MODES, NATURAL_OPTIMIZERS, OptimizerConfig, build_optimizer

WIDTHS = [64, 32, 16, 8]  # a small mirrored autoencoder: layers from (65, 32) to (9, 16)
DAMPING = 1e-2
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double().cpu(), y.double().cpu()
    return float(torch.linalg.norm(x - y) / torch.linalg.norm(y))


def _data(n: int = 256, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, WIDTHS[0], generator=gen) > 0.5).float() * 0.8 + 0.1


def _model(seed: int = 0) -> torch.nn.Module:
    return build_model(WIDTHS, input_dim=WIDTHS[0], loss="bce", seed=seed)


# -- the policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_type", "capability", "where", "want"),
    [
        ("cpu", None, "cpu", torch.float64),
        *[("cuda", cc, "cuda", torch.float64) for cc in [(6, 0), (7, 0), (8, 0), (9, 0)]],
        *[("cuda", cc, "cuda", torch.float32) for cc in [(6, 1), (7, 5), (8, 6), (8, 9), (12, 0)]],
        ("mps", None, "cpu", torch.float64),
        ("xpu", None, "cpu", torch.float64),
    ],
)
def test_policy_table(device_type, capability, where, want):
    got_where, dtype, reason = choose_precision(device_type, capability, None)
    assert (got_where, dtype) == (where, want) and device_type in reason


@pytest.mark.parametrize("value", ["float32", " FLOAT32 ", "float64"])
def test_environment_overrides_the_solve_dtype_not_the_device(value):
    want = torch.float32 if "32" in value else torch.float64
    for device_type, cc in [("cpu", None), ("cuda", (9, 0)), ("cuda", (8, 6)), ("mps", None)]:
        where, dtype, reason = choose_precision(device_type, cc, value)
        assert dtype == want and ENV_VAR in reason
        assert where == choose_precision(device_type, cc, None)[0]


def test_empty_override_is_unset_and_a_bad_one_is_refused():
    assert choose_precision("cpu", None, "")[1] == torch.float64
    with pytest.raises(ValueError, match=f"{ENV_VAR}='half'.*float32, float64"):
        choose_precision("cpu", None, "half")
    with pytest.raises(ValueError, match="compute capability"):
        choose_precision("cuda", None, None)


def test_engine_precision_reads_the_environment(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    default = engine_precision("cpu")
    assert (default.device, default.solve_dtype) == (torch.device("cpu"), torch.float64)
    monkeypatch.setenv(ENV_VAR, "float32")
    assert engine_precision("cpu").solve_dtype == torch.float32
    monkeypatch.setenv(ENV_VAR, "bfloat16")
    with pytest.raises(ValueError, match=ENV_VAR):
        engine_precision("cpu")


# -- the float32 route, engine alone ---------------------------------------------------------


def _capture(m: int = 128) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(ā, g) of every layer of the small autoencoder on m samples, float64."""
    model, x = _model(), _data(m)
    res = capture(model, x, loss="bce", generator=torch.Generator().manual_seed(0))
    return {n: (lc.a.double(), lc.g.double()) for n, lc in res.layers.items()}


CAPTURE = _capture()
ENGINE_TOL = (2e-5, 1e-4)  # F̃ vec(V), damped solve: float32 inputs (module docstring)


@pytest.mark.parametrize("method", SHOWN)
def test_float32_inputs_match_the_float64_route(method):
    """approximate(method, ā.float(), g.float()) against the float64 oracle (the same method
    on the float64 inputs), every layer: F̃ vec(V), the damped solve the optimizer uses and
    the Frobenius error to F."""
    mv_tol, solve_tol = ENGINE_TOL
    gen = torch.Generator().manual_seed(3)
    worst = [0.0, 0.0, 0.0]
    for a, g in CAPTURE.values():
        oracle = approximate(method, a, g)
        got = approximate(method, a.float(), g.float())
        assert got.device == oracle.device
        v = torch.randn(g.shape[1], a.shape[1], generator=gen, dtype=torch.float64)
        mode = "factored" if oracle.n_terms in (1, 2, None) else "exact"
        errs = (
            rel(got.matvec(v.to(got.dtype)), oracle.matvec(v)),
            rel(
                got.solve(v.to(got.dtype), DAMPING, mode=mode), oracle.solve(v, DAMPING, mode=mode)
            ),
            abs(LayerFisher(a, g).relative_error(got) - LayerFisher(a, g).relative_error(oracle)),
        )
        worst = [max(w, e) for w, e in zip(worst, errs, strict=True)]
    print(f"{method}: matvec {worst[0]:.1e} solve {worst[1]:.1e} fro-error {worst[2]:.1e}")
    assert worst[0] < mv_tol and worst[1] < solve_tol and worst[2] < 1e-5


@pytest.mark.parametrize("centered", [False, True])
def test_fisher_ema_keeps_float64_grams_on_float32_inputs(centered):
    """The averaged Fisher's terms from float32 captures agree with the float64 ones to about
    1e-6 (2e-2 with float32 Grams: see the module docstring)."""
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(33, 33, generator=gen, dtype=torch.float64) / 33**0.5
    s64, s32 = FisherEMA(4, centered=centered), FisherEMA(4, centered=centered)
    for _ in range(4):
        a = torch.randn(96, 33, generator=gen, dtype=torch.float64) @ mix
        a[:, -1] = 1.0
        g = torch.randn(96, 16, generator=gen, dtype=torch.float64) * torch.logspace(-3, 0, 16)
        s64.fold(a, g, 0.9)
        s32.fold(a.float(), g.float(), 0.9)
    pairs = list(zip(s32.terms, s64.terms, strict=True))
    if centered:
        pairs += list(zip(s32.correction, s64.correction, strict=True))
    v = torch.randn(16, 33, generator=gen, dtype=torch.float64)
    for (r32, q32), (r64, q64) in pairs:
        assert r32.dtype == torch.float32
        err = rel(q32 @ v.float() @ r32.T, q64 @ v @ r64.T)
        print(f"centered={centered}: term {err:.1e}")
        assert err < 1e-5


# -- the float32 route, each optimizer's preconditioner ---------------------------------------

OPTIM_TOL = 1e-5  # float32 per-step solves from float64 refreshes (module docstring)


def _preconditioned(method: str, mode: str) -> tuple[list[torch.Tensor], torch.dtype]:
    """Two curvature refreshes on fixed Fisher minibatches, then the preconditioned gradient
    of every layer (float64 out) for a fixed gradient; and the engine dtype used."""
    model, x = _model(), _data()
    cfg = OptimizerConfig(method, lr=0.1, damping=DAMPING, ema=0.8, ema_mode=mode)
    opt = build_optimizer(model, cfg, loss="bce", seed=5)
    pre = opt.preconditioner
    for k in range(2):
        pre.update_curvature(x[64 * k : 64 * (k + 1)], None)
    pre.update_inverses()
    model.zero_grad()
    per_sample_nll(model(x), x, "bce").mean().backward()
    out = []
    for name, layer in opt.layers.items():
        v = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1).double()
        out.append(pre.precondition(name, v))
    return out, pre.precision.solve_dtype


@pytest.mark.parametrize("mode", EMA_MODES)
@pytest.mark.parametrize("method", NATURAL_OPTIMIZERS)
def test_float32_route_preconditions_like_the_float64_route(method, mode, monkeypatch):
    """Each natural-gradient optimizer's preconditioned gradient, float32 route forced on the
    CPU, against the float64 route on the same captures: relative difference per layer below
    1e-5 (module docstring)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    want, dtype64 = _preconditioned(method, mode)
    monkeypatch.setenv(ENV_VAR, "float32")
    got, dtype32 = _preconditioned(method, mode)
    assert (dtype64, dtype32) == (torch.float64, torch.float32)
    worst = max(rel(x, y) for x, y in zip(got, want, strict=True))
    print(f"{method}/{mode}: {worst:.1e}")
    assert all(x.dtype == torch.float64 for x in got)
    assert worst < OPTIM_TOL


# -- CUDA against the CPU -------------------------------------------------------------------


def _one_step(method: str, device: str) -> tuple[list[torch.Tensor], object]:
    """The parameter update of one full optimizer step (capture, inverses, solve, KL-clip,
    momentum SGD) on ``device``, returned on the CPU, and the optimizer's preconditioner."""
    model, x = _model().to(device), _data().to(device)
    cfg = OptimizerConfig(method, lr=0.1, damping=DAMPING, fisher_batch=64)
    opt = build_optimizer(model, cfg, loss="bce", seed=5, fisher_data=(x, x))
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    per_sample_nll(model(x[:128]), x[:128], "bce").mean().backward()
    opt.step(x[:128], x[:128])
    update = [(p.detach() - b).cpu() for p, b in zip(model.parameters(), before, strict=True)]
    return update, opt.preconditioner


@CUDA
@pytest.mark.parametrize("route", ["policy", "float32"])
@pytest.mark.parametrize("method", NATURAL_OPTIMIZERS)
def test_cuda_optimizer_step_matches_the_cpu_float64_step(method, route, monkeypatch):
    """The whole step on CUDA, the engine there (state and inverses on the device, per-step
    solves in the policy's dtype), against the CPU float64 step. The float32 forward/backward
    differ by round-off between the devices (other summation orders), and the captures with
    them; the damped solve amplifies a perturbation of its factors by its conditioning (the
    engine test above: 1e-5 here for float32 rounding), and the float32 per-step route adds
    about 1e-6: 1e-3 leaves a wide margin on this network. ``route="float32"`` forces the float32
    per-step solves on CUDA (a fast-float64 part would not take that route otherwise)."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    want, _ = _one_step(method, "cpu")
    if route == "float32":
        monkeypatch.setenv(ENV_VAR, "float32")
    got, pre = _one_step(method, "cuda")
    assert pre.precision.device.type == "cuda"
    assert all(inv.approx.device.type == "cuda" for inv in pre.inverses.values())
    worst = max(rel(x, y) for x, y in zip(got, want, strict=True))
    print(f"cuda {method}: {worst:.1e} ({pre.precision.reason})")
    assert worst < 1e-3
