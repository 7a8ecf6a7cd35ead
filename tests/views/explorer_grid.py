"""The grid of explorer views a visitor can reach without a file (issue 9's sweep).

Shared by tests/views/test_explorer_sweep.py (a fixed-seed sample, in CI) and
bench/explorer_sweep.py (the whole grid). Each view is a URL query of the explorer page.
"""

from __future__ import annotations

import itertools
import random

from core.engine.methods import METHODS
from core.training.datasets import DATASET_SPECS
from core.training.models import PRESETS

TABS = ("block", "factors", "spectra", "rank")
M_VALUES = (1, 32, 256)
TRAIN = {"opt": "adam", "steps": "20"}  # "after training": a short, cheap run


def _layers(preset: str) -> list[str]:
    """The preset's factored layers (linear and convolutional), in forward order."""
    from core.training.models import build_model, describe_layers

    model = build_model(preset, input_dim=PRESETS[preset].widths[0], loss="bce", seed=0)
    return [info.name for info in describe_layers(model)]


def views() -> list[dict[str, str]]:
    """Every combination: dataset (no file) × fitting preset × layer × model state × method set
    (each alone, all together) × tab × slow metrics × m × Fisher kind."""
    out = []
    for dataset, spec in DATASET_SPECS.items():
        if spec.needs_path:
            continue
        labelled = dataset == "digits"  # the built-in data with class labels
        presets = [
            p
            for p, pr in PRESETS.items()
            if pr.widths[0] == spec.input_dim and (labelled or not pr.classifier)
        ]
        for preset in presets:
            method_sets = [[m] for m in METHODS] + [list(METHODS)]
            for layer, state, methods, tab, slow, m, kind in itertools.product(
                _layers(preset), ("init", "trained"), method_sets, TABS, ("0", "1"),
                M_VALUES, ("true", "empirical"),
            ):  # fmt: skip
                view = {
                    "dataset": dataset, "preset": preset, "layer": layer, "model": state,
                    "methods": ",".join(methods), "tab": tab, "slow": slow, "m": str(m),
                    "fisher": kind,
                }  # fmt: skip
                if state == "trained":
                    view.update(TRAIN)
                out.append(view)
    return out


def sample(n: int, seed: int = 0, max_layer_params: int | None = None) -> list[dict[str, str]]:
    """``n`` views drawn with a fixed seed (optionally only layers up to a size, for CI)."""
    from core.training.models import build_model, describe_layers

    grid = views()
    if max_layer_params is not None:
        sizes = {}
        for preset in {v["preset"] for v in grid}:
            model = build_model(preset, input_dim=PRESETS[preset].widths[0], loss="bce", seed=0)
            sizes.update({(preset, i.name): i.n_params for i in describe_layers(model)})
        grid = [v for v in grid if sizes[(v["preset"], v["layer"])] <= max_layer_params]
    return random.Random(seed).sample(grid, n)
