"""dlbook.memory: counted bytes against tensors of known size, and what torch.utils.checkpoint saves."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from dlbook import memory as M


def test_peak_counts_live_storages_and_forgets_freed_ones():
    def fn():
        a = torch.ones(1000)  # 4000 bytes
        b = torch.ones(500)  # 2000
        del a
        c = torch.ones(250)  # 1000: the peak stays 6000
        return b, c

    (b, c), peak = M.peak_memory(fn)
    assert peak == 6000


def test_views_and_in_place_results_of_existing_tensors_are_free():
    x = torch.randn(100, 100)

    def fn():
        y = x.t()
        y.mul_(2)
        return x.view(-1)[:10] + 1  # 10 new floats

    _, peak = M.peak_memory(fn)
    assert peak == 40


def test_tracker_current_drops_after_free():
    with M.MemoryTracker() as tracker:
        a = torch.zeros(256)
        assert tracker.current == 1024
        del a
        torch.zeros(1)  # the next op notices
        assert tracker.update() == 0
    assert tracker.peak == 1024


def _mlp(depth: int = 4, width: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())])


def test_saved_bytes_count_each_activation_once():
    model, x = _mlp(), torch.randn(8, 16)
    _, nbytes = M.saved_tensor_bytes(model, x, exclude=model.parameters())
    # saved: the input x (first Linear) and each ReLU's output (which the next Linear saves as well)
    assert nbytes == 5 * 8 * 16 * 4
    _, with_params = M.saved_tensor_bytes(model, x)
    # a Linear saves (a view of) its weight to pass gradients back to its input; the first one has none to pass
    assert with_params == nbytes + 3 * 16 * 16 * 4


def test_checkpoint_saves_less_and_the_peak_includes_recomputation():
    model, x = _mlp(depth=8, width=32), torch.randn(64, 32)

    def step(use_checkpoint: bool):
        out = checkpoint(model, x, use_reentrant=False) if use_checkpoint else model(x)
        out.sum().backward()

    _, plain_saved = M.saved_tensor_bytes(model, x, exclude=model.parameters())
    _, ckpt_saved = M.saved_tensor_bytes(lambda: checkpoint(model, x, use_reentrant=False), exclude=model.parameters())
    assert ckpt_saved == 64 * 32 * 4 < plain_saved  # only the region's input
    _, plain_peak = M.peak_memory(step, False)
    _, ckpt_peak = M.peak_memory(step, True)
    assert 0 < ckpt_peak <= plain_peak


def test_bad_input():
    with pytest.raises(TypeError, match="callable"):
        M.peak_memory(3)
    with pytest.raises(TypeError, match="exclude should hold tensors, got int"):
        M.saved_tensor_bytes(lambda: None, exclude=[1])
