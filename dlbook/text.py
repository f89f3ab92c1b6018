"""Character-level text: the census names, a vocabulary with an end-of-word token, and language models.

- :func:`load_names`: US census first names and surnames from the PyPI package ``names`` (its data
  ships with it, so this works offline), lower-cased, de-duplicated, split train/validation
  deterministically.
- :class:`Vocab`: characters <-> integer ids; id 0 is the end-of-word token ``"."``, which also
  starts every word.
- :func:`bigram_counts`, :func:`bigram_nll`: the counting baseline.
- :func:`pad_batch`, :func:`lm_loss`, :func:`evaluate_lm`, :func:`train_lm`: batching, loss in nats per
  character, and a training loop with a progress bar and a live plot for any model mapping ids
  ``(N, T)`` to logits ``(N, T, V)``.
- :func:`sample_with_temperature`, :func:`generate`: sampling names from a model.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .devices import device as default_device

END = "."
IGNORE_INDEX = -100
NAMES_FILES = ("dist.male.first", "dist.female.first", "dist.all.last")


class Vocab:
    """Characters <-> ids. Id 0 is the end-of-word token ``"."``; letters follow in sorted order.

    >>> vocab = Vocab(["ab", "ba"])
    >>> vocab.encode("ab")
    [0, 1, 2, 0]
    >>> vocab.decode([1, 2, 0])
    'ab'
    """

    def __init__(self, words: Sequence[str]):
        chars = sorted(set("".join(words)))
        if END in chars:
            raise ValueError(f"words must not contain the end-of-word token {END!r}")
        self.itos: list[str] = [END, *chars]
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, word: str) -> list[int]:
        """Return the ids of ``"." + word + "."``: the end token, the characters, the end token."""
        try:
            return [0, *(self.stoi[c] for c in word), 0]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} of {word!r} is not in the vocabulary") from None

    def decode(self, ids: Sequence[int]) -> str:
        """Return the characters of ``ids``, stopping at the first end token (a leading one is skipped)."""
        out = []
        for i, idx in enumerate(int(j) for j in ids):
            if idx == 0:
                if i == 0:
                    continue
                break
            out.append(self.itos[idx])
        return "".join(out)


class NamesData(NamedTuple):
    """Train and validation words (lower-case strings) and their vocabulary."""

    train: list[str]
    val: list[str]
    vocab: Vocab


def names_dir() -> Path:
    """Return the folder holding the ``names`` package's census files."""
    try:
        import names
    except ImportError as err:
        raise ImportError(
            "the census names come from the PyPI package 'names'; install it with `pip install names`"
        ) from err
    return Path(names.__file__).parent


def read_names(files: Sequence[str] = NAMES_FILES) -> list[str]:
    """Return the sorted, de-duplicated, lower-cased names in the given census files."""
    folder = names_dir()
    words: set[str] = set()
    for name in files:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; reinstall the 'names' package (`pip install names`)")
        for line in path.read_text().splitlines():
            if line.strip():
                words.add(line.split()[0].lower())
    return sorted(words)


