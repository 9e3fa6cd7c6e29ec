"""Our checkpoint format, model rebuilding from it, and classifier initialisation from any supported source.

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
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import safetensors
import safetensors.torch
import torch
from torch import nn

from ssast.atomic import aside_copies, atomic_write_dir
from ssast.config import ConfigError, ModelConfig, from_dict
from ssast.models.classifier import SSASTClassifier, load_encoder_into, load_state_strict
from ssast.models.imagenet import deit_name_for, deit_to_encoder_state, unwrap_state
from ssast.models.posembed import WeightMismatchError

FORMAT = "ssast"
VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"
KINDS = ("pretrain", "classifier")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit: the message names the file and what is wrong."""


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


def _checkpoint_dir(path: str | Path) -> Path:
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
    d = _checkpoint_dir(path)
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
    f = _checkpoint_dir(path) / WEIGHTS
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


def build_model(kind: str, cfg: ModelConfig, num_classes: int = 0) -> nn.Module:
    """A freshly initialised model of this kind: SSASTPretrainModel ("pretrain") or SSASTClassifier ("classifier")."""
    if kind == "pretrain":
        from ssast.models.pretrain import SSASTPretrainModel

        return SSASTPretrainModel(cfg)
    if kind == "classifier":
        return SSASTClassifier(cfg, num_classes)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def load_pretrained(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the exact model of a checkpoint and load it strictly; returns (eval model, meta)."""
    d = _checkpoint_dir(path)
    meta = read_checkpoint_meta(d)
    cfg = meta_model_config(meta, str(d / META))
    model = build_model(meta["kind"], cfg, int(meta.get("num_classes") or 0))
    try:
        load_state_strict(model, load_state(d), what=f"{meta['kind']} model described by {META}")
    except WeightMismatchError as e:
        raise CheckpointError(f"{d / WEIGHTS}: {e}") from None
    return model.to(device).eval(), meta


# ---------------------------------------------------------------------------------------------------------------
# Classifier initialisation


def _load_failure(e: Exception) -> str:
    """The one useful line of a torch.load error (its text runs over several lines of general advice)."""
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it holds Python objects ({found.group(1)}), not only tensors"
    if "WeightsUnpickler error:" in text:  # e.g. "Unsupported operand 31": not a pickle of tensors at all
        text = text.split("WeightsUnpickler error:", 1)[1]
        return next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__).split(". ")[0]
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_torch_file(path: str | Path, expected: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file it cannot read is one CheckpointError line that
    names the file and says what was ``expected`` there."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # noise before the real error
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights-only errors all mean the same thing to the user
        raise CheckpointError(
            f"{path}: cannot be read as PyTorch weights ({_load_failure(e)}); expected {expected}"
        ) from None


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
    src_cfg = meta_model_config(meta, str(d / META))
    notes, dropped = _load_encoder_part(model, load_state(d), src_cfg, d)
    return f"encoder from {meta['kind']} checkpoint {d} ({notes}); dropped: {dropped}"


def _init_from_authors(model: SSASTClassifier, f: Path) -> str:
    """Load the encoder of an authors' released .pth into ``model``."""
    # Imported here: authors.py builds on this module (it saves our format).
    from ssast.models.authors import load_authors_file

    kind, src_cfg, state, _ = load_authors_file(f)
    notes, dropped = _load_encoder_part(model, state, src_cfg, f)
    return f"encoder from the authors' {kind} checkpoint {f} ({notes}); dropped: {dropped}"


def _init_from_imagenet(model: SSASTClassifier, cfg: ModelConfig, spec: str) -> str:
    """DeiT initialisation from a local weights file or (with network) timm's hub."""
    if spec == "timm" or spec.startswith("timm:"):
        name = spec[len("timm:") :] or deit_name_for(cfg.resolved().dim)
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
    an authors' ``.pth``/``.pt`` file, "imagenet:FILE" (a timm DeiT state dict) or "imagenet:timm[:NAME]" (needs a hub).
    """
    init = cfg.init if init is None else init
    model = SSASTClassifier(cfg, num_classes)
    if init in ("", "scratch"):
        return model, "random initialisation"
    if init.startswith("imagenet:"):
        return model, _init_from_imagenet(model, cfg, init[len("imagenet:") :])
    p = Path(init)
    if p.is_dir() or p.name in (META, WEIGHTS):
        return model, _init_from_ours(model, _checkpoint_dir(p))
    if p.is_file() and p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return model, _init_from_authors(model, p)
    if p.is_file():
        raise CheckpointError(
            f"model.init={init}: unknown file type; give a checkpoint directory, an authors' .pth, "
            f"or imagenet:FILE for DeiT weights"
        )
    if aside_copies(p):
        return model, _init_from_ours(model, _checkpoint_dir(p))
    raise CheckpointError(
        f"model.init={init}: not found; give a checkpoint directory, an authors' .pth file, imagenet:FILE, "
        f"imagenet:timm or scratch"
    )
