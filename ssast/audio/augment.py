"""Batched training-time augmentations (SpecAugment, noise + time shift, mixup) that run on CPU or GPU tensors.

Every function works on a whole batch at once with per-clip random draws, so a GPU step needs no per-clip loop.
Functions that take a ``generator`` draw their randomness from it (a CPU generator works for GPU tensors too).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ssast.audio.fbank import HOP, WINDOW, FeatureError


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U(0,1) draws made on the generator's device (or ``device``), returned on ``device``."""
    src = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=src).to(device)


def _check_batch(fbank: Tensor, name: str) -> None:
    if fbank.dim() != 3:
        raise FeatureError(f"{name} expects features of shape (batch, frames, mel), got {tuple(fbank.shape)}")


def _mask_span(fbank: Tensor, width: int, axis: int) -> Tensor:
    """Zero one span per clip along ``axis`` (1 = time, 2 = mel) of a (B, frames, mel) batch.

    The draws follow torchaudio's ``mask_along_axis_iid`` (length ~ U(0, width), start ~ U(0, size - length), both
    floored, same order and dtype), so a seeded run masks exactly what torchaudio would.
    """
    batch, size = fbank.shape[0], fbank.shape[axis]
    width = min(width, size)  # wider masks would make the start negative
    length = torch.rand(batch, device=fbank.device, dtype=fbank.dtype) * width
    start = torch.rand(batch, device=fbank.device, dtype=fbank.dtype) * (size - length)
    first = start.long()[:, None]
    pos = torch.arange(size, device=fbank.device)[None]
    hit = (pos >= first) & (pos < first + length.long()[:, None])  # (B, size)
    return fbank.masked_fill(hit.unsqueeze(3 - axis), 0.0)


def spec_augment(fbank: Tensor, freqm: int, timem: int) -> Tensor:
    """SpecAugment: one mel band (< freqm bins) and then one time span (< timem frames) per clip, independent
    across clips, set exactly to 0."""
    _check_batch(fbank, "spec_augment")
    if freqm > 0:
        fbank = _mask_span(fbank, freqm, axis=2)
    if timem > 0:
        fbank = _mask_span(fbank, timem, axis=1)
    return fbank


