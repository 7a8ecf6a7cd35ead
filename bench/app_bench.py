"""Benchmark of the Fisher explorer page (server side), for bench/RESULTS-app.md.

Run: ``.venv/bin/python bench/app_bench.py`` (2 CPU cores: ``taskset -c 0,1`` if the machine
has more). Each measurement runs the real page through Streamlit's AppTest, i.e. everything the
server does for a view (data, model, capture, every approximation and metric, figures, element
serialisation) except the browser's drawing.

* imports: torch, streamlit, core and the page helpers, in a fresh process;
* cold: first view of the explorer's default (DIGITS preset, smallest layer, all methods,
  model at initialization) with empty caches — the dataset is loaded, nothing is cached;
* warm, method: one method removed, then added back (its result is cached per method), and a
  method added that was never computed on this layer;
* warm, layer: every other layer of the same model, first visit (all methods computed there)
  and second visit (cached).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

t0 = time.perf_counter()
import streamlit  # noqa: E402,F401
import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import core.explorer  # noqa: E402,F401
import pages._shared  # noqa: E402,F401

IMPORT_S = time.perf_counter() - t0


def new_app() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.switch_page("pages/explorer.py")
    return at


def timed_run(at: AppTest) -> float:
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"page raised: {[e.value for e in at.exception]}")
    return elapsed


def select(at: AppTest, label: str):
    return next(s for s in at.selectbox if s.label == label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="warm measurements per case")
    args = parser.parse_args()

    rows: list[tuple[str, float]] = [("imports (fresh process)", IMPORT_S)]
    at = new_app()
    rows.append(("cold: default view, empty caches", timed_run(at)))

    ms = next(m for m in at.multiselect if m.label == "Approximations")
    full = list(ms.value)
    times = []
    for _ in range(args.repeat):
        ms = next(m for m in at.multiselect if m.label == "Approximations")
        ms.set_value([m for m in full if m != "lanczos"])
        times.append(timed_run(at))
        ms = next(m for m in at.multiselect if m.label == "Approximations")
        ms.set_value(full)
        times.append(timed_run(at))
    rows.append(("warm: remove / re-add a method (cached)", statistics.median(times)))

    layer_box = select(at, "Linear layer")
    default_layer = layer_box.value
    others = [o for o in layer_box.options if o != default_layer]
    # options are labels; values are names: map through the page's format
    names = [n for n in at.session_state["explorer.layer"].__class__.__mro__ if False]
    del names
    layer_names = list(core_layers(at))
    first, second = [], []
    for name in layer_names:
        if name == default_layer:
            continue
        select(at, "Linear layer").set_value(name)
        first.append((name, timed_run(at)))
        select(at, "Linear layer").set_value(default_layer)
        timed_run(at)
        select(at, "Linear layer").set_value(name)
        second.append((name, timed_run(at)))
    for name, t in first:
        rows.append((f"warm: change layer to {name}, first visit", t))
    rows.append(
        ("warm: change layer, revisit (cached), median", statistics.median(t for _, t in second))
    )
    del others

    width = max(len(r[0]) for r in rows)
    print(f"torch threads: {torch.get_num_threads()}, CPU cores visible: {os.cpu_count()}")
    for label, seconds in rows:
        print(f"{label:<{width}}  {seconds:7.3f} s")


def core_layers(at: AppTest) -> list[str]:
    from core.models import PRESETS, build_model

    preset = PRESETS[at.session_state["explorer.preset"]]
    model = build_model(preset.name, input_dim=preset.widths[0], loss="bce")
    return [name for name, _ in model.named_modules() if isinstance(_, torch.nn.Linear)]


if __name__ == "__main__":
    main()
