"""Tests of core.training.runner (training runs) and core.views.report (figures) on a tiny
problem."""

from __future__ import annotations

import math
import time

import plotly.graph_objects as go
import pytest
import torch

from core.training import runner as runner_module
from core.training.datasets import Dataset
from core.training.models import Autoencoder, batch_loss
from core.training.optim import OptimizerConfig, default_damping, default_lr
from core.training.runner import BLOWUP, RunConfig, RunLimits, TrainingRun, run_comparison
from core.views.report import error_figure, loss_vs_step, loss_vs_time, quality_table, summary_table


@pytest.fixture(scope="module")
def tiny() -> Dataset:
    """8×8 binary-ish images: 96 train, 32 test (registered under the name "digits")."""
    gen = torch.Generator().manual_seed(0)
    protos = (torch.rand(4, 64, generator=gen) > 0.6).float()
    labels = torch.randint(0, 4, (128,), generator=gen)
    noise = torch.rand(128, 64, generator=gen) * 0.2
    x = (protos[labels] * 0.8 + noise).clamp(0, 1)
    return Dataset("digits", x[:96].contiguous(), x[96:].contiguous(), (8, 8), "bce")


def _model(seed: int = 0) -> Autoencoder:
    return Autoencoder([64, 6, 3], "bce", seed=seed)


def _cfg(opt="kfac", lr=0.1, **kw) -> RunConfig:
    kw.setdefault("steps", 12)
    kw.setdefault("batch_size", 32)
    kw.setdefault("eval_every", 5)
    return RunConfig("digits", OptimizerConfig(opt, lr=lr, t_cov=2, t_inv=2), **kw)


def _strip_time(records):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]


def test_run_finishes_with_records(tiny):
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    run = TrainingRun(_cfg(), dataset=tiny, model=model)
    assert run.status == "pending" and run.progress == 0.0
    run.run()
    assert run.status == "finished", run.message
    assert run.progress == 1.0
    recs = run.records()
    assert [r["step"] for r in recs] == list(range(12))
    assert set(recs[0]) >= {"optimizer", "step", "epoch", "wall_time_s", "train_loss", "test_loss"}
    assert all(r["optimizer"] == "kfac" for r in recs)
    # 96 samples / 32 per batch = 3 steps per epoch
    assert recs[2]["epoch"] == pytest.approx(1.0) and recs[-1]["epoch"] == pytest.approx(4.0)
    evals = [r["step"] for r in recs if r["test_loss"] is not None]
    assert evals == [0, 5, 10, 11]
    times = [r["wall_time_s"] for r in recs]
    assert all(b >= a for a, b in zip(times, times[1:], strict=False)) and times[0] > 0
    assert recs[-1]["train_loss"] < recs[0]["train_loss"]
    # the caller's model is untouched (deep copy)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    df = run.dataframe()
    assert list(df.columns[:6]) == [
        "optimizer",
        "step",
        "epoch",
        "wall_time_s",
        "train_loss",
        "test_loss",
    ]


def test_epochs_set_the_number_of_steps(tiny):
    run = TrainingRun(_cfg(steps=None, epochs=2.5, batch_size=32), dataset=tiny, model=_model())
    assert run.steps_per_epoch == 3 and run.total_steps == 8  # round(2.5 · 3)


def test_same_seed_same_records(tiny):
    def records(seed, quality=False):
        extra = {"quality_layer": "encoder.linear2", "quality_every": 4} if quality else {}
        cfg = _cfg("deflation", seed=seed, **extra)
        run = TrainingRun(cfg, dataset=tiny, model=_model(seed))
        run.run()
        assert run.status == "finished", run.message
        return _strip_time(run.records())

    a, b = records(3), records(3)
    assert a == b
    assert records(4) != a
    # quality tracking draws from its own generator: the training is the same
    q = records(3, quality=True)
    assert [r["train_loss"] for r in q] == [r["train_loss"] for r in a]


