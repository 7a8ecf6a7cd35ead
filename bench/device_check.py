"""Device check of the engine on CUDA (issue 10), short enough for one GPU session (< 5 min).

    .venv/bin/python bench/device_check.py --out DIR [--repeats 3] [--threads N]

1. The device and the engine's precision policy for it (:mod:`core.engine.precision`).
2. The CUDA tests (``pytest -k "test_cuda or to_cuda or on_cuda"`` on
   tests/engine/test_precision.py and tests/engine/test_engine_interface.py: the whole
   optimizer step on CUDA against the CPU float64 step, every registry block built and solved
   on CUDA against the CPU).
3. One training step per optimizer on the paper's CURVES network (model preset ``curves``,
   784-400-200-100-50-25-6 mirrored, batch 128, Fisher batch 32 as in the authors' code, the
   preset's default lr and damping), on the CPU and on CUDA side by side: the step that
   refreshes the curvature and the inverses (T_cov/T_inv steps fall on it) and a plain step
   (the per-step solves only; median of ``--repeats``), and their CPU/CUDA ratios.
4. Numerics: the parameter update of that refresh step on CUDA against the CPU float64 one,
   from the same weights and batch (relative difference, every optimizer), with the device's
   policy and with the float32 per-step route forced (``cuda/float32``; the only way to see
   that route on a fast-float64 part).

Writes DIR/device_check.md (the tables) and prints it. Without CUDA it says so and runs the CPU
parts only (policy, the timing column of the CPU): about 15 s on a shared 2-core machine with
``--threads 1`` (more threads than free cores slow torch down 20–100× there).
The check sets ``KRONOSCOPE_ENGINE_DTYPE`` itself for each run (unset: the device's policy).
The paper's full-scale runs on a GPU are bench/reproduce_gpu.sh.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.engine.precision import ENV_VAR, engine_precision  # noqa: E402
from core.training.curves import load_curves  # noqa: E402
from core.training.models import build_model, per_sample_nll  # noqa: E402
from core.training.optim import (  # noqa: E402
    OPTIMIZERS,
    OptimizerConfig,
    build_optimizer,
    default_damping,
    default_lr,
)

BATCH, FISHER_BATCH, PRESET = 128, 32, "curves"
CUDA_TESTS = ["tests/engine/test_precision.py", "tests/engine/test_engine_interface.py"]
CUDA_TESTS_K = "test_cuda or to_cuda or on_cuda"  # the tests that skip without CUDA


def device_lines(has_cuda: bool) -> list[str]:
    lines = [
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"{torch.get_num_threads()} CPU threads",
        f"- CPU engine policy: {engine_precision('cpu').reason}",
    ]
    if not has_cuda:
        return [*lines, "- CUDA: not available here — CPU parts only"]
    props = torch.cuda.get_device_properties(0)
    policy = engine_precision("cuda:0")
    return [
        *lines,
        f"- CUDA device: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
        f"{props.major}.{props.minor}, CUDA {torch.version.cuda}",
        f"- CUDA engine policy: engine on {policy.device}, per-step solves in "
        f"{policy.solve_dtype} ({policy.reason})",
    ]


def run_cuda_tests() -> str:
    """``pytest -q -k …`` on the CUDA tests; its summary line (skips on a CPU-only host)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", CUDA_TESTS_K]
    done = subprocess.run(
        [*cmd, *CUDA_TESTS], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    tail = [line for line in done.stdout.strip().splitlines() if line.strip()]
    return f"exit {done.returncode}: {tail[-1] if tail else done.stderr.strip()[-300:]}"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(name: str, device: str, x: torch.Tensor, state: dict, repeats: int) -> dict:
    """Seconds of the refresh step and of a plain step (median), and the refresh step's update.
    ``device`` ``"cuda/float32"``: CUDA with the float32 per-step route forced."""
    device, _, forced = device.partition("/")
    os.environ.pop(ENV_VAR, None)
    if forced:
        os.environ[ENV_VAR] = forced
    model = build_model(PRESET, input_dim=x.shape[1], loss="bce", seed=0)
    model.load_state_dict(state)
    model.to(device)
    x = x.to(device)
    cfg = OptimizerConfig(
        name,
        lr=default_lr(name, PRESET),
        damping=default_damping(name, PRESET),
        t_cov=100,
        t_inv=100,
        fisher_batch=FISHER_BATCH,
    )
    opt = build_optimizer(model, cfg, loss="bce", seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    seconds = []
    for k in range(repeats + 1):
        xb = x[(k * BATCH) % (x.shape[0] - BATCH) :][:BATCH]
        _sync(device)
        start = time.perf_counter()
        opt.zero_grad()
        per_sample_nll(model(xb), xb, "bce").mean().backward()
        opt.step(xb, xb)
        _sync(device)
        seconds.append(time.perf_counter() - start)
        if k == 0:
            update = [
                (p.detach() - b).cpu() for p, b in zip(model.parameters(), before, strict=True)
            ]
    os.environ.pop(ENV_VAR, None)
    return {"refresh": seconds[0], "plain": statistics.median(seconds[1:]), "update": update}


def relative_difference(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    num = sum(float(((g.double() - w.double()) ** 2).sum()) for g, w in zip(got, want, strict=True))
    den = sum(float((w.double() ** 2).sum()) for w in want)
    return (num / den) ** 0.5 if den > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for device_check.md")
    parser.add_argument("--repeats", type=int, default=3, help="plain steps timed per optimizer")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    has_cuda = torch.cuda.is_available()
    started = time.perf_counter()
    report = ["# Device check (issue 10)", "", *device_lines(has_cuda), ""]
    print("\n".join(report), flush=True)

    tests = run_cuda_tests()
    report += [f"CUDA tests (`pytest -k '{CUDA_TESTS_K}' {' '.join(CUDA_TESTS)}`): {tests}", ""]
    print(report[-2], flush=True)

    if has_cuda:  # CUDA context, cuBLAS and cuSOLVER handles: not part of any step's time
        eye = torch.eye(8, dtype=torch.float64, device="cuda")
        torch.linalg.eigh(eye @ eye)
        torch.linalg.cholesky(eye.float())
        torch.cuda.synchronize()
    x = load_curves(n_train=1024, n_test=16, use_cache=False).x_train
    state = build_model(PRESET, input_dim=x.shape[1], loss="bce", seed=0).state_dict()
    devices = ["cpu", "cuda", "cuda/float32"] if has_cuda else ["cpu"]
    head = "| optimizer | " + " | ".join(f"{d} refresh s | {d} plain s" for d in devices)
    head += (
        " | refresh cpu/cuda | plain cpu/cuda | update rel. diff cuda vs cpu | same, cuda/float32 |"
        if has_cuda
        else " |"
    )
    report += [
        f"One training step, preset {PRESET}, batch {BATCH}, Fisher batch {FISHER_BATCH} "
        f"(refresh: capture + approximations + inverses + solve; plain: median of {args.repeats})",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    print("\n".join(report[-4:]), flush=True)
    for name in OPTIMIZERS:
        runs = {d: time_steps(name, d, x, state, args.repeats) for d in devices}
        cells = [f"{runs[d][k]:.4f}" for d in devices for k in ("refresh", "plain")]
        if has_cuda:
            cpu, gpu = runs["cpu"], runs["cuda"]
            cells += [
                f"{cpu['refresh'] / gpu['refresh']:.1f}×",
                f"{cpu['plain'] / gpu['plain']:.1f}×",
                f"{relative_difference(gpu['update'], cpu['update']):.1e}",
                f"{relative_difference(runs['cuda/float32']['update'], cpu['update']):.1e}",
            ]
        report.append(f"| {name} | " + " | ".join(cells) + " |")
        print(report[-1], flush=True)
    report += ["", f"Total {time.perf_counter() - started:.0f} s."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_check.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    print(report[-1], f"Written: {args.out / 'device_check.md'}", sep="\n")
    return 0 if tests.startswith("exit 0") else 1


if __name__ == "__main__":
    sys.exit(main())
