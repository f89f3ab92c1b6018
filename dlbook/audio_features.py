"""Audio features for speech models: spectrograms, mel filterbanks, log-mel features, SpecAugment.

A waveform batch ``x`` has shape (N, T) (float samples in [-1, 1]); a spectrogram has shape
(N, F, frames) with ``F = n_fft // 2 + 1`` frequency bins, like ``torch.stft``'s output.

- :func:`stft_magnitude`: the magnitude of the short-time Fourier transform, periodic Hann window,
  no centring (frames start at 0, hop, 2 hop, ...), through ``torch.stft``.
- :func:`hz_to_mel`, :func:`mel_to_hz`: the HTK mel scale, ``mel = 2595 log10(1 + f / 700)``.
- :func:`mel_filterbank`: triangular filters equally spaced on the mel scale, shape (F, n_mels).
- :func:`log_mel`: mel power in decibels, floored at ``amin`` and at ``top_db`` below each example's peak.
- :func:`spec_augment`: frequency and time masks drawn from a ``torch.Generator`` (SpecAugment).
- :func:`log_mel_spectrogram`: waveforms to log-mel features in one call, what the chapter's model eats.
"""

from __future__ import annotations

import torch


def _check_waveforms(x: torch.Tensor, n_fft: int, hop_length: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"expected waveforms x of shape (N, T), got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float waveform batch, got {x.dtype}")
    if n_fft < 2 or hop_length < 1:
        raise ValueError(f"expected n_fft >= 2 and hop_length >= 1, got n_fft={n_fft}, hop_length={hop_length}")
    if x.shape[1] < n_fft:
        raise ValueError(f"waveforms have {x.shape[1]} samples, fewer than n_fft={n_fft}: no full frame")


def num_frames(num_samples: int, n_fft: int, hop_length: int) -> int:
    """Return the number of full frames, ``1 + (num_samples - n_fft) // hop_length``."""
    return 1 + (num_samples - n_fft) // hop_length


