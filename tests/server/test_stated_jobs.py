"""Stated answers for the server's jobs (issue 22): every parameter of a job reaches the worker
process (checked against a hand-derived Fisher capture), a cancelled job runs again when asked
again, and the explorer's result keys change with every setting that changes the result.

The pool's workers are real processes where the test is about crossing into them; the result
keys are checked through pages/ui/compute.py with an in-process pool (``WorkerPool(0)``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from types import SimpleNamespace

import pytest
import torch

from core.engine.layers import linear_layers
from core.server import jobs
from core.server.workers import WorkerPool
from core.training.models import Autoencoder


def _model_and_batch():
    model = Autoencoder([6, 4, 3], "bce", seed=0)
    x = torch.rand(10, 6, generator=torch.Generator().manual_seed(2))
    return model, x


def _layer_input(model, layer_name: str, x: torch.Tensor) -> torch.Tensor:
    layer = dict(linear_layers(model))[layer_name]
    seen = []
    handle = layer.register_forward_hook(lambda _m, inp, out: seen.append((inp[0], out)))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def gated(gate: str, value: int) -> int:
    """Runs until the file ``gate`` exists; module-level so that a worker can import it."""
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def triple(value: int) -> int:
    return 3 * value


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(1, max_results=16)
    yield p
    p.close()


def _get(pool, key, fn, *args):
    job = pool.acquire(key, fn, *args, budget_s=60)
    try:
        assert job.wait(60)
        return job.result()
    finally:
        pool.release(job)


# -- (f) the job's parameters reach the worker ----------------------------------------------


def test_empirical_fisher_of_the_output_layer_in_a_worker(pool):
    """Output layer, Bernoulli likelihood, empirical Fisher: ā_i = [h_i, 1] (h: the layer's
    input) and g_i = σ(s_i) − x_i, whatever the seed."""
    model, x = _model_and_batch()
    last = list(dict(linear_layers(model)))[-1]
    h, s = _layer_input(model, last, x)
    for seed in (0, 5):
        fisher = _get(
            pool, f"emp{seed}", jobs.layer_fisher, model, x, last, "bce", "empirical", seed
        )
        a = torch.cat([h, torch.ones(h.shape[0], 1)], dim=1)
        torch.testing.assert_close(
            fisher.a.to(torch.float64), a.to(torch.float64), rtol=1e-5, atol=1e-6
        )
        g = torch.sigmoid(s) - x
        torch.testing.assert_close(
            fisher.g.to(torch.float64), g.to(torch.float64), rtol=1e-5, atol=1e-6
        )


def test_every_parameter_of_the_capture_changes_the_result_in_a_worker(pool):
    model, x = _model_and_batch()
    names = list(dict(linear_layers(model)))
    base = ("true", 1)
    got = {}
    for key, (layer, kind, seed) in {
        "base": (names[-1], *base),
        "seed": (names[-1], "true", 2),
        "kind": (names[-1], "empirical", 1),
        "layer": (names[0], *base),
    }.items():
        got[key] = _get(pool, f"cap-{key}", jobs.layer_fisher, model, x, layer, "bce", kind, seed)
    here = jobs.layer_fisher(model, x, names[-1], "bce", "true", 1)  # the same, in this process
    torch.testing.assert_close(got["base"].g, here.g)
    torch.testing.assert_close(got["base"].a, here.a)
    assert not torch.allclose(got["seed"].g, got["base"].g)  # the seed draws the targets
    assert not torch.allclose(got["kind"].g, got["base"].g)
    assert got["layer"].a.shape[1] == 6 + 1 and got["base"].a.shape[1] == 4 + 1
    assert got["base"].g.shape == (10, 6) and got["layer"].g.shape == (10, 4)


# -- (g) a cancelled job runs again when asked again ----------------------------------------


def test_a_cancelled_queued_job_runs_when_asked_again(pool, tmp_path):
    gate = tmp_path / "gate"
    blocker = pool.acquire("blocker", gated, str(gate), 0, budget_s=60)
    queued = pool.acquire("again-q", triple, 4, budget_s=60)
    assert queued.state == "queued"
    pool.release(queued)  # nobody waits: cancelled while queued
    assert queued.wait(10) and queued.state == "cancelled"
    gate.touch()
    assert _get(pool, "again-q", triple, 4) == 12
    assert blocker.wait(60)
    pool.release(blocker)


def test_a_cancelled_running_job_runs_when_asked_again(pool, tmp_path):
    gate = tmp_path / "gate"
    job = pool.acquire("again-r", gated, str(gate), 7, budget_s=60)
    deadline = time.monotonic() + 60
    while job.state != "running":
        assert time.monotonic() < deadline, job.state
        time.sleep(0.01)
    pool.release(job)  # the last waiter leaves a running job: it is cancelled
    again = pool.acquire("again-r", gated, str(gate), 7, budget_s=60)
    try:
        # the gate stays shut until the first run is cancelled, so it cannot end "done"
        assert job.wait(60) and job.state == "cancelled"
        gate.touch()
        assert again.wait(60)
        assert again.result() == 7  # a fresh run, not the cancellation of the first
    finally:
        pool.release(again)


# -- (e) the explorer's result keys cover every setting ---------------------------------------


@pytest.fixture
def compute(monkeypatch):
    from pages.ui import compute as module

    inline = WorkerPool(0, max_results=64)
    monkeypatch.setattr(module, "services", lambda: SimpleNamespace(pool=inline))
    yield module
    inline.close()


@pytest.fixture(scope="module")
def fisher():
    model, x = _model_and_batch()
    return jobs.layer_fisher(model, x, list(dict(linear_layers(model)))[-1], "bce", "true", 0)


def _results(compute, fisher, methods, damping):
    key = compute.FisherKey("model", "layer", "true", fisher.m)
    return compute.method_results(key, methods, damping=damping, slow=False, fisher=fisher)


def test_method_results_change_with_damping(compute, fisher):
    first = _results(compute, fisher, ["kfac"], 1e-3)["kfac"]
    second = _results(compute, fisher, ["kfac"], 1.0)["kfac"]
    assert math.isfinite(first.ng_cosine) and math.isfinite(second.ng_cosine)
    assert first.ng_cosine != second.ng_cosine  # not the cached result of the other damping
    again = _results(compute, fisher, ["kfac"], 1e-3)["kfac"]
    assert again is first  # the same settings: the cached result


def test_method_results_are_per_method(compute, fisher):
    both = _results(compute, fisher, ["kfac", "kpsvd"], 1e-3)
    assert both["kfac"].method == "kfac" and both["kpsvd"].method == "kpsvd"
    assert both["kfac"].relative_error != both["kpsvd"].relative_error


def test_rank_curve_changes_with_the_rank(compute, fisher):
    key = compute.FisherKey("model", "layer", "true", fisher.m)
    two = compute.rank_curve(key, 2, fisher)
    three = compute.rank_curve(key, 3, fisher)
    assert list(two.ranks) == [1, 2] and list(three.ranks) == [1, 2, 3]
    assert compute.rank_curve(key, 2, fisher) is two  # the same settings: the cached result


def test_result_keys_are_equal_for_equal_inputs_and_differ_for_any_other():
    """Every key of pages/ui/compute.py, built twice from the same inputs, is equal and hashes
    equal; changing any one field, or asking for another kind of result from the same inputs,
    gives a key no other input shares."""
    from pages.ui.compute import (
        BlockKey,
        FigureKey,
        FisherKey,
        MethodKey,
        RankCurveKey,
        RankKey,
        SpectraKey,
    )

    def build(model="m", layer="fc1", kind="true", m=256, method="kfac", damping=1e-3, slow=False,
              rank=2, max_rank=10, methods=("kfac", "kpsvd"), contrast=0.99):  # fmt: skip
        f = FisherKey(model, layer, kind, m)
        result = MethodKey(f, method, damping, slow)
        block = BlockKey(result)
        ranked = BlockKey(RankKey(f, rank))
        spec = SpectraKey(f, damping, slow, methods)
        figs = [FigureKey(block, contrast), FigureKey(ranked, contrast), FigureKey(spec)]
        return [f, result, block, ranked, RankCurveKey(f, max_rank), spec, *figs]

    base = build()
    assert build() == base and [hash(k) for k in build()] == [hash(k) for k in base]
    assert len(set(base)) == len(base)  # one input, several results: never one key
    changes = dict(model="m2", layer="fc2", kind="empirical", m=128, method="kpsvd",
                   damping=1e-2, slow=True, rank=3, max_rank=9, methods=("kfac",),
                   contrast=1.0)  # fmt: skip
    seen = set(base)
    for name, value in changes.items():
        changed = build(**{name: value})
        moved = {k for k in changed if k not in set(base)}
        assert moved, f"changing {name} changed no key"
        assert not moved & (seen - set(base)), f"changing {name} gave another change's key"
        seen |= moved
    with pytest.raises(dataclasses.FrozenInstanceError):
        base[0].m = 1  # type: ignore[misc]
