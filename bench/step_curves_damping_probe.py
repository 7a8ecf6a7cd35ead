"""Issue 21: why exact damping helps KFAC on curves-small but not on the paper's CURVES network.

Three cheap measurements, each printed as a markdown table and written to a CSV under
``--out-dir``:

1. **The settings ladder on curves-small** (training). KFAC with factored and with exact damping
   (:class:`core.training.optim.OptimizerConfig` ``damping_mode``) at λ ∈ ``--dampings``, 10
   epochs, seeds 1–3, the preset's tuned lr, first with the run defaults of the step experiment
   (T_cov = T_inv = 10, the training minibatch as Fisher batch, no weight decay), then moving one
   setting at a time to the CURVES reproduction's (T_cov = T_inv = 100; Fisher batch 32; weight
   decay 1e-3), and last with only the Fisher batch of 32 changed. Reported: the full
   training-set loss, and the KL-clip's scale ν over the run (mean, fraction of steps with
   ν < 1). If exact damping stops helping on curves-small once the paper's settings are in, the
   difference lies in the settings, not in the network.
2. **The same settings on CURVES** (training). KFAC factored vs exact at λ = 1 on CURVES
   (the reproduction's settings and Xavier-uniform initialisation,
   ``bench/step_curves_compare.py``'s ``train``), ``--curves-epochs`` epochs, seeds
   ``--curves-seeds``, in the variants ``--curves-variants`` of :data:`CURVES_VARIANTS`: the
   reproduction's T_cov = T_inv = 100 and Fisher batch 32; T = 10; Fisher batch 128; and
   ``swap-out``, the reproduction's with the output layer alone in the other damping mode (a
   direct test of where exact damping loses on CURVES).
3. **The step at checkpoints** (no training). At each checkpoint (``--checkpoints``: saved
   state_dicts, plus each network at its initialisation), for λ ∈ ``--dampings``: the true
   Fisher block of every layer on 256 training images (not the optimizer's average), the
   gradient V of a 128-image minibatch, KFAC's step P = (A ⊗ G damped)⁻¹V in both modes and the
   exact damped natural gradient x = (F + λI)⁻¹V (:mod:`core.engine.direction`: error, cosine,
   norm ratio of P against x, per layer); the KL sum ⟨V, P⟩ = Σ_layers ⟨V_l, P_l⟩, the clip
   scale ν = min(1, √(κ / (lr² ⟨V, P⟩))) at KFAC's tuned lr and κ = 1e-2, the largest layer's
   share of ⟨V, P⟩, and the one-step look-ahead loss decrease of −lr·ν·P (same and held-out
   batch; :func:`core.paper.step.look_ahead`); per layer, the factors' spectra (A's and G's
   largest and smallest eigenvalues, π), the fraction of the eigenvalues a_i g_j of A ⊗ G below
   λ, and the gradient-weighted damping excess Σ_ij w_ij (a_i + π√λ)(g_j + √λ/π) / (a_i g_j + λ)
   with w_ij = c_ij² / Σ c², c = U_Gᵀ V U_A the gradient in the factors' eigenbasis: how many
   times more the factored damping damps than λI where the gradient lies (Martens & Grosse 2015,
   §6.3: (A + π√λ)⊗(G + √λ/π) = A⊗G + √λ(πI⊗G + A/π⊗I) + λI).

    python bench/step_curves_damping_probe.py [--parts 1,2,3] [--dampings 0.1,1]
        [--curves-epochs 3] [--curves-seeds 1,2] [--curves-variants T100,T10]
        [--checkpoints NAME=PRESET:PATH,...]
        [--out-dir bench/results-step]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import time
from pathlib import Path

import torch
from step_curves_compare import _BUILT, train  # also wraps build_optimizer (reads ν)

import core.training.curvature as curvature
from core.engine.direction import direction_metrics
from core.engine.kron import pi_factor
from core.engine.methods import approximate
from core.paper.runner import _schedule
from core.paper.spec import PAPER_DEFAULTS, ReproduceSpec
from core.paper.step import StepSpec, _batches, _fishers, _gradients, look_ahead
from core.training.data import load_dataset
from core.training.defaults import default_lr
from core.training.models import PRESETS, batch_loss, build_model
from core.training.runner import RunConfig, TrainingRun

KL_CLIP = 1e-2
#: The settings ladder of part 1: each rung adds one of the CURVES reproduction's settings.
LADDER: tuple[tuple[str, dict], ...] = (
    ("step experiment's defaults (T = 10, Fisher batch = minibatch, no weight decay)", {}),
    ("T_cov = T_inv = 100", {"t_cov": 100, "t_inv": 100}),
    ("+ Fisher batch 32", {"t_cov": 100, "t_inv": 100, "fisher_batch": 32}),
    (
        "+ weight decay 1e-3 (all of the reproduction's settings)",
        {"t_cov": 100, "t_inv": 100, "fisher_batch": 32, "weight_decay": 1e-3},
    ),
    ("Fisher batch 32 alone (T = 10, no weight decay)", {"fisher_batch": 32}),
)


def _cell(values: list[float], digits: int = 2) -> str:
    if any(not math.isfinite(v) for v in values):
        return f"{sum(not math.isfinite(v) for v in values)} diverged"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _kl_stats(scales: list[float]) -> dict:
    return {
        "kl_scale_mean": statistics.mean(scales) if scales else math.nan,
        "kl_clipped_fraction": sum(v < 1.0 for v in scales) / len(scales) if scales else math.nan,
    }


# -- part 1 ------------------------------------------------------------------------------------


def ladder(dampings: list[float], seeds: list[int], epochs: float, save: Path | None) -> list:
    """Part 1 (module docstring); ``save``: where to write seed 1's model of the first rung,
    factored, at the first λ (a trained curves-small checkpoint for part 3)."""
    dataset = load_dataset("curves-small", seed=0)
    rows = []
    for rung, (what, options) in enumerate(LADDER):
        for lam in dampings:
            for mode in ("factored", "exact"):
                for seed in seeds:
                    config = RunConfig.from_settings(
                        "curves-small", "kfac", preset="curves-small", epochs=epochs, seed=seed,
                        damping=lam, damping_mode=mode, eval_every=10**9, device="cpu",
                        **options,
                    )  # fmt: skip
                    _BUILT.clear()
                    run = TrainingRun(config, dataset=dataset)
                    scales: list[float] = []
                    run.on_step = lambda _r, s=scales: s.append(_BUILT[-1].last_kl_scale)
                    began = time.perf_counter()
                    run.run()
                    loss = math.inf
                    if run.status == "finished":
                        with torch.no_grad():
                            x = dataset.x_train
                            loss = float(batch_loss(run.model(x), x, dataset.loss))
                    first = rung == 0 and lam == dampings[0] and mode == "factored"
                    if save is not None and first and seed == seeds[0]:
                        torch.save(run.model.state_dict(), save)
                    rows.append(
                        {"rung": rung, "settings": what, "damping": lam, "mode": mode,
                         "seed": seed, "train_loss": loss, "status": run.status,
                         "seconds": time.perf_counter() - began, **_kl_stats(scales)}
                    )  # fmt: skip
        print(f"ladder rung {rung} done ({time.strftime('%H:%M:%S', time.gmtime())} UTC)")
    return rows


def ladder_table(rows: list[dict], dampings: list[float]) -> str:
    head = "| settings | " + " | ".join(
        f"λ = {lam:g} factored | λ = {lam:g} exact" for lam in dampings
    )
    lines = [head + " |", "|---|" + "---:|" * (2 * len(dampings))]
    for rung, (what, _) in enumerate(LADDER):
        cells = []
        for lam in dampings:
            for mode in ("factored", "exact"):
                mine = [
                    r for r in rows if (r["rung"], r["damping"], r["mode"]) == (rung, lam, mode)
                ]
                loss = _cell([r["train_loss"] for r in mine])
                nu = statistics.mean(r["kl_scale_mean"] for r in mine)
                clipped = statistics.mean(r["kl_clipped_fraction"] for r in mine)
                cells.append(f"{loss} (ν {nu:.2f}, {clipped:.0%} clipped)")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- part 2 ------------------------------------------------------------------------------------


#: Part 2's variants of the reproduction's KFAC settings: name → (what, OptimizerConfig fields).
#: ``swap-out``: the reproduction's settings, the output layer in the OTHER damping mode than the
#: rest of the network (:data:`_LAYER_MODES`).
CURVES_VARIANTS: dict[str, tuple[str, dict]] = {
    "T100": ("T_cov = T_inv = 100, Fisher batch 32 (the reproduction's)", {}),
    "T10": ("T_cov = T_inv = 10, Fisher batch 32", {"t_cov": 10, "t_inv": 10}),
    "fb128": ("T_cov = T_inv = 100, Fisher batch 128", {"fisher_batch": 128}),
    "swap-out": ("the reproduction's; the output layer in the other mode", {}),
}
#: The layer whose damping mode ``swap-out`` flips: CURVES' output layer (400 → 784).
OUTPUT_LAYER = "decoder.linear6"
#: Per-layer damping modes that override the optimizer's after every inverse refresh (empty:
#: none). The optimizers have one mode for every layer; the probe flips one layer's by wrapping
#: :meth:`core.training.curvature.Preconditioner.update_inverses` (the per-step solve reads
#: ``_LayerInverse.mode``; same cost in both modes).
_LAYER_MODES: dict[str, str] = {}
_update_inverses = curvature.Preconditioner.update_inverses


def _update_inverses_per_layer(self: curvature.Preconditioner) -> None:
    _update_inverses(self)
    for name, mode in _LAYER_MODES.items():
        self.inverses[name].mode = mode


curvature.Preconditioner.update_inverses = _update_inverses_per_layer  # type: ignore[method-assign]


def curves_variants(
    variants: list[str], epochs: float, seeds: list[int], save_dir: Path | None
) -> list[dict]:
    """Part 2 (module docstring); ``save_dir``: each run's model after its epochs."""
    spec = ReproduceSpec(
        "training", "curves", epochs=epochs, seeds=tuple(seeds), optimizers=("kfac",)
    )
    dataset = load_dataset("curves", seed=0)
    sched = _schedule(spec, dataset)
    rows = []
    for seed in seeds:
        model = build_model(
            spec.preset, input_dim=dataset.input_dim, loss=dataset.loss, seed=seed,
            init=PAPER_DEFAULTS["init"],
        )  # fmt: skip
        for variant in variants:
            for mode in ("factored", "exact"):
                save = None
                if save_dir is not None:
                    save = save_dir / f"curves-kfac-{mode}-{variant}-{epochs:g}ep-seed{seed}.pt"
                options = CURVES_VARIANTS[variant][1]
                _LAYER_MODES.clear()
                if variant == "swap-out":
                    _LAYER_MODES[OUTPUT_LAYER] = "exact" if mode == "factored" else "factored"
                out = train(spec, sched, dataset, model, "kfac", mode, 1.0, seed, None, save,
                            options)  # fmt: skip
                _LAYER_MODES.clear()
                rows.append({"variant": variant, "mode": mode, "seed": seed, **out})
                print(f"curves {variant} {mode} seed {seed}: {out}", flush=True)
    return rows


