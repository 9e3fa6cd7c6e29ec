"""Crash-safe file writing: write a temporary sibling, fsync, rename over the target, fsync the folder.

A reader (or a resumed run) then sees either the old complete file or the new complete file, never half of one.
:func:`check_output` says before any work starts when an output path cannot be written at all.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO

from ssast.config import ConfigError


def fsync_path(path: str | Path) -> None:
    """Flush a file or folder to disk (a folder: so the renames inside it survive a crash); no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then fsync and rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def check_output(path: str | Path, *, folder: bool, what: str) -> Path:
    """Raise ConfigError (naming ``what`` and the path) unless ``path`` can be created or written as a folder or a
    file. Creates nothing, so commands call it before their work and a mistyped output loses no results."""
    p = Path(path)
    kind = "folder" if folder else "file"
    if os.path.exists(p):  # os.path: False (not an exception) where a parent is unreadable
        if folder != p.is_dir():
            found = "a folder" if p.is_dir() else "a file"
            raise ConfigError(f"{what} {p}: is {found}, but a {kind} is written there; choose another path")
        if not os.access(p, os.W_OK | (os.X_OK if folder else 0)):
            raise ConfigError(f"{what} {p}: not writable (permissions or a read-only disk); choose another path")
        return p
    parent = p.absolute().parent
    while not os.path.exists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {p}: cannot be created, {parent} is a file and not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{what} {p}: cannot be created, {parent} is not writable (permissions or a read-only disk); "
            "choose another path"
        )
    return p
