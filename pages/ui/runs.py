"""Background training runs of the sessions: the server's registry, and one run panel.

Every start goes through the server-wide :class:`core.server.run_queue.RunRegistry`: a group
that does not fit waits in its queue, and the panel shows the student's place and starts drawing
when the run begins. The sidebar's count and what a session is told come from the same registry.
Quotas count per visitor (every tab of one browser, :func:`.session.visitor_id`). Runs made here
carry this server's limits per run (``RunConfig.from_settings(..., server_limits=True)``): steps
above the limit are cut with a notice, and a run that reaches the time limit stops and says so,
its results kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import streamlit as st

from core import (
    OPTIMIZER_LABELS,  # re-exported: the optimizer labels (core/views/labels.py)
    Dataset,
    OptimizerConfig,
    RunConfig,
    RunGroup,
    RunRegistry,
    TrainingRun,
    max_concurrent_runs,
)

from .data import DataChoice, initial_model
from .errors import friendly_errors, plain
from .services import services
from .session import session_id, visitor_id

__all__ = [
    "OPTIMIZER_LABELS",
    "group_frame",
    "limits_caption",
    "eta_text",
    "run_labels",
    "run_panel",
    "run_registry",
    "run_status_lines",
    "session_group",
    "training_runs",
]


def run_registry() -> RunRegistry:
    """The server-wide registry of training runs: slots, per-visitor quota, queue."""
    return services().runs


def training_runs(
    data: DataChoice,
    ds: Dataset,
    preset: str,
    seed: int,
    optimizers: dict[str, dict],
    **settings,
) -> list[TrainingRun]:
    """One run per optimizer (name → its own settings, e.g. ``lr``), all from the preset's
    same initial model, with the run ``settings`` (``steps``, ``batch_size``, …) shared.
    The settings become configurations in :meth:`core.RunConfig.from_settings`, as the
    CLI's do (one place applies the defaults), with this server's limits per run (the CLI has
    none); a bad value raises ``ValueError``."""
    init = initial_model(data.key, preset=preset, seed=seed, ds=ds)
    return [
        TrainingRun(
            RunConfig.from_settings(
                data.name, name, preset=preset, seed=seed, data_path=data.path,
                server_limits=True, **settings, **options,
            ),
            dataset=ds,
            model=init,
        )
        for name, options in optimizers.items()
    ]  # fmt: skip


def session_group(page: str) -> RunGroup | None:
    return st.session_state.get(f"runs.{page}")


def _start_group(page: str, runs: list[TrainingRun], *, sequential: bool, label: str) -> None:
    old = session_group(page)
    if old is not None and not old.done:
        run_registry().cancel(old)
    group = RunGroup(runs, sequential=sequential, label=label)
    run_registry().start(session_id(), group, visitor=visitor_id())
    st.session_state[f"runs.{page}"] = group


def _stop_group(page: str) -> None:
    """Button callback (runs before the next script run, so a click is never lost)."""
    group = session_group(page)
    if group is not None:
        run_registry().cancel(group)


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
    """Each run's name in legends, status lines and progress texts: the optimizer's label, then
    in parentheses its lr when the optimizer appears more than once, and "exact damping" when it
    preconditions with ``(F̃ + λI)⁻¹`` (``damping_mode="exact"``) instead of the default
    factored damping (:mod:`core.training.curvature`)."""
    names = [c.name for c in configs]
    labels = []
    for c in configs:
        notes = [f"lr={c.lr:g}"] if names.count(c.name) > 1 else []
        if c.damping_mode == "exact":
            notes.append("exact damping")
        label = OPTIMIZER_LABELS.get(c.name, c.name)
        labels.append(f"{label} ({', '.join(notes)})" if notes else label)
    return labels


def limits_caption() -> str:
    """The sidebar's line: slots busy, runs waiting, the per-student quota."""
    try:
        registry = run_registry()
        busy, limit, waiting = registry.active_slots(), max_concurrent_runs(), 0
        waiting = registry.queued_count()
        quota = registry.quota
    except ValueError:
        return "Training limits are misconfigured on this server; ask the host."
    if limit == 0:
        return "Training is switched off on this server."
    queue = f", {waiting} waiting" if waiting else ""
    return (
        f"Training runs on this server: {busy} of {limit} running{queue}; "
        f"at most {quota} at once per visitor"
    )


