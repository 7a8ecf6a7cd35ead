"""``python -m core reproduce`` end to end on a tiny budget: the files it writes, its settings
and verdicts, bad arguments, the multi-layer quality run and its metric budget, the training
runs' time budgets."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.__main__ import main
from core.engine.methods import METHODS
from core.paper import runner
from core.paper.spec import BUDGET_STEP_FACTOR, ReproduceSpec
from core.paper.verdicts import final_losses
from tests.paper.reproductions import TINY, self_contained


def test_training_reproduction_files_settings_and_verdicts(outputs):
    out, _ = outputs
    settings = json.loads((out / "settings.json").read_text())
    assert settings["experiment"] == "training" and settings["dataset"] == "curves"
    assert settings["model"]["widths"] == [784, 400, 200, 100, 50, 25, 6]
    assert (settings["n_train"], settings["n_test"], settings["seeds"]) == (256, 64, [1, 2])
    assert settings["batch_size"] == 128 and settings["steps"] == 3
    opt = settings["optimizer_settings"]
    assert (opt["t_cov"], opt["t_inv"], opt["ema"], opt["kl_clip"]) == (100, 100, 0.95, 0.01)
    assert (opt["momentum"], opt["weight_decay"], opt["fisher_batch"]) == (0.9, 1e-3, 32)
    assert settings["optimizers"]["sgd"]["lr"] == 1e-3  # the curves preset's default
    assert settings["init"] == "xavier_uniform"  # the authors' initialisation, no deviation
    assert (opt["ema_mode"]) == "factors"
    deviations = " ".join(settings["deviations"])
    for word in ("subset", "--max-steps", "20 %"):
        assert word in deviations
    assert "Xavier" not in deviations and "He-normal" not in deviations
    assert settings["command"].endswith("--out curves-training")  # no server path
    assert str(out.parent) not in (out / "settings.json").read_text()
    assert {(r["optimizer"], r["seed"]) for r in settings["runs"]} == {
        (o, s) for o in ("sgd", "kfac", "kpsvd") for s in (1, 2)
    }

    df = pd.read_csv(out / "results.csv")
    assert list(df.columns[:8]) == [
        "optimizer",
        "seed",
        "status",
        "step",
        "epoch",
        "wall_time_s",
        "train_loss",
        "test_loss",
    ]
    assert len(df) == 3 * 2 * 3 and (df.status == "finished").all()
    first = df[df.step == 0].groupby("seed").train_loss.nunique()
    assert (first == 1).all()  # per seed every optimizer starts from the same parameters

    verdicts = pd.read_csv(out / "verdicts.csv")
    assert len(verdicts) == 3 * 2  # kpsvd against kfac, adam, sgd; equal epochs and time
    assert set(verdicts.criterion) == {"equal epochs", "equal wall time"}
    adam = verdicts[verdicts.claim == "kpsvd trains faster than adam"]
    assert (adam.verdict == "not testable here").all()
    assert adam.detail.str.contains("adam was not run").all()
    assert set(verdicts.verdict) <= {"reproduced", "not reproduced", "not testable here"}

    html = (out / "report.html").read_text()
    self_contained(html)
    assert "Verdicts" in html and "Xavier-uniform" in html and "wall time" in html


def test_quality_reproduction_tracks_every_method(outputs):
    _, out = outputs
    settings = json.loads((out / "settings.json").read_text())
    assert settings["quality"]["layers"] == [{"number": 6, "name": "encoder.linear6"}]
    assert settings["quality"]["fisher_batch"] == 256  # the paper's CURVES Fisher batch
    df = pd.read_csv(out / "results.csv")
    assert (df.layer == "encoder.linear6").all() and df.step.tolist() == [0, 1]
    for m in METHODS:
        assert df[f"rel_error_{m}"].notna().all() and df[f"spectrum_error_{m}"].notna().all()
    # Eckart–Young: the best Kronecker product (sum) is at least as close as KFAC's
    for m in ("kpsvd", "deflation", "lanczos", "kfac_corrected"):
        assert (df[f"rel_error_{m}"] <= df.rel_error_kfac + 1e-9).all()
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert len(verdicts) == 4 * 2
    frob = verdicts[verdicts.claim.str.contains("Frobenius")]
    assert (frob.verdict == "reproduced").all()
    self_contained((out / "report.html").read_text())


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--experiment", "speed", "--dataset", "curves"], "invalid choice: 'speed'"),
        (
            ["--experiment", "training", "--dataset", "digits"],
            "unknown dataset 'digits' for a reproduction",
        ),
        (["--experiment", "training", "--dataset", "curves", "--seeds", "a,b"], "--seeds"),
        (["--experiment", "training", "--dataset", "curves", "--seeds", "1,1"], "seeds must"),
        (
            ["--experiment", "training", "--dataset", "curves", "--optimizers", "kfac,foo"],
            "unknown optimizer(s) foo",
        ),
        (
            ["--experiment", "quality", "--dataset", "curves", "--optimizers", "kfac,adam"],
            "one optimizer",
        ),
        (["--experiment", "quality", "--dataset", "curves", "--layers", "13"], "unknown layer"),
        (["--experiment", "training", "--dataset", "curves", "--n-train", "0"], "n-train"),
        (
            ["--experiment", "training", "--dataset", "curves", "--optimizers", "kfac"]
            + ["--lrs", "adam=0.1"],
            "not run here",
        ),
        (["--experiment", "training", "--dataset", "mnist"], "--data-path"),
        (
            ["--experiment", "training", "--dataset", "curves", "--layers", "5"],
            "quality experiment only",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", *argv, "--n-test", "8", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m core reproduce: error: ") and match in last, last
    assert "Traceback" not in err


def test_spec_ema_mode_reaches_the_optimizer_and_is_checked():
    spec = ReproduceSpec("training", "curves", optimizers=("kpsvd",), ema_mode="fisher")
    sched = {"batch_size": 128, "steps": 10, "eval_every": 5, "quality_every": 5}
    assert spec.run_config("kpsvd", sched, seed=1).optimizer.ema_mode == "fisher"
    with pytest.raises(ValueError, match="unknown ema_mode 'fishr'"):
        ReproduceSpec("training", "curves", ema_mode="fishr")


def _no_network(*args, **kwargs):
    raise AssertionError("the network was used without --download")


def _write_idx(path: Path, images: np.ndarray) -> None:
    """``images`` (n, 28, 28) uint8 as an IDX image file (big-endian header, as MNIST's)."""
    n, rows, cols = images.shape
    header = np.array([2051, n, rows, cols], dtype=">u4").tobytes()
    path.write_bytes(header + images.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_dir(tmp_path):
    """A small synthetic MNIST-shaped dataset written as the original IDX image files."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (64, 28, 28)))
    _write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (16, 28, 28)))
    return folder


def test_quality_on_several_layers_trains_once_and_reruns_as_written(
    mnist_dir, tmp_path, monkeypatch, capsys
):
    import hashlib
    import shlex

    from core.__main__ import build_parser
    from core.training.runner import TrainingRun

    made = []
    init = TrainingRun.__init__

    def counted(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(TrainingRun, "__init__", counted)
    # the estimate puts layer 1 (785 × 1000) over a 1 s budget and layers 4, 5 under it; the
    # test raises the budget to 60 s and scales the estimate with it, so that a slow machine's
    # measured times (the other skip rule, tested below) cannot skip layers 4 and 5
    estimate = runner.metric_cost_s
    assert estimate(64, 785, 1000) > 1 > estimate(64, 251, 30)
    monkeypatch.setattr(runner, "metric_cost_s", lambda *shape: 60 * estimate(*shape))
    out = tmp_path / "results" / "mnist-quality"
    argv = ["reproduce", "--experiment", "quality", "--dataset", "mnist"]
    argv += ["--data-path", str(mnist_dir), "--max-steps", "2", "--seeds", "1"]
    argv += ["--layers", "1,4,5", "--quality-every", "1", "--metric-budget-s", "60"]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    assert len(made) == 1  # one training for all three layers
    df = pd.read_csv(out / "results.csv")
    for number, name in ((4, "encoder.linear4"), (5, "decoder.linear1")):  # measured
        rows = df[df.layer == name]
        assert rows.layer_number.eq(number).all() and rows.step.tolist() == [0, 1]
        for m in METHODS:
            assert rows[f"rel_error_{m}"].notna().all()
    err = capsys.readouterr().err
    assert "step 1: layer 5 (decoder.linear1" in err  # progress per checkpoint and layer
    # layer 1 is estimated over the budget: skipped, with a notice
    assert df[df.layer == "encoder.linear1"].filter(like="rel_error").isna().all().all()
    settings = json.loads((out / "settings.json").read_text())
    rerun = json.loads((out / "rerun.json").read_text())
    (notice,) = settings["quality"]["skipped"]
    assert (
        notice.startswith("layer 1 (encoder.linear1, m=64, da=785, dg=1000)")
        and "--metric-budget-s" in notice
    )
    assert "Skipped — layer 1" in (out / "report.html").read_text()
    assert rerun["data_path"] == str(mnist_dir)  # as given, not "mnist"
    assert rerun["data_files"] == settings["data_files"]
    assert str(tmp_path) not in (out / "settings.json").read_text()  # served: no server path
    files = {f["name"]: f for f in settings["data_files"]}
    train = mnist_dir / "train-images-idx3-ubyte"
    assert files[train.name]["size"] == train.stat().st_size
    assert files[train.name]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
    # the recorded command parses back to the same settings
    words = shlex.split(rerun["command"])
    assert words[:3] == ["python", "-m", "core"]
    parser = build_parser()

    def parsed(a):
        return {k: v for k, v in vars(parser.parse_args(a)).items() if k not in ("func", "parser")}

    assert parsed(words[3:]) == parsed(argv)
    # the report names the data files, never the server path
    html = (out / "report.html").read_text()
    assert files[train.name]["sha256"] in html and str(tmp_path) not in html
    assert "To rerun: python -m core reproduce --experiment quality" in html


def test_a_measure_that_took_longer_than_the_budget_is_skipped_from_then_on(
    mnist_dir, tmp_path, monkeypatch, capsys
):
    """The cost estimate is only a floor for the iterative methods: a measure that TOOK longer
    than --metric-budget-s is measured once, then skipped at later checkpoints, with a notice
    that names the layer, the method and its time."""
    monkeypatch.setattr(runner, "metric_cost_s", lambda m, da, dg: 0.0)  # never estimated over
    out = tmp_path / "slow"
    argv = ["reproduce", "--experiment", "quality", "--dataset", "mnist"]
    argv += ["--data-path", str(mnist_dir), "--max-steps", "3", "--seeds", "1"]
    argv += ["--layers", "4", "--quality-every", "1", "--metric-budget-s", "1e-9"]
    assert main([*argv, "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv").sort_values("step")
    for m in METHODS:  # measured at the first checkpoint only
        assert df[f"rel_error_{m}"].notna().tolist() == [True, False, False]
    skipped = json.loads((out / "settings.json").read_text())["quality"]["skipped"]
    assert len(skipped) == len(METHODS)
    for m in METHODS:
        (notice,) = [n for n in skipped if f": {m} took " in n]
        assert notice.startswith("layer 4 (encoder.linear4, m=") and "at step 0" in notice
    err = capsys.readouterr().err
    assert "step 0: layer 4 (encoder.linear4" in err and "step 1: layer 4" in err


def _check_budgeted_runs(settings: dict, df: pd.DataFrame, budget_s: float) -> None:
    """Every run trained its epochs and then stopped at the first record at or past the
    budget (or at its step cap, and then says so)."""
    steps = settings["steps"]
    cap = steps * BUDGET_STEP_FACTOR
    for run in settings["runs"]:
        part = df[(df.optimizer == run["optimizer"]) & (df.seed == run["seed"])]
        assert run["status"] == "finished" and len(part) >= steps
        after_epochs = part[part.step + 1 >= steps]
        assert (after_epochs.wall_time_s.iloc[:-1] < budget_s).all()
        if part.wall_time_s.iloc[-1] >= budget_s:
            assert "time budget" in run["message"]
        else:
            assert len(part) == cap and "step cap" in run["message"]


def test_time_budget_gives_every_optimizer_the_same_time(tmp_path, monkeypatch):
    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "budget"
    argv = ["reproduce", "--experiment", "training", *TINY, "--epochs", "1"]
    argv += ["--seeds", "1", "--optimizers", "sgd,kpsvd", "--time-budget-s", "0.4"]
    assert main([*argv, "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["time_budget_s"] == 0.4 and settings["time_budget"].startswith("given")
    df = pd.read_csv(out / "results.csv")
    _check_budgeted_runs(settings, df, 0.4)  # going on past the epochs: the "auto" test
    wall = pd.read_csv(out / "verdicts.csv").query("criterion == 'equal wall time'")
    assert len(wall) and wall.detail.str.contains(r"T = 0\.4 s \(the time budget\)").all()
    with pytest.raises(ValueError, match="training experiment only"):
        ReproduceSpec("quality", "curves", time_budget_s=1.0)
    with pytest.raises(ValueError, match="time-budget-s must be a finite number"):
        ReproduceSpec("training", "curves", time_budget_s=-1.0)
    assert ReproduceSpec("training", "curves").time_budget_s == "auto"
    assert ReproduceSpec("quality", "curves").time_budget_s is None


def test_auto_time_budget_is_the_slowest_first_seed_run(tmp_path, monkeypatch):
    """Default ``auto``: T is the longest time an optimizer needed for the epochs on seed 1;
    seed 1's faster runs are trained again to T, later seeds' runs all reach T; the
    equal-epochs verdict still reads only the epochs' steps."""
    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "auto"
    argv = ["reproduce", "--experiment", "training", *TINY, "--epochs", "2"]
    argv += ["--seeds", "1,2", "--optimizers", "sgd,kpsvd"]
    assert main([*argv, "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    budget = settings["time_budget_s"]
    assert settings["time_budget"].startswith("auto") and budget > 0
    df = pd.read_csv(out / "results.csv")
    steps = settings["steps"]
    first = df[df.seed == 1]
    ends = first.groupby("optimizer").wall_time_s.max()
    assert ends.min() >= budget  # the faster run went on to T
    # the slowest run kept its own records: its epochs alone took T
    slowest = first[first.wall_time_s == budget]
    assert len(slowest) == 1 and int(slowest.step.iloc[0]) == steps - 1
    _check_budgeted_runs(settings, df, budget)
    # equal epochs: the last epoch of the first `steps` records, whatever came after
    sgd = df[(df.optimizer == "sgd")].sort_values(["seed", "step"])
    per_epoch = settings["steps_per_epoch"]
    want = {
        seed: part[part.step < steps].train_loss.tail(per_epoch).mean()
        for seed, part in sgd.groupby("seed")
    }
    assert final_losses(df, "sgd", steps=steps) == pytest.approx(want, rel=1e-12)
    assert final_losses(df, "sgd") != pytest.approx(want, rel=1e-12)  # it went on


def test_time_budget_off_stops_at_the_epochs(tmp_path, monkeypatch):
    monkeypatch.setenv("KRONOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "off"
    argv = ["reproduce", "--experiment", "training", *TINY, "--epochs", "1"]
    argv += ["--seeds", "1", "--optimizers", "sgd,kpsvd", "--time-budget-s", "off"]
    assert main([*argv, "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["time_budget_s"] is None and settings["time_budget"].startswith("off")
    df = pd.read_csv(out / "results.csv")
    assert (df.groupby("optimizer").size() == settings["steps"]).all()
    wall = pd.read_csv(out / "verdicts.csv").query("criterion == 'equal wall time'")
    assert wall.detail.str.contains("the shortest run's time").all()
    with pytest.raises(SystemExit):
        main([*argv[:-1], "soon", "--out", str(tmp_path / "bad")])
