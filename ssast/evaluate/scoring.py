"""``ssast evaluate``: the metrics of one classifier checkpoint, or of an ensemble of several, on a labelled list,
with each checkpoint's own feature settings."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from ssast.config import AugmentConfig, Config, ConfigError
from ssast.serve.inference import audio_config_of, load_for_inference


def evaluate_checkpoint(ckpt: str | list[str], cfg: Config) -> dict:
    """Metrics of a classifier checkpoint on cfg.data.test (or valid), with the checkpoint's own feature settings.

    Several checkpoints (e.g. the epochs of one run, as the authors ensemble them) are evaluated as an ensemble:
    their per-clip probabilities are averaged. Each single model's metrics are reported too.
    """
    from ssast.audio.features import FeatureExtractor
    from ssast.data.loader import build_loader
    from ssast.train.scoring import load_label_set, predict_scores, uses_sigmoid
    from ssast.train.metrics import classification_metrics
    from ssast.train.runtime import setup_runtime

    ckpts = [ckpt] if isinstance(ckpt, (str, Path)) else list(ckpt)
    rt = setup_runtime(cfg.train.device, cfg.train.precision)
    split = "test" if cfg.data.test else "valid"
    if not getattr(cfg.data, split):
        raise ConfigError("data.test (or data.valid): give the labelled list to evaluate on")
    all_scores, singles, targets = [], [], None
    for path in ckpts:
        model, meta = load_for_inference(str(path), rt.device, need_head=True)
        run_cfg = replace(cfg, audio=audio_config_of(meta), task="finetune")
        labels = load_label_set(run_cfg)
        if meta.label_ids and list(labels.ids) != meta.label_ids:
            raise ConfigError(f"data.label_csv: its labels differ from those {path} was trained on")
        features = FeatureExtractor(run_cfg.audio, AugmentConfig()).to(rt.device)

        def feature_fn(batch, train, features=features):
            return features(batch["wave"].to(rt.device), batch["num_frames"].to(rt.device), train=False)

        loader = build_loader(run_cfg, split, labels=labels)
        loader.preflight()
        scores, targets, keys = predict_scores(model, loader, rt.autocast, feature_fn, sigmoid=uses_sigmoid(run_cfg))
        all_scores.append(scores)
        single = classification_metrics(scores, targets, cfg.data.multilabel)
        single.pop("per_class_ap", None)
        singles.append({"checkpoint": str(path), **single})
    metrics = classification_metrics(np.mean(all_scores, axis=0), targets, cfg.data.multilabel)
    metrics["num_clips"] = len(keys)
    if sum(loader.skipped.values()):  # the clips are the same for every checkpoint: report the last pass
        metrics["skipped_clips"] = f"data.{split}: {loader.skip_summary()} (scored on the rest)"
        print(f"evaluate: {metrics['skipped_clips']}", file=sys.stderr)
    if len(ckpts) > 1:
        metrics["ensemble_of"] = len(ckpts)
        metrics["single"] = singles
    return metrics
