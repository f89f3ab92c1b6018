"""dlbook.prune: masks against a direct sort, structured masks, model pruning and sparsity."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import prune


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(1,), (7,), (4, 5), (3, 2, 3, 3)])
@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_magnitude_prune_mask_matches_sort(seed, shape, sparsity):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    mask = prune.magnitude_prune_mask(w, sparsity)
    k = round(sparsity * w.numel())
    expected = torch.ones(w.numel())
    expected[torch.argsort(w.abs().flatten())[:k]] = 0
    assert mask.shape == w.shape and mask.dtype == w.dtype
    torch.testing.assert_close(mask, expected.reshape(shape))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60), st.floats(0.0, 1.0))
def test_kept_weights_are_never_smaller_than_pruned(seed, n, sparsity):
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    mask = prune.magnitude_prune_mask(w, sparsity)
    assert int((mask == 0).sum()) == round(sparsity * n)
    if 0 < int(mask.sum()) < n:
        assert w.abs()[mask == 1].min() >= w.abs()[mask == 0].max()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dim", [0, 1])
def test_structured_mask_zeroes_whole_slices_of_smallest_norm(seed, dim):
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(seed))
    mask = prune.structured_prune_mask(w, 0.5, dim=dim)
    n = w.shape[dim]
    norms = w.transpose(0, dim).reshape(n, -1).norm(dim=1)
    dropped = set(torch.argsort(norms)[: round(0.5 * n)].tolist())
    per_slice = mask.transpose(0, dim).reshape(n, -1)
    for i in range(n):
        assert bool((per_slice[i] == (0 if i in dropped else 1)).all())
    with pytest.raises(ValueError, match="2 dimensions"):
        prune.structured_prune_mask(torch.randn(5), 0.5)


def test_bad_sparsity_and_type():
    with pytest.raises(ValueError, match="between 0 and 1"):
        prune.magnitude_prune_mask(torch.randn(3), 1.5)
    with pytest.raises(TypeError):
        prune.magnitude_prune_mask([1.0, 2.0], 0.5)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 20), nn.ReLU(), nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 3))


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.8])
def test_prune_model_unstructured_and_permanent(sparsity):
    model = prune.prune_model(_mlp(), sparsity)
    assert prune.weight_sparsity(model) == pytest.approx(sparsity, abs=0.01)
    assert float((model[4].weight == 0).float().mean()) < 0.05  # classifier untouched
    # masks survive a training step
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    assert prune.weight_sparsity(model) >= sparsity - 0.01
    prune.make_permanent(model)
    assert not hasattr(model[0], "weight_mask")
    assert prune.weight_sparsity(model) >= sparsity - 0.01


def test_prune_model_structured_removes_neurons():
    model = prune.prune_model(_mlp(), 0.5, structured=True)
    rows = (model[0].weight == 0).all(dim=1)
    assert int(rows.sum()) == 10
    with pytest.raises(ValueError, match="no prunable"):
        prune.weight_sparsity(nn.Sequential(nn.Linear(3, 2)))
