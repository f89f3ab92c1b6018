"""dlbook.rl: returns, TD updates, losses and the replay buffer against loops and torch.autograd."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import rl

SEEDS = [0, 1, 2]


def loop_returns(rewards, gamma):
    out, running = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("T", [1, 2, 7, 50])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.99, 1.0])
def test_discounted_returns_match_loop(seed, T, gamma):
    r = np.random.default_rng(seed).standard_normal(T)
    np.testing.assert_allclose(rl.discounted_returns(r, gamma), loop_returns(r, gamma), rtol=1e-10, atol=1e-10)


def test_discounted_returns_known_values_and_empty():
    np.testing.assert_allclose(rl.discounted_returns([1.0, 1.0, 1.0], 0.5), [1.75, 1.5, 1.0])
    assert rl.discounted_returns([], 0.9).shape == (0,)
    with pytest.raises(ValueError):
        rl.discounted_returns([[1.0]], 0.9)
    with pytest.raises(ValueError):
        rl.discounted_returns([1.0], 1.1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=30), st.floats(0, 1))
def test_returns_satisfy_the_recursion(r, gamma):
    G = rl.discounted_returns(r, gamma)
    np.testing.assert_allclose(G[:-1], np.array(r[:-1]) + gamma * G[1:], atol=1e-9)
    assert G[-1] == pytest.approx(r[-1])


def test_moving_average():
    np.testing.assert_allclose(rl.moving_average([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(rl.moving_average([5.0], 10), [5.0])
    with pytest.raises(ValueError):
        rl.moving_average([1.0], 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("terminated", [False, True])
def test_q_learning_and_sarsa_updates_match_formula(seed, terminated):
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((6, 3))
    s, a, s2, a2 = 1, 2, 4, 0
    r, alpha, gamma = 0.7, 0.3, 0.9
    boot = 0.0 if terminated else gamma
    q_new = rl.q_learning_update(Q, s, a, r, s2, terminated, alpha, gamma)
    expected = Q.copy()
    expected[s, a] += alpha * (r + boot * Q[s2].max() - Q[s, a])
    np.testing.assert_allclose(q_new, expected, rtol=1e-12)
    s_new = rl.sarsa_update(Q, s, a, r, s2, a2, terminated, alpha, gamma)
    expected = Q.copy()
    expected[s, a] += alpha * (r + boot * Q[s2, a2] - Q[s, a])
    np.testing.assert_allclose(s_new, expected, rtol=1e-12)
    assert not np.shares_memory(q_new, Q)


def test_tabular_update_bad_table():
    with pytest.raises(ValueError):
        rl.q_learning_update(np.zeros(3), 0, 0, 1.0, 1, False, 0.5, 0.9)


def test_tabular_methods_on_cliffwalking_find_their_paths():
    env = gym.make("CliffWalking-v1")
    Q, returns = rl.run_tabular(env, "q_learning", episodes=300, seed=0)
    path, total = rl.greedy_path(env, Q)
    assert total == -13  # the optimal path along the cliff edge
    Qs, _ = rl.run_tabular(env, "sarsa", episodes=300, seed=0)
    _, total_s = rl.greedy_path(env, Qs)
    assert -25 <= total_s < -13  # the safer path, further from the cliff
    with pytest.raises(ValueError):
        rl.run_tabular(env, "td", episodes=1)


def test_epsilon_greedy_action_breaks_ties_randomly():
    rng = np.random.default_rng(0)
    picks = {rl.epsilon_greedy_action([1.0, 1.0, 0.0], 0.0, rng) for _ in range(50)}
    assert picks == {0, 1}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("T", [1, 5, 33])
@pytest.mark.parametrize("with_baseline", [False, True])
def test_reinforce_loss_value_and_gradient(seed, T, with_baseline):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, 3, generator=g, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(3, (T,), generator=g)
    returns = torch.randn(T, generator=g, dtype=torch.float64)
    baseline = torch.randn(T, generator=g, dtype=torch.float64, requires_grad=True) if with_baseline else None
    logp = F.log_softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)
    loss = rl.reinforce_loss(logp, returns, baseline)
    adv = returns - (baseline.detach() if with_baseline else 0.0)
    expected = -(logp.detach() * adv).sum() / T
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    loss.backward()
    # d loss / d logits = -(adv_t / T) * (onehot(a_t) - softmax(logits_t))
    probs = F.softmax(logits.detach(), -1)
    grad = -(adv / T)[:, None] * (F.one_hot(actions, 3).double() - probs)
    torch.testing.assert_close(logits.grad, grad)
    if with_baseline:
        assert baseline.grad is None


def test_reinforce_loss_bad_shapes():
    with pytest.raises(ValueError):
        rl.reinforce_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError):
        rl.reinforce_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("B", "A"), [(1, 1), (1, 2), (8, 2), (5, 6)])
def test_dqn_td_target_matches_loop(seed, B, A):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, generator=g)
    nq = torch.randn(B, A, generator=g, requires_grad=True)
    term = torch.rand(B, generator=g) < 0.4
    y = rl.dqn_td_target(r, nq, term, 0.97)
    expected = [r[i].item() + (0.0 if term[i] else 0.97 * nq[i].max().item()) for i in range(B)]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert not y.requires_grad
    y_float = rl.dqn_td_target(r, nq, term.float(), 0.97)
    torch.testing.assert_close(y, y_float)


def test_dqn_td_target_bad_shapes():
    with pytest.raises(ValueError):
        rl.dqn_td_target(torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.9)
    with pytest.raises(ValueError):
        rl.dqn_td_target(torch.zeros(3), torch.zeros(3, 2), torch.zeros(2), 0.9)


def test_dqn_loss_is_huber_on_taken_actions():
    q = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    loss = rl.dqn_loss(q, torch.tensor([1, 0]), torch.tensor([4.0, 0.5]))
    # errors 2 (linear part: 2 - 0.5) and 0.5 (quadratic: 0.125)
    assert loss.item() == pytest.approx((1.5 + 0.125) / 2)
    loss.backward()
    torch.testing.assert_close(q.grad, torch.tensor([[0.0, -0.5], [-0.25, 0.0]]))


def test_replay_buffer_ring_and_sampling():
    buf = rl.ReplayBuffer(3, obs_dim=2)
    with pytest.raises(ValueError):
        buf.sample(2, np.random.default_rng(0))
    for i in range(5):
        buf.add([i, i], i % 2, float(i), [i + 1, i + 1], i == 4)
    assert len(buf) == 3 and sorted(buf.rewards.tolist()) == [2.0, 3.0, 4.0]
    s, a, r, s2, d = buf.sample(100, np.random.default_rng(0))
    assert s.shape == (100, 2) and s.dtype == torch.float32 and a.dtype == torch.int64
    assert set(r.tolist()) == {2.0, 3.0, 4.0}
    torch.testing.assert_close(s2, s + 1)
    torch.testing.assert_close(d, (r == 4.0).float())
    with pytest.raises(ValueError):
        rl.ReplayBuffer(0, 2)


def test_mlp_and_greedy_evaluation():
    net = rl.mlp([4, 8, 2])
    assert [type(m).__name__ for m in net] == ["Linear", "Tanh", "Linear"]
    with pytest.raises(ValueError):
        rl.mlp([4])
    env = gym.make("CartPole-v1")
    a = rl.evaluate_greedy(env, net, 3, seed=5)
    b = rl.evaluate_greedy(env, net, 3, seed=5)
    assert a.shape == (3,) and (a >= 1).all() and (a == b).all()