def test_quality_tracking_records_every_method(tiny):
    cfg = _cfg(
        "kfac",
        steps=9,
        quality_layer="encoder.linear2",
        quality_methods=("kfac", "kpsvd", "deflation"),
        quality_every=4,
    )
    run = TrainingRun(cfg, dataset=tiny, model=_model())
    run.run()
    recs = run.records()
    tracked = [r for r in recs if "rel_error_kfac" in r]
    assert [r["step"] for r in tracked] == [0, 4, 8]
    for r in tracked:
        # optimality: best rank-2 ≤ best rank-1 ≤ KFAC (Frobenius)
        assert r["rel_error_deflation"] <= r["rel_error_kpsvd"] + 1e-9
        assert r["rel_error_kpsvd"] <= r["rel_error_kfac"] + 1e-9
        assert 0 <= r["spectrum_error_kpsvd"] < 2
    table = quality_table(run.dataframe())
    assert list(table.columns) == ["step", "kfac", "kpsvd", "deflation"] and len(table) == 3
    fig = error_figure(run.dataframe(), kind="spectrum_error")
    assert isinstance(fig, go.Figure) and len(fig.data) == 3


def test_huge_learning_rate_diverges_and_keeps_last_bounded_parameters(tiny):
    """lr = 1e3: the loss is 2e13 at step 1, finite but over BLOWUP × the first step's."""
    cfg = _cfg("sgd", lr=1e3, steps=20)
    run = TrainingRun(cfg, dataset=tiny, model=_model())
    run.run()
    assert run.status == "diverged"
    k = run.diverged_step
    assert k is not None and f"step {k}" in run.message and "grew to" in run.message
    recs = run.records()
    first = recs[0]["train_loss"]
    assert len(recs) == k + 1 and recs[-1]["train_loss"] > BLOWUP * max(first, 1.0)
    assert all(math.isfinite(r["train_loss"]) for r in recs)
    assert all(r["train_loss"] <= BLOWUP * max(first, 1.0) for r in recs[:-1])
    # the model holds the parameters that gave the last bounded loss (step k − 1)
    params = list(run.model.parameters())
    if k == 1:
        ref_params = list(_model().parameters())
    else:
        ref = TrainingRun(_cfg("sgd", lr=1e3, steps=k - 1), dataset=tiny, model=_model())
        ref.run()
        ref_params = list(ref.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params, ref_params, strict=True))
    assert f"parameters of step {k - 1}" in run.message


def test_a_non_finite_loss_diverges_and_keeps_last_finite_parameters(tiny, monkeypatch):
    """The loss turns NaN at step 3 (injected: only the training step computes batch_loss)."""
    calls: list[int] = []

    def nan_at_step_3(output, target, kind):
        calls.append(1)
        loss = batch_loss(output, target, kind)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(runner_module, "batch_loss", nan_at_step_3)
    run = TrainingRun(_cfg("sgd", lr=0.1, steps=10), dataset=tiny, model=_model())
    run.run()
    assert run.status == "diverged" and run.diverged_step == 3
    assert "the training loss became nan at step 3" in run.message
    recs = run.records()
    assert len(recs) == 4 and not math.isfinite(recs[-1]["train_loss"])
    monkeypatch.undo()
    ref = TrainingRun(_cfg("sgd", lr=0.1, steps=2), dataset=tiny, model=_model())
    ref.run()
    assert all(
        torch.equal(a, b)
        for a, b in zip(run.model.parameters(), ref.model.parameters(), strict=True)
    )
    assert "parameters of step 2" in run.message


def test_natural_gradient_divergence_is_caught(tiny):
    cfg = RunConfig(
        "digits",
        OptimizerConfig("kpsvd", lr=1e30, kl_clip=None, t_cov=1, t_inv=1),
        steps=10,
        batch_size=32,
    )
    run = TrainingRun(cfg, dataset=tiny, model=_model())
    run.run()
    assert run.status == "diverged", run.message
    assert "step" in run.message
    assert all(bool(torch.isfinite(p).all()) for p in run.model.parameters())
    # the model's loss on the training set is finite
    with torch.no_grad():
        assert math.isfinite(float(batch_loss(run.model(tiny.x_train), tiny.x_train, "bce")))


def test_background_run_can_be_stopped(tiny):
    run = TrainingRun(_cfg("adam", lr=1e-3, steps=100_000), dataset=tiny, model=_model())
    run.start()
    deadline = time.time() + 20
    while len(run.records()) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert run.status == "running"
    run.stop()
    run.join(timeout=20)
    assert run.status == "stopped" and "stopped" in run.message
    assert 0 < run.progress < 1
    n = len(run.records())
    time.sleep(0.05)
    assert len(run.records()) == n


