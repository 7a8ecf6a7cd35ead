"""The Streamlit glue shared by the pages, by role; pages import this and core's public API.

* :mod:`.urlstate`: settings kept in the URL (public parameter names), invalid-value notices;
* :mod:`.controls`: the sidebar's dataset, preset, seed and optimizer controls, the head of
  the pages that train models live;
* :mod:`.data`: datasets, the host's data directory, uploads (quotas, clean-up);
* :mod:`.models`: models at initialization, trained models shared by sessions and kept on disk;
* :mod:`.compute`: the explorer's numerics in the server's worker processes (de-duplicated,
  budgeted, cancelled when nobody waits);
* :mod:`.runs`: background training runs (server registry, queue, one run panel);
* :mod:`.errors`: failures as messages, visitor text as plain text;
* :mod:`.session`: which session this is, and whether another one still exists;
* :mod:`.streamlit_runtime`: the one module that reaches into Streamlit's internals (each named
  there, with why; a test fails when Streamlit changes one);
* :mod:`.navigation`: every page through app.py's ``st.navigation``.

* :mod:`.services`: the server's shared services (:mod:`core.server.services`: never a
  Streamlit cache, which any client may clear) and the quota on raw upload requests;

Everything shared between sessions is read-only to sessions.
"""

from . import compute
from .controls import (
    device_label,
    model_and_data,
    model_controls,
    optimizer_controls,
    run_length_controls,
    training_page,
)
from .data import DataChoice, initial_model
from .errors import friendly_errors, plain
from .models import ModelChoice, default_layer, fisher_batch, layer_options, trained_model
from .navigation import ensure_navigation
from .runs import (
    OPTIMIZER_LABELS,
    group_frame,
    limits_caption,
    run_labels,
    run_panel,
    run_registry,
    run_status_lines,
    session_group,
    training_runs,
)
from .urlstate import UrlSettings

__all__ = [
    "OPTIMIZER_LABELS",
    "DataChoice",
    "ModelChoice",
    "UrlSettings",
    "compute",
    "default_layer",
    "device_label",
    "ensure_navigation",
    "fisher_batch",
    "friendly_errors",
    "group_frame",
    "initial_model",
    "layer_options",
    "limits_caption",
    "model_and_data",
    "model_controls",
    "optimizer_controls",
    "plain",
    "run_labels",
    "run_length_controls",
    "run_panel",
    "run_registry",
    "run_status_lines",
    "session_group",
    "trained_model",
    "training_page",
    "training_runs",
]
