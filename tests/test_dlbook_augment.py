"""dlbook.augment: shifts against slicing, flips and rotations against torch.flip / torch.rot90."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import augment


def _shift_by_slicing(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    _, _, h, w = x.shape
    for n in range(x.shape[0]):
        for i in range(h):
            for j in range(w):
                si, sj = i - int(dy[n]), j - int(dx[n])
                if 0 <= si < h and 0 <= sj < w:
                    out[n, :, i, j] = x[n, :, si, sj]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape,max_shift", [((4, 1, 6, 6), 2), ((3, 2, 5, 7), 8), ((1, 3, 4, 4), 1)])
def test_shift_images_matches_slicing(seed, shape, max_shift):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen)
    dy = torch.randint(-max_shift, max_shift + 1, (shape[0],), generator=gen)
    dx = torch.randint(-max_shift, max_shift + 1, (shape[0],), generator=gen)
    before = x.clone()
    got = augment.shift_images(x, dy, dx)
    assert torch.equal(x, before), "shift_images must not modify its input"
    assert torch.equal(got, _shift_by_slicing(x, dy, dx))


@given(st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3))
@settings(max_examples=30, deadline=None)
def test_shifts_compose_where_nothing_falls_off(a, b, c, d):
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 6:10, 5:11] = torch.arange(24.0).view(4, 6) + 1  # content well inside the border
    once = augment.shift_images(x, torch.tensor([a + c]), torch.tensor([b + d]))
    twice = augment.shift_images(augment.shift_images(x, torch.tensor([a]), torch.tensor([b])),
                                 torch.tensor([c]), torch.tensor([d]))
    assert torch.equal(once, twice)


def test_shift_images_rejects_bad_input():
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"expected a batch of images x of shape \(N, C, H, W\)"):
        augment.shift_images(torch.zeros(4, 4), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"dy and dx must have shape \(2,\)"):
        augment.shift_images(x, torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        augment.shift_images(x, torch.tensor([0.5, 1.0]), torch.tensor([0, 1]))


def test_random_shift_zero_is_identity_and_seeded():
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(augment.random_shift(x, 0), x)
    a = augment.random_shift(x, 3, torch.Generator().manual_seed(4))
    b = augment.random_shift(x, 3, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_random_hflip_extremes():
    x = torch.randn(6, 2, 5, 7)
    assert torch.equal(augment.random_hflip(x, 1.0), x.flip(-1))
    assert torch.equal(augment.random_hflip(x, 0.0), x)
    out = augment.random_hflip(x, 0.5, torch.Generator().manual_seed(0))
    for n in range(6):
        assert torch.equal(out[n], x[n]) or torch.equal(out[n], x[n].flip(-1))
    with pytest.raises(ValueError, match="probability"):
        augment.random_hflip(x, 1.5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotation_by_right_angles_matches_rot90(k):
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    got = augment.rotate_images(x, torch.full((3,), 90.0 * k, dtype=torch.float64))
    torch.testing.assert_close(got, torch.rot90(x, k, dims=(-2, -1)), atol=1e-9, rtol=1e-9)


def test_rotation_by_zero_is_identity_and_fill_is_used():
    x = torch.rand(2, 1, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(augment.rotate_images(x, torch.zeros(2, dtype=torch.float64)), x)
    corner = augment.rotate_images(torch.zeros(1, 1, 9, 9), torch.tensor([45.0]), fill=-1.0)[0, 0, 0, 0]
    assert corner.item() == pytest.approx(-1.0)


def test_augment_batch_keeps_shape_and_is_seeded():
    x = torch.randn(4, 1, 28, 28)
    a = augment.augment_batch(x, 2, 0.5, 10.0, torch.Generator().manual_seed(1))
    b = augment.augment_batch(x, 2, 0.5, 10.0, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(augment.augment_batch(x, 0, 0.0, 0.0), x)
    with pytest.raises(TypeError, match="float image batch"):
        augment.augment_batch(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
