"""Command line: ``python -m core {train,compare,quality,reproduce} ...`` (each with ``--help``).

* ``train``   — one optimizer; writes DIR/metrics.csv and DIR/config.json.
* ``compare`` — several optimizers from the same data and initialisation; DIR/metrics.csv,
  DIR/config.json and a self-contained DIR/report.html (loss against step and wall time).
* ``quality`` — approximation errors of every engine method on one layer over training;
  DIR/quality.csv, DIR/metrics.csv, DIR/config.json and DIR/report.html.
* ``reproduce`` — one of the seed paper's experiments (``--experiment quality`` or
  ``training``) on its network for ``--dataset curves|mnist|faces`` with the authors' settings,
  over several seeds (:mod:`core.paper`); DIR/settings.json, DIR/results.csv,
  DIR/verdicts.csv and DIR/report.html. ``--n-train``/``--n-test`` (a subset of the data) and
  ``--max-steps`` (a cap per run) make quick checks; both are written into the settings.
  ``--experiment quality --layers 4,5`` trains once and measures every layer at each
  checkpoint (progress per checkpoint and layer on stderr); ``--metric-budget-s`` skips, with
  a notice, measures estimated to take longer; ``--time-budget-s`` (default ``auto``) gives
  every optimizer the same wall time. DIR/rerun.json keeps the command exactly as given (never
  served). ``--experiment conv|compress|prune|two_level|step`` runs one of the studies of the
  paper's follow-up questions instead (:mod:`core.paper.studies`; ``--preset``, ``--quick``);
  DIR/settings.json, DIR/verdicts.csv, DIR/results.csv and DIR/report.html.

Learning rates and dampings default to each optimizer's default for the model preset
(:func:`core.training.optim.default_lr`, ``default_damping``; a custom ``--widths`` gets the
defaults tuned on curves-small), applied by :meth:`core.training.runner.RunConfig.from_settings`,
which the app uses too: the same settings make the same run here and there.

Datasets are never downloaded unless ``--download`` is given: then the paper's original files
(CURVES ``digs3pts_1.mat``, FACES ``newfaces_rot_single.mat``, MNIST IDX) are fetched into the
cache once (:mod:`core.training.download`) and their SHA-256 checked on every later use; MNIST and
FACES already downloaded are used from the cache without ``--download``.

Layers are numbered from 1 in forward order, as their names count (``--layer 1`` is
``encoder.linear1``); ``--layer`` also takes the name.

Exit status: 0 finished (or stopped), 3 diverged (files still written), 1 failed (a download
or a run), 2 bad usage (every bad argument, a data file that cannot be used, an ``--out``
that cannot be created): one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from .engine.approx import SOLVE_MODES
from .engine.methods import METHODS, canonical_name
from .paper.files import write_reproduction
from .paper.runner import run_reproduction
from .paper.spec import EXPERIMENTS, PAPER_DEFAULTS, REPRO_DATASETS, TIME_BUDGETS, ReproduceSpec
from .paper.studies import STUDIES, StudyOptions, run_study, write_study
from .training.data import load_dataset
from .training.datasets import DATASET_SPECS
from .training.defaults import NATURAL_OPTIMIZERS, OPTIMIZERS
from .training.download import SOURCES, DownloadError, cached_dataset, download_dataset
from .training.models import PRESETS, build_model, describe_layers, parse_widths
from .training.optim import EMA_MODES
from .training.readers import file_help
from .training.runner import RunConfig, TrainingRun, run_comparison
from .views.report import comparison_report, quality_report

EXIT = {"finished": 0, "stopped": 0, "diverged": 3, "failed": 1}


def _float_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "off", "0") else float(text)


def _common(p: argparse.ArgumentParser, *, steps_required: bool = True) -> None:
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASET_SPECS)}")
    length = p.add_mutually_exclusive_group(required=steps_required)
    length.add_argument("--steps", type=int, help="number of optimizer steps")
    length.add_argument("--epochs", type=float, help="number of epochs (fractional allowed)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, batches, Fisher samples")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--data-path",
        help="mnist: folder of IDX files or .npz; faces: newfaces_rot_single.mat or .npz; "
        "curves: the original digs3pts_1.mat instead of the generated CURVES-like set",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help=f"download the original files of {', '.join(SOURCES)} into the cache first "
        "(once; resumable; SHA-256 recorded and checked)",
    )
    p.add_argument("--preset", help=f"model preset: {', '.join(PRESETS)} (default: the dataset's)")
    p.add_argument("--widths", help="custom encoder widths, e.g. 196-64-32-16 (mirrored)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=10, help="test loss every k steps")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("optimizer options (natural-gradient methods)")
    g.add_argument("--damping", type=float, help="damping λ (default: per optimizer)")
    g.add_argument("--t-cov", type=int, default=10, help="curvature refresh period (steps)")
    g.add_argument("--t-inv", type=int, default=10, help="inverse refresh period (steps)")
    g.add_argument("--ema", type=float, default=0.95, help="EMA decay of the curvature")
    g.add_argument(
        "--ema-mode",
        choices=EMA_MODES,
        default="factors",
        help="average the Kronecker factors (default) or a window of Fisher captures",
    )
    g.add_argument(
        "--damping-mode",
        choices=SOLVE_MODES,
        default="factored",
        help="factored (Martens-Grosse, default) or exact (F~ + lambda I)^-1 damping; "
        "natural-gradient optimizers only, the others ignore it",
    )
    g.add_argument("--kl-clip", type=_float_or_none, default=1e-2, help="KL-clip bound, or none")
    g.add_argument("--momentum", type=float, default=0.9, help="momentum (Adam's beta1)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--fisher-batch", type=int, help="Fisher minibatch (default: the minibatch)")
    g.add_argument("--fisher", choices=("true", "empirical"), default="true")


def _parse_lrs(text: str | None) -> dict[str, float]:
    """``"kfac=0.1,adam=1e-3"`` -> dict; a bare number applies to every optimizer."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            key, value = part.split("=", 1)
            out[canonical_name(key)] = float(value)
        else:
            out["*"] = float(part)
    return out


