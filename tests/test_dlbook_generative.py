"""dlbook.generative: losses checked against closed forms, torch.distributions and torch.autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import generative as gen

SEEDS = [0, 1, 2]


def _layers(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(a, b, generator=g, dtype=torch.float64), torch.randn(b, generator=g, dtype=torch.float64))
            for a, b in zip(sizes[:-1], sizes[1:], strict=True)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "sizes"), [(1, [5, 3]), (4, [6, 4, 2]), (7, [9, 8, 5, 3])])
def test_autoencoder_forward_matches_plain_matmuls(seed, N, sizes):
    enc = _layers(sizes, seed)
    dec = _layers(sizes[::-1], seed + 10)
    x = torch.rand(N, sizes[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z, x_hat = gen.autoencoder_forward(x, enc, dec)
    h = x
    for i, (W, b) in enumerate(enc):
        h = h @ W + b
        h = h.clamp(min=0) if i < len(enc) - 1 else h
    assert z.shape == (N, sizes[-1])
    torch.testing.assert_close(z, h)
    for i, (W, b) in enumerate(dec):
        h = h @ W + b
        h = h.clamp(min=0) if i < len(dec) - 1 else 1 / (1 + torch.exp(-h))
    torch.testing.assert_close(x_hat, h)


def test_autoencoder_forward_rejects_bad_shapes():
    enc = _layers([5, 3], 0)
    dec = _layers([3, 5], 0)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        gen.autoencoder_forward(torch.rand(5), enc, dec)
    with pytest.raises(ValueError, match="layer 0"):
        gen.autoencoder_forward(torch.rand(2, 4, dtype=torch.float64), enc, dec)
    with pytest.raises(ValueError, match="input's shape"):
        gen.autoencoder_forward(torch.rand(2, 5, dtype=torch.float64), enc, _layers([3, 4], 0))
    with pytest.raises(ValueError, match="at least one"):
        gen.autoencoder_forward(torch.rand(2, 5), [], dec)


@pytest.mark.parametrize("seed", SEEDS)
def test_reparameterize_value_and_gradients(seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    log_var = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(4, 3, generator=g, dtype=torch.float64)
    z = gen.reparameterize(mu, log_var, eps)
    torch.testing.assert_close(z, mu + torch.exp(log_var / 2) * eps)
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))
    torch.testing.assert_close(log_var.grad, 0.5 * torch.exp(log_var / 2) * eps)
    with pytest.raises(ValueError, match="one shape"):
        gen.reparameterize(mu, log_var, eps[:2])


def test_reparameterize_samples_have_the_right_moments():
    mu, log_var = torch.full((200000, 1), 1.5), torch.full((200000, 1), math.log(4.0))
    z = gen.reparameterize(mu, log_var, torch.randn(200000, 1, generator=torch.Generator().manual_seed(0)))
    assert z.mean().item() == pytest.approx(1.5, abs=0.02)
    assert z.std().item() == pytest.approx(2.0, abs=0.02)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "K"), [(1, 1), (3, 2), (8, 5)])
def test_gaussian_kl_matches_closed_form(seed, N, K):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(N, K, generator=g, dtype=torch.float64)
    log_var = torch.randn(N, K, generator=g, dtype=torch.float64)
    expected = -0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(dim=1)
    torch.testing.assert_close(gen.gaussian_kl(mu, log_var), expected)


@given(st.floats(-5, 5), st.floats(-5, 5))
@settings(max_examples=50, deadline=None)
def test_gaussian_kl_is_nonnegative_and_zero_only_at_the_prior(m, lv):
    kl = gen.gaussian_kl(torch.tensor([[m]], dtype=torch.float64), torch.tensor([[lv]], dtype=torch.float64)).item()
    assert kl >= -1e-12
    assert gen.gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max().item() < 1e-7


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_vae_loss_matches_a_direct_computation(seed, beta):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 7, generator=g, dtype=torch.float64)
    logits = 3 * torch.randn(5, 7, generator=g, dtype=torch.float64)
    mu = torch.randn(5, 2, generator=g, dtype=torch.float64)
    log_var = torch.randn(5, 2, generator=g, dtype=torch.float64)
    loss, recon, kl = gen.vae_loss(x, logits, mu, log_var, beta=beta)
    p = torch.sigmoid(logits)
    expected_recon = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(dim=1).mean()
    expected_kl = (-0.5 * (1 + log_var - mu**2 - log_var.exp()).sum(dim=1)).mean()
    torch.testing.assert_close(recon, expected_recon)
    torch.testing.assert_close(kl, expected_kl)
    torch.testing.assert_close(loss, expected_recon + beta * expected_kl)
    with pytest.raises(ValueError, match="x_logits"):
        gen.vae_loss(x, logits[:, :3], mu, log_var)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "M", "shape"), [(1, 1, ()), (4, 6, ()), (5, 3, (1,))])
def test_gan_losses_match_the_formulas(seed, N, M, shape):
    g = torch.Generator().manual_seed(seed)
    real = 3 * torch.randn(N, *shape, generator=g, dtype=torch.float64)
    fake = 3 * torch.randn(M, *shape, generator=g, dtype=torch.float64)
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    torch.testing.assert_close(gen.discriminator_loss(real, fake),
                               -torch.log(d_real).mean() - torch.log(1 - d_fake).mean())
    torch.testing.assert_close(gen.generator_loss(fake), -torch.log(d_fake).mean())
    torch.testing.assert_close(gen.generator_loss(fake, minimax=True), torch.log(1 - d_fake).mean())


def test_gan_losses_are_finite_for_huge_logits():
    big = torch.tensor([1000.0, -1000.0], requires_grad=True)
    for loss in (gen.discriminator_loss(big, big), gen.generator_loss(big), gen.generator_loss(big, minimax=True)):
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, big)
        assert torch.isfinite(grad).all()


def test_minimax_gradient_saturates_where_non_saturating_does_not():
    # When D confidently rejects fakes (logit -8), the minimax loss has almost no gradient.
    logit = torch.tensor([-8.0], dtype=torch.float64, requires_grad=True)
    (g_mm,) = torch.autograd.grad(gen.generator_loss(logit, minimax=True), logit)
    (g_ns,) = torch.autograd.grad(gen.generator_loss(logit), logit)
    assert abs(g_mm.item()) < 1e-3 < 0.9 < abs(g_ns.item())


def test_modules_have_the_documented_shapes():
    torch.manual_seed(0)
    ae = gen.MLPAutoencoder(12, [8], 2)
    z, x_hat = ae(torch.rand(3, 12))
    assert z.shape == (3, 2) and x_hat.shape == (3, 12)
    torch.testing.assert_close(ae.encode(torch.ones(2, 12)), ae(torch.ones(2, 12))[0])
    torch.testing.assert_close(ae.decode(z), x_hat)
    vae = gen.MLPVAE(12, 8, 2)
    logits, mu, log_var = vae(torch.rand(3, 12))
    assert logits.shape == (3, 12) and mu.shape == log_var.shape == (3, 2)
    G, D = gen.make_generator(4, 8, 12), gen.make_discriminator(12, 8)
    out = G(torch.randn(5, 4))
    assert out.shape == (5, 12) and bool(((out > 0) & (out < 1)).all())
    assert D(out).shape == (5, 1)
    np.testing.assert_equal(len(list(ae.parameters())), 8)


def test_binary_cross_entropy_reference_agrees_with_functional():
    # The references are built on F.binary_cross_entropy_with_logits: sanity-check the convention.
    logits = torch.tensor([0.3, -1.2])
    torch.testing.assert_close(gen.generator_loss(logits),
                               F.binary_cross_entropy_with_logits(logits, torch.ones(2)))


def test_conditional_generator_uses_the_label_and_the_noise():
    torch.manual_seed(0)
    G = gen.ConditionalGenerator(latent=4, hidden=16, dim=64)
    z = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 9])
    x = G(z, labels)
    assert x.shape == (5, 64) and bool(((x > 0) & (x < 1)).all())
    # the same as the documented computation: embedding concatenated to the noise, then the MLP
    torch.testing.assert_close(x, G.net(torch.cat([z, G.embed.weight[labels]], dim=1)))
    same_z = z[:1].expand(3, 4)
    out = G(same_z, torch.tensor([0, 1, 2]))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    x.sum().backward()
    assert G.embed.weight.grad is not None and G.embed.weight.grad[labels].abs().sum() > 0


def test_projection_discriminator_is_body_head_plus_label_projection():
    torch.manual_seed(1)
    D = gen.ProjectionDiscriminator(dim=64, hidden=32, dropout=0.3).eval()
    x, labels = torch.rand(6, 64), torch.tensor([0, 3, 3, 5, 9, 1])
    h = D.body(x)
    expected = F.linear(h, D.head.weight, D.head.bias) + (D.embed.weight[labels] * h).sum(1, keepdim=True)
    torch.testing.assert_close(D(x, labels), expected)
    # with a zero label embedding it is exactly the unconditional discriminator it is built from
    with torch.no_grad():
        D.embed.weight.zero_()
    torch.testing.assert_close(D(x, labels), D.head(D.body(x)))


@pytest.mark.parametrize("labels, error, match", [
    (torch.tensor([0, 1, 2]), ValueError, r"shape \(4,\)"),
    (torch.tensor([0, 1, 2, 10]), ValueError, r"\[0, 10\)"),
    (torch.tensor([0, -1, 2, 3]), ValueError, r"\[0, 10\)"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), TypeError, "int64"),
    ([0, 1, 2, 3], TypeError, "int64"),
])
def test_conditional_modules_reject_bad_labels(labels, error, match):
    G = gen.ConditionalGenerator(latent=4, hidden=8, dim=64)
    D = gen.ProjectionDiscriminator(dim=64, hidden=8)
    with pytest.raises(error, match=match):
        G(torch.randn(4, 4), labels)
    with pytest.raises(error, match=match):
        D(torch.rand(4, 64), labels)


def test_conditional_generator_rejects_wrong_noise_width():
    G = gen.ConditionalGenerator(latent=4, hidden=8, dim=64)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        G(torch.randn(3, 5), torch.tensor([0, 1, 2]))
