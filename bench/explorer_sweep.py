"""Render the Fisher explorer over the whole grid of views a visitor can reach without a file
(tests/views/explorer_grid.py: datasets × presets × layers × model states × method sets × tabs ×
slow metrics × m × Fisher kinds) and list every view that shows an exception or an error box.

    .venv/bin/python bench/explorer_sweep.py              # the whole grid (hours on 2 cores)
    .venv/bin/python bench/explorer_sweep.py --n 200      # a fixed-seed sample
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KRONOSCOPE_WORKERS", "0")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=0, help="sample size (0: the whole grid)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.n < 0:
        parser.error("--n must be ≥ 0")

    from streamlit.testing.v1 import AppTest

    from tests.views.explorer_grid import sample, views

    grid = sample(args.n, args.seed) if args.n else views()
    failures, budget_stops, t0 = [], 0, time.monotonic()
    for i, view in enumerate(grid, 1):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
        at.query_params.update(view)
        at.switch_page("pages/explorer.py")
        at.run()
        bad = [e.value for e in at.exception] + [
            e.value for e in at.error if "compute budget per view" not in e.value
        ]  # a budget stop is the designed outcome on the largest layers, not a failure
        budget_stops += sum("compute budget per view" in e.value for e in at.error)
        if bad:
            failures.append((view, bad))
            print(f"FAIL {view}: {bad[0][:200]}", flush=True)
        if i % 50 == 0:
            print(f"{i}/{len(grid)} views, {len(failures)} failing, {time.monotonic() - t0:.0f} s")
    print(
        f"{len(grid)} views, {len(failures)} failing, {budget_stops} parts stopped by the "
        f"view budget, {time.monotonic() - t0:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
