"""From a loader batch to one training step's inputs: normalised (augmented) fbanks on the training device, and
batch-level mixup (waveforms or fbanks mixed, labels mixed alike) when ``augment.mixup`` asks for it."""
from __future__ import annotations

from typing import Callable

import torch

from ssast.config import AugmentConfig


def training_inputs(batch: dict, feature_fn: Callable, aug: AugmentConfig, gen: torch.Generator,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(features, labels) of one training batch; ``feature_fn(batch, train, mix=None)`` makes the fbanks."""
    labels = batch.get("labels")
    if labels is not None:
        labels = labels.to(device, non_blocking=True)
    if aug.mixup > 0 and aug.mixup_partner == "batch" and batch["wave"].shape[0] > 1:
        from ssast.audio.augment import mix_labels, mix_waves, sample_mixup

        lam, partner, _ = sample_mixup(batch["wave"].shape[0], aug.mixup, aug.mixup_alpha, generator=gen,
                                       device=device)
        if aug.mixup_domain == "wave":
            wave, nf = mix_waves(batch["wave"].to(device), batch["num_frames"].to(device), lam, partner)
            feats = feature_fn({"wave": wave, "num_frames": nf}, train=True)
        else:
            feats = feature_fn(batch, train=True, mix=(lam, partner))  # mixed before SpecAugment
        if labels is not None:
            labels = mix_labels(labels, lam, partner)
        return feats, labels
    return feature_fn(batch, train=True), labels