def eta_text(run) -> str:
    """ " · about N s left", from the progress this session has watched the run make (the
    first sighting is remembered in the session, so a reload starts the estimate afresh)."""
    import time

    seen = st.session_state.setdefault("runs.first_seen", {})
    now, progress = time.monotonic(), float(run.progress)
    t0, p0 = seen.setdefault(id(run), (now, progress))
    if progress >= 1.0 or progress - p0 < 0.01 or now - t0 < 1.0:
        return ""
    left = (now - t0) * (1.0 - progress) / (progress - p0)
    return f" · about {left:.0f} s left" if left >= 1 else ""


STATUS_TEXT = {"timed_out": "stopped at the time limit"}  # statuses shown in other words


def run_status_lines(group: RunGroup, labels: Sequence[str]) -> None:
    """Any notice of the server's limits (steps cut); the queue place while waiting; then a
    progress bar per run, and a divergence, a failure or the time limit as a message."""
    notices = dict.fromkeys(n for run in group.runs if (n := getattr(run, "notice", "")))
    for notice in notices:
        st.info(notice)
    if group.queued:
        place = run_registry().position(group)
        st.info(
            f"Waiting for a free training slot: place {place or '…'} in the queue. The run "
            "starts by itself when a slot frees; keep this tab open."
        )
        return
    if group.state == "cancelled":
        st.info("Stopped before it started.")
        return
    if group.width < len(group.runs) and not group.done:
        st.caption(
            f"{group.width} of these runs train at a time (this server's share per visitor); "
            "the others start as those finish."
        )
    for run, label in zip(group.runs, labels, strict=True):
        status = STATUS_TEXT.get(run.status, run.status)
        if status == "pending":
            status = "not started" if group.stopped or group.done else "waiting its turn"
        done = f"{run.progress:.0%}"
        eta = eta_text(run) if run.status == "running" else ""
        st.progress(min(max(run.progress, 0.0), 1.0), text=f"{label}: {status} ({done}){eta}")
        if run.status == "diverged":
            st.warning(f"**{label} diverged:** {plain(run.message)}")
        elif run.status == "failed":
            st.error(f"**{label} failed:** {plain(run.message)}")
        elif run.status == "timed_out":
            st.info(f"**{label}** {plain(run.message)}.")


def run_panel(
    page: str,
    make_runs: Callable[[], list[TrainingRun]],
    draw: Callable[[RunGroup], None],
    *,
    sequential: bool,
    label: str,
    ready: bool = True,
    idle: str,
) -> None:
    """Start and Stop buttons, the runs' status, and ``draw(group)`` live every second.

    ``make_runs`` builds the runs when Start is pressed (its errors become messages);
    ``idle``: the hint shown before any run.
    """
    group = session_group(page)
    running = group is not None and not group.done
    start_col, stop_col, _ = st.columns([1, 1, 4])
    start = start_col.button(
        "Start", type="primary", disabled=not ready or running, key=f"{page}.start"
    )
    stop_col.button(
        "Stop", disabled=not running, key=f"{page}.stop", on_click=_stop_group, args=(page,)
    )
    if start:
        with friendly_errors("Starting"):
            _start_group(page, make_runs(), sequential=sequential, label=label)
        st.rerun()  # redraw the buttons for a running group

    @st.fragment(run_every=1.0 if running else None)
    def live() -> None:
        group = session_group(page)
        if group is None:
            st.info(idle)
            return
        draw(group)
        if running and group.done:
            st.rerun()  # over: redraw the page once without the timer

    live()
