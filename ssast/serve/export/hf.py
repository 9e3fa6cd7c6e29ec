"""Hugging Face transformers: export a classifier of ours as a stock AST folder, and import such a folder back.

:func:`export_hf` writes ``config.json`` (``ASTConfig``), ``model.safetensors`` and ``preprocessor_config.json``
(``ASTFeatureExtractor``) so that ``AutoModelForAudioClassification`` and ``AutoFeatureExtractor`` load it with
transformers' own classes, no remote code. transformers' feature extractor computes ours: the same Kaldi filter bank
(its per-frame DC removal makes our per-clip one a no-op), zero-padded or cut to ``max_length`` frames, then
``(x - mean) / (2 * std)``. :func:`import_hf` converts such a folder (ours or any ``ASTForAudioClassification`` saved
with ``save_pretrained``) into our checkpoint format; it needs only the files, not transformers.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import safetensors.torch
import torch

from ssast.atomic import atomic_write_dir, replaceable, source_id
from ssast.config import AudioConfig
from ssast.serve.inference import audio_config_of, load_for_inference
from ssast.models.checkpoint import META, CheckpointMeta, checkpoint_dir, read_checkpoint_meta, save_checkpoint
from ssast.models.hf_ast import FEATURE_DEFAULTS, PREPROCESSOR, is_hf_folder, labels_from_hf, load_hf_folder, ours_to_hf
from ssast.models.classifier import load_state_strict
from ssast.models.factory import build_model
from ssast.models.posembed import WeightMismatchError
from ssast.models.tokenizer import grid_shape
from ssast.models.weightfiles import CheckpointError

ONNX_INSTEAD = "export it with --format onnx instead, which takes every classifier"
ENCODER_ONNX_INSTEAD = "export its encoder with --format onnx --output embeddings instead, which takes every checkpoint"


def _exported_from(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("ssast_source")
    except (OSError, ValueError, AttributeError):
        return None


def export_problems(meta: CheckpointMeta) -> list[str]:
    """Why transformers' ASTForAudioClassification (for a pretraining checkpoint: ASTModel, the encoder) cannot compute
    this checkpoint's model (empty: it can)."""
    m = meta.model
    problems = []
    if m.fshape != m.tshape:
        problems.append(f"its {m.fshape}x{m.tshape} {'frames' if m.is_frame else 'patches'} are not square, and "
                        "transformers' AST builds square patches only")
    if m.num_prefix != 2:
        problems.append(f"it has {m.num_prefix} prefix token, transformers' AST two (cls and distillation)")
    if meta.kind != "classifier":
        return problems + [ENCODER_ONNX_INSTEAD] if problems else []
    if m.pooling != "cls":
        problems.append("it pools the mean of the patch tokens (model.pooling=mean), transformers' AST the mean of its "
                        "cls and distillation tokens")
    if m.layer_weights:
        problems.append("it pools a weighted sum of every block's output (model.layer_weights), which transformers' "
                        "AST does not have")
    if m.projector_dim:
        problems.append("its head is a projector (model.projector_dim), transformers' AST's a LayerNorm + Linear")
    if problems:
        problems.append(ONNX_INSTEAD)
    return problems


