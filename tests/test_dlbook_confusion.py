"""dlbook.confusion: confusion matrices against counting, the most confused pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlbook import confusion


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,k", [(1, 2), (50, 3), (300, 10)])
def test_confusion_matrix_counts_pairs(seed, n, k):
    rng = np.random.default_rng(seed)
    t, p = rng.integers(0, k, n), rng.integers(0, k, n)
    expected = np.zeros((k, k), dtype=np.int64)
    for a, b in zip(t, p, strict=True):
        expected[a, b] += 1
    got = confusion.confusion_matrix(t, p, k)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == n and np.trace(got) == int((t == p).sum())
    np.testing.assert_array_equal(confusion.confusion_matrix(torch.tensor(t), torch.tensor(p), k), expected)


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="same number"):
        confusion.confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\)"):
        confusion.confusion_matrix([0, 2], [0, 1], 2)


def test_most_confused_orders_off_diagonal_cells():
    m = np.array([[50, 3, 0], [7, 40, 1], [0, 9, 20]])
    assert confusion.most_confused(m, 3) == [(2, 1, 9), (1, 0, 7), (0, 1, 3)]
    assert confusion.most_confused(np.diag([5, 5]), 3) == []
    with pytest.raises(ValueError, match="square"):
        confusion.most_confused(np.zeros((2, 3)))
