"""Streamlit glue shared by the pages: URL-synced settings, caches, runs per session, errors.

Numerics live in ``core/``; this module only decides what is cached, where a setting is kept
and how a failure is shown. Session state keys used by the pages: the widget keys
(``<page>.<setting>``, seeded from the URL) and ``runs.<page>`` (the session's background run
group on that page). Everything shared between sessions is a ``st.cache_resource``.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st
import torch

from core import explorer
from core.data import DATASET_SPECS, Dataset, DatasetError, load_dataset
from core.limits import LimitError, RunGroup, RunRegistry, check_layer_size, max_concurrent_runs
from core.models import PRESETS, build_model, describe_layers
from core.optim import OPTIMIZERS, OptimizerConfig, default_damping, default_lr
from core.runner import RunConfig, TrainingRun, resolve_device
from core.validation import DenseTooLargeError

DEFAULT_DATASET = "digits"
OPTIMIZER_LABELS = {
    "sgd": "SGD",
    "adam": "Adam",
    "exact": "Exact block Fisher",
    **{m: explorer.method_label(m) for m in OPTIMIZERS if m not in ("sgd", "adam", "exact")},
}
EXPECTED_ERRORS = (DatasetError, LimitError, DenseTooLargeError, ValueError, OSError)


# -- device and session --------------------------------------------------------------------


def device_label() -> str:
    """The device training runs use (the Fisher numerics run on the CPU in float64)."""
    device = resolve_device(None)
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)})"
    return "CPU (no CUDA GPU found)"


def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def _session_alive(sid: str) -> bool:
    from streamlit import runtime

    if not runtime.exists():  # AppTest and bare scripts: nothing to ask
        return True
    return runtime.get_instance().is_active_session(sid)


@st.cache_resource
def run_registry() -> RunRegistry:
    """The server-wide registry that enforces KRONOSCOPE_MAX_CONCURRENT_RUNS."""
    registry = RunRegistry()
    registry.set_session_check(_session_alive)
    return registry


# -- errors --------------------------------------------------------------------------------


@contextmanager
def friendly_errors(action: str, *, stop: bool = True) -> Iterator[None]:
    """Show a failure as a message on the page, never as a traceback."""
    try:
        yield
    except EXPECTED_ERRORS as err:
        st.error(f"**{action}:** {err}")
        if stop:
            st.stop()
    except Exception as err:  # unexpected: still no traceback on the page
        st.error(f"**{action}** failed unexpectedly: {type(err).__name__}: {err}")
        if stop:
            st.stop()


# -- settings kept in the URL --------------------------------------------------------------


class UrlSettings:
    """Widgets whose values are seeded from ``st.query_params`` and written back to it.

    A copied link therefore reproduces the view. Each widget's session key is
    ``<page>.<name>``; its URL key is ``<name>``.
    """

    def __init__(self, page: str) -> None:
        self.page = page
        self.values: dict[str, str] = {}

    def _key(self, name: str) -> str:
        return f"{self.page}.{name}"

    def _seed(self, name: str, default, parse: Callable, valid: Callable) -> str:
        key = self._key(name)
        if key in st.session_state and valid(st.session_state[key]):
            return key
        value = default
        raw = st.query_params.get(name)
        if raw is not None:
            try:
                parsed = parse(raw)
            except (TypeError, ValueError):
                parsed = None
            if parsed is not None and valid(parsed):
                value = parsed
        st.session_state[key] = value
        return key

    def select(self, label: str, options: Sequence, name: str, default=None, **kw):
        options = list(options)
        default = options[0] if default is None or default not in options else default
        lookup = {str(o): o for o in options}
        key = self._seed(name, default, lambda raw: lookup.get(raw), lambda v: v in options)
        value = st.selectbox(label, options, key=key, **kw)
        self.values[name] = str(value)
        return value

    def radio(self, label: str, options: Sequence, name: str, default=None, **kw):
        options = list(options)
        default = options[0] if default is None or default not in options else default
        lookup = {str(o): o for o in options}
        key = self._seed(name, default, lambda raw: lookup.get(raw), lambda v: v in options)
        value = st.radio(label, options, key=key, **kw)
        self.values[name] = str(value)
        return value

    def multiselect(self, label: str, options: Sequence[str], name: str, default, **kw):
        options = list(options)

        def parse(raw: str) -> list[str]:
            return [o for o in raw.split(",") if o in options] if raw else []

        key = self._seed(
            name,
            list(default),
            parse,
            lambda v: isinstance(v, list) and all(o in options for o in v),
        )
        value = st.multiselect(label, options, key=key, **kw)
        self.values[name] = ",".join(value)
        return value

    def number(self, label: str, name: str, default, *, min_value, max_value, **kw):
        kind = type(default)

        def valid(v) -> bool:
            return isinstance(v, kind) and min_value <= v <= max_value

        key = self._seed(name, default, lambda raw: kind(float(raw)) if raw else None, valid)
        value = st.number_input(label, min_value=min_value, max_value=max_value, key=key, **kw)
        self.values[name] = f"{value:g}" if kind is float else str(value)
        return value

    def slider(self, label: str, name: str, default: int, *, min_value: int, max_value: int, **kw):
        def valid(v) -> bool:
            return isinstance(v, int) and min_value <= v <= max_value

        default = min(max(default, min_value), max_value)
        key = self._seed(name, default, lambda raw: int(raw) if raw else None, valid)
        value = st.slider(label, min_value=min_value, max_value=max_value, key=key, **kw)
        self.values[name] = str(value)
        return value

    def text(self, label: str, name: str, default: str = "", **kw) -> str:
        key = self._seed(name, default, str, lambda v: isinstance(v, str))
        value = st.text_input(label, key=key, **kw)
        if value:
            self.values[name] = value
        return value

    def toggle(self, label: str, name: str, default: bool = False, **kw) -> bool:
        key = self._seed(
            name, default, lambda raw: {"1": True, "0": False}.get(raw), lambda v: v in (0, 1)
        )
        value = st.toggle(label, key=key, **kw)
        self.values[name] = "1" if value else "0"
        return value

    def tabs(self, labels: dict[str, str], name: str, default: str | None = None) -> dict:
        """Lazy tabs (only the open one runs); ``labels``: URL value → tab label.

        Returns URL value → tab container; ``container.open`` tells which one is shown.
        """
        slugs = {label: slug for slug, label in labels.items()}
        default_label = labels.get(default, next(iter(labels.values())))
        key = self._seed(name, default_label, lambda raw: labels.get(raw), lambda v: v in slugs)
        containers = st.tabs(list(labels.values()), key=key, on_change="rerun")
        self.values[name] = slugs.get(st.session_state.get(key), default or next(iter(labels)))
        return dict(zip(labels, containers, strict=True))

    def sync(self, *, final: bool = True) -> None:
        """Write the current values to the URL (only when they changed). ``final=False`` (an
        early sync, before every widget of the page has run) keeps the URL's other keys."""
        current = st.query_params.to_dict()
        wanted = dict(self.values)
        if not final:
            wanted = {**{k: v for k, v in current.items() if k not in wanted}, **wanted}
        if current != wanted:
            st.query_params.from_dict(wanted)