def test_a_crash_sets_failed(tiny):
    def boom(record):
        raise RuntimeError("callback exploded")

    run = TrainingRun(_cfg(), dataset=tiny, model=_model(), on_step=boom)
    run.run()
    assert run.status == "failed" and "callback exploded" in run.message


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RunConfig("cifar", OptimizerConfig("kfac", lr=0.1), steps=3), "unknown dataset"),
        (lambda: RunConfig("digits", "rmsprop", steps=3), "unknown optimizer 'rmsprop'"),
        (lambda: RunConfig("digits", "kfac"), "exactly one of steps and epochs"),
        (lambda: RunConfig("digits", "kfac", steps=3, epochs=1.0), "exactly one"),
        (lambda: RunConfig("digits", "kfac", steps=0), "steps must be"),
        (lambda: RunConfig("digits", "kfac", epochs=-1.0), "epochs must be"),
        (lambda: RunConfig("digits", "kfac", steps=3, batch_size=0), "batch_size must be"),
        (lambda: RunConfig("digits", "kfac", steps=3, preset="vgg"), "unknown model preset"),
        (
            lambda: RunConfig("digits", "kfac", steps=3, quality_methods=("svd",)),
            "unknown quality method",
        ),
    ],
)
def test_invalid_run_configs(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# -- RunConfig.from_settings: the one place settings become a run ----------------------------


@pytest.mark.parametrize(
    ("dataset", "settings", "preset"),
    [
        ("digits", {}, "digits"),  # no preset: the dataset's own
        ("curves", {}, "curves"),  # a preset with its own lr for sgd and adam
        ("curves-small", {"preset": "digits"}, "digits"),  # a preset given: its defaults
        ("faces", {"preset": None}, "faces"),
        ("curves", {"widths": [784, 32, 8]}, None),  # custom widths: the general defaults
    ],
)
@pytest.mark.parametrize("name", ["sgd", "adam", "kfac", "ekfac", "shampoo"])
def test_from_settings_applies_the_presets_default_lr_and_damping(name, dataset, settings, preset):
    cfg = RunConfig.from_settings(dataset, name, steps=2, **settings)
    assert cfg.optimizer.name == name
    assert cfg.optimizer.lr == default_lr(name, preset)
    assert cfg.optimizer.damping == default_damping(name, preset)
    explicit_none = RunConfig.from_settings(
        dataset, name, steps=2, lr=None, damping=None, **settings
    )
    assert explicit_none == cfg  # None is "the default", for lr and damping
    assert RunConfig(dataset, name, steps=2, **settings) == cfg  # the name form: same defaults


def test_from_settings_presets_differ_where_the_registry_says():
    """The cases above can fail: sgd's default lr on curves is not the general one."""
    assert default_lr("sgd", "curves") != default_lr("sgd", None)
    curves = RunConfig.from_settings("curves", "sgd", steps=1).optimizer.lr
    custom = RunConfig.from_settings("curves", "sgd", steps=1, widths=[784, 8]).optimizer.lr
    assert curves == default_lr("sgd", "curves") and custom == default_lr("sgd", None)


def test_from_settings_keeps_explicit_values():
    settings = dict(
        lr=0.123, damping=0.0456, t_cov=3, t_inv=6, ema=0.5, ema_mode="window", kl_clip=None,
        momentum=0.25, weight_decay=1e-4, fisher_batch=7, fisher="empirical",
        preset="digits", steps=9, batch_size=16, seed=5, eval_every=4,
        quality_layer="encoder.linear2", quality_methods=("kfac", "kpsvd"), quality_every=3,
        data_path=None, device="cpu",
    )  # fmt: skip
    cfg = RunConfig.from_settings("curves-small", "KFAC-corrected", **settings)
    optimizer = {k: settings[k] for k in ("lr", "damping", "t_cov", "t_inv", "ema", "ema_mode",
                 "kl_clip", "momentum", "weight_decay", "fisher_batch", "fisher")}  # fmt: skip
    run = {k: v for k, v in settings.items() if k not in optimizer}
    expected = RunConfig("curves-small", OptimizerConfig("kfac_corrected", **optimizer), **run)
    assert cfg == expected
    assert cfg.optimizer.kl_clip is None  # None kept: no clipping, not "the default"
    assert RunConfig.from_settings("digits", "kfac", steps=1).optimizer.kl_clip == 1e-2


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"dataset": "cifar"}, "unknown dataset 'cifar'"),
        ({"preset": "vgg"}, "unknown model preset 'vgg'"),
        ({"learning_rate": 0.1}, "unknown setting.*learning_rate; valid names: batch_size"),
        ({"lr": -1.0}, "learning rate must be a finite number > 0"),
        ({"lr": math.nan}, "learning rate must be a finite number > 0"),
        ({"damping": 0.0}, "damping must be > 0 for the natural-gradient optimizer 'kfac'"),
        ({"kl_clip": -1.0}, "kl_clip must be a finite number > 0 or None"),
        ({"t_cov": 0}, "t_cov must be an integer ≥ 1"),
        ({"steps": 0}, "steps must be an integer ≥ 1"),
        ({"steps": None}, "give exactly one of steps and epochs"),
        ({"batch_size": 2.5}, "batch_size must be an integer ≥ 1"),
        ({"seed": -1}, "seed must be an integer ≥ 0"),
        ({"quality_methods": ("svd",)}, "unknown quality method"),
        ({"device": "tpu"}, "unsupported device 'tpu'|unknown device 'tpu'"),
    ],
)
def test_from_settings_rejects_bad_values_by_name(settings, match):
    args = {"dataset": "digits", "optimizer": "kfac", "steps": 3, **settings}
    with pytest.raises(ValueError, match=match):
        RunConfig.from_settings(args.pop("dataset"), args.pop("optimizer"), **args)


