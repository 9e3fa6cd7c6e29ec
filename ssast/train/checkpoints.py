"""Run directories, atomic checkpoints (model + trainer state), pruning, and the `last` pointer for resume.

A run directory holds::

    config.yaml             the resolved config
    checkpoints/step-N/     model.safetensors + model.json (rebuildable model) + trainer.pt (exact-resume state)
    last                    symlink to the newest complete checkpoint (replaced atomically)
    best/                   best model by the validation metric (fine-tuning)
    final/                  the model at the end (averaged weights when weight averaging is on)
    tb/                     TensorBoard events
    metrics.json            final metrics

A checkpoint directory only gets its final name once complete, and `last` only moves after that, so a crash at
any moment leaves the previous checkpoint usable.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from ssast.atomic import atomic_write, fsync_path

TRAINER_STATE = "trainer.pt"


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save through :func:`ssast.atomic.atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def point_last(run_dir: Path, target: Path) -> None:
    """Atomically make run_dir/last a relative symlink to ``target``."""
    link = run_dir / "last"
    tmp = run_dir / f".last.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target, run_dir), tmp)
    os.replace(tmp, link)
    fsync_path(run_dir)


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first (incomplete ones have no trainer state yet)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step-\d{8}", p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found)


def prune(run_dir: Path, keep_last: int, protect: set[Path] = frozenset()) -> None:
    """Delete all but the newest ``keep_last`` step checkpoints (never one in ``protect``)."""
    ckpts = list_checkpoints(run_dir)
    for p in ckpts[: max(0, len(ckpts) - keep_last)]:
        if p.resolve() not in {q.resolve() for q in protect}:
            shutil.rmtree(p, ignore_errors=True)


def resolve_resume(run_dir: Path) -> Path:
    """The checkpoint to resume from: what `last` points to, else the newest complete one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: no such run directory")
    last = run_dir / "last"
    if last.exists() and (last / TRAINER_STATE).is_file():
        return last.resolve()
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise FileNotFoundError(f"--resume {run_dir}: the run has no complete checkpoint to resume from")
    return ckpts[-1]
