"""dlbook.mdp: Bellman backups against loops, value/policy iteration on MDPs with known answers."""

from __future__ import annotations

import gymnasium as gym
import matplotlib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import mdp

matplotlib.use("Agg")
SEEDS = [0, 1, 2]


def random_mdp(seed: int, S: int, A: int, stop: float = 0.1):
    rng = np.random.default_rng(seed)
    P = rng.random((S, A, S))
    P = P / P.sum(-1, keepdims=True) * (1 - stop)
    return P, rng.standard_normal((S, A))


def chain_mdp():
    """Two states; action 0 stays (reward 0), action 1 from state 0 goes to state 1 (reward 1),
    action 1 in state 1 ends the episode with reward 10."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[1, 0, 1] = 1.0
    P[0, 1, 1] = 1.0
    R = np.array([[0.0, 1.0], [0.0, 10.0]])
    return P, R


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("S", "A"), [(1, 1), (3, 2), (5, 4), (2, 7)])
def test_action_values_and_backup_match_loops(seed, S, A):
    P, R = random_mdp(seed, S, A)
    V = np.random.default_rng(seed + 10).standard_normal(S)
    gamma = 0.9
    Q = np.array([[R[s, a] + gamma * sum(P[s, a, t] * V[t] for t in range(S)) for a in range(A)] for s in range(S)])
    np.testing.assert_allclose(mdp.action_values(V, P, R, gamma), Q, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mdp.bellman_backup(V, P, R, gamma), Q.max(1), rtol=1e-12, atol=1e-12)


def test_chain_mdp_known_values():
    P, R = chain_mdp()
    V, policy, _ = mdp.value_iteration(P, R, gamma=0.5)
    np.testing.assert_allclose(V, [1 + 0.5 * 10, 10.0], atol=1e-7)
    assert policy.tolist() == [1, 1]
    V_pi, pi, iters = mdp.policy_iteration(P, R, gamma=0.5)
    np.testing.assert_allclose(V_pi, [6.0, 10.0], atol=1e-10)
    assert pi.tolist() == [1, 1] and iters >= 2


@pytest.mark.parametrize("seed", SEEDS)
def test_value_and_policy_iteration_agree_and_are_fixed_points(seed):
    P, R = random_mdp(seed, 6, 3)
    V, pi, deltas = mdp.value_iteration(P, R, 0.9, tol=1e-11)
    V2, pi2, _ = mdp.policy_iteration(P, R, 0.9)
    np.testing.assert_allclose(V, V2, atol=1e-8)
    assert (pi == pi2).all()
    np.testing.assert_allclose(mdp.bellman_backup(V, P, R, 0.9), V, atol=1e-9)
    assert deltas[-1] < 1e-11 and all(b <= a * 0.9 + 1e-12 for a, b in zip(deltas, deltas[1:], strict=False))


@pytest.mark.parametrize("seed", SEEDS)
def test_policy_evaluation_matches_iterating_the_policy_backup(seed):
    P, R = random_mdp(seed, 5, 3)
    pi = np.random.default_rng(seed).integers(3, size=5)
    V = np.zeros(5)
    for _ in range(2000):
        V = R[np.arange(5), pi] + 0.8 * P[np.arange(5), pi] @ V
    np.testing.assert_allclose(mdp.policy_evaluation(pi, P, R, 0.8), V, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.95))
def test_backup_is_a_gamma_contraction(seed, gamma):
    P, R = random_mdp(seed, 4, 3, stop=0.0)
    rng = np.random.default_rng(seed)
    U, W = rng.standard_normal(4), rng.standard_normal(4)
    lhs = np.abs(mdp.bellman_backup(U, P, R, gamma) - mdp.bellman_backup(W, P, R, gamma)).max()
    assert lhs <= gamma * np.abs(U - W).max() + 1e-12


def test_frozenlake_arrays_and_known_optimum():
    env = gym.make("FrozenLake-v1")
    P, R = mdp.from_gymnasium(env)
    assert P.shape == (16, 4, 16) and R.shape == (16, 4)
    assert P[5].sum() == 0 and P[15].sum() == 0  # hole and goal end the episode
    assert R[14, 2] == pytest.approx(1 / 3)  # right from 14 slips onto the goal 1 time in 3
    V, pi, _ = mdp.value_iteration(P, R, 0.99, tol=1e-12)
    assert V[0] == pytest.approx(0.5420, abs=2e-3)
    np.testing.assert_allclose(mdp.policy_evaluation(pi, P, R, 0.99), V, atol=1e-6)


def test_frozenlake_deterministic_shortest_path():
    env = gym.make("FrozenLake-v1", is_slippery=False)
    P, R = mdp.from_gymnasium(env)
    V, _, _ = mdp.value_iteration(P, R, 0.9)
    assert V[0] == pytest.approx(0.9**5)  # six moves, the last one paid


@pytest.mark.parametrize(("P", "R", "gamma"), [
    (np.zeros((2, 2)), np.zeros((2, 2)), 0.9),
    (np.zeros((2, 2, 3)), np.zeros((2, 2)), 0.9),
    (np.zeros((2, 2, 2)), np.zeros((2, 3)), 0.9),
    (np.full((2, 2, 2), 0.9), np.zeros((2, 2)), 0.9),
    (np.zeros((2, 2, 2)), np.zeros((2, 2)), 1.5),
])
def test_bad_mdps_raise(P, R, gamma):
    with pytest.raises(ValueError):
        mdp.bellman_backup(np.zeros(2), P, R, gamma)


def test_bad_value_shape_raises():
    P, R = chain_mdp()
    with pytest.raises(ValueError, match="expected V of shape"):
        mdp.bellman_backup(np.zeros(3), P, R, 0.9)


def test_policy_text_and_draw_grid():
    env = gym.make("FrozenLake-v1")
    desc = env.unwrapped.desc
    text = mdp.policy_text(np.zeros(16, dtype=int), (4, 4), mdp.FROZENLAKE_ARROWS, desc)
    assert text.splitlines()[0] == "← ← ← ←" and text.splitlines()[1] == "← H ← H"
    ax = mdp.draw_grid(np.arange(16.0), (4, 4), policy=np.ones(16, dtype=int), desc=desc, path=[0, 4, 8])
    assert ax.images and ax.lines
    with pytest.raises(ValueError):
        mdp.draw_grid(np.arange(16.0), (4, 4), desc=[["S", "F"]])
