"""Models from an ``init`` string or a checkpoint: the one place that knows every source of weights.

:func:`build_classifier` initialises a classifier for fine-tuning from "scratch", our checkpoint folder, an authors'
``.pth``, a transformers AST folder or ImageNet DeiT weights; :func:`load_pretrained` rebuilds the exact model of our
checkpoint; :func:`import_authors_checkpoint` converts an authors' file into our format. Reading and writing our
format is ``checkpoint.py``'s; converting the authors' tensors is ``authors.py``'s, transformers' ``hf_ast.py``'s.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import safetensors.torch
import torch
from torch import nn

from ssast.atomic import aside_copies
from ssast.config import DATASET_STATS, AudioConfig, ModelConfig
from ssast.models.authors import load_authors_file
from ssast.models.checkpoint import (
    KINDS,
    META,
    WEIGHTS,
    CheckpointMeta,
    checkpoint_dir,
    load_state,
    read_checkpoint_meta,
    save_checkpoint,
)
from ssast.models.classifier import SSASTClassifier, load_encoder_into, load_state_strict
from ssast.models.hf_ast import is_hf_folder, load_hf_folder
from ssast.models.imagenet import deit_name_for, deit_to_encoder_state, unwrap_state
from ssast.models.posembed import WeightMismatchError
from ssast.models.weightfiles import CheckpointError, load_torch_file


def build_model(kind: str, cfg: ModelConfig, num_classes: int = 0) -> nn.Module:
    """A freshly initialised model of this kind: SSASTPretrainModel ("pretrain") or SSASTClassifier ("classifier")."""
    if kind == "pretrain":
        from ssast.models.pretrain import SSASTPretrainModel

        return SSASTPretrainModel(cfg)
    if kind == "classifier":
        return SSASTClassifier(cfg, num_classes)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def load_pretrained(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the exact model of a checkpoint and load it strictly; returns (eval model, its metadata)."""
    d = checkpoint_dir(path)
    meta = read_checkpoint_meta(d)
    model = build_model(meta.kind, meta.model, meta.num_classes)
    try:
        load_state_strict(model, load_state(d), what=f"{meta.kind} model described by {META}")
    except WeightMismatchError as e:
        raise CheckpointError(f"{d / WEIGHTS}: {e}") from None
    return model.to(device).eval(), meta


# ---------------------------------------------------------------------------------------------------------------
# Classifier initialisation


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A tensor dict from a .safetensors or (weights-only) PyTorch file; errors name the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            obj: Any = safetensors.torch.load_file(str(path), device="cpu")
        else:
            obj = load_torch_file(path, "a timm DeiT/ViT state dict (.pth, .pt or .safetensors)")
        return unwrap_state(obj)
    except CheckpointError:
        raise
    except Exception as e:  # unreadable, not weights-only, or not a tensor dict: one message for the user
        raise CheckpointError(f"{path}: not a readable weights file ({type(e).__name__}: {e})") from None


def _timm_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """Weights of a timm model from its hub (needs network access)."""
    import timm

    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as e:  # hub, network and unknown-name errors all need the same advice
        raise CheckpointError(
            f"imagenet:timm:{name}: could not get timm's pretrained weights ({type(e).__name__}: {e}). "
            f"Without network access, download them elsewhere and use init=imagenet:/path/to/{name}.safetensors"
        ) from None


def _load_encoder_part(model: SSASTClassifier, state: dict, src_cfg: ModelConfig, where: Path) -> tuple[str, str]:
    """Load the ``encoder.*`` tensors of a full model state into ``model``; returns (notes, what was dropped)."""
    encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    dropped = sorted({k.split(".")[0] for k in state if not k.startswith("encoder.")})
    try:
        notes = load_encoder_into(model, encoder_state, src_cfg)
    except WeightMismatchError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return notes, ", ".join(dropped) or "nothing"


def _init_from_ours(model: SSASTClassifier, d: Path) -> str:
    """Load the encoder of our checkpoint (pretraining or classifier kind) into ``model``."""
    meta = read_checkpoint_meta(d)
    notes, dropped = _load_encoder_part(model, load_state(d), meta.model, d)
    return f"encoder from {meta.kind} checkpoint {d} ({notes}); dropped: {dropped}"


def _init_from_authors(model: SSASTClassifier, f: Path) -> str:
    """Load the encoder of an authors' released .pth into ``model``."""
    kind, src_cfg, state, _ = load_authors_file(f)
    notes, dropped = _load_encoder_part(model, state, src_cfg, f)
    return f"encoder from the authors' {kind} checkpoint {f} ({notes}); dropped: {dropped}"


