"""Mutation testing of the engine's and the optimizers' numerics with hand-picked one-line bugs.

Each mutant is one plausible bug in core/ (a wrong sign, a swapped factor, a dropped 1/m, a
loosened tolerance, a deleted safeguard line), written as an exact ``(old, new)`` string
replacement in one file. For each mutant the bench copies the working tree to a temporary
directory once, patches the one line there, runs the tests of that module group with
``pytest -x`` under a timeout, and restores the file. A mutant is

* ``killed`` when pytest fails (or ``killed (timeout)`` when it runs past the timeout);
* ``survived`` when every test still passes: a bug the suite cannot see;
* ``not applied`` when its line is not found exactly once (the code moved on; the mutant
  must be rewritten, never counted as killed).

Before the mutants, each group's tests run once on the unpatched copy; tests that already fail
there (work in progress elsewhere in the tree) are reported and deselected for that group's
mutants, so that they cannot make every mutant look killed. The score is killed / applied.

The report gives the kill rate per mutated module (core file) as well as the total.

Usage: python bench/mutation_bench.py [--only ID ...] [--timeout S] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENGINE_TESTS = (
    "tests/engine/test_engine_oracles.py",
    "tests/engine/test_engine_invariants.py",
    "tests/views/test_explorer.py",
    "tests/engine/test_engine_interface.py",
)
OPTIM_TESTS = ("tests/training/test_optim.py", "tests/training/test_optim_ema.py")
# issue 22: tests that state the answer where a fresh round of plausible bugs survived
GROUPS = {
    "engine": ENGINE_TESTS,
    "optim": OPTIM_TESTS,
    "settings": ("tests/training/test_optimizer_settings.py",),
    "lists": ("tests/engine/test_method_lists.py",),
    "io": ("tests/training/test_stated_io.py",),
    "jobs": ("tests/server/test_stated_jobs.py",),
    "views": ("tests/views/test_stated_views.py",),
    "paper": ("tests/paper/test_stated_verdicts.py",),
}
IGNORED = (".venv", ".git", "__pycache__", ".hypothesis", ".pytest_cache", ".ruff_cache", "docs")
IGNORED += ("data_cache", "runs", "artifacts")


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str
    old: str
    new: str
    what: str
    group: str = "engine"


MUTANTS = (
    # -- core/engine/kron.py --------------------------------------------------------------------
    Mutant(
        "kron-vec-row-major",
        "core/engine/kron.py",
        "    return m.T.reshape(-1)\n",
        "    return m.reshape(-1)\n",
        "vec stacks rows instead of columns",
    ),
    Mutant(
        "kron-pi-inverted",
        "core/engine/kron.py",
        "    return (tr_r / tr_s) ** 0.5",
        "    return (tr_s / tr_r) ** 0.5",
        "factored-damping π inverted",
    ),
    Mutant(
        "kron-damping-pi-times",
        "core/engine/kron.py",
        "s + root / pi * eye_s",
        "s + root * pi * eye_s",
        "second factor damped by √λ·π instead of √λ/π",
    ),
    Mutant(
        "kron-eig-solve-sqrt-damping",
        "core/engine/kron.py",
        "/ (self.eigvals_grid() + damping)",
        "/ (self.eigvals_grid() + damping**0.5)",
        "Kronecker solve adds √λ instead of λ",
    ),
    Mutant(
        "kron-geneig-no-back-transform",
        "core/engine/kron.py",
        "    e = torch.linalg.solve_triangular(chol.T, q, upper=True)\n",
        "    e = q\n",
        "generalized eigenvectors not mapped back by L⁻ᵀ",
    ),
    Mutant(
        "kron-rearrange-permute",
        "core/engine/kron.py",
        ".permute(2, 0, 3, 1)",
        ".permute(0, 2, 1, 3)",
        "rearrangement in row-major block order",
    ),
    # -- core/engine/rearranged_svd.py
    # --------------------------------------------------------------------
    Mutant(
        "rsvd-issue9-absolute-threshold",
        "core/engine/rearranged_svd.py",
        "    for size in (scale, 1.0):\n",
        "    for size in (scale, scale):\n",
        "issue 9: second orthonormalisation pass thresholds against θ₁ (the original bug)",
    ),
    Mutant(
        "rsvd-gram-no-square",
        "core/engine/rearranged_svd.py",
        "        ka = (self.a @ self.a.T).square_().to(torch.float64)\n",
        "        ka = (self.a @ self.a.T).to(torch.float64)\n",
        "K_a = ĀĀᵀ instead of (ĀĀᵀ)∘²",
    ),
    Mutant(
        "rsvd-center-wrong-axis",
        "core/engine/rearranged_svd.py",
        "return c - c.mean(dim=0, keepdim=True) if self.centered else c",
        "return c - c.mean(dim=1, keepdim=True) if self.centered else c",
        "KFAC-corrected centering over the wrong axis",
    ),
    Mutant(
        "rsvd-apply-no-1-over-m",
        "core/engine/rearranged_svd.py",
        "        return self.a64.T @ (self._center(w)[:, None] * self.a64) / self.m\n",
        "        return self.a64.T @ (self._center(w)[:, None] * self.a64)\n",
        "matrix-free ℛ(F) misses 1/m",
    ),
    Mutant(
        "rsvd-ritz-residual-first-row",
        "core/engine/rearranged_svd.py",
        "    residuals = betas[k - 1] * x[k - 1, :r].abs()",
        "    residuals = betas[k - 1] * x[0, :r].abs()",
        "Lanczos Ritz residual from the wrong row",
    ),
    Mutant(
        "rsvd-gram-tol-x1e4",
        "core/engine/rearranged_svd.py",
        "            done = bool((residual <= tol * scale).all())",
        "            done = bool((residual <= 1e4 * tol * scale).all())",
        "Gram route stops at 1e4 × its tolerance",
    ),
    Mutant(
        "rsvd-power-tol-x1e4",
        "core/engine/rearranged_svd.py",
        "            if residual <= tol * max(scale, 1e-300):",
        "            if residual <= 1e4 * tol * max(scale, 1e-300):",
        "power SVD stops at 1e4 × its tolerance",
    ),
    # -- core/engine/approx.py ------------------------------------------------------------------
    Mutant(
        "approx-floor-not-applied",
        "core/engine/inverses.py",
        "        denom = torch.where(low, torch.full_like(denom, psd_floor), denom)\n",
        "",
        "issue 11 (a): the indefiniteness floor is counted but never applied",
    ),
    Mutant(
        "approx-floor-sign",
        "core/engine/inverses.py",
        "        denom = 1.0 + torch.outer(nu, mu)\n",
        "        denom = 1.0 - torch.outer(nu, mu)\n",
        "factored two-term solve with 1 − μν",
    ),
    Mutant(
        "approx-lanczos-tol-x1e4",
        "core/engine/approx.py",
        "        trip = op.triplets_lanczos(rank, tol)\n",
        "        trip = op.triplets_lanczos(rank, tol * 1e4)\n",
        "issue 11 (c): matrix-free Lanczos tolerance loosened × 1e4",
    ),
    Mutant(
        "approx-exact-sum-no-projection",
        "core/engine/inverses.py",
        "(lam.clamp_min(0.0) + damping)",
        "(lam + damping)",
        "exact dense solve without the PSD projection",
    ),
    Mutant(
        "approx-frobenius-no-cross-terms",
        "core/engine/approx.py",
        "        return float(((rs @ rs.T) * (ss @ ss.T)).sum())\n",
        "        return float(((rs @ rs.T) * (ss @ ss.T)).trace())\n",
        "‖Σ R⊗S‖² without the cross terms",
    ),
    Mutant(
        "approx-inner-sum-not-mean",
        "core/engine/approx.py",
        "            total += float((qa * qg).mean())\n",
        "            total += float((qa * qg).sum())\n",
        "⟨F, F̃⟩ misses 1/m",
    ),
    Mutant(
        "approx-shampoo-right-factor",
        "core/engine/approx.py",
        "    right = g.T @ (((a * a).sum(1) / m)[:, None] * g)\n",
        "    right = g.T @ (((g * g).sum(1) / m)[:, None] * g)\n",
        "Shampoo's R weighted by ‖g‖² instead of ‖ā‖²",
    ),
    Mutant(
        "approx-ekfac-no-1-over-m",
        "core/engine/approx.py",
        "    return ((g @ u_g) ** 2).T @ ((a @ u_a) ** 2) / a.shape[0]\n",
        "    return ((g @ u_g) ** 2).T @ ((a @ u_a) ** 2)\n",
        "EKFAC diagonal misses 1/m",
    ),
    Mutant(
        "approx-ekfac-solve-sqrt",
        "core/engine/inverses.py",
        "/ (scale + self.damping)",
        "/ (scale + self.damping**0.5)",
        "EKFAC solve adds √λ",
    ),
    Mutant(
        "approx-fix-sign-inverted",
        "core/engine/approx.py",
        "    return (-r, -s) if float(torch.trace(r)) < 0 else (r, s)",
        "    return (-r, -s) if float(torch.trace(r)) > 0 else (r, s)",
        "terms flipped to tr R ≤ 0 (R ⊗ S unchanged, factors negative)",
    ),
    Mutant(
        "approx-corrected-two-terms",
        "core/engine/methods.py",
        "build_kronecker_svd, svd_terms=1)",
        "build_kronecker_svd, svd_terms=2)",
        "KFAC-corrected adds two correction terms",
    ),
    Mutant(
        "approx-minres-preconditioner-raw",
        "core/engine/inverses.py",
        '        first64 = psd_part(KronEig.of(r1.to("cpu", torch.float64), '
        's1.to("cpu", torch.float64)))\n',
        '        first64 = KronEig.of(r1.to("cpu", torch.float64), s1.to("cpu", torch.float64))\n',
        "MINRES preconditioner without the PSD part (round-off negatives kept)",
    ),
    # -- core/engine/fisher.py ------------------------------------------------------------------
    Mutant(
        "fisher-relerr-inner-once",
        "core/engine/fisher.py",
        "sq = fro - 2.0 * approx.inner_fisher",
        "sq = fro - 1.0 * approx.inner_fisher",
        "‖F − F̃‖² with ⟨F, F̃⟩ counted once",
    ),
    Mutant(
        "fisher-eigvals-no-1-over-m",
        "core/engine/fisher.py",
        "        lam = torch.linalg.eigvalsh(self.gram / self.m).flip(0)\n",
        "        lam = torch.linalg.eigvalsh(self.gram).flip(0)\n",
        "eigenvalues of F from JJᵀ without 1/m",
    ),
    Mutant(
        "fisher-matvec-no-1-over-m",
        "core/engine/fisher.py",
        "        return self.g.T @ (jv[:, None] * self.a) / self.m\n",
        "        return self.g.T @ (jv[:, None] * self.a)\n",
        "exact block's F·v misses 1/m",
    ),
    Mutant(
        "fisher-inner-not-squared",
        "core/engine/fisher.py",
        "return float((cross**2).sum()) / (self.m * a.shape[0])",
        "return float(cross.sum()) / (self.m * a.shape[0])",
        "⟨F, F'⟩ of two batches without squaring the cross Gram",
    ),
    Mutant(
        "fisher-woodbury-no-m",
        "core/engine/inverses.py",
        "self.system = gram + m * damping * torch.eye(",
        "self.system = gram + damping * torch.eye(",
        "Woodbury system mλI + JJᵀ without m",
    ),
    Mutant(
        "fisher-mean-gradient-sum",
        "core/engine/fisher.py",
        "        return self.g.T @ self.a / self.m\n",
        "        return self.g.T @ self.a\n",
        "batch gradient summed, not averaged",
    ),
    # -- core/training/optim.py (edited by others: lines are matched by exact text) ---------------
    Mutant(
        "optim-inverse-on-t-cov",
        "core/training/optim.py",
        "        if self.steps % c.t_inv == 0 or not pre.inverses:\n",
        "        if self.steps % c.t_cov == 0 or not pre.inverses:\n",
        "issue 11 (b): inverses refreshed on T_cov instead of T_inv",
        "optim",
    ),
    Mutant(
        "optim-kl-lr-not-squared",
        "core/training/optim.py",
        "nu = min(1.0, math.sqrt(c.kl_clip / (c.lr**2 * vg)))",
        "nu = min(1.0, math.sqrt(c.kl_clip / (c.lr * vg)))",
        "KL clip with lr instead of lr²",
        "optim",
    ),
    Mutant(
        "optim-kl-uses-gradient-norm",
        "core/training/optim.py",
        "            vg += float((v64 * p64).sum())\n",
        "            vg += float((v64 * v64).sum())\n",
        "KL clip with ⟨V, V⟩ instead of ⟨V, P⟩",
        "optim",
    ),
    Mutant(
        "optim-ema-rho-swapped",
        "core/training/averages.py",
        "out.append((rho * r_old + (1.0 - rho) * r, rho * s_old + (1.0 - rho) * s))",
        "out.append(((1.0 - rho) * r_old + rho * r, (1.0 - rho) * s_old + rho * s))",
        "factor EMA weights swapped",
        "optim",
    ),
    Mutant(
        "optim-sign-alignment-inverted",
        "core/training/averages.py",
        "            if inner < 0:  # R ⊗ S",
        "            if inner > 0:  # R ⊗ S",
        "EMA sign alignment inverted",
        "optim",
    ),
    Mutant(
        "optim-window-fourth-root",
        "core/training/averages.py",
        "            scale = (w / total_w * big_m / c.a.shape[0]) ** 0.25\n",
        "            scale = (w / total_w * big_m / c.a.shape[0]) ** 0.5\n",
        "window rows scaled by √w instead of w^¼",
        "optim",
    ),
    Mutant(
        "optim-weight-decay-sign",
        "core/training/optim.py",
        "p.grad.add_(p, alpha=c.weight_decay)",
        "p.grad.add_(p, alpha=-c.weight_decay)",
        "weight decay with the wrong sign",
        "optim",
    ),
    Mutant(
        "optim-bias-first-column",
        "core/training/optim.py",
        "                b.grad.copy_(p32[:, -1])\n",
        "                b.grad.copy_(p32[:, 0])\n",
        "bias update from the first column",
        "optim",
    ),
    Mutant(
        "optim-ekfac-scale-no-ema",
        "core/training/averages.py",
        "self.scale = s_t if self.scale is None else rho * self.scale + (1.0 - rho) * s_t",
        "self.scale = s_t",
        "EKFAC diagonal not averaged",
        "optim",
    ),
    Mutant(
        "optim-solve-exact-mode",
        "core/training/curvature.py",
        '        return self._solver.solve(v, self.damping, mode="factored")\n',
        '        return self._solver.solve(v, self.damping, mode="exact")\n',
        "optimizer uses exact instead of factored damping",
        "optim",
    ),
    # -- issue 22: settings that must reach torch's optimizers (group "settings") ----------------
    Mutant(
        "i22-adam-beta1-fixed",
        "core/training/optim.py",
        "params, lr=c.lr, betas=(c.momentum, 0.999), weight_decay=c.weight_decay",
        "params, lr=c.lr, betas=(0.9, 0.999), weight_decay=c.weight_decay",
        "Adam's β₁ fixed at 0.9 instead of the momentum setting",
        "settings",
    ),
    Mutant(
        "i22-adam-no-weight-decay",
        "core/training/optim.py",
        "params, lr=c.lr, betas=(c.momentum, 0.999), weight_decay=c.weight_decay",
        "params, lr=c.lr, betas=(c.momentum, 0.999)",
        "Adam without weight decay",
        "settings",
    ),
    Mutant(
        "i22-sgd-no-weight-decay",
        "core/training/optim.py",
        "params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay",
        "params, lr=c.lr, momentum=c.momentum",
        "SGD without weight decay",
        "settings",
    ),
    Mutant(
        "i22-natural-no-momentum",
        "core/training/optim.py",
        "self.base = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum)\n",
        "self.base = torch.optim.SGD(params, lr=c.lr, momentum=0.0)\n",
        "natural-gradient step without momentum",
        "settings",
    ),
    # -- issue 22: named method lists (group "lists") ---------------------------------------------
    Mutant(
        "i22-methods-include-exact",
        "core/engine/methods.py",
        'METHODS: tuple[str, ...] = tuple(s.name for s in SPECS if s.kind == "approximation")',
        'METHODS: tuple[str, ...] = tuple(s.name for s in SPECS if s.kind != "first_order")',
        "the exact block listed among the approximations",
        "lists",
    ),
    Mutant(
        "i22-lanczos-two-terms-lost",
        "core/engine/methods.py",
        'svd_terms=2, algorithm="lanczos"),\n        terms=2,',
        'svd_terms=1, algorithm="lanczos"),\n        terms=1,',
        "Lanczos builds one term (and the registry agrees, so loops over it cannot see it)",
        "lists",
    ),
    Mutant(
        "i22-ekfac-default-lr",
        "core/training/defaults.py",
        '    "ekfac": Defaults(lr=0.03),\n',
        '    "ekfac": Defaults(lr=0.3),\n',
        "EKFAC's default lr 0.3 (the tuned one is 0.03)",
        "lists",
    ),
    # -- issue 22: loss over uneven chunks, containment, download resume (group "io") -------------
    Mutant(
        "i22-test-loss-chunk-weight",
        "core/training/runner.py",
        "total += float(per_sample_nll(self.model(xb), xb, self.loss_kind).sum())",
        "total += float(per_sample_nll(self.model(xb), xb, self.loss_kind).mean()) * chunk",
        "test loss weights every chunk by the nominal chunk size",
        "io",
    ),
    Mutant(
        "i22-inside-prefix",
        "core/training/datafiles.py",
        "return real == root or real.startswith(root.rstrip(os.sep) + os.sep)",
        "return real == root or real.startswith(root.rstrip(os.sep))",
        "data directory containment by string prefix (/data2 is inside /data)",
        "io",
    ),
    Mutant(
        "i22-resume-keeps-offset",
        "core/training/download.py",
        "        if not resumed:\n            start = 0\n",
        "        if not resumed:\n            pass\n",
        "a 200 answer to a range request counted from the partial file's size",
        "io",
    ),
    Mutant(
        "i22-resume-always-appends",
        "core/training/download.py",
        'with part.open("ab" if resumed else "wb") as out:',
        'with part.open("ab") as out:',
        "a restarted download appended to the partial file",
        "io",
    ),
    # -- issue 22: job parameters, cancelled jobs, result keys (group "jobs") ---------------------
    Mutant(
        "i22-job-seed-dropped",
        "core/server/jobs.py",
        "loss=loss, fisher=fisher, targets=x, seed=seed)",
        "loss=loss, fisher=fisher, targets=x, seed=0)",
        "the worker's capture ignores the seed",
        "jobs",
    ),
    Mutant(
        "i22-job-fisher-kind-dropped",
        "core/server/jobs.py",
        "loss=loss, fisher=fisher, targets=x, seed=seed)",
        'loss=loss, fisher="true", targets=x, seed=seed)',
        "the worker's capture ignores the Fisher kind",
        "jobs",
    ),
    Mutant(
        "i22-pool-hands-out-cancelling-job",
        "core/server/workers.py",
        'if job is not None and (job.state in ("failed", "cancelled") or job in self._cancel):',
        'if job is not None and job.state in ("failed", "cancelled"):',
        "a job being cancelled is handed to a new caller (the bug this round found)",
        "jobs",
    ),
    Mutant(
        "i22-pool-caches-cancelled",
        "core/server/workers.py",
        'if job is not None and (job.state in ("failed", "cancelled") or job in self._cancel):',
        'if job is not None and (job.state == "failed" or job in self._cancel):',
        "a cancelled job's cancellation handed out again",
        "jobs",
    ),
    Mutant(
        "i22-key-no-damping",
        "pages/ui/compute.py",
        'f"{fisher_key}|method={method}|damping={damping!r}|slow={slow}"',
        'f"{fisher_key}|method={method}|slow={slow}"',
        "method results cached without the damping",
        "jobs",
    ),
    Mutant(
        "i22-key-no-method",
        "pages/ui/compute.py",
        'f"{fisher_key}|method={method}|damping={damping!r}|slow={slow}"',
        'f"{fisher_key}|damping={damping!r}|slow={slow}"',
        "method results cached without the method",
        "jobs",
    ),
    Mutant(
        "i22-key-no-rank",
        "pages/ui/compute.py",
        'f"{fisher_key}|rank_curve={max_rank}"',
        'f"{fisher_key}|rank_curve"',
        "rank curve cached without its rank",
        "jobs",
    ),
    # -- issue 22: heatmap scales (group "views"), verdict ties ("paper") ----------------------
    Mutant(
        "i22-heatmap-signed-max",
        "core/views/figures.py",
        "magnitudes = np.abs(np.concatenate([exact.ravel(), approx.ravel()]))",
        "magnitudes = np.concatenate([exact.ravel(), approx.ravel()])",
        "block heatmap scale from the largest signed entry",
        "views",
    ),
    Mutant(
        "i22-heatmap-exact-only",
        "core/views/figures.py",
        "magnitudes = np.abs(np.concatenate([exact.ravel(), approx.ravel()]))",
        "magnitudes = np.abs(exact.ravel())",
        "block heatmap scale from F alone",
        "views",
    ),
    Mutant(
        "i22-heatmap-diff-sign",
        "core/views/figures.py",
        "    diff = approx - exact\n",
        "    diff = exact - approx\n",
        "difference panel F − F̃ under the title F̃ − F",
        "views",
    ),
    Mutant(
        "i22-factor-heatmap-signed-max",
        "core/views/figures.py",
        "scale = float(max(np.abs(mat).max(initial=0), 1e-300))",
        "scale = float(max(mat.max(initial=0), 1e-300))",
        "factor heatmap scale from the largest signed entry",
        "views",
    ),
    Mutant(
        "i22-training-tie-reproduced",
        "core/paper/verdicts.py",
        "    if mx + sx < mb - sb:\n",
        "    if mx + sx <= mb - sb:\n",
        "a training tie at the one-sd boundary counted as reproduced",
        "paper",
    ),
    Mutant(
        "i22-training-tie-baseline-wins",
        "core/paper/verdicts.py",
        "    if mb + sb < mx - sx:\n",
        "    if mb + sb <= mx - sx:\n",
        "a training tie reported as the baseline winning",
        "paper",
    ),
    Mutant(
        "i22-quality-tie-lower",
        "core/paper/verdicts.py",
        "lower = float((both[col] < both[base_col]).mean())",
        "lower = float((both[col] <= both[base_col]).mean())",
        "a quality tie counted as lower",
        "paper",
    ),
    Mutant(
        "i22-quality-share-strict",
        "core/paper/verdicts.py",
        'verdict = "reproduced" if lower >= QUALITY_SHARE else "not reproduced"',
        'verdict = "reproduced" if lower > QUALITY_SHARE else "not reproduced"',
        "exactly 90 % lower counted as not reproduced",
        "paper",
    ),
)


def copy_tree(dest: Path) -> None:
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)


def run_tests(
    root: Path, tests: tuple[str, ...], timeout: float, deselect: list[str], stop_first: bool
) -> tuple[str, float, str, list[str]]:
    """('passed' | 'failed' | 'timeout', seconds, last line of pytest's output, failed ids)."""
    present = [t for t in tests if (root / t).exists()]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *present]
    cmd += ["-x"] if stop_first else []
    for node in deselect:
        cmd += ["--deselect", node]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start, "", []
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    last = lines[-1] if lines else proc.stderr.strip()[-200:]
    # "FAILED <node id> - <message>"; a node id may hold spaces (parameter ids).
    failed = [
        line.split(" ", 1)[1].split(" - ", 1)[0]
        for line in lines
        if line.startswith(("FAILED ", "ERROR ")) and "::" in line
    ]
    outcome = "passed" if proc.returncode == 0 else "failed"
    return outcome, time.perf_counter() - start, last, failed


