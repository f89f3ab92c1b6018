"""dlbook.sample_quality: scores against scipy / numpy formulas, the classifier cache, honest baselines."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import data
from dlbook import sample_quality as sq

SEEDS = [0, 1, 2]


def _random_cov(rng, d, rank=None):
    A = rng.standard_normal((d, rank or d))
    return A @ A.T / d


def _fd_scipy(mu1, c1, mu2, c2):
    root = scipy.linalg.sqrtm(c1 @ c2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(root.real))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("d", [1, 2, 5, 16])
def test_frechet_distance_matches_scipy_sqrtm(seed, d):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    c1, c2 = _random_cov(rng, d), _random_cov(rng, d)
    assert sq.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(_fd_scipy(mu1, c1, mu2, c2), rel=1e-6, abs=1e-8)


def test_frechet_distance_closed_forms():
    # Same Gaussian: 0. Shifted means, same covariance: squared distance of the means.
    rng = np.random.default_rng(0)
    c = _random_cov(rng, 4)
    mu = rng.standard_normal(4)
    assert sq.frechet_distance(mu, c, mu, c) == pytest.approx(0.0, abs=1e-8)
    assert sq.frechet_distance(mu, c, mu + 2.0, c) == pytest.approx(16.0, rel=1e-8)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    assert sq.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == \
        pytest.approx(4.0 + 1.0)
    # Singular (rank-deficient) covariances, as with fewer samples than features, stay finite and >= 0.
    c1, c2 = _random_cov(rng, 6, rank=2), _random_cov(rng, 6, rank=3)
    value = sq.frechet_distance(np.zeros(6), c1, np.zeros(6), c2)
    assert np.isfinite(value) and value >= 0


@given(st.integers(0, 10_000), st.integers(1, 6))
@settings(max_examples=30, deadline=None)
def test_frechet_distance_is_symmetric_and_nonnegative(seed, d):
    rng = np.random.default_rng(seed)
    mu1, mu2, c1, c2 = rng.standard_normal(d), rng.standard_normal(d), _random_cov(rng, d), _random_cov(rng, d)
    a, b = sq.frechet_distance(mu1, c1, mu2, c2), sq.frechet_distance(mu2, c2, mu1, c1)
    assert a >= 0 and a == pytest.approx(b, rel=1e-6, abs=1e-8)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="cov2"):
        sq.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="mu1"):
        sq.frechet_distance(np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "D"), [(2, 1), (10, 3), (50, 8)])
def test_gaussian_statistics_match_numpy(seed, N, D):
    f = np.random.default_rng(seed).standard_normal((N, D))
    mu, cov = sq.gaussian_statistics(f)
    np.testing.assert_allclose(mu, f.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f, rowvar=False).reshape(D, D), atol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        sq.gaussian_statistics(f[:1])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("N", "C"), [(1, 2), (7, 3), (100, 10)])
def test_confidence_and_coverage_match_numpy(seed, N, C):
    rng = np.random.default_rng(seed)
    logits = 4 * rng.standard_normal((N, C))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    confident, fractions = sq.confidence_and_coverage(probs)
    assert confident == pytest.approx(np.mean(probs.max(axis=1) >= 0.9))
    np.testing.assert_allclose(fractions, np.bincount(probs.argmax(axis=1), minlength=C) / N)
    assert fractions.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        sq.confidence_and_coverage(probs[0])


def test_confidence_threshold_is_inclusive():
    probs = np.array([[0.9, 0.1], [0.89, 0.11], [0.05, 0.95]])
    confident, fractions = sq.confidence_and_coverage(probs)
    assert confident == pytest.approx(2 / 3)
    np.testing.assert_allclose(fractions, [2 / 3, 1 / 3])


def test_classifier_cache_is_atomic_reloadable_and_self_healing(tmp_path, monkeypatch):
    # A private cache directory and a short training run, so this exercises training, the atomic
    # write, the reload and the recovery from a corrupt file without touching the real cache.
    train_short = sq.train_classifier
    monkeypatch.setattr(sq, "train_classifier", lambda seed=0: train_short(seed, epochs=2))
    monkeypatch.setenv("DLBOOK_DATA", str(tmp_path))
    monkeypatch.setattr(sq, "_MEMORY", {})
    model = sq.reference_classifier(seed=3)
    path = sq.cache_path(3)
    assert path.exists() and path.parent.parent == tmp_path
    assert not list(path.parent.glob("*.tmp")), "a temporary file was left behind"
    assert sq.reference_classifier(seed=3) is model, "the second call should come from memory"
    sq._MEMORY.clear()
    reloaded = sq.reference_classifier(seed=3)
    assert reloaded is not model
    x = torch.rand(5, 64)
    torch.testing.assert_close(reloaded(x), model(x))
    # A corrupt cache file is retrained and replaced, never trusted.
    sq._MEMORY.clear()
    path.write_bytes(b"not a checkpoint")
    assert sq._load(path) is None
    again = sq.reference_classifier(seed=3)
    torch.testing.assert_close(again(x), model(x))
    assert sq._load(path) is not None
    # use_disk=False neither reads nor writes the cache.
    sq._MEMORY.clear()
    path.unlink()
    sq.reference_classifier(seed=3, use_disk=False)
    assert not path.exists()


@pytest.fixture(scope="module")
def classifier():
    return sq.reference_classifier()


def test_reference_classifier_is_accurate_and_honest(classifier):
    _, _, X_test, y_test = data.load_digits()
    probs = sq.class_probabilities(X_test, classifier)
    assert probs.shape == (len(X_test), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs.argmax(axis=1) == y_test).mean() >= 0.96
    confident, fractions = sq.confidence_and_coverage(probs)
    assert confident >= 0.85 and fractions.min() >= 0.05
    # Noise and blends of two digits must not look like confident digits.
    rng = np.random.default_rng(0)
    noise_conf, _ = sq.confidence_and_coverage(sq.class_probabilities(rng.random((500, 64)), classifier))
    assert noise_conf <= 0.05
    blend = 0.5 * X_test[rng.integers(0, 450, 500)] + 0.5 * X_test[rng.integers(0, 450, 500)]
    blend_conf, _ = sq.confidence_and_coverage(sq.class_probabilities(blend, classifier))
    assert blend_conf <= 0.4
    mean_image = np.tile(X_test.mean(axis=0), (10, 1))
    assert sq.confidence_and_coverage(sq.class_probabilities(mean_image, classifier))[0] == 0.0


def test_score_samples_separates_real_digits_from_noise(classifier):
    X_train, _, _, _ = data.load_digits()
    real = sq.score_samples(X_train[:600], classifier=classifier)
    noise = sq.score_samples(np.random.default_rng(0).random((600, 64)), classifier=classifier)
    assert set(real) == {"confident_fraction", "class_fractions", "min_class_fraction", "frechet_distance"}
    assert real["confident_fraction"] > 0.85 > 0.1 > noise["confident_fraction"]
    assert real["min_class_fraction"] >= 0.05
    assert real["frechet_distance"] < 0.1 * noise["frechet_distance"]
    one_class = sq.score_samples(X_train[:600][np.flatnonzero(data.load_digits().y_train[:600] == 3)],
                                 classifier=classifier)
    assert one_class["min_class_fraction"] == 0.0 and one_class["class_fractions"][3] > 0.9


def test_images_of_the_wrong_shape_are_rejected(classifier):
    with pytest.raises(ValueError, match=r"\(N, 64\)"):
        sq.class_probabilities(np.zeros((3, 28, 28)), classifier)
    with pytest.raises(ValueError, match="at least one"):
        sq.classifier_features(np.zeros((0, 64)), classifier)
    assert sq.class_probabilities(np.zeros((2, 8, 8)), classifier).shape == (2, 10)
