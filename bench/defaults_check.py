"""Does every optimizer's per-preset default learning rate and damping train without diverging
on the paper's networks, with the paper's settings?

    .venv/bin/python bench/defaults_check.py [--steps curves=250,mnist=110,faces=15] [--quick]

Why: ``python -m core reproduce`` (and the app) start every optimizer from
:func:`core.training.defaults.default_lr` / :func:`core.training.defaults.default_damping` of
the model preset (``preset_lr`` / ``preset_damping`` there); a default that diverges
makes a reproduction report nothing. This check runs each optimizer exactly as the reproduction does
— :func:`core.paper.runner.run_reproduction` with its settings (batch 128, Fisher batch 32,
T_cov = T_inv = 100, EMA 0.95 of the factors, KL-clip 1e-2, momentum 0.9, weight decay 1e-3,
Xavier-uniform initialisation), seed 0, CPU, one thread — for a fixed number of steps per preset.

Data: the generated CURVES for ``curves`` (the reproduction's default); MNIST and FACES are not
available offline, so ``mnist`` gets uniform random [0, 1] images (784 pixels, Bernoulli/BCE)
and ``faces`` standard Gaussian images (625 pixels, squared error), :data:`N_TRAIN` rows each.
The check is about step sizes on those networks, not a result on those datasets.

Verdict per run: ``diverged`` when the run stopped on a non-finite loss, gradient or update;
when it ended clearly above where it started (mean minibatch loss of the last :data:`TAIL` steps
above :data:`RISE` × the first step's loss: on random data the loss can hardly fall, so "not
lower" alone would flag minibatch noise); or when a minibatch loss blew up to more than
:data:`SPIKE` × the first (even if it came back). Prints a markdown table (preset × optimizer)
with the seconds per step of each run.

Sizing (measured on the 2-core machine, one thread): a natural-gradient step costs about 0.09 s
on ``curves``, 0.55 s on ``mnist`` and 2.4 s on ``faces`` (the float64 solves with the
2001 × 2001 and 1001 × 1001 factors); the default step counts keep the whole check near
15 CPU-minutes. With T_inv = 100 the runs on ``mnist`` (110 steps) see two inverse refreshes,
those on ``faces`` (15 steps) only the first one.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.paper.runner import run_reproduction  # noqa: E402
from core.paper.spec import PAPER_DEFAULTS, ReproduceSpec  # noqa: E402
from core.training.data import load_dataset  # noqa: E402
from core.training.datasets import DATASET_SPECS, Dataset  # noqa: E402
from core.training.defaults import OPTIMIZERS  # noqa: E402

PRESETS = ("curves", "mnist", "faces")
N_TRAIN, N_TEST = 4096, 256
TAIL = 10  # steps averaged for the final loss
RISE = 1.1  # ended above RISE × the first loss: diverged
SPIKE = 10.0  # a minibatch loss above SPIKE × the first: diverged (a blow-up, even if it recovered)


def check_dataset(preset: str) -> Dataset:
    """The generated CURVES for ``curves``; random data of the right shape and loss otherwise
    (uniform [0, 1] for the Bernoulli ``mnist``, standard Gaussian for the Gaussian ``faces``)."""
    if preset == "curves":
        return load_dataset("curves", seed=0)
    spec = DATASET_SPECS[preset]
    gen = torch.Generator().manual_seed(0)
    shape = (N_TRAIN + N_TEST, spec.input_dim)
    if spec.loss == "bce":
        x, label = torch.rand(shape, generator=gen), "random uniform [0, 1]"
    else:
        x, label = torch.randn(shape, generator=gen), "random standard Gaussian"
    return Dataset(
        preset, x[:N_TRAIN], x[N_TRAIN:], spec.image_shape, spec.loss, f"{label} {spec.input_dim}"
    )


def check_run(ds: Dataset, preset: str, name: str, steps: int) -> dict:
    """One run of ``name`` with its ``preset`` defaults and the reproduction's settings."""
    per_epoch = max(1, ds.n_train // PAPER_DEFAULTS["batch_size"])
    spec = ReproduceSpec(
        "training",
        preset,
        epochs=steps / per_epoch,
        seeds=(0,),
        optimizers=(name,),
        max_steps=steps,
        eval_every=10**9,  # the test loss is not part of the check: only at the last step
        device="cpu",
    )
    started = time.perf_counter()
    settings, df = run_reproduction(spec, ds)
    seconds = time.perf_counter() - started
    losses = [float(v) for v in df["train_loss"]]
    finite = [v for v in losses if math.isfinite(v)]
    status = settings["runs"][0]["status"]
    first = finite[0] if finite else math.nan
    last = statistics.mean(finite[-TAIL:]) if finite else math.nan
    spike = max(finite) / first if finite else math.nan
    diverged = status != "finished" or not (last <= RISE * first and spike <= SPIKE)
    return {
        "lr": settings["optimizers"][name]["lr"],
        "damping": settings["optimizers"][name]["damping"],
        "status": status,
        "steps": len(df),
        "first": first,
        "max_ratio": spike,
        "last": last,
        "diverged": diverged,
        "ms_per_step": 1000 * float(df["wall_time_s"].iloc[-1]) / max(1, len(df)),
        "seconds": seconds,
        "message": settings["runs"][0]["message"],
    }


def parse_steps(text: str) -> dict[str, int]:
    out = {}
    for item in text.split(","):
        preset, _, n = item.partition("=")
        if preset not in PRESETS or not n.isdigit() or int(n) < TAIL:
            raise SystemExit(f"--steps: expected preset=N (N ≥ {TAIL}) for {PRESETS}, got {item!r}")
        out[preset] = int(n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps",
        default="curves=250,mnist=110,faces=15",
        help="steps per preset (preset=N,...); presets left out are not checked",
    )
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--quick", action="store_true", help="smoke test: 12 steps on curves")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = {"curves": 12} if args.quick else parse_steps(args.steps)
    names = [n for n in args.optimizers.split(",") if n]
    load = os.getloadavg()
    print(
        f"defaults_check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread, load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}",
        flush=True,
    )
    print(
        "| preset (data) | optimizer | lr | damping | steps | first loss | max/first | "
        f"last {TAIL} mean | ms/step | diverged |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        flush=True,
    )
    started = time.perf_counter()
    for preset, n in steps.items():
        ds = check_dataset(preset)
        for name in names:
            r = check_run(ds, preset, name, n)
            verdict = "yes" if r["diverged"] else "no"
            if r["status"] != "finished":
                verdict += f" ({r['status']} at step {r['steps'] - 1})"
            elif r["max_ratio"] > SPIKE:
                verdict += f" (blew up to {r['max_ratio']:.3g}× the first loss)"
            elif r["diverged"]:
                verdict += f" (ended above {RISE}× its first loss)"
            print(
                f"| {preset} ({ds.label}) | {name} | {r['lr']:g} | {r['damping']:g} | {n} | "
                f"{r['first']:.2f} | {r['max_ratio']:.2f} | {r['last']:.2f} | "
                f"{r['ms_per_step']:.0f} | {verdict} |",
                flush=True,
            )
    load = os.getloadavg()
    print(
        f"total {time.perf_counter() - started:.0f} s; "
        f"load at the end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
