"""Reinforcement-learning building blocks: returns, TD targets and updates, losses, a replay buffer.

Conventions: ``gamma`` is the discount in [0, 1]; ``terminated`` marks a transition after which the
episode truly ended (the value of what follows is 0). A *truncated* episode (a time limit) is not
terminated: its last state still has a value, so ``terminated`` must be False there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._convert import check_gamma


def _table(Q: Any) -> np.ndarray:
    Q = np.array(Q, dtype=np.float64, copy=True)
    if Q.ndim != 2:
        raise ValueError(f"expected a Q table of shape (S, A), got {Q.shape}")
    return Q


# ----------------------------------------------------------------------------- returns


def discounted_returns(rewards: Any, gamma: float) -> np.ndarray:
    """Return the (T,) rewards-to-go ``G_t = sum_{k >= t} gamma^(k - t) r_k`` of one episode's rewards (T,).

    Computed as one matrix product with the upper-triangular matrix of discounts ``gamma^(k - t)``.
    """
    check_gamma(gamma)
    r = torch.as_tensor(np.asarray(rewards, dtype=np.float64))
    if r.ndim != 1:
        raise ValueError(f"expected rewards of shape (T,), got {tuple(r.shape)}")
    steps = torch.arange(r.numel(), dtype=torch.float64)
    power = steps[None, :] - steps[:, None]  # k - t
    discounts = torch.where(power >= 0, torch.tensor(gamma, dtype=torch.float64) ** power.clamp(min=0), 0.0)
    return (discounts @ r).numpy()


def moving_average(x: Any, window: int) -> np.ndarray:
    """Return the (T,) trailing mean of ``x`` (T,) over up to ``window`` entries (shorter at the start)."""
    x = np.asarray(x, dtype=np.float64)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


# ----------------------------------------------------------------------------- tabular TD


def td_target(reward: float, next_value: float, terminated: bool, gamma: float) -> float:
    """Return ``r + gamma * next_value``, or just ``r`` when the episode terminated."""
    check_gamma(gamma)
    return float(reward) + (0.0 if terminated else gamma * float(next_value))


def q_learning_update(Q: Any, s: int, a: int, r: float, s_next: int, terminated: bool,
                      alpha: float, gamma: float) -> np.ndarray:
    """Return a copy of ``Q`` (S, A) after one Q-learning step on ``(s, a, r, s_next)``.

    ``Q[s, a] += alpha * (r + gamma * max_a' Q[s_next, a'] - Q[s, a])`` (no bootstrap if terminated).
    """
    Q = _table(Q)
    target = td_target(r, torch.as_tensor(Q[s_next]).max().item(), terminated, gamma)
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def sarsa_update(Q: Any, s: int, a: int, r: float, s_next: int, a_next: int, terminated: bool,
                 alpha: float, gamma: float) -> np.ndarray:
    """Return a copy of ``Q`` (S, A) after one SARSA step on ``(s, a, r, s_next, a_next)``.

    ``Q[s, a] += alpha * (r + gamma * Q[s_next, a_next] - Q[s, a])`` (no bootstrap if terminated).
    """
    Q = _table(Q)
    target = td_target(r, Q[s_next, a_next], terminated, gamma)
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def epsilon_greedy_action(q_row: Any, epsilon: float, rng: np.random.Generator) -> int:
    """Return a random action with probability ``epsilon``, else a greedy one (ties broken at random)."""
    q_row = np.asarray(q_row)
    if rng.random() < epsilon:
        return int(rng.integers(len(q_row)))
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[rng.integers(len(best))])


def run_tabular(env: Any, method: str, episodes: int, alpha: float = 0.5, gamma: float = 1.0,
                epsilon: float = 0.1, seed: int = 0, max_steps: int = 1000,
                update: Callable[..., np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(Q (S, A), episode returns (episodes,))`` of tabular ``"q_learning"`` or ``"sarsa"``.

    Acts epsilon-greedily on ``env`` (a gymnasium env with discrete states and actions).
    ``update`` replaces the reference update (same signature as :func:`q_learning_update` or
    :func:`sarsa_update`).
    """
    if method not in ("q_learning", "sarsa"):
        raise ValueError(f"method must be 'q_learning' or 'sarsa', got {method!r}")
    update = update or (q_learning_update if method == "q_learning" else sarsa_update)
    rng = np.random.default_rng(seed)
    Q = np.zeros((env.observation_space.n, env.action_space.n))
    returns = np.zeros(episodes)
    for ep in range(episodes):
        s, _ = env.reset(seed=seed + ep)
        a = epsilon_greedy_action(Q[s], epsilon, rng)
        for _ in range(max_steps):
            s2, r, terminated, truncated, _ = env.step(a)
            a2 = epsilon_greedy_action(Q[s2], epsilon, rng)
            if method == "q_learning":
                Q = update(Q, s, a, r, s2, terminated, alpha, gamma)
            else:
                Q = update(Q, s, a, r, s2, a2, terminated, alpha, gamma)
            returns[ep] += r
            s, a = s2, a2
            if terminated or truncated:
                break
    return Q, returns