# -- data and models -----------------------------------------------------------------------


@dataclass(frozen=True)
class DataChoice:
    """A dataset and where its file comes from (``path``: on the server, or an upload)."""

    name: str
    path: str | None = None

    @property
    def key(self) -> str:
        return f"{self.name}:{self.path or ''}"


def _upload_path(upload) -> str:
    """Save an uploaded file under the system temp dir, named by its content hash."""
    raw = upload.getvalue()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "kronoscope-uploads"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "".join(Path(upload.name).suffixes[-2:]) or ".npz"
    path = folder / f"{digest}{suffix}"
    if not path.exists():
        path.write_bytes(raw)
    return str(path)


def data_controls(settings: UrlSettings) -> DataChoice:
    """Dataset select; for MNIST and FACES a server path or an uploaded file."""
    name = settings.select(
        "Dataset",
        list(DATASET_SPECS),
        "dataset",
        DEFAULT_DATASET,
        help="DIGITS and CURVES-small train in seconds on a CPU; MNIST and FACES need a file.",
    )
    spec = DATASET_SPECS[name]
    st.caption(spec.description)
    if not spec.needs_path:
        return DataChoice(name)
    path = settings.text(
        "Data path on the server",
        "path",
        help="MNIST: a directory with the IDX image files or an .npz; FACES: an .npz.",
    )
    upload = st.file_uploader("…or upload an .npz", type=["npz"], key=f"{settings.page}.upload")
    if upload is not None:
        return DataChoice(name, _upload_path(upload))
    if not path:
        st.info(f"{name.upper()} is not bundled and is never downloaded: give a path or upload.")
        st.stop()
    return DataChoice(name, path)


@st.cache_resource(max_entries=6, show_spinner="Loading the dataset…")
def dataset(name: str, path: str | None) -> Dataset:
    return load_dataset(name, path=path)


def presets_for(name: str) -> list[str]:
    """Presets whose input width matches the dataset, its own preset first."""
    dim = DATASET_SPECS[name].input_dim
    fits = [p for p, preset in PRESETS.items() if preset.widths[0] == dim]
    return sorted(fits, key=lambda p: p != name)


@st.cache_resource(max_entries=16)
def initial_model(data_key: str, preset: str, seed: int, _ds: Dataset) -> torch.nn.Module:
    """The preset's model at its (seeded) initialization; never mutated by the app."""
    return build_model(preset, input_dim=_ds.input_dim, loss=_ds.loss, seed=seed)


