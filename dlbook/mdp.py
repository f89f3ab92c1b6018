"""Finite MDPs as arrays: Bellman backups, value iteration, policy iteration, and grid drawing.

A finite MDP with ``S`` states and ``A`` actions is held as two arrays:

- ``P`` (S, A, S): ``P[s, a, s2]`` = probability of moving to ``s2`` *and carrying on*. Transitions that
  end the episode are left out, so a row sums to 1 minus the probability of termination, and the
  value after termination is 0 without any special case.
- ``R`` (S, A): the expected immediate reward of taking ``a`` in ``s``.

Then the action values of a state-value function ``V`` (S,) are ``Q = R + gamma * P @ V`` (S, A).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from ._convert import check_gamma

# Arrow directions (dx, dy) per action, y pointing down the grid rows.
FROZENLAKE_ARROWS = ((-1, 0), (0, 1), (1, 0), (0, -1))  # left, down, right, up
CLIFFWALKING_ARROWS = ((0, -1), (1, 0), (0, 1), (-1, 0))  # up, right, down, left


def _check_mdp(P: Any, R: Any) -> tuple[torch.Tensor, torch.Tensor]:
    P = torch.as_tensor(np.asarray(P, dtype=np.float64) if not isinstance(P, torch.Tensor) else P).double()
    R = torch.as_tensor(np.asarray(R, dtype=np.float64) if not isinstance(R, torch.Tensor) else R).double()
    if P.ndim != 3 or P.shape[0] != P.shape[2]:
        raise ValueError(f"expected P of shape (S, A, S), got {tuple(P.shape)}")
    if tuple(R.shape) != tuple(P.shape[:2]):
        raise ValueError(f"expected R of shape (S, A) = {tuple(P.shape[:2])}, got {tuple(R.shape)}")
    if (P < 0).any() or (P.sum(-1) > 1 + 1e-9).any():
        raise ValueError("P[s, a] must be non-negative and sum to at most 1")
    return P, R


def from_gymnasium(env: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(P (S, A, S), R (S, A))`` of a gymnasium toy-text env (FrozenLake, CliffWalking...).

    Reads the env's transition table ``env.unwrapped.P[s][a] = [(prob, next_state, reward, done)]``;
    transitions with ``done=True`` are left out of ``P`` (the episode ends there).
    """
    table = env.unwrapped.P
    n_states, n_actions = env.observation_space.n, env.action_space.n
    P = np.zeros((n_states, n_actions, n_states))
    R = np.zeros((n_states, n_actions))
    for s in range(n_states):
        for a in range(n_actions):
            for prob, s2, reward, done in table[s][a]:
                R[s, a] += prob * reward
                if not done:
                    P[s, a, int(s2)] += prob
    return P, R


def action_values(V: Any, P: Any, R: Any, gamma: float) -> np.ndarray:
    """Return ``Q`` (S, A) with ``Q[s, a] = R[s, a] + gamma * sum_s2 P[s, a, s2] V[s2]``."""
    P, R = _check_mdp(P, R)
    check_gamma(gamma)
    V = torch.as_tensor(np.asarray(V, dtype=np.float64))
    if tuple(V.shape) != (P.shape[0],):
        raise ValueError(f"expected V of shape (S,) = ({P.shape[0]},), got {tuple(V.shape)}")
    return (R + gamma * torch.einsum("sat,t->sa", P, V)).numpy()


def bellman_backup(V: Any, P: Any, R: Any, gamma: float) -> np.ndarray:
    """Return the (S,) value-iteration update ``max_a (R + gamma * P @ V)`` of ``V`` (S,)."""
    return torch.as_tensor(action_values(V, P, R, gamma)).amax(dim=1).numpy()


