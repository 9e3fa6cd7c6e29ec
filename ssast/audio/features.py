"""From a batch of waveforms to the model's normalised (batch, target_length, mel) input, on any device.

The loader hands over zero-padded waveforms and the real frame count of every clip; :class:`FeatureExtractor`
turns them into features with the batched Kaldi fbank, reproduces the authors' zero-padding of the fbank,
normalises with the dataset statistics and applies the training-time augmentations.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ssast.audio.augment import mix_fbanks, noise_and_shift, spec_augment
from ssast.audio.fbank import FeatureError, kaldi_fbank
from ssast.config import AudioConfig, AugmentConfig

CropMode = Literal["start", "random", "center"]


def pad_or_crop(
    fbank: Tensor,
    target_length: int,
    mode: CropMode = "start",
    generator: torch.Generator | None = None,
    num_frames: Tensor | None = None,
) -> Tensor:
    """Zero-pad at the end or crop (T, F) / (B, T, F) features to ``target_length`` frames.

    ``mode`` picks where a longer clip is cut: its start, its centre, or a random start drawn per clip.
    With ``num_frames`` (B,), the centre/random window stays inside each clip's real frames, not its padding.
    """
    if mode not in ("start", "random", "center"):
        raise FeatureError(f"crop mode must be 'start', 'random' or 'center', got {mode!r}")
    if fbank.dim() not in (2, 3):
        raise FeatureError(f"pad_or_crop expects (frames, mel) or (batch, frames, mel), got {tuple(fbank.shape)}")
    if target_length < 1:
        raise FeatureError(f"target_length must be at least 1 frame, got {target_length}")
    squeeze = fbank.dim() == 2
    x = fbank.unsqueeze(0) if squeeze else fbank
    batch, frames, _ = x.shape
    if frames < target_length:
        x = torch.nn.functional.pad(x, (0, 0, 0, target_length - frames))
    elif frames > target_length and batch == 0:
        x = x[:, :target_length]
    elif frames > target_length:
        if num_frames is None:
            real = torch.full((batch,), frames, dtype=torch.long)
        else:
            real = num_frames.detach().to("cpu", torch.long).clamp(max=frames)
        slack = (real - target_length).clamp(min=0)  # how far each clip's window may start
        if mode == "start":
            starts = torch.zeros(batch, dtype=torch.long)
        elif mode == "center":
            starts = slack // 2
        else:
            u = torch.rand(batch, generator=generator, device=_gen_device(generator)).cpu()
            starts = (u * (slack + 1).to(u.dtype)).long().clamp(max=slack)
        if bool((starts == starts[0]).all()):
            s = int(starts[0])
            x = x[:, s : s + target_length]  # one shared start: a view, no gather
        else:
            idx = starts.to(x.device)[:, None] + torch.arange(target_length, device=x.device)[None]
            x = torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[2]))
    return x[0] if squeeze else x


def normalize(fbank: Tensor, mean: float, std: float) -> Tensor:
    """The authors' normalisation ``(fbank - mean) / (2 * std)`` with per-dataset statistics."""
    return (fbank - mean) / (2.0 * std)


def mask_padding(fbank: Tensor, num_frames: Tensor) -> Tensor:
    """Set frames at index >= num_frames (computed from the zero padding of the waveform) to 0, per clip."""
    frames = fbank.shape[1]
    keep = torch.arange(frames, device=fbank.device)[None] < num_frames.to(fbank.device)[:, None]
    return torch.where(keep[:, :, None], fbank, torch.zeros((), dtype=fbank.dtype, device=fbank.device))


def _gen_device(generator: torch.Generator | None) -> torch.device | None:
    return generator.device if generator is not None else None


class FeatureExtractor(nn.Module):
    """Zero-padded waveforms (B, S) + real frame counts (B,) -> normalised, augmented (B, target_length, mel).

    Order: Kaldi fbank -> frames beyond each clip set to 0 (the authors' zero-padding of the fbank) ->
    pad/crop to target_length from the start (the loader already cropped the waveform) -> [train only]
    fbank-domain mixup when ``mix`` is given -> SpecAugment on the raw fbank (the authors' order: masked cells end at
    -mean/(2 std) once normalised) -> normalise -> uniform noise + circular time shift. With
    ``augment.specaug_domain=normalized`` SpecAugment runs after normalising instead (masked cells exactly 0).
    Mixing before normalising equals mixing after it: normalisation is affine and the weights sum to one.
    """

    def __init__(self, audio: AudioConfig, augment: AugmentConfig) -> None:
        super().__init__()
        self.audio = audio
        self.augment = augment

    def forward(
        self,
        wave: Tensor,
        num_frames: Tensor,
        *,
        train: bool,
        generator: torch.Generator | None = None,
        mix: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Features for one batch; ``mix`` = (lam, partner) from sample_mixup mixes in the fbank domain."""
        if wave.dim() != 2:
            raise FeatureError(f"FeatureExtractor expects waveforms of shape (batch, samples), got {tuple(wave.shape)}")
        if num_frames.shape != (wave.shape[0],):
            raise FeatureError(
                f"num_frames has shape {tuple(num_frames.shape)}; expected ({wave.shape[0]},), one count per clip"
            )
        a = self.audio
        fb = kaldi_fbank(wave, num_mel_bins=a.num_mel_bins, sample_rate=a.sample_rate)
        fb = mask_padding(fb, num_frames)
        fb = pad_or_crop(fb, a.target_length, "start")
        if not train:
            return normalize(fb, a.norm_mean, a.norm_std)
        aug = self.augment
        if mix is not None:
            fb = mix_fbanks(fb, *mix)
        masking = aug.freqm > 0 or aug.timem > 0
        if masking and aug.specaug_domain == "raw":
            fb = spec_augment(fb, aug.freqm, aug.timem)
        fb = normalize(fb, a.norm_mean, a.norm_std)
        if masking and aug.specaug_domain == "normalized":
            fb = spec_augment(fb, aug.freqm, aug.timem)
        if aug.noise:
            fb = noise_and_shift(fb, max_shift=aug.time_shift, generator=generator)
        return fb
