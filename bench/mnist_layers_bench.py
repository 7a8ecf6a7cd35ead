"""`reproduce --experiment quality` on all eight layers of the paper's MNIST autoencoder.

Issue 23's case: ``--layers 1,…,8 --max-steps 16 --quality-every 15`` did not finish in ten
minutes on 2 cores and printed nothing meanwhile. This script writes an MNIST-shaped data set
in the original IDX format (scikit-learn's bundled 8 × 8 digits, each pixel repeated 3 × 3
and padded to 28 × 28: no download, no real MNIST in the repository), runs that command as a
user would, and prints from its progress lines a table of what each measure (one method's
approximation, relative error and spectrum error on one layer) cost at each checkpoint, the
skip notices, and the total wall time, with the load average.

Usage: python bench/mnist_layers_bench.py [--metric-budget-s 60] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(
    r"step (\d+): layer (\d+) \(([^,]+), m=(\d+), da=(\d+), dg=(\d+)\): (.*) "
    r"\(estimated ([0-9.e+-]+) s each\)"
)


def write_idx(path: Path, images: np.ndarray) -> None:
    """``images`` (n, 28, 28) uint8 as an IDX image file (big-endian header, as MNIST's)."""
    n, rows, cols = images.shape
    header = np.array([2051, n, rows, cols], dtype=">u4").tobytes()
    path.write_bytes(header + images.astype(np.uint8).tobytes())


def write_digits_as_mnist(folder: Path) -> None:
    """The 1,797 digits, upscaled to 28 × 28 (0–16 → 0–255), 1,500 train and 297 test."""
    digits = load_digits().images * (255 / 16)
    big = np.kron(digits, np.ones((1, 3, 3)))
    images = np.pad(big, ((0, 0), (2, 2), (2, 2))).round()
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", images[:1500])
    write_idx(folder / "t10k-images-idx3-ubyte", images[1500:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metric-budget-s", type=float, default=60.0)
    parser.add_argument("--out", help="results folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "mnist", Path(args.out or Path(tmp) / "results")
        write_digits_as_mnist(data)
        command = [sys.executable, "-m", "core", "reproduce", "--experiment", "quality"]
        command += ["--dataset", "mnist", "--data-path", str(data), "--seeds", "1"]
        command += ["--layers", "1,2,3,4,5,6,7,8", "--max-steps", "16", "--quality-every", "15"]
        command += ["--metric-budget-s", str(args.metric_budget_s), "--out", str(out)]
        load_start = os.getloadavg()
        started = time.perf_counter()
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        print(f"# {platform.node()} · {os.cpu_count()} cores · load average at start {load_start}")
        print(
            "# python -m core reproduce --experiment quality --dataset mnist --data-path DIR "
            "--seeds 1 --layers 1,2,3,4,5,6,7,8 --max-steps 16 --quality-every 15 "
            f"--metric-budget-s {args.metric_budget_s:g}"
        )
        print("| step | layer | m | da × dg | each measure (s) | estimate (s) |")
        print("|---:|---|---:|---|---|---:|")
        for line in run.stderr.replace("\r", "\n").splitlines():
            hit = PROGRESS.search(line)
            if hit:
                step, number, name, m, da, dg, costs, estimate = hit.groups()
                print(
                    f"| {step} | {number} ({name}) | {m} | {da} × {dg} | {costs} | "
                    f"{float(estimate):.3g} |"
                )
        settings_file = out / "settings.json"
        if settings_file.exists():
            for notice in json.loads(settings_file.read_text())["quality"].get("skipped", []):
                print(f"# skipped: {notice}")
        print(
            f"# exit status {run.returncode}; wall time {wall:.1f} s; "
            f"load average at end {os.getloadavg()}"
        )
        if run.returncode:
            print(run.stderr[-3000:], file=sys.stderr)
            sys.exit(run.returncode)


if __name__ == "__main__":
    main()
