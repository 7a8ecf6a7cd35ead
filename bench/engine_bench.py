"""Cost of each approximation relative to KFAC's factors, with accuracy against float64.

For each layer shape (da, dg) and batch size m, the methods run interleaved, round after round,
on the same float32 batch with 2 threads; the table reports the median time of each divided by
the median time of KFAC measured in the same rounds. Accuracy: the float32 result against the
float64 result of the same method (itself checked against dense oracles in tests), as
‖F̃₃₂ − F̃₆₄‖_F / ‖F̃₆₄‖_F computed from the Kronecker terms without forming either.

Usage: python bench/engine_bench.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/engine_bench.py`

from core.engine.fisher import eigvals  # noqa: E402
from core.engine.methods import approximate  # noqa: E402

METHODS = ("kfac", "kpsvd", "deflation", "lanczos", "kfac_corrected", "ekfac", "shampoo")
SHAPES = ((51, 25), (251, 100), (501, 250), (1001, 500))
BATCHES = (256, 1024)


def layer_batch(m: int, da: int, dg: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Autoencoder-like statistics: correlated nonnegative inputs with a bias column, and
    output gradients with decaying scales (unit-free: only ratios are reported)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(da, da, generator=gen) / da**0.5
    a = torch.relu(torch.randn(m, da, generator=gen) @ mix + 0.1)
    a[:, -1] = 1.0
    scales = torch.logspace(0, -2, dg)
    g = torch.randn(m, dg, generator=gen) @ (torch.randn(dg, dg, generator=gen) / dg**0.5)
    return a, g * scales


def term_difference(x, y) -> float:
    """‖X − Y‖_F / ‖Y‖_F for two approximations, from their terms (or dense for EKFAC)."""
    if not hasattr(x, "terms"):  # EKFAC: (U_A ⊗ U_G) diag(s) (…)ᵀ, bases may differ in clusters
        sx, sy = x.scale.double(), y.scale.double()
        mix_a = (x.u_a.double().T @ y.u_a.double()) ** 2
        mix_g = (x.u_g.double().T @ y.u_g.double()) ** 2
        inner = float((sx * (mix_g @ sy @ mix_a.T)).sum())
        sq = float((sx**2).sum() + (sy**2).sum()) - 2.0 * inner
        return max(sq, 0.0) ** 0.5 / float(torch.linalg.norm(sy))
    xs = [(r.double(), s.double()) for r, s in x.terms]
    ys = [(r.double(), s.double()) for r, s in y.terms]
    both = xs + [(-r, s) for r, s in ys]
    rs = torch.stack([r.reshape(-1) for r, _ in both])
    ss = torch.stack([s.reshape(-1) for _, s in both])
    sq = float(((rs @ rs.T) * (ss @ ss.T)).sum())
    ry = torch.stack([r.reshape(-1) for r, _ in ys])
    sy = torch.stack([s.reshape(-1) for _, s in ys])
    ref = float(((ry @ ry.T) * (sy @ sy.T)).sum())
    return max(sq, 0.0) ** 0.5 / ref**0.5


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_layer(m: int, da: int, dg: int, rounds: int, paper: bool) -> list[dict]:
    a, g = layer_batch(m, da, dg)
    runs = {meth: (lambda meth=meth: approximate(meth, a, g)) for meth in METHODS}
    if paper:
        for meth in ("deflation", "lanczos", "kfac_corrected"):
            runs[f"{meth} (paper, matrix-free)"] = lambda meth=meth: approximate(
                meth, a, g, solver="matrix_free"
            )
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(time_once(fn))
    kfac = statistics.median(times["kfac"])
    a64, g64 = a.double(), g.double()
    rows = []
    for name, fn in runs.items():
        meth = name.split(" ")[0]
        approx32 = fn()
        kwargs = {"solver": "matrix_free"} if "paper" in name else {}
        approx64 = approximate(meth, a64, g64, **kwargs)
        sig = approx64.info.get("singular_values", [])
        rows.append(
            {
                "m": m,
                "shape": f"({da}, {dg})",
                "method": name,
                "ms": 1e3 * statistics.median(times[name]),
                "ratio": statistics.median(times[name]) / kfac,
                "accuracy": term_difference(approx32, approx64),
                "iterations": approx32.info.get("iterations", ""),
                "sigma_ratio": f"{sig[1] / sig[0]:.3f}" if len(sig) > 1 else "",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(2)
    shapes = SHAPES[:2] if args.quick else SHAPES
    print(
        f"# Engine benchmark — {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32\n"
    )
    print("| m | layer (da, dg) | method | time (ms) | × KFAC | rel. diff. vs float64 | iters |")
    print("|---|---|---|---|---|---|---|")
    for m in BATCHES:
        for da, dg in shapes:
            paper = da <= 251
            for row in bench_layer(m, da, dg, args.rounds, paper):
                print(
                    f"| {row['m']} | {row['shape']} | {row['method']} | {row['ms']:.1f} | "
                    f"{row['ratio']:.2f} | {row['accuracy']:.1e} | {row['iterations']} |",
                    flush=True,
                )
    a, g = layer_batch(1024, 1001, 500)
    eigvals(a, g)
    seconds = statistics.median(time_once(lambda: eigvals(a, g)) for _ in range(3))
    print(f"\n`eigvals` of the (1001, 500) block at m = 1024: {seconds:.2f} s (median of 3)")


if __name__ == "__main__":
    main()