def stft_magnitude(x: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """Return ``|STFT(x)|`` of shape (N, n_fft // 2 + 1, frames), float32.

    Frame ``t`` holds samples ``[t * hop_length, t * hop_length + n_fft)`` times a periodic Hann window
    (``torch.hann_window(n_fft)``); there is no padding, so ``frames = 1 + (T - n_fft) // hop_length``.
    """
    _check_waveforms(x, n_fft, hop_length)
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop_length=hop_length, win_length=n_fft, window=window, center=False,
                      return_complex=True)
    return spec.abs()


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """Return the HTK mel value ``2595 log10(1 + f / 700)`` of frequencies ``f`` in Hz."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor | float) -> torch.Tensor:
    """Return the frequency in Hz of HTK mel values ``m`` (the inverse of :func:`hz_to_mel`)."""
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Return triangular mel filters of shape (n_freqs, n_mels), float32.

    Bin ``k`` has frequency ``k * (sample_rate / 2) / (n_freqs - 1)``. The ``n_mels + 2`` edge frequencies
    are equally spaced on the HTK mel scale from ``f_min`` to ``f_max`` (default ``sample_rate / 2``);
    filter ``m`` rises linearly from 0 at edge ``m`` to 1 at edge ``m + 1`` and falls back to 0 at edge
    ``m + 2`` (peak 1, no area normalisation): the same filters as torchaudio's ``melscale_fbanks``
    with ``norm=None, mel_scale="htk"`` and librosa's ``filters.mel(htk=True, norm=None)``.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_freqs < 2 or n_mels < 1:
        raise ValueError(f"expected n_freqs >= 2 and n_mels >= 1, got n_freqs={n_freqs}, n_mels={n_mels}")
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"expected 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, "
                         f"got f_min={f_min}, f_max={f_max}")
    bins = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                     dtype=torch.float64))
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - left) / (center - left)  # (n_freqs, n_mels)
    falling = (right - bins[:, None]) / (right - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def log_mel(power: torch.Tensor, filterbank: torch.Tensor, amin: float = 1e-10, top_db: float = 80.0) -> torch.Tensor:
    """Return the log-mel spectrogram in decibels, shape (N, n_mels, frames).

    ``power`` (N, F, frames) is a power spectrogram ``|STFT|^2``; ``filterbank`` (F, n_mels) as from
    :func:`mel_filterbank`. ``mel = filterbank^T power``; the result is ``10 log10(max(mel, amin))``,
    then raised to at least ``top_db`` below the largest value *of each example*.
    """
    if not isinstance(power, torch.Tensor) or power.ndim != 3:
        raise ValueError(f"expected a power spectrogram of shape (N, F, frames), got "
                         f"{tuple(power.shape) if hasattr(power, 'shape') else type(power).__name__}")
    if filterbank.ndim != 2 or filterbank.shape[0] != power.shape[1]:
        raise ValueError(f"expected a filterbank of shape ({power.shape[1]}, n_mels), got {tuple(filterbank.shape)}")
    mel = torch.einsum("fm,nft->nmt", filterbank.to(power.dtype), power)
    db = 10.0 * torch.log10(torch.clamp(mel, min=amin))
    peak = db.amax(dim=(1, 2), keepdim=True)
    return torch.maximum(db, peak - top_db)


def _draw_masks(size: int, max_width: int, count: int, generator: torch.Generator | None) -> list[tuple[int, int]]:
    """Return ``count`` masks ``(start, width)`` along an axis of ``size``, drawn as :func:`spec_augment` says."""
    masks = []
    for _ in range(count):
        width = int(torch.randint(0, min(max_width, size) + 1, (1,), generator=generator))
        masks.append((int(torch.randint(0, size - width + 1, (1,), generator=generator)), width))
    return masks


def spec_augment(spec: torch.Tensor, freq_masks: int = 2, freq_width: int = 8, time_masks: int = 2,
                 time_width: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return a copy of ``spec`` (N, F, frames) with random frequency and time bands set to each example's mean.

    Draw order (so that a seeded generator gives the same masks everywhere): for each example in turn,
    its ``freq_masks`` frequency masks, then its ``time_masks`` time masks; each mask draws its width
    ``w = randint(0, min(max_width, size) + 1)`` and then its start ``s = randint(0, size - w + 1)`` with
    ``torch.randint(low, high, (1,), generator=generator)``; it covers rows (or columns) ``s .. s + w - 1``.
    The fill value is the mean of the example's *unmasked* spectrogram.
    """
    if not isinstance(spec, torch.Tensor) or spec.ndim != 3:
        raise ValueError(f"expected a spectrogram batch of shape (N, F, frames), got "
                         f"{tuple(spec.shape) if hasattr(spec, 'shape') else type(spec).__name__}")
    n, f, t = spec.shape
    fill = spec.mean(dim=(1, 2), keepdim=True)
    masked = torch.zeros(n, f, t, dtype=torch.bool, device=spec.device)
    rows = torch.arange(f, device=spec.device)
    cols = torch.arange(t, device=spec.device)
    for i in range(n):  # per example, frequency masks first, as the docstring says
        in_rows = torch.zeros(f, dtype=torch.bool, device=spec.device)
        in_cols = torch.zeros(t, dtype=torch.bool, device=spec.device)
        for start, width in _draw_masks(f, freq_width, freq_masks, generator):
            in_rows |= (rows >= start) & (rows < start + width)
        for start, width in _draw_masks(t, time_width, time_masks, generator):
            in_cols |= (cols >= start) & (cols < start + width)
        masked[i] = in_rows[:, None] | in_cols[None, :]
    return torch.where(masked, fill.expand_as(spec), spec)


def log_mel_spectrogram(x: torch.Tensor, sample_rate: int, n_fft: int = 256, hop_length: int = 80,
                        n_mels: int = 40, f_min: float = 20.0, top_db: float = 80.0) -> torch.Tensor:
    """Return log-mel features (N, n_mels, frames) of waveforms ``x`` (N, T): the pipeline of this module."""
    power = stft_magnitude(x, n_fft, hop_length) ** 2
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min=f_min).to(x.device)
    return log_mel(power, fb, top_db=top_db)


def frame_seconds(hop_length: int, sample_rate: int) -> float:
    """Return the time step between frames in seconds."""
    return hop_length / sample_rate


__all__ = ["frame_seconds", "hz_to_mel", "log_mel", "log_mel_spectrogram", "mel_filterbank", "mel_to_hz",
           "num_frames", "spec_augment", "stft_magnitude"]
