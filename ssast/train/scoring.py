"""Scoring classifiers on labelled clips: the run's label set, per-clip probabilities, and the per-class AP table.

Shared by the training engine (validation and final test) and by ``ssast evaluate`` (:mod:`ssast.serve.inference`), which
therefore needs nothing from the training engine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ssast.atomic import atomic_write_text
from ssast.config import Config, ConfigError


def load_label_set(cfg: Config):
    """The label set of a fine-tuning run (from data.label_csv); None for unlabeled pretraining."""
    from ssast.data.manifest import read_label_csv

    if cfg.data.label_csv:
        return read_label_csv(cfg.data.label_csv)
    if cfg.task == "finetune":
        raise ConfigError("data.label_csv: fine-tuning needs the label CSV (index,mid,display_name)")
    return None


def uses_sigmoid(cfg: Config) -> bool:
    """Whether the classifier is trained with BCE (so scored with a sigmoid): train.loss=bce, or auto and multi-label."""
    return cfg.train.loss == "bce" or (cfg.train.loss == "auto" and cfg.data.multilabel)


@torch.no_grad()
def predict_scores(model: nn.Module, batches: Iterable[dict], autocast: Callable, feature_fn: Callable,
                   sigmoid: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(probabilities, targets, clip keys) over ``batches``: sigmoid for models trained with BCE, else softmax."""
    scores, targets, keys = [], [], []
    for batch in batches:
        feats = feature_fn(batch, train=False)
        with autocast():
            logits = model(feats).float()
        probs = torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=-1)
        scores.append(probs.cpu().numpy())
        targets.append(batch["labels"].numpy())
        keys.extend(batch["keys"])
    if not keys:  # every clip was skipped: say so, with the loader's reasons when it counts them
        from ssast.data.manifest import DataError

        summary = batches.skip_summary() if hasattr(batches, "skip_summary") else "no clips"
        raise DataError(f"{getattr(batches, 'name', 'evaluation')}: no usable clip to score; {summary}")
    return np.concatenate(scores), np.concatenate(targets), keys


def write_per_class_ap(path: Path, labels, ap: list[float]) -> None:
    """index,mid,display_name,ap: one row per class (an empty AP where the class has no positive clip)."""
    lines = ["index,mid,display_name,ap"]
    for i, (mid, name, v) in enumerate(zip(labels.ids, labels.names, ap)):
        lines.append(f"{i},{mid},\"{name}\",{'' if v != v else f'{v:.6f}'}")
    atomic_write_text(path, "\n".join(lines) + "\n")