# -- the web app's limits per run (RunConfig.from_settings(..., server_limits=True)) -------------


def _server_cfg(**kw) -> RunConfig:
    kw.setdefault("batch_size", 32)
    kw.setdefault("eval_every", 5)
    return RunConfig.from_settings("digits", "sgd", lr=0.1, server_limits=True, **kw)


def test_server_limits_cut_steps_with_a_notice(monkeypatch, tiny):
    monkeypatch.setenv("KRONOSCOPE_RUN_MAX_STEPS", "10")
    cfg = _server_cfg(steps=25)
    assert cfg.steps == 10 and cfg.limits == RunLimits(10, 900.0)
    assert cfg.notice == "Steps cut from 25 to 10: this server's limit per run."
    run = TrainingRun(cfg, dataset=tiny, model=_model())
    assert run.total_steps == 10 and run.notice == cfg.notice
    run.run()
    assert run.status == "finished" and len(run.records()) == 10
    within = _server_cfg(steps=10)
    assert within.steps == 10 and within.notice == ""
    # epochs are steps only once the data are known: the run cuts them (96/32 = 3 per epoch)
    by_epochs = TrainingRun(_server_cfg(epochs=5), dataset=tiny, model=_model())
    assert by_epochs.total_steps == 10
    assert by_epochs.notice == "Steps cut from 15 (5 epochs) to 10: this server's limit per run."
    monkeypatch.setenv("KRONOSCOPE_RUN_MAX_STEPS", "20000")
    big = _server_cfg(steps=20_000)
    assert big.steps == 20_000 and big.notice == ""
    monkeypatch.setenv("KRONOSCOPE_RUN_MAX_STEPS", "5000")
    assert "from 20,000 to 5,000" in _server_cfg(steps=20_000).notice
    with pytest.raises(ValueError, match="steps must be an integer ≥ 1"):
        _server_cfg(steps=0)


def test_limits_are_not_part_of_the_configuration(monkeypatch):
    """The same settings make equal configurations with and without the server's limits
    (what a run computes), and the limits stay out of ``to_dict`` (config.json)."""
    app = _server_cfg(steps=12)
    cli = RunConfig.from_settings("digits", "sgd", lr=0.1, steps=12, batch_size=32, eval_every=5)
    assert app == cli and app.to_dict() == cli.to_dict()
    assert app.limits == RunLimits(5000, 900.0) and cli.limits == RunLimits()
    assert "limits" not in app.to_dict() and "notice" not in app.to_dict()
    with pytest.raises(ValueError, match="unknown setting.*limits"):
        RunConfig.from_settings("digits", "sgd", steps=3, limits=RunLimits(1, 1.0))


