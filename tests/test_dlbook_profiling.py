"""dlbook.profiling: phase timing returns sane numbers and trains exactly like a plain loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlbook import profiling


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(8, 6, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(3)]
    return model, batches, torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize("seed", [0, 1])
def test_time_training_step_trains_like_a_plain_loop(seed):
    model, batches, opt = _setup(seed)
    times = profiling.time_training_step(model, batches, opt, steps=4, warmup=1)
    assert list(times) == list(profiling.PHASES)
    assert all(t > 0 for t in times.values())
    ref, _, ref_opt = _setup(seed)
    for i in range(5):  # cycles through the 3 batches
        x, y = batches[i % 3]
        F.cross_entropy(ref(x), y).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_time_training_step_with_autocast_and_bad_input():
    model, batches, opt = _setup()
    times = profiling.time_training_step(model, batches, opt, steps=2, autocast_dtype=torch.bfloat16)
    assert set(times) == set(profiling.PHASES)
    with pytest.raises(ValueError, match="no batches"):
        profiling.time_training_step(model, [], opt, steps=1)
    with pytest.raises(ValueError):
        profiling.time_training_step(model, batches, opt, steps=0)


def test_phase_timer_accumulates():
    timer = profiling.PhaseTimer()
    for _ in range(3):
        with timer("a"):
            sum(range(1000))
    with timer("b"):
        pass
    assert list(timer.mean()) == ["a", "b"] and timer.counts == {"a": 3, "b": 1}
    assert timer.mean()["a"] == pytest.approx(timer.totals["a"] / 3)
