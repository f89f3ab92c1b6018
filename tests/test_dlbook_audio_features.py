"""dlbook.audio_features against independent NumPy formulas, torch.stft, and properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlbook import audio_features as af


def numpy_stft_magnitude(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Frames, periodic Hann window and rfft, in float64, one frame at a time."""
    window = 0.5 * (1 - np.cos(2 * np.pi * np.arange(n_fft) / n_fft))
    frames = 1 + (x.shape[1] - n_fft) // hop
    out = np.zeros((x.shape[0], n_fft // 2 + 1, frames))
    for i in range(x.shape[0]):
        for t in range(frames):
            out[i, :, t] = np.abs(np.fft.rfft(x[i, t * hop: t * hop + n_fft] * window))
    return out


def numpy_mel_filterbank(n_freqs, n_mels, sr, f_min=0.0, f_max=None) -> np.ndarray:
    """librosa's construction (htk=True, norm=None): ramps between neighbouring mel edges."""
    f_max = sr / 2 if f_max is None else f_max
    mel = lambda f: 2595 * np.log10(1 + np.asarray(f) / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (np.asarray(m) / 2595) - 1)  # noqa: E731
    fft_freqs = np.linspace(0, sr / 2, n_freqs)
    edges = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    fdiff = np.diff(edges)
    ramps = np.subtract.outer(edges, fft_freqs)
    weights = np.zeros((n_mels, n_freqs))
    for m in range(n_mels):
        lower = -ramps[m] / fdiff[m]
        upper = ramps[m + 2] / fdiff[m + 1]
        weights[m] = np.maximum(0, np.minimum(lower, upper))
    return weights.T


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "length", "n_fft", "hop"),
                         [(1, 256, 256, 80), (3, 1000, 256, 80), (2, 513, 64, 16), (1, 400, 63, 7), (2, 300, 128, 128)])
