"""Kronoscope's numerical core: Fisher blocks, their Kronecker-factored approximations,
natural-gradient optimizers, datasets and training runs. No Streamlit import anywhere here.

Conventions (fixed once, used everywhere; the README's "engine in five lines" repeats them):

* A linear layer computes ``s = W ā`` with ``W`` of shape ``(dg, da)``; ``ā`` carries a trailing
  ``1`` when the layer has a bias (the bias is the last column of ``W``).
* ``g = ∂ℓ_i/∂s`` is the gradient of ONE sample's negative log-likelihood w.r.t. the layer output.
* Column-major ``vec``: ``vec(g āᵀ) = ā ⊗ g``, so the layer's Fisher block is
  ``F = (1/m) Σ_i (ā_i ā_iᵀ) ⊗ (g_i g_iᵀ)``, indexed in ``vec(W)`` order.

Sub-packages, by role (each imports only some of the ones listed before it: the table in
ARCHITECTURE.md, which tests/test_architecture.py enforces):

* :mod:`core.engine` — Kronecker algebra, the rearranged-Fisher SVD, every approximation and the
  exact block behind one interface, capture, likelihoods, the method registry;
* :mod:`core.training` — datasets, autoencoders, optimizers, training runs;
* :mod:`core.views` — the explorer's comparison, figures, the training reports;
* :mod:`core.paper` — the seed paper's experiments: spec, runner, verdicts, reports, results
  folders;
* :mod:`core.server` — limits, the run queue, the worker-process pool, the stores and the
  services one server process shares (for the web server).

:mod:`core.settings` sits beside them: every ``KRONOSCOPE_*`` host setting, read in one place.

The names below are the public API that the app's pages and the CLI use. They load lazily
(PEP 562 ``__getattr__``), so a worker process started as ``python -m core.server.workers`` does
not import plotly or pandas it never needs.
"""

from __future__ import annotations

import importlib

# public name → the module that defines it
_EXPORTS: dict[str, str] = {
    # engine
    "Approximation": "core.engine.approx",
    "approximate": "core.engine.methods",
    "LayerFisher": "core.engine.fisher",
    "capture": "core.engine.capture",
    "METHODS": "core.engine.methods",
    "method_spec": "core.engine.methods",
    "DenseTooLargeError": "core.engine.validation",
    "MAX_POWER_STEPS": "core.engine.power_iterations",
    "PRUNE_STRUCTURES": "core.engine.prune",
    # training
    "DATASET_SPECS": "core.training.datasets",
    "Dataset": "core.training.datasets",
    "DatasetError": "core.training.datasets",
    "default_cache_dir": "core.training.datasets",
    "load_dataset": "core.training.data",
    "data_dir": "core.training.datafiles",
    "list_data_files": "core.training.datafiles",
    "load_visitor_dataset": "core.training.datafiles",
    "resolve_in_dir": "core.training.datafiles",
    "cached_dataset": "core.training.download",
    "download_dataset": "core.training.download",
    "downloads_allowed": "core.training.download",
    "PRESETS": "core.training.models",
    "build_model": "core.training.models",
    "describe_layers": "core.training.models",
    "FIRST_ORDER": "core.training.defaults",
    "OPTIMIZERS": "core.training.defaults",
    "default_damping": "core.training.defaults",
    "default_lr": "core.training.defaults",
    "OptimizerConfig": "core.training.optim",
    "RunConfig": "core.training.runner",
    "TrainingRun": "core.training.runner",
    "model_loss": "core.training.runner",
    "resolve_device": "core.training.runner",
    # views
    "OPTIMIZER_LABELS": "core.views.labels",
    "COMPRESS_METHODS": "core.views.downstream",
    "PRUNE_METHODS": "core.views.downstream",
    "downstream_figures": "core.views.downstream_figures",
    "downstream_label": "core.views.downstream_figures",
    "downstream_table": "core.views.downstream_figures",
    "merge_results": "core.views.downstream",
    "reconstruction_figure": "core.views.downstream_figures",
    "reconstructions": "core.views.downstream",
    "power_iterations_caption": "core.views.power_iterations",
    "power_iterations_figure": "core.views.power_iterations",
    # paper reproductions (the reports page)
    "ReportError": "core.paper.safe_read",
    "list_reports": "core.paper.files",
    "load_report": "core.paper.files",
    "results_dir": "core.paper.files",
    # host settings
    "max_concurrent_runs": "core.settings",
    "torch_threads": "core.settings",
    "view_budget_s": "core.settings",
    "worker_count": "core.settings",
    # server
    "LimitError": "core.server.limits",
    "check_layer_size": "core.server.limits",
    "RunGroup": "core.server.run_queue",
    "RunRegistry": "core.server.run_queue",
    "BudgetExceeded": "core.server.workers",
    "JobCancelled": "core.server.workers",
    "WorkerDied": "core.server.workers",
    "WorkerPool": "core.server.workers",
    "QueueFull": "core.server.workers",
    "SHARED_SESSION": "core.server.model_store",
    "Services": "core.server.services",
    "shared_services": "core.server.services",
}

# public modules, used as a whole (``explorer.compute_view(...)``, ``jobs.layer_fisher(...)``)
_MODULES: dict[str, str] = {
    "direction": "core.views.direction",
    "explorer": "core.views.explorer",
    "figures": "core.views.figures",
    "heatmap_image": "core.views.heatmap_image",
    "network_fisher": "core.views.network_fisher",
    "report": "core.views.report",
    "spectra_image": "core.views.spectra_image",
    "jobs": "core.server.jobs",
    "settings": "core.settings",
}

__all__ = sorted(_EXPORTS.keys() | _MODULES.keys())


def __getattr__(name: str):
    """Load a public name on first use (PEP 562)."""
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