class ModelStore:
    """Trained models shared by every session, keyed by their full training settings.

    An entry is the :class:`TrainingRun` itself: while it runs, every session asking for the
    same settings waits on it instead of training again; a finished run holds the model.
    """

    def __init__(self, max_entries: int = 12) -> None:
        self.lock = threading.Lock()
        self.runs: OrderedDict[str, TrainingRun] = OrderedDict()
        self.max_entries = max_entries

    def get_or_start(self, key: str, make: Callable[[], TrainingRun]) -> TrainingRun:
        with self.lock:
            run = self.runs.get(key)
            if run is not None and run.status in ("stopped", "failed"):
                del self.runs[key]  # retry: a stopped run is incomplete
                run = None
            if run is None:
                run = make()
                group = RunGroup([run], label=f"explorer training {key}")
                run_registry().start(session_id(), group)  # LimitError: nothing stored
                self.runs[key] = run
                while len(self.runs) > self.max_entries:
                    self.runs.popitem(last=False)
            self.runs.move_to_end(key)
            return run


@st.cache_resource
def model_store() -> ModelStore:
    return ModelStore()


@dataclass(frozen=True)
class ModelChoice:
    """A model to explore: a key naming it exactly, and the model."""

    key: str
    model: torch.nn.Module
    description: str


def optimizer_config(name: str, lr: float, damping: float | None = None, **kw) -> OptimizerConfig:
    if damping is None:
        damping = default_damping(name)
    return OptimizerConfig(name, lr=lr, damping=damping, **kw)


def trained_model(
    data: DataChoice,
    ds: Dataset,
    preset: str,
    seed: int,
    optimizer: OptimizerConfig,
    steps: int,
    batch_size: int = 128,
) -> ModelChoice:
    """The preset trained for ``steps`` with ``optimizer`` (cached server-wide); shows a
    progress bar while training, and stops the page with a message if the run fails."""
    settings = ",".join(f"{k}={v}" for k, v in sorted(optimizer.to_dict().items()))
    key = f"{data.key}|{preset}|seed={seed}|{settings}|steps={steps}|batch={batch_size}"
    init = initial_model(data.key, preset, seed, ds)

    def make() -> TrainingRun:
        config = RunConfig(
            dataset=data.name,
            optimizer=optimizer,
            preset=preset,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            eval_every=max(steps, 1),
            data_path=data.path,
        )
        return TrainingRun(config, dataset=ds, model=init)

    with friendly_errors("Training"):
        run = model_store().get_or_start(key, make)
    if not run.done:
        bar = st.progress(0.0, text="Training…")
        while not run.done:
            bar.progress(run.progress, text=f"Training {optimizer.name}: {run.progress:.0%}")
            time.sleep(0.1)
        bar.empty()
    if run.status == "diverged":
        st.error(
            f"**Training diverged.** {run.message} The explorer shows the last finite parameters."
        )
    elif run.status != "finished":
        st.error(
            f"**Training did not finish** ({run.status}): {run.message} Change a setting or "
            "reload the page to train again."
        )
        st.stop()
    df = run.dataframe()
    loss = df["train_loss"].dropna()
    last = f", last training loss {loss.iloc[-1]:.4g}" if len(loss) else ""
    return ModelChoice(key, run.model, f"trained {steps} steps with {optimizer.name}{last}")


# -- the explorer's cached numerics ----------------------------------------------------------
# Bounded: on the paper's largest layers one method's factors take tens of MB.


def fisher_batch(ds: Dataset, m: int, seed: int) -> torch.Tensor:
    """``m`` training images chosen by a seeded permutation (the Fisher minibatch)."""
    order = torch.randperm(ds.n_train, generator=torch.Generator().manual_seed(seed))
    return ds.x_train[order[: min(m, ds.n_train)]]


@st.cache_resource(max_entries=16, ttl="2h", show_spinner=False)
def layer_fisher(
    model_key: str, layer: str, fisher: str, m: int, seed: int, _model, _ds: Dataset
) -> explorer.LayerFisher:
    x = fisher_batch(_ds, m, seed)
    device = next(_model.parameters()).device
    captured = explorer.capture_layer(
        _model, x.to(device), layer, loss=_ds.loss, fisher=fisher, targets=x.to(device), seed=seed
    )
    return explorer.LayerFisher(captured.a.cpu(), captured.g.cpu())


@st.cache_resource(max_entries=64, ttl="2h", show_spinner=False)
def method_result(
    fisher_key: str, method: str, damping: float, compute_slow: bool, _fisher
) -> explorer.MethodResult:
    return explorer.analyse_method(_fisher, method, damping=damping, compute_slow=compute_slow)


