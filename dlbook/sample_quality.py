"""Scoring generated digits with a reference classifier trained on the real ones.

A generator is good when its samples look like *some* digit (the classifier is confident), when every
digit appears (per-class coverage), and when the samples, seen through the classifier's features, are
spread like the real images (Fréchet distance between Gaussians fitted to the features, as in FID).

The classifier (:func:`reference_classifier`) is trained on the training split of
:func:`dlbook.data.load_digits` only and cached for the session: in memory, and on disk under
``dlbook.data.cache_dir() / "sample_quality"``, written to a temporary file and renamed so that no
half-written file is ever left behind. A cached file that cannot be read is retrained and replaced.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import cache_dir, load_digits

CACHE_VERSION = 1
CONFIDENCE = 0.9
_MEMORY: dict[tuple[int, int], DigitClassifier] = {}


class DigitClassifier(nn.Module):
    """An MLP for 8x8 digits: 64 -> 256 -> 64 (features) -> 10 logits.

    ``forward(x (N, 64))`` returns logits (N, 10); ``features(x)`` the 64 penultimate activations.
    """

    FEATURES = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, self.FEATURES), nn.ReLU())
        self.head = nn.Linear(self.FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the penultimate activations (N, 64) of images ``x`` (N, 64)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _outlier_batch(x: torch.Tensor, y: torch.Tensor, X: torch.Tensor, Y: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return images that are not (clearly) one digit, and their soft targets (N, 10).

    Half are random noise at random brightness, with the uniform distribution as target; the rest
    are 50/50 blends of ``x`` with random training images, with the blend of their one-hot labels as
    target. Trained on these, the classifier is unsure on non-digits instead of confidently wrong.
    """
    n = len(x)
    noise = torch.rand(n // 2, 64, generator=generator) * torch.rand(n // 2, 1, generator=generator)
    j = torch.randint(0, len(X), (n,), generator=generator)
    blends = 0.5 * x + 0.5 * X[j]
    targets = torch.cat([torch.full((n // 2, 10), 0.1), 0.5 * F.one_hot(y, 10) + 0.5 * F.one_hot(Y[j], 10)])
    return torch.cat([noise, blends]), targets


def train_classifier(seed: int = 0, epochs: int = 100) -> DigitClassifier:
    """Return a :class:`DigitClassifier` trained on the digits training split (seeded, CPU, a few seconds).

    Besides the usual cross-entropy on (slightly noisy) digits, it is trained towards uncertainty on
    noise images and on blends of two digits (outlier exposure), so that a confident prediction on a
    generated image means the image looks like one digit, not just "not nothing".
    """
    X_train, y_train, _, _ = load_digits(seed=0)
    generator = torch.Generator().manual_seed(seed)
    X, y = torch.from_numpy(X_train), torch.from_numpy(y_train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=generator)
        for i in range(0, len(X), 64):
            idx = order[i : i + 64]
            xb = (X[idx] + 0.05 * torch.randn(len(idx), 64, generator=generator)).clamp(0, 1)
            outliers, soft = _outlier_batch(xb, y[idx], X, y, generator)
            loss = F.cross_entropy(model(xb), y[idx]) + 0.5 * F.cross_entropy(model(outliers), soft)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


def cache_path(seed: int = 0) -> Path:
    """Return where the reference classifier for ``seed`` is cached on disk."""
    return cache_dir() / "sample_quality" / f"digits_classifier_v{CACHE_VERSION}_seed{seed}.pt"


def _save_atomic(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is no secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> DigitClassifier | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = DigitClassifier()
        model.load_state_dict(state)
    except Exception:  # noqa: BLE001 - a missing, truncated or foreign file all mean: retrain
        return None
    return model.eval().requires_grad_(False)


def reference_classifier(seed: int = 0, use_disk: bool = True) -> DigitClassifier:
    """Return the reference digit classifier (eval mode, CPU), trained once and then cached.

    Looks in memory, then on disk (:func:`cache_path`), then trains (:func:`train_classifier`) and
    caches it in both places. ``use_disk=False`` skips the disk cache.
    """
    key = (CACHE_VERSION, seed)
    if key in _MEMORY:
        return _MEMORY[key]
    model = _load(cache_path(seed)) if use_disk and cache_path(seed).exists() else None
    if model is None:
        model = train_classifier(seed)
        if use_disk:
            try:
                _save_atomic(model.state_dict(), cache_path(seed))
            except OSError:
                pass  # a read-only cache only costs a retrain next session
    _MEMORY[key] = model
    return model


def _as_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if x.ndim == 3 and x.shape[1:] == (8, 8):
        x = x.reshape(len(x), 64)
    if x.ndim != 2 or x.shape[1] != 64:
        raise ValueError(f"expected 8x8 digit images of shape (N, 64) or (N, 8, 8), got {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError("expected at least one image")
    return x


@torch.no_grad()
def class_probabilities(images: np.ndarray | torch.Tensor, classifier: DigitClassifier | None = None) -> np.ndarray:
    """Return the reference classifier's class probabilities (N, 10) for images (N, 64) in [0, 1]."""
    classifier = classifier or reference_classifier()
    return torch.softmax(classifier(_as_images(images)), dim=1).numpy().astype(np.float64)


@torch.no_grad()
def classifier_features(images: np.ndarray | torch.Tensor, classifier: DigitClassifier | None = None) -> np.ndarray:
    """Return the reference classifier's penultimate features (N, 64) for images (N, 64)."""
    classifier = classifier or reference_classifier()
    return classifier.features(_as_images(images)).numpy().astype(np.float64)


def confidence_and_coverage(
    probs: np.ndarray | torch.Tensor, threshold: float = CONFIDENCE
) -> tuple[float, np.ndarray]:
    """Return ``(confident_fraction, class_fractions)`` for class probabilities ``probs`` (N, C).

    ``confident_fraction``: the fraction of rows whose largest probability is ``>= threshold``.
    ``class_fractions``: (C,) the fraction of rows whose most probable class is c (sums to 1).
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"expected probabilities of shape (N, C) with N >= 1, got {tuple(p.shape)}")
    top, label = p.max(dim=1)
    confident = (top >= threshold).double().mean().item()
    fractions = torch.bincount(label, minlength=p.shape[1]).double() / p.shape[0]
    return confident, fractions.numpy()


def gaussian_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mu (D,), cov (D, D))``: the mean and the unbiased covariance of features (N, D), N >= 2."""
    f = torch.as_tensor(features, dtype=torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"expected features of shape (N, D) with N >= 2, got {tuple(f.shape)}")
    return f.mean(dim=0).numpy(), torch.cov(f.T, correction=1).reshape(f.shape[1], f.shape[1]).numpy()


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Return the Fréchet distance ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))`` between two Gaussians.

    ``mu``: (D,), ``cov``: (D, D) symmetric positive semi-definite. ``tr (C1 C2)^(1/2)`` is the sum of
    the square roots of the eigenvalues of ``C1 C2`` (real and >= 0 up to rounding, because ``C1 C2``
    is similar to the PSD matrix ``C1^(1/2) C2 C1^(1/2)``).
    """
    m1, m2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    c1, c2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    d = m1.shape[0] if m1.ndim == 1 else -1
    for name, value, shape in (("mu1", m1, (d,)), ("mu2", m2, (d,)), ("cov1", c1, (d, d)), ("cov2", c2, (d, d))):
        if d < 1 or tuple(value.shape) != shape:
            raise ValueError(f"expected mu1, mu2 of shape (D,) and cov1, cov2 of shape (D, D); {name} is "
                             f"{tuple(value.shape)}")
    eig = torch.linalg.eigvals(c1 @ c2).real.clamp(min=0)
    value = (m1 - m2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * eig.sqrt().sum()
    return float(value.clamp(min=0))


def score_samples(
    images: np.ndarray | torch.Tensor,
    real_images: np.ndarray | torch.Tensor | None = None,
    classifier: DigitClassifier | None = None,
    threshold: float = CONFIDENCE,
) -> dict[str, float | np.ndarray]:
    """Return the scores of generated digits ``images`` (N, 64) in [0, 1].

    Keys: ``confident_fraction``, ``class_fractions`` (10,), ``min_class_fraction``, and
    ``frechet_distance`` between the classifier's features of ``images`` and of ``real_images``
    (default: the held-out test split of :func:`dlbook.data.load_digits`, which the classifier never saw).
    """
    classifier = classifier or reference_classifier()
    if real_images is None:
        real_images = load_digits(seed=0).X_test
    confident, fractions = confidence_and_coverage(class_probabilities(images, classifier), threshold)
    mu_g, cov_g = gaussian_statistics(classifier_features(images, classifier))
    mu_r, cov_r = gaussian_statistics(classifier_features(real_images, classifier))
    return {
        "confident_fraction": confident,
        "class_fractions": fractions,
        "min_class_fraction": float(fractions.min()),
        "frechet_distance": frechet_distance(mu_r, cov_r, mu_g, cov_g),
    }
