"""Trainer state (optimiser, schedule, RNG states, counters) stored so that loading it can never run code.

A nested state of dicts, lists, tuples, numbers, strings, tensors and numpy arrays is split into its tensors, written
with safetensors, and everything else, written as JSON whose tensors are references (``{"$tensor": "k"}``). Tuples,
dicts with non-string keys (the optimiser's parameter ids) and numpy arrays (numpy's RNG state) are tagged so they
come back as they were. Reading parses JSON and safetensors only: there is no unpickling, so a run directory from
someone else cannot execute anything on resume.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from ssast.models.checkpoint import CheckpointError

TENSORS = "trainer.safetensors"
STATE = "trainer.json"  # written last: its presence marks a complete state
LEGACY_PICKLE = "trainer.pt"
_FORMAT = "ssast-trainer-state"
_VERSION = 1


class StateFormatError(CheckpointError):
    """A trainer state that is missing, damaged or not of this format; the message names the file."""


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"$tensor": key}
    if isinstance(obj, np.ndarray):
        return {"$ndarray": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"$float": repr(obj)}  # JSON has no inf/nan
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"$items": [[_encode(k, tensors, f"{path}.k{i}"), _encode(v, tensors, f"{path}.{i}")]
                           for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"trainer state at {path or 'root'}: cannot store a {type(obj).__name__}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tensor" in obj:
        return tensors[obj["$tensor"]]
    if "$ndarray" in obj:
        return np.asarray(obj["$ndarray"], dtype=np.dtype(obj["dtype"]))
    if "$float" in obj:
        return float(obj["$float"])
    if "$tuple" in obj:
        return tuple(_decode(v, tensors) for v in obj["$tuple"])
    if "$items" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["$items"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def write_state(folder: str | Path, state: dict) -> None:
    """Write ``state`` as TENSORS then STATE into ``folder``, a checkpoint folder still being built (it gets its
    final name only when complete, see ``save_checkpoint``'s ``write_more``)."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    doc = {"format": _FORMAT, "version": _VERSION, "state": _encode(state, tensors, "")}
    # safetensors refuses tensors that share memory; state tensors are small or already distinct, so copy only those
    seen: set[int] = set()
    for k, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            tensors[k] = t.clone()
        seen.add(ptr)
    safetensors.torch.save_file(tensors, str(folder / TENSORS))
    (folder / STATE).write_text(json.dumps(doc))


def has_state(folder: str | Path) -> bool:
    return (Path(folder) / STATE).is_file()


def read_state(folder: str | Path) -> dict:
    """Read a state written by :func:`write_state`; JSON and safetensors only, never pickle."""
    folder = Path(folder)
    if not has_state(folder):
        if (folder / LEGACY_PICKLE).is_file():
            raise StateFormatError(
                f"{folder / LEGACY_PICKLE}: a trainer state in the old pickle format, which is never loaded (unpickling "
                f"can run code); start a new run with model.init={folder} to continue from its weights")
        raise StateFormatError(f"{folder}: no trainer state ({STATE}); the checkpoint is incomplete")
    try:
        doc = json.loads((folder / STATE).read_text())
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError("not an ssast trainer state")
        tensors = safetensors.torch.load_file(str(folder / TENSORS))
        return _decode(doc["state"], tensors)
    except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as e:
        raise StateFormatError(f"{folder}: the trainer state is damaged or foreign ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}); resume from another checkpoint") from None
