"""Library calls that pick a thread count restore the caller's afterwards (no hidden process-wide change)."""

from __future__ import annotations

import pytest
import torch

from ctrzoo.threads import torch_threads
from ctrzoo.train.run import train_bundle


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_torch_threads_sets_and_restores_even_on_error(two_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    with torch_threads(None):
        assert torch.get_num_threads() == 2


def test_training_with_one_thread_leaves_the_callers_count(two_threads, synth_prepared, tmp_path):
    seen = []
    train_bundle("deepfm", synth_prepared["criteo"], tmp_path / "b",
                 overrides={"epochs": 1, "max_steps": 3, "threads": 1, "hparams": {"emb_dim": 4, "mlp": [8]}},
                 progress=False, verbose=False, on_step=lambda step: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {1}  # the configured count while training
    assert torch.get_num_threads() == 2  # and the caller's afterwards