def _run_config(args, name: str, lr: float | None, damping: float | None, **extra) -> RunConfig:
    """The run the options describe (:meth:`RunConfig.from_settings`, which applies the
    per-preset lr and damping defaults where ``lr``/``damping`` are ``None``)."""
    return RunConfig.from_settings(
        args.dataset,
        name,
        lr=lr,
        damping=damping,
        t_cov=args.t_cov,
        t_inv=args.t_inv,
        ema=args.ema,
        ema_mode=args.ema_mode,
        damping_mode=(
            args.damping_mode if canonical_name(name) in NATURAL_OPTIMIZERS else "factored"
        ),
        kl_clip=args.kl_clip,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        fisher_batch=args.fisher_batch,
        fisher=args.fisher,
        preset=args.preset,
        widths=parse_widths(args.widths) if args.widths else None,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        eval_every=args.eval_every,
        data_path=args.data_path,
        device=args.device,
        **extra,
    )


def _progress(total: int, desc: str, disable: bool):
    bar = tqdm(total=total, desc=desc, unit="step", disable=disable, file=sys.stderr)

    def on_step(record: dict) -> None:
        bar.update(1)
        if record["step"] % 10 == 0:
            bar.set_postfix(loss=f"{record['train_loss']:.4g}", refresh=False)

    return bar, on_step


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")


def _environment() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def _single_run(args, cfg: RunConfig, desc: str) -> TrainingRun:
    dataset = load_dataset(cfg.dataset, path=cfg.data_path, seed=0)
    run = TrainingRun(cfg, dataset=dataset)
    bar, on_step = _progress(run.total_steps, desc, args.no_progress)
    run.on_step = on_step
    try:
        run.run()
    finally:
        bar.close()
    return run


def _finish(run_status: str, message: str) -> int:
    if run_status != "finished":
        print(f"{run_status}: {message}", file=sys.stderr)
    return EXIT.get(run_status, 1)


def cmd_train(args) -> int:
    cfg = _run_config(args, args.optimizer, args.lr, args.damping)
    args.out.mkdir(parents=True, exist_ok=True)
    run = _single_run(args, cfg, cfg.optimizer.name)
    run.dataframe().to_csv(args.out / "metrics.csv", index=False)
    _write_json(
        args.out / "config.json",
        {
            "command": "train",
            "config": cfg.to_dict(),
            "device": str(run.device),
            "total_steps": run.total_steps,
            "status": run.status,
            "message": run.message,
            **_environment(),
        },
    )
    print(f"{run.status}: wrote {args.out / 'metrics.csv'} and {args.out / 'config.json'}")
    return _finish(run.status, run.message)