def greedy_path(env: Any, Q: Any, seed: int = 0, max_steps: int = 200) -> tuple[list[int], float]:
    """Return ``(visited states, return)`` of one greedy episode (first best action) with table ``Q``."""
    s, _ = env.reset(seed=seed)
    path, total = [int(s)], 0.0
    for _ in range(max_steps):
        s, r, terminated, truncated, _ = env.step(int(np.argmax(Q[s])))
        path.append(int(s))
        total += float(r)
        if terminated or truncated:
            break
    return path, total


# ----------------------------------------------------------------------------- deep RL


def reinforce_loss(log_probs: torch.Tensor, returns: torch.Tensor,
                   baseline: torch.Tensor | None = None) -> torch.Tensor:
    """Return the scalar REINFORCE loss ``-mean_t log pi(a_t|s_t) * (G_t - b_t)``.

    Args:
        log_probs: (T,) log-probabilities of the actions taken (with gradient).
        returns: (T,) returns ``G_t``.
        baseline: (T,) or None, e.g. a value network's ``V(s_t)``; no gradient flows through it
            (nor through ``returns``).
    """
    if log_probs.ndim != 1 or returns.shape != log_probs.shape:
        raise ValueError(f"expected log_probs and returns of the same shape (T,), got "
                         f"{tuple(log_probs.shape)} and {tuple(returns.shape)}")
    advantage = returns.detach()
    if baseline is not None:
        if baseline.shape != log_probs.shape:
            raise ValueError(f"expected baseline of shape {tuple(log_probs.shape)}, got {tuple(baseline.shape)}")
        advantage = advantage - baseline.detach()
    return -(log_probs * advantage).mean()


def dqn_td_target(rewards: torch.Tensor, next_q: torch.Tensor, terminated: torch.Tensor, gamma: float) -> torch.Tensor:
    """Return the (B,) DQN targets ``r + gamma * (1 - terminated) * max_a next_q[:, a]``, without gradient.

    Args:
        rewards: (B,) rewards.
        next_q: (B, A) target-network action values of the next states.
        terminated: (B,) bool or 0/1: the episode ended at this transition.
    """
    check_gamma(gamma)
    if next_q.ndim != 2 or rewards.shape != next_q.shape[:1] or terminated.shape != rewards.shape:
        raise ValueError(f"expected rewards (B,), next_q (B, A), terminated (B,), got {tuple(rewards.shape)}, "
                         f"{tuple(next_q.shape)}, {tuple(terminated.shape)}")
    alive = 1.0 - terminated.to(next_q.dtype)
    return (rewards.to(next_q.dtype) + gamma * alive * next_q.amax(dim=1)).detach()


def dqn_loss(q_values: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the Huber (smooth L1) loss between ``q_values[b, actions[b]]`` (B,) and ``targets`` (B,)."""
    taken = q_values.gather(1, actions.long().view(-1, 1)).squeeze(1)
    return F.smooth_l1_loss(taken, targets.detach())


class ReplayBuffer:
    """A fixed-size ring buffer of transitions ``(s, a, r, s_next, terminated)`` sampled uniformly.

    >>> buffer = ReplayBuffer(10_000, obs_dim=4)
    >>> buffer.add(s, a, r, s_next, terminated)
    >>> s, a, r, s_next, terminated = buffer.sample(64, rng)   # tensors (64, 4), (64,), ...
    """

    def __init__(self, capacity: int, obs_dim: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.added = 0

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def add(self, obs: Any, action: int, reward: float, next_obs: Any, terminated: bool) -> None:
        """Store one transition, overwriting the oldest once the buffer is full."""
        i = self.added % self.capacity
        self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.next_obs[i], self.terminated[i] = next_obs, float(terminated)
        self.added += 1

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        """Return ``(obs (B, D), actions (B,), rewards (B,), next_obs (B, D), terminated (B,))`` tensors."""
        if len(self) == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer")
        idx = rng.integers(len(self), size=batch_size)
        return tuple(torch.as_tensor(a[idx]) for a in
                     (self.obs, self.actions, self.rewards, self.next_obs, self.terminated))


def mlp(sizes: list[int], activation: type[torch.nn.Module] = torch.nn.Tanh) -> torch.nn.Sequential:
    """Return an MLP ``Linear(sizes[0], sizes[1]) - activation - ... - Linear(sizes[-2], sizes[-1])``."""
    if len(sizes) < 2:
        raise ValueError(f"expected at least an input and an output size, got {sizes}")
    layers: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return torch.nn.Sequential(*layers)


@torch.no_grad()
def evaluate_greedy(env: Any, q_net: torch.nn.Module, episodes: int, seed: int = 0) -> np.ndarray:
    """Return the (episodes,) returns of acting greedily (``argmax`` of ``q_net``) on ``env``.

    Episode ``i`` starts from ``env.reset(seed=seed + i)``, so an evaluation is repeatable.
    """
    returns = np.zeros(episodes)
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            action = int(q_net(torch.as_tensor(obs, dtype=torch.float32)).argmax())
            obs, r, terminated, truncated, _ = env.step(action)
            returns[i] += r
            done = terminated or truncated
    return returns