def load_names(val_fraction: float = 0.1, seed: int = 0, files: Sequence[str] = NAMES_FILES,
               limit: int | None = None) -> NamesData:
    """Return the census names split into train and validation words, and their vocabulary.

    The split is a seeded permutation of the sorted names, so it is the same on every machine.
    ``limit`` keeps only the first ``limit`` names of that permutation (for fast runs); the vocabulary
    is always built from every name, so ids do not depend on ``limit``.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    words = read_names(files)
    vocab = Vocab(words)
    order = np.random.default_rng(seed).permutation(len(words))
    if limit is not None:
        if limit < 2:
            raise ValueError(f"limit must be at least 2, got {limit}")
        order = order[:limit]
    n_val = max(1, int(round(val_fraction * len(order))))
    val = [words[i] for i in order[:n_val]]
    train = [words[i] for i in order[n_val:]]
    return NamesData(train, val, vocab)


# ----------------------------------------------------------------------------- bigram baseline


def _pairs(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(first, second)``: the ids of every consecutive pair in ``sequences``, int64 (P,)."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    is_last = np.zeros(len(flat), dtype=bool)
    is_last[np.cumsum(lengths)[lengths > 0] - 1] = True  # a pair never crosses into the next sequence
    keep = ~is_last[:-1] if len(flat) else np.zeros(0, dtype=bool)
    return torch.from_numpy(flat[:-1][keep]), torch.from_numpy(flat[1:][keep])


def bigram_counts(sequences: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    """Return ``counts`` (vocab_size, vocab_size), int64: ``counts[a, b]`` = times id ``b`` follows id ``a``.

    ``sequences``: encoded words (each a 1-D sequence of ids, e.g. from :meth:`Vocab.encode`).
    """
    first, second = _pairs(sequences)
    if len(first) == 0:
        return np.zeros((vocab_size, vocab_size), dtype=np.int64)
    low, high = int(torch.minimum(first, second).min()), int(torch.maximum(first, second).max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"ids must lie in [0, {vocab_size}), got values from {low} to {high}")
    flat = torch.bincount(first * vocab_size + second, minlength=vocab_size * vocab_size)
    return flat.reshape(vocab_size, vocab_size).numpy().astype(np.int64)


def bigram_nll(counts: np.ndarray, sequences: Sequence[Sequence[int]], smoothing: float = 1.0) -> float:
    """Return the mean negative log-likelihood (nats per predicted character) of a bigram model.

    The model is ``P(b | a) = (counts[a, b] + smoothing) / sum_b (counts[a, b] + smoothing)``.
    """
    probs = torch.as_tensor(counts, dtype=torch.float64) + smoothing
    logp = torch.log(probs / probs.sum(dim=1, keepdim=True))
    first, second = _pairs(sequences)
    if len(first) == 0:
        raise ValueError("bigram_nll() got no pairs of consecutive ids")
    return float(-logp[first, second].mean())


# ----------------------------------------------------------------------------- batching and training


def pad_batch(words: Sequence[str], vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(inputs, targets)``, both int64 ``(N, L + 1)`` for the longest word length ``L``.

    ``inputs[n] = [0, c_1, ..., c_L]`` (end token then the characters, padded with 0) and
    ``targets[n] = [c_1, ..., c_L, 0]`` (the next character at each position, the end token last,
    padded with ``IGNORE_INDEX`` so that padding never counts in the loss).
    """
    if len(words) == 0:
        raise ValueError("pad_batch() got no words")
    encoded = [vocab.encode(w) for w in words]
    length = max(len(e) for e in encoded) - 1
    inputs = torch.zeros(len(words), length, dtype=torch.int64)
    targets = torch.full((len(words), length), IGNORE_INDEX, dtype=torch.int64)
    for n, e in enumerate(encoded):
        inputs[n, : len(e) - 1] = torch.tensor(e[:-1])
        targets[n, : len(e) - 1] = torch.tensor(e[1:])
    return inputs, targets