def test_a_run_over_its_wall_budget_stops_and_keeps_its_records(monkeypatch, tiny):
    monkeypatch.setenv("KRONOSCOPE_RUN_MAX_STEPS", "1_000_000")
    monkeypatch.setenv("KRONOSCOPE_RUN_BUDGET_S", "1")  # the smallest the setting allows
    cfg = _server_cfg(steps=1_000_000, eval_every=1)
    run = TrainingRun(cfg, dataset=tiny, model=_model())
    start = time.monotonic()
    run.run()
    took = time.monotonic() - start
    # stopped at the budget (a million steps would take far longer than a minute, even idle)
    assert run.status == "timed_out" and run.done and 1.0 <= took < 60.0
    recs = run.records()
    n = len(recs)
    assert n > 0 and [r["step"] for r in recs] == list(range(n))
    assert all(math.isfinite(r["train_loss"]) and r["test_loss"] is not None for r in recs)
    assert run.message == (
        f"stopped at this server's time limit per run (1 s) after {n:,} of 1,000,000 step(s); "
        "the records so far are kept and the model holds the parameters of its last step"
    )
    assert "KRONOSCOPE" not in run.message
    assert run.progress == pytest.approx(n / 1_000_000) and len(run.dataframe()) == n


def test_the_command_line_is_not_limited(monkeypatch, tmp_path, tiny):
    monkeypatch.setenv("KRONOSCOPE_RUN_MAX_STEPS", "3")
    monkeypatch.setenv("KRONOSCOPE_RUN_BUDGET_S", "1")
    cfg = RunConfig.from_settings("digits", "sgd", steps=20_000)
    assert cfg.steps == 20_000 and cfg.limits == RunLimits() and cfg.notice == ""
    assert TrainingRun(cfg, dataset=tiny, model=_model()).total_steps == 20_000
    from core.__main__ import main

    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--widths", "64-6-3", "--optimizer", "sgd"]
    assert main([*argv, "--steps", "5", "--no-progress", "--out", str(out)]) == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 5


def test_invalid_layer_and_model(tiny):
    with pytest.raises(ValueError, match="unknown quality layer 'encoder.linear9'"):
        TrainingRun(_cfg(quality_layer="encoder.linear9"), dataset=tiny, model=_model())
    with pytest.raises(ValueError, match="does not match the dataset"):
        TrainingRun(_cfg(), dataset=tiny, model=Autoencoder([16, 4], "bce"))


def test_comparison_shares_data_and_initialisation(tiny):
    configs = [_cfg(name, lr=lr, steps=6) for name, lr in (("adam", 1e-3), ("kfac", 0.1))]
    configs.append(_cfg("kfac", lr=0.05, steps=6))
    seen = []
    df = run_comparison(
        configs,
        progress_callback=lambda f, m: seen.append(f),
        datasets={("digits", None): tiny},
    )
    assert seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    first = df[df.step == 0].train_loss.tolist()
    assert len(first) == 3 and max(first) == min(first)  # same init, same first batch
    lam = f"{configs[1].optimizer.damping:g}"
    assert set(df.label) == {"adam", f"kfac (lr=0.1, λ={lam})", f"kfac (lr=0.05, λ={lam})"}
    assert [r["status"] for r in df.attrs["runs"]] == ["finished"] * 3
    figs = [loss_vs_step(df, smooth=2), loss_vs_time(df)]
    assert all(isinstance(f, go.Figure) for f in figs)
    assert len(figs[0].data) == 6  # train + test per run
    summary = summary_table(df)
    assert len(summary) == 3 and (summary.steps == 6).all()


def test_quality_of_a_dead_layer_is_nan_and_the_run_goes_on(tiny):
    """With every weight after the tracked layer zero, its output gradients vanish and F = 0:
    the quality columns are NaN (no relative error exists) and training carries on."""
    model = _model()
    with torch.no_grad():
        model.encoder.linear2.weight.zero_()
    cfg = _cfg("sgd", lr=1e-3, steps=4, quality_layer="encoder.linear1", quality_every=2)
    run = TrainingRun(cfg, dataset=tiny, model=model)
    run.run()
    assert run.status == "finished"
    tracked = [r for r in run.records() if "rel_error_kfac" in r]
    assert tracked and all(math.isnan(r["rel_error_kfac"]) for r in tracked)
    assert all(math.isnan(r["spectrum_error_kpsvd"]) for r in tracked)
