"""dlbook.bandits: selection rules against closed forms and simulation, the runner's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import bandits

SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 2, 5, 10])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_epsilon_greedy_probs_closed_form(seed, k, eps):
    q = np.random.default_rng(seed).standard_normal(k)
    probs = bandits.epsilon_greedy_probs(q, eps)
    expected = np.full(k, eps / k)
    expected[np.argmax(q)] += 1 - eps
    np.testing.assert_allclose(probs, expected, atol=1e-12)
    assert probs.sum() == pytest.approx(1.0)


def test_epsilon_greedy_ties_go_to_first_maximum():
    np.testing.assert_allclose(bandits.epsilon_greedy_probs([1.0, 3.0, 3.0], 0.0), [0, 1, 0])


@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0])
def test_epsilon_greedy_samples_match_probs(eps):
    rng = np.random.default_rng(0)
    q = np.array([0.1, 0.9, -0.3, 0.2])
    draws = np.array([bandits.epsilon_greedy(q, eps, rng) for _ in range(6000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, bandits.epsilon_greedy_probs(q, eps), atol=0.03)


@pytest.mark.parametrize(("bad", "eps"), [([], 0.1), ([[1.0, 2.0]], 0.1), ([1.0], -0.1), ([1.0], 1.5)])
def test_epsilon_greedy_rejects_bad_input(bad, eps):
    with pytest.raises(ValueError):
        bandits.epsilon_greedy_probs(bad, eps)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 8])
def test_ucb_scores_closed_form(seed, k):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 20, size=k).astype(float)
    values = rng.standard_normal(k)
    t = int(counts.sum()) + 1
    expected = values + 1.5 * np.sqrt(np.log(t) / counts)
    np.testing.assert_allclose(bandits.ucb_scores(counts, values, t, c=1.5), expected, rtol=1e-12)
    assert bandits.ucb_select(counts, values, t, c=1.5) == int(np.argmax(expected))


def test_ucb_tries_untried_arms_first_in_order():
    assert bandits.ucb_select([3, 0, 0], [10.0, 0.0, 0.0], 4) == 1
    assert bandits.ucb_select([3, 1, 0], [10.0, 0.0, 0.0], 5) == 2
    assert bandits.ucb_select([0, 0], [0.0, 0.0], 1) == 0


def test_ucb_with_c_zero_is_greedy():
    assert bandits.ucb_select([5, 5, 5], [0.1, 0.3, 0.2], 16, c=0.0) == 1


@pytest.mark.parametrize(("counts", "values", "t"), [([1, 2], [0.0], 3), ([-1, 2], [0.0, 1.0], 3), ([1, 1], [0, 0], 0)])
def test_ucb_rejects_bad_input(counts, values, t):
    with pytest.raises(ValueError):
        bandits.ucb_scores(counts, values, t)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=8), st.floats(0, 1))
def test_epsilon_greedy_probs_is_a_distribution_favouring_the_best(q, eps):
    probs = bandits.epsilon_greedy_probs(q, eps)
    assert probs.min() >= 0 and probs.sum() == pytest.approx(1.0)
    assert probs[int(np.argmax(q))] == pytest.approx(probs.max())


def test_run_bandit_bookkeeping_and_greedy_oracle():
    def always_best(counts, values, t, rng):
        return oracle_arm

    probe = bandits.GaussianBandit(5, np.random.default_rng(3))
    oracle_arm = int(np.argmax(probe.means))
    run = bandits.run_bandit(always_best, k=5, steps=50, seed=3)
    assert run["rewards"].shape == (50,) and run["regret"].shape == (50,)
    np.testing.assert_allclose(run["regret"], 0.0)
    assert (run["arms"] == oracle_arm).all()


def test_run_bandit_regret_is_nondecreasing_and_ucb_beats_random():
    def random_arm(counts, values, t, rng):
        return int(rng.integers(len(counts)))

    def ucb(counts, values, t, rng):
        return bandits.ucb_select(counts, values, t)

    r_random = np.mean([bandits.run_bandit(random_arm, steps=500, seed=s)["regret"][-1] for s in range(5)])
    runs = [bandits.run_bandit(ucb, steps=500, seed=s)["regret"] for s in range(5)]
    assert all((np.diff(r) >= -1e-12).all() for r in runs)
    assert np.mean([r[-1] for r in runs]) < 0.5 * r_random


def test_bandit_rejects_bad_arms():
    with pytest.raises(ValueError):
        bandits.GaussianBandit(0, np.random.default_rng(0))
    with pytest.raises(ValueError):
        bandits.GaussianBandit(3, np.random.default_rng(0)).pull(3)