def export_hf(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write checkpoint ``ckpt`` as a transformers AST folder ``out`` (atomically); returns ``out``.

    A classifier becomes an ``ASTForAudioClassification``; a pretraining checkpoint its encoder alone, an ``ASTModel``
    whose ``last_hidden_state`` after the two prefix tokens is ``ssast embed --tokens``. The folder's ``max_length`` is
    the checkpoint's input length (``audio.target_length``), its statistics and label names the checkpoint's. Models
    transformers' AST cannot express are refused in one line (:func:`export_problems`); an existing ``out`` is
    replaced only if it is empty or an earlier export of the same
    checkpoint (of another one with ``overwrite``).
    """
    from ssast.serve.export import require_extra  # the package imports this module: a late import, no cycle

    d = checkpoint_dir(ckpt)
    target = replaceable(out, holds=is_hf_folder, kind="a transformers AST folder", overwrite=overwrite,
                         same=lambda p: _exported_from(p) == source_id(d))
    meta = read_checkpoint_meta(d)
    problems = export_problems(meta)
    if problems:
        raise CheckpointError(f"{d}: transformers' AST cannot run this model: " + "; ".join(problems))
    require_extra("transformers", "hf")
    from transformers import ASTConfig, ASTFeatureExtractor

    m, audio = meta.model, audio_config_of(meta)
    if audio.num_mel_bins != m.input_fdim or audio.target_length > m.input_tdim:
        raise CheckpointError(
            f"{d}: its audio settings ({audio.num_mel_bins} mel bins x {audio.target_length} frames) do not fit its "
            f"model ({m.input_fdim} x at most {m.input_tdim}); the checkpoint is inconsistent"
        )
    head = meta.kind == "classifier"
    model, _ = load_for_inference(str(d), torch.device("cpu"), need_head=head)  # a pretraining one: its encoder
    state = model.state_dict()
    # transformers' AST has exactly max_length frames: keep the positions of the grid the checkpoint's input gives
    grid = grid_shape(audio.num_mel_bins, audio.target_length, m.fshape, m.tshape, m.fstride, m.tstride)
    state["encoder.pos_embed"] = model.encoder.position_embedding(grid)
    tensors = ours_to_hf(state, m.depth, head=head)

    if head:
        names = meta.labels or [str(i) for i in range(meta.num_classes)]
        if meta.multilabel:
            problem_type = "multi_label_classification"  # the pipeline then scores with a sigmoid, as ssast predict
        else:
            problem_type = "single_label_classification" if meta.num_classes > 1 else None
        task = dict(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                    problem_type=problem_type, architectures=["ASTForAudioClassification"])
    else:
        task = dict(architectures=["ASTModel"])
    config = ASTConfig(
        hidden_size=m.dim, num_hidden_layers=m.depth, num_attention_heads=m.heads,
        intermediate_size=model.encoder.blocks[0].mlp.fc1.out_features, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=m.norm_eps, qkv_bias=True,
        patch_size=m.fshape, frequency_stride=m.fstride, time_stride=m.tstride, max_length=audio.target_length,
        num_mel_bins=audio.num_mel_bins, dtype="float32", **task,
        ssast_source=source_id(d),  # which checkpoint this is an export of: a rerun may replace it
    )
    features = ASTFeatureExtractor(
        sampling_rate=audio.sample_rate, num_mel_bins=audio.num_mel_bins, max_length=audio.target_length,
        do_normalize=True, mean=audio.norm_mean, std=audio.norm_std,
    )

    def write(folder: Path) -> None:
        safetensors.torch.save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(folder)
        features.save_pretrained(folder)

    return atomic_write_dir(target, write)


def _audio_settings(src: Path, cfg: dict, features: Optional[dict],
                    norm: Optional[tuple[float, float]]) -> tuple[AudioConfig, list[str]]:
    """Our feature settings for a transformers AST folder, and notes on what was assumed."""
    bins, frames = int(cfg["num_mel_bins"]), int(cfg["max_length"])
    if features is None:
        mean, std = norm or (FEATURE_DEFAULTS["mean"], FEATURE_DEFAULTS["std"])
        where = "the given statistics" if norm else "AST's AudioSet statistics"
        note = (f"{src} has no {PREPROCESSOR}: assuming 16 kHz audio and {where} (mean {mean:.7g}, std {std:.7g})"
                + ("" if norm else "; give --norm-mean/--norm-std or --stats if it was trained with others"))
        return AudioConfig(sample_rate=16000, num_mel_bins=bins, target_length=frames, norm_mean=mean,
                           norm_std=std), [note]
    where = src / PREPROCESSOR
    if norm:
        raise CheckpointError(f"{where}: the folder states its own statistics; drop --stats / --norm-mean / --norm-std")
    if (int(features["num_mel_bins"]), int(features["max_length"])) != (bins, frames):
        raise CheckpointError(
            f"{where}: makes {features['num_mel_bins']} mel bins x {features['max_length']} frames, but config.json's "
            f"model takes {bins} x {frames}; the folder is inconsistent"
        )
    notes = []
    mean, std = float(features["mean"]), float(features["std"])
    if not features["do_normalize"]:
        mean, std = 0.0, 0.5  # (x - 0) / (2 * 0.5) = x: the raw filter bank, as the folder's extractor gives it
        notes.append(f"{where}: do_normalize is false, so the model reads the raw filter bank (mean 0, std 0.5 here)")
    audio = AudioConfig(sample_rate=int(features["sampling_rate"]), num_mel_bins=bins, target_length=frames,
                        norm_mean=mean, norm_std=std)
    return audio, notes


def import_hf(src: str | Path, out: str | Path, *, norm: Optional[tuple[float, float]] = None,
              overwrite: bool = False) -> CheckpointMeta:
    """Convert a transformers ``ASTForAudioClassification`` folder into our classifier checkpoint ``out``.

    The model pools (cls + dist) / 2 as transformers' does; labels come from ``id2label``, the feature settings from
    ``preprocessor_config.json`` (without one: AST's AudioSet settings, or ``norm`` = (mean, std); a note says so on
    stderr). An existing ``out`` is replaced only if it is empty or an earlier import of the same source (of another
    one with ``overwrite``). Returns the written checkpoint's metadata.
    """
    from ssast.models.checkpoint import imported_here

    src = Path(src)
    target = replaceable(out, holds=lambda p: (p / META).is_file(), kind="an ssast checkpoint",
                         same=lambda p: imported_here(p, src), overwrite=overwrite)
    cfg, features, model_cfg, state, has_head = load_hf_folder(src)
    if not has_head:
        raise CheckpointError(
            f"{src}: an AST without a classification head (ASTModel); ssast imports classifiers, but fine-tuning can "
            f"start from it: ssast finetune ... model.init={src}"
        )
    num_classes = int(state["head.1.weight"].shape[0])
    model_cfg = dataclasses.replace(model_cfg, num_classes=num_classes)
    audio, notes = _audio_settings(src, cfg, features, norm)
    model = build_model("classifier", model_cfg, num_classes)
    try:
        load_state_strict(model, state, what=f"classifier that {src / 'config.json'} describes")
    except WeightMismatchError as e:
        raise CheckpointError(f"{src}: {e}") from None
    meta = CheckpointMeta(
        kind="classifier", model=model_cfg, labels=labels_from_hf(cfg, num_classes), audio=audio,
        multilabel=cfg.get("problem_type") == "multi_label_classification", imported_from=src.name,
    )
    save_checkpoint(target, model, meta)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return read_checkpoint_meta(target)

