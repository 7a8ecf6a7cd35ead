"""Time of the downstream jobs (issue 19) per method on the paper's largest layer shape.

For each registry method: building the approximation, forming its damped curvature M
(core/engine/weight_metric.py), compressing W to rank k (core/engine/compress.py) and pruning a
fraction of it with OBS (core/engine/prune.py), with each time's ratio to KFAC's beside it.
Each time is the best of two runs, after an untimed warm-up.
The layer batch is random (a (m, 1001) ReLU-like input with a bias column, a (m, 500) gradient
with decaying scales, W of Xavier scale) or captured from an untrained paper preset
(``--preset mnist --layer encoder.linear2``). Methods without a short Kronecker form are formed
densely only up to DENSE_LIMIT weights and are reported as skipped above it.

    python bench/downstream_bench.py --quick       # k = 50, sparsity 0.5 unstructured
    python bench/downstream_bench.py               # k ∈ {10, 50, 200}, sparsity 0.5 × 3 structures
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.engine.capture import capture  # noqa: E402
from core.engine.compress import low_rank, truncated_svd  # noqa: E402
from core.engine.methods import SHOWN, approximate  # noqa: E402
from core.engine.prune import magnitude_prune, prune_with_metric  # noqa: E402
from core.engine.weight_metric import weight_metric  # noqa: E402
from core.training.models import build_model  # noqa: E402


def random_layer(m: int, da: int, dg: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.relu(torch.randn(m, da, generator=gen, dtype=torch.float64))
    a[:, -1] = 1.0
    scales = torch.logspace(0, -2, dg, dtype=torch.float64)
    g = torch.randn(m, dg, generator=gen, dtype=torch.float64) * scales * 1e-2
    w = torch.randn(dg, da, generator=gen, dtype=torch.float64) * (2.0 / (da + dg)) ** 0.5
    return a, g, w


def preset_layer(preset: str, layer: str, m: int, seed: int) -> tuple[torch.Tensor, ...]:
    widths = {"mnist": 784, "curves": 784, "faces": 625}
    loss = "mse" if preset == "faces" else "bce"
    model = build_model(preset, input_dim=widths[preset], loss=loss, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(m, widths[preset], generator=gen)
    cap = capture(model, x, loss=loss, generator=gen, layers=[layer]).layers[layer]
    mod = model.get_submodule(layer)
    w = torch.cat([mod.weight.detach(), mod.bias.detach()[:, None]], 1).double()
    return cap.a.double(), cap.g.double(), w


REPEAT = 2  # each time is the best of REPEAT runs (a shared machine's noise only adds time)


def timed(fn):  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(REPEAT):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--m", type=int, default=512)
    parser.add_argument("--preset", choices=["mnist", "curves", "faces"])
    parser.add_argument("--layer", default="encoder.linear2")
    parser.add_argument("--damping", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ranks = [50] if args.quick else [10, 50, 200]
    structures = ["unstructured"] if args.quick else ["unstructured", "rows", "columns"]
    if args.preset:
        a, g, w = preset_layer(args.preset, args.layer, args.m, args.seed)
    else:
        a, g, w = random_layer(args.m, 1001, 500, args.seed)
    dg, da = w.shape
    threads = f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"
    print(f"layer (dg, da) = ({dg}, {da}), n = {dg * da:,}, m = {args.m}, λ = {args.damping}, "
          f"threads = {threads}")  # fmt: skip
    t_svd = timed(lambda: truncated_svd(w, ranks[0]))[1]
    t_mag = timed(lambda: magnitude_prune(w, 0.5))[1]
    print(f"baselines: truncated SVD k={ranks[0]} {t_svd:.2f} s, magnitude 0.5 {t_mag:.3f} s")
    # warm-up, untimed: the first LAPACK/BLAS calls of a process pay for thread pools and pages
    warm = weight_metric(approximate("kfac", a, g), args.damping)
    low_rank(warm, w, ranks[0])
    prune_with_metric(warm, w, 0.5, structure=structures[0])
    rows: list[dict[str, object]] = []
    for method in SHOWN:
        approx, t_build = timed(lambda method=method: approximate(method, a, g))
        try:
            metric, t_metric = timed(lambda approx=approx: weight_metric(approx, args.damping))
        except ValueError as error:
            print(f"{method:15s} skipped: {str(error)[:110]}")
            continue
        row: dict[str, object] = {"method": method, "build": t_build, "metric": t_metric}
        for k in ranks:
            result, t = timed(lambda metric=metric, k=k: low_rank(metric, w, k))
            row[f"compress k={k}"] = t
            row[f"how k={k}"] = f"{result.solver}/{result.iterations}"
        for structure in structures:
            pruned, t = timed(
                lambda metric=metric, s=structure: prune_with_metric(metric, w, 0.5, structure=s)
            )
            row[f"prune {structure}"] = t
            row[f"cg {structure}"] = f"{pruned.iterations}{'' if pruned.converged else '!'}"
        rows.append(row)
        print(f"{method:15s} " + "  ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
            for k, v in row.items() if k != "method"), flush=True)  # fmt: skip
    kfac = next(r for r in rows if r["method"] == "kfac")
    print("\nratio to KFAC (time of the job incl. forming M = metric + job):")
    for r in rows:
        cells = []
        for key in r:
            if key.startswith(("compress", "prune")):
                mine = float(r[key]) + float(r["metric"])  # type: ignore[arg-type]
                base = float(kfac[key]) + float(kfac["metric"])  # type: ignore[arg-type]
                cells.append(f"{key}: {mine:.2f} s ({mine / base:.1f}×)")
        print(f"{str(r['method']):15s} " + "; ".join(cells))


if __name__ == "__main__":
    main()