def curves_variants_table(rows: list[dict], variants: list[str], epochs: float) -> str:
    lines = [
        f"| settings | damping (λ = 1) | train loss @ {epochs:g} ep | test loss "
        "| KL scale ν (mean) | steps clipped | wall (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for variant in variants:
        for mode in ("factored", "exact"):
            mine = [r for r in rows if (r["variant"], r["mode"]) == (variant, mode)]
            done = [r for r in mine if r["status"] == "finished"]
            cells = [
                _cell([r[k] for r in done]) if done else "diverged"
                for k in ("train_epochs", "test_epochs", "kl_scale_mean", "kl_clipped_fraction")
            ]
            wall = _cell([r["wall_epochs"] for r in done], 0) if done else "—"
            what = CURVES_VARIANTS[variant][0]
            if variant == "swap-out":
                other = "exact" if mode == "factored" else "factored"
                mode = f"{mode}, output layer {other}"
            lines.append(f"| {what} | {mode} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(lines)


# -- part 3 ------------------------------------------------------------------------------------


def _spectra(a: torch.Tensor, g: torch.Tensor, v: torch.Tensor, lam: float) -> dict:
    """A's and G's extreme eigenvalues, π, the fraction of A ⊗ G's eigenvalues below λ, and the
    gradient-weighted factored/exact damping ratio (module docstring)."""
    ea, ua = torch.linalg.eigh(a)
    eg, ug = torch.linalg.eigh(g)
    ea, eg = ea.clamp_min(0.0), eg.clamp_min(0.0)
    pi = pi_factor(a, g)
    root = math.sqrt(lam)
    c2 = (ug.T @ v @ ua) ** 2  # (dg, da): V's energy on u_Gj ⊗ u_Ai
    w = c2 / c2.sum()
    prod = eg[:, None] * ea[None, :]
    factored = (eg[:, None] + root / pi) * (ea[None, :] + pi * root)
    return {
        "a_max": float(ea[-1]), "a_min": float(ea[0]), "g_max": float(eg[-1]),
        "g_min": float(eg[0]), "pi": pi,
        "below_lambda": float((prod < lam).double().mean()),
        "grad_below_lambda": float(w[prod < lam].sum()),
        "damping_excess": float((w * factored / (prod + lam)).sum()),
    }  # fmt: skip


def checkpoint_probe(name: str, preset: str, model, dampings: list[float], seed: int) -> list:
    """Part 3 at one checkpoint: one row per (λ, step, layer) and one per (λ, step) with the
    layer ``"(all)"`` (the KL sum, ν, the largest layer's share, the look-ahead)."""
    dataset = load_dataset(PRESETS[preset].dataset, seed=0)
    spec = StepSpec(preset=preset)
    gen = torch.Generator().manual_seed(seed + 4_000_037)
    batches = _batches(dataset, spec, gen)
    fishers = _fishers(model, batches["fisher"], dataset.loss, gen)
    grads = _gradients(model, batches["same"], dataset.loss)
    lr = default_lr("kfac", preset)
    approxes = {n: approximate("kfac", f.a, f.g) for n, f in fishers.items()}
    rows = []
    for lam in dampings:
        steps = {
            "kfac factored": {n: approxes[n].solve(grads[n], lam, mode="factored") for n in grads},
            "kfac exact": {n: approxes[n].solve(grads[n], lam, mode="exact") for n in grads},
            "exact NG": {n: fishers[n].solve(grads[n], lam) for n in grads},
        }
        for step, dirs in steps.items():
            kl = {n: float((grads[n] * dirs[n]).sum()) for n in grads}
            total = sum(kl.values())
            nu = min(1.0, math.sqrt(KL_CLIP / (lr**2 * total))) if total > 0 else 1.0
            same, held = look_ahead(
                model, dirs, grads, lr=lr, kl_clip=KL_CLIP, loss=dataset.loss,
                batches=[batches["same"], batches["held"]],
            )  # fmt: skip
            top = max(kl, key=lambda n: kl[n])
            tag = {"checkpoint": name, "preset": preset, "damping": lam, "step": step}
            rows.append(
                {**tag, "layer": "(all)", "kl_sum": total, "kl_scale": nu,
                 "top_layer": top, "top_layer_share": kl[top] / total,
                 "decrease_same": same, "decrease_held": held}
            )  # fmt: skip
            for n in grads:
                row = {**tag, "layer": n, "kl_sum": kl[n], "kl_share": kl[n] / total}
                row["step_norm_clipped"] = lr * nu * float(dirs[n].norm())
                if step != "exact NG":
                    metrics = direction_metrics(
                        fishers[n], approxes[n], lam, mode=step.split()[1], v=grads[n]
                    )
                    row |= {"error": metrics.error, "cosine": metrics.cosine}
                    row["norm_ratio"] = metrics.norm_ratio
                if step == "kfac factored":
                    r, s = approxes[n].terms[0]
                    row |= _spectra(r, s, grads[n], lam)
                rows.append(row)
    return rows


def checkpoint_table(rows: list[dict]) -> str:
    lines = [
        "| checkpoint | λ | step | ν | ⟨V,P⟩ | largest layer's share of ⟨V,P⟩ | error vs exact NG "
        "(mean over layers) | cosine | norm ratio | look-ahead decrease (same / held) |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in (r for r in rows if r["layer"] == "(all)"):
        key = (r["checkpoint"], r["damping"], r["step"])
        layers = [
            x
            for x in rows
            if (x["checkpoint"], x["damping"], x["step"]) == key and x["layer"] != "(all)"
        ]
        means = [
            f"{statistics.mean(x[k] for x in layers):.3f}" if "error" in layers[0] else "—"
            for k in ("error", "cosine", "norm_ratio")
        ]
        lines.append(
            f"| {r['checkpoint']} | {r['damping']:g} | {r['step']} | {r['kl_scale']:.3f} "
            f"| {r['kl_sum']:.3g} | {r['top_layer_share']:.2f} ({r['top_layer']}) | "
            + " | ".join(means)
            + f" | {r['decrease_same']:.3f} / {r['decrease_held']:.3f} |"
        )
    return "\n".join(lines)


def spectra_table(rows: list[dict]) -> str:
    lines = [
        "| checkpoint | λ | layer | a_max | a_min | g_max | g_min | π | A⊗G eigenvalues < λ "
        "| gradient energy there | damping excess | ⟨V,P⟩ share factored / exact |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["step"] != "kfac factored" or r["layer"] == "(all)":
            continue
        ex = next(
            x["kl_share"]
            for x in rows
            if (x["checkpoint"], x["damping"], x["layer"], x["step"])
            == (r["checkpoint"], r["damping"], r["layer"], "kfac exact")
        )
        lines.append(
            f"| {r['checkpoint']} | {r['damping']:g} | {r['layer']} | {r['a_max']:.3g} "
            f"| {r['a_min']:.2g} | {r['g_max']:.3g} | {r['g_min']:.2g} | {r['pi']:.3g} "
            f"| {r['below_lambda']:.3f} | {r['grad_below_lambda']:.3f} "
            f"| {r['damping_excess']:.3g} | {r['kl_share']:.2f} / {ex:.2f} |"
        )
    return "\n".join(lines)


def _parse_checkpoints(text: str) -> list[tuple[str, str, str | None]]:
    """``NAME=PRESET:PATH`` items, comma-separated (``PATH`` ``init``: the preset's network at
    its initialisation; Xavier-uniform for ``curves``, the runner's He-normal otherwise)."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, rest = item.partition("=")
        preset, _, path = rest.partition(":")
        if not (name and preset in PRESETS and path):
            raise SystemExit(f"--checkpoints: expected NAME=PRESET:PATH, got {item!r}")
        out.append((name, preset, None if path == "init" else path))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="1,2,3")
    parser.add_argument("--dampings", default="0.1,1")
    parser.add_argument("--seeds", default="1,2,3", help="part 1's training seeds")
    parser.add_argument("--epochs", type=float, default=10.0, help="part 1's epochs")
    parser.add_argument("--curves-epochs", type=float, default=3.0)
    parser.add_argument("--curves-seeds", default="1,2")
    parser.add_argument("--curves-variants", default="T100,T10", help=", ".join(CURVES_VARIANTS))
    parser.add_argument("--checkpoints", default="", help="NAME=PRESET:PATH,... (part 3)")
    parser.add_argument("--seed", type=int, default=1, help="part 3's batches and init models")
    parser.add_argument("--save-dir", type=Path, default=Path("/tmp/h21-probe"))
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results-step"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = {int(p) for p in args.parts.split(",")}
    dampings = [float(d) for d in args.dampings.split(",")]
    args.save_dir.mkdir(parents=True, exist_ok=True)
    began = time.time()
    print(f"started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average {os.getloadavg()}", flush=True)  # fmt: skip
    small = args.save_dir / f"curves-small-kfac-factored-l{dampings[0]:g}-seed1.pt"
    if 1 in parts:
        seeds = [int(s) for s in args.seeds.split(",")]
        rows = ladder(dampings, seeds, args.epochs, small)
        _write(args.out_dir / "probe-ladder.csv", rows)
        print(f"\n{ladder_table(rows, dampings)}\n", flush=True)
    if 2 in parts:
        seeds = [int(s) for s in args.curves_seeds.split(",")]
        variants = [v for v in args.curves_variants.split(",") if v]
        unknown = [v for v in variants if v not in CURVES_VARIANTS]
        if unknown:
            raise SystemExit(f"--curves-variants: unknown {unknown}; choose from {CURVES_VARIANTS}")
        rows = curves_variants(variants, args.curves_epochs, seeds, args.save_dir)
        name = f"probe-curves-{'-'.join(variants)}-{args.curves_epochs:g}ep.csv"
        _write(args.out_dir / name, rows)
        print(f"\n{curves_variants_table(rows, variants, args.curves_epochs)}\n", flush=True)
    if 3 in parts:
        rows = []
        for name, preset, path in _parse_checkpoints(args.checkpoints):
            ds = PRESETS[preset].dataset
            dataset = load_dataset(ds, seed=0)
            init = PAPER_DEFAULTS["init"] if preset == "curves" else "he_normal"
            model = build_model(
                preset, input_dim=dataset.input_dim, loss=dataset.loss, seed=args.seed, init=init
            )
            if path is not None:
                model.load_state_dict(torch.load(path))
            rows += checkpoint_probe(name, preset, model, dampings, args.seed)
            print(f"probed {name} ({time.strftime('%H:%M:%S', time.gmtime())} UTC)", flush=True)
        _write(args.out_dir / "probe-checkpoints.csv", rows)
        print(f"\n{checkpoint_table(rows)}\n\n{spectra_table(rows)}\n", flush=True)
    print(f"{(time.time() - began) / 60:.1f} min; load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
