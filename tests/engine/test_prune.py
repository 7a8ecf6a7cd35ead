"""OBS pruning with any approximation's curvature (core/engine/prune.py) against the dense OBS
formula δ = −M⁻¹E (EᵀM⁻¹E)⁻¹ Eᵀw, with M⁻¹ the approximation's own damped solve formed column by
column (tests/engine/downstream_oracles.py)."""

from __future__ import annotations

import pytest
import torch

from core.engine import weight_metric as wm
from core.engine.kron import vec
from core.engine.methods import SHOWN, approximate
from core.engine.prune import (
    check_sparsity,
    magnitude_prune,
    obs_prune,
    obs_update,
    prune_with_metric,
    saliency,
)
from tests.engine.downstream_oracles import DAMPING, factored, layer_batch, solve_matrix

F64 = torch.float64


def random_mask(shape, fraction, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen) < fraction


def dense_obs(inverse, w, mask):
    """δ = −M⁻¹E (EᵀM⁻¹E)⁻¹ Eᵀw and the increase wᵀE (EᵀM⁻¹E)⁻¹ Eᵀw (= δᵀMδ), densely."""
    q = torch.nonzero(vec(mask)).squeeze(1)
    e = torch.eye(w.numel(), dtype=F64)[:, q]
    y = torch.linalg.solve(e.T @ inverse @ e, e.T @ vec(w))
    return -inverse @ e @ y, float(vec(w) @ e @ y)


@pytest.mark.parametrize("method", SHOWN)
@pytest.mark.parametrize("kind", ["random", "rows", "columns"])
def test_update_is_the_dense_obs_formula_and_zeroes_the_pruned_weights(method, kind):
    a, g, w = layer_batch()
    approx = approximate(method, a, g)
    metric = wm.weight_metric(approx, DAMPING)
    mask = {
        "random": random_mask(w.shape, 0.4, 1),
        "rows": torch.tensor([True, False, False, True, False])[:, None].expand(5, 6),
        "columns": torch.tensor([False, True, False, False, True, True])[None, :].expand(5, 6),
    }[kind].clone()
    new, converged, _ = obs_update(metric, w, mask)
    inverse = solve_matrix(approx, DAMPING)
    delta, increase = dense_obs(inverse, w, mask)
    assert converged
    assert torch.all(new[mask] == 0.0)  # exactly, not to a tolerance
    assert torch.allclose(vec(new - w), delta, rtol=1e-7, atol=1e-9 * float(w.abs().max()))
    assert metric.quadratic(new - w) == pytest.approx(increase, rel=1e-7)


@pytest.mark.parametrize("method", SHOWN)
def test_saliencies_are_the_dense_formulas(method):
    a, g, w = layer_batch()
    approx = approximate(method, a, g)
    metric = wm.weight_metric(approx, DAMPING)
    inverse = solve_matrix(approx, DAMPING)
    single = vec(w) ** 2 / (2 * torch.diagonal(inverse))
    assert torch.allclose(vec(saliency(metric, w, "unstructured")), single, rtol=1e-8)
    rows = [torch.arange(p, 30, 5) for p in range(5)]  # vec index of (p, i) is 5 i + p
    columns = [torch.arange(5 * i, 5 * i + 5) for i in range(6)]
    for structure, groups in (("rows", rows), ("columns", columns)):
        expected = torch.stack(
            [0.5 * vec(w)[q] @ torch.linalg.solve(inverse[q][:, q], vec(w)[q]) for q in groups]
        )
        assert torch.allclose(saliency(metric, w, structure), expected, rtol=1e-8)


def test_kfac_saliency_is_the_product_of_the_factor_inverse_diagonals():
    """For A ⊗ G: diag(F̃⁻¹) = diag(Ã⁻¹) ⊗ diag(G̃⁻¹) (factored damping)."""
    a, g, w = layer_batch()
    a_d, g_d = factored(a.T @ a / 60, g.T @ g / 60, DAMPING)
    diag = torch.kron(torch.diagonal(torch.linalg.inv(a_d)), torch.diagonal(torch.linalg.inv(g_d)))
    metric = wm.weight_metric(approximate("kfac", a, g), DAMPING)
    assert torch.allclose(vec(metric.inverse_diagonal()), diag, rtol=1e-12)
    got = saliency(metric, w, "unstructured")
    assert torch.allclose(vec(got), vec(w) ** 2 / (2 * diag), rtol=1e-12)
    # a whole column i: ½ [Ã⁻¹]_ii⁻¹ w_iᵀ G̃ w_i
    columns = 0.5 * ((w * (g_d @ w)).sum(0)) / torch.diagonal(torch.linalg.inv(a_d))
    assert torch.allclose(saliency(metric, w, "columns"), columns, rtol=1e-12)