def test_stft_magnitude_matches_numpy(seed, n, length, n_fft, hop):
    x = np.random.default_rng(seed).standard_normal((n, length))
    got = af.stft_magnitude(torch.tensor(x, dtype=torch.float32), n_fft, hop)
    assert got.dtype == torch.float32
    assert got.shape == (n, n_fft // 2 + 1, af.num_frames(length, n_fft, hop))
    np.testing.assert_allclose(got.numpy(), numpy_stft_magnitude(x, n_fft, hop), atol=1e-3, rtol=1e-4)


def test_stft_magnitude_of_a_tone_peaks_at_its_bin():
    x = torch.sin(2 * torch.pi * 1000 * torch.arange(4000) / 8000)[None]
    spec = af.stft_magnitude(x, 256, 80)
    assert (spec[0].argmax(dim=0) == 32).all()


@pytest.mark.parametrize(("x", "match"), [(torch.zeros(100), "shape \\(N, T\\)"),
                                          (torch.zeros(1, 100), "fewer than n_fft"),
                                          (torch.zeros(1, 300, dtype=torch.long), "float")])
def test_stft_magnitude_rejects_bad_input(x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        af.stft_magnitude(x, 256, 80)


def test_mel_scale_round_trip_and_known_value():
    f = torch.tensor([0.0, 100.0, 1000.0, 4000.0, 11025.0], dtype=torch.float64)
    torch.testing.assert_close(af.mel_to_hz(af.hz_to_mel(f)), f)
    assert abs(float(af.hz_to_mel(1000.0)) - 1000.0) < 0.1  # the HTK scale puts 1 kHz at about 1000 mel


@pytest.mark.parametrize(("n_freqs", "n_mels", "sr", "f_min", "f_max"),
                         [(129, 40, 8000, 20.0, None), (257, 64, 16000, 0.0, 8000.0), (65, 10, 8000, 300.0, 3400.0),
                          (201, 23, 16000, 0.0, None), (129, 1, 8000, 0.0, None), (513, 80, 22050, 50.0, 11025.0)])
def test_mel_filterbank_matches_librosa_construction(n_freqs, n_mels, sr, f_min, f_max):
    got = af.mel_filterbank(n_freqs, n_mels, sr, f_min, f_max)
    assert got.dtype == torch.float32 and got.shape == (n_freqs, n_mels)
    np.testing.assert_allclose(got.numpy(), numpy_mel_filterbank(n_freqs, n_mels, sr, f_min, f_max), atol=1e-6)


def test_mel_filterbank_properties():
    bank = af.mel_filterbank(1025, 20, 16000).numpy()
    assert bank.min() >= 0 and bank.max() <= 1 + 1e-6
    np.testing.assert_allclose(bank.max(axis=0), 1.0, atol=0.1)  # fine bins: every peak is almost hit
    assert np.all(np.diff(bank.argmax(axis=0)) > 0)
    widths = (bank > 0).sum(axis=0)
    assert widths[-1] > 3 * widths[0]
    # between the first and the last peak, neighbouring triangles overlap and sum to 1
    first, last = bank.argmax(axis=0)[[0, -1]]
    np.testing.assert_allclose(bank[first + 1:last].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("args", "match"), [((1, 10, 8000), "n_freqs >= 2"),
                                             ((129, 10, 8000, 5000.0), "f_min < f_max"),
                                             ((129, 10, 8000, 0.0, 6000.0), "f_max <= sample_rate / 2")])
def test_mel_filterbank_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        af.mel_filterbank(*args)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("top_db", [80.0, 30.0])
def test_log_mel_matches_numpy(seed, top_db):
    rng = np.random.default_rng(seed)
    power = rng.standard_normal((3, 129, 11)) ** 2 * 10.0 ** rng.uniform(-12, 6, (3, 1, 11))
    power[1] = 0.0  # digital silence
    bank = af.mel_filterbank(129, 40, 8000).numpy().astype(np.float64)
    mel = np.einsum("fm,nft->nmt", bank, power)
    db = 10 * np.log10(np.maximum(mel, 1e-10))
    expected = np.maximum(db, db.max(axis=(1, 2), keepdims=True) - top_db)
    got = af.log_mel(torch.tensor(power, dtype=torch.float32), torch.tensor(bank, dtype=torch.float32), top_db=top_db)
    assert got.shape == (3, 40, 11) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-3, rtol=1e-5)
    np.testing.assert_allclose(got[1].numpy(), -100.0)


def test_log_mel_rejects_mismatched_filterbank():
    with pytest.raises(ValueError, match=r"filterbank of shape \(129, n_mels\)"):
        af.log_mel(torch.ones(1, 129, 3), torch.ones(65, 10))
    with pytest.raises(ValueError, match="shape \\(N, F, frames\\)"):
        af.log_mel(torch.ones(129, 3), torch.ones(129, 10))


def loop_spec_augment(spec, freq_masks, freq_width, time_masks, time_width, generator):
    """SpecAugment written as plain loops and slices, drawing as the docstring says."""
    out = spec.clone()
    for i in range(spec.shape[0]):
        fill = spec[i].mean()
        for axis, count, max_width in [(1, freq_masks, freq_width), (2, time_masks, time_width)]:
            size = spec.shape[axis]
            for _ in range(count):
                w = int(torch.randint(0, min(max_width, size) + 1, (1,), generator=generator))
                s = int(torch.randint(0, size - w + 1, (1,), generator=generator))
                if axis == 1:
                    out[i, s:s + w] = fill
                else:
                    out[i, :, s:s + w] = fill
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("shape", "fm", "fw", "tm", "tw"),
                         [((1, 40, 97), 2, 8, 2, 10), ((3, 10, 5), 1, 20, 3, 2), ((2, 1, 1), 2, 1, 2, 1),
                          ((4, 7, 30), 0, 3, 3, 4)])
def test_spec_augment_matches_loops(seed, shape, fm, fw, tm, tw):
    spec = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 10))
    before = spec.clone()
    got = af.spec_augment(spec, fm, fw, tm, tw, generator=torch.Generator().manual_seed(seed))
    expected = loop_spec_augment(spec, fm, fw, tm, tw, torch.Generator().manual_seed(seed))
    assert torch.equal(spec, before)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_spec_augment_is_deterministic_and_masks_whole_bands():
    spec = torch.randn(8, 40, 97, generator=torch.Generator().manual_seed(0))
    a = af.spec_augment(spec, 2, 8, 2, 10, generator=torch.Generator().manual_seed(5))
    b = af.spec_augment(spec, 2, 8, 2, 10, generator=torch.Generator().manual_seed(5))
    c = af.spec_augment(spec, 2, 8, 2, 10, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = a != spec
    for i in range(8):
        rows = changed[i].all(dim=1).sum()  # a masked frequency band changes its whole row
        cols = changed[i].all(dim=0).sum()
        assert rows <= 16 and cols <= 20
        assert torch.equal(changed[i], changed[i].all(dim=1, keepdim=True) | changed[i].all(dim=0, keepdim=True))


def test_log_mel_spectrogram_pipeline_shape():
    x = torch.randn(2, 8000) * 0.1
    feats = af.log_mel_spectrogram(x, 8000)
    assert feats.shape == (2, 40, 97)
    assert torch.isfinite(feats).all()
