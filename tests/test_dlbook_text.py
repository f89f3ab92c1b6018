"""dlbook.text: the names data, vocabulary, bigram counts, batching, loss and sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dlbook import text


@pytest.fixture(scope="module")
def names() -> text.NamesData:
    return text.load_names()


def test_load_names_is_deterministic_and_disjoint(names):
    again = text.load_names()
    assert names.train == again.train and names.val == again.val
    assert not set(names.train) & set(names.val)
    assert len(names.val) == pytest.approx(0.1 * (len(names.train) + len(names.val)), abs=1)
    assert len(names.train) > 50_000  # first names and surnames
    assert names.vocab.itos[0] == text.END and len(names.vocab) == 27
    assert all(w.isalpha() and w == w.lower() for w in names.train[:1000])


def test_load_names_limit_and_seed(names):
    small = text.load_names(limit=100)
    assert len(small.train) + len(small.val) == 100
    assert small.vocab.itos == names.vocab.itos
    other = text.load_names(seed=1)
    assert other.val != names.val
    with pytest.raises(ValueError, match="val_fraction"):
        text.load_names(val_fraction=1.5)


def test_vocab_encode_decode_roundtrip():
    vocab = text.Vocab(["abc", "cab", "z"])
    assert vocab.itos == [".", "a", "b", "c", "z"]
    assert vocab.encode("cab") == [0, 3, 1, 2, 0]
    assert vocab.decode(vocab.encode("cab")) == "cab"
    assert vocab.decode([1, 0, 2]) == "a"  # stops at the end token
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("q")
    with pytest.raises(ValueError, match="end-of-word"):
        text.Vocab(["a.b"])


@given(st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=8), max_size=6))
@settings(max_examples=60, deadline=None)
def test_bigram_counts_matches_a_loop(seqs):
    counts = text.bigram_counts(seqs, 6)
    expected = np.zeros((6, 6), dtype=np.int64)
    for s in seqs:
        for a, b in zip(s[:-1], s[1:], strict=False):
            expected[a, b] += 1
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == sum(max(len(s) - 1, 0) for s in seqs)


def test_bigram_counts_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="ids must lie"):
        text.bigram_counts([[0, 7]], 5)


def test_bigram_nll_matches_torch_cross_entropy():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 4, size=rng.integers(2, 7)) for _ in range(20)]
    counts = text.bigram_counts(seqs, 4)
    logp = torch.log(torch.tensor(counts + 1.0) / torch.tensor(counts + 1.0).sum(1, keepdim=True))
    first = torch.tensor(np.concatenate([s[:-1] for s in seqs]))
    second = torch.tensor(np.concatenate([s[1:] for s in seqs]))
    expected = F.nll_loss(logp[first], second).item()
    assert text.bigram_nll(counts, seqs) == pytest.approx(expected, rel=1e-12)


def test_bigram_baseline_on_names_is_about_2_57(names):
    enc = [names.vocab.encode(w) for w in names.train]
    counts = text.bigram_counts(enc, len(names.vocab))
    val = text.bigram_nll(counts, [names.vocab.encode(w) for w in names.val])
    assert 2.4 < val < 2.7


def test_pad_batch_shapes_and_padding():
    vocab = text.Vocab(["ab", "c"])
    x, y = text.pad_batch(["ab", "c"], vocab)
    assert x.tolist() == [[0, 1, 2], [0, 3, 0]]
    assert y.tolist() == [[1, 2, 0], [3, 0, text.IGNORE_INDEX]]
    with pytest.raises(ValueError):
        text.pad_batch([], vocab)


def test_lm_loss_ignores_padding():
    logits = torch.randn(2, 3, 4)
    targets = torch.tensor([[1, 2, text.IGNORE_INDEX], [0, text.IGNORE_INDEX, text.IGNORE_INDEX]])
    keep = targets != text.IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert text.lm_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="expected logits"):
        text.lm_loss(logits[0], targets)


def test_length_batches_cover_every_word_once():
    words = [("a" * (i % 9 + 1)) + str(i) for i in range(1000)]
    batches = text.length_batches(words, 64, np.random.default_rng(0))
    flat = [w for b in batches for w in b]
    assert sorted(flat) == sorted(words)
    assert max(len(b) for b in batches) == 64


class _Uniform(torch.nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab_size) + 0 * self.dummy


def test_evaluate_lm_of_uniform_model_is_log_v():
    vocab = text.Vocab(["abc", "bca", "cab", "a"])
    model = _Uniform(len(vocab))
    assert text.evaluate_lm(model, ["abc", "a", "cab"], vocab, batch_size=2, device=torch.device("cpu")) == \
        pytest.approx(np.log(len(vocab)), rel=1e-6)


@pytest.fixture
def one_thread():
    # Tiny models: a second thread only adds synchronisation waits on a busy machine.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_train_lm_lowers_the_loss_on_a_tiny_set(one_thread):
    from dlbook.rnn import CharRNN

    data = text.load_names(limit=400)
    torch.manual_seed(0)
    model = CharRNN(len(data.vocab), embed=8, hidden=32)
    before = text.evaluate_lm(model, data.val, data.vocab, device=torch.device("cpu"))
    hist = text.train_lm(model, data, steps=60, batch_size=32, lr=1e-2, eval_every=30, live=False,
                         device=torch.device("cpu"))
    assert hist["step"] == [30, 60]
    assert hist["val_loss"][-1] < before - 0.5
    with pytest.raises(ValueError, match="steps"):
        text.train_lm(model, data, steps=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sample_with_temperature_matches_the_tempered_softmax(seed, temperature):
    logits = torch.tensor(np.random.default_rng(seed).standard_normal(5))
    gen = torch.Generator().manual_seed(seed)
    draws = text.sample_with_temperature(logits.expand(20000, 5), temperature, gen)
    assert draws.shape == (20000,) and draws.dtype == torch.int64
    freq = np.bincount(draws.numpy(), minlength=5) / 20000
    np.testing.assert_allclose(freq, torch.softmax(logits / temperature, -1).numpy(), atol=0.015)


def test_sample_with_temperature_edge_cases():
    logits = torch.tensor([[0.0, 5.0, 1.0]])
    assert text.sample_with_temperature(logits, 1e-4).tolist() == [1]  # near zero: the argmax
    with pytest.raises(ValueError, match="temperature"):
        text.sample_with_temperature(logits, 0.0)
    with pytest.raises(ValueError, match="expected logits"):
        text.sample_with_temperature(logits[0], 1.0)


def test_generate_is_seeded_and_decodes_words(one_thread):
    data = text.load_names(limit=50)
    torch.manual_seed(0)
    from dlbook.rnn import CharRNN

    model = CharRNN(len(data.vocab), embed=4, hidden=8)
    a = text.generate(model, data.vocab, n=5, seed=3, max_len=8)
    b = text.generate(model, data.vocab, n=5, seed=3, max_len=8)
    assert a == b and len(a) == 5
    assert all(len(w) <= 8 and "." not in w for w in a)
