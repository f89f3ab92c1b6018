"""dlbook.transfer: the CNN's shapes, freezing, resizing and few-label subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlbook import train, transfer


@pytest.mark.parametrize("width", [1, 4, 16])
@pytest.mark.parametrize("n", [1, 5])
def test_small_cnn_shapes_and_parameter_count(width, n):
    model = transfer.SmallCNN(width=width, classes=7)
    out = model(torch.zeros(n, 1, 16, 16))
    assert out.shape == (n, 7)
    assert model.backbone(torch.zeros(n, 1, 16, 16)).shape == (n, 2 * width * 16)
    expected = (9 * width + width) + (9 * width * 2 * width + 2 * width) + (32 * width * 7 + 7)
    assert train.count_parameters(model) == expected


def test_small_cnn_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        transfer.SmallCNN()(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError):
        transfer.SmallCNN(width=0)


def test_freeze_backbone_leaves_only_the_head_trainable():
    model = transfer.SmallCNN(width=4)
    names = transfer.freeze_backbone(model)
    assert names == ["head.weight", "head.bias"]
    assert train.count_parameters(model, trainable_only=True) == model.head.weight.numel() + 10
    # gradients reach only the head
    model(torch.randn(3, 1, 16, 16)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.weight.grad is not None
    # freezing again after unfreezing everything gives the same result
    model.requires_grad_(True)
    assert transfer.freeze_backbone(model) == names


def test_freeze_backbone_unknown_head():
    with pytest.raises(ValueError, match="no submodule"):
        transfer.freeze_backbone(transfer.SmallCNN(), head="classifier")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resize_images_matches_interpolate(seed):
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    out = transfer.resize_images(big, 16)
    expected = F.interpolate(torch.tensor(big, dtype=torch.float32)[:, None] / 255, size=(16, 16), mode="area")
    assert out.shape == (3, 1, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    small = rng.random((4, 64)).astype(np.float32)
    up = transfer.resize_images(small, 16)
    assert up.shape == (4, 1, 16, 16)
    assert 0.0 <= float(up.min()) and float(up.max()) <= 1.0
    # a constant image stays constant
    torch.testing.assert_close(transfer.resize_images(np.full((1, 8, 8), 0.5, np.float32)),
                               torch.full((1, 1, 16, 16), 0.5))


def test_resize_images_bad_input():
    with pytest.raises(ValueError, match="square"):
        transfer.resize_images(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError):
        transfer.resize_images(np.zeros((2, 1, 8, 8), np.float32))


@pytest.mark.parametrize("per_class", [1, 3, 10])
def test_few_per_class(per_class):
    labels = np.repeat(np.arange(4), 12)
    idx = transfer.few_per_class(labels, per_class, seed=3)
    assert len(idx) == 4 * per_class and len(set(idx.tolist())) == len(idx)
    assert np.bincount(labels[idx]).tolist() == [per_class] * 4
    np.testing.assert_array_equal(idx, transfer.few_per_class(labels, per_class, seed=3))
    with pytest.raises(ValueError, match="fewer"):
        transfer.few_per_class(labels, 13)