def cmd_compare(args) -> int:
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    if not names:
        raise ValueError("--optimizers needs at least one name")
    lrs, dampings = _parse_lrs(args.lrs), _parse_lrs(args.dampings)
    configs = []
    for name in names:
        key = canonical_name(name)
        lr = lrs.get(key, lrs.get("*"))
        damping = dampings.get(key, dampings.get("*", args.damping))
        configs.append(_run_config(args, name, lr, damping))
    args.out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=1000, desc="compare", disable=args.no_progress, file=sys.stderr)

    def progress(frac: float, message: str) -> None:
        bar.n = int(1000 * frac)
        bar.set_description(message, refresh=False)
        bar.refresh()

    try:
        df = run_comparison(configs, progress_callback=progress)
    finally:
        bar.close()
    df.to_csv(args.out / "metrics.csv", index=False)
    runs = df.attrs.get("runs", [])
    comparison_report(
        df,
        args.out / "report.html",
        title=f"{args.dataset}: {', '.join(names)} (seed {args.seed})",
        notes=[f"{r['label']}: {r['status']} — {r['message']}" for r in runs],
    )
    _write_json(
        args.out / "config.json",
        {
            "command": "compare",
            "configs": [c.to_dict() for c in configs],
            "runs": runs,
            **_environment(),
        },
    )
    print(f"wrote {args.out / 'metrics.csv'}, {args.out / 'report.html'}")
    statuses = [r["status"] for r in runs]
    if "failed" in statuses:
        return 1
    return 3 if "diverged" in statuses else 0


def _resolve_layer(args, cfg: RunConfig) -> tuple[int, str]:
    """``(number, name)`` of the layer given as a name or a number counted from 1."""
    ds_spec = DATASET_SPECS[cfg.dataset]
    arch = cfg.widths if cfg.widths is not None else cfg.model_preset
    model = build_model(arch, input_dim=ds_spec.input_dim, loss=ds_spec.loss, seed=cfg.seed)
    infos = describe_layers(model)
    for info in infos:
        if args.layer in (info.name, str(info.number)):
            return info.number, info.name
    listed = ", ".join(f"{i.number} {i.name}" for i in infos)
    raise ValueError(
        f"unknown layer {args.layer!r}; give a number 1-{len(infos)} or a name: {listed}"
    )


def cmd_quality(args) -> int:
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    base = _run_config(args, args.optimizer, args.lr, args.damping)
    number, layer = _resolve_layer(args, base)
    cfg = _run_config(
        args, args.optimizer, args.lr, args.damping,
        quality_layer=layer, quality_methods=methods, quality_every=args.quality_every,
    )  # fmt: skip
    opt = cfg.optimizer
    args.out.mkdir(parents=True, exist_ok=True)
    run = _single_run(args, cfg, f"{opt.name} + quality on layer {number}")
    df = run.dataframe()
    df.to_csv(args.out / "metrics.csv", index=False)
    errors = [c for c in df.columns if c.startswith(("rel_error_", "spectrum_error_"))]
    table = df.dropna(subset=errors, how="all")[["step", "epoch", "train_loss", *errors]]
    table.to_csv(args.out / "quality.csv", index=False)
    quality_report(
        df,
        args.out / "report.html",
        title=f"Approximation quality on layer {number}, {layer} ({args.dataset}, {opt.name})",
        notes=[
            f"Layer {number} ({layer}; layers are numbered from 1 in forward order); "
            f"Fisher minibatch of {opt.fisher_batch or 256} samples "
            f"({opt.fisher} Fisher); status: {run.status} — {run.message}"
        ],
    )
    _write_json(
        args.out / "config.json",
        {
            "command": "quality",
            "config": cfg.to_dict(),
            "layer": layer,
            "layer_number": number,
            "status": run.status,
            "message": run.message,
            **_environment(),
        },
    )
    print(f"{run.status}: wrote {args.out / 'quality.csv'} and {args.out / 'report.html'}")
    return _finish(run.status, run.message)


