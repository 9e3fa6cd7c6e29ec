"""Batched Kaldi log-mel filterbank that reproduces ``torchaudio.compliance.kaldi.fbank`` with the SSAST arguments.

torchaudio's version handles one clip at a time with Python-side framing. This one frames a whole batch with
``unfold`` and runs one rFFT and one matrix product for it, on whatever device the waveforms live on, so a GPU
training step can turn raw waveforms into features itself. The Kaldi mel filter matrix is built here too, with
torchaudio's float32 arithmetic (tested equal to its ``get_mel_banks``), so features need no compiled torchaudio.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# SSAST front end: 16 kHz, 25 ms windows every 10 ms (400 and 160 samples), FFT size 512, 20 Hz .. Nyquist.
WINDOW = 400
HOP = 160
N_FFT = 512
LOW_FREQ = 20.0
# Kaldi floors mel energies at float32 machine epsilon before the log (silence gives log(eps) = -15.94).
_EPS = torch.finfo(torch.float32).eps


class FeatureError(ValueError):
    """A user error in feature extraction input (wrong shape, sizes that disagree); the message says what to fix."""


def window_hop(sample_rate: int = 16000) -> tuple[int, int]:
    """Kaldi frame length and shift in samples (25 ms, 10 ms) at ``sample_rate``: (400, 160) at 16 kHz."""
    return sample_rate * 25 // 1000, sample_rate * 10 // 1000


def frames_for(num_samples: int, window: int = WINDOW, hop: int = HOP) -> int:
    """Kaldi frame count with snip_edges: only frames that fit entirely in the clip (0 when shorter than a window)."""
    if num_samples < window:
        return 0
    return 1 + (num_samples - window) // hop


def max_samples(target_length: int, window: int = WINDOW, hop: int = HOP) -> int:
    """The fewest samples that give ``target_length`` frames; longer clips only add frames that get cropped."""
    if target_length < 1:
        raise FeatureError(f"target_length must be at least 1 frame, got {target_length}")
    return (target_length - 1) * hop + window


def _mel(freq):
    """Kaldi's mel scale (natural log, 1127 * ln(1 + f / 700)), for a float or a tensor."""
    return 1127.0 * (math.log(1.0 + freq / 700.0) if isinstance(freq, float) else (1.0 + freq / 700.0).log())


