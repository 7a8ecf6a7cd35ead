"""Command line: ``python -m core {train,compare,quality} ...`` (each with ``--help``).

* ``train``   — one optimizer; writes DIR/metrics.csv and DIR/config.json.
* ``compare`` — several optimizers from the same data and initialisation; DIR/metrics.csv,
  DIR/config.json and a self-contained DIR/report.html (loss against step and wall time).
* ``quality`` — approximation errors of every engine method on one layer over training;
  DIR/quality.csv, DIR/metrics.csv, DIR/config.json and DIR/report.html.

Exit status: 0 finished (or stopped), 3 diverged (files still written), 1 failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .approx import METHODS
from .data import DATASET_SPECS, load_dataset
from .models import PRESETS, build_model, linear_layers, parse_widths
from .optim import EMA_MODES, OPTIMIZERS, OptimizerConfig, default_damping, default_lr
from .report import comparison_report, quality_report
from .runner import RunConfig, TrainingRun, run_comparison

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
    p.add_argument("--data-path", help="file/directory for mnist and faces (never downloaded)")
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
            out[key.strip().lower().replace("-", "_")] = float(value)
        else:
            out["*"] = float(part)
    return out


def _optimizer(args, name: str, lr: float | None, damping: float | None) -> OptimizerConfig:
    name = name.strip().lower().replace("-", "_")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return OptimizerConfig(
        name,
        lr=default_lr(name) if lr is None else lr,
        damping=default_damping(name) if damping is None else damping,
        t_cov=args.t_cov,
        t_inv=args.t_inv,
        ema=args.ema,
        ema_mode=args.ema_mode,
        kl_clip=args.kl_clip,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        fisher_batch=args.fisher_batch,
        fisher=args.fisher,
    )


def _run_config(args, opt: OptimizerConfig, **extra) -> RunConfig:
    return RunConfig(
        dataset=args.dataset,
        optimizer=opt,
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
    from tqdm import tqdm

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
    opt = _optimizer(args, args.optimizer, args.lr, args.damping)
    cfg = _run_config(args, opt)
    args.out.mkdir(parents=True, exist_ok=True)
    run = _single_run(args, cfg, opt.name)
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
        key = name.lower().replace("-", "_")
        lr = lrs.get(key, lrs.get("*"))
        damping = dampings.get(key, dampings.get("*", args.damping))
        configs.append(_run_config(args, _optimizer(args, name, lr, damping)))
    args.out.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

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


def _resolve_layer(args, cfg: RunConfig) -> str:
    """A layer name, or a 0-based index into the linear layers."""
    ds_spec = DATASET_SPECS[cfg.dataset]
    arch = cfg.widths if cfg.widths is not None else cfg.model_preset
    model = build_model(arch, input_dim=ds_spec.input_dim, loss=ds_spec.loss, seed=cfg.seed)
    names = [n for n, _ in linear_layers(model)]
    if args.layer in names:
        return args.layer
    if args.layer.lstrip("-").isdigit() and -len(names) <= int(args.layer) < len(names):
        return names[int(args.layer)]
    raise ValueError(f"unknown layer {args.layer!r}; linear layers (or their index): {names}")


def cmd_quality(args) -> int:
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    opt = _optimizer(args, args.optimizer, args.lr, args.damping)
    base = _run_config(args, opt)
    layer = _resolve_layer(args, base)
    cfg = _run_config(
        args, opt, quality_layer=layer, quality_methods=methods, quality_every=args.quality_every
    )
    args.out.mkdir(parents=True, exist_ok=True)
    run = _single_run(args, cfg, f"{opt.name} + quality on {layer}")
    df = run.dataframe()
    df.to_csv(args.out / "metrics.csv", index=False)
    errors = [c for c in df.columns if c.startswith(("rel_error_", "spectrum_error_"))]
    table = df.dropna(subset=errors, how="all")[["step", "epoch", "train_loss", *errors]]
    table.to_csv(args.out / "quality.csv", index=False)
    quality_report(
        df,
        args.out / "report.html",
        title=f"Approximation quality on {layer} ({args.dataset}, {opt.name})",
        notes=[
            f"Layer {layer}; Fisher minibatch of {opt.fisher_batch or 256} samples "
            f"({opt.fisher} Fisher); status: {run.status} — {run.message}"
        ],
    )
    _write_json(
        args.out / "config.json",
        {
            "command": "quality",
            "config": cfg.to_dict(),
            "layer": layer,
            "status": run.status,
            "message": run.message,
            **_environment(),
        },
    )
    print(f"{run.status}: wrote {args.out / 'quality.csv'} and {args.out / 'report.html'}")
    return _finish(run.status, run.message)


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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="compare optimizers from the same initialisation")
    p.add_argument("--optimizers", required=True, help="comma-separated, e.g. adam,kfac,kpsvd")
    p.add_argument("--lrs", help="learning rates: 'kfac=0.1,adam=1e-3' or one number for all")
    p.add_argument("--dampings", help="dampings: 'kfac=1e-3,ekfac=1e-2' or one number for all")
    _common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("quality", help="approximation errors on one layer over training")
    p.add_argument("--layer", required=True, help="linear layer name or 0-based index")
    p.add_argument("--optimizer", default="kfac", help="optimizer that trains the model")
    p.add_argument("--lr", type=float, help="learning rate (default: per optimizer)")
    p.add_argument("--methods", default=",".join(METHODS), help="engine methods to evaluate")
    p.add_argument("--quality-every", type=int, default=10, help="errors every k steps")
    _common(p)
    p.set_defaults(func=cmd_quality)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except ValueError as err:
        parser.exit(2, f"{parser.prog} {args.command}: error: {err}\n")
    return 1  # unreachable


if __name__ == "__main__":
    sys.exit(main())
