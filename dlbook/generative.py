"""Generative models: autoencoders, variational autoencoders and GANs, built on PyTorch's own ops.

The losses here are the references that chapter 5's hidden tests compare a learner's functions with:
:func:`autoencoder_forward`, :func:`reparameterize`, :func:`gaussian_kl`, :func:`vae_loss`,
:func:`discriminator_loss` and :func:`generator_loss`. The small modules (:class:`MLPAutoencoder`,
:class:`MLPVAE`, :func:`make_generator`, :func:`make_discriminator`, and the class-conditional
:class:`ConditionalGenerator` and :class:`ProjectionDiscriminator`) are what the chapter trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Layer = tuple[torch.Tensor, torch.Tensor]


def _check_matrix(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"expected {name} of shape (N, D), got {tuple(x.shape)}")


def _mlp(h: torch.Tensor, layers: Sequence[Layer]) -> torch.Tensor:
    """Return ``h`` through linear layers ``(W (in, out), b (out,))`` with ReLU between them (not after the last)."""
    if len(layers) == 0:
        raise ValueError("expected at least one (W, b) layer")
    for i, (W, b) in enumerate(layers):
        if W.ndim != 2 or b.shape != (W.shape[1],) or h.shape[-1] != W.shape[0]:
            raise ValueError(
                f"layer {i}: input (N, {h.shape[-1]}) needs W of shape ({h.shape[-1]}, out) and b of shape (out,), "
                f"got W {tuple(W.shape)} and b {tuple(b.shape)}"
            )
        h = F.linear(h, W.T, b)
        if i < len(layers) - 1:
            h = F.relu(h)
    return h


def autoencoder_forward(
    x: torch.Tensor, encoder: Sequence[Layer], decoder: Sequence[Layer]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(z, x_hat)``: the code and the reconstruction of an MLP autoencoder.

    Args:
        x: (N, D) inputs in [0, 1].
        encoder: layers ``(W (in, out), b (out,))``; ReLU between layers, none after the last, so
            ``z`` (N, K) is the last layer's linear output.
        decoder: layers mapping K back to D; ReLU between layers and a sigmoid after the last.

    Returns:
        z: (N, K) and x_hat: (N, D) in (0, 1).
    """
    _check_matrix("x", x)
    z = _mlp(x, encoder)
    x_hat = torch.sigmoid(_mlp(z, decoder))
    if x_hat.shape != x.shape:
        raise ValueError(f"the decoder maps to {tuple(x_hat.shape)}, expected the input's shape {tuple(x.shape)}")
    return z, x_hat