def kaldi_mel_banks(num_mel_bins: int, n_fft: int, sample_rate: float, low_freq: float = LOW_FREQ) -> Tensor:
    """Kaldi's triangular mel filters up to Nyquist, (num_mel_bins, n_fft // 2) in float32, no VTLN warp.

    Triangles are evenly spaced on the mel scale between ``low_freq`` and Nyquist, each spanning two spacings; the
    operations run in the same order and dtype as torchaudio's ``get_mel_banks`` so the two agree bit for bit.
    """
    if num_mel_bins <= 3 or n_fft % 2 or not 0.0 <= low_freq < sample_rate / 2:
        raise FeatureError(f"mel banks need > 3 bins, an even FFT size and 0 <= low_freq < Nyquist; got "
                           f"{num_mel_bins} bins, FFT {n_fft}, low_freq {low_freq} at {sample_rate} Hz")
    mel_low, mel_high = _mel(float(low_freq)), _mel(0.5 * sample_rate)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    k = torch.arange(num_mel_bins).unsqueeze(1)
    left = mel_low + k * delta
    center = mel_low + (k + 1.0) * delta
    right = mel_low + (k + 2.0) * delta
    mel = _mel((sample_rate / n_fft) * torch.arange(n_fft / 2)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    return torch.max(torch.zeros(1), torch.min(up, down))


_MEL_CACHE: dict[tuple, Tensor] = {}


def mel_matrix(
    num_mel_bins: int, sample_rate: int, n_fft: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The (n_fft // 2 + 1, num_mel_bins) filter matrix, built once per device/size and cached."""
    key = (num_mel_bins, sample_rate, n_fft, str(device), dtype)
    bank = _MEL_CACHE.get(key)
    if bank is None:
        bins = kaldi_mel_banks(num_mel_bins, n_fft, float(sample_rate))
        # Kaldi gives the Nyquist bin no filter weight: a zero column, transposed for x @ bank.
        bins = torch.nn.functional.pad(bins, (0, 1))
        bank = bins.t().contiguous().to(device=device, dtype=dtype)
        _MEL_CACHE[key] = bank  # a racing thread at worst builds the same matrix twice
    return bank


_WINDOW_CACHE: dict[tuple, Tensor] = {}


def _hann(length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Kaldi's "hanning" window: the symmetric Hann window (periodic=False), as torchaudio builds it."""
    key = (length, str(device), dtype)
    win = _WINDOW_CACHE.get(key)
    if win is None:
        win = torch.hann_window(length, periodic=False, device=device, dtype=dtype)
        _WINDOW_CACHE[key] = win
    return win


def kaldi_fbank(
    wave: Tensor,
    *,
    num_mel_bins: int = 128,
    sample_rate: int = 16000,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemph: float = 0.97,
    dither: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Log-mel fbank of (S,) or (B, S) waveforms: (frames, mel) or (B, frames, mel), equal to torchaudio's Kaldi fbank.

    Matches ``torchaudio.compliance.kaldi.fbank(w, htk_compat=True, use_energy=False, window_type='hanning',
    dither=0.0, ...)`` (snip_edges, per-frame DC removal, pre-emphasis, n_fft rounded up to a power of two).
    Computed in float32 (float64 for float64 input) even under autocast. A clip shorter than one window gives
    0 frames, where torchaudio raises an assertion.
    """
    if wave.dim() not in (1, 2):
        raise FeatureError(
            f"kaldi_fbank expects a waveform of shape (samples,) or (batch, samples), got {tuple(wave.shape)}"
        )
    if wave.is_complex() or not wave.is_floating_point():
        raise FeatureError(f"kaldi_fbank expects a real floating-point waveform, got dtype {wave.dtype}")
    squeeze = wave.dim() == 1
    if squeeze:
        wave = wave.unsqueeze(0)
    window = int(sample_rate * frame_length_ms * 0.001)
    hop = int(sample_rate * frame_shift_ms * 0.001)
    n_fft = 1 << (window - 1).bit_length()  # next power of two, as Kaldi's round_to_power_of_two
    dtype = torch.float64 if wave.dtype == torch.float64 else torch.float32
    device = wave.device
    batch, num_samples = wave.shape
    frames = frames_for(num_samples, window, hop)
    if frames == 0:
        out = wave.new_zeros((batch, 0, num_mel_bins), dtype=dtype)
        return out[0] if squeeze else out

    with torch.autocast(device_type=device.type, enabled=False):
        frames_view = wave.to(dtype).unfold(-1, window, hop)  # (B, T, window), a view: no copy of the samples
        bank = mel_matrix(num_mel_bins, sample_rate, n_fft, device, dtype)
        win = _hann(window, device, dtype)
        if device.type != "cpu":
            # Accelerators: the whole batch in one pass (one rFFT, one matmul).
            out = _frames_to_fbank(frames_view, win, bank, n_fft, preemph, dither, generator)
        else:
            # CPU: the same ops on blocks of frames that stay in cache (about 2x faster than one huge pass).
            out = wave.new_empty((batch, frames, num_mel_bins), dtype=dtype)
            for b in range(batch):
                for s in range(0, frames, _CPU_BLOCK):
                    block = frames_view[b, s : s + _CPU_BLOCK]
                    out[b, s : s + _CPU_BLOCK] = _frames_to_fbank(block, win, bank, n_fft, preemph, dither, generator)
    return out[0] if squeeze else out


# Frames per CPU block: 256 x 512 floats of FFT input (0.5 MB) stay in a core's L2 cache.
_CPU_BLOCK = 256


def _frames_to_fbank(
    x: Tensor, win: Tensor, bank: Tensor, n_fft: int, preemph: float, dither: float, generator: torch.Generator | None
) -> Tensor:
    """Kaldi fbank of already framed samples (..., window) -> (..., mel), in torchaudio's order of operations."""
    # The element-wise steps follow torchaudio's exact order so results agree to float rounding (about 1e-6):
    # low mel bins of pre-emphasised audio are ill-conditioned, and a re-ordered formula drifts by 1e-3 there.
    if dither != 0.0:
        noise_device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=noise_device)
        x = x + noise.to(x.device) * dither
    x = x - x.mean(dim=-1, keepdim=True)  # per-frame DC removal
    window = x.shape[-1]
    buf = x.new_zeros(x.shape[:-1] + (n_fft,))  # the zero padding up to n_fft, written in place
    y = buf[..., :window]
    if preemph != 0.0:
        # Kaldi's edge rule: the first sample is pre-emphasised against itself.
        torch.mul(x[..., :-1], preemph, out=y[..., 1:])
        y[..., 0] = x[..., 0] * preemph
        y.copy_(x - y)
    else:
        y.copy_(x)
    y.mul_(win)
    spec = torch.fft.rfft(buf)
    power = spec.real.square() + spec.imag.square()
    if power.dtype == torch.float32 and power.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        # TF32 (allowed by set_float32_matmul_precision("high")) keeps 10 mantissa bits: 1e-3 log errors.
        # Sum in float64 instead of flipping the global flag under the caller's feet.
        return (power.double() @ bank.double()).clamp_min_(_EPS).log_().float()
    return (power @ bank).clamp_min_(_EPS).log_()