def value_iteration(P: Any, R: Any, gamma: float, tol: float = 1e-8,
                    max_iters: int = 10_000) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Return ``(V (S,), greedy policy (S,) int, deltas)`` by repeated Bellman backups from ``V = 0``.

    Stops when the largest change ``max |V_new - V|`` (recorded in ``deltas``) drops below ``tol``.
    """
    P_, _ = _check_mdp(P, R)
    V = np.zeros(P_.shape[0])
    deltas: list[float] = []
    for _ in range(max_iters):
        V_new = bellman_backup(V, P, R, gamma)
        deltas.append(float(np.max(np.abs(V_new - V))))
        V = V_new
        if deltas[-1] < tol:
            break
    return V, greedy_policy(V, P, R, gamma), deltas


def greedy_policy(V: Any, P: Any, R: Any, gamma: float) -> np.ndarray:
    """Return the (S,) int policy that is greedy with respect to ``V`` (first best action on ties)."""
    Q = action_values(V, P, R, gamma)
    # Round so that actions equal up to float noise count as ties, broken by the lowest index.
    return np.argmax(np.round(Q, 10), axis=1)


def policy_evaluation(policy: Any, P: Any, R: Any, gamma: float) -> np.ndarray:
    """Return ``V`` (S,) of a deterministic ``policy`` (S,) by solving ``(I - gamma P_pi) V = R_pi``.

    Needs ``gamma < 1`` or a policy that ends every episode (else the system is singular).
    """
    P, R = _check_mdp(P, R)
    check_gamma(gamma)
    pi = torch.as_tensor(np.asarray(policy), dtype=torch.long)
    if tuple(pi.shape) != (P.shape[0],):
        raise ValueError(f"expected policy of shape (S,) = ({P.shape[0]},), got {tuple(pi.shape)}")
    states = torch.arange(P.shape[0])
    P_pi, R_pi = P[states, pi], R[states, pi]
    return torch.linalg.solve(torch.eye(P.shape[0], dtype=torch.float64) - gamma * P_pi, R_pi).numpy()


def policy_iteration(P: Any, R: Any, gamma: float, max_iters: int = 1000) -> tuple[np.ndarray, np.ndarray, int]:
    """Return ``(V (S,), policy (S,), iterations)``: evaluate, improve greedily, until the policy is stable."""
    P_, _ = _check_mdp(P, R)
    policy = np.zeros(P_.shape[0], dtype=np.int64)
    for it in range(1, max_iters + 1):
        V = policy_evaluation(policy, P, R, gamma)
        new_policy = greedy_policy(V, P, R, gamma)
        if np.array_equal(new_policy, policy):
            return V, policy, it
        policy = new_policy
    return V, policy, max_iters


def _desc_rows(desc: Any, shape: tuple[int, int]) -> list[str] | None:
    if desc is None:
        return None
    rows = [b"".join(r).decode() if isinstance(r, np.ndarray) else str(r) for r in np.asarray(desc)]
    rows = [r.decode() if isinstance(r, bytes) else r for r in rows]
    if (len(rows), len(rows[0])) != tuple(shape):
        raise ValueError(f"desc has {len(rows)}x{len(rows[0])} cells, expected {shape}")
    return rows


def policy_text(policy: Any, shape: tuple[int, int], arrows: Sequence[tuple[int, int]] = FROZENLAKE_ARROWS,
                desc: Any = None) -> str:
    """Return the policy (S,) as rows of arrow characters; letters from ``desc`` (H, G...) stay.

    Cells whose ``desc`` letter is ``H`` (hole), ``G`` (goal) or ``C`` (cliff) show that letter.
    """
    symbols = {(-1, 0): "←", (1, 0): "→", (0, 1): "↓", (0, -1): "↑"}
    pi = np.asarray(policy).reshape(shape)
    rows = _desc_rows(desc, shape)
    lines = []
    for i in range(shape[0]):
        cells = []
        for j in range(shape[1]):
            letter = rows[i][j] if rows else ""
            cells.append(letter if letter in "HGC" and letter else symbols[tuple(arrows[int(pi[i, j])])])
        lines.append(" ".join(cells))
    return "\n".join(lines)


def draw_grid(values: Any, shape: tuple[int, int], policy: Any = None,
              arrows: Sequence[tuple[int, int]] = FROZENLAKE_ARROWS, desc: Any = None,
              path: Sequence[int] | None = None, ax: plt.Axes | None = None, title: str = "",
              cmap: str = "viridis") -> plt.Axes:
    """Return an axis showing ``values`` (S,) as a coloured grid with the policy's arrows on top.

    ``desc`` letters (S start, H hole, G goal, C cliff) are written in their cells (H, G and C cells
    are grey, without a value); ``path`` (a list of visited states) is drawn as a red line.
    """
    grid = np.asarray(values, dtype=np.float64).reshape(shape)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.6 * shape[1] + 1.5, 0.6 * shape[0] + 0.8))
    rows = _desc_rows(desc, shape)
    if rows:  # holes, cliff and goal end the episode or are never stood on: grey, not a value
        ends = np.array([[letter in "HGC" for letter in row] for row in rows])
        grid = np.ma.masked_where(ends, grid)
    colours = plt.get_cmap(cmap).with_extremes(bad="0.55")
    image = ax.imshow(grid, cmap=colours)
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    pi = None if policy is None else np.asarray(policy).reshape(shape)
    for i in range(shape[0]):
        for j in range(shape[1]):
            letter = rows[i][j] if rows else ""
            if letter in ("S", "H", "G", "C"):
                ax.text(j, i, letter, ha="center", va="center", color="white", fontsize=11, weight="bold")
                if letter != "S":
                    continue
            if pi is not None:
                dx, dy = arrows[int(pi[i, j])]
                ax.annotate("", xy=(j + 0.32 * dx, i + 0.32 * dy), xytext=(j - 0.32 * dx, i - 0.32 * dy),
                            arrowprops=dict(arrowstyle="->", color="white", lw=1.5))
    if path is not None and len(path) > 0:
        ys, xs = np.divmod(np.asarray(path), shape[1])
        ax.plot(xs, ys, color="#e8453c", lw=2.5, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax
