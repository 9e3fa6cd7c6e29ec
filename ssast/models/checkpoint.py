"""Our checkpoint format: the typed metadata record, writing it atomically and reading it back, strictly.

A checkpoint is a directory holding ``model.safetensors`` (the weights, no ``module.`` prefixes) and ``model.json``,
the fields of :class:`CheckpointMeta`::

    {"format": "ssast", "version": 2, "kind": "pretrain" | "classifier", "model": {ModelConfig fields},
     "num_classes": C, "labels": [...] | null, "label_ids": [...] | null, "audio": {AudioConfig fields} | null,
     "multilabel": false, "step": N | null, "epoch": N | null, "task": "pretrain" | "finetune" | null,
     "imported_from": "file.pth" | null}

so the JSON alone rebuilds the exact model and says how to make its input features. Version 1 files (feature
settings and training provenance in a free-form ``extra``, statistics in ``norm``) are still read. Saving is atomic
(:func:`ssast.atomic.atomic_write_dir`): a crash at any point leaves either the old or the new complete checkpoint
under the path, and readers fall back to the old copy that an interrupted save left aside.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import safetensors
import safetensors.torch
import torch
from torch import nn

from ssast.atomic import aside_copies, atomic_write_dir
from ssast.config import AudioConfig, ConfigError, ModelConfig, drop_legacy_keys, from_dict
from ssast.models.weightfiles import CheckpointError

FORMAT = "ssast"
VERSION = 2
WEIGHTS = "model.safetensors"
META = "model.json"
KINDS = ("pretrain", "classifier")


@dataclass
class CheckpointMeta:
    """What ``model.json`` holds: the model to rebuild, its labels, and the audio features it was trained on."""

    kind: Literal["pretrain", "classifier"]
    model: ModelConfig
    num_classes: int = 0  # classes of the head, 0 for pretraining; save_checkpoint takes it from the model
    labels: Optional[list[str]] = None  # class names in head order
    label_ids: Optional[list[str]] = None  # class ids (e.g. AudioSet mids) in head order
    audio: Optional[AudioConfig] = None  # features and normalisation (norm_mean/norm_std); None: not recorded
    multilabel: bool = False  # sigmoid scores instead of softmax
    step: Optional[int] = None  # training provenance: optimiser steps, finished epochs, the run's task
    epoch: Optional[int] = None
    task: Optional[str] = None
    imported_from: Optional[str] = None  # the authors' file it was converted from
    format: str = FORMAT
    version: int = VERSION  # the layout of the file it was read from; saving always writes VERSION


def _unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(
    path_dir: str | Path,
    model: nn.Module,
    meta: CheckpointMeta,
    *,
    write_more: Optional[Callable[[Path], None]] = None,
) -> Path:
    """Write ``model`` and its metadata into directory ``path_dir``, atomically; returns the path.

    ``meta.num_classes`` is taken from the model (a different non-zero value is an error). ``write_more(folder)`` may
    add files (a trainer state) to the folder before it gets its final name, so the whole folder appears at once or
    not at all."""
    if meta.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {meta.kind!r}")
    model = _unwrap_model(model)
    num_classes = int(getattr(model, "num_classes", 0)) if meta.kind == "classifier" else 0
    if meta.num_classes not in (0, num_classes):
        raise ValueError(f"metadata says {meta.num_classes} classes for a {num_classes}-class model")
    for name, values in (("labels", meta.labels), ("label_ids", meta.label_ids)):
        if values is not None and meta.kind == "classifier" and len(values) != num_classes:
            raise ValueError(f"{name} has {len(values)} entries for a {num_classes}-class model")
    target = Path(path_dir)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory; choose another checkpoint path")
    fields = dataclasses.asdict(dataclasses.replace(meta, num_classes=num_classes))
    doc = {"format": FORMAT, "version": VERSION, **{k: v for k, v in fields.items() if k not in ("format", "version")}}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}

    def write(folder: Path) -> None:
        safetensors.torch.save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
        (folder / META).write_text(json.dumps(doc, indent=2) + "\n")
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


def _from_version_1(doc: dict) -> dict:
    """A version-1 model.json in the current layout: the trainer and the authors' import wrote the feature settings
    and provenance into a free-form ``extra``, and the statistics (which take precedence) into ``norm``."""
    extra = doc.pop("extra", None) or {}
    norm = doc.pop("norm", None) or {}
    audio = extra.get("audio")
    if audio is not None or norm:
        audio = dict(audio or {})
        audio.update({name: norm[key] for key, name in (("mean", "norm_mean"), ("std", "norm_std")) if key in norm})
    kept = ("multilabel", "step", "epoch", "task", "imported_from")
    return {**doc, **{k: extra[k] for k in kept if k in extra}, "audio": audio}


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """The metadata (model.json) of a checkpoint directory, checked for format, version, kind and field types."""
    d = checkpoint_dir(path)
    f = d / META
    try:
        doc = json.loads(f.read_text())
    except FileNotFoundError:
        from ssast.models.hf_ast import is_hf_folder

        hint = f" but a transformers AST folder: ssast import-checkpoint {d} OUT converts it" if is_hf_folder(d) else ""
        raise CheckpointError(f"{f}: missing; {d} is not an ssast checkpoint{hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{f}: not an ssast checkpoint (no \"format\": \"{FORMAT}\")")
    if not isinstance(doc.get("version"), int) or doc["version"] > VERSION:
        raise CheckpointError(
            f"{f}: checkpoint version {doc.get('version')!r} is newer than this ssast reads ({VERSION}); upgrade ssast"
        )
    if doc.get("kind") not in KINDS:
        raise CheckpointError(f"{f}: kind {doc.get('kind')!r} is not one of {', '.join(KINDS)}")
    if not isinstance(doc.get("model"), dict):
        raise CheckpointError(f"{f}: no \"model\" configuration")
    if doc["version"] < 2:
        doc = _from_version_1(doc)
    drop_legacy_keys(doc)  # version-1 audio settings carry a key that never had an effect
    try:
        meta = from_dict(CheckpointMeta, doc)
    except ConfigError as e:
        raise CheckpointError(f"{f}: invalid metadata: {e}") from None
    a = meta.audio
    if a is not None and not (math.isfinite(a.norm_std) and a.norm_std > 0 and math.isfinite(a.norm_mean)):
        # the features are divided by the std: every score and embedding would be NaN
        raise CheckpointError(f"{f}: audio.norm_std must be a positive number, got {a.norm_std} (mean {a.norm_mean}); "
                              f"import the checkpoint again with a positive --norm-std")
    return meta


def imported_here(path: str | Path, source: str | Path) -> bool:
    """Whether checkpoint ``path`` was imported from a file or folder of the same name as ``source`` (a rerun of the
    same import may replace it; anything else needs --overwrite)."""
    try:
        return read_checkpoint_meta(path).imported_from == Path(source).name
    except CheckpointError:
        return False


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights (model.safetensors) of a checkpoint directory, on the CPU."""
    f = checkpoint_dir(path) / WEIGHTS
    if not f.is_file():
        raise CheckpointError(f"{f}: missing; the checkpoint is incomplete")
    try:
        return safetensors.torch.load_file(str(f), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{f}: cannot read the weights ({e}); the checkpoint is damaged") from None
