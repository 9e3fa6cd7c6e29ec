"""Using trained models on audio files: evaluation on a labelled list, top-k prediction and embeddings."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch

from ssast.config import AudioConfig, AugmentConfig, Config, ConfigError

if TYPE_CHECKING:  # the models are imported only by the commands that use them
    from ssast.models.checkpoint import CheckpointMeta


def audio_config_of(meta: CheckpointMeta) -> AudioConfig:
    """The feature settings a checkpoint was trained with (the defaults where it has none), cropping at the start."""
    return replace(meta.audio or AudioConfig(), crop="start")


def load_for_inference(path: str, device: torch.device, need_head: bool):
    """A classifier from our checkpoint (or, for embeddings, the encoder of a pretraining checkpoint), in eval mode."""
    from ssast.models.checkpoint import read_checkpoint_meta
    from ssast.models.factory import build_classifier, load_pretrained

    meta = read_checkpoint_meta(path)
    if meta.kind == "classifier":
        model, meta = load_pretrained(path)
    elif need_head:
        raise ConfigError(f"{path} is a pretraining checkpoint: fine-tune it first (ssast finetune) to predict labels")
    else:
        # the classifier path without a head: the encoder is loaded strictly, the decoder and heads are dropped
        model, _ = build_classifier(replace(meta.model, init=""), 1, path)
    return model.to(device).eval(), meta


def batches_of_files(files: list[str], audio: AudioConfig, batch_size: int) -> Iterable[dict]:
    """Decode files (first target_length frames of each) into padded batches; bad files raise AudioError."""
    from ssast.audio.fbank import max_samples, window_hop
    from ssast.audio.io import load_audio
    from ssast.data.dataset import collate

    for i in range(0, len(files), batch_size):
        items = []
        for f in files[i : i + batch_size]:
            window = max_samples(audio.target_length, *window_hop(audio.sample_rate))
            wave = load_audio(f, sample_rate=audio.sample_rate, max_samples=window, crop="start")
            items.append({"wave": wave, "labels": None, "key": str(f)})
        yield collate(items)


@torch.no_grad()
def run_files(model, files: list[str], audio: AudioConfig, device: torch.device, batch_size: int, fn) -> list:
    from ssast.audio.features import FeatureExtractor

    features = FeatureExtractor(audio, AugmentConfig()).to(device)
    outputs = []
    for batch in batches_of_files(files, audio, batch_size):
        feats = features(batch["wave"].to(device), batch["num_frames"].to(device), train=False)
        outputs.append(fn(feats))
    return outputs


def predict_files(ckpt: str, files: list[str], top_k: int = 5, device: str = "cpu", batch_size: int = 8) -> list[dict]:
    """Top-k labels with scores per file (softmax for single-label models, sigmoid for multi-label)."""
    dev = torch.device(device)
    model, meta = load_for_inference(ckpt, dev, need_head=True)
    audio = audio_config_of(meta)
    multilabel = meta.multilabel
    names = meta.labels or [str(i) for i in range(meta.num_classes)]
    outs = run_files(model, files, audio, dev, batch_size, lambda x: model(x).float())
    logits = torch.cat(outs)
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, -1)
    k = min(top_k, probs.shape[1])
    scores, idx = probs.topk(k, dim=-1)
    return [
        {"file": f, "top": [{"label": names[j], "score": float(s)} for s, j in zip(sc.tolist(), ix.tolist())]}
        for f, sc, ix in zip(files, scores, idx)
    ]


def _embedding(model, x: torch.Tensor, tokens: bool) -> torch.Tensor:
    """The pooled clip embedding (B, D), or the patch tokens' outputs (B, N, D)."""
    out = model.forward_features(x)
    return model.patch_tokens(out) if tokens else model.forward_head(out, pre_logits=True)


def embed_files(ckpt: str, files: list[str], out_dir: str, tokens: bool = False, device: str = "cpu",
                batch_size: int = 8) -> list[Path]:
    """Clip embeddings (pooled, (D,)) or token embeddings ((N, D)) per file, saved as .npy under out_dir."""
    dev = torch.device(device)
    model, meta = load_for_inference(ckpt, dev, need_head=False)
    audio = audio_config_of(meta)
    outs = run_files(model, files, audio, dev, batch_size, lambda x: _embedding(model, x, tokens).float())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    emb = torch.cat(outs).cpu().numpy()
    for i, (f, e) in enumerate(zip(files, emb)):
        p = out / f"{i:05d}_{Path(f).stem}.npy"
        np.save(p, e)
        written.append(p)
    return written


def evaluate_checkpoint(ckpt: str | list[str], cfg: Config) -> dict:
    """Metrics of a classifier checkpoint on cfg.data.test (or valid), with the checkpoint's own feature settings.

    Several checkpoints (e.g. the epochs of one run, as the authors ensemble them) are evaluated as an ensemble:
    their per-clip probabilities are averaged. Each single model's metrics are reported too.
    """
    from ssast.audio.features import FeatureExtractor
    from ssast.data.loader import build_loader
    from ssast.evaluation import load_label_set, predict_scores, uses_sigmoid
    from ssast.metrics import classification_metrics
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