def reparameterize(mu: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Return ``z = mu + sigma * eps`` with ``sigma = exp(log_var / 2)``: a sample that gradients flow through.

    Args:
        mu, log_var, eps: (N, K) means, log-variances and standard-normal noise.

    Returns:
        (N, K) samples of N(mu, sigma^2), differentiable with respect to ``mu`` and ``log_var``.
    """
    if not (mu.shape == log_var.shape == eps.shape):
        raise ValueError(
            f"mu, log_var and eps must have one shape, got {tuple(mu.shape)}, {tuple(log_var.shape)}, "
            f"{tuple(eps.shape)}"
        )
    return torch.addcmul(mu, torch.exp(0.5 * log_var), eps)


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Return KL(N(mu, sigma^2) || N(0, I)) per row, shape (N,), for diagonal Gaussians.

    Args:
        mu, log_var: (N, K) means and log-variances.
    """
    if mu.shape != log_var.shape or mu.ndim != 2:
        raise ValueError(f"expected mu and log_var of one shape (N, K), got {tuple(mu.shape)}, {tuple(log_var.shape)}")
    q = torch.distributions.Normal(mu, torch.exp(0.5 * log_var))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    return torch.distributions.kl_divergence(q, p).sum(dim=1)


def vae_loss(
    x: torch.Tensor, x_logits: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(loss, reconstruction, kl)``, the negative ELBO and its two terms, each averaged over the batch.

    ``reconstruction`` is the Bernoulli negative log-likelihood (binary cross-entropy of the decoder's
    logits against ``x``) summed over the D pixels; ``kl`` is :func:`gaussian_kl`;
    ``loss = reconstruction + beta * kl``.

    Args:
        x: (N, D) targets in [0, 1]; x_logits: (N, D) decoder outputs before the sigmoid.
        mu, log_var: (N, K) the encoder's Gaussian.
    """
    _check_matrix("x", x)
    if x_logits.shape != x.shape:
        raise ValueError(f"expected x_logits of shape {tuple(x.shape)} like x, got {tuple(x_logits.shape)}")
    if mu.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but mu has {mu.shape[0]}")
    recon = F.binary_cross_entropy_with_logits(x_logits, x, reduction="none").sum(dim=1).mean()
    kl = gaussian_kl(mu, log_var).mean()
    return recon + beta * kl, recon, kl


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Return the discriminator's loss ``-mean log D(x) - mean log(1 - D(G(z)))``, a scalar tensor.

    ``D = sigmoid(logits)``; computed from logits so that it never takes the log of 0.

    Args:
        real_logits: (N,) or (N, 1) the discriminator's logits on real images.
        fake_logits: (M,) or (M, 1) its logits on generated images (M may differ from N).
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss(fake_logits: torch.Tensor, minimax: bool = False) -> torch.Tensor:
    """Return the generator's loss on the discriminator's logits for generated images, a scalar tensor.

    Non-saturating (default): ``-mean log D(G(z))``. Minimax (``minimax=True``): ``mean log(1 - D(G(z)))``,
    the generator's side of the original two-player game, whose gradient vanishes when D wins.

    Args:
        fake_logits: (M,) or (M, 1) logits of D on generated images.
    """
    if minimax:
        return -F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def _linear_layers(sizes: Sequence[int], generator: torch.Generator | None = None) -> nn.ParameterList:
    params = nn.ParameterList()
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        bound = 1.0 / n_in**0.5  # nn.Linear's default initialisation
        W = (torch.rand(n_in, n_out, generator=generator) * 2 - 1) * bound
        b = (torch.rand(n_out, generator=generator) * 2 - 1) * bound
        params.extend([nn.Parameter(W), nn.Parameter(b)])
    return params


def _pairs(params: nn.ParameterList) -> list[Layer]:
    return [(params[i], params[i + 1]) for i in range(0, len(params), 2)]


class MLPAutoencoder(nn.Module):
    """An MLP autoencoder D -> hidden... -> K -> hidden... -> D, run by :func:`autoencoder_forward`.

    ``forward(x (N, D))`` returns ``(z (N, K), x_hat (N, D))``; ``encode`` and ``decode`` do each half.
    """

    def __init__(self, dim: int, hidden: Sequence[int], code: int):
        super().__init__()
        self.encoder = _linear_layers([dim, *hidden, code])
        self.decoder = _linear_layers([code, *reversed(hidden), dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return autoencoder_forward(x, _pairs(self.encoder), _pairs(self.decoder))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Return the code (N, K) of ``x`` (N, D)."""
        return _mlp(x, _pairs(self.encoder))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction (N, D) in (0, 1) of codes ``z`` (N, K)."""
        return torch.sigmoid(_mlp(z, _pairs(self.decoder)))


class MLPVAE(nn.Module):
    """A variational autoencoder with MLP encoder and decoder and a K-dimensional Gaussian code.

    ``forward(x (N, D))`` returns ``(x_logits (N, D), mu (N, K), log_var (N, K))``, sampling the code
    with :func:`reparameterize`; ``decode(z)`` returns logits (apply a sigmoid for images).
    """

    def __init__(self, dim: int, hidden: int, code: int):
        super().__init__()
        self.code = code
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * code))
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mu, log_var)``, each (N, K)."""
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, log_var

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Return the decoder's logits (N, D) for codes ``z`` (N, K)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_var = self.encode(x)
        z = reparameterize(mu, log_var, torch.randn_like(mu))
        return self.decode(z), mu, log_var


def make_generator(latent: int, hidden: int, dim: int) -> nn.Sequential:
    """Return an MLP generator: (N, latent) noise -> (N, dim) images in (0, 1)."""
    return nn.Sequential(
        nn.Linear(latent, hidden), nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
        nn.Linear(hidden, dim), nn.Sigmoid(),
    )  # fmt: skip


def make_discriminator(dim: int, hidden: int, dropout: float = 0.0) -> nn.Sequential:
    """Return an MLP discriminator: (N, dim) images -> (N, 1) logits (real if positive).

    ``dropout`` after each hidden layer keeps the discriminator from memorising a small training set.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout),
        nn.Linear(hidden, 1),
    )  # fmt: skip


def _check_labels(labels: torch.Tensor, n: int, classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"expected labels as an int64 tensor of shape ({n},), got {got}")
    if labels.shape != (n,):
        raise ValueError(f"expected labels of shape ({n},) (one per row), got {tuple(labels.shape)}")
    if n and not (0 <= int(labels.min()) and int(labels.max()) < classes):
        low, high = int(labels.min()), int(labels.max())
        raise ValueError(f"labels must lie in [0, {classes}), got values from {low} to {high}")


class ConditionalGenerator(nn.Module):
    """A class-conditional MLP generator (Mirza & Osindero, 2014): ``G(z, y)`` draws the digit ``y``.

    The label's learned embedding (``latent`` numbers) is concatenated to the noise and the pair goes
    through :func:`make_generator`'s MLP. ``forward(z (N, latent), labels (N,) int64) -> (N, dim)`` in (0, 1).
    """

    def __init__(self, latent: int, hidden: int, dim: int, classes: int = 10):
        super().__init__()
        self.latent, self.classes = latent, classes
        self.embed = nn.Embedding(classes, latent)
        self.net = make_generator(2 * latent, hidden, dim)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_matrix("z", z)
        if z.shape[1] != self.latent:
            raise ValueError(f"expected noise z of shape (N, {self.latent}), got {tuple(z.shape)}")
        _check_labels(labels, len(z), self.classes)
        return self.net(torch.cat([z, self.embed(labels)], dim=1))


class ProjectionDiscriminator(nn.Module):
    """A class-conditional discriminator with a projection head (Miyato & Koyama, 2018).

    ``logit(x, y) = w . h(x) + b + e_y . h(x)``: :func:`make_discriminator`'s hidden features ``h(x)``,
    its unconditional read-out, plus the inner product of ``h(x)`` with a learned embedding of the
    label. It asks "is this a real image *of digit y*?", so a generator that ignores ``y`` loses.
    ``forward(x (N, dim), labels (N,) int64) -> (N, 1)`` logits.
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, classes: int = 10):
        super().__init__()
        self.classes = classes
        layers = make_discriminator(dim, hidden, dropout)
        self.body, self.head = layers[:-1], layers[-1]
        self.embed = nn.Embedding(classes, hidden)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_matrix("x", x)
        _check_labels(labels, len(x), self.classes)
        h = self.body(x)
        return self.head(h) + (self.embed(labels) * h).sum(dim=1, keepdim=True)
