"""Spectrum error's cost on the paper's MNIST layers: Lanczos on F̃ against the projection.

For a sum of Kronecker products F̃ = Σ R_k ⊗ S_k on a layer above the dense limit, the
spectrum used to come from Lanczos (ARPACK, top 64) on the n × n operator; it now comes from
the sum compressed onto its factors' joint ranges (:mod:`core.engine.sum_spectrum`), whose
order is at most m² for the KPSVD family, so the WHOLE spectrum is one dense ``eigvalsh``.
Both routes run side by side on the same approximation (float64, autoencoder-like batch from
bench/engine_bench.py); the table gives each route's seconds, their ratio, the compressed
order, the projection's residual and the largest difference between the two routes' top 64
eigenvalues relative to the largest (the accuracy check: it must sit near round-off).

Usage: python bench/spectrum_bench.py [--m 64] [--methods deflation,kfac_corrected]
       [--shapes 251x30,31x250,501x250,785x1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import scipy.sparse.linalg as sla
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/spectrum_bench.py`

from bench.engine_bench import layer_batch  # noqa: E402
from core.engine.approx import KroneckerSum  # noqa: E402
from core.engine.inverses import kron_sum_operator  # noqa: E402
from core.engine.methods import approximate  # noqa: E402

TOP = 64


def _shape(text: str) -> tuple[int, int]:
    da, dg = text.lower().split("x")
    return int(da), int(dg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=64, help="Fisher minibatch (default 64)")
    parser.add_argument("--methods", default="deflation,kfac_corrected")
    parser.add_argument("--shapes", default="251x30,31x250,501x250,785x1000")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"# {platform.node()} · {platform.processor() or platform.machine()} · 2 threads")
    print(f"# load average at start: {os.getloadavg()}")
    print(
        "| layer (da × dg) | method | Lanczos on F̃ (s) | projection, whole spectrum (s) | "
        "ratio | compressed order | residual | top-64 difference |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for da, dg in map(_shape, args.shapes.split(",")):
        a, g = layer_batch(args.m, da, dg)
        a, g = a.double(), g.double()
        for method in args.methods.split(","):
            ap = approximate(method, a, g)
            started = time.perf_counter()
            op = kron_sum_operator(ap.terms, 0.0)
            old = sla.eigsh(op, k=TOP, which="LA", return_eigenvectors=False)
            old_s = time.perf_counter() - started
            fresh = KroneckerSum(ap.method, ap.terms)  # nothing cached
            started = time.perf_counter()
            lam = fresh.eigvals()
            new_s = time.perf_counter() - started
            top_old = torch.sort(torch.from_numpy(old), descending=True).values
            diff = float((lam[:TOP] - top_old).abs().max() / top_old[0])
            p = fresh._projected
            order = "—" if p is None else f"{p.size:,}"
            residual = "refused" if p is None else f"{p.residual:.1e}"
            print(
                f"| {da} × {dg} | {method} | {old_s:.2f} | {new_s:.2f} | "
                f"{old_s / new_s:.1f}× | {order} | {residual} | {diff:.1e} |",
                flush=True,
            )
    print(f"# load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