def _parse_names(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    return tuple(canonical_name(n) for n in text.split(",") if n.strip())


def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(
            f"argument --seeds: cannot read {text!r}; write integers ≥ 0 separated by commas, "
            "e.g. 1,2,3"
        ) from None
    if not seeds:
        raise ValueError("argument --seeds: give at least one seed, e.g. 1,2,3")
    return seeds


def _shown_command(argv: list[str]) -> str:
    """The command line with the paths of --out and --data-path cut to their last part (a
    results folder may be shown to web visitors, who learn no server path from it)."""
    shown, paths = [], ("--out", "--data-path")
    for i, word in enumerate(argv):
        if i > 0 and argv[i - 1] in paths:
            word = Path(word).name
        elif word.startswith(tuple(f"{p}=" for p in paths)):
            key, value = word.split("=", 1)
            word = f"{key}={Path(value).name}"
        shown.append(shlex.quote(word))
    return "python -m core " + " ".join(shown)


def _time_budget(text: str) -> float | str:
    """``--time-budget-s``: a number of seconds, ``auto`` or ``off``."""
    word = text.strip().lower()
    if word in TIME_BUDGETS:
        return word
    try:
        return float(word)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds, {' or '.join(TIME_BUDGETS)}; got {text!r}"
        ) from None


def cmd_study(args) -> int:
    """A study of :data:`core.paper.studies.STUDIES` (``reproduce --experiment NAME``)."""
    options = StudyOptions(
        name=args.experiment,
        dataset=args.dataset,
        preset=args.preset,
        seeds=_parse_seeds(args.seeds),
        epochs=args.epochs,
        n_train=args.n_train,
        n_test=args.n_test,
        max_steps=args.max_steps,
        layers=tuple(n.strip() for n in (args.layers or "").split(",") if n.strip()),
        optimizers=_parse_names(args.optimizers),
        lrs=_parse_lrs(args.lrs),
        dampings=_parse_lrs(args.dampings),
        data_path=args.data_path,
        device=args.device,
        quick=args.quick,
    )

    def log(text: str) -> None:
        if not args.no_progress:
            print(text, file=sys.stderr, flush=True)

    result = run_study(options, log=log)
    report = write_study(args.out, options, result, "python -m core " + shlex.join(args.argv))
    for row in result.verdicts.itertuples():
        print(f"{row.verdict}: {row.claim} ({row.criterion}) — {row.detail}")
    print(f"wrote {report} and the study's CSV files")
    return 0


