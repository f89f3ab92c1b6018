"""Multi-armed bandits: a Gaussian testbed, action-selection references and a regret runner.

A bandit has ``K`` arms; pulling arm ``a`` pays a reward drawn around its unknown mean ``mu[a]``.
An agent keeps ``counts`` (N,) = pulls per arm and ``values`` (K,) = the mean reward seen per arm.
Regret after ``T`` pulls is ``sum_t (max(mu) - mu[a_t])``: what was lost by not always pulling the best arm.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def _as_1d(name: str, values: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(values, dtype=np.float64) if not isinstance(values, torch.Tensor) else values)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"expected {name} of shape (K,) with K >= 1, got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def epsilon_greedy_probs(values: np.ndarray | torch.Tensor, epsilon: float) -> np.ndarray:
    """Return the (K,) probabilities with which epsilon-greedy picks each arm.

    With probability ``epsilon`` an arm is drawn uniformly, otherwise the greedy arm (the first
    maximum, as ``argmax``) is taken: ``p = epsilon / K`` everywhere plus ``1 - epsilon`` on the greedy arm.
    """
    q = _as_1d("values", values)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    probs = torch.full_like(q, epsilon / q.numel())
    probs[torch.argmax(q)] += 1.0 - epsilon
    return probs.numpy()


def epsilon_greedy(values: np.ndarray | torch.Tensor, epsilon: float, rng: np.random.Generator) -> int:
    """Return an arm index drawn epsilon-greedily from ``values`` (K,) using ``rng``."""
    probs = epsilon_greedy_probs(values, epsilon)
    return int(rng.choice(len(probs), p=probs))


def ucb_scores(counts: np.ndarray | torch.Tensor, values: np.ndarray | torch.Tensor, t: int,
               c: float = 2.0) -> np.ndarray:
    """Return the (K,) UCB1 scores ``values + c * sqrt(ln t / counts)``, ``+inf`` for untried arms.

    Args:
        counts: (K,) pulls per arm so far (non-negative).
        values: (K,) mean reward per arm so far.
        t: the current time step, ``t >= 1`` (pulls so far plus one).
        c: exploration strength.
    """
    n = _as_1d("counts", counts)
    q = _as_1d("values", values)
    if n.shape != q.shape:
        raise ValueError(f"counts has shape {tuple(n.shape)} but values has {tuple(q.shape)}; expected the same")
    if (n < 0).any():
        raise ValueError("counts must be non-negative")
    if t < 1:
        raise ValueError(f"t must be >= 1, got {t}")
    bonus = c * torch.sqrt(torch.log(torch.tensor(float(t), dtype=torch.float64)) / n)
    return torch.where(n > 0, q + bonus, torch.full_like(q, torch.inf)).numpy()


def ucb_select(counts: np.ndarray | torch.Tensor, values: np.ndarray | torch.Tensor, t: int, c: float = 2.0) -> int:
    """Return the arm UCB1 pulls at step ``t``: the first untried arm, else the first maximum score."""
    return int(torch.argmax(torch.as_tensor(ucb_scores(counts, values, t, c))))


class GaussianBandit:
    """A ``K``-armed testbed: arm means ``mu ~ N(0, 1)``, rewards ``N(mu[a], 1)``.

    >>> bandit = GaussianBandit(10, np.random.default_rng(0))
    >>> reward = bandit.pull(3)
    """

    def __init__(self, k: int, rng: np.random.Generator, noise: float = 1.0):
        if k < 1:
            raise ValueError(f"a bandit needs k >= 1 arms, got {k}")
        self.rng = rng
        self.means = rng.standard_normal(k)
        self.noise = noise

    @property
    def k(self) -> int:
        return len(self.means)

    def pull(self, arm: int) -> float:
        """Return a reward for pulling ``arm``."""
        if not 0 <= arm < self.k:
            raise ValueError(f"arm must be in [0, {self.k}), got {arm}")
        return float(self.means[arm] + self.noise * self.rng.standard_normal())


Selector = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], int]


def run_bandit(select: Selector, k: int = 10, steps: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Return the rewards (steps,), cumulative regret (steps,) and arm choices of one run.

    ``select(counts, values, t, rng) -> arm`` is called at every step ``t = 1 .. steps``; the sample
    means are updated incrementally, ``values[a] += (r - values[a]) / counts[a]``.
    """
    rng = np.random.default_rng(seed)
    bandit = GaussianBandit(k, rng)
    counts, values = np.zeros(k), np.zeros(k)
    rewards, regret, arms = np.zeros(steps), np.zeros(steps), np.zeros(steps, dtype=np.int64)
    best = bandit.means.max()
    for t in range(1, steps + 1):
        arm = int(select(counts.copy(), values.copy(), t, rng))
        r = bandit.pull(arm)
        counts[arm] += 1
        values[arm] += (r - values[arm]) / counts[arm]
        rewards[t - 1], arms[t - 1] = r, arm
        regret[t - 1] = best - bandit.means[arm]
    return {"rewards": rewards, "regret": np.cumsum(regret), "arms": arms, "means": bandit.means}
