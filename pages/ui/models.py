"""The models the explorer looks at: at initialization, or trained once for every session.

Trained models are shared by every session and keyed by every setting of their training, in
the server's :class:`core.server.model_store.ModelStore` (which keeps a finished model of a
built-in dataset on disk): this module asks it for a model and shows the wait.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import streamlit as st
import torch

from core import (
    Dataset,
    LimitError,
    RunConfig,
    TrainingRun,
    build_model,
    check_layer_size,
    describe_layers,
)

from .data import DataChoice, initial_model
from .errors import friendly_errors, plain
from .runs import eta_text, run_labels
from .services import services

__all__ = [
    "ModelChoice",
    "default_layer",
    "fisher_batch",
    "layer_options",
    "trained_model",
]


@dataclass(frozen=True)
class ModelChoice:
    """A model to explore: a key naming it exactly, and the model."""

    key: str
    model: torch.nn.Module
    description: str


def _persistable(data: DataChoice) -> bool:
    return data.path is None  # built-in data only: visitors' files are not kept


def trained_model(
    data: DataChoice,
    ds: Dataset,
    preset: str,
    seed: int,
    *,
    optimizer: str,
    settings: dict,
    steps: int,
    batch_size: int = 128,
) -> ModelChoice:
    """The preset trained for ``steps`` with ``optimizer`` and its ``settings`` (``lr``, …;
    made a run by :meth:`core.RunConfig.from_settings`), shared by every session: shows the
    queue place or a progress bar with the time left while it trains, and stops the page with
    a message if the settings are invalid or the run fails."""
    with friendly_errors("Training settings"):
        config = RunConfig.from_settings(
            data.name, optimizer, **settings, preset=preset, seed=seed, steps=steps,
            batch_size=batch_size, eval_every=max(steps, 1), data_path=data.path,
            server_limits=True,
        )  # fmt: skip
    if config.notice:
        st.info(plain(config.notice))
    steps = config.steps  # what is trained: the server may have cut the request
    options = ",".join(f"{k}={v}" for k, v in sorted(config.optimizer.to_dict().items()))
    key = f"{data.key}|{preset}|seed={seed}|{options}|steps={steps}|batch={batch_size}"
    init = initial_model(data.key, preset=preset, seed=seed, ds=ds)

    def make_run() -> TrainingRun:
        return TrainingRun(config, dataset=ds, model=init)

    def make_model() -> torch.nn.Module:
        return build_model(preset, input_dim=ds.input_dim, loss=ds.loss, seed=seed)

    store = services().models
    with friendly_errors("Training"):
        entry = store.acquire(key, make_run, make_model)
    label = run_labels([config.optimizer])[0]
    try:
        if not entry.run.done:
            line = st.empty()
            while not entry.run.done:
                if entry.group is not None and entry.group.queued:
                    place = services().runs.position(entry.group)
                    line.info(
                        f"Waiting for a free training slot to train the model: place "
                        f"{place or '…'} in the queue. Switch to *at initialization* to "
                        "explore now."
                    )
                elif entry.group is not None and entry.group.state == "cancelled":
                    break
                else:
                    run = entry.run
                    line.progress(
                        min(max(run.progress, 0.0), 1.0),
                        text=f"Training {label}: {run.progress:.0%}{eta_text(run)}",
                    )
                time.sleep(0.25)
            line.empty()
    finally:
        store.release(key, entry)
    run = entry.run
    if _persistable(data):
        store.persist(key, entry)
    if run.status == "diverged":
        st.error(
            f"**Training diverged.** {plain(run.message)} The explorer shows the last finite "
            "parameters."
        )
    elif run.status == "timed_out":
        st.warning(plain(run.message))
    elif run.status != "finished":
        st.error(
            f"**Training did not finish** ({run.status}): {plain(run.message)} Change a "
            "setting or reload the page to train again."
        )
        st.stop()
    records = run.dataframe()
    loss = records["train_loss"].dropna() if len(records) else None
    last = f", last training loss {loss.iloc[-1]:.4g}" if loss is not None and len(loss) else ""
    return ModelChoice(key, run.model, f"trained {steps} steps with {label}{last}")


def fisher_batch(
    ds: Dataset, m: int, seed: int, *, labels: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``m`` training images chosen by a seeded permutation (the Fisher minibatch), and their
    class labels when ``labels`` (a classifier's empirical Fisher needs them; ``None``
    otherwise: an autoencoder's targets are its inputs)."""
    order = torch.randperm(ds.n_train, generator=torch.Generator().manual_seed(seed))
    chosen = order[: min(m, ds.n_train)]
    if not labels:
        return ds.x_train[chosen], None
    if ds.y_train is None:
        raise ValueError(f"the dataset {ds.name!r} has no class labels for a classifier")
    return ds.x_train[chosen], ds.y_train[chosen]


def layer_options(model: torch.nn.Module) -> dict[str, str]:
    """Layer name → label with its shape and parameter count (and the server limit)."""
    out = {}
    for info in describe_layers(model):
        label = info.label
        try:
            check_layer_size(info.n_params)
        except LimitError:
            label += " — above this server's limit"
        out[info.name] = label
    return out


def default_layer(model: torch.nn.Module) -> str:
    """The smallest layer (the default view stays fast)."""
    infos = describe_layers(model)
    return min(infos, key=lambda i: (i.n_params, i.index)).name
