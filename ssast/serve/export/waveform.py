"""The feature pipeline from 16 kHz waveforms to the model's input, written with export-friendly tensor ops only.

:class:`WaveformFrontEnd` computes what ``ssast predict`` feeds a model for a clip (or for the first window of a long
recording), so that an exported graph can start at the waveform: crop to the model's length, per-clip mean removal
(``ssast.audio.io.to_model_wave``), the Kaldi fbank of ``ssast.audio.fbank`` (snip_edges framing, per-frame DC
removal, pre-emphasis 0.97, the symmetric Hann window, power spectrum, mel filters, log with Kaldi's float32 floor),
frames past each clip's end set to 0 before normalising (the authors' zero padding, ``features.mask_padding``) and
``(fbank - mean) / (2 std)``. The FFT is a matrix product with a fixed DFT basis: plain MatMul, which every ONNX runtime
runs, where an FFT op is not everywhere.

Clips of different lengths share a batch by zero padding at the end plus a ``lengths`` input (samples per clip):
the mean and the frame count of each clip come from its own samples only, so a padded clip scores as it would alone.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ssast.audio.fbank import _EPS, kaldi_mel_banks, max_samples, window_hop
from ssast.audio.features import normalize
from ssast.config import AudioConfig

PREEMPH = 0.97  # kaldi_fbank's default, which the feature pipeline uses


def dft_basis(window: int, n_fft: int) -> Tensor:
    """(window, 2 * (n_fft // 2 + 1)) float32 [cos | -sin] columns: frame @ basis = rfft of the frame zero-padded to
    n_fft, real parts then imaginary parts. Angles are reduced modulo n_fft in integers and taken in
    float64, so the basis is as exact as float32 holds it (the float32 fbank then stays as close to a float64 one as
    the FFT path's: 2e-5 in the normalised input)."""
    n = torch.arange(window, dtype=torch.int64)[:, None]
    k = torch.arange(n_fft // 2 + 1, dtype=torch.int64)[None]
    angle = (n * k % n_fft).double() * (2 * math.pi / n_fft)
    return torch.cat([angle.cos(), -angle.sin()], dim=1).float()


class WaveformFrontEnd(nn.Module):
    """(batch, samples) float32 waveforms at the model's rate + (batch,) int64 lengths -> (batch, frames, mel) input.

    A clip longer than the model's length is read from its start, as ``ssast predict`` reads its first window.
    """

    def __init__(self, audio: AudioConfig) -> None:
        super().__init__()
        self.window, self.hop = window_hop(audio.sample_rate)
        self.n_fft = 1 << (self.window - 1).bit_length()
        self.frames = audio.target_length
        self.samples = max_samples(audio.target_length, self.window, self.hop)
        self.norm = (audio.norm_mean, audio.norm_std)
        bins = self.n_fft // 2 + 1
        mel = nn.functional.pad(kaldi_mel_banks(audio.num_mel_bins, self.n_fft, float(audio.sample_rate)), (0, 1))
        self.register_buffer("basis", dft_basis(self.window, self.n_fft), persistent=False)
        self.register_buffer("mel", mel.t().contiguous(), persistent=False)  # (bins, mel); Nyquist's row is 0
        self.register_buffer("hann", torch.hann_window(self.window, periodic=False), persistent=False)
        self.bins = bins

    def num_frames(self, lengths: Tensor) -> Tensor:
        """Kaldi frames per clip (snip_edges), at most the model's: 0 for a clip shorter than one window."""
        n = lengths.clamp(max=self.samples)
        frames = torch.div(n - self.window, self.hop, rounding_mode="floor") + 1
        return torch.where(n >= self.window, frames, torch.zeros_like(frames))

    def forward(self, wave: Tensor, lengths: Tensor) -> Tensor:
        batch = wave.shape[0]
        # exactly the model's length: cut a longer batch, zero-pad a shorter one (cat + slice: no shape arithmetic)
        wave = torch.cat([wave[:, : self.samples], wave.new_zeros(batch, self.samples)], dim=1)[:, : self.samples]
        n = lengths.clamp(max=self.samples)
        inside = torch.arange(self.samples, device=wave.device)[None] < n[:, None]
        wave = torch.where(inside, wave, torch.zeros_like(wave))
        mean = wave.sum(dim=1, keepdim=True) / n.clamp(min=1)[:, None].to(wave.dtype)
        wave = torch.where(inside, wave - mean, torch.zeros_like(wave))  # per-clip DC removal; padding stays 0

        x = wave.unfold(1, self.window, self.hop)  # (B, frames, window): snip_edges framing
        x = x - x.mean(dim=-1, keepdim=True)  # Kaldi's per-frame DC removal
        shifted = torch.cat([x[..., :1], x[..., :-1]], dim=-1)  # the first sample is pre-emphasised against itself
        x = (x - PREEMPH * shifted) * self.hann
        spec = x @ self.basis
        power = spec[..., : self.bins].square() + spec[..., self.bins :].square()
        fbank = (power @ self.mel).clamp_min(_EPS).log()

        keep = torch.arange(self.frames, device=wave.device)[None] < self.num_frames(lengths)[:, None]
        fbank = torch.where(keep[:, :, None], fbank, torch.zeros_like(fbank))
        return normalize(fbank, *self.norm)

