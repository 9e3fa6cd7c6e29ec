"""Dataset fbank statistics (mean, std) for the ``(x - mean) / (2 std)`` normalisation.

Only the real frames of every clip count: the authors take the statistics over features zero-padded to
target_length, which pulls the mean towards 0 on datasets of short clips; padding is not audio, so it is left out.
Batches are combined exactly (Chan et al.'s parallel update in float64), so the result does not depend on how the
dataset is split into batches and stays accurate over millions of frames.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from ssast.audio.fbank import FeatureError, kaldi_fbank
from ssast.config import AudioConfig


def fbank_stats(
    batches: Iterable[tuple[Tensor, Tensor]],
    audio: AudioConfig,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Mean and (unbiased) std of all real fbank values over (wave (B, S), num_frames (B,)) batches.

    No augmentation and no normalisation; frames beyond ``audio.target_length`` are not counted (they would be
    cropped in training). ``device`` moves each batch there first (e.g. "cuda" to compute the fbanks on a GPU).
    """
    count = 0
    mean = torch.zeros((), dtype=torch.float64)
    m2 = torch.zeros((), dtype=torch.float64)  # sum of squared deviations from the running mean
    for i, batch in enumerate(batches):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise FeatureError(f"fbank_stats: batch {i} is not a (wave, num_frames) pair")
        wave, num_frames = batch[0], batch[1]
        if device is not None:
            wave = wave.to(device)
        if wave.dim() != 2 or num_frames.shape != (wave.shape[0],):
            raise FeatureError(
                f"fbank_stats: batch {i} has wave {tuple(wave.shape)} and num_frames {tuple(num_frames.shape)}; "
                "expected (B, samples) and (B,)"
            )
        fb = kaldi_fbank(wave, num_mel_bins=audio.num_mel_bins, sample_rate=audio.sample_rate)
        frames = num_frames.to(fb.device).clamp(max=min(fb.shape[1], audio.target_length))
        keep = torch.arange(fb.shape[1], device=fb.device)[None] < frames[:, None]
        values = fb[keep].to(torch.float64)  # (real frames, mel), flattened over clips
        n = values.numel()
        if n == 0:
            continue
        b_mean = values.mean().cpu()
        b_m2 = (values - values.mean()).square().sum().cpu()
        delta = b_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + b_m2 + delta.square() * (count * n / total)
        count = total
    if count < 2:
        raise FeatureError(
            "fbank_stats: the batches hold fewer than 2 real fbank values; the dataset is empty or every clip is "
            "shorter than one 25 ms window"
        )
    return float(mean), float((m2 / (count - 1)).sqrt())
