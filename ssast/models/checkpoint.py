"""Our checkpoint format: writing it atomically and reading it back, strictly.

A checkpoint is a directory holding ``model.safetensors`` (the weights, no ``module.`` prefixes) and ``model.json``::

    {"format": "ssast", "version": 1, "kind": "pretrain" | "classifier", "model": {ModelConfig fields},
     "num_classes": C, "labels": [...] | null, "label_ids": [...] | null, "norm": {"mean": m, "std": s} | null,
     "extra": {...}}

so the JSON alone rebuilds the exact model. Saving is atomic (:func:`ssast.atomic.atomic_write_dir`): a crash at any
point leaves either the old or the new complete checkpoint under the path, and readers fall back to the old copy that
an interrupted save left aside.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import safetensors
import safetensors.torch
import torch
from torch import nn

from ssast.atomic import aside_copies, atomic_write_dir
from ssast.config import ConfigError, ModelConfig, from_dict
from ssast.models.weightfiles import CheckpointError

FORMAT = "ssast"
VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"
KINDS = ("pretrain", "classifier")


def _unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _norm_dict(norm: Any) -> Optional[dict[str, float]]:
    """Normalisation statistics as {"mean", "std"} from a dict or a (mean, std) pair."""
    if norm is None:
        return None
    if isinstance(norm, Mapping):
        return {"mean": float(norm["mean"]), "std": float(norm["std"])}
    mean, std = norm
    return {"mean": float(mean), "std": float(std)}


def save_checkpoint(
    path_dir: str | Path,
    model: nn.Module,
    *,
    kind: str,
    model_cfg: ModelConfig,
    labels: Optional[Sequence[str]] = None,
    label_ids: Optional[Sequence[str]] = None,
    norm: Any = None,
    extra: Optional[dict] = None,
    write_more: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Write ``model`` and the metadata that rebuilds it into directory ``path_dir``, atomically; returns the path.

    ``write_more(folder)`` may add files (a trainer state) to the folder before it gets its final name, so the whole
    folder appears at once or not at all."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    model = _unwrap_model(model)
    num_classes = int(getattr(model, "num_classes", 0)) if kind == "classifier" else 0
    for name, values in (("labels", labels), ("label_ids", label_ids)):
        if values is not None and kind == "classifier" and len(values) != num_classes:
            raise ValueError(f"{name} has {len(values)} entries for a {num_classes}-class model")
    target = Path(path_dir)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory; choose another checkpoint path")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model": dataclasses.asdict(model_cfg),
        "num_classes": num_classes,
        "labels": list(labels) if labels is not None else None,
        "label_ids": list(label_ids) if label_ids is not None else None,
        "norm": _norm_dict(norm),
        "extra": dict(extra or {}),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}

    def write(folder: Path) -> None:
        safetensors.torch.save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
        (folder / META).write_text(json.dumps(meta, indent=2) + "\n")
        if write_more is not None:
            write_more(folder)

    return atomic_write_dir(target, write)


# ---------------------------------------------------------------------------------------------------------------
# Reading


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint directory of a folder, model.json or model.safetensors path (recovers an interrupted save)."""
    p = Path(path)
    if p.name in (WEIGHTS, META) and not p.is_dir():
        p = p.parent
    if p.is_dir():
        return p
    # A save interrupted between its two renames leaves the complete old checkpoint beside the path.
    aside = [q for q in aside_copies(p) if (q / META).is_file() and (q / WEIGHTS).is_file()]
    if aside:
        return aside[-1]
    raise CheckpointError(f"{p}: checkpoint directory not found (expected a folder with {META} and {WEIGHTS})")


def read_checkpoint_meta(path: str | Path) -> dict:
    """The metadata (model.json) of a checkpoint directory, checked for format, version and kind."""
    d = checkpoint_dir(path)
    f = d / META
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing; {d} is not an ssast checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{f}: not an ssast checkpoint (no \"format\": \"{FORMAT}\")")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CheckpointError(
            f"{f}: checkpoint version {meta.get('version')!r} is newer than this ssast reads ({VERSION}); upgrade ssast"
        )
    if meta.get("kind") not in KINDS:
        raise CheckpointError(f"{f}: kind {meta.get('kind')!r} is not one of {', '.join(KINDS)}")
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{f}: no \"model\" configuration")
    return meta


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights (model.safetensors) of a checkpoint directory, on the CPU."""
    f = checkpoint_dir(path) / WEIGHTS
    if not f.is_file():
        raise CheckpointError(f"{f}: missing; the checkpoint is incomplete")
    try:
        return safetensors.torch.load_file(str(f), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f}: cannot read the weights ({e}); the checkpoint is damaged") from None


def meta_model_config(meta: dict, where: str = "model.json") -> ModelConfig:
    """The ModelConfig stored in checkpoint metadata."""
    try:
        return from_dict(ModelConfig, meta["model"], "model")
    except ConfigError as e:
        raise CheckpointError(f"{where}: invalid model configuration: {e}") from None