def noise_and_shift(fbank: Tensor, max_shift: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """The SSAST recipe noise: add U(0,1) noise scaled by u/10 (u ~ U(0,1) per clip), then roll each clip
    circularly along time by an integer in [-max_shift, max_shift]."""
    _check_batch(fbank, "noise_and_shift")
    batch, frames, bins = fbank.shape
    dev = fbank.device
    amp = _rand((batch,), generator, dev).to(fbank.dtype) / 10
    noisy = fbank + _rand((batch, frames, bins), generator, dev).to(fbank.dtype) * amp[:, None, None]
    if max_shift <= 0:
        return noisy
    shift = (_rand((batch,), generator, dev) * (2 * max_shift + 1)).long().clamp(max=2 * max_shift) - max_shift
    # torch.roll semantics per clip: out[t] = in[(t - shift) mod T].
    idx = (torch.arange(frames, device=dev)[None] - shift[:, None]) % frames
    return torch.gather(noisy, 1, idx[:, :, None].expand(-1, -1, bins))


def sample_mixup(
    batch_size: int,
    prob: float,
    alpha: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mixup draws for a batch: lam (B,) ~ Beta(alpha, alpha) where mixed else 1, a partner (B,) that is another
    clip of the batch, and which clips are mixed (each with probability ``prob``)."""
    if not 0.0 <= prob <= 1.0:
        raise FeatureError(f"mixup probability must be in [0, 1], got {prob}")
    if alpha <= 0:
        raise FeatureError(f"mixup alpha must be positive, got {alpha}")
    gdev = generator.device if generator is not None else torch.device("cpu")
    mixed = torch.rand(batch_size, generator=generator, device=gdev).cpu() < prob
    # A partner other than the clip itself: draw from the B-1 others and skip over the clip's own index.
    other = (torch.rand(batch_size, generator=generator, device=gdev).cpu() * max(batch_size - 1, 1)).long()
    own = torch.arange(batch_size)
    partner = other + (other >= own).long()
    if batch_size < 2:  # nobody to mix with
        mixed = torch.zeros(batch_size, dtype=torch.bool)
        partner = own.clone()
    # torch has no seeded Beta sampler; seed numpy's from the torch generator so runs stay reproducible.
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=gdev).item())
    beta = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=batch_size)).float()
    lam = torch.where(mixed, beta, torch.ones(batch_size))
    if device is not None:
        lam, partner, mixed = lam.to(device), partner.to(device), mixed.to(device)
    return lam, partner, mixed


def _check_mix(x: Tensor, lam: Tensor, partner: Tensor, name: str) -> None:
    if lam.shape != (x.shape[0],) or partner.shape != (x.shape[0],):
        raise FeatureError(
            f"{name}: lam {tuple(lam.shape)} and partner {tuple(partner.shape)} must both be ({x.shape[0]},)"
        )


def _lerp_rows(x: Tensor, lam: Tensor, partner: Tensor) -> Tensor:
    """lam * x + (1 - lam) * x[partner] over the first axis, leaving clips with lam == 1 bit-identical."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    lam = lam.to(device=x.device, dtype=x.dtype).view(shape)
    mixed = lam * x + (1 - lam) * x[partner.to(x.device)]
    return torch.where(lam == 1, x, mixed)


def mix_waves(wave: Tensor, num_frames: Tensor, lam: Tensor, partner: Tensor) -> tuple[Tensor, Tensor]:
    """Mix zero-padded waveforms (B, S); a mixed clip covers the longer of its two sources (num_frames = max)
    and has its DC offset removed over the samples its frames cover, zero beyond, as the loader's clips have."""
    if wave.dim() != 2:
        raise FeatureError(f"mix_waves expects waveforms of shape (batch, samples), got {tuple(wave.shape)}")
    _check_mix(wave, lam, partner, "mix_waves")
    dev = wave.device
    partner = partner.to(dev)
    num_frames = num_frames.to(dev)
    is_mixed = lam.to(dev) != 1
    out = _lerp_rows(wave, lam, partner)
    frames = torch.where(is_mixed, torch.maximum(num_frames, num_frames[partner]), num_frames)
    # Samples a clip's frames read: (frames - 1) * hop + window; the rest is padding and stays 0.
    span = torch.where(frames > 0, (frames - 1) * HOP + WINDOW, torch.zeros_like(frames)).clamp(max=wave.shape[1])
    inside = torch.arange(wave.shape[1], device=dev)[None] < span[:, None]
    mean = (out * inside).sum(dim=1) / span.clamp(min=1).to(out.dtype)
    centred = (out - mean[:, None]) * inside
    out = torch.where(is_mixed[:, None], centred, out)
    return out, frames


def mix_fbanks(fbank: Tensor, lam: Tensor, partner: Tensor) -> Tensor:
    """Mix features (B, ...) with their partners: lam * x + (1 - lam) * x[partner]; unmixed clips unchanged."""
    _check_mix(fbank, lam, partner, "mix_fbanks")
    return _lerp_rows(fbank, lam, partner)


def mix_labels(labels: Tensor, lam: Tensor, partner: Tensor) -> Tensor:
    """Mix label vectors (B, C) like their clips, so each mixed row keeps the total of its inputs (1 for one-hot)."""
    if labels.dim() != 2 or not labels.is_floating_point():
        raise FeatureError(
            f"mix_labels expects float label vectors of shape (batch, classes), got {tuple(labels.shape)} "
            f"{labels.dtype}; convert class indices with torch.nn.functional.one_hot(...).float()"
        )
    _check_mix(labels, lam, partner, "mix_labels")
    return _lerp_rows(labels, lam, partner)
