"""dlbook.cnn: the models map images to logits, with the known parameter counts; feature maps by shape;
the residual block against torch.nn.functional, gradient norms against autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


# ----------------------------------------------------------------------------- residual networks


def _randomise_batch_norms(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every BatchNorm non-trivial affine parameters and running statistics (so eval mode differs)."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def _block_by_ops(x: torch.Tensor, block: cnn.ResidualBlock, training: bool) -> torch.Tensor:
    """The block written out with torch.nn.functional, on copies of the running statistics."""
    def bn(h, layer):
        return F.batch_norm(h, layer.running_mean.clone(), layer.running_var.clone(), layer.weight, layer.bias,
                            training=training, eps=layer.eps)

    out = F.relu(bn(F.conv2d(x, block.conv1.weight, stride=block.conv1.stride, padding=1), block.bn1))
    out = bn(F.conv2d(out, block.conv2.weight, padding=1), block.bn2)
    if block.shortcut is None:
        identity = x
    else:
        conv, norm = block.shortcut
        identity = bn(F.conv2d(x, conv.weight, stride=conv.stride), norm)
    return F.relu(out + identity)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("shape", "out_channels", "stride"), [
    ((2, 4, 8, 8), 4, 1), ((1, 3, 7, 5), 3, 1), ((3, 2, 9, 6), 5, 1), ((2, 4, 7, 7), 8, 2), ((1, 3, 6, 5), 3, 2),
])
@pytest.mark.parametrize("training", [True, False])
def test_residual_block_matches_functional_ops(seed, shape, out_channels, stride, training):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    block = cnn.ResidualBlock(shape[1], out_channels, stride)
    _randomise_batch_norms(block, gen)
    block.train(training)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    block.double()
    expected = _block_by_ops(x, block, training)
    got = block(x)
    assert got.shape == (shape[0], out_channels, -(-shape[2] // stride), -(-shape[3] // stride))
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    assert (got >= 0).all(), "the last ReLU comes after the addition"
    assert (block.shortcut is None) == (stride == 1 and shape[1] == out_channels)


def test_residual_block_gradients_match_the_ops():
    torch.manual_seed(0)
    block = cnn.ResidualBlock(3, 6, stride=2).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    params = [x, *block.parameters()]
    grads = torch.autograd.grad(block(x).square().sum(), params)
    expected = torch.autograd.grad(_block_by_ops(x, block, True).square().sum(), params)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)


def test_identity_shortcut_passes_the_input_through():
    block = cnn.ResidualBlock(4, 4).eval()
    with torch.no_grad():  # F(x) = 0: the block is relu(x), an identity on non-negative inputs
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
    x = torch.rand(2, 4, 5, 5)
    torch.testing.assert_close(block(x), x)


def test_residual_block_rejects_other_strides():
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        cnn.ResidualBlock(3, 3, stride=3)


def test_plain_block_is_the_residual_block_without_the_shortcut():
    torch.manual_seed(0)
    block = cnn.ResidualBlock(3, 3).eval()
    plain = cnn.plain_block(3, 3).eval()
    plain[0].load_state_dict(block.conv1.state_dict())
    plain[1].load_state_dict(block.bn1.state_dict())
    plain[3].load_state_dict(block.conv2.state_dict())
    plain[4].load_state_dict(block.bn2.state_dict())
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(plain(x), F.relu(block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))))


@pytest.mark.parametrize("residual", [True, False])
def test_deep_cnn_has_the_layers_of_he_et_al(residual):
    model = cnn.deep_cnn(20, residual=residual)
    assert [name for name, _ in model.named_children()] == ["stem", "blocks", "head"]
    assert len(model.blocks) == 9
    weight_layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
                     and not (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1))]
    assert len(weight_layers) == 20
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    assert model.blocks(model.stem(x)).shape == (2, 64, 7, 7)
    projections = sum(isinstance(b, cnn.ResidualBlock) and b.shortcut is not None for b in model.blocks)
    assert projections == (2 if residual else 0)  # where a stage starts with stride 2 and more channels


def test_resnet_shapes_and_errors():
    model = cnn.resnet((8, 16), (1, 2), in_channels=3, num_classes=7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert [type(b).__name__ for b in model.blocks] == ["ResidualBlock"] * 3
    with pytest.raises(ValueError, match="one entry per stage"):
        cnn.resnet((8, 16), (1,))
    with pytest.raises(ValueError, match="6n \\+ 2"):
        cnn.deep_cnn(21)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("residual", [True, False])
def test_gradient_norms_by_block_match_autograd(seed, residual):
    torch.manual_seed(seed)
    model = cnn.resnet((4, 8), (2, 1), residual=residual).double()
    x = torch.randn(3, 1, 9, 7, dtype=torch.float64)
    y = torch.tensor([0, 4, 9])
    h0 = model.stem(x).detach()
    got = cnn.gradient_norms_by_block(model.blocks, model.head, h0, y)
    # the same with retain_grad and backward
    inputs, h = [], h0.clone().requires_grad_(True)
    for block in model.blocks:
        h.retain_grad()
        inputs.append(h)
        h = block(h)
    F.cross_entropy(model.head(h), y).backward()
    assert type(got) is list and len(got) == 3 and all(type(v) is float for v in got)
    np.testing.assert_allclose(got, [t.grad.norm().item() for t in inputs], rtol=1e-10)
    model.zero_grad(set_to_none=True)
    cnn.gradient_norms_by_block(model.blocks, model.head, h0, y)
    assert all(p.grad is None for p in model.parameters()), "parameter gradients are left alone"