@st.cache_resource(max_entries=16, ttl="2h", show_spinner=False)
def rank_curve(fisher_key: str, max_rank: int, _fisher) -> explorer.RankCurve:
    return explorer.rank_curve(_fisher, max_rank)


@st.cache_resource(max_entries=32, ttl="2h", show_spinner=False)
def block_view(fisher_key: str, view_key: str, _fisher, _approx) -> explorer.BlockView:
    return explorer.block_view(_fisher, _approx)


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


# -- background runs of this session ---------------------------------------------------------


def session_group(page: str) -> RunGroup | None:
    return st.session_state.get(f"runs.{page}")


def start_group(page: str, runs: list[TrainingRun], *, sequential: bool, label: str) -> RunGroup:
    """Start runs in the background for this session (LimitError when the server is full)."""
    old = session_group(page)
    if old is not None and not old.done:
        old.stop()
    group = RunGroup(runs, sequential=sequential, label=label)
    run_registry().start(session_id(), group)
    st.session_state[f"runs.{page}"] = group
    return group


def stop_group(page: str) -> None:
    """Button callback: stop this session's runs on ``page``. A callback runs before the next
    script run, so the click is not lost if a live fragment's rerun is in flight."""
    group = session_group(page)
    if group is not None:
        group.stop()


def group_frame(group: RunGroup, labels: Sequence[str]) -> pd.DataFrame:
    """All records of a group in one frame, a ``label`` column naming each run."""
    frames = []
    for run, label in zip(group.runs, labels, strict=True):
        df = run.dataframe()
        if len(df):
            df.insert(0, "label", label)
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_labels(configs: Sequence[OptimizerConfig]) -> list[str]:
    names = [c.name for c in configs]
    labels = []
    for c in configs:
        label = OPTIMIZER_LABELS.get(c.name, c.name)
        if names.count(c.name) > 1:
            label += f" (lr={c.lr:g})"
        labels.append(label)
    return labels


def limits_caption() -> str:
    try:
        busy, limit = run_registry().active_slots(), max_concurrent_runs()
    except ValueError as err:
        return f"Run limit misconfigured: {err}"
    return f"Training runs on this server: {busy} of {limit} allowed"


def optimizer_controls(settings: UrlSettings, name: str) -> dict:
    """Hyper-parameter inputs of one optimizer (URL keys ``<setting>.<optimizer>``)."""
    label = OPTIMIZER_LABELS.get(name, name)
    out: dict = {
        "lr": settings.number(
            f"{label}: learning rate",
            f"lr.{name}",
            float(default_lr(name)),
            min_value=1e-6,
            max_value=10.0,
            format="%g",
        )
    }
    if name in ("sgd", "adam"):
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
        float(default_damping(name)),
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


def model_and_data(settings: UrlSettings, header: str = "Model and data"):
    """The sidebar's dataset, preset and seed controls, and the loaded dataset.

    Returns (data choice, dataset, preset, seed); a dataset that cannot be loaded stops the
    page with a clear message.
    """
    with st.sidebar:
        st.header(header)
        data = data_controls(settings)
    with friendly_errors("Loading the dataset"):
        ds = dataset(data.name, data.path)
    with st.sidebar:
        preset, seed = model_controls(settings, data)
    return data, ds, preset, seed


def model_controls(settings: UrlSettings, data: DataChoice) -> tuple[str, int]:
    """Preset and seed selects (in the current container)."""
    presets = presets_for(data.name)
    preset = settings.select(
        "Model preset",
        presets,
        "preset",
        presets[0] if presets else None,
        format_func=lambda p: f"{p} ({'-'.join(map(str, PRESETS[p].widths))}, mirrored)",
    )
    seed = settings.number("Seed", "seed", 0, min_value=0, max_value=99_999)
    return preset, int(seed)


def run_status_lines(group: RunGroup, labels: Sequence[str]) -> None:
    """A progress bar per run, and any divergence or failure as a message."""
    for run, label in zip(group.runs, labels, strict=True):
        done = f"{run.progress:.0%}"
        st.progress(min(max(run.progress, 0.0), 1.0), text=f"{label}: {run.status} ({done})")
        if run.status == "diverged":
            st.warning(f"**{label} diverged:** {run.message}")
        elif run.status == "failed":
            st.error(f"**{label} failed:** {run.message}")


def ensure_navigation() -> None:
    """Run every page through app.py's ``st.navigation``.

    Streamlit treats a folder named ``pages/`` next to the main script as a legacy (v1)
    multipage app until the process's first ``st.navigation`` call: the first request of a
    fresh server that deep-links to a page (and every AppTest run) would then run the page
    script alone, with Streamlit's automatic page list and without app.py's set-up. Switch the
    process to ``st.navigation`` and rerun; app.py then routes to the same page.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