def _init_from_hf(model: SSASTClassifier, d: Path) -> str:
    """Load the encoder of a transformers AST folder (ASTForAudioClassification or ASTModel) into ``model``."""
    _, _, src_cfg, state, _ = load_hf_folder(d)
    notes, dropped = _load_encoder_part(model, state, src_cfg, d)
    if src_cfg.norm_eps != model.cfg.norm_eps:
        notes += f", LayerNorm eps {src_cfg.norm_eps:g} -> {model.cfg.norm_eps:g} (model.norm_eps)"
    return f"encoder from the transformers AST {d} ({notes}); dropped: {dropped}"


def _init_from_imagenet(model: SSASTClassifier, cfg: ModelConfig, spec: str) -> str:
    """DeiT initialisation from a local weights file or (with network) timm's hub."""
    if spec == "timm" or spec.startswith("timm:"):
        name = spec[len("timm:") :] or deit_name_for(cfg.dim)
        source = f"timm {name}"
        state = _timm_pretrained_state(name)
    else:
        if not spec:
            raise CheckpointError("init=imagenet: needs a weights file or 'timm', e.g. imagenet:deit_base.safetensors")
        source = spec
        state = _read_weights_file(Path(spec))
    try:
        load_state_strict(model.encoder, deit_to_encoder_state(state, cfg), what="classifier's encoder")
    except WeightMismatchError as e:
        raise CheckpointError(f"{source}: {e}") from None
    g = model.encoder.grid
    return (
        f"encoder from ImageNet DeiT {source} (RGB patch weights summed, positions adapted to {g[0]}x{g[1]}); "
        "dropped: head, head_dist"
    )


def build_classifier(cfg: ModelConfig, num_classes: int, init: Optional[str] = None) -> tuple[SSASTClassifier, str]:
    """A classifier for fine-tuning, initialised from ``init`` (default ``cfg.init``); returns (model, what was done).

    ``init``: "" or "scratch" (random), a checkpoint directory of ours (pretraining or classifier: encoder only),
    a transformers AST folder (``save_pretrained`` of ASTForAudioClassification or ASTModel: encoder only),
    an authors' ``.pth``/``.pt`` file, "imagenet:FILE" (a timm DeiT state dict) or "imagenet:timm[:NAME]" (needs a hub).
    """
    init = cfg.init if init is None else init
    model = SSASTClassifier(cfg, num_classes)
    if init in ("", "scratch"):
        return model, "random initialisation"
    if init.startswith("imagenet:"):
        return model, _init_from_imagenet(model, cfg, init[len("imagenet:") :])
    p = Path(init)
    if p.is_dir() and is_hf_folder(p):
        return model, _init_from_hf(model, p)
    if p.is_dir() or p.name in (META, WEIGHTS):
        return model, _init_from_ours(model, checkpoint_dir(p))
    if p.is_file() and p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return model, _init_from_authors(model, p)
    if p.is_file():
        raise CheckpointError(
            f"model.init={init}: unknown file type; give a checkpoint directory, a transformers AST folder, "
            f"an authors' .pth, or imagenet:FILE for DeiT weights"
        )
    if aside_copies(p):
        return model, _init_from_ours(model, checkpoint_dir(p))
    raise CheckpointError(
        f"model.init={init}: not found; give a checkpoint directory, a transformers AST folder, an authors' .pth "
        f"file, imagenet:FILE, imagenet:timm or scratch"
    )


# ---------------------------------------------------------------------------------------------------------------
# The authors' released files


def import_authors_checkpoint(
    src_pth: str | Path,
    dst_dir: str | Path,
    *,
    fstride: Optional[int] = None,
    tstride: Optional[int] = None,
    input_tdim: Optional[int] = None,
    pooling: str = "mean",
    norm: Optional[tuple[float, float]] = None,
) -> CheckpointMeta:
    """Convert the authors' ``.pth`` file into our checkpoint directory ``dst_dir``; returns its metadata.

    The checkpoint carries the feature settings inference needs: the model's input length (``audio.target_length``)
    and the normalisation ``norm`` = (mean, std), by default the AudioSet statistics the authors pretrained with."""
    src_pth = Path(src_pth)
    kind, cfg, state, num_classes = load_authors_file(
        src_pth, fstride=fstride, tstride=tstride, input_tdim=input_tdim, pooling=pooling
    )
    model = build_model(kind, cfg, num_classes)
    try:
        load_state_strict(model, state, what=f"{kind} model")
    except WeightMismatchError as e:
        raise CheckpointError(f"{src_pth}: {e}") from None
    mean, std = norm or DATASET_STATS["audioset"]
    audio = AudioConfig(num_mel_bins=cfg.input_fdim, target_length=cfg.input_tdim, norm_mean=mean, norm_std=std)
    meta = CheckpointMeta(kind=kind, model=cfg, audio=audio, imported_from=src_pth.name)
    save_checkpoint(dst_dir, model, meta)
    return read_checkpoint_meta(dst_dir)
