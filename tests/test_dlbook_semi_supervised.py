"""dlbook.semi_supervised: pseudo-labels and FixMatch's loss against direct formulas and autograd, the
augmentations, and the training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import semi_supervised as ssl


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,c", [(1, 2), (7, 10), (16, 3)])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.8, 0.95, 1.0])
def test_pseudo_labels_match_softmax(seed, n, c, threshold):
    logits = 4 * torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mask, labels = ssl.pseudo_labels(logits, threshold)
    probs = np.exp(logits.numpy() - logits.numpy().max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert mask.dtype == torch.bool and labels.dtype == torch.int64
    np.testing.assert_array_equal(labels.numpy(), probs.argmax(1))
    np.testing.assert_array_equal(mask.numpy(), probs.max(1) >= threshold)


def test_pseudo_labels_threshold_is_inclusive_and_no_gradient():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 5.0]], requires_grad=True)
    mask, labels = ssl.pseudo_labels(logits, 0.5)
    assert mask.tolist() == [True, True, True] and labels.tolist() == [0, 0, 1]
    assert ssl.pseudo_labels(logits, 0.9)[0].tolist() == [False, False, True]
    assert not labels.requires_grad


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n,c", [(1, 2), (9, 10), (32, 4)])
@pytest.mark.parametrize("threshold", [0.0, 0.6, 0.95])
def test_consistency_loss_matches_formula_and_autograd(seed, n, c, threshold):
    g = torch.Generator().manual_seed(seed)
    weak = (3 * torch.randn(n, c, generator=g, dtype=torch.float64)).requires_grad_(True)
    strong = (3 * torch.randn(n, c, generator=g, dtype=torch.float64)).requires_grad_(True)
    strong2 = strong.detach().clone().requires_grad_(True)
    got = ssl.consistency_loss(weak, strong, threshold)
    p = torch.softmax(weak.detach(), 1)
    conf, target = p.max(1)
    log_q = torch.log_softmax(strong2, 1)
    expected = (-(log_q[torch.arange(n), target]) * (conf >= threshold).double()).sum() / n
    torch.testing.assert_close(got, expected)
    got.backward()
    expected.backward()
    torch.testing.assert_close(strong.grad, strong2.grad)
    assert weak.grad is None


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_consistency_loss_is_zero_above_any_confidence_and_non_negative(seed):
    g = torch.Generator().manual_seed(seed)
    weak, strong = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    assert ssl.consistency_loss(weak, strong, 0.3).item() >= 0.0
    # softmax of 4 classes never reaches 1 exactly for moderate logits: nothing is confident
    assert ssl.consistency_loss(weak, strong, 1.0).item() == 0.0
    assert ssl.consistency_loss(weak, strong, 0.0).item() > 0.0


def test_bad_input_says_what_was_expected():
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        ssl.pseudo_labels(torch.randn(3), 0.5)
    with pytest.raises(ValueError, match="threshold in"):
        ssl.pseudo_labels(torch.randn(3, 2), 1.5)
    with pytest.raises(ValueError, match="same shape"):
        ssl.consistency_loss(torch.randn(3, 2), torch.randn(3, 4), 0.5)
    with pytest.raises(ValueError, match="per_class"):
        ssl.labelled_subset(np.array([0, 0, 1]), 2)
    with pytest.raises(ValueError, match="method must be one of"):
        ssl.fit_semi_supervised(nn.Linear(2, 2), torch.randn(2, 2), torch.zeros(2), method="mixmatch", steps=1)


def test_labelled_subset_is_stratified_and_seeded():
    y = np.repeat(np.arange(5), 30)
    idx = ssl.labelled_subset(y, 4, seed=3)
    assert len(idx) == 20 and len(set(idx)) == 20
    assert np.bincount(y[idx]).tolist() == [4] * 5
    np.testing.assert_array_equal(idx, ssl.labelled_subset(y, 4, seed=3))
    assert not np.array_equal(idx, ssl.labelled_subset(y, 4, seed=4))


def test_cutout_and_contrast():
    x = torch.rand(6, 2, 9, 9)
    out = ssl.random_cutout(x, 3, torch.Generator().manual_seed(0))
    zeroed = (out == 0) & (x != 0)
    per_image = zeroed[:, 0].flatten(1).sum(1)
    assert ((per_image >= 1) & (per_image <= 9)).all()  # a 3x3 square, clipped at the border
    assert torch.equal(zeroed[:, 0], zeroed[:, 1])  # the same square in every channel
    assert torch.equal(ssl.random_cutout(x, 0), x)
    same = ssl.random_contrast(x, 1.0, 1.0)
    torch.testing.assert_close(same, x)
    flat = ssl.random_contrast(x, 0.0, 0.0)
    torch.testing.assert_close(flat, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))


@pytest.mark.parametrize("fn", [ssl.weak_augment, ssl.strong_augment])
def test_augmentations_keep_shape_and_repeat_with_a_seed(fn):
    x = torch.rand(5, 1, 14, 14)
    a = fn(x, torch.Generator().manual_seed(1))
    b = fn(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)


def _toy_problem(seed: int = 0):
    """4x4 images: class 0 bright at the top, class 1 at the bottom (the weak augmentation flips left-right)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(200) % 2
    x = 0.2 * torch.rand(200, 1, 4, 4, generator=g)
    x[y == 0, :, :2, :] += 0.6
    x[y == 1, :, 2:, :] += 0.6
    return x, y


@pytest.mark.parametrize("method", ssl.METHODS)
def test_fit_semi_supervised_learns_a_toy_problem(method):
    x, y = _toy_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    history = ssl.fit_semi_supervised(model, x[:4], y[:4], x[4:], method=method, steps=60, eval_every=20,
                                      val=(x, y), device=torch.device("cpu"), live=False, threshold=0.7,
                                      batch_size=8, unlabelled_ratio=2)
    assert len(history["val_accuracy"]) == 3 and history["seconds"][0] > 0
    assert history["val_accuracy"][-1] >= 0.9
    assert ("mask_rate" in history) == (method != "supervised")
    assert ssl.accuracy(model, x, y) == history["val_accuracy"][-1]
