"""core/server/model_store.py: trained models shared by sessions and kept on disk (issue 8)."""

from __future__ import annotations

import time

import torch

from core.server.model_store import ModelStore, StoredRun
from core.server.run_queue import RunRegistry
from core.training.data import load_dataset
from core.training.models import build_model
from core.training.optim import OptimizerConfig
from core.training.runner import RunConfig, TrainingRun


def _wait(entry, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not entry.run.done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert entry.run.done


def test_a_trained_model_is_kept_on_disk_and_never_trained_again(tmp_path):
    ds = load_dataset("digits")
    config = RunConfig(dataset="digits", optimizer=OptimizerConfig("adam", lr=1e-3),
                       preset="digits", steps=5, batch_size=32, seed=3, eval_every=5)  # fmt: skip
    make_model = lambda: build_model("digits", input_dim=64, loss="bce", seed=3)  # noqa: E731
    trained = []

    def make_run() -> TrainingRun:
        trained.append(1)
        return TrainingRun(config, dataset=ds, model=make_model())

    first = ModelStore(tmp_path, RunRegistry())
    entry = first.acquire("key-1", make_run, make_model)
    assert first.acquire("key-1", make_run, make_model) is entry  # a second session waits
    _wait(entry)
    first.persist("key-1", entry)
    first.release("key-1", entry)
    first.release("key-1", entry)
    assert len(trained) == 1 and len(list(tmp_path.glob("*.pt"))) == 1

    def must_not_train() -> TrainingRun:
        raise AssertionError("a stored model was trained again")

    restarted = ModelStore(tmp_path, RunRegistry())  # a new server process: nothing in memory
    again = restarted.acquire("key-1", must_not_train, make_model)
    assert isinstance(again.run, StoredRun) and again.run.status == "finished"
    for name, p in entry.run.model.state_dict().items():
        torch.testing.assert_close(again.run.model.state_dict()[name], p.cpu(), rtol=0, atol=0)
    assert len(again.run.dataframe()) == len(entry.run.dataframe())
    other = restarted.acquire("key-2", make_run, make_model)  # another setting: trains
    assert len(trained) == 2
    restarted.release("key-2", other)  # its last waiter left before the end: stopped
    deadline = time.monotonic() + 30
    while not other.group.done and time.monotonic() < deadline:
        time.sleep(0.05)
    assert other.group.done and "key-2" not in restarted.entries


def test_a_damaged_file_means_training_again(tmp_path):
    store = ModelStore(tmp_path, RunRegistry())
    path = store._file("k")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a torch file")
    assert store._load("k", lambda: build_model("digits", input_dim=64, loss="bce")) is None
