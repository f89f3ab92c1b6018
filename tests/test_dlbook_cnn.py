"""dlbook.cnn: the models map images to logits, with the known parameter counts; feature maps by shape."""

from __future__ import annotations

import pytest
import torch

from dlbook import cnn, train


def test_feature_maps_follow_the_layers():
    model = cnn.small_cnn()
    maps = cnn.feature_maps(model, torch.randn(2, 1, 28, 28))
    assert len(maps) == len(model)
    assert maps[0][1].shape == (2, 16, 28, 28) and maps[-1][1].shape == (2, 10)
    assert maps[3][0] == "3: MaxPool2d"
    assert model.training, "feature_maps restores the training mode"


@pytest.mark.parametrize("make,params", [(cnn.lenet5, 61706), (cnn.small_cnn, 54778)])
def test_models_map_images_to_logits(make, params):
    model = make()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert train.count_parameters(model) == params