def length_batches(words: Sequence[str], batch_size: int, rng: np.random.Generator) -> list[list[str]]:
    """Return one epoch of batches of ``words`` in random order, each holding words of similar length.

    Words are shuffled, sorted by length within pools of 50 batches, cut into batches, and the batches
    shuffled: little padding, so a step costs about half as much as with fully random batches.
    """
    order = rng.permutation(len(words))
    pool = batch_size * 50
    batches = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i : i + pool], key=lambda j: len(words[j]))
        batches += [[words[j] for j in chunk[k : k + batch_size]] for k in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy (nats per character) of ``logits (N, T, V)`` against ``targets (N, T)``.

    Positions where ``targets == IGNORE_INDEX`` (padding) are left out of the mean.
    """
    if logits.ndim != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"expected logits (N, T, V) and targets (N, T), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, words: Sequence[str], vocab: Vocab, batch_size: int = 1024,
                device: torch.device | None = None) -> float:
    """Return the mean loss of ``model`` in nats per character (end tokens included) over ``words``."""
    device = device or default_device()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    words = sorted(words, key=len)  # similar lengths together: less padding, same mean
    for i in range(0, len(words), batch_size):
        x, y = pad_batch(words[i : i + batch_size], vocab)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        n = int((y != IGNORE_INDEX).sum())
        total += lm_loss(logits, y).item() * n
        count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_lm() got no words")
    return total / count


def train_lm(
    model: torch.nn.Module,
    data: NamesData,
    *,
    steps: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    clip: float | None = 1.0,
    eval_every: int = 200,
    seed: int = 0,
    device: torch.device | None = None,
    live: bool = True,
    title: str = "",
    time_budget: float | None = None,
) -> dict[str, list[float]]:
    """Train a character language model with Adam; return its history.

    The history holds ``step``, ``train_loss`` and ``val_loss`` (nats per character, one point every
    ``eval_every`` steps and at the end) and ``seconds`` (wall time). The learning rate decays with a
    cosine schedule to a tenth; ``clip`` is the gradient-norm clipping threshold (None: no clipping).
    ``time_budget`` (seconds) stops training early, keeping the schedule's shape.
    """
    from .train import LivePlot

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = device or default_device()
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(seed)
    words = list(data.train)
    plot = LivePlot(["loss"], title=title, enabled=live)
    history: dict[str, list[float]] = {"step": [], "train_loss": [], "val_loss": []}
    start = time.perf_counter()
    running, seen = 0.0, 0
    batches: list[list[str]] = []
    with tqdm(total=steps, desc=title or "training") as bar:
        for step in range(1, steps + 1):
            if not batches:
                batches = length_batches(words, batch_size, rng)
            x, y = pad_batch(batches.pop(), data.vocab)
            x, y = x.to(device), y.to(device)
            model.train()
            loss = lm_loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            schedule.step()
            running += loss.item()
            seen += 1
            bar.update(1)
            out_of_time = time_budget is not None and time.perf_counter() - start > time_budget
            if step % eval_every == 0 or step == steps or out_of_time:
                val = evaluate_lm(model, data.val, data.vocab, device=device)
                history["step"].append(step)
                history["train_loss"].append(running / seen)
                history["val_loss"].append(val)
                bar.set_postfix(train_loss=f"{running / seen:.3f}", val_loss=f"{val:.3f}")
                plot.update({"train_loss": running / seen, "val_loss": val})
                running, seen = 0.0, 0
            if out_of_time:
                break
    history["seconds"] = [time.perf_counter() - start]
    return history


# ----------------------------------------------------------------------------- sampling


def sample_with_temperature(logits: torch.Tensor, temperature: float,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Return int64 ids ``(N,)``, one drawn per row of ``logits (N, V)`` from ``softmax(logits / temperature)``.

    ``temperature`` must be positive; below 1 it sharpens the distribution, above 1 it flattens it.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = torch.as_tensor(logits)
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (N, V), got {tuple(logits.shape)}")
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    vocab: Vocab,
    n: int = 10,
    temperature: float = 1.0,
    max_len: int = 20,
    seed: int = 0,
    sampler: Callable[..., torch.Tensor] | None = None,
) -> list[str]:
    """Return ``n`` words sampled from ``model`` (ids ``(N, T)`` -> logits ``(N, T, V)``), one character at a time.

    Each word starts from the end token and stops at the next one or after ``max_len`` characters.
    ``sampler(logits (N, V), temperature, generator)`` defaults to :func:`sample_with_temperature`.
    """
    sampler = sampler or sample_with_temperature
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, 1, dtype=torch.int64)
    for _ in range(max_len):
        logits = model(ids.to(device))[:, -1, :].cpu()
        nxt = sampler(logits, temperature, generator)
        ids = torch.cat([ids, nxt.reshape(n, 1).long()], dim=1)
        if bool((ids[:, 1:] == 0).any(dim=1).all()):
            break
    model.train(was_training)
    return [vocab.decode(row.tolist()) for row in ids]
