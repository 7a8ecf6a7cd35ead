"""The sidebar's shared controls: dataset, preset and seed, and an optimizer's settings; the head
of the pages that train models live."""

from __future__ import annotations

import streamlit as st

from core import FIRST_ORDER, PRESETS, Dataset, default_damping, default_lr

from .data import DataChoice, data_controls, dataset, presets_for
from .errors import friendly_errors
from .runs import OPTIMIZER_LABELS
from .urlstate import UrlSettings

__all__ = [
    "device_label",
    "model_and_data",
    "model_controls",
    "optimizer_controls",
    "run_length_controls",
    "training_page",
]


def device_label() -> str:
    """The device training runs use."""
    import torch

    from core import resolve_device

    device = resolve_device(None)
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    return "CPU (no CUDA GPU found)"


def optimizer_controls(settings: UrlSettings, name: str, preset: str | None = None) -> dict:
    """Hyper-parameter inputs of one optimizer (URL keys ``<setting>.<optimizer>``); the
    defaults are the model preset's (core.training.optim.default_lr: none of them diverges)."""
    label = OPTIMIZER_LABELS.get(name, name)
    out: dict = {
        "lr": settings.number(
            f"{label}: learning rate",
            f"lr.{name}",
            float(default_lr(name, preset)),
            min_value=1e-6,
            max_value=10.0,
            format="%g",
        )
    }
    if name in FIRST_ORDER:
        out["momentum"] = settings.number(
            f"{label}: momentum" + (" (β₁)" if name == "adam" else ""),
            f"momentum.{name}",
            0.9,
            min_value=0.0,
            max_value=0.999,
            format="%g",
        )
        return out
    out["damping"] = settings.number(
        f"{label}: damping λ",
        f"damping.{name}",
        float(default_damping(name, preset)),
        min_value=1e-10,
        max_value=10.0,
        format="%g",
    )
    out["t_cov"] = settings.number(
        f"{label}: T_cov (steps)", f"tcov.{name}", 10, min_value=1, max_value=1000
    )
    out["t_inv"] = settings.number(
        f"{label}: T_inv (steps)", f"tinv.{name}", 10, min_value=1, max_value=1000
    )
    kl = settings.select(
        f"{label}: KL clip",
        [1e-3, 1e-2, 1e-1, "off"],
        f"kl.{name}",
        1e-2,
        format_func=lambda v: "off" if v == "off" else f"{v:g}",
    )
    out["kl_clip"] = None if kl == "off" else kl
    return out


def run_length_controls(settings: UrlSettings, steps: int) -> tuple[int, int]:
    """Steps (default ``steps``) and batch size of a training run (URL ``steps``, ``batch``)."""
    steps = settings.number("Steps", "steps", steps, min_value=1, max_value=20_000)
    batch = settings.select("Batch size", [32, 64, 128, 256, 512], "batch", 128)
    return int(steps), int(batch)


def model_and_data(
    settings: UrlSettings, header: str = "Model and data"
) -> tuple[DataChoice, Dataset, str, int]:
    """The sidebar's dataset, preset and seed controls, and the loaded dataset.

    A dataset that cannot be loaded stops the page with a clear message.
    """
    with st.sidebar:
        st.header(header)
        data = data_controls(settings)
    with friendly_errors("Loading the dataset"):
        ds = dataset(data)
    with st.sidebar:
        preset, seed = model_controls(settings, data, labelled=ds.n_classes is not None)
    return data, ds, preset, seed


def model_controls(settings: UrlSettings, data: DataChoice, *, labelled: bool) -> tuple[str, int]:
    """Preset and seed selects (in the current container); ``labelled``: the loaded data has
    class labels (the classifier presets are offered only then)."""
    presets = presets_for(data.name, labelled=labelled)
    preset = settings.select(
        "Model preset",
        presets,
        "preset",
        presets[0] if presets else None,
        format_func=lambda p: f"{p}: {PRESETS[p].architecture}",
    )
    seed = settings.number("Seed", "seed", 0, min_value=0, max_value=99_999)
    return preset, int(seed)


def training_page(
    page: str, title: str, intro: str
) -> tuple[UrlSettings, DataChoice, Dataset, str, int]:
    """The head of a page that trains models live (the race, approximation over training): its
    title and introduction, its URL settings (``page``'s), the dataset, preset and seed controls
    with the loaded dataset (:func:`model_and_data`), and the sidebar's "Training" header that
    the page's own run controls go under."""
    st.title(title)
    st.markdown(intro)
    settings = UrlSettings(page)
    data, ds, preset, seed = model_and_data(settings)
    with st.sidebar:
        st.header("Training")
    return settings, data, ds, preset, seed