def per_module(rows: list[tuple[Mutant, str, float]]) -> list[str]:
    """One Markdown row per mutated file: killed, applied, kill rate, not applied."""
    out = []
    for path in sorted({m.path for m, _, _ in rows}):
        verdicts = [v for m, v, _ in rows if m.path == path]
        applied = [v for v in verdicts if v.startswith(("killed", "survived"))]
        killed = sum(v.startswith("killed") for v in applied)
        rate = f"{100 * killed / len(applied):.0f} %" if applied else "–"
        out.append(
            f"| {path} | {killed} | {len(applied)} | {rate} | {len(verdicts) - len(applied)} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if not args.only or m.id in args.only]
    unknown = set(args.only or ()) - {m.id for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutant id(s) {sorted(unknown)}; see MUTANTS in this file")

    rows: list[tuple[Mutant, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="kronoscope-mutants-") as tmp:
        root = Path(tmp) / "repo"
        copy_tree(root)
        broken: dict[str, list[str]] = {}
        baseline_ok = {}
        for group in sorted({m.group for m in mutants}):
            outcome, seconds, last, failed = run_tests(root, GROUPS[group], args.timeout, [], False)
            broken[group] = failed
            print(f"baseline {group}: {outcome} in {seconds:.0f} s ({last})", flush=True)
            for node in failed:
                print(f"  fails before any mutation, deselected: {node}", flush=True)
            if outcome == "failed" and failed:
                # Control: with those deselected the unpatched copy must pass, or every
                # mutant of the group would look killed.
                outcome, _, last, _ = run_tests(root, GROUPS[group], args.timeout, failed, True)
                print(f"  control with them deselected: {outcome} ({last})", flush=True)
            baseline_ok[group] = outcome == "passed"
        for m in mutants:
            path = root / m.path
            original = path.read_text()
            count = original.count(m.old)
            if count != 1:
                verdict, seconds = ("not applied" if count == 0 else "not applied (ambiguous)"), 0.0
            elif not baseline_ok[m.group]:
                verdict, seconds = "not run (baseline fails)", 0.0
            else:
                path.write_text(original.replace(m.old, m.new, 1))
                try:
                    outcome, seconds, _, _ = run_tests(
                        root, GROUPS[m.group], args.timeout, broken[m.group], True
                    )
                finally:
                    path.write_text(original)
                verdict = {"failed": "killed", "timeout": "killed (timeout)"}.get(
                    outcome, "survived"
                )
            rows.append((m, verdict, seconds))
            print(f"{m.id:40s} {verdict:18s} {seconds:6.0f} s  {m.what}", flush=True)

    applied = [r for r in rows if r[1].startswith(("killed", "survived"))]
    killed = [r for r in applied if r[1].startswith("killed")]
    score = f"{len(killed)}/{len(applied)} killed"
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s), "
        f"Python {platform.python_version()}; score: {score}",
        "",
        *[
            f"Deselected ({group}: failing before any mutation): `{node}`"
            for group, nodes in sorted(broken.items())
            for node in nodes
        ],
        "",
        "Per module (killed / applied; not-applied mutants are listed, never counted):",
        "",
        "| module | killed | applied | kill rate | not applied |",
        "|---|---|---|---|---|",
        *per_module(rows),
        "",
        "| mutant | file | bug | result | seconds |",
        "|---|---|---|---|---|",
    ]
    for m, verdict, seconds in rows:
        lines.append(f"| `{m.id}` | {m.path} | {m.what} | {verdict} | {seconds:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