def cmd_reproduce(args) -> int:
    if args.experiment in STUDIES:
        return cmd_study(args)
    if args.preset is not None or args.quick:
        raise ValueError("--preset and --quick apply to the studies, not the paper's experiments")
    lrs, dampings = _parse_lrs(args.lrs), _parse_lrs(args.dampings)
    spec = ReproduceSpec(
        experiment=args.experiment,
        dataset=args.dataset,
        epochs=PAPER_DEFAULTS["epochs"] if args.epochs is None else args.epochs,
        seeds=_parse_seeds(args.seeds),
        optimizers=_parse_names(args.optimizers),
        data_path=args.data_path,
        n_train=args.n_train,
        n_test=args.n_test,
        max_steps=args.max_steps,
        time_budget_s=args.time_budget_s,
        metric_budget_s=args.metric_budget_s,
        layers=tuple(n.strip() for n in (args.layers or "").split(",") if n.strip()),
        quality_every=args.quality_every,
        eval_every=args.eval_every,
        device=args.device,
        lrs=lrs,
        dampings=dampings,
    )
    dataset = load_dataset(
        args.dataset, path=args.data_path, seed=0, n_train=args.n_train, n_test=args.n_test
    )
    bars: list[tqdm] = []

    def progress(desc: str, total: int):
        if bars:
            bars[-1].close()
        bars.append(
            tqdm(total=total, desc=desc, unit="step", disable=args.no_progress, file=sys.stderr)
        )
        return lambda record: bars[-1].update(1)

    def log(text: str) -> None:
        if not args.no_progress:
            tqdm.write(text, file=sys.stderr)

    try:
        settings, results = run_reproduction(spec, dataset, progress=progress, log=log)
    finally:
        if bars:
            bars[-1].close()
    settings["command"] = _shown_command(args.argv)
    # exactly what was given (paths included), so that the run reruns as written; the served
    # files show only `command` and the data files by name, size and SHA-256
    rerun = {
        "command": "python -m core " + shlex.join(args.argv),
        "data_path": args.data_path_given,
        "data_files": settings["data_files"],
    }
    table = write_reproduction(args.out, settings, results, rerun)
    for row in table.itertuples():
        print(f"{row.verdict}: {row.claim} ({row.criterion}) — {row.detail}")
    print(f"wrote {args.out / 'settings.json'}, results.csv, verdicts.csv and report.html")
    statuses = [r["status"] for r in settings["runs"]]
    if "failed" in statuses:
        failed = next(r for r in settings["runs"] if r["status"] == "failed")
        print(
            f"failed: {failed['optimizer']} seed {failed['seed']}: {failed['message']}",
            file=sys.stderr,
        )
        return 1
    return 3 if "diverged" in statuses else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="Train the seed paper's autoencoders with natural-gradient optimizers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with one optimizer")
    p.add_argument("--optimizer", required=True, help=f"one of: {', '.join(OPTIMIZERS)}")
    p.add_argument("--lr", type=float, help="learning rate (default: per optimizer)")
    _common(p)
    p.set_defaults(func=cmd_train, parser=p)

    p = sub.add_parser("compare", help="compare optimizers from the same initialisation")
    p.add_argument("--optimizers", required=True, help="comma-separated, e.g. adam,kfac,kpsvd")
    p.add_argument("--lrs", help="learning rates: 'kfac=0.1,adam=1e-3' or one number for all")
    p.add_argument("--dampings", help="dampings: 'kfac=1e-3,ekfac=1e-2' or one number for all")
    _common(p)
    p.set_defaults(func=cmd_compare, parser=p)

    p = sub.add_parser("quality", help="approximation errors on one layer over training")
    p.add_argument(
        "--layer",
        required=True,
        help="linear layer: its number counted from 1 (1 = encoder.linear1) or its name",
    )
    p.add_argument("--optimizer", default="kfac", help="optimizer that trains the model")
    p.add_argument("--lr", type=float, help="learning rate (default: per optimizer)")
    p.add_argument("--methods", default=",".join(METHODS), help="engine methods to evaluate")
    p.add_argument("--quality-every", type=int, default=10, help="errors every k steps")
    _common(p)
    p.set_defaults(func=cmd_quality, parser=p)

    p = sub.add_parser(
        "reproduce",
        help="one of the seed paper's experiments, with its settings, verdicts and a report",
        description="The seed paper's network for the dataset and the authors' public settings "
        "(batch 128, Fisher batch 32, T_cov = T_inv = 100, EMA 0.95, KL-clip 1e-2, momentum 0.9, "
        "weight decay 1e-3, Xavier-uniform initialisation). Writes "
        "settings.json, results.csv, verdicts.csv and a self-contained report.html into --out.",
    )
    p.add_argument(
        "--experiment",
        required=True,
        choices=EXPERIMENTS + tuple(STUDIES),
        help="the paper's quality or training, or a study: "
        + "; ".join(f"{name}: {what}" for name, (_, what) in STUDIES.items()),
    )
    p.add_argument(
        "--dataset",
        required=True,
        help=f"the paper's experiments: {', '.join(REPRO_DATASETS)}; studies: any dataset",
    )
    p.add_argument("--preset", help="studies: the model preset (default: the study's choice)")
    p.add_argument("--quick", action="store_true", help="studies: a small version (smoke runs)")
    p.add_argument(
        "--epochs", type=float, help="epochs per run (default 100; studies: their own default)"
    )
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    p.add_argument(
        "--optimizers",
        help="training: those compared (default sgd,adam,kfac,kpsvd,deflation,kfac_corrected); "
        "quality: the one that trains (default kfac)",
    )
    p.add_argument("--lrs", help="learning rates: 'kfac=0.1,adam=1e-3' or one number for all")
    p.add_argument("--dampings", help="dampings: 'kfac=1e-3,kpsvd=1e-2' or one number for all")
    p.add_argument(
        "--layers",
        help="quality: layers to track, numbers from 1 or names "
        "(default: curves 5, mnist 4, faces 4)",
    )
    p.add_argument("--quality-every", type=int, help="quality: errors every k steps")
    p.add_argument("--eval-every", type=int, help="test loss every k steps (default: each epoch)")
    p.add_argument(
        "--n-train", type=int, help="train on N images only (quick checks; recorded as a deviation)"
    )
    p.add_argument("--n-test", type=int, help="test on N images only (quick checks)")
    p.add_argument("--max-steps", type=int, help="cap each run at N steps (checks)")
    p.add_argument(
        "--time-budget-s",
        type=_time_budget,
        help="training: every optimizer trains its epochs and then on to this wall time (s), "
        "and the wall-time verdict compares them at it; 'auto' (default): the longest time "
        "an optimizer needs for the epochs on the first seed; 'off': runs stop at their "
        "epochs and the wall-time verdict uses the shortest run's time",
    )
    p.add_argument(
        "--metric-budget-s",
        type=float,
        default=60.0,
        help="quality: skip, with a notice, a measure (one method on one layer) estimated "
        "to take longer than this many seconds (default 60)",
    )
    p.add_argument(
        "--data-path",
        help="mnist: folder of IDX files or .npz; faces: newfaces_rot_single.mat or .npz; "
        "curves: the original digs3pts_1.mat instead of the generated CURVES-like set",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help=f"download the original files of {', '.join(SOURCES)} into the cache first",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.set_defaults(func=cmd_reproduce, parser=p)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _check_out(parser: argparse.ArgumentParser, out: Path) -> None:
    """``--out`` exists (created here) and accepts files, before any work is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        parser.error(
            f"argument --out: cannot create or write the directory {out} "
            f"({exc.strerror or _one_line(exc)}); choose a writable place"
        )


def _prepare_data(parser: argparse.ArgumentParser, args) -> None:
    """Check ``--dataset``/``--data-path``/``--download`` and settle ``args.data_path``:
    an explicit path, the files ``--download`` fetched, or MNIST/FACES downloaded earlier."""
    spec = DATASET_SPECS.get(args.dataset)
    if spec is None:
        parser.error(
            f"argument --dataset: unknown dataset {args.dataset!r}; "
            f"valid names: {', '.join(DATASET_SPECS)}"
        )
    if args.data_path is not None:
        if args.download:
            parser.error("give either --data-path or --download, not both")
        if not spec.accepts_path:
            parser.error(f"--dataset {args.dataset} is built in and reads no --data-path")
        if not Path(args.data_path).expanduser().exists():
            parser.error(f"argument --data-path: {args.data_path} not found")
    elif args.download and args.dataset not in SOURCES:
        parser.error(
            f"--dataset {args.dataset} is built in: nothing to --download "
            f"(downloadable: {', '.join(SOURCES)})"
        )
    _check_out(parser, args.out)  # before a download or a run spends time
    if args.data_path is not None:
        return
    if args.download:
        args.data_path = str(_download(args))
        return
    if spec.needs_path:
        cached = cached_dataset(args.dataset)
        if cached is not None:
            args.data_path = str(cached)
            return
        parser.error(
            f"--dataset {args.dataset} needs its files: pass --data-path, or --download to "
            f"fetch the originals once. {file_help(args.dataset)}"
        )


def _download(args) -> Path:
    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int | None) -> None:
        if name not in bars:
            bars[name] = tqdm(
                total=total, desc=name, unit="B", unit_scale=True, disable=args.no_progress
            )
        bars[name].update(done - bars[name].n)

    try:
        return download_dataset(args.dataset, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.data_path_given = getattr(args, "data_path", None)  # before a cache or download
    if args.threads:
        torch.set_num_threads(args.threads)
    sub = args.parser  # its errors name the subcommand
    prog = sub.prog
    try:
        _prepare_data(sub, args)
        return args.func(args)
    except DownloadError as err:  # the network or the source, not the arguments
        sub.exit(1, f"{prog}: error: {_one_line(err)}\n")
    except ValueError as err:  # bad arguments, and data files that cannot be used
        sub.exit(2, f"{prog}: error: {_one_line(err)}\n")
    except OSError as err:  # e.g. the disk filled up while writing results
        sub.exit(1, f"{prog}: error: {_one_line(err)}\n")
    return 1  # unreachable


if __name__ == "__main__":
    sys.exit(main())
