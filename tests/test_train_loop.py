"""The shared training loop: interrupted training resumes to the same weights; schedule."""

import itertools

import pytest
import torch

from specbench_cli.train.loop import CHECKPOINT, TrainSettings, lr_at, train


def problem(seed=0):
    """A module initialised from `seed` and a data stream that, like `train.data.batches`, has its
    own fixed generator (the loop replays it to resume)."""
    torch.manual_seed(seed)
    module = torch.nn.Linear(4, 1)
    gen = torch.Generator().manual_seed(123)
    data = ((torch.randn(8, 4, generator=gen), torch.randn(8, 1, generator=gen))
            for _ in itertools.count())

    def step(batch):
        x, y = batch
        return ((module(x) - y) ** 2).mean(), {}
    return module, step, data


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    settings = TrainSettings(steps=30, lr=0.05, warmup=3, checkpoint_every=5)
    ref, step, data = problem()
    train(ref, step, data, settings, tmp_path / "ref")

    module, step, data = problem()
    calls = {"n": 0}

    def interrupting(batch):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return step(batch)
    with pytest.raises(KeyboardInterrupt):
        train(module, interrupting, data, settings, tmp_path / "cut")
    saved = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=False)
    assert saved["step"] == 12           # steps 0..11 done when step 12 was interrupted

    fresh, step, data = problem(seed=1)  # different init: everything must come from the checkpoint
    train(fresh, step, data, settings, tmp_path / "cut")
    for a, b in zip(ref.parameters(), fresh.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_schedule_warms_up_then_decays_to_zero():
    s = TrainSettings(steps=100, lr=1.0, warmup=10)
    assert lr_at(0, s) == pytest.approx(0.1) and lr_at(9, s) == pytest.approx(1.0)
    assert lr_at(10, s) == pytest.approx(1.0) and lr_at(100, s) == pytest.approx(0.0)
