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


# The schema of the state the engine writes (``Trainer._trainer_state``): field -> what it must be.
_COUNTERS = ("step", "epoch", "batch_in_epoch", "bad_total")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _tensors_or_numbers(v: Any) -> bool:
    """An optimiser's per-parameter state: tensors and plain numbers only (no arrays, strings or lists)."""
    return isinstance(v, torch.Tensor) or _is_number(v) or v is None


def check_state(st: Any, where: str | Path) -> None:
    """Check a read state against the schema the engine writes; StateFormatError naming the first bad field."""
    def bad(field: str, why: str):
        raise StateFormatError(f"{Path(where) / STATE}: field {field!r} {why}; the state is damaged or crafted, "
                               f"resume from another checkpoint")

    if not isinstance(st, dict):
        bad("state", "is not a mapping")
    for field, ok, want in (
        *((k, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a whole number >= 0")
          for k in _COUNTERS),
        ("best", lambda v: _is_number(v) and not math.isnan(v), "a number"),
        ("elapsed", lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "a number of seconds >= 0"),
        ("history", lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v), "a list of records"),
        ("optimizer", lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
         and isinstance(v.get("param_groups"), list) and all(isinstance(g, dict) for g in v["param_groups"])
         and all(isinstance(s, dict) and all(map(_tensors_or_numbers, s.values())) for s in v["state"].values()),
         "an optimiser state (per-parameter tensors and numbers, a list of parameter groups)"),
        ("schedule", lambda v: isinstance(v, dict), "a mapping"),
        ("gen", lambda v: isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1,
         "a generator state (a 1-D uint8 tensor)"),
        ("rng", lambda v: isinstance(v, dict) and {"python", "numpy", "torch"} <= set(v), "the RNG states"),
        ("ema", lambda v: v is None or (isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values())),
         "null or a mapping of tensors"),
        ("task", lambda v: isinstance(v, dict), "a mapping"),
        ("skipped", lambda v: isinstance(v, dict) and all(isinstance(n, int) for n in v.values()),
         "a mapping of counts"),
    ):
        if field not in st:
            bad(field, "is missing")
        if not ok(st[field]):
            bad(field, f"must be {want}, got {_short(st[field])}")
    _check_rng(st["rng"], bad)
    ranks = st.get("ranks")  # every rank's generators (DDP runs); absent in checkpoints before it existed
    if ranks is not None:
        if not (isinstance(ranks, list) and all(isinstance(r, dict) and {"rng", "gen"} <= set(r) for r in ranks)):
            bad("ranks", f"must be a list of per-rank RNG states, got {_short(ranks)}")
        for r in ranks:
            if not (isinstance(r["gen"], torch.Tensor) and r["gen"].dtype == torch.uint8 and r["gen"].dim() == 1):
                bad("ranks", "holds a generator state that is not a 1-D uint8 tensor")
            _check_rng(r["rng"], lambda field, why: bad("ranks", why))


def _short(v: Any) -> str:
    text = repr(v) if not isinstance(v, (dict, list, torch.Tensor)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _check_rng(rng: dict, bad) -> None:
    """Try the RNG states on the real generators, then put the current ones back: what the loop would apply."""
    from ssast.train.runtime import rng_state, set_rng_state

    now = rng_state()
    try:
        set_rng_state(rng)
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError, OverflowError) as e:
        bad("rng", f"is not a usable RNG state ({type(e).__name__})")
    finally:
        set_rng_state(now)
