"""What a run may do with its folder: the folder is the user's data, so a run writes only real paths inside it.

- A new run refuses a folder that already holds a run's files; the user continues it (``--resume``), picks another
  ``train.run_dir``, or asks for ``--overwrite``.
- ``--overwrite`` removes the old run's own entries (:data:`RUN_ENTRIES`) once every check has passed and the lock
  is held, unlinking links without following them, so the two runs' checkpoints never mix; anything else the user
  keeps in the folder stays.
- A symbolic link among the run's own entries (a received folder whose ``checkpoints`` points at another run) would
  make the run write, prune or lock somewhere else: it is refused before anything is written. Only ``last`` is a
  link by design, and it must point into the run's own ``checkpoints``.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from ssast.config import ConfigError

# Everything a run writes directly in its folder (the engine, the tasks, the logger); ".lock" is handled apart.
RUN_ENTRIES = ("config.yaml", "checkpoints", "last", "best", "final", "tb", "log.txt", "metrics.json",
               "per_class_ap.csv", "preempted.json", "ensemble")
WAYS_ON = "continue it with --resume {d}, choose another train.run_dir, or replace it with --overwrite"


def lock_holder(run_dir: Path) -> str | None:
    """The pid written in RUN/.lock while another process holds it; None when the folder is free. Writes nothing."""
    try:
        fd = os.open(Path(run_dir) / ".lock", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)


def run_files(run_dir: Path) -> list[str]:
    """The entries of RUN_ENTRIES present in ``run_dir`` (an empty ``checkpoints`` folder does not count)."""
    found = []
    for name in RUN_ENTRIES:
        p = Path(run_dir) / name
        if not (p.is_symlink() or p.exists()):
            continue
        if name == "checkpoints" and p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            continue
        found.append(name)
    return found


def _refuse_link(run_dir: Path, p: Path, why: str = "") -> None:
    raise ConfigError(f"train.run_dir {run_dir}: {p} is a symbolic link (to {os.readlink(p)}){why}; a run writes "
                      f"only real paths inside its own folder: replace the link by a copy, or choose another "
                      f"train.run_dir", ["train.run_dir"])


def check_links(run_dir: Path, *, removing: bool = False) -> None:
    """Refuse a link among the run's own entries, and a ``last`` that points outside its checkpoints. With
    ``removing`` (an overwrite) links other than ``.lock`` are fine: they are unlinked, never followed."""
    run_dir = Path(run_dir)
    lock = run_dir / ".lock"
    if lock.is_symlink():
        _refuse_link(run_dir, lock)
    if removing:
        return
    for name in RUN_ENTRIES:
        p = run_dir / name
        if not p.is_symlink():
            continue
        if name != "last":
            _refuse_link(run_dir, p)
        ckpts = os.path.realpath(run_dir / "checkpoints")
        if os.path.commonpath([os.path.realpath(p), ckpts]) != ckpts:
            _refuse_link(run_dir, p, ", outside the run's checkpoints")
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir():
        for p in sorted(ckpts.iterdir()):
            if p.is_symlink():
                _refuse_link(run_dir, p)


def check_run_folder(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Before anything is written: refuse a busy folder, links among the run's entries, and (for a new run without
    ``overwrite``) a folder that holds a run."""
    run_dir = Path(run_dir)
    holder = lock_holder(run_dir)
    if holder is not None:
        raise ConfigError(f"train.run_dir {run_dir}: another ssast run (pid {holder}) is using this directory; "
                          f"wait for it to end or choose another train.run_dir", ["train.run_dir"])
    if not run_dir.is_dir():
        return
    check_links(run_dir, removing=overwrite and not resume)
    found = run_files(run_dir)
    if found and not (resume or overwrite):
        raise ConfigError(f"train.run_dir {run_dir}: holds a run ({', '.join(found)}); "
                          + WAYS_ON.format(d=run_dir), ["train.run_dir"])


def remove_run(run_dir: Path) -> list[str]:
    """Remove the old run's own entries from ``run_dir`` (links unlinked, never followed); call under the run's lock
    after every check has passed. Returns the names removed."""
    removed = []
    for name in RUN_ENTRIES:
        p = Path(run_dir) / name
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)  # rmtree unlinks links inside without following them
        else:
            continue
        removed.append(name)
    return removed