@pytest.mark.parametrize("structure", ["unstructured", "rows", "columns"])
def test_one_shot_removes_the_least_salient_units(structure):
    a, g, w = layer_batch()
    approx = approximate("kfac_corrected", a, g)
    metric = wm.weight_metric(approx, DAMPING)
    result = obs_prune(w, approx, 0.5, structure=structure, damping=DAMPING)
    scores = saliency(metric, w, structure).reshape(-1)
    units = scores.numel()
    chosen = torch.argsort(scores)[: round(0.5 * units)]
    expected = torch.zeros(units, dtype=torch.bool)
    expected[chosen] = True
    if structure == "rows":
        expected = expected[:, None].expand(5, 6)
    elif structure == "columns":
        expected = expected[None, :].expand(5, 6)
    assert torch.equal(result.mask, expected.reshape(5, 6))
    assert result.sparsity == pytest.approx(float(expected.sum()) / 30)
    assert torch.all(result.weight[result.mask] == 0.0)
    new, _, _ = obs_update(metric, w, result.mask)
    assert torch.allclose(result.weight, new)
    assert result.objective == pytest.approx(metric.quadratic(new - w))


def test_shots_rank_again_and_update_from_the_original_weights():
    a, g, w = layer_batch(da=12, dg=10)
    approx = approximate("kfac", a, g)
    metric = wm.weight_metric(approx, DAMPING)
    one = prune_with_metric(metric, w, 0.6)
    many = prune_with_metric(metric, w, 0.6, shots=4)
    assert int(many.mask.sum()) == int(one.mask.sum()) == 72
    assert not torch.equal(many.mask, one.mask)  # re-ranking after compensation changes the set
    again, _, _ = obs_update(metric, w, many.mask)
    assert torch.allclose(many.weight, again)  # the final weights depend only on the final set
    # each shot's first choice is that shot's least salient weight
    first = prune_with_metric(metric, w, 0.6 / 4)
    assert torch.all(many.mask[first.mask])


def test_obs_beats_magnitude_on_its_own_model():
    a, g, w = layer_batch()
    for method in ("kfac", "deflation", "exact"):
        approx = approximate(method, a, g)
        metric = wm.weight_metric(approx, DAMPING)
        for structure in ("unstructured", "rows", "columns"):
            base = magnitude_prune(w, 0.5, structure=structure)
            compensated, _, _ = obs_update(metric, w, base.mask)
            assert metric.quadratic(compensated - w) <= metric.quadratic(base.weight - w)
            assert obs_prune(w, approx, 0.5, structure=structure).objective <= metric.quadratic(
                base.weight - w
            )


def test_magnitude_baseline():
    _, _, w = layer_batch()
    result = magnitude_prune(w, 0.3)
    kept = w.abs()[~result.mask]
    assert int(result.mask.sum()) == 9 and float(w.abs()[result.mask].max()) <= float(kept.min())
    assert torch.equal(result.weight, w * ~result.mask)
    rows = magnitude_prune(w, 0.4, structure="rows")
    norms = torch.linalg.norm(w, dim=1)
    assert torch.equal(rows.mask[:, 0], norms <= torch.sort(norms).values[1])


def test_zero_sparsity_changes_nothing_and_one_unit_is_always_kept():
    a, g, w = layer_batch()
    approx = approximate("kfac", a, g)
    assert torch.equal(obs_prune(w, approx, 0.0).weight, w)
    result = obs_prune(w, approx, 0.99, structure="rows")
    assert int(result.mask[:, 0].sum()) == 4  # 5 rows: round(4.95) = 5 capped at 4


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), "half", True])
def test_sparsity_out_of_range_is_refused(sparsity):
    a, g, w = layer_batch()
    with pytest.raises(ValueError, match="sparsity must"):
        obs_prune(w, approximate("kfac", a, g), sparsity)
    with pytest.raises(ValueError, match="sparsity must"):
        magnitude_prune(w, sparsity)
    with pytest.raises(ValueError, match="sparsity must"):
        check_sparsity(sparsity)


def test_bad_inputs_are_refused():
    a, g, w = layer_batch()
    kfac = approximate("kfac", a, g)
    with pytest.raises(ValueError, match="unknown structure 'blocks'"):
        obs_prune(w, kfac, 0.5, structure="blocks")
    with pytest.raises(ValueError, match="shots must be an integer"):
        obs_prune(w, kfac, 0.5, shots=0)
    with pytest.raises(ValueError, match=r"W has shape \(6, 5\)"):
        obs_prune(w.T, kfac, 0.5)
    few, gf, _ = layer_batch(m=3)
    with pytest.raises(ValueError, match="singular.*damping > 0"):
        obs_prune(w, approximate("kfac", few, gf), 0.5, damping=0.0)
    with pytest.raises(ValueError, match="singular.*damping > 0"):
        obs_prune(w, approximate("exact", few, gf), 0.5, damping=0.0)
    metric = wm.weight_metric(kfac, DAMPING)
    with pytest.raises(ValueError, match="mask must be a boolean tensor"):
        obs_update(metric, w, torch.zeros(5, 6))
    with pytest.raises(ValueError, match="removes every weight"):
        obs_update(metric, w, torch.ones(5, 6, dtype=torch.bool))
